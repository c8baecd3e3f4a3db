//! OCI runtime spec generation: CRI container and pod configs plus the image config
//! become the `config.json` the OCI runtime (runc, crun) starts the container from.
//!
//! [`build`] is a pure function of its [`SpecInputs`] apart from reading the image's
//! `/etc/passwd` and `/etc/group` (inside the rootfs, never following links out of it),
//! stat-ing the host paths of CRI mounts and devices, and reading `Localhost` seccomp
//! profiles. It follows containerd's CRI plugin (`container_create_linux.go`,
//! `pkg/cri/opts/spec_linux.go`) unless a comment says otherwise.

mod caps;
mod error;
mod host;
mod linux;
mod mounts;
mod process;
mod seccomp;
mod user;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Linux, Process, Root, Spec, User};
use skiff_cri::api;

pub use caps::DEFAULT_CAPS;
pub use error::SpecError;
pub use host::HostInfo;
pub use linux::{DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, linux_resources};
pub use process::DEFAULT_PATH;
pub use seccomp::{RUNTIME_DEFAULT_JSON, runtime_default_profile};
pub use user::{ResolvedUser, resolve_user};

/// The OCI runtime spec version skiff writes (what runc 1.1 and crun accept).
pub const OCI_VERSION: &str = "1.0.2-dev";

/// Annotation keys containerd sets on every container spec; skiff sets the same.
pub mod annotations {
    /// `"container"` for an application container (`"sandbox"` is the pause container).
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    /// The CRI container name.
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    /// The pod sandbox id.
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    /// The pod name.
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    /// The pod namespace.
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    /// The pod uid.
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    /// The image name the container was created from.
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

/// Host files the pod provides to each of its containers; `None` leaves the file out.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodFiles<'a> {
    /// Bind-mounted at `/etc/hostname`.
    pub hostname: Option<&'a Path>,
    /// Bind-mounted at `/etc/hosts` (a CRI mount at the same place wins).
    pub hosts: Option<&'a Path>,
    /// Bind-mounted at `/etc/resolv.conf`.
    pub resolv_conf: Option<&'a Path>,
    /// The pod's `/dev/shm` (its tmpfs, or the host's with host IPC); `None` gives the
    /// container a private 64 MiB tmpfs.
    pub shm: Option<&'a Path>,
}

/// How the container gets its pid namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNs {
    /// Join the pod's: the namespace file, e.g. `/proc/<pause pid>/ns/pid` (also used for
    /// the CRI `TARGET` mode, with the target container's file).
    Pod(PathBuf),
    /// A new pid namespace of the container's own.
    Container,
    /// The host's.
    Host,
}

/// The pod's namespaces a container joins; `None` means the host's namespace.
#[derive(Debug, Clone)]
pub struct PodNamespaces<'a> {
    /// The network namespace file (a bind-mounted ns file or `/proc/<pid>/ns/net`).
    pub net: Option<&'a Path>,
    /// The IPC namespace file.
    pub ipc: Option<&'a Path>,
    /// The UTS namespace file; when set, the spec also carries the pod hostname.
    pub uts: Option<&'a Path>,
    /// The pid namespace.
    pub pid: PidNs,
    /// The pod's user namespace file and its mappings, if it has its own.
    pub user: Option<(&'a Path, crate::sys::UsernsMaps)>,
}

/// Everything a container's OCI spec is made from.
#[derive(Debug, Clone)]
pub struct SpecInputs<'a> {
    /// The container id.
    pub container_id: &'a str,
    /// The pod sandbox id.
    pub pod_id: &'a str,
    /// The pod's CRI config.
    pub pod: &'a api::PodSandboxConfig,
    /// The container's CRI config.
    pub container: &'a api::ContainerConfig,
    /// The image's config JSON.
    pub image: &'a oci_spec::image::ImageConfiguration,
    /// The image name for the `image-name` annotation; empty uses the CRI image spec's.
    pub image_name: &'a str,
    /// The container's mounted root filesystem (absolute).
    pub rootfs: &'a Path,
    /// Files the pod provides.
    pub files: PodFiles<'a>,
    /// Namespaces the container joins.
    pub namespaces: PodNamespaces<'a>,
    /// The container's cgroup, e.g. `/kubepods/pod123/<container id>` (cgroupfs driver).
    pub cgroups_path: String,
    /// What the host allows.
    pub host: &'a HostInfo,
}

