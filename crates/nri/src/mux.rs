//! NRI's connection multiplexer: two ttrpc connections over one stream socket.
//!
//! Every frame on the trunk is an 8-byte header (connection id, payload length; both
//! u32 big-endian) and the payload. Connection 1 carries the `Plugin` service (the
//! runtime is its client), connection 2 the `Runtime` service (the plugin is its
//! client). Id 0 is reserved.
//!
//! Go's demultiplexer hands each frame to a single `Read` and fails one whose buffer
//! is smaller than the frame, and Go's ttrpc reads through a 4096-byte buffer. So
//! outgoing ttrpc messages are framed on message boundaries: the first 4096 bytes of a
//! message in one frame, the rest (read straight into the message buffer) in a
//! second; two messages never share a frame. Incoming frames are concatenated per
//! connection, whatever their boundaries.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;

/// The connection carrying the `Plugin` service (runtime → plugin calls).
pub const PLUGIN_CONN: u32 = 1;
/// The connection carrying the `Runtime` service (plugin → runtime calls).
pub const RUNTIME_CONN: u32 = 2;

const HEADER: usize = 8;
const TTRPC_HEADER: usize = 10;
/// ttrpc's largest message body.
pub const TTRPC_MAX: usize = 4 << 20;
/// The largest frame payload accepted (a ttrpc header and the largest body).
pub const MAX_FRAME: usize = TTRPC_HEADER + TTRPC_MAX;
/// What Go's ttrpc reader reads at once.
const FIRST_FRAME: usize = 4096;
/// Buffer of each in-process pipe between ttrpc and the trunk.
const PIPE: usize = 256 << 10;

/// The two connections of a multiplexed trunk. Dropping it closes the trunk.
pub struct Mux {
    /// Connection 1 (`Plugin` service).
    pub plugin: DuplexStream,
    /// Connection 2 (`Runtime` service).
    pub runtime: DuplexStream,
    /// Becomes `true` when the trunk is closed, by the peer or by an error.
    pub closed: watch::Receiver<bool>,
    /// Why the trunk closed, once it has.
    pub reason: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    tx: std::sync::Arc<watch::Sender<bool>>,
    tasks: JoinSet<()>,
}

impl Mux {
    /// Multiplex `trunk` (a connected stream socket, or any byte stream).
    pub fn new<S>(trunk: S) -> Mux
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(trunk);
        let wr = std::sync::Arc::new(Mutex::new(wr));
        let (plugin, plugin_pump) = tokio::io::duplex(PIPE);
        let (runtime, runtime_pump) = tokio::io::duplex(PIPE);
        let (p_rd, p_wr) = tokio::io::split(plugin_pump);
        let (r_rd, r_wr) = tokio::io::split(runtime_pump);
        let (tx, closed) = watch::channel(false);
        let tx = std::sync::Arc::new(tx);
        let reason = std::sync::Arc::new(std::sync::Mutex::new(None));
        let mut tasks = JoinSet::new();
        let finish = {
            let (tx, reason) = (tx.clone(), reason.clone());
            move |why: String| {
                let mut r = reason.lock().unwrap_or_else(|p| p.into_inner());
                if r.is_none() {
                    *r = Some(why);
                }
                tx.send_replace(true);
            }
        };
        {
            let finish = finish.clone();
            let mut closed = closed.clone();
            tasks.spawn(async move {
                tokio::select! {
                    r = demux(rd, p_wr, r_wr) => finish(match r {
                        Ok(()) => "the peer closed the connection".into(),
                        Err(e) => e.to_string(),
                    }),
                    _ = closed.wait_for(|c| *c) => {}
                }
            });
        }
        for (id, pipe) in [(PLUGIN_CONN, p_rd), (RUNTIME_CONN, r_rd)] {
            let (finish, wr) = (finish.clone(), wr.clone());
            let mut closed = closed.clone();
            tasks.spawn(async move {
                tokio::select! {
                    r = frame(id, pipe, wr) => finish(match r {
                        Ok(()) => "closed locally".into(),
                        Err(e) => e.to_string(),
                    }),
                    _ = closed.wait_for(|c| *c) => {}
                }
            });
        }
        Mux {
            plugin,
            runtime,
            closed,
            reason,
            tx,
            tasks,
        }
    }

    /// Split into the two connections and a handle that keeps the trunk's tasks.
    pub fn into_parts(self) -> (DuplexStream, DuplexStream, Trunk) {
        (
            self.plugin,
            self.runtime,
            Trunk {
                closed: self.closed,
                reason: self.reason,
                tx: self.tx,
                _tasks: self.tasks,
            },
        )
    }
}

/// The trunk's tasks and its closed state; dropping it closes the trunk.
pub struct Trunk {
    /// Becomes `true` when the trunk is closed.
    pub closed: watch::Receiver<bool>,
    reason: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    tx: std::sync::Arc<watch::Sender<bool>>,
    _tasks: JoinSet<()>,
}

impl Trunk {
    /// Whether the trunk is closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Close the trunk (both connections end), recording why.
    pub fn close(&self, why: &str) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(why.to_string());
            }
        }
        self.tx.send_replace(true);
    }

    /// Why it closed, if it has.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Read frames from the trunk into the connections' pipes until the trunk ends.
