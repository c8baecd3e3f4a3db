//! Multiplexed SPDY/3.1 connections over a tokio byte stream (model: see the crate docs).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot, watch};

use crate::Headers;
use crate::frame::{Decoder, Encoder, FLAG_FIN, Frame, FrameError, goaway, rst};

/// How long [`Connection::open`] waits for the peer's SYN_REPLY.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest data frame this side sends.
const MAX_CHUNK: usize = 32 * 1024;
/// Data frames queued per stream before the reader task waits.
const STREAM_QUEUE: usize = 16;
/// Application frames queued before senders wait.
const WRITE_QUEUE: usize = 64;
/// Accepted streams queued before the reader task waits.
const ACCEPT_QUEUE: usize = 16;
/// How long a closing connection keeps trying to write what is queued.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Control frames (PING answers, RST_STREAMs) that may wait for a peer that does not read.
const MAX_PENDING_CONTROL: usize = 1024;

enum WriterMsg {
    Frame(Frame),
    /// Flush, shut the write side down, then acknowledge.
    Close(oneshot::Sender<()>),
}

/// Why an `open` got no usable reply.
enum OpenFail {
    Fin,
    Reset(u32),
}

struct StreamState {
    /// Sender into the stream's [`StreamReader`]; `None` once the peer sent FIN (or on reset).
    data_tx: Option<mpsc::Sender<Bytes>>,
    /// This side sent FIN.
    local_fin: bool,
    /// Either side reset the stream: its frames are ignored and writes fail.
    reset: bool,
    /// Pending [`Connection::open`] waiting for SYN_REPLY.
    reply: Option<oneshot::Sender<Result<(), OpenFail>>>,
}

struct State {
    streams: HashMap<u32, StreamState>,
    /// Next id this side opens (odd for clients, even for servers).
    next_id: u32,
    /// Highest id the peer opened.
    last_remote_id: u32,
    goaway_received: bool,
    goaway_sent: bool,
    ended: bool,
}

struct Inner {
    server: bool,
    data_tx: mpsc::Sender<WriterMsg>,
    ctrl_tx: mpsc::UnboundedSender<Frame>,
    /// Control frames queued and not yet taken by the writer.
    ctrl_pending: std::sync::atomic::AtomicUsize,
    state: Mutex<State>,
    ended: watch::Sender<bool>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stream ids this side opens are odd on clients, even on servers.
    fn is_local_id(&self, id: u32) -> bool {
        id.is_multiple_of(2) == self.server
    }

    /// Ends the connection: every stream reader sees the end, pending opens fail, both tasks
    /// stop (the writer after draining what is queued, bounded by [`DRAIN_TIMEOUT`]).
    fn end(&self) {
        let streams = {
            let mut st = self.state();
            if st.ended {
                return;
            }
            st.ended = true;
            std::mem::take(&mut st.streams)
        };
        drop(streams);
        self.ended.send_replace(true);
    }

    fn control(&self, frame: Frame) {
        use std::sync::atomic::Ordering;
        // A peer that keeps asking for answers (PINGs, frames for unknown streams) but
        // never reads them would grow this queue without bound: past the limit the
        // connection ends.
        if self.ctrl_pending.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_CONTROL {
            tracing::debug!("SPDY peer does not read the control frames it causes; ending");
            self.end();
            return;
        }
        // Fails only once the writer is gone, when nothing can be sent anyway.
        let _ = self.ctrl_tx.send(frame);
    }

    /// The writer took a control frame off the queue.
    fn control_taken(&self) {
        self.ctrl_pending
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn send(&self, frame: Frame) -> io::Result<()> {
        self.data_tx
            .send(WriterMsg::Frame(frame))
            .await
            .map_err(|_| connection_closed())
    }

    async fn wait_ended(&self) {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|ended| *ended).await;
    }
}

fn connection_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "SPDY connection closed")
}

/// A SPDY/3.1 connection. Cheap to clone; all clones drive the same connection. Dropping the
/// handles does not close it: call [`Connection::close`], or it ends when the peer closes.
/// See the crate docs for the task model, backpressure and what is not implemented.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

/// One bidirectional stream: its SYN_STREAM headers and both directions. Dropping it sends
/// nothing to the peer: end it with [`StreamWriter::finish`] or [`StreamWriter::reset`] (its
/// bookkeeping is freed once both sides sent FIN, or when the connection ends).
pub struct Stream {
    id: u32,
    headers: Headers,
    reader: StreamReader,
    writer: StreamWriter,
}

