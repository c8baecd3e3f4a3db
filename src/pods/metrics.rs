//! The CRI metrics RPCs (`ListMetricDescriptors`, `ListPodSandboxMetrics`, KEP 2371):
//! cAdvisor-named metrics of every pod and container, so a kubelet with
//! `PodAndContainerStatsFromCRI` needs no cAdvisor.
//!
//! Every family is declared once in [`FAMILIES`] (name, help, type, label keys); a
//! sample names its family and gives only the values of the labels that follow the
//! common ones, so the values always line up with the keys. Label values, as the
//! kubelet expects them: `pod`, `namespace`, `container`, `id`, `image` (pod-level
//! samples have the pod id as `id` and empty `container`/`image`), then the family's own.
//!
//! Units: `*_seconds*` are whole seconds (the CRI value is an integer), bytes are bytes,
//! a limit of 0 means none. Samples are live (timestamp 0).

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use skiff_cri::api;

use crate::cgroups::Detail;

/// The label keys every family starts with.
const BASE: &[&str] = &["pod", "namespace", "container", "id", "image"];

/// The label keys a family adds to [`BASE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Interface,
    Device,
    Blkio,
    Failure,
    Ulimit,
}

impl Extra {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Extra::None => &[],
            Extra::Interface => &["interface"],
            Extra::Device => &["device"],
            Extra::Blkio => &["device", "major", "minor", "operation"],
            Extra::Failure => &["failure_type", "scope"],
            Extra::Ulimit => &["ulimit"],
        }
    }
}

/// One metric family.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    extra: Extra,
}

const fn counter(name: &'static str, help: &'static str, extra: Extra) -> Family {
    Family {
        name,
        help,
        counter: true,
        extra,
    }
}

const fn gauge(name: &'static str, help: &'static str, extra: Extra) -> Family {
    Family {
        name,
        help,
        counter: false,
        extra,
    }
}

