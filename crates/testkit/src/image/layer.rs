//! Layer tarballs: [`LayerBuilder`] entries → tar → compressed [`Layer`].

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use super::{Compression, FIXED_MTIME, ImageError};
use crate::sha256_digest;

/// One layer blob with its identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The layer media type: OCI by default;
    /// [`ImageBuilder::build`](super::ImageBuilder::build) rewrites it to the
    /// Docker one when Docker media types are selected.
    pub media_type: String,
    /// The (possibly compressed) blob as pushed to a registry.
    pub blob: Vec<u8>,
    /// `sha256:…` of `blob`.
    pub digest: String,
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
}

impl Layer {
    /// The blob's compression, from its media type.
    pub fn compression(&self) -> Option<Compression> {
        Compression::from_media_type(&self.media_type)
    }

    /// The uncompressed tar.
    ///
    /// # Panics
    /// If the media type is not a known layer type or the blob is corrupt.
    pub fn tar(&self) -> Vec<u8> {
        let compression = self
            .compression()
            .unwrap_or_else(|| panic!("unknown layer media type {}", self.media_type));
        compression
            .decompress(&self.blob)
            .unwrap_or_else(|e| panic!("decompressing layer {}: {e}", self.digest))
    }
}

/// File contents: literal bytes, or a generated pseudo-random stream.
#[derive(Debug, Clone)]
enum Contents {
    Bytes(Vec<u8>),
    PseudoRandom { seed: u64, len: u64 },
}

impl Contents {
    fn len(&self) -> u64 {
        match self {
            Contents::Bytes(b) => b.len() as u64,
            Contents::PseudoRandom { len, .. } => *len,
        }
    }

    fn reader(&self) -> Box<dyn Read + '_> {
        match self {
            Contents::Bytes(b) => Box::new(b.as_slice()),
            Contents::PseudoRandom { seed, len } => Box::new(PseudoRandom::new(*seed).take(*len)),
        }
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Dir {
        path: String,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    File {
        path: String,
        mode: u32,
        uid: u64,
        gid: u64,
        contents: Contents,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    Raw {
        name: Vec<u8>,
        entry_type: tar::EntryType,
        link_name: Option<Vec<u8>>,
        data: Vec<u8>,
    },
    Header {
        header: Box<tar::Header>,
        data: Vec<u8>,
    },
}

/// Builds a layer tar from entries added in order.
///
/// Paths are relative to the layer root; a leading `/` or `./` is dropped.
/// Owners default to 0:0, every mtime is [`FIXED_MTIME`]. Entries are
/// written in the order they were added, so parents should come first.
/// The ordinary methods reject paths the `tar` crate considers unsafe
/// (`..`); use [`LayerBuilder::raw_entry`] for hostile archives.
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> LayerBuilder {
        LayerBuilder::default()
    }

    /// Adds a directory owned by root.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.dir_owned(path, mode, 0, 0)
    }

    /// Adds a directory with an explicit owner.
    pub fn dir_owned(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut path = clean(path);
        if !path.ends_with('/') {
            path.push('/');
        }
        self.entries.push(Entry::Dir {
            path,
            mode,
            uid,
            gid,
        });
        self
    }

    /// Adds a regular file owned by root.
    pub fn file(&mut self, path: &str, mode: u32, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.file_owned(path, mode, 0, 0, bytes)
    }

