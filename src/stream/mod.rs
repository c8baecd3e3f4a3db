//! The streaming server: Exec, Attach and PortForward hand out single-use URLs on it;
//! clients (the kubelet, crictl, `skiff exec -it`) connect there, upgrade the HTTP/1.1
//! connection to SPDY/3.1 and speak Kubernetes' remote-command or port-forward
//! protocol over its streams.

pub mod client;
pub(crate) mod fdio;
mod forward;
mod remote;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::pods::{Runtime, RuntimeError};

/// How long a URL stays valid (the kubelet's streaming cache keeps them a minute).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How many URLs may wait at once.
const MAX_PENDING: usize = 1000;
/// How long a client may take to open its streams after the upgrade.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The remote-command subprotocols, newest first.
pub const REMOTE_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward subprotocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// What a URL was issued for.
#[derive(Debug, Clone)]
pub enum Pending {
    /// A streaming exec.
    Exec {
        /// The container (full id).
        container: String,
        /// The command.
        cmd: Vec<String>,
        /// Which streams the client asked for.
        io: StdioOpts,
    },
    /// An attach to the container's stdio.
    Attach {
        /// The container (full id).
        container: String,
        /// Which streams the client asked for.
        io: StdioOpts,
    },
    /// Port forwarding into a pod.
    PortForward {
        /// The pod (full id).
        pod: String,
    },
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec { .. } => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
        }
    }
}

/// The stdio streams of an exec or attach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioOpts {
    /// Client sends input.
    pub stdin: bool,
    /// Client reads stdout.
    pub stdout: bool,
    /// Client reads stderr.
    pub stderr: bool,
    /// A terminal.
    pub tty: bool,
}

/// The server: where it listens and the URLs it has handed out.
pub struct Server {
    base: String,
    ttl: Duration,
    tokens: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl Server {
    /// Bind `addr` (port 0: an ephemeral port).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<(Arc<Server>, TcpListener)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((Arc::new(Server::new(local, TOKEN_TTL)), listener))
    }

