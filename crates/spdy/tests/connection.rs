//! Connection behaviour over in-memory pipes and TCP: streams, FIN, RST, PING, GOAWAY,
//! protocol errors, peer drop, and the HTTP/1.1 upgrade.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use skiff_spdy::frame::{Decoder, Encoder, FLAG_FIN, Frame, goaway, rst};
use skiff_spdy::{Connection, Headers, Stream, UpgradeError, dial, negotiate};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

async fn recv_all(reader: &mut skiff_spdy::StreamReader) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = timeout(T, reader.recv()).await.expect("recv timed out") {
        assert!(!chunk.is_empty());
        out.extend_from_slice(&chunk);
    }
    out
}

fn pair() -> (Connection, Connection, mpsc::Receiver<Stream>) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let client = Connection::client(a);
    let (server, accept) = Connection::server(b);
    (client, server, accept)
}

#[tokio::test]
async fn three_streams_exchange_data_both_ways() {
    let (client, server, mut accept) = pair();
    // Server: echo every stream's data back, uppercased, then FIN.
    let echo = tokio::spawn(async move {
        let mut n = 0;
        while let Some(stream) = accept.recv().await {
            n += 1;
            let kind = stream.header("StreamType").unwrap().to_owned();
            assert_eq!(stream.id() % 2, 1);
            let (mut r, w) = stream.split();
            tokio::spawn(async move {
                let data = recv_all(&mut r).await;
                w.send(format!("{kind}:").as_bytes()).await.unwrap();
                w.send(&data.to_ascii_uppercase()).await.unwrap();
                w.finish().await.unwrap();
                w.finish().await.unwrap(); // only the first sends FIN
                assert!(w.send(b"late").await.is_err());
            });
        }
        n
    });

    let big: Vec<u8> = (0..200_000u32)
        .map(|i| b'a' + u8::try_from(i % 26).unwrap())
        .collect();
    let mut tasks = Vec::new();
    for (i, kind) in ["stdin", "stdout", "error"].into_iter().enumerate() {
        let stream = client
            .open(h(&[("streamType", kind), ("requestID", "7")]))
            .await
            .unwrap();
        assert_eq!(stream.id(), 1 + 2 * u32::try_from(i).unwrap());
        assert_eq!(stream.header("requestid"), Some("7"));
        let payload = if i == 0 {
            big.clone()
        } else {
            kind.as_bytes().to_vec()
        };
        tasks.push(tokio::spawn(async move {
            let (mut r, w) = stream.split();
            w.send(&payload).await.unwrap();
            w.finish().await.unwrap();
            let got = recv_all(&mut r).await;
            let mut want = format!("{kind}:").into_bytes();
            want.extend(payload.to_ascii_uppercase());
            assert_eq!(got, want);
        }));
    }
    for t in tasks {
        timeout(T, t).await.unwrap().unwrap();
    }
    client.close().await;
    timeout(T, server.closed()).await.unwrap();
    assert_eq!(timeout(T, echo).await.unwrap().unwrap(), 3);
    assert!(client.open(Vec::new()).await.is_err());
}

