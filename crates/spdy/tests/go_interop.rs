//! Interoperability with Go's spdystream, the SPDY implementation of kubelet clients, crictl
//! and critest: `tests/go/interop/main.go` is built with the machine's `go` against the
//! spdystream sources in a GOPATH (Debian: `golang-go` + `golang-github-docker-spdystream-dev`,
//! which installs `/usr/share/gocode/src/github.com/moby/spdystream`; or set
//! `SKIFF_SPDYSTREAM_GOPATH`). Without them the tests print why and pass as skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use skiff_spdy::{Connection, PrefixedIo, dial, negotiate};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(120);

/// The built Go peer; removed when the test ends.
struct Peer(PathBuf);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Builds the Go peer for this test process; `None` (with a message) if Go or spdystream is
/// missing.
fn go_peer() -> Option<Peer> {
    let gopath = std::env::var_os("SKIFF_SPDYSTREAM_GOPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/gocode"));
    if !gopath
        .join("src/github.com/moby/spdystream/connection.go")
        .exists()
    {
        eprintln!(
            "SKIPPED: spdystream sources not found under {} (apt-get install golang-github-docker-spdystream-dev)",
            gopath.display()
        );
        return None;
    }
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spdy-go-interop");
    std::fs::create_dir_all(&out_dir).unwrap();
    let bin = out_dir.join(format!("interop-{}", std::process::id()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/interop/main.go");
    let status = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", &gopath)
        .env("GOFLAGS", "")
        .env("GOCACHE", out_dir.join("gocache"))
        .status();
    match status {
        Ok(s) if s.success() => Some(Peer(bin)),
        Ok(s) => panic!("building the Go interop peer failed: {s}"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: `go` not found (apt-get install golang-go)");
            None
        }
        Err(e) => panic!("running go: {e}"),
    }
}

/// Go spdystream client → skiff-spdy server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_against_rust_server() {
    let Some(peer) = go_peer() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/exec/tok?command=sh",
        listener.local_addr().unwrap()
    );
    let mut child = Command::new(&peer.0)
        .args(["client", &url])
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let server = async {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let offered = loop {
            assert_ne!(
                tcp.read_buf(&mut buf).await.unwrap(),
                0,
                "client hung up during the head"
            );
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(len) = req.parse(&buf).unwrap() {
                let offered: Vec<String> = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("x-stream-protocol-version"))
                    .map(|h| String::from_utf8(h.value.to_vec()).unwrap())
                    .collect();
                let _ = buf.split_to(len);
                break offered;
            }
        };
        let offered: Vec<&str> = offered.iter().map(String::as_str).collect();
        let chosen = negotiate(&offered, &["v4.channel.k8s.io", "v3.channel.k8s.io"])
            .unwrap()
            .unwrap();
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {chosen}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let (conn, mut accept) = Connection::server(PrefixedIo::new(buf.freeze(), tcp));
        let mut handlers = Vec::new();
        while let Some(stream) = accept.recv().await {
            let kind = stream.header("streamtype").unwrap_or("").to_owned();
            let id = stream.header("requestid").unwrap_or("").to_owned();
            handlers.push(tokio::spawn(async move {
                let (mut r, w) = stream.split();
                if kind == "reset-me" {
                    w.reset().await;
                    return;
                }
                let mut data = Vec::new();
                while let Some(chunk) = r.recv().await {
                    data.extend_from_slice(&chunk);
                }
                w.send(format!("{kind}/{id}:").as_bytes()).await.unwrap();
                w.send(&data.to_ascii_uppercase()).await.unwrap();
                w.finish().await.unwrap();
            }));
        }
        conn.closed().await;
        for h in handlers {
            h.await.unwrap();
        }
    };
    let (status, ()) = timeout(T, async { tokio::join!(child.wait(), server) })
        .await
        .expect("interop timed out");
    assert!(status.unwrap().success(), "Go client reported a mismatch");
}

/// skiff-spdy client (`dial`) → Go spdystream server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_against_go_server() {
    let Some(peer) = go_peer() else { return };
    let mut child = Command::new(&peer.0)
        .arg("server")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timeout(T, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("Go server printed nothing");
    let addr = line
        .strip_prefix("LISTEN ")
        .expect("LISTEN line")
        .to_owned();

    let (conn, proto) = timeout(
        T,
        dial(
            &format!("http://{addr}/portforward/x"),
            &["v4.channel.k8s.io", "v3.channel.k8s.io"],
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
    let mut tasks = Vec::new();
    for (i, kind) in ["stdin", "stdout", "error"].into_iter().enumerate() {
        let stream = conn
            .open(vec![
                ("streamType".into(), kind.into()),
                ("requestID".into(), (i + 1).to_string()),
            ])
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let (mut r, w) = stream.split();
            // 200 KB goes out as 32 KiB frames; read concurrently since Go echoes as it reads.
            let sent: Vec<u8> = (0..200_000 + i)
                .map(|j| u8::try_from(j % 251).unwrap())
                .collect();
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(chunk) = r.recv().await {
                    got.extend_from_slice(&chunk);
                }
                got
            });
            w.send(&sent).await.unwrap();
            w.finish().await.unwrap();
            assert_eq!(reader.await.unwrap(), sent);
        }));
    }
    for t in tasks {
        timeout(T, t).await.unwrap().unwrap();
    }
    conn.close().await;
    let status = timeout(T, child.wait()).await.unwrap().unwrap();
    let rest = lines.next_line().await.unwrap();
    assert!(status.success(), "Go server reported a mismatch");
    assert_eq!(rest.as_deref(), Some("server OK"));
}
