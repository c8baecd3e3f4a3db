//! Unpacking a layer tar into its snapshot directory.
//!
//! [`unpack`] streams an already decompressed layer tar into an empty
//! directory that overlayfs then uses as a lower dir: file contents are
//! never buffered whole, overlay whiteouts replace `.wh.` marker files, and
//! no entry can write outside the directory.
//!
//! # Confinement
//!
//! The layer root is opened once and every path from the tar is resolved
//! against that fd by the kernel with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`: `..` stops at the layer root and absolute
//! symlinks — including ones this very tar created, like `evil -> /` or
//! `evil -> ../../..` — are resolved as if the layer root were `/`, so a
//! lookup can never reach a directory outside it, whatever the order of
//! entries. Names are first normalised lexically (`/`, `.`, `..` clamped, as
//! containerd does) so each entry is a parent path plus one final
//! component. Only the parent goes through `openat2`; the operations that
//! take no resolve flags (`mkdirat`, `symlinkat`, `linkat`, `mknodat`,
//! `unlinkat`) then act on that single component relative to the parent fd,
//! and never follow it: regular files are created `O_CREAT | O_EXCL |
//! O_NOFOLLOW`, metadata of symlinks and devices uses `AT_SYMLINK_NOFOLLOW`,
//! and whatever already occupies a name is unlinked, not written through. A
//! hard link's source is resolved the same way (parent via `openat2`, then
//! `linkat` on one component without following it), so it can only name a
//! file of this layer.
//!
//! # IO engines
//!
//! With io_uring ([`IoEngine`], `unpack/uring.rs`) the contents of big
//! files are written from buffers the ring owns while the next chunk is
//! read, and closes are queued; both engines produce the same tree.

mod fs;
mod guard;
mod meta;
mod path;
mod uring;
mod writeback;

pub use self::writeback::Flusher;

use std::cmp::Reverse;
use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{FileType, Gid, Mode, OFlags, Stat, Timestamps, Uid};
use rustix::io::Errno;
use tar::EntryType;

use self::fs::{BlockingFs, FsOps, Target};
use self::guard::ExtensionGuard;
use self::meta::EntryMeta;
use self::uring::UringFs;
use self::writeback::Pokes;

/// Which IO engine [`unpack`] writes files with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// io_uring when [`skiff_uring_io::select`] allows it (the kernel
    /// supports it and `SKIFF_IO_ENGINE` is not `blocking`), otherwise
    /// blocking syscalls.
    #[default]
    Auto,
    /// io_uring; [`unpack`] fails with [`UnpackError::Engine`] if a ring
    /// cannot be set up.
    Uring,
    /// One blocking syscall per operation.
    Blocking,
}

/// How to unpack a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Running as root with `CAP_CHOWN`, `CAP_MKNOD` and `CAP_SYS_ADMIN`:
    /// apply owners, create device nodes and overlay whiteouts, set
    /// `trusted.*` and `security.*` xattrs. Without it, owners and those
    /// xattrs are not applied, character and block devices are skipped
    /// (counted in [`UnpackStats::skipped_devices`]), and a whiteout is an
    /// [`UnpackError::Unprivileged`] error. Fifos are always created.
    pub privileged: bool,
    /// Longest entry name or link target accepted, in bytes.
    pub max_path_len: usize,
    /// Largest single PAX (`x`, `g`) or GNU long-name / long-link (`L`,
    /// `K`) extension header accepted, in bytes. Checked against the size
    /// the header declares, before anything is read into memory.
    pub max_pax_bytes: usize,
    /// The IO engine.
    pub engine: IoEngine,
    /// Start the disk writeback while the layer is still being unpacked: big
    /// files' windows (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not
    /// wait) and, every 16 MiB or so written, a poke of this [`Flusher`] (a
    /// `syncfs` of the filesystem on its thread), so the flush before the commit
    /// finds most of the layer already written. Set when the snapshotter flushes
    /// layers (it owns the flusher).
    pub writeback: Option<Flusher>,
}

