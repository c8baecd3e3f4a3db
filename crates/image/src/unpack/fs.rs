//! The filesystem operations the unpacker performs, behind one small trait.
//!
//! Every operation names its object as a directory fd plus either a path
//! resolved *inside* that directory ([`FsOps::open_dir`]) or a single final
//! component (`name`, never `.`, `..` or containing `/`). That is the shape
//! io_uring's `openat2`, `mkdirat`, `symlinkat`, `linkat`, `unlinkat`,
//! `fsetxattr` and `write` opcodes take. [`BlockingFs`] is the
//! plain-syscall implementation; [`super::uring::UringFs`] queues file
//! writes and closes on io_uring.
//!
//! A regular file goes through `create_file → write_at* → finish_writes →
//! metadata (chown, chmod, xattrs, times) → close`; an implementation may
//! queue the writes and the close, but the metadata calls see the file's
//! final contents.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd};

use rustix::fs::{
    AtFlags, Dev, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Timestamps, Uid, XattrFlags,
};
use rustix::io::{Errno, Result};

/// The object a metadata operation applies to.
#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    /// An open regular file or directory.
    Fd(BorrowedFd<'a>),
    /// `name` in `parent`, never followed: symlinks, device nodes, fifos.
    At {
        /// The directory holding the node.
        parent: BorrowedFd<'a>,
        /// Its single-component name.
        name: &'a CStr,
    },
}

/// Filesystem primitives used by the unpacker. Errors are raw errnos; the
/// caller knows which tar entry they belong to.
pub(crate) trait FsOps {
    /// A regular file opened by [`FsOps::create_file`] for writing.
    type File: AsFd;

