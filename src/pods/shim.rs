//! Starting a pod's shim and talking to it (async side of `skiff_shim_proto::protocol`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_shim_proto::protocol::{Answer, Failure, FailureKind, Reply, Request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::RuntimeError;

/// How long a short shim request may take (the OCI runtime runs inside some).
pub const SHORT: Duration = Duration::from_secs(60);

/// The shim binary as skiffd executes it: a sealed in-memory copy made once at start
/// (`memfd_create` + `F_SEAL_WRITE`…), so no process that runs the shim's image, such
/// as the native handler's forks that enter a container before they exec, can
/// reach a writable file through `/proc/<pid>/exe` (CVE-2019-5736). Every shim maps
/// the same copy. Without a copy (the binary missing at start) the path is used.
#[derive(Debug)]
pub struct ShimExe {
    /// What is executed: `/proc/self/fd/<memfd>`, or the binary's path.
    exec_path: PathBuf,
    /// The binary on disk (the shim's `argv[0]`, and the one `oci` commands run).
    pub path: PathBuf,
    _sealed: Option<std::os::fd::OwnedFd>,
}

impl ShimExe {
    /// Seal a copy of the binary at `path`; on failure (logged) fall back to the path.
    pub fn new(path: PathBuf) -> ShimExe {
        match seal_copy(&path) {
            Ok(fd) => ShimExe {
                exec_path: PathBuf::from(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&fd)
                )),
                path,
                _sealed: Some(fd),
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot seal a copy of the shim binary; executing it from disk");
                ShimExe {
                    exec_path: path.clone(),
                    path,
                    _sealed: None,
                }
            }
        }
    }

    /// Whether shims run from the sealed copy.
    pub fn is_sealed(&self) -> bool {
        self._sealed.is_some()
    }
}

/// A close-on-exec memfd holding the file at `path`, sealed against any change.
fn seal_copy(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "skiff-shim",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut src = std::fs::File::open(path)?;
    let mut dst = std::fs::File::from(fd);
    std::io::copy(&mut src, &mut dst)?;
    let fd = std::os::fd::OwnedFd::from(dst);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    Ok(fd)
}

/// What the shim needs to start: its binary and its command-line options.
#[derive(Debug, Clone)]
pub struct ShimStart {
    /// The shim binary.
    pub binary: std::sync::Arc<ShimExe>,
    /// What it is told on its command line.
    pub opts: skiff_shim_proto::options::Options,
}

/// A started shim.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// The shim's pid.
    pub pid: u32,
    /// The pause pid, if one was started.
    pub pause_pid: Option<u32>,
}

/// Start a shim and wait until it serves.
pub async fn start(start: &ShimStart) -> Result<Started, RuntimeError> {
    let s = &start.opts;
    let mut cmd = tokio::process::Command::new(&start.binary.exec_path);
    cmd.arg0(&start.binary.path)
        .args(s.to_args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let shim_err = |reason: String| RuntimeError::ShimStart {
        pod: s.pod_id.clone(),
        reason,
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| shim_err(format!("run {}: {e}", start.binary.path.display())))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| shim_err("no stdout".into()))?;
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        let output = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output()).await;
        let stderr = match &output {
            Ok(Ok(o)) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            _ => String::new(),
        };
        return Err(shim_err(format!("it did not report ready: {stderr}")));
    }
    // The started process exits right after forking the shim proper; reap it.
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let mut words = line.split_whitespace();
    let (Some("ready"), Some(pid), Some(pause)) = (words.next(), words.next(), words.next()) else {
        return Err(shim_err(format!("unexpected output {line:?}")));
    };
    let pid = pid
        .parse()
        .map_err(|_| shim_err(format!("bad pid in {line:?}")))?;
    let pause: u32 = pause
        .parse()
        .map_err(|_| shim_err(format!("bad pause pid in {line:?}")))?;
    Ok(Started {
        pid,
        pause_pid: (pause != 0).then_some(pause),
    })
}