    /// Adds a regular file with an explicit owner.
    pub fn file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        bytes: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.entries.push(Entry::File {
            path: clean(path),
            mode,
            uid,
            gid,
            contents: Contents::Bytes(bytes.into()),
        });
        self
    }

    /// Adds a root-owned file of `len` pseudo-random bytes derived from `seed`
    /// (see [`PseudoRandom`]); nothing is held in memory until
    /// [`LayerBuilder::finish`] streams it.
    pub fn pseudo_random_file(&mut self, path: &str, mode: u32, seed: u64, len: u64) -> &mut Self {
        self.entries.push(Entry::File {
            path: clean(path),
            mode,
            uid: 0,
            gid: 0,
            contents: Contents::PseudoRandom { seed, len },
        });
        self
    }

    /// Adds a symlink `path -> target`; `target` is stored verbatim.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entries.push(Entry::Symlink {
            path: clean(path),
            target: target.to_owned(),
        });
        self
    }

    /// Adds a hard link `path` to the earlier entry `target` (a layer path).
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entries.push(Entry::Hardlink {
            path: clean(path),
            target: clean(target),
        });
        self
    }

    /// Adds an overlay whiteout for `path`: an empty file `dir/.wh.<name>`.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let path = clean(path);
        let path = path.trim_end_matches('/');
        let wh = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.file(&wh, 0o644, Vec::new())
    }

    /// Marks directory `dir` opaque: an empty file `dir/.wh..wh..opq`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        let dir = clean(dir);
        let dir = dir.trim_end_matches('/');
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, Vec::new())
    }

    /// Adds an entry whose header name is `name` byte for byte (`../escape`,
    /// `/abs`, invalid UTF-8, …), bypassing every path check. Names or link
    /// names longer than 100 bytes are carried in GNU long-name records,
    /// also unchecked. Mode 0644 (0755 for directories), owner 0:0.
    pub fn raw_entry(
        &mut self,
        name: impl Into<Vec<u8>>,
        entry_type: tar::EntryType,
        link_name: Option<&[u8]>,
        data: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.entries.push(Entry::Raw {
            name: name.into(),
            entry_type,
            link_name: link_name.map(<[u8]>::to_vec),
            data: data.into(),
        });
        self
    }

    /// Appends `header` and `data` exactly as given (the checksum is not
    /// recomputed): device nodes, odd modes, lying sizes, bad checksums.
    pub fn raw_header(&mut self, header: tar::Header, data: impl Into<Vec<u8>>) -> &mut Self {
        self.entries.push(Entry::Header {
            header: Box::new(header),
            data: data.into(),
        });
        self
    }

    /// Number of entries added so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the plain tar (entries, then the end-of-archive marker) to
    /// `out` and hands the writer back.
    pub fn write_tar<W: Write>(&self, out: W) -> Result<W, ImageError> {
        let mut tar = tar::Builder::new(out);
        for entry in &self.entries {
            write_entry(&mut tar, entry)?;
        }
        tar.into_inner().map_err(|source| ImageError::TarEntry {
            path: "<end-of-archive marker>".to_owned(),
            source,
        })
    }

    /// Writes the tar, compresses it and computes both digests. The builder
    /// is left intact, so the same tar can be finished with several
    /// compressions (they share a `diff_id`). The plain tar is streamed
    /// through the encoder, never held in memory.
    pub fn finish(&self, compression: Compression) -> Result<Layer, ImageError> {
        let compress_err = |source| ImageError::Compress {
            compression,
            source,
        };
        let encoder = Encoder::new(compression).map_err(compress_err)?;
        let hashing = self.write_tar(HashingWriter::new(encoder))?;
        let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
        let blob = hashing.inner.finish().map_err(compress_err)?;
        Ok(Layer {
            media_type: compression.oci_media_type().to_owned(),
            digest: sha256_digest(&blob),
            blob,
            diff_id,
        })
    }
}

/// Drops a leading `/` and `./` so paths are layer-relative.
fn clean(path: &str) -> String {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else {
            break;
        }
    }
    p.to_owned()
}

fn base_header(
    entry_type: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(entry_type);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(FIXED_MTIME);
    h.set_size(size);
    h
}

fn write_entry<W: Write>(tar: &mut tar::Builder<W>, entry: &Entry) -> Result<(), ImageError> {
    let entry_err = |path: &str| {
        let path = path.to_owned();
        move |source| ImageError::TarEntry { path, source }
    };
    match entry {
        Entry::Dir {
            path,
            mode,
            uid,
            gid,
        } => {
            let mut h = base_header(tar::EntryType::Directory, *mode, *uid, *gid, 0);
            tar.append_data(&mut h, path, io::empty())
                .map_err(entry_err(path))
        }
        Entry::File {
            path,
            mode,
            uid,
            gid,
            contents,
        } => {
            let mut h = base_header(tar::EntryType::Regular, *mode, *uid, *gid, contents.len());
            tar.append_data(&mut h, path, contents.reader())
                .map_err(entry_err(path))
        }
        Entry::Symlink { path, target } => {
            let mut h = base_header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
            tar.append_link(&mut h, path, target)
                .map_err(entry_err(path))
        }
        Entry::Hardlink { path, target } => {
            let mut h = base_header(tar::EntryType::Link, 0o644, 0, 0, 0);
            tar.append_link(&mut h, path, target)
                .map_err(entry_err(path))
        }
        Entry::Raw {
            name,
            entry_type,
            link_name,
            data,
        } => {
            let shown = String::from_utf8_lossy(name).into_owned();
            let mode = if entry_type.is_dir() { 0o755 } else { 0o644 };
            let mut h = base_header(*entry_type, mode, 0, 0, data.len() as u64);
            if let Some(link) = link_name {
                write_raw_field(tar, &mut h.as_old_mut().linkname, link, b'K')
                    .map_err(entry_err(&shown))?;
            }
            write_raw_field(tar, &mut h.as_old_mut().name, name, b'L')
                .map_err(entry_err(&shown))?;
            h.set_cksum();
            tar.append(&h, data.as_slice()).map_err(entry_err(&shown))
        }
        Entry::Header { header, data } => {
            let shown = String::from_utf8_lossy(&header.path_bytes()).into_owned();
            tar.append(header, data.as_slice())
                .map_err(entry_err(&shown))
        }
    }
}