/// The receiving half of a [`Stream`].
pub struct StreamReader {
    rx: mpsc::Receiver<Bytes>,
}

/// The sending half of a [`Stream`]; clones write to the same stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    inner: Arc<Inner>,
}

impl Connection {
    /// Server side over `io`: every SYN_STREAM from the peer is answered with an empty
    /// SYN_REPLY at once and handed out through the returned receiver, which ends with the
    /// connection. Not accepting streams stalls the connection (see the module docs); dropping
    /// the receiver refuses further streams. Must be called within a tokio runtime.
    pub fn server<IO>(io: IO) -> (Connection, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_QUEUE);
        (Self::start(io, true, Some(accept_tx)), accept_rx)
    }

    /// Client side over `io` (stream ids are odd). Streams the peer opens are refused.
    /// Must be called within a tokio runtime.
    pub fn client<IO>(io: IO) -> Connection
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, false, None)
    }

    fn start<IO>(io: IO, server: bool, accept: Option<mpsc::Sender<Stream>>) -> Connection
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (data_tx, data_rx) = mpsc::channel(WRITE_QUEUE);
        let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            server,
            data_tx,
            ctrl_tx,
            ctrl_pending: std::sync::atomic::AtomicUsize::new(0),
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_id: if server { 2 } else { 1 },
                last_remote_id: 0,
                goaway_received: false,
                goaway_sent: false,
                ended: false,
            }),
            ended: watch::channel(false).0,
        });
        let (rd, wr) = tokio::io::split(io);
        tokio::spawn(reader_task(inner.clone(), rd, accept));
        tokio::spawn(writer_task(inner.clone(), wr, ctrl_rx, data_rx));
        Connection { inner }
    }

    /// Opens a stream with `headers` and waits for the peer's SYN_REPLY. Fails if the
    /// connection has ended or the peer sent GOAWAY, if no reply comes within 30 s, or if the
    /// peer answers with FIN or RST_STREAM.
    pub async fn open(&self, headers: Headers) -> io::Result<Stream> {
        let (id, data_rx, reply_rx) = {
            let mut st = self.inner.state();
            if st.ended {
                return Err(connection_closed());
            }
            if st.goaway_received || st.goaway_sent {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "SPDY connection is going away: no new streams",
                ));
            }
            let id = st.next_id;
            if id > 0x7fff_ffff {
                return Err(io::Error::other("SPDY stream ids exhausted"));
            }
            st.next_id += 2;
            let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
            let (reply_tx, reply_rx) = oneshot::channel();
            st.streams.insert(
                id,
                StreamState {
                    data_tx: Some(data_tx),
                    local_fin: false,
                    reset: false,
                    reply: Some(reply_tx),
                },
            );
            (id, data_rx, reply_rx)
        };
        let syn = Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: headers.clone(),
        };
        self.inner.send(syn).await?;
        let writer = StreamWriter {
            id,
            inner: self.inner.clone(),
        };
        match tokio::time::timeout(OPEN_TIMEOUT, reply_rx).await {
            Ok(Ok(Ok(()))) => Ok(Stream {
                id,
                headers,
                reader: StreamReader { rx: data_rx },
                writer,
            }),
            Ok(Ok(Err(OpenFail::Fin))) => {
                writer.reset().await;
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("peer answered SPDY stream {id} with FIN"),
                ))
            }
            Ok(Ok(Err(OpenFail::Reset(status)))) => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("peer reset SPDY stream {id} (status {status})"),
            )),
            Ok(Err(_)) => Err(connection_closed()),
            Err(_) => {
                writer.reset().await;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no SYN_REPLY for SPDY stream {id} within {OPEN_TIMEOUT:?}"),
                ))
            }
        }
    }

    /// Sends GOAWAY, flushes everything queued before it, shuts the write side down and ends
    /// the connection (every [`StreamReader`] then returns `None`). Gives up on a peer that
    /// does not read within 5 s. Idempotent.
    pub async fn close(&self) {
        let last = {
            let mut st = self.inner.state();
            if st.ended || st.goaway_sent {
                None
            } else {
                st.goaway_sent = true;
                Some(st.last_remote_id)
            }
        };
        let Some(last) = last else {
            // Another close() is under way (or the connection already ended).
            self.inner.wait_ended().await;
            return;
        };
        let (ack_tx, ack_rx) = oneshot::channel();
        let goaway = Frame::GoAway {
            last_good_stream_id: last,
            status: goaway::OK,
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            if self.inner.send(goaway).await.is_ok()
                && self
                    .inner
                    .data_tx
                    .send(WriterMsg::Close(ack_tx))
                    .await
                    .is_ok()
            {
                let _ = ack_rx.await;
            }
        })
        .await;
        self.inner.end();
    }

    /// Resolves once the connection has ended: the peer closed it, an I/O or protocol error
    /// occurred, or [`Connection::close`] was called.
    pub async fn closed(&self) {
        self.inner.wait_ended().await;
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state();
        f.debug_struct("Connection")
            .field("server", &self.inner.server)
            .field("streams", &st.streams.len())
            .field("ended", &st.ended)
            .finish()
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("id", &self.id)
            .finish()
    }
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The SYN_STREAM headers (received for accepted streams, sent for opened ones).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Separates the two directions.
    pub fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

