//! Snapshots: one directory per layer, keyed by chain id, shared between images.
//!
//! A layer unpacks into `snapshots/tmp-<hex>-<n>/fs`, is synced (syncfs) when the
//! snapshotter is durable, then renamed to `snapshots/<chain hex>/`; a crash leaves only
//! `tmp-*` directories, which [`Snapshotter::clean_temps`] removes at start-up. The
//! snapshotter never mounts: it returns overlay mounts as data.
//!
//! Durability: a committed snapshot's files must be on disk before the rename makes it
//! visible, or a power cut could leave a recorded layer with empty or missing files.
//! On tmpfs and ramfs nothing survives a reboot anyway, so no flush is done there; the
//! operator can also turn flushing off (`[images] durable = false`). See
//! `docs/decisions.md` for why the flush is one `syncfs` rather than per-file `fsync`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;
use crate::error::{ImageError, io};
use crate::unpack::Flusher;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A mount, as data, for the runtime to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type, e.g. `overlay`.
    pub fstype: String,
    /// Source, e.g. `overlay`.
    pub source: String,
    /// Lower directories, topmost first (passed with fsconfig `lowerdir+`).
    pub lower: Vec<PathBuf>,
    /// The upper directory.
    pub upper: PathBuf,
    /// The overlay work directory.
    pub work: PathBuf,
}

/// Layer directories under `<root>/snapshots`.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    dir: PathBuf,
    sync: bool,
    /// When syncing: starts the write-out while layers unpack (one for all of them).
    flusher: Option<Flusher>,
}

/// A snapshot being written; removed on drop unless committed.
#[derive(Debug)]
pub struct TempSnapshot {
    dir: PathBuf,
    /// The directory, opened before anything was written into it (when the
    /// snapshotter syncs): the commit's `syncfs` on it reports every write-out error
    /// since then, including those a background flush or the kernel's own writeback
    /// met first (Linux reports a filesystem's write-back errors to each open file
    /// once, and only those that happened after it was opened).
    sync_fd: Option<fs::File>,
    committed: bool,
}

impl TempSnapshot {
    /// The directory the layer's files go into.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Snapshotter {
    /// The snapshotter under `root` (directory created). `durable`: flush a layer's
    /// files to disk before committing it, unless `root` is on tmpfs or ramfs.
    pub fn open(root: &Path, durable: bool) -> Result<Snapshotter, ImageError> {
        let dir = root.join("snapshots");
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let sync = durable && !volatile(&dir)?;
        let flusher = if sync {
            match Flusher::start(&dir) {
                Ok(f) => Some(f),
                Err(e) => {
                    // Layers are still flushed before their commit, only later.
                    tracing::warn!(dir = %dir.display(), error = %e, "no background flusher");
                    None
                }
            }
        } else {
            None
        };
        Ok(Snapshotter { dir, sync, flusher })
    }

    /// Whether commits flush to disk (`durable` and not on a memory filesystem).
    pub fn syncs(&self) -> bool {
        self.sync
    }

    /// What an unpack into a temp snapshot should start its disk write-out with
    /// ([`crate::unpack::UnpackOptions::writeback`]): None when commits do not flush.
    pub fn writeback(&self) -> Option<Flusher> {
        self.flusher.clone()
    }

    fn path(&self, chain: &Digest) -> PathBuf {
        self.dir.join(chain.hex())
    }

    /// The committed layer directory (the overlay lower dir) of `chain`.
    pub fn fs_path(&self, chain: &Digest) -> PathBuf {
        self.path(chain).join("fs")
    }

    /// Whether `chain` is committed.
    pub fn exists(&self, chain: &Digest) -> bool {
        self.fs_path(chain).is_dir()
    }

    /// A fresh temp snapshot for `chain`.
    pub fn prepare(&self, chain: &Digest) -> Result<TempSnapshot, ImageError> {
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .dir
            .join(format!("tmp-{}-{}-{n}", chain.hex(), std::process::id()));
        let fs_dir = dir.join("fs");
        let mut temp = TempSnapshot {
            dir,
            sync_fd: None,
            committed: false,
        };
        fs::create_dir_all(&fs_dir).map_err(io("create", &fs_dir))?;
        if self.sync {
            temp.sync_fd = Some(fs::File::open(&temp.dir).map_err(io("open", &temp.dir))?);
        }
        Ok(temp)
    }

