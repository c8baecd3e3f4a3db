//! The native handler: containers created, started, signalled, updated and deleted by
//! youki's `libcontainer` inside the shim's process tree, and exec'd processes started
//! by the shim's own code (`exec`), without executing an OCI runtime binary.
//!
//! Every operation runs in a short-lived fork of the shim (see `server::runtime`):
//! libcontainer changes its caller's state (its `oom_score_adj`, its dumpable flag, its
//! cgroup, its namespaces for exec) and the fork takes all of that with it when it
//! exits. The container's init is re-parented to the shim (a subreaper), as runc's is.
//! The state of each container lives in `<root>/<id>/` (libcontainer's layout).

mod cgroups;
mod exec;

use std::fs;
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{LinuxResources, Mount, MountBuilder, Spec};

pub use exec::ExecRequest;

/// The native handler over one state root.
pub struct Handler {
    root: PathBuf,
}

impl Handler {
    /// The handler keeping container state under `root`.
    pub fn new(root: &Path) -> Handler {
        Handler {
            root: root.to_path_buf(),
        }
    }

    /// The container `id` as recorded; a missing one "does not exist" (the words the
    /// shim and skiffd look for, as with runc).
    fn load(&self, id: &str) -> Result<Container, String> {
        let dir = self.root.join(id);
        if !dir.join("state.json").exists() {
            return Err(format!("container {id} does not exist"));
        }
        Container::load(dir).map_err(|e| format!("load container {id}: {e}"))
    }

    /// Create container `id` from `bundle`; its init waits for [`Handler::start`].
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console: Option<&Path>,
    ) -> Result<(), String> {
        fs::create_dir_all(&self.root)
            .map_err(|e| format!("create {}: {e}", self.root.display()))?;
        let bundle = &native_bundle(bundle).map_err(|e| format!("create container {id}: {e}"))?;
        ContainerBuilder::new(id.to_string(), SyscallType::default())
            .validate_id()
            .and_then(|b| b.with_root_path(&self.root))
            .and_then(|b| b.with_pid_file(Some(pid_file)))
            .map_err(|e| format!("create container {id}: {e}"))?
            .with_console_socket(console)
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| format!("create container {id}: {e}"))?;
        // Where runc would also put it: the named and the unified hierarchies.
        let container = self.load(id)?;
        let pid = container
            .pid()
            .ok_or_else(|| format!("create container {id}: no init pid"))?;
        let cgroup_path = container
            .spec()
            .map_err(|e| format!("container {id}: {e}"))?
            .cgroup_path;
        cgroups::join_other_hierarchies(pid.as_raw(), &cgroup_path)
            .map_err(|e| format!("create container {id}: {e}"))
    }

    /// Let the created init exec the container's process.
    pub fn start(&self, id: &str) -> Result<(), String> {
        self.load(id)?
            .start()
            .map_err(|e| format!("start container {id}: {e}"))
    }

    /// Send `signal` to every process of the container.
    pub fn kill_all(&self, id: &str, signal: i32) -> Result<(), String> {
        let sig = Signal::try_from(signal).map_err(|e| format!("signal {signal}: {e}"))?;
        self.load(id)?
            .kill(sig, true)
            .map_err(|e| format!("kill container {id}: {e}"))
    }

    /// Delete the container, killing what still runs in it.
    pub fn delete(&self, id: &str) -> Result<(), String> {
        self.load(id)?
            .delete(true)
            .map_err(|e| format!("delete container {id}: {e}"))
    }

    /// Apply the resources in the JSON file `resources` to the container's cgroup.
    pub fn update(&self, id: &str, resources: &Path) -> Result<(), String> {
        let container = self.load(id)?;
        let text = fs::read(resources).map_err(|e| format!("read {}: {e}", resources.display()))?;
        let res: LinuxResources = serde_json::from_slice(&text)
            .map_err(|e| format!("resources {}: {e}", resources.display()))?;
        let cgroup_path = container
            .spec()
            .map_err(|e| format!("container {id}: {e}"))?
            .cgroup_path;
        let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
            cgroup_path,
            systemd_cgroup: false,
            container_name: id.to_string(),
        })
        .map_err(|e| format!("container {id}: cgroups: {e}"))?;
        manager
            .apply(&ControllerOpt {
                resources: &res,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| format!("update container {id}: {e}"))
    }
}

