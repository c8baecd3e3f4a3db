//! The scenarios `perf/run` knows, implemented or not yet.

pub mod pull;

use crate::plot::Group;

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
}

impl Scenario {
    /// All scenarios, in run order.
    pub const ALL: [Scenario; 6] = [
        Scenario::Pull,
        Scenario::PodStart,
        Scenario::Density,
        Scenario::Logs,
        Scenario::Exec,
        Scenario::NetSetup,
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
            Scenario::Logs => "container stdout throughput into CRI log files",
            Scenario::Exec => "ExecSync round-trip latency into a running container",
            Scenario::NetSetup => "pod network setup and teardown latency",
        }
    }

    /// `Some(reason)` while the scenario cannot run yet.
    pub fn not_implemented(self) -> Option<&'static str> {
        match self {
            Scenario::Pull => None,
            Scenario::PodStart | Scenario::Density | Scenario::Logs | Scenario::Exec => {
                Some("not implemented yet: needs pods (issue 4)")
            }
            Scenario::NetSetup => Some("not implemented yet: needs networking (issue 5)"),
        }
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
    /// Errors to list in the report.
    pub errors: Vec<String>,
}
