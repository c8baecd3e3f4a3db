//! cgroups: pod and pause cgroups (cgroupfs layout, v1 and v2) and the statistics the CRI
//! stats RPCs report.
//!
//! Vocabulary: a cgroup *path* is what an OCI `cgroupsPath` holds for runc's cgroupfs driver,
//! e.g. `/skiff/<pod>/<id>`. On cgroup v1 (legacy and hybrid hosts) it names the directory
//! `<base>/<controller>/<path>` in every controller hierarchy; on v2 (unified) it names
//! `<base>/<path>`. `base` is `/sys/fs/cgroup` except in tests.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use skiff_cri::api;
use skiff_cri::error::{Classify, ErrorKind};

use crate::config::CgroupMode;

mod detail;
pub use detail::{BlkioDevice, Detail, Limits};

/// The v1 controller hierarchies skiff creates its cgroups in, whichever of them are mounted.
const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "memory", "pids", "cpuset", "hugetlb", "devices", "freezer", "blkio",
];

/// How long [`Cgroups::remove`] keeps retrying a busy cgroup (processes still exiting).
const REMOVE_BUSY_BUDGET: Duration = Duration::from_millis(500);

/// Errors of the cgroup helpers.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup path is not usable (`..` components, or the root where it is refused).
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// No cgroup hierarchy is mounted where one was expected.
    #[error("no cgroup hierarchy found under {}", base.display())]
    NoHierarchy {
        /// The cgroup mount base that was searched.
        base: PathBuf,
    },
    /// A file system operation on a cgroup file or directory failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl Classify for CgroupError {
    fn kind(&self) -> ErrorKind {
        match self {
            CgroupError::InvalidPath { .. } => ErrorKind::InvalidArgument,
            CgroupError::NoHierarchy { .. } | CgroupError::Io { .. } => ErrorKind::Internal,
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError + use<> {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// One sample of a cgroup's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    /// When the sample was taken, in nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// Cumulative CPU time (v1 `cpuacct.usage`; v2 `cpu.stat` `usage_usec` × 1000).
    pub cpu_usage_ns: u64,
    /// Memory usage (v1 `memory.usage_in_bytes`; v2 `memory.current`).
    pub memory_usage_bytes: u64,
    /// Usage minus inactive file cache, floored at 0 (what the kubelet evicts on).
    pub memory_working_set_bytes: u64,
    /// Anonymous memory (v1 `total_rss`; v2 `anon`).
    pub memory_rss_bytes: u64,
    /// Page faults (v1 `total_pgfault`; v2 `pgfault`).
    pub page_faults: u64,
    /// Major page faults (v1 `total_pgmajfault`; v2 `pgmajfault`).
    pub major_page_faults: u64,
    /// Processes and threads in the cgroup (`pids.current`).
    pub pids: u64,
    /// Swap in use, when the host accounts it (v1 `total_swap`, else
    /// `memory.memsw.usage_in_bytes` − usage; v2 `memory.swap.current`).
    pub swap_usage_bytes: Option<u64>,
    /// Pressure stall information, where the kernel keeps it for this cgroup (v2, or the
    /// unified hierarchy of a hybrid host); `None` where it does not.
    pub psi: PsiSet,
}

/// Pressure stall information of a cgroup, per resource (`cpu.pressure`, …).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PsiSet {
    /// `cpu.pressure`.
    pub cpu: Option<Pressure>,
    /// `memory.pressure`.
    pub memory: Option<Pressure>,
    /// `io.pressure`.
    pub io: Option<Pressure>,
}

/// One `*.pressure` file: the `some` and `full` lines.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// Some tasks stalled.
    pub some: PressureLine,
    /// All non-idle tasks stalled (absent for cpu on old kernels: zero).
    pub full: PressureLine,
}

/// One line of a pressure file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureLine {
    /// Total stall time in microseconds (`total=`).
    pub total_us: u64,
    /// `avg10=` (percent).
    pub avg10: f64,
    /// `avg60=`.
    pub avg60: f64,
    /// `avg300=`.
    pub avg300: f64,
}

