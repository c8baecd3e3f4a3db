//! The shim's event loop: one thread, `poll(2)` over the control socket, a signalfd
//! and the containers' stdio pipes.
//!
//! The OCI runtime's short commands (`create`, `start`, `delete`, `update`) run to
//! completion inside the loop; exec processes and container inits are reaped from
//! SIGCHLD with `waitpid(-1)`, so an exit is recorded the moment it happens, also
//! for processes whose pid the shim learns only later (kept in `early_exits`).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, WaitOptions};

use crate::logfmt::{LineSplitter, MAX_LINE, Stream, now_ns, rfc3339_nano};
use crate::protocol::{Answer, Exit, Failure, FailureKind, FdRole, Reply, Request, Status};
use crate::sys;

/// The longest request line the shim accepts.
const MAX_REQUEST: usize = 16 << 20;
/// The most output an ExecSync keeps per stream.
const MAX_EXEC_OUTPUT: usize = 16 << 20;
/// How many exits of unknown pids are remembered.
const MAX_EARLY_EXITS: usize = 1024;
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

/// How the shim was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pod sandbox id.
    pub pod_id: String,
    /// The control socket to listen on.
    pub socket: PathBuf,
    /// The pod's state directory (the shim's pid file and log go there).
    pub dir: PathBuf,
    /// The OCI runtime binary.
    pub runtime: PathBuf,
    /// The OCI runtime's `--root`.
    pub runtime_root: PathBuf,
    /// The pause binary to start as PID 1 of a new PID namespace, if the pod has one.
    pub pause: Option<PathBuf>,
    /// The `cgroup.procs` files the pause process joins.
    pub pause_procs: Vec<PathBuf>,
}

/// Start the shim: bind the socket, detach (fork, setsid, subreaper), start the pause
/// process, print `ready <shim pid> <pause pid|0>` on stdout, then serve until
/// `Shutdown` or SIGTERM. The process that was started exits right after the fork.
pub fn run(opts: Options) -> io::Result<()> {
    if let Some(dir) = opts.socket.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::create_dir_all(&opts.dir)?;
    match fs::remove_file(&opts.socket) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&opts.socket)?;
    fs::set_permissions(&opts.socket, fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    match sys::fork()? {
        sys::Forked::Parent => return Ok(()),
        sys::Forked::Child => {}
    }
    let _ = rustix::process::setsid();
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    let sigfd = sys::signalfd()?;
    let mut shim = Shim::new(opts, listener, sigfd);
    if let Some(pause) = shim.opts.pause.clone() {
        let pid = sys::spawn_pause(&pause, &shim.opts.pause_procs)?;
        shim.pause = Some(pid);
        shim.owners.insert(pid, Owner::Pause);
    }
    let me = std::process::id();
    fs::write(shim.opts.dir.join("shim.pid"), me.to_string())?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(shim.opts.dir.join("shim.log"))?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "ready {me} {}", shim.pause.unwrap_or(0))?;
        out.flush()?;
    }
    let null = File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&log)?;
    shim.serve();
    let _ = fs::remove_file(&shim.opts.socket);
    Ok(())
}

#[derive(Debug, Clone)]
enum Owner {
    Init(String),
    Exec(u64),
    Stream(u64),
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Listener,
    Signals,
    Conn(u64),
    CtrOut(usize, Stream),
    ExecOut(u64, Stream),
    StreamConn(u64),
    AttachOut(usize, usize, Stream),
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

struct Container {
    id: String,
    bundle: PathBuf,
    pid: Option<i32>,
    status: Status,
    exit: Option<Exit>,
    log_path: Option<PathBuf>,
    log: Option<File>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    /// The pty master (also in `stdout`) of a tty container.
    tty: bool,
    split_out: LineSplitter,
    split_err: LineSplitter,
    waiters: Vec<UnixStream>,
    /// Write ends of attach pipes: a copy of the output goes to each.
    attachers: Vec<Attacher>,
}

/// One attach: where copies of the container's stdout and stderr go.
struct Attacher {
    out: Option<Sink>,
    err: Option<Sink>,
}

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

/// A streaming exec whose stdio skiffd holds; `conn` gets the exit.
struct StreamJob {
    conn: UnixStream,
    pid: i32,
}

struct ExecJob {
    ctr: String,
    reply: UnixStream,
    runtime_pid: i32,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    out: Vec<u8>,
    err: Vec<u8>,
    deadline: Option<Instant>,
    exit: Option<i32>,
    pid_file: PathBuf,
    log_file: PathBuf,
    timed_out: bool,
}

struct Shim {
    opts: Options,
    listener: UnixListener,
    sigfd: OwnedFd,
    conns: HashMap<u64, Conn>,
    containers: Vec<Container>,
    owners: HashMap<i32, Owner>,
    early_exits: HashMap<i32, Exit>,
    execs: HashMap<u64, ExecJob>,
    streams: HashMap<u64, StreamJob>,
    scratch_in: Vec<u8>,
    scratch_out: Vec<u8>,
    pause: Option<i32>,
    next: u64,
    stopping: bool,
}

fn exit_of(status: rustix::process::WaitStatus) -> Exit {
    let signal = status.terminating_signal();
    let code = status
        .exit_status()
        .or(signal.map(|s| 128 + s))
        .unwrap_or(255);
    Exit {
        code,
        signal,
        at_ns: now_ns(),
    }
}

fn fail(kind: FailureKind, message: impl Into<String>) -> Answer {
    Err(Failure::new(kind, message))
}

fn send(mut stream: UnixStream, answer: &Answer) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = serde_json::to_vec(answer).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    let _ = stream.write_all(&line);
}

