//! Kubernetes' remote-command protocol (exec and attach), over SPDY streams or a
//! WebSocket.
//!
//! Over SPDY the client opens one stream per channel, each named by its `streamtype`
//! header: `error`, `stdin`, `stdout`, `stderr` and (with a tty, protocol v3 and later)
//! `resize`; the session starts once all the streams the request asked for exist. Over
//! WebSocket the channels are numbered frames on one connection (`ws`). Either way,
//! output ends with the channel's end (FIN; the v5 close signal); the outcome is written
//! to `error` — JSON `metav1.Status` from v4 on (exit codes as a `NonZeroExitCode`
//! cause), plain text before — and then the connection is closed.

use std::sync::Arc;
use std::time::Duration;

use skiff_shim_proto::protocol::FdRole;
use skiff_spdy::{Connection, Stream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::mpsc::Receiver;

use tokio::task::JoinSet;

use super::chan::{Activity, ChanReader, ChanWriter};
use super::fdio::FdIo;
use super::ws::{Codec, Mux, Ws};
use super::{Limits, STREAM_CREATION_TIMEOUT, StdioOpts};
use crate::pods::Runtime;

/// How long output may keep flowing after an exec's process exited (a child it left
/// behind may hold the pipe open).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// What the session runs.
pub enum What {
    /// A new process.
    Exec {
        /// The container.
        container: String,
        /// The command.
        cmd: Vec<String>,
    },
    /// The container's own stdio.
    Attach {
        /// The container.
        container: String,
    },
}

/// The negotiated protocol version: 1 for `channel.k8s.io` (or none), up to 5.
pub(super) fn version(protocol: Option<&str>) -> u8 {
    match protocol {
        Some("v5.channel.k8s.io") => 5,
        Some("v4.channel.k8s.io" | "v4.base64.channel.k8s.io") => 4,
        Some("v3.channel.k8s.io") => 3,
        Some("v2.channel.k8s.io") => 2,
        _ => 1,
    }
}

/// How the session ended, for the error channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success (exit code 0).
    Success,
    /// The process exited with this non-zero code.
    Exit(i32),
    /// Something failed; the message.
    Internal(String),
}

/// The error-channel bytes for `outcome` in protocol `version` (nothing to write for a
/// success before v4).
pub fn status_bytes(version: u8, outcome: &Outcome) -> Vec<u8> {
    if version >= 4 {
        let v = match outcome {
            Outcome::Success => serde_json::json!({"metadata": {}, "status": "Success"}),
            Outcome::Exit(code) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Internal(msg) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {msg}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": msg}]},
                "code": 500,
            }),
        };
        return v.to_string().into_bytes();
    }
    match outcome {
        Outcome::Success => Vec::new(),
        Outcome::Exit(code) => {
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes()
        }
        Outcome::Internal(msg) => format!("Internal error occurred: {msg}").into_bytes(),
    }
}