impl Pressure {
    /// Parse a `*.pressure` file; `None` when it has no `some` line.
    pub fn parse(text: &str) -> Option<Pressure> {
        let mut out = Pressure::default();
        let mut some = false;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let target = match words.next() {
                Some("some") => {
                    some = true;
                    &mut out.some
                }
                Some("full") => &mut out.full,
                _ => continue,
            };
            for word in words {
                let Some((k, v)) = word.split_once('=') else {
                    continue;
                };
                match k {
                    "avg10" => target.avg10 = v.parse().unwrap_or(0.0),
                    "avg60" => target.avg60 = v.parse().unwrap_or(0.0),
                    "avg300" => target.avg300 = v.parse().unwrap_or(0.0),
                    "total" => target.total_us = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        some.then_some(out)
    }
}

/// One mounted v1 hierarchy (or the single v2 one).
#[derive(Debug, Clone)]
struct Hierarchy {
    /// The controller name it was found under (`cpu`, `memory`, …; empty for v2).
    name: &'static str,
    /// Its mount point.
    root: PathBuf,
}

/// The host's cgroup file system, seen through runc's cgroupfs layout.
#[derive(Debug, Clone)]
pub struct Cgroups {
    mode: CgroupMode,
    base: PathBuf,
}

impl Cgroups {
    /// cgroups under `/sys/fs/cgroup`.
    pub fn new(mode: CgroupMode) -> Cgroups {
        Self::with_base(mode, PathBuf::from("/sys/fs/cgroup"))
    }

    /// cgroups under another base directory (tests use a fake tree).
    pub fn with_base(mode: CgroupMode, base: PathBuf) -> Cgroups {
        Cgroups { mode, base }
    }

    /// The layout this instance works with.
    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// Whether this is pure cgroup v2.
    pub fn is_v2(&self) -> bool {
        self.mode == CgroupMode::Unified
    }

    /// The hierarchies in use: on v1 each mounted controller of [`V1_CONTROLLERS`] once
    /// (a combined `cpu,cpuacct` mount reached through two symlinks counts once); on v2 the base.
    fn hierarchies(&self) -> Vec<Hierarchy> {
        if self.is_v2() {
            return vec![Hierarchy {
                name: "",
                root: self.base.clone(),
            }];
        }
        let named: Vec<(&'static str, PathBuf)> = V1_CONTROLLERS
            .iter()
            .map(|&name| (name, self.base.join(name)))
            .collect();
        distinct_dirs(named)
            .into_iter()
            .map(|(name, root)| Hierarchy { name, root })
            .collect()
    }

    /// Every mounted hierarchy, for removal: on v1/hybrid also those skiff does not create
    /// in but the OCI runtime does (`name=systemd`, the hybrid `unified` mount, `net_cls`, …),
    /// so no parent directory is left behind there.
    fn all_roots(&self) -> Vec<PathBuf> {
        if self.is_v2() {
            return vec![self.base.clone()];
        }
        let Ok(entries) = fs::read_dir(&self.base) else {
            return self.hierarchies().into_iter().map(|h| h.root).collect();
        };
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        distinct_dirs(names.into_iter().map(|p| ((), p)).collect())
            .into_iter()
            .map(|(_, root)| root)
            .collect()
    }

    /// The directory of `rel` in the v1 hierarchy of `controller`, or in v2.
    fn dir(&self, controller: &str, rel: &Path) -> PathBuf {
        if self.is_v2() {
            self.base.join(rel)
        } else {
            self.base.join(controller).join(rel)
        }
    }

    /// Create the cgroup `path` in every hierarchy in use.
    ///
    /// On v1, an empty `cpuset.cpus` / `cpuset.mems` on the way down is filled from its parent,
    /// or no process could join. On v2, each ancestor gets the controllers it has available
    /// enabled in its `cgroup.subtree_control` (failures there are logged and tolerated: a
    /// controller may be busy or not delegable). Creating an existing cgroup is not an error.
    pub fn create(&self, path: &str) -> Result<(), CgroupError> {
        let rel = relative(path)?;
        if self.is_v2() {
            return self.create_v2(&rel);
        }
        let hierarchies = self.hierarchies();
        if hierarchies.is_empty() {
            return Err(CgroupError::NoHierarchy {
                base: self.base.clone(),
            });
        }
        for h in &hierarchies {
            let mut dir = h.root.clone();
            for comp in rel.components() {
                let parent = dir.clone();
                dir.push(comp);
                mkdir(&dir)?;
                if h.name == "cpuset" {
                    inherit_cpuset(&parent, &dir)?;
                }
            }
        }
        tracing::debug!(cgroup = path, "created cgroup");
        Ok(())
    }

    fn create_v2(&self, rel: &Path) -> Result<(), CgroupError> {
        if !self.base.join("cgroup.controllers").exists() {
            return Err(CgroupError::NoHierarchy {
                base: self.base.clone(),
            });
        }
        let mut dir = self.base.clone();
        for comp in rel.components() {
            enable_controllers(&dir);
            dir.push(comp);
            mkdir(&dir)?;
        }
        tracing::debug!(cgroup = %rel.display(), "created cgroup");
        Ok(())
    }

    /// The `cgroup.procs` files a process writes its pid to in order to join `path`, one per
    /// hierarchy. Empty if the path is invalid.
    pub fn procs_files(&self, path: &str) -> Vec<PathBuf> {
        let Ok(rel) = relative(path) else {
            return Vec::new();
        };
        self.hierarchies()
            .into_iter()
            .map(|h| h.root.join(&rel).join("cgroup.procs"))
            .collect()
    }

    /// Remove `path` in every hierarchy where it is empty (no child cgroups); never waits,
    /// never touches children. For shared parents such as `/skiff`.
    pub fn remove_if_empty(&self, path: &str) {
        let Ok(rel) = relative(path) else {
            return;
        };
        if rel.as_os_str().is_empty() {
            return;
        }
        for root in self.all_roots() {
            let _ = fs::remove_dir(root.join(&rel));
        }
    }

    /// Remove `path` from every hierarchy: child cgroups first (only empty directories are
    /// ever removed), a cgroup that is already gone is fine, a busy one is retried for about
    /// half a second. Every hierarchy is tried; the first failure is returned.
    ///
    /// This blocks (sleeps) while it retries.
    pub fn remove(&self, path: &str) -> Result<(), CgroupError> {
        crate::blocking::assert_may_block("Cgroups::remove");
        let rel = relative(path)?;
        if rel.as_os_str().is_empty() {
            return Err(CgroupError::InvalidPath {
                path: path.to_string(),
                reason: "refusing to remove the root cgroup",
            });
        }
        let mut first = None;
        for root in self.all_roots() {
            if let Err(e) = remove_tree(&root.join(&rel)) {
                tracing::debug!(cgroup = path, error = %e, "remove cgroup");
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether the cgroup exists (in any hierarchy on v1).
    pub fn exists(&self, path: &str) -> bool {
        let Ok(rel) = relative(path) else {
            return false;
        };
        self.hierarchies()
            .iter()
            .any(|h| h.root.join(&rel).is_dir())
    }

    /// Read the counters of `path`; `Ok(None)` if the cgroup does not exist. A counter file
    /// that is missing (controller not enabled, cgroup removed meanwhile) reads as 0.
    pub fn stats(&self, path: &str) -> Result<Option<CgroupStats>, CgroupError> {
        let rel = relative(path)?;
        if !self.exists(path) {
            return Ok(None);
        }
        let timestamp_ns = now_ns();
        let mut stats = if self.is_v2() {
            self.stats_v2(&rel, timestamp_ns)?
        } else {
            self.stats_v1(&rel, timestamp_ns)?
        };
        stats.psi = self.psi(&rel);
        Ok(Some(stats))
    }

    fn stats_v1(&self, rel: &Path, timestamp_ns: i64) -> Result<CgroupStats, CgroupError> {
        let cpu = read_u64(&self.dir("cpuacct", rel).join("cpuacct.usage"))?;
        let memory = self.dir("memory", rel);
        let usage = read_u64(&memory.join("memory.usage_in_bytes"))?.unwrap_or(0);
        let stat = read_opt(&memory.join("memory.stat"))?.unwrap_or_default();
        let inactive_file = kv(&stat, "total_inactive_file").unwrap_or(0);
        let swap = match kv(&stat, "total_swap") {
            Some(swap) => Some(swap),
            None => read_u64(&memory.join("memory.memsw.usage_in_bytes"))?
                .map(|memsw| memsw.saturating_sub(usage)),
        };
        Ok(CgroupStats {
            timestamp_ns,
            cpu_usage_ns: cpu.unwrap_or(0),
            memory_usage_bytes: usage,
            memory_working_set_bytes: usage.saturating_sub(inactive_file),
            memory_rss_bytes: kv(&stat, "total_rss").unwrap_or(0),
            page_faults: kv(&stat, "total_pgfault").unwrap_or(0),
            major_page_faults: kv(&stat, "total_pgmajfault").unwrap_or(0),
            pids: read_u64(&self.dir("pids", rel).join("pids.current"))?.unwrap_or(0),
            swap_usage_bytes: swap,
            psi: PsiSet::default(),
        })
    }

    fn stats_v2(&self, rel: &Path, timestamp_ns: i64) -> Result<CgroupStats, CgroupError> {
        let dir = self.base.join(rel);
        let cpu_stat = read_opt(&dir.join("cpu.stat"))?.unwrap_or_default();
        let usage = read_u64(&dir.join("memory.current"))?.unwrap_or(0);
        let stat = read_opt(&dir.join("memory.stat"))?.unwrap_or_default();
        let inactive_file = kv(&stat, "inactive_file").unwrap_or(0);
        Ok(CgroupStats {
            timestamp_ns,
            cpu_usage_ns: kv(&cpu_stat, "usage_usec")
                .unwrap_or(0)
                .saturating_mul(1000),
            memory_usage_bytes: usage,
            memory_working_set_bytes: usage.saturating_sub(inactive_file),
            memory_rss_bytes: kv(&stat, "anon").unwrap_or(0),
            page_faults: kv(&stat, "pgfault").unwrap_or(0),
            major_page_faults: kv(&stat, "pgmajfault").unwrap_or(0),
            pids: read_u64(&dir.join("pids.current"))?.unwrap_or(0),
            swap_usage_bytes: read_u64(&dir.join("memory.swap.current"))?,
            psi: PsiSet::default(),
        })
    }

    /// The unified-hierarchy directory of `rel`: the cgroup itself on v2, its twin under
    /// `unified/` on a hybrid host (where the OCI runtime creates one), else `None`.
    fn unified_dir(&self, rel: &Path) -> Option<PathBuf> {
        let dir = if self.is_v2() {
            self.base.join(rel)
        } else {
            self.base.join("unified").join(rel)
        };
        dir.is_dir().then_some(dir)
    }

    /// Pressure stall information of `rel`, where the kernel keeps it.
    fn psi(&self, rel: &Path) -> PsiSet {
        let Some(dir) = self.unified_dir(rel) else {
            return PsiSet::default();
        };
        let read = |file: &str| {
            read_opt(&dir.join(file))
                .ok()
                .flatten()
                .and_then(|t| Pressure::parse(&t))
        };
        PsiSet {
            cpu: read("cpu.pressure"),
            memory: read("memory.pressure"),
            io: read("io.pressure"),
        }
    }

    /// Whether the cgroup saw an OOM kill (`oom_kill` > 0 in v1 `memory.oom_control`, v2
    /// `memory.events`). False when that cannot be read.
    pub fn oom_killed(&self, path: &str) -> bool {
        let Ok(rel) = relative(path) else {
            return false;
        };
        let file = if self.is_v2() {
            self.base.join(&rel).join("memory.events")
        } else {
            self.dir("memory", &rel).join("memory.oom_control")
        };
        match read_opt(&file) {
            Ok(Some(text)) => kv(&text, "oom_kill").is_some_and(|n| n > 0),
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(cgroup = path, error = %e, "read oom counter");
                false
            }
        }
    }

    /// The processes in the cgroup (`cgroup.procs` of the pids hierarchy, else memory, on v1).
    /// Empty when the cgroup does not exist.
    pub fn pids(&self, path: &str) -> Vec<u32> {
        // Never the root cgroup: its processes are the whole node's, and callers kill them.
        let Ok(rel) = relative(path) else {
            return Vec::new();
        };
        if rel.as_os_str().is_empty() {
            return Vec::new();
        }
        let file = if self.is_v2() {
            self.base.join(&rel).join("cgroup.procs")
        } else {
            let controller = if self.base.join("pids").is_dir() {
                "pids"
            } else {
                "memory"
            };
            self.dir(controller, &rel).join("cgroup.procs")
        };
        match read_opt(&file) {
            Ok(Some(text)) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::debug!(cgroup = path, error = %e, "read cgroup.procs");
                Vec::new()
            }
        }
    }
}

/// A cgroup path made relative: leading `/` and `.` dropped, `..` refused.
fn relative(path: &str) -> Result<PathBuf, CgroupError> {
    let mut rel = PathBuf::new();
    for comp in Path::new(path).components() {
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => rel.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CgroupError::InvalidPath {
                    path: path.to_string(),
                    reason: "'..' is not allowed",
                });
            }
        }
    }
    Ok(rel)
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create cgroup", dir)(e)),
    }
}

