//! The detailed counters of one cgroup behind the cAdvisor-named CRI metrics
//! (`ListPodSandboxMetrics`): CPU split and throttling, the memory breakdown, tasks,
//! block I/O per device and the limits the cgroup was given. v1 and v2.
//!
//! A missing file reads as zero (a controller that is not mounted or not enabled), so a
//! host that lacks one counter still reports the others.

use std::path::Path;

use super::{CgroupError, Cgroups, PsiSet, kv, read_opt, read_u64, relative};

/// `cpu.max`/`memory.max` and friends: the v1 "no limit" value is this or larger.
const V1_UNLIMITED: u64 = 1 << 62;

/// Block I/O of the cgroup on one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlkioDevice {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read operations.
    pub reads: u64,
    /// Write operations.
    pub writes: u64,
}

/// The limits a cgroup was given; 0 where there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// CFS period in microseconds.
    pub cpu_period_us: u64,
    /// CFS quota in microseconds (0: none).
    pub cpu_quota_us: u64,
    /// CPU shares (v2: converted back from `cpu.weight`).
    pub cpu_shares: u64,
    /// Memory limit in bytes (0: none).
    pub memory_limit: u64,
    /// Memory + swap limit in bytes (v1 `memsw`; v2 swap limit + memory limit; 0: none).
    pub memory_swap_limit: u64,
    /// Soft limit / `memory.low` in bytes (0: none).
    pub memory_reservation: u64,
}

/// Everything the metrics report of one cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detail {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_total_ns: u64,
    /// Of which in user mode.
    pub cpu_user_ns: u64,
    /// Of which in kernel mode.
    pub cpu_system_ns: u64,
    /// CFS periods elapsed.
    pub cfs_periods: u64,
    /// CFS periods throttled.
    pub cfs_throttled_periods: u64,
    /// Time throttled, nanoseconds.
    pub cfs_throttled_ns: u64,
    /// Memory in use, bytes.
    pub memory_usage: u64,
    /// Peak memory use (v1 `max_usage_in_bytes`, v2 `memory.peak`; 0 where unknown).
    pub memory_max_usage: u64,
    /// Usage minus inactive file pages.
    pub memory_working_set: u64,
    /// Page cache.
    pub memory_cache: u64,
    /// Anonymous memory.
    pub memory_rss: u64,
    /// Kernel memory.
    pub memory_kernel: u64,
    /// Mapped files.
    pub memory_mapped_file: u64,
    /// Swap in use.
    pub memory_swap: u64,
    /// Times the limit was hit (v1 `memory.failcnt`, v2 `memory.events` `max`).
    pub memory_failcnt: u64,
    /// Page faults of this cgroup alone.
    pub pgfault: u64,
    /// Major page faults of this cgroup alone.
    pub pgmajfault: u64,
    /// Page faults with its descendants.
    pub pgfault_hierarchy: u64,
    /// Major page faults with its descendants.
    pub pgmajfault_hierarchy: u64,
    /// OOM kills in the cgroup.
    pub oom_events: u64,
    /// Its processes.
    pub pids: Vec<u32>,
    /// Its threads.
    pub threads: u64,
    /// `pids.max` (0: none).
    pub threads_max: u64,
    /// Block I/O per device.
    pub blkio: Vec<BlkioDevice>,
    /// The limits it was given.
    pub limits: Limits,
    /// Pressure stall information, where kept.
    pub psi: PsiSet,
}

/// A limit file's value: `max` or the v1 "unlimited" sentinel as 0.
fn limit(text: &str) -> u64 {
    match text.trim() {
        "max" | "" => 0,
        v => v.parse().ok().filter(|&n| n < V1_UNLIMITED).unwrap_or(0),
    }
}

/// Lines of a file, counted (`tasks`, `cgroup.threads`).
fn count_lines(path: &Path) -> Result<u64, CgroupError> {
    Ok(read_opt(path)?.map_or(0, |t| {
        t.lines().filter(|l| !l.trim().is_empty()).count() as u64
    }))
}

