//! The client side of the streaming protocols, for `skiff exec -it`, `skiff attach`,
//! `skiff port-forward`, the tests and the benchmarks.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use skiff_spdy::{Connection, StreamReader, StreamWriter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{PORT_FORWARD_PROTOCOL, REMOTE_PROTOCOLS};

/// Open a WebSocket to `url` (`http://…`) offering `protocols`; the one the server chose.
async fn ws_dial(
    url: &str,
    protocols: &[&str],
) -> io::Result<(
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    Option<String>,
)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .map_err(io::Error::other)?;
    let offer = protocols.join(", ");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        offer.parse().map_err(io::Error::other)?,
    );
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| io::Error::other(format!("no host in {url}")))?;
    let tcp = tokio::net::TcpStream::connect(host).await?;
    tcp.set_nodelay(true)?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_frame_size(Some(super::ws::MAX_FRAME))
        .max_message_size(Some(super::ws::MAX_FRAME));
    let (ws, resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .map_err(io::Error::other)?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((ws, chosen))
}

/// Run an exec or attach session at `url` over WebSocket (`v5.channel.k8s.io`, else
/// `v4.channel.k8s.io`), as client-go's WebSocket executor does.
pub async fn remote_command_ws(url: &str, mut local: LocalIo) -> io::Result<RemoteExit> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (ws, chosen) = ws_dial(url, &["v5.channel.k8s.io", "v4.channel.k8s.io"]).await?;
    let version = super::remote::version(chosen.as_deref());
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    if let Some(mut input) = local.stdin.take() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(0);
                        frame.extend_from_slice(&buf[..n]);
                        if tx.send(Message::Binary(frame.into())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if version >= 5 {
                let _ = tx.send(Message::Binary(vec![255, 0].into())).await;
            }
        });
    }
    if let Some(mut sizes) = local.resize.take() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some((width, height)) = sizes.recv().await {
                let mut frame = vec![4];
                frame.extend_from_slice(
                    serde_json::json!({"Width": width, "Height": height})
                        .to_string()
                        .as_bytes(),
                );
                if tx.send(Message::Binary(frame.into())).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        sink
    });
    let mut status = Vec::new();
    while let Some(msg) = stream.next().await {
        let Ok(Message::Binary(b)) = msg else {
            if matches!(msg, Ok(Message::Close(_)) | Err(_)) {
                break;
            }
            continue;
        };
        let Some((&ch, data)) = b.split_first() else {
            continue;
        };
        let to = match ch {
            1 => local.stdout.as_mut(),
            2 => local.stderr.as_mut(),
            3 => {
                status.extend_from_slice(data);
                continue;
            }
            _ => continue,
        };
        if let Some(w) = to {
            w.write_all(data).await?;
        }
    }
    for w in [local.stdout.as_mut(), local.stderr.as_mut()]
        .into_iter()
        .flatten()
    {
        let _ = w.flush().await;
    }
    writer.abort();
    Ok(parse_status(version, &status))
}

