//! End-to-end: Exec, Attach and PortForward through skiffd's streaming server with
//! the project's SPDY client, against real containers. Needs root.
//!
//! skiffd's streaming server listens on 127.0.0.1 inside the test's network
//! namespace, so each test moves its (single) thread into that namespace first.

mod common;

use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::RegistryEnv;
use skiff::stream::client::{LocalIo, PortForwarder, RemoteExit, remote_command};
use skiff_cri::api;
use skiff_cri::client::CriClient;
use skiff_testkit::image::{Compression, ImageBuilder, busybox_layer};

const IMAGE: &str = "127.0.0.1:5000/test/busybox:stream";

/// An AsyncWrite that collects into a shared buffer.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<u8>>>);

impl Collect {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl tokio::io::AsyncWrite for Collect {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Input that arrives after `delay`, then ends.
fn delayed_input(
    data: &'static [u8],
    delay: Duration,
) -> Box<dyn tokio::io::AsyncRead + Send + Unpin> {
    let (mut tx, rx) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = tokio::io::AsyncWriteExt::write_all(&mut tx, data).await;
    });
    Box::new(rx)
}

/// Move this thread into the test namespace (where skiffd's streaming server is).
fn enter(env: &RegistryEnv) {
    let ns = std::fs::File::open(env.netns.path()).expect("open test netns");
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns into the test netns");
}

async fn setup(test: &str) -> Option<(RegistryEnv, CriClient)> {
    setup_with(test, "").await
}

/// [`setup`] with extra skiffd config.
async fn setup_with(test: &str, extra: &str) -> Option<(RegistryEnv, CriClient)> {
    let env = common::start_with_registry(test, extra, &[])?;
    let image = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .cmd(["sh"])
        .build();
    env.push("test/busybox", "stream", &image);
    enter(&env);
    let mut c = env.skiffd.client().await;
    common::pull(&mut c, IMAGE).await;
    Some((env, c))
}

/// A pod with one running container; (pod, container).
async fn pod_with(
    c: &mut CriClient,
    name: &str,
    logs: &std::path::Path,
    cfg: impl FnOnce(&mut api::ContainerConfig),
) -> (String, String) {
    let pod_cfg = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("{name}-uid"),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(api::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod = c
        .runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let mut ctr = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "main.log".into(),
        linux: Some(api::LinuxContainerConfig::default()),
        ..Default::default()
    };
    cfg(&mut ctr);
    let id = c
        .runtime
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ctr),
            sandbox_config: Some(pod_cfg),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    c.runtime
        .start_container(api::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    (pod, id)
}

async fn exec_url(c: &mut CriClient, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    c.runtime
        .exec(api::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        })
        .await
        .expect("Exec")
        .into_inner()
        .url
}

