//! Mounts: the default set every container gets, the pod's files, then the CRI mounts.

use std::io;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;
use skiff_cri::api;

use super::{HostInfo, PodFiles, SpecError};

/// The mounts of a container and the rootfs propagation they need.
#[derive(Debug)]
pub(crate) struct MountPlan {
    /// Sorted so a parent comes before its children.
    pub mounts: Vec<Mount>,
    /// `rshared` or `rslave` when a CRI mount propagates from or to the host.
    pub rootfs_propagation: Option<String>,
}

fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

fn bind(dest: &str, source: &Path, propagation: &str, readonly: bool) -> Mount {
    let rw = if readonly { "ro" } else { "rw" };
    mount(dest, "bind", source, &["rbind", propagation, rw])
}

/// The default mounts (containerd's), `/dev/shm` and the pod's hostname, hosts and
/// resolv.conf files.
///
/// `/sys` and `/sys/fs/cgroup` are read-only unless privileged. The cgroup mount has
/// type `cgroup` on v1 and v2 alike: runc and crun mount cgroup2 for it on a unified host.
fn default_mounts(files: &PodFiles<'_>, privileged: bool, readonly_rootfs: bool) -> Vec<Mount> {
    let sys_rw = if privileged { "rw" } else { "ro" };
    let mut out = vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        match files.shm {
            Some(shm) => bind("/dev/shm", shm, "rprivate", false),
            None => mount(
                "/dev/shm",
                "tmpfs",
                Path::new("shm"),
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
        },
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", sys_rw],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", sys_rw],
        ),
    ];
    for (dest, src) in [
        ("/etc/hostname", files.hostname),
        ("/etc/hosts", files.hosts),
        ("/etc/resolv.conf", files.resolv_conf),
    ] {
        if let Some(src) = src {
            out.push(bind(dest, src, "rprivate", readonly_rootfs));
        }
    }
    out
}

/// `path` made lexically clean (`//`, `.`, `..` and a trailing `/` folded), for comparing
/// destinations.
pub(crate) fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn depth(m: &Mount) -> usize {
    m.destination()
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

/// One CRI mount as an OCI bind mount; the second value is its propagation.
fn cri_mount(m: &api::Mount, host: &HostInfo) -> Result<(Mount, &'static str), SpecError> {
    let invalid = |reason| SpecError::InvalidMount {
        container_path: m.container_path.clone(),
        reason,
    };
    if m.container_path.is_empty() {
        return Err(invalid("the container path is empty"));
    }
    if !m.container_path.starts_with('/') {
        return Err(invalid("the container path must be absolute"));
    }
    if m.host_path.is_empty() {
        return Err(invalid("the host path is empty"));
    }
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        // The runtime mounts image volumes and passes their directories as host paths.
        return Err(invalid(
            "an image volume reached the spec without being mounted",
        ));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        // The runtime makes idmapped mounts and passes them as host paths.
        return Err(invalid(
            "an idmapped mount reached the spec without being made",
        ));
    }
    let propagation = match api::MountPropagation::try_from(m.propagation) {
        Ok(api::MountPropagation::PropagationPrivate) => "rprivate",
        Ok(api::MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(api::MountPropagation::PropagationBidirectional) => "rshared",
        Err(_) => return Err(invalid("unknown mount propagation")),
    };
    if m.recursive_read_only {
        if !m.readonly {
            return Err(invalid(
                "a recursive read-only mount must also be read-only",
            ));
        }
        if propagation != "rprivate" {
            return Err(invalid(
                "a recursive read-only mount must have private propagation",
            ));
        }
        if !host.rro_supported {
            return Err(invalid(
                "recursive read-only mounts are not supported by this host's OCI runtime",
            ));
        }
    }
    let source = std::fs::canonicalize(&m.host_path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SpecError::MountSourceNotFound {
            host_path: PathBuf::from(&m.host_path),
            container_path: m.container_path.clone(),
        },
        _ => SpecError::Io {
            op: "resolve mount source",
            path: PathBuf::from(&m.host_path),
            source: e,
        },
    })?;
    let mut options = vec!["rbind", propagation, if m.readonly { "ro" } else { "rw" }];
    if m.recursive_read_only {
        options.push("rro");
    }
    Ok((
        mount(&clean(&m.container_path), "bind", &source, &options),
        propagation,
    ))
}