    fn new(local: SocketAddr, ttl: Duration) -> Server {
        Server {
            base: format!("http://{local}"),
            ttl,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The URL prefix, `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A single-use URL for `pending`.
    pub fn issue(&self, pending: Pending) -> Result<String, RuntimeError> {
        let mut raw = [0u8; 18];
        rand::fill(&mut raw);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if tokens.len() >= MAX_PENDING {
            return Err(RuntimeError::Exhausted(format!(
                "{MAX_PENDING} streaming requests are already waiting for their clients"
            )));
        }
        let url = format!("{}/{}/{token}", self.base, pending.path());
        tokens.insert(token, (now, pending));
        Ok(url)
    }

    /// Take the request behind `token` if it is known, unexpired and for `path`.
    fn take(&self, path: &str, token: &str) -> Option<Pending> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let (at, pending) = tokens.remove(token)?;
        (at.elapsed() < self.ttl && pending.path() == path).then_some(pending)
    }

    /// Serve connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, runtime: Arc<Runtime>) {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming server: accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let server = self.clone();
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    let runtime = runtime.clone();
                    async move { Ok::<_, Infallible>(server.handle(req, runtime)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    }

    fn handle(&self, mut req: Request<Incoming>, runtime: Arc<Runtime>) -> Response<Full<Bytes>> {
        let path = req.uri().path().trim_matches('/').to_string();
        let Some((kind, token)) = path.split_once('/') else {
            return text(StatusCode::NOT_FOUND, "not found");
        };
        if !matches!(kind, "exec" | "attach" | "portforward") || token.contains('/') {
            return text(StatusCode::NOT_FOUND, "not found");
        }
        if req.method() != hyper::Method::POST && req.method() != hyper::Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST or GET");
        }
        let headers = req.headers();
        let has = |name: &str, want: &str| {
            headers.get_all(name).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|part| part.trim().eq_ignore_ascii_case(want))
                })
            })
        };
        if has("upgrade", "websocket") {
            return text(
                StatusCode::BAD_REQUEST,
                "websocket streaming is not supported by skiff yet; use SPDY/3.1",
            );
        }
        if !has("connection", "upgrade") || !has("upgrade", "SPDY/3.1") {
            return text(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: missing upgrade headers in request",
            );
        }
        let offered: Vec<String> = headers
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let offered: Vec<&str> = offered.iter().map(String::as_str).collect();
        let supported: &[&str] = if kind == "portforward" {
            &[PORT_FORWARD_PROTOCOL]
        } else {
            REMOTE_PROTOCOLS
        };
        let protocol = match skiff_spdy::negotiate(&offered, supported) {
            Ok(p) => p,
            Err(msg) => {
                let mut resp = text(StatusCode::FORBIDDEN, &msg);
                if let Ok(v) = hyper::header::HeaderValue::from_str(&supported.join(", ")) {
                    resp.headers_mut()
                        .insert("x-accepted-stream-protocol-versions", v);
                }
                return resp;
            }
        };
        // Only a request that becomes a session uses the token up: a client that tries
        // WebSocket first and falls back to SPDY keeps its URL.
        let Some(pending) = self.take(kind, token) else {
            return text(
                StatusCode::NOT_FOUND,
                "unknown, used or expired streaming token",
            );
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let proto = protocol.clone();
        tokio::spawn(async move {
            let io = match upgrade.await {
                Ok(up) => TokioIo::new(up),
                Err(e) => {
                    tracing::debug!(error = %e, "streaming upgrade failed");
                    return;
                }
            };
            let (conn, incoming) = skiff_spdy::Connection::server(io);
            match pending {
                Pending::PortForward { pod } => {
                    forward::serve(conn, incoming, pod, runtime).await;
                }
                Pending::Exec { container, cmd, io } => {
                    let what = remote::What::Exec { container, cmd };
                    remote::serve(conn, incoming, proto.as_deref(), io, what, runtime).await;
                }
                Pending::Attach { container, io } => {
                    let what = remote::What::Attach { container };
                    remote::serve(conn, incoming, proto.as_deref(), io, what, runtime).await;
                }
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(
            hyper::header::CONNECTION,
            "Upgrade".parse().expect("static"),
        );
        h.insert(hyper::header::UPGRADE, "SPDY/3.1".parse().expect("static"));
        if let Some(p) = protocol
            && let Ok(v) = hyper::header::HeaderValue::from_str(&p)
        {
            h.insert("x-stream-protocol-version", v);
        }
        resp
    }
}

/// Copy between a TCP connection and a SPDY stream: TCP EOF becomes FIN on the stream,
/// the stream's FIN a TCP half-close. Once one direction has ended the other gets
/// [`FORWARD_LINGER`] more (containerd's rule: a peer that waits for the other side to
/// close first cannot hang the connection), then both are closed.
pub(crate) async fn splice_tcp(
    tcp: tokio::net::TcpStream,
    mut from_peer: skiff_spdy::StreamReader,
    to_peer: &skiff_spdy::StreamWriter,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tcp.into_split();
    let inbound = async {
        while let Some(chunk) = from_peer.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_peer.send(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_peer.finish().await;
    };
    tokio::pin!(inbound, outbound);
    tokio::select! {
        () = &mut inbound => {
            let _ = tokio::time::timeout(FORWARD_LINGER, &mut outbound).await;
        }
        () = &mut outbound => {
            let _ = tokio::time::timeout(FORWARD_LINGER, &mut inbound).await;
        }
    }
    let _ = to_peer.finish().await;
}

/// How long the second direction of a forwarded connection may go on after the first
/// ended.
pub const FORWARD_LINGER: Duration = Duration::from_secs(1);

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(ttl: Duration) -> Server {
        Server::new("127.0.0.1:1234".parse().unwrap(), ttl)
    }

    #[test]
    fn tokens_are_single_use_and_bound_to_their_path() {
        let s = server(TOKEN_TTL);
        let url = s.issue(Pending::PortForward { pod: "p".into() }).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(url.starts_with("http://127.0.0.1:1234/portforward/"));
        assert!(token.len() >= 24, "{token}");
        assert!(s.take("exec", &token).is_none(), "wrong path");
        let url = s.issue(Pending::PortForward { pod: "p".into() }).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(s.take("portforward", &token).is_some());
        assert!(s.take("portforward", &token).is_none(), "reused");
        assert!(s.take("portforward", "nope").is_none());
    }

    #[test]
    fn tokens_expire() {
        let s = server(Duration::from_millis(20));
        let url = s.issue(Pending::PortForward { pod: "p".into() }).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        std::thread::sleep(Duration::from_millis(40));
        assert!(s.take("portforward", &token).is_none());
    }

    #[test]
    fn pending_urls_are_bounded() {
        let s = server(TOKEN_TTL);
        for _ in 0..MAX_PENDING {
            s.issue(Pending::PortForward { pod: "p".into() }).unwrap();
        }
        let e = s
            .issue(Pending::PortForward { pod: "p".into() })
            .unwrap_err();
        assert!(e.to_string().contains("waiting"), "{e}");
    }
}
