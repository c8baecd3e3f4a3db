//! The Linux section: namespaces, cgroup resources, devices, masked and read-only paths.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxHugepageLimit, LinuxMemory,
    LinuxNamespace, LinuxNamespaceType, LinuxResources,
};
use skiff_cri::api;

use super::{PidNs, PodNamespaces, SpecError};

/// Paths masked in an unprivileged container (containerd's defaults).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in an unprivileged container (containerd's defaults).
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Directories of `/dev` a device directory walk does not enter (containerd's list).
const SKIPPED_DEV_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

fn ns(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ).set_path(path.map(Path::to_path_buf));
    n
}

/// The namespaces: the pod's network, IPC and UTS (joined by path, or the host's when
/// `None`, i.e. left out), the pid namespace by [`PidNs`], a new mount namespace, and a
/// new cgroup namespace on cgroup v2.
pub(crate) fn namespaces(pod: &PodNamespaces<'_>, cgroup_v2: bool) -> Vec<LinuxNamespace> {
    let mut out = Vec::new();
    // Joined first by the runtime, so it owns the namespaces made after it.
    if let Some((path, _)) = pod.user {
        out.push(ns(LinuxNamespaceType::User, Some(path)));
    }
    match &pod.pid {
        PidNs::Pod(path) => out.push(ns(LinuxNamespaceType::Pid, Some(path))),
        PidNs::Container => out.push(ns(LinuxNamespaceType::Pid, None)),
        PidNs::Host => {}
    }
    for (typ, path) in [
        (LinuxNamespaceType::Ipc, pod.ipc),
        (LinuxNamespaceType::Uts, pod.uts),
    ] {
        if let Some(p) = path {
            out.push(ns(typ, Some(p)));
        }
    }
    out.push(ns(LinuxNamespaceType::Mount, None));
    if let Some(p) = pod.net {
        out.push(ns(LinuxNamespaceType::Network, Some(p)));
    }
    if cgroup_v2 {
        out.push(ns(LinuxNamespaceType::Cgroup, None));
    }
    out
}

/// Checks the CRI resource values that have no meaning when negative.
pub(crate) fn check_resources(r: &api::LinuxContainerResources) -> Result<(), SpecError> {
    for (field, value) in [("cpu_shares", r.cpu_shares), ("cpu_period", r.cpu_period)] {
        if value < 0 {
            return Err(SpecError::InvalidResource { field, value });
        }
    }
    for h in &r.hugepage_limits {
        if i64::try_from(h.limit).is_err() {
            return Err(SpecError::InvalidResource {
                field: "hugepage_limits.limit",
                value: i64::MAX,
            });
        }
    }
    Ok(())
}

/// The OCI cgroup resources of CRI container resources, as containerd maps them.
///
/// Zero means unset. Memory swap is the CRI `memory_swap_limit_in_bytes` when set
/// ([`super::build`] also defaults it to the memory limit when the host can limit swap).
/// `unified` is used only on cgroup v2. Devices are not set here. Values out of range
/// (negative shares or period) are left out; [`super::build`] rejects them first. Also
/// used as is by `UpdateContainerResources`.
pub fn linux_resources(r: &api::LinuxContainerResources, cgroup_v2: bool) -> LinuxResources {
    let mut out = LinuxResources::default();
    let mut cpu = LinuxCpu::default();
    let mut cpu_set = false;
    if let Ok(shares) = u64::try_from(r.cpu_shares)
        && shares != 0
    {
        cpu.set_shares(Some(shares));
        cpu_set = true;
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
        cpu_set = true;
    }
    if let Ok(period) = u64::try_from(r.cpu_period)
        && period != 0
    {
        cpu.set_period(Some(period));
        cpu_set = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
        cpu_set = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
        cpu_set = true;
    }
    if cpu_set {
        out.set_cpu(Some(cpu));
    }
    if r.memory_limit_in_bytes != 0 || r.memory_swap_limit_in_bytes != 0 {
        let mut mem = LinuxMemory::default();
        if r.memory_limit_in_bytes != 0 {
            mem.set_limit(Some(r.memory_limit_in_bytes));
        }
        if r.memory_swap_limit_in_bytes != 0 {
            mem.set_swap(Some(r.memory_swap_limit_in_bytes));
        }
        out.set_memory(Some(mem));
    }
    let hugepages: Vec<LinuxHugepageLimit> = r
        .hugepage_limits
        .iter()
        .filter_map(|h| {
            let limit = i64::try_from(h.limit).ok()?;
            let mut l = LinuxHugepageLimit::default();
            l.set_page_size(h.page_size.clone()).set_limit(limit);
            Some(l)
        })
        .collect();
    if !hugepages.is_empty() {
        out.set_hugepage_limits(Some(hugepages));
    }
    if cgroup_v2 && !r.unified.is_empty() {
        out.set_unified(Some(
            r.unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        ));
    }
    out
}