#[derive(Default)]
struct Channels {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

/// Wait for the streams the request asked for; `None` if the client gave up or took
/// too long.
async fn channels(incoming: &mut Receiver<Stream>, expected: usize) -> Option<Channels> {
    let mut ch = Channels::default();
    let mut got = 0;
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while got < expected {
        let stream = tokio::select! {
            s = incoming.recv() => s?,
            () = &mut deadline => {
                tracing::debug!("streaming client did not open its streams in time");
                return None;
            }
        };
        let slot = match stream.header("streamtype").unwrap_or("") {
            "error" => &mut ch.error,
            "stdin" => &mut ch.stdin,
            "stdout" => &mut ch.stdout,
            "stderr" => &mut ch.stderr,
            "resize" => &mut ch.resize,
            other => {
                tracing::debug!(streamtype = other, "unexpected stream type");
                let (_, w) = stream.split();
                w.reset().await;
                continue;
            }
        };
        if slot.is_none() {
            got += 1;
        }
        *slot = Some(stream);
    }
    Some(ch)
}

/// A session's channels, whichever transport carries them.
struct Chans {
    error: Option<ChanWriter>,
    stdin: Option<ChanReader>,
    stdout: Option<ChanWriter>,
    stderr: Option<ChanWriter>,
    resize: Option<ChanReader>,
}

/// Serve one exec or attach session on a SPDY connection.
pub async fn serve(
    conn: Connection,
    mut incoming: Receiver<Stream>,
    protocol: Option<&str>,
    io: StdioOpts,
    what: What,
    runtime: Arc<Runtime>,
    limits: Limits,
) {
    let version = version(protocol);
    let expected = 1
        + usize::from(io.stdin)
        + usize::from(io.stdout)
        + usize::from(io.stderr)
        + usize::from(io.tty && version >= 3);
    let Some(ch) = channels(&mut incoming, expected).await else {
        conn.close().await;
        return;
    };
    // Streams opened later are not part of the protocol.
    tokio::spawn(async move { while incoming.recv().await.is_some() {} });
    let activity = Activity::new();
    let w = |s: Stream| ChanWriter::Spdy(s.split().1, activity.clone());
    let r = |s: Stream| ChanReader::Spdy(s.split().0, activity.clone());
    let chans = Chans {
        error: ch.error.map(w),
        stdout: ch.stdout.map(w),
        stderr: ch.stderr.map(w),
        stdin: ch.stdin.map(r),
        resize: ch.resize.map(r),
    };
    let closed = conn.clone();
    session(
        chans,
        version,
        io,
        what,
        runtime,
        &activity,
        limits,
        closed.closed(),
    )
    .await;
    conn.close().await;
}

/// Serve one exec or attach session on a WebSocket that negotiated `protocol` (one of
/// [`super::ws::REMOTE_WS_PROTOCOLS`]).
pub async fn serve_ws(
    ws: Ws,
    protocol: &str,
    io: StdioOpts,
    what: What,
    runtime: Arc<Runtime>,
    limits: Limits,
) {
    let version = version(Some(protocol));
    let activity = Activity::new();
    let mut inbound = Vec::new();
    if io.stdin {
        inbound.push(0);
    }
    if io.tty && version >= 3 {
        inbound.push(4);
    }
    let mut mux = Mux::start(ws, Codec::of(protocol), &inbound, activity.clone());
    let chans = Chans {
        stdin: mux.reader(0),
        stdout: io.stdout.then(|| ChanWriter::Ws(mux.writer(1))),
        stderr: io.stderr.then(|| ChanWriter::Ws(mux.writer(2))),
        error: Some(ChanWriter::Ws(mux.writer(3))),
        resize: mux.reader(4),
    };
    let mut done = mux.take_done();
    let mut ended = false;
    let client_gone = async {
        let _ = (&mut done).await;
        ended = true;
    };
    session(
        chans,
        version,
        io,
        what,
        runtime,
        &activity,
        limits,
        client_gone,
    )
    .await;
    if !ended {
        // Every writer is dropped with the session: the frames queued go out, then the
        // WebSocket closes.
        drop(mux);
        let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
    }
}

/// Run the session and report its outcome on the error channel, unless the client went
/// away (`client_gone`) or the session sat idle for the idle timeout.
#[allow(clippy::too_many_arguments)]
async fn session(
    chans: Chans,
    version: u8,
    io: StdioOpts,
    what: What,
    runtime: Arc<Runtime>,
    activity: &Activity,
    limits: Limits,
    client_gone: impl std::future::Future<Output = ()>,
) {
    let Chans {
        error,
        stdin,
        stdout,
        stderr,
        resize,
    } = chans;
    let outcome = tokio::select! {
        o = run(&what, io, stdin, stdout.clone(), stderr.clone(), resize, &runtime) => o,
        () = client_gone => None,
        () = activity.idle_for(limits.idle_timeout) => {
            tracing::debug!("streaming session idle for {:?}; closed", limits.idle_timeout);
            None
        }
    };
    if let Some(outcome) = outcome {
        if let Some(w) = &error {
            let bytes = status_bytes(version, &outcome);
            if !bytes.is_empty() {
                let _ = w.send(&bytes).await;
            }
        }
        for w in [&error, &stdout, &stderr].into_iter().flatten() {
            let _ = w.finish().await;
        }
    }
}

/// Run the session; `None` when it ended without an outcome to report.
async fn run(
    what: &What,
    io: StdioOpts,
    stdin: Option<ChanReader>,
    stdout: Option<ChanWriter>,
    stderr: Option<ChanWriter>,
    resize: Option<ChanReader>,
    runtime: &Arc<Runtime>,
) -> Option<Outcome> {
    let (container, stdio) = match what {
        What::Exec { container, cmd } => (
            container,
            runtime
                .exec_stdio(container, cmd.clone(), io.tty, io.stdin)
                .await
                .map_err(|e| format!("error executing command in container: {e}")),
        ),
        What::Attach { container } => (
            container,
            runtime
                .attach_stdio(container, io.stdin)
                .await
                .map_err(|e| format!("error attaching to container: {e}")),
        ),
    };
    let stdio = match stdio {
        Ok(s) => s,
        Err(msg) => return Some(Outcome::Internal(msg)),
    };
    let exec = matches!(what, What::Exec { .. });
    let mut input = None;
    let mut tty = None;
    // Owned here: when the session ends (or this future is dropped because the client
    // went away) every copy task is aborted and the fds close, so the shim drops its end.
    let mut outputs: JoinSet<()> = JoinSet::new();
    let mut aux: JoinSet<()> = JoinSet::new();
    let progress = Arc::new(Progress::default());
    let mut fds = Vec::new();
    for (role, fd) in stdio.fds {
        match FdIo::new(fd) {
            Ok(f) => fds.push((role, Arc::new(f))),
            Err(e) => return Some(Outcome::Internal(format!("stdio: {e}"))),
        }
    }
    for (role, fd) in fds {
        match role {
            FdRole::Stdin => input = Some(fd),
            FdRole::Tty => {
                input = Some(fd.clone());
                tty = Some(fd.clone());
                // An exec's terminal is its output too; an attach reads a copy the shim makes.
                if exec {
                    outputs.spawn(pump_out(fd, stdout.clone(), progress.clone()));
                }
            }
            FdRole::Stdout => {
                outputs.spawn(pump_out(fd, stdout.clone(), progress.clone()));
            }
            FdRole::Stderr => {
                outputs.spawn(pump_out(fd, stderr.clone(), progress.clone()));
            }
        }
    }
    let is_tty = tty.is_some();
    // containerd's rule: an attach ends when the client's stdin ends, except for a
    // stdin_once container without a terminal, whose stdin is closed instead (and the
    // attach lasts until its output ends).
    let stdin_once = !exec && runtime.stdin_once(container);
    let (stdin_done_tx, mut stdin_done) = tokio::sync::oneshot::channel::<()>();
    let ends_attach = !exec && stdin.is_some() && (is_tty || !stdin_once);
    if let Some(r) = stdin {
        let runtime = runtime.clone();
        let container = container.clone();
        aux.spawn(async move {
            pump_in(r, input, is_tty).await;
            if stdin_once {
                let _ = runtime.close_stdin(&container).await;
            }
            let _ = stdin_done_tx.send(());
        });
    }
    if let (Some(r), Some(t)) = (resize, tty) {
        aux.spawn(resizes(r, t));
    }
    let outcome = match stdio.exit {
        Some(exit) => {
            let exit = exit.wait();
            tokio::pin!(exit);
            let mut finished = outputs.is_empty();
            let exit = loop {
                tokio::select! {
                    e = &mut exit => break e,
                    done = outputs.join_next(), if !finished => finished = done.is_none(),
                }
            };
            // Output may end after the exit (a child the process left behind holds the
            // pipe): it keeps flowing while it moves or the client is still taking it,
            // and is cut only after OUTPUT_GRACE with neither.
            while !finished {
                let before = progress.bytes.load(Ordering::Relaxed);
                let drained = tokio::time::timeout(OUTPUT_GRACE, async {
                    while outputs.join_next().await.is_some() {}
                })
                .await;
                finished = drained.is_ok()
                    || (progress.bytes.load(Ordering::Relaxed) == before
                        && progress.sending.load(Ordering::Relaxed) == 0);
            }
            match exit {
                Ok(e) if e.code == 0 => Outcome::Success,
                Ok(e) => Outcome::Exit(e.code),
                Err(e) => Outcome::Internal(format!("error executing command in container: {e}")),
            }
        }
        None => {
            let all_out = async { while outputs.join_next().await.is_some() {} };
            tokio::select! {
                () = all_out => {}
                _ = &mut stdin_done, if ends_attach => {}
            }
            Outcome::Success
        }
    };
    outputs.abort_all();
    aux.abort_all();
    Some(outcome)
}

/// Output moving through a session: bytes read, and copies blocked on the client.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    sending: AtomicUsize,
}