impl StreamReader {
    /// The next chunk of data (one data frame's payload; never empty), or `None` once the
    /// peer sent FIN, either side reset the stream, or the connection ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn check_writable(&self) -> io::Result<()> {
        let st = self.inner.state();
        if st.ended {
            return Err(connection_closed());
        }
        match st.streams.get(&self.id) {
            None => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("SPDY stream {} is closed", self.id),
            )),
            Some(s) if s.reset => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("SPDY stream {} was reset", self.id),
            )),
            Some(s) if s.local_fin => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("SPDY stream {} already finished", self.id),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Sends `data` as data frames of at most 32 KiB. Waits while the connection's write queue
    /// is full. Fails after FIN, after a reset of the stream, or once the connection ended.
    pub async fn send(&self, data: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        for chunk in data.chunks(MAX_CHUNK) {
            let frame = Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: Bytes::copy_from_slice(chunk),
            };
            self.inner.send(frame).await?;
        }
        Ok(())
    }

    /// Closes this side of the stream with an empty FIN data frame. Only the first call sends
    /// it; later calls succeed without sending anything.
    pub async fn finish(&self) -> io::Result<()> {
        {
            let mut st = self.inner.state();
            if st.ended {
                return Err(connection_closed());
            }
            match st.streams.get_mut(&self.id) {
                // Both sides already finished: the stream is gone.
                None => return Ok(()),
                Some(s) if s.reset => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("SPDY stream {} was reset", self.id),
                    ));
                }
                Some(s) if s.local_fin => return Ok(()),
                Some(s) => {
                    s.local_fin = true;
                    if s.data_tx.is_none() && s.reply.is_none() {
                        st.streams.remove(&self.id);
                    }
                }
            }
        }
        self.inner
            .send(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            })
            .await
    }

    /// Aborts the stream with RST_STREAM(CANCEL): the local reader ends too and later writes
    /// fail. Does nothing if the stream is already reset or closed in both directions.
    pub async fn reset(&self) {
        {
            let mut st = self.inner.state();
            // A reset stream is over in both directions: its state goes (late frames
            // for it are dropped as for any finished stream).
            match st.streams.get(&self.id) {
                Some(s) if !s.reset => {
                    st.streams.remove(&self.id);
                }
                _ => return,
            }
        }
        let _ = self
            .inner
            .send(Frame::RstStream {
                stream_id: self.id,
                status: rst::CANCEL,
            })
            .await;
    }
}

/// Why the reader stopped.
enum ReadEnd {
    Eof,
    Io(io::Error),
    Frame(FrameError),
    Violation(String),
}

async fn reader_task<R: AsyncRead + Unpin>(
    inner: Arc<Inner>,
    mut rd: R,
    accept: Option<mpsc::Sender<Stream>>,
) {
    let end = tokio::select! {
        end = read_loop(&inner, &mut rd, accept) => end,
        () = inner.wait_ended() => return,
    };
    match end {
        ReadEnd::Eof => tracing::debug!("SPDY peer closed the connection"),
        ReadEnd::Io(e) => tracing::debug!(error = %e, "SPDY connection read failed"),
        ReadEnd::Frame(e) => {
            tracing::warn!(error = %e, "malformed SPDY frame; sending GOAWAY(PROTOCOL_ERROR)");
            protocol_goaway(&inner);
        }
        ReadEnd::Violation(e) => {
            tracing::warn!(error = %e, "SPDY protocol violation; sending GOAWAY(PROTOCOL_ERROR)");
            protocol_goaway(&inner);
        }
    }
    inner.end();
}

fn protocol_goaway(inner: &Inner) {
    let last = inner.state().last_remote_id;
    inner.control(Frame::GoAway {
        last_good_stream_id: last,
        status: goaway::PROTOCOL_ERROR,
    });
}

