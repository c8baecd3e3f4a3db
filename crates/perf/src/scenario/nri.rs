//! `nri`: what the Node Resource Interface costs a pod start in skiffd.
//!
//! Three skiffds run side by side in the harness's network namespace, each on
//! its own root, state, socket, bridge and pod CIDR under the run's tmpfs, and
//! differing otherwise only in `[nri]`: off; on with a socket of its own and no
//! plugin; on with one no-op plugin connected. The plugin is skiff-nri's stub
//! [`Recorder`] subscribed to every event, served by this process on a tokio
//! runtime of its own, so every hook really goes over the socket and back.
//!
//! Each skiffd gets one untimed warm-up pod, then N pods one at a time, the
//! configurations taking turns (off, no plugin, plugin; no plugin, plugin,
//! off; …) so drift cancels. Each pod: RunPodSandbox → CreateContainer
//! (busybox `sleep 3600`) → StartContainer, each call timed by the harness's
//! CRI client, then StopPodSandbox and RemovePodSandbox, timed too. One pod
//! exists at a time across all three. containerd takes no part: Debian's
//! containerd 1.6 has no comparable NRI.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use skiff_nri::stub::{Connection, Recorder};
use skiff_nri::{EventMask, PluginId};

use super::Outcome;
use super::pods::{self, PodSweep};
use crate::cri::StartedPod;
use crate::harness::{Harness, Kind, Running, SANDBOX_REPO};
use crate::plot::{Group, Series};
use crate::report::why_none;
use crate::stats::{Summary, fmt_opt, ms};
use crate::sys;

/// How many pods.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Sequential timed pods per configuration.
    pub pods: usize,
}

impl Sizes {
    /// `perf/run nri`: 40 pods per configuration.
    pub const FULL: Sizes = Sizes { pods: 40 };
    /// `perf/run --quick`: 3 pods per configuration.
    pub const QUICK: Sizes = Sizes { pods: 3 };
}

/// The timed steps, in report order.
const STEPS: [&str; 6] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "total start",
    "StopPodSandbox",
    "RemovePodSandbox",
];
/// The index of "total start" in [`STEPS`].
const TOTAL: usize = 3;

/// The plugin's index and name (`NN-name`).
const PLUGIN_IDX: &str = "50";
const PLUGIN_NAME: &str = "skiff-perf-noop";
/// How long the plugin may take to be registered and synchronized.
const SYNC_LIMIT: Duration = Duration::from_secs(10);

/// One skiffd configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    /// `[nri] enable = false`.
    Off,
    /// `[nri] enable = true`, its own socket, no plugin.
    NoPlugin,
    /// As [`Setup::NoPlugin`], with the no-op plugin connected.
    Plugin,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Off, Setup::NoPlugin, Setup::Plugin];

    /// The daemon's directory on the tmpfs and its cgroup.
    fn name(self) -> &'static str {
        match self {
            Setup::Off => "nri-off",
            Setup::NoPlugin => "nri-idle",
            Setup::Plugin => "nri-plugin",
        }
    }

    /// The name in tables.
    fn label(self) -> &'static str {
        match self {
            Setup::Off => "NRI off",
            Setup::NoPlugin => "NRI on, no plugin",
            Setup::Plugin => "NRI on, 1 no-op plugin",
        }
    }

    /// The name under a plot column.
    fn short(self) -> &'static str {
        match self {
            Setup::Off => "off",
            Setup::NoPlugin => "no plugin",
            Setup::Plugin => "plugin",
        }
    }

    /// Its own bridge and pod CIDR: three skiffds share the namespace with the
    /// harness's own (`skiff0`, 10.88.0.0/16) and containerd's CNI bridge.
    fn network(self) -> (&'static str, &'static str) {
        match self {
            Setup::Off => ("sknri0", "10.81.0.0/16"),
            Setup::NoPlugin => ("sknri1", "10.82.0.0/16"),
            Setup::Plugin => ("sknri2", "10.83.0.0/16"),
        }
    }

    /// The expectation stated before measuring, for the Δ against [`Setup::Off`].
    fn expectation(self) -> &'static str {
        match self {
            Setup::Off => "(baseline)",
            Setup::NoPlugin => "not measurable",
            Setup::Plugin => "< 0.5 ms",
        }
    }

    /// The order the configurations take their turn in iteration `i`.
    fn order(i: usize) -> [Setup; 3] {
        let k = i % 3;
        [0, 1, 2].map(|j| Setup::ALL[(j + k) % 3])
    }

    /// The config tables after the harness's `[registry]`, for a daemon in `dir`.
    fn toml(self, dir: &Path) -> String {
        let (bridge, cidr) = self.network();
        let mut s = format!("\n[network]\nbridge = \"{bridge}\"\npod_cidr = \"{cidr}\"\n\n[nri]\n");
        match self {
            Setup::Off => s.push_str("enable = false\n"),
            Setup::NoPlugin | Setup::Plugin => {
                let _ = write!(
                    s,
                    "enable = true\nsocket_path = \"{}\"\nplugin_path = \"{}\"\n\
                     plugin_config_path = \"{}\"\n",
                    nri_socket(dir).display(),
                    dir.join("nri-plugins").display(),
                    dir.join("nri-conf").display()
                );
            }
        }
        s
    }
}

