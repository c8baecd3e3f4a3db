//! Starting a layer's disk writeback while it is still being unpacked, so the
//! flush before the commit (`syncfs`, in the snapshotter) finds most of the
//! layer already on the device instead of waiting for all of it at the end.
//!
//! Two mechanisms, both only with [`super::UnpackOptions::writeback`]:
//! - [`start_range`]: `sync_file_range(SYNC_FILE_RANGE_WRITE)` over windows of
//!   big files as they are written (starts the write-out of those pages, does not
//!   wait);
//! - [`Flusher`]: a thread that runs `syncfs` on the layers' filesystem, poked by
//!   each unpack every [`FLUSH_EVERY`] bytes it wrote. That covers the many small
//!   files a per-file syscall would cost too much for, and their metadata (the
//!   journal commit). One flusher serves every unpack into a filesystem (the
//!   snapshotter owns it): a `syncfs` writes out all of them, so layers unpacking
//!   side by side do not multiply the journal commits and device cache flushes.
//!   An unpacking thread only pokes it; a poke while a flush runs is remembered
//!   once, so flushes never queue up.
//!
//! Neither makes the layer durable by itself: the snapshotter's `syncfs` before
//! the commit does. Measured in `docs/decisions.md` ("Durable layers").

use std::fmt;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes an unpack writes (file contents, plus [`PER_FILE`] for each file)
/// between two pokes of the flusher. About 50 ms of unpacking on the journaled
/// ext4 of `perf/run pulldisk`; flushing every 20 ms was slower, every
/// 100-200 ms left more for the final flush.
pub(crate) const FLUSH_EVERY: u64 = 16 << 20;

/// What a file counts for [`FLUSH_EVERY`] beyond its contents: its inode,
/// directory entry and the partial page of its tail.
pub(crate) const PER_FILE: u64 = 4096;

/// Starts the disk write-out of a filesystem in the background while layers
/// unpack into it. Cheap to clone; the thread ends with the last clone (after
/// the flush under way, which a final flush would wait for anyway).
#[derive(Clone)]
pub struct Flusher(Arc<Thread>);

struct Thread {
    poke: Option<SyncSender<()>>,
    handle: Option<JoinHandle<u32>>,
}

impl fmt::Debug for Flusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Flusher")
    }
}

/// Two options are equal when they share one flusher.
impl PartialEq for Flusher {
    fn eq(&self, other: &Flusher) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Flusher {}

impl Flusher {
    /// A flusher for the filesystem holding `dir`.
    pub fn start(dir: &Path) -> std::io::Result<Flusher> {
        let fd: OwnedFd = std::fs::File::open(dir)?.into();
        // One poke waits while a flush runs; more are dropped.
        let (poke, pokes) = sync_channel::<()>(1);
        let handle = std::thread::Builder::new()
            .name("skiff-flush".into())
            .spawn(move || {
                let mut flushes = 0;
                for () in pokes {
                    // The flush before each commit reports errors (on its own
                    // descriptor, opened before the layer was written).
                    if let Err(e) = rustix::fs::syncfs(fd.as_fd()) {
                        tracing::debug!(error = %e, "background syncfs failed");
                    }
                    flushes += 1;
                }
                flushes
            })?;
        Ok(Flusher(Arc::new(Thread {
            poke: Some(poke),
            handle: Some(handle),
        })))
    }

    /// Asks for a flush: starts one, or makes one follow the flush under way.
    fn poke(&self) {
        if let Some(poke) = &self.0.poke {
            // Full: a flush is already asked for. The thread never ends first.
            let _ = poke.try_send(());
        }
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        self.poke = None;
        if let Some(handle) = self.handle.take() {
            match handle.join() {
                Ok(flushes) => tracing::trace!(flushes, "background flusher done"),
                Err(_) => tracing::debug!("the background flusher panicked"),
            }
        }
    }
}

/// One unpack's share of a [`Flusher`]: counts what it wrote, pokes every
/// [`FLUSH_EVERY`].
#[derive(Debug)]
pub(crate) struct Pokes {
    flusher: Flusher,
    /// Bytes counted since the last poke.
    pending: u64,
}

impl Pokes {
    pub(crate) fn new(flusher: Flusher) -> Pokes {
        Pokes {
            flusher,
            pending: 0,
        }
    }

    /// Counts a file of `bytes` written.
    pub(crate) fn wrote_file(&mut self, bytes: u64) {
        self.pending += bytes + PER_FILE;
        if self.pending >= FLUSH_EVERY {
            self.pending = 0;
            self.flusher.poke();
        }
    }
}

/// Starts the writeback of `len` bytes of `fd` from `offset` (`len` 0: to the
/// end) without waiting for it. Best effort: the flush before the commit is what
/// makes the layer durable, so a failure here is only logged.
pub(crate) fn start_range(fd: BorrowedFd<'_>, offset: u64, len: u64, shown: &str) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain syscall on a valid descriptor; no memory is passed.
    let r =
        unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    if r != 0 {
        tracing::debug!(
            entry = shown,
            error = %std::io::Error::last_os_error(),
            "starting writeback failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pokes_are_counted_and_the_thread_ends_with_the_last_flusher() {
        let tmp = tempfile::tempdir().unwrap();
        let flusher = Flusher::start(tmp.path()).unwrap();
        let mut a = Pokes::new(flusher.clone());
        let mut b = Pokes::new(flusher.clone());
        assert_eq!(a.flusher, b.flusher);
        for _ in 0..(3 * FLUSH_EVERY / (1 << 20)) {
            a.wrote_file((1 << 20) - PER_FILE);
            b.wrote_file((1 << 19) - PER_FILE);
        }
        assert_eq!(a.pending, 0);
        assert_eq!(b.pending, FLUSH_EVERY / 2);
        drop((a, b));
        let mut thread = Arc::try_unwrap(flusher.0).ok().unwrap();
        thread.poke = None;
        // Four pokes: at least the first is flushed; pokes sent while one waits
        // are dropped.
        let flushes = thread.handle.take().unwrap().join().unwrap();
        assert!((1..=4).contains(&flushes), "{flushes} flushes");
    }
}
