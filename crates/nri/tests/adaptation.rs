//! The adaptation against real plugin connections (the crate's stub over a unix
//! socket): registration, synchronization, event order, adjustments and every way a
//! plugin can misbehave.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_nri::stub::{Action, Connection, Recorder};
use skiff_nri::{Adaptation, Config, Domain, Event, EventMask, PluginId, api};

#[derive(Default)]
struct FakeDomain {
    pods: Mutex<Vec<api::PodSandbox>>,
    containers: Mutex<Vec<api::Container>>,
    updates: Mutex<Vec<(String, api::ContainerUpdate)>>,
    evicted: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Domain for FakeDomain {
    async fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        (
            self.pods.lock().unwrap().clone(),
            self.containers.lock().unwrap().clone(),
        )
    }
    async fn update_containers(
        &self,
        plugin: &str,
        updates: Vec<api::ContainerUpdate>,
    ) -> Vec<api::ContainerUpdate> {
        let mut failed = Vec::new();
        for u in updates {
            if u.container_id == "missing" {
                failed.push(u.clone());
            }
            self.updates.lock().unwrap().push((plugin.to_string(), u));
        }
        failed
    }
    async fn evict_container(&self, id: &str, _reason: &str) -> Result<(), String> {
        self.evicted.lock().unwrap().push(id.to_string());
        Ok(())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    nri: Arc<Adaptation>,
    domain: Arc<FakeDomain>,
}

async fn setup_with(request_timeout: Duration, plugin_dir: Option<std::path::PathBuf>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let domain = Arc::new(FakeDomain::default());
    let weak: std::sync::Weak<dyn Domain> = {
        let d: Arc<dyn Domain> = domain.clone();
        Arc::downgrade(&d)
    };
    let nri = Adaptation::new(
        Config {
            socket_path: Some(socket.clone()),
            plugin_path: plugin_dir.unwrap_or_else(|| dir.path().join("plugins")),
            plugin_config_path: dir.path().join("conf.d"),
            registration_timeout: Duration::from_secs(5),
            request_timeout,
            runtime_name: "skiff-test".into(),
            runtime_version: "0".into(),
            observer: None,
        },
        weak,
    );
    nri.start().await.unwrap();
    Setup {
        _dir: dir,
        socket,
        nri,
        domain,
    }
}

async fn setup() -> Setup {
    setup_with(Duration::from_secs(2), None).await
}

fn id(idx: &str, name: &str) -> PluginId {
    PluginId {
        idx: idx.into(),
        name: name.into(),
    }
}

fn pod(n: &str) -> api::PodSandbox {
    api::PodSandbox {
        id: format!("pod-{n}"),
        name: n.into(),
        ..Default::default()
    }
}

fn ctr(n: &str, pod: &str) -> api::Container {
    api::Container {
        id: format!("ctr-{n}"),
        pod_sandbox_id: pod.into(),
        name: n.into(),
        ..Default::default()
    }
}

/// Connect `plugin` and wait until the runtime lists it.
async fn connect(s: &Setup, pid: PluginId, plugin: Arc<Recorder>) -> Connection {
    let before = s.nri.plugin_count();
    let conn = Connection::dial(&s.socket, &pid, plugin).await.unwrap();
    wait(|| s.nri.plugin_count() > before).await;
    conn
}

async fn wait(f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

fn no_adjust()
-> impl FnMut(&str, &api::ContainerAdjustment) -> Result<api::Container, String> + Send {
    |_, _| Ok(api::Container::default())
}

#[tokio::test]
async fn a_plugin_is_synchronized_and_then_gets_events_in_order() {
    let s = setup().await;
    s.domain.pods.lock().unwrap().push(pod("old"));
    s.domain
        .containers
        .lock()
        .unwrap()
        .push(ctr("old", "pod-old"));
    let r = Recorder::new(EventMask::all());
    let _c = connect(&s, id("10", "rec"), r.clone()).await;
    assert_eq!(
        r.synced().unwrap(),
        (vec!["pod-old".to_string()], vec!["ctr-old".to_string()])
    );
    let (p, c) = (pod("a"), ctr("a", "pod-a"));
    s.nri.run_pod_sandbox(&p).await.unwrap();
    s.nri
        .create_container(&p, &c, &mut no_adjust())
        .await
        .unwrap();
    s.nri.post_create_container(&p, &c).await.unwrap();
    s.nri.start_container(&p, &c).await.unwrap();
    s.nri.post_start_container(&p, &c).await.unwrap();
    s.nri
        .update_container(&p, &c, &api::LinuxResources::default())
        .await
        .unwrap();
    s.nri.post_update_container(&p, &c).await.unwrap();
    s.nri.stop_container(&p, &c).await.unwrap();
    s.nri.remove_container(&p, &c).await.unwrap();
    s.nri.update_pod_sandbox(&p, None, None).await.unwrap();
    s.nri.post_update_pod_sandbox(&p).await.unwrap();
    s.nri.stop_pod_sandbox(&p).await.unwrap();
    s.nri.remove_pod_sandbox(&p).await.unwrap();
    let got: Vec<Event> = r.seen().iter().map(|e| e.event).collect();
    use Event::*;
    assert_eq!(
        got,
        vec![
            RunPodSandbox,
            CreateContainer,
            // Subscribed to everything, it is also a validator.
            ValidateContainerAdjustment,
            PostCreateContainer,
            StartContainer,
            PostStartContainer,
            UpdateContainer,
            PostUpdateContainer,
            StopContainer,
            RemoveContainer,
            UpdatePodSandbox,
            PostUpdatePodSandbox,
            StopPodSandbox,
            RemovePodSandbox
        ]
    );
    assert!(r.seen()[1].container_name == "a" && r.seen()[1].pod == "pod-a");
}

#[tokio::test]
async fn only_subscribed_events_are_delivered_in_index_then_name_order() {
    let s = setup().await;
    let only_run = Recorder::new(EventMask::of(&[Event::RunPodSandbox]));
    let a = Recorder::new(EventMask::of(&[Event::StopPodSandbox]));
    let b = Recorder::new(EventMask::of(&[Event::StopPodSandbox]));
    let _zeta = connect(&s, id("20", "zeta"), only_run.clone()).await;
    let _alpha = connect(&s, id("20", "alpha"), a.clone()).await;
    let _first = connect(&s, id("05", "first"), b.clone()).await;
    assert_eq!(
        s.nri.plugin_names(),
        vec!["05-first", "20-alpha", "20-zeta"]
    );
    let p = pod("a");
    s.nri.stop_pod_sandbox(&p).await.unwrap();
    assert!(only_run.seen().is_empty());
    assert_eq!(a.seen().len(), 1);
    assert_eq!(b.seen().len(), 1);
}

#[tokio::test]
async fn a_refusing_plugin_fails_the_call_and_stays() {
    let s = setup().await;
    let r = Recorder::new(EventMask::all());
    r.on(Event::RunPodSandbox, Action::Fail("no pods today".into()));
    let _c = connect(&s, id("10", "refuser"), r.clone()).await;
    let e = s.nri.run_pod_sandbox(&pod("a")).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("10-refuser")
            && msg.contains("no pods today")
            && msg.contains("RunPodSandbox"),
        "{msg}"
    );
    assert_eq!(s.nri.plugin_count(), 1);
    r.clear(Event::RunPodSandbox);
    s.nri.run_pod_sandbox(&pod("b")).await.unwrap();
}

#[tokio::test]
async fn a_plugin_that_hangs_past_the_timeout_is_dropped_and_the_call_proceeds() {
    let s = setup_with(Duration::from_millis(300), None).await;
    let hang = Recorder::new(EventMask::all());
    hang.on(Event::CreateContainer, Action::Block);
    let after = Recorder::new(EventMask::all());
    let c1 = connect(&s, id("10", "hang"), hang.clone()).await;
    let _c2 = connect(&s, id("20", "after"), after.clone()).await;
    let t = std::time::Instant::now();
    s.nri
        .create_container(&pod("a"), &ctr("a", "pod-a"), &mut no_adjust())
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        after.seen()[0].event,
        Event::CreateContainer,
        "the next plugin still gets the event"
    );
    assert_eq!(s.nri.plugin_names(), vec!["20-after"]);
    // The runtime closed the hung plugin's connection.
    tokio::time::timeout(Duration::from_secs(2), c1.closed())
        .await
        .expect("the hung plugin is disconnected");
    hang.release();
}