fn rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow)
        .set_typ(Some(typ))
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_string()));
    r
}

fn char_dev(path: &str, major: i64, minor: i64) -> LinuxDevice {
    let mut d = LinuxDevice::default();
    d.set_path(PathBuf::from(path))
        .set_typ(LinuxDeviceType::C)
        .set_major(major)
        .set_minor(minor)
        .set_file_mode(Some(0o666))
        .set_uid(Some(0))
        .set_gid(Some(0));
    d
}

/// The device nodes and the device cgroup rules of the container.
///
/// Unprivileged: deny everything, then allow the default nodes (null, zero, full, random,
/// urandom, tty, console, ptmx, pts, tun) and `mknod` of any node, then the CRI devices.
/// Privileged: allow every device (`a *:* rwm`); the host's device nodes are not copied.
pub(crate) fn devices(
    cri: &[api::Device],
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    use LinuxDeviceType::{A, B, C};
    let mut nodes = vec![
        char_dev("/dev/null", 1, 3),
        char_dev("/dev/zero", 1, 5),
        char_dev("/dev/full", 1, 7),
        char_dev("/dev/random", 1, 8),
        char_dev("/dev/urandom", 1, 9),
        char_dev("/dev/tty", 5, 0),
    ];
    let mut rules = if privileged {
        vec![rule(true, A, None, None, "rwm")]
    } else {
        let mut r = vec![
            rule(false, A, None, None, "rwm"),
            rule(true, C, None, None, "m"),
            rule(true, B, None, None, "m"),
        ];
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
            (10, 200),
        ] {
            r.push(rule(true, C, Some(major), Some(minor), "rwm"));
        }
        r.push(rule(true, C, Some(136), None, "rwm"));
        r
    };
    for d in cri {
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(SpecError::InvalidDevice {
                host_path: PathBuf::from(&d.host_path),
                reason: format!("permissions {access:?} must be made of r, w and m"),
            });
        }
        if !d.container_path.starts_with('/') {
            return Err(SpecError::InvalidDevice {
                host_path: PathBuf::from(&d.host_path),
                reason: format!("container path {:?} must be absolute", d.container_path),
            });
        }
        for dev in host_devices(d)? {
            if !privileged {
                rules.push(rule(
                    true,
                    dev.typ(),
                    Some(dev.major()),
                    Some(dev.minor()),
                    access,
                ));
            }
            nodes.retain(|n| n.path() != dev.path());
            nodes.push(dev);
        }
    }
    Ok((nodes, rules))
}

/// The device node(s) a CRI device names: the node itself, or every node under a
/// directory (symlinks inside it are skipped).
fn host_devices(d: &api::Device) -> Result<Vec<LinuxDevice>, SpecError> {
    let host = PathBuf::from(&d.host_path);
    let meta = std::fs::metadata(&host).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SpecError::DeviceNotFound {
            host_path: host.clone(),
            container_path: d.container_path.clone(),
        },
        _ => SpecError::Io {
            op: "stat device",
            path: host.clone(),
            source: e,
        },
    })?;
    if meta.is_dir() {
        let mut out = Vec::new();
        walk_devices(&host, Path::new(&d.container_path), &mut out)?;
        return Ok(out);
    }
    device_of(&meta, Path::new(&d.container_path))
        .ok_or_else(|| SpecError::InvalidDevice {
            host_path: host,
            reason: "not a character or block device".into(),
        })
        .map(|d| vec![d])
}

