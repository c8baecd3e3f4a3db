//! Host plumbing: commands, the tmpfs, daemon processes, `/proc` readings.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustix::process::{Pid, Signal, kill_process};

use crate::cleanup::Undo;

/// Runs `cmd` to completion and returns its stdout; a non-zero exit is an error
/// carrying stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first line `program args…` prints (stdout, else stderr), or why it could not run.
pub fn version_line(program: &str, args: &[&str]) -> String {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(e) => format!("unavailable ({program}: {e})"),
    }
}

/// Whether `program` is found on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A tmpfs mounted for the run: everything the daemons store lives here.
/// Unmounting is recursive, so mounts the daemons leave below it go too.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
    _undo: Undo,
}

impl Tmpfs {
    /// Creates `path` and mounts a tmpfs of `size` (e.g. `16g`) on it.
    pub fn mount(path: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("skiff-perf")
            .arg(path))?;
        let p = path.to_path_buf();
        let undo = Undo::register(format!("unmount {}", path.display()), move || {
            unmount_tree(&p);
        });
        Ok(Tmpfs {
            path: path.to_path_buf(),
            _undo: undo,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `umount -R path` (lazily if busy), then removes the mount point directory.
pub fn unmount_tree(path: &Path) {
    if let Err(e) = run(Command::new("umount").arg("-R").arg(path)) {
        eprintln!("skiff-perf: {e}; retrying lazily");
        if let Err(e) = run(Command::new("umount").args(["-R", "-l"]).arg(path)) {
            eprintln!("skiff-perf: {e}");
        }
    }
    if let Err(e) = std::fs::remove_dir(path) {
        eprintln!("skiff-perf: removing {}: {e}", path.display());
    }
}

/// A daemon process started by the harness in its own process group (a
/// terminal's Ctrl-C reaches only the harness, which stops it in order).
/// Stopped by PID with SIGTERM, then SIGKILL after `grace`; reaped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    pid: u32,
    child: Arc<Mutex<Child>>,
    log: PathBuf,
    _undo: Undo,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        grace: Duration,
    ) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let shown = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {shown}"))?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        let c = child.clone();
        let n = name.to_owned();
        let undo = Undo::register(format!("stop {name} (pid {pid})"), move || {
            stop(&n, &c, grace);
        });
        Ok(Daemon {
            name: name.to_owned(),
            pid,
            child,
            log: log.to_path_buf(),
            _undo: undo,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The daemon's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&self) -> Option<String> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// The last `bytes` of the daemon's log.
    pub fn log_tail(&self, bytes: u64) -> String {
        let read = || -> std::io::Result<String> {
            let mut f = File::open(&self.log)?;
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        read().unwrap_or_else(|e| format!("<reading {}: {e}>", self.log.display()))
    }
}

fn stop(name: &str, child: &Mutex<Child>, grace: Duration) {
    let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
    if let Some(pid) = pid
        && let Err(e) = kill_process(pid, Signal::TERM)
    {
        eprintln!("skiff-perf: SIGTERM to {name}: {e}");
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    eprintln!("skiff-perf: {name} ignored SIGTERM for {grace:?}: SIGKILL");
    // Child::kill signals this child's pid only.
    let _ = child.kill();
    let _ = child.wait();
}

/// CPU seconds (user + system, own and reaped children's) of `pid`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    // utime (field 14), stime, cutime, cstime (17).
    stat_seconds(pid, 14..=17)
}

/// CPU seconds (user + system) of `pid` itself, without its reaped children:
/// a shim's own work, not the containers and runc calls it waited for.
pub fn own_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    // utime (field 14) and stime (15).
    stat_seconds(pid, 14..=15)
}

/// The sum of the clock-tick fields `fields` (numbered as in proc(5), from 1)
/// of `/proc/<pid>/stat`, in seconds.
fn stat_seconds(pid: u32, fields: std::ops::RangeInclusive<usize>) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // After the parenthesised command (field 2) comes the state, field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let after: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks = 0u64;
    for field in fields {
        ticks += after
            .get(field - 3)
            .context("short /proc/<pid>/stat")?
            .parse::<u64>()
            .context("parsing /proc/<pid>/stat")?;
    }
    let hz = rustix::param::clock_ticks_per_second();
    Ok(ticks as f64 / hz as f64)
}

/// Whether `pid` still runs: it exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Bytes of regular files under `path`, skipping files whose name `skip`
/// accepts (metadata databases, sockets …). Missing paths count 0.
pub fn tree_bytes(path: &Path, skip: &dyn Fn(&str) -> bool) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            total += tree_bytes(&entry.path(), skip);
        } else if ft.is_file() && !skip(&entry.file_name().to_string_lossy()) {
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

/// One process in a `/proc` snapshot.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Its PID.
    pub pid: u32,
    /// Its parent's PID.
    pub ppid: u32,
    /// `argv`, from `/proc/<pid>/cmdline` (empty for kernel threads and zombies).
    pub argv: Vec<String>,
}

impl Proc {
    /// The file name of `argv[0]` (`containerd-shim-runc-v2`, `skiff-shim`).
    pub fn program(&self) -> &str {
        self.argv
            .first()
            .map_or("", |a| a.rsplit('/').next().unwrap_or(a))
    }

