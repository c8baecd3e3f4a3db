//! Running processes in a container: ExecSync (an exec operation that waits for the
//! process, output collected, a deadline that kills it) and streaming exec (a detached
//! exec, stdio handed to skiffd over the connection, the exit sent on it later).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use skiff_shim_proto::protocol::{Answer, FailureKind, FdRole, Reply, Status};

use super::conns::{ConnId, Role};
use super::lifecycle::{remove_quietly, runtime_error};
use super::output::{pipe, read_some, receive_console, stream_pipe};
use super::reap::{self, Owner};
use super::runtime::{Op, Stdio3, wait_exit};
use super::{Shim, fail, not_found, note};
use crate::logfmt::Stream;

/// The most output an ExecSync keeps per stream.
const MAX_EXEC_OUTPUT: usize = 16 << 20;

/// One ExecSync in flight.
pub(super) struct ExecJob {
    /// The container it runs in.
    ctr: String,
    /// Where the answer goes.
    pub(super) reply: ConnId,
    /// The `runtime exec` process (our child).
    runtime_pid: i32,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    out: Vec<u8>,
    err: Vec<u8>,
    deadline: Option<Instant>,
    /// The runtime's exit code, once reaped.
    exit: Option<i32>,
    pid_file: PathBuf,
    log_file: PathBuf,
    timed_out: bool,
}

/// The ExecSync jobs in flight, by number.
#[derive(Default)]
pub(super) struct Execs {
    jobs: HashMap<u64, ExecJob>,
    next: u64,
}

impl Execs {
    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// A fresh number for a job's files.
    fn number(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// The earliest deadline of a job still running.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.jobs
            .values()
            .filter(|e| !e.timed_out)
            .filter_map(|e| e.deadline)
            .min()
    }

    /// The output fds still open.
    pub(super) fn readable(&self) -> impl Iterator<Item = (u64, &OwnedFd, Stream)> {
        self.jobs.iter().flat_map(|(n, e)| {
            [(&e.stdout, Stream::Stdout), (&e.stderr, Stream::Stderr)]
                .into_iter()
                .filter_map(move |(fd, s)| fd.as_ref().map(|fd| (*n, fd, s)))
        })
    }

    /// Job `n`'s stream `s` is readable.
    pub(super) fn read_output(&mut self, n: u64, s: Stream) {
        let Some(job) = self.jobs.get_mut(&n) else {
            return;
        };
        let (fd, buf) = match s {
            Stream::Stdout => (&mut job.stdout, &mut job.out),
            Stream::Stderr => (&mut job.stderr, &mut job.err),
        };
        if let Some(f) = fd.as_ref() {
            match read_some(f, buf, MAX_EXEC_OUTPUT) {
                Ok(true) => {}
                Ok(false) => *fd = None,
                Err(e) => {
                    note!("exec in container {}: read {s:?}: {e}", job.ctr);
                    *fd = None;
                }
            }
        }
    }

    /// Job `n`'s runtime process exited with `code`.
    pub(super) fn exited(&mut self, n: u64, code: i32) {
        if let Some(job) = self.jobs.get_mut(&n) {
            job.exit = Some(code);
        }
    }

    /// Every job, taken out (at shutdown).
    pub(super) fn drain(&mut self) -> Vec<ExecJob> {
        self.jobs.drain().map(|(_, j)| j).collect()
    }
}

