//! The streaming server: Exec, Attach and PortForward hand out single-use URLs on it;
//! clients (the kubelet, crictl, `skiff exec -it`) connect there, upgrade the HTTP/1.1
//! connection to SPDY/3.1 or to a WebSocket (the request chooses) and speak
//! Kubernetes' remote-command or port-forward protocol over it. Sessions are bounded
//! in number and end after an idle timeout, as the kubelet's.

mod chan;
pub mod client;
pub(crate) mod fdio;
mod forward;
mod remote;
pub mod ws;

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
/// How long a client may take to send its request line and headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
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

/// What bounds the server's sessions.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A session that moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// Sessions at once; more are refused with 503.
    pub max_sessions: usize,
}

impl Default for Limits {
    /// The kubelet's idle timeout (4 h) and 1000 sessions.
    fn default() -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(4 * 3600),
            max_sessions: 1000,
        }
    }
}

/// The server: where it listens and the URLs it has handed out.
pub struct Server {
    base: String,
    ttl: Duration,
    tokens: Mutex<HashMap<String, (Instant, Pending)>>,
    limits: Limits,
    sessions: Arc<tokio::sync::Semaphore>,
}

impl Server {
    /// Bind `addr` (port 0: an ephemeral port).
    pub async fn bind(
        addr: SocketAddr,
        limits: Limits,
    ) -> std::io::Result<(Arc<Server>, TcpListener)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((Arc::new(Server::new(local, TOKEN_TTL, limits)), listener))
    }

    fn new(local: SocketAddr, ttl: Duration, limits: Limits) -> Server {
        Server {
            base: format!("http://{local}"),
            ttl,
            tokens: Mutex::new(HashMap::new()),
            limits,
            sessions: Arc::new(tokio::sync::Semaphore::new(limits.max_sessions)),
        }
    }

    /// Sessions running now.
    pub fn sessions(&self) -> usize {
        self.limits.max_sessions - self.sessions.available_permits()
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
                // A connection that never sends its request is closed after
                // HEADER_TIMEOUT: thousands of idle sockets cost skiffd nothing lasting.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
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
            return self.handle_ws(req, kind, token, runtime);
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
        let Some(permit) = self.permit() else {
            return busy();
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
        let limits = self.limits;
        tokio::spawn(async move {
            let _permit = permit;
            let io = match upgrade.await {
                Ok(up) => TokioIo::new(up),
                Err(e) => {
                    tracing::debug!(error = %e, "streaming upgrade failed");
                    return;
                }
            };
            let (conn, incoming) = skiff_spdy::Connection::server(io);
            serve_spdy(conn, incoming, pending, proto.as_deref(), runtime, limits).await;
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

/// One session over SPDY (plain, or tunnelled in a WebSocket).
async fn serve_spdy(
    conn: skiff_spdy::Connection,
    incoming: tokio::sync::mpsc::Receiver<skiff_spdy::Stream>,
    pending: Pending,
    protocol: Option<&str>,
    runtime: Arc<Runtime>,
    limits: Limits,
) {
    match pending {
        Pending::PortForward { pod } => {
            forward::serve(conn, incoming, pod, runtime, limits).await;
        }
        Pending::Exec { container, cmd, io } => {
            let what = remote::What::Exec { container, cmd };
            remote::serve(conn, incoming, protocol, io, what, runtime, limits).await;
        }
        Pending::Attach { container, io } => {
            let what = remote::What::Attach { container };
            remote::serve(conn, incoming, protocol, io, what, runtime, limits).await;
        }
    }
}

impl Server {
    fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.sessions.clone().try_acquire_owned().ok()
    }

    /// A WebSocket upgrade request for `kind` / `token`.
    fn handle_ws(
        &self,
        mut req: Request<Incoming>,
        kind: &str,
        token: &str,
        runtime: Arc<Runtime>,
    ) -> Response<Full<Bytes>> {
        let headers = req.headers();
        let Some(key) = headers
            .get("sec-websocket-key")
            .map(|k| k.as_bytes().to_vec())
        else {
            return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        if headers
            .get("sec-websocket-version")
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            let mut resp = text(StatusCode::BAD_REQUEST, "unsupported WebSocket version");
            resp.headers_mut()
                .insert("sec-websocket-version", "13".parse().expect("static"));
            return resp;
        }
        let offered: Vec<String> = headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let supported = if kind == "portforward" {
            ws::PORT_FORWARD_WS_PROTOCOLS
        } else {
            ws::REMOTE_WS_PROTOCOLS
        };
        // The client's order wins, as the kubelet's; no protocol at all is the plain
        // channel protocol.
        let protocol = if offered.is_empty() {
            if kind == "portforward" {
                "portforward.k8s.io".to_string()
            } else {
                "channel.k8s.io".to_string()
            }
        } else {
            match offered.iter().find(|p| supported.contains(&p.as_str())) {
                Some(p) => p.clone(),
                None => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "requested protocol(s) are not supported: {offered:?}; supports {supported:?}"
                        ),
                    );
                }
            }
        };
        let ports: Vec<u16> = if kind == "portforward" && !protocol.starts_with("SPDY/") {
            let query = req.uri().query().unwrap_or("");
            let mut ports = Vec::new();
            for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                if k != "port" {
                    continue;
                }
                match v.parse::<u16>() {
                    Ok(p) if p > 0 => ports.push(p),
                    _ => {
                        return text(StatusCode::BAD_REQUEST, &format!("invalid port {v:?}"));
                    }
                }
            }
            if ports.is_empty() {
                return text(StatusCode::BAD_REQUEST, "no port to forward (?port=N)");
            }
            ports
        } else {
            Vec::new()
        };
        let Some(permit) = self.permit() else {
            return busy();
        };
        let Some(pending) = self.take(kind, token) else {
            return text(
                StatusCode::NOT_FOUND,
                "unknown, used or expired streaming token",
            );
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let limits = self.limits;
        let chosen = protocol.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let up = match upgrade.await {
                Ok(up) => up,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            let socket = ws::from_upgraded(up).await;
            match pending {
                Pending::PortForward { pod } if chosen.starts_with("SPDY/") => {
                    let (conn, incoming) = skiff_spdy::Connection::server(ws::Tunnel::new(socket));
                    forward::serve(conn, incoming, pod, runtime, limits).await;
                }
                Pending::PortForward { pod } => {
                    forward::serve_ws(socket, &chosen, ports, pod, runtime, limits).await;
                }
                Pending::Exec { container, cmd, io } => {
                    let what = remote::What::Exec { container, cmd };
                    remote::serve_ws(socket, &chosen, io, what, runtime, limits).await;
                }
                Pending::Attach { container, io } => {
                    let what = remote::What::Attach { container };
                    remote::serve_ws(socket, &chosen, io, what, runtime, limits).await;
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
        h.insert(hyper::header::UPGRADE, "websocket".parse().expect("static"));
        if let Ok(v) = hyper::header::HeaderValue::from_str(&ws::accept_key(&key)) {
            h.insert("sec-websocket-accept", v);
        }
        if !offered.is_empty()
            && let Ok(v) = hyper::header::HeaderValue::from_str(&protocol)
        {
            h.insert("sec-websocket-protocol", v);
        }
        resp
    }
}

fn busy() -> Response<Full<Bytes>> {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many streaming sessions; try again later",
    )
}

/// Copy between a TCP connection and a SPDY stream: TCP EOF becomes FIN on the stream,
/// the stream's FIN a TCP half-close. Once one direction has ended the other gets
/// [`FORWARD_LINGER`] more (containerd's rule: a peer that waits for the other side to
/// close first cannot hang the connection), then both are closed.
pub(crate) async fn splice_tcp(
    tcp: tokio::net::TcpStream,
    mut from_peer: chan::ChanReader,
    to_peer: &chan::ChanWriter,
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
        Server::new("127.0.0.1:1234".parse().unwrap(), ttl, Limits::default())
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
