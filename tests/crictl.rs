//! End-to-end with crictl (cri-tools 1.36), the CRI client people and scripts use: every
//! crictl command that maps to a CRI call, with its default output and `-o json|yaml`,
//! against a real skiffd. Needs root and the conformance kit's crictl (`SKIFF_CRICTL`, else
//! `../shared/conformance/bin/crictl` next to this checkout).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::RegistryEnv;
use skiff_testkit::image::{Compression, ImageBuilder, busybox_layer};

const IMAGE: &str = "127.0.0.1:5000/test/busybox:crictl";
const SPARE: &str = "127.0.0.1:5000/test/spare:crictl";

fn crictl_bin() -> Option<PathBuf> {
    let path = std::env::var_os("SKIFF_CRICTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/bin/crictl")
        });
    path.exists().then_some(path)
}

struct Crictl<'a> {
    bin: PathBuf,
    env: &'a RegistryEnv,
    config_dir: tempfile::TempDir,
}

impl Crictl<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let ep = format!("unix://{}", self.env.skiffd.socket.display());
        // An empty config file of its own keeps crictl from warning about a missing one.
        let config = self.config_dir.path().join("crictl.yaml");
        if !config.exists() {
            std::fs::write(&config, "").unwrap();
        }
        let mut cmd = self.env.netns.command(&self.bin);
        cmd.arg("--config")
            .arg(&config)
            .args(["-r", &ep, "-i", &ep, "--timeout", "60s"])
            .args(args);
        cmd
    }

    /// Run crictl; panic with its output unless it succeeds; return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run crictl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "crictl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}\nskiffd log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&self.env.skiffd.log_text()),
        );
        stdout
    }

    /// Run crictl expecting failure; return stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run crictl");
        assert!(
            !out.status.success(),
            "crictl {args:?} succeeded unexpectedly"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The command in each output format: default, json (parsed), yaml. crictl takes
    /// flags before positional arguments, so `-o` goes right after the subcommand.
    fn all_formats(&self, args: &[&str]) -> serde_json::Value {
        self.ok(args);
        let with = |format| {
            let mut v = vec![args[0], "-o", format];
            v.extend(&args[1..]);
            v
        };
        let yaml = with("yaml");
        let text = self.ok(&yaml);
        assert!(!text.trim().is_empty(), "crictl {yaml:?} printed nothing");
        let json = with("json");
        let text = self.ok(&json);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("crictl {json:?}: {e}: {text}"))
    }

    fn file(&self, name: &str, body: serde_json::Value) -> String {
        let path = self.config_dir.path().join(name);
        std::fs::write(&path, body.to_string()).unwrap();
        path.display().to_string()
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

async fn setup(test: &str) -> Option<(RegistryEnv, PathBuf)> {
    if !skiff_testkit::require_root(test) {
        return None;
    }
    let Some(bin) = crictl_bin() else {
        skiff_testkit::skip(
            test,
            "no crictl (set SKIFF_CRICTL or provide ../shared/conformance)",
        );
        return None;
    };
    let env = common::start_with_registry(test, "", &[])?;
    let image = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .cmd(["sh"])
        .build();
    env.push("test/busybox", "crictl", &image);
    let spare = ImageBuilder::new()
        .layer(busybox_layer(Compression::Zstd).unwrap())
        .cmd(["true"])
        .build();
    env.push("test/spare", "crictl", &spare);
    Some((env, bin))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_commands_work_in_every_output_format() {
    let Some((env, bin)) = setup("crictl_commands_work_in_every_output_format").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let c = Crictl {
        bin,
        env: &env,
        config_dir: tempfile::tempdir().unwrap(),
    };
    tokio::task::block_in_place(|| run_all(&c, logs.path()));
}

fn run_all(c: &Crictl<'_>, logs: &Path) {
    // Runtime and image service.
    assert!(c.ok(&["version"]).contains("RuntimeName:  skiff"));
    let info = c.ok(&["info"]);
    assert!(info.contains("RuntimeReady"), "{info}");
    c.ok(&["info", "-o", "yaml"]);
    c.ok(&["pull", IMAGE]);
    c.ok(&["pull", SPARE]);
    let images = c.all_formats(&["images"]);
    assert_eq!(
        images["images"].as_array().map(Vec::len),
        Some(2),
        "{images}"
    );
    let inspect = c.all_formats(&["inspecti", IMAGE]);
    assert!(
        inspect["status"]["id"]
            .as_str()
            .is_some_and(|s| s.starts_with("sha256:")),
        "{inspect}"
    );
    let fsinfo = c.all_formats(&["imagefsinfo"]);
    assert!(fsinfo["status"]["imageFilesystems"].is_array(), "{fsinfo}");

    // A pod and a long-running container, through config files as people write them.
    let pod = c.file(
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "crictl-pod", "namespace": "default", "uid": "crictl-uid"},
            "log_directory": logs.display().to_string(),
            "linux": {}
        }),
    );
    let ctr = c.file(
        "ctr.json",
        serde_json::json!({
            "metadata": {"name": "web"},
            "image": {"image": IMAGE},
            "command": ["sh", "-c", "echo started; while true; do nc -l -p 8080 -e echo pong; done"],
            "envs": [{"key": "GREETING", "value": "hi"}],
            "log_path": "web.log",
            "linux": {}
        }),
    );
    let mut events = c
        .command(&["events", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("crictl events");
    let pod_id = c.ok(&["runp", &pod]).trim().to_string();
    let pods = c.all_formats(&["pods"]);
    assert_eq!(pods["items"][0]["id"], pod_id.as_str(), "{pods}");
    let inspectp = c.all_formats(&["inspectp", &pod_id]);
    assert_eq!(inspectp["status"]["state"], "SANDBOX_READY", "{inspectp}");
    let ctr_id = c.ok(&["create", &pod_id, &ctr, &pod]).trim().to_string();
    c.ok(&["start", &ctr_id]);
    let ps = c.all_formats(&["ps"]);
    assert_eq!(ps["containers"][0]["id"], ctr_id.as_str(), "{ps}");
    let inspect = c.all_formats(&["inspect", &ctr_id]);
    assert_eq!(inspect["status"]["state"], "CONTAINER_RUNNING", "{inspect}");

    // The event stream saw the container's creation.
    let mut line = String::new();
    BufReader::new(events.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read an event");
    assert!(
        line.contains(&ctr_id) || line.trim() == "{",
        "first event line: {line}"
    );
    let _ = events.kill();
    let _ = events.wait();

    // Logs, exec (streaming and sync), attach, port-forward.
    wait_for("the container's first log line", || {
        c.ok(&["logs", &ctr_id]).contains("started")
    });
    assert_eq!(
        c.ok(&["exec", &ctr_id, "sh", "-c", "echo $GREETING"])
            .trim(),
        "hi"
    );
    assert_eq!(
        c.ok(&["exec", "-s", &ctr_id, "echo", "sync"]).trim(),
        "sync"
    );
    let mut exec_i = c
        .command(&["exec", "-i", &ctr_id, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    exec_i
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let out = exec_i.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\n");
    // A failed command fails crictl, streaming or sync.
    for sync in [&["-s"][..], &[]] {
        let mut args = vec!["exec"];
        args.extend(sync);
        args.extend([ctr_id.as_str(), "sh", "-c", "exit 3"]);
        let failed = c.command(&args).output().unwrap();
        assert!(!failed.status.success(), "{args:?}: {failed:?}");
    }

    let forward_log = c.config_dir.path().join("port-forward.log");
    let mut forward = c
        .command(&["port-forward", &pod_id, "18080:8080"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&forward_log).unwrap())
        .spawn()
        .unwrap();
    // Keep reading crictl's stdout: it reports each connection there, and dies of
    // SIGPIPE if nobody reads.
    let (said, rx) = std::sync::mpsc::channel();
    let out = forward.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.contains("18080"), "port-forward said: {first}");
    let answer = env_nc(c.env, 18080);
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(
        answer.trim(),
        "pong",
        "crictl port-forward: {}\nskiffd: {}",
        std::fs::read_to_string(&forward_log).unwrap_or_default(),
        tail(&c.env.skiffd.log_text())
    );

    // Stats and metrics.
    let stats = c.all_formats(&["stats"]);
    assert_eq!(
        stats["stats"][0]["attributes"]["id"],
        ctr_id.as_str(),
        "{stats}"
    );
    let statsp = c.all_formats(&["statsp"]);
    assert_eq!(
        statsp["stats"][0]["attributes"]["id"],
        pod_id.as_str(),
        "{statsp}"
    );
    let descs = c.ok(&["metricdescs"]);
    assert!(
        descs.contains("container_cpu_usage_seconds_total"),
        "{descs}"
    );
    let metrics = c.ok(&["metricsp"]);
    assert!(
        metrics.contains("container_memory_working_set_bytes"),
        "{metrics}"
    );

    // Update resources.
    c.ok(&["update", "--memory", "134217728", &ctr_id]);
    let inspect = c.all_formats(&["inspect", &ctr_id]);
    assert_eq!(
        inspect["status"]["resources"]["linux"]["memoryLimitInBytes"], "134217728",
        "{inspect}"
    );

    // Attach to a container that reads its stdin.
    let cat = c.file(
        "cat.json",
        serde_json::json!({
            "metadata": {"name": "cat"},
            "image": {"image": IMAGE},
            "command": ["cat"],
            "stdin": true,
            "log_path": "cat.log",
            "linux": {}
        }),
    );
    let cat_id = c.ok(&["create", &pod_id, &cat, &pod]).trim().to_string();
    c.ok(&["start", &cat_id]);
    let mut attach = c
        .command(&["attach", "-i", &cat_id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = attach.stdin.take().unwrap();
    stdin.write_all(b"attached\n").unwrap();
    let mut echoed = String::new();
    BufReader::new(attach.stdout.take().unwrap())
        .read_line(&mut echoed)
        .unwrap();
    drop(stdin);
    let _ = attach.wait();
    assert_eq!(echoed, "attached\n");

    // `run` (pull + runp + create + start) and `logs -f` of a container that exits.
    let once = c.file(
        "once.json",
        serde_json::json!({
            "metadata": {"name": "once"},
            "image": {"image": IMAGE},
            "command": ["sh", "-c", "echo one; echo two >&2"],
            "log_path": "once.log",
            "linux": {}
        }),
    );
    let pod2 = c.file(
        "pod2.json",
        serde_json::json!({
            "metadata": {"name": "crictl-run", "namespace": "default", "uid": "crictl-run-uid"},
            "log_directory": logs.display().to_string(),
            "linux": {}
        }),
    );
    let once_id = c.ok(&["run", &once, &pod2]).trim().to_string();
    let followed = c.command(&["logs", "-f", &once_id]).output().unwrap();
    assert!(followed.status.success());
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "one\n");
    assert_eq!(String::from_utf8_lossy(&followed.stderr), "two\n");
    let all = c.all_formats(&["ps", "-a"]);
    assert_eq!(all["containers"].as_array().map(Vec::len), Some(3), "{all}");

    // Tear down, then prune the image nothing uses any more.
    c.ok(&["stop", &ctr_id]);
    c.ok(&["rm", &ctr_id]);
    let gone = c.fails(&["inspect", &ctr_id]);
    assert!(gone.contains("NotFound"), "{gone}");
    c.ok(&["rm", "-a", "-f"]);
    c.ok(&["stopp", &pod_id]);
    c.ok(&["rmp", "-a", "-f"]);
    assert_eq!(
        c.all_formats(&["pods"])["items"].as_array().map(Vec::len),
        Some(0)
    );
    c.ok(&["rmi", "--prune"]);
    let images = c.all_formats(&["images"]);
    assert_eq!(
        images["images"].as_array().map(Vec::len),
        Some(0),
        "{images}"
    );
}

/// Connect to 127.0.0.1:`port` inside the test namespace and read the answer.
fn env_nc(env: &RegistryEnv, port: u16) -> String {
    env.netns.run(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut out = String::new();
                    let _ = std::io::Read::read_to_string(&mut s, &mut out);
                    return out;
                }
                Err(e) if Instant::now() > deadline => panic!("connect to port {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}

/// crictl's WebSocket transport (`--transport websocket`): exec with and without stdin,
/// a failing command, attach, and port-forward (SPDY tunnelled in a WebSocket, as
/// client-go dials it).
#[tokio::test(flavor = "multi_thread")]
async fn crictl_websocket_transport() {
    let Some((env, bin)) = setup("crictl_websocket_transport").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let c = Crictl {
        bin,
        env: &env,
        config_dir: tempfile::tempdir().unwrap(),
    };
    tokio::task::block_in_place(|| websocket(&c, logs.path()));
}

fn websocket(c: &Crictl<'_>, logs: &Path) {
    c.ok(&["pull", IMAGE]);
    let pod = c.file(
        "pod.json",
        serde_json::json!({
            "metadata": {"name": "ws-pod", "namespace": "default", "uid": "ws-uid"},
            "log_directory": logs.display().to_string(),
            "linux": {}
        }),
    );
    let web = c.file(
        "web.json",
        serde_json::json!({
            "metadata": {"name": "web"},
            "image": {"image": IMAGE},
            "command": ["sh", "-c", "while true; do nc -l -p 8080 -e echo pong; done"],
            "log_path": "web.log",
            "linux": {}
        }),
    );
    let cat = c.file(
        "cat.json",
        serde_json::json!({
            "metadata": {"name": "cat"},
            "image": {"image": IMAGE},
            "command": ["cat"],
            "stdin": true,
            "log_path": "cat.log",
            "linux": {}
        }),
    );
    let pod_id = c.ok(&["runp", &pod]).trim().to_string();
    let web_id = c.ok(&["create", &pod_id, &web, &pod]).trim().to_string();
    let cat_id = c.ok(&["create", &pod_id, &cat, &pod]).trim().to_string();
    c.ok(&["start", &web_id, &cat_id]);
    let w = "--transport=websocket";
    assert_eq!(
        c.ok(&["exec", w, &web_id, "echo", "over-websocket"]).trim(),
        "over-websocket"
    );
    let failed = c
        .command(&["exec", w, &web_id, "sh", "-c", "exit 3"])
        .output()
        .unwrap();
    assert!(!failed.status.success(), "{failed:?}");
    let mut with_stdin = c
        .command(&["exec", w, "-i", &web_id, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    with_stdin
        .stdin
        .take()
        .unwrap()
        .write_all(b"stdin over websocket\n")
        .unwrap();
    let out = with_stdin.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "stdin over websocket\n"
    );

    let mut attach = c
        .command(&["attach", "--transport", "websocket", "-i", &cat_id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = attach.stdin.take().unwrap();
    stdin.write_all(b"attached\n").unwrap();
    let mut echoed = String::new();
    BufReader::new(attach.stdout.take().unwrap())
        .read_line(&mut echoed)
        .unwrap();
    drop(stdin);
    let _ = attach.wait();
    assert_eq!(echoed, "attached\n");

    let mut forward = c
        .command(&[
            "port-forward",
            "--transport",
            "websocket",
            &pod_id,
            "18081:8080",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (said, rx) = std::sync::mpsc::channel();
    let out = forward.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.contains("18081"), "port-forward said: {first}");
    let answer = env_nc(c.env, 18081);
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(answer.trim(), "pong");
    c.ok(&["rmp", "-f", &pod_id]);
}