fn walk_devices(
    dir: &Path,
    container_dir: &Path,
    out: &mut Vec<LinuxDevice>,
) -> Result<(), SpecError> {
    let entries = std::fs::read_dir(dir).map_err(SpecError::io("read device directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(SpecError::io("read device directory", dir))?;
        let name = entry.file_name();
        let meta = entry
            .metadata()
            .map_err(SpecError::io("stat device", entry.path()))?;
        let target = container_dir.join(&name);
        if meta.is_dir() {
            if SKIPPED_DEV_DIRS.iter().any(|s| name == *s) {
                continue;
            }
            walk_devices(&entry.path(), &target, out)?;
        } else if let Some(dev) = device_of(&meta, &target) {
            out.push(dev);
        }
    }
    Ok(())
}

fn device_of(meta: &std::fs::Metadata, container_path: &Path) -> Option<LinuxDevice> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let mut d = LinuxDevice::default();
    d.set_path(container_path.to_path_buf())
        .set_typ(typ)
        .set_major(i64::from(rustix::fs::major(rdev)))
        .set_minor(i64::from(rustix::fs::minor(rdev)))
        .set_file_mode(Some(meta.mode() & 0o777))
        .set_uid(Some(meta.uid()))
        .set_gid(Some(meta.gid()));
    Some(d)
}

