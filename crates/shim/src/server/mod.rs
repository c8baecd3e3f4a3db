//! The shim's server: one thread, one `poll(2)` loop over the control socket, a
//! signalfd, every control connection, every container's output pipes and every
//! attach pipe with a backlog.
//!
//! By concern:
//! - [`conns`]: control connections; requests are read and answers queued per
//!   connection and written without blocking (a slow or stuck reader never holds the
//!   loop);
//! - [`containers`]: the containers, under stable keys (a removal never renumbers what
//!   a token collected in the same turn refers to);
//! - [`lifecycle`]: the OCI runtime's create/start/kill/delete/update, run to completion;
//! - [`output`]: container output to the CRI log and to attach pipes, and attach itself;
//! - [`exec`]: ExecSync jobs and streaming execs;
//! - [`reap`]: `waitpid` on SIGCHLD, exits recorded to disk at once, and exits of pids the
//!   shim learns only later.

mod conns;
mod containers;
mod exec;
mod lifecycle;
mod output;
mod reap;
mod runtime;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use skiff_shim_proto::protocol::{Answer, Failure, FailureKind, Reply, Request};

use crate::logfmt::Stream;
use crate::sys;
use conns::{ConnId, Conns};
use containers::{Containers, Key};
use exec::{ExecJob, Execs};
use reap::Reaper;

pub use skiff_shim_proto::options::Options;

/// How long a stopping shim keeps delivering queued answers before it exits.
const STOP_FLUSH: Duration = Duration::from_secs(2);

/// Note something the shim could not do and goes on without: one line on its stderr,
/// which is `<pod dir>/shim.log`. Used for every result the shim does not act on.
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!("skiff-shim: {}", format_args!($($arg)*))
    };
}
pub(crate) use note;

/// Start the shim: bind the socket, detach (fork, setsid, subreaper), start the pause
/// process, print `ready <shim pid> <pause pid|0>` on stdout, then serve until
/// `Shutdown` or SIGTERM. The process that was started exits right after the fork.
///
/// # Safety
/// The calling process must be single-threaded: the shim forks and goes on running Rust
/// code in the child. Only `skiff-shim`'s `main` calls this.
pub unsafe fn run(opts: Options) -> io::Result<()> {
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
    // SAFETY: the caller guarantees this process is single-threaded.
    match unsafe { sys::fork() }? {
        sys::Forked::Parent => return Ok(()),
        sys::Forked::Child => {}
    }
    // A new session: the shim outlives skiffd's process group. It is already a session
    // leader only if something odd started it; then there is nothing to do.
    if let Err(e) = rustix::process::setsid() {
        note!("setsid: {e}");
    }
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    let sigfd = sys::signalfd()?;
    let mut shim = Shim::new(opts, listener, sigfd);
    if let Some(pause) = shim.opts.pause.clone() {
        let pid = sys::spawn_pause(
            &pause,
            &shim.opts.pause_procs,
            shim.opts.pause_userns.as_deref(),
        )?;
        shim.pause = Some(pid);
        shim.reaper.own(pid, reap::Owner::Pause);
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
    if let Err(e) = fs::remove_file(&shim.opts.socket) {
        note!("remove {}: {e}", shim.opts.socket.display());
    }
    Ok(())
}

/// What a ready fd in one poll turn belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Listener,
    Signals,
    Conn(ConnId),
    CtrOut(Key, Stream),
    ExecOut(u64, Stream),
    AttachOut(Key, u64, Stream),
}

/// The shim's whole state.
struct Shim {
    opts: Options,
    listener: UnixListener,
    sigfd: OwnedFd,
    conns: Conns,
    containers: Containers,
    reaper: Reaper,
    execs: Execs,
    /// Reused read buffers for container output (shrunk when output is quiet).
    scratch_in: Vec<u8>,
    scratch_out: Vec<u8>,
    pause: Option<i32>,
    /// Set by `Shutdown` or SIGTERM: no new work, and the loop ends once the answers
    /// in flight are delivered.
    stopping: Option<Instant>,
}

fn fail(kind: FailureKind, message: impl Into<String>) -> Answer {
    Err(Failure::new(kind, message))
}

fn not_found(id: &str) -> Answer {
    fail(
        FailureKind::NotFound,
        format!("container {id} is not known to the shim"),
    )
}

impl Shim {
    fn new(opts: Options, listener: UnixListener, sigfd: OwnedFd) -> Shim {
        Shim {
            opts,
            listener,
            sigfd,
            conns: Conns::default(),
            containers: Containers::default(),
            reaper: Reaper::default(),
            execs: Execs::default(),
            scratch_in: Vec::new(),
            scratch_out: Vec::new(),
            pause: None,
            stopping: None,
        }
    }

