//! The soak: pods run, exec'd into, logged from, stopped and removed at a steady rate
//! while skiffd and random shims are SIGKILLed at random moments. At the end nothing is
//! left (pods, containers, mounts, veths, namespace pins, cgroups, processes, IPs), every
//! exit a client saw has its real code (or, for a pod whose shim was killed, reason
//! Unknown), no container started twice or lost a line of its log, and skiffd's RSS and
//! fd count stayed bounded. Needs root.
//!
//! `SKIFF_SOAK_SECS` (default 20) and `SKIFF_SOAK_RATE` (pods started per second,
//! default 4) size it; `SKIFF_SOAK_REPORT=FILE` writes the figures as markdown. The
//! ordinary test run is a short soak; `perf/run-soak` runs the long one on release
//! binaries (`SKIFF_TEST_BIN_DIR`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::RegistryEnv;
use skiff_cri::api;
use skiff_cri::client::CriClient;
use skiff_testkit::image::{Compression, ImageBuilder, busybox_layer};

const IMAGE: &str = "127.0.0.1:5000/test/busybox:soak";
/// Lines each container logs before it exits.
const LINES: usize = 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the run saw.
#[derive(Default)]
struct Tally {
    pods_started: AtomicU64,
    pods_done: AtomicU64,
    pods_shim_killed: AtomicU64,
    execs: AtomicU64,
    skiffd_kills: AtomicU64,
    shim_kills: AtomicU64,
    retries: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Pods whose shim the chaos task killed.
    shims_killed: Mutex<HashSet<String>>,
}

impl Tally {
    fn fail(&self, msg: String) {
        eprintln!("soak: FAILURE: {msg}");
        self.failures.lock().unwrap().push(msg);
    }
}

struct Soak {
    // Drop order: skiffd first, then the registry, then the namespace.
    /// skiffd; the chaos task kills and restarts it, everything else uses the socket.
    skiffd: Mutex<skiff_testkit::skiffd::Skiffd>,
    _registry: skiff_testkit::Registry,
    netns: skiff_testkit::NetNs,
    _hosts: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
    root: PathBuf,
    socket: PathBuf,
    logs: PathBuf,
    tally: Tally,
    stop: AtomicBool,
}

/// A transient failure while skiffd is down or restarting: try again.
fn transient(e: &tonic::Status) -> bool {
    matches!(
        e.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) || e.message().contains("transport")
}