/// Stores `value` in a fixed header field; when it does not fit, emits a GNU
/// long-name (`L`) or long-link (`K`) record first and stores a prefix.
fn write_raw_field<W: Write>(
    tar: &mut tar::Builder<W>,
    field: &mut [u8; 100],
    value: &[u8],
    long_kind: u8,
) -> io::Result<()> {
    if value.len() > field.len() {
        let mut long = base_header(tar::EntryType::new(long_kind), 0o644, 0, 0, 0);
        long.set_mtime(0);
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        // GNU tar counts the terminating NUL.
        long.set_size(value.len() as u64 + 1);
        long.set_cksum();
        tar.append(&long, value.chain(&[0u8][..]))?;
    }
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    field[n..].fill(0);
    Ok(())
}

/// Feeds everything written through to `inner` into a SHA-256.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder {
    None(Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(compression: Compression) -> io::Result<Encoder> {
        Ok(match compression {
            Compression::None => Encoder::None(Vec::new()),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::default(),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?),
        })
    }

    fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::None(v) => Ok(v),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(v) => v.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(v) => v.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// An endless deterministic byte stream (xorshift64*) over a 16-letter
/// alphabet: 4 bits of entropy per byte, so gzip and zstd do real work and
/// reach roughly 2:1, like typical layer content.
#[derive(Debug, Clone)]
pub struct PseudoRandom {
    state: u64,
    buf: [u8; 8],
    pos: usize,
}

impl PseudoRandom {
    /// A stream for `seed` (any value, zero included).
    pub fn new(seed: u64) -> PseudoRandom {
        PseudoRandom {
            // xorshift must not start at 0; mix the seed so nearby seeds diverge.
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            buf: [0; 8],
            pos: 8,
        }
    }

    fn refill(&mut self) {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        for (out, b) in self.buf.iter_mut().zip(r) {
            *out = b"abcdefghijklmnop"[usize::from(b & 0x0f)];
        }
        self.pos = 0;
    }
}

