//! What `podstart`, `density` and `nri` share: the workload image, pod specs, a
//! sweep that removes every pod on the way out, the census of a system's
//! shim processes, and the check that nothing is left.
//!
//! Finding a system's processes exactly: a shim is a process whose `argv[0]`
//! names the system's shim binary (`skiff-shim`, `containerd-shim-runc-v2`)
//! *and* whose arguments name a path under that system's directory on the
//! run's tmpfs (skiff's shim gets `--socket <state>/s/…`, containerd's
//! `-address <dir>/containerd.sock`). The tmpfs path is unique to the run, so
//! no process of another containerd or skiffd on the machine can match. The
//! pause and container processes are the shims' descendants whose PIDs the
//! daemon itself reports in the verbose `PodSandboxStatus` / `ContainerStatus`
//! info (`pid`); anything else below a shim is counted as "other".

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use skiff_cri::api;
use skiff_testkit::{Compression, ImageBuilder, busybox_layer};

use crate::cleanup::Undo;
use crate::cri::{self, PodSpec};
use crate::harness::{Harness, Kind, POD_BRIDGE, POD_SUBNET, Running, SANDBOX_REPO};
use crate::sys::{self, Mem, Proc};

/// The workload image's repository: busybox, pushed by the harness.
pub const WORKLOAD_REPO: &str = "skiff-perf/busybox";
/// Its tag.
pub const WORKLOAD_TAG: &str = "latest";

/// The workload image reference.
pub fn workload_image() -> String {
    Harness::reference(WORKLOAD_REPO, WORKLOAD_TAG)
}

/// The file name of a system's shim binary.
pub fn shim_program(kind: Kind) -> &'static str {
    match kind {
        Kind::Skiff => "skiff-shim",
        Kind::Containerd => "containerd-shim-runc-v2",
    }
}

/// Pushes the busybox workload image and pulls it (and the sandbox image) on
/// every running system, untimed, so no timed call pays for a pull. Returns
/// the notes for the report: image, networking, namespace modes.
pub fn prepare(h: &mut Harness, scenario: &str) -> anyhow::Result<Vec<String>> {
    push_workload(h)?;
    let mut notes = Vec::new();
    for sys in h.systems() {
        let kind = sys.kind;
        let Some(r) = sys.running() else { continue };
        for reference in [workload_image(), Harness::reference(SANDBOX_REPO, "latest")] {
            r.cri.pull(&reference).map_err(|e| {
                anyhow::anyhow!(
                    "{scenario}: pre-pulling {reference} on {}: {e}",
                    kind.label()
                )
            })?;
        }
        let leftover = r
            .cri
            .list_pods()
            .map_err(|e| anyhow::anyhow!("ListPodSandbox on {}: {e}", kind.label()))?;
        anyhow::ensure!(
            leftover.is_empty(),
            "{} already has {} pod(s) before {scenario} starts",
            kind.label(),
            leftover.len()
        );
        notes.push(network_note(kind, r));
    }
    notes.push(format!(
        "workload: busybox (`{}`, one gzip layer built by the harness from Debian's \
         busybox-static) running `sleep 3600`, logging to `<pod log dir>/sleeper.log`; both \
         images were pulled on both systems before anything was timed",
        workload_image()
    ));
    notes.push(
        "pod configs carry no security context, so every namespace mode is the CRI default \
         POD (as critest's benchmark sends): containers share the pod's PID namespace, and skiff \
         starts its `skiff-pause` as the pod's PID 1 (with the kubelet's usual pid mode \
         CONTAINER it would start none); containerd's sandbox container is the harness's busybox \
         image running `sleep infinity` (a static binary, like the real pause image); each pod \
         gets its own cgroup parent (`/skiff-perf-<pid>/<system>/<pod>`, cgroupfs, v1 here) as \
         the kubelet gives each pod one, which the harness removes afterwards; containerd runs \
         with `restrict_oom_score_adj = true` because runc may not lower oom_score_adj below 0 \
         on this machine (no CAP_SYS_RESOURCE; skiff clamps it likewise)"
            .into(),
    );
    Ok(notes)
}

/// Builds the busybox workload image and pushes it to the harness's registry.
pub fn push_workload(h: &Harness) -> anyhow::Result<()> {
    let image = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).context("building the busybox image")?)
        .cmd(["sh"])
        .build();
    h.push(WORKLOAD_REPO, WORKLOAD_TAG, &image)
        .context("pushing the busybox image")
}