#[tokio::test]
async fn a_plugin_that_disconnects_mid_call_is_dropped_and_the_call_proceeds() {
    let s = setup().await;
    let r = Recorder::new(EventMask::all());
    r.on(Event::StartContainer, Action::Block);
    let c = connect(&s, id("10", "quitter"), r.clone()).await;
    let nri = s.nri.clone();
    let call =
        tokio::spawn(async move { nri.start_container(&pod("a"), &ctr("a", "pod-a")).await });
    r.wait_for(Duration::from_secs(5), |s| !s.is_empty())
        .await
        .unwrap();
    drop(c);
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .expect("the call returns when the plugin goes")
        .unwrap()
        .unwrap();
    wait(|| s.nri.plugin_count() == 0).await;
}

#[tokio::test]
async fn garbage_on_the_connection_closes_it_and_nothing_else() {
    use tokio::io::AsyncWriteExt;
    let s = setup().await;
    let good = Recorder::new(EventMask::all());
    let _g = connect(&s, id("10", "good"), good.clone()).await;
    // A frame header announcing 1 GiB, then nonsense; and a well-framed non-ttrpc frame.
    for junk in [
        vec![0, 0, 0, 2, 0x40, 0, 0, 0, 1, 2, 3],
        vec![
            0, 0, 0, 2, 0, 0, 0, 10, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 9, 9,
        ],
    ] {
        let mut raw = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
        raw.write_all(&junk).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(
            Duration::from_secs(7),
            tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
        )
        .await
        .expect("the runtime closes a garbage connection");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    assert_eq!(s.nri.plugin_names(), vec!["10-good"]);
    s.nri.run_pod_sandbox(&pod("a")).await.unwrap();
    assert_eq!(good.seen().len(), 1);
}

#[tokio::test]
async fn a_second_plugin_with_the_same_index_and_name_is_refused() {
    let s = setup().await;
    let _a = connect(&s, id("10", "same"), Recorder::new(EventMask::all())).await;
    let b = Connection::dial(
        &s.socket,
        &id("10", "same"),
        Recorder::new(EventMask::all()),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), b.closed())
        .await
        .expect("the duplicate is disconnected");
    assert_eq!(s.nri.plugin_names(), vec!["10-same"]);
    // Same index, another name: both served.
    let _c = connect(&s, id("10", "other"), Recorder::new(EventMask::all())).await;
    assert_eq!(s.nri.plugin_names(), vec!["10-other", "10-same"]);
}

