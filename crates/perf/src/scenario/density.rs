//! `density`: what many idle pods cost each system in memory and CPU.
//!
//! One system at a time (skiff, then containerd, each cleaned up before the
//! next): M pods, each with one busybox `sleep 3600`, are started one after
//! the other. The daemon's RSS and PSS (`/proc/<pid>/smaps_rollup`) are read
//! idle before the first pod and at a few pod counts on the way (M/4, M/2,
//! M), together with the summed RSS/PSS of the system's shim, pause and
//! container processes, found as `pods` describes (by the system's tmpfs path
//! on the shim's command line, and the PIDs the daemon reports). Then the pods
//! sit idle for a while to measure CPU, are stopped and removed, and the
//! harness checks nothing is left: no pods, no shims, no new mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::Outcome;
use super::pods::{self, Census, Leftovers, MountBaseline, PodSweep, mib};
use crate::cri::StartedPod;
use crate::harness::{Harness, Kind, Running};
use crate::plot::Line;
use crate::stats::{Summary, fmt_opt, ms, ratio};
use crate::sys::{self, Mem};

/// How many pods, how long idle.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Pods started on each system.
    pub pods: usize,
    /// How long the pods sit idle while CPU is measured.
    pub idle: Duration,
}

impl Sizes {
    /// `perf/run density`: 100 pods, 10 s idle.
    pub const FULL: Sizes = Sizes {
        pods: 100,
        idle: Duration::from_secs(10),
    };
    /// `perf/run --quick`: 5 pods, 1 s idle.
    pub const QUICK: Sizes = Sizes {
        pods: 5,
        idle: Duration::from_secs(1),
    };
}

/// Memory at one pod count.
#[derive(Debug, Clone, Default)]
struct Point {
    pods: usize,
    daemon: Mem,
    census: Census,
    shims: Mem,
    pauses: Mem,
    containers: Mem,
}

impl Point {
    /// Daemon + shims + pauses: what the runtime itself costs.
    fn runtime(&self) -> Mem {
        self.daemon + self.shims + self.pauses
    }
}

/// One system's run.
#[derive(Debug, Default)]
struct Side {
    points: Vec<Point>,
    start_ms: Vec<f64>,
    start_cpu_s: Option<f64>,
    idle_s: f64,
    idle_daemon_cpu_s: Option<f64>,
    idle_shims_cpu_s: Option<f64>,
    teardown_s: f64,
    stop_remove_ms: Vec<f64>,
    leftovers: Option<Leftovers>,
    /// The pod number (1-based) whose start failed, and the error.
    failed_at: Option<(usize, String)>,
    errors: Vec<String>,
}

fn say(msg: &str) {
    eprintln!("skiff-perf: density: {msg}");
}

/// Runs the scenario.
pub fn run(h: &mut Harness, sizes: Sizes) -> anyhow::Result<Outcome> {
    let mut o = Outcome {
        line_title: format!("memory against pod count ({} idle pods)", sizes.pods),
        line_axes: ("pods running".into(), "RSS (MiB)".into()),
        ..Outcome::default()
    };
    o.notes = pods::prepare(h, "density")?;
    let mut sides = BTreeMap::new();
    for kind in Kind::ALL {
        let Some(r) = h.system(kind).running() else {
            continue;
        };
        let side = measure(kind, r, sizes);
        sides.insert(kind, side);
    }
    write_body(h, &mut o, &sides, sizes);
    Ok(o)
}

/// The pod counts memory is sampled at: 0, M/4, M/2, M.
fn checkpoints(m: usize) -> BTreeSet<usize> {
    [0, m / 4, m / 2, m].into_iter().collect()
}

