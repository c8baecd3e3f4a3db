//! The HTTP/1.1 `Upgrade: SPDY/3.1` handshake: [`dial`] for clients, [`negotiate`] for
//! servers, and [`PrefixedIo`] to hand bytes read past the response head to the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::Connection;

/// The `Upgrade` token of SPDY/3.1.
pub const UPGRADE_TOKEN: &str = "SPDY/3.1";
/// The header carrying the Kubernetes streaming sub-protocol.
pub const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest error body kept for an [`UpgradeError::Status`].
const MAX_ERROR_BODY: usize = 4 * 1024;
/// How long to wait for an error body.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an upgrade failed. Returned inside an [`io::Error`] (use `get_ref().downcast_ref()`).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The URL is not `http://host[:port][/path][?query]`.
    #[error("unsupported URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server answered with something other than 101.
    #[error("upgrade to SPDY/3.1 refused by {url}: HTTP {status}: {body}")]
    Status {
        /// The URL dialled.
        url: String,
        /// HTTP status.
        status: u16,
        /// Start of the response body (lossy UTF-8, at most 4 KiB).
        body: String,
    },
    /// The response head is not valid HTTP/1.1 or too large.
    #[error("bad upgrade response from {url}: {reason}")]
    BadResponse {
        /// The URL dialled.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

impl UpgradeError {
    fn into_io(self) -> io::Error {
        let kind = match self {
            UpgradeError::BadUrl { .. } => io::ErrorKind::InvalidInput,
            UpgradeError::Status { .. } => io::ErrorKind::ConnectionRefused,
            UpgradeError::BadResponse { .. } => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// The chosen protocol: the first of `client_protocols` (the client's order wins) that the
/// server supports. No client protocols → `Ok(None)` (legacy clients that send none); no common
/// one → `Err` with a message naming both lists.
pub fn negotiate(
    client_protocols: &[&str],
    server_protocols: &[&str],
) -> Result<Option<String>, String> {
    if client_protocols.is_empty() {
        return Ok(None);
    }
    client_protocols
        .iter()
        .find(|p| server_protocols.contains(p))
        .map(|p| Some((*p).to_owned()))
        .ok_or_else(|| {
            format!(
                "no common stream protocol: client offered [{}], server supports [{}]",
                client_protocols.join(", "),
                server_protocols.join(", ")
            )
        })
}

struct Target {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, UpgradeError> {
    let bad = |reason| UpgradeError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// is supported"))?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("missing host or userinfo present"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unterminated IPv6 literal"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("garbage after IPv6 literal"))?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
        None => 80,
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    };
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad("whitespace or control characters in path"));
    }
    Ok(Target {
        host: host.to_owned(),
        port,
        path,
    })
}

/// Dials `url` (`http://host:port/path?query`), upgrades to SPDY/3.1 offering `protocols` (one
/// `X-Stream-Protocol-Version` header each, in order) and returns a client [`Connection`] with
/// the protocol the server chose, if it named one. A non-101 answer becomes an
/// [`UpgradeError::Status`] carrying the status and the start of the body.
pub async fn dial(url: &str, protocols: &[&str]) -> io::Result<(Connection, Option<String>)> {
    let target = parse_url(url).map_err(UpgradeError::into_io)?;
    let mut tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    let host_header = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {host_header}\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE_TOKEN}\r\n",
        target.path
    );
    for p in protocols {
        req.push_str(&format!("{PROTOCOL_HEADER}: {p}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;

    let mut buf = BytesMut::with_capacity(4096);
    let (status, upgrade, protocol, content_length, head_len) = loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            return Err(bad_response(
                url,
                "connection closed before the response head ended",
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let find = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
                };
                let content_length = find("content-length").and_then(|v| v.parse::<usize>().ok());
                break (
                    resp.code.unwrap_or(0),
                    find("upgrade"),
                    find(PROTOCOL_HEADER),
                    content_length,
                    len,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(bad_response(url, "response head over 16 KiB"));
            }
            Err(e) => return Err(bad_response(url, &format!("invalid HTTP response: {e}"))),
        }
    };
    buf.advance(head_len);
    if status != 101 {
        let want = content_length.unwrap_or(MAX_ERROR_BODY).min(MAX_ERROR_BODY);
        let _ = tokio::time::timeout(BODY_TIMEOUT, async {
            while buf.len() < want {
                match tcp.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let body = String::from_utf8_lossy(&buf[..buf.len().min(want)])
            .trim()
            .to_owned();
        return Err(UpgradeError::Status {
            url: url.to_owned(),
            status,
            body,
        }
        .into_io());
    }
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case(UPGRADE_TOKEN)) {
        return Err(bad_response(url, "101 response without Upgrade: SPDY/3.1"));
    }
    let io = PrefixedIo::new(buf.freeze(), tcp);
    Ok((Connection::client(io), protocol.filter(|p| !p.is_empty())))
}

fn bad_response(url: &str, reason: &str) -> io::Error {
    UpgradeError::BadResponse {
        url: url.to_owned(),
        reason: reason.to_owned(),
    }
    .into_io()
}

/// A byte stream that first yields `prefix` (bytes already read past an HTTP head), then reads
/// from the inner stream. Writes go straight to the inner stream.
pub struct PrefixedIo<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> PrefixedIo<T> {
    /// Wraps `inner`, to be read after `prefix`.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    /// The inner stream (any unread prefix is lost).
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_prefers_client_order() {
        let server = ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"];
        assert_eq!(negotiate(&[], &server), Ok(None));
        assert_eq!(
            negotiate(&["v3.channel.k8s.io", "v4.channel.k8s.io"], &server),
            Ok(Some("v3.channel.k8s.io".to_owned()))
        );
        let err = negotiate(&["v9"], &server).unwrap_err();
        assert!(
            err.contains("v9") && err.contains("channel.k8s.io"),
            "{err}"
        );
    }

    #[test]
    fn parses_urls() {
        let t = parse_url("http://127.0.0.1:1234/exec/abc?cmd=ls&tty=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 1234, "/exec/abc?cmd=ls&tty=1")
        );
        let t = parse_url("http://[::1]:80?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 80, "/?x=1")
        );
        let t = parse_url("http://example").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        for bad in [
            "https://x/",
            "x:1/",
            "http://:80/",
            "http://h:99999/",
            "http://h/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn prefixed_io_reads_prefix_first() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = PrefixedIo::new(Bytes::from_static(b"hello "), a);
        b.write_all(b"world").await.unwrap();
        drop(b);
        let mut s = String::new();
        io.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }
}
