//! Container lifecycle through the runtime handler (`runc`, `crun` or the native one):
//! create, start, kill, delete, update, and reopening the log. Each operation runs to
//! completion in the loop, logging to `<bundle>/runtime.log` as JSON lines, whose last
//! error is the failure message.

use std::fs;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use skiff_shim_proto::protocol::{Answer, FailureKind, Reply, Status};

use super::containers::Container;
use super::output::{Output, open_log, pipe, read_some, receive_console};
use super::reap::Owner;
use super::runtime::{Op, Stdio3, wait_exit};
use super::{Shim, fail, not_found, note};

/// The last `error` message an OCI runtime wrote to its JSON log, if any.
pub(super) fn runtime_error(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
        .and_then(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
}

/// Remove a file the shim made for one operation; gone already is fine.
pub(super) fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        note!("remove {}: {e}", path.display());
    }
}

impl Shim {
    /// Run a short runtime operation to completion; its error message on failure.
    pub(super) fn runtime_call(&self, bundle: &Path, id: &str, op: &Op) -> Result<(), String> {
        let log = bundle.join("runtime.log");
        remove_quietly(&log);
        let (err_r, err_w) = pipe().map_err(|e| format!("stderr pipe: {e}"))?;
        let io = Stdio3 {
            stderr: Some(err_w),
            ..Stdio3::default()
        };
        let code = self
            .launch(id, op, io, &log)
            .and_then(wait_exit)
            .map_err(|e| format!("run {}: {e}", self.runtime_name()))?;
        if code == 0 {
            return Ok(());
        }
        Err(runtime_error(&log).unwrap_or_else(|| {
            let mut buf = Vec::new();
            let _ = read_some(&err_r, &mut buf, 4096);
            let stderr = String::from_utf8_lossy(&buf).trim().to_string();
            format!(
                "{} failed with status {code}: {stderr}",
                self.runtime_name()
            )
        }))
    }

    /// Undo a half-made container: delete it, noting a failure.
    fn force_delete(&self, bundle: &Path, id: &str) {
        if let Err(msg) = self.runtime_call(bundle, id, &Op::Delete) {
            note!("container {id}: delete after a failed create: {msg}");
        }
    }