/// Masked and read-only paths: none when privileged, else the CRI lists when non-empty,
/// else containerd's defaults.
pub(crate) fn masked_and_readonly_paths(
    sc: Option<&api::LinuxContainerSecurityContext>,
    privileged: bool,
) -> (Vec<String>, Vec<String>) {
    if privileged {
        return (Vec::new(), Vec::new());
    }
    let pick = |cri: Option<&Vec<String>>, default: &[&str]| match cri {
        Some(v) if !v.is_empty() => v.clone(),
        _ => default.iter().map(|s| s.to_string()).collect(),
    };
    (
        pick(sc.map(|s| &s.masked_paths), &DEFAULT_MASKED_PATHS),
        pick(sc.map(|s| &s.readonly_paths), &DEFAULT_READONLY_PATHS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(v: &[LinuxNamespace]) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        v.iter().map(|n| (n.typ(), n.path().clone())).collect()
    }

    #[test]
    fn namespaces_join_the_pod_and_leave_host_ones_out() {
        let (net, ipc, uts) = (
            PathBuf::from("/run/skiff/ns/net"),
            PathBuf::from("/run/skiff/ns/ipc"),
            PathBuf::from("/run/skiff/ns/uts"),
        );
        let pod = PodNamespaces {
            net: Some(&net),
            ipc: Some(&ipc),
            uts: Some(&uts),
            pid: PidNs::Pod(PathBuf::from("/proc/42/ns/pid")),
            user: None,
        };
        assert_eq!(
            types(&namespaces(&pod, false)),
            [
                (
                    LinuxNamespaceType::Pid,
                    Some(PathBuf::from("/proc/42/ns/pid"))
                ),
                (LinuxNamespaceType::Ipc, Some(ipc.clone())),
                (LinuxNamespaceType::Uts, Some(uts.clone())),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Network, Some(net.clone())),
            ]
        );
        let host = PodNamespaces {
            net: None,
            ipc: None,
            uts: None,
            pid: PidNs::Host,
            user: None,
        };
        assert_eq!(
            types(&namespaces(&host, false)),
            [(LinuxNamespaceType::Mount, None)]
        );
        let own_pid = PodNamespaces {
            pid: PidNs::Container,
            user: None,
            ..host
        };
        assert_eq!(
            types(&namespaces(&own_pid, true)),
            [
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Cgroup, None),
            ]
        );
    }

    #[test]
    fn resources_map_cpu_memory_hugepages() {
        let r = api::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            memory_limit_in_bytes: 1 << 30,
            memory_swap_limit_in_bytes: 2 << 30,
            hugepage_limits: vec![api::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "max".to_string())].into(),
            ..Default::default()
        };
        let out = linux_resources(&r, false);
        let cpu = out.cpu().clone().unwrap();
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
        assert_eq!(cpu.mems().as_deref(), Some("0"));
        let mem = out.memory().unwrap();
        assert_eq!(mem.limit(), Some(1 << 30));
        assert_eq!(mem.swap(), Some(2 << 30));
        let hp = out.hugepage_limits().clone().unwrap();
        assert_eq!(
            (hp[0].page_size().as_str(), hp[0].limit()),
            ("2MB", 4 << 20)
        );
        assert!(out.unified().is_none(), "unified is for cgroup v2 only");
        let v2 = linux_resources(&r, true);
        assert_eq!(v2.unified().as_ref().unwrap()["memory.high"], "max");
    }

    #[test]
    fn empty_resources_set_nothing_and_negative_values_are_refused() {
        let out = linux_resources(&api::LinuxContainerResources::default(), true);
        assert!(out.cpu().is_none() && out.memory().is_none() && out.unified().is_none());
        let bad = api::LinuxContainerResources {
            cpu_shares: -2,
            ..Default::default()
        };
        assert!(matches!(
            check_resources(&bad),
            Err(SpecError::InvalidResource {
                field: "cpu_shares",
                value: -2
            })
        ));
        assert!(linux_resources(&bad, false).cpu().is_none());
    }

    #[test]
    fn default_device_rules_deny_then_allow() {
        let (nodes, rules) = devices(&[], false).unwrap();
        assert_eq!(nodes.len(), 6);
        assert!(!rules[0].allow());
        assert_eq!(rules[0].typ(), Some(LinuxDeviceType::A));
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
        let allowed: Vec<String> = rules.iter().skip(1).map(|r| r.to_string()).collect();
        for want in [
            "c 1:3 rwm",
            "c 5:2 rwm",
            "c 136:* rwm",
            "c *:* m",
            "b *:* m",
        ] {
            assert!(allowed.contains(&want.to_string()), "{want} in {allowed:?}");
        }
        let (_, rules) = devices(&[], true).unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow());
        assert_eq!(rules[0].to_string(), "a *:* rwm");
    }

    #[test]
    fn cri_devices_are_statted_and_allowed() {
        let d = api::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        };
        let (nodes, rules) = devices(&[d], false).unwrap();
        let n = nodes
            .iter()
            .find(|n| n.path() == Path::new("/dev/mynull"))
            .unwrap();
        assert_eq!((n.typ(), n.major(), n.minor()), (LinuxDeviceType::C, 1, 3));
        assert_eq!(rules.last().unwrap().to_string(), "c 1:3 rw");
    }

    #[test]
    fn bad_cri_devices_are_refused() {
        let missing = api::Device {
            container_path: "/dev/x".into(),
            host_path: "/dev/does-not-exist-skiff".into(),
            permissions: "rwm".into(),
        };
        assert!(matches!(
            devices(&[missing], false),
            Err(SpecError::DeviceNotFound { .. })
        ));
        let file = tempfile::NamedTempFile::new().unwrap();
        let not_dev = api::Device {
            container_path: "/dev/x".into(),
            host_path: file.path().to_string_lossy().into_owned(),
            permissions: "rwm".into(),
        };
        assert!(matches!(
            devices(&[not_dev], false),
            Err(SpecError::InvalidDevice { .. })
        ));
        let bad_perm = api::Device {
            container_path: "/dev/x".into(),
            host_path: "/dev/null".into(),
            permissions: "rwx".into(),
        };
        assert!(matches!(
            devices(&[bad_perm], false),
            Err(SpecError::InvalidDevice { .. })
        ));
    }

    #[test]
    fn masked_paths_defaults_overrides_and_privileged() {
        let (m, r) = masked_and_readonly_paths(None, false);
        assert!(m.contains(&"/proc/kcore".to_string()));
        assert!(m.contains(&"/sys/devices/virtual/powercap".to_string()));
        assert!(r.contains(&"/proc/sysrq-trigger".to_string()));
        let sc = api::LinuxContainerSecurityContext {
            masked_paths: vec!["/proc/x".into()],
            ..Default::default()
        };
        let (m, r) = masked_and_readonly_paths(Some(&sc), false);
        assert_eq!(m, ["/proc/x"]);
        assert_eq!(r.len(), DEFAULT_READONLY_PATHS.len());
        let (m, r) = masked_and_readonly_paths(Some(&sc), true);
        assert!(m.is_empty() && r.is_empty());
    }
}
