//! One pass per layer: compressed bytes → sha256 → decompressor → sha256 (diff id) → tar → files.
//!
//! The async side feeds the HTTP body into a bounded channel; this blocking side reads
//! it, hashes it, decompresses and unpacks, all streaming: a layer is never buffered.
//! Three threads share the work: a decoder thread hashes the compressed bytes and
//! decompresses; it hands the tar in [`CHUNK`]-byte pieces (at most [`DEPTH`] in
//! flight each way, so a layer of any size holds a few MiB) both to a hasher thread
//! (the diff id) and to the calling thread, which unpacks. Decompression, hashing and
//! the filesystem work then overlap instead of taking turns; on small-file layers the
//! unpacker is the long pole, on big files the decoder and the hasher.

use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{Receiver as SyncReceiver, SyncSender, sync_channel};

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
    hasher: Option<Sha256>,
    size: u64,
    failed: Option<String>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                if let Some(h) = &mut self.hasher {
                    h.update(&buf[..n]);
                }
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
    /// The tar unpacked, but what follows its end does not decompress (a bad
    /// checksum in the compressed stream's trailer, say).
    #[error("the compressed layer is corrupt after the tar's end: {0}")]
    Trailer(#[source] io::Error),
}

/// What one pass over a layer produced.
#[derive(Debug)]
pub struct LayerOutcome {
    /// Digest of the compressed bytes received; None from [`run`], whose caller
    /// hashes the blob as it receives it.
    pub digest: Option<Digest>,
    /// Number of compressed bytes received.
    pub size: u64,
    /// Digest of the uncompressed tar (None if unpacking failed before the end).
    pub diff_id: Option<Digest>,
    /// The unpack result.
    pub unpacked: Result<UnpackStats, LayerError>,
    /// Set when the byte stream itself failed (network, timeout, registry-side digest check).
    pub stream_failed: Option<String>,
}

/// Run the blocking half of the pipeline over an HTTP body's chunks. The blob is
/// not hashed here: the caller hashes the chunks as it receives them (on its own
/// thread, off the decoder's, which is the pipeline's long pole).
pub fn run(
    rx: Receiver<io::Result<Bytes>>,
    compression: Compression,
    dir: &Path,
    opts: &UnpackOptions,
) -> LayerOutcome {
    run_source(ChannelRead::new(rx), None, compression, dir, opts)
}

/// Bytes of tar per piece handed from the decoder thread to the unpacker.
const CHUNK: usize = 256 << 10;
/// Pieces in flight between the two threads.
const DEPTH: usize = 8;

/// Run the pipeline on any source: read it to its end, unpack into `dir`.
///
/// The whole stream is always consumed, so the compressed digest is known even when
/// unpacking fails: the caller then tells "the registry sent bad bytes" from "the layer
/// itself is bad".
pub fn run_reader<R: Read + Send>(
    reader: R,
    compression: Compression,
    dir: &Path,
    opts: &UnpackOptions,
) -> LayerOutcome {
    run_source(reader, Some(Sha256::new()), compression, dir, opts)
}