/// Copy a process's output to its stream (or drop it if the client did not ask for
/// it), then FIN.
async fn pump_out(fd: Arc<FdIo>, to: Option<ChanWriter>, progress: Arc<Progress>) {
    let mut buf = vec![0u8; 32 << 10];
    let mut to = to;
    loop {
        match fd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(w) = &to {
                    progress.sending.fetch_add(1, Ordering::Relaxed);
                    let sent = w.send(&buf[..n]).await;
                    progress.sending.fetch_sub(1, Ordering::Relaxed);
                    if sent.is_err() {
                        // The client is gone; keep draining so the process never blocks.
                        to = None;
                    }
                }
            }
        }
    }
    if let Some(w) = to {
        let _ = w.finish().await;
    }
}

/// Copy the client's input to the process; at its end close the pipe (a terminal
/// stays open: its master carries the output too).
async fn pump_in(mut from: ChanReader, to: Option<Arc<FdIo>>, is_tty: bool) {
    while let Some(chunk) = from.recv().await {
        if let Some(fd) = &to
            && fd.write_all(&chunk).await.is_err()
        {
            break;
        }
    }
    if !is_tty {
        drop(to);
    }
}

/// Apply the client's terminal sizes (a stream of JSON objects `{"Width", "Height"}`).
async fn resizes(mut from: ChanReader, tty: Arc<FdIo>) {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = from.recv().await {
        buf.extend_from_slice(&chunk);
        let mut consumed = 0;
        let mut sizes = serde_json::Deserializer::from_slice(&buf).into_iter::<TermSize>();
        loop {
            match sizes.next() {
                Some(Ok(size)) => {
                    consumed = sizes.byte_offset();
                    apply_size(&tty, size);
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    // Garbage: drop what we have and go on with later sizes.
                    consumed = buf.len();
                    break;
                }
                None => break,
            }
        }
        buf.drain(..consumed);
        if buf.len() > 4096 {
            buf.clear();
        }
    }
}

