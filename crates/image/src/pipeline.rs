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
    /// The compression a blob's first bytes show (gzip and zstd magic numbers).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

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

/// The chunks of an HTTP body, in order, as a reader.
pub struct ChannelRead {
    rx: Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelRead {
    /// A reader over the chunks sent on `rx`; a sent error is returned once, in place.
    pub fn new(rx: Receiver<io::Result<Bytes>>) -> ChannelRead {
        ChannelRead {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// An error and its causes, `outer: inner: innermost` (a timeout and a truncation read
/// the same at the top: "error decoding response body").
fn error_chain(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    // An io::Error made from another error displays that error; skip the repeat.
    if let Some(inner) = e.get_ref()
        && inner.to_string() == text
    {
        source = inner.source();
    }
    while let Some(s) = source {
        let t = s.to_string();
        if !text.ends_with(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// The compressed source: hashes and counts what it yields, remembers a failed read.
struct Source<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    failed: Option<String>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.size += n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failed = Some(error_chain(&e));
                }
                Err(e)
            }
        }
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

enum Decompressor<R: Read> {
    None(Source<R>),
    Gzip(Box<flate2::read::MultiGzDecoder<BufReader<Source<R>>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<Source<R>>>>),
}

impl<R: Read> Read for Decompressor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompressor::None(r) => r.read(buf),
            Decompressor::Gzip(r) => r.read(buf),
            Decompressor::Zstd(r) => r.read(buf),
        }
    }
}

impl<R: Read> Decompressor<R> {
    fn new(c: Compression, r: Source<R>) -> io::Result<Decompressor<R>> {
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

    fn into_source(self) -> Source<R> {
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

/// Run the blocking half of the pipeline over an HTTP body's chunks.
pub fn run(
    rx: Receiver<io::Result<Bytes>>,
    compression: Compression,
    dir: &Path,
    opts: &UnpackOptions,
) -> LayerOutcome {
    run_reader(ChannelRead::new(rx), compression, dir, opts)
}

/// Run the pipeline on any source: read it to its end, unpack into `dir`.
///
/// The whole stream is always consumed, so the compressed digest is known even when
/// unpacking fails: the caller then tells "the registry sent bad bytes" from "the layer
/// itself is bad".
pub fn run_reader<R: Read>(
    reader: R,
    compression: Compression,
    dir: &Path,
    opts: &UnpackOptions,
) -> LayerOutcome {
    let source = Source {
        inner: reader,
        hasher: Sha256::new(),
        size: 0,
        failed: None,
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
        stream_failed: source.failed,
    }
}