impl Default for UnpackOptions {
    /// Privileged when running as root; 4096-byte paths; 1 MiB extensions;
    /// [`IoEngine::Auto`].
    fn default() -> Self {
        UnpackOptions {
            privileged: rustix::process::geteuid().is_root(),
            max_path_len: 4096,
            max_pax_bytes: 1 << 20,
            engine: IoEngine::Auto,
            writeback: None,
        }
    }
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries read (extension headers not counted).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directory entries applied (implicitly created parents not counted).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Device nodes and fifos created.
    pub devices: u64,
    /// Overlay whiteouts and opaque-directory markers applied.
    pub whiteouts: u64,
    /// Character and block devices skipped because not privileged.
    pub skipped_devices: u64,
    /// Other entries skipped: unknown types, PAX global headers, AUFS
    /// metadata (`.wh..wh.*`), a non-directory entry naming the root.
    pub skipped: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

/// Why a layer could not be unpacked. `path` is the tar entry's name as
/// stored in the archive (lossily decoded).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer root could not be opened.
    #[error("opening layer root {path}: {source}")]
    Root {
        /// The root directory given to [`unpack`].
        path: String,
        /// Why it could not be opened.
        #[source]
        source: io::Error,
    },
    /// The tar stream could not be read or parsed (I/O error, bad header
    /// checksum, end of stream inside a header).
    #[error("reading layer tar ({path}): {source}")]
    Read {
        /// Where: `entry <name>` while reading an entry's data, `after entry
        /// <name>` or `at the start` while reading headers.
        path: String,
        /// The reader's or the tar parser's error.
        #[source]
        source: io::Error,
    },
    /// The stream ended inside an entry's data.
    #[error("layer tar is truncated: entry {path} ends after {read} of {size} bytes")]
    Truncated {
        /// The entry.
        path: String,
        /// Its declared size.
        size: u64,
        /// Bytes present.
        read: u64,
    },
    /// A PAX or GNU long-name extension header declares more than
    /// [`UnpackOptions::max_pax_bytes`].
    #[error(
        "tar extension header '{kind}' {path} declares {size} bytes, more than the limit of {limit}"
    )]
    ExtensionTooLarge {
        /// `after entry <name>` or `at the start`: the entry it would
        /// describe is not known yet.
        path: String,
        /// The header's typeflag.
        kind: char,
        /// The size it declares.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// An entry name or link target is longer than
    /// [`UnpackOptions::max_path_len`].
    #[error("tar entry {path}: name or link target of {len} bytes exceeds the limit of {limit}")]
    PathTooLong {
        /// The entry's first bytes.
        path: String,
        /// The offending length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A header field or record is malformed.
    #[error("tar entry {path}: {reason}")]
    Invalid {
        /// The entry.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A hard link names a file that does not exist in this layer.
    #[error("tar entry {path}: hard link target {target} does not exist in this layer")]
    HardlinkTargetMissing {
        /// The link.
        path: String,
        /// Its target as stored in the archive.
        target: String,
    },
    /// A hard link names a directory.
    #[error("tar entry {path}: hard link target {target} is a directory")]
    HardlinkToDirectory {
        /// The link.
        path: String,
        /// Its target as stored in the archive.
        target: String,
    },
    /// The entry needs privileges the unpack runs without.
    #[error("tar entry {path}: {what} needs root (CAP_MKNOD, CAP_SYS_ADMIN)")]
    Unprivileged {
        /// The entry.
        path: String,
        /// What it asked for.
        what: &'static str,
    },
    /// Setting an extended attribute failed.
    #[error("tar entry {path}: setting xattr {name}: {source}")]
    Xattr {
        /// The entry.
        path: String,
        /// The attribute.
        name: String,
        /// The kernel's refusal.
        #[source]
        source: io::Error,
    },
    /// [`IoEngine::Uring`] was asked for and no io_uring could be set up.
    #[error("setting up the io_uring engine: {source}")]
    Engine {
        /// Why the ring could not be created.
        #[source]
        source: skiff_uring_io::RingError,
    },
    /// A filesystem operation failed.
    #[error("tar entry {path}: {op}: {source}")]
    Fs {
        /// The entry.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The kernel's refusal.
        #[source]
        source: io::Error,
    },
}

/// Unpacks the layer `tar` (already decompressed) into `root`, an existing
/// empty directory, as an overlayfs lower dir. Nothing outside `root` is
/// ever written. On error `root` holds a partial layer: discard it.
///
/// The caller makes the result durable (`syncfs`) and renames it into
/// place.
pub fn unpack(
    tar: impl Read,
    root: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Root {
        path: root.display().to_string(),
        source: e.into(),
    })?;
    let ring = match opts.engine {
        IoEngine::Blocking => None,
        IoEngine::Uring => Some(UringFs::new().map_err(|source| UnpackError::Engine { source })?),
        IoEngine::Auto => match skiff_uring_io::select() {
            skiff_uring_io::Engine::Uring => match UringFs::new() {
                Ok(ring) => Some(ring),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up an io_uring, unpacking with blocking syscalls");
                    None
                }
            },
            skiff_uring_io::Engine::Blocking(_) => None,
        },
    };
    match ring {
        Some(ring) => unpack_with(ring, tar, root_fd, opts),
        None => unpack_with(BlockingFs, tar, root_fd, opts),
    }
}