#[derive(serde::Deserialize, Debug, Clone, Copy)]
struct TermSize {
    #[serde(rename = "Width", alias = "width", default)]
    width: u64,
    #[serde(rename = "Height", alias = "height", default)]
    height: u64,
}

fn apply_size(tty: &FdIo, size: TermSize) {
    if size.width == 0 || size.height == 0 {
        return;
    }
    let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
    let ws = rustix::termios::Winsize {
        ws_row: clamp(size.height),
        ws_col: clamp(size.width),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    if let Err(e) = rustix::termios::tcsetwinsize(tty.fd(), ws) {
        tracing::debug!(error = %e, "resize terminal");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_formats_per_version() {
        let ok = String::from_utf8(status_bytes(4, &Outcome::Success)).unwrap();
        assert_eq!(ok, r#"{"metadata":{},"status":"Success"}"#);
        let v: serde_json::Value =
            serde_json::from_slice(&status_bytes(5, &Outcome::Exit(3))).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v: serde_json::Value =
            serde_json::from_slice(&status_bytes(4, &Outcome::Internal("boom".into()))).unwrap();
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(v["code"], 500);
        assert!(status_bytes(3, &Outcome::Success).is_empty());
        assert_eq!(
            status_bytes(2, &Outcome::Exit(1)),
            b"command terminated with non-zero exit code: exit status 1"
        );
    }

    #[test]
    fn versions_from_protocol_names() {
        assert_eq!(version(Some("v5.channel.k8s.io")), 5);
        assert_eq!(version(Some("v3.channel.k8s.io")), 3);
        assert_eq!(version(Some("channel.k8s.io")), 1);
        assert_eq!(version(None), 1);
    }
}