/// Fill an empty `cpuset.cpus` / `cpuset.mems` of `dir` from `parent`. A parent without the
/// file (or with it empty) leaves `dir` alone.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = read_opt(&dir.join(file))?.unwrap_or_default();
        if !own.trim().is_empty() {
            continue;
        }
        let Some(value) = read_opt(&parent.join(file))? else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let target = dir.join(file);
        fs::write(&target, value).map_err(io_err("write", &target))?;
    }
    Ok(())
}

/// Enable in `dir/cgroup.subtree_control` every controller of `dir/cgroup.controllers` that
/// is not enabled yet, one at a time so one refusal does not stop the others.
fn enable_controllers(dir: &Path) {
    let Ok(Some(available)) = read_opt(&dir.join("cgroup.controllers")) else {
        return;
    };
    let control = dir.join("cgroup.subtree_control");
    let enabled = read_opt(&control).ok().flatten().unwrap_or_default();
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    for controller in available.split_whitespace() {
        if enabled.contains(&controller) {
            continue;
        }
        if let Err(e) = fs::write(&control, format!("+{controller}")) {
            tracing::debug!(
                path = %control.display(),
                controller,
                error = %e,
                "cannot enable cgroup controller"
            );
        }
    }
}

/// rmdir `dir` after its child cgroups, deepest first. Gone is fine.
/// The existing directories among `candidates`, each mount once (a combined `cpu,cpuacct`
/// hierarchy reached through two symlinks counts once).
fn distinct_dirs<T>(candidates: Vec<(T, PathBuf)>) -> Vec<(T, PathBuf)> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    for (tag, root) in candidates {
        if !root.is_dir() {
            continue;
        }
        let real = fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
        if !seen.contains(&real) {
            seen.push(real);
            out.push((tag, root));
        }
    }
    out
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list cgroup", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list cgroup", dir))?;
        let is_dir = entry
            .file_type()
            .map_err(io_err("list cgroup", &entry.path()))?
            .is_dir();
        if is_dir {
            remove_tree(&entry.path())?;
        }
    }
    rmdir_retry(dir)
}

