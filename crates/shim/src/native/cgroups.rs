//! The cgroup hierarchies as mounted here, and joining a process's cgroups in all of
//! them. libcgroups' v1 manager handles the controllers it knows; runc also places a
//! container in the named hierarchies (`name=systemd`) and, on a hybrid host, in the
//! unified one (where the kernel keeps per-cgroup PSI). These helpers do the same for
//! the native handler's inits, and exec joins exactly the init's cgroups.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// One mounted hierarchy: where, and the set of names `/proc/<pid>/cgroup` gives it
/// (its controllers and `name=…`; empty for cgroup2).
struct Hierarchy {
    mount: PathBuf,
    names: BTreeSet<String>,
    v2: bool,
}

/// Every cgroup hierarchy mounted in our mount namespace (the first mount of each).
fn hierarchies() -> Result<Vec<Hierarchy>, String> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        let (Some(fstype), Some(_source), Some(opts)) = (r.next(), r.next(), r.next()) else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let (v2, names) = match fstype {
            "cgroup2" => (true, BTreeSet::new()),
            "cgroup" => (
                false,
                opts.split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent"))
                    .filter(|o| !o.contains('=') || o.starts_with("name="))
                    .filter(|o| {
                        !matches!(
                            *o,
                            "clone_children" | "noprefix" | "xattr" | "cpuset_v2_mode"
                        )
                    })
                    .map(str::to_string)
                    .collect(),
            ),
            _ => continue,
        };
        if out.iter().any(|h| h.v2 == v2 && h.names == names) {
            continue;
        }
        out.push(Hierarchy {
            mount: PathBuf::from(unescape(mount)),
            names,
            v2,
        });
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The `cgroup.procs` files of `pid`'s cgroups, one per hierarchy it is listed in.
fn procs_files_of(pid: i32) -> Result<Vec<PathBuf>, String> {
    let all = hierarchies()?;
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("read the cgroups of pid {pid}: {e}"))?;
    let mut files = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let names: BTreeSet<String> = ctrls
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        let v2 = ctrls.is_empty();
        if let Some(h) = all.iter().find(|h| h.v2 == v2 && h.names == names) {
            let rel = path.trim_start_matches('/');
            files.push(h.mount.join(rel).join("cgroup.procs"));
        }
    }
    Ok(files)
}

/// Move the calling process into every cgroup `pid` is in.
pub(super) fn join_cgroups_of(pid: i32) -> Result<(), String> {
    for file in procs_files_of(pid)? {
        fs::write(&file, b"0").map_err(|e| format!("join {}: {e}", file.display()))?;
    }
    Ok(())
}

/// Put `pid` into `cgroups_path` of the hierarchies libcgroups' v1 manager leaves alone
/// on a v1 or hybrid host: the named ones and the unified one (made if missing).
pub(super) fn join_other_hierarchies(pid: i32, cgroups_path: &Path) -> Result<(), String> {
    let all = hierarchies()?;
    if !all.iter().any(|h| !h.v2) {
        // Pure v2: libcgroups' v2 manager placed it already.
        return Ok(());
    }
    let rel = cgroups_path.strip_prefix("/").unwrap_or(cgroups_path);
    for h in all
        .iter()
        .filter(|h| h.v2 || h.names.iter().all(|n| n.starts_with("name=")))
    {
        let dir = h.mount.join(rel);
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("join {}: {e}", dir.display()))?;
    }
    Ok(())
}