/// [`run_reader`], hashing the blob on the decoder's thread only with `hasher`.
fn run_source<R: Read + Send>(
    reader: R,
    hasher: Option<Sha256>,
    compression: Compression,
    dir: &Path,
    opts: &UnpackOptions,
) -> LayerOutcome {
    let source = Source {
        inner: reader,
        hasher,
        size: 0,
        failed: None,
    };
    let dec = match Decompressor::new(compression, source) {
        Ok(dec) => dec,
        Err(e) => {
            // Only an allocation failure gets here; the source is gone with the decoder,
            // so report the set-up failure alone.
            return set_up_failed(e);
        }
    };
    let (tx, rx) = sync_channel(DEPTH);
    let (hash_tx, hash_rx) = sync_channel::<Piece>(DEPTH);
    std::thread::scope(|scope| {
        let hasher = std::thread::Builder::new()
            .name("skiff-hash".into())
            .spawn_scoped(scope, move || {
                let mut h = Sha256::new();
                for piece in hash_rx {
                    h.update(&piece[..]);
                }
                Digest::from_hasher(h)
            });
        let hasher = match hasher {
            Ok(h) => h,
            Err(e) => return set_up_failed(e),
        };
        let decoder = std::thread::Builder::new()
            .name("skiff-decode".into())
            .spawn_scoped(scope, move || decode(dec, &tx, hash_tx));
        let decoder = match decoder {
            Ok(d) => d,
            Err(e) => return set_up_failed(e),
        };
        let mut tar = Pieces {
            rx,
            current: Piece::default(),
            at: 0,
        };
        let unpacked = unpack(&mut tar, dir, opts).map_err(LayerError::from);
        // Tar readers stop at the end-of-archive blocks; the decoder hashes the padding
        // after them too, and reads on alone once this side stops taking pieces.
        let drained = if unpacked.is_ok() {
            io::copy(&mut tar, &mut io::sink()).map(drop)
        } else {
            Ok(())
        };
        drop(tar);
        match (decoder.join(), hasher.join()) {
            (Ok((whole, source)), Ok(tar_digest)) => {
                let unpacked = match (unpacked, drained) {
                    (Ok(stats), Ok(())) => Ok(stats),
                    (Ok(_), Err(e)) => Err(LayerError::Trailer(e)),
                    (Err(e), _) => Err(e),
                };
                // Read to its end without an error, the tar's digest is its diff id.
                let diff_id = (whole && unpacked.is_ok()).then_some(tar_digest);
                LayerOutcome {
                    digest: source.hasher.map(Digest::from_hasher),
                    size: source.size,
                    diff_id,
                    unpacked,
                    stream_failed: source.failed,
                }
            }
            _ => set_up_failed(io::Error::other("a pipeline thread panicked")),
        }
    })
}

/// The outcome of a pipeline that could not run (no decompressor, no decoder thread):
/// nothing was read, so the caller sees a size mismatch first (and retries the layer).
fn set_up_failed(e: io::Error) -> LayerOutcome {
    LayerOutcome {
        digest: None,
        size: 0,
        diff_id: None,
        unpacked: Err(LayerError::Decompressor(e)),
        stream_failed: None,
    }
}

/// The decoder thread: decompresses `dec` to its end, hashing the tar and sending it
/// in pieces while the unpacker takes them; then reads the compressed source to its
/// end (for its digest). Returns the tar's digest (None when a read or decompression
/// error stopped it, which the unpacker gets in place of the next piece, or when the
/// unpacker stopped taking pieces) and the source.
fn decode<R: Read>(
    mut dec: Decompressor<R>,
    tx: &SyncSender<io::Result<Piece>>,
    hash: SyncSender<Piece>,
) -> (bool, Source<R>) {
    let mut whole = true;
    // Pieces sent, oldest first: one both consumers are done with is filled again
    // (allocating and zeroing 256 KiB per piece showed in profiles).
    let mut sent: std::collections::VecDeque<Piece> = std::collections::VecDeque::new();
    loop {
        let mut buf = match sent.front_mut().and_then(Piece::get_mut) {
            Some(done) => {
                let mut buf = std::mem::take(done);
                sent.pop_front();
                buf.resize(CHUNK, 0);
                buf
            }
            None => vec![0; CHUNK],
        };
        let (n, failed) = fill(&mut dec, &mut buf);
        if n > 0 {
            buf.truncate(n);
            let piece = Piece::new(buf);
            if sent.len() < 2 * DEPTH + 2 {
                sent.push_back(piece.clone());
            }
            // The hasher never stops taking pieces before the decoder is done.
            if hash.send(piece.clone()).is_err() || tx.send(Ok(piece)).is_err() {
                // The unpacker stopped (it failed): the tar is of no more use.
                whole = false;
                break;
            }
        }
        if let Some(e) = failed {
            whole = false;
            // If the unpacker is gone, it failed already: the error is moot.
            let _ = tx.send(Err(e));
            break;
        }
        if n < CHUNK {
            break;
        }
    }
    drop(hash);
    let mut source = dec.into_source();
    let _ = io::copy(&mut source, &mut io::sink());
    (whole, source)
}

/// Reads until `buf` is full, `r` ends or fails; returns the bytes read and the
/// error that stopped it.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

/// A piece of the tar, shared by the hasher and the unpacker.
type Piece = std::sync::Arc<Vec<u8>>;

/// The unpacker's side: the decoder's pieces as a reader.
struct Pieces {
    rx: SyncReceiver<io::Result<Piece>>,
    current: Piece,
    at: usize,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                // The decoder is done.
                Err(_) => return Ok(0),
                Ok(Ok(piece)) => {
                    self.current = piece;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use skiff_testkit::{Compression as Tk, LayerBuilder, many_small_files_layer};

    use super::*;

    fn compression(tk: Tk) -> Compression {
        match tk {
            Tk::None => Compression::None,
            Tk::Gzip => Compression::Gzip,
            Tk::Zstd => Compression::Zstd,
        }
    }

    /// A reader that fails after `ok` bytes, like a connection cut mid-layer.
    struct Cut<'a> {
        data: &'a [u8],
        ok: usize,
    }