/// v1 `blkio.throttle.io_service*_recursive`: `MAJ:MIN Read N` lines into `devices`.
fn parse_v1_blkio(text: &str, devices: &mut Vec<BlkioDevice>, bytes: bool) {
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(dev), Some(op), Some(n)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor), Ok(n)) = (major.parse(), minor.parse(), n.parse::<u64>()) else {
            continue;
        };
        let d = device(devices, major, minor);
        match (op, bytes) {
            ("Read", true) => d.read_bytes = n,
            ("Write", true) => d.write_bytes = n,
            ("Read", false) => d.reads = n,
            ("Write", false) => d.writes = n,
            _ => {}
        }
    }
}

/// v2 `io.stat`: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N …` lines.
fn parse_v2_io(text: &str) -> Vec<BlkioDevice> {
    let mut devices = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let Some((major, minor)) = w.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        let d = device(&mut devices, major, minor);
        for kv in w {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v = v.parse().unwrap_or(0);
            match k {
                "rbytes" => d.read_bytes = v,
                "wbytes" => d.write_bytes = v,
                "rios" => d.reads = v,
                "wios" => d.writes = v,
                _ => {}
            }
        }
    }
    devices
}

fn device(devices: &mut Vec<BlkioDevice>, major: u64, minor: u64) -> &mut BlkioDevice {
    let i = match devices
        .iter()
        .position(|d| d.major == major && d.minor == minor)
    {
        Some(i) => i,
        None => {
            devices.push(BlkioDevice {
                major,
                minor,
                ..Default::default()
            });
            devices.len() - 1
        }
    };
    &mut devices[i]
}

/// `cpu.weight` (1..=10000) back to v1 shares (2..=262144), the inverse of the
/// conversion runc and the kubelet apply.
fn weight_to_shares(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    2 + (weight - 1) * 262_142 / 9_999
}

impl Cgroups {
    /// The detailed counters of `path`; `Ok(None)` if the cgroup does not exist.
    pub fn detail(&self, path: &str) -> Result<Option<Detail>, CgroupError> {
        crate::blocking::assert_may_block("Cgroups::detail");
        let rel = relative(path)?;
        if !self.exists(path) {
            return Ok(None);
        }
        let mut d = if self.is_v2() {
            self.detail_v2(&rel)?
        } else {
            self.detail_v1(&rel)?
        };
        d.pids = self.pids(path);
        d.psi = self.psi(&rel);
        Ok(Some(d))
    }