/// The local ends of an exec or attach.
#[derive(Default)]
pub struct LocalIo {
    /// Sent to the process's stdin (the stream is closed at its end).
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Receives stdout (with a tty: all output).
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Receives stderr.
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Whether the session has a terminal.
    pub tty: bool,
    /// Terminal sizes (width, height) to send.
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteExit {
    /// The command exited with this code (0 for an attach that ended normally).
    Code(i32),
    /// The server reported a failure (the message).
    Failed(String),
}

fn headers(pairs: &[(&str, &str)]) -> skiff_spdy::Headers {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// Run an exec or attach session at `url` (from the CRI Exec or Attach response).
pub async fn remote_command(url: &str, mut local: LocalIo) -> io::Result<RemoteExit> {
    let (conn, protocol) = skiff_spdy::dial(url, REMOTE_PROTOCOLS).await?;
    let version = super::remote::version(protocol.as_deref());
    let open = |kind: &'static str| {
        let conn = conn.clone();
        async move { conn.open(headers(&[("streamtype", kind)])).await }
    };
    let (mut error, _) = open("error").await?.split();
    let stdin = match local.stdin.is_some() {
        true => Some(open("stdin").await?.split().1),
        false => None,
    };
    let stdout = match local.stdout.is_some() {
        true => Some(open("stdout").await?.split().0),
        false => None,
    };
    let stderr = match local.stderr.is_some() && !local.tty {
        true => Some(open("stderr").await?.split().0),
        false => None,
    };
    let resize = match local.tty && version >= 3 {
        true => Some(open("resize").await?.split().1),
        false => None,
    };
    if let (Some(w), Some(mut sizes)) = (resize, local.resize.take()) {
        tokio::spawn(async move {
            while let Some((width, height)) = sizes.recv().await {
                let msg = serde_json::json!({"Width": width, "Height": height}).to_string();
                if w.send(msg.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
    if let (Some(w), Some(mut input)) = (stdin, local.stdin.take()) {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.send(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = w.finish().await;
        });
    }
    let out = copy_out(stdout, local.stdout.take());
    let err = copy_out(stderr, local.stderr.take());
    let status = async {
        let mut bytes = Vec::new();
        while let Some(chunk) = error.recv().await {
            bytes.extend_from_slice(&chunk);
        }
        bytes
    };
    let ((), (), status) = tokio::join!(out, err, status);
    conn.close().await;
    Ok(parse_status(version, &status))
}

async fn copy_out(from: Option<StreamReader>, to: Option<Box<dyn AsyncWrite + Send + Unpin>>) {
    let (Some(mut from), Some(mut to)) = (from, to) else {
        return;
    };
    while let Some(chunk) = from.recv().await {
        if to.write_all(&chunk).await.is_err() {
            break;
        }
        let _ = to.flush().await;
    }
}

/// The outcome written to the error stream.
pub fn parse_status(version: u8, bytes: &[u8]) -> RemoteExit {
    if bytes.is_empty() {
        return RemoteExit::Code(0);
    }
    if version < 4 {
        return RemoteExit::Failed(String::from_utf8_lossy(bytes).into_owned());
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return RemoteExit::Failed(String::from_utf8_lossy(bytes).into_owned());
    };
    if v["status"] == "Success" {
        return RemoteExit::Code(0);
    }
    if v["reason"] == "NonZeroExitCode"
        && let Some(code) = v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
    {
        return RemoteExit::Code(code);
    }
    RemoteExit::Failed(
        v["message"]
            .as_str()
            .unwrap_or("unknown failure")
            .to_string(),
    )
}

/// A port-forward connection to one pod.
pub struct PortForwarder {
    conn: Connection,
    next: AtomicU64,
}

/// One forwarded TCP connection.
pub struct Forwarded {
    /// Bytes from the pod's port.
    pub data_in: StreamReader,
    /// Bytes to it.
    pub data_out: StreamWriter,
    /// The server's error report for this connection (empty when none).
    pub error: StreamReader,
}

impl PortForwarder {
    /// Connect to `url` (from the CRI PortForward response).
    pub async fn dial(url: &str) -> io::Result<PortForwarder> {
        let (conn, _) = skiff_spdy::dial(url, &[PORT_FORWARD_PROTOCOL]).await?;
        Ok(PortForwarder {
            conn,
            next: AtomicU64::new(0),
        })
    }

    /// Connect to `url` over WebSocket, with SPDY tunnelled inside (as client-go's and
    /// crictl's WebSocket port-forward dial).
    pub async fn dial_ws(url: &str) -> io::Result<PortForwarder> {
        let tunnelled = format!("SPDY/3.1+{PORT_FORWARD_PROTOCOL}");
        let (ws, _) = ws_dial(url, &[&tunnelled]).await?;
        let conn = Connection::client(super::ws::Tunnel::new(ws));
        Ok(PortForwarder {
            conn,
            next: AtomicU64::new(0),
        })
    }

    /// Open a forwarded connection to `port` in the pod.
    pub async fn open(&self, port: u16) -> io::Result<Forwarded> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let port = port.to_string();
        let error = self
            .conn
            .open(headers(&[
                ("streamtype", "error"),
                ("port", &port),
                ("requestid", &id),
            ]))
            .await?;
        let (error_in, error_out) = error.split();
        error_out.finish().await?;
        let data = self
            .conn
            .open(headers(&[
                ("streamtype", "data"),
                ("port", &port),
                ("requestid", &id),
            ]))
            .await?;
        let (data_in, data_out) = data.split();
        Ok(Forwarded {
            data_in,
            data_out,
            error: error_in,
        })
    }

    /// Copy between a local TCP connection and a new forwarded one to `port`; the
    /// server's error, if it reported one.
    pub async fn forward(
        &self,
        local: tokio::net::TcpStream,
        port: u16,
    ) -> io::Result<Option<String>> {
        let Forwarded {
            data_in,
            data_out,
            mut error,
        } = self.open(port).await?;
        let err = async {
            let mut msg = Vec::new();
            while let Some(chunk) = error.recv().await {
                msg.extend_from_slice(&chunk);
            }
            msg
        };
        let activity = super::chan::Activity::new();
        let data_in = super::chan::ChanReader::Spdy(data_in, activity.clone());
        let data_out = super::chan::ChanWriter::Spdy(data_out, activity);
        let ((), msg) = tokio::join!(super::splice_tcp(local, data_in, &data_out), err);
        Ok((!msg.is_empty()).then(|| String::from_utf8_lossy(&msg).into_owned()))
    }

    /// Close the connection.
    pub async fn close(&self) {
        self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_to_exits() {
        assert_eq!(parse_status(4, b""), RemoteExit::Code(0));
        assert_eq!(
            parse_status(4, br#"{"metadata":{},"status":"Success"}"#),
            RemoteExit::Code(0)
        );
        let bytes = super::super::remote::status_bytes(5, &super::super::remote::Outcome::Exit(42));
        assert_eq!(parse_status(5, &bytes), RemoteExit::Code(42));
        let bytes = super::super::remote::status_bytes(
            4,
            &super::super::remote::Outcome::Internal("no such file".into()),
        );
        assert!(
            matches!(parse_status(4, &bytes), RemoteExit::Failed(m) if m.contains("no such file"))
        );
        assert_eq!(parse_status(2, b"boom"), RemoteExit::Failed("boom".into()));
    }
}
