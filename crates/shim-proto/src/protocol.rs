//! The protocol between skiffd and a shim.
//!
//! skiffd connects to the shim's unix socket (`<state>/s/<pod id prefix>`), writes one
//! [`Request`] as a JSON line, reads one reply as a JSON line (`{"Ok": Reply}` or
//! `{"Err": Failure}`), and the connection ends. Requests that wait (`Wait`, `Exec`)
//! keep their connection open until the answer is known. The socket is mode 0600 and
//! only skiffd (root) talks to it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A request to the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is the shim alive? Answers [`Reply::Pong`].
    Ping,
    /// `runtime create` the container whose bundle is `bundle`.
    Create {
        /// The container id.
        id: String,
        /// The OCI bundle directory (holds `config.json`; the shim writes `exit.json` there).
        bundle: PathBuf,
        /// The CRI log file, or `None` to discard output.
        log_path: Option<PathBuf>,
        /// Keep a stdin pipe open.
        stdin: bool,
        /// Give the container a terminal (the runtime hands the shim the pty master).
        #[serde(default)]
        tty: bool,
    },
    /// `runtime start` a created container.
    Start {
        /// The container id.
        id: String,
    },
    /// Send `signal` to the container's init (or, with `all`, every process of it).
    Kill {
        /// The container id.
        id: String,
        /// The signal number.
        signal: i32,
        /// Signal every process in the container's cgroup.
        all: bool,
    },
    /// Answer when the container's init has exited.
    Wait {
        /// The container id.
        id: String,
    },
    /// `runtime delete --force` the container and forget it.
    Delete {
        /// The container id.
        id: String,
    },
    /// The container's state as the shim knows it.
    State {
        /// The container id.
        id: String,
    },
    /// Run `args` in the container and collect its output.
    Exec {
        /// The container id.
        id: String,
        /// The command and its arguments.
        args: Vec<String>,
        /// Kill the process after this many milliseconds (0 = no limit).
        timeout_ms: u64,
    },
    /// Start `args` in the container with its stdio handed to skiffd (streaming exec).
    ///
    /// Answered with [`Reply::Streams`] (the fds travel with that line as SCM_RIGHTS);
    /// the connection stays open and a second line, [`Reply::Exited`], follows when the
    /// process exits. If skiffd closes the connection first, the process is killed.
    ExecStream {
        /// The container id.
        id: String,
        /// The command and its arguments.
        args: Vec<String>,
        /// Give the process a terminal (one fd, the pty master, instead of pipes).
        tty: bool,
        /// Hand over a stdin pipe (otherwise stdin is /dev/null).
        stdin: bool,
    },
    /// Hand skiffd the container's stdio for an attach: [`Reply::Streams`] with fresh
    /// pipes that receive a copy of everything the container writes from now on (ended
    /// when the container's output ends), and a duplicate of its stdin (or pty master).
    Attach {
        /// The container id.
        id: String,
        /// Whether skiffd wants the container's stdin.
        stdin: bool,
    },
    /// Close the container's stdin (after the first attach of a `stdin_once` container).
    CloseStdin {
        /// The container id.
        id: String,
    },
    /// Close and reopen the container's log file (the kubelet renamed it).
    ReopenLog {
        /// The container id.
        id: String,
    },
    /// `runtime update` the container's resources from an OCI `LinuxResources` JSON.
    Update {
        /// The container id.
        id: String,
        /// The resources, as OCI runtime spec JSON.
        resources: String,
    },
    /// Kill the pod's pause process and every container, then exit.
    Shutdown,
}

/// The status of a container as the shim sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Created by the runtime, not started.
    Created,
    /// Started; init has not exited.
    Running,
    /// Init exited.
    Exited,
}

/// How a container's init (or an exec) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit code; 128 + signal when killed by a signal.
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When it exited, nanoseconds since the Unix epoch.
    pub at_ns: i64,
}

/// What one fd handed over with [`Reply::Streams`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdRole {
    /// Write end of the process's stdin.
    Stdin,
    /// Read end of its stdout.
    Stdout,
    /// Read end of its stderr.
    Stderr,
    /// The pty master (a terminal process): read its output, write its input, resize it.
    Tty,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Answer to [`Request::Ping`].
    Pong {
        /// The shim's pid.
        pid: u32,
        /// The pod's pause process (PID 1 of the pod's PID namespace), if it has one.
        pause_pid: Option<u32>,
    },
    /// The container was created; `pid` is its init process.
    Created {
        /// The init pid (in the host PID namespace).
        pid: u32,
    },
    /// Done, nothing to report.
    Done,
    /// The container's init exited.
    Exited(Exit),
    /// Answer to [`Request::State`].
    State {
        /// The container's status.
        status: Status,
        /// The init pid, if known.
        pid: Option<u32>,
        /// How it exited, if it did.
        exit: Option<Exit>,
    },
    /// Answer to [`Request::ExecStream`] and [`Request::Attach`]: fds follow, in this order.
    Streams {
        /// The exec'd process (`None` for an attach).
        pid: Option<u32>,
        /// What each fd sent with this line is, in order.
        fds: Vec<FdRole>,
    },
    /// Answer to [`Request::Exec`].
    Exec {
        /// The exit code of the command.
        code: i32,
        /// Its standard output (base64).
        stdout: String,
        /// Its standard error (base64).
        stderr: String,
    },
}

/// What kind of failure the shim reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The shim does not know the container.
    NotFound,
    /// The container is in the wrong state for the request.
    FailedPrecondition,
    /// The request is malformed.
    InvalidArgument,
    /// The OCI runtime failed.
    Runtime,
    /// An exec ran out of time and was killed.
    Timeout,
    /// Anything else (io errors in the shim).
    Internal,
}

/// A failed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Its kind.
    pub kind: FailureKind,
    /// A message for people, naming the container and the cause.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// A failure of `kind` with `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// The result a shim sends back.
pub type Answer = Result<Reply, Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_as_json_lines() {
        let req = Request::Kill {
            id: "c1".into(),
            signal: 15,
            all: false,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"op":"kill","id":"c1","signal":15,"all":false}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), req);
        let ok: Answer = Ok(Reply::Exited(Exit {
            code: 137,
            signal: Some(9),
            at_ns: 5,
        }));
        let json = serde_json::to_string(&ok).unwrap();
        assert_eq!(serde_json::from_str::<Answer>(&json).unwrap(), ok);
        let err: Answer = Err(Failure::new(FailureKind::NotFound, "no container c1"));
        let json = serde_json::to_string(&err).unwrap();
        assert!(!json.contains('\n'));
        assert_eq!(serde_json::from_str::<Answer>(&json).unwrap(), err);
    }
}