impl Read for PseudoRandom {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        for byte in out.iter_mut() {
            if self.pos == self.buf.len() {
                self.refill();
            }
            *byte = self.buf[self.pos];
            self.pos += 1;
        }
        Ok(out.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::many_small_files_layer;

    /// (path, type, link name, data) of each entry.
    type Entries = Vec<(Vec<u8>, tar::EntryType, Option<Vec<u8>>, Vec<u8>)>;

    fn entries(layer: &Layer) -> Entries {
        let tar = layer.tar();
        let mut archive = tar::Archive::new(tar.as_slice());
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path_bytes().into_owned();
                let kind = e.header().entry_type();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, kind, link, data)
            })
            .collect()
    }

    #[test]
    fn clean_strips_leading_root_and_dot() {
        assert_eq!(clean("/bin/sh"), "bin/sh");
        assert_eq!(clean("./etc/passwd"), "etc/passwd");
        assert_eq!(clean(".//x"), "x");
        assert_eq!(clean("a/b"), "a/b");
    }

    #[test]
    fn whiteouts_and_opaque_dirs_are_named_for_overlay_conventions() {
        let mut b = LayerBuilder::new();
        b.whiteout("/etc/motd").whiteout("gone").opaque("/var/lib/");
        let layer = b.finish(Compression::None).unwrap();
        let names: Vec<_> = entries(&layer).into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            vec![
                b"etc/.wh.motd".to_vec(),
                b".wh.gone".to_vec(),
                b"var/lib/.wh..wh..opq".to_vec()
            ]
        );
    }

    #[test]
    fn raw_entries_keep_hostile_names_verbatim() {
        let long = format!("{}/evil", "a".repeat(150));
        let mut b = LayerBuilder::new();
        b.raw_entry("../escape", tar::EntryType::Regular, None, "x")
            .raw_entry("/abs", tar::EntryType::Symlink, Some(b"/etc/shadow"), "")
            .raw_entry(long.clone(), tar::EntryType::Regular, None, "long")
            .raw_entry(
                "link",
                tar::EntryType::Link,
                Some(format!("../../{}", "b".repeat(120)).as_bytes()),
                "",
            );
        let layer = b.finish(Compression::Gzip).unwrap();
        let got = entries(&layer);
        assert_eq!(got[0].0, b"../escape");
        assert_eq!(got[0].3, b"x");
        assert_eq!(got[1].0, b"/abs");
        assert_eq!(got[1].1, tar::EntryType::Symlink);
        assert_eq!(got[1].2.as_deref(), Some(&b"/etc/shadow"[..]));
        assert_eq!(got[2].0, long.as_bytes());
        assert_eq!(got[2].3, b"long");
        assert_eq!(
            got[3].2.as_deref(),
            Some(format!("../../{}", "b".repeat(120)).as_bytes())
        );
    }

    #[test]
    fn ordinary_methods_reject_parent_dir_paths() {
        let mut b = LayerBuilder::new();
        b.file("a/../../escape", 0o644, "x");
        let err = b.finish(Compression::None).unwrap_err();
        assert!(matches!(err, ImageError::TarEntry { ref path, .. } if path == "a/../../escape"));
    }

    #[test]
    fn long_paths_and_owners_round_trip() {
        let deep = format!("{}/file", "d".repeat(120));
        let mut b = LayerBuilder::new();
        b.dir_owned("home/u", 0o750, 1000, 1001)
            .file(&deep, 0o600, "deep")
            .symlink("s", &"t".repeat(200))
            .hardlink("h", &deep);
        let layer = b.finish(Compression::Zstd).unwrap();
        let tar = layer.tar();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut it = archive.entries().unwrap();
        let dir = it.next().unwrap().unwrap();
        assert_eq!(&*dir.path_bytes(), b"home/u/");
        assert_eq!(dir.header().uid().unwrap(), 1000);
        assert_eq!(dir.header().gid().unwrap(), 1001);
        assert_eq!(dir.header().mode().unwrap(), 0o750);
        assert_eq!(dir.header().mtime().unwrap(), FIXED_MTIME);
        let file = it.next().unwrap().unwrap();
        assert_eq!(file.path_bytes().as_ref(), deep.as_bytes());
        let link = it.next().unwrap().unwrap();
        assert_eq!(
            link.link_name_bytes().unwrap().as_ref(),
            "t".repeat(200).as_bytes()
        );
        let hard = it.next().unwrap().unwrap();
        assert_eq!(hard.header().entry_type(), tar::EntryType::Link);
        assert_eq!(hard.link_name_bytes().unwrap().as_ref(), deep.as_bytes());
    }

    #[test]
    fn same_tar_with_different_compressions_shares_diff_id() {
        let mut b = LayerBuilder::new();
        b.file("x", 0o644, "hello");
        let none = b.finish(Compression::None).unwrap();
        let gz = b.finish(Compression::Gzip).unwrap();
        let zst = b.finish(Compression::Zstd).unwrap();
        assert_eq!(none.digest, none.diff_id);
        assert_eq!(gz.diff_id, none.diff_id);
        assert_eq!(zst.diff_id, none.diff_id);
        assert_ne!(gz.digest, zst.digest);
        assert_eq!(b.finish(Compression::Gzip).unwrap(), gz, "deterministic");
    }

    #[test]
    fn pseudo_random_is_deterministic_and_compressible() {
        let mut a = vec![0; 1 << 16];
        let mut b = vec![0; 1 << 16];
        PseudoRandom::new(7).read_exact(&mut a).unwrap();
        PseudoRandom::new(7).read_exact(&mut b).unwrap();
        assert_eq!(a, b);
        let mut c = vec![0; 1 << 16];
        PseudoRandom::new(8).read_exact(&mut c).unwrap();
        assert_ne!(a, c);
        let gz = many_small_files_layer(4, 1 << 16, Compression::Gzip);
        let ratio = gz.tar().len() as f64 / gz.blob.len() as f64;
        assert!((1.5..3.0).contains(&ratio), "compression ratio {ratio}");
    }
}
