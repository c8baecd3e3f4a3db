//! What the streaming server needs from the runtime: stdio of a new exec or of a
//! running container (fds handed over by the shim), and TCP connections inside a
//! pod's network namespace.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use skiff_cri::api;
use skiff_shim_proto::protocol::{Exit, FdRole, Reply, Request};

use super::records::{CtrState, PodState};
use super::{Runtime, RuntimeError, container_config, shim};

/// A process's stdio handed over by the shim.
pub struct Stdio {
    /// The fds, each with what it is.
    pub fds: Vec<(FdRole, OwnedFd)>,
    /// For an exec: resolves with its exit. Dropping it kills the process.
    pub exit: Option<ExitWait>,
}

/// The exit of a streaming exec, still to come.
pub struct ExitWait(shim::Pending);

impl ExitWait {
    /// Wait for the exit.
    pub async fn wait(self) -> Result<Exit, RuntimeError> {
        match self.0.next().await? {
            Reply::Exited(e) => Ok(e),
            other => Err(RuntimeError::Invalid(format!(
                "unexpected shim reply {other:?}"
            ))),
        }
    }
}

fn pair(reply: Reply, fds: Vec<OwnedFd>) -> Result<Vec<(FdRole, OwnedFd)>, RuntimeError> {
    let Reply::Streams { fds: roles, .. } = reply else {
        return Err(RuntimeError::Invalid(format!(
            "unexpected shim reply {reply:?}"
        )));
    };
    if roles.len() != fds.len() {
        return Err(RuntimeError::Invalid(format!(
            "the shim named {} fds and sent {}",
            roles.len(),
            fds.len()
        )));
    }
    Ok(roles.into_iter().zip(fds).collect())
}

impl Runtime {
    /// Start the streaming server on `addr` (once; later calls are ignored). Its
    /// address, `http://host:port`.
    pub async fn start_streaming(
        self: &Arc<Self>,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<String> {
        if let Some(s) = self.streaming.get() {
            return Ok(s.base().to_string());
        }
        let (server, listener) =
            crate::stream::Server::bind(addr, self.config.streaming_limits).await?;
        let base = server.base().to_string();
        if self.streaming.set(server.clone()).is_ok() {
            tokio::spawn(server.serve(listener, self.clone()));
        }
        Ok(base)
    }

    /// A URL on the streaming server for `pending`.
    pub fn streaming_url(&self, pending: crate::stream::Pending) -> Result<String, RuntimeError> {
        self.streaming
            .get()
            .ok_or_else(|| {
                RuntimeError::Precondition("the streaming server is not running".into())
            })?
            .issue(pending)
    }

    /// A running container (resolving id prefixes): its full id, its pod's id and shim
    /// socket.
    pub(super) fn running_container(
        &self,
        id: &str,
    ) -> Result<(String, String, std::path::PathBuf), RuntimeError> {
        let mut c = self.must_container(id)?;
        self.refresh(&mut c);
        if c.state != CtrState::Running {
            return Err(RuntimeError::Precondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let p = self.must_pod(&c.pod_id)?;
        Ok((c.id, p.id, p.shim_socket))
    }

    /// Check an Exec or Attach request before a URL is handed out; the full id.
    pub fn check_stdio_request(
        &self,
        id: &str,
        io: crate::stream::StdioOpts,
    ) -> Result<String, RuntimeError> {
        if !(io.stdin || io.stdout || io.stderr) {
            return Err(RuntimeError::Invalid(
                "one of stdin, stdout, or stderr must be set".into(),
            ));
        }
        if io.tty && io.stderr {
            return Err(RuntimeError::Invalid(
                "tty and stderr cannot both be true".into(),
            ));
        }
        Ok(self.running_container(id)?.0)
    }

    /// Whether the container was created with `stdin_once`.
    pub fn stdin_once(&self, id: &str) -> bool {
        self.must_container(id)
            .map(|c| container_config(&c).stdin_once)
            .unwrap_or(false)
    }

    /// Whether the container was created with a tty.
    pub fn container_tty(&self, id: &str) -> bool {
        self.must_container(id)
            .map(|c| container_config(&c).tty)
            .unwrap_or(false)
    }

    /// Start `cmd` in the container with its stdio handed to the caller.
    pub async fn exec_stdio(
        &self,
        id: &str,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    ) -> Result<Stdio, RuntimeError> {
        let (id, pod, socket) = self.running_container(id)?;
        let req = Request::ExecStream {
            id,
            args: cmd,
            tty,
            stdin,
        };
        let (reply, fds, pending) = shim::call_with_fds(&pod, &socket, &req).await?;
        Ok(Stdio {
            fds: pair(reply, fds)?,
            exit: Some(ExitWait(pending)),
        })
    }

    /// The stdio of a running container, for an attach.
    pub async fn attach_stdio(&self, id: &str, stdin: bool) -> Result<Stdio, RuntimeError> {
        let (id, pod, socket) = self.running_container(id)?;
        let (reply, fds, _) =
            shim::call_with_fds(&pod, &socket, &Request::Attach { id, stdin }).await?;
        Ok(Stdio {
            fds: pair(reply, fds)?,
            exit: None,
        })
    }

    /// Close the container's stdin (a `stdin_once` container after its attach ended).
    pub async fn close_stdin(&self, id: &str) -> Result<(), RuntimeError> {
        let c = self.must_container(id)?;
        let p = self.must_pod(&c.pod_id)?;
        shim::call(
            &p.id,
            &p.shim_socket,
            &Request::CloseStdin { id: c.id },
            Some(shim::SHORT),
        )
        .await
        .map(|_| ())
    }

    /// Check a PortForward request; the full pod id.
    pub fn check_port_forward(
        &self,
        req: &api::PortForwardRequest,
    ) -> Result<String, RuntimeError> {
        let p = self.must_pod(&req.pod_sandbox_id)?;
        if p.state != PodState::Ready {
            return Err(RuntimeError::Precondition(format!(
                "pod sandbox {} is not ready",
                p.id
            )));
        }
        if let Some(bad) = req.port.iter().find(|&&port| !(1..=65535).contains(&port)) {
            return Err(RuntimeError::Invalid(format!("invalid port {bad}")));
        }
        Ok(p.id)
    }

    /// A TCP connection to `port` on the pod's loopback (the node's for host-network
    /// pods): the socket is made inside the pod's network namespace.
    pub async fn connect_in_pod(
        &self,
        pod: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, RuntimeError> {
        let p = self.must_pod(pod)?;
        if p.state != PodState::Ready {
            return Err(RuntimeError::Precondition(format!(
                "pod sandbox {} is not ready",
                p.id
            )));
        }
        let netns = p.ns.net.clone();
        let stream = crate::blocking::spawn(move || connect_in(netns.as_deref(), port))
            .await
            .map_err(super::task_err("connect"))?
            .map_err(|e| {
                RuntimeError::Precondition(format!(
                    "connect to port {port} in pod sandbox {}: {e}",
                    p.id
                ))
            })?;
        stream
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(stream))
            .map_err(|e| RuntimeError::Invalid(format!("port-forward socket: {e}")))
    }
}

/// Connect to localhost:`port` from inside `netns` (sockets keep the namespace they
/// were made in).
fn connect_in(netns: Option<&Path>, port: u16) -> std::io::Result<std::net::TcpStream> {
    crate::sys::in_netns(netns, || {
        let timeout = std::time::Duration::from_secs(5);
        let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        std::net::TcpStream::connect_timeout(&v4, timeout).or_else(|e4| {
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| e4)
        })
    })
}