    fn detail_v1(&self, rel: &Path) -> Result<Detail, CgroupError> {
        let acct = self.dir("cpuacct", rel);
        let cpu = self.dir("cpu", rel);
        let mem = self.dir("memory", rel);
        let pids = self.dir("pids", rel);
        let blkio = self.dir("blkio", rel);
        let cpu_stat = read_opt(&cpu.join("cpu.stat"))?.unwrap_or_default();
        let stat = read_opt(&mem.join("memory.stat"))?.unwrap_or_default();
        let usage = read_u64(&mem.join("memory.usage_in_bytes"))?.unwrap_or(0);
        let inactive = kv(&stat, "total_inactive_file").unwrap_or(0);
        let mut devices = Vec::new();
        if let Some(t) = read_opt(&blkio.join("blkio.throttle.io_service_bytes_recursive"))? {
            parse_v1_blkio(&t, &mut devices, true);
        }
        if let Some(t) = read_opt(&blkio.join("blkio.throttle.io_serviced_recursive"))? {
            parse_v1_blkio(&t, &mut devices, false);
        }
        let memory_limit =
            limit(&read_opt(&mem.join("memory.limit_in_bytes"))?.unwrap_or_default());
        let quota = read_opt(&cpu.join("cpu.cfs_quota_us"))?.unwrap_or_default();
        let oom = read_opt(&mem.join("memory.oom_control"))?.unwrap_or_default();
        Ok(Detail {
            cpu_total_ns: read_u64(&acct.join("cpuacct.usage"))?.unwrap_or(0),
            cpu_user_ns: read_u64(&acct.join("cpuacct.usage_user"))?.unwrap_or(0),
            cpu_system_ns: read_u64(&acct.join("cpuacct.usage_sys"))?.unwrap_or(0),
            cfs_periods: kv(&cpu_stat, "nr_periods").unwrap_or(0),
            cfs_throttled_periods: kv(&cpu_stat, "nr_throttled").unwrap_or(0),
            cfs_throttled_ns: kv(&cpu_stat, "throttled_time").unwrap_or(0),
            memory_usage: usage,
            memory_max_usage: read_u64(&mem.join("memory.max_usage_in_bytes"))?.unwrap_or(0),
            memory_working_set: usage.saturating_sub(inactive),
            memory_cache: kv(&stat, "total_cache").unwrap_or(0),
            memory_rss: kv(&stat, "total_rss").unwrap_or(0),
            memory_kernel: read_u64(&mem.join("memory.kmem.usage_in_bytes"))?.unwrap_or(0),
            memory_mapped_file: kv(&stat, "total_mapped_file").unwrap_or(0),
            memory_swap: kv(&stat, "total_swap").unwrap_or(0),
            memory_failcnt: read_u64(&mem.join("memory.failcnt"))?.unwrap_or(0),
            pgfault: kv(&stat, "pgfault").unwrap_or(0),
            pgmajfault: kv(&stat, "pgmajfault").unwrap_or(0),
            pgfault_hierarchy: kv(&stat, "total_pgfault").unwrap_or(0),
            pgmajfault_hierarchy: kv(&stat, "total_pgmajfault").unwrap_or(0),
            oom_events: kv(&oom, "oom_kill").unwrap_or(0),
            pids: Vec::new(),
            threads: count_lines(&pids.join("tasks"))?,
            threads_max: limit(&read_opt(&pids.join("pids.max"))?.unwrap_or_default()),
            blkio: devices,
            limits: Limits {
                cpu_period_us: read_u64(&cpu.join("cpu.cfs_period_us"))?.unwrap_or(0),
                cpu_quota_us: quota.trim().parse::<u64>().unwrap_or(0),
                cpu_shares: read_u64(&cpu.join("cpu.shares"))?.unwrap_or(0),
                memory_limit,
                memory_swap_limit: limit(
                    &read_opt(&mem.join("memory.memsw.limit_in_bytes"))?.unwrap_or_default(),
                ),
                memory_reservation: limit(
                    &read_opt(&mem.join("memory.soft_limit_in_bytes"))?.unwrap_or_default(),
                ),
            },
            psi: PsiSet::default(),
        })
    }