/// What the report says about a system's pod networking, from CRI `Status`.
fn network_note(kind: Kind, r: &mut Running) -> String {
    let ready = r.cri.status().map(|s| {
        s.status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "NetworkReady")
            .map(|c| (c.status, c.message))
    });
    match (kind, ready) {
        (Kind::Skiff, Ok(Some((false, msg)))) => format!(
            "skiff pods had loopback-only networking (NetworkReady=false: {msg}); containerd's \
             include CNI bridge setup (Debian's containernetworking-plugins `bridge` `{POD_BRIDGE}` \
             with host-local IPAM on {POD_SUBNET}, then `loopback`, inside the harness's network \
             namespace): the comparison favours skiff by that much"
        ),
        (Kind::Skiff, Ok(Some((true, _)))) => format!(
            "skiff reported NetworkReady=true: both systems' pods had bridge networking \
             (containerd's through the CNI `bridge` plugin, `{POD_BRIDGE}` on {POD_SUBNET})"
        ),
        (Kind::Containerd, Ok(Some((ready, msg)))) => format!(
            "containerd reported NetworkReady={ready}{} with the harness's CNI conflist (bridge \
             `{POD_BRIDGE}`, isGateway, ipMasq false, host-local {POD_SUBNET}; loopback)",
            if msg.is_empty() {
                String::new()
            } else {
                format!(" ({msg})")
            }
        ),
        (_, Ok(None)) => format!("{} reported no NetworkReady condition", kind.label()),
        (_, Err(e)) => format!("{}: CRI Status failed: {e}", kind.label()),
    }
}

/// The pod and container config of pod `name` on `kind`; creates its log
/// directory (the kubelet does that before RunPodSandbox).
pub fn pod_spec(r: &Running, kind: Kind, name: &str) -> anyhow::Result<PodSpec> {
    let logs = r.dir.join("logs").join(name);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let sandbox = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            namespace: "skiff-perf".into(),
            uid: format!("{}-{name}", kind.label()),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("{}/{name}", r.cgroup_parent),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "sleeper".into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: workload_image(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "sleeper.log".into(),
        linux: Some(api::LinuxContainerConfig::default()),
        ..Default::default()
    };
    Ok(PodSpec { sandbox, container })
}

/// Removes every pod of one daemon when dropped, and from the signal thread
/// on SIGINT/SIGTERM: a scenario that fails half way leaves no pods behind.
#[derive(Debug)]
pub struct PodSweep {
    _undo: Undo,
}

impl PodSweep {
    /// A sweep for each running system of `h`.
    pub fn all(h: &mut Harness) -> Vec<PodSweep> {
        h.systems()
            .into_iter()
            .filter_map(|s| {
                let kind = s.kind;
                s.running().map(|r| PodSweep::new(kind, r))
            })
            .collect()
    }

    /// Guards the daemon `r` of `kind`; also removes the pods' cgroup parents.
    pub fn new(kind: Kind, r: &Running) -> PodSweep {
        PodSweep::named(kind.label().to_owned(), r)
    }

    /// Guards the daemon `r`, called `label` in messages; also removes the
    /// pods' cgroup parents.
    pub fn named(label: String, r: &Running) -> PodSweep {
        let socket = r.socket.clone();
        let cgroups = r.cgroup_parent.clone();
        PodSweep {
            _undo: Undo::register(format!("remove every pod on {label}"), move || {
                for e in cri::remove_all_pods(&socket) {
                    eprintln!("skiff-perf: cleanup on {label}: {e}");
                }
                for dir in sys::remove_cgroup_tree(&cgroups) {
                    eprintln!(
                        "skiff-perf: cleanup on {label}: cgroup {} is still in use",
                        dir.display()
                    );
                }
            }),
        }
    }
}

/// One system's runtime processes at one instant.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Shim PIDs.
    pub shims: Vec<u32>,
    /// Pause PIDs (the sandbox's `pid`), found below a shim.
    pub pauses: Vec<u32>,
    /// Container PIDs (the container's `pid`), found below a shim.
    pub containers: Vec<u32>,
    /// Other processes below a shim (a runc call in flight…), with argv.
    pub others: Vec<(u32, String)>,
    /// Reported pause or container PIDs that were not below any shim.
    pub strays: Vec<u32>,
}

/// The shims of `kind` running now (see the module doc for the rule).
pub fn shims(kind: Kind, dir: &Path, procs: &[Proc]) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    procs
        .iter()
        .filter(|p| p.program() == shim_program(kind) && p.mentions(&needle))
        .map(|p| p.pid)
        .collect()
}