    /// Opens the directory at `path` resolved with `at` as the root
    /// (`RESOLVE_IN_ROOT`: `..` and absolute symlinks cannot leave it).
    /// With `follow_last == false` a symlink as the last component fails.
    fn open_dir(&mut self, at: BorrowedFd<'_>, path: &CStr, follow_last: bool) -> Result<OwnedFd>;
    /// `stat` without following a final symlink.
    fn stat(&mut self, target: Target<'_>) -> Result<Stat>;
    /// Creates directory `name` in `parent`.
    fn mkdir(&mut self, parent: BorrowedFd<'_>, name: &CStr, mode: Mode) -> Result<()>;
    /// Creates regular file `name` in `parent` with permission bits `mode`
    /// (less the umask; fails if anything exists there, symlinks included)
    /// and opens it for writing, whatever `mode` allows.
    fn create_file(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        mode: Mode,
    ) -> Result<Self::File>;
    /// Writes `buf[..len]` at `offset`, possibly later: errors may then be
    /// reported by [`FsOps::finish_writes`]. Takes the buffer and returns
    /// one to read the next chunk into: `buf` itself once written, or
    /// another while `buf` is in flight (contents unspecified, length at
    /// least `buf`'s when recycled).
    fn write_at(
        &mut self,
        file: &Self::File,
        buf: Vec<u8>,
        len: usize,
        offset: u64,
    ) -> Result<Vec<u8>>;
    /// Waits until every write to `file` is done; reports their errors.
    fn finish_writes(&mut self, _file: &Self::File) -> Result<()> {
        Ok(())
    }
    /// Closes `file`, possibly later: errors may be reported by
    /// [`FsOps::flush`] instead.
    fn close(&mut self, file: Self::File) -> Result<()> {
        drop(file);
        Ok(())
    }
    /// Waits for everything queued; reports the first error.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Creates symlink `name -> target` in `parent`.
    fn symlink(&mut self, target: &CStr, parent: BorrowedFd<'_>, name: &CStr) -> Result<()>;
    /// Hard-links `src_name` in `src_parent` (not following a symlink) as
    /// `name` in `parent`.
    fn link(
        &mut self,
        src_parent: BorrowedFd<'_>,
        src_name: &CStr,
        parent: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<()>;
    /// Creates a device node or fifo.
    fn mknod(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        kind: FileType,
        mode: Mode,
        dev: Dev,
    ) -> Result<()>;
    /// Removes `name` from `parent`, recursively if it is a directory.
    fn remove(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<()>;
    /// Changes owner and group.
    fn chown(&mut self, target: Target<'_>, uid: Uid, gid: Gid) -> Result<()>;
    /// Sets permission bits, setuid/setgid/sticky included.
    fn chmod(&mut self, target: Target<'_>, mode: Mode) -> Result<()>;
    /// Sets one extended attribute.
    fn set_xattr(&mut self, target: Target<'_>, name: &CStr, value: &[u8]) -> Result<()>;
    /// Sets access and modification times.
    fn set_times(&mut self, target: Target<'_>, times: &Timestamps) -> Result<()>;
}

/// [`FsOps`] as one blocking syscall each.
#[derive(Debug, Default)]
pub(crate) struct BlockingFs;

/// How often `openat2` is retried on `EAGAIN`, which `RESOLVE_IN_ROOT`
/// returns when a concurrent rename anywhere on the mount could have made
/// a `..` lookup unsafe.
const OPENAT2_RETRIES: usize = 16;

fn openat2(
    at: BorrowedFd<'_>,
    path: &CStr,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(at, path, flags | OFlags::CLOEXEC, mode, resolve) {
            Err(Errno::AGAIN) if tries < OPENAT2_RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// Resolution for a single component relative to a directory we created:
/// no symlinks at all, nothing outside `at`.
const CHILD_ONLY: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

impl FsOps for BlockingFs {
    type File = OwnedFd;

    fn open_dir(&mut self, at: BorrowedFd<'_>, path: &CStr, follow_last: bool) -> Result<OwnedFd> {
        let mut flags = OFlags::RDONLY | OFlags::DIRECTORY;
        if !follow_last {
            flags |= OFlags::NOFOLLOW;
        }
        openat2(
            at,
            path,
            flags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    fn stat(&mut self, target: Target<'_>) -> Result<Stat> {
        match target {
            Target::Fd(fd) => rustix::fs::fstat(fd),
            Target::At { parent, name } => {
                rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            }
        }
    }

    fn mkdir(&mut self, parent: BorrowedFd<'_>, name: &CStr, mode: Mode) -> Result<()> {
        rustix::fs::mkdirat(parent, name, mode)
    }

    fn create_file(&mut self, parent: BorrowedFd<'_>, name: &CStr, mode: Mode) -> Result<OwnedFd> {
        openat2(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            mode,
            CHILD_ONLY,
        )
    }

    fn write_at(
        &mut self,
        file: &OwnedFd,
        buf: Vec<u8>,
        len: usize,
        offset: u64,
    ) -> Result<Vec<u8>> {
        write_all_at(file, &buf[..len], offset)?;
        Ok(buf)
    }

    fn symlink(&mut self, target: &CStr, parent: BorrowedFd<'_>, name: &CStr) -> Result<()> {
        rustix::fs::symlinkat(target, parent, name)
    }

    fn link(
        &mut self,
        src_parent: BorrowedFd<'_>,
        src_name: &CStr,
        parent: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<()> {
        rustix::fs::linkat(src_parent, src_name, parent, name, AtFlags::empty())
    }

    fn mknod(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        kind: FileType,
        mode: Mode,
        dev: Dev,
    ) -> Result<()> {
        rustix::fs::mknodat(parent, name, kind, mode, dev)
    }

    fn remove(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<()> {
        match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Err(Errno::ISDIR) => remove_tree(parent, name),
            other => other,
        }
    }

    fn chown(&mut self, target: Target<'_>, uid: Uid, gid: Gid) -> Result<()> {
        match target {
            Target::Fd(fd) => rustix::fs::fchown(fd, Some(uid), Some(gid)),
            Target::At { parent, name } => rustix::fs::chownat(
                parent,
                name,
                Some(uid),
                Some(gid),
                AtFlags::SYMLINK_NOFOLLOW,
            ),
        }
    }

    fn chmod(&mut self, target: Target<'_>, mode: Mode) -> Result<()> {
        match target {
            Target::Fd(fd) => rustix::fs::fchmod(fd, mode),
            // Only used for device nodes and fifos, which `name` is: we just
            // created it in a directory nobody else writes to.
            Target::At { parent, name } => {
                rustix::fs::chmodat(parent, name, mode, AtFlags::empty())
            }
        }
    }

    fn set_xattr(&mut self, target: Target<'_>, name: &CStr, value: &[u8]) -> Result<()> {
        match target {
            Target::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
            Target::At { parent, name: node } => {
                // There is no fd-relative lsetxattr before setxattrat (6.13),
                // and an O_PATH fd refuses fsetxattr. /proc/self/fd/<parent>
                // is the very directory `parent` refers to, and `node` is one
                // component that lsetxattr does not follow.
                rustix::fs::lsetxattr(proc_path(parent, node), name, value, XattrFlags::empty())
            }
        }
    }

    fn set_times(&mut self, target: Target<'_>, times: &Timestamps) -> Result<()> {
        match target {
            Target::Fd(fd) => rustix::fs::futimens(fd, times),
            Target::At { parent, name } => {
                rustix::fs::utimensat(parent, name, times, AtFlags::SYMLINK_NOFOLLOW)
            }
        }
    }
}

/// `pwrite` until all of `data` is written.
pub(crate) fn write_all_at(file: &OwnedFd, mut data: &[u8], mut offset: u64) -> Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(file, data, offset) {
            Ok(0) => return Err(Errno::NOSPC),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `/proc/self/fd/<parent>/<name>`.
fn proc_path(parent: BorrowedFd<'_>, name: &CStr) -> Vec<u8> {
    let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.to_bytes());
    path
}

/// Removes directory `name` in `parent` and everything below it, without
/// following symlinks (they are unlinked, never entered).
fn remove_tree(parent: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    let dir = openat2(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        Mode::empty(),
        CHILD_ONLY,
    )?;
    let mut children = Vec::new();
    for entry in Dir::read_from(&dir)? {
        let entry = entry?;
        let child = entry.file_name();
        if child != c"." && child != c".." {
            children.push((CString::from(child), entry.file_type()));
        }
    }
    for (child, kind) in children {
        if kind == FileType::Directory {
            remove_tree(dir.as_fd(), &child)?;
        } else {
            match rustix::fs::unlinkat(&dir, &child, AtFlags::empty()) {
                // d_type can be DT_UNKNOWN on some filesystems.
                Err(Errno::ISDIR) => remove_tree(dir.as_fd(), &child)?,
                other => other?,
            }
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}