#[tokio::test]
async fn reset_ends_both_readers_and_fails_writes() {
    let (client, _server, mut accept) = pair();
    let stream = client.open(Vec::new()).await.unwrap();
    let accepted = timeout(T, accept.recv()).await.unwrap().unwrap();
    let (mut cr, cw) = stream.split();
    let (mut sr, sw) = accepted.split();
    sw.send(b"before").await.unwrap();
    assert_eq!(
        timeout(T, cr.recv()).await.unwrap().unwrap(),
        Bytes::from_static(b"before")
    );
    cw.reset().await;
    assert!(timeout(T, cr.recv()).await.unwrap().is_none());
    assert!(timeout(T, sr.recv()).await.unwrap().is_none());
    // The peer learns of the reset asynchronously.
    timeout(T, async {
        while sw.send(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert!(cw.send(b"x").await.is_err());
    // Other streams keep working.
    let s2 = client.open(Vec::new()).await.unwrap();
    let a2 = timeout(T, accept.recv()).await.unwrap().unwrap();
    s2.split().1.send(b"ok").await.unwrap();
    assert_eq!(
        timeout(T, a2.split().0.recv()).await.unwrap().unwrap(),
        Bytes::from_static(b"ok")
    );
}

#[tokio::test]
async fn peer_drop_ends_every_reader() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let client = Connection::client(a);
    let (server, mut accept) = Connection::server(b);
    let mut readers = Vec::new();
    for _ in 0..3 {
        let s = client.open(Vec::new()).await.unwrap();
        readers.push(s.split().0);
        let _ = timeout(T, accept.recv()).await.unwrap().unwrap();
    }
    server.close().await;
    for r in &mut readers {
        assert!(timeout(T, r.recv()).await.unwrap().is_none());
    }
    timeout(T, client.closed()).await.unwrap();
    assert!(timeout(T, accept.recv()).await.unwrap().is_none());
}

/// The test's side of a raw connection: frames in and out through the public codec.
struct Raw {
    io: DuplexStream,
    enc: Encoder,
    dec: Decoder,
    buf: BytesMut,
}

impl Raw {
    fn new(io: DuplexStream) -> Self {
        Raw {
            io,
            enc: Encoder::new(),
            dec: Decoder::new(),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.enc.encode(&frame, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    /// The next frame, or None at EOF.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            if timeout(T, self.io.read_buf(&mut self.buf))
                .await
                .unwrap()
                .unwrap()
                == 0
            {
                return None;
            }
        }
    }
}

fn raw_server() -> (Raw, Connection, mpsc::Receiver<Stream>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, accept) = Connection::server(b);
    (Raw::new(a), server, accept)
}

fn raw_client() -> (Raw, Connection) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (Raw::new(b), Connection::client(a))
}

fn data(stream_id: u32, flags: u8, data: &'static [u8]) -> Frame {
    Frame::Data {
        stream_id,
        flags,
        data: Bytes::from_static(data),
    }
}

fn rst_frame(stream_id: u32, status: u32) -> Frame {
    Frame::RstStream { stream_id, status }
}

fn syn(stream_id: u32, flags: u8, headers: Headers) -> Frame {
    Frame::SynStream {
        stream_id,
        associated_id: 0,
        priority: 0,
        slot: 0,
        flags,
        headers,
    }
}

#[tokio::test]
async fn server_replies_pings_and_rejects_stray_data() {
    let (mut raw, _server, mut accept) = raw_server();
    raw.send(Frame::Settings {
        flags: 0,
        entries: Vec::new(),
    })
    .await;
    raw.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 1000,
    })
    .await;
    raw.send(Frame::Ping { id: 1 }).await;
    assert_eq!(raw.recv().await, Some(Frame::Ping { id: 1 }));
    // Even ids are the server's own pings: no echo.
    raw.send(Frame::Ping { id: 2 }).await;
    raw.send(syn(1, 0, h(&[("streamtype", "data"), ("port", "80")])))
        .await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: Vec::new()
        })
    );
    let stream = timeout(T, accept.recv()).await.unwrap().unwrap();
    assert_eq!(stream.header("PORT"), Some("80"));
    let (mut r, w) = stream.split();

    raw.send(data(1, 0, b"hi")).await;
    raw.send(data(1, FLAG_FIN, b"!")).await;
    assert_eq!(recv_all(&mut r).await, b"hi!");
    // Data after FIN, and for streams never opened: RST, not a connection error.
    raw.send(data(1, 0, b"late")).await;
    assert_eq!(
        raw.recv().await,
        Some(rst_frame(1, rst::STREAM_ALREADY_CLOSED))
    );
    raw.send(data(99, 0, b"?")).await;
    assert_eq!(raw.recv().await, Some(rst_frame(99, rst::INVALID_STREAM)));

    w.send(b"reply").await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(raw.recv().await, Some(data(1, 0, b"reply")));
    assert_eq!(
        raw.recv().await,
        Some(Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: Bytes::new()
        })
    );

    // Header compression context carries across blocks in both directions.
    for id in [3, 5, 7] {
        raw.send(syn(
            id,
            FLAG_FIN,
            h(&[("streamtype", "data"), ("port", "80")]),
        ))
        .await;
        assert_eq!(
            raw.recv().await,
            Some(Frame::SynReply {
                stream_id: id,
                flags: 0,
                headers: Vec::new()
            })
        );
        let s = timeout(T, accept.recv()).await.unwrap().unwrap();
        assert_eq!(s.id(), id);
        // SYN_STREAM with FIN: nothing to read.
        assert!(s.split().0.recv().await.is_none());
    }
}

