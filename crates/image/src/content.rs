//! The content store: small blobs (manifests, indexes, configs) by digest.
//!
//! Layers are not kept as blobs: they stream straight into snapshots (see
//! docs/decisions.md). Writes go to `ingest/` first, are fsynced, verified and
//! renamed into `blobs/sha256/<hex>`, so a crash leaves only ingest files, which
//! [`ContentStore::clean_ingests`] removes at start-up.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{ImageError, io};

/// Blobs under `<root>/content`.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// A store under `root` (directories are created).
    pub fn open(root: &Path) -> Result<ContentStore, ImageError> {
        let blobs = root.join("content/blobs/sha256");
        let ingest = root.join("content/ingest");
        fs::create_dir_all(&blobs).map_err(io("create", &blobs))?;
        fs::create_dir_all(&ingest).map_err(io("create", &ingest))?;
        Ok(ContentStore { blobs, ingest })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the blob is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).exists()
    }

    /// Store `bytes` under `digest` after checking they hash to it.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(ImageError::Mismatch {
                reference: "content store".into(),
                what: "blob digest".into(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        let target = self.path(digest);
        if target.exists() {
            return Ok(());
        }
        let tmp = self
            .ingest
            .join(format!("{}-{}", digest.hex(), std::process::id()));
        let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, &target).map_err(io("rename", &tmp))?;
        Ok(())
    }

    /// Read a blob, verifying it.
    pub fn get(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest);
        let bytes = fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::NotFound(digest.to_string())
            } else {
                ImageError::Io {
                    op: "read",
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(ImageError::Mismatch {
                reference: path.display().to_string(),
                what: "stored blob digest".into(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Remove a blob; missing is fine.
    pub fn delete(&self, digest: &Digest) -> Result<(), ImageError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::Io {
                op: "remove",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Every stored blob (names that are not digests are ignored).
    pub fn list(&self) -> Result<Vec<Digest>, ImageError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(io("list", &self.blobs))? {
            let entry = entry.map_err(io("list", &self.blobs))?;
            if let Some(name) = entry.file_name().to_str()
                && let Ok(d) = Digest::parse(&format!("sha256:{name}"))
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Bytes and files used by stored blobs.
    pub fn usage(&self) -> (u64, u64) {
        let mut bytes = 0;
        let mut files = 0;
        if let Ok(rd) = fs::read_dir(&self.blobs) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    bytes += m.len();
                    files += 1;
                }
            }
        }
        (bytes, files)
    }

    /// Remove leftovers of interrupted writes.
    pub fn clean_ingests(&self) -> Result<usize, ImageError> {
        let mut n = 0;
        for entry in fs::read_dir(&self.ingest).map_err(io("list", &self.ingest))? {
            let entry = entry.map_err(io("list", &self.ingest))?;
            let path = entry.path();
            fs::remove_file(&path).map_err(io("remove", &path))?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_verify_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        store.put(&d, b"hello").unwrap();
        assert_eq!(store.get(&d).unwrap(), b"hello");
        assert!(store.put(&d, b"other").is_err(), "wrong bytes refused");
        assert_eq!(store.list().unwrap(), vec![d.clone()]);
        // A blob corrupted on disk is detected on read.
        std::fs::write(
            dir.path().join("content/blobs/sha256").join(d.hex()),
            b"bad",
        )
        .unwrap();
        assert!(store.get(&d).is_err());
        store.delete(&d).unwrap();
        store.delete(&d).unwrap();
        assert!(matches!(store.get(&d), Err(ImageError::NotFound(_))));
    }

    #[test]
    fn ingests_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("content/ingest/partial"), b"x").unwrap();
        assert_eq!(store.clean_ingests().unwrap(), 1);
    }
}