/// The NRI socket of the daemon in `dir`.
fn nri_socket(dir: &Path) -> PathBuf {
    dir.join("nri.sock")
}

/// The no-op plugin, connected to one skiffd from this process. Its runtime has
/// a worker thread of its own, so it answers while the harness's thread waits
/// in a CRI call.
struct Plugin {
    recorder: Arc<Recorder>,
    conn: Option<Connection>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").finish_non_exhaustive()
    }
}

impl Plugin {
    /// Dials `socket`, registers, and waits until skiffd synchronized the plugin
    /// (as skiff's NRI end-to-end tests connect theirs).
    fn connect(socket: &Path) -> anyhow::Result<Plugin> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nri-plugin")
            .enable_all()
            .build()
            .context("building the plugin's tokio runtime")?;
        let recorder = Recorder::new(EventMask::all());
        let id = PluginId {
            idx: PLUGIN_IDX.into(),
            name: PLUGIN_NAME.into(),
        };
        let r = recorder.clone();
        let conn = rt.block_on(async move {
            let conn = Connection::dial(socket, &id, r.clone())
                .await
                .with_context(|| format!("connecting the plugin to {}", socket.display()))?;
            let start = tokio::time::Instant::now();
            while r.synced().is_none() {
                if start.elapsed() > SYNC_LIMIT {
                    bail!("the plugin was not synchronized within {SYNC_LIMIT:?}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(conn)
        })?;
        Ok(Plugin {
            recorder,
            conn: Some(conn),
            rt,
        })
    }

    /// Why the connection closed, if it did.
    fn closed(&self) -> Option<String> {
        let c = self.conn.as_ref()?;
        c.is_closed()
            .then(|| c.close_reason().unwrap_or_else(|| "closed".into()))
    }

    /// Counts the events seen since the last call into `tally`, and forgets them.
    fn tally(&self, tally: &mut BTreeMap<&'static str, usize>) {
        for s in self.recorder.seen() {
            *tally.entry(s.event.name()).or_default() += 1;
        }
        self.recorder.reset();
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // Disconnect inside the runtime that serves the connection, then let the
        // runtime go (its worker thread stops with it).
        let _guard = self.rt.enter();
        if let Some(c) = self.conn.take() {
            c.close();
        }
    }
}

/// One configuration's skiffd and, for [`Setup::Plugin`], its plugin. Fields
/// drop in order: the pods are removed while daemon and plugin still run, then
/// the plugin disconnects, then the daemon stops.
#[derive(Debug)]
struct Instance {
    _sweep: PodSweep,
    plugin: Option<Plugin>,
    running: Running,
    /// The daemon's CPU seconds before its warm-up pod.
    cpu0: Option<f64>,
}

/// One configuration's samples, ms, indexed like [`STEPS`].
#[derive(Debug, Default)]
struct Cell {
    steps: [Vec<f64>; 6],
    errors: Vec<String>,
    /// The warm-up pod's IP as PodSandboxStatus reports it.
    pod_ip: Option<String>,
    /// Events the plugin received during the timed pods, by name.
    events: BTreeMap<&'static str, usize>,
}

fn say(msg: &str) {
    eprintln!("skiff-perf: nri: {msg}");
}

/// Starts the daemon of `setup` (and connects its plugin), pulls both images
/// on it, untimed. Whatever started is stopped again if a later step fails.
fn start(h: &Harness, setup: Setup) -> Result<Instance, String> {
    let dir = h.base().join(setup.name());
    for d in [dir.join("nri-plugins"), dir.join("nri-conf")] {
        // Empty: no pre-installed plugin or plugin configuration is picked up.
        std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let mut running = h.start_skiffd_with(setup.name(), &setup.toml(&dir))?;
    let sweep = PodSweep::named(format!("skiffd {}", setup.name()), &running);
    for reference in [
        pods::workload_image(),
        Harness::reference(SANDBOX_REPO, "latest"),
    ] {
        running
            .cri
            .pull(&reference)
            .map_err(|e| format!("pre-pulling {reference}: {e}"))?;
    }
    let plugin = match setup {
        Setup::Plugin => Some(Plugin::connect(&nri_socket(&dir)).map_err(|e| format!("{e:#}"))?),
        Setup::Off | Setup::NoPlugin => None,
    };
    let cpu0 = sys::cpu_seconds(running.pid()).ok();
    Ok(Instance {
        _sweep: sweep,
        plugin,
        running,
        cpu0,
    })
}

/// Runs the scenario.
pub fn run(h: &mut Harness, sizes: Sizes) -> anyhow::Result<Outcome> {
    let mut o = Outcome {
        plot_title: "skiffd pod start by NRI configuration (each dot one pod; bar = p50)".into(),
        plot_labels: vec![(Kind::Skiff, "skiffd".into())],
        ..Outcome::default()
    };
    pods::push_workload(h)?;

    let mut instances: BTreeMap<Setup, Result<Instance, String>> = BTreeMap::new();
    for setup in Setup::ALL {
        say(&format!("starting skiffd {}", setup.name()));
        let inst = start(h, setup);
        if let Err(e) = &inst {
            say(&format!("{} unavailable: {e}", setup.label()));
        }
        instances.insert(setup, inst);
    }

    let mut cells: BTreeMap<Setup, Cell> = BTreeMap::new();
    for setup in Setup::ALL {
        let Some(Ok(inst)) = instances.get_mut(&setup) else {
            continue;
        };
        let mut warm = Cell::default();
        one_pod(inst, "warm-up", &mut warm);
        let cell = cells.entry(setup).or_default();
        cell.pod_ip = warm.pod_ip;
        if let Some(e) = warm.errors.first() {
            cell.errors.push(format!("warm-up pod: {e}"));
        }
    }
    for i in 0..sizes.pods {
        for setup in Setup::order(i) {
            if let Some(Ok(inst)) = instances.get_mut(&setup) {
                one_pod(inst, &format!("seq-{i}"), cells.entry(setup).or_default());
            }
        }
        if (i + 1).is_multiple_of(10) || i + 1 == sizes.pods {
            say(&format!(
                "{}/{} sequential pods per configuration",
                i + 1,
                sizes.pods
            ));
        }
    }

    write_body(&mut o, &instances, &cells, sizes);
    // Dropping the instances removes their pods, disconnects the plugin and
    // stops the daemons (each instance in that order).
    drop(instances);
    Ok(o)
}

/// Starts, stops and removes one pod on `inst`. The samples count only when
/// every call succeeded and the plugin (if any) was connected throughout.
fn one_pod(inst: &mut Instance, name: &str, cell: &mut Cell) {
    let r = &mut inst.running;
    if let Some(status) = r.daemon.exited() {
        cell.errors.push(format!("daemon exited ({status})"));
        return;
    }
    if let Some(reason) = inst.plugin.as_ref().and_then(Plugin::closed) {
        cell.errors
            .push(format!("the plugin is disconnected: {reason}"));
        return;
    }
    let spec = match pods::pod_spec(r, Kind::Skiff, name) {
        Ok(s) => s,
        Err(e) => {
            cell.errors.push(format!("{e:#}"));
            return;
        }
    };
    let mut samples = [None; 6];
    let mut ok = true;
    let pod_id = match r.cri.start_pod(&spec) {
        Ok(p) => {
            let StartedPod {
                run, create, start, ..
            } = p;
            for (i, d) in [run, create, start, p.total()].into_iter().enumerate() {
                samples[i] = Some(ms(d));
            }
            if cell.pod_ip.is_none() {
                // Untimed, between two timed calls.
                cell.pod_ip = Some(match r.cri.pod_ip(&p.pod_id) {
                    Ok(ip) if ip.is_empty() => "none".into(),
                    Ok(ip) => ip,
                    Err(e) => format!("unknown (PodSandboxStatus: {e})"),
                });
            }
            p.pod_id
        }
        Err(f) => {
            cell.errors.push(format!("pod {name}: {f}"));
            ok = false;
            match f.pod_id {
                Some(id) => id,
                None => return,
            }
        }
    };
    match r.cri.stop_pod(&pod_id) {
        Ok(d) => samples[4] = Some(ms(d)),
        Err(e) => {
            cell.errors.push(format!("pod {name}: StopPodSandbox: {e}"));
            ok = false;
        }
    }
    match r.cri.remove_pod(&pod_id) {
        Ok(d) => samples[5] = Some(ms(d)),
        Err(e) => {
            cell.errors
                .push(format!("pod {name}: RemovePodSandbox: {e}"));
            ok = false;
        }
    }
    if let Some(p) = &inst.plugin {
        if let Some(reason) = p.closed() {
            cell.errors.push(format!(
                "pod {name}: the plugin was disconnected ({reason}); its samples are dropped"
            ));
            ok = false;
        }
        p.tally(&mut cell.events);
    }
    if ok {
        for (i, v) in samples.into_iter().enumerate() {
            if let Some(v) = v {
                cell.steps[i].push(v);
            }
        }
    }
}

fn write_body(
    o: &mut Outcome,
    instances: &BTreeMap<Setup, Result<Instance, String>>,
    cells: &BTreeMap<Setup, Cell>,
    sizes: Sizes,
) {
    let empty = Cell::default();
    let cell = |s: Setup| cells.get(&s).unwrap_or(&empty);
    let why =
        |s: Setup, instances: &BTreeMap<Setup, Result<Instance, String>>| match instances.get(&s) {
            Some(Err(e)) => format!("unavailable: {}", e.replace('|', "\\|").replace('\n', " ")),
            _ => why_none(true, &cell(s).errors),
        };
    let summary = |s: Setup, step: usize| Summary::of(&cell(s).steps[step]);
    let b = &mut o.body;

    let _ = writeln!(
        b,
        "## Sequential pods (ms)\n\n\
         Three skiffds, identical but for `[nri]`: **{off}** (`enable = false`); **{idle}** \
         (`enable = true`, a socket of its own, no plugin connected, an empty plugin_path and \
         plugin_config_path); **{plugin}** (the same, with skiff-nri's stub plugin connected to \
         the socket and subscribed to every event). {n} pods per configuration, one at a time, \
         the configurations taking turns (off, no plugin, plugin; no plugin, plugin, off; …), \
         after one untimed warm-up pod each. Each pod: RunPodSandbox → CreateContainer (busybox \
         `sleep 3600`) → StartContainer, each call timed by the harness's CRI client; total \
         start = the three; then StopPodSandbox (the container still running) and \
         RemovePodSandbox, timed too. One pod exists at a time. Nearest-rank percentiles; Δ p50 \
         = the configuration's p50 minus {off}'s for the same step.\n\n\
         | step | configuration | n | p50 | p90 | mean | Δ p50 vs off |\n\
         |---|---|---:|---:|---:|---:|---:|",
        off = Setup::Off.label(),
        idle = Setup::NoPlugin.label(),
        plugin = Setup::Plugin.label(),
        n = sizes.pods
    );
    for (i, step) in STEPS.iter().enumerate() {
        let base = summary(Setup::Off, i).map(|s| s.p50);
        for setup in Setup::ALL {
            match summary(setup, i) {
                Some(s) => {
                    let delta = match setup {
                        Setup::Off => "—".to_owned(),
                        _ => base.map_or_else(|| "—".into(), |b| format!("{:+.2}", s.p50 - b)),
                    };
                    let _ = writeln!(
                        b,
                        "| {step} | {} | {} | {:.2} | {:.2} | {:.2} | {delta} |",
                        setup.label(),
                        s.n,
                        s.p50,
                        s.p90,
                        s.mean
                    );
                }
                None => {
                    let _ = writeln!(
                        b,
                        "| {step} | {} | 0 | {} | | | |",
                        setup.label(),
                        why(setup, instances)
                    );
                }
            }
        }
    }

    let _ = writeln!(
        b,
        "\n## What NRI adds to a pod start\n\n\
         The difference of p50 total start (RunPodSandbox + CreateContainer + StartContainer) \
         against {off}. The expectation was written down before measuring: no plugin: not \
         measurable; one no-op plugin: < 0.5 ms. The table gives the measured figures; the \
         harness asserts nothing. A difference means little unless it is large against the \
         spread of the samples themselves (p90 − p50 above){few}.\n\n\
         | configuration | p50 total start ms | Δ p50 vs off ms | Δ mean vs off ms | expectation |\n\
         |---|---:|---:|---:|---|",
        off = Setup::Off.label(),
        few = if sizes.pods < 10 {
            "; with this few samples the figures are indicative only"
        } else {
            ""
        }
    );
    let base = summary(Setup::Off, TOTAL);
    for setup in Setup::ALL {
        let s = summary(setup, TOTAL);
        let delta = |f: fn(&Summary) -> f64| match (setup, s, base) {
            (Setup::Off, _, _) => "—".to_owned(),
            (_, Some(s), Some(b)) => format!("{:+.2}", f(&s) - f(&b)),
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            b,
            "| {} | {} | {} | {} | {} |",
            setup.label(),
            fmt_opt(s.map(|s| s.p50), 2),
            delta(|s| s.p50),
            delta(|s| s.mean),
            setup.expectation()
        );
    }

    let plugin_events = &cell(Setup::Plugin).events;
    let _ = writeln!(
        b,
        "\n## The plugin's events\n\n\
         The plugin is skiff-nri's stub `Recorder` (`Recorder::new(EventMask::all())`), \
         registered as `{PLUGIN_IDX}-{PLUGIN_NAME}` over `Connection::dial` and synchronized \
         before the warm-up pod. It answers every event at once, adjusts nothing and keeps a \
         copy of each event in memory, which the harness counts and clears after each pod, \
         untimed. It runs in skiff-perf's process on a tokio runtime with one worker thread of \
         its own. Events it received during the {n} timed pods (an event that arrives after \
         the pod's last call is counted with the next pod):\n\n\
         | event | received | per timed pod |\n|---|---:|---:|",
        n = cell(Setup::Plugin).steps[TOTAL].len()
    );
    if plugin_events.is_empty() {
        let _ = writeln!(b, "| none | 0 | |");
    }
    let timed = cell(Setup::Plugin).steps[TOTAL].len();
    for (event, count) in plugin_events {
        let per = if timed == 0 {
            "—".to_owned()
        } else {
            format!("{:.2}", *count as f64 / timed as f64)
        };
        let _ = writeln!(b, "| {event} | {count} | {per} |");
    }

    let _ = writeln!(
        b,
        "\n## The three skiffds\n\n\
         CPU = utime+stime of the daemon and its reaped children from before its warm-up pod \
         until the last pod was removed. Peak = VmHWM.\n\n\
         | configuration | pid | RSS after start MiB | RSS at end MiB | peak RSS MiB | CPU s |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    for setup in Setup::ALL {
        match instances.get(&setup) {
            Some(Ok(inst)) => {
                let pid = inst.running.pid();
                let cpu = sys::cpu_seconds(pid).ok();
                let _ = writeln!(
                    b,
                    "| {} | {pid} | {} | {} | {} | {} |",
                    setup.label(),
                    opt_mib(inst.running.idle_rss_kib),
                    opt_mib(sys::status_kib(pid, "VmRSS")),
                    opt_mib(sys::status_kib(pid, "VmHWM")),
                    fmt_opt(inst.cpu0.zip(cpu).map(|(a, b)| b - a), 2)
                );
            }
            _ => {
                let _ = writeln!(
                    b,
                    "| {} | — | {} | | | |",
                    setup.label(),
                    why(setup, instances)
                );
            }
        }
    }

    for (i, step) in STEPS.iter().enumerate().take(TOTAL + 1) {
        let step = step
            .trim_end_matches("Container")
            .trim_end_matches("PodSandbox");
        for setup in Setup::ALL {
            o.plot.push(Group {
                name: format!("{step}: {}", setup.short()),
                series: vec![Series {
                    system: Kind::Skiff,
                    samples: cell(setup).steps[i].clone(),
                }],
            });
        }
    }

    o.notes.push(
        "containerd takes no part in this scenario: Debian's containerd 1.6 has no comparable \
         NRI (the plugin protocol measured here arrived in containerd 1.7), so there is no \
         anchor figure; the harness's own containerd and skiffd ran idle alongside"
            .into(),
    );
    let nets: Vec<String> = Setup::ALL
        .into_iter()
        .map(|s| {
            let (bridge, cidr) = s.network();
            format!("{} `{bridge}` {cidr}", s.label())
        })
        .collect();
    o.notes.push(format!(
        "the three skiffds run at the same time, started by the harness as its own skiffd is \
         (`nsenter` into its network namespace, root, state, socket and TMPDIR on the tmpfs \
         under `{}`, `{}`, `{}`), each with the built-in bridge networking on a bridge and pod \
         CIDR of its own: {}",
        Setup::Off.name(),
        Setup::NoPlugin.name(),
        Setup::Plugin.name(),
        nets.join(", ")
    ));
    let ips: Vec<String> = Setup::ALL
        .into_iter()
        .filter_map(|s| Some(format!("{} {}", s.label(), cell(s).pod_ip.as_ref()?)))
        .collect();
    if !ips.is_empty() {
        o.notes.push(format!(
            "the warm-up pod's IP as PodSandboxStatus reported it: {}",
            ips.join(", ")
        ));
    }
    o.notes.push(format!(
        "workload: busybox (`{}`) running `sleep 3600`; it and the sandbox image were pulled on \
         each skiffd before anything was timed; pod configs as in `podstart` (no security \
         context, a cgroup parent per pod under `/skiff-perf-<pid>/<configuration>/`)",
        pods::workload_image()
    ));
    for setup in Setup::ALL {
        if let Some(Err(e)) = instances.get(&setup) {
            o.errors
                .push(format!("{}: unavailable: {e}", setup.label()));
        }
        for e in super::dedup(&cell(setup).errors) {
            o.errors.push(format!("{}: {e}", setup.label()));
        }
    }
}

fn opt_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "—".into(), pods::mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_takes_every_place_in_turn() {
        assert_eq!(
            Setup::order(0),
            [Setup::Off, Setup::NoPlugin, Setup::Plugin]
        );
        assert_eq!(
            Setup::order(1),
            [Setup::NoPlugin, Setup::Plugin, Setup::Off]
        );
        assert_eq!(
            Setup::order(2),
            [Setup::Plugin, Setup::Off, Setup::NoPlugin]
        );
        assert_eq!(Setup::order(3), Setup::order(0));
    }

    #[test]
    fn configs_are_valid_toml_differing_in_nri_only() {
        let dir = Path::new("/t/nri-idle");
        let off: toml::Value = toml::from_str(&Setup::Off.toml(dir)).unwrap();
        assert_eq!(off["nri"]["enable"].as_bool(), Some(false));
        assert_eq!(off["nri"].as_table().unwrap().len(), 1);
        for setup in [Setup::NoPlugin, Setup::Plugin] {
            let v: toml::Value = toml::from_str(&setup.toml(dir)).unwrap();
            assert_eq!(v["nri"]["enable"].as_bool(), Some(true));
            assert_eq!(
                v["nri"]["socket_path"].as_str(),
                Some("/t/nri-idle/nri.sock")
            );
            assert_eq!(
                v["nri"]["plugin_path"].as_str(),
                Some("/t/nri-idle/nri-plugins")
            );
            assert_eq!(
                v["nri"]["plugin_config_path"].as_str(),
                Some("/t/nri-idle/nri-conf")
            );
            assert_eq!(v["network"]["bridge"].as_str(), Some(setup.network().0));
        }
        // The harness puts its [registry] table first; skiffd's own config
        // loader takes the whole file.
        for setup in Setup::ALL {
            let whole = format!(
                "[registry]\nconfig_path = \"/t/certs.d\"\n{}",
                setup.toml(dir)
            );
            let file = skiff::config::Config::parse(&whole, Path::new("/t/config.toml")).unwrap();
            let flags = skiff::config::Overrides {
                socket: Some("/t/skiff.sock".into()),
                root: Some("/t/root".into()),
                state: Some("/t/state".into()),
            };
            let c = skiff::config::Config::resolve(
                file,
                None,
                &flags,
                skiff::config::CgroupMode::Legacy,
            )
            .unwrap();
            assert_eq!(c.bridge, setup.network().0);
            assert_eq!(c.pod_cidr.to_string(), setup.network().1);
            match (setup, &c.nri) {
                (Setup::Off, None) => {}
                (Setup::NoPlugin | Setup::Plugin, Some(n)) => {
                    assert_eq!(
                        n.socket_path.as_deref(),
                        Some(Path::new("/t/nri-idle/nri.sock"))
                    );
                    assert_eq!(n.plugin_path, Path::new("/t/nri-idle/nri-plugins"));
                }
                (s, n) => panic!("{s:?}: NRI config {n:?}"),
            }
        }
    }
}
