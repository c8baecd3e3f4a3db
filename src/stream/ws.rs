//! WebSocket streaming, as the kubelet's streaming server speaks it, on the same
//! single-use URLs as SPDY (the upgrade request chooses).
//!
//! - Exec and attach: the channel protocols `v5.channel.k8s.io` … `v2.channel.k8s.io`,
//!   `channel.k8s.io` (binary frames, first byte the channel: 0 stdin, 1 stdout, 2
//!   stderr, 3 error, 4 resize; v5 adds `[255, channel]` to close a channel) and
//!   `base64.channel.k8s.io` / `v4.base64.channel.k8s.io` (text frames, the channel as an
//!   ASCII digit, the data base64).
//! - Port-forward: SPDY tunnelled in binary frames (`SPDY/3.1+portforward.k8s.io`, what
//!   client-go's and crictl's WebSocket port-forward dial), or the channel form
//!   (`portforward.k8s.io` / `v4.channel.k8s.io`, ports in the URL's `port=` query:
//!   channel 2i carries port i's data, 2i+1 its errors, each opened by the port number
//!   as two little-endian bytes).
//!
//! Frames larger than [`MAX_FRAME`] end the session; the server pings every
//! [`PING_EVERY`] and drops a peer that sent nothing (not even a pong) for
//! [`PEER_TIMEOUT`].

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::chan::{Activity, ChanReader};

/// The largest frame (and message) a client may send.
pub const MAX_FRAME: usize = 1 << 20;
/// How often the server pings.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a peer may send nothing at all before it is dropped.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(90);
/// The v5 close signal's first byte.
const CLOSE_SIGNAL: u8 = 255;
/// Frames queued towards the client before senders wait.
const OUT_QUEUE: usize = 64;

/// The WebSocket (sub)protocols skiff serves for exec and attach, newest first.
pub const REMOTE_WS_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// Port-forward over WebSocket: SPDY tunnelled, or channels.
pub const PORT_FORWARD_WS_PROTOCOLS: &[&str] = &[
    "SPDY/3.1+portforward.k8s.io",
    "v4.channel.k8s.io",
    "portforward.k8s.io",
    "base64.channel.k8s.io",
];

/// A connection upgraded to WebSocket.
pub type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// The WebSocket over an upgraded connection, frames bounded to [`MAX_FRAME`].
pub async fn from_upgraded(up: Upgraded) -> Ws {
    let config = WebSocketConfig::default()
        .max_frame_size(Some(MAX_FRAME))
        .max_message_size(Some(MAX_FRAME));
    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, Some(config)).await
}

/// How channels are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// Text frames with base64 data (else binary).
    pub base64: bool,
    /// `[255, channel]` closes a channel (v5).
    pub close_signal: bool,
}

impl Codec {
    /// The framing of a negotiated subprotocol.
    pub fn of(protocol: &str) -> Codec {
        Codec {
            base64: protocol.contains("base64"),
            close_signal: protocol.starts_with("v5."),
        }
    }

    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::Text(Utf8Bytes::from(text))
        } else {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(channel);
            v.extend_from_slice(data);
            Message::Binary(v.into())
        }
    }

    /// A client frame as (channel, data); `None` for one that is not a channel frame.
    fn decode(self, msg: &Message) -> Option<(u8, Bytes)> {
        match msg {
            Message::Binary(b) if !self.base64 => {
                let (&ch, rest) = b.split_first()?;
                Some((ch, Bytes::copy_from_slice(rest)))
            }
            Message::Text(t) if self.base64 => {
                let t = t.as_str();
                let ch = t.as_bytes().first()?.checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(t[1..].trim())
                    .ok()?;
                Some((ch, data.into()))
            }
            _ => None,
        }
    }
}

enum Out {
    Data(u8, Bytes),
    Close(u8),
}

/// The sending half of one WebSocket channel.
#[derive(Clone)]
pub struct WsTx {
    channel: u8,
    tx: mpsc::Sender<Out>,
    codec: Codec,
}

impl WsTx {
    /// Queue `data` on the channel.
    pub async fn send(&self, data: &[u8]) -> io::Result<()> {
        self.tx
            .send(Out::Data(self.channel, Bytes::copy_from_slice(data)))
            .await
            .map_err(|_| closed())
    }