    /// Whether any argument contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.argv.iter().any(|a| a.contains(needle))
    }
}

/// Every process visible in `/proc` right now. Processes that exit while
/// the snapshot is taken are left out.
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Field 4 (ppid) is the second after the parenthesised command.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.push(Proc { pid, ppid, argv });
    }
    out
}

/// `roots` and all their descendants in `procs`, roots first.
pub fn with_descendants(procs: &[Proc], roots: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for p in procs {
            if p.ppid == parent && !out.contains(&p.pid) {
                out.push(p.pid);
            }
        }
        i += 1;
    }
    out
}

/// Resident and proportional set size of one process, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    /// `Rss`.
    pub rss_kib: u64,
    /// `Pss`: shared pages divided among the processes that map them.
    pub pss_kib: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss_kib: self.rss_kib + o.rss_kib,
            pss_kib: self.pss_kib + o.pss_kib,
        }
    }
}

impl std::iter::Sum for Mem {
    fn sum<I: Iterator<Item = Mem>>(iter: I) -> Mem {
        iter.fold(Mem::default(), |a, b| a + b)
    }
}

/// `Rss` and `Pss` from `/proc/<pid>/smaps_rollup`; `None` once the process is gone.
pub fn mem(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(name)?.strip_prefix(':')?;
            v.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(Mem {
        rss_kib: field("Rss")?,
        pss_kib: field("Pss")?,
    })
}

/// Mount points (in this mount namespace) at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let base = dir.to_string_lossy();
    let base = base.trim_end_matches('/');
    mount_points()
        .into_iter()
        .filter(|m| m == base || m.starts_with(&format!("{base}/")))
        .collect()
}

/// Every mount point in `/proc/self/mountinfo` (field 5), octal escapes kept.
pub fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// Sends SIGKILL to every process whose arguments mention `needle`, and to
/// all their descendants; never to this process. Returns what it killed.
pub fn kill_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let procs = processes();
    let roots: Vec<u32> = procs
        .iter()
        .filter(|p| p.pid != me && p.mentions(needle))
        .map(|p| p.pid)
        .collect();
    let mut killed = Vec::new();
    for pid in with_descendants(&procs, &roots) {
        if pid == me {
            continue;
        }
        if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw)
            && kill_process(p, Signal::KILL).is_ok()
        {
            let argv = procs
                .iter()
                .find(|q| q.pid == pid)
                .map(|q| q.argv.join(" "))
                .unwrap_or_default();
            killed.push((pid, argv));
        }
    }
    killed
}

/// Mount points of the cgroup (v1) and cgroup2 hierarchies.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            // Fields after " - " are: fs type, source, super options.
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Directories strictly below the cgroup `rel` (e.g. `/skiff-perf-1/skiff`)
/// in every hierarchy, as paths relative to `rel`, deduplicated.
pub fn cgroups_under(rel: &str) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let name = format!("{prefix}/{}", e.file_name().to_string_lossy());
                walk(&e.path(), &name, out);
                out.insert(name);
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    for h in cgroup_hierarchies() {
        walk(&h.join(rel.trim_start_matches('/')), "", &mut out);
    }
    out.into_iter().collect()
}

/// Removes the cgroup `rel` and everything below it, deepest first, in every
/// hierarchy; a cgroup that still holds a process stays. Returns the
/// directories that could not be removed.
pub fn remove_cgroup_tree(rel: &str) -> Vec<PathBuf> {
    fn rm(dir: &Path, failed: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rm(&e.path(), failed);
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            failed.push(dir.to_path_buf());
        }
    }
    let mut failed = Vec::new();
    for h in cgroup_hierarchies() {
        rm(&h.join(rel.trim_start_matches('/')), &mut failed);
    }
    failed
}

/// Removes `dir` and its subdirectories, deepest first, where they are
/// empty; anything holding a file stays.
pub fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