/// The bundle to hand libcontainer: `bundle` itself, or `<bundle>/native/` with the
/// spec adapted where libcontainer 0.7 reads it differently from runc (then that is
/// the container's bundle; its root is made absolute). See docs/decisions.md:
/// - `noNewPrivileges: false` is dropped: libcontainer takes any value present for
///   "set", loads seccomp after dropping CAP_SYS_ADMIN and the kernel refuses it;
/// - `rootfsPropagation` `rshared`/`rslave`/`rprivate`/`runbindable` become the plain
///   names (libcontainer knows only those, and always applies them recursively);
/// - on a cgroup v1 host a `cgroup` mount becomes plain mounts ([`v1_cgroup_mounts`]).
fn native_bundle(bundle: &Path) -> Result<PathBuf, String> {
    let mut spec = Spec::load(bundle.join("config.json")).map_err(|e| format!("spec: {e}"))?;
    let mut changed = false;
    if let Some(mut process) = spec.process().clone()
        && process.no_new_privileges() == Some(false)
    {
        process.set_no_new_privileges(None);
        spec.set_process(Some(process));
        changed = true;
    }
    if let Some(mut linux) = spec.linux().clone()
        && let Some(p) = linux.rootfs_propagation().clone()
        && let Some(plain @ ("shared" | "slave" | "private" | "unbindable")) = p.strip_prefix('r')
    {
        linux.set_rootfs_propagation(Some(plain.to_string()));
        spec.set_linux(Some(linux));
        changed = true;
    }
    changed |= v1_cgroup_mounts(&mut spec)?;
    if !changed {
        return Ok(bundle.to_path_buf());
    }
    if let Some(root) = spec.root().clone()
        && root.path().is_relative()
    {
        let mut root = root;
        root.set_path(bundle.join(root.path()));
        spec.set_root(Some(root));
    }
    let dir = bundle.join("native");
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    spec.save(dir.join("config.json"))
        .map_err(|e| format!("write {}: {e}", dir.join("config.json").display()))?;
    Ok(dir)
}

/// On a cgroup v1 host, replace a `cgroup` mount with what runc builds for it, spelled
/// as plain mounts: a tmpfs with the container's own directory of each controller
/// hierarchy bind-mounted into it. libcontainer 0.7's own v1 code looks up the init's
/// pid as seen inside its PID namespace in the host's /proc, and so fails (or reads
/// another process) when the container joins the pod's PID namespace. Whether the
/// spec changed.
fn v1_cgroup_mounts(spec: &mut Spec) -> Result<bool, String> {
    use libcgroups::common::CgroupSetup;
    match libcgroups::common::get_cgroup_setup() {
        Ok(CgroupSetup::Unified) | Err(_) => return Ok(false),
        Ok(CgroupSetup::Legacy | CgroupSetup::Hybrid) => {}
    }
    let mounts = spec.mounts().clone().unwrap_or_default();
    let Some(at) = mounts
        .iter()
        .position(|m| m.typ().as_deref() == Some("cgroup"))
    else {
        return Ok(false);
    };
    let cgroup = &mounts[at];
    let ro = cgroup.options().iter().flatten().any(|o| o == "ro");
    let cgroups_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .ok_or("the spec has no cgroupsPath")?;
    let relative = cgroups_path.strip_prefix("/").unwrap_or(&cgroups_path);
    let mut points: Vec<PathBuf> = libcgroups::v1::util::list_supported_mount_points()
        .map_err(|e| format!("cgroup v1 mount points: {e}"))?
        .into_values()
        .collect();
    points.sort();
    points.dedup();
    let build = |b: MountBuilder| b.build().map_err(|e| format!("cgroup mount: {e}"));
    let mut replacement: Vec<Mount> = vec![build(
        MountBuilder::default()
            .destination(cgroup.destination())
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec![
                "nosuid".into(),
                "noexec".into(),
                "nodev".into(),
                "mode=755".into(),
            ]),
    )?];
    for point in points {
        let Some(name) = point.file_name() else {
            continue;
        };
        replacement.push(build(
            MountBuilder::default()
                .destination(cgroup.destination().join(name))
                .typ("bind")
                .source(point.join(relative))
                .options(vec![
                    "rbind".into(),
                    "nosuid".into(),
                    "noexec".into(),
                    "nodev".into(),
                    if ro { "ro".into() } else { "rw".into() },
                ]),
        )?);
    }
    let mut new_mounts = mounts[..at].to_vec();
    new_mounts.extend(replacement);
    new_mounts.extend_from_slice(&mounts[at + 1..]);
    spec.set_mounts(Some(new_mounts));
    Ok(true)
}
