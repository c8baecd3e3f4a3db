//! One pass per layer: compressed bytes → sha256 → decompressor → sha256 (diff id) → tar → files.
//!
//! The async side feeds the HTTP body into a bounded channel; this blocking side reads
//! it, hashes it, decompresses and unpacks, all streaming: a layer is never buffered.

use std::io::{self, BufReader, Read};
use std::path::Path;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc::Receiver;

use crate::digest::Digest;
use crate::unpack::{UnpackError, UnpackOptions, UnpackStats, unpack};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (flate2 with the zlib-rs backend).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression of a layer media type, or `None` if it is not a layer type skiff unpacks.
    pub fn of_media_type(media_type: &str) -> Option<Compression> {
        let mt = media_type
            .strip_suffix(".nondistributable")
            .unwrap_or(media_type);
        let mt = mt.replace(".nondistributable", "");
        match mt.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Reads the channel's chunks in order, hashing and counting them.
struct ChannelReader {
    rx: Receiver<io::Result<Bytes>>,
    current: Bytes,
    hasher: Sha256,
    size: u64,
    stream_failed: Option<String>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => {
                    self.hasher.update(&chunk);
                    self.size += chunk.len() as u64;
                    self.current = chunk;
                }
                Some(Err(e)) => {
                    self.stream_failed = Some(e.to_string());
                    return Err(e);
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Hashes what passes through it.
struct HashReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

enum Decompressor {
    None(ChannelReader),
    Gzip(Box<flate2::read::MultiGzDecoder<BufReader<ChannelReader>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<ChannelReader>>>),
}

impl Read for Decompressor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompressor::None(r) => r.read(buf),
            Decompressor::Gzip(r) => r.read(buf),
            Decompressor::Zstd(r) => r.read(buf),
        }
    }
}

impl Decompressor {
    fn new(c: Compression, r: ChannelReader) -> io::Result<Decompressor> {
        Ok(match c {
            Compression::None => Decompressor::None(r),
            Compression::Gzip => Decompressor::Gzip(Box::new(flate2::read::MultiGzDecoder::new(
                BufReader::with_capacity(256 * 1024, r),
            ))),
            Compression::Zstd => Decompressor::Zstd(Box::new(
                zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(256 * 1024, r))?,
            )),
        })
    }

    fn into_source(self) -> ChannelReader {
        match self {
            Decompressor::None(r) => r,
            Decompressor::Gzip(r) => r.into_inner().into_inner(),
            Decompressor::Zstd(r) => r.finish().into_inner(),
        }
    }
}

/// Why a layer's bytes did not become a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The tar could not be unpacked.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// The decompressor could not be set up.
    #[error("cannot set up the decompressor: {0}")]
    Decompressor(#[source] io::Error),
}

/// What one pass over a layer produced.
#[derive(Debug)]
pub struct LayerOutcome {
    /// Digest of the compressed bytes received.
    pub digest: Digest,
    /// Number of compressed bytes received.
    pub size: u64,
    /// Digest of the uncompressed tar (None if unpacking failed before the end).
    pub diff_id: Option<Digest>,
    /// The unpack result.
    pub unpacked: Result<UnpackStats, LayerError>,
    /// Set when the byte stream itself failed (network, timeout, registry-side digest check).
    pub stream_failed: Option<String>,
}

/// Run the blocking half of the pipeline: read `rx` to its end, unpack into `dir`.
///
/// The whole stream is always consumed, so the compressed digest is known even when
/// unpacking fails: the caller then tells "the registry sent bad bytes" from "the layer
/// itself is bad".
pub fn run(
    rx: Receiver<io::Result<Bytes>>,
    compression: Compression,
    dir: &Path,
    opts: &UnpackOptions,
) -> LayerOutcome {
    let source = ChannelReader {
        rx,
        current: Bytes::new(),
        hasher: Sha256::new(),
        size: 0,
        stream_failed: None,
    };
    let (unpacked, diff_id, source) = match Decompressor::new(compression, source) {
        Ok(dec) => {
            let mut diff = HashReader {
                inner: dec,
                hasher: Sha256::new(),
            };
            let unpacked = unpack(&mut diff, dir, opts).map_err(LayerError::from);
            // Tar readers stop at the end-of-archive blocks; hash the padding after them too.
            let drained = io::copy(&mut diff, &mut io::sink());
            let diff_id = match (&unpacked, drained) {
                (Ok(_), Ok(_)) => Some(Digest::from_hasher(diff.hasher)),
                _ => None,
            };
            (unpacked, diff_id, diff.inner.into_source())
        }
        Err(e) => {
            // Only an allocation failure gets here; the source is gone with the decoder,
            // so report the set-up failure alone.
            return LayerOutcome {
                digest: Digest::of(b""),
                size: 0,
                diff_id: None,
                unpacked: Err(LayerError::Decompressor(e)),
                stream_failed: None,
            };
        }
    };
    let mut source = source;
    let _ = io::copy(&mut source, &mut io::sink());
    LayerOutcome {
        digest: Digest::from_hasher(source.hasher),
        size: source.size,
        diff_id,
        unpacked,
        stream_failed: source.stream_failed,
    }
}
