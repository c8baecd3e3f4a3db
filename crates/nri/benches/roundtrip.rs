//! What one NRI event costs the runtime: the adaptation delivering RunPodSandbox and
//! CreateContainer to one no-op plugin over a real unix socket (the crate's stub),
//! both ends in this process on a multi-thread tokio runtime. Prints percentiles;
//! asserts nothing. `cargo bench -p skiff-nri --bench roundtrip`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_nri::stub::{Connection, Recorder};
use skiff_nri::{Adaptation, Config, Domain, PluginId, api};

struct NoDomain;

#[async_trait::async_trait]
impl Domain for NoDomain {
    async fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        (Vec::new(), Vec::new())
    }
    async fn update_containers(
        &self,
        _plugin: &str,
        updates: Vec<api::ContainerUpdate>,
    ) -> Vec<api::ContainerUpdate> {
        updates
    }
    async fn evict_container(&self, _id: &str, _reason: &str) -> Result<(), String> {
        Err("no containers here".into())
    }
}

fn percentiles(name: &str, mut v: Vec<Duration>) {
    v.sort();
    // Nearest rank, per mille.
    let at = |per_mille: usize| v[(v.len() - 1) * per_mille / 1000].as_secs_f64() * 1e6;
    println!(
        "{name:<28} n={:<5} p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs",
        v.len(),
        at(500),
        at(900),
        at(990)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("nri.sock");
        let domain: Arc<dyn Domain> = Arc::new(NoDomain);
        let nri = Adaptation::new(
            Config {
                socket_path: Some(socket.clone()),
                plugin_path: dir.path().join("plugins"),
                plugin_config_path: dir.path().join("conf.d"),
                registration_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(2),
                runtime_name: "skiff-bench".into(),
                runtime_version: "0".into(),
                observer: None,
            },
            Arc::downgrade(&domain),
        );
        nri.start().await.expect("start NRI");
        let pod = api::PodSandbox {
            id: "pod-bench".into(),
            name: "bench".into(),
            ..Default::default()
        };
        let ctr = api::Container {
            id: "ctr-bench".into(),
            pod_sandbox_id: pod.id.clone(),
            name: "bench".into(),
            args: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        };
        // No plugin: what an enabled NRI costs every event.
        let mut idle = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            nri.run_pod_sandbox(&pod).await.expect("event");
            idle.push(t.elapsed());
        }
        percentiles("RunPodSandbox, no plugin", idle);
        let pid = PluginId {
            idx: "50".into(),
            name: "noop".into(),
        };
        let _conn = Connection::dial(&socket, &pid, Recorder::noop())
            .await
            .expect("plugin connects");
        while nri.plugin_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..200 {
            nri.run_pod_sandbox(&pod).await.expect("warm-up");
        }
        let mut run = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            nri.run_pod_sandbox(&pod).await.expect("event");
            run.push(t.elapsed());
        }
        percentiles("RunPodSandbox, 1 plugin", run);
        let mut create = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            let guard = nri.creating().await;
            nri.create_container(&pod, &ctr, &mut |_, _| Ok(api::Container::default()))
                .await
                .expect("event");
            drop(guard);
            create.push(t.elapsed());
        }
        percentiles("CreateContainer, 1 plugin", create);
    });
}