fn measure(kind: Kind, r: &mut Running, sizes: Sizes) -> Side {
    let mut side = Side::default();
    let sweep = PodSweep::new(kind, r);
    let baseline = MountBaseline::take(&r.dir);
    let daemon_pid = r.pid();
    let marks = checkpoints(sizes.pods);
    let mut pods: Vec<StartedPod> = Vec::new();
    let mut stray_ids: Vec<String> = Vec::new();
    let mut pause_pids = BTreeSet::new();
    let mut container_pids = BTreeSet::new();
    let mut known = 0;

    // Let the pre-pull settle before the idle reading.
    std::thread::sleep(Duration::from_millis(500));
    side.points.push(point(
        kind,
        r,
        0,
        &pods,
        &mut known,
        &mut pause_pids,
        &mut container_pids,
        &mut side.errors,
    ));
    let cpu0 = sys::cpu_seconds(daemon_pid).ok();
    for i in 1..=sizes.pods {
        if let Some(status) = r.daemon.exited() {
            side.failed_at = Some((i, format!("daemon exited ({status})")));
            break;
        }
        let spec = match pods::pod_spec(r, kind, &format!("dens-{i}")) {
            Ok(s) => s,
            Err(e) => {
                side.failed_at = Some((i, format!("{e:#}")));
                break;
            }
        };
        match r.cri.start_pod(&spec) {
            Ok(p) => {
                side.start_ms.push(ms(p.total()));
                pods.push(p);
            }
            Err(f) => {
                say(&format!(
                    "{}: pod {i} of {} failed: {f}",
                    kind.label(),
                    sizes.pods
                ));
                side.failed_at = Some((i, f.to_string()));
                stray_ids.extend(f.pod_id);
                break;
            }
        }
        if marks.contains(&i) {
            let cpu = sys::cpu_seconds(daemon_pid).ok();
            side.points.push(point(
                kind,
                r,
                i,
                &pods,
                &mut known,
                &mut pause_pids,
                &mut container_pids,
                &mut side.errors,
            ));
            if i == sizes.pods {
                side.start_cpu_s = cpu0.zip(cpu).map(|(a, b)| b - a);
            }
        }
        if i.is_multiple_of(25) {
            say(&format!(
                "{}: {i}/{} pods running",
                kind.label(),
                sizes.pods
            ));
        }
    }
    if side.failed_at.is_some() && side.points.last().is_some_and(|p| p.pods != pods.len()) {
        side.points.push(point(
            kind,
            r,
            pods.len(),
            &pods,
            &mut known,
            &mut pause_pids,
            &mut container_pids,
            &mut side.errors,
        ));
    }

    // Idle CPU: the daemon and the shims over a quiet window.
    let shims = side
        .points
        .last()
        .map(|p| p.census.shims.clone())
        .unwrap_or_default();
    let shim_cpu = |pids: &[u32]| -> Option<f64> {
        pids.iter()
            .map(|p| sys::cpu_seconds(*p).ok())
            .sum::<Option<f64>>()
    };
    let d0 = sys::cpu_seconds(daemon_pid).ok();
    let s0 = shim_cpu(&shims);
    let t = Instant::now();
    std::thread::sleep(sizes.idle);
    let d1 = sys::cpu_seconds(daemon_pid).ok();
    let s1 = shim_cpu(&shims);
    side.idle_s = t.elapsed().as_secs_f64();
    side.idle_daemon_cpu_s = d0.zip(d1).map(|(a, b)| b - a);
    side.idle_shims_cpu_s = s0.zip(s1).map(|(a, b)| b - a);

    // Teardown, one pod at a time as the kubelet would, then the check.
    say(&format!("{}: removing {} pods", kind.label(), pods.len()));
    let t = Instant::now();
    let ids = pods
        .iter()
        .map(|p| p.pod_id.clone())
        .chain(stray_ids)
        .collect::<Vec<_>>();
    for id in &ids {
        let t = Instant::now();
        let stopped = r.cri.stop_pod(id);
        let removed = r.cri.remove_pod(id);
        match (stopped, removed) {
            (Ok(_), Ok(_)) => side.stop_remove_ms.push(ms(t.elapsed())),
            (Err(e), _) => side.errors.push(format!("StopPodSandbox {id}: {e}")),
            (_, Err(e)) => side.errors.push(format!("RemovePodSandbox {id}: {e}")),
        }
    }
    side.teardown_s = t.elapsed().as_secs_f64();
    side.leftovers = Some(baseline.leftovers(kind, r, Duration::from_secs(10)));
    drop(sweep);
    side
}