/// Send `req` to the shim at `socket`; `timeout` bounds the whole exchange.
pub async fn call(
    pod: &str,
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
) -> Result<Reply, RuntimeError> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        if reader.read_line(&mut answer).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the shim closed the connection without an answer",
            ));
        }
        serde_json::from_str::<Answer>(&answer).map_err(std::io::Error::other)
    };
    let answer = match timeout {
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .map_err(|_| RuntimeError::Shim {
                pod: pod.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", t.as_secs()),
                ),
            })?,
        None => exchange.await,
    };
    match answer {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(f)) => Err(RuntimeError::ShimFailed(f)),
        Err(source) => Err(RuntimeError::Shim {
            pod: pod.to_string(),
            source,
        }),
    }
}

/// Whether a failure means "the shim does not know it".
pub fn is_not_found(e: &RuntimeError) -> bool {
    matches!(
        e,
        RuntimeError::ShimFailed(Failure {
            kind: FailureKind::NotFound,
            ..
        })
    )
}

/// The rest of a connection after [`call_with_fds`]: a second answer may follow.
pub struct Pending {
    stream: UnixStream,
    buf: Vec<u8>,
    pod: String,
}

impl Pending {
    /// Wait for the next answer line (for a streaming exec: its exit).
    pub async fn next(mut self) -> Result<Reply, RuntimeError> {
        let pod = self.pod.clone();
        let read = async {
            let mut reader = BufReader::new(&mut self.stream);
            let mut line = std::mem::take(&mut self.buf);
            if !line.contains(&b'\n') {
                reader.read_until(b'\n', &mut line).await?;
            }
            if line.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the shim closed the connection without an answer",
                ));
            }
            serde_json::from_slice::<Answer>(&line).map_err(std::io::Error::other)
        };
        match read.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(f)) => Err(RuntimeError::ShimFailed(f)),
            Err(source) => Err(RuntimeError::Shim { pod, source }),
        }
    }
}

/// Send `req` and read an answer that carries fds (SCM_RIGHTS); the connection stays
/// open for a later answer. Bounded by [`SHORT`].
pub async fn call_with_fds(
    pod: &str,
    socket: &Path,
    req: &Request,
) -> Result<(Reply, Vec<std::os::fd::OwnedFd>, Pending), RuntimeError> {
    let shim_err = |source: std::io::Error| RuntimeError::Shim {
        pod: pod.to_string(),
        source,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut buf = Vec::new();
        let mut fds = Vec::new();
        loop {
            stream.readable().await?;
            let got = stream.try_io(tokio::io::Interest::READABLE, || {
                let mut space =
                    [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
                let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
                let mut chunk = [0u8; 8192];
                let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
                let msg = rustix::net::recvmsg(
                    &stream,
                    &mut iov,
                    &mut control,
                    rustix::net::RecvFlags::CMSG_CLOEXEC,
                )?;
                for m in control.drain() {
                    if let rustix::net::RecvAncillaryMessage::ScmRights(got) = m {
                        fds.extend(got);
                    }
                }
                Ok(chunk[..msg.bytes].to_vec())
            });
            match got {
                Ok(bytes) if bytes.is_empty() => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the shim closed the connection without an answer",
                    ));
                }
                Ok(bytes) => buf.extend_from_slice(&bytes),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let rest = buf.split_off(end + 1);
                let answer =
                    serde_json::from_slice::<Answer>(&buf).map_err(std::io::Error::other)?;
                return Ok((answer, fds, stream, rest));
            }
            if buf.len() > 1 << 20 {
                return Err(std::io::Error::other("the shim's answer is too long"));
            }
        }
    };
    let (answer, fds, stream, rest) = tokio::time::timeout(SHORT, exchange)
        .await
        .map_err(|_| {
            shim_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", SHORT.as_secs()),
            ))
        })?
        .map_err(shim_err)?;
    let reply = answer.map_err(RuntimeError::ShimFailed)?;
    Ok((
        reply,
        fds,
        Pending {
            stream,
            buf: rest,
            pod: pod.to_string(),
        },
    ))
}