/// Builds the OCI runtime spec of a container.
///
/// Fails with an `InvalidArgument` [`SpecError`] for a config that cannot be honoured,
/// `NotFound` for a user, mount source, device or seccomp profile that does not exist.
pub fn build(inputs: &SpecInputs<'_>) -> Result<Spec, SpecError> {
    let ctr = inputs.container;
    let linux_cfg = ctr.linux.as_ref();
    let sc = linux_cfg.and_then(|l| l.security_context.as_ref());
    let resources = linux_cfg.and_then(|l| l.resources.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);
    let image_cfg = inputs.image.config().as_ref();
    let host = inputs.host;

    // Process.
    let args = process::args(ctr, image_cfg)?;
    let image_user = image_cfg
        .and_then(|c| c.user().as_deref())
        .unwrap_or_default();
    let resolved = resolve_user(inputs.rootfs, sc, image_user)?;
    let mut user = User::default();
    user.set_uid(resolved.uid)
        .set_gid(resolved.gid)
        .set_additional_gids(Some(resolved.additional_gids.clone()));
    let host_caps = caps::host_caps(&host.bounding_caps);
    let cri_caps = sc.and_then(|s| s.capabilities.as_ref());
    let cap_set = caps::capability_set(cri_caps, privileged, &host_caps)?;
    let oom = process::oom_score_adj(
        resources.map_or(0, |r| r.oom_score_adj),
        host.min_oom_score_adj,
    );
    let mut proc = Process::default();
    proc.set_terminal(Some(ctr.tty))
        .set_console_size(None)
        .set_user(user)
        .set_args(Some(args))
        .set_env(Some(process::env(ctr, image_cfg, &inputs.pod.hostname)))
        .set_cwd(PathBuf::from(process::cwd(ctr, image_cfg)))
        .set_capabilities(Some(caps::linux_capabilities(&cap_set, cri_caps)?))
        .set_rlimits(None)
        .set_no_new_privileges(Some(sc.is_some_and(|s| s.no_new_privs)))
        .set_apparmor_profile(None)
        .set_selinux_label(None)
        .set_oom_score_adj(Some(oom));

    // Root and mounts.
    let mut root = Root::default();
    root.set_path(inputs.rootfs.to_path_buf())
        .set_readonly(Some(readonly_rootfs));
    let plan = mounts::mounts(
        &ctr.mounts,
        &inputs.files,
        privileged,
        readonly_rootfs,
        host,
    )?;

    // Linux.
    let mut res = match resources {
        Some(r) => {
            linux::check_resources(r)?;
            linux_resources(r, host.cgroup_v2)
        }
        None => Default::default(),
    };
    if host.swap_controller
        && let Some(mem) = res.memory_mut()
        && mem.swap().is_none()
        && let Some(limit) = mem.limit()
    {
        mem.set_swap(Some(limit));
    }
    let (device_nodes, device_rules) = linux::devices(&ctr.devices, privileged)?;
    res.set_devices(Some(device_rules));
    let (masked, readonly) = linux::masked_and_readonly_paths(sc, privileged);
    let mut linux = Linux::default();
    let id_map = |m: crate::sys::IdMap| {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(m.container_id)
            .host_id(m.host_id)
            .size(m.length)
            .build()
            .map(|m| vec![m])
            .ok()
    };
    linux
        .set_uid_mappings(inputs.namespaces.user.and_then(|(_, m)| id_map(m.uids)))
        .set_gid_mappings(inputs.namespaces.user.and_then(|(_, m)| id_map(m.gids)))
        .set_sysctl(None)
        .set_resources(Some(res))
        .set_cgroups_path(Some(PathBuf::from(&inputs.cgroups_path)))
        .set_namespaces(Some(linux::namespaces(&inputs.namespaces, host.cgroup_v2)))
        .set_devices(Some(device_nodes))
        .set_seccomp(seccomp::seccomp(sc, privileged, &cap_set)?)
        .set_rootfs_propagation(plan.rootfs_propagation)
        .set_masked_paths(Some(masked))
        .set_readonly_paths(Some(readonly))
        .set_mount_label(None);

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string())
        .set_root(Some(root))
        .set_mounts(Some(plan.mounts))
        .set_process(Some(proc))
        .set_hostname(
            (inputs.namespaces.uts.is_some() && !inputs.pod.hostname.is_empty())
                .then(|| inputs.pod.hostname.clone()),
        )
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(Some(spec_annotations(inputs)))
        .set_linux(Some(linux));
    Ok(spec)
}