/// Reads memory now, with `pods` running. Verbose statuses are fetched for
/// the pods started since the last reading (`known` of them were seen).
#[allow(clippy::too_many_arguments)]
fn point(
    kind: Kind,
    r: &mut Running,
    n: usize,
    pods: &[StartedPod],
    known: &mut usize,
    pause_pids: &mut BTreeSet<u32>,
    container_pids: &mut BTreeSet<u32>,
    errors: &mut Vec<String>,
) -> Point {
    for p in &pods[*known..] {
        match r.cri.pod_pid(&p.pod_id) {
            Ok(Some(pid)) if pid > 0 => {
                pause_pids.insert(pid);
            }
            Ok(_) => errors.push(format!("pod {}: no pid in its verbose status", p.pod_id)),
            Err(e) => errors.push(format!("PodSandboxStatus {}: {e}", p.pod_id)),
        }
        match r.cri.container_pid(&p.container_id) {
            Ok(Some(pid)) if pid > 0 => {
                container_pids.insert(pid);
            }
            Ok(_) => errors.push(format!(
                "container {}: no pid in its verbose status",
                p.container_id
            )),
            Err(e) => errors.push(format!("ContainerStatus {}: {e}", p.container_id)),
        }
    }
    *known = pods.len();
    let census = pods::census(kind, &r.dir, pause_pids, container_pids);
    Point {
        pods: n,
        daemon: sys::mem(r.pid()).unwrap_or_default(),
        shims: pods::mem_of(&census.shims),
        pauses: pods::mem_of(&census.pauses),
        containers: pods::mem_of(&census.containers),
        census,
    }
}

/// KiB per pod.
fn per_pod(kib: u64, pods: usize) -> Option<f64> {
    (pods > 0).then(|| kib as f64 / pods as f64)
}

/// Signed growth in MiB.
fn growth(after: u64, before: u64) -> String {
    format!("{:+.1}", (after as f64 - before as f64) / 1024.0)
}

/// What the runtime costs per pod, KiB: (shims + pauses + daemon growth) / pods.
fn runtime_per_pod(side: &Side) -> Option<(f64, f64)> {
    let idle = side.points.first()?;
    let last = side.points.last()?;
    if last.pods == 0 {
        return None;
    }
    let grow = |a: u64, b: u64| a as f64 - b as f64;
    let n = last.pods as f64;
    Some((
        ((last.shims.rss_kib + last.pauses.rss_kib) as f64
            + grow(last.daemon.rss_kib, idle.daemon.rss_kib))
            / n,
        ((last.shims.pss_kib + last.pauses.pss_kib) as f64
            + grow(last.daemon.pss_kib, idle.daemon.pss_kib))
            / n,
    ))
}