/// Every family skiff reports, in the order they are listed.
const FAMILIES: &[Family] = &[
    counter(
        "container_cpu_usage_seconds_total",
        "CPU time used by the container, all cores, in seconds.",
        Extra::None,
    ),
    counter(
        "container_cpu_user_seconds_total",
        "CPU time the container spent in user mode, in seconds.",
        Extra::None,
    ),
    counter(
        "container_cpu_system_seconds_total",
        "CPU time the container spent in kernel mode, in seconds.",
        Extra::None,
    ),
    counter(
        "container_cpu_cfs_periods_total",
        "CFS enforcement periods that have elapsed.",
        Extra::None,
    ),
    counter(
        "container_cpu_cfs_throttled_periods_total",
        "CFS enforcement periods in which the container was throttled.",
        Extra::None,
    ),
    counter(
        "container_cpu_cfs_throttled_seconds_total",
        "Time the container was throttled by CFS, in seconds.",
        Extra::None,
    ),
    gauge(
        "container_memory_usage_bytes",
        "Memory the container uses, caches included, in bytes.",
        Extra::None,
    ),
    gauge(
        "container_memory_max_usage_bytes",
        "Peak memory use of the container, in bytes.",
        Extra::None,
    ),
    gauge(
        "container_memory_working_set_bytes",
        "Memory in use minus inactive file pages, in bytes (what eviction looks at).",
        Extra::None,
    ),
    gauge(
        "container_memory_cache",
        "Page cache charged to the container, in bytes.",
        Extra::None,
    ),
    gauge(
        "container_memory_rss",
        "Anonymous memory of the container, in bytes.",
        Extra::None,
    ),
    gauge(
        "container_memory_kernel_usage",
        "Kernel memory charged to the container, in bytes.",
        Extra::None,
    ),
    gauge(
        "container_memory_mapped_file",
        "Memory-mapped files of the container, in bytes.",
        Extra::None,
    ),
    gauge(
        "container_memory_swap",
        "Swap used by the container, in bytes.",
        Extra::None,
    ),
    counter(
        "container_memory_failcnt",
        "Times the container's memory use reached its limit.",
        Extra::None,
    ),
    counter(
        "container_memory_failures_total",
        "Page faults of the container by type (pgfault, pgmajfault) and scope (container, hierarchy).",
        Extra::Failure,
    ),
    counter(
        "container_oom_events_total",
        "Processes of the container killed by the OOM killer.",
        Extra::None,
    ),
    gauge(
        "container_fs_usage_bytes",
        "Bytes the container's writable layer uses.",
        Extra::Device,
    ),
    gauge(
        "container_fs_limit_bytes",
        "Size of the filesystem holding the container's writable layer, in bytes.",
        Extra::Device,
    ),
    gauge(
        "container_fs_inodes_free",
        "Free inodes on the filesystem holding the container's writable layer.",
        Extra::Device,
    ),
    gauge(
        "container_fs_inodes_total",
        "Inodes on the filesystem holding the container's writable layer.",
        Extra::Device,
    ),
    counter(
        "container_fs_reads_bytes_total",
        "Bytes the container read from the device.",
        Extra::Device,
    ),
    counter(
        "container_fs_reads_total",
        "Reads the container completed on the device.",
        Extra::Device,
    ),
    counter(
        "container_fs_writes_bytes_total",
        "Bytes the container wrote to the device.",
        Extra::Device,
    ),
    counter(
        "container_fs_writes_total",
        "Writes the container completed on the device.",
        Extra::Device,
    ),
    counter(
        "container_blkio_device_usage_total",
        "Block I/O of the container by device and operation, in bytes.",
        Extra::Blkio,
    ),
    counter(
        "container_network_receive_bytes_total",
        "Bytes received on the pod's interface.",
        Extra::Interface,
    ),
    counter(
        "container_network_receive_packets_total",
        "Packets received on the pod's interface.",
        Extra::Interface,
    ),
    counter(
        "container_network_receive_packets_dropped_total",
        "Received packets dropped on the pod's interface.",
        Extra::Interface,
    ),
    counter(
        "container_network_receive_errors_total",
        "Receive errors on the pod's interface.",
        Extra::Interface,
    ),
    counter(
        "container_network_transmit_bytes_total",
        "Bytes sent on the pod's interface.",
        Extra::Interface,
    ),
    counter(
        "container_network_transmit_packets_total",
        "Packets sent on the pod's interface.",
        Extra::Interface,
    ),
    counter(
        "container_network_transmit_packets_dropped_total",
        "Sent packets dropped on the pod's interface.",
        Extra::Interface,
    ),
    counter(
        "container_network_transmit_errors_total",
        "Transmit errors on the pod's interface.",
        Extra::Interface,
    ),
    gauge(
        "container_processes",
        "Processes in the container.",
        Extra::None,
    ),
    gauge(
        "container_threads",
        "Threads in the container.",
        Extra::None,
    ),
    gauge(
        "container_threads_max",
        "Most threads the container may have (0: no limit).",
        Extra::None,
    ),
    gauge(
        "container_file_descriptors",
        "Open file descriptors of the container's processes.",
        Extra::None,
    ),
    gauge(
        "container_sockets",
        "Open sockets of the container's processes.",
        Extra::None,
    ),
    gauge(
        "container_ulimits_soft",
        "Soft resource limits of the container's first process.",
        Extra::Ulimit,
    ),
    gauge(
        "container_last_seen",
        "When these figures were read, in seconds since the Unix epoch.",
        Extra::None,
    ),
    gauge(
        "container_start_time_seconds",
        "When the container started, in seconds since the Unix epoch.",
        Extra::None,
    ),
    gauge(
        "container_spec_cpu_period",
        "CFS period of the container, in microseconds.",
        Extra::None,
    ),
    gauge(
        "container_spec_cpu_quota",
        "CFS quota of the container, in microseconds (absent: none).",
        Extra::None,
    ),
    gauge(
        "container_spec_cpu_shares",
        "CPU shares of the container.",
        Extra::None,
    ),
    gauge(
        "container_spec_memory_limit_bytes",
        "Memory limit of the container, in bytes (0: none).",
        Extra::None,
    ),
    gauge(
        "container_spec_memory_reservation_limit_bytes",
        "Memory the container is protected down to (soft limit), in bytes (0: none).",
        Extra::None,
    ),
    gauge(
        "container_spec_memory_swap_limit_bytes",
        "Memory plus swap limit of the container, in bytes (0: none).",
        Extra::None,
    ),
    counter(
        "container_pressure_cpu_waiting_seconds_total",
        "Time some of the container's tasks waited for CPU, in seconds.",
        Extra::None,
    ),
    counter(
        "container_pressure_cpu_stalled_seconds_total",
        "Time all of the container's tasks were stalled on CPU, in seconds.",
        Extra::None,
    ),
    counter(
        "container_pressure_memory_waiting_seconds_total",
        "Time some of the container's tasks waited for memory, in seconds.",
        Extra::None,
    ),
    counter(
        "container_pressure_memory_stalled_seconds_total",
        "Time all of the container's tasks were stalled on memory, in seconds.",
        Extra::None,
    ),
    counter(
        "container_pressure_io_waiting_seconds_total",
        "Time some of the container's tasks waited for I/O, in seconds.",
        Extra::None,
    ),
    counter(
        "container_pressure_io_stalled_seconds_total",
        "Time all of the container's tasks were stalled on I/O, in seconds.",
        Extra::None,
    ),
];