fn spec_annotations(inputs: &SpecInputs<'_>) -> HashMap<String, String> {
    let pod_meta = inputs.pod.metadata.clone().unwrap_or_default();
    let image_name = if inputs.image_name.is_empty() {
        inputs
            .container
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default()
    } else {
        inputs.image_name.to_string()
    };
    [
        (annotations::CONTAINER_TYPE, "container".to_string()),
        (
            annotations::CONTAINER_NAME,
            process::container_name(inputs.container),
        ),
        (annotations::SANDBOX_ID, inputs.pod_id.to_string()),
        (annotations::SANDBOX_NAME, pod_meta.name),
        (annotations::SANDBOX_NAMESPACE, pod_meta.namespace),
        (annotations::SANDBOX_UID, pod_meta.uid),
        (annotations::IMAGE_NAME, image_name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Where a container's log goes: `log_path` joined under `log_directory`.
///
/// A leading `/` in `log_path` stays inside the directory; a `..` component in either
/// is refused, as is a relative `log_directory`. Either empty → `None` (output is
/// discarded, as the CRI says).
pub fn resolve_log_path(log_directory: &str, log_path: &str) -> Result<Option<PathBuf>, SpecError> {
    if log_directory.is_empty() || log_path.is_empty() {
        return Ok(None);
    }
    let has_parent = |p: &str| Path::new(p).components().any(|c| c == Component::ParentDir);
    if has_parent(log_directory) {
        return Err(SpecError::InvalidLogPath {
            path: log_directory.to_string(),
            reason: "the log directory must not contain ..",
        });
    }
    if !log_directory.starts_with('/') {
        return Err(SpecError::InvalidLogPath {
            path: log_directory.to_string(),
            reason: "the log directory must be absolute",
        });
    }
    if has_parent(log_path) {
        return Err(SpecError::InvalidLogPath {
            path: log_path.to_string(),
            reason: "the log path must not contain ..",
        });
    }
    let mut out = PathBuf::from(log_directory);
    for c in Path::new(log_path).components() {
        if let Component::Normal(part) = c {
            out.push(part);
        }
    }
    if out == Path::new(log_directory) {
        return Err(SpecError::InvalidLogPath {
            path: log_path.to_string(),
            reason: "the log path names no file",
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A rootfs with the given `/etc/passwd` and `/etc/group` contents.
    pub fn rootfs_with(passwd: &str, group: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), group).unwrap();
        dir
    }

    /// An empty security context.
    pub fn sc() -> api::LinuxContainerSecurityContext {
        api::LinuxContainerSecurityContext::default()
    }

    /// A host like this machine: cgroup v1, no `CAP_SYS_RESOURCE`, oom floor 0.
    pub fn host() -> HostInfo {
        HostInfo {
            bounding_caps: host::caps_from_mask(0x0000_01ff_feff_ffff),
            min_oom_score_adj: 0,
            cgroup_v2: false,
            rro_supported: false,
            swap_controller: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use oci_spec::runtime::{Capability, LinuxNamespaceType};

    struct Fixture {
        rootfs: tempfile::TempDir,
        pod: api::PodSandboxConfig,
        ctr: api::ContainerConfig,
        image: oci_spec::image::ImageConfiguration,
        host: HostInfo,
        net: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let image: oci_spec::image::ImageConfiguration = serde_json::from_str(
                r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
                   "config":{"User":"app","Env":["PATH=/app/bin","LANG=C"],
                             "Entrypoint":["/app/run"],"Cmd":["--serve"],"WorkingDir":"/app"}}"#,
            )
            .unwrap();
            Fixture {
                rootfs: rootfs_with(
                    "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n",
                    "app:x:1000:\n",
                ),
                pod: api::PodSandboxConfig {
                    metadata: Some(api::PodSandboxMetadata {
                        name: "web-0".into(),
                        uid: "uid-1".into(),
                        namespace: "default".into(),
                        attempt: 0,
                    }),
                    hostname: "web-0".into(),
                    ..Default::default()
                },
                ctr: api::ContainerConfig {
                    metadata: Some(api::ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    image: Some(api::ImageSpec {
                        image: "docker.io/library/app:1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                image,
                host: host(),
                net: PathBuf::from("/run/skiff/netns/pod1"),
            }
        }

        fn sc(&mut self) -> &mut api::LinuxContainerSecurityContext {
            self.ctr
                .linux
                .get_or_insert_with(Default::default)
                .security_context
                .get_or_insert_with(Default::default)
        }

        fn build(&self) -> Result<Spec, SpecError> {
            build(&SpecInputs {
                container_id: "c1",
                pod_id: "p1",
                pod: &self.pod,
                container: &self.ctr,
                image: &self.image,
                image_name: "",
                rootfs: self.rootfs.path(),
                files: PodFiles::default(),
                namespaces: PodNamespaces {
                    net: Some(&self.net),
                    ipc: None,
                    uts: None,
                    pid: PidNs::Container,
                    user: None,
                },
                cgroups_path: "/kubepods/pod1/c1".into(),
                host: &self.host,
            })
        }
    }

    #[test]
    fn full_spec_from_image_defaults() {
        let f = Fixture::new();
        let spec = f.build().unwrap();
        assert_eq!(spec.version(), OCI_VERSION);
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/app/run", "--serve"]);
        assert_eq!(p.cwd(), Path::new("/app"));
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["PATH=/app/bin", "LANG=C", "HOSTNAME=web-0"]
        );
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[1000]);
        assert_eq!(p.terminal(), Some(false));
        assert_eq!(p.no_new_privileges(), Some(false));
        assert_eq!(p.oom_score_adj(), Some(0));
        assert!(p.rlimits().is_none());
        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), DEFAULT_CAPS.len());
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), f.rootfs.path());
        assert_eq!(root.readonly(), Some(false));
        assert_eq!(
            spec.hostname(),
            &None,
            "no UTS namespace of the pod: host UTS"
        );
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/kubepods/pod1/c1"))
        );
        assert!(
            linux.sysctl().is_none(),
            "pod sysctls are not container spec business"
        );
        assert!(linux.seccomp().is_none());
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert_eq!(
            ns,
            [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Network
            ]
        );
        let a = spec.annotations().as_ref().unwrap();
        assert_eq!(a[annotations::CONTAINER_TYPE], "container");
        assert_eq!(a[annotations::CONTAINER_NAME], "app");
        assert_eq!(a[annotations::SANDBOX_ID], "p1");
        assert_eq!(a[annotations::SANDBOX_NAME], "web-0");
        assert_eq!(a[annotations::SANDBOX_NAMESPACE], "default");
        assert_eq!(a[annotations::IMAGE_NAME], "docker.io/library/app:1");
        // What runc reads must round-trip through JSON.
        let json = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn security_context_flags_reach_the_spec() {
        let mut f = Fixture::new();
        f.ctr.tty = true;
        let sc = f.sc();
        sc.no_new_privs = true;
        sc.readonly_rootfs = true;
        sc.run_as_user = Some(api::Int64Value { value: 0 });
        sc.seccomp = Some(api::SecurityProfile::default());
        f.ctr.linux.as_mut().unwrap().resources = Some(api::LinuxContainerResources {
            oom_score_adj: -997,
            memory_limit_in_bytes: 1 << 20,
            ..Default::default()
        });
        f.host.swap_controller = true;
        let spec = f.build().unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.oom_score_adj(), Some(0), "clamped to the host floor");
        assert_eq!(p.user().uid(), 0);
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some());
        let mem = linux.resources().as_ref().unwrap().memory().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(1 << 20), Some(1 << 20)));
    }

    #[test]
    fn privileged_gets_everything_the_host_has() {
        let mut f = Fixture::new();
        let sc = f.sc();
        sc.privileged = true;
        sc.seccomp = Some(api::SecurityProfile::default());
        let spec = f.build().unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap();
        assert!(caps.contains(&Capability::SysAdmin));
        assert!(!caps.contains(&Capability::SysResource));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().as_ref().unwrap().is_empty());
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].to_string(), "a *:* rwm");
    }

    #[test]
    fn pod_uts_namespace_carries_the_hostname() {
        let f = Fixture::new();
        let uts = PathBuf::from("/run/skiff/utsns/pod1");
        let spec = build(&SpecInputs {
            container_id: "c1",
            pod_id: "p1",
            pod: &f.pod,
            container: &f.ctr,
            image: &f.image,
            image_name: "app:1",
            rootfs: f.rootfs.path(),
            files: PodFiles::default(),
            namespaces: PodNamespaces {
                net: None,
                ipc: None,
                uts: Some(&uts),
                pid: PidNs::Host,
                user: None,
            },
            cgroups_path: "/kubepods/pod1/c1".into(),
            host: &f.host,
        })
        .unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("web-0"));
        assert_eq!(
            spec.annotations().as_ref().unwrap()[annotations::IMAGE_NAME],
            "app:1"
        );
    }

    #[test]
    fn errors_classify_for_the_kubelet() {
        use skiff_cri::{Classify, ErrorKind};
        let mut f = Fixture::new();
        f.image = oci_spec::image::ImageConfiguration::default();
        let err = f.build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let mut f = Fixture::new();
        f.sc().run_as_group = Some(api::Int64Value { value: 1 });
        assert_eq!(f.build().unwrap_err().kind(), ErrorKind::InvalidArgument);
        let mut f = Fixture::new();
        f.sc().run_as_username = "nobody".into();
        assert_eq!(f.build().unwrap_err().kind(), ErrorKind::NotFound);
        let mut f = Fixture::new();
        f.ctr.mounts = vec![api::Mount {
            container_path: "/data".into(),
            host_path: "/nonexistent/skiff/test".into(),
            ..Default::default()
        }];
        assert_eq!(f.build().unwrap_err().kind(), ErrorKind::NotFound);
        let mut f = Fixture::new();
        f.sc().seccomp = Some(api::SecurityProfile {
            profile_type: api::security_profile::ProfileType::Localhost as i32,
            localhost_ref: "/nonexistent/skiff/profile.json".into(),
        });
        assert_eq!(f.build().unwrap_err().kind(), ErrorKind::NotFound);
        let io = SpecError::Io {
            op: "read",
            path: "/x".into(),
            source: std::io::Error::other("boom"),
        };
        assert_eq!(io.kind(), ErrorKind::Internal);
    }

    #[test]
    fn log_path_joins_inside_the_directory() {
        assert_eq!(
            resolve_log_path("/var/log/pods/p", "c/0.log").unwrap(),
            Some(PathBuf::from("/var/log/pods/p/c/0.log"))
        );
        assert_eq!(
            resolve_log_path("/var/log/pods/p", "/c/0.log").unwrap(),
            Some(PathBuf::from("/var/log/pods/p/c/0.log"))
        );
        assert_eq!(resolve_log_path("", "c/0.log").unwrap(), None);
        assert_eq!(resolve_log_path("/var/log/pods/p", "").unwrap(), None);
        for (dir, path) in [
            ("/var/log/pods/p", "../escape.log"),
            ("/var/log/pods/p", "c/../../x.log"),
            ("/var/log/../etc", "x.log"),
            ("relative", "x.log"),
            ("/var/log/pods/p", "/"),
        ] {
            assert!(
                matches!(
                    resolve_log_path(dir, path),
                    Err(SpecError::InvalidLogPath { .. })
                ),
                "{dir} {path}"
            );
        }
    }
}