async fn read_loop<R: AsyncRead + Unpin>(
    inner: &Arc<Inner>,
    rd: &mut R,
    mut accept: Option<mpsc::Sender<Stream>>,
) -> ReadEnd {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(end) = dispatch(inner, frame, &mut accept).await {
                        return end;
                    }
                }
                Ok(None) => break,
                Err(e) => return ReadEnd::Frame(e),
            }
        }
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return ReadEnd::Eof,
            Ok(_) => {}
            Err(e) => return ReadEnd::Io(e),
        }
    }
}

/// Handles one frame from the peer.
async fn dispatch(
    inner: &Arc<Inner>,
    frame: Frame,
    accept: &mut Option<mpsc::Sender<Stream>>,
) -> Result<(), ReadEnd> {
    match frame {
        Frame::Data {
            stream_id,
            flags,
            data,
        } => on_data(inner, stream_id, flags & FLAG_FIN != 0, data).await,
        Frame::Headers {
            stream_id, flags, ..
        } => {
            if flags & FLAG_FIN != 0 {
                on_data(inner, stream_id, true, Bytes::new()).await;
            }
        }
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            on_syn_stream(inner, stream_id, flags, headers, accept).await?;
        }
        Frame::SynReply {
            stream_id, flags, ..
        } => on_syn_reply(inner, stream_id, flags),
        Frame::RstStream { stream_id, status } => {
            let mut st = inner.state();
            if let Some(mut s) = st.streams.remove(&stream_id) {
                tracing::debug!(stream_id, status, "SPDY stream reset by peer");
                if let Some(reply) = s.reply.take() {
                    let _ = reply.send(Err(OpenFail::Reset(status)));
                }
            }
        }
        Frame::Ping { id } => {
            // Echo pings the peer started; ids of our own parity would be echoes of ours.
            if id.is_multiple_of(2) != inner.server {
                inner.control(Frame::Ping { id });
            }
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            tracing::debug!(last_good_stream_id, status, "SPDY peer sent GOAWAY");
            inner.state().goaway_received = true;
        }
        Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
    }
    Ok(())
}

async fn on_data(inner: &Inner, stream_id: u32, fin: bool, data: Bytes) {
    let target = {
        let mut st = inner.state();
        let known = if inner.is_local_id(stream_id) {
            stream_id < st.next_id
        } else {
            stream_id <= st.last_remote_id
        };
        match st.streams.get_mut(&stream_id) {
            // Frames in flight after a reset are dropped silently.
            Some(s) if s.reset => return,
            Some(s) => match s.data_tx.clone() {
                Some(tx) => {
                    if fin {
                        s.data_tx = None;
                        if s.local_fin && s.reply.is_none() {
                            st.streams.remove(&stream_id);
                        }
                    }
                    Ok(tx)
                }
                None => Err(rst::STREAM_ALREADY_CLOSED),
            },
            // A stream that ended (FIN both ways or reset): frames still in flight are
            // dropped without an answer.
            None if known => return,
            None => Err(rst::INVALID_STREAM),
        }
    };
    match target {
        Ok(tx) => {
            if !data.is_empty() {
                // A dropped StreamReader just discards its data.
                let _ = tx.send(data).await;
            }
        }
        Err(status) => {
            tracing::debug!(stream_id, status, "SPDY data for a stream that is not open");
            inner.control(Frame::RstStream { stream_id, status });
        }
    }
}

async fn on_syn_stream(
    inner: &Arc<Inner>,
    stream_id: u32,
    flags: u8,
    headers: Headers,
    accept: &mut Option<mpsc::Sender<Stream>>,
) -> Result<(), ReadEnd> {
    let data_rx = {
        let mut st = inner.state();
        if inner.is_local_id(stream_id) || stream_id <= st.last_remote_id {
            return Err(ReadEnd::Violation(format!(
                "SYN_STREAM with id {stream_id} (last peer stream {}, wrong parity or not increasing)",
                st.last_remote_id
            )));
        }
        st.last_remote_id = stream_id;
        if accept.is_none() || st.goaway_sent {
            drop(st);
            inner.control(Frame::RstStream {
                stream_id,
                status: rst::REFUSED_STREAM,
            });
            return Ok(());
        }
        let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
        // SYN_STREAM with FIN: the peer will send no data.
        let data_tx = (flags & FLAG_FIN == 0).then_some(data_tx);
        st.streams.insert(
            stream_id,
            StreamState {
                data_tx,
                local_fin: false,
                reset: false,
                reply: None,
            },
        );
        data_rx
    };
    inner.control(Frame::SynReply {
        stream_id,
        flags: 0,
        headers: Vec::new(),
    });
    let stream = Stream {
        id: stream_id,
        headers,
        reader: StreamReader { rx: data_rx },
        writer: StreamWriter {
            id: stream_id,
            inner: inner.clone(),
        },
    };
    if let Some(tx) = accept
        && tx.send(stream).await.is_err()
    {
        // Nobody accepts streams any more: refuse this one and all later ones.
        *accept = None;
        if let Some(s) = inner.state().streams.get_mut(&stream_id) {
            s.reset = true;
            s.data_tx = None;
        }
        inner.control(Frame::RstStream {
            stream_id,
            status: rst::REFUSED_STREAM,
        });
    }
    Ok(())
}

