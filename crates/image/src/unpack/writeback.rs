//! Starting a layer's disk writeback while it is still being unpacked, so the
//! flush before the commit (`syncfs`, in the snapshotter) finds most of the
//! layer already on the device instead of waiting for all of it at the end.
//!
//! Two mechanisms, both only with [`super::UnpackOptions::start_writeback`]:
//! - [`start_range`]: `sync_file_range(SYNC_FILE_RANGE_WRITE)` over windows of
//!   big files as they are written (starts the write-out of those pages, does not
//!   wait);
//! - [`Flusher`]: a helper thread that runs `syncfs` on the layer's filesystem
//!   each time about [`FLUSH_EVERY`] bytes more were written. That covers the many
//!   small files a per-file syscall would cost too much for, and their metadata
//!   (the journal commit). The unpacking thread only pokes it; a poke while a
//!   flush runs is remembered once, so flushes never queue up.
//!
//! Neither makes the layer durable by itself: the snapshotter's `syncfs` before
//! the commit does. Measured in `docs/decisions.md` ("Durable layers").

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

/// Bytes written (file contents, plus [`PER_FILE`] for each file) between two
/// background flushes. About 50 ms of unpacking on the journaled ext4 of
/// `perf/run pulldisk`; flushing every 20 ms was slower, every 100-200 ms left
/// more for the final flush.
pub(crate) const FLUSH_EVERY: u64 = 16 << 20;

/// What a file counts for [`FLUSH_EVERY`] beyond its contents: its inode,
/// directory entry and the partial page of its tail.
pub(crate) const PER_FILE: u64 = 4096;

/// The background flusher of one unpack.
#[derive(Debug)]
pub(crate) struct Flusher {
    poke: Option<SyncSender<()>>,
    thread: Option<JoinHandle<u32>>,
    /// Bytes counted since the last poke.
    pending: u64,
}

impl Flusher {
    /// A flusher for the filesystem holding `dir`; None (and a debug log) if the
    /// descriptor or thread cannot be had: the final flush still makes the layer
    /// durable, only later.
    pub(crate) fn start(dir: BorrowedFd<'_>) -> Option<Flusher> {
        let fd: OwnedFd = match dir.try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(error = %e, "no background flusher");
                return None;
            }
        };
        // One poke waits while a flush runs; more are dropped.
        let (poke, pokes) = sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("skiff-flush".into())
            .spawn(move || {
                let mut flushes = 0;
                for () in pokes {
                    if let Err(e) = rustix::fs::syncfs(fd.as_fd()) {
                        tracing::debug!(error = %e, "background syncfs failed");
                    }
                    flushes += 1;
                }
                flushes
            });
        match thread {
            Ok(thread) => Some(Flusher {
                poke: Some(poke),
                thread: Some(thread),
                pending: 0,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "no background flusher");
                None
            }
        }
    }

    /// Counts a file of `bytes` written; pokes the thread every [`FLUSH_EVERY`].
    pub(crate) fn wrote_file(&mut self, bytes: u64) {
        self.pending += bytes + PER_FILE;
        if self.pending < FLUSH_EVERY {
            return;
        }
        self.pending = 0;
        if let Some(poke) = &self.poke {
            match poke.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => self.poke = None,
            }
        }
    }
}

impl Drop for Flusher {
    /// Waits for a flush under way (the final one would wait for it anyway).
    fn drop(&mut self) {
        self.poke = None;
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(flushes) => tracing::trace!(flushes, "background flusher done"),
                Err(_) => tracing::debug!("the background flusher panicked"),
            }
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
    fn pokes_are_counted_and_the_thread_ends_with_the_flusher() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let mut f = Flusher::start(dir.as_fd()).unwrap();
        for _ in 0..(3 * FLUSH_EVERY / (1 << 20)) {
            f.wrote_file((1 << 20) - PER_FILE);
        }
        assert_eq!(f.pending, 0);
        let thread = f.thread.take().unwrap();
        drop(f);
        // Three pokes: at least the first is flushed; pokes sent while one waits
        // are dropped.
        let flushes = thread.join().unwrap();
        assert!((1..=3).contains(&flushes), "{flushes} flushes");
    }
}