async fn attach_url(c: &mut CriClient, id: &str, stdin: bool) -> String {
    c.runtime
        .attach(api::AttachRequest {
            container_id: id.into(),
            stdin,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url
}

async fn exec_sync(c: &mut CriClient, id: &str, cmd: &[&str]) -> String {
    let r = c
        .runtime
        .exec_sync(api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    String::from_utf8_lossy(&r.stdout).into_owned()
}

#[tokio::test(flavor = "current_thread")]
async fn exec_streams_output_input_exit_codes_and_tty() {
    let Some((env, mut c)) = setup("exec_streams_output_input_exit_codes_and_tty").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let (_pod, id) = pod_with(&mut c, "exec", logs.path(), |_| {}).await;

    // stdout, stderr and a non-zero exit code.
    let url = exec_url(
        &mut c,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        false,
        false,
    )
    .await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (out, err) = (Collect::default(), Collect::default());
    let exit = remote_command(
        &url,
        LocalIo {
            stdout: Some(Box::new(out.clone())),
            stderr: Some(Box::new(err.clone())),
            ..Default::default()
        },
    )
    .await
    .expect("exec session");
    assert_eq!(exit, RemoteExit::Code(3));
    assert_eq!(out.text(), "out\n");
    assert_eq!(err.text(), "err\n");

    // The URL was single-use.
    let again = remote_command(
        &url,
        LocalIo {
            stdout: Some(Box::new(Collect::default())),
            ..Default::default()
        },
    )
    .await;
    let e = again.expect_err("a used token is refused");
    assert!(e.to_string().contains("404"), "{e}");

    // stdin reaches the process; its end closes the pipe (cat exits 0).
    let url = exec_url(&mut c, &id, &["cat"], true, false).await;
    let out = Collect::default();
    let exit = remote_command(
        &url,
        LocalIo {
            stdin: Some(Box::new(std::io::Cursor::new(
                b"hello through stdin\n".to_vec(),
            ))),
            stdout: Some(Box::new(out.clone())),
            stderr: Some(Box::new(Collect::default())),
            ..Default::default()
        },
    )
    .await
    .expect("exec with stdin");
    assert_eq!(exit, RemoteExit::Code(0));
    assert_eq!(out.text(), "hello through stdin\n");

    // A terminal: the size set over the resize stream is what the process sees.
    let url = exec_url(
        &mut c,
        &id,
        &["sh", "-c", "read x; busybox stty size; echo got $x; tty"],
        true,
        true,
    )
    .await;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send((123, 45)).await.unwrap();
    let out = Collect::default();
    let exit = remote_command(
        &url,
        LocalIo {
            stdin: Some(delayed_input(b"typed\n", Duration::from_millis(300))),
            stdout: Some(Box::new(out.clone())),
            tty: true,
            resize: Some(rx),
            ..Default::default()
        },
    )
    .await
    .expect("tty exec");
    drop(tx);
    let text = out.text();
    assert_eq!(exit, RemoteExit::Code(0), "{text}");
    assert!(text.contains("45 123"), "{text:?}");
    assert!(text.contains("got typed\r\n"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "{text:?}");

    // A missing binary is a clear failure; the container is unaffected.
    let url = exec_url(&mut c, &id, &["/no/such/binary"], false, false).await;
    let exit = remote_command(
        &url,
        LocalIo {
            stdout: Some(Box::new(Collect::default())),
            stderr: Some(Box::new(Collect::default())),
            ..Default::default()
        },
    )
    .await
    .expect("session");
    assert!(
        matches!(&exit, RemoteExit::Failed(m) if m.contains("/no/such/binary")),
        "{exit:?}"
    );
    assert_eq!(exec_sync(&mut c, &id, &["echo", "alive"]).await, "alive\n");
    drop(env);
}

#[tokio::test(flavor = "current_thread")]
async fn bad_streaming_requests_are_refused() {
    let Some((env, mut c)) = setup("bad_streaming_requests_are_refused").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let (pod, id) = pod_with(&mut c, "bad", logs.path(), |_| {}).await;
    let req = |stdin, stdout, stderr, tty| api::ExecRequest {
        container_id: id.clone(),
        cmd: vec!["true".into()],
        tty,
        stdin,
        stdout,
        stderr,
    };
    let e = c
        .runtime
        .exec(req(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = c
        .runtime
        .exec(req(false, true, true, true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut empty = req(false, true, false, false);
    empty.cmd.clear();
    let e = c.runtime.exec(empty).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut unknown = req(false, true, false, false);
    unknown.container_id = "f".repeat(64);
    let e = c.runtime.exec(unknown).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = c
        .runtime
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![70000],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // An unknown token.
    let url = exec_url(&mut c, &id, &["true"], false, false).await;
    let base = url.rsplit_once('/').unwrap().0;
    let e = remote_command(&format!("{base}/not-a-token"), LocalIo::default())
        .await
        .expect_err("unknown token");
    assert!(e.to_string().contains("404"), "{e}");

    // A WebSocket attempt with a protocol skiff does not speak is refused with 400 and
    // leaves the URL usable (clients fall back to SPDY with the same URL).
    let url = exec_url(&mut c, &id, &["echo", "fallback"], false, false).await;
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_once('/').unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: v9.channel.k8s.io\r\n\r\n"
    )
    .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = [0u8; 12];
    tcp.read_exact(&mut answer).unwrap();
    assert_eq!(
        &answer,
        b"HTTP/1.1 400",
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    drop(tcp);
    let out = Collect::default();
    let exit = remote_command(
        &url,
        LocalIo {
            stdout: Some(Box::new(out.clone())),
            stderr: Some(Box::new(Collect::default())),
            ..Default::default()
        },
    )
    .await
    .expect("the SPDY fallback gets the same URL");
    assert_eq!(
        (exit, out.text()),
        (RemoteExit::Code(0), "fallback\n".to_string())
    );

    // Garbage after the upgrade: the connection is dropped, skiffd goes on serving.
    let url = exec_url(&mut c, &id, &["sleep", "100"], false, false).await;
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_once('/').unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "POST /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{head:?}"
    );
    tcp.write_all(&[0x80, 0x07, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff, 1, 2, 3])
        .unwrap();
    tcp.write_all(&[0xde; 4096]).unwrap();
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink);
    let v = c
        .runtime
        .version(api::VersionRequest::default())
        .await
        .expect("skiffd still serves");
    assert_eq!(v.into_inner().runtime_name, "skiff");
    assert_eq!(exec_sync(&mut c, &id, &["echo", "ok"]).await, "ok\n");
    drop(env);
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_that_disconnects_kills_its_exec() {
    let Some((env, mut c)) = setup("a_client_that_disconnects_kills_its_exec").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let (_pod, id) = pod_with(&mut c, "disc", logs.path(), |_| {}).await;
    let url = exec_url(&mut c, &id, &["sleep", "4242"], false, false).await;
    // The client runs on its own thread and runtime (in this thread's namespace);
    // dropping that runtime closes its socket the way a killed client would.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move {
            remote_command(
                &url,
                LocalIo {
                    stdout: Some(Box::new(Collect::default())),
                    stderr: Some(Box::new(Collect::default())),
                    ..Default::default()
                },
            )
            .await
        });
        rt.block_on(async {
            while stop_rx.try_recv().is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        rt.shutdown_background();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exec_sync(&mut c, &id, &["ps"]).await.contains("sleep 4242") {
        assert!(Instant::now() < deadline, "the exec never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(()).unwrap();
    client.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while exec_sync(&mut c, &id, &["ps"]).await.contains("sleep 4242") {
        assert!(Instant::now() < deadline, "the exec outlived its client");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(exec_sync(&mut c, &id, &["echo", "ok"]).await, "ok\n");
    drop(env);
}

#[tokio::test(flavor = "current_thread")]
async fn attach_with_stdin_once_and_logs_kept() {
    let Some((env, mut c)) = setup("attach_with_stdin_once_and_logs_kept").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let (_pod, id) = pod_with(&mut c, "attach", logs.path(), |ctr| {
        ctr.command = vec![
            "sh".into(),
            "-c".into(),
            "read line; echo got:$line; cat; echo done".into(),
        ];
        ctr.stdin = true;
        ctr.stdin_once = true;
    })
    .await;
    let url = attach_url(&mut c, &id, true).await;
    assert!(url.contains("/attach/"), "{url}");
    let out = Collect::default();
    let exit = tokio::time::timeout(
        Duration::from_secs(20),
        remote_command(
            &url,
            LocalIo {
                stdin: Some(delayed_input(b"hi\nmore\n", Duration::from_millis(300))),
                stdout: Some(Box::new(out.clone())),
                stderr: Some(Box::new(Collect::default())),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("the attach ends when stdin_once closes stdin and the container exits")
    .expect("attach session");
    assert_eq!(exit, RemoteExit::Code(0));
    assert_eq!(out.text(), "got:hi\nmore\ndone\n");
    // The container exited because its stdin closed, and its log has everything too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c
            .runtime
            .container_status(api::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state == api::ContainerState::ContainerExited as i32 {
            assert_eq!(s.exit_code, 0);
            let log = std::fs::read_to_string(&s.log_path).unwrap();
            assert!(log.contains("stdout F got:hi"), "{log}");
            assert!(log.contains("stdout F done"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "container did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without stdin_once, the attach ends when the client's stdin does, and the
    // container keeps running.
    let (_pod2, cat) = pod_with(&mut c, "attach2", logs.path(), |ctr| {
        ctr.command = vec!["cat".into()];
        ctr.stdin = true;
    })
    .await;
    let url = attach_url(&mut c, &cat, true).await;
    let out = Collect::default();
    let exit = tokio::time::timeout(
        Duration::from_secs(20),
        remote_command(
            &url,
            LocalIo {
                stdin: Some(delayed_input(b"echoed\n", Duration::from_millis(300))),
                stdout: Some(Box::new(out.clone())),
                stderr: Some(Box::new(Collect::default())),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("the attach ends with the client's stdin")
    .expect("attach session");
    assert_eq!(exit, RemoteExit::Code(0));
    let s = c
        .runtime
        .container_status(api::ContainerStatusRequest {
            container_id: cat.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(s.state, api::ContainerState::ContainerRunning as i32);
    drop(env);
}

#[tokio::test(flavor = "current_thread")]
async fn port_forward_reaches_a_server_in_the_pod() {
    let Some((env, mut c)) = setup("port_forward_reaches_a_server_in_the_pod").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let (pod, id) = pod_with(&mut c, "fwd", logs.path(), |ctr| {
        ctr.command = vec![
            "sh".into(),
            "-c".into(),
            "while true; do nc -l -p 8080 -e cat; done".into(),
        ];
    })
    .await;
    let url = c
        .runtime
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let fwd = PortForwarder::dial(&url).await.expect("dial port-forward");
    // The server in the pod may take a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(10);
    let echoed = loop {
        let mut f = fwd.open(8080).await.expect("open forwarded stream");
        f.data_out.send(b"ping\n").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), f.data_in.recv()).await;
        if let Ok(Some(bytes)) = got {
            f.data_out.finish().await.unwrap();
            break bytes;
        }
        assert!(Instant::now() < deadline, "no echo through the forward");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(&echoed[..], b"ping\n");

    // A port with no listener: an error on the error stream, the data stream ends.
    let mut f = fwd.open(8081).await.expect("open");
    let mut msg = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), f.error.recv())
        .await
        .expect("error stream ends")
    {
        msg.extend_from_slice(&chunk);
    }
    let msg = String::from_utf8_lossy(&msg);
    assert!(msg.contains("8081"), "{msg}");
    assert!(f.data_in.recv().await.is_none());

    // Several forwarded connections at once.
    let mut tasks = Vec::new();
    for i in 0..4u8 {
        let mut f = fwd.open(8080).await.expect("open");
        tasks.push(tokio::spawn(async move {
            // nc serves one connection at a time; only check each one ends cleanly.
            let _ = f.data_out.send(&[b'a' + i, b'\n']).await;
            let _ = f.data_out.finish().await;
            while tokio::time::timeout(Duration::from_secs(10), f.data_in.recv())
                .await
                .ok()
                .flatten()
                .is_some()
            {}
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    fwd.close().await;
    assert!(exec_sync(&mut c, &id, &["echo", "ok"]).await.contains("ok"));
    drop(env);
}

#[tokio::test(flavor = "current_thread")]
async fn cli_exec_interactive() {
    let Some((env, mut c)) = setup("cli_exec_interactive").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let (_pod, id) = pod_with(&mut c, "cli", logs.path(), |_| {}).await;
    let socket = env.skiffd.socket.display().to_string();
    let run = |args: &[&str], input: &[u8]| {
        let mut child = env
            .netns
            .command(common::skiff_bin())
            .arg("-r")
            .arg(&socket)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(
        &["exec", "-i", &id, "sh", "-c", "cat; exit 7"],
        b"via cli\n",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via cli\n");
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(env);
}

/// An AsyncWrite that takes its time with every write (a slow client).
#[derive(Clone, Default)]
struct SlowCollect(Collect);

impl tokio::io::AsyncWrite for SlowCollect {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // Slow on purpose: three of four polls sleep briefly and come back pending.
        thread_local! { static N: std::cell::Cell<u32> = const { std::cell::Cell::new(0) }; }
        let n = N.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        if !n.is_multiple_of(4) {
            std::thread::sleep(Duration::from_micros(500));
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let take = buf.len().min(4096);
        self.0.0.lock().unwrap().extend_from_slice(&buf[..take]);
        Poll::Ready(Ok(take))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_attach_client_gets_all_the_output() {
    let Some((env, mut c)) = setup("a_slow_attach_client_gets_all_the_output").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    // 2 s to attach, then ~8 MB at once (more than the pipe and the SPDY queues hold), then exit.
    let (_pod, id) = pod_with(&mut c, "slow", logs.path(), |ctr| {
        ctr.command = vec!["sh".into(), "-c".into(), "sleep 2; seq 1 1200000".into()];
    })
    .await;
    let url = attach_url(&mut c, &id, false).await;
    let out = SlowCollect::default();
    let exit = tokio::time::timeout(
        Duration::from_secs(120),
        remote_command(
            &url,
            LocalIo {
                stdout: Some(Box::new(out.clone())),
                stderr: Some(Box::new(Collect::default())),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("the attach ends after the output")
    .expect("attach session");
    assert_eq!(exit, RemoteExit::Code(0));
    let text = out.0.text();
    let want: String = (1..=1200000).map(|i| format!("{i}\n")).collect();
    assert_eq!(text.len(), want.len(), "bytes received");
    assert!(text == want, "the output arrived out of order or with gaps");
    drop(env);
}

/// A WebSocket client for `url` offering `protocols` (from inside the test namespace).
async fn ws_connect(
    url: &str,
    protocols: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request()?;
    req.headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    let host = req.uri().authority().unwrap().to_string();
    let tcp = tokio::net::TcpStream::connect(host).await?;
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
    Ok(ws)
}

/// Read channel frames until the session closes; (stdout, error channel) text.
async fn ws_drain(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> (String, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Binary(b) = m {
            match b.first() {
                Some(1) => out.extend_from_slice(&b[1..]),
                Some(3) => err.extend_from_slice(&b[1..]),
                _ => {}
            }
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn websocket_exec_and_bad_input() {
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let Some((env, mut c)) = setup_with(
        "websocket_exec_and_bad_input",
        "[streaming]\nidle_timeout = 2\nmax_sessions = 3\n",
    )
    .await
    else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let (_pod, ctr) = pod_with(&mut c, "wsbad", &logs, |_| {}).await;

    // A protocol nobody speaks: refused, naming what is supported, and the URL stays
    // usable (only a session uses it up).
    let url = exec_url(
        &mut c,
        &ctr,
        &["sh", "-c", "echo out; exit 4"],
        false,
        false,
    )
    .await;
    let e = ws_connect(&url, "nope.k8s.io").await.unwrap_err();
    assert!(e.to_string().contains("400"), "{e}");
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await.unwrap();
    let (out, status) = ws_drain(&mut ws).await;
    assert_eq!(out, "out\n");
    assert!(
        status.contains("NonZeroExitCode") && status.contains("\"4\""),
        "{status}"
    );
    // The base64 text protocol.
    let url = exec_url(&mut c, &ctr, &["echo", "b64"], false, false).await;
    let mut ws = ws_connect(&url, "base64.channel.k8s.io").await.unwrap();
    let mut text = String::new();
    {
        use futures_util::StreamExt;
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                text.push_str(&t);
                text.push('|');
            }
        }
    }
    assert!(
        text.contains("1YjY0Cg=="),
        "stdout 'b64\\n' as channel 1 in base64: {text}"
    );

    // A frame larger than allowed ends the session; skiffd serves on.
    let url = exec_url(&mut c, &ctr, &["cat"], true, false).await;
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await.unwrap();
    let mut big = vec![0u8; 2 << 20];
    big[0] = 0;
    let _ = ws.send(Message::Binary(big.into())).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), ws_drain(&mut ws)).await;
    assert!(ended.is_ok(), "an oversized frame must end the session");

    // A client that dies in the middle of a frame: the session ends, nothing hangs.
    let url = exec_url(&mut c, &ctr, &["cat"], true, false).await;
    let ws = ws_connect(&url, "v5.channel.k8s.io").await.unwrap();
    let mut tcp = ws.into_inner();
    // A masked binary frame header announcing 1000 bytes, then 10 of them, then EOF.
    tcp.write_all(&[0x82, 0x80 | 126, 0x03, 0xe8, 1, 2, 3, 4])
        .await
        .unwrap();
    tcp.write_all(&[0u8; 10]).await.unwrap();
    drop(tcp);

    // Idle sessions end after the idle timeout (2 s here).
    let url = exec_url(&mut c, &ctr, &["sleep", "30"], false, false).await;
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), ws_drain(&mut ws))
        .await
        .expect("the idle session ends");
    assert!(started.elapsed() >= Duration::from_secs(2));

    // Sessions are bounded (3 here): a fourth is refused with 503 while three run.
    let mut open = Vec::new();
    for _ in 0..3 {
        let url = exec_url(&mut c, &ctr, &["sleep", "1"], false, false).await;
        open.push(ws_connect(&url, "v5.channel.k8s.io").await.unwrap());
    }
    let url = exec_url(&mut c, &ctr, &["true"], false, false).await;
    let e = ws_connect(&url, "v5.channel.k8s.io").await.unwrap_err();
    assert!(e.to_string().contains("503"), "{e}");
    for mut ws in open {
        ws_drain(&mut ws).await;
    }

    // Thousands of connections that never send a request: skiffd keeps serving.
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let url = exec_url(&mut c, &ctr, &["echo", "still"], false, false).await;
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await.unwrap();
    let (out, _) = ws_drain(&mut ws).await;
    assert_eq!(out, "still\n");
    // They are closed after the header timeout.
    let mut first = idle.swap_remove(0);
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(20), first.read(&mut buf))
        .await
        .expect("an idle connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

/// skiff's own WebSocket clients (used by `skiff exec` and the benchmarks): exec with
/// input and an exit code, and port-forward with SPDY tunnelled in the WebSocket.
#[tokio::test(flavor = "current_thread")]
async fn websocket_clients_exec_and_forward() {
    use skiff::stream::client::remote_command_ws;
    let Some((env, mut c)) = setup("websocket_clients_exec_and_forward").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let (pod, ctr) = pod_with(&mut c, "wscli", &logs, |c| {
        c.command = vec![
            "sh".into(),
            "-c".into(),
            "while true; do nc -l -p 8080 -e cat; done".into(),
        ];
    })
    .await;
    let url = exec_url(&mut c, &ctr, &["sh", "-c", "cat; exit 5"], true, false).await;
    let out = Collect::default();
    let exit = remote_command_ws(
        &url,
        LocalIo {
            stdin: Some(delayed_input(b"typed\n", Duration::from_millis(50))),
            stdout: Some(Box::new(out.clone())),
            stderr: Some(Box::new(Collect::default())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(exit, RemoteExit::Code(5));
    assert_eq!(out.text(), "typed\n");
    let url = c
        .runtime
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: pod,
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let pf = PortForwarder::dial_ws(&url).await.unwrap();
    // Retry while nc comes up.
    let mut echoed = String::new();
    for _ in 0..50 {
        let f = pf.open(8080).await.unwrap();
        f.data_out.send(b"ping").await.unwrap();
        f.data_out.finish().await.unwrap();
        let mut data_in = f.data_in;
        let mut got = Vec::new();
        while let Some(chunk) = data_in.recv().await {
            got.extend_from_slice(&chunk);
        }
        echoed = String::from_utf8_lossy(&got).into_owned();
        if echoed == "ping" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(echoed, "ping");
    pf.close().await;
}