#[tokio::test]
async fn invalid_registrations_are_refused() {
    let s = setup().await;
    for pid in [
        id("1", "x"),
        id("ab", "x"),
        id("10", "has space"),
        id("10", ""),
    ] {
        let r = Connection::dial(&s.socket, &pid, Recorder::new(EventMask::all())).await;
        assert!(r.is_err(), "{pid} was accepted");
    }
    assert_eq!(s.nri.plugin_count(), 0);
}

fn annotate(k: &str, v: &str) -> api::ContainerAdjustment {
    api::ContainerAdjustment {
        annotations: [(k.to_string(), v.to_string())].into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn adjustments_are_applied_in_order_and_conflicts_name_both_plugins() {
    let s = setup().await;
    let a = Recorder::new(EventMask::all());
    a.adjust_with(annotate("team", "a"));
    let b = Recorder::new(EventMask::all());
    b.adjust_with(annotate("cost", "b"));
    let _a = connect(&s, id("10", "a"), a.clone()).await;
    let _b = connect(&s, id("20", "b"), b.clone()).await;
    let mut order = Vec::new();
    let (p, c) = (pod("p"), ctr("c", "pod-p"));
    let mut apply = |plugin: &str, adj: &api::ContainerAdjustment| {
        order.push((plugin.to_string(), adj.annotations.clone()));
        let mut next = ctr("c", "pod-p");
        next.annotations.insert("seen-by".into(), plugin.into());
        Ok(next)
    };
    s.nri.create_container(&p, &c, &mut apply).await.unwrap();
    assert_eq!(order.len(), 2);
    assert_eq!(order[0].0, "10-a");
    assert_eq!(order[1].0, "20-b");
    // The second plugin saw the container as the first left it.
    let seen_by_b = b.seen()[0].detail.clone().unwrap();
    assert_eq!(seen_by_b.annotations.get("seen-by").unwrap(), "10-a");

    b.adjust_with(annotate("team", "b"));
    let e = s
        .nri
        .create_container(&p, &c, &mut no_adjust())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("10-a") && e.contains("20-b") && e.contains("team"),
        "{e}"
    );
}

#[tokio::test]
async fn a_validating_plugin_can_reject_adjustments() {
    let s = setup().await;
    let a = Recorder::new(EventMask::all());
    a.adjust_with(annotate("x", "y"));
    let v = Recorder::new(EventMask::of(&[Event::ValidateContainerAdjustment]));
    v.on(
        Event::ValidateContainerAdjustment,
        Action::Fail("no annotations allowed".into()),
    );
    let _a = connect(&s, id("10", "adjuster"), a).await;
    let _v = connect(&s, id("90", "validator"), v.clone()).await;
    let e = s
        .nri
        .create_container(&pod("p"), &ctr("c", "pod-p"), &mut no_adjust())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("90-validator") && e.contains("no annotations allowed"),
        "{e}"
    );
}