    fn detail_v2(&self, rel: &Path) -> Result<Detail, CgroupError> {
        let dir = self.base.join(rel);
        let cpu_stat = read_opt(&dir.join("cpu.stat"))?.unwrap_or_default();
        let stat = read_opt(&dir.join("memory.stat"))?.unwrap_or_default();
        let events = read_opt(&dir.join("memory.events"))?.unwrap_or_default();
        let usage = read_u64(&dir.join("memory.current"))?.unwrap_or(0);
        let inactive = kv(&stat, "inactive_file").unwrap_or(0);
        let us = |k| kv(&cpu_stat, k).unwrap_or(0).saturating_mul(1000);
        let cpu_max = read_opt(&dir.join("cpu.max"))?.unwrap_or_default();
        let mut cpu_max = cpu_max.split_whitespace();
        let quota = cpu_max.next().map_or(0, limit);
        let period = cpu_max.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let memory_limit = limit(&read_opt(&dir.join("memory.max"))?.unwrap_or_default());
        let swap_limit = limit(&read_opt(&dir.join("memory.swap.max"))?.unwrap_or_default());
        let kernel = kv(&stat, "kernel").unwrap_or_else(|| {
            kv(&stat, "kernel_stack").unwrap_or(0)
                + kv(&stat, "slab").unwrap_or(0)
                + kv(&stat, "sock").unwrap_or(0)
        });
        let pgfault = kv(&stat, "pgfault").unwrap_or(0);
        let pgmajfault = kv(&stat, "pgmajfault").unwrap_or(0);
        Ok(Detail {
            cpu_total_ns: us("usage_usec"),
            cpu_user_ns: us("user_usec"),
            cpu_system_ns: us("system_usec"),
            cfs_periods: kv(&cpu_stat, "nr_periods").unwrap_or(0),
            cfs_throttled_periods: kv(&cpu_stat, "nr_throttled").unwrap_or(0),
            cfs_throttled_ns: us("throttled_usec"),
            memory_usage: usage,
            memory_max_usage: read_u64(&dir.join("memory.peak"))?.unwrap_or(0),
            memory_working_set: usage.saturating_sub(inactive),
            memory_cache: kv(&stat, "file").unwrap_or(0),
            memory_rss: kv(&stat, "anon").unwrap_or(0),
            memory_kernel: kernel,
            memory_mapped_file: kv(&stat, "file_mapped").unwrap_or(0),
            memory_swap: read_u64(&dir.join("memory.swap.current"))?.unwrap_or(0),
            memory_failcnt: kv(&events, "max").unwrap_or(0),
            // v2 keeps one set of fault counters, which includes descendants.
            pgfault,
            pgmajfault,
            pgfault_hierarchy: pgfault,
            pgmajfault_hierarchy: pgmajfault,
            oom_events: kv(&events, "oom_kill").unwrap_or(0),
            pids: Vec::new(),
            threads: count_lines(&dir.join("cgroup.threads"))?,
            threads_max: limit(&read_opt(&dir.join("pids.max"))?.unwrap_or_default()),
            blkio: parse_v2_io(&read_opt(&dir.join("io.stat"))?.unwrap_or_default()),
            limits: Limits {
                cpu_period_us: period,
                cpu_quota_us: quota,
                cpu_shares: read_u64(&dir.join("cpu.weight"))?.map_or(0, weight_to_shares),
                memory_limit,
                memory_swap_limit: if memory_limit > 0 && swap_limit > 0 {
                    memory_limit + swap_limit
                } else {
                    0
                },
                memory_reservation: limit(&read_opt(&dir.join("memory.low"))?.unwrap_or_default()),
            },
            psi: PsiSet::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CgroupMode;
    use std::fs;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (name, body) in files {
            fs::write(dir.join(name), body).unwrap();
        }
    }

    #[test]
    fn v1_counters_and_limits() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        write(
            &b.join("cpuacct/k/c"),
            &[
                ("cpuacct.usage", "3000000000\n"),
                ("cpuacct.usage_user", "2000000000\n"),
                ("cpuacct.usage_sys", "1000000000\n"),
            ],
        );
        write(
            &b.join("cpu/k/c"),
            &[
                (
                    "cpu.stat",
                    "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
                ),
                ("cpu.cfs_period_us", "100000\n"),
                ("cpu.cfs_quota_us", "-1\n"),
                ("cpu.shares", "1024\n"),
            ],
        );
        write(
            &b.join("memory/k/c"),
            &[
                ("memory.usage_in_bytes", "1000\n"),
                (
                    "memory.stat",
                    "pgfault 3\ntotal_pgfault 5\ntotal_cache 100\ntotal_rss 200\ntotal_inactive_file 50\n",
                ),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.failcnt", "2\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
                ),
            ],
        );
        write(
            &b.join("pids/k/c"),
            &[
                ("tasks", "1\n2\n3\n"),
                ("pids.max", "max\n"),
                ("cgroup.procs", "1\n"),
            ],
        );
        write(
            &b.join("blkio/k/c"),
            &[
                (
                    "blkio.throttle.io_service_bytes_recursive",
                    "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n",
                ),
                (
                    "blkio.throttle.io_serviced_recursive",
                    "8:0 Read 1\n8:0 Write 2\n",
                ),
            ],
        );
        let cg = Cgroups::with_base(CgroupMode::Hybrid, b.to_path_buf());
        let d = cg.detail("/k/c").unwrap().unwrap();
        assert_eq!(
            (d.cpu_total_ns, d.cpu_user_ns, d.cpu_system_ns),
            (3_000_000_000, 2_000_000_000, 1_000_000_000)
        );
        assert_eq!(
            (d.cfs_periods, d.cfs_throttled_periods, d.cfs_throttled_ns),
            (10, 4, 5000)
        );
        assert_eq!(
            (
                d.memory_usage,
                d.memory_working_set,
                d.memory_cache,
                d.memory_rss
            ),
            (1000, 950, 100, 200)
        );
        assert_eq!(
            (
                d.pgfault,
                d.pgfault_hierarchy,
                d.memory_failcnt,
                d.oom_events
            ),
            (3, 5, 2, 1)
        );
        assert_eq!((d.threads, d.threads_max, d.pids.clone()), (3, 0, vec![1]));
        assert_eq!(
            d.limits.memory_limit, 0,
            "v1's unlimited sentinel reads as no limit"
        );
        assert_eq!(
            (
                d.limits.cpu_period_us,
                d.limits.cpu_quota_us,
                d.limits.cpu_shares
            ),
            (100_000, 0, 1024)
        );
        assert_eq!(
            d.blkio,
            vec![BlkioDevice {
                major: 8,
                minor: 0,
                read_bytes: 4096,
                write_bytes: 8192,
                reads: 1,
                writes: 2
            }]
        );
        assert!(cg.detail("/k/none").unwrap().is_none());
    }

