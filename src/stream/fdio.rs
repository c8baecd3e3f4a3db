//! Async reads and writes on a raw fd (a pipe end or a pty master) handed over by the
//! shim, on tokio's reactor.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// A non-blocking fd registered with the reactor.
pub struct FdIo(AsyncFd<OwnedFd>);

impl FdIo {
    /// Make `fd` non-blocking and register it.
    pub fn new(fd: OwnedFd) -> io::Result<FdIo> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open and is the
        // same descriptor until the AsyncFd drops it.
        let registered = unsafe { AsyncFd::register(fd) };
        Ok(FdIo(registered.map_err(io::Error::from)?))
    }

    /// Wait until the fd is readable (for a pidfd: the process has exited). The
    /// readiness is left set, so later waits return at once.
    pub async fn readable(&self) -> io::Result<()> {
        let _guard = self.0.readable().await?;
        Ok(())
    }

    /// Read some bytes; `Ok(0)` at end of file (also a pty whose other side closed).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Write all of `buf`.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// The fd, for ioctls.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}