#[tokio::test]
async fn updates_and_evictions_from_plugins_reach_the_runtime() {
    let s = setup().await;
    let r = Recorder::new(EventMask::all());
    let conn = connect(&s, id("10", "updater"), r.clone()).await;
    // Unsolicited, many at once: all answered, one at a time.
    let mut calls = Vec::new();
    for i in 0..50 {
        let rt = conn.runtime.clone();
        calls.push(tokio::spawn(async move {
            rt.update_containers(
                ttrpc::context::with_timeout(10_000_000_000),
                &api::UpdateContainersRequest {
                    update: vec![api::ContainerUpdate {
                        container_id: if i == 0 {
                            "missing".into()
                        } else {
                            format!("c{i}")
                        },
                        ..Default::default()
                    }],
                    evict: if i == 1 {
                        vec![api::ContainerEviction {
                            container_id: "victim".into(),
                            reason: "too greedy".into(),
                        }]
                    } else {
                        Vec::new()
                    },
                },
            )
            .await
        }));
    }
    let mut failed = 0;
    for c in calls {
        failed += c.await.unwrap().unwrap().failed.len();
    }
    assert_eq!(
        failed, 1,
        "the update of a missing container is reported failed"
    );
    assert_eq!(s.domain.updates.lock().unwrap().len(), 50);
    assert_eq!(
        *s.domain.evicted.lock().unwrap(),
        vec!["victim".to_string()]
    );
    // Updates of other containers in a CreateContainer reply are returned for later.
    r.update_with(vec![api::ContainerUpdate {
        container_id: "other".into(),
        ..Default::default()
    }]);
    let adjusted = s
        .nri
        .create_container(&pod("p"), &ctr("c", "pod-p"), &mut no_adjust())
        .await
        .unwrap();
    assert_eq!(adjusted.updates.len(), 1);
}

#[tokio::test]
async fn creation_in_progress_holds_a_joining_plugins_synchronization() {
    let s = setup().await;
    let guard = s.nri.creating().await;
    let r = Recorder::new(EventMask::all());
    let socket = s.socket.clone();
    let r2 = r.clone();
    let join = tokio::spawn(async move {
        Connection::dial(&socket, &id("10", "late"), r2)
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        r.synced().is_none(),
        "synchronized while a creation was in progress"
    );
    s.domain.pods.lock().unwrap().push(pod("made"));
    drop(guard);
    let _c = join.await.unwrap();
    wait(|| r.synced().is_some()).await;
    assert_eq!(r.synced().unwrap().0, vec!["pod-made".to_string()]);
}

#[tokio::test]
async fn a_large_state_is_synchronized_in_parts() {
    let s = setup().await;
    {
        let mut pods = s.domain.pods.lock().unwrap();
        for i in 0..3000 {
            let mut p = pod(&i.to_string());
            p.annotations.insert("blob".into(), "x".repeat(2000));
            pods.push(p);
        }
    }
    let r = Recorder::new(EventMask::all());
    let _c = connect(&s, id("10", "big"), r.clone()).await;
    assert_eq!(r.synced().unwrap().0.len(), 3000);
}

/// A plugin of NRI's older API: only Configure, Synchronize and StateChange.
struct Legacy {
    seen: Mutex<Vec<i32>>,
}

#[async_trait::async_trait]
impl api::Plugin for Legacy {
    async fn configure(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        _: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        Ok(api::ConfigureResponse {
            events: EventMask::of(&[Event::RunPodSandbox, Event::RemoveContainer]).0 as i32,
        })
    }
    async fn synchronize(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        _: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        Ok(api::SynchronizeResponse::default())
    }
    async fn state_change(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        e: api::StateChangeEvent,
    ) -> ttrpc::Result<api::Empty> {
        self.seen.lock().unwrap().push(e.event);
        Ok(api::Empty {})
    }
}

#[tokio::test]
async fn older_plugins_get_events_through_state_change() {
    let s = setup().await;
    let legacy = Arc::new(Legacy {
        seen: Mutex::new(Vec::new()),
    });
    let _c = Connection::dial(&s.socket, &id("10", "old"), legacy.clone())
        .await
        .unwrap();
    wait(|| s.nri.plugin_count() == 1).await;
    s.nri.run_pod_sandbox(&pod("a")).await.unwrap();
    s.nri
        .remove_container(&pod("a"), &ctr("a", "pod-a"))
        .await
        .unwrap();
    assert_eq!(
        *legacy.seen.lock().unwrap(),
        vec![Event::RunPodSandbox as i32, Event::RemoveContainer as i32]
    );
}

#[tokio::test]
async fn a_plugin_that_never_registers_is_disconnected() {
    let s = setup_with(Duration::from_secs(2), None).await;
    let _raw = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    // Nothing to assert on the runtime but that it goes on serving others.
    let _c = connect(&s, id("10", "ok"), Recorder::new(EventMask::all())).await;
    assert_eq!(s.nri.plugin_count(), 1);
}