fn family(name: &str) -> &'static Family {
    FAMILIES
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("metric family {name} is not declared"))
}

/// `ListMetricDescriptors`: every family.
pub(crate) fn descriptors() -> Vec<api::MetricDescriptor> {
    FAMILIES
        .iter()
        .map(|f| api::MetricDescriptor {
            name: f.name.to_string(),
            help: f.help.to_string(),
            label_keys: BASE
                .iter()
                .chain(f.extra.keys())
                .map(|k| (*k).to_string())
                .collect(),
        })
        .collect()
}

/// Collects samples that share the base label values.
struct Samples {
    base: Vec<String>,
    out: Vec<api::Metric>,
}

impl Samples {
    fn new(base: [&str; 5]) -> Samples {
        Samples {
            base: base.iter().map(|s| (*s).to_string()).collect(),
            out: Vec::new(),
        }
    }

    /// Add a sample of `name` with the family's own label values `extra`.
    fn add(&mut self, name: &str, extra: &[&str], value: u64) {
        let f = family(name);
        debug_assert_eq!(extra.len(), f.extra.keys().len(), "{name}");
        let mut label_values = self.base.clone();
        label_values.extend(extra.iter().map(|s| (*s).to_string()));
        self.out.push(api::Metric {
            name: f.name.to_string(),
            timestamp: 0,
            metric_type: if f.counter {
                api::MetricType::Counter
            } else {
                api::MetricType::Gauge
            } as i32,
            label_values,
            value: Some(api::UInt64Value { value }),
        });
    }
}