/// [`unpack`] on any [`FsOps`] implementation.
fn unpack_with<F: FsOps>(
    ops: F,
    tar: impl Read,
    root: OwnedFd,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let guard = ExtensionGuard::new(opts.max_pax_bytes);
    let mut archive = tar::Archive::new(guard.reader(tar));
    let mut entries = archive.entries().map_err(|source| UnpackError::Read {
        path: AT_START.to_owned(),
        source,
    })?;
    let creation = Creation::probe(root.as_fd());
    let mut unpacker = Unpacker {
        ops,
        root: Rc::new(root),
        creation,
        opts,
        stats: UnpackStats::default(),
        parent_cache: None,
        dirs: Vec::new(),
        buf: vec![0; COPY_BUF],
        pokes: opts.writeback.clone().map(Pokes::new),
    };
    let mut position = AT_START.to_owned();
    loop {
        guard.arm();
        let next = entries.next();
        guard.disarm();
        let mut entry = match next {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(source)) => {
                let path = position;
                return Err(match guard.tripped() {
                    Some(o) => UnpackError::ExtensionTooLarge {
                        path,
                        kind: o.kind,
                        size: o.size,
                        limit: opts.max_pax_bytes,
                    },
                    None => UnpackError::Read { path, source },
                });
            }
        };
        position = format!("after entry {}", unpacker.entry(&mut entry)?);
    }
    unpacker.finish()
}

/// Where a failure before the first entry happened.
const AT_START: &str = "at the start";

/// How much of an over-long name an error message shows.
const SHOWN_PREFIX: usize = 128;

/// Read size for file contents.
const COPY_BUF: usize = 128 * 1024;

/// With [`UnpackOptions::writeback`]: files of at least this size get their
/// writeback started, in windows of this size while they are written and for the
/// rest at their end. Smaller files are left to the background flusher: a syscall
/// per small file cost more than it saved (`docs/decisions.md`).
const WRITEBACK_WINDOW: u64 = 4 << 20;

/// How far behind the write offset a writeback window ends: writes the io_uring
/// engine still has in flight (at most 2 MiB) are not dirty pages yet.
const WRITEBACK_LAG: u64 = 4 << 20;