    /// Close the channel towards the client (v5 only; older protocols have no way).
    pub async fn finish(&self) -> io::Result<()> {
        if !self.codec.close_signal {
            return Ok(());
        }
        self.tx
            .send(Out::Close(self.channel))
            .await
            .map_err(|_| closed())
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket session ended")
}

/// A WebSocket multiplexing numbered channels.
pub struct Mux {
    codec: Codec,
    tx: mpsc::Sender<Out>,
    /// Readers for the channels the client may send on.
    readers: HashMap<u8, mpsc::Receiver<Bytes>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Mux {
    /// Serve `ws` with `codec`: frames the client sends on `inbound` channels go to their
    /// readers, everything else is dropped; writers queue frames to the client.
    pub fn start(ws: Ws, codec: Codec, inbound: &[u8], activity: Arc<Activity>) -> Mux {
        let (tx, mut out_rx) = mpsc::channel::<Out>(OUT_QUEUE);
        let mut routes = HashMap::new();
        let mut readers = HashMap::new();
        for &ch in inbound {
            let (t, r) = mpsc::channel(OUT_QUEUE);
            routes.insert(ch, t);
            readers.insert(ch, r);
        }
        // Reading and writing run apart: a client that does not read its output never
        // stops its input from being delivered, and the other way round.
        let (mut sink, mut stream) = ws.split();
        let heard = Activity::new();
        let (reader_done_tx, mut reader_done) = tokio::sync::oneshot::channel::<()>();
        let heard_r = heard.clone();
        let activity_r = activity.clone();
        let reader = tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                heard_r.touch();
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "websocket session: bad frame");
                        break;
                    }
                };
                match &msg {
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    _ => {}
                }
                activity_r.touch();
                if let Message::Binary(b) = &msg
                    && codec.close_signal
                    && b.first() == Some(&CLOSE_SIGNAL)
                {
                    // The client closed a channel: its reader sees the end.
                    if let Some(&ch) = b.get(1) {
                        routes.remove(&ch);
                    }
                    continue;
                }
                if let Some((ch, data)) = codec.decode(&msg)
                    && let Some(route) = routes.get(&ch)
                    && route.send(data).await.is_err()
                {
                    routes.remove(&ch);
                }
            }
            let _ = reader_done_tx.send(());
        });
        let done = tokio::spawn(async move {
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.tick().await;
            loop {
                tokio::select! {
                    out = out_rx.recv() => {
                        let msg = match out {
                            Some(Out::Data(ch, data)) => codec.encode(ch, &data),
                            Some(Out::Close(ch)) => Message::Binary(vec![CLOSE_SIGNAL, ch].into()),
                            // Every writer is gone: the session is over.
                            None => break,
                        };
                        activity.touch();
                        if sink.send(msg).await.is_err() {
                            reader.abort();
                            return;
                        }
                    }
                    _ = &mut reader_done => break,
                    _ = ping.tick() => {
                        if heard.idle() > PEER_TIMEOUT {
                            tracing::debug!("websocket peer silent for {PEER_TIMEOUT:?}; dropped");
                            break;
                        }
                        if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                            break;
                        }
                    }
                }
            }
            reader.abort();
            // A normal closure (1000): client-go takes any other close as an error.
            let normal = CloseFrame {
                code: CloseCode::Normal,
                reason: Utf8Bytes::from_static(""),
            };
            let _ = sink.send(Message::Close(Some(normal))).await;
            let _ = sink.close().await;
        });
        Mux {
            codec,
            tx,
            readers,
            done: Some(done),
        }
    }

    /// The writer of `channel`.
    pub fn writer(&self, channel: u8) -> WsTx {
        WsTx {
            channel,
            tx: self.tx.clone(),
            codec: self.codec,
        }
    }

    /// The reader of `channel` (one of the inbound channels given to [`Mux::start`]).
    pub fn reader(&mut self, channel: u8) -> Option<ChanReader> {
        self.readers.remove(&channel).map(ChanReader::Ws)
    }

    /// The task serving the WebSocket: it ends when the WebSocket does (the client
    /// closed it, a bad frame, a dead peer), or once every writer (this `Mux` included)
    /// is dropped and the queued frames are out. Taken once.
    pub fn take_done(&mut self) -> tokio::task::JoinHandle<()> {
        self.done
            .take()
            .unwrap_or_else(|| tokio::spawn(std::future::pending()))
    }
}

/// A WebSocket as a byte stream: each binary message is the next bytes; writes go out
/// as binary messages (SPDY tunnelled over WebSocket, as client-go does it). Either side.
pub struct Tunnel<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> Tunnel<S> {
    /// Wrap `ws`.
    pub fn new(ws: WebSocketStream<S>) -> Tunnel<S> {
        Tunnel {
            ws,
            pending: Bytes::new(),
        }
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tunnel<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.ws.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) | Poll::Ready(Some(Ok(Message::Close(_)))) => {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(ws_err(e))),
                Poll::Ready(Some(Ok(Message::Binary(b)))) => self.pending = b,
                Poll::Ready(Some(Ok(Message::Text(_)))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame in a tunnelled SPDY connection",
                    )));
                }
                Poll::Ready(Some(Ok(_))) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tunnel<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.ws.poll_ready_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            Poll::Ready(Ok(())) => {}
        }
        let n = buf.len().min(MAX_FRAME);
        match self
            .ws
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
        {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(ws_err(e))),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_flush_unpin(cx).map_err(ws_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_close_unpin(cx).map_err(ws_err)
    }
}

/// The `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_frames_binary_and_base64() {
        let bin = Codec::of("v5.channel.k8s.io");
        assert!(bin.close_signal && !bin.base64);
        let m = bin.encode(1, b"hi");
        assert_eq!(m, Message::Binary(vec![1, b'h', b'i'].into()));
        assert_eq!(bin.decode(&m), Some((1, Bytes::from_static(b"hi"))));
        let b64 = Codec::of("base64.channel.k8s.io");
        assert!(b64.base64 && !b64.close_signal);
        let m = b64.encode(2, b"hi");
        assert_eq!(m, Message::Text("2aGk=".into()));
        assert_eq!(b64.decode(&m), Some((2, Bytes::from_static(b"hi"))));
        assert_eq!(b64.decode(&Message::Text("x!!".into())), None);
        assert_eq!(bin.decode(&Message::Binary(Bytes::new())), None);
    }

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