async fn demux<R, W>(mut rd: R, mut plugin: W, mut runtime: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hdr = [0u8; HEADER];
    let mut buf = Vec::new();
    loop {
        match rd.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let (id, len) = parse_header(&hdr)?;
        buf.resize(len, 0);
        rd.read_exact(&mut buf).await?;
        let pipe = match id {
            PLUGIN_CONN => &mut plugin,
            RUNTIME_CONN => &mut runtime,
            // Frames for a connection nobody opened are dropped, as Go's mux does.
            _ => continue,
        };
        pipe.write_all(&buf).await?;
    }
}

/// Check a frame header: the connection id and a payload length within bounds.
pub fn parse_header(hdr: &[u8; HEADER]) -> io::Result<(u32, usize)> {
    let id = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let len = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
    if id == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a frame for the reserved connection 0",
        ));
    }
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {MAX_FRAME})"),
        ));
    }
    Ok((id, len))
}

/// Read whole ttrpc messages from a connection's pipe and write them to the trunk.
async fn frame<R, W>(id: u32, mut pipe: R, trunk: std::sync::Arc<Mutex<W>>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut msg = vec![0; TTRPC_HEADER];
    loop {
        msg.resize(TTRPC_HEADER, 0);
        match pipe.read_exact(&mut msg[..TTRPC_HEADER]).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
        if len > TTRPC_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a ttrpc message of {len} bytes to send (at most {TTRPC_MAX})"),
            ));
        }
        msg.resize(TTRPC_HEADER + len, 0);
        pipe.read_exact(&mut msg[TTRPC_HEADER..]).await?;
        let mut out = trunk.lock().await;
        let first = msg.len().min(FIRST_FRAME);
        for part in [&msg[..first], &msg[first..]] {
            if part.is_empty() {
                continue;
            }
            let mut hdr = [0u8; HEADER];
            hdr[..4].copy_from_slice(&id.to_be_bytes());
            // Parts are at most FIRST_FRAME or TTRPC_MAX bytes (checked above).
            let len = u32::try_from(part.len()).map_err(io::Error::other)?;
            hdr[4..].copy_from_slice(&len.to_be_bytes());
            out.write_all(&hdr).await?;
            out.write_all(part).await?;
        }
        out.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttrpc_msg(len: usize, fill: u8) -> Vec<u8> {
        let mut m = u32::try_from(len).unwrap().to_be_bytes().to_vec();
        m.extend_from_slice(&[0, 0, 0, 1, 1, 0]);
        m.extend(std::iter::repeat_n(fill, len));
        m
    }

    /// Frames read off the raw trunk: (conn id, payload length).
    async fn frames(raw: &mut DuplexStream, n: usize) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let mut hdr = [0u8; HEADER];
            raw.read_exact(&mut hdr).await.unwrap();
            let (id, len) = parse_header(&hdr).unwrap();
            let mut body = vec![0u8; len];
            raw.read_exact(&mut body).await.unwrap();
            out.push((id, len));
        }
        out
    }

    #[tokio::test]
    async fn messages_are_framed_on_their_boundaries() {
        let (a, mut raw) = tokio::io::duplex(1 << 20);
        let mut mux = Mux::new(a);
        // A small message: one frame. A large one: 4096 bytes, then the rest.
        mux.plugin.write_all(&ttrpc_msg(20, 1)).await.unwrap();
        mux.plugin.write_all(&ttrpc_msg(10_000, 2)).await.unwrap();
        mux.runtime.write_all(&ttrpc_msg(4086, 3)).await.unwrap();
        let got = frames(&mut raw, 4).await;
        assert_eq!(
            got,
            vec![
                (PLUGIN_CONN, 30),
                (PLUGIN_CONN, 4096),
                (PLUGIN_CONN, 10_010 - 4096),
                (RUNTIME_CONN, 4096)
            ]
        );
    }

    #[tokio::test]
    async fn incoming_frames_are_joined_per_connection() {
        let (a, mut raw) = tokio::io::duplex(1 << 20);
        let mut mux = Mux::new(a);
        for (id, body) in [
            (RUNTIME_CONN, b"hel".as_slice()),
            (PLUGIN_CONN, b"xy"),
            (7, b"dropped"),
            (RUNTIME_CONN, b"lo"),
        ] {
            raw.write_all(&id.to_be_bytes()).await.unwrap();
            raw.write_all(&u32::try_from(body.len()).unwrap().to_be_bytes())
                .await
                .unwrap();
            raw.write_all(body).await.unwrap();
        }
        let mut b = [0u8; 5];
        mux.runtime.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hello");
        let mut b = [0u8; 2];
        mux.plugin.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"xy");
    }

    #[tokio::test]
    async fn oversized_or_reserved_frames_close_the_trunk() {
        for hdr in [
            [0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff],
            [0, 0, 0, 0, 0, 0, 0, 1],
        ] {
            let (a, mut raw) = tokio::io::duplex(1 << 20);
            let mux = Mux::new(a);
            raw.write_all(&hdr).await.unwrap();
            let mut closed = mux.closed.clone();
            closed.wait_for(|c| *c).await.unwrap();
            let (_, _, trunk) = mux.into_parts();
            assert!(
                trunk.reason().unwrap().contains("frame"),
                "{:?}",
                trunk.reason()
            );
        }
    }

    #[tokio::test]
    async fn peer_close_ends_both_connections() {
        let (a, raw) = tokio::io::duplex(1 << 20);
        let mut mux = Mux::new(a);
        drop(raw);
        let mut b = [0u8; 1];
        assert_eq!(mux.plugin.read(&mut b).await.unwrap_or(0), 0);
        let mut closed = mux.closed.clone();
        closed.wait_for(|c| *c).await.unwrap();
    }
}