/// Interface counters from `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The interfaces of a `net/dev` file, loopback left out.
pub(crate) fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" || name.contains('|') {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|n| n.parse().unwrap_or(0))
                .collect();
            (v.len() >= 12).then(|| NetDev {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

/// The pod-level samples: the pod's network interfaces.
pub(crate) fn pod_metrics(
    pod: &str,
    namespace: &str,
    id: &str,
    net: &[NetDev],
) -> Vec<api::Metric> {
    let mut s = Samples::new([pod, namespace, "", id, ""]);
    for d in net {
        let i = [d.name.as_str()];
        s.add("container_network_receive_bytes_total", &i, d.rx_bytes);
        s.add("container_network_receive_packets_total", &i, d.rx_packets);
        s.add(
            "container_network_receive_packets_dropped_total",
            &i,
            d.rx_dropped,
        );
        s.add("container_network_receive_errors_total", &i, d.rx_errors);
        s.add("container_network_transmit_bytes_total", &i, d.tx_bytes);
        s.add("container_network_transmit_packets_total", &i, d.tx_packets);
        s.add(
            "container_network_transmit_packets_dropped_total",
            &i,
            d.tx_dropped,
        );
        s.add("container_network_transmit_errors_total", &i, d.tx_errors);
    }
    s.out
}

/// The filesystem that holds a container's writable layer.
#[derive(Debug, Clone, Default)]
pub(crate) struct FsUsage {
    /// The device, as `/proc/self/mountinfo` names the mount's source.
    pub device: String,
    /// Bytes used by the writable layer.
    pub used_bytes: u64,
    /// Size of the filesystem.
    pub limit_bytes: u64,
    /// Its inodes.
    pub inodes_total: u64,
    /// Its free inodes.
    pub inodes_free: u64,
}

/// What one container's samples are made of.
pub(crate) struct ContainerInput<'a> {
    /// `pod`, `namespace`, `container`, `id`, `image`.
    pub labels: [&'a str; 5],
    /// Its cgroup's counters.
    pub cgroup: &'a Detail,
    /// Its writable layer's filesystem.
    pub fs: &'a FsUsage,
    /// When it started (ns since the epoch; 0: not yet).
    pub started_at_ns: i64,
    /// Soft `RLIMIT_NOFILE` of its first process, if it runs.
    pub nofile_soft: Option<u64>,
}

fn secs(ns: u64) -> u64 {
    ns / 1_000_000_000
}

/// Open fds and sockets of `pids` (processes that went away meanwhile count nothing).
pub(crate) fn fds_and_sockets(pids: &[u32]) -> (u64, u64) {
    let (mut fds, mut sockets) = (0, 0);
    for pid in pids {
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in dir.flatten() {
            fds += 1;
            if fs::read_link(e.path())
                .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
            {
                sockets += 1;
            }
        }
    }
    (fds, sockets)
}

/// Soft `Max open files` of a process (`/proc/<pid>/limits`); `None` if unreadable or unlimited.
pub(crate) fn nofile_soft(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The block device name of `major:minor` (`/dev/vda`), else `major:minor`.
fn device_name(major: u64, minor: u64) -> String {
    fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(|d| format!("/dev/{d}")))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

/// A container's samples.
pub(crate) fn container_metrics(c: &ContainerInput<'_>) -> Vec<api::Metric> {
    let mut s = Samples::new(c.labels);
    let d = c.cgroup;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| t.as_secs());
    s.add("container_last_seen", &[], now);
    if c.started_at_ns > 0 {
        let started = u64::try_from(c.started_at_ns).unwrap_or(0);
        s.add("container_start_time_seconds", &[], secs(started));
    }
    s.add(
        "container_cpu_usage_seconds_total",
        &[],
        secs(d.cpu_total_ns),
    );
    s.add("container_cpu_user_seconds_total", &[], secs(d.cpu_user_ns));
    s.add(
        "container_cpu_system_seconds_total",
        &[],
        secs(d.cpu_system_ns),
    );
    s.add("container_cpu_cfs_periods_total", &[], d.cfs_periods);
    s.add(
        "container_cpu_cfs_throttled_periods_total",
        &[],
        d.cfs_throttled_periods,
    );
    s.add(
        "container_cpu_cfs_throttled_seconds_total",
        &[],
        secs(d.cfs_throttled_ns),
    );
    s.add("container_memory_usage_bytes", &[], d.memory_usage);
    s.add("container_memory_max_usage_bytes", &[], d.memory_max_usage);
    s.add(
        "container_memory_working_set_bytes",
        &[],
        d.memory_working_set,
    );
    s.add("container_memory_cache", &[], d.memory_cache);
    s.add("container_memory_rss", &[], d.memory_rss);
    s.add("container_memory_kernel_usage", &[], d.memory_kernel);
    s.add("container_memory_mapped_file", &[], d.memory_mapped_file);
    s.add("container_memory_swap", &[], d.memory_swap);
    s.add("container_memory_failcnt", &[], d.memory_failcnt);
    for (kind, scope, v) in [
        ("pgfault", "container", d.pgfault),
        ("pgmajfault", "container", d.pgmajfault),
        ("pgfault", "hierarchy", d.pgfault_hierarchy),
        ("pgmajfault", "hierarchy", d.pgmajfault_hierarchy),
    ] {
        s.add("container_memory_failures_total", &[kind, scope], v);
    }
    s.add("container_oom_events_total", &[], d.oom_events);
    let dev = [c.fs.device.as_str()];
    s.add("container_fs_usage_bytes", &dev, c.fs.used_bytes);
    s.add("container_fs_limit_bytes", &dev, c.fs.limit_bytes);
    s.add("container_fs_inodes_free", &dev, c.fs.inodes_free);
    s.add("container_fs_inodes_total", &dev, c.fs.inodes_total);
    for b in &d.blkio {
        let name = device_name(b.major, b.minor);
        let (major, minor) = (b.major.to_string(), b.minor.to_string());
        let one = [name.as_str()];
        s.add("container_fs_reads_bytes_total", &one, b.read_bytes);
        s.add("container_fs_reads_total", &one, b.reads);
        s.add("container_fs_writes_bytes_total", &one, b.write_bytes);
        s.add("container_fs_writes_total", &one, b.writes);
        for (op, v) in [("Read", b.read_bytes), ("Write", b.write_bytes)] {
            s.add(
                "container_blkio_device_usage_total",
                &[name.as_str(), &major, &minor, op],
                v,
            );
        }
    }
    let (fds, sockets) = fds_and_sockets(&d.pids);
    s.add("container_processes", &[], d.pids.len() as u64);
    s.add("container_threads", &[], d.threads);
    s.add("container_threads_max", &[], d.threads_max);
    s.add("container_file_descriptors", &[], fds);
    s.add("container_sockets", &[], sockets);
    if let Some(n) = c.nofile_soft {
        s.add("container_ulimits_soft", &["max_open_files"], n);
    }
    let l = &d.limits;
    s.add("container_spec_cpu_period", &[], l.cpu_period_us);
    if l.cpu_quota_us > 0 {
        s.add("container_spec_cpu_quota", &[], l.cpu_quota_us);
    }
    s.add("container_spec_cpu_shares", &[], l.cpu_shares);
    s.add("container_spec_memory_limit_bytes", &[], l.memory_limit);
    s.add(
        "container_spec_memory_reservation_limit_bytes",
        &[],
        l.memory_reservation,
    );
    s.add(
        "container_spec_memory_swap_limit_bytes",
        &[],
        l.memory_swap_limit,
    );
    for (res, p) in [
        ("cpu", d.psi.cpu),
        ("memory", d.psi.memory),
        ("io", d.psi.io),
    ] {
        let Some(p) = p else { continue };
        let us = |v: u64| v / 1_000_000;
        s.add(
            &format!("container_pressure_{res}_waiting_seconds_total"),
            &[],
            us(p.some.total_us),
        );
        s.add(
            &format!("container_pressure_{res}_stalled_seconds_total"),
            &[],
            us(p.full.total_us),
        );
    }
    s.out
}

/// The device and size of the filesystem holding `dir`.
pub(crate) fn fs_of(dir: &Path) -> (String, u64, u64, u64) {
    let device = mount_source(dir).unwrap_or_default();
    match rustix::fs::statvfs(dir) {
        Ok(st) => (
            device,
            st.f_blocks.saturating_mul(st.f_frsize),
            st.f_files,
            st.f_ffree,
        ),
        Err(_) => (device, 0, 0, 0),
    }
}

/// The source of the mount that holds `path` (longest mount point prefix in
/// `/proc/self/mountinfo`).
fn mount_source(path: &Path) -> Option<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(source)) = (fields.get(4), fields.get(sep + 2)) else {
            continue;
        };
        if path.starts_with(point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), (*source).to_string()));
        }
    }
    best.map(|(_, s)| s)
}