    impl Read for Cut<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut"));
            }
            let n = buf.len().min(self.ok).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.ok -= n;
            Ok(n)
        }
    }

    #[test]
    fn digests_and_files_match_for_each_compression_across_many_pieces() {
        for tk in [Tk::None, Tk::Gzip, Tk::Zstd] {
            // ~4 MiB of tar: many pieces through the channel.
            let layer = many_small_files_layer(1500, 2048, tk);
            let dir = tempfile::tempdir().unwrap();
            let out = run_reader(
                &layer.blob[..],
                compression(tk),
                dir.path(),
                &UnpackOptions::default(),
            );
            let stats = out.unpacked.unwrap();
            assert_eq!(stats.files, 1500, "{tk:?}");
            assert_eq!(out.digest.unwrap().as_str(), layer.digest, "{tk:?}");
            assert_eq!(out.size, layer.blob.len() as u64);
            assert_eq!(out.diff_id.unwrap().as_str(), layer.diff_id, "{tk:?}");
            assert!(out.stream_failed.is_none());
        }
    }

    #[test]
    fn a_failing_unpack_still_reads_the_whole_blob() {
        // A link escaping the root fails the unpack at the first entries; the rest of
        // a long layer must still be read and hashed.
        let mut b = LayerBuilder::new();
        b.hardlink("evil", "../../etc/passwd");
        for i in 0..2000 {
            b.file(&format!("f{i}"), 0o644, vec![b'x'; 2048]);
        }
        let layer = b.finish(Tk::Gzip).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = run_reader(
            &layer.blob[..],
            Compression::Gzip,
            dir.path(),
            &UnpackOptions::default(),
        );
        assert!(out.unpacked.is_err());
        assert_eq!(out.digest.unwrap().as_str(), layer.digest);
        assert_eq!(out.size, layer.blob.len() as u64);
        assert!(out.diff_id.is_none());
    }

    #[test]
    fn corrupt_compressed_data_fails_the_unpack_and_keeps_the_digest() {
        let layer = many_small_files_layer(500, 2048, Tk::Gzip);
        let mut blob = layer.blob.clone();
        let mid = blob.len() / 2;
        for b in &mut blob[mid..mid + 64] {
            *b ^= 0x5a;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = run_reader(
            &blob[..],
            Compression::Gzip,
            dir.path(),
            &UnpackOptions::default(),
        );
        assert!(out.unpacked.is_err());
        assert!(out.diff_id.is_none());
        assert_eq!(out.digest, Some(Digest::of(&blob)));
        assert_eq!(out.size, blob.len() as u64);
        assert!(out.stream_failed.is_none());
    }

    #[test]
    fn a_bad_trailer_after_the_tar_fails_the_layer() {
        let layer = many_small_files_layer(50, 2048, Tk::Gzip);
        let mut blob = layer.blob.clone();
        // The gzip trailer: CRC32 then size. A wrong CRC shows only after the tar.
        let crc = blob.len() - 8;
        blob[crc] ^= 0xff;
        let dir = tempfile::tempdir().unwrap();
        let out = run_reader(
            &blob[..],
            Compression::Gzip,
            dir.path(),
            &UnpackOptions::default(),
        );
        assert!(
            matches!(out.unpacked, Err(LayerError::Trailer(_))),
            "{:?}",
            out.unpacked
        );
        assert!(out.diff_id.is_none());
        assert_eq!(out.digest, Some(Digest::of(&blob)));
    }

    #[test]
    fn a_cut_stream_is_reported_as_such() {
        let layer = many_small_files_layer(500, 2048, Tk::Zstd);
        let dir = tempfile::tempdir().unwrap();
        let out = run_reader(
            Cut {
                data: &layer.blob,
                ok: layer.blob.len() / 3,
            },
            Compression::Zstd,
            dir.path(),
            &UnpackOptions::default(),
        );
        assert!(out.unpacked.is_err());
        assert!(out.diff_id.is_none());
        let failed = out.stream_failed.expect("the cut is reported");
        assert!(failed.contains("cut"), "{failed}");
    }
}
