//! One way to run a runtime operation, whichever the handler: [`Shim::launch`] starts
//! it as a process with the given stdio and returns its pid. For a runtime binary
//! (`runc`, `crun`) that process is the binary with runc's command line; for the
//! native handler it is a fork of the shim that runs the operation in-process
//! (`crate::native`) and exits with the same conventions: exit status 0 on success,
//! the error as a JSON `{"level":"error","msg":…}` line in the log file otherwise,
//! and for a non-detached exec the exec'd process's exit code.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use skiff_shim_proto::options::Runtime;

use super::{Shim, note};
use crate::sys;
pub(super) use crate::sys::wait_exit;

/// A runtime operation on one container.
pub(super) enum Op<'a> {
    /// Create the container from its bundle; its init's pid goes to `pid_file`.
    Create {
        bundle: &'a Path,
        pid_file: &'a Path,
        console: Option<&'a Path>,
    },
    /// Let the created container's init run its process.
    Start,
    /// Signal every process of the container.
    KillAll { signal: i32 },
    /// Delete the container (killing what still runs).
    Delete,
    /// Apply the resources in the file.
    Update { resources: &'a Path },
    /// Run `args` in the container (as its process spec says otherwise); its pid goes
    /// to `pid_file`. Detached: the operation ends once it runs; otherwise it waits and
    /// exits with the process's code.
    Exec {
        args: &'a [String],
        pid_file: &'a Path,
        detach: bool,
        console: Option<&'a Path>,
    },
}

impl Op<'_> {
    /// runc's command line for the operation on container `id`.
    fn runc_args(&self, id: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        match self {
            Op::Create {
                bundle,
                pid_file,
                console,
            } => {
                a.extend(["create".into(), "--bundle".into(), bundle.into()]);
                a.extend(["--pid-file".into(), pid_file.into()]);
                if let Some(c) = console {
                    a.extend(["--console-socket".into(), c.into()]);
                }
                a.push(id.into());
            }
            Op::Start => a.extend(["start".into(), id.into()]),
            Op::KillAll { signal } => {
                a.extend(["kill".into(), "--all".into(), id.into()]);
                a.push(signal.to_string().into());
            }
            Op::Delete => a.extend(["delete".into(), "--force".into(), id.into()]),
            Op::Update { resources } => {
                a.extend(["update".into(), "--resources".into(), resources.into()]);
                a.push(id.into());
            }
            Op::Exec {
                args,
                pid_file,
                detach,
                console,
            } => {
                a.push("exec".into());
                if *detach {
                    a.push("--detach".into());
                }
                if let Some(c) = console {
                    a.extend(["--tty".into(), "--console-socket".into(), c.into()]);
                }
                a.extend(["--pid-file".into(), pid_file.into(), id.into()]);
                a.extend(args.iter().map(OsString::from));
            }
        }
        a
    }
}

/// The stdio an operation's process gets; `None` is `/dev/null`.
#[derive(Default)]
pub(super) struct Stdio3 {
    pub(super) stdin: Option<OwnedFd>,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
}

impl Shim {
    /// The runtime's name for messages.
    pub(super) fn runtime_name(&self) -> String {
        match &self.opts.runtime {
            Runtime::Binary(p) => p.display().to_string(),
            Runtime::Native => "the native handler".into(),
        }
    }

    /// Start `op` on container `id` as a process (the shim's child, reaped by the
    /// caller: [`wait_exit`] or the reaper); errors go to `log` as JSON lines.
    pub(super) fn launch(&self, id: &str, op: &Op, io: Stdio3, log: &Path) -> io::Result<i32> {
        match &self.opts.runtime {
            Runtime::Binary(bin) => {
                let mut cmd = Command::new(bin);
                cmd.arg("--root")
                    .arg(&self.opts.runtime_root)
                    .arg("--log")
                    .arg(log)
                    .arg("--log-format")
                    .arg("json")
                    .args(op.runc_args(id));
                let stdio = |fd: Option<OwnedFd>| fd.map(Stdio::from).unwrap_or_else(Stdio::null);
                cmd.stdin(stdio(io.stdin))
                    .stdout(stdio(io.stdout))
                    .stderr(stdio(io.stderr));
                let child = cmd.spawn()?;
                // Reaped by pid (`wait_exit` or the reaper), never through `Child`.
                i32::try_from(child.id()).map_err(|_| io::Error::other("bad pid"))
            }
            Runtime::Native => self.fork_native(id, op, io, log),
        }
    }

    /// The native handler: a fork of the shim runs the operation and exits.
    fn fork_native(&self, id: &str, op: &Op, io: Stdio3, log: &Path) -> io::Result<i32> {
        let null = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        // SAFETY: the shim is single-threaded (`run`'s contract).
        match unsafe { sys::fork_pid() }? {
            Some(pid) => Ok(pid),
            None => {
                let fds = [io.stdin, io.stdout, io.stderr];
                for (target, fd) in (0..3).zip(fds.iter()) {
                    let src = fd.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd());
                    // SAFETY: both are open descriptors; the sources are never 0-2
                    // (the shim's own stdio holds those numbers).
                    unsafe {
                        libc::dup2(src, target);
                    }
                }
                sys::close_from(3);
                sys::unblock_all();
                sys::default_sigpipe();
                let code = run_native(&self.opts.runtime_root, id, op, log);
                // SAFETY: ends the forked child without running the shim's destructors.
                unsafe { libc::_exit(code) }
            }
        }
    }
}

/// In the forked child: run `op` and return the exit status for it.
fn run_native(root: &Path, id: &str, op: &Op, log: &Path) -> i32 {
    let log_path = log;
    let mut log = match OpenOptions::new().create(true).append(true).open(log) {
        Ok(f) => Some(f),
        Err(e) => {
            note!("container {id}: open {}: {e}", log.display());
            None
        }
    };
    // libcontainer's own account of a failure (its errors name only the step), also
    // from the container's init (a clone of this process, writing to the same file).
    if let Some(f) = log.as_ref().and_then(|f| f.try_clone().ok()) {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(f))
            .with_max_level(tracing_subscriber::filter::LevelFilter::ERROR)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .try_init();
    }
    let h = crate::native::Handler::new(root);
    let r = match op {
        Op::Create {
            bundle,
            pid_file,
            console,
        } => h.create(id, bundle, pid_file, *console).map(|()| 0),
        Op::Start => h.start(id).map(|()| 0),
        Op::KillAll { signal } => h.kill_all(id, *signal).map(|()| 0),
        Op::Delete => h.delete(id).map(|()| 0),
        Op::Update { resources } => h.update(id, resources).map(|()| 0),
        Op::Exec {
            args,
            pid_file,
            detach,
            console,
        } => h.exec(
            id,
            &crate::native::ExecRequest {
                args,
                pid_file,
                detach: *detach,
                console: *console,
            },
        ),
    };
    match r {
        Ok(code) => code,
        Err(mut msg) => {
            let detail = libcontainer_detail(log_path);
            if !detail.is_empty() {
                msg = format!("{msg} ({detail})");
            }
            if let Some(f) = log.as_mut() {
                let line = serde_json::json!({ "level": "error", "msg": msg });
                let _ = writeln!(f, "{line}");
            }
            1
        }
    }
}

/// libcontainer's error lines in the log, joined: the first three (the cause comes
/// first, then each caller's view of it).
fn libcontainer_detail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[..lines.len().min(3)].join("; ")
}