    /// `Create`: `runtime create` with the container's stdio as pipes (or a pty).
    pub(super) fn create(
        &mut self,
        id: String,
        bundle: PathBuf,
        log_path: Option<PathBuf>,
        stdin: bool,
        tty: bool,
    ) -> Answer {
        if self.containers.find(&id).is_some() {
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
                Ok((r, w)) => (Some(w), Some(r)),
                Err(e) => return io_fail("stdin pipe", e.into()),
            }
        } else {
            (None, None)
        };
        let log = match log_path.as_deref().map(open_log).transpose() {
            Ok(l) => l,
            Err(e) => return io_fail("open log", e),
        };
        let pid_file = bundle.join("init.pid");
        let rt_log = bundle.join("runtime.log");
        remove_quietly(&rt_log);
        // A tty container's runtime sends the pty master over a console socket (short
        // path next to the shim's own socket: sun_path is 108 bytes).
        let console = if tty {
            let path = self
                .opts
                .socket
                .with_file_name(format!("{}.tty", &id[..id.len().min(12)]));
            remove_quietly(&path);
            match UnixListener::bind(&path) {
                Ok(l) => Some((l, path)),
                Err(e) => return io_fail("console socket", e),
            }
        } else {
            None
        };
        let io = if console.is_some() {
            Stdio3 {
                stderr: Some(err_w),
                ..Stdio3::default()
            }
        } else {
            Stdio3 {
                stdin: stdin_child,
                stdout: Some(out_w),
                stderr: Some(err_w),
            }
        };
        let op = Op::Create {
            bundle: &bundle,
            pid_file: &pid_file,
            console: console.as_ref().map(|(_, p)| p.as_path()),
        };
        // The pipe ends the operation got are closed in the shim when `io` is dropped
        // inside `launch`.
        let status = self.launch(&id, &op, io, &rt_log).and_then(wait_exit);
        let master = match (&console, &status) {
            (Some((listener, path)), Ok(0)) => {
                let got = receive_console(listener);
                remove_quietly(path);
                match got {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        self.force_delete(&bundle, &id);
                        return io_fail("receive the console from the runtime", e);
                    }
                }
            }
            (Some((_, path)), _) => {
                remove_quietly(path);
                None
            }
            _ => None,
        };
        match status {
            Err(e) => return io_fail(&format!("run {}", self.runtime_name()), e),
            Ok(code) if code != 0 => {
                let mut buf = Vec::new();
                if let Err(e) = read_some(&err_r, &mut buf, 4096) {
                    note!("container {id}: read the runtime's stderr: {e}");
                }
                let msg = runtime_error(&rt_log)
                    .unwrap_or_else(|| String::from_utf8_lossy(&buf).trim().to_string());
                self.force_delete(&bundle, &id);
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
                self.force_delete(&bundle, &id);
                return fail(
                    FailureKind::Runtime,
                    format!("container {id}: read {}: {e}", pid_file.display()),
                );
            }
        };
        let Ok(pid_u32) = u32::try_from(pid) else {
            self.force_delete(&bundle, &id);
            return fail(
                FailureKind::Runtime,
                format!("container {id}: bad pid {pid}"),
            );
        };
        // Nothing was reaped while the runtime ran (it runs synchronously), so an exit
        // recorded for this pid belongs to an earlier process that had it (pids wrap).
        if self.reaper.take_early_exit(pid).is_some() {
            note!("dropped a stale exit of pid {pid}, now container {id}");
        }
        let output = Output::new(
            master.unwrap_or(out_r),
            (!tty).then_some(err_r),
            stdin_keep,
            tty,
            log_path,
            log,
        );
        let c = Container {
            id: id.clone(),
            bundle,
            pid: Some(pid),
            status: Status::Created,
            exit: None,
            output,
            waiters: Vec::new(),
        };
        let Some(key) = self.containers.insert(c) else {
            // Checked at the top; nothing in between adds containers.
            return fail(
                FailureKind::FailedPrecondition,
                format!("container {id} exists in the shim"),
            );
        };
        self.reaper.own(pid, Owner::Init(key));
        Ok(Reply::Created { pid: pid_u32 })
    }

    /// `Start`: `runtime start`.
    pub(super) fn start(&mut self, id: &str) -> Answer {
        let Some(c) = self.containers.find_mut(id) else {
            return not_found(id);
        };
        if c.status != Status::Created {
            return fail(
                FailureKind::FailedPrecondition,
                format!("container {id} is {:?}, not created", c.status),
            );
        }
        let bundle = c.bundle.clone();
        match self.runtime_call(&bundle, id, &Op::Start) {
            Ok(()) => {
                // The init may have exited (and been reaped) already.
                if let Some(c) = self.containers.find_mut(id)
                    && c.status == Status::Created
                {
                    c.status = Status::Running;
                }
                Ok(Reply::Done)
            }
            Err(msg) => fail(FailureKind::Runtime, format!("start container {id}: {msg}")),
        }
    }

    /// `Kill`: a signal to the init (from the shim: it is our child, so its pid cannot
    /// have been reused), or with `all` to every process (`runtime kill --all`).
    pub(super) fn kill(&mut self, id: &str, signal: i32, all: bool) -> Answer {
        let Some(c) = self.containers.find_mut(id) else {
            return not_found(id);
        };
        if all {
            let bundle = c.bundle.clone();
            let exited = c.exit.is_some();
            return match self.runtime_call(&bundle, id, &Op::KillAll { signal }) {
                Ok(()) => Ok(Reply::Done),
                // Nothing left to signal.
                Err(_) if exited => Ok(Reply::Done),
                Err(msg) => fail(FailureKind::Runtime, format!("kill container {id}: {msg}")),
            };
        }
        match (c.exit, c.pid) {
            (Some(_), _) | (None, None) => Ok(Reply::Done),
            (None, Some(pid)) => {
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

    /// `Delete`: `runtime delete --force` and forget the container; its output that is
    /// still in the pipes reaches its log first. Unknown containers are fine.
    pub(super) fn delete(&mut self, id: &str) -> Answer {
        let Some(key) = self.containers.find(id) else {
            return Ok(Reply::Done);
        };
        let bundle = self
            .containers
            .get(key)
            .map(|c| c.bundle.clone())
            .unwrap_or_default();
        if let Err(msg) = self.runtime_call(&bundle, id, &Op::Delete)
            && !msg.contains("not exist")
        {
            return fail(
                FailureKind::Runtime,
                format!("delete container {id}: {msg}"),
            );
        }
        for s in [crate::logfmt::Stream::Stdout, crate::logfmt::Stream::Stderr] {
            self.read_container(key, s);
        }
        let Some(mut c) = self.containers.remove(key) else {
            return Ok(Reply::Done);
        };
        c.output.finish(id);
        if let Some(pid) = c.pid
            && c.exit.is_none()
        {
            // Not reaped yet: the exit is still collected, but nobody waits for it.
            self.reaper.own(pid, Owner::Gone);
        }
        let gone = fail(FailureKind::NotFound, format!("container {id} was deleted"));
        for w in c.waiters.drain(..) {
            self.conns.answer(w, &gone);
        }
        Ok(Reply::Done)
    }

    /// `ReopenLog`: open the log file anew before answering.
    pub(super) fn reopen(&mut self, id: &str) -> Answer {
        let Some(c) = self.containers.find_mut(id) else {
            return not_found(id);
        };
        match c.output.reopen_log() {
            Ok(()) => Ok(Reply::Done),
            Err(e) => fail(
                FailureKind::Internal,
                format!(
                    "container {id}: reopen log {}: {e}",
                    c.output
                        .log_path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            ),
        }
    }

    /// `Update`: `runtime update --resources <file>`.
    pub(super) fn update(&mut self, id: &str, resources: &str) -> Answer {
        let Some(c) = self.containers.find_mut(id) else {
            return not_found(id);
        };
        let bundle = c.bundle.clone();
        let file = bundle.join("resources.json");
        if let Err(e) = fs::write(&file, resources) {
            return fail(
                FailureKind::Internal,
                format!("write {}: {e}", file.display()),
            );
        }
        match self.runtime_call(&bundle, id, &Op::Update { resources: &file }) {
            Ok(()) => Ok(Reply::Done),
            Err(msg) => fail(
                FailureKind::Runtime,
                format!("update container {id}: {msg}"),
            ),
        }
    }
}
