//! End-to-end: NRI plugins (skiff's test plugin, over skiffd's real NRI socket) seeing
//! and changing pods and containers that real runc runs. Needs root.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::RegistryEnv;
use skiff_cri::api;
use skiff_cri::client::CriClient;
use skiff_nri::api as nri;
use skiff_nri::stub::{Action, Connection, Recorder};
use skiff_nri::{Event, EventMask, PluginId};
use skiff_testkit::image::{Compression, ImageBuilder, busybox_layer};

const IMAGE: &str = "127.0.0.1:5000/test/busybox:nri";

async fn setup(test: &str, extra: &str) -> Option<(RegistryEnv, CriClient)> {
    let env = common::start_with_registry(test, extra, &[])?;
    let image = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .cmd(["sh"])
        .build();
    env.push("test/busybox", "nri", &image);
    let mut c = env.skiffd.client().await;
    common::pull(&mut c, IMAGE).await;
    Some((env, c))
}

fn id(idx: &str, name: &str) -> PluginId {
    PluginId {
        idx: idx.into(),
        name: name.into(),
    }
}

/// Connect `plugin` to skiffd's NRI socket and wait until it is synchronized.
async fn plugin(env: &RegistryEnv, pid: PluginId, r: Arc<Recorder>) -> Connection {
    let conn = Connection::dial(&env.skiffd.nri_socket, &pid, r.clone())
        .await
        .expect("connect to skiffd's NRI socket");
    for _ in 0..500 {
        if r.synced().is_some() {
            return conn;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the plugin was not synchronized");
}

fn pod_config(name: &str, logs: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            namespace: "nri".into(),
            uid: format!("{name}-uid"),
            attempt: 0,
        }),
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
        linux: Some(api::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

async fn run_pod(c: &mut CriClient, cfg: &api::PodSandboxConfig) -> Result<String, tonic::Status> {
    c.runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
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

async fn stop(c: &mut CriClient, id: &str) {
    c.runtime
        .stop_container(api::StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
}

async fn remove(c: &mut CriClient, id: &str) {
    c.runtime
        .remove_container(api::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .expect("RemoveContainer");
}

async fn status(c: &mut CriClient, id: &str) -> (api::ContainerStatus, serde_json::Value) {
    let r = c
        .runtime
        .container_status(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
    (r.status.unwrap(), info)
}

async fn pod_ids(c: &mut CriClient) -> Vec<String> {
    c.runtime
        .list_pod_sandbox(api::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect()
}

async fn container_names(c: &mut CriClient, pod: &str) -> Vec<String> {
    c.runtime
        .list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                pod_sandbox_id: pod.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.metadata.unwrap_or_default().name)
        .collect()
}

fn events_of(r: &Recorder, id: &str) -> Vec<Event> {
    r.seen()
        .into_iter()
        .filter(|s| s.pod == id || s.container == id)
        .map(|s| s.event)
        .filter(|e| *e != Event::ValidateContainerAdjustment)
        .collect()
}

#[tokio::test]
async fn a_plugin_sees_every_event_in_order_and_its_adjustments_reach_the_container() {
    let Some((env, mut c)) = setup("nri_lifecycle", "").await else {
        return;
    };
    let r = Recorder::new(EventMask::all());
    r.adjust_with(nri::ContainerAdjustment {
        annotations: [("nri.skiff.test/adjusted".to_string(), "yes".to_string())].into(),
        env: vec![nri::KeyValue {
            key: "FROM_NRI".into(),
            value: "hello-from-nri".into(),
        }],
        mounts: vec![nri::Mount {
            destination: "/nri-scratch".into(),
            r#type: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["nosuid".into(), "size=1m".into()],
        }],
        ..Default::default()
    });
    let _p = plugin(&env, id("10", "recorder"), r.clone()).await;
    let logs = tempfile::tempdir().unwrap();
    let pod_cfg = pod_config("nri-life", logs.path());
    let pod = run_pod(&mut c, &pod_cfg).await.unwrap();
    let ctr = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config(
            "main",
            &["sh", "-c", "echo env=$FROM_NRI; grep -q ' /nri-scratch tmpfs' /proc/mounts && echo mounted; sleep 1000"],
        ),
    )
    .await
    .unwrap();
    let (_, info) = status(&mut c, &ctr).await;
    let spec = &info["runtimeSpec"];
    assert_eq!(spec["annotations"]["nri.skiff.test/adjusted"], "yes");
    assert!(
        spec["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "FROM_NRI=hello-from-nri"),
        "{spec}"
    );
    start(&mut c, &ctr).await;
    let log = logs.path().join("main.log");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("mounted") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("env=hello-from-nri") && text.contains("mounted"),
        "{text}"
    );
    c.runtime
        .update_container_resources(api::UpdateContainerResourcesRequest {
            container_id: ctr.clone(),
            linux: Some(api::LinuxContainerResources {
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    stop(&mut c, &ctr).await;
    stop(&mut c, &ctr).await; // a second stop is no second event
    remove(&mut c, &ctr).await;
    common::end_pod(&mut c, &pod).await;
    // A second stop of the pod is no event either.
    c.runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    use Event::*;
    assert_eq!(
        events_of(&r, &ctr),
        vec![
            CreateContainer,
            PostCreateContainer,
            StartContainer,
            PostStartContainer,
            UpdateContainer,
            PostUpdateContainer,
            StopContainer,
            RemoveContainer
        ]
    );
    let pod_events: Vec<_> = r
        .seen()
        .into_iter()
        .filter(|s| s.pod == pod && s.container.is_empty())
        .map(|s| s.event)
        .collect();
    assert_eq!(
        pod_events,
        vec![RunPodSandbox, StopPodSandbox, RemovePodSandbox]
    );
    let all: Vec<_> = r.seen().into_iter().map(|s| s.event).collect();
    let at = |e| all.iter().position(|x| *x == e).unwrap();
    assert!(at(RunPodSandbox) < at(CreateContainer));
    assert!(at(RemoveContainer) < at(StopPodSandbox));
    // The plugin saw the container's name and the pod's metadata.
    let created = r
        .seen()
        .into_iter()
        .find(|s| s.event == CreateContainer)
        .unwrap();
    assert_eq!(created.container_name, "main");
    assert_eq!(created.pod_name, "nri-life");
    assert!(!created.detail.unwrap().args.is_empty());
}

#[tokio::test]
async fn a_container_that_exits_by_itself_is_reported_stopped_once() {
    let Some((env, mut c)) = setup("nri_self_exit", "").await else {
        return;
    };
    let r = Recorder::new(EventMask::all());
    let _p = plugin(&env, id("10", "recorder"), r.clone()).await;
    let logs = tempfile::tempdir().unwrap();
    let pod_cfg = pod_config("nri-exit", logs.path());
    let pod = run_pod(&mut c, &pod_cfg).await.unwrap();
    let ctr = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config("quick", &["sh", "-c", "exit 3"]),
    )
    .await
    .unwrap();
    start(&mut c, &ctr).await;
    let stopped = r
        .wait_for(Duration::from_secs(10), |s| {
            s.iter()
                .any(|e| e.event == Event::StopContainer && e.container == ctr)
        })
        .await;
    assert!(
        stopped.is_ok(),
        "no StopContainer for an exited container: {stopped:?}"
    );
    let (st, _) = status(&mut c, &ctr).await;
    assert_eq!(st.exit_code, 3);
    stop(&mut c, &ctr).await;
    remove(&mut c, &ctr).await;
    common::end_pod(&mut c, &pod).await;
    let stops = events_of(&r, &ctr)
        .into_iter()
        .filter(|e| *e == Event::StopContainer)
        .count();
    assert_eq!(stops, 1);
}

#[tokio::test]
async fn objects_are_hidden_while_their_hooks_run_and_a_refusal_leaves_nothing() {
    const METRICS: &str = "127.0.0.1:19091";
    let Some((env, mut c)) = setup(
        "nri_hidden",
        &format!("[metrics]\naddress = \"{METRICS}\"\n"),
    )
    .await
    else {
        return;
    };
    let r = Recorder::new(EventMask::all());
    let _p = plugin(&env, id("10", "gate"), r.clone()).await;
    let logs = tempfile::tempdir().unwrap();
    let pod_cfg = pod_config("nri-hidden", logs.path());

    // RunPodSandbox blocked in the hook: the pod is not listed, its containers fail.
    r.on(Event::RunPodSandbox, Action::Block);
    let mut c2 = env.skiffd.client().await;
    let cfg2 = pod_cfg.clone();
    let running = tokio::spawn(async move { run_pod(&mut c2, &cfg2).await });
    let seen = r
        .wait_for(Duration::from_secs(10), |s| {
            s.iter().any(|e| e.event == Event::RunPodSandbox)
        })
        .await
        .unwrap();
    let hidden = seen
        .iter()
        .find(|e| e.event == Event::RunPodSandbox)
        .unwrap()
        .pod
        .clone();
    assert!(!pod_ids(&mut c).await.contains(&hidden));
    let e = c
        .runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: hidden.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        create(&mut c, &hidden, &pod_cfg, ctr_config("early", &["true"]))
            .await
            .is_err()
    );
    r.clear(Event::RunPodSandbox);
    r.release();
    let pod = running.await.unwrap().unwrap();
    assert_eq!(pod, hidden);
    assert!(pod_ids(&mut c).await.contains(&pod));

    // A refused CreateContainer: an error naming the plugin; no container, no files,
    // no mount; the name is free again.
    r.on(
        Event::CreateContainer,
        Action::Fail("no containers here".into()),
    );
    let e = create(&mut c, &pod, &pod_cfg, ctr_config("refused", &["true"]))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("10-gate") && e.message().contains("no containers here"),
        "{e:?}"
    );
    assert!(container_names(&mut c, &pod).await.is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(env.skiffd.state.join("containers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(env.skiffd.state.join("containers").to_str().unwrap()),
        "a rootfs is still mounted"
    );
    // The metrics count the refusal and time the plugin's answers.
    let text = common::scrape(&env, METRICS, "/metrics");
    assert!(
        text.contains(
            r#"skiff_nri_plugin_calls_total{event="CreateContainer",result="refused"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"skiff_nri_plugin_call_seconds_count{plugin="10-gate",event="RunPodSandbox"}"#
        ),
        "{text}"
    );
    r.clear(Event::CreateContainer);
    let ctr = create(&mut c, &pod, &pod_cfg, ctr_config("refused", &["true"]))
        .await
        .expect("the name is free after a refused creation");
    remove(&mut c, &ctr).await;

    // A refused RunPodSandbox leaves nothing and the same pod can be run again.
    r.on(Event::RunPodSandbox, Action::Fail("not now".into()));
    let pod_cfg3 = pod_config("nri-refused", logs.path());
    let e = run_pod(&mut c, &pod_cfg3).await.unwrap_err();
    assert!(e.message().contains("not now"), "{e:?}");
    assert_eq!(pod_ids(&mut c).await, vec![pod.clone()]);
    let refused = r
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.event == Event::RunPodSandbox && s.pod_name == "nri-refused")
        .expect("the plugin saw the refused pod")
        .pod;
    for ctrl in ["memory", "pids", ""] {
        let cg = std::path::Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join("skiff")
            .join(&refused);
        assert!(!cg.exists(), "{} is left behind", cg.display());
    }
    assert!(!env.skiffd.state.join("pods").join(&refused).exists());
    r.clear(Event::RunPodSandbox);
    let pod3 = run_pod(&mut c, &pod_cfg3).await.unwrap();
    common::end_pod(&mut c, &pod3).await;
    common::end_pod(&mut c, &pod).await;
}

#[tokio::test]
async fn a_plugin_that_hangs_or_dies_is_dropped_and_pods_go_on() {
    let Some((env, mut c)) = setup("nri_misbehave", "[nri]\nrequest_timeout_ms = 500\n").await
    else {
        return;
    };
    let hang = Recorder::new(EventMask::all());
    hang.on(Event::CreateContainer, Action::Block);
    let hung = plugin(&env, id("10", "hang"), hang.clone()).await;
    let logs = tempfile::tempdir().unwrap();
    let pod_cfg = pod_config("nri-hang", logs.path());
    let pod = run_pod(&mut c, &pod_cfg).await.unwrap();
    let t = std::time::Instant::now();
    let ctr = create(&mut c, &pod, &pod_cfg, ctr_config("goes-on", &["true"]))
        .await
        .expect("creation goes on without the hung plugin");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    tokio::time::timeout(Duration::from_secs(5), hung.closed())
        .await
        .expect("the hung plugin is disconnected");
    hang.release();
    // A plugin that disconnects in the middle of a hook.
    let quit = Recorder::new(EventMask::all());
    quit.on(Event::StartContainer, Action::Block);
    let quitter = plugin(&env, id("20", "quitter"), quit.clone()).await;
    // Synchronized is not yet registered: skiffd adds the plugin once it has the reply.
    // A pod the plugin sees proves it receives events (the container start must reach it).
    let probe_cfg = pod_config("nri-probe", logs.path());
    let probe = run_pod(&mut c, &probe_cfg).await.unwrap();
    quit.wait_for(Duration::from_secs(10), |s| {
        s.iter()
            .any(|e| e.event == Event::RunPodSandbox && e.pod == probe)
    })
    .await
    .unwrap();
    common::end_pod(&mut c, &probe).await;
    let mut c2 = env.skiffd.client().await;
    let id2 = ctr.clone();
    let starting = tokio::spawn(async move { start(&mut c2, &id2).await });
    quit.wait_for(Duration::from_secs(10), |s| {
        s.iter().any(|e| e.event == Event::StartContainer)
    })
    .await
    .unwrap();
    drop(quitter);
    tokio::time::timeout(Duration::from_secs(5), starting)
        .await
        .expect("the start goes on when the plugin goes")
        .unwrap();
    remove(&mut c, &ctr).await;
    common::end_pod(&mut c, &pod).await;
}

#[tokio::test]
async fn a_late_plugin_learns_every_container_including_ones_made_while_it_synchronizes() {
    let Some((env, mut c)) = setup("nri_sync", "").await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let pod_cfg = pod_config("nri-sync", logs.path());
    let pod = run_pod(&mut c, &pod_cfg).await.unwrap();
    let before = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config("before", &["sleep", "1000"]),
    )
    .await
    .unwrap();
    start(&mut c, &before).await;
    let late = Recorder::new(EventMask::all());
    late.on_sync(Action::Block);
    let socket = env.skiffd.nri_socket.clone();
    let l2 = late.clone();
    let joining =
        tokio::spawn(async move { Connection::dial(&socket, &id("10", "late"), l2).await });
    for _ in 0..500 {
        if late.synced().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let synced = late.synced().expect("Synchronize was called");
    assert!(
        synced.0.contains(&pod) && synced.1.contains(&before),
        "{synced:?}"
    );
    // Created while the plugin is synchronizing.
    let mut c2 = env.skiffd.client().await;
    let cfg2 = pod_cfg.clone();
    let pod2 = pod.clone();
    let during = tokio::spawn(async move {
        create(
            &mut c2,
            &pod2,
            &cfg2,
            ctr_config("during", &["sleep", "1000"]),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    late.release();
    let _conn = joining.await.unwrap().unwrap();
    let during = during.await.unwrap().unwrap();
    let learned = late
        .wait_for(Duration::from_secs(10), |s| {
            s.iter()
                .any(|e| e.event == Event::CreateContainer && e.container == during)
        })
        .await;
    let in_sync = late.synced().unwrap().1.contains(&during);
    assert!(
        in_sync || learned.is_ok(),
        "the container made during Synchronize was lost"
    );
    for id in [&before, &during] {
        remove(&mut c, id).await;
    }
    common::end_pod(&mut c, &pod).await;
}

#[tokio::test]
async fn conflicting_adjustments_fail_the_creation_naming_both_plugins() {
    let Some((env, mut c)) = setup("nri_conflict", "").await else {
        return;
    };
    let adj = |v: &str| nri::ContainerAdjustment {
        env: vec![nri::KeyValue {
            key: "OWNER".into(),
            value: v.into(),
        }],
        ..Default::default()
    };
    let a = Recorder::new(EventMask::all());
    a.adjust_with(adj("a"));
    let b = Recorder::new(EventMask::all());
    b.adjust_with(adj("b"));
    let _a = plugin(&env, id("10", "first"), a).await;
    let _b = plugin(&env, id("20", "second"), b).await;
    let logs = tempfile::tempdir().unwrap();
    let pod_cfg = pod_config("nri-conflict", logs.path());
    let pod = run_pod(&mut c, &pod_cfg).await.unwrap();
    let e = create(&mut c, &pod, &pod_cfg, ctr_config("x", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("10-first") && e.message().contains("20-second"),
        "{e:?}"
    );
    assert!(container_names(&mut c, &pod).await.is_empty());
    common::end_pod(&mut c, &pod).await;
}

#[tokio::test]
async fn plugins_update_and_evict_running_containers() {
    let Some((env, mut c)) = setup("nri_update", "").await else {
        return;
    };
    let r = Recorder::new(EventMask::all());
    let conn = plugin(&env, id("10", "policy"), r.clone()).await;
    let logs = tempfile::tempdir().unwrap();
    let pod_cfg = pod_config("nri-update", logs.path());
    let pod = run_pod(&mut c, &pod_cfg).await.unwrap();
    let ctr = create(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config("target", &["sleep", "1000"]),
    )
    .await
    .unwrap();
    start(&mut c, &ctr).await;
    let limit = 96 << 20;
    let reply = conn
        .runtime
        .update_containers(
            skiff_nri::ttrpc::context::with_timeout(10_000_000_000),
            &nri::UpdateContainersRequest {
                update: vec![
                    nri::ContainerUpdate {
                        container_id: ctr.clone(),
                        linux: Some(nri::LinuxContainerUpdate {
                            resources: Some(nri::LinuxResources {
                                memory: Some(nri::LinuxMemory {
                                    limit: Some(nri::OptionalInt64 { value: limit }),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                        }),
                        ignore_failure: false,
                    },
                    nri::ContainerUpdate {
                        container_id: "no-such-container".into(),
                        ..Default::default()
                    },
                ],
                evict: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(reply.failed.len(), 1);
    assert_eq!(reply.failed[0].container_id, "no-such-container");
    let (_, info) = status(&mut c, &ctr).await;
    assert_eq!(
        info["runtimeSpec"]["linux"]["resources"]["memory"]["limit"],
        limit
    );
    let cg = info["cgroupsPath"].as_str().unwrap().to_string();
    let v1 = format!("/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes");
    let v2 = format!("/sys/fs/cgroup{cg}/memory.max");
    let set = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .expect("the container's memory cgroup");
    assert_eq!(set.trim(), limit.to_string());
    // Eviction: the container is stopped, and its status says by whom.
    conn.runtime
        .update_containers(
            skiff_nri::ttrpc::context::with_timeout(30_000_000_000),
            &nri::UpdateContainersRequest {
                update: Vec::new(),
                evict: vec![nri::ContainerEviction {
                    container_id: ctr.clone(),
                    reason: "over budget".into(),
                }],
            },
        )
        .await
        .unwrap();
    let (st, _) = status(&mut c, &ctr).await;
    assert_eq!(st.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(st.reason, "Evicted");
    assert!(
        st.message.contains("10-policy") && st.message.contains("over budget"),
        "{st:?}"
    );
    remove(&mut c, &ctr).await;
    common::end_pod(&mut c, &pod).await;
}

#[tokio::test]
async fn pre_installed_plugins_are_launched_with_their_configuration() {
    if !skiff_testkit::require_root("nri_preinstalled") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let conf = dir.path().join("conf.d");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let bin = common::skiffd_bin().with_file_name("skiff-nri-plugin");
    std::fs::copy(&bin, plugins.join("05-logger")).unwrap();
    // Not NN-name, and not executable: both skipped.
    std::fs::copy(&bin, plugins.join("logger")).unwrap();
    std::fs::write(plugins.join("07-notes"), "not a plugin").unwrap();
    let log = dir.path().join("events.jsonl");
    std::fs::write(
        conf.join("05-logger.conf"),
        serde_json::json!({"log": log, "annotations": {"launched": "by-skiffd"}}).to_string(),
    )
    .unwrap();
    let extra = format!(
        "[nri]\nsocket_path = \"{}\"\nplugin_path = \"{}\"\nplugin_config_path = \"{}\"\n",
        dir.path().join("nri.sock").display(),
        plugins.display(),
        conf.display()
    );
    let Some((_env, mut c)) = setup("nri_preinstalled", &extra).await else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let pod_cfg = pod_config("nri-pre", logs.path());
    let pod = run_pod(&mut c, &pod_cfg).await.unwrap();
    let ctr = create(&mut c, &pod, &pod_cfg, ctr_config("x", &["true"]))
        .await
        .unwrap();
    let (_, info) = status(&mut c, &ctr).await;
    assert_eq!(info["runtimeSpec"]["annotations"]["launched"], "by-skiffd");
    remove(&mut c, &ctr).await;
    common::end_pod(&mut c, &pod).await;
    let text = std::fs::read_to_string(&log).unwrap();
    for e in [
        "RunPodSandbox",
        "CreateContainer",
        "RemoveContainer",
        "RemovePodSandbox",
    ] {
        assert!(
            text.contains(&format!("\"event\":\"{e}\"")),
            "{e} missing:\n{text}"
        );
    }
}

/// skiffd killed while a container is being created (here: held in an NRI hook, after
/// its record was saved and before the shim was asked): at restart the creation is
/// undone, nothing is left, and the client's retry of the same name succeeds.
#[tokio::test]
async fn a_creation_cut_by_a_skiffd_crash_is_undone_at_restart() {
    let Some((mut env, mut c)) = setup("nri_crash_create", "").await else {
        return;
    };
    let r = Recorder::new(EventMask::all());
    r.on(Event::CreateContainer, Action::Block);
    let _p = plugin(&env, id("10", "hold"), r.clone()).await;
    let logs = tempfile::tempdir().unwrap();
    let pod_cfg = pod_config("nri-crash", logs.path());
    let pod = run_pod(&mut c, &pod_cfg).await.unwrap();
    let creating = {
        let (mut c2, pod, pod_cfg) = (env.skiffd.client().await, pod.clone(), pod_cfg.clone());
        tokio::spawn(
            async move { create(&mut c2, &pod, &pod_cfg, ctr_config("cut", &["true"])).await },
        )
    };
    r.wait_for(Duration::from_secs(10), |seen| {
        seen.iter().any(|s| s.event == Event::CreateContainer)
    })
    .await
    .expect("the plugin holds the creation");
    env.skiffd.kill();
    assert!(creating.await.unwrap().is_err(), "the call was cut");
    r.release();
    env.skiffd.restart().expect("restart skiffd");
    let mut c = env.skiffd.client().await;
    assert!(container_names(&mut c, &pod).await.is_empty());
    let left: Vec<_> = std::fs::read_dir(env.skiffd.state.join("containers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(env.skiffd.state.join("containers").to_str().unwrap()),
        "a rootfs is still mounted"
    );
    let ctr = create(&mut c, &pod, &pod_cfg, ctr_config("cut", &["true"]))
        .await
        .expect("the name is free again");
    remove(&mut c, &ctr).await;
    common::end_pod(&mut c, &pod).await;
}