impl Shim {
    /// `Exec` (ExecSync): start `runtime exec`; the answer comes when it ends.
    pub(super) fn exec(
        &mut self,
        id: &str,
        args: Vec<String>,
        timeout_ms: u64,
        conn: ConnId,
    ) -> Result<(), Answer> {
        let bundle = self.exec_target(id, &args)?;
        let n = self.execs.number();
        let pid_file = bundle.join(format!("exec-{n}.pid"));
        let log_file = bundle.join(format!("exec-{n}.log"));
        let ((out_r, out_w), (err_r, err_w)) = pipe()
            .and_then(|o| pipe().map(|e| (o, e)))
            .map_err(|e| fail(FailureKind::Internal, format!("exec pipes: {e}")))?;
        let op = Op::Exec {
            args: &args,
            pid_file: &pid_file,
            detach: false,
            console: None,
        };
        let io = Stdio3 {
            stdin: None,
            stdout: Some(out_w),
            stderr: Some(err_w),
        };
        let pid = self.launch(id, &op, io, &log_file).map_err(|e| {
            fail(
                FailureKind::Internal,
                format!("run {}: {e}", self.runtime_name()),
            )
        })?;
        self.reaper.own(pid, Owner::Exec(n));
        self.conns.set_role(conn, Role::Exec);
        self.execs.jobs.insert(
            n,
            ExecJob {
                ctr: id.to_string(),
                reply: conn,
                runtime_pid: pid,
                stdout: Some(out_r),
                stderr: Some(err_r),
                out: Vec::new(),
                err: Vec::new(),
                deadline: (timeout_ms > 0)
                    .then(|| Instant::now() + Duration::from_millis(timeout_ms)),
                exit: None,
                pid_file,
                log_file,
                timed_out: false,
            },
        );
        Ok(())
    }