/// rmdir, retrying EBUSY (exiting processes) with growing short sleeps for about
/// [`REMOVE_BUSY_BUDGET`].
fn rmdir_retry(dir: &Path) -> Result<(), CgroupError> {
    let mut delay = Duration::from_millis(10);
    let mut waited = Duration::ZERO;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && waited < REMOVE_BUSY_BUDGET => {
                std::thread::sleep(delay);
                waited += delay;
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(io_err("remove cgroup", dir)(e)),
        }
    }
}

/// Read a cgroup file; `None` when it (or its cgroup) does not exist.
fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Read a single-number cgroup file; `None` when missing or not a number.
fn read_u64(path: &Path) -> Result<Option<u64>, CgroupError> {
    Ok(read_opt(path)?.and_then(|s| s.trim().parse().ok()))
}

/// The value of `key` in a flat-keyed cgroup file (`key value` per line).
fn kv(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(key))
            .then(|| parts.next())
            .flatten()
            .and_then(|v| v.parse().ok())
    })
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn value(v: u64) -> Option<api::UInt64Value> {
    Some(api::UInt64Value { value: v })
}

/// CRI PSI of one pressure file (totals in nanoseconds, as the CRI counts them).
fn psi(p: Option<Pressure>) -> Option<api::PsiStats> {
    let line = |l: PressureLine| api::PsiData {
        total: l.total_us.saturating_mul(1000),
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
    };
    p.map(|p| api::PsiStats {
        full: Some(line(p.full)),
        some: Some(line(p.some)),
    })
}

/// CPU usage of a sample; without one, just a timestamp (clients dereference `cpu`).
fn cpu_usage(ts: i64, s: Option<&CgroupStats>) -> api::CpuUsage {
    api::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: s.and_then(|s| value(s.cpu_usage_ns)),
        usage_nano_cores: None,
        psi: psi(s.and_then(|s| s.psi.cpu)),
    }
}

/// IO usage of a sample: only PSI, so absent where the kernel keeps none.
fn io_usage(ts: i64, s: Option<&CgroupStats>) -> Option<api::IoUsage> {
    let p = psi(s.and_then(|s| s.psi.io))?;
    Some(api::IoUsage {
        timestamp: ts,
        psi: Some(p),
    })
}