fn on_syn_reply(inner: &Inner, stream_id: u32, flags: u8) {
    let mut st = inner.state();
    let status = match st.streams.get_mut(&stream_id) {
        Some(s) if s.reset => return,
        Some(s) => match s.reply.take() {
            Some(reply) => {
                if flags & FLAG_FIN != 0 {
                    s.data_tx = None;
                    let _ = reply.send(Err(OpenFail::Fin));
                } else {
                    let _ = reply.send(Ok(()));
                }
                return;
            }
            None => rst::STREAM_IN_USE,
        },
        None => rst::INVALID_STREAM,
    };
    drop(st);
    inner.control(Frame::RstStream { stream_id, status });
}

async fn writer_task<W: AsyncWrite + Unpin>(
    inner: Arc<Inner>,
    wr: W,
    mut ctrl_rx: mpsc::UnboundedReceiver<Frame>,
    mut data_rx: mpsc::Receiver<WriterMsg>,
) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut encoder = Encoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let work = async {
        loop {
            let msg = tokio::select! {
                biased;
                Some(frame) = ctrl_rx.recv() => {
                    inner.control_taken();
                    WriterMsg::Frame(frame)
                }
                msg = data_rx.recv() => match msg {
                    Some(msg) => msg,
                    None => return Ok(()),
                },
                () = inner.wait_ended() => {
                    return drain(&mut encoder, &mut buf, &mut wr, &mut ctrl_rx, &mut data_rx).await;
                }
            };
            match msg {
                WriterMsg::Frame(frame) => {
                    write_frame(&mut encoder, &mut buf, &mut wr, &frame).await?
                }
                WriterMsg::Close(ack) => {
                    while let Ok(frame) = ctrl_rx.try_recv() {
                        write_frame(&mut encoder, &mut buf, &mut wr, &frame).await?;
                    }
                    wr.flush().await?;
                    wr.shutdown().await?;
                    let _ = ack.send(());
                    return Ok(());
                }
            }
            if ctrl_rx.is_empty() && data_rx.is_empty() {
                wr.flush().await?;
            }
        }
    };
    // Once the connection has ended, a peer that does not read gets DRAIN_TIMEOUT.
    let deadline = async {
        inner.wait_ended().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let result: io::Result<()> = tokio::select! {
        r = work => r,
        () = deadline => Err(io::Error::new(io::ErrorKind::TimedOut, "SPDY peer did not read the final frames")),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "SPDY connection write side ended");
    }
    inner.end();
}

async fn drain<W: AsyncWrite + Unpin>(
    encoder: &mut Encoder,
    buf: &mut BytesMut,
    wr: &mut W,
    ctrl_rx: &mut mpsc::UnboundedReceiver<Frame>,
    data_rx: &mut mpsc::Receiver<WriterMsg>,
) -> io::Result<()> {
    while let Ok(frame) = ctrl_rx.try_recv() {
        write_frame(encoder, buf, wr, &frame).await?;
    }
    let mut acks = Vec::new();
    while let Ok(msg) = data_rx.try_recv() {
        match msg {
            WriterMsg::Frame(frame) => write_frame(encoder, buf, wr, &frame).await?,
            WriterMsg::Close(ack) => acks.push(ack),
        }
    }
    wr.flush().await?;
    wr.shutdown().await?;
    for ack in acks {
        let _ = ack.send(());
    }
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(
    encoder: &mut Encoder,
    buf: &mut BytesMut,
    wr: &mut W,
    frame: &Frame,
) -> io::Result<()> {
    buf.clear();
    // An unencodable frame may have advanced the header compressor: the stream is unusable.
    encoder.encode(frame, buf).map_err(io::Error::other)?;
    wr.write_all(buf).await
}