/// Counts the shims of `kind` and sorts their descendants into pauses (PIDs
/// in `pause_pids`), containers (`container_pids`) and others.
pub fn census(
    kind: Kind,
    dir: &Path,
    pause_pids: &BTreeSet<u32>,
    container_pids: &BTreeSet<u32>,
) -> Census {
    let procs = sys::processes();
    let shims = shims(kind, dir, &procs);
    let below = sys::with_descendants(&procs, &shims);
    let mut c = Census {
        shims: shims.clone(),
        ..Census::default()
    };
    for pid in below.into_iter().skip(shims.len()) {
        if pause_pids.contains(&pid) {
            c.pauses.push(pid);
        } else if container_pids.contains(&pid) {
            c.containers.push(pid);
        } else {
            let argv = procs
                .iter()
                .find(|p| p.pid == pid)
                .map(|p| p.argv.join(" "))
                .unwrap_or_default();
            c.others.push((pid, argv));
        }
    }
    c.strays = pause_pids
        .iter()
        .chain(container_pids)
        .filter(|p| !c.pauses.contains(p) && !c.containers.contains(p))
        .copied()
        .collect();
    c
}

/// Summed memory of `pids` (those that exited meanwhile count nothing).
pub fn mem_of(pids: &[u32]) -> Mem {
    pids.iter().filter_map(|p| sys::mem(*p)).sum()
}

/// What is left of a system after its pods were removed.
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    /// Pods `ListPodSandbox` still shows.
    pub pods: usize,
    /// Shim processes still running once the wait ran out.
    pub shims: Vec<u32>,
    /// How long the shims took to go (or the wait, if they did not).
    pub shims_gone_after: Duration,
    /// Mount points under the system's directory beyond those there before the pods.
    pub mounts: Vec<String>,
    /// containerd's pod network namespaces (`/run/netns/cni-*`) beyond those there before.
    pub netns: Vec<String>,
    /// Sandbox and container cgroups the runtime left below the pods' cgroup
    /// parents (`<pod>/<id>`, relative to the system's cgroup).
    pub cgroups: Vec<String>,
}

impl Leftovers {
    /// Whether nothing is left.
    pub fn clean(&self) -> bool {
        self.pods == 0
            && self.shims.is_empty()
            && self.mounts.is_empty()
            && self.netns.is_empty()
            && self.cgroups.is_empty()
    }
}

/// Mount points of a system before its pods start, to compare against after.
#[derive(Debug, Clone)]
pub struct MountBaseline {
    dir: PathBuf,
    under_dir: BTreeSet<String>,
    netns: BTreeSet<String>,
}

impl MountBaseline {
    /// Records the mounts under `dir` and under `/run/netns` now.
    pub fn take(dir: &Path) -> MountBaseline {
        MountBaseline {
            dir: dir.to_path_buf(),
            under_dir: sys::mounts_under(dir).into_iter().collect(),
            netns: cni_netns().into_iter().collect(),
        }
    }

    /// Waits up to `wait` for the shims of `kind` to exit, then lists what is
    /// left compared with the baseline.
    pub fn leftovers(&self, kind: Kind, r: &mut Running, wait: Duration) -> Leftovers {
        let t = Instant::now();
        let mut shims_left = shims(kind, &self.dir, &sys::processes());
        while !shims_left.is_empty() && t.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(20));
            shims_left = shims(kind, &self.dir, &sys::processes());
        }
        let gone_after = t.elapsed();
        let new = |now: Vec<String>, before: &BTreeSet<String>| -> Vec<String> {
            now.into_iter().filter(|m| !before.contains(m)).collect()
        };
        Leftovers {
            pods: r.cri.list_pods().map_or(usize::MAX, |p| p.len()),
            shims: shims_left,
            shims_gone_after: gone_after,
            mounts: new(sys::mounts_under(&self.dir), &self.under_dir),
            netns: new(cni_netns(), &self.netns),
            cgroups: sys::cgroups_under(&r.cgroup_parent)
                .into_iter()
                .filter(|c| c.matches('/').count() >= 2)
                .collect(),
        }
    }
}

/// Network namespaces containerd's CRI pinned (`/run/netns/cni-<uuid>`).
fn cni_netns() -> Vec<String> {
    sys::mounts_under(Path::new("/run/netns"))
        .into_iter()
        .filter(|m| m.starts_with("/run/netns/cni-"))
        .collect()
}

/// A KiB figure as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