/// Memory usage of a sample; without one, just a timestamp.
fn memory_usage(ts: i64, s: Option<&CgroupStats>) -> api::MemoryUsage {
    api::MemoryUsage {
        timestamp: ts,
        working_set_bytes: s.and_then(|s| value(s.memory_working_set_bytes)),
        available_bytes: None,
        usage_bytes: s.and_then(|s| value(s.memory_usage_bytes)),
        rss_bytes: s.and_then(|s| value(s.memory_rss_bytes)),
        page_faults: s.and_then(|s| value(s.page_faults)),
        major_page_faults: s.and_then(|s| value(s.major_page_faults)),
        psi: psi(s.and_then(|s| s.psi.memory)),
    }
}

/// CRI stats of one container from its cgroup sample. `cpu` and `memory` are always present
/// (with only a timestamp when there is no sample); `swap` only when the host accounts it.
/// `usage_nano_cores` is left `None`: fill it from a [`CpuRate`].
pub fn container_stats(
    attributes: api::ContainerAttributes,
    s: Option<&CgroupStats>,
    writable_layer: Option<api::FilesystemUsage>,
) -> api::ContainerStats {
    let ts = s.map_or_else(now_ns, |s| s.timestamp_ns);
    api::ContainerStats {
        attributes: Some(attributes),
        cpu: Some(cpu_usage(ts, s)),
        memory: Some(memory_usage(ts, s)),
        writable_layer,
        swap: s
            .and_then(|s| s.swap_usage_bytes)
            .map(|swap| api::SwapUsage {
                timestamp: ts,
                swap_available_bytes: None,
                swap_usage_bytes: value(swap),
            }),
        io: io_usage(ts, s),
    }
}

/// CRI stats of one pod from its cgroup sample and its containers' stats (no network stats).
pub fn pod_stats(
    attributes: api::PodSandboxAttributes,
    s: Option<&CgroupStats>,
    containers: Vec<api::ContainerStats>,
) -> api::PodSandboxStats {
    let ts = s.map_or_else(now_ns, |s| s.timestamp_ns);
    api::PodSandboxStats {
        attributes: Some(attributes),
        linux: Some(api::LinuxPodSandboxStats {
            cpu: Some(cpu_usage(ts, s)),
            memory: Some(memory_usage(ts, s)),
            network: None,
            process: Some(api::ProcessUsage {
                timestamp: ts,
                process_count: s.and_then(|s| value(s.pids)),
            }),
            containers,
            io: io_usage(ts, s),
        }),
        windows: None,
    }
}

/// CPU rate from consecutive samples: the previous `(timestamp_ns, usage_ns)` per id, as
/// containerd keeps it to report `usage_nano_cores`.
#[derive(Debug, Default)]
pub struct CpuRate {
    previous: Mutex<HashMap<String, (i64, u64)>>,
}

impl CpuRate {
    /// Record the sample `(ts_ns, usage_ns)` of `id` and return the rate since the previous
    /// one in nanocores (CPU-nanoseconds per second); `None` for the first sample, or when
    /// time did not advance or the counter went back (cgroup recreated).
    pub fn nano_cores(&self, id: &str, ts_ns: i64, usage_ns: u64) -> Option<u64> {
        let mut previous = self.previous.lock().unwrap_or_else(PoisonError::into_inner);
        let (prev_ts, prev_usage) = previous.insert(id.to_string(), (ts_ns, usage_ns))?;
        let dt = u64::try_from(ts_ns.checked_sub(prev_ts)?)
            .ok()
            .filter(|&dt| dt > 0)?;
        let du = usage_ns.checked_sub(prev_usage)?;
        let rate = u128::from(du) * 1_000_000_000 / u128::from(dt);
        Some(u64::try_from(rate).unwrap_or(u64::MAX))
    }

