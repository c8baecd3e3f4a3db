//! A container's stdio: its output pipes (or pty master) read into CRI log entries and
//! copied to attach pipes, its stdin, and attach itself. Also the pipe and fd helpers
//! the exec paths share.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use skiff_shim_proto::protocol::FdRole;

use super::containers::Key;
use super::{Shim, note};
use crate::logfmt::{LineSplitter, MAX_LINE, Stream, now_ns, rfc3339_nano};

/// Pipe buffer asked for output pipes (the kernel caps it at pipe-max-size).
const STREAM_PIPE_SIZE: usize = 1 << 20;
/// One read from an output pipe.
const READ_CHUNK: usize = 128 << 10;
/// The most one container's output pipe yields per loop turn.
const MAX_READ_PER_TURN: usize = 1 << 20;
/// How far an attach client may fall behind before its stream is ended.
const MAX_ATTACH_BACKLOG: usize = 8 << 20;
/// A turn that read less than this lets the read buffers shrink back.
const QUIET_TURN: usize = 64 << 10;

/// The shim's (non-blocking) end of an attach pipe, with what did not fit yet.
struct Sink {
    fd: OwnedFd,
    backlog: Vec<u8>,
}

impl Sink {
    fn new(fd: OwnedFd) -> Sink {
        Sink {
            fd,
            backlog: Vec::new(),
        }
    }

    /// Queue `data` behind the backlog and write what fits; `false` when the sink must
    /// go (skiffd closed it, or the client fell more than MAX_ATTACH_BACKLOG behind:
    /// it then sees the stream end rather than a gap).
    fn push(&mut self, data: &[u8]) -> bool {
        if self.backlog.is_empty() {
            match rustix::io::write(&self.fd, data) {
                Ok(n) => self.backlog.extend_from_slice(&data[n..]),
                Err(rustix::io::Errno::AGAIN) => self.backlog.extend_from_slice(data),
                Err(_) => return false,
            }
        } else {
            self.backlog.extend_from_slice(data);
        }
        self.backlog.len() <= MAX_ATTACH_BACKLOG
    }