    #[test]
    fn v2_counters_and_limits() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        write(b, &[("cgroup.controllers", "cpu memory pids io\n")]);
        write(
            &b.join("k/c"),
            &[
                (
                    "cpu.stat",
                    "usage_usec 30\nuser_usec 20\nsystem_usec 10\nnr_periods 7\nnr_throttled 1\nthrottled_usec 2\n",
                ),
                ("cpu.max", "20000 100000\n"),
                ("cpu.weight", "100\n"),
                ("memory.current", "1000\n"),
                ("memory.peak", "4000\n"),
                (
                    "memory.stat",
                    "anon 10\nfile 20\nkernel 30\nfile_mapped 5\ninactive_file 100\npgfault 9\npgmajfault 1\n",
                ),
                ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
                ("memory.max", "67108864\n"),
                ("memory.swap.max", "0\n"),
                ("cgroup.threads", "5\n6\n"),
                ("cgroup.procs", "5\n"),
                ("pids.max", "100\n"),
                (
                    "io.stat",
                    "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
                ),
            ],
        );
        let cg = Cgroups::with_base(CgroupMode::Unified, b.to_path_buf());
        let d = cg.detail("/k/c").unwrap().unwrap();
        assert_eq!(
            (d.cpu_total_ns, d.cpu_user_ns, d.cpu_system_ns),
            (30_000, 20_000, 10_000)
        );
        assert_eq!((d.cfs_periods, d.cfs_throttled_ns), (7, 2000));
        assert_eq!(
            (d.memory_max_usage, d.memory_working_set, d.memory_kernel),
            (4000, 900, 30)
        );
        assert_eq!(
            (d.memory_failcnt, d.oom_events, d.threads, d.threads_max),
            (3, 1, 2, 100)
        );
        assert_eq!(
            (d.limits.cpu_quota_us, d.limits.cpu_period_us),
            (20_000, 100_000)
        );
        assert_eq!(d.limits.cpu_shares, weight_to_shares(100));
        assert_eq!(
            (d.limits.memory_limit, d.limits.memory_swap_limit),
            (67_108_864, 0)
        );
        assert_eq!(d.blkio[0].write_bytes, 20);
    }

    #[test]
    fn weight_round_trips_the_kubelet_conversion() {
        // The kubelet's shares→weight: 1 + (shares - 2) * 9999 / 262142.
        for shares in [2u64, 1024, 262_144] {
            let weight = 1 + (shares - 2) * 9_999 / 262_142;
            let back = weight_to_shares(weight);
            assert!(
                back.abs_diff(shares) <= 27,
                "{shares} -> {weight} -> {back}"
            );
        }
    }
}