/// How old a writable layer's measured size may get before it is measured again.
pub(crate) const DISK_USAGE_MAX_AGE: Duration = Duration::from_secs(10);

/// Writable-layer sizes (bytes, inodes) by container id, measured at most every
/// [`DISK_USAGE_MAX_AGE`]: walking a layer is what a stats poll must not do each time.
#[derive(Debug, Default)]
pub(crate) struct DiskUsageCache {
    entries: Mutex<HashMap<String, (Instant, u64, u64)>>,
}

impl DiskUsageCache {
    /// The size of `dir` (container `id`), from the cache when fresh enough. Blocks
    /// (walks the directory) when not: call it off the async workers.
    pub(crate) fn usage(&self, id: &str, dir: &Path) -> (u64, u64) {
        crate::blocking::assert_may_block("DiskUsageCache::usage");
        let lock = || {
            self.entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(&(at, bytes, inodes)) = lock().get(id)
            && at.elapsed() < DISK_USAGE_MAX_AGE
        {
            return (bytes, inodes);
        }
        let (bytes, inodes) = dir_usage(dir);
        lock().insert(id.to_string(), (Instant::now(), bytes, inodes));
        (bytes, inodes)
    }

    /// Forget a removed container.
    pub(crate) fn forget(&self, id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
}

/// Bytes and inodes used under `dir` (not following symlinks).
pub(crate) fn dir_usage(dir: &Path) -> (u64, u64) {
    crate::blocking::assert_may_block("dir_usage");
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            inodes += 1;
            bytes += md.len();
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_matches_its_descriptor() {
        let descs: HashMap<String, usize> = descriptors()
            .into_iter()
            .map(|d| {
                assert!(!d.help.is_empty() && !d.label_keys.is_empty(), "{}", d.name);
                (d.name, d.label_keys.len())
            })
            .collect();
        assert_eq!(descs.len(), FAMILIES.len(), "family names are unique");
        let d = Detail {
            pids: vec![std::process::id()],
            blkio: vec![crate::cgroups::BlkioDevice {
                major: 8,
                minor: 0,
                ..Default::default()
            }],
            limits: crate::cgroups::Limits {
                cpu_quota_us: 20_000,
                ..Default::default()
            },
            psi: crate::cgroups::PsiSet {
                cpu: Some(Default::default()),
                memory: Some(Default::default()),
                io: Some(Default::default()),
            },
            ..Default::default()
        };
        let fs = FsUsage::default();
        let input = ContainerInput {
            labels: ["p", "ns", "c", "id", "img"],
            cgroup: &d,
            fs: &fs,
            started_at_ns: 5_000_000_000,
            nofile_soft: Some(1024),
        };
        let mut samples = container_metrics(&input);
        let net = parse_net_dev(
            "Inter-|   Receive |  Transmit\n face |bytes packets\n    lo: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n  eth0: 100 2 0 0 0 0 0 0 300 4 0 1 0 0 0 0\n",
        );
        assert_eq!(net.len(), 1);
        assert_eq!(
            (net[0].rx_bytes, net[0].tx_bytes, net[0].tx_dropped),
            (100, 300, 1)
        );
        samples.extend(pod_metrics("p", "ns", "pod-id", &net));
        for m in &samples {
            assert_eq!(
                Some(&m.label_values.len()),
                descs.get(&m.name),
                "{}",
                m.name
            );
        }
        let names: std::collections::HashSet<_> = samples.iter().map(|m| m.name.as_str()).collect();
        for f in FAMILIES {
            assert!(names.contains(f.name), "{} has no sample", f.name);
        }
        let start = samples
            .iter()
            .find(|m| m.name == "container_start_time_seconds")
            .unwrap();
        assert_eq!(start.value.unwrap().value, 5);
    }

    #[test]
    fn disk_usage_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"12345").unwrap();
        let cache = DiskUsageCache::default();
        assert_eq!(cache.usage("c", dir.path()), (5, 1));
        fs::write(dir.path().join("b"), b"1").unwrap();
        assert_eq!(cache.usage("c", dir.path()), (5, 1), "fresh entry reused");
        cache.forget("c");
        assert_eq!(cache.usage("c", dir.path()), (6, 2));
    }
}
