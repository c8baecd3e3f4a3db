//! What the numbers were measured on: the machine and the software versions.

use std::path::Path;

use crate::sys::{on_path, version_line};

/// The machine and versions block of every report.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `nproc`.
    pub cpus: usize,
    /// CPU model from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// MemTotal, KiB.
    pub mem_kib: u64,
    /// `uname -r`.
    pub kernel: String,
    /// The cgroup layout and whether `favordynmods` is on (it changes start latency).
    pub cgroups: String,
    /// `containerd --version`.
    pub containerd: String,
    /// `runc --version` (first line).
    pub runc: String,
    /// `skiffd --version`.
    pub skiffd: String,
    /// `tar --version` (first line).
    pub tar: String,
    /// Which gzip decompressor containerd uses.
    pub containerd_gunzip: String,
}

impl Machine {
    /// Reads `/proc` and runs the `--version`s.
    pub fn describe(skiffd: &Path, containerd: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let uname = rustix::system::uname();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            mem_kib,
            kernel: uname.release().to_string_lossy().into_owned(),
            cgroups: cgroup_layout(),
            containerd: version_line(&containerd.to_string_lossy(), &["--version"]),
            runc: version_line("runc", &["--version"]),
            skiffd: version_line(&skiffd.to_string_lossy(), &["--version"]),
            tar: version_line("tar", &["--version"]),
            containerd_gunzip: if on_path("unpigz") {
                "unpigz (found on PATH)".into()
            } else {
                "Go compress/gzip (no unpigz on PATH)".into()
            },
        }
    }

    /// The machine alone (CPU, memory, kernel), for scenarios that run no daemon.
    pub fn host_markdown(&self) -> String {
        format!(
            "## Machine\n\n\
             - CPU: {cpus} × {model}\n\
             - memory: {mem:.1} GiB\n\
             - kernel: {kernel}\n\
             - cgroups: {cgroups}\n",
            cpus = self.cpus,
            model = self.cpu_model,
            mem = kib_to_gib(self.mem_kib),
            kernel = self.kernel,
            cgroups = self.cgroups,
        )
    }

    /// The markdown block.
    pub fn markdown(&self) -> String {
        format!(
            "{host}\
             - stores: both daemons' root and state on one tmpfs mounted for the run; registry \
               (Debian docker-registry, storage in page cache) and both daemons in one network \
               namespace, pulls over its loopback\n\n\
             ## Versions\n\n\
             - skiffd: {skiffd}\n\
             - containerd: {containerd} (gzip: {gunzip})\n\
             - runc: {runc}\n\
             - tar: {tar}\n",
            host = self.host_markdown(),
            skiffd = self.skiffd,
            containerd = self.containerd,
            gunzip = self.containerd_gunzip,
            runc = self.runc,
            tar = self.tar,
        )
    }
}

/// "v1 hybrid" / "v2" / "v1", and whether the cgroup2 mount has `favordynmods`
/// (README: node tuning), from `/proc/mounts`.
fn cgroup_layout() -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let (mut v1, mut v2, mut favor) = (false, false, false);
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.get(2) {
            Some(&"cgroup") => v1 = true,
            Some(&"cgroup2") => {
                v2 = true;
                favor |= f
                    .get(3)
                    .is_some_and(|o| o.split(',').any(|o| o == "favordynmods"));
            }
            _ => {}
        }
    }
    let layout = match (v1, v2) {
        (true, true) => "v1 hybrid",
        (true, false) => "v1",
        (false, true) => "v2",
        (false, false) => "none",
    };
    format!(
        "{layout}, favordynmods {}",
        if favor { "on" } else { "off" }
    )
}

fn kib_to_gib(kib: u64) -> f64 {
    kib as f64 / (1024.0 * 1024.0)
}