fn write_body(h: &mut Harness, o: &mut Outcome, sides: &BTreeMap<Kind, Side>, sizes: Sizes) {
    let b = &mut o.body;
    let _ = writeln!(
        b,
        "## How\n\n\
         {m} pods per system, each with one busybox `sleep 3600` container, started one after the \
         other; one system at a time (skiff, then containerd), each cleaned up before the next. \
         RSS and PSS come from `/proc/<pid>/smaps_rollup` (PSS divides shared pages among the \
         processes mapping them, so PSS sums add up; RSS sums count shared pages once per \
         process). Shims: processes whose `argv[0]` is `skiff-shim` / `containerd-shim-runc-v2` \
         and whose arguments name a path under that system's directory on this run's tmpfs. \
         Pauses and containers: the shims' descendants whose PIDs the daemon reports in its \
         verbose PodSandboxStatus / ContainerStatus (`pid`): skiff's are `skiff-pause`, \
         containerd's are its sandbox image's `sleep infinity`. The containers (the workload) \
         are listed but not counted as runtime memory.\n",
        m = sizes.pods
    );
    for (kind, side) in sides {
        if let Some((at, e)) = &side.failed_at {
            let _ = writeln!(
                b,
                "**{}: pod {at} of {} failed to start: {}** (figures below are for the {} pods \
                 that ran)\n",
                kind.label(),
                sizes.pods,
                e.replace('\n', " "),
                at - 1
            );
        }
    }

    let _ = writeln!(
        b,
        "## Daemon memory (MiB)\n\n\
         | system | pods running | RSS idle | RSS with pods | RSS growth | PSS idle | PSS with pods | PSS growth |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (kind, side) in sides {
        let (Some(idle), Some(last)) = (side.points.first(), side.points.last()) else {
            continue;
        };
        let _ = writeln!(
            b,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.label(),
            last.pods,
            mib(idle.daemon.rss_kib),
            mib(last.daemon.rss_kib),
            growth(last.daemon.rss_kib, idle.daemon.rss_kib),
            mib(idle.daemon.pss_kib),
            mib(last.daemon.pss_kib),
            growth(last.daemon.pss_kib, idle.daemon.pss_kib),
        );
    }

    let _ = writeln!(
        b,
        "\n## Per-pod processes with all pods running\n\n\
         Sums in MiB, per pod in KiB. \"other\" = further processes below the shims (none \
         expected once every container runs).\n\n\
         | system | pods | shims | pauses | containers | other | shim RSS sum | shim PSS sum | shim RSS/pod KiB | shim PSS/pod KiB | pause RSS/pod KiB | pause PSS/pod KiB | container RSS/pod KiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (kind, side) in sides {
        let Some(last) = side.points.last() else {
            continue;
        };
        let c = &last.census;
        let n = last.pods;
        let _ = writeln!(
            b,
            "| {} | {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.label(),
            c.shims.len(),
            c.pauses.len(),
            c.containers.len(),
            c.others.len(),
            mib(last.shims.rss_kib),
            mib(last.shims.pss_kib),
            fmt_opt(per_pod(last.shims.rss_kib, n), 0),
            fmt_opt(per_pod(last.shims.pss_kib, n), 0),
            fmt_opt(per_pod(last.pauses.rss_kib, n), 0),
            fmt_opt(per_pod(last.pauses.pss_kib, n), 0),
            fmt_opt(per_pod(last.containers.rss_kib, n), 0),
        );
    }

    let _ = writeln!(
        b,
        "\n## Runtime memory per pod (KiB)\n\n\
         (shims + pauses + the daemon's growth from idle) / pods running.\n\n\
         | system | pods | RSS per pod | PSS per pod |\n|---|---:|---:|---:|"
    );
    let mut per = BTreeMap::new();
    for (kind, side) in sides {
        if let (Some(v), Some(last)) = (runtime_per_pod(side), side.points.last()) {
            per.insert(*kind, v);
            let _ = writeln!(
                b,
                "| {} | {} | {:.0} | {:.0} |",
                kind.label(),
                last.pods,
                v.0,
                v.1
            );
        }
    }
    if let (Some(s), Some(c)) = (per.get(&Kind::Skiff), per.get(&Kind::Containerd)) {
        let _ = writeln!(
            b,
            "| **skiff/containerd** | | **{}** | **{}** |",
            fmt_opt(ratio(Some(s.0), Some(c.0)), 3),
            fmt_opt(ratio(Some(s.1), Some(c.1)), 3)
        );
    }

    let _ = writeln!(
        b,
        "\n## Memory against pod count (MiB)\n\n\
         runtime = daemon + shims + pauses.\n\n\
         | system | pods | daemon RSS | shims RSS | pauses RSS | runtime RSS | daemon PSS | runtime PSS |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (kind, side) in sides {
        for p in &side.points {
            let rt = p.runtime();
            let _ = writeln!(
                b,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.label(),
                p.pods,
                mib(p.daemon.rss_kib),
                mib(p.shims.rss_kib),
                mib(p.pauses.rss_kib),
                mib(rt.rss_kib),
                mib(p.daemon.pss_kib),
                mib(rt.pss_kib),
            );
        }
    }

    let _ = writeln!(
        b,
        "\n## CPU\n\n\
         Start = the daemon's CPU (utime+stime, with reaped children) while the pods were \
         started, and the per-pod start latency (RunPodSandbox + CreateContainer + \
         StartContainer) with the earlier pods still running. Idle = CPU over a quiet window \
         with every pod running.\n\n\
         | system | pods | daemon CPU s starting them | start p50 ms | start p95 ms | start max ms | idle window s | daemon CPU s idle | shims CPU s idle |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (kind, side) in sides {
        let s = Summary::of(&side.start_ms);
        let _ = writeln!(
            b,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
            kind.label(),
            side.start_ms.len(),
            fmt_opt(side.start_cpu_s, 2),
            fmt_opt(s.map(|s| s.p50), 1),
            fmt_opt(s.map(|s| s.p95), 1),
            fmt_opt(s.map(|s| s.max), 1),
            side.idle_s,
            fmt_opt(side.idle_daemon_cpu_s, 3),
            fmt_opt(side.idle_shims_cpu_s, 3),
        );
    }

    let _ = writeln!(
        b,
        "\n## Teardown and what was left\n\n\
         Every pod stopped and removed one at a time (StopPodSandbox, then RemovePodSandbox). Then: \
         pods = ListPodSandbox; shims = the system's shim processes still running after up to \
         10 s; mounts = mount points under the system's tmpfs directory that were not there \
         before the first pod; netns = containerd's `/run/netns/cni-*` not there before; cgroups = \
         sandbox and container cgroups left below the pods' cgroup parents (in any hierarchy).\n\n\
         | system | pods removed | teardown s | stop+remove p50 ms | pods left | shims left | shims gone after ms | new mounts | new netns | cgroups left | clean |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for (kind, side) in sides {
        let Some(l) = &side.leftovers else { continue };
        let s = Summary::of(&side.stop_remove_ms);
        let _ = writeln!(
            b,
            "| {} | {} | {:.2} | {} | {} | {} | {:.0} | {} | {} | {} | {} |",
            kind.label(),
            side.stop_remove_ms.len(),
            side.teardown_s,
            fmt_opt(s.map(|s| s.p50), 1),
            if l.pods == usize::MAX {
                "?".to_owned()
            } else {
                l.pods.to_string()
            },
            l.shims.len(),
            ms(l.shims_gone_after),
            l.mounts.len(),
            l.netns.len(),
            l.cgroups.len(),
            if l.clean() { "yes" } else { "**no**" }
        );
    }

    let _ = writeln!(
        b,
        "\n## Reference figures (quoted, not measured here)\n\n\
         skiff's design document (DESIGN.md, \"Numbers to beat\") quotes containerd **2.4** on \
         this kind of machine: daemon RSS 50 MiB idle, 68 MiB with 30 pods; its Go shim 11.8 MiB \
         RSS / 4.7 MiB PSS per pod. Those are the design document's figures, not this run's; the \
         anchor measured above is Debian's containerd 1.6."
    );

    let mut errors = Vec::new();
    for (kind, side) in sides {
        for e in super::dedup(&side.errors) {
            errors.push(format!("{}: {e}", kind.label()));
        }
        if let Some((at, e)) = &side.failed_at {
            errors.push(format!("{}: pod {at} failed to start: {e}", kind.label()));
        }
        if let Some(l) = &side.leftovers {
            for pid in &l.shims {
                errors.push(format!("{}: shim pid {pid} still running", kind.label()));
            }
            for m in l.mounts.iter().chain(&l.netns) {
                errors.push(format!("{}: mount {m} left behind", kind.label()));
            }
            for c in &l.cgroups {
                errors.push(format!(
                    "{}: cgroup <pod cgroup>{c} left behind",
                    kind.label()
                ));
            }
        }
        if let Some(last) = side.points.last() {
            for (pid, argv) in &last.census.others {
                errors.push(format!(
                    "{}: unexpected process {pid} below a shim: {argv}",
                    kind.label()
                ));
            }
            for pid in &last.census.strays {
                errors.push(format!(
                    "{}: reported pid {pid} is not below any shim",
                    kind.label()
                ));
            }
        }
        let pts = |f: fn(&Point) -> u64| -> Vec<(f64, f64)> {
            side.points
                .iter()
                .map(|p| (p.pods as f64, f(p) as f64 / 1024.0))
                .collect()
        };
        o.lines.push(Line {
            system: *kind,
            label: format!("{} runtime (daemon + shims + pauses)", kind.label()),
            bold: true,
            points: pts(|p| p.runtime().rss_kib),
        });
        o.lines.push(Line {
            system: *kind,
            label: format!("{} daemon", kind.label()),
            bold: false,
            points: pts(|p| p.daemon.rss_kib),
        });
    }
    o.errors = errors;
    if h.containerd.state.is_err() || h.skiff.state.is_err() {
        o.notes
            .push("one system was unavailable: its rows are missing above".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_quarters() {
        assert_eq!(
            checkpoints(100).into_iter().collect::<Vec<_>>(),
            [0, 25, 50, 100]
        );
        assert_eq!(checkpoints(5).into_iter().collect::<Vec<_>>(), [0, 1, 2, 5]);
        assert_eq!(checkpoints(1).into_iter().collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn runtime_per_pod_counts_daemon_growth() {
        let idle = Point {
            daemon: Mem {
                rss_kib: 1000,
                pss_kib: 900,
            },
            ..Point::default()
        };
        let full = Point {
            pods: 10,
            daemon: Mem {
                rss_kib: 2000,
                pss_kib: 1900,
            },
            shims: Mem {
                rss_kib: 5000,
                pss_kib: 3000,
            },
            pauses: Mem {
                rss_kib: 1000,
                pss_kib: 100,
            },
            ..Point::default()
        };
        let side = Side {
            points: vec![idle, full],
            ..Side::default()
        };
        assert_eq!(runtime_per_pod(&side), Some((700.0, 410.0)));
    }
}