    /// The bundle of a running container `id` to exec `args` in, or the failure.
    fn exec_target(&self, id: &str, args: &[String]) -> Result<PathBuf, Answer> {
        let Some(c) = self.containers.find_ref(id) else {
            return Err(not_found(id));
        };
        if c.status != Status::Running {
            return Err(fail(
                FailureKind::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        if args.is_empty() {
            return Err(fail(FailureKind::InvalidArgument, "exec: no command given"));
        }
        Ok(c.bundle.clone())
    }

    /// How to classify a runtime's refusal to exec in container `id`: the container
    /// having stopped meanwhile (its process exited, reaped or not yet) is the client's
    /// race with the exit, a failed precondition as for an exec asked after it; any
    /// other refusal is the runtime's failure.
    fn exec_failure_kind(&self, id: &str) -> FailureKind {
        if self.stopped(id) {
            FailureKind::FailedPrecondition
        } else {
            FailureKind::Runtime
        }
    }

    /// Whether container `id` is gone or its process has exited (even if the exit is
    /// not reaped yet).
    fn stopped(&self, id: &str) -> bool {
        use rustix::process::{Pid, WaitId, WaitIdOptions, test_kill_process, waitid};
        let Some(c) = self.containers.find_ref(id) else {
            return true;
        };
        if c.status != Status::Running {
            return true;
        }
        let Some(pid) = c.pid.and_then(Pid::from_raw) else {
            return true;
        };
        let opts = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
        match waitid(WaitId::Pid(pid), opts) {
            Ok(Some(_)) => true,
            Ok(None) => false,
            // Not our child: it is stopped if it no longer exists.
            Err(_) => test_kill_process(pid).is_err(),
        }
    }

    /// Kill jobs past their deadline; answer the jobs whose runtime exited.
    pub(super) fn progress_execs(&mut self) {
        let now = Instant::now();
        let mut done = Vec::new();
        for (n, job) in &mut self.execs.jobs {
            if job.exit.is_none() && !job.timed_out && job.deadline.is_some_and(|d| d <= now) {
                job.timed_out = true;
                // The exec'd process (from its pid file, if the runtime wrote it yet),
                // then the runtime waiting for it.
                if let Some(pid) = fs::read_to_string(&job.pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    reap::kill(pid, "timed-out exec");
                }
                reap::kill(job.runtime_pid, "runtime of a timed-out exec");
            }
            if job.exit.is_some() {
                done.push(*n);
            }
        }
        for n in done {
            let Some(mut job) = self.execs.jobs.remove(&n) else {
                continue;
            };
            // Collect what is left in the pipes, but never wait on a process that the
            // command left behind holding them.
            for (fd, buf) in [(&job.stdout, &mut job.out), (&job.stderr, &mut job.err)] {
                if let Some(f) = fd
                    && let Err(e) = read_some(f, buf, MAX_EXEC_OUTPUT)
                {
                    note!("exec in container {}: read what is left: {e}", job.ctr);
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
                    self.exec_failure_kind(&job.ctr),
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
            remove_quietly(&job.pid_file);
            remove_quietly(&job.log_file);
            self.conns.answer(job.reply, &answer);
        }
    }

    /// `ExecStream`: start the process (`runtime exec --detach`: it becomes the shim's
    /// child through the subreaper) and hand its stdio to skiffd; the exit follows on
    /// the same connection.
    pub(super) fn exec_stream(
        &mut self,
        id: &str,
        args: Vec<String>,
        tty: bool,
        stdin: bool,
        conn: ConnId,
    ) {
        let (pid, roles, fds) = match self.start_exec_stream(id, &args, tty, stdin) {
            Ok(started) => started,
            Err(answer) => {
                self.conns.answer(conn, &answer);
                return;
            }
        };
        // Nothing was reaped since the runtime started the process, so an exit recorded
        // for this pid belongs to an earlier process that had it.
        if self.reaper.take_early_exit(pid).is_some() {
            note!("dropped a stale exit of pid {pid}, now a streaming exec");
        }
        self.reaper.own(pid, Owner::Stream(conn));
        let answer = Ok(Reply::Streams {
            pid: u32::try_from(pid).ok(),
            fds: roles,
        });
        self.conns.send_streams(conn, &answer, fds, pid);
        if !self.conns.is_open(conn) {
            // skiffd is gone: nobody can talk to the process.
            reap::kill(pid, "streaming exec whose client left");
        }
    }

    fn start_exec_stream(
        &mut self,
        id: &str,
        args: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<(i32, Vec<FdRole>, Vec<OwnedFd>), Answer> {
        let bundle = self.exec_target(id, args)?;
        let io_fail = |what: &str, e: io::Error| {
            fail(
                FailureKind::Internal,
                format!("exec in container {id}: {what}: {e}"),
            )
        };
        let n = self.execs.number();
        let pid_file = bundle.join(format!("exec-{n}.pid"));
        let log_file = bundle.join(format!("exec-{n}.log"));
        let mut roles = Vec::new();
        let mut keep = Vec::new();
        let mut io = Stdio3::default();
        let console = if tty {
            let path = self.opts.socket.with_file_name(format!("x{n}.tty"));
            remove_quietly(&path);
            let listener = UnixListener::bind(&path).map_err(|e| io_fail("console socket", e))?;
            Some((listener, path))
        } else {
            if stdin {
                let (r, w) = stream_pipe().map_err(|e| io_fail("stdin pipe", e))?;
                io.stdin = Some(r);
                roles.push(FdRole::Stdin);
                keep.push(w);
            }
            let (out_r, out_w) = stream_pipe().map_err(|e| io_fail("stdout pipe", e))?;
            let (err_r, err_w) = stream_pipe().map_err(|e| io_fail("stderr pipe", e))?;
            io.stdout = Some(out_w);
            io.stderr = Some(err_w);
            roles.extend([FdRole::Stdout, FdRole::Stderr]);
            keep.extend([out_r, err_r]);
            None
        };
        let op = Op::Exec {
            args,
            pid_file: &pid_file,
            detach: true,
            console: console.as_ref().map(|(_, p)| p.as_path()),
        };
        // The pipe ends the process got are closed in the shim with `io`, in `launch`.
        let status = self.launch(id, &op, io, &log_file).and_then(wait_exit);
        let cleanup = |console: &Option<(UnixListener, PathBuf)>| {
            if let Some((_, path)) = console {
                remove_quietly(path);
            }
            remove_quietly(&pid_file);
            remove_quietly(&log_file);
        };
        match status {
            Err(e) => {
                cleanup(&console);
                return Err(io_fail(&format!("run {}", self.runtime_name()), e));
            }
            Ok(code) if code != 0 => {
                let msg = runtime_error(&log_file)
                    .unwrap_or_else(|| format!("{} exec: exit status {code}", self.runtime_name()));
                cleanup(&console);
                return Err(fail(
                    self.exec_failure_kind(id),
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
                reap::kill(pid, "exec whose console never came");
                self.reaper.own(pid, Owner::Gone);
                return Err(io_fail("receive the console from the runtime", e));
            }
            None => {}
        }
        Ok((pid, roles, keep))
    }
}
