//! The scenarios `perf/run` knows, implemented or not yet.

pub mod density;
pub mod exec;
pub mod logs;
pub mod netsetup;
pub mod nri;
mod pods;
pub mod podstart;
pub mod pull;
pub mod pulldisk;

use crate::harness::Kind;
use crate::plot::{Group, Line};

/// A scenario name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Cold `PullImage` of generated images, against in-process floors.
    Pull,
    /// RunPodSandbox + CreateContainer + StartContainer latency.
    PodStart,
    /// Memory and CPU per pod with many pods.
    Density,
    /// Container log throughput.
    Logs,
    /// ExecSync latency.
    Exec,
    /// Pod network setup and teardown.
    NetSetup,
    /// What NRI adds to skiffd's pod start.
    Nri,
    /// Cold `PullImage` onto a journaled ext4 on a loop device, with neighbours.
    PullDisk,
}

impl Scenario {
    /// All scenarios, in run order.
    pub const ALL: [Scenario; 8] = [
        Scenario::Pull,
        Scenario::PodStart,
        Scenario::Density,
        Scenario::Logs,
        Scenario::Exec,
        Scenario::NetSetup,
        Scenario::Nri,
        Scenario::PullDisk,
    ];

    /// The command-line and file name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Pull => "pull",
            Scenario::PodStart => "podstart",
            Scenario::Density => "density",
            Scenario::Logs => "logs",
            Scenario::Exec => "exec",
            Scenario::NetSetup => "netsetup",
            Scenario::Nri => "nri",
            Scenario::PullDisk => "pulldisk",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// What the scenario measures, for the report and `--help`.
    pub fn what(self) -> &'static str {
        match self {
            Scenario::Pull => {
                "cold PullImage of generated images (many small files, few big files; gzip and zstd) \
                 against in-process floors (fetch, decompress, sha256, tar -x to tmpfs)"
            }
            Scenario::PodStart => {
                "RunPodSandbox + CreateContainer + StartContainer (+ stop/remove) latency per pod"
            }
            Scenario::Density => "daemon and per-pod shim RSS/PSS and CPU with many idle pods",
            Scenario::Logs => {
                "container stdout (1 GiB in big writes, and in 100-byte lines) into the CRI log \
                 file: MB/s and the shim's (and daemon's) CPU seconds per GiB"
            }
            Scenario::Exec => {
                "ExecSync and streaming exec (CRI Exec URL + SPDY session) latency of `true`, \
                 and port-forward throughput through the CRI PortForward URL"
            }
            Scenario::NetSetup => {
                "pod network setup and teardown per pod: skiff's built-in bridge (in-process \
                 netlink) against the CNI plugins (bridge + host-local + loopback), in one run"
            }
            Scenario::Nri => {
                "skiffd's pod start (RunPodSandbox + CreateContainer + StartContainer) with NRI \
                 off, on with no plugin, and on with one no-op plugin connected; skiffd only"
            }
            Scenario::PullDisk => {
                "cold PullImage onto a journaled ext4 on a loop device (page cache dropped), \
                 skiffd durable / blocking engine / not durable against containerd, next to a \
                 quiet filesystem, a just-deleted tree and a steady writer"
            }
        }
    }

    /// `Some(reason)` while the scenario cannot run yet.
    pub fn not_implemented(self) -> Option<&'static str> {
        match self {
            Scenario::Pull | Scenario::PodStart | Scenario::Density | Scenario::NetSetup => None,
            Scenario::Logs | Scenario::Exec | Scenario::Nri | Scenario::PullDisk => None,
        }
    }

    /// Whether a run that names no scenario runs it: `pulldisk` needs a loop
    /// device and an 8 GiB sparse file, and runs only when named.
    pub fn by_default(self) -> bool {
        self != Scenario::PullDisk
    }

    /// Whether the scenario runs against the daemons (netsetup runs in-process).
    pub fn needs_daemons(self) -> bool {
        self.not_implemented().is_none() && self != Scenario::NetSetup
    }

    /// Whether the scenario compares skiffd with containerd (the harness's two
    /// daemons); `nri` compares skiffd configurations of its own instead.
    pub fn compares_systems(self) -> bool {
        self.needs_daemons() && !matches!(self, Scenario::Nri | Scenario::PullDisk)
    }
}

/// What a scenario hands to the report.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Markdown sections specific to the scenario.
    pub body: String,
    /// Latency samples to plot: one group per case, one series per system.
    pub plot: Vec<Group>,
    /// The plot's title and y-axis label.
    pub plot_title: String,
    /// Legend labels for the plot's series instead of the systems' names.
    pub plot_labels: Vec<(Kind, String)>,
    /// Errors to list in the report.
    pub errors: Vec<String>,
    /// Notes on how the scenario ran, for the report's notes.
    pub notes: Vec<String>,
    /// Figures against a count to draw as lines, when there are no latency samples.
    pub lines: Vec<Line>,
    /// The line chart's title.
    pub line_title: String,
    /// The line chart's x and y axis labels.
    pub line_axes: (String, String),
}

impl Outcome {
    /// Lists `errors` of system `kind` in the report, repeats collapsed.
    pub fn system_errors(&mut self, kind: Kind, errors: &[String]) {
        for e in dedup(errors) {
            self.errors.push(format!("{}: {e}", kind.label()));
        }
    }
}

/// Collapses repeated messages into `message (×n)`.
pub fn dedup(errors: &[String]) -> Vec<String> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for e in errors {
        match out.iter_mut().find(|(m, _)| m == e) {
            Some((_, n)) => *n += 1,
            None => out.push((e.clone(), 1)),
        }
    }
    out.into_iter()
        .map(|(m, n)| if n > 1 { format!("{m} (×{n})") } else { m })
        .collect()
}