/// All mounts of the container: defaults, pod files, then CRI mounts, a CRI mount
/// replacing a default one at the same destination. `selinux_relabel` is ignored.
pub(crate) fn mounts(
    cri: &[api::Mount],
    files: &PodFiles<'_>,
    privileged: bool,
    readonly_rootfs: bool,
    host: &HostInfo,
) -> Result<MountPlan, SpecError> {
    let mut user = Vec::with_capacity(cri.len());
    let mut rootfs_propagation = None;
    for m in cri {
        let (mount, propagation) = cri_mount(m, host)?;
        match propagation {
            "rshared" => rootfs_propagation = Some("rshared".to_string()),
            "rslave" if rootfs_propagation.is_none() => {
                rootfs_propagation = Some("rslave".to_string());
            }
            _ => {}
        }
        user.push(mount);
    }
    let mut all: Vec<Mount> = default_mounts(files, privileged, readonly_rootfs)
        .into_iter()
        .filter(|d| !user.iter().any(|u| u.destination() == d.destination()))
        .collect();
    all.extend(user);
    all.sort_by_key(depth);
    Ok(MountPlan {
        mounts: all,
        rootfs_propagation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testutil::host;

    fn find<'a>(plan: &'a MountPlan, dest: &str) -> &'a Mount {
        plan.mounts
            .iter()
            .find(|m| m.destination() == Path::new(dest))
            .unwrap_or_else(|| panic!("no mount at {dest}"))
    }

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    fn cri(host_path: &Path, container_path: &str) -> api::Mount {
        api::Mount {
            host_path: host_path.to_string_lossy().into_owned(),
            container_path: container_path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_for_an_unprivileged_container() {
        let plan = mounts(&[], &PodFiles::default(), false, false, &host()).unwrap();
        let dests: Vec<_> = plan
            .mounts
            .iter()
            .map(|m| m.destination().clone())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/sys",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys/fs/cgroup"
            ]
            .map(PathBuf::from)
        );
        assert!(opts(find(&plan, "/sys")).contains(&"ro".into()));
        assert!(opts(find(&plan, "/sys/fs/cgroup")).contains(&"ro".into()));
        let shm = find(&plan, "/dev/shm");
        assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
        assert!(opts(shm).contains(&"size=65536k".into()));
        assert!(opts(find(&plan, "/dev/pts")).contains(&"newinstance".into()));
        assert_eq!(plan.rootfs_propagation, None);
    }

    #[test]
    fn privileged_gets_writable_sysfs_and_cgroupfs() {
        let plan = mounts(&[], &PodFiles::default(), true, false, &host()).unwrap();
        assert!(opts(find(&plan, "/sys")).contains(&"rw".into()));
        assert!(opts(find(&plan, "/sys/fs/cgroup")).contains(&"rw".into()));
    }

    #[test]
    fn pod_files_and_shm_are_bind_mounted_read_only_with_a_readonly_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let (hn, hs, rc, shm) = (
            dir.path().join("hostname"),
            dir.path().join("hosts"),
            dir.path().join("resolv.conf"),
            dir.path().join("shm"),
        );
        let files = PodFiles {
            hostname: Some(&hn),
            hosts: Some(&hs),
            resolv_conf: Some(&rc),
            shm: Some(&shm),
        };
        let plan = mounts(&[], &files, false, false, &host()).unwrap();
        let m = find(&plan, "/etc/hosts");
        assert_eq!(m.typ().as_deref(), Some("bind"));
        assert_eq!(m.source().as_deref(), Some(hs.as_path()));
        assert_eq!(opts(m), ["rbind", "rprivate", "rw"]);
        assert_eq!(
            find(&plan, "/dev/shm").source().as_deref(),
            Some(shm.as_path())
        );
        let plan = mounts(&[], &files, false, true, &host()).unwrap();
        assert_eq!(
            opts(find(&plan, "/etc/resolv.conf")),
            ["rbind", "rprivate", "ro"]
        );
        assert_eq!(
            opts(find(&plan, "/etc/hostname")),
            ["rbind", "rprivate", "ro"]
        );
        assert_eq!(opts(find(&plan, "/dev/shm")), ["rbind", "rprivate", "rw"]);
    }

    #[test]
    fn cri_mounts_options_and_propagation() {
        let dir = tempfile::tempdir().unwrap();
        let mut ro = cri(dir.path(), "/data/ro");
        ro.readonly = true;
        let mut slave = cri(dir.path(), "/data/slave");
        slave.propagation = api::MountPropagation::PropagationHostToContainer as i32;
        let plan = mounts(
            &[ro.clone(), slave],
            &PodFiles::default(),
            false,
            false,
            &host(),
        )
        .unwrap();
        assert_eq!(opts(find(&plan, "/data/ro")), ["rbind", "rprivate", "ro"]);
        assert_eq!(opts(find(&plan, "/data/slave")), ["rbind", "rslave", "rw"]);
        assert_eq!(plan.rootfs_propagation.as_deref(), Some("rslave"));
        let mut shared = cri(dir.path(), "/data/shared");
        shared.propagation = api::MountPropagation::PropagationBidirectional as i32;
        let plan = mounts(&[shared, ro], &PodFiles::default(), false, false, &host()).unwrap();
        assert_eq!(
            opts(find(&plan, "/data/shared")),
            ["rbind", "rshared", "rw"]
        );
        assert_eq!(plan.rootfs_propagation.as_deref(), Some("rshared"));
    }

    #[test]
    fn cri_mount_sources_are_resolved_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let plan = mounts(
            &[cri(&link, "/data")],
            &PodFiles::default(),
            false,
            false,
            &host(),
        )
        .unwrap();
        let want = std::fs::canonicalize(&real).unwrap();
        assert_eq!(
            find(&plan, "/data").source().as_deref(),
            Some(want.as_path())
        );
        let missing = dir.path().join("missing");
        let err = mounts(
            &[cri(&missing, "/data")],
            &PodFiles::default(),
            false,
            false,
            &host(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, SpecError::MountSourceNotFound { host_path, .. } if *host_path == missing)
        );
        assert!(err.to_string().contains("missing"));
    }

    #[test]
    fn cri_mounts_replace_defaults_and_sort_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "").unwrap();
        let files = PodFiles {
            hosts: Some(&hosts),
            ..Default::default()
        };
        let kubelet_hosts = dir.path().join("kubelet-hosts");
        std::fs::write(&kubelet_hosts, "").unwrap();
        let plan = mounts(
            &[
                cri(dir.path(), "/a/b/c"),
                cri(&kubelet_hosts, "/etc//hosts/"),
                cri(dir.path(), "/a"),
            ],
            &files,
            false,
            false,
            &host(),
        )
        .unwrap();
        let hosts_mounts: Vec<_> = plan
            .mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts_mounts.len(), 1);
        let want = std::fs::canonicalize(&kubelet_hosts).unwrap();
        assert_eq!(hosts_mounts[0].source().as_deref(), Some(want.as_path()));
        let pos = |d: &str| {
            plan.mounts
                .iter()
                .position(|m| m.destination() == Path::new(d))
                .unwrap()
        };
        assert!(pos("/a") < pos("/a/b/c"));
        assert!(pos("/dev") < pos("/dev/shm"));
        let depths: Vec<_> = plan.mounts.iter().map(depth).collect();
        assert!(depths.windows(2).all(|w| w[0] <= w[1]), "{depths:?}");
    }

    #[test]
    fn recursive_read_only_needs_host_support() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = cri(dir.path(), "/data");
        m.readonly = true;
        m.recursive_read_only = true;
        let err = mounts(&[m.clone()], &PodFiles::default(), false, false, &host()).unwrap_err();
        assert!(matches!(err, SpecError::InvalidMount { .. }));
        let mut h = host();
        h.rro_supported = true;
        let plan = mounts(&[m.clone()], &PodFiles::default(), false, false, &h).unwrap();
        assert_eq!(
            opts(find(&plan, "/data")),
            ["rbind", "rprivate", "ro", "rro"]
        );
        m.readonly = false;
        assert!(mounts(&[m], &PodFiles::default(), false, false, &h).is_err());
    }

    #[test]
    fn relative_or_empty_container_paths_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["", "data"] {
            assert!(matches!(
                mounts(
                    &[cri(dir.path(), p)],
                    &PodFiles::default(),
                    false,
                    false,
                    &host()
                ),
                Err(SpecError::InvalidMount { .. })
            ));
        }
    }

    #[test]
    fn clean_folds_paths() {
        assert_eq!(clean("/etc//hosts/"), "/etc/hosts");
        assert_eq!(clean("/a/./b/../c"), "/a/c");
        assert_eq!(clean("/"), "/");
    }
}