    /// Drop the samples of `id` (container or pod removed).
    pub fn forget(&self, id: &str) {
        self.previous
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// A v1 tree with the given controller directories (each a plain directory).
    fn v1_base(controllers: &[&str]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for c in controllers {
            fs::create_dir_all(tmp.path().join(c)).unwrap();
        }
        tmp
    }

    fn v1_cgroup(base: &Path, rel: &str, usage: u64, inactive_file: u64) {
        write(
            &base.join("cpuacct").join(rel).join("cpuacct.usage"),
            "123456789\n",
        );
        let memory = base.join("memory").join(rel);
        write(&memory.join("memory.usage_in_bytes"), &format!("{usage}\n"));
        write(
            &memory.join("memory.stat"),
            &format!(
                "cache 1\nrss 2\ninactive_file 3\npgfault 4\ntotal_cache 100\ntotal_rss 4096\n\
                 total_pgfault 77\ntotal_pgmajfault 5\ntotal_inactive_file {inactive_file}\n"
            ),
        );
        write(
            &memory.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        );
        write(&base.join("pids").join(rel).join("pids.current"), "7\n");
    }

    fn v2_cgroup(base: &Path, rel: &str, usage: u64, inactive_file: u64) {
        let dir = base.join(rel);
        write(
            &dir.join("cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        write(&dir.join("memory.current"), &format!("{usage}\n"));
        write(
            &dir.join("memory.stat"),
            &format!(
                "anon 8192\nfile 1000\ninactive_anon 0\ninactive_file {inactive_file}\n\
                 pgfault 11\npgmajfault 2\n"
            ),
        );
        write(
            &dir.join("memory.events"),
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        );
        write(&dir.join("pids.current"), "3\n");
        write(&dir.join("memory.swap.current"), "4096\n");
    }

    #[test]
    fn v1_stats() {
        let tmp = v1_base(&["cpuacct", "memory", "pids"]);
        v1_cgroup(tmp.path(), "skiff/pod/c1", 10_000, 3_000);
        let cg = Cgroups::with_base(CgroupMode::Hybrid, tmp.path().to_path_buf());
        assert!(cg.exists("/skiff/pod/c1"));
        let s = cg.stats("/skiff/pod/c1").unwrap().unwrap();
        assert!(s.timestamp_ns > 0);
        assert_eq!(s.cpu_usage_ns, 123_456_789);
        assert_eq!(s.memory_usage_bytes, 10_000);
        assert_eq!(s.memory_working_set_bytes, 7_000);
        assert_eq!(s.memory_rss_bytes, 4096);
        assert_eq!(s.page_faults, 77);
        assert_eq!(s.major_page_faults, 5);
        assert_eq!(s.pids, 7);
        assert_eq!(s.swap_usage_bytes, None);
    }

    #[test]
    fn v1_swap_when_accounted() {
        let tmp = v1_base(&["memory"]);
        write(
            &tmp.path().join("memory/a/memory.stat"),
            "total_swap 8192\ntotal_rss 1\n",
        );
        let cg = Cgroups::with_base(CgroupMode::Legacy, tmp.path().to_path_buf());
        let s = cg.stats("/a").unwrap().unwrap();
        assert_eq!(s.swap_usage_bytes, Some(8192));
        // Missing counter files read as 0.
        assert_eq!(s.cpu_usage_ns, 0);
        assert_eq!(s.pids, 0);

        // Without total_swap: memsw usage minus memory usage.
        write(&tmp.path().join("memory/b/memory.usage_in_bytes"), "1000\n");
        write(
            &tmp.path().join("memory/b/memory.memsw.usage_in_bytes"),
            "1500\n",
        );
        assert_eq!(cg.stats("/b").unwrap().unwrap().swap_usage_bytes, Some(500));
    }

    #[test]
    fn v2_stats() {
        let tmp = tempfile::tempdir().unwrap();
        v2_cgroup(tmp.path(), "skiff/pod/c1", 50_000, 20_000);
        let cg = Cgroups::with_base(CgroupMode::Unified, tmp.path().to_path_buf());
        let s = cg.stats("/skiff/pod/c1").unwrap().unwrap();
        assert_eq!(s.cpu_usage_ns, 2_500_000);
        assert_eq!(s.memory_usage_bytes, 50_000);
        assert_eq!(s.memory_working_set_bytes, 30_000);
        assert_eq!(s.memory_rss_bytes, 8192);
        assert_eq!(s.page_faults, 11);
        assert_eq!(s.major_page_faults, 2);
        assert_eq!(s.pids, 3);
        assert_eq!(s.swap_usage_bytes, Some(4096));
    }

    #[test]
    fn missing_cgroup_is_none() {
        let tmp = v1_base(&["cpuacct", "memory", "pids"]);
        let cg = Cgroups::with_base(CgroupMode::Hybrid, tmp.path().to_path_buf());
        assert!(!cg.exists("/skiff/nope"));
        assert_eq!(cg.stats("/skiff/nope").unwrap(), None);
        assert!(cg.pids("/skiff/nope").is_empty());
        assert!(!cg.oom_killed("/skiff/nope"));

        let cg = Cgroups::with_base(CgroupMode::Unified, tmp.path().to_path_buf());
        assert_eq!(cg.stats("/skiff/nope").unwrap(), None);
    }

    #[test]
    fn working_set_floors_at_zero() {
        let tmp = v1_base(&["cpuacct", "memory", "pids"]);
        v1_cgroup(tmp.path(), "a", 1_000, 5_000);
        let cg = Cgroups::with_base(CgroupMode::Hybrid, tmp.path().to_path_buf());
        assert_eq!(cg.stats("/a").unwrap().unwrap().memory_working_set_bytes, 0);

        let tmp = tempfile::tempdir().unwrap();
        v2_cgroup(tmp.path(), "a", 1_000, 5_000);
        let cg = Cgroups::with_base(CgroupMode::Unified, tmp.path().to_path_buf());
        assert_eq!(cg.stats("/a").unwrap().unwrap().memory_working_set_bytes, 0);
    }

    #[test]
    fn oom_detection() {
        let tmp = v1_base(&["cpuacct", "memory", "pids"]);
        v1_cgroup(tmp.path(), "a", 1, 0);
        let cg = Cgroups::with_base(CgroupMode::Hybrid, tmp.path().to_path_buf());
        assert!(!cg.oom_killed("/a"));
        write(
            &tmp.path().join("memory/a/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        assert!(cg.oom_killed("/a"));

        let tmp = tempfile::tempdir().unwrap();
        v2_cgroup(tmp.path(), "a", 1, 0);
        let cg = Cgroups::with_base(CgroupMode::Unified, tmp.path().to_path_buf());
        assert!(!cg.oom_killed("/a"));
        write(
            &tmp.path().join("a/memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        assert!(cg.oom_killed("/a"));
    }

    #[test]
    fn procs_files_per_mode() {
        let tmp = v1_base(&["cpu,cpuacct", "memory", "pids", "systemd", "unified"]);
        std::os::unix::fs::symlink("cpu,cpuacct", tmp.path().join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", tmp.path().join("cpuacct")).unwrap();
        let base = tmp.path();
        let cg = Cgroups::with_base(CgroupMode::Hybrid, base.to_path_buf());
        assert_eq!(
            cg.procs_files("/a/b"),
            vec![
                base.join("cpu/a/b/cgroup.procs"),
                base.join("memory/a/b/cgroup.procs"),
                base.join("pids/a/b/cgroup.procs"),
            ]
        );
        let cg = Cgroups::with_base(CgroupMode::Legacy, base.to_path_buf());
        assert_eq!(cg.procs_files("a/b").len(), 3);
        let cg = Cgroups::with_base(CgroupMode::Unified, base.to_path_buf());
        assert_eq!(cg.procs_files("/a/b"), vec![base.join("a/b/cgroup.procs")]);
        assert!(cg.procs_files("/a/../b").is_empty());
    }

    #[test]
    fn v1_create_inherits_cpuset_and_remove_children_first() {
        let tmp = v1_base(&["cpu", "memory", "cpuset"]);
        let base = tmp.path();
        write(&base.join("cpuset/cpuset.cpus"), "0-3\n");
        write(&base.join("cpuset/cpuset.mems"), "0\n");
        let cg = Cgroups::with_base(CgroupMode::Hybrid, base.to_path_buf());
        cg.create("/skiff/pod/c1").unwrap();
        cg.create("/skiff/pod/c1").unwrap(); // idempotent
        for c in ["cpu", "memory", "cpuset"] {
            assert!(base.join(c).join("skiff/pod/c1").is_dir(), "{c}");
        }
        for level in ["skiff", "skiff/pod", "skiff/pod/c1"] {
            let dir = base.join("cpuset").join(level);
            assert_eq!(fs::read_to_string(dir.join("cpuset.cpus")).unwrap(), "0-3");
            assert_eq!(fs::read_to_string(dir.join("cpuset.mems")).unwrap(), "0");
        }
        assert!(cg.exists("/skiff/pod"));
        // The fake cpuset files make those directories non-empty; drop them as the
        // kernel would (cgroupfs control files do not block rmdir).
        for level in ["skiff", "skiff/pod", "skiff/pod/c1"] {
            let dir = base.join("cpuset").join(level);
            fs::remove_file(dir.join("cpuset.cpus")).unwrap();
            fs::remove_file(dir.join("cpuset.mems")).unwrap();
        }
        cg.remove("/skiff/pod").unwrap();
        assert!(!cg.exists("/skiff/pod"));
        assert!(cg.exists("/skiff"));
        cg.remove("/skiff/pod").unwrap(); // gone is fine
    }

    #[test]
    fn remove_names_the_path_on_failure() {
        let tmp = v1_base(&["memory"]);
        write(&tmp.path().join("memory/a/file"), "x");
        let cg = Cgroups::with_base(CgroupMode::Legacy, tmp.path().to_path_buf());
        let err = cg.remove("/a").unwrap_err();
        assert!(err.to_string().contains("memory/a"), "{err}");
        assert_eq!(err.kind(), ErrorKind::Internal);
    }

    #[test]
    fn v2_create_enables_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        write(&base.join("cgroup.controllers"), "cpu memory pids\n");
        write(&base.join("cgroup.subtree_control"), "");
        let cg = Cgroups::with_base(CgroupMode::Unified, base.to_path_buf());
        cg.create("/skiff/pod").unwrap();
        assert!(base.join("skiff/pod").is_dir());
        // A plain file keeps only the last write; the kernel would accumulate them.
        assert_eq!(
            fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        cg.remove("/skiff").unwrap();
        assert!(!base.join("skiff").exists());
    }

    #[test]
    fn missing_hierarchy_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = Cgroups::with_base(CgroupMode::Unified, tmp.path().to_path_buf());
        assert!(matches!(
            cg.create("/a"),
            Err(CgroupError::NoHierarchy { .. })
        ));
        let cg = Cgroups::with_base(CgroupMode::Hybrid, tmp.path().to_path_buf());
        assert!(matches!(
            cg.create("/a"),
            Err(CgroupError::NoHierarchy { .. })
        ));
    }

    #[test]
    fn invalid_paths_are_refused() {
        let tmp = v1_base(&["memory"]);
        let cg = Cgroups::with_base(CgroupMode::Hybrid, tmp.path().to_path_buf());
        for bad in ["/a/../../etc", ".."] {
            let err = cg.create(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(cg.remove(bad).is_err());
            assert!(cg.stats(bad).is_err());
            assert!(!cg.exists(bad));
        }
        for root in ["", "/", "/./"] {
            assert!(matches!(
                cg.remove(root),
                Err(CgroupError::InvalidPath { .. })
            ));
        }
        assert!(tmp.path().join("memory").is_dir());
    }

    #[test]
    fn pids_are_listed() {
        let tmp = v1_base(&["memory", "pids"]);
        write(&tmp.path().join("pids/a/cgroup.procs"), "12\n345\n");
        let cg = Cgroups::with_base(CgroupMode::Hybrid, tmp.path().to_path_buf());
        assert_eq!(cg.pids("/a"), vec![12, 345]);
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join("a/cgroup.procs"), "9\n");
        let cg = Cgroups::with_base(CgroupMode::Unified, tmp.path().to_path_buf());
        assert_eq!(cg.pids("/a"), vec![9]);
    }

    #[test]
    fn nano_cores_from_consecutive_samples() {
        let rate = CpuRate::default();
        assert_eq!(rate.nano_cores("c", 1_000_000_000, 0), None);
        // Half a core over two seconds.
        assert_eq!(
            rate.nano_cores("c", 3_000_000_000, 1_000_000_000),
            Some(500_000_000)
        );
        // Time did not advance / counter went back.
        assert_eq!(rate.nano_cores("c", 3_000_000_000, 2_000_000_000), None);
        assert_eq!(rate.nano_cores("c", 4_000_000_000, 1), None);
        // Other ids are independent.
        assert_eq!(rate.nano_cores("d", 4_000_000_000, 1), None);
        assert_eq!(
            rate.nano_cores("c", 5_000_000_000, 250_000_001),
            Some(250_000_000)
        );
        rate.forget("c");
        assert_eq!(rate.nano_cores("c", 6_000_000_000, 300_000_000), None);
    }

    fn sample() -> CgroupStats {
        CgroupStats {
            timestamp_ns: 42,
            cpu_usage_ns: 1,
            memory_usage_bytes: 2,
            memory_working_set_bytes: 3,
            memory_rss_bytes: 4,
            page_faults: 5,
            major_page_faults: 6,
            pids: 7,
            swap_usage_bytes: Some(8),
            psi: PsiSet::default(),
        }
    }

    #[test]
    fn pressure_files() {
        let p = Pressure::parse(
            "some avg10=1.50 avg60=0.00 avg300=0.25 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        )
        .unwrap();
        assert_eq!(p.some.total_us, 1234);
        assert_eq!(p.some.avg10, 1.5);
        assert_eq!(p.full.total_us, 7);
        assert_eq!(Pressure::parse(""), None);
        let cri = psi(Some(p)).unwrap();
        assert_eq!(cri.some.unwrap().total, 1_234_000);
        assert!(psi(None).is_none());
    }

    #[test]
    fn cri_conversions() {
        let attrs = api::ContainerAttributes {
            id: "c1".into(),
            ..Default::default()
        };
        let s = sample();
        let c = container_stats(attrs.clone(), Some(&s), None);
        let cpu = c.cpu.unwrap();
        assert_eq!(cpu.timestamp, 42);
        assert_eq!(cpu.usage_core_nano_seconds.unwrap().value, 1);
        assert_eq!(cpu.usage_nano_cores, None);
        let mem = c.memory.unwrap();
        assert_eq!(mem.timestamp, 42);
        assert_eq!(mem.usage_bytes.unwrap().value, 2);
        assert_eq!(mem.working_set_bytes.unwrap().value, 3);
        assert_eq!(mem.rss_bytes.unwrap().value, 4);
        assert_eq!(mem.page_faults.unwrap().value, 5);
        assert_eq!(mem.major_page_faults.unwrap().value, 6);
        assert_eq!(mem.available_bytes, None);
        assert_eq!(c.swap.unwrap().swap_usage_bytes.unwrap().value, 8);
        assert_eq!(c.attributes.unwrap().id, "c1");

        // No sample: timestamps only, no values, no swap.
        let empty = container_stats(attrs, None, None);
        let cpu = empty.cpu.as_ref().unwrap();
        assert!(cpu.timestamp > 0 && cpu.usage_core_nano_seconds.is_none());
        assert!(empty.memory.as_ref().unwrap().working_set_bytes.is_none());
        assert!(empty.swap.is_none());

        let pod_attrs = api::PodSandboxAttributes {
            id: "p1".into(),
            ..Default::default()
        };
        let p = pod_stats(pod_attrs.clone(), Some(&s), vec![empty]);
        let linux = p.linux.unwrap();
        assert_eq!(linux.process.unwrap().process_count.unwrap().value, 7);
        assert_eq!(linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value, 1);
        assert_eq!(linux.memory.unwrap().working_set_bytes.unwrap().value, 3);
        assert!(linux.network.is_none());
        assert_eq!(linux.containers.len(), 1);
        assert!(p.windows.is_none());
        let p = pod_stats(pod_attrs, None, Vec::new());
        let linux = p.linux.unwrap();
        assert!(linux.cpu.unwrap().usage_core_nano_seconds.is_none());
        assert!(linux.process.unwrap().process_count.is_none());
    }

    /// Removes the test cgroup even when an assertion fails.
    struct RemoveOnDrop<'a>(&'a Cgroups, &'a str);

    impl Drop for RemoveOnDrop<'_> {
        fn drop(&mut self) {
            if let Err(e) = self.0.remove(self.1) {
                eprintln!("cleanup of cgroup {}: {e}", self.1);
            }
        }
    }

    #[test]
    fn host_create_and_remove() {
        if !skiff_testkit::require_root("cgroups::tests::host_create_and_remove") {
            return;
        }
        let mode = CgroupMode::detect();
        let cg = Cgroups::new(mode);
        let top = format!("/skiff-test-{}-{}", std::process::id(), now_ns());
        let path = format!("{top}/pod");
        assert!(!cg.exists(&top));
        let guard = RemoveOnDrop(&cg, &top);
        cg.create(&path).unwrap();
        assert!(cg.exists(&path), "{mode:?}");
        for file in cg.procs_files(&path) {
            assert!(file.exists(), "{}", file.display());
        }
        assert!(cg.stats(&path).unwrap().is_some(), "{mode:?}");
        let cpuset = Path::new("/sys/fs/cgroup/cpuset").join(&path[1..]);
        if !cg.is_v2() && cpuset.is_dir() {
            let cpus = fs::read_to_string(cpuset.join("cpuset.cpus")).unwrap();
            assert!(!cpus.trim().is_empty(), "cpuset.cpus not inherited");
        }
        assert!(cg.pids(&path).is_empty());
        assert!(!cg.oom_killed(&path));
        // Removing the parent removes the child first.
        cg.remove(&top).unwrap();
        assert!(!cg.exists(&top));
        assert_eq!(cg.stats(&path).unwrap(), None);
        drop(guard);
    }
}