/// The one xattr the unpacker itself sets: overlayfs's opaque-dir marker.
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
/// overlayfs's own xattrs; a layer only speaks to overlayfs through
/// whiteout entries (see [`Unpacker::set_xattrs`]).
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`) and the opaque marker.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// A directory whose mode and times are applied once all entries are in:
/// creating children would bump its mtime, and a read-only mode could stop
/// an unprivileged unpack from creating them.
struct DeferredDir {
    path: Vec<u8>,
    mode: Mode,
    times: Timestamps,
    /// Identifies the directory, in case a later entry replaced it.
    node: Stat,
}

/// What a regular file the unpacker creates already has, so the calls that
/// would set the same again can be left out. Conservative: anything that
/// could make a new file differ turns the shortcut off for the rest of the
/// layer.
#[derive(Debug, Clone, Copy, Default)]
struct Creation {
    /// The owner: this process's effective ids. None when the root is
    /// setgid or not of our group, or once a directory was given another
    /// group (a setgid directory, or a `grpid` mount, passes its group on).
    owner: Option<(Uid, Gid)>,
    /// This process's umask, as `/proc/self/status` shows it. None when a
    /// default ACL (which replaces the umask for new files) is on the root,
    /// or once one was set on a directory.
    umask: Option<u32>,
}

/// The xattr of a directory's default ACL.
const DEFAULT_ACL_XATTR: &[u8] = b"system.posix_acl_default";

impl Creation {
    fn probe(root: BorrowedFd<'_>) -> Creation {
        let egid = rustix::process::getegid();
        let plain_group = rustix::fs::fstat(root)
            .is_ok_and(|st| st.st_mode & 0o2000 == 0 && st.st_gid == egid.as_raw());
        let owner = plain_group.then(|| (rustix::process::geteuid(), egid));
        let default_acl = !matches!(
            rustix::fs::fgetxattr_query(root, c"system.posix_acl_default"),
            Err(Errno::NODATA | Errno::NOTSUP)
        );
        let umask = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find_map(|l| l.strip_prefix("Umask:"))?;
                u32::from_str_radix(line.trim(), 8).ok()
            })
            .filter(|_| !default_acl);
        Creation { owner, umask }
    }

    /// Whether a file created with `mode`'s permission bits (less the umask)
    /// has all of `mode`: no setuid/setgid/sticky bits (a chown would clear
    /// the first two; they are set after it) and none the umask takes away.
    fn has_mode(self, mode: Mode) -> bool {
        let bits = mode.as_raw_mode();
        bits & 0o7000 == 0 && self.umask.is_some_and(|m| bits & m == 0)
    }
}

struct Unpacker<'o, F> {
    ops: F,
    root: Rc<OwnedFd>,
    creation: Creation,
    opts: &'o UnpackOptions,
    stats: UnpackStats,
    /// The last parent directory opened, by normalised path: tars list a
    /// directory's entries together. Dropped whenever anything is removed.
    parent_cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    dirs: Vec<DeferredDir>,
    buf: Vec<u8>,
    /// With [`UnpackOptions::writeback`]: this unpack's pokes of the flusher.
    pokes: Option<Pokes>,
}

impl<F: FsOps> Unpacker<'_, F> {
    /// Unpacks one entry and reads it to the end; returns its name for
    /// error messages about what follows.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<String, UnpackError> {
        self.stats.entries += 1;
        let raw = entry.path_bytes().into_owned();
        if raw.len() > self.opts.max_path_len {
            return Err(UnpackError::PathTooLong {
                path: format!("{}…", lossy(&raw[..SHOWN_PREFIX.min(raw.len())])),
                len: raw.len(),
                limit: self.opts.max_path_len,
            });
        }
        let shown = lossy(&raw);
        let mut kind = entry.header().entry_type();
        // Pre-POSIX tars mark a directory only by a trailing slash on an
        // old-style ('\0') regular entry.
        if entry.header().as_old().linkflag[0] == 0 && raw.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        let path = path::normalise(&raw);
        let consumed = self.dispatch(entry, kind, &path, &shown)?;

        // Read what was not consumed (skipped entries' data) so truncation is
        // reported against this entry and the extension guard finds the next
        // header where it expects it.
        let rest = drain(entry).map_err(|source| UnpackError::Read {
            path: format!("entry {shown}"),
            source,
        })?;
        let size = if kind.is_gnu_sparse() {
            // The expanded size, which is what reading yields.
            entry
                .header()
                .size()
                .map_err(|e| invalid(&shown, format!("size: {e}")))?
        } else {
            entry.size()
        };
        if consumed + rest < size {
            return Err(UnpackError::Truncated {
                path: shown,
                size,
                read: consumed + rest,
            });
        }
        Ok(shown)
    }

    /// Returns the content bytes consumed.
    fn dispatch<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        path: &[u8],
        shown: &str,
    ) -> Result<u64, UnpackError> {
        if path.is_empty() {
            if kind.is_dir() {
                self.root_dir(entry, shown)?;
            } else {
                tracing::debug!(
                    entry = shown,
                    "skipping non-directory entry for the layer root"
                );
                self.stats.skipped += 1;
            }
            return Ok(0);
        }
        let (parent, name) = path::split(path);
        // Docker's AUFS driver kept its metadata (`.wh..wh.plnk/`,
        // `.wh..wh.aufs`) at the layer root; none of it belongs in an
        // overlay layer.
        let top = path.split(|&b| b == b'/').next().unwrap_or_default();
        if top.starts_with(AUFS_META_PREFIX) && path != OPAQUE_MARKER {
            tracing::debug!(entry = shown, "skipping AUFS metadata entry");
            self.stats.skipped += 1;
            return Ok(0);
        }
        if name.starts_with(WHITEOUT_PREFIX) {
            self.whiteout(entry, parent, name, shown)?;
            return Ok(0);
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                return self.file(entry, parent, name, shown);
            }
            EntryType::Directory => self.dir(entry, path, shown)?,
            EntryType::Symlink => self.symlink(entry, parent, name, shown)?,
            EntryType::Link => self.hardlink(entry, parent, name, shown)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.device(entry, kind, parent, name, shown)?;
            }
            other => {
                // Includes PAX global headers: nothing in them applies to a
                // layer directory.
                tracing::debug!(
                    entry = shown,
                    typeflag = %char::from(other.as_byte()).escape_default(),
                    "skipping tar entry of unsupported type"
                );
                self.stats.skipped += 1;
            }
        }
        Ok(0)
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &[u8],
        name: &[u8],
        shown: &str,
    ) -> Result<u64, UnpackError> {
        let meta = EntryMeta::read(entry, shown)?;
        let name = cstring(name, shown)?;
        let parent = self.parent(parent, shown)?;
        let perms = Mode::from_raw_mode(meta.mode.as_raw_mode() & 0o777);
        let file = self.create_replacing(parent.as_fd(), &name, shown, "creating file", |ops| {
            ops.create_file(parent.as_fd(), &name, perms)
        })?;
        let mut offset = 0u64;
        // Where the next writeback window starts (with `writeback`).
        let mut written_back = 0u64;
        loop {
            if self.opts.writeback.is_some()
                && offset >= written_back + WRITEBACK_WINDOW + WRITEBACK_LAG
            {
                let end = offset - WRITEBACK_LAG;
                writeback::start_range(file.as_fd(), written_back, end - written_back, shown);
                written_back = end;
            }
            let n = fill(entry, &mut self.buf).map_err(|source| UnpackError::Read {
                path: format!("entry {shown}"),
                source,
            })?;
            if n == 0 {
                break;
            }
            // The buffer goes to the engine (which may write it later) and
            // another comes back for the next chunk.
            let chunk = std::mem::take(&mut self.buf);
            let mut next = self
                .ops
                .write_at(&file, chunk, n, offset)
                .map_err(|e| fs_err(shown, "writing file", e))?;
            if next.len() < COPY_BUF {
                next.resize(COPY_BUF, 0);
            }
            self.buf = next;
            offset += n as u64;
            if n < COPY_BUF {
                break;
            }
        }
        self.ops
            .finish_writes(&file)
            .map_err(|e| fs_err(shown, "writing file", e))?;
        if self.opts.writeback.is_some() && offset >= WRITEBACK_WINDOW {
            writeback::start_range(file.as_fd(), written_back, 0, shown);
        }
        self.apply_meta(Target::Fd(file.as_fd()), &meta, shown, Apply::NewFile)?;
        self.ops
            .close(file)
            .map_err(|e| fs_err(shown, "closing file", e))?;
        self.stats.files += 1;
        self.stats.bytes += offset;
        if let Some(pokes) = &mut self.pokes {
            pokes.wrote_file(offset);
        }
        Ok(offset)
    }

    fn dir<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let meta = EntryMeta::read(entry, shown)?;
        let (parent, name) = path::split(path);
        let name = cstring(name, shown)?;
        let parent = self.parent(parent, shown)?;
        // Private until the entry's own mode is applied at the end.
        let initial = Mode::RWXU;
        match self.ops.mkdir(parent.as_fd(), &name, initial) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let existing = self
                    .ops
                    .stat(Target::At {
                        parent: parent.as_fd(),
                        name: &name,
                    })
                    .map_err(|e| fs_err(shown, "inspecting the existing entry", e))?;
                // A directory over a directory merges; anything else (a
                // symlink included) is replaced, never followed.
                if FileType::from_raw_mode(existing.st_mode) != FileType::Directory {
                    self.remove(parent.as_fd(), &name, shown)?;
                    self.ops
                        .mkdir(parent.as_fd(), &name, initial)
                        .map_err(|e| fs_err(shown, "creating directory", e))?;
                }
            }
            Err(e) => return Err(fs_err(shown, "creating directory", e)),
        }
        let dir = self
            .ops
            .open_dir(parent.as_fd(), &name, false)
            .map_err(|e| fs_err(shown, "opening directory", e))?;
        self.apply_meta(Target::Fd(dir.as_fd()), &meta, shown, Apply::OwnerAndXattrs)?;
        self.defer_dir(dir.as_fd(), path, &meta, shown)?;
        self.stats.dirs += 1;
        Ok(())
    }

    /// A directory entry for the layer root itself (`./`).
    fn root_dir<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let meta = EntryMeta::read(entry, shown)?;
        let root = self.root.clone();
        self.apply_meta(
            Target::Fd(root.as_fd()),
            &meta,
            shown,
            Apply::OwnerAndXattrs,
        )?;
        self.defer_dir(root.as_fd(), b"", &meta, shown)?;
        self.stats.dirs += 1;
        Ok(())
    }

    fn defer_dir(
        &mut self,
        dir: BorrowedFd<'_>,
        path: &[u8],
        meta: &EntryMeta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let node = self
            .ops
            .stat(Target::Fd(dir))
            .map_err(|e| fs_err(shown, "inspecting directory", e))?;
        self.dirs.push(DeferredDir {
            path: path.to_vec(),
            mode: meta.mode,
            times: meta.times.clone(),
            node,
        });
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &[u8],
        name: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let meta = EntryMeta::read(entry, shown)?;
        let target = self.link_target(entry, shown)?;
        // Stored verbatim: only ever followed by later lookups, all of which
        // resolve inside the root.
        let target = cstring(&target, shown)?;
        let name = cstring(name, shown)?;
        let parent = self.parent(parent, shown)?;
        self.create_replacing(parent.as_fd(), &name, shown, "creating symlink", |ops| {
            ops.symlink(&target, parent.as_fd(), &name)
        })?;
        let node = Target::At {
            parent: parent.as_fd(),
            name: &name,
        };
        self.apply_meta(node, &meta, shown, Apply::AllButMode)?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &[u8],
        name: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let raw_target = self.link_target(entry, shown)?;
        let target_shown = lossy(&raw_target);
        let missing = || UnpackError::HardlinkTargetMissing {
            path: shown.to_owned(),
            target: target_shown.clone(),
        };
        let target = path::normalise(&raw_target);
        if target.is_empty() {
            return Err(UnpackError::HardlinkToDirectory {
                path: shown.to_owned(),
                target: target_shown,
            });
        }
        let (src_parent, src_name) = path::split(&target);
        let src_name = cstring(src_name, shown)?;
        let src_parent = match self.lookup_dir(src_parent, shown)? {
            Some(dir) => dir,
            None => return Err(missing()),
        };
        let src = match self.ops.stat(Target::At {
            parent: src_parent.as_fd(),
            name: &src_name,
        }) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Err(missing()),
            Err(e) => return Err(fs_err(shown, "inspecting hard link target", e)),
        };
        if FileType::from_raw_mode(src.st_mode) == FileType::Directory {
            return Err(UnpackError::HardlinkToDirectory {
                path: shown.to_owned(),
                target: target_shown,
            });
        }
        let name = cstring(name, shown)?;
        let parent = self.parent(parent, shown)?;
        let link = |ops: &mut F| ops.link(src_parent.as_fd(), &src_name, parent.as_fd(), &name);
        match link(&mut self.ops) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let existing = self.ops.stat(Target::At {
                    parent: parent.as_fd(),
                    name: &name,
                });
                // Linking a file to itself (the same entry twice) is done.
                if !existing.is_ok_and(|st| same_node(&st, &src)) {
                    self.remove(parent.as_fd(), &name, shown)?;
                    match link(&mut self.ops) {
                        Ok(()) => {}
                        // Removing the old entry removed the target too.
                        Err(Errno::NOENT) => return Err(missing()),
                        Err(e) => return Err(fs_err(shown, "creating hard link", e)),
                    }
                }
            }
            Err(Errno::NOENT) => return Err(missing()),
            Err(e) => return Err(fs_err(shown, "creating hard link", e)),
        }
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn device<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        parent: &[u8],
        name: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let file_type = match kind {
            EntryType::Char => FileType::CharacterDevice,
            EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        if file_type != FileType::Fifo && !self.opts.privileged {
            tracing::debug!(entry = shown, "skipping device node: not privileged");
            self.stats.skipped_devices += 1;
            return Ok(());
        }
        let meta = EntryMeta::read(entry, shown)?;
        let (major, minor) = meta::device_numbers(entry.header())
            .map_err(|e| invalid(shown, format!("device number: {e}")))?;
        let dev = rustix::fs::makedev(major, minor);
        let name = cstring(name, shown)?;
        let parent = self.parent(parent, shown)?;
        self.create_replacing(
            parent.as_fd(),
            &name,
            shown,
            "creating device node",
            |ops| ops.mknod(parent.as_fd(), &name, file_type, meta.mode, dev),
        )?;
        let node = Target::At {
            parent: parent.as_fd(),
            name: &name,
        };
        self.apply_meta(node, &meta, shown, Apply::All)?;
        self.stats.devices += 1;
        Ok(())
    }

    /// `dir/.wh.NAME` hides `NAME` of lower layers: a 0/0 character device.
    /// `dir/.wh..wh..opq` hides all of `dir`'s lower contents: the
    /// `trusted.overlay.opaque=y` xattr. The markers themselves are never
    /// written.
    fn whiteout<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &[u8],
        name: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        if name.starts_with(AUFS_META_PREFIX) && name != OPAQUE_MARKER {
            tracing::debug!(entry = shown, "skipping AUFS metadata entry");
            self.stats.skipped += 1;
            return Ok(());
        }
        if !self.opts.privileged {
            return Err(UnpackError::Unprivileged {
                path: shown.to_owned(),
                what: "an overlay whiteout",
            });
        }
        if name == OPAQUE_MARKER {
            let dir = self.parent(parent, shown)?;
            self.ops
                .set_xattr(Target::Fd(dir.as_fd()), OPAQUE_XATTR, b"y")
                .map_err(|e| UnpackError::Xattr {
                    path: shown.to_owned(),
                    name: lossy(OPAQUE_XATTR.to_bytes()),
                    source: e.into(),
                })?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(invalid(shown, "whiteout names no file".to_owned()));
        }
        let meta = EntryMeta::read(entry, shown)?;
        let hidden = cstring(hidden, shown)?;
        let parent = self.parent(parent, shown)?;
        self.create_replacing(parent.as_fd(), &hidden, shown, "creating whiteout", |ops| {
            ops.mknod(
                parent.as_fd(),
                &hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
        })?;
        // Owner as containerd does; mode and times mean nothing here.
        let node = Target::At {
            parent: parent.as_fd(),
            name: &hidden,
        };
        self.apply_meta(node, &meta, shown, Apply::Owner)?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// The link target of a symlink or hard link entry.
    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Vec<u8>, UnpackError> {
        let target = match entry.link_name_bytes() {
            Some(t) if !t.is_empty() => t.into_owned(),
            _ => return Err(invalid(shown, "link without a target".to_owned())),
        };
        if target.len() > self.opts.max_path_len {
            return Err(UnpackError::PathTooLong {
                path: shown.to_owned(),
                len: target.len(),
                limit: self.opts.max_path_len,
            });
        }
        Ok(target)
    }

    /// Applies owner (when privileged), mode, xattrs and times, in the order
    /// that keeps each: chown clears setuid/setgid and `security.capability`.
    fn apply_meta(
        &mut self,
        node: Target<'_>,
        meta: &EntryMeta,
        shown: &str,
        apply: Apply,
    ) -> Result<(), UnpackError> {
        let new = apply == Apply::NewFile;
        if apply == Apply::OwnerAndXattrs
            && self.creation.owner.is_some_and(|(_, gid)| gid != meta.gid)
        {
            // A directory of another group: with `grpid` its files take it.
            self.creation.owner = None;
        }
        if self.opts.privileged && !(new && self.creation.owner == Some((meta.uid, meta.gid))) {
            self.ops
                .chown(node, meta.uid, meta.gid)
                .map_err(|e| fs_err(shown, "changing owner", e))?;
        }
        if apply == Apply::Owner {
            return Ok(());
        }
        if apply == Apply::All || (new && !self.creation.has_mode(meta.mode)) {
            self.ops
                .chmod(node, meta.mode)
                .map_err(|e| fs_err(shown, "changing mode", e))?;
        }
        self.set_xattrs(node, &meta.xattrs, shown)?;
        if apply != Apply::OwnerAndXattrs {
            self.ops
                .set_times(node, &meta.times)
                .map_err(|e| fs_err(shown, "setting times", e))?;
        }
        Ok(())
    }

    /// Sets the entry's PAX xattrs. Attributes the filesystem does not
    /// support are dropped, except `security.capability` and `trusted.*`,
    /// which binaries and overlayfs depend on; unprivileged, the `trusted.*`
    /// and `security.*` namespaces are out of reach and dropped. A layer's
    /// own `trusted.overlay.*` attributes are always dropped: overlayfs
    /// trusts them in lower dirs (redirects, metacopy, opacity), and layers
    /// express whiteouts through `.wh.` entries, which we convert.
    fn set_xattrs(
        &mut self,
        node: Target<'_>,
        xattrs: &[(CString, Vec<u8>)],
        shown: &str,
    ) -> Result<(), UnpackError> {
        for (name, value) in xattrs {
            let bytes = name.to_bytes();
            if bytes.starts_with(OVERLAY_XATTR_PREFIX) {
                tracing::debug!(entry = shown, xattr = ?name, "dropping overlayfs xattr from layer");
                continue;
            }
            let trusted = bytes.starts_with(b"trusted.");
            if !self.opts.privileged && (trusted || bytes.starts_with(b"security.")) {
                tracing::debug!(entry = shown, xattr = ?name, "skipping xattr: not privileged");
                continue;
            }
            if bytes == DEFAULT_ACL_XATTR {
                // New files under it get the ACL's mask instead of the umask.
                self.creation.umask = None;
            }
            let required = trusted || bytes == b"security.capability";
            match self.ops.set_xattr(node, name, value) {
                Ok(()) => {}
                Err(e) if !required && (e == Errno::NOTSUP || e == Errno::OPNOTSUPP) => {
                    tracing::debug!(entry = shown, xattr = ?name, "filesystem does not support xattr");
                }
                // The kernel refuses user.* on symlinks and device nodes.
                Err(Errno::PERM) if bytes.starts_with(b"user.") => {
                    tracing::debug!(entry = shown, xattr = ?name, "xattr refused on this file type");
                }
                Err(e) => {
                    return Err(UnpackError::Xattr {
                        path: shown.to_owned(),
                        name: lossy(bytes),
                        source: e.into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs `create`; if something already occupies the name (an earlier
    /// entry of this tar), removes it and runs `create` again.
    fn create_replacing<T>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        shown: &str,
        op: &'static str,
        mut create: impl FnMut(&mut F) -> rustix::io::Result<T>,
    ) -> Result<T, UnpackError> {
        match create(&mut self.ops) {
            Err(Errno::EXIST) => {
                self.remove(parent, name, shown)?;
                create(&mut self.ops).map_err(|e| fs_err(shown, op, e))
            }
            other => other.map_err(|e| fs_err(shown, op, e)),
        }
    }

    fn remove(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        shown: &str,
    ) -> Result<(), UnpackError> {
        // The cached parent may be what goes, or lie below it.
        self.parent_cache = None;
        self.ops
            .remove(parent, name)
            .map_err(|e| fs_err(shown, "removing the existing entry", e))
    }

    /// Opens (creating what is missing, as containerd does) the parent
    /// directory `path` inside the root.
    fn parent(&mut self, path: &[u8], shown: &str) -> Result<Rc<OwnedFd>, UnpackError> {
        if path.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some((cached, dir)) = &self.parent_cache
            && cached == path
        {
            return Ok(dir.clone());
        }
        let c_path = cstring(path, shown)?;
        let dir = match self.ops.open_dir(self.root.as_fd(), &c_path, true) {
            Ok(dir) => Rc::new(dir),
            Err(Errno::NOENT) => self.make_parents(path, shown)?,
            Err(e) => return Err(fs_err(shown, "opening parent directory", e)),
        };
        self.parent_cache = Some((path.to_vec(), dir.clone()));
        Ok(dir)
    }

    fn make_parents(&mut self, path: &[u8], shown: &str) -> Result<Rc<OwnedFd>, UnpackError> {
        let mut dir = self.root.clone();
        let mut creating = false;
        let mut start = 0;
        for end in memchr_all(b'/', path).chain([path.len()]) {
            let name = cstring(&path[start..end], shown)?;
            start = end + 1;
            if !creating {
                let prefix = cstring(&path[..end], shown)?;
                match self.ops.open_dir(self.root.as_fd(), &prefix, true) {
                    Ok(existing) => {
                        dir = Rc::new(existing);
                        continue;
                    }
                    // From here down nothing exists.
                    Err(Errno::NOENT) => creating = true,
                    Err(e) => return Err(fs_err(shown, "opening parent directory", e)),
                }
            }
            match self
                .ops
                .mkdir(dir.as_fd(), &name, Mode::from_raw_mode(0o755))
            {
                Ok(()) => {}
                // The lookup found nothing, yet the name is taken: a symlink
                // to a missing directory. Creating its target is not worth
                // the complexity for tars no real filesystem diff produces.
                Err(Errno::EXIST) => {
                    return Err(invalid(
                        shown,
                        format!(
                            "parent {} is a symlink to a missing directory",
                            lossy(&path[..end])
                        ),
                    ));
                }
                Err(e) => return Err(fs_err(shown, "creating missing parent directory", e)),
            }
            let created = self
                .ops
                .open_dir(dir.as_fd(), &name, false)
                .map_err(|e| fs_err(shown, "opening created parent directory", e))?;
            // 0755 whatever the umask.
            self.ops
                .chmod(Target::Fd(created.as_fd()), Mode::from_raw_mode(0o755))
                .map_err(|e| fs_err(shown, "changing mode of created parent directory", e))?;
            dir = Rc::new(created);
        }
        Ok(dir)
    }

    /// Opens an existing directory inside the root without creating
    /// anything; `None` when it is missing or not a directory.
    fn lookup_dir(&mut self, path: &[u8], shown: &str) -> Result<Option<Rc<OwnedFd>>, UnpackError> {
        if path.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        if let Some((cached, dir)) = &self.parent_cache
            && cached == path
        {
            return Ok(Some(dir.clone()));
        }
        match self
            .ops
            .open_dir(self.root.as_fd(), &cstring(path, shown)?, true)
        {
            Ok(dir) => Ok(Some(Rc::new(dir))),
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => Ok(None),
            Err(e) => Err(fs_err(shown, "opening directory", e)),
        }
    }

    /// Applies directory modes and times, deepest first so setting a
    /// child's does not touch an already applied parent.
    fn finish(mut self) -> Result<UnpackStats, UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        // Stable: of two entries for one directory, the later still wins.
        dirs.sort_by_key(|d| Reverse(path::depth(&d.path)));
        for d in dirs {
            let shown = lossy(&d.path);
            let dir = if d.path.is_empty() {
                self.root.clone()
            } else {
                match self
                    .ops
                    .open_dir(self.root.as_fd(), &cstring(&d.path, &shown)?, false)
                {
                    Ok(dir) => Rc::new(dir),
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {
                        tracing::debug!(entry = shown, "directory was replaced by a later entry");
                        continue;
                    }
                    Err(e) => return Err(fs_err(&shown, "reopening directory", e)),
                }
            };
            let now = self
                .ops
                .stat(Target::Fd(dir.as_fd()))
                .map_err(|e| fs_err(&shown, "inspecting directory", e))?;
            if !same_node(&now, &d.node) {
                tracing::debug!(entry = shown, "directory was replaced by a later entry");
                continue;
            }
            self.ops
                .chmod(Target::Fd(dir.as_fd()), d.mode)
                .map_err(|e| fs_err(&shown, "changing mode", e))?;
            self.ops
                .set_times(Target::Fd(dir.as_fd()), &d.times)
                .map_err(|e| fs_err(&shown, "setting times", e))?;
        }
        // Queued closes; their files' contents and metadata are done.
        self.ops
            .flush()
            .map_err(|e| fs_err("(queued closes)", "closing files", e))?;
        Ok(self.stats)
    }
}

/// Which metadata [`Unpacker::apply_meta`] applies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Apply {
    /// Owner, mode, xattrs, times: device nodes.
    All,
    /// As `All`, for a regular file just created with the entry's permission
    /// bits: owner and mode only where creating it did not already give them
    /// ([`Creation`]).
    NewFile,
    /// No mode: symlinks have none.
    AllButMode,
    /// Directories: mode and times come at the end.
    OwnerAndXattrs,
    /// Whiteouts.
    Owner,
}

/// Reads until `buf` is full or `r` ends; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads `entry` to its end; returns the bytes read.
fn drain<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<u64> {
    io::copy(entry, &mut io::sink())
}

fn same_node(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Positions of `byte` in `haystack`.
fn memchr_all(byte: u8, haystack: &[u8]) -> impl Iterator<Item = usize> + '_ {
    haystack
        .iter()
        .enumerate()
        .filter(move |&(_, &b)| b == byte)
        .map(|(i, _)| i)
}

fn cstring(bytes: &[u8], shown: &str) -> Result<CString, UnpackError> {
    CString::new(bytes).map_err(|_| invalid(shown, "name contains a NUL byte".to_owned()))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn invalid(shown: &str, reason: String) -> UnpackError {
    UnpackError::Invalid {
        path: shown.to_owned(),
        reason,
    }
}

fn fs_err(shown: &str, op: &'static str, e: Errno) -> UnpackError {
    UnpackError::Fs {
        path: shown.to_owned(),
        op,
        source: e.into(),
    }
}
