//! End-to-end: pods and containers through skiffd's CRI socket, with real runc, a real
//! image from the test registry and the per-pod shim. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{REGISTRY, RegistryEnv};
use skiff_cri::api;
use skiff_cri::client::CriClient;
use skiff_testkit::image::{Compression, ImageBuilder, busybox_layer};

const IMAGE: &str = "127.0.0.1:5000/test/busybox:pods";

/// skiffd + registry with the busybox test image pulled.
async fn setup(test: &str) -> Option<(RegistryEnv, CriClient)> {
    setup_with(test, "").await
}

/// [`setup`] with extra skiffd config.
async fn setup_with(test: &str, extra_config: &str) -> Option<(RegistryEnv, CriClient)> {
    let env = common::start_with_registry(test, extra_config, &[])?;
    let image = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .cmd(["sh"])
        .env("FROM_IMAGE", "yes")
        .build();
    env.push("test/busybox", "pods", &image);
    let mut c = env.skiffd.client().await;
    common::pull(&mut c, IMAGE).await;
    Some((env, c))
}

fn pod_config(name: &str, logs: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("{name}-uid"),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: logs.display().to_string(),
        linux: Some(api::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn ctr_config(name: &str, cmd: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        envs: vec![api::KeyValue {
            key: "FROM_CRI".into(),
            value: "1".into(),
        }],
        linux: Some(api::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

async fn run_pod(c: &mut CriClient, cfg: &api::PodSandboxConfig) -> String {
    c.runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id
}

async fn create(
    c: &mut CriClient,
    pod: &str,
    pod_cfg: &api::PodSandboxConfig,
    cfg: api::ContainerConfig,
) -> Result<String, tonic::Status> {
    c.runtime
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn start(c: &mut CriClient, id: &str) {
    c.runtime
        .start_container(api::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .expect("StartContainer");
}

async fn status(c: &mut CriClient, id: &str) -> api::ContainerStatus {
    c.runtime
        .container_status(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("status")
}

async fn exec(
    c: &mut CriClient,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<api::ExecSyncResponse, tonic::Status> {
    c.runtime
        .exec_sync(api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

async fn wait_state(
    c: &mut CriClient,
    id: &str,
    state: api::ContainerState,
) -> api::ContainerStatus {
    let start = Instant::now();
    loop {
        let s = status(c, id).await;
        if s.state == state as i32 {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "container {id} never became {state:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_for_log(path: &Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{needle:?} never reached {}: {text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mount points under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let base = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&base))
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    // A zombie is not alive for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

fn shim_pid(state: &Path, pod: &str) -> u32 {
    std::fs::read_to_string(state.join("pods").join(pod).join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn pod_and_container_lifecycle_with_logs_exec_and_cleanup() {
    let Some((env, mut c)) = setup("pod_and_container_lifecycle_with_logs_exec_and_cleanup").await
    else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config("life", &logs);
    let pod = run_pod(&mut c, &pod_cfg).await;
    let shim = shim_pid(&env.skiffd.state, &pod);
    assert!(pid_alive(shim));

    let cfg = ctr_config(
        "main",
        &[
            "sh",
            "-c",
            "echo hello; echo oops >&2; hostname; echo env=$FROM_IMAGE$FROM_CRI; exec sleep 3600",
        ],
    );
    let ctr = create(&mut c, &pod, &pod_cfg, cfg)
        .await
        .expect("CreateContainer");
    let s = status(&mut c, &ctr).await;
    assert_eq!(s.state, api::ContainerState::ContainerCreated as i32);
    assert!(s.created_at > 0 && s.started_at == 0);
    assert_eq!(s.image_ref, s.image_id);
    assert!(s.image_ref.starts_with("sha256:"));
    start(&mut c, &ctr).await;
    let s = wait_state(&mut c, &ctr, api::ContainerState::ContainerRunning).await;
    assert!(s.started_at >= s.created_at);
    assert_eq!(PathBuf::from(&s.log_path), logs.join("main.log"));

    // CRI log format, both streams, the pod's hostname, env from image and CRI. The two
    // streams are separate pipes: stderr's line may reach the log after stdout's last.
    wait_for_log(&logs.join("main.log"), "env=yes1");
    let text = wait_for_log(&logs.join("main.log"), " stderr F oops");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F hello")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stderr F oops")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F life-host")),
        "{text}"
    );
    let ts = lines[0].split(' ').next().unwrap();
    assert!(
        ts.ends_with('Z') && ts.contains('T') && ts.len() == 30,
        "{ts}"
    );

    // ExecSync: output, exit codes, and a timeout that kills the command.
    let r = exec(
        &mut c,
        &ctr,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        0,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let started = Instant::now();
    let e = exec(&mut c, &ctr, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = exec(
        &mut c,
        &ctr,
        &["sh", "-c", "ps -o pid,comm | grep -c 'sleep 30' || true"],
        0,
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "0",
        "the timed-out exec was not killed"
    );
    let e = exec(&mut c, &ctr, &["/no/such/binary"], 0).await;
    assert!(e.is_err() || e.as_ref().unwrap().exit_code != 0, "{e:?}");

    // Shared PID namespace: PID 1 is skiff-pause.
    let r = exec(&mut c, &ctr, &["cat", "/proc/1/comm"], 0)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "skiff-pause");

    // Lists and filters.
    let list = c
        .runtime
        .list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, ctr);
    let pods = c
        .runtime
        .list_pod_sandbox(api::ListPodSandboxRequest {
            filter: Some(api::PodSandboxFilter {
                id: pod[..12].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, api::PodSandboxState::SandboxReady as i32);
    // A unique prefix names the container.
    assert_eq!(status(&mut c, &ctr[..10]).await.id, ctr);

    // Verbose info is JSON.
    let v = c
        .runtime
        .container_status(api::ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&v.info["info"]).unwrap();
    assert_eq!(info["sandboxID"], pod.as_str());
    assert!(info["runtimeSpec"]["process"].is_object());
    let pv = c
        .runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let pinfo: serde_json::Value = serde_json::from_str(&pv.info["info"]).unwrap();
    assert!(pinfo["pid"].as_u64().unwrap() > 0);
    assert_eq!(pv.containers_statuses.len(), 1);

    // Stop: SIGTERM is ignored by `sleep` as PID 1 of nothing… the container's init is
    // sleep, which dies on SIGTERM; exit code 143.
    c.runtime
        .stop_container(api::StopContainerRequest {
            container_id: ctr.clone(),
            timeout: 5,
        })
        .await
        .unwrap();
    let s = status(&mut c, &ctr).await;
    assert_eq!(s.state, api::ContainerState::ContainerExited as i32);
    assert!(s.finished_at >= s.started_at);
    assert_eq!(s.exit_code, 143, "{s:?}");
    assert_eq!(s.reason, "Error");
    // Stop again, and of unknown ids: fine.
    c.runtime
        .stop_container(api::StopContainerRequest {
            container_id: ctr.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    c.runtime
        .stop_container(api::StopContainerRequest {
            container_id: "nope".into(),
            timeout: 0,
        })
        .await
        .unwrap();
    c.runtime
        .remove_container(api::RemoveContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap();
    let e = c
        .runtime
        .container_status(api::ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    c.runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let e = create(&mut c, &pod, &pod_cfg, ctr_config("late", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    c.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    c.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();

    // Nothing left: mounts, ns files, shim, pod dir.
    let start = Instant::now();
    while pid_alive(shim) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_alive(shim), "shim {shim} still running");
    assert_eq!(mounts_under(env.skiffd.dir()), Vec::<String>::new());
    assert!(!env.skiffd.state.join("pods").join(&pod).exists());
    assert!(!env.skiffd.state.join("ns").join(&pod).exists());
    // The log stays for the kubelet to delete.
    assert!(logs.join("main.log").exists());
}

#[tokio::test]
async fn exits_are_reported_with_code_and_reason() {
    let Some((env, mut c)) = setup("exits_are_reported_with_code_and_reason").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config("exits", &logs);
    let pod = run_pod(&mut c, &pod_cfg).await;
    let ok = create(&mut c, &pod, &pod_cfg, ctr_config("ok", &["true"]))
        .await
        .unwrap();
    let bad = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config("bad", &["sh", "-c", "printf partial; exit 7"]),
    )
    .await
    .unwrap();
    start(&mut c, &ok).await;
    start(&mut c, &bad).await;
    let s = wait_state(&mut c, &ok, api::ContainerState::ContainerExited).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    let s = wait_state(&mut c, &bad, api::ContainerState::ContainerExited).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"));
    assert!(s.finished_at >= s.started_at && s.started_at > 0);
    // Output without a final newline is logged as a partial entry when the stream
    // closes (containerd does the same): joined, the log gives back exactly the bytes.
    let text = wait_for_log(&logs.join("bad.log"), "partial");
    assert!(text.trim_end().ends_with(" stdout P partial"), "{text}");

    // A command missing from the image: a clear error, and the pod stays usable.
    let missing = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config("missing", &["/bin/no-such-command"]),
    )
    .await;
    let err = match missing {
        Err(e) => e,
        Ok(id) => c
            .runtime
            .start_container(api::StartContainerRequest { container_id: id })
            .await
            .unwrap_err(),
    };
    assert!(err.message().contains("no-such-command"), "{err:?}");
    let again = create(&mut c, &pod, &pod_cfg, ctr_config("after", &["true"]))
        .await
        .unwrap();
    start(&mut c, &again).await;
    wait_state(&mut c, &again, api::ContainerState::ContainerExited).await;

    // Hostile and unknown input.
    let mut hostile = ctr_config("hostile", &["true"]);
    hostile.log_path = "../../etc/evil.log".into();
    let e = create(&mut c, &pod, &pod_cfg, hostile).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = create(&mut c, "no-such-pod", &pod_cfg, ctr_config("x", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = create(&mut c, &pod, &pod_cfg, ctr_config("ok", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    let mut huge = ctr_config("huge", &["true"]);
    huge.envs = (0..2000)
        .map(|i| api::KeyValue {
            key: format!("K{i}"),
            value: "v".repeat(100).into(),
        })
        .collect();
    let id = create(&mut c, &pod, &pod_cfg, huge).await.unwrap();
    start(&mut c, &id).await;
    wait_state(&mut c, &id, api::ContainerState::ContainerExited).await;
    let e = c
        .runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = c
        .runtime
        .start_container(api::StartContainerRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    c.runtime
        .remove_container(api::RemoveContainerRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap();
    c.runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: "nope".into(),
        })
        .await
        .unwrap();

    // Stats exist for created and exited containers.
    let stats = c
        .runtime
        .list_container_stats(api::ListContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(stats.len() >= 3);

    // Removing the pod removes its containers.
    c.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
    let left = c
        .runtime
        .list_containers(api::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(mounts_under(env.skiffd.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn containers_survive_a_skiffd_crash_and_exits_during_the_outage_are_kept() {
    let Some((mut env, mut c)) =
        setup("containers_survive_a_skiffd_crash_and_exits_during_the_outage_are_kept").await
    else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config("crash", &logs);
    let pod = run_pod(&mut c, &pod_cfg).await;
    let long = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config(
            "long",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
            ],
        ),
    )
    .await
    .unwrap();
    let short = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config("short", &["sh", "-c", "sleep 2; exit 5"]),
    )
    .await
    .unwrap();
    start(&mut c, &long).await;
    start(&mut c, &short).await;
    drop(c);
    env.skiffd.kill();
    let before = std::fs::read_to_string(logs.join("long.log"))
        .unwrap_or_default()
        .lines()
        .count();
    std::thread::sleep(Duration::from_secs(3));
    let after = std::fs::read_to_string(logs.join("long.log"))
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        after > before,
        "logs must keep flowing while skiffd is down ({before} → {after})"
    );
    env.skiffd.restart().unwrap();
    let mut c = env.skiffd.client().await;
    let s = status(&mut c, &long).await;
    assert_eq!(s.state, api::ContainerState::ContainerRunning as i32);
    let s = status(&mut c, &short).await;
    assert_eq!(
        (s.state, s.exit_code),
        (api::ContainerState::ContainerExited as i32, 5),
        "{s:?}"
    );
    assert!(s.finished_at > s.started_at + 1_500_000_000, "{s:?}");
    // The restarted skiffd still drives the old shim, and new pods start.
    let r = exec(&mut c, &long, &["echo", "still here"], 5)
        .await
        .unwrap();
    assert_eq!(r.stdout, b"still here\n");
    let pod2 = run_pod(&mut c, &pod_config("after-crash", &logs)).await;
    c.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod2,
        })
        .await
        .unwrap();
    c.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
    assert_eq!(mounts_under(env.skiffd.dir()), Vec::<String>::new());
}

/// An ExecSync that races its container's exit (the soak once saw runc refuse one
/// with "cannot exec in a stopped container", answered Internal) is either run or
/// refused as a failed precondition, like one asked after the exit: never an
/// internal error the kubelet would log as the runtime's fault.
#[tokio::test]
async fn exec_racing_the_containers_exit_is_a_failed_precondition() {
    let Some((env, mut c)) = setup("exec_race_exit").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config("execrace", &logs);
    let pod = run_pod(&mut c, &pod_cfg).await;
    let (mut ran, mut refused) = (0, 0);
    for i in 0..24 {
        // Exits 0-115 ms after its start, around the time an exec takes to start.
        let usec = (i % 12) * 10_000;
        let cfg = ctr_config(&format!("race{i}"), &["usleep", &usec.to_string()]);
        let ctr = create(&mut c, &pod, &pod_cfg, cfg).await.unwrap();
        start(&mut c, &ctr).await;
        match exec(&mut c, &ctr, &["true"], 5).await {
            Ok(r) => {
                assert_eq!(r.exit_code, 0, "{r:?}");
                ran += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
                refused += 1;
            }
        }
    }
    eprintln!("execs run: {ran}, refused as stopped: {refused}");
    common::end_pod(&mut c, &pod).await;
}

/// The pause, the PID 1 of the pod, holds stdio and nothing else: no descriptor of
/// the shim's, of skiffd's or of whatever started skiffd (a leaked pause once held
/// the test runner's lock file and pipes).
#[tokio::test]
async fn the_pause_holds_no_inherited_descriptor() {
    let Some((env, mut c)) = setup("pause_fds").await else {
        return;
    };
    let (pod, _ctr) = sleeping_pod(&mut c, &env, "pausefds").await;
    let shim = shim_pid(&env.skiffd.state, &pod);
    let children = std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children")).unwrap();
    let pause = children
        .split_whitespace()
        .find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.to_string_lossy().ends_with("skiff-pause"))
        })
        .expect("the shim's pause child");
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pause}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .filter(|fd| !["0 ", "1 ", "2 "].iter().any(|s| fd.starts_with(s)))
        .collect();
    assert!(fds.is_empty(), "the pause holds {fds:?}");
    common::end_pod(&mut c, &pod).await;
}

/// skiffd killed after reserving names and making directories, before saving the
/// objects' first records: the restart frees the names and removes the directories.
#[tokio::test]
async fn objects_cut_before_their_first_record_leave_nothing_after_restart() {
    let Some((mut env, c)) = setup("cut_before_first_record").await else {
        return;
    };
    drop(c);
    env.skiffd.kill();
    let (pod_id, ctr_id) = ("a".repeat(64), "b".repeat(64));
    {
        let meta = skiff::meta::MetaStore::open(&env.skiffd.root.join("meta.redb")).unwrap();
        let names = skiff::meta::Table::named;
        meta.put(names("pod_names"), "cut_default_cut-uid_0", &pod_id)
            .unwrap();
        meta.put(
            names("container_names"),
            "work_cut_default_cut-uid_0",
            &ctr_id,
        )
        .unwrap();
    }
    let dirs = [
        env.skiffd.state.join("pods").join(&pod_id),
        env.skiffd.state.join("containers").join(&ctr_id),
        env.skiffd.root.join("containers").join(&ctr_id),
    ];
    for d in &dirs {
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("hostname"), "cut\n").unwrap();
    }
    env.skiffd.restart().unwrap();
    let mut c = env.skiffd.client().await;
    // Recovery runs beside the first CRI calls.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dirs.iter().any(|d| d.exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for d in &dirs {
        assert!(!d.exists(), "{} is left", d.display());
    }
    let logs = tempfile::tempdir().unwrap();
    let pod = run_pod(&mut c, &pod_config("cut", logs.path())).await;
    common::end_pod(&mut c, &pod).await;
}

#[tokio::test]
async fn a_killed_shim_is_detected_after_restart() {
    let Some((mut env, mut c)) = setup("a_killed_shim_is_detected_after_restart").await else {
        return;
    };
    let (pod, ctr) = sleeping_pod(&mut c, &env, "shimkill").await;
    drop(c);
    env.skiffd.kill();
    let shim = shim_pid(&env.skiffd.state, &pod);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(shim).unwrap()).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    env.skiffd.restart().unwrap();
    let mut c = env.skiffd.client().await;
    let s = status(&mut c, &ctr).await;
    assert_eq!(s.state, api::ContainerState::ContainerExited as i32);
    assert!(s.message.contains("shim"), "{s:?}");
    let p = c
        .runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        p.status.unwrap().state,
        api::PodSandboxState::SandboxNotready as i32
    );
    c.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
    // The orphaned container process was killed with its cgroup by runc delete, or
    // is at least not mounted anywhere of ours.
    assert_eq!(mounts_under(env.skiffd.dir()), Vec::<String>::new());
}

#[tokio::test]
async fn the_cli_drives_pods_from_crictl_json() {
    let Some((env, c)) = setup("the_cli_drives_pods_from_crictl_json").await else {
        return;
    };
    drop(c);
    let dir = env.skiffd.dir().to_path_buf();
    let logs = dir.join("cli-logs");
    std::fs::write(
        dir.join("pod.json"),
        format!(r#"{{"metadata": {{"name": "cli", "namespace": "default", "uid": "cli-uid"}}, "log_directory": "{}", "linux": {{}}}}"#, logs.display()),
    )
    .unwrap();
    std::fs::write(
        dir.join("ctr.json"),
        format!(r#"{{"metadata": {{"name": "web"}}, "image": {{"image": "{REGISTRY}/test/busybox:pods"}}, "command": ["sh", "-c", "echo from-cli; exec sleep 3600"], "log_path": "web.log", "linux": {{}}}}"#),
    )
    .unwrap();
    let skiff = |args: &[&str]| {
        let out = std::process::Command::new(common::skiff_bin())
            .arg("-r")
            .arg(&env.skiffd.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skiff {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let pod_json = dir.join("pod.json").display().to_string();
    let ctr_json = dir.join("ctr.json").display().to_string();
    let pod = skiff(&["runp", &pod_json]).trim().to_string();
    let ctr = skiff(&["create", &pod, &ctr_json, &pod_json])
        .trim()
        .to_string();
    skiff(&["start", &ctr]);
    assert!(skiff(&["ps", "-q"]).contains(&ctr));
    assert!(skiff(&["pods"]).contains("cli"));
    wait_for_log(&logs.join("web.log"), "from-cli");
    assert_eq!(skiff(&["logs", &ctr]), "from-cli\n");
    assert_eq!(skiff(&["exec", &ctr, "echo", "hi"]), "hi\n");
    let inspect: serde_json::Value = serde_json::from_str(&skiff(&["inspect", &ctr])).unwrap();
    assert_eq!(inspect["status"]["id"], ctr.as_str());
    let stats: serde_json::Value = serde_json::from_str(&skiff(&["stats", &ctr])).unwrap();
    assert_eq!(stats.as_array().map(Vec::len), Some(1));
    skiff(&["stop", "--stop-timeout", "1", &ctr]);
    skiff(&["rm", &ctr]);
    skiff(&["stopp", &pod]);
    skiff(&["rmp", &pod]);
    assert_eq!(skiff(&["pods", "-q"]).trim(), "");
}

async fn pod_ip(c: &mut CriClient, pod: &str) -> String {
    c.runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip
}

/// Links in skiffd's (test) network namespace whose names start with `sk`, except the bridge.
fn pod_links(env: &RegistryEnv) -> Vec<String> {
    let out = env
        .netns
        .command("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("sk") && n != "skiff0")
        .collect()
}

#[tokio::test]
async fn pods_on_the_bridge_reach_each_other_and_leave_nothing_behind() {
    let Some((env, mut c)) =
        setup("pods_on_the_bridge_reach_each_other_and_leave_nothing_behind").await
    else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let (cfg_a, cfg_b) = (pod_config("net-a", &logs), pod_config("net-b", &logs));
    let a = run_pod(&mut c, &cfg_a).await;
    let b = run_pod(&mut c, &cfg_b).await;
    let (ip_a, ip_b) = (pod_ip(&mut c, &a).await, pod_ip(&mut c, &b).await);
    assert!(
        ip_a.starts_with("10.88.") && ip_b.starts_with("10.88.") && ip_a != ip_b,
        "{ip_a} {ip_b}"
    );
    let ca = create(&mut c, &a, &cfg_a, ctr_config("a", &["sleep", "3600"]))
        .await
        .unwrap();
    let cb = create(&mut c, &b, &cfg_b, ctr_config("b", &["sleep", "3600"]))
        .await
        .unwrap();
    start(&mut c, &ca).await;
    start(&mut c, &cb).await;
    for target in [ip_b.as_str(), "10.88.0.1"] {
        let r = exec(&mut c, &ca, &["ping", "-c", "1", "-W", "3", target], 10)
            .await
            .unwrap();
        assert_eq!(
            r.exit_code,
            0,
            "ping {target}: {}",
            String::from_utf8_lossy(&r.stdout)
        );
    }
    let r = exec(
        &mut c,
        &cb,
        &["sh", "-c", "ip -o -4 addr show eth0; cat /etc/hosts"],
        10,
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains(&format!("{ip_b}/16")), "{text}");
    assert!(text.contains(&format!("{ip_b}\tnet-b-host")), "{text}");
    assert_eq!(pod_links(&env).len(), 2);
    let status = c
        .runtime
        .status(api::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let network = status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(network.status, "{network:?}");

    // Stopping releases the address: a new pod gets it again.
    c.runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: b.clone(),
        })
        .await
        .unwrap();
    // The veth pair goes with the pod's network namespace, which the kernel cleans
    // up off the Stop path (RemovePodSandbox makes sure): give it a moment.
    let start = Instant::now();
    while pod_links(&env).len() != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the stopped pod's veth is still there: {:?}",
            pod_links(&env)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = run_pod(&mut c, &pod_config("net-c", &logs)).await;
    assert_eq!(pod_ip(&mut c, &again).await, ip_b);
    for p in [&a, &b, &again] {
        c.runtime
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: p.to_string(),
            })
            .await
            .unwrap();
    }

    // Many pods created and removed leave no link, mount or address behind.
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(run_pod(&mut c, &pod_config(&format!("many-{i}"), &logs)).await);
    }
    let mut ips: Vec<String> = Vec::new();
    for id in &ids {
        ips.push(pod_ip(&mut c, id).await);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "addresses handed out twice");
    for id in ids {
        c.runtime
            .remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
    }
    assert_eq!(pod_links(&env), Vec::<String>::new());
    assert_eq!(mounts_under(env.skiffd.dir()), Vec::<String>::new());
    assert!(
        std::fs::read_dir(env.skiffd.state.join("ns"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
    let first = run_pod(&mut c, &pod_config("first-again", &logs)).await;
    assert_eq!(
        pod_ip(&mut c, &first).await,
        "10.88.0.2",
        "released addresses are reused lowest first"
    );
}

#[tokio::test]
async fn reopen_log_and_image_in_use_and_stats() {
    let Some((env, mut c)) = setup("reopen_log_and_image_in_use_and_stats").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config("reopen", &logs);
    let pod = run_pod(&mut c, &pod_cfg).await;
    let ctr = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done",
            ],
        ),
    )
    .await
    .unwrap();
    start(&mut c, &ctr).await;
    let log = logs.join("ticker.log");
    wait_for_log(&log, "line 2");
    // The kubelet rotates: rename, then ReopenContainerLog; the new file exists when the call returns.
    std::fs::rename(&log, logs.join("ticker.log.1")).unwrap();
    c.runtime
        .reopen_container_log(api::ReopenContainerLogRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap();
    assert!(
        log.exists(),
        "the new log file must exist when ReopenContainerLog returns"
    );
    wait_for_log(&log, "line");
    let old = std::fs::read_to_string(logs.join("ticker.log.1")).unwrap();
    assert!(old.contains("line 0"));

    // The image cannot be removed while a container uses it.
    let e = c
        .images
        .remove_image(api::RemoveImageRequest {
            image: Some(api::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&ctr), "{e:?}");

    // Stats: the running container uses memory and CPU; the pod has stats too.
    let s = c
        .runtime
        .container_stats(api::ContainerStatsRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let mem = s.memory.unwrap();
    assert!(mem.working_set_bytes.unwrap().value > 0, "{mem:?}");
    assert!(s.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    let ps = c
        .runtime
        .pod_sandbox_stats(api::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(ps.linux.unwrap().containers.len(), 1);

    // Events: a subscriber sees a stop and a delete.
    let mut events = c
        .runtime
        .get_container_events(api::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    c.runtime
        .remove_container(api::RemoveContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(ev.container_id, ctr);
        kinds.push(ev.container_event_type);
    }
    assert_eq!(
        kinds,
        vec![
            api::ContainerEventType::ContainerStoppedEvent as i32,
            api::ContainerEventType::ContainerDeletedEvent as i32
        ]
    );
    // Now the image can go.
    c.images
        .remove_image(api::RemoveImageRequest {
            image: Some(api::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    c.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn tty_containers_log_their_terminal_output() {
    let Some((env, mut c)) = setup("tty_containers_log_their_terminal_output").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config("tty", &logs);
    let pod = run_pod(&mut c, &pod_cfg).await;
    let mut cfg = ctr_config("term", &["sh", "-c", "tty; echo on-a-terminal"]);
    cfg.tty = true;
    let ctr = create(&mut c, &pod, &pod_cfg, cfg).await.unwrap();
    start(&mut c, &ctr).await;
    let s = wait_state(&mut c, &ctr, api::ContainerState::ContainerExited).await;
    assert_eq!(s.exit_code, 0, "{s:?}");
    let text = wait_for_log(&logs.join("term.log"), "on-a-terminal");
    assert!(text.contains(" stdout F /dev/pts/0"), "{text}");
    c.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn image_volumes_are_mounted_read_only_and_pin_their_image() {
    let Some((env, mut c)) = setup("image_volumes_are_mounted_read_only").await else {
        return;
    };
    // A second image, only used as a volume.
    let data = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .cmd(["sh"])
        .env("DATA", "1")
        .build();
    env.push("test/data", "v1", &data);
    let data_ref = format!("{REGISTRY}/test/data:v1");
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config("imgvol", &logs);
    let pod = run_pod(&mut c, &pod_cfg).await;
    let volume = |image: &str| api::Mount {
        container_path: "/data".into(),
        readonly: true,
        image: Some(api::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Not pulled yet: NotFound, nothing left behind.
    let mut cfg = ctr_config("vol", &["sleep", "3600"]);
    cfg.mounts = vec![volume(&data_ref)];
    let e = create(&mut c, &pod, &pod_cfg, cfg.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("test/data"), "{e:?}");
    // host_path and image together are refused.
    let mut both = cfg.clone();
    both.mounts[0].host_path = "/tmp".into();
    let e = create(&mut c, &pod, &pod_cfg, both).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // An image volume is read-only (KEP 4639): a writable one is refused.
    let mut writable = cfg.clone();
    writable.mounts[0].readonly = false;
    let e = create(&mut c, &pod, &pod_cfg, writable).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("readonly"), "{e:?}");

    common::pull(&mut c, &data_ref).await;
    // Sub paths: escaping ones are refused by name, a missing one at create, and
    // symlinks inside the image resolve inside it (busybox's /etc/mtab -> /proc/…).
    for bad in ["../etc", "/etc", "etc/../../x"] {
        let mut sub = cfg.clone();
        sub.mounts[0].image_sub_path = bad.into();
        let e = create(&mut c, &pod, &pod_cfg, sub).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("image_sub_path"), "{e:?}");
    }
    let mut missing = cfg.clone();
    missing.mounts[0].image_sub_path = "not-there".into();
    let e = create(&mut c, &pod, &pod_cfg, missing).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not-there"), "{e:?}");
    let mut sub = ctr_config("volsub", &["sleep", "3600"]);
    sub.mounts = vec![volume(&data_ref)];
    sub.mounts[0].image_sub_path = "etc".into();
    let sub_ctr = create(&mut c, &pod, &pod_cfg, sub)
        .await
        .expect("create with an image volume sub path");
    start(&mut c, &sub_ctr).await;
    let r = exec(&mut c, &sub_ctr, &["cat", "/data/passwd"], 10)
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "the sub path is the volume's root: {r:?}");
    c.runtime
        .remove_container(api::RemoveContainerRequest {
            container_id: sub_ctr,
        })
        .await
        .unwrap();
    let ctr = create(&mut c, &pod, &pod_cfg, cfg)
        .await
        .expect("create with an image volume");
    start(&mut c, &ctr).await;
    let r = exec(&mut c, &ctr, &["cat", "/data/etc/passwd"], 10)
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("root:"),
        "{r:?}"
    );
    let r = exec(&mut c, &ctr, &["touch", "/data/new"], 10)
        .await
        .unwrap();
    assert_ne!(r.exit_code, 0, "the volume is read-only: {r:?}");
    // The status reports the mount as asked for.
    let s = status(&mut c, &ctr).await;
    assert_eq!(s.mounts.len(), 1, "{:?}", s.mounts);
    assert_eq!(
        s.mounts[0].image.as_ref().map(|i| i.image.as_str()),
        Some(data_ref.as_str())
    );
    // … with the digest of the image it mounted (ImageSpec.image_ref, KEP 5365).
    let image_id = c
        .images
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: data_ref.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap()
        .id;
    assert_eq!(
        s.mounts[0].image.as_ref().map(|i| i.image_ref.as_str()),
        Some(image_id.as_str())
    );
    // The volume's image is in use.
    let e = c
        .images
        .remove_image(api::RemoveImageRequest {
            image: Some(api::ImageSpec {
                image: data_ref.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    // Removing the container unmounts the volume; then the image can go.
    c.runtime
        .remove_container(api::RemoveContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&ctr),
        "a mount of {ctr} is left:\n{mountinfo}"
    );
    c.images
        .remove_image(api::RemoveImageRequest {
            image: Some(api::ImageSpec {
                image: data_ref,
                ..Default::default()
            }),
        })
        .await
        .expect("the image is free again");
}

/// What CRI 1.33-1.36 added: stop_signal, UpdatePodSandboxResources, the Stream* list
/// RPCs; and hostnames at and past the kernel's limit.
#[tokio::test]
async fn cri_1_36_additions() {
    let Some((env, mut c)) = setup("cri_1_36_additions").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    // A pod name longer than a hostname may be, and no hostname: the node's is used.
    let mut pod_cfg = pod_config(&"n".repeat(200), &logs);
    pod_cfg.hostname.clear();
    let pod = run_pod(&mut c, &pod_cfg).await;
    // A hostname past the kernel's 64 bytes is refused naming the field; 64 is fine.
    let mut long = pod_config("longhost", &logs);
    long.hostname = "h".repeat(65);
    let e = c
        .runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(long.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("config.hostname"), "{e:?}");
    long.hostname = "h".repeat(64);
    let long_pod = run_pod(&mut c, &long).await;

    // stop_signal: the container traps SIGUSR1 and exits 7 on it.
    let trap = "trap 'exit 7' USR1; echo ready; while true; do sleep 0.1; done";
    let mut cfg = ctr_config("usr1", &["sh", "-c", trap]);
    cfg.stop_signal = api::Signal::Sigusr1 as i32;
    let ctr = create(&mut c, &pod, &pod_cfg, cfg).await.unwrap();
    start(&mut c, &ctr).await;
    let host = exec(&mut c, &ctr, &["hostname"], 10).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&host.stdout).trim(),
        rustix::system::uname().nodename().to_string_lossy(),
        "a pod without a hostname gets the node's"
    );
    wait_for_log(&logs.join("usr1.log"), "ready");
    assert_eq!(
        status(&mut c, &ctr).await.stop_signal,
        api::Signal::Sigusr1 as i32
    );
    c.runtime
        .stop_container(api::StopContainerRequest {
            container_id: ctr.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
    let s = status(&mut c, &ctr).await;
    assert_eq!(s.exit_code, 7, "stopped with SIGUSR1: {s:?}");
    // Without one, the status names the signal that will be used (the image's, else TERM).
    let plain = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config("plain", &["sleep", "60"]),
    )
    .await
    .unwrap();
    assert_eq!(
        status(&mut c, &plain).await.stop_signal,
        api::Signal::Sigterm as i32
    );
    let mut bad = ctr_config("badsig", &["true"]);
    bad.stop_signal = 99;
    let e = create(&mut c, &pod, &pod_cfg, bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("stop_signal"), "{e:?}");

    // UpdatePodSandboxResources: recorded in the pod's config; unknown pods NotFound.
    let resources = api::LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 256 << 20,
        ..Default::default()
    };
    c.runtime
        .update_pod_sandbox_resources(api::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.clone(),
            overhead: None,
            resources: Some(resources.clone()),
        })
        .await
        .unwrap();
    let info = c
        .runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    assert_eq!(
        info["config"]["linux"]["resources"]["memory_limit_in_bytes"],
        256 << 20,
        "{info}"
    );
    let e = c
        .runtime
        .update_pod_sandbox_resources(api::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "f".repeat(64),
            overhead: None,
            resources: Some(resources),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // Stream*: the same items as the List RPCs, each response at least one item.
    let pods = drain(
        c.runtime
            .stream_pod_sandboxes(api::StreamPodSandboxesRequest { filter: None })
            .await,
        |m| m.pod_sandboxes,
    )
    .await;
    assert_eq!(
        sorted(pods.into_iter().map(|p| p.id)),
        sorted([pod.clone(), long_pod.clone()])
    );
    let ctrs = drain(
        c.runtime
            .stream_containers(api::StreamContainersRequest { filter: None })
            .await,
        |m| m.containers,
    )
    .await;
    assert_eq!(
        sorted(ctrs.into_iter().map(|c| c.id)),
        sorted([ctr.clone(), plain.clone()])
    );
    let images = drain(
        c.images
            .stream_images(api::StreamImagesRequest { filter: None })
            .await,
        |m| m.images,
    )
    .await;
    assert_eq!(images.len(), 1);
    let stats = drain(
        c.runtime
            .stream_container_stats(api::StreamContainerStatsRequest { filter: None })
            .await,
        |m| m.container_stats,
    )
    .await;
    assert_eq!(stats.len(), 2);
    let metrics = drain(
        c.runtime
            .stream_pod_sandbox_metrics(api::StreamPodSandboxMetricsRequest {})
            .await,
        |m| m.pod_sandbox_metrics,
    )
    .await;
    assert_eq!(metrics.len(), 2, "one entry per ready pod");
    let mine = metrics.iter().find(|m| m.pod_sandbox_id == pod).unwrap();
    assert!(
        mine.metrics
            .iter()
            .any(|m| m.name == "container_network_receive_bytes_total"
                && m.label_values.last().map(String::as_str) == Some("eth0")),
        "{:?}",
        mine.metrics
    );
    for id in [pod, long_pod] {
        c.runtime
            .remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
    }
}

/// Every item of a Stream* response stream; each response must carry at least one.
async fn drain<M, T>(
    r: Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>,
    items: impl Fn(M) -> Vec<T>,
) -> Vec<T> {
    let mut s = r.expect("Stream* call").into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.expect("stream message") {
        let got = items(m);
        assert!(!got.is_empty(), "a response carries at least one item");
        out.extend(got);
    }
    out
}

fn sorted(v: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().collect();
    v.sort();
    v
}

/// A pod `name` with one running container `victim` (`sleep 3600`): (pod, container).
async fn sleeping_pod(c: &mut CriClient, env: &RegistryEnv, name: &str) -> (String, String) {
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config(name, &logs);
    let pod = run_pod(c, &pod_cfg).await;
    let ctr = create(c, &pod, &pod_cfg, ctr_config("victim", &["sleep", "3600"]))
        .await
        .unwrap();
    start(c, &ctr).await;
    (pod, ctr)
}

/// The pid in a container's status info.
async fn container_pid(c: &mut CriClient, id: &str) -> u32 {
    let info = c
        .runtime
        .container_status(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    u32::try_from(info["pid"].as_u64().unwrap()).unwrap()
}

async fn pod_state(c: &mut CriClient, pod: &str) -> i32 {
    c.runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .state
}

/// A pod with a running container whose shim then gets `signal`: skiffd notices while it
/// runs, reports the container exited (reason Unknown, a message naming the shim), kills
/// the container and the pause, releases cgroups and mounts, and the kubelet's Stop and
/// Remove calls succeed. Returns how long the notice took.
async fn shim_loss(test: &str, signal: rustix::process::Signal) -> Option<Duration> {
    let (env, mut c) = setup_with(test, "[runtime]\nshim_liveness_timeout = 3\n").await?;
    let (pod, ctr) = sleeping_pod(&mut c, &env, "shimloss").await;
    let victim = container_pid(&mut c, &ctr).await;
    let shim = shim_pid(&env.skiffd.state, &pod);
    let cgroup = format!("/skiff/{pod}/{ctr}");
    assert!(pid_alive(victim));
    let sent = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(shim).unwrap()).unwrap(),
        signal,
    )
    .unwrap();
    let s = wait_state(&mut c, &ctr, api::ContainerState::ContainerExited).await;
    let noticed = sent.elapsed();
    assert_eq!(s.reason, "Unknown", "{s:?}");
    assert!(s.message.contains("shim"), "{s:?}");
    // The pod turns NotReady once its resources are released (right after).
    let deadline = Instant::now() + Duration::from_secs(10);
    while pod_state(&mut c, &pod).await != api::PodSandboxState::SandboxNotready as i32 {
        assert!(Instant::now() < deadline, "the pod stays ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing of the pod runs on: container, pause and shim are gone, and so are the
    // container's cgroup and mounts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (pid_alive(victim) || pid_alive(shim)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !pid_alive(victim),
        "the container's process is still running"
    );
    assert!(!pid_alive(shim), "the shim is still there");
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(cgroup.trim_start_matches('/'))
            .exists()
            && !Path::new("/sys/fs/cgroup")
                .join(cgroup.trim_start_matches('/'))
                .exists(),
        "the container's cgroup is left"
    );
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&ctr),
        "the container's rootfs is still mounted"
    );
    // ExecSync says why; Stop and Remove succeed.
    let e = exec(&mut c, &ctr, &["true"], 5).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    c.runtime
        .stop_container(api::StopContainerRequest {
            container_id: ctr.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    c.runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    c.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
    assert_eq!(mounts_under(env.skiffd.dir()), Vec::<String>::new());
    Some(noticed)
}

#[tokio::test]
async fn a_shim_killed_while_skiffd_runs_is_noticed_at_once() {
    let Some(noticed) = shim_loss(
        "a_shim_killed_while_skiffd_runs_is_noticed_at_once",
        rustix::process::Signal::KILL,
    )
    .await
    else {
        return;
    };
    // The pidfd tells at once; well under the liveness timeout (3 s here, 30 by default).
    assert!(
        noticed < Duration::from_secs(2),
        "noticed after {noticed:?}"
    );
}

#[tokio::test]
async fn a_stopped_shim_is_killed_after_the_liveness_timeout() {
    let Some(noticed) = shim_loss(
        "a_stopped_shim_is_killed_after_the_liveness_timeout",
        rustix::process::Signal::STOP,
    )
    .await
    else {
        return;
    };
    assert!(
        noticed >= Duration::from_secs(2),
        "noticed after {noticed:?}"
    );
}

/// The value of the first series of `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_endpoint_reports_cri_calls_pulls_pods_and_the_process() {
    const ADDR: &str = "127.0.0.1:19090";
    let Some((env, mut c)) = setup_with(
        "metrics_endpoint",
        &format!("[metrics]\naddress = \"{ADDR}\"\n"),
    )
    .await
    else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    // Scrapes go on while pods start: every one answers.
    let env = Arc::new(env);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let (env, stop) = (env.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = common::scrape(&env, ADDR, "/metrics");
                assert!(text.starts_with("HTTP/1.0 200"), "{text}");
                n += 1;
            }
            n
        })
    };
    let mut pods = Vec::new();
    for i in 0..10 {
        let pod_cfg = pod_config(&format!("metrics{i}"), &logs);
        let pod = run_pod(&mut c, &pod_cfg).await;
        let ctr = create(&mut c, &pod, &pod_cfg, ctr_config("m", &["sleep", "3600"]))
            .await
            .unwrap();
        start(&mut c, &ctr).await;
        pods.push(pod);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.join().unwrap();
    assert!(scrapes > 0);
    let text = common::scrape(&env, ADDR, "/metrics");
    let get = |name: &str, labels: &str| {
        metric(&text, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{text}"))
    };
    assert_eq!(
        get(
            "grpc_server_handled_total",
            r#"grpc_method="RunPodSandbox""#
        ),
        10.0
    );
    assert!(
        get(
            "grpc_server_handling_seconds_count",
            r#"grpc_method="StartContainer""#
        ) >= 10.0
    );
    assert_eq!(get("skiff_image_pulls_total", r#"result="ok""#), 1.0);
    assert!(get("skiff_image_pull_layer_bytes_total", "") > 0.0);
    assert!(get("skiff_image_pull_stage_seconds_total", r#"stage="layers""#) > 0.0);
    assert_eq!(get("skiff_pod_sandboxes", r#"state="ready""#), 10.0);
    assert_eq!(get("skiff_containers", r#"state="running""#), 10.0);
    assert_eq!(get("skiff_shims", ""), 10.0);
    assert_eq!(get("skiff_network_setup_seconds_count", ""), 10.0);
    assert_eq!(get("skiff_unpack_engine_info", "engine="), 1.0);
    assert!(get("process_resident_memory_bytes", "") > 1e6);
    assert!(get("process_open_fds", "") > 3.0);
    // A failed call is counted with its code.
    let _ = c
        .runtime
        .container_status(api::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await;
    let text = common::scrape(&env, ADDR, "/metrics");
    assert_eq!(
        metric(
            &text,
            "grpc_server_handled_total",
            r#"grpc_code="NotFound""#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(common::scrape(&env, ADDR, "/other").starts_with("HTTP/1.0 404"));
    for pod in pods {
        c.runtime
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
            .unwrap();
    }
    let text = common::scrape(&env, ADDR, "/metrics");
    assert_eq!(
        metric(&text, "skiff_pod_sandboxes", r#"state="ready""#),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "skiff_network_teardown_seconds_count", ""),
        Some(10.0)
    );
}

/// skiffd killed after asking the shim to start a container and before recording
/// it (here: the shim is stopped while the request waits in its socket): after the
/// restart it is recorded as started, and its exit is its own.
#[tokio::test]
async fn a_start_cut_by_a_skiffd_crash_is_recorded_at_restart() {
    let Some((mut env, mut c)) = setup("start_cut_by_a_crash").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config("cut-start", &logs);
    let pod = run_pod(&mut c, &pod_cfg).await;
    let ctr = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config("cut", &["sh", "-c", "exit 7"]),
    )
    .await
    .expect("CreateContainer");
    let shim =
        rustix::process::Pid::from_raw(i32::try_from(shim_pid(&env.skiffd.state, &pod)).unwrap())
            .unwrap();
    rustix::process::kill_process(shim, rustix::process::Signal::STOP).unwrap();
    let starting = {
        let (mut c2, ctr) = (env.skiffd.client().await, ctr.clone());
        tokio::spawn(async move {
            c2.runtime
                .start_container(api::StartContainerRequest { container_id: ctr })
                .await
        })
    };
    // The request reaches the stopped shim's socket; then skiffd dies waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.skiffd.kill();
    assert!(starting.await.unwrap().is_err(), "the call was cut");
    rustix::process::kill_process(shim, rustix::process::Signal::CONT).unwrap();
    env.skiffd.restart().expect("restart skiffd");
    let mut c = env.skiffd.client().await;
    // It ran: its exit is its own code, not a StartError, and a second
    // StartContainer is refused without changing that.
    let s = wait_state(&mut c, &ctr, api::ContainerState::ContainerExited).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"), "{s:?}");
    assert!(s.started_at > 0 && s.started_at <= s.finished_at, "{s:?}");
    let again = c
        .runtime
        .start_container(api::StartContainerRequest {
            container_id: ctr.clone(),
        })
        .await;
    assert!(again.is_err());
    assert_eq!(status(&mut c, &ctr).await.exit_code, 7);
    common::end_pod(&mut c, &pod).await;
}