#[tokio::test]
async fn garbage_sends_goaway_and_ends_the_connection() {
    let (mut raw, server, mut accept) = raw_server();
    raw.send(syn(1, 0, Vec::new())).await;
    assert!(matches!(
        raw.recv().await,
        Some(Frame::SynReply { stream_id: 1, .. })
    ));
    let (mut r, w) = timeout(T, accept.recv()).await.unwrap().unwrap().split();
    // Version 2 control frame.
    raw.io
        .write_all(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    assert_eq!(
        raw.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: 1,
            status: goaway::PROTOCOL_ERROR
        })
    );
    assert_eq!(raw.recv().await, None);
    assert!(timeout(T, r.recv()).await.unwrap().is_none());
    timeout(T, server.closed()).await.unwrap();
    assert!(w.send(b"x").await.is_err());
    assert!(timeout(T, accept.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn goaway_stops_new_streams() {
    let (mut raw, client) = raw_client();
    let opener = {
        let client = client.clone();
        tokio::spawn(async move { client.open(Vec::new()).await })
    };
    assert!(matches!(
        raw.recv().await,
        Some(Frame::SynStream { stream_id: 1, .. })
    ));
    raw.send(Frame::SynReply {
        stream_id: 1,
        flags: 0,
        headers: Vec::new(),
    })
    .await;
    let stream = opener.await.unwrap().unwrap();
    raw.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: goaway::OK,
    })
    .await;
    // The existing stream still works.
    raw.send(data(1, 0, b"x")).await;
    let (mut r, _w) = stream.split();
    assert_eq!(r.recv().await.unwrap(), Bytes::from_static(b"x"));
    let err = client.open(Vec::new()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // Client refuses server-initiated streams; replies to even pings.
    raw.send(syn(2, 0, Vec::new())).await;
    assert_eq!(raw.recv().await, Some(rst_frame(2, rst::REFUSED_STREAM)));
    raw.send(Frame::Ping { id: 4 }).await;
    assert_eq!(raw.recv().await, Some(Frame::Ping { id: 4 }));
    client.close().await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: 2,
            status: goaway::OK
        })
    );
    assert_eq!(raw.recv().await, None);
}

#[tokio::test]
async fn open_fails_on_fin_or_rst_reply() {
    let (mut raw, client) = raw_client();
    let c = client.clone();
    let first = tokio::spawn(async move { c.open(Vec::new()).await });
    assert!(matches!(
        raw.recv().await,
        Some(Frame::SynStream { stream_id: 1, .. })
    ));
    raw.send(Frame::SynReply {
        stream_id: 1,
        flags: FLAG_FIN,
        headers: Vec::new(),
    })
    .await;
    assert!(first.await.unwrap().is_err());
    assert_eq!(raw.recv().await, Some(rst_frame(1, rst::CANCEL)));
    let c = client.clone();
    let second = tokio::spawn(async move { c.open(Vec::new()).await });
    assert!(matches!(
        raw.recv().await,
        Some(Frame::SynStream { stream_id: 3, .. })
    ));
    raw.send(rst_frame(3, rst::REFUSED_STREAM)).await;
    assert!(second.await.unwrap().is_err());
}