    fn serve(&mut self) {
        loop {
            if let Some(since) = self.stopping
                && self.execs.is_empty()
                && (self.conns.all_flushed() || since.elapsed() > STOP_FLUSH)
            {
                return;
            }
            let timeout = self.execs.next_deadline().map(|d| {
                d.saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(3600))
            });
            let timeout = match self.stopping {
                Some(_) => Some(timeout.map_or(STOP_FLUSH, |t| t.min(STOP_FLUSH))),
                None => timeout,
            };
            let ready = match self.poll(timeout) {
                Ok(r) => r,
                Err(e) => {
                    note!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            for (token, events) in ready {
                self.dispatch(token, events);
            }
            self.reap();
            self.progress_execs();
        }
    }

    fn dispatch(&mut self, token: Token, events: PollFlags) {
        match token {
            Token::Listener => self.accept(),
            Token::Signals => {
                if sys::read_signals(&self.sigfd) {
                    self.shutdown();
                }
                self.reap();
            }
            Token::Conn(id) => self.conn_ready(id, events),
            Token::CtrOut(key, s) => self.read_container(key, s),
            Token::ExecOut(n, s) => self.execs.read_output(n, s),
            Token::AttachOut(key, k, s) => {
                if let Some(c) = self.containers.get_mut(key) {
                    c.output.flush_attacher(k, s);
                }
            }
        }
    }

    fn poll(&self, timeout: Option<Duration>) -> io::Result<Vec<(Token, PollFlags)>> {
        let mut tokens = Vec::new();
        let mut fds = Vec::new();
        let input = PollFlags::IN;
        tokens.push(Token::Listener);
        fds.push(PollFd::new(&self.listener, input));
        tokens.push(Token::Signals);
        fds.push(PollFd::new(&self.sigfd, input));
        for (id, stream, wants_out) in self.conns.poll_set() {
            tokens.push(Token::Conn(id));
            let flags = if wants_out {
                input | PollFlags::OUT
            } else {
                input
            };
            fds.push(PollFd::new(stream, flags));
        }
        for (key, c) in self.containers.iter() {
            for (fd, s) in c.output.readable() {
                tokens.push(Token::CtrOut(key, s));
                fds.push(PollFd::new(fd, input));
            }
            for (k, fd, s) in c.output.attach_backlogs() {
                tokens.push(Token::AttachOut(key, k, s));
                fds.push(PollFd::new(fd, PollFlags::OUT));
            }
        }
        for (n, fd, s) in self.execs.readable() {
            tokens.push(Token::ExecOut(n, s));
            fds.push(PollFd::new(fd, input));
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
            .map(|(t, fd)| (t, fd.revents()))
            .collect())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.conns.add(stream) {
                        note!("accept: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    note!("accept: {e}");
                    return;
                }
            }
        }
    }

    /// A control connection is readable or writable.
    fn conn_ready(&mut self, id: ConnId, events: PollFlags) {
        if events.contains(PollFlags::OUT) {
            self.conns.flush(id);
        }
        if !events.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            return;
        }
        match self.conns.read(id) {
            conns::Read::Nothing => {}
            conns::Read::Request(line) => match serde_json::from_slice::<Request>(&line) {
                Ok(req) => self.handle(id, req),
                Err(e) => self.conns.answer(
                    id,
                    &fail(FailureKind::InvalidArgument, format!("bad request: {e}")),
                ),
            },
            conns::Read::Closed(role) => self.peer_gone(role),
        }
    }

    /// skiffd closed a connection that still had a job attached.
    fn peer_gone(&mut self, role: conns::Role) {
        match role {
            // A streaming exec's client went away: the process is killed (as containerd
            // does). It stays our child until reaped.
            conns::Role::Stream { pid } => reap::kill(pid, "streaming exec whose client left"),
            // An ExecSync whose caller gave up still runs to its end (or timeout); the
            // answer has nowhere to go.
            conns::Role::Exec | conns::Role::Waiting | conns::Role::Reading => {}
            conns::Role::Answered => {}
        }
    }

    fn handle(&mut self, conn: ConnId, req: Request) {
        if self.stopping.is_some() && !matches!(req, Request::Ping | Request::Shutdown) {
            self.conns.answer(
                conn,
                &fail(FailureKind::FailedPrecondition, "the shim is shutting down"),
            );
            return;
        }
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
            Request::Wait { id } => match self.containers.find(&id) {
                None => not_found(&id),
                Some(key) => match self.containers.get(key).and_then(|c| c.exit) {
                    Some(exit) => Ok(Reply::Exited(exit)),
                    None => {
                        self.conns.set_role(conn, conns::Role::Waiting);
                        if let Some(c) = self.containers.get_mut(key) {
                            c.waiters.push(conn);
                        }
                        return;
                    }
                },
            },
            Request::Delete { id } => self.delete(&id),
            Request::State { id } => match self.containers.find_ref(&id) {
                None => not_found(&id),
                Some(c) => Ok(Reply::State {
                    status: c.status,
                    pid: c.pid.and_then(|p| u32::try_from(p).ok()),
                    exit: c.exit,
                }),
            },
            Request::Exec {
                id,
                args,
                timeout_ms,
            } => match self.exec(&id, args, timeout_ms, conn) {
                Ok(()) => return,
                Err(answer) => answer,
            },
            Request::ExecStream {
                id,
                args,
                tty,
                stdin,
            } => {
                self.exec_stream(&id, args, tty, stdin, conn);
                return;
            }
            Request::Attach { id, stdin } => match self.attach(&id, stdin) {
                Ok((roles, fds)) => {
                    let answer = Ok(Reply::Streams {
                        pid: None,
                        fds: roles,
                    });
                    self.conns.answer_with_fds(conn, &answer, fds);
                    return;
                }
                Err(answer) => answer,
            },
            Request::CloseStdin { id } => match self.containers.find_mut(&id) {
                None => not_found(&id),
                Some(c) => {
                    c.output.stdin = None;
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
        self.conns.answer(conn, &answer);
    }

    /// Kill the pause process and every container, fail the jobs in flight, and let the
    /// loop end once the answers are delivered.
    fn shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        if let Some(pid) = self.pause {
            reap::kill(pid, "pause process at shutdown");
        }
        for id in self.containers.ids() {
            if let Err(f) = self.delete(&id) {
                note!("shutdown: {f}");
            }
        }
        let gone = "the shim is shutting down";
        for job in self.execs.drain() {
            let ExecJob { reply, .. } = job;
            self.conns
                .answer(reply, &fail(FailureKind::FailedPrecondition, gone));
        }
        for (conn, pid) in self.conns.streams() {
            reap::kill(pid, "streaming exec at shutdown");
            self.conns
                .answer(conn, &fail(FailureKind::FailedPrecondition, gone));
        }
        self.reap();
    }
}