impl Soak {
    async fn client(&self) -> CriClient {
        loop {
            if let Ok(c) = CriClient::connect(&self.socket).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run `op` until it does not fail transiently (skiffd down), with a fresh
    /// connection after each failure; give up after a minute.
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, tonic::Status>
    where
        F: FnMut(CriClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = self.client().await;
            match op(c).await {
                Err(e) if transient(&e) && Instant::now() < deadline => {
                    self.tally.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) if transient(&e) => {
                    return Err(tonic::Status::deadline_exceeded(format!(
                        "{what}: still failing after a minute: {e}"
                    )));
                }
                other => return other,
            }
        }
    }

    fn pod_config(&self, n: u64) -> api::PodSandboxConfig {
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: format!("soak-{n}"),
                namespace: "soak".into(),
                uid: format!("soak-{n}-uid"),
                attempt: 0,
            }),
            log_directory: self.logs.join(n.to_string()).display().to_string(),
            labels: [("soak".to_string(), n.to_string())].into(),
            linux: Some(api::LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    /// The pod of job `n`: an existing ready one (a RunPodSandbox whose answer was lost
    /// to a crash), or a new one; a half-made one left by a crash is removed first.
    async fn pod(&self, n: u64, cfg: &api::PodSandboxConfig) -> Result<String, String> {
        for _ in 0..5 {
            let found = self
                .retry("ListPodSandbox", |mut c| async move {
                    c.runtime
                        .list_pod_sandbox(api::ListPodSandboxRequest {
                            filter: Some(api::PodSandboxFilter {
                                label_selector: [("soak".to_string(), n.to_string())].into(),
                                ..Default::default()
                            }),
                        })
                        .await
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .items;
            for p in &found {
                if p.state == api::PodSandboxState::SandboxReady as i32 {
                    return Ok(p.id.clone());
                }
                self.remove_pod(&p.id).await?;
            }
            let run = self
                .retry("RunPodSandbox", |mut c| {
                    let cfg = cfg.clone();
                    async move {
                        c.runtime
                            .run_pod_sandbox(api::RunPodSandboxRequest {
                                config: Some(cfg),
                                runtime_handler: String::new(),
                            })
                            .await
                    }
                })
                .await;
            match run {
                Ok(r) => return Ok(r.into_inner().pod_sandbox_id),
                // The name is held by a pod a crash left: look again.
                Err(e) if e.code() == tonic::Code::AlreadyExists => continue,
                Err(e) => return Err(format!("RunPodSandbox: {e}")),
            }
        }
        Err("RunPodSandbox: the name stays taken".into())
    }

    async fn remove_pod(&self, id: &str) -> Result<(), String> {
        self.retry("StopPodSandbox", |mut c| async move {
            c.runtime
                .stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: id.into(),
                })
                .await
        })
        .await
        .map_err(|e| format!("StopPodSandbox {id}: {e}"))?;
        self.retry("RemovePodSandbox", |mut c| async move {
            c.runtime
                .remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: id.into(),
                })
                .await
        })
        .await
        .map_err(|e| format!("RemovePodSandbox {id}: {e}"))?;
        Ok(())
    }

    /// The container of job `n` in `pod`: an existing one or a new one.
    async fn container(
        &self,
        n: u64,
        pod: &str,
        pod_cfg: &api::PodSandboxConfig,
        code: i32,
        long: bool,
    ) -> Result<String, String> {
        let script = format!(
            "echo start; i=0; while [ $i -lt {LINES} ]; do echo line $i; i=$((i+1)); sleep {}; done; exit {code}",
            if long { "0.3" } else { "0.02" }
        );
        let cfg = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: "work".into(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script],
            log_path: "work.log".into(),
            labels: [("soak".to_string(), n.to_string())].into(),
            linux: Some(api::LinuxContainerConfig::default()),
            ..Default::default()
        };
        for _ in 0..5 {
            let found = self
                .retry("ListContainers", |mut c| async move {
                    c.runtime
                        .list_containers(api::ListContainersRequest {
                            filter: Some(api::ContainerFilter {
                                pod_sandbox_id: pod.into(),
                                ..Default::default()
                            }),
                        })
                        .await
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .containers;
            if let Some(c) = found.first() {
                return Ok(c.id.clone());
            }
            let made = self
                .retry("CreateContainer", |mut c| {
                    let (cfg, pod_cfg) = (cfg.clone(), pod_cfg.clone());
                    async move {
                        c.runtime
                            .create_container(api::CreateContainerRequest {
                                pod_sandbox_id: pod.into(),
                                config: Some(cfg),
                                sandbox_config: Some(pod_cfg),
                            })
                            .await
                    }
                })
                .await;
            match made {
                Ok(r) => return Ok(r.into_inner().container_id),
                Err(e) if e.code() == tonic::Code::AlreadyExists => continue,
                Err(e) => return Err(format!("CreateContainer: {e}")),
            }
        }
        Err("CreateContainer: the name stays taken".into())
    }

    async fn status(&self, id: &str) -> Result<api::ContainerStatus, String> {
        self.retry("ContainerStatus", |mut c| async move {
            c.runtime
                .container_status(api::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
        })
        .await
        .map(|r| r.into_inner().status.unwrap_or_default())
        .map_err(|e| format!("ContainerStatus {id}: {e}"))
    }

    /// One pod's life. Returns whether its shim was killed on the way.
    async fn job(&self, n: u64) -> Result<bool, String> {
        let cfg = self.pod_config(n);
        let pod = self.pod(n, &cfg).await?;
        let code = i32::try_from(n % 100).unwrap_or(0);
        let long = n.is_multiple_of(8);
        let killed = |s: &Self| s.tally.shims_killed.lock().unwrap().contains(&pod);
        let ctr = match self.container(n, &pod, &cfg, code, long).await {
            Ok(ctr) => ctr,
            // Its shim was killed before the container was made: the pod is NotReady
            // (CreateContainer says so), and a kubelet would replace it.
            Err(e) if killed(self) => {
                let _ = e;
                self.remove_pod(&pod).await?;
                return Ok(true);
            }
            Err(e) => return Err(e),
        };
        let started = self
            .retry("StartContainer", |mut c| {
                let ctr = ctr.clone();
                async move {
                    c.runtime
                        .start_container(api::StartContainerRequest { container_id: ctr })
                        .await
                }
            })
            .await;
        match started {
            Ok(_) => {}
            // Started before a crash hid the answer.
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {}
            Err(e) if killed(self) => {
                let _ = e;
                self.remove_pod(&pod).await?;
                return Ok(true);
            }
            Err(e) => return Err(format!("StartContainer: {e}")),
        }
        let hello = format!("hi-{n}");
        let exec = self
            .retry("ExecSync", |mut c| {
                let (ctr, hello) = (ctr.clone(), hello.clone());
                async move {
                    c.runtime
                        .exec_sync(api::ExecSyncRequest {
                            container_id: ctr,
                            cmd: vec!["echo".into(), hello],
                            timeout: 20,
                        })
                        .await
                }
            })
            .await;
        match exec {
            Ok(r) => {
                self.tally.execs.fetch_add(1, Ordering::Relaxed);
                let r = r.into_inner();
                if String::from_utf8_lossy(&r.stdout).trim() != hello || r.exit_code != 0 {
                    return Err(format!("ExecSync in {ctr}: {r:?}"));
                }
            }
            // It may have exited already, or lost its shim.
            Err(e) if e.code() == tonic::Code::FailedPrecondition || killed(self) => {}
            Err(e) => return Err(format!("ExecSync in {ctr}: {e}")),
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        let s = loop {
            let s = self.status(&ctr).await?;
            if s.state == api::ContainerState::ContainerExited as i32 {
                break s;
            }
            if Instant::now() > deadline {
                return Err(format!("container {ctr} never exited: {s:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let shim_killed = killed(self);
        if shim_killed {
            if s.reason != "Unknown" && s.exit_code != code {
                return Err(format!(
                    "container {ctr} (shim killed) exited {} ({}), not with its code {code} nor Unknown",
                    s.exit_code, s.reason
                ));
            }
        } else {
            if s.exit_code != code {
                return Err(format!(
                    "container {ctr} exited {} ({}: {}), its real code is {code}",
                    s.exit_code, s.reason, s.message
                ));
            }
            let log = std::fs::read_to_string(&s.log_path)
                .map_err(|e| format!("read {}: {e}", s.log_path))?;
            let lines: Vec<&str> = log
                .lines()
                .filter_map(|l| l.splitn(4, ' ').nth(3))
                .collect();
            let mut want = vec!["start".to_string()];
            want.extend((0..LINES).map(|i| format!("line {i}")));
            if lines != want {
                return Err(format!(
                    "container {ctr}'s log is not what it wrote (restarted or lost lines): {lines:?}"
                ));
            }
        }
        self.remove_pod(&pod).await?;
        Ok(shim_killed)
    }

    /// Kill skiffd or a random shim every few seconds.
    async fn chaos(self: Arc<Self>, seed: u64) {
        let mut rng = seed;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        while !self.stop.load(Ordering::Relaxed) {
            let wait = Duration::from_millis(2000 + next() % 6000);
            tokio::time::sleep(wait).await;
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if next().is_multiple_of(2) {
                let down = Duration::from_millis(200 + next() % 1300);
                let me = self.clone();
                let restarted = tokio::task::spawn_blocking(move || {
                    let mut d = me.skiffd.lock().unwrap();
                    d.kill();
                    std::thread::sleep(down);
                    d.restart()
                })
                .await
                .unwrap();
                if let Err(e) = restarted {
                    self.tally.fail(format!("skiffd did not come back: {e}"));
                    return;
                }
                self.tally.skiffd_kills.fetch_add(1, Ordering::Relaxed);
            } else {
                let state = self.state.join("pods");
                let pods: Vec<(String, u32)> = std::fs::read_dir(&state)
                    .map(|rd| {
                        rd.flatten()
                            .filter_map(|e| {
                                let pid =
                                    std::fs::read_to_string(e.path().join("shim.pid")).ok()?;
                                Some((
                                    e.file_name().to_string_lossy().into_owned(),
                                    pid.trim().parse().ok()?,
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if pods.is_empty() {
                    continue;
                }
                let (pod, pid) = &pods[usize::try_from(next() % pods.len() as u64).unwrap()];
                self.tally.shims_killed.lock().unwrap().insert(pod.clone());
                if let Some(p) = i32::try_from(*pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                {
                    // Only a process that is this pod's shim (pids are reused).
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmdline).contains(pod.as_str()) {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                        self.tally.shim_kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn leftovers(soak: &Soak) -> Vec<String> {
    let mut left = Vec::new();
    let base = soak.dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if m.starts_with(&base) {
            left.push(format!("mount {m}"));
        }
    }
    for sub in ["pods", "ns", "containers"] {
        if let Ok(rd) = std::fs::read_dir(soak.state.join(sub)) {
            for e in rd.flatten() {
                left.push(format!("state {sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    let links = soak
        .netns
        .command("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        let name = l
            .split(": ")
            .nth(1)
            .unwrap_or("")
            .split('@')
            .next()
            .unwrap_or("");
        if name.starts_with("sk") && name != "skiff0" {
            left.push(format!("veth {name}"));
        }
    }
    // /skiff is shared with every other test daemon running at the same time: only
    // the cgroups of pods this skiffd logged are its own.
    let log = std::fs::read_to_string(soak.dir.join("skiffd.log")).unwrap_or_default();
    for ctrl in ["memory", "pids", "cpu", ""] {
        let dir = Path::new("/sys/fs/cgroup").join(ctrl).join("skiff");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                if log.contains(&*e.file_name().to_string_lossy()) {
                    left.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("skiff-shim") && cmd.contains(&base) {
                left.push(format!("process {name}: {cmd}"));
            }
        }
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak() {
    let secs = env_u64("SKIFF_SOAK_SECS", 20);
    let rate = env_u64("SKIFF_SOAK_RATE", 4).max(1);
    let Some(env) =
        common::start_with_registry("soak", "[runtime]\nshim_liveness_timeout = 5\n", &[])
    else {
        return;
    };
    let image = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .cmd(["sh"])
        .build();
    env.push("test/busybox", "soak", &image);
    let mut c = env.skiffd.client().await;
    common::pull(&mut c, IMAGE).await;
    drop(c);
    let RegistryEnv {
        skiffd,
        registry,
        netns,
        hosts,
    } = env;
    let soak = Arc::new(Soak {
        dir: skiffd.dir().to_path_buf(),
        state: skiffd.state.clone(),
        root: skiffd.root.clone(),
        socket: skiffd.socket.clone(),
        logs: skiffd.dir().join("logs"),
        skiffd: Mutex::new(skiffd),
        _registry: registry,
        netns,
        _hosts: hosts,
        tally: Tally::default(),
        stop: AtomicBool::new(false),
    });

    let started = Instant::now();
    let pid = || soak.skiffd.lock().unwrap().pid();
    let mut rss: Vec<(u64, u64)> = Vec::new();
    let fds_at_start = pid().map_or(0, fd_count);
    let chaos = tokio::spawn(soak.clone().chaos(0x9e37_79b9_7f4a_7c15 ^ secs));
    let mut jobs = tokio::task::JoinSet::new();
    let every = Duration::from_micros(1_000_000 / rate);
    let mut n = 0u64;
    let mut next_sample = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        n += 1;
        let s = soak.clone();
        s.tally.pods_started.fetch_add(1, Ordering::Relaxed);
        jobs.spawn(async move {
            match s.job(n).await {
                Ok(killed) => {
                    s.tally.pods_done.fetch_add(1, Ordering::Relaxed);
                    if killed {
                        s.tally.pods_shim_killed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => s.tally.fail(format!("pod job {n}: {e}")),
            }
        });
        if Instant::now() >= next_sample {
            if let Some(k) = pid().and_then(rss_kib) {
                rss.push((started.elapsed().as_secs(), k));
            }
            next_sample = Instant::now() + Duration::from_secs(5);
        }
        tokio::time::sleep(every).await;
    }
    soak.stop.store(true, Ordering::Relaxed);
    chaos.await.unwrap();
    while jobs.join_next().await.is_some() {}
    let took = started.elapsed();
    // Let the last removals settle, then look for anything left behind.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(k) = pid().and_then(rss_kib) {
        rss.push((took.as_secs(), k));
    }
    let fds_at_end = pid().map_or(0, fd_count);
    let mut c = soak.client().await;
    let pods = c
        .runtime
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    let ctrs = c
        .runtime
        .list_containers(api::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    drop(c);
    let left = leftovers(&soak);
    // skiffd stops; its metadata must hold no pod, container or address.
    soak.skiffd.lock().unwrap().stop(Duration::from_secs(10));
    let meta = skiff_meta::MetaStore::open(&soak.root.join("meta.redb")).unwrap();
    let ips = meta
        .list::<serde_json::Value>(skiff_meta::Table::IPS)
        .unwrap_or_default();

    let t = &soak.tally;
    let failures = t.failures.lock().unwrap().clone();
    let max_rss = rss.iter().map(|(_, k)| *k).max().unwrap_or(0);
    let mut report = String::new();
    let _ = writeln!(report, "| figure | value |\n|---|---|");
    for (k, v) in [
        ("duration", format!("{:.0} s", took.as_secs_f64())),
        (
            "pods asked for (rate)",
            format!("{} ({rate}/s)", t.pods_started.load(Ordering::Relaxed)),
        ),
        (
            "pods run to the end",
            t.pods_done.load(Ordering::Relaxed).to_string(),
        ),
        (
            "  of which lost their shim",
            t.pods_shim_killed.load(Ordering::Relaxed).to_string(),
        ),
        ("execs", t.execs.load(Ordering::Relaxed).to_string()),
        (
            "skiffd SIGKILLs",
            t.skiffd_kills.load(Ordering::Relaxed).to_string(),
        ),
        (
            "shim SIGKILLs",
            t.shim_kills.load(Ordering::Relaxed).to_string(),
        ),
        (
            "CRI calls retried (skiffd down)",
            t.retries.load(Ordering::Relaxed).to_string(),
        ),
        (
            "skiffd fds start / end",
            format!("{fds_at_start} / {fds_at_end}"),
        ),
        (
            "skiffd RSS max",
            format!("{:.1} MiB", max_rss as f64 / 1024.0),
        ),
        ("failures", failures.len().to_string()),
        ("left behind", left.len().to_string()),
    ] {
        let _ = writeln!(report, "| {k} | {v} |");
    }
    let series: Vec<String> = rss
        .iter()
        .map(|(s, k)| format!("{s}s:{:.1}", *k as f64 / 1024.0))
        .collect();
    let _ = writeln!(report, "\nskiffd RSS over time (MiB): {}", series.join(" "));
    eprintln!("{report}");
    if let Ok(path) = std::env::var("SKIFF_SOAK_REPORT") {
        std::fs::write(&path, &report).unwrap();
    }
    let by_kind: BTreeMap<&str, usize> = left.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.split(' ').next().unwrap_or("")).or_default() += 1;
        m
    });
    assert!(
        failures.is_empty(),
        "{} failures, first: {}",
        failures.len(),
        failures[0]
    );
    assert!(
        pods.is_empty() && ctrs.is_empty(),
        "left in skiffd: {pods:?} {ctrs:?}"
    );
    assert!(left.is_empty(), "left behind ({by_kind:?}): {left:#?}");
    assert!(ips.is_empty(), "addresses still allocated: {ips:?}");
    assert!(t.pods_done.load(Ordering::Relaxed) > 0);
    assert!(
        fds_at_end <= fds_at_start + 64,
        "skiffd's fds grew from {fds_at_start} to {fds_at_end}"
    );
    assert!(max_rss < 512 * 1024, "skiffd's RSS reached {max_rss} KiB");
}