#[tokio::test(start_paused = true)]
async fn open_times_out_without_reply() {
    let (a, _b) = tokio::io::duplex(64 * 1024);
    let client = Connection::client(a);
    let err = client.open(Vec::new()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
}

/// A minimal upgrade server as the streaming server would do it (minus hyper): read the head,
/// negotiate, answer 101, and send the first SPDY frame in the same write.
async fn upgrade_server(listener: TcpListener, supported: &'static [&'static str], refuse: bool) {
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::new();
    let (offered, path) = loop {
        tcp.read_buf(&mut buf).await.unwrap();
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(_) = req.parse(&buf).unwrap() {
            assert_eq!(req.method, Some("POST"));
            let all: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8(h.value.to_vec()).unwrap(),
                    )
                })
                .collect();
            let get = |n: &str| {
                all.iter()
                    .filter(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(get("upgrade"), ["SPDY/3.1"]);
            assert_eq!(get("connection"), ["Upgrade"]);
            assert_eq!(get("content-length"), ["0"]);
            let offered = get("x-stream-protocol-version");
            break (offered, req.path.unwrap().to_owned());
        }
    };
    assert_eq!(path, "/exec/tok?command=sh");
    if refuse {
        let body = "container not found";
        let resp = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(resp.as_bytes()).await.unwrap();
        return;
    }
    let offered: Vec<&str> = offered.iter().map(String::as_str).collect();
    let chosen = negotiate(&offered, supported).unwrap().unwrap();
    let mut out = BytesMut::from(
        format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {chosen}\r\n\r\n")
            .as_bytes(),
    );
    // A PING glued to the head: the client must see it (prefix buffer) and echo it.
    Encoder::new()
        .encode(&Frame::Ping { id: 2 }, &mut out)
        .unwrap();
    tcp.write_all(&out).await.unwrap();
    let mut dec = Decoder::new();
    let mut buf = BytesMut::new();
    let frame = loop {
        if let Some(f) = dec.decode(&mut buf).unwrap() {
            break f;
        }
        assert_ne!(tcp.read_buf(&mut buf).await.unwrap(), 0);
    };
    assert_eq!(frame, Frame::Ping { id: 2 });
    // Then serve SPDY on the rest of the socket.
    let rest = buf.freeze();
    let (conn, mut accept) = Connection::server(skiff_spdy::PrefixedIo::new(rest, tcp));
    while let Some(s) = accept.recv().await {
        let (mut r, w) = s.split();
        let data = recv_all(&mut r).await;
        w.send(&data).await.unwrap();
        w.finish().await.unwrap();
    }
    conn.closed().await;
}

#[tokio::test]
async fn dial_upgrades_and_negotiates() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/exec/tok?command=sh",
        listener.local_addr().unwrap()
    );
    let server = tokio::spawn(upgrade_server(
        listener,
        &["v4.channel.k8s.io", "v3.channel.k8s.io"],
        false,
    ));
    let (conn, proto) = timeout(
        T,
        dial(
            &url,
            &[
                "v5.channel.k8s.io",
                "v3.channel.k8s.io",
                "v4.channel.k8s.io",
            ],
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(proto.as_deref(), Some("v3.channel.k8s.io"));
    let (mut r, w) = conn
        .open(h(&[("streamtype", "stdin")]))
        .await
        .unwrap()
        .split();
    w.send(b"echo me").await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(recv_all(&mut r).await, b"echo me");
    conn.close().await;
    timeout(T, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn dial_reports_refusals_with_status_and_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/exec/tok?command=sh",
        listener.local_addr().unwrap()
    );
    let server = tokio::spawn(upgrade_server(listener, &[], true));
    let err = match timeout(T, dial(&url, &["v4.channel.k8s.io"]))
        .await
        .unwrap()
    {
        Err(e) => e,
        Ok(_) => panic!("upgrade should fail"),
    };
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<UpgradeError>())
        .unwrap();
    match inner {
        UpgradeError::Status { status, body, .. } => {
            assert_eq!(*status, 404);
            assert_eq!(body, "container not found");
        }
        other => panic!("unexpected {other:?}"),
    }
    server.await.unwrap();
    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    assert!(dial(&format!("http://{addr}/"), &[]).await.is_err());
}

#[tokio::test]
async fn a_peer_that_floods_pings_and_never_reads_is_disconnected() {
    let (mut raw, server, _accept) = raw_server();
    // Every PING asks for an answer; the peer never reads one. The server's writer
    // blocks on the full pipe, answers pile up, and past the limit the connection ends.
    let flood = async {
        for id in 0..200_000u32 {
            raw.send(Frame::Ping { id: id * 2 + 1 }).await;
        }
    };
    tokio::select! {
        () = flood => panic!("200,000 unanswered PINGs were all accepted"),
        () = server.closed() => {}
    }
}