/// Send `answer` with `fds` attached (SCM_RIGHTS on the line's first bytes).
fn send_fds(stream: &UnixStream, answer: &Answer, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !control.push(rustix::net::SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many fds for one message"));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[io::IoSlice::new(&line)],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    )?;
    (&*stream).write_all(&line[sent..])
}

/// A pipe for skiffd: both ends close-on-exec, the shim's end non-blocking, a large
/// buffer so a burst of output does not fill it at once.
fn stream_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&w, STREAM_PIPE_SIZE);
    Ok((r, w))
}

/// A pipe for a process's output: the shim's read end non-blocking, and a large
/// buffer so a fast writer blocks less often and each wakeup moves more bytes.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::io::ioctl_fionbio(&r, true)?;
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

/// The last `error` message an OCI runtime wrote to its JSON log, if any.
fn runtime_error(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
        .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
}

/// Read what is available from a non-blocking fd; `Ok(false)` at end of file.
fn read_some(fd: &OwnedFd, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
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
fn receive_console(listener: &UnixListener) -> io::Result<OwnedFd> {
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

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl Shim {
    fn new(opts: Options, listener: UnixListener, sigfd: OwnedFd) -> Shim {
        Shim {
            opts,
            listener,
            sigfd,
            conns: HashMap::new(),
            containers: Vec::new(),
            owners: HashMap::new(),
            early_exits: HashMap::new(),
            execs: HashMap::new(),
            streams: HashMap::new(),
            scratch_in: Vec::new(),
            scratch_out: Vec::new(),
            pause: None,
            next: 0,
            stopping: false,
        }
    }

    fn runtime(&self, log: &Path) -> Command {
        let mut cmd = Command::new(&self.opts.runtime);
        cmd.arg("--root")
            .arg(&self.opts.runtime_root)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json");
        cmd
    }

    /// Run a short runtime command to completion; its error message on failure.
    fn runtime_call(&self, bundle: &Path, args: &[&str]) -> Result<(), String> {
        let log = bundle.join("runtime.log");
        let _ = fs::remove_file(&log);
        let out = self
            .runtime(&log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("run {}: {e}", self.opts.runtime.display()))?;
        if out.status.success() {
            return Ok(());
        }
        Err(runtime_error(&log).unwrap_or_else(|| {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            format!(
                "{} {}: {} {stderr}",
                self.opts.runtime.display(),
                args.join(" "),
                out.status
            )
        }))
    }

    fn serve(&mut self) {
        while !(self.stopping && self.execs.is_empty()) {
            let timeout = self
                .execs
                .values()
                .filter(|e| !e.timed_out)
                .filter_map(|e| e.deadline)
                .min()
                .map(|d| d.saturating_duration_since(Instant::now()));
            let ready = match self.poll(timeout) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("skiff-shim: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            for token in ready {
                match token {
                    Token::Listener => self.accept(),
                    Token::Signals => {
                        if sys::read_signals(&self.sigfd) {
                            self.shutdown();
                        }
                        self.reap();
                    }
                    Token::Conn(id) => self.read_conn(id),
                    Token::CtrOut(i, s) => self.read_container(i, s),
                    Token::ExecOut(id, s) => self.read_exec(id, s),
                    Token::StreamConn(n) => self.stream_conn(n),
                    Token::AttachOut(i, k, s) => {
                        if let Some(c) = self.containers.get_mut(i) {
                            c.flush_attacher(k, s);
                        }
                    }
                }
            }
            self.reap();
            self.progress_execs();
        }
    }

    fn poll(&self, timeout: Option<Duration>) -> io::Result<Vec<Token>> {
        let mut tokens = Vec::new();
        let mut fds = Vec::new();
        let input = PollFlags::IN;
        tokens.push(Token::Listener);
        fds.push(PollFd::new(&self.listener, input));
        tokens.push(Token::Signals);
        fds.push(PollFd::new(&self.sigfd, input));
        for (id, c) in &self.conns {
            tokens.push(Token::Conn(*id));
            fds.push(PollFd::new(&c.stream, input));
        }
        for (i, c) in self.containers.iter().enumerate() {
            for (fd, s) in [(&c.stdout, Stream::Stdout), (&c.stderr, Stream::Stderr)] {
                if let Some(fd) = fd {
                    tokens.push(Token::CtrOut(i, s));
                    fds.push(PollFd::new(fd, input));
                }
            }
        }
        for (id, e) in &self.execs {
            for (fd, s) in [(&e.stdout, Stream::Stdout), (&e.stderr, Stream::Stderr)] {
                if let Some(fd) = fd {
                    tokens.push(Token::ExecOut(*id, s));
                    fds.push(PollFd::new(fd, input));
                }
            }
        }
        for (n, j) in &self.streams {
            tokens.push(Token::StreamConn(*n));
            fds.push(PollFd::new(&j.conn, input));
        }
        for (i, c) in self.containers.iter().enumerate() {
            for (k, a) in c.attachers.iter().enumerate() {
                for (sink, s) in [(&a.out, Stream::Stdout), (&a.err, Stream::Stderr)] {
                    if let Some(sink) = sink
                        && !sink.backlog.is_empty()
                    {
                        tokens.push(Token::AttachOut(i, k, s));
                        fds.push(PollFd::new(&sink.fd, PollFlags::OUT));
                    }
                }
            }
        }
        let ts = timeout.map(|d| rustix::time::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
        Ok(tokens
            .into_iter()
            .zip(fds.iter())
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(t, _)| t)
            .collect())
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                self.next += 1;
                self.conns.insert(
                    self.next,
                    Conn {
                        stream,
                        buf: Vec::new(),
                    },
                );
            }
        }
    }

    fn read_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 8192];
        let closed = loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => {
                    conn.buf.extend_from_slice(&chunk[..n]);
                    if conn.buf.len() > MAX_REQUEST || conn.buf.contains(&b'\n') {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        if closed && !conn.buf.contains(&b'\n') {
            return;
        }
        let line = conn.buf.split(|&b| b == b'\n').next().unwrap_or_default();
        match serde_json::from_slice::<Request>(line) {
            Ok(req) => self.handle(req, conn.stream),
            Err(e) => send(
                conn.stream,
                &fail(FailureKind::InvalidArgument, format!("bad request: {e}")),
            ),
        }
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.containers.iter().position(|c| c.id == id)
    }

    fn handle(&mut self, req: Request, stream: UnixStream) {
        let answer = match req {
            Request::Ping => Ok(Reply::Pong {
                pid: std::process::id(),
                pause_pid: self.pause.and_then(|p| u32::try_from(p).ok()),
            }),
            Request::Create {
                id,
                bundle,
                log_path,
                stdin,
                tty,
            } => self.create(id, bundle, log_path, stdin, tty),
            Request::Start { id } => self.start(&id),
            Request::Kill { id, signal, all } => self.kill(&id, signal, all),
            Request::Wait { id } => match self.find(&id) {
                None => fail(
                    FailureKind::NotFound,
                    format!("container {id} is not known to the shim"),
                ),
                Some(i) => match self.containers[i].exit {
                    Some(exit) => Ok(Reply::Exited(exit)),
                    None => {
                        self.containers[i].waiters.push(stream);
                        return;
                    }
                },
            },
            Request::Delete { id } => self.delete(&id),
            Request::State { id } => match self.find(&id) {
                None => fail(
                    FailureKind::NotFound,
                    format!("container {id} is not known to the shim"),
                ),
                Some(i) => {
                    let c = &self.containers[i];
                    Ok(Reply::State {
                        status: c.status,
                        pid: c.pid.and_then(|p| u32::try_from(p).ok()),
                        exit: c.exit,
                    })
                }
            },
            Request::Exec {
                id,
                args,
                timeout_ms,
            } => match self.exec(&id, args, timeout_ms, stream) {
                Ok(()) => return,
                Err((stream, answer)) => {
                    send(stream, &answer);
                    return;
                }
            },
            Request::ExecStream {
                id,
                args,
                tty,
                stdin,
            } => {
                self.exec_stream(&id, args, tty, stdin, stream);
                return;
            }
            Request::Attach { id, stdin } => match self.attach(&id, stdin) {
                Ok((roles, fds)) => {
                    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
                    let answer = Ok(Reply::Streams {
                        pid: None,
                        fds: roles,
                    });
                    if let Err(e) = send_fds(&stream, &answer, &borrowed) {
                        eprintln!("skiff-shim: container {id}: hand over attach fds: {e}");
                    }
                    return;
                }
                Err(answer) => answer,
            },
            Request::CloseStdin { id } => match self.find(&id) {
                None => fail(
                    FailureKind::NotFound,
                    format!("container {id} is not known to the shim"),
                ),
                Some(i) => {
                    self.containers[i].stdin = None;
                    Ok(Reply::Done)
                }
            },
            Request::ReopenLog { id } => self.reopen(&id),
            Request::Update { id, resources } => self.update(&id, &resources),
            Request::Shutdown => {
                self.shutdown();
                Ok(Reply::Done)
            }
        };
        send(stream, &answer);
    }

    fn create(
        &mut self,
        id: String,
        bundle: PathBuf,
        log_path: Option<PathBuf>,
        stdin: bool,
        tty: bool,
    ) -> Answer {
        if self.find(&id).is_some() {
            return fail(
                FailureKind::FailedPrecondition,
                format!("container {id} exists in the shim"),
            );
        }
        let io_fail = |what: &str, e: io::Error| {
            fail(
                FailureKind::Internal,
                format!("container {id}: {what}: {e}"),
            )
        };
        let (out_r, out_w) = match pipe() {
            Ok(p) => p,
            Err(e) => return io_fail("stdout pipe", e),
        };
        let (err_r, err_w) = match pipe() {
            Ok(p) => p,
            Err(e) => return io_fail("stderr pipe", e),
        };
        let (stdin_keep, stdin_child) = if stdin {
            match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
                Ok((r, w)) => (Some(w), Stdio::from(r)),
                Err(e) => return io_fail("stdin pipe", e.into()),
            }
        } else {
            (None, Stdio::null())
        };
        let log = match log_path.as_deref().map(open_log).transpose() {
            Ok(l) => l,
            Err(e) => return io_fail("open log", e),
        };
        let pid_file = bundle.join("init.pid");
        let rt_log = bundle.join("runtime.log");
        let _ = fs::remove_file(&rt_log);
        // A tty container's runtime sends the pty master over a console socket (short
        // path next to the shim's own socket: sun_path is 108 bytes).
        let console = if tty {
            let path = self
                .opts
                .socket
                .with_file_name(format!("{}.tty", &id[..id.len().min(12)]));
            let _ = fs::remove_file(&path);
            match UnixListener::bind(&path) {
                Ok(l) => Some((l, path)),
                Err(e) => return io_fail("console socket", e),
            }
        } else {
            None
        };
        let mut cmd = self.runtime(&rt_log);
        cmd.arg("create")
            .arg("--bundle")
            .arg(&bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some((_, path)) = &console {
            cmd.arg("--console-socket").arg(path);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(err_w));
        } else {
            cmd.stdin(stdin_child)
                .stdout(Stdio::from(out_w))
                .stderr(Stdio::from(err_w));
        }
        let status = cmd.arg(&id).status();
        let master = match (&console, &status) {
            (Some((listener, path)), Ok(s)) if s.success() => {
                let got = receive_console(listener);
                let _ = fs::remove_file(path);
                match got {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        let _ = self.runtime_call(&bundle, &["delete", "--force", &id]);
                        return io_fail("receive the console from the runtime", e);
                    }
                }
            }
            (Some((_, path)), _) => {
                let _ = fs::remove_file(path);
                None
            }
            _ => None,
        };
        match status {
            Err(e) => return io_fail(&format!("run {}", self.opts.runtime.display()), e),
            Ok(s) if !s.success() => {
                let mut buf = Vec::new();
                let _ = read_some(&err_r, &mut buf, 4096);
                let msg = runtime_error(&rt_log)
                    .unwrap_or_else(|| String::from_utf8_lossy(&buf).trim().to_string());
                let _ = self.runtime_call(&bundle, &["delete", "--force", &id]);
                return fail(
                    FailureKind::Runtime,
                    format!("create container {id}: {msg}"),
                );
            }
            Ok(_) => {}
        }
        let pid = match fs::read_to_string(&pid_file)
            .map_err(|e| e.to_string())
            .and_then(|s| s.trim().parse::<i32>().map_err(|e| e.to_string()))
        {
            Ok(pid) => pid,
            Err(e) => {
                let _ = self.runtime_call(&bundle, &["delete", "--force", &id]);
                return fail(
                    FailureKind::Runtime,
                    format!("container {id}: read {}: {e}", pid_file.display()),
                );
            }
        };
        self.owners.insert(pid, Owner::Init(id.clone()));
        let mut c = Container {
            id: id.clone(),
            bundle,
            pid: Some(pid),
            status: Status::Created,
            exit: None,
            log_path,
            log,
            stdout: Some(master.unwrap_or(out_r)),
            stderr: if tty { None } else { Some(err_r) },
            stdin: stdin_keep,
            tty,
            split_out: LineSplitter::new(Stream::Stdout, MAX_LINE),
            split_err: LineSplitter::new(Stream::Stderr, MAX_LINE),
            waiters: Vec::new(),
            attachers: Vec::new(),
        };
        if let Some(exit) = self.early_exits.remove(&pid) {
            c.status = Status::Exited;
            c.exit = Some(exit);
        }
        self.containers.push(c);
        u32::try_from(pid)
            .map(|pid| Reply::Created { pid })
            .map_err(|_| Failure::new(FailureKind::Internal, "bad pid"))
    }

    fn start(&mut self, id: &str) -> Answer {
        let Some(i) = self.find(id) else {
            return fail(
                FailureKind::NotFound,
                format!("container {id} is not known to the shim"),
            );
        };
        if self.containers[i].status != Status::Created {
            return fail(
                FailureKind::FailedPrecondition,
                format!(
                    "container {id} is {:?}, not created",
                    self.containers[i].status
                ),
            );
        }
        let bundle = self.containers[i].bundle.clone();
        match self.runtime_call(&bundle, &["start", id]) {
            Ok(()) => {
                // The init may have exited (and been reaped) already.
                if self.containers[i].status == Status::Created {
                    self.containers[i].status = Status::Running;
                }
                Ok(Reply::Done)
            }
            Err(msg) => fail(FailureKind::Runtime, format!("start container {id}: {msg}")),
        }
    }

    fn kill(&mut self, id: &str, signal: i32, all: bool) -> Answer {
        let Some(i) = self.find(id) else {
            return fail(
                FailureKind::NotFound,
                format!("container {id} is not known to the shim"),
            );
        };
        let c = &self.containers[i];
        if all {
            let bundle = c.bundle.clone();
            let sig = signal.to_string();
            return match self.runtime_call(&bundle, &["kill", "--all", id, &sig]) {
                Ok(()) => Ok(Reply::Done),
                Err(_) if self.containers[i].exit.is_some() => Ok(Reply::Done),
                Err(msg) => fail(FailureKind::Runtime, format!("kill container {id}: {msg}")),
            };
        }
        match (c.exit, c.pid) {
            (Some(_), _) | (None, None) => Ok(Reply::Done),
            (None, Some(pid)) => {
                // The shim reaps this pid itself, so it cannot have been reused yet.
                let r = rustix::process::Pid::from_raw(pid)
                    .ok_or(rustix::io::Errno::SRCH)
                    .and_then(|p| {
                        let sig = rustix::process::Signal::from_named_raw(signal)
                            .ok_or(rustix::io::Errno::INVAL)?;
                        rustix::process::kill_process(p, sig)
                    });
                match r {
                    Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(Reply::Done),
                    Err(e) => fail(
                        FailureKind::InvalidArgument,
                        format!("kill container {id} with signal {signal}: {e}"),
                    ),
                }
            }
        }
    }

    fn delete(&mut self, id: &str) -> Answer {
        let Some(i) = self.find(id) else {
            return Ok(Reply::Done);
        };
        let bundle = self.containers[i].bundle.clone();
        if let Err(msg) = self.runtime_call(&bundle, &["delete", "--force", id])
            && !msg.contains("not exist")
        {
            return fail(
                FailureKind::Runtime,
                format!("delete container {id}: {msg}"),
            );
        }
        // Whatever the container wrote before it went away still reaches its log.
        for s in [Stream::Stdout, Stream::Stderr] {
            self.read_container(i, s);
        }
        let mut c = self.containers.remove(i);
        c.flush_eof();
        if let Some(pid) = c.pid
            && c.exit.is_none()
        {
            // Not reaped yet: keep the owner so the exit is collected, but nobody waits.
            self.owners.insert(pid, Owner::Init(String::new()));
        }
        for w in c.waiters.drain(..) {
            send(
                w,
                &fail(FailureKind::NotFound, format!("container {id} was deleted")),
            );
        }
        Ok(Reply::Done)
    }

    fn reopen(&mut self, id: &str) -> Answer {
        let Some(i) = self.find(id) else {
            return fail(
                FailureKind::NotFound,
                format!("container {id} is not known to the shim"),
            );
        };
        let c = &mut self.containers[i];
        let Some(path) = c.log_path.clone() else {
            return Ok(Reply::Done);
        };
        match open_log(&path) {
            Ok(f) => {
                c.log = Some(f);
                Ok(Reply::Done)
            }
            Err(e) => fail(
                FailureKind::Internal,
                format!("container {id}: reopen log {}: {e}", path.display()),
            ),
        }
    }

    fn update(&mut self, id: &str, resources: &str) -> Answer {
        let Some(i) = self.find(id) else {
            return fail(
                FailureKind::NotFound,
                format!("container {id} is not known to the shim"),
            );
        };
        let bundle = self.containers[i].bundle.clone();
        let file = bundle.join("resources.json");
        if let Err(e) = fs::write(&file, resources) {
            return fail(
                FailureKind::Internal,
                format!("write {}: {e}", file.display()),
            );
        }
        let path = file.to_string_lossy().into_owned();
        match self.runtime_call(&bundle, &["update", "--resources", &path, id]) {
            Ok(()) => Ok(Reply::Done),
            Err(msg) => fail(
                FailureKind::Runtime,
                format!("update container {id}: {msg}"),
            ),
        }
    }

    fn exec(
        &mut self,
        id: &str,
        args: Vec<String>,
        timeout_ms: u64,
        stream: UnixStream,
    ) -> Result<(), (UnixStream, Answer)> {
        let Some(i) = self.find(id) else {
            return Err((
                stream,
                fail(
                    FailureKind::NotFound,
                    format!("container {id} is not known to the shim"),
                ),
            ));
        };
        if self.containers[i].status != Status::Running {
            return Err((
                stream,
                fail(
                    FailureKind::FailedPrecondition,
                    format!("container {id} is not running"),
                ),
            ));
        }
        if args.is_empty() {
            return Err((
                stream,
                fail(FailureKind::InvalidArgument, "exec: no command given"),
            ));
        }
        self.next += 1;
        let n = self.next;
        let bundle = self.containers[i].bundle.clone();
        let pid_file = bundle.join(format!("exec-{n}.pid"));
        let log_file = bundle.join(format!("exec-{n}.log"));
        let pipes = pipe().and_then(|o| pipe().map(|e| (o, e)));
        let ((out_r, out_w), (err_r, err_w)) = match pipes {
            Ok(p) => p,
            Err(e) => {
                return Err((
                    stream,
                    fail(FailureKind::Internal, format!("exec pipes: {e}")),
                ));
            }
        };
        let child = self
            .runtime(&log_file)
            .arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                return Err((
                    stream,
                    fail(
                        FailureKind::Internal,
                        format!("run {}: {e}", self.opts.runtime.display()),
                    ),
                ));
            }
        };
        let Ok(pid) = i32::try_from(child.id()) else {
            return Err((stream, fail(FailureKind::Internal, "bad pid")));
        };
        // The child is reaped by `reap`, never through `Child`.
        drop(child);
        self.owners.insert(pid, Owner::Exec(n));
        let exit = self.early_exits.remove(&pid).map(|e| e.code);
        self.execs.insert(
            n,
            ExecJob {
                ctr: id.to_string(),
                reply: stream,
                runtime_pid: pid,
                stdout: Some(out_r),
                stderr: Some(err_r),
                out: Vec::new(),
                err: Vec::new(),
                deadline: (timeout_ms > 0)
                    .then(|| Instant::now() + Duration::from_millis(timeout_ms)),
                exit,
                pid_file,
                log_file,
                timed_out: false,
            },
        );
        Ok(())
    }

    /// Start a streaming exec (`runtime exec --detach`: the process becomes the shim's
    /// child through the subreaper) and hand its stdio to skiffd.
    fn exec_stream(
        &mut self,
        id: &str,
        args: Vec<String>,
        tty: bool,
        stdin: bool,
        stream: UnixStream,
    ) {
        let (n, pid, roles, fds) = match self.start_exec_stream(id, &args, tty, stdin) {
            Ok(started) => started,
            Err(answer) => {
                send(stream, &answer);
                return;
            }
        };
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let answer = Ok(Reply::Streams {
            pid: u32::try_from(pid).ok(),
            fds: roles,
        });
        self.owners.insert(pid, Owner::Stream(n));
        if send_fds(&stream, &answer, &borrowed).is_err() {
            // skiffd is gone: nobody can talk to the process.
            if let Some(p) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            return;
        }
        drop(fds);
        // Nothing was reaped since the runtime started the process, so an exit recorded
        // for this pid belongs to an earlier process that had it.
        self.early_exits.remove(&pid);
        if stream.set_nonblocking(true).is_ok() {
            self.streams.insert(n, StreamJob { conn: stream, pid });
        }
    }

    #[allow(clippy::type_complexity)]
    fn start_exec_stream(
        &mut self,
        id: &str,
        args: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<(u64, i32, Vec<FdRole>, Vec<OwnedFd>), Answer> {
        let Some(i) = self.find(id) else {
            return Err(fail(
                FailureKind::NotFound,
                format!("container {id} is not known to the shim"),
            ));
        };
        if self.containers[i].status != Status::Running {
            return Err(fail(
                FailureKind::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        if args.is_empty() {
            return Err(fail(FailureKind::InvalidArgument, "exec: no command given"));
        }
        let io_fail = |what: &str, e: io::Error| {
            fail(
                FailureKind::Internal,
                format!("exec in container {id}: {what}: {e}"),
            )
        };
        self.next += 1;
        let n = self.next;
        let bundle = self.containers[i].bundle.clone();
        let pid_file = bundle.join(format!("exec-{n}.pid"));
        let log_file = bundle.join(format!("exec-{n}.log"));
        let mut cmd = self.runtime(&log_file);
        cmd.arg("exec")
            .arg("--detach")
            .arg("--pid-file")
            .arg(&pid_file);
        let mut roles = Vec::new();
        let mut keep = Vec::new();
        let console = if tty {
            let path = self.opts.socket.with_file_name(format!("x{n}.tty"));
            let _ = fs::remove_file(&path);
            let listener = UnixListener::bind(&path).map_err(|e| io_fail("console socket", e))?;
            cmd.arg("--tty").arg("--console-socket").arg(&path);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Some((listener, path))
        } else {
            if stdin {
                let (r, w) = stream_pipe().map_err(|e| io_fail("stdin pipe", e))?;
                cmd.stdin(Stdio::from(r));
                roles.push(FdRole::Stdin);
                keep.push(w);
            } else {
                cmd.stdin(Stdio::null());
            }
            let (out_r, out_w) = stream_pipe().map_err(|e| io_fail("stdout pipe", e))?;
            let (err_r, err_w) = stream_pipe().map_err(|e| io_fail("stderr pipe", e))?;
            cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
            roles.extend([FdRole::Stdout, FdRole::Stderr]);
            keep.extend([out_r, err_r]);
            None
        };
        let status = cmd.arg(id).args(args).status();
        // The pipe ends the process got are closed in the shim with `cmd`.
        drop(cmd);
        let cleanup = |console: &Option<(UnixListener, PathBuf)>| {
            if let Some((_, path)) = console {
                let _ = fs::remove_file(path);
            }
            let _ = fs::remove_file(&pid_file);
            let _ = fs::remove_file(&log_file);
        };
        match status {
            Err(e) => {
                cleanup(&console);
                return Err(io_fail(&format!("run {}", self.opts.runtime.display()), e));
            }
            Ok(s) if !s.success() => {
                let msg = runtime_error(&log_file)
                    .unwrap_or_else(|| format!("{} exec: {s}", self.opts.runtime.display()));
                cleanup(&console);
                return Err(fail(
                    FailureKind::Runtime,
                    format!("exec in container {id}: {msg}"),
                ));
            }
            Ok(_) => {}
        }
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let master = console.as_ref().map(|(l, _)| receive_console(l));
        cleanup(&console);
        let Some(pid) = pid else {
            return Err(fail(
                FailureKind::Runtime,
                format!("exec in container {id}: the runtime wrote no pid file"),
            ));
        };
        match master {
            Some(Ok(m)) => {
                roles.push(FdRole::Tty);
                keep.push(m);
            }
            Some(Err(e)) => {
                if let Some(p) = Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
                self.owners.insert(pid, Owner::Stream(0));
                return Err(io_fail("receive the console from the runtime", e));
            }
            None => {}
        }
        Ok((n, pid, roles, keep))
    }

    /// skiffd wrote to or closed a streaming exec's connection: closed means the client
    /// went away, and the process is killed (as containerd does).
    fn stream_conn(&mut self, n: u64) {
        let Some(job) = self.streams.get_mut(&n) else {
            return;
        };
        let mut buf = [0u8; 256];
        let gone = loop {
            match job.conn.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if gone && let Some(job) = self.streams.remove(&n) {
            // Still our unreaped child (its owner entry stays until the exit is collected).
            if let Some(pid) = Pid::from_raw(job.pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }

    /// Fds for an attach: stdin (or the pty master) and fresh output pipes.
    fn attach(
        &mut self,
        id: &str,
        want_stdin: bool,
    ) -> Result<(Vec<FdRole>, Vec<OwnedFd>), Answer> {
        let Some(i) = self.find(id) else {
            return Err(fail(
                FailureKind::NotFound,
                format!("container {id} is not known to the shim"),
            ));
        };
        let c = &mut self.containers[i];
        if c.status != Status::Running || (c.stdout.is_none() && c.stderr.is_none()) {
            return Err(fail(
                FailureKind::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        let io_fail = |what: &str, e: io::Error| {
            fail(
                FailureKind::Internal,
                format!("attach to container {id}: {what}: {e}"),
            )
        };
        let dup = |fd: &OwnedFd| {
            rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| io_fail("dup", e.into()))
        };
        let mut roles = Vec::new();
        let mut fds = Vec::new();
        if c.tty {
            // The master carries input and the window size; skiffd never reads it.
            if let Some(m) = c.stdout.as_ref() {
                fds.push(dup(m)?);
                roles.push(FdRole::Tty);
            }
        } else if want_stdin && let Some(s) = c.stdin.as_ref() {
            fds.push(dup(s)?);
            roles.push(FdRole::Stdin);
        }
        let mut attacher = Attacher {
            out: None,
            err: None,
        };
        let (r, w) = stream_pipe().map_err(|e| io_fail("pipe", e))?;
        rustix::io::ioctl_fionbio(&w, true).map_err(|e| io_fail("pipe", e.into()))?;
        attacher.out = Some(Sink::new(w));
        fds.push(r);
        roles.push(FdRole::Stdout);
        if !c.tty {
            let (r, w) = stream_pipe().map_err(|e| io_fail("pipe", e))?;
            rustix::io::ioctl_fionbio(&w, true).map_err(|e| io_fail("pipe", e.into()))?;
            attacher.err = Some(Sink::new(w));
            fds.push(r);
            roles.push(FdRole::Stderr);
        }
        c.attachers.push(attacher);
        Ok((roles, fds))
    }

    fn read_exec(&mut self, n: u64, s: Stream) {
        let Some(job) = self.execs.get_mut(&n) else {
            return;
        };
        let (fd, buf) = match s {
            Stream::Stdout => (&mut job.stdout, &mut job.out),
            Stream::Stderr => (&mut job.stderr, &mut job.err),
        };
        if let Some(f) = fd.as_ref()
            && !matches!(read_some(f, buf, MAX_EXEC_OUTPUT), Ok(true))
        {
            *fd = None;
        }
    }

    fn progress_execs(&mut self) {
        let now = Instant::now();
        let mut done = Vec::new();
        for (n, job) in &mut self.execs {
            if job.exit.is_none() && !job.timed_out && job.deadline.is_some_and(|d| d <= now) {
                job.timed_out = true;
                if let Some(pid) = fs::read_to_string(&job.pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    .and_then(Pid::from_raw)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                if let Some(pid) = Pid::from_raw(job.runtime_pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            if job.exit.is_some() {
                done.push(*n);
            }
        }
        for n in done {
            let Some(mut job) = self.execs.remove(&n) else {
                continue;
            };
            // Collect what is left in the pipes, but never wait on a process that the
            // command left behind holding them.
            for (fd, buf) in [(&job.stdout, &mut job.out), (&job.stderr, &mut job.err)] {
                if let Some(f) = fd {
                    let _ = read_some(f, buf, MAX_EXEC_OUTPUT);
                }
            }
            let code = job.exit.unwrap_or(255);
            let answer = if job.timed_out {
                fail(
                    FailureKind::Timeout,
                    format!("exec in container {} timed out and was killed", job.ctr),
                )
            } else if let Some(msg) = runtime_error(&job.log_file) {
                fail(
                    FailureKind::Runtime,
                    format!("exec in container {}: {msg}", job.ctr),
                )
            } else {
                let b64 = base64::engine::general_purpose::STANDARD;
                Ok(Reply::Exec {
                    code,
                    stdout: b64.encode(&job.out),
                    stderr: b64.encode(&job.err),
                })
            };
            let _ = fs::remove_file(&job.pid_file);
            let _ = fs::remove_file(&job.log_file);
            send(job.reply, &answer);
        }
    }

    fn read_container(&mut self, i: usize, s: Stream) {
        let Some(c) = self.containers.get_mut(i) else {
            return;
        };
        // Reused across turns; shrunk again when output is quiet (idle shims stay small).
        let mut data = std::mem::take(&mut self.scratch_in);
        let mut out = std::mem::take(&mut self.scratch_out);
        data.clear();
        out.clear();
        let fd = match s {
            Stream::Stdout => &mut c.stdout,
            Stream::Stderr => &mut c.stderr,
        };
        let Some(f) = fd.as_ref() else {
            self.scratch_in = data;
            self.scratch_out = out;
            return;
        };
        let open = matches!(read_bounded(f, &mut data, MAX_READ_PER_TURN), Ok(true));
        if !open {
            *fd = None;
        }
        let ts = rfc3339_nano(now_ns());
        let split = match s {
            Stream::Stdout => &mut c.split_out,
            Stream::Stderr => &mut c.split_err,
        };
        split.feed(&ts, &data, &mut out);
        if !open {
            split.finish(&ts, &mut out);
        }
        c.write_log(&out);
        c.copy_to_attachers(s, &data);
        if data.len() < QUIET_TURN {
            data.shrink_to(QUIET_TURN);
            out.shrink_to(QUIET_TURN);
        }
        self.scratch_in = data;
        self.scratch_out = out;
    }

    fn reap(&mut self) {
        while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
            {
                let exit = exit_of(status);
                let pid = pid.as_raw_nonzero().get();
                match self.owners.remove(&pid) {
                    Some(Owner::Init(id)) => self.container_exited(&id, exit),
                    Some(Owner::Exec(n)) => {
                        if let Some(job) = self.execs.get_mut(&n) {
                            job.exit = Some(exit.code);
                        }
                    }
                    Some(Owner::Stream(n)) => {
                        if let Some(job) = self.streams.remove(&n) {
                            send(job.conn, &Ok(Reply::Exited(exit)));
                        }
                    }
                    Some(Owner::Pause) => {
                        eprintln!("skiff-shim: pause process {pid} exited ({})", exit.code);
                        self.pause = None;
                    }
                    None => {
                        if self.early_exits.len() < MAX_EARLY_EXITS {
                            self.early_exits.insert(pid, exit);
                        }
                    }
                }
            }
        }
    }

    fn container_exited(&mut self, id: &str, exit: Exit) {
        let Some(i) = self.find(id) else {
            return;
        };
        let c = &mut self.containers[i];
        c.status = Status::Exited;
        c.exit = Some(exit);
        let json = serde_json::to_vec(&exit).unwrap_or_default();
        if let Err(e) = write_atomic(&c.bundle.join("exit.json"), &json) {
            eprintln!("skiff-shim: container {id}: record exit: {e}");
        }
        for w in c.waiters.drain(..) {
            send(w, &Ok(Reply::Exited(exit)));
        }
    }

    fn shutdown(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        if let Some(pid) = self.pause.and_then(Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let ids: Vec<String> = self.containers.iter().map(|c| c.id.clone()).collect();
        for id in ids {
            let _ = self.delete(&id);
        }
        for (_, job) in self.execs.drain() {
            send(
                job.reply,
                &fail(FailureKind::FailedPrecondition, "the shim is shutting down"),
            );
        }
        for (_, job) in self.streams.drain() {
            if let Some(pid) = Pid::from_raw(job.pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            send(
                job.conn,
                &fail(FailureKind::FailedPrecondition, "the shim is shutting down"),
            );
        }
        self.reap();
    }
}

impl Container {
    fn write_log(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(f) = self.log.as_mut()
            && let Err(e) = f.write_all(bytes)
        {
            eprintln!("skiff-shim: container {}: write log: {e}", self.id);
        }
    }

    fn flush_eof(&mut self) {
        let ts = rfc3339_nano(now_ns());
        let mut out = Vec::new();
        self.split_out.finish(&ts, &mut out);
        self.split_err.finish(&ts, &mut out);
        self.write_log(&out);
        self.stdout = None;
        self.stderr = None;
        self.attachers.clear();
    }

    /// Give each attach a copy of `data`, queued behind what its pipe has not taken
    /// yet (flushed when the pipe is writable): a slow attach client never holds up the
    /// container or its log, and loses nothing unless it falls MAX_ATTACH_BACKLOG behind
    /// (then its stream ends). A closed one is dropped.
    fn copy_to_attachers(&mut self, s: Stream, data: &[u8]) {
        if !data.is_empty() {
            for a in &mut self.attachers {
                let sink = match s {
                    Stream::Stdout => &mut a.out,
                    Stream::Stderr => &mut a.err,
                };
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
    fn flush_attacher(&mut self, k: usize, s: Stream) {
        if let Some(a) = self.attachers.get_mut(k) {
            let sink = match s {
                Stream::Stdout => &mut a.out,
                Stream::Stderr => &mut a.err,
            };
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
            for a in &mut self.attachers {
                for sink in [&mut a.out, &mut a.err] {
                    if sink.as_ref().is_some_and(|x| x.backlog.is_empty()) {
                        *sink = None;
                    }
                }
            }
        }
        self.attachers
            .retain(|a| a.out.is_some() || a.err.is_some());
    }
}