    /// Make a fully written temp snapshot visible as `chain`: sync (when durable), then
    /// rename.
    pub fn commit(&self, mut temp: TempSnapshot, chain: &Digest) -> Result<(), ImageError> {
        if let Some(dir_fd) = &temp.sync_fd {
            rustix::fs::syncfs(dir_fd).map_err(|e| ImageError::Io {
                op: "syncfs",
                path: temp.dir.clone(),
                source: e.into(),
            })?;
        }
        let target = self.path(chain);
        match fs::rename(&temp.dir, &target) {
            Ok(()) => {}
            // Someone committed the same chain first: theirs is as good as ours.
            Err(_) if self.exists(chain) => return Ok(()),
            Err(e) => {
                return Err(ImageError::Io {
                    op: "rename",
                    path: temp.dir.clone(),
                    source: e,
                });
            }
        }
        temp.committed = true;
        if self.sync {
            // The rename itself: without it a power cut could forget the commit (the
            // layer would be pulled again, nothing worse), so a failure is only logged.
            match fs::File::open(&self.dir).and_then(|d| d.sync_all()) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot flush the snapshot directory")
                }
            }
        }
        Ok(())
    }

    /// Remove a committed snapshot; missing is fine.
    pub fn remove(&self, chain: &Digest) -> Result<(), ImageError> {
        let path = self.path(chain);
        // Rename first so a crash mid-delete leaves a tmp-* dir, not a half snapshot.
        let doomed = self
            .dir
            .join(format!("tmp-rm-{}-{}", chain.hex(), std::process::id()));
        match fs::rename(&path, &doomed) {
            Ok(()) => fs::remove_dir_all(&doomed).map_err(io("remove", &doomed)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::Io {
                op: "rename",
                path,
                source: e,
            }),
        }
    }

    /// Every committed chain id.
    pub fn list(&self) -> Result<Vec<Digest>, ImageError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let entry = entry.map_err(io("list", &self.dir))?;
            if let Some(name) = entry.file_name().to_str()
                && let Ok(d) = Digest::parse(&format!("sha256:{name}"))
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Remove leftovers of interrupted unpacks and deletes.
    pub fn clean_temps(&self) -> Result<usize, ImageError> {
        let mut n = 0;
        for entry in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let entry = entry.map_err(io("list", &self.dir))?;
            if entry.file_name().to_string_lossy().starts_with("tmp-") {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(io("remove", &path))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The overlay mount for a container on `chains` (bottom layer first).
    pub fn mounts(&self, chains: &[Digest], upper: &Path, work: &Path) -> Mount {
        Mount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            lower: chains.iter().rev().map(|c| self.fs_path(c)).collect(),
            upper: upper.to_path_buf(),
            work: work.to_path_buf(),
        }
    }
}

/// Whether `dir` is on a filesystem that lives in memory (tmpfs, ramfs).
fn volatile(dir: &Path) -> Result<bool, ImageError> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let st = rustix::fs::statfs(dir).map_err(|e| ImageError::Io {
        op: "statfs",
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    let kind = st.f_type as i64;
    Ok(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_is_off_on_memory_filesystems_and_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let on_tmp = volatile(dir.path()).unwrap();
        assert_eq!(
            Snapshotter::open(dir.path(), true).unwrap().syncs(),
            !on_tmp
        );
        assert!(!Snapshotter::open(dir.path(), false).unwrap().syncs());
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && volatile(shm).unwrap_or(false) {
            let d = tempfile::tempdir_in(shm).unwrap();
            assert!(!Snapshotter::open(d.path(), true).unwrap().syncs());
        }
    }

    #[test]
    fn prepare_commit_remove_and_clean() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(dir.path(), true).unwrap();
        let chain = Digest::of(b"layer");
        let t = s.prepare(&chain).unwrap();
        std::fs::write(t.fs().join("f"), b"x").unwrap();
        s.commit(t, &chain).unwrap();
        assert!(s.exists(&chain));
        assert_eq!(s.list().unwrap(), vec![chain.clone()]);
        // A dropped temp snapshot disappears.
        let t = s.prepare(&Digest::of(b"other")).unwrap();
        let tdir = t.fs();
        drop(t);
        assert!(!tdir.exists());
        // A crash leftover is cleaned.
        std::fs::create_dir_all(dir.path().join("snapshots/tmp-x/fs")).unwrap();
        assert_eq!(s.clean_temps().unwrap(), 1);
        let m = s.mounts(
            std::slice::from_ref(&chain),
            Path::new("/u"),
            Path::new("/w"),
        );
        assert_eq!(m.lower, vec![s.fs_path(&chain)]);
        s.remove(&chain).unwrap();
        s.remove(&chain).unwrap();
        assert!(!s.exists(&chain));
    }
}