    /// Write what the pipe takes of the backlog; `false` when skiffd closed it.
    fn flush(&mut self) -> bool {
        while !self.backlog.is_empty() {
            match rustix::io::write(&self.fd, &self.backlog) {
                Ok(n) => {
                    self.backlog.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
        if self.backlog.is_empty() {
            self.backlog = Vec::new();
        }
        true
    }
}

/// One attach: where copies of the container's stdout and stderr go.
#[derive(Default)]
struct Attacher {
    out: Option<Sink>,
    err: Option<Sink>,
}

impl Attacher {
    fn sink(&mut self, s: Stream) -> &mut Option<Sink> {
        match s {
            Stream::Stdout => &mut self.out,
            Stream::Stderr => &mut self.err,
        }
    }
}

/// A container's stdio.
pub(super) struct Output {
    log_path: Option<PathBuf>,
    log: Option<File>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// The write end of its stdin pipe, kept for attach (closed by `CloseStdin`).
    pub(super) stdin: Option<OwnedFd>,
    /// The pty master (also in `stdout`) of a tty container.
    tty: bool,
    split_out: LineSplitter,
    split_err: LineSplitter,
    attachers: BTreeMap<u64, Attacher>,
    next_attacher: u64,
}

impl Output {
    /// The output of a container: its pipes (or the pty master as `stdout`), its stdin's
    /// write end and its log.
    pub(super) fn new(
        stdout: OwnedFd,
        stderr: Option<OwnedFd>,
        stdin: Option<OwnedFd>,
        tty: bool,
        log_path: Option<PathBuf>,
        log: Option<File>,
    ) -> Output {
        Output {
            log_path,
            log,
            stdout: Some(stdout),
            stderr,
            stdin,
            tty,
            split_out: LineSplitter::new(Stream::Stdout, MAX_LINE),
            split_err: LineSplitter::new(Stream::Stderr, MAX_LINE),
            attachers: BTreeMap::new(),
            next_attacher: 0,
        }
    }

    /// No stdio at all (tests).
    #[cfg(test)]
    pub(super) fn discard() -> Output {
        Output {
            log_path: None,
            log: None,
            stdout: None,
            stderr: None,
            stdin: None,
            tty: false,
            split_out: LineSplitter::new(Stream::Stdout, MAX_LINE),
            split_err: LineSplitter::new(Stream::Stderr, MAX_LINE),
            attachers: BTreeMap::new(),
            next_attacher: 0,
        }
    }

    /// The output fds still open.
    pub(super) fn readable(&self) -> impl Iterator<Item = (&OwnedFd, Stream)> {
        [
            (&self.stdout, Stream::Stdout),
            (&self.stderr, Stream::Stderr),
        ]
        .into_iter()
        .filter_map(|(fd, s)| fd.as_ref().map(|fd| (fd, s)))
    }

    /// Attach pipes with a backlog (to be polled for writability).
    pub(super) fn attach_backlogs(&self) -> impl Iterator<Item = (u64, &OwnedFd, Stream)> {
        self.attachers.iter().flat_map(|(k, a)| {
            [(&a.out, Stream::Stdout), (&a.err, Stream::Stderr)]
                .into_iter()
                .filter_map(move |(sink, s)| {
                    sink.as_ref()
                        .filter(|x| !x.backlog.is_empty())
                        .map(|x| (*k, &x.fd, s))
                })
        })
    }

    /// Read what stream `s` has (bounded per turn) into `data`, write its log entries
    /// (built in `out`) and copy it to the attach pipes.
    fn read(&mut self, id: &str, s: Stream, data: &mut Vec<u8>, out: &mut Vec<u8>) {
        let fd = match s {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let Some(f) = fd.as_ref() else {
            return;
        };
        let open = match read_bounded(f, data, MAX_READ_PER_TURN) {
            Ok(open) => open,
            Err(e) => {
                // EIO on a pty master whose last slave closed is its end of file.
                if e.raw_os_error() != Some(libc::EIO) {
                    note!("container {id}: read {s:?}: {e}");
                }
                false
            }
        };
        if !open {
            *fd = None;
        }
        let ts = rfc3339_nano(now_ns());
        let split = match s {
            Stream::Stdout => &mut self.split_out,
            Stream::Stderr => &mut self.split_err,
        };
        split.feed(&ts, data, out);
        if !open {
            split.finish(&ts, out);
        }
        self.write_log(id, out);
        self.copy_to_attachers(s, data);
    }

    fn write_log(&mut self, id: &str, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(f) = self.log.as_mut()
            && let Err(e) = f.write_all(bytes)
        {
            note!("container {id}: write log: {e}");
        }
    }

    /// The container is going: write what is left of unfinished lines, close the
    /// output and end every attach.
    pub(super) fn finish(&mut self, id: &str) {
        let ts = rfc3339_nano(now_ns());
        let mut out = Vec::new();
        self.split_out.finish(&ts, &mut out);
        self.split_err.finish(&ts, &mut out);
        self.write_log(id, &out);
        self.stdout = None;
        self.stderr = None;
        self.attachers.clear();
    }

    /// Open the log file anew (the kubelet renamed it).
    pub(super) fn reopen_log(&mut self) -> io::Result<()> {
        if let Some(path) = &self.log_path {
            self.log = Some(open_log(path)?);
        }
        Ok(())
    }

    /// The log file, for messages.
    pub(super) fn log_path(&self) -> Option<&Path> {
        self.log_path.as_deref()
    }

    /// Give each attach a copy of `data`, queued behind what its pipe has not taken
    /// yet (flushed when the pipe is writable): a slow attach client never holds up the
    /// container or its log, and loses nothing unless it falls MAX_ATTACH_BACKLOG behind
    /// (then its stream ends). A closed one is dropped.
    fn copy_to_attachers(&mut self, s: Stream, data: &[u8]) {
        if !data.is_empty() {
            for a in self.attachers.values_mut() {
                let sink = a.sink(s);
                if let Some(k) = sink.as_mut()
                    && !k.push(data)
                {
                    *sink = None;
                }
            }
        }
        self.settle_attachers();
    }

    /// The attach pipe `k`/`s` is writable: move its backlog on.
    pub(super) fn flush_attacher(&mut self, k: u64, s: Stream) {
        if let Some(a) = self.attachers.get_mut(&k) {
            let sink = a.sink(s);
            if let Some(x) = sink.as_mut()
                && !x.flush()
            {
                *sink = None;
            }
        }
        self.settle_attachers();
    }

    /// Drop finished attach pipes: closed ones, and once the container's output has
    /// ended, those with nothing left to deliver (their client then sees the end).
    fn settle_attachers(&mut self) {
        if self.stdout.is_none() && self.stderr.is_none() {
            for a in self.attachers.values_mut() {
                for sink in [&mut a.out, &mut a.err] {
                    if sink.as_ref().is_some_and(|x| x.backlog.is_empty()) {
                        *sink = None;
                    }
                }
            }
        }
        self.attachers
            .retain(|_, a| a.out.is_some() || a.err.is_some());
    }

    /// Fds for an attach: stdin (or the pty master) and fresh output pipes.
    fn attach(&mut self, want_stdin: bool) -> io::Result<(Vec<FdRole>, Vec<OwnedFd>)> {
        let dup = |fd: &OwnedFd| rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(io::Error::from);
        let mut roles = Vec::new();
        let mut fds = Vec::new();
        if self.tty {
            // The master carries input and the window size; skiffd never reads it.
            if let Some(m) = self.stdout.as_ref() {
                fds.push(dup(m)?);
                roles.push(FdRole::Tty);
            }
        } else if want_stdin && let Some(s) = self.stdin.as_ref() {
            fds.push(dup(s)?);
            roles.push(FdRole::Stdin);
        }
        let mut attacher = Attacher::default();
        let mut sink = |role| -> io::Result<Sink> {
            let (r, w) = stream_pipe()?;
            rustix::io::ioctl_fionbio(&w, true)?;
            fds.push(r);
            roles.push(role);
            Ok(Sink::new(w))
        };
        attacher.out = Some(sink(FdRole::Stdout)?);
        if !self.tty {
            attacher.err = Some(sink(FdRole::Stderr)?);
        }
        self.next_attacher += 1;
        self.attachers.insert(self.next_attacher, attacher);
        Ok((roles, fds))
    }

    /// Whether output still flows (for attach).
    fn has_output(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }
}

impl Shim {
    /// Container `key`'s stream `s` is readable.
    pub(super) fn read_container(&mut self, key: Key, s: Stream) {
        let Some(c) = self.containers.get_mut(key) else {
            return;
        };
        // Reused across turns; shrunk again when output is quiet (idle shims stay small).
        let mut data = std::mem::take(&mut self.scratch_in);
        let mut out = std::mem::take(&mut self.scratch_out);
        data.clear();
        out.clear();
        c.output.read(&c.id, s, &mut data, &mut out);
        if data.len() < QUIET_TURN {
            data.shrink_to(QUIET_TURN);
            out.shrink_to(QUIET_TURN);
        }
        self.scratch_in = data;
        self.scratch_out = out;
    }

    /// `Attach`: fds for skiffd, or the failure.
    pub(super) fn attach(
        &mut self,
        id: &str,
        want_stdin: bool,
    ) -> Result<(Vec<FdRole>, Vec<OwnedFd>), skiff_shim_proto::protocol::Answer> {
        use skiff_shim_proto::protocol::{FailureKind, Status};
        let Some(c) = self.containers.find_mut(id) else {
            return Err(super::not_found(id));
        };
        if c.status != Status::Running || !c.output.has_output() {
            return Err(super::fail(
                FailureKind::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        c.output.attach(want_stdin).map_err(|e| {
            super::fail(
                FailureKind::Internal,
                format!("attach to container {id}: {e}"),
            )
        })
    }
}

/// A pipe for skiffd: both ends close-on-exec, a large buffer so a burst of output does
/// not fill it at once.
pub(super) fn stream_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // Only a hint: the kernel may cap it (pipe-max-size).
    let _ = rustix::pipe::fcntl_setpipe_size(&w, STREAM_PIPE_SIZE);
    Ok((r, w))
}

/// A pipe for a process's output: the shim's read end non-blocking, and a large
/// buffer so a fast writer blocks less often and each wakeup moves more bytes.
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::io::ioctl_fionbio(&r, true)?;
    // Only a hint: the kernel may cap it (pipe-max-size).
    let _ = rustix::pipe::fcntl_setpipe_size(&r, STREAM_PIPE_SIZE);
    Ok((r, w))
}

/// Read what is available from a non-blocking fd, at most `max` bytes (so one busy
/// container cannot starve the loop); `Ok(false)` at end of file.
fn read_bounded(fd: &OwnedFd, buf: &mut Vec<u8>, max: usize) -> io::Result<bool> {
    let start = buf.len();
    while buf.len() - start < max {
        let len = buf.len();
        buf.resize(len + READ_CHUNK, 0);
        match rustix::io::read(fd, &mut buf[len..]) {
            Ok(0) => {
                buf.truncate(len);
                return Ok(false);
            }
            Ok(n) => buf.truncate(len + n),
            Err(rustix::io::Errno::AGAIN) => {
                buf.truncate(len);
                return Ok(true);
            }
            Err(rustix::io::Errno::INTR) => buf.truncate(len),
            Err(e) => {
                buf.truncate(len);
                return Err(e.into());
            }
        }
    }
    Ok(true)
}

/// Read what is available from a non-blocking fd, keeping at most `limit` bytes in
/// `buf`; `Ok(false)` at end of file.
pub(super) fn read_some(fd: &OwnedFd, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    let mut chunk = [0u8; 65536];
    loop {
        match rustix::io::read(fd, &mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                let room = limit.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(rustix::io::Errno::AGAIN) => return Ok(true),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Take the pty master the runtime sent over the console socket (SCM_RIGHTS).
pub(super) fn receive_console(listener: &UnixListener) -> io::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let (conn, _) = listener.accept().map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::other("the runtime did not connect to the console socket")
        } else {
            e
        }
    })?;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 256];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    rustix::net::recvmsg(
        &conn,
        &mut iov,
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )?;
    for msg in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = msg
            && let Some(fd) = fds.next()
        {
            rustix::io::ioctl_fionbio(&fd, true)?;
            return Ok(fd);
        }
    }
    Err(io::Error::other("the runtime sent no pty master"))
}

/// Open (create) a CRI log file for appending.
pub(super) fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}
