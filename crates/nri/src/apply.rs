//! Applying an NRI plugin's container adjustment, or an update's resources, to an OCI
//! runtime spec; and describing a container to plugins from its spec.
//!
//! The semantics are those of containerd/nri's reference adjuster for OCI specs
//! (`pkg/runtime-tools/generate`, v0.12.1), with these choices of skiff's:
//!
//! - **All or nothing.** An adjustment is applied to a copy of the spec, which replaces the
//!   original only once every part of it was accepted.
//! - **Refuse what this node cannot honour**, naming the plugin and the field, instead of
//!   passing it on for runc to trip over: block I/O and RDT classes (skiff configures
//!   none), CDI devices (skiff has no CDI registry), `unified` cgroup keys on a cgroup v1
//!   node, realtime CPU limits on a cgroup v2 node.
//! - **Refuse what is malformed**: unknown enum values and names (seccomp actions,
//!   architectures, operators, namespace and rlimit types), impossible numbers (negative
//!   sizes, a soft rlimit above its hard one), relative paths where OCI wants absolute ones.
//! - **Clamp the OOM score** to what the node lets a container have ([`Limits`]).
//!
//! Where NRI marks a removal, it prefixes the key with `-`: `-FOO` in `env` removes `FOO`,
//! `-/data` in `mounts` removes the mount at `/data`, and so on.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Arch, Hook, Hooks, IOPriorityClass, Linux, LinuxCpu, LinuxDevice, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxHugepageLimit, LinuxIOPriority, LinuxIOPriorityBuilder, LinuxIntelRdt,
    LinuxMemory, LinuxMemoryPolicy, LinuxNamespace, LinuxNamespaceType, LinuxNetDevice, LinuxPids,
    LinuxResources, LinuxSchedulerFlag, LinuxSchedulerPolicy, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompArgBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
    MemoryPolicyFlagType, MemoryPolicyModeType, Mount, PosixRlimitBuilder, PosixRlimitType,
    Process, Scheduler, Spec,
};

use crate::api;

/// Parses one of oci-spec's enums from its name in OCI's JSON (`SCMP_ACT_ERRNO`).
macro_rules! from_oci_name {
    ($ty:ty, $name:expr) => {
        serde_json::from_value::<$ty>(serde_json::Value::String(String::from($name))).ok()
    };
}

/// The name in OCI's JSON of a value of one of oci-spec's enums.
macro_rules! oci_name {
    ($value:expr) => {
        match serde_json::to_value($value) {
            Ok(serde_json::Value::String(name)) => name,
            _ => String::new(),
        }
    };
}

/// What the host lets a container have, so that an adjustment is clamped or refused
/// rather than passed to runc blindly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The lowest `oom_score_adj` a plugin may give a container; lower requests are
    /// raised to it (0 on a node that refuses negative scores).
    pub min_oom_score_adj: i64,
    /// Whether the node runs the unified cgroup v2 hierarchy (else cgroup v1).
    pub cgroup_v2: bool,
}

/// What applying an adjustment changed that the runtime must record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The container's new cgroups path, when the plugin moved it.
    pub cgroups_path: Option<String>,
    /// Requests that were honoured only in part (a clamped OOM score), for the log.
    pub clamped: Vec<String>,
}

/// Why an adjustment or update was not applied. Nothing of it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    /// The plugin that asked (`NN-name`).
    pub plugin: String,
    /// The part of the request at fault, in NRI's field names (`linux.resources.cpu.cpus`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
    /// Whether the request was malformed or this node cannot honour it.
    pub kind: ApplyErrorKind,
}

/// The two ways a plugin's request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyErrorKind {
    /// Malformed or impossible (an unknown enum value, a negative size): `InvalidArgument`.
    Invalid,
    /// Well-formed, but not something this node provides (a block I/O class, a CDI
    /// device): `FailedPrecondition`.
    Unsupported,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NRI plugin {}: {}: {}",
            self.plugin, self.field, self.reason
        )
    }
}

impl std::error::Error for ApplyError {}

impl From<ApplyError> for String {
    fn from(e: ApplyError) -> String {
        e.to_string()
    }
}

/// Applies one plugin's adjustment (`plugin` is `NN-name`, for messages) to `spec`.
///
/// Either all of it is applied or, on error, none of it: `spec` is then unchanged.
pub fn apply(
    spec: &mut Spec,
    plugin: &str,
    adj: &api::ContainerAdjustment,
    limits: &Limits,
) -> Result<Applied, ApplyError> {
    let mut cx = Cx {
        plugin,
        limits,
        applied: Applied::default(),
    };
    let mut work = spec.clone();
    cx.adjust(&mut work, adj)?;
    *spec = work;
    Ok(cx.applied)
}

/// Applies the resources of an update (`UpdateContainer`'s reply or a plugin's
/// `ContainerUpdate`) onto a container's OCI resources, all or nothing.
pub fn apply_resources(
    res: &mut LinuxResources,
    plugin: &str,
    adj: &api::LinuxResources,
    limits: &Limits,
) -> Result<(), ApplyError> {
    let cx = Cx {
        plugin,
        limits,
        applied: Applied::default(),
    };
    let mut work = res.clone();
    cx.adjust_resources("resources", &mut work, adj)?;
    *res = work;
    Ok(())
}

/// The fields of an NRI `Container` that come from its OCI spec. The runtime fills in the
/// rest (id, pod, name, state, labels, times, pid) itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerParts {
    /// `process.args`.
    pub args: Vec<String>,
    /// `process.env`, as `NAME=value`.
    pub env: Vec<String>,
    /// The spec's annotations.
    pub annotations: HashMap<String, String>,
    /// The spec's mounts, in order.
    pub mounts: Vec<api::Mount>,
    /// The spec's OCI hooks.
    pub hooks: Option<api::Hooks>,
    /// Namespaces, devices, resources, OOM score, cgroups path, I/O priority, seccomp
    /// policy, sysctls, network devices, scheduler and RDT.
    pub linux: Option<api::LinuxContainer>,
    /// `process.rlimits`.
    pub rlimits: Vec<api::PosixRlimit>,
    /// `process.user`.
    pub user: Option<api::User>,
}

impl ContainerParts {
    /// Moves these fields into `container`.
    pub fn fill(self, container: &mut api::Container) {
        container.args = self.args;
        container.env = self.env;
        container.annotations = self.annotations;
        container.mounts = self.mounts;
        container.hooks = self.hooks;
        container.linux = self.linux;
        container.rlimits = self.rlimits;
        container.user = self.user;
    }
}

/// Describes a container to plugins from its OCI spec (OCI → NRI).
pub fn container_from_spec(spec: &Spec) -> ContainerParts {
    let process = spec.process().as_ref();
    let linux = spec.linux().as_ref();
    let linux_part = if linux.is_some()
        || process.is_some_and(|p| {
            p.oom_score_adj().is_some() || p.io_priority().is_some() || p.scheduler().is_some()
        }) {
        Some(linux_to_nri(linux, process))
    } else {
        None
    };
    ContainerParts {
        args: process.and_then(|p| p.args().clone()).unwrap_or_default(),
        env: process.and_then(|p| p.env().clone()).unwrap_or_default(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        mounts: spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| api::Mount {
                destination: path_string(m.destination()),
                r#type: m.typ().clone().unwrap_or_default(),
                source: m.source().as_deref().map(path_string).unwrap_or_default(),
                options: m.options().clone().unwrap_or_default(),
            })
            .collect(),
        hooks: spec.hooks().as_ref().map(hooks_to_nri),
        linux: linux_part,
        rlimits: process
            .and_then(|p| p.rlimits().as_ref())
            .into_iter()
            .flatten()
            .map(|r| api::PosixRlimit {
                r#type: oci_name!(r.typ()),
                hard: r.hard(),
                soft: r.soft(),
            })
            .collect(),
        user: process.map(|p| api::User {
            uid: p.user().uid(),
            gid: p.user().gid(),
            additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
        }),
    }
}

/// Describes OCI resources to plugins (OCI → NRI). Block I/O and RDT classes have no
/// OCI counterpart and stay unset.
pub fn resources_to_nri(res: &LinuxResources) -> api::LinuxResources {
    let memory = res.memory().map(|m| api::LinuxMemory {
        limit: m.limit().map(int64),
        reservation: m.reservation().map(int64),
        swap: m.swap().map(int64),
        kernel: m.kernel().map(int64),
        kernel_tcp: m.kernel_tcp().map(int64),
        swappiness: m.swappiness().map(uint64),
        disable_oom_killer: m.disable_oom_killer().map(boolean),
        use_hierarchy: m.use_hierarchy().map(boolean),
    });
    let cpu = res.cpu().as_ref().map(|c| api::LinuxCpu {
        shares: c.shares().map(uint64),
        quota: c.quota().map(int64),
        period: c.period().map(uint64),
        realtime_runtime: c.realtime_runtime().map(int64),
        realtime_period: c.realtime_period().map(uint64),
        cpus: c.cpus().clone().unwrap_or_default(),
        mems: c.mems().clone().unwrap_or_default(),
    });
    api::LinuxResources {
        memory,
        cpu,
        hugepage_limits: res
            .hugepage_limits()
            .iter()
            .flatten()
            .map(|h| api::HugepageLimit {
                page_size: h.page_size().clone(),
                // A negative limit is no limit a kernel would take; show it as none.
                limit: u64::try_from(h.limit()).unwrap_or(0),
            })
            .collect(),
        blockio_class: None,
        rdt_class: None,
        unified: res.unified().clone().unwrap_or_default(),
        devices: res
            .devices()
            .iter()
            .flatten()
            .map(|d| api::LinuxDeviceCgroup {
                allow: d.allow(),
                r#type: d.typ().map(|t| t.as_str().to_owned()).unwrap_or_default(),
                major: d.major().map(int64),
                minor: d.minor().map(int64),
                access: d.access().clone().unwrap_or_default(),
            })
            .collect(),
        pids: res.pids().map(|p| api::LinuxPids { limit: p.limit() }),
    }
}

/// The state of one `apply` or `apply_resources` call.
struct Cx<'a> {
    plugin: &'a str,
    limits: &'a Limits,
    applied: Applied,
}

impl Cx<'_> {
    fn error(&self, kind: ApplyErrorKind, field: &str, reason: String) -> ApplyError {
        ApplyError {
            plugin: self.plugin.to_owned(),
            field: field.to_owned(),
            reason,
            kind,
        }
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> ApplyError {
        self.error(ApplyErrorKind::Invalid, field, reason.into())
    }

    fn unsupported(&self, field: &str, reason: impl Into<String>) -> ApplyError {
        self.error(ApplyErrorKind::Unsupported, field, reason.into())
    }

    fn adjust(
        &mut self,
        spec: &mut Spec,
        adj: &api::ContainerAdjustment,
    ) -> Result<(), ApplyError> {
        if let Some(d) = adj.cdi_devices.first() {
            return Err(self.unsupported(
                "CDI_devices",
                format!(
                    "CDI device {:?} cannot be injected: skiff has no CDI registry",
                    d.name
                ),
            ));
        }
        self.adjust_map(
            "annotations",
            spec.annotations_mut(),
            &adj.annotations,
            |_, v| Ok(v.clone()),
        )?;
        if !adj.env.is_empty() {
            let process = self.process(spec, "env")?;
            self.adjust_env(process.env_mut().get_or_insert_with(Vec::new), &adj.env)?;
        }
        self.adjust_args(spec, &adj.args)?;
        if let Some(hooks) = &adj.hooks {
            self.adjust_hooks(spec, hooks)?;
        }
        if let Some(la) = &adj.linux {
            self.adjust_linux(spec, la)?;
        }
        self.adjust_mounts(spec, &adj.mounts)?;
        if !adj.rlimits.is_empty() {
            let process = self.process(spec, "rlimits")?;
            self.adjust_rlimits(process, &adj.rlimits)?;
        }
        Ok(())
    }

    fn adjust_linux(
        &mut self,
        spec: &mut Spec,
        la: &api::LinuxContainerAdjustment,
    ) -> Result<(), ApplyError> {
        if let Some(oom) = &la.oom_score_adj {
            let lo = self.limits.min_oom_score_adj.clamp(-1000, 1000);
            let score = oom.value.clamp(lo, 1000);
            if score != oom.value {
                self.applied.clamped.push(format!(
                    "linux.oom_score_adj {} clamped to {score}",
                    oom.value
                ));
            }
            let score = i32::try_from(score)
                .map_err(|_| self.invalid("linux.oom_score_adj", "out of range"))?;
            self.process(spec, "linux.oom_score_adj")?
                .set_oom_score_adj(Some(score));
        }
        if let Some(prio) = &la.io_priority {
            let io = self.io_priority(prio)?;
            self.process(spec, "linux.io_priority")?.set_io_priority(io);
        }
        if let Some(sch) = &la.scheduler {
            let sch = self.scheduler(sch)?;
            self.process(spec, "linux.scheduler")?.set_scheduler(sch);
        }

        let touches_linux = !la.devices.is_empty()
            || !la.cgroups_path.is_empty()
            || la.seccomp_policy.is_some()
            || !la.namespaces.is_empty()
            || !la.sysctl.is_empty()
            || !la.net_devices.is_empty()
            || la.memory_policy.is_some()
            || la.resources.is_some()
            || la.rdt.is_some();
        if !touches_linux {
            return Ok(());
        }
        let linux = spec.linux_mut().get_or_insert_with(empty_linux);
        self.adjust_devices(linux, &la.devices)?;
        if !la.cgroups_path.is_empty() {
            let path = &la.cgroups_path;
            if path.contains('\0') || path.split(['/', ':']).any(|c| c == "..") {
                return Err(self.invalid(
                    "linux.cgroups_path",
                    format!("{path:?} is not a cgroups path"),
                ));
            }
            linux.set_cgroups_path(Some(PathBuf::from(path)));
            self.applied.cgroups_path = Some(path.clone());
        }
        if let Some(policy) = &la.seccomp_policy {
            linux.set_seccomp(Some(self.seccomp(policy)?));
        }
        self.adjust_namespaces(linux, &la.namespaces)?;
        self.adjust_map("linux.sysctl", linux.sysctl_mut(), &la.sysctl, |_, v| {
            Ok(v.clone())
        })?;
        self.adjust_map(
            "linux.net_devices",
            linux.net_devices_mut(),
            &la.net_devices,
            |_, d| {
                let mut dev = LinuxNetDevice::default();
                dev.set_name(non_empty(&d.name));
                Ok(dev)
            },
        )?;
        if let Some(mp) = &la.memory_policy {
            linux.set_memory_policy(Some(self.memory_policy(mp)?));
        }
        if let Some(res) = &la.resources {
            let target = linux
                .resources_mut()
                .get_or_insert_with(LinuxResources::default);
            self.adjust_resources("linux.resources", target, res)?;
        }
        if let Some(rdt) = &la.rdt {
            self.adjust_rdt(linux, rdt)?;
        }
        Ok(())
    }

    /// The spec's process: adjusting one that a spec lacks would have to invent it.
    fn process<'s>(&self, spec: &'s mut Spec, field: &str) -> Result<&'s mut Process, ApplyError> {
        spec.process_mut()
            .as_mut()
            .ok_or_else(|| self.invalid(field, "the container's spec has no process to adjust"))
    }

    /// Applies a keyed adjustment: removals (`-key`) first, then additions and
    /// replacements, so that a key both removed and set ends up set.
    fn adjust_map<A, V>(
        &self,
        field: &str,
        target: &mut Option<HashMap<String, V>>,
        adj: &HashMap<String, A>,
        convert: impl Fn(&str, &A) -> Result<V, ApplyError>,
    ) -> Result<(), ApplyError> {
        if adj.is_empty() {
            return Ok(());
        }
        let target = target.get_or_insert_with(HashMap::new);
        let mut keys: Vec<&String> = adj.keys().collect();
        keys.sort();
        for key in &keys {
            let (name, remove) = split_marker(key);
            if name.is_empty() {
                return Err(self.invalid(field, format!("key {key:?} is empty")));
            }
            if remove {
                target.remove(name);
            }
        }
        for key in keys {
            if !key.starts_with('-') {
                let value = convert(key, &adj[key])?;
                target.insert(key.clone(), value);
            }
        }
        Ok(())
    }

    fn adjust_env(&self, env: &mut Vec<String>, adj: &[api::KeyValue]) -> Result<(), ApplyError> {
        for kv in adj {
            let (name, remove) = split_marker(&kv.key);
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(self.invalid(
                    "env",
                    format!("{:?} is not an environment variable name", kv.key),
                ));
            }
            let named = |e: &String| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == name;
            if remove {
                env.retain(|e| !named(e));
                continue;
            }
            let entry = format!("{name}={}", kv.value);
            match env.iter().position(named) {
                Some(first) => {
                    // Replace in place; any later duplicate would shadow the new value.
                    env[first] = entry;
                    let mut i = 0;
                    env.retain(|e| {
                        i += 1;
                        i <= first + 1 || !named(e)
                    });
                }
                None => env.push(entry),
            }
        }
        Ok(())
    }

    fn adjust_args(&self, spec: &mut Spec, args: &[String]) -> Result<(), ApplyError> {
        // A leading empty argument is NRI's marker for "replace whatever another plugin set".
        let args = match args.split_first() {
            Some((first, rest)) if first.is_empty() => rest,
            _ => args,
        };
        if args.is_empty() {
            return Ok(());
        }
        if args[0].is_empty() {
            return Err(self.invalid("args", "the command (first argument) is empty"));
        }
        self.process(spec, "args")?.set_args(Some(args.to_vec()));
        Ok(())
    }

    fn adjust_hooks(&self, spec: &mut Spec, hooks: &api::Hooks) -> Result<(), ApplyError> {
        let convert = |field: &str, list: &[api::Hook]| {
            list.iter()
                .map(|h| self.hook(field, h))
                .collect::<Result<Vec<_>, _>>()
        };
        let prestart = convert("hooks.prestart", &hooks.prestart)?;
        let create_runtime = convert("hooks.create_runtime", &hooks.create_runtime)?;
        let create_container = convert("hooks.create_container", &hooks.create_container)?;
        let start_container = convert("hooks.start_container", &hooks.start_container)?;
        let poststart = convert("hooks.poststart", &hooks.poststart)?;
        let poststop = convert("hooks.poststop", &hooks.poststop)?;
        let lists = [
            &prestart,
            &create_runtime,
            &create_container,
            &start_container,
        ];
        if lists.iter().all(|l| l.is_empty()) && poststart.is_empty() && poststop.is_empty() {
            return Ok(());
        }

        let append = |slot: &mut Option<Vec<Hook>>, hooks: Vec<Hook>| {
            if !hooks.is_empty() {
                slot.get_or_insert_with(Vec::new).extend(hooks);
            }
        };
        let target = spec.hooks_mut().get_or_insert_with(Hooks::default);
        append(target.prestart_mut(), prestart);
        append(target.create_runtime_mut(), create_runtime);
        append(target.create_container_mut(), create_container);
        append(target.start_container_mut(), start_container);
        append(target.poststart_mut(), poststart);
        append(target.poststop_mut(), poststop);
        Ok(())
    }

    fn hook(&self, field: &str, h: &api::Hook) -> Result<Hook, ApplyError> {
        if !h.path.starts_with('/') {
            return Err(self.invalid(field, format!("hook path {:?} is not absolute", h.path)));
        }
        let timeout = match &h.timeout {
            Some(t) if t.value <= 0 => {
                return Err(self.invalid(
                    field,
                    format!("hook {:?} timeout {} is not positive", h.path, t.value),
                ));
            }
            t => t.as_ref().map(|t| t.value),
        };
        let mut hook = Hook::default();
        hook.set_path(PathBuf::from(&h.path))
            .set_args(non_empty_vec(h.args.clone()))
            .set_env(non_empty_vec(h.env.clone()))
            .set_timeout(timeout);
        Ok(hook)
    }

    fn adjust_mounts(&self, spec: &mut Spec, mounts: &[api::Mount]) -> Result<(), ApplyError> {
        if mounts.is_empty() {
            return Ok(());
        }
        let mut propagation: Option<&str> = None;
        let list = spec.mounts_mut().get_or_insert_with(Vec::new);
        for m in mounts {
            let (dest, remove) = split_marker(&m.destination);
            if !dest.starts_with('/') {
                return Err(self.invalid(
                    "mounts",
                    format!("destination {:?} is not an absolute path", m.destination),
                ));
            }
            let key = clean_path(Path::new(dest));
            list.retain(|x| clean_path(x.destination()) != key);
            if remove {
                continue;
            }
            for opt in &m.options {
                match opt.as_str() {
                    "rshared" => propagation = Some("rshared"),
                    "rslave" if propagation != Some("rshared") => propagation = Some("rslave"),
                    _ => {}
                }
            }
            let mut mount = Mount::default();
            mount
                .set_destination(PathBuf::from(dest))
                .set_typ(non_empty(&m.r#type))
                .set_source(non_empty(&m.source).map(PathBuf::from))
                .set_options(non_empty_vec(m.options.clone()));
            list.push(mount);
        }
        // Parents before what is mounted below them; otherwise keep the order given.
        list.sort_by_key(|m| clean_path(m.destination()).len());

        // A shared or slave mount needs the root's propagation to let events through.
        if let Some(wanted) = propagation {
            let linux = spec.linux_mut().get_or_insert_with(empty_linux);
            let current = linux.rootfs_propagation().as_deref();
            let keep = wanted == "rslave" && matches!(current, Some("rshared" | "rslave"));
            if !keep {
                linux.set_rootfs_propagation(Some(wanted.to_owned()));
            }
        }
        Ok(())
    }

    fn adjust_rlimits(
        &self,
        process: &mut Process,
        rlimits: &[api::PosixRlimit],
    ) -> Result<(), ApplyError> {
        let mut list = process.rlimits().clone().unwrap_or_default();
        for r in rlimits {
            let typ = from_oci_name!(PosixRlimitType, &r.r#type).ok_or_else(|| {
                self.invalid("rlimits", format!("unknown rlimit type {:?}", r.r#type))
            })?;
            if r.soft > r.hard {
                return Err(self.invalid(
                    "rlimits",
                    format!(
                        "{} soft limit {} is above its hard limit {}",
                        r.r#type, r.soft, r.hard
                    ),
                ));
            }
            let limit = PosixRlimitBuilder::default()
                .typ(typ)
                .hard(r.hard)
                .soft(r.soft)
                .build()
                .map_err(|e| self.invalid("rlimits", e.to_string()))?;
            match list.iter_mut().find(|l| l.typ() == typ) {
                Some(existing) => *existing = limit,
                None => list.push(limit),
            }
        }
        process.set_rlimits(Some(list));
        Ok(())
    }

    fn adjust_devices(
        &self,
        linux: &mut Linux,
        devices: &[api::LinuxDevice],
    ) -> Result<(), ApplyError> {
        for d in devices {
            let (path, remove) = split_marker(&d.path);
            let field = format!("linux.devices[{path}]");
            if !path.starts_with('/') {
                return Err(self.invalid(&field, "device path is not absolute"));
            }
            remove_device(linux, Path::new(path));
            if remove {
                continue;
            }
            let typ = match d.r#type.as_str() {
                "c" => LinuxDeviceType::C,
                "b" => LinuxDeviceType::B,
                "u" => LinuxDeviceType::U,
                "p" => LinuxDeviceType::P,
                other => {
                    return Err(self.invalid(
                        &field,
                        format!("device type {other:?} is not one of c, b, u, p"),
                    ));
                }
            };
            if typ != LinuxDeviceType::P && (d.major < 0 || d.minor < 0) {
                return Err(self.invalid(
                    &field,
                    format!("device number {}:{} is negative", d.major, d.minor),
                ));
            }
            let mut dev = LinuxDevice::default();
            dev.set_path(PathBuf::from(path))
                .set_typ(typ)
                .set_major(d.major)
                .set_minor(d.minor)
                // Permission bits only: a Go os.FileMode may carry its own type bits.
                .set_file_mode(d.file_mode.as_ref().map(|m| m.value & 0o7777))
                .set_uid(d.uid.as_ref().map(|v| v.value))
                .set_gid(d.gid.as_ref().map(|v| v.value));
            linux.devices_mut().get_or_insert_with(Vec::new).push(dev);

            // Let the container use the node; FIFOs are not the device controller's business.
            let rule_type = match typ {
                LinuxDeviceType::B => LinuxDeviceType::B,
                LinuxDeviceType::P => continue,
                _ => LinuxDeviceType::C,
            };
            let access = if rule_type == LinuxDeviceType::B {
                "rwm"
            } else {
                "rw"
            };
            let mut rule = LinuxDeviceCgroup::default();
            rule.set_allow(true)
                .set_typ(Some(rule_type))
                .set_major(Some(d.major))
                .set_minor(Some(d.minor))
                .set_access(Some(access.to_owned()));
            linux
                .resources_mut()
                .get_or_insert_with(LinuxResources::default)
                .devices_mut()
                .get_or_insert_with(Vec::new)
                .push(rule);
        }
        Ok(())
    }

    fn adjust_namespaces(
        &self,
        linux: &mut Linux,
        namespaces: &[api::LinuxNamespace],
    ) -> Result<(), ApplyError> {
        for ns in namespaces {
            let (name, remove) = split_marker(&ns.r#type);
            let typ = LinuxNamespaceType::try_from(name).map_err(|_| {
                self.invalid(
                    "linux.namespaces",
                    format!("unknown namespace type {:?}", ns.r#type),
                )
            })?;
            let list = linux.namespaces_mut().get_or_insert_with(Vec::new);
            if remove {
                list.retain(|n| n.typ() != typ);
                continue;
            }
            if !ns.path.is_empty() && !ns.path.starts_with('/') {
                return Err(self.invalid(
                    "linux.namespaces",
                    format!("{name} namespace path {:?} is not absolute", ns.path),
                ));
            }
            let path = non_empty(&ns.path).map(PathBuf::from);
            match list.iter_mut().find(|n| n.typ() == typ) {
                Some(existing) => {
                    existing.set_path(path);
                }
                None => {
                    let mut n = LinuxNamespace::default();
                    n.set_typ(typ).set_path(path);
                    list.push(n);
                }
            }
        }
        Ok(())
    }

    fn adjust_rdt(&self, linux: &mut Linux, rdt: &api::LinuxRdt) -> Result<(), ApplyError> {
        if rdt.remove {
            linux.set_intel_rdt(None);
        }
        if rdt.clos_id.is_none() && rdt.schemata.is_none() && rdt.enable_monitoring.is_none() {
            return Ok(());
        }
        let target = linux
            .intel_rdt_mut()
            .get_or_insert_with(LinuxIntelRdt::default);
        if let Some(clos) = &rdt.clos_id {
            let id = &clos.value;
            if id.contains('/') || id == "." || id == ".." {
                return Err(self.invalid(
                    "linux.rdt.clos_id",
                    format!("{id:?} is not a resctrl group name"),
                ));
            }
            target.set_clos_id(non_empty(id));
        }
        if let Some(schemata) = &rdt.schemata {
            target.set_schemata(Some(schemata.value.clone()));
        }
        if let Some(monitoring) = &rdt.enable_monitoring {
            target.set_enable_monitoring(Some(monitoring.value));
        }
        Ok(())
    }

    fn adjust_resources(
        &self,
        prefix: &str,
        res: &mut LinuxResources,
        adj: &api::LinuxResources,
    ) -> Result<(), ApplyError> {
        for (name, class, what) in [
            ("blockio_class", &adj.blockio_class, "blockio"),
            ("rdt_class", &adj.rdt_class, "RDT"),
        ] {
            // An empty class asks for none, which is what skiff gives every container.
            if let Some(class) = class.as_ref().filter(|c| !c.value.is_empty()) {
                return Err(self.unsupported(
                    &format!("{prefix}.{name}"),
                    format!(
                        "class {:?} cannot be applied: skiff has no {what} classes configured",
                        class.value
                    ),
                ));
            }
        }
        if let Some(mem) = &adj.memory {
            self.adjust_memory(prefix, res, mem)?;
        }
        if let Some(cpu) = &adj.cpu {
            self.adjust_cpu(prefix, res, cpu)?;
        }
        for h in &adj.hugepage_limits {
            let field = format!("{prefix}.hugepage_limits");
            if !is_page_size(&h.page_size) {
                return Err(self.invalid(
                    &field,
                    format!("page size {:?} is not like 2MB or 1GB", h.page_size),
                ));
            }
            let limit = i64::try_from(h.limit)
                .map_err(|_| self.invalid(&field, format!("limit {} is too large", h.limit)))?;
            let list = res.hugepage_limits_mut().get_or_insert_with(Vec::new);
            match list.iter_mut().find(|l| *l.page_size() == h.page_size) {
                Some(existing) => {
                    existing.set_limit(limit);
                }
                None => {
                    let mut l = LinuxHugepageLimit::default();
                    l.set_page_size(h.page_size.clone()).set_limit(limit);
                    list.push(l);
                }
            }
        }
        if !adj.unified.is_empty() {
            let field = format!("{prefix}.unified");
            if !self.limits.cgroup_v2 {
                return Err(self.unsupported(
                    &field,
                    "this node runs cgroup v1, which has no unified hierarchy",
                ));
            }
            self.adjust_map(&field, res.unified_mut(), &adj.unified, |key, v| {
                if key.contains('/') || !key.contains('.') {
                    return Err(self.invalid(
                        &field,
                        format!("{key:?} is not a cgroup interface file name"),
                    ));
                }
                Ok(v.clone())
            })?;
        }
        if let Some(pids) = &adj.pids {
            // -1 is unlimited, 0 leaves the limit to the runtime's default.
            if pids.limit < -1 {
                return Err(self.invalid(
                    &format!("{prefix}.pids.limit"),
                    format!("{} is neither a limit nor -1 (unlimited)", pids.limit),
                ));
            }
            let mut p = LinuxPids::default();
            p.set_limit(pids.limit);
            res.set_pids(Some(p));
        }
        for d in &adj.devices {
            let rule = self.device_rule(&format!("{prefix}.devices"), d)?;
            res.devices_mut().get_or_insert_with(Vec::new).push(rule);
        }
        Ok(())
    }

    fn adjust_memory(
        &self,
        prefix: &str,
        res: &mut LinuxResources,
        mem: &api::LinuxMemory,
    ) -> Result<(), ApplyError> {
        let at_least_unlimited =
            |name: &str, v: &Option<api::OptionalInt64>| match v.as_ref().map(|v| v.value) {
                Some(n) if n < -1 => Err(self.invalid(
                    &format!("{prefix}.memory.{name}"),
                    format!("{n} is neither a size nor -1 (unlimited)"),
                )),
                n => Ok(n),
            };
        // A limit of 0 means "not set" in NRI.
        let limit = at_least_unlimited("limit", &mem.limit)?.filter(|&l| l != 0);
        let swap = at_least_unlimited("swap", &mem.swap)?;
        let reservation = at_least_unlimited("reservation", &mem.reservation)?;
        let kernel = at_least_unlimited("kernel", &mem.kernel)?;
        let kernel_tcp = at_least_unlimited("kernel_tcp", &mem.kernel_tcp)?;
        let swappiness = mem.swappiness.as_ref().map(|s| s.value);
        if let Some(s) = swappiness.filter(|&s| s > 100) {
            return Err(self.invalid(
                &format!("{prefix}.memory.swappiness"),
                format!("{s} is not in 0..=100"),
            ));
        }

        let mut m: LinuxMemory = res.memory().unwrap_or_default();
        if let Some(l) = limit {
            m.set_limit(Some(l));
            // As containerd does: no swap beyond the limit unless swap is given too.
            m.set_swap(Some(l));
        }
        if let Some(s) = swap {
            m.set_swap(Some(s));
        }
        if let (Some(l), Some(s)) = (m.limit(), m.swap())
            && (limit.is_some() || swap.is_some())
            && l > 0
            && s > 0
            && s < l
        {
            return Err(self.invalid(
                &format!("{prefix}.memory.swap"),
                format!("memory+swap limit {s} is below the memory limit {l}"),
            ));
        }
        if reservation.is_some() {
            m.set_reservation(reservation);
        }
        if kernel.is_some() {
            m.set_kernel(kernel);
        }
        if kernel_tcp.is_some() {
            m.set_kernel_tcp(kernel_tcp);
        }
        if swappiness.is_some() {
            m.set_swappiness(swappiness);
        }
        if let Some(v) = &mem.disable_oom_killer {
            m.set_disable_oom_killer(Some(v.value));
        }
        if let Some(v) = &mem.use_hierarchy {
            m.set_use_hierarchy(Some(v.value));
        }
        res.set_memory(Some(m));
        Ok(())
    }

    fn adjust_cpu(
        &self,
        prefix: &str,
        res: &mut LinuxResources,
        cpu: &api::LinuxCpu,
    ) -> Result<(), ApplyError> {
        let field = |name: &str| format!("{prefix}.cpu.{name}");
        for (name, value) in [
            ("quota", &cpu.quota),
            ("realtime_runtime", &cpu.realtime_runtime),
        ] {
            if let Some(v) = value.as_ref().filter(|v| v.value < -1) {
                return Err(self.invalid(
                    &field(name),
                    format!("{} is neither a duration nor -1 (unlimited)", v.value),
                ));
            }
        }
        let realtime = cpu.realtime_runtime.as_ref().is_some_and(|v| v.value != 0)
            || cpu.realtime_period.as_ref().is_some_and(|v| v.value != 0);
        if realtime && self.limits.cgroup_v2 {
            return Err(self.unsupported(
                &field("realtime_runtime"),
                "realtime CPU limits are not available on cgroup v2",
            ));
        }
        for (name, list) in [("cpus", &cpu.cpus), ("mems", &cpu.mems)] {
            if !list.is_empty() && !is_id_list(list) {
                return Err(
                    self.invalid(&field(name), format!("{list:?} is not a list like 0-3,6"))
                );
            }
        }

        let mut c: LinuxCpu = res.cpu().clone().unwrap_or_default();
        if let Some(v) = &cpu.shares {
            c.set_shares(Some(v.value));
        }
        if let Some(v) = &cpu.quota {
            c.set_quota(Some(v.value));
        }
        if let Some(v) = &cpu.period {
            c.set_period(Some(v.value));
        }
        if let Some(v) = &cpu.realtime_runtime {
            c.set_realtime_runtime(Some(v.value));
        }
        if let Some(v) = &cpu.realtime_period {
            c.set_realtime_period(Some(v.value));
        }
        if !cpu.cpus.is_empty() {
            c.set_cpus(Some(cpu.cpus.clone()));
        }
        if !cpu.mems.is_empty() {
            c.set_mems(Some(cpu.mems.clone()));
        }
        res.set_cpu(Some(c));
        Ok(())
    }

    fn device_rule(
        &self,
        field: &str,
        d: &api::LinuxDeviceCgroup,
    ) -> Result<LinuxDeviceCgroup, ApplyError> {
        // No type is every type, as in OCI.
        let typ = match d.r#type.as_str() {
            "" => None,
            "a" => Some(LinuxDeviceType::A),
            "b" => Some(LinuxDeviceType::B),
            "c" => Some(LinuxDeviceType::C),
            other => {
                return Err(self.invalid(
                    field,
                    format!("device rule type {other:?} is not one of a, b, c"),
                ));
            }
        };
        if d.access.is_empty() || !d.access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(self.invalid(
                field,
                format!("device rule access {:?} is not made of r, w, m", d.access),
            ));
        }
        let number = |v: &Option<api::OptionalInt64>| match v.as_ref().map(|v| v.value) {
            Some(n) if n < -1 => Err(self.invalid(
                field,
                format!("device number {n} is neither a number nor -1 (any)"),
            )),
            n => Ok(n),
        };
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(d.allow)
            .set_typ(typ)
            .set_major(number(&d.major)?)
            .set_minor(number(&d.minor)?)
            .set_access(Some(d.access.clone()));
        Ok(rule)
    }

    fn io_priority(&self, p: &api::LinuxIoPriority) -> Result<Option<LinuxIOPriority>, ApplyError> {
        const FIELD: &str = "linux.io_priority";
        let class = api::IoPrioClass::try_from(p.class)
            .map_err(|_| self.invalid(FIELD, format!("unknown I/O class {}", p.class)))?;
        let class = match class {
            // No class: the container keeps the kernel's default.
            api::IoPrioClass::IoprioClassNone => return Ok(None),
            api::IoPrioClass::IoprioClassRt => IOPriorityClass::IoprioClassRt,
            api::IoPrioClass::IoprioClassBe => IOPriorityClass::IoprioClassBe,
            api::IoPrioClass::IoprioClassIdle => IOPriorityClass::IoprioClassIdle,
        };
        if !(0..=7).contains(&p.priority) {
            return Err(self.invalid(
                FIELD,
                format!("I/O priority {} is not in 0..=7", p.priority),
            ));
        }
        let io = LinuxIOPriorityBuilder::default()
            .class(class)
            .priority(i64::from(p.priority))
            .build()
            .map_err(|e| self.invalid(FIELD, e.to_string()))?;
        Ok(Some(io))
    }

    fn scheduler(&self, s: &api::LinuxScheduler) -> Result<Option<Scheduler>, ApplyError> {
        const FIELD: &str = "linux.scheduler";
        use api::LinuxSchedulerPolicy as P;
        let policy = P::try_from(s.policy)
            .map_err(|_| self.invalid(FIELD, format!("unknown scheduling policy {}", s.policy)))?;
        let policy = match policy {
            // No policy: the container keeps the runtime's default.
            P::SchedNone => return Ok(None),
            P::SchedOther => LinuxSchedulerPolicy::SchedOther,
            P::SchedFifo => LinuxSchedulerPolicy::SchedFifo,
            P::SchedRr => LinuxSchedulerPolicy::SchedRr,
            P::SchedBatch => LinuxSchedulerPolicy::SchedBatch,
            P::SchedIso => LinuxSchedulerPolicy::SchedIso,
            P::SchedIdle => LinuxSchedulerPolicy::SchedIdle,
            P::SchedDeadline => LinuxSchedulerPolicy::SchedDeadline,
        };
        if !(-20..=19).contains(&s.nice) {
            return Err(self.invalid(FIELD, format!("nice {} is not in -20..=19", s.nice)));
        }
        if !(0..=99).contains(&s.priority) {
            return Err(self.invalid(FIELD, format!("priority {} is not in 0..=99", s.priority)));
        }
        let flags = s
            .flags
            .iter()
            .map(|&f| {
                api::LinuxSchedulerFlag::try_from(f)
                    .map(sched_flag_to_oci)
                    .map_err(|_| self.invalid(FIELD, format!("unknown scheduler flag {f}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let nonzero = |v: u64| (v != 0).then_some(v);
        let mut sch = Scheduler::default();
        sch.set_policy(policy)
            .set_nice((s.nice != 0).then_some(s.nice))
            .set_priority((s.priority != 0).then_some(s.priority))
            .set_flags(non_empty_vec(flags))
            .set_runtime(nonzero(s.runtime))
            .set_deadline(nonzero(s.deadline))
            .set_period(nonzero(s.period));
        Ok(Some(sch))
    }

    fn memory_policy(&self, mp: &api::LinuxMemoryPolicy) -> Result<LinuxMemoryPolicy, ApplyError> {
        const FIELD: &str = "linux.memory_policy";
        use api::MpolMode as M;
        let mode = M::try_from(mp.mode)
            .map_err(|_| self.invalid(FIELD, format!("unknown memory policy mode {}", mp.mode)))?;
        let mode = match mode {
            M::MpolDefault => MemoryPolicyModeType::MpolDefault,
            M::MpolPreferred => MemoryPolicyModeType::MpolPreferred,
            M::MpolBind => MemoryPolicyModeType::MpolBind,
            M::MpolInterleave => MemoryPolicyModeType::MpolInterleave,
            M::MpolLocal => MemoryPolicyModeType::MpolLocal,
            M::MpolPreferredMany => MemoryPolicyModeType::MpolPreferredMany,
            M::MpolWeightedInterleave => MemoryPolicyModeType::MpolWeightedInterleave,
        };
        if !mp.nodes.is_empty() && !is_id_list(&mp.nodes) {
            return Err(self.invalid(
                FIELD,
                format!("nodes {:?} is not a list like 0-1,3", mp.nodes),
            ));
        }
        let flags = mp
            .flags
            .iter()
            .map(|&f| match api::MpolFlag::try_from(f) {
                Ok(api::MpolFlag::MpolFStaticNodes) => Ok(MemoryPolicyFlagType::MpolFStaticNodes),
                Ok(api::MpolFlag::MpolFRelativeNodes) => {
                    Ok(MemoryPolicyFlagType::MpolFRelativeNodes)
                }
                Ok(api::MpolFlag::MpolFNumaBalancing) => {
                    Ok(MemoryPolicyFlagType::MpolFNumaBalancing)
                }
                Err(_) => Err(self.invalid(FIELD, format!("unknown memory policy flag {f}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut policy = LinuxMemoryPolicy::default();
        policy
            .set_mode(mode)
            .set_nodes(non_empty(&mp.nodes))
            .set_flags(non_empty_vec(flags));
        Ok(policy)
    }

    fn seccomp(&self, p: &api::LinuxSeccomp) -> Result<LinuxSeccomp, ApplyError> {
        const FIELD: &str = "linux.seccomp_policy";
        let action = |name: &str| {
            from_oci_name!(LinuxSeccompAction, name)
                .ok_or_else(|| self.invalid(FIELD, format!("unknown seccomp action {name:?}")))
        };
        let default_action = action(&p.default_action)?;
        let architectures = p
            .architectures
            .iter()
            .map(|a| {
                from_oci_name!(Arch, a).ok_or_else(|| {
                    self.invalid(FIELD, format!("unknown seccomp architecture {a:?}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let flags = p
            .flags
            .iter()
            .map(|f| {
                from_oci_name!(LinuxSeccompFilterFlag, f)
                    .ok_or_else(|| self.invalid(FIELD, format!("unknown seccomp flag {f:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut notify = default_action == LinuxSeccompAction::ScmpActNotify;
        let mut syscalls = Vec::with_capacity(p.syscalls.len());
        for s in &p.syscalls {
            if s.names.is_empty() || s.names.iter().any(String::is_empty) {
                return Err(self.invalid(FIELD, "a syscall rule has an empty name"));
            }
            let act = action(&s.action)?;
            notify |= act == LinuxSeccompAction::ScmpActNotify;
            let mut args = Vec::with_capacity(s.args.len());
            for a in &s.args {
                // Syscalls take at most six arguments.
                let index = usize::try_from(a.index)
                    .ok()
                    .filter(|&i| i < 6)
                    .ok_or_else(|| {
                        self.invalid(
                            FIELD,
                            format!("{:?} argument index {} is not in 0..=5", s.names, a.index),
                        )
                    })?;
                let op = from_oci_name!(LinuxSeccompOperator, &a.op).ok_or_else(|| {
                    self.invalid(FIELD, format!("unknown seccomp operator {:?}", a.op))
                })?;
                let mut arg = LinuxSeccompArgBuilder::default()
                    .index(index)
                    .value(a.value)
                    .op(op);
                if a.value_two != 0 {
                    arg = arg.value_two(a.value_two);
                }
                args.push(
                    arg.build()
                        .map_err(|e| self.invalid(FIELD, e.to_string()))?,
                );
            }
            let mut rule = LinuxSyscall::default();
            rule.set_names(s.names.clone())
                .set_action(act)
                .set_errno_ret(s.errno_ret.as_ref().map(|e| e.value))
                .set_args(non_empty_vec(args));
            syscalls.push(rule);
        }
        if notify && p.listener_path.is_empty() {
            return Err(self.invalid(FIELD, "SCMP_ACT_NOTIFY needs a listener_path to notify"));
        }
        let mut seccomp = LinuxSeccomp::default();
        seccomp
            .set_default_action(default_action)
            .set_default_errno_ret(p.default_errno.as_ref().map(|e| e.value))
            .set_architectures(non_empty_vec(architectures))
            .set_flags(non_empty_vec(flags))
            .set_listener_path(non_empty(&p.listener_path).map(PathBuf::from))
            .set_listener_metadata(non_empty(&p.listener_metadata))
            .set_syscalls(non_empty_vec(syscalls));
        Ok(seccomp)
    }
}

/// Removes the device node at `path` and the allow rules that were there for it alone.
fn remove_device(linux: &mut Linux, path: &Path) {
    let mut removed = Vec::new();
    if let Some(devices) = linux.devices_mut() {
        devices.retain(|d| {
            let gone = d.path() == path;
            if gone {
                removed.push((d.typ(), d.major(), d.minor()));
            }
            !gone
        });
    }
    for (typ, major, minor) in removed {
        let rule_type = match typ {
            LinuxDeviceType::B => LinuxDeviceType::B,
            LinuxDeviceType::P => continue,
            _ => LinuxDeviceType::C,
        };
        let still_used = linux.devices().iter().flatten().any(|d| {
            d.major() == major
                && d.minor() == minor
                && (d.typ() == LinuxDeviceType::B) == (rule_type == LinuxDeviceType::B)
        });
        if still_used {
            continue;
        }
        if let Some(rules) = linux
            .resources_mut()
            .as_mut()
            .and_then(|r| r.devices_mut().as_mut())
        {
            rules.retain(|r| {
                !(r.allow()
                    && r.typ() == Some(rule_type)
                    && r.major() == Some(major)
                    && r.minor() == Some(minor))
            });
        }
    }
}

/// A `linux` section with nothing in it (oci-spec's default brings runc's defaults).
fn empty_linux() -> Linux {
    let mut linux = Linux::default();
    linux
        .set_resources(None)
        .set_namespaces(None)
        .set_masked_paths(None)
        .set_readonly_paths(None);
    linux
}

/// Splits NRI's removal marker off a key: `-name` asks to remove `name`.
fn split_marker(key: &str) -> (&str, bool) {
    match key.strip_prefix('-') {
        Some(name) => (name, true),
        None => (key, false),
    }
}

/// The components of a path after lexical clean-up (`/a/./b/../c/` is `a`, `c`).
fn clean_path(path: &Path) -> Vec<&std::ffi::OsStr> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => parts.push(part),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    parts
}

/// Whether `s` is a kernel id list such as `0-3,6` (cpus, memory nodes).
fn is_id_list(s: &str) -> bool {
    s.split(',').all(|part| {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let number = |n: &str| {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                n.parse::<u32>().ok()
            }
        };
        matches!((number(lo), number(hi)), (Some(a), Some(b)) if a <= b)
    })
}

/// Whether `s` names a huge page size as the kernel's hugetlb files do (`2MB`, `1GB`).
fn is_page_size(s: &str) -> bool {
    let Some(rest) = s.strip_suffix('B') else {
        return false;
    };
    let Some(digits) = rest.strip_suffix(['K', 'M', 'G', 'T', 'P']) else {
        return false;
    };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn non_empty_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn int64(value: i64) -> api::OptionalInt64 {
    api::OptionalInt64 { value }
}

fn uint64(value: u64) -> api::OptionalUInt64 {
    api::OptionalUInt64 { value }
}

fn boolean(value: bool) -> api::OptionalBool {
    api::OptionalBool { value }
}

fn sched_flag_to_oci(f: api::LinuxSchedulerFlag) -> LinuxSchedulerFlag {
    use api::LinuxSchedulerFlag as F;
    match f {
        F::SchedFlagResetOnFork => LinuxSchedulerFlag::SchedResetOnFork,
        F::SchedFlagReclaim => LinuxSchedulerFlag::SchedFlagReclaim,
        F::SchedFlagDlOverrun => LinuxSchedulerFlag::SchedFlagDLOverrun,
        F::SchedFlagKeepPolicy => LinuxSchedulerFlag::SchedFlagKeepPolicy,
        F::SchedFlagKeepParams => LinuxSchedulerFlag::SchedFlagKeepParams,
        F::SchedFlagUtilClampMin => LinuxSchedulerFlag::SchedFlagUtilClampMin,
        F::SchedFlagUtilClampMax => LinuxSchedulerFlag::SchedFlagUtilClampMax,
    }
}

fn sched_flag_to_nri(f: LinuxSchedulerFlag) -> api::LinuxSchedulerFlag {
    use api::LinuxSchedulerFlag as F;
    match f {
        LinuxSchedulerFlag::SchedResetOnFork => F::SchedFlagResetOnFork,
        LinuxSchedulerFlag::SchedFlagReclaim => F::SchedFlagReclaim,
        LinuxSchedulerFlag::SchedFlagDLOverrun => F::SchedFlagDlOverrun,
        LinuxSchedulerFlag::SchedFlagKeepPolicy => F::SchedFlagKeepPolicy,
        LinuxSchedulerFlag::SchedFlagKeepParams => F::SchedFlagKeepParams,
        LinuxSchedulerFlag::SchedFlagUtilClampMin => F::SchedFlagUtilClampMin,
        LinuxSchedulerFlag::SchedFlagUtilClampMax => F::SchedFlagUtilClampMax,
    }
}

fn hooks_to_nri(h: &Hooks) -> api::Hooks {
    let list = |hooks: &Option<Vec<Hook>>| {
        hooks
            .iter()
            .flatten()
            .map(|h| api::Hook {
                path: path_string(h.path()),
                args: h.args().clone().unwrap_or_default(),
                env: h.env().clone().unwrap_or_default(),
                timeout: h.timeout().map(|value| api::OptionalInt { value }),
            })
            .collect()
    };
    api::Hooks {
        prestart: list(h.prestart()),
        create_runtime: list(h.create_runtime()),
        create_container: list(h.create_container()),
        start_container: list(h.start_container()),
        poststart: list(h.poststart()),
        poststop: list(h.poststop()),
    }
}

fn linux_to_nri(linux: Option<&Linux>, process: Option<&Process>) -> api::LinuxContainer {
    let namespaces = linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .map(|n| api::LinuxNamespace {
            r#type: oci_name!(n.typ()),
            path: n.path().as_deref().map(path_string).unwrap_or_default(),
        })
        .collect();
    let devices = linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .map(|d| api::LinuxDevice {
            path: path_string(d.path()),
            r#type: d.typ().as_str().to_owned(),
            major: d.major(),
            minor: d.minor(),
            file_mode: d.file_mode().map(|value| api::OptionalFileMode { value }),
            uid: d.uid().map(|value| api::OptionalUInt32 { value }),
            gid: d.gid().map(|value| api::OptionalUInt32 { value }),
        })
        .collect();
    let io_priority = process.and_then(|p| p.io_priority().as_ref()).map(|io| {
        let class = match io.class() {
            IOPriorityClass::IoprioClassRt => api::IoPrioClass::IoprioClassRt,
            IOPriorityClass::IoprioClassBe => api::IoPrioClass::IoprioClassBe,
            IOPriorityClass::IoprioClassIdle => api::IoPrioClass::IoprioClassIdle,
        };
        api::LinuxIoPriority {
            class: class.into(),
            priority: i32::try_from(io.priority()).unwrap_or(0),
        }
    });
    let scheduler = process.and_then(|p| p.scheduler().as_ref()).map(|s| {
        use api::LinuxSchedulerPolicy as P;
        let policy = match s.policy() {
            LinuxSchedulerPolicy::SchedOther => P::SchedOther,
            LinuxSchedulerPolicy::SchedFifo => P::SchedFifo,
            LinuxSchedulerPolicy::SchedRr => P::SchedRr,
            LinuxSchedulerPolicy::SchedBatch => P::SchedBatch,
            LinuxSchedulerPolicy::SchedIso => P::SchedIso,
            LinuxSchedulerPolicy::SchedIdle => P::SchedIdle,
            LinuxSchedulerPolicy::SchedDeadline => P::SchedDeadline,
        };
        api::LinuxScheduler {
            policy: policy.into(),
            nice: s.nice().unwrap_or(0),
            priority: s.priority().unwrap_or(0),
            flags: s
                .flags()
                .iter()
                .flatten()
                .map(|&f| sched_flag_to_nri(f).into())
                .collect(),
            runtime: s.runtime().unwrap_or(0),
            deadline: s.deadline().unwrap_or(0),
            period: s.period().unwrap_or(0),
        }
    });
    api::LinuxContainer {
        namespaces,
        devices,
        resources: linux
            .and_then(|l| l.resources().as_ref())
            .map(resources_to_nri),
        oom_score_adj: process
            .and_then(|p| p.oom_score_adj())
            .map(|v| api::OptionalInt {
                value: i64::from(v),
            }),
        cgroups_path: linux
            .and_then(|l| l.cgroups_path().as_deref())
            .map(path_string)
            .unwrap_or_default(),
        io_priority,
        seccomp_profile: None,
        seccomp_policy: linux.and_then(|l| l.seccomp().as_ref()).map(seccomp_to_nri),
        sysctl: linux.and_then(|l| l.sysctl().clone()).unwrap_or_default(),
        net_devices: linux
            .and_then(|l| l.net_devices().as_ref())
            .into_iter()
            .flatten()
            .map(|(host, d)| {
                let name = d.name().clone().unwrap_or_default();
                (host.clone(), api::LinuxNetDevice { name })
            })
            .collect(),
        scheduler,
        rdt: linux
            .and_then(|l| l.intel_rdt().as_ref())
            .map(|r| api::LinuxRdt {
                clos_id: r
                    .clos_id()
                    .clone()
                    .map(|value| api::OptionalString { value }),
                schemata: r
                    .schemata()
                    .clone()
                    .map(|value| api::OptionalRepeatedString { value }),
                enable_monitoring: r.enable_monitoring().map(boolean),
                remove: false,
            }),
    }
}

fn seccomp_to_nri(s: &LinuxSeccomp) -> api::LinuxSeccomp {
    api::LinuxSeccomp {
        default_action: oci_name!(s.default_action()),
        default_errno: s
            .default_errno_ret()
            .map(|value| api::OptionalUInt32 { value }),
        architectures: s
            .architectures()
            .iter()
            .flatten()
            .map(|a| oci_name!(a))
            .collect(),
        flags: s.flags().iter().flatten().map(|f| oci_name!(f)).collect(),
        listener_path: s
            .listener_path()
            .as_deref()
            .map(path_string)
            .unwrap_or_default(),
        listener_metadata: s.listener_metadata().clone().unwrap_or_default(),
        syscalls: s
            .syscalls()
            .iter()
            .flatten()
            .map(|sc| api::LinuxSyscall {
                names: sc.names().clone(),
                action: oci_name!(sc.action()),
                errno_ret: sc.errno_ret().map(|value| api::OptionalUInt32 { value }),
                args: sc
                    .args()
                    .iter()
                    .flatten()
                    .map(|a| api::LinuxSeccompArg {
                        index: u32::try_from(a.index()).unwrap_or(u32::MAX),
                        value: a.value(),
                        value_two: a.value_two().unwrap_or(0),
                        op: oci_name!(a.op()),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLUGIN: &str = "10-test";

    fn v2() -> Limits {
        Limits {
            min_oom_score_adj: 0,
            cgroup_v2: true,
        }
    }

    fn v1() -> Limits {
        Limits {
            min_oom_score_adj: -1000,
            cgroup_v2: false,
        }
    }

    /// A spec such as skiff's CRI layer writes for a container.
    fn spec() -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.2.0",
            "process": {
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [1000, 44]},
                "args": ["/bin/app", "--serve"],
                "env": ["PATH=/usr/bin:/bin", "HOME=/home/app", "LANG=C.UTF-8"],
                "cwd": "/srv",
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}],
                "oomScoreAdj": 936,
                "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
                "scheduler": {"policy": "SCHED_BATCH", "nice": 5}
            },
            "root": {"path": "rootfs"},
            "hostname": "web-0",
            "annotations": {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.sandbox-id": "abc"
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/skiff/pods/abc/shm",
                 "options": ["rbind", "ro"]},
                {"destination": "/etc/hosts", "type": "bind", "source": "/run/skiff/pods/abc/hosts",
                 "options": ["rbind", "rprivate", "rw"]}
            ],
            "hooks": {
                "createRuntime": [{"path": "/usr/libexec/hook", "args": ["hook", "create"], "timeout": 5}]
            },
            "linux": {
                "namespaces": [
                    {"type": "pid"}, {"type": "ipc", "path": "/proc/42/ns/ipc"},
                    {"type": "uts", "path": "/proc/42/ns/uts"}, {"type": "mount"},
                    {"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "cgroup"}
                ],
                "devices": [
                    {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                     "fileMode": 438, "uid": 0, "gid": 0}
                ],
                "resources": {
                    "devices": [
                        {"allow": false, "access": "rwm"},
                        {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
                    ],
                    "memory": {"limit": 268435456, "swap": 268435456, "reservation": 134217728},
                    "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
                    "pids": {"limit": 1024},
                    "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
                    "unified": {"memory.oom.group": "1"}
                },
                "cgroupsPath": "kubepods-burstable.slice:skiff:abc",
                "sysctl": {"net.ipv4.ip_forward": "0"},
                "netDevices": {"eth9": {"name": "net1"}},
                "seccomp": {
                    "defaultAction": "SCMP_ACT_ERRNO",
                    "defaultErrnoRet": 1,
                    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                    "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
                    "syscalls": [
                        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                         "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
                    ]
                },
                "intelRdt": {"closID": "gold", "schemata": ["L3:0=ff"], "enableMonitoring": true},
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"]
            }
        }))
        .expect("the test spec parses")
    }

    fn apply_ok(spec: &mut Spec, adj: &api::ContainerAdjustment) -> Applied {
        apply(spec, PLUGIN, adj, &v2()).expect("adjustment applies")
    }

    fn apply_err(spec: &mut Spec, adj: &api::ContainerAdjustment, limits: &Limits) -> ApplyError {
        let before = spec.clone();
        let err = apply(spec, PLUGIN, adj, limits).expect_err("adjustment is refused");
        assert_eq!(*spec, before, "a refused adjustment changes nothing");
        assert_eq!(err.plugin, PLUGIN);
        err
    }

    fn linux_adj(linux: api::LinuxContainerAdjustment) -> api::ContainerAdjustment {
        api::ContainerAdjustment {
            linux: Some(linux),
            ..Default::default()
        }
    }

    fn resources_adj(res: api::LinuxResources) -> api::ContainerAdjustment {
        linux_adj(api::LinuxContainerAdjustment {
            resources: Some(res),
            ..Default::default()
        })
    }

    fn resources(spec: &Spec) -> &LinuxResources {
        spec.linux().as_ref().unwrap().resources().as_ref().unwrap()
    }

    fn process(spec: &Spec) -> &Process {
        spec.process().as_ref().unwrap()
    }

    fn mount(dest: &str, source: &str, options: &[&str]) -> api::Mount {
        api::Mount {
            destination: dest.into(),
            r#type: "bind".into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn destinations(spec: &Spec) -> Vec<String> {
        spec.mounts()
            .iter()
            .flatten()
            .map(|m| path_string(m.destination()))
            .collect()
    }

    fn kv(key: &str, value: &str) -> api::KeyValue {
        api::KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn annotations_are_added_replaced_and_removed() {
        let mut s = spec();
        let adj = api::ContainerAdjustment {
            annotations: HashMap::from([
                ("example.com/new".to_owned(), "1".to_owned()),
                ("io.kubernetes.cri.sandbox-id".to_owned(), "xyz".to_owned()),
                (
                    "-io.kubernetes.cri.container-type".to_owned(),
                    String::new(),
                ),
                // Removed and set in one adjustment: the setting wins.
                ("-example.com/both".to_owned(), String::new()),
                ("example.com/both".to_owned(), "kept".to_owned()),
            ]),
            ..Default::default()
        };
        apply_ok(&mut s, &adj);
        let a = s.annotations().as_ref().unwrap();
        assert_eq!(a["example.com/new"], "1");
        assert_eq!(a["io.kubernetes.cri.sandbox-id"], "xyz");
        assert_eq!(a["example.com/both"], "kept");
        assert!(!a.contains_key("io.kubernetes.cri.container-type"));
    }

    #[test]
    fn mounts_are_added_replaced_and_removed() {
        let mut s = spec();
        let adj = api::ContainerAdjustment {
            mounts: vec![
                mount("/data", "/srv/data", &["rbind", "rw"]),
                mount("/etc/hosts/", "/other/hosts", &["rbind", "ro"]),
                api::Mount {
                    destination: "-/dev/shm".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        apply_ok(&mut s, &adj);
        let mounts = s.mounts().as_ref().unwrap();
        assert!(!destinations(&s).contains(&"/dev/shm".to_owned()));
        let hosts: Vec<_> = mounts
            .iter()
            .filter(|m| clean_path(m.destination()) == clean_path(Path::new("/etc/hosts")))
            .collect();
        assert_eq!(
            hosts.len(),
            1,
            "the mount at the same destination is replaced"
        );
        assert_eq!(
            hosts[0].source().as_deref(),
            Some(Path::new("/other/hosts"))
        );
        let data = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .unwrap();
        assert_eq!(data.typ().as_deref(), Some("bind"));
        assert_eq!(
            data.options().as_deref(),
            Some(&["rbind".to_owned(), "rw".to_owned()][..])
        );
    }

    #[test]
    fn mounts_are_ordered_parents_first_and_otherwise_stable() {
        let mut s = spec();
        let adj = api::ContainerAdjustment {
            mounts: vec![
                mount("/var/lib/app/cache", "/c", &["rbind"]),
                mount("/var", "/v", &["rbind"]),
                mount("/a", "/a", &["rbind"]),
                mount("/var/lib", "/vl", &["rbind"]),
            ],
            ..Default::default()
        };
        apply_ok(&mut s, &adj);
        assert_eq!(
            destinations(&s),
            [
                "/proc",
                "/dev",
                "/var",
                "/a",
                "/dev/pts",
                "/dev/shm",
                "/etc/hosts",
                "/var/lib",
                "/var/lib/app/cache"
            ]
        );
    }

    #[test]
    fn shared_and_slave_mounts_set_the_root_propagation() {
        let mut s = spec();
        let adj = api::ContainerAdjustment {
            mounts: vec![mount("/mnt/slave", "/mnt", &["rbind", "rslave"])],
            ..Default::default()
        };
        apply_ok(&mut s, &adj);
        let prop = |s: &Spec| s.linux().as_ref().unwrap().rootfs_propagation().clone();
        assert_eq!(prop(&s).as_deref(), Some("rslave"));

        let adj = api::ContainerAdjustment {
            mounts: vec![mount("/mnt/shared", "/mnt", &["rbind", "rshared"])],
            ..Default::default()
        };
        apply_ok(&mut s, &adj);
        assert_eq!(prop(&s).as_deref(), Some("rshared"));

        // A slave mount does not weaken a shared root.
        let adj = api::ContainerAdjustment {
            mounts: vec![mount("/mnt/slave2", "/mnt", &["rbind", "rslave"])],
            ..Default::default()
        };
        apply_ok(&mut s, &adj);
        assert_eq!(prop(&s).as_deref(), Some("rshared"));
    }

    #[test]
    fn relative_mount_destinations_are_refused() {
        let mut s = spec();
        let adj = api::ContainerAdjustment {
            mounts: vec![mount("data", "/srv", &["rbind"])],
            ..Default::default()
        };
        let err = apply_err(&mut s, &adj, &v2());
        assert_eq!(err.field, "mounts");
        assert_eq!(err.kind, ApplyErrorKind::Invalid);
    }

    #[test]
    fn env_is_set_replaced_and_removed() {
        let mut s = spec();
        s.process_mut()
            .as_mut()
            .unwrap()
            .env_mut()
            .as_mut()
            .unwrap()
            .push("HOME=/shadowed".to_owned());
        let adj = api::ContainerAdjustment {
            env: vec![
                kv("HOME", "/root"),
                kv("-LANG", ""),
                kv("NEW", "a=b"),
                kv("-NOT_THERE", ""),
            ],
            ..Default::default()
        };
        apply_ok(&mut s, &adj);
        assert_eq!(
            process(&s).env().as_deref().unwrap(),
            ["PATH=/usr/bin:/bin", "HOME=/root", "NEW=a=b"]
        );
    }

    #[test]
    fn bad_env_names_are_refused() {
        for key in ["", "-", "A=B"] {
            let mut s = spec();
            let adj = api::ContainerAdjustment {
                env: vec![kv(key, "x")],
                ..Default::default()
            };
            assert_eq!(apply_err(&mut s, &adj, &v2()).field, "env", "{key:?}");
        }
    }

    #[test]
    fn hooks_are_appended_per_kind() {
        let mut s = spec();
        let hook = |path: &str| api::Hook {
            path: path.into(),
            args: vec![path.into(), "x".into()],
            env: vec!["A=1".into()],
            timeout: Some(api::OptionalInt { value: 3 }),
        };
        let adj = api::ContainerAdjustment {
            hooks: Some(api::Hooks {
                prestart: vec![hook("/h/prestart")],
                create_runtime: vec![hook("/h/cr1"), hook("/h/cr2")],
                create_container: vec![hook("/h/cc")],
                start_container: vec![hook("/h/sc")],
                poststart: vec![hook("/h/ps")],
                poststop: vec![hook("/h/stop")],
            }),
            ..Default::default()
        };
        apply_ok(&mut s, &adj);
        let h = s.hooks().as_ref().unwrap();
        let paths = |l: &Option<Vec<Hook>>| -> Vec<String> {
            l.iter().flatten().map(|h| path_string(h.path())).collect()
        };
        assert_eq!(paths(h.prestart()), ["/h/prestart"]);
        assert_eq!(
            paths(h.create_runtime()),
            ["/usr/libexec/hook", "/h/cr1", "/h/cr2"]
        );
        assert_eq!(paths(h.create_container()), ["/h/cc"]);
        assert_eq!(paths(h.start_container()), ["/h/sc"]);
        assert_eq!(paths(h.poststart()), ["/h/ps"]);
        assert_eq!(paths(h.poststop()), ["/h/stop"]);
        let cc = &h.create_container().as_ref().unwrap()[0];
        assert_eq!(cc.args().as_deref().unwrap(), ["/h/cc", "x"]);
        assert_eq!(cc.env().as_deref().unwrap(), ["A=1"]);
        assert_eq!(cc.timeout(), Some(3));
    }

    #[test]
    fn bad_hooks_are_refused() {
        let mut s = spec();
        let adj = |path: &str, timeout: i64| api::ContainerAdjustment {
            hooks: Some(api::Hooks {
                poststop: vec![api::Hook {
                    path: path.into(),
                    timeout: Some(api::OptionalInt { value: timeout }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            apply_err(&mut s, &adj("hook", 1), &v2()).field,
            "hooks.poststop"
        );
        assert_eq!(
            apply_err(&mut s, &adj("/hook", 0), &v2()).field,
            "hooks.poststop"
        );
    }

    #[test]
    fn args_replace_the_command_and_the_empty_marker_is_dropped() {
        let args = |a: &[&str]| api::ContainerAdjustment {
            args: a.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let mut s = spec();
        apply_ok(&mut s, &args(&["/bin/other", "-v"]));
        assert_eq!(process(&s).args().as_deref().unwrap(), ["/bin/other", "-v"]);

        apply_ok(&mut s, &args(&["", "/bin/third"]));
        assert_eq!(process(&s).args().as_deref().unwrap(), ["/bin/third"]);

        // The marker alone, or nothing, leaves the command alone.
        apply_ok(&mut s, &args(&[""]));
        apply_ok(&mut s, &args(&[]));
        assert_eq!(process(&s).args().as_deref().unwrap(), ["/bin/third"]);

        assert_eq!(
            apply_err(&mut s, &args(&["", "", "x"]), &v2()).field,
            "args"
        );
    }

    #[test]
    fn rlimits_are_replaced_by_type_or_added() {
        let mut s = spec();
        let rl = |t: &str, hard, soft| api::PosixRlimit {
            r#type: t.into(),
            hard,
            soft,
        };
        let adj = api::ContainerAdjustment {
            rlimits: vec![rl("RLIMIT_NOFILE", 4096, 1024), rl("RLIMIT_CORE", 0, 0)],
            ..Default::default()
        };
        apply_ok(&mut s, &adj);
        let limits = process(&s).rlimits().as_ref().unwrap();
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].typ(), PosixRlimitType::RlimitNofile);
        assert_eq!((limits[0].hard(), limits[0].soft()), (4096, 1024));
        assert_eq!(limits[1].typ(), PosixRlimitType::RlimitCore);

        for bad in [rl("RLIMIT_BOGUS", 1, 1), rl("RLIMIT_NPROC", 1, 2)] {
            let adj = api::ContainerAdjustment {
                rlimits: vec![bad],
                ..Default::default()
            };
            assert_eq!(apply_err(&mut s, &adj, &v2()).field, "rlimits");
        }
    }

    fn device(path: &str, typ: &str, major: i64, minor: i64) -> api::LinuxDevice {
        api::LinuxDevice {
            path: path.into(),
            r#type: typ.into(),
            major,
            minor,
            file_mode: Some(api::OptionalFileMode { value: 0o666 }),
            uid: Some(api::OptionalUInt32 { value: 0 }),
            gid: Some(api::OptionalUInt32 { value: 5 }),
        }
    }

    fn rules(spec: &Spec) -> Vec<String> {
        resources(spec)
            .devices()
            .iter()
            .flatten()
            .map(|r| format!("{}{r}", if r.allow() { "+" } else { "-" }))
            .collect()
    }

    #[test]
    fn devices_are_added_with_an_allow_rule() {
        let mut s = spec();
        let adj = linux_adj(api::LinuxContainerAdjustment {
            devices: vec![
                device("/dev/nvidia0", "c", 195, 0),
                device("/dev/sdz", "b", 8, 240),
            ],
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let devices = s.linux().as_ref().unwrap().devices().as_ref().unwrap();
        assert_eq!(devices.len(), 3);
        let gpu = &devices[1];
        assert_eq!(gpu.path(), Path::new("/dev/nvidia0"));
        assert_eq!(gpu.typ(), LinuxDeviceType::C);
        assert_eq!((gpu.major(), gpu.minor()), (195, 0));
        assert_eq!(gpu.file_mode(), Some(0o666));
        assert_eq!((gpu.uid(), gpu.gid()), (Some(0), Some(5)));
        assert_eq!(
            rules(&s),
            ["-a *:* rwm", "+c 10:229 rwm", "+c 195:0 rw", "+b 8:240 rwm"]
        );
    }

    #[test]
    fn devices_are_replaced_and_removed_with_their_rules() {
        let mut s = spec();
        let adj = linux_adj(api::LinuxContainerAdjustment {
            devices: vec![
                device("/dev/nvidia0", "c", 195, 0),
                // Same path, another node: the old node's rule goes with it.
                device("/dev/nvidia0", "c", 195, 1),
                api::LinuxDevice {
                    path: "-/dev/fuse".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let devices = s.linux().as_ref().unwrap().devices().as_ref().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].minor(), 1);
        assert_eq!(rules(&s), ["-a *:* rwm", "+c 195:1 rw"]);
    }

    #[test]
    fn bad_devices_are_refused() {
        for d in [
            device("dev/x", "c", 1, 1),
            device("/dev/x", "a", 1, 1),
            device("/dev/x", "", 1, 1),
            device("/dev/x", "c", -1, 1),
        ] {
            let mut s = spec();
            let err = apply_err(
                &mut s,
                &linux_adj(api::LinuxContainerAdjustment {
                    devices: vec![d],
                    ..Default::default()
                }),
                &v2(),
            );
            assert!(err.field.starts_with("linux.devices["), "{err}");
        }
    }

    fn i64v(value: i64) -> Option<api::OptionalInt64> {
        Some(api::OptionalInt64 { value })
    }

    fn u64v(value: u64) -> Option<api::OptionalUInt64> {
        Some(api::OptionalUInt64 { value })
    }

    #[test]
    fn memory_is_adjusted() {
        let mut s = spec();
        let adj = resources_adj(api::LinuxResources {
            memory: Some(api::LinuxMemory {
                limit: i64v(512 << 20),
                reservation: i64v(256 << 20),
                kernel: i64v(-1),
                kernel_tcp: i64v(64 << 20),
                swappiness: u64v(10),
                disable_oom_killer: Some(api::OptionalBool { value: true }),
                use_hierarchy: Some(api::OptionalBool { value: true }),
                ..Default::default()
            }),
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let m = resources(&s).memory().unwrap();
        assert_eq!(m.limit(), Some(512 << 20));
        assert_eq!(m.swap(), Some(512 << 20), "no swap beyond the new limit");
        assert_eq!(m.reservation(), Some(256 << 20));
        assert_eq!(m.kernel(), Some(-1));
        assert_eq!(m.kernel_tcp(), Some(64 << 20));
        assert_eq!(m.swappiness(), Some(10));
        assert_eq!(m.disable_oom_killer(), Some(true));
        assert_eq!(m.use_hierarchy(), Some(true));

        // Swap given with the limit is kept; a limit of 0 means "not set".
        let adj = resources_adj(api::LinuxResources {
            memory: Some(api::LinuxMemory {
                limit: i64v(0),
                swap: i64v(-1),
                ..Default::default()
            }),
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let m = resources(&s).memory().unwrap();
        assert_eq!((m.limit(), m.swap()), (Some(512 << 20), Some(-1)));
    }

    #[test]
    fn impossible_memory_is_refused() {
        let cases = [
            (
                "linux.resources.memory.limit",
                api::LinuxMemory {
                    limit: i64v(-2),
                    ..Default::default()
                },
            ),
            (
                "linux.resources.memory.swap",
                api::LinuxMemory {
                    limit: i64v(1 << 30),
                    swap: i64v(1 << 20),
                    ..Default::default()
                },
            ),
            (
                "linux.resources.memory.swappiness",
                api::LinuxMemory {
                    swappiness: u64v(101),
                    ..Default::default()
                },
            ),
        ];
        for (field, memory) in cases {
            let mut s = spec();
            let adj = resources_adj(api::LinuxResources {
                memory: Some(memory),
                ..Default::default()
            });
            assert_eq!(apply_err(&mut s, &adj, &v2()).field, field);
        }
    }

    #[test]
    fn cpu_is_adjusted() {
        let mut s = spec();
        let adj = resources_adj(api::LinuxResources {
            cpu: Some(api::LinuxCpu {
                shares: u64v(2048),
                quota: i64v(-1),
                period: u64v(50_000),
                cpus: "2-3,6".into(),
                mems: String::new(),
                ..Default::default()
            }),
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let c = resources(&s).cpu().as_ref().unwrap();
        assert_eq!(c.shares(), Some(2048));
        assert_eq!(c.quota(), Some(-1));
        assert_eq!(c.period(), Some(50_000));
        assert_eq!(c.cpus().as_deref(), Some("2-3,6"));
        assert_eq!(c.mems().as_deref(), Some("0"), "an empty list is not set");

        // Realtime limits exist on cgroup v1 only.
        let rt = resources_adj(api::LinuxResources {
            cpu: Some(api::LinuxCpu {
                realtime_runtime: i64v(950_000),
                realtime_period: u64v(1_000_000),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = apply_err(&mut s, &rt, &v2());
        assert_eq!(err.kind, ApplyErrorKind::Unsupported);
        apply(&mut s, PLUGIN, &rt, &v1()).unwrap();
        let c = resources(&s).cpu().as_ref().unwrap();
        assert_eq!(c.realtime_runtime(), Some(950_000));
        assert_eq!(c.realtime_period(), Some(1_000_000));
    }

    #[test]
    fn bad_cpu_lists_and_quotas_are_refused() {
        for (field, cpu) in [
            (
                "linux.resources.cpu.cpus",
                api::LinuxCpu {
                    cpus: "0-".into(),
                    ..Default::default()
                },
            ),
            (
                "linux.resources.cpu.mems",
                api::LinuxCpu {
                    mems: "3-1".into(),
                    ..Default::default()
                },
            ),
            (
                "linux.resources.cpu.quota",
                api::LinuxCpu {
                    quota: i64v(-5),
                    ..Default::default()
                },
            ),
        ] {
            let mut s = spec();
            let adj = resources_adj(api::LinuxResources {
                cpu: Some(cpu),
                ..Default::default()
            });
            assert_eq!(apply_err(&mut s, &adj, &v2()).field, field);
        }
    }

    #[test]
    fn hugepage_limits_are_replaced_by_page_size() {
        let mut s = spec();
        let hp = |size: &str, limit| api::HugepageLimit {
            page_size: size.into(),
            limit,
        };
        let adj = resources_adj(api::LinuxResources {
            hugepage_limits: vec![hp("2MB", 1 << 30), hp("1GB", 2 << 30)],
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let limits: Vec<_> = resources(&s)
            .hugepage_limits()
            .iter()
            .flatten()
            .map(|l| (l.page_size().clone(), l.limit()))
            .collect();
        assert_eq!(
            limits,
            [("2MB".to_owned(), 1 << 30), ("1GB".to_owned(), 2 << 30)]
        );

        for bad in [hp("2M", 1), hp("MB", 1), hp("2MB", u64::MAX)] {
            let adj = resources_adj(api::LinuxResources {
                hugepage_limits: vec![bad],
                ..Default::default()
            });
            assert_eq!(
                apply_err(&mut s, &adj, &v2()).field,
                "linux.resources.hugepage_limits"
            );
        }
    }

    #[test]
    fn unified_keys_are_set_and_removed_on_cgroup_v2_only() {
        let mut s = spec();
        let adj = resources_adj(api::LinuxResources {
            unified: HashMap::from([
                ("memory.high".to_owned(), "100M".to_owned()),
                ("-memory.oom.group".to_owned(), String::new()),
            ]),
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let unified = resources(&s).unified().as_ref().unwrap();
        assert_eq!(
            unified,
            &HashMap::from([("memory.high".to_owned(), "100M".to_owned())])
        );

        let err = apply_err(&mut s, &adj, &v1());
        assert_eq!(err.kind, ApplyErrorKind::Unsupported);
        assert_eq!(err.field, "linux.resources.unified");

        let bad = resources_adj(api::LinuxResources {
            unified: HashMap::from([("../memory.max".to_owned(), "1".to_owned())]),
            ..Default::default()
        });
        assert_eq!(apply_err(&mut s, &bad, &v2()).kind, ApplyErrorKind::Invalid);
    }

    #[test]
    fn pids_limit_is_set() {
        let mut s = spec();
        let pids = |limit| {
            resources_adj(api::LinuxResources {
                pids: Some(api::LinuxPids { limit }),
                ..Default::default()
            })
        };
        apply_ok(&mut s, &pids(64));
        assert_eq!(resources(&s).pids().unwrap().limit(), 64);
        apply_ok(&mut s, &pids(-1));
        assert_eq!(resources(&s).pids().unwrap().limit(), -1);
        assert_eq!(
            apply_err(&mut s, &pids(-2), &v2()).field,
            "linux.resources.pids.limit"
        );
    }

    #[test]
    fn device_cgroup_rules_are_appended() {
        let mut s = spec();
        let rule = |typ: &str, access: &str| api::LinuxDeviceCgroup {
            allow: true,
            r#type: typ.into(),
            major: i64v(4),
            minor: None,
            access: access.into(),
        };
        let adj = resources_adj(api::LinuxResources {
            devices: vec![rule("c", "rw")],
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        assert_eq!(rules(&s), ["-a *:* rwm", "+c 10:229 rwm", "+c 4:* rw"]);

        for bad in [rule("x", "rw"), rule("c", ""), rule("c", "rwx")] {
            let adj = resources_adj(api::LinuxResources {
                devices: vec![bad],
                ..Default::default()
            });
            assert_eq!(
                apply_err(&mut s, &adj, &v2()).field,
                "linux.resources.devices"
            );
        }
    }

    #[test]
    fn blockio_and_rdt_classes_are_refused() {
        let class = |value: &str| {
            Some(api::OptionalString {
                value: value.into(),
            })
        };
        let mut s = spec();
        let err = apply_err(
            &mut s,
            &resources_adj(api::LinuxResources {
                blockio_class: class("gold"),
                ..Default::default()
            }),
            &v2(),
        );
        assert_eq!(err.kind, ApplyErrorKind::Unsupported);
        assert_eq!(
            err.to_string(),
            "NRI plugin 10-test: linux.resources.blockio_class: class \"gold\" cannot be \
             applied: skiff has no blockio classes configured"
        );
        let err = apply_err(
            &mut s,
            &resources_adj(api::LinuxResources {
                rdt_class: class("silver"),
                ..Default::default()
            }),
            &v2(),
        );
        assert_eq!(err.field, "linux.resources.rdt_class");
        assert!(err.reason.contains("no RDT classes"), "{err}");

        // No class is what every container has already.
        apply_ok(
            &mut s,
            &resources_adj(api::LinuxResources {
                blockio_class: class(""),
                rdt_class: class(""),
                ..Default::default()
            }),
        );
    }

    #[test]
    fn cgroups_path_is_replaced_and_reported() {
        let mut s = spec();
        let adj = linux_adj(api::LinuxContainerAdjustment {
            cgroups_path: "kubepods-besteffort.slice:skiff:abc".into(),
            ..Default::default()
        });
        let applied = apply_ok(&mut s, &adj);
        assert_eq!(
            applied.cgroups_path.as_deref(),
            Some("kubepods-besteffort.slice:skiff:abc")
        );
        assert_eq!(
            s.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("kubepods-besteffort.slice:skiff:abc"))
        );
        let bad = linux_adj(api::LinuxContainerAdjustment {
            cgroups_path: "/kubepods/../../system.slice".into(),
            ..Default::default()
        });
        assert_eq!(apply_err(&mut s, &bad, &v2()).field, "linux.cgroups_path");
    }

    #[test]
    fn oom_score_adj_is_clamped() {
        let oom = |value| {
            linux_adj(api::LinuxContainerAdjustment {
                oom_score_adj: Some(api::OptionalInt { value }),
                ..Default::default()
            })
        };
        let mut s = spec();
        let applied = apply_ok(&mut s, &oom(-999));
        assert_eq!(process(&s).oom_score_adj(), Some(0));
        assert_eq!(applied.clamped, ["linux.oom_score_adj -999 clamped to 0"]);
        apply_ok(&mut s, &oom(5000));
        assert_eq!(process(&s).oom_score_adj(), Some(1000));
        let applied = apply_ok(&mut s, &oom(500));
        assert_eq!(process(&s).oom_score_adj(), Some(500));
        assert!(applied.clamped.is_empty());
        // Where the node allows negative scores, they pass down to -1000.
        apply(&mut s, PLUGIN, &oom(-5000), &v1()).unwrap();
        assert_eq!(process(&s).oom_score_adj(), Some(-1000));
    }

    #[test]
    fn io_priority_is_set_cleared_and_checked() {
        let prio = |class: api::IoPrioClass, priority| {
            linux_adj(api::LinuxContainerAdjustment {
                io_priority: Some(api::LinuxIoPriority {
                    class: class.into(),
                    priority,
                }),
                ..Default::default()
            })
        };
        let mut s = spec();
        apply_ok(&mut s, &prio(api::IoPrioClass::IoprioClassRt, 2));
        let io = process(&s).io_priority().unwrap();
        assert_eq!(
            (io.class(), io.priority()),
            (IOPriorityClass::IoprioClassRt, 2)
        );
        apply_ok(&mut s, &prio(api::IoPrioClass::IoprioClassNone, 0));
        assert!(process(&s).io_priority().is_none());
        assert_eq!(
            apply_err(&mut s, &prio(api::IoPrioClass::IoprioClassBe, 8), &v2()).field,
            "linux.io_priority"
        );
        let mut bad = prio(api::IoPrioClass::IoprioClassBe, 0);
        bad.linux
            .as_mut()
            .unwrap()
            .io_priority
            .as_mut()
            .unwrap()
            .class = 9;
        assert_eq!(apply_err(&mut s, &bad, &v2()).field, "linux.io_priority");
    }

    #[test]
    fn scheduler_is_set_cleared_and_checked() {
        let sched = |policy: i32, priority: i32, flags: Vec<i32>| {
            linux_adj(api::LinuxContainerAdjustment {
                scheduler: Some(api::LinuxScheduler {
                    policy,
                    priority,
                    flags,
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let fifo = api::LinuxSchedulerPolicy::SchedFifo.into();
        let mut s = spec();
        let reset = api::LinuxSchedulerFlag::SchedFlagResetOnFork.into();
        apply_ok(&mut s, &sched(fifo, 10, vec![reset]));
        let sch = process(&s).scheduler().as_ref().unwrap();
        assert_eq!(*sch.policy(), LinuxSchedulerPolicy::SchedFifo);
        assert_eq!(*sch.priority(), Some(10));
        assert_eq!(*sch.nice(), None);
        assert_eq!(
            sch.flags().as_deref(),
            Some(&[LinuxSchedulerFlag::SchedResetOnFork][..])
        );
        apply_ok(
            &mut s,
            &sched(api::LinuxSchedulerPolicy::SchedNone.into(), 0, vec![]),
        );
        assert!(process(&s).scheduler().is_none());
        for bad in [
            sched(42, 0, vec![]),
            sched(fifo, 100, vec![]),
            sched(fifo, 1, vec![77]),
        ] {
            assert_eq!(apply_err(&mut s, &bad, &v2()).field, "linux.scheduler");
        }
    }

    #[test]
    fn memory_policy_is_set_and_checked() {
        let mpol = |mode: api::MpolMode, nodes: &str| {
            linux_adj(api::LinuxContainerAdjustment {
                memory_policy: Some(api::LinuxMemoryPolicy {
                    mode: mode.into(),
                    nodes: nodes.into(),
                    flags: vec![api::MpolFlag::MpolFStaticNodes.into()],
                }),
                ..Default::default()
            })
        };
        let mut s = spec();
        apply_ok(&mut s, &mpol(api::MpolMode::MpolBind, "0-1,3"));
        let p = s
            .linux()
            .as_ref()
            .unwrap()
            .memory_policy()
            .as_ref()
            .unwrap();
        assert_eq!(p.mode(), MemoryPolicyModeType::MpolBind);
        assert_eq!(p.nodes().as_deref(), Some("0-1,3"));
        assert_eq!(
            p.flags().as_deref(),
            Some(&[MemoryPolicyFlagType::MpolFStaticNodes][..])
        );
        assert_eq!(
            apply_err(&mut s, &mpol(api::MpolMode::MpolBind, "zero"), &v2()).field,
            "linux.memory_policy"
        );
    }

    fn seccomp_policy(action: &str, arch: &str, op: &str) -> api::ContainerAdjustment {
        linux_adj(api::LinuxContainerAdjustment {
            seccomp_policy: Some(api::LinuxSeccomp {
                default_action: "SCMP_ACT_ERRNO".into(),
                default_errno: Some(api::OptionalUInt32 { value: 38 }),
                architectures: vec![arch.into()],
                flags: vec!["SECCOMP_FILTER_FLAG_LOG".into()],
                syscalls: vec![api::LinuxSyscall {
                    names: vec!["clone".into()],
                    action: action.into(),
                    errno_ret: Some(api::OptionalUInt32 { value: 1 }),
                    args: vec![api::LinuxSeccompArg {
                        index: 0,
                        value: 0x7E02_0000,
                        value_two: 0,
                        op: op.into(),
                    }],
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn seccomp_policy_replaces_the_profile() {
        let mut s = spec();
        apply_ok(
            &mut s,
            &seccomp_policy("SCMP_ACT_ERRNO", "SCMP_ARCH_AARCH64", "SCMP_CMP_MASKED_EQ"),
        );
        let sc = s.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(sc.default_errno_ret(), Some(38));
        assert_eq!(
            sc.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64][..])
        );
        assert_eq!(
            sc.flags().as_deref(),
            Some(&[LinuxSeccompFilterFlag::SeccompFilterFlagLog][..])
        );
        let rules = sc.syscalls().as_ref().unwrap();
        assert_eq!(rules.len(), 1, "the old rules are gone");
        assert_eq!(rules[0].names(), &["clone".to_owned()]);
        assert_eq!(rules[0].errno_ret(), Some(1));
        let arg = rules[0].args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(
            (arg.index(), arg.value(), arg.value_two()),
            (0, 0x7E02_0000, None)
        );
    }

    #[test]
    fn unknown_seccomp_names_are_refused() {
        for (adj, what) in [
            (
                seccomp_policy("SCMP_ACT_BOGUS", "SCMP_ARCH_X86_64", "SCMP_CMP_EQ"),
                "action",
            ),
            (
                seccomp_policy("SCMP_ACT_ALLOW", "SCMP_ARCH_VAX", "SCMP_CMP_EQ"),
                "architecture",
            ),
            (
                seccomp_policy("SCMP_ACT_ALLOW", "SCMP_ARCH_X86_64", "SCMP_CMP_ALMOST"),
                "operator",
            ),
            (
                seccomp_policy("SCMP_ACT_NOTIFY", "SCMP_ARCH_X86_64", "SCMP_CMP_EQ"),
                "listener_path",
            ),
        ] {
            let mut s = spec();
            let err = apply_err(&mut s, &adj, &v2());
            assert_eq!(err.field, "linux.seccomp_policy");
            assert!(err.reason.contains(what), "{err}");
        }
    }

    #[test]
    fn namespaces_are_added_replaced_and_removed() {
        let ns = |t: &str, path: &str| api::LinuxNamespace {
            r#type: t.into(),
            path: path.into(),
        };
        let mut s = spec();
        let adj = linux_adj(api::LinuxContainerAdjustment {
            namespaces: vec![
                ns("-net", ""),
                ns("ipc", "/proc/77/ns/ipc"),
                ns("time", ""),
                ns("-cgroup", ""),
            ],
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let got: Vec<_> = s
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .iter()
            .flatten()
            .map(|n| (oci_name!(n.typ()), n.path().as_deref().map(path_string)))
            .collect();
        assert_eq!(
            got,
            [
                ("pid".to_owned(), None),
                ("ipc".to_owned(), Some("/proc/77/ns/ipc".to_owned())),
                ("uts".to_owned(), Some("/proc/42/ns/uts".to_owned())),
                ("mount".to_owned(), None),
                ("time".to_owned(), None),
            ]
        );
        for bad in [ns("bogus", ""), ns("-bogus", ""), ns("net", "relative")] {
            let adj = linux_adj(api::LinuxContainerAdjustment {
                namespaces: vec![bad],
                ..Default::default()
            });
            assert_eq!(apply_err(&mut s, &adj, &v2()).field, "linux.namespaces");
        }
    }

    #[test]
    fn sysctls_are_set_and_removed() {
        let mut s = spec();
        let adj = linux_adj(api::LinuxContainerAdjustment {
            sysctl: HashMap::from([
                ("-net.ipv4.ip_forward".to_owned(), String::new()),
                ("net.core.somaxconn".to_owned(), "4096".to_owned()),
            ]),
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        assert_eq!(
            s.linux().as_ref().unwrap().sysctl().as_ref().unwrap(),
            &HashMap::from([("net.core.somaxconn".to_owned(), "4096".to_owned())])
        );
    }

    #[test]
    fn net_devices_are_added_and_removed() {
        let mut s = spec();
        let adj = linux_adj(api::LinuxContainerAdjustment {
            net_devices: HashMap::from([
                ("-eth9".to_owned(), api::LinuxNetDevice::default()),
                (
                    "ens5".to_owned(),
                    api::LinuxNetDevice {
                        name: "net2".into(),
                    },
                ),
                ("ens6".to_owned(), api::LinuxNetDevice::default()),
            ]),
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let devs = s.linux().as_ref().unwrap().net_devices().as_ref().unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!(devs["ens5"].name().as_deref(), Some("net2"));
        assert_eq!(
            devs["ens6"].name().as_deref(),
            None,
            "keeps the host's name"
        );
    }

    #[test]
    fn rdt_is_set_and_removed() {
        let mut s = spec();
        let adj = linux_adj(api::LinuxContainerAdjustment {
            rdt: Some(api::LinuxRdt {
                clos_id: Some(api::OptionalString {
                    value: "silver".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let rdt = s.linux().as_ref().unwrap().intel_rdt().as_ref().unwrap();
        assert_eq!(rdt.clos_id().as_deref(), Some("silver"));
        assert_eq!(rdt.schemata().as_deref(), Some(&["L3:0=ff".to_owned()][..]));

        // Removal and new values in one adjustment: a fresh configuration.
        let adj = linux_adj(api::LinuxContainerAdjustment {
            rdt: Some(api::LinuxRdt {
                remove: true,
                enable_monitoring: Some(api::OptionalBool { value: true }),
                ..Default::default()
            }),
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let rdt = s.linux().as_ref().unwrap().intel_rdt().as_ref().unwrap();
        assert_eq!(rdt.clos_id(), &None);
        assert_eq!(*rdt.enable_monitoring(), Some(true));

        let adj = linux_adj(api::LinuxContainerAdjustment {
            rdt: Some(api::LinuxRdt {
                remove: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        assert!(s.linux().as_ref().unwrap().intel_rdt().is_none());
    }

    #[test]
    fn cdi_devices_are_refused() {
        let mut s = spec();
        let adj = api::ContainerAdjustment {
            cdi_devices: vec![api::CdiDevice {
                name: "nvidia.com/gpu=0".into(),
            }],
            ..Default::default()
        };
        let err = apply_err(&mut s, &adj, &v2());
        assert_eq!(err.kind, ApplyErrorKind::Unsupported);
        assert_eq!(err.field, "CDI_devices");
        let message = err.to_string();
        assert!(message.contains("10-test"), "{message}");
        assert!(message.contains("nvidia.com/gpu=0"), "{message}");
    }

    #[test]
    fn a_refused_adjustment_changes_nothing() {
        let mut s = spec();
        // Everything before the bad namespace would apply on its own.
        let adj = api::ContainerAdjustment {
            annotations: HashMap::from([("a".to_owned(), "b".to_owned())]),
            env: vec![kv("X", "1")],
            mounts: vec![mount("/x", "/x", &["rbind"])],
            linux: Some(api::LinuxContainerAdjustment {
                cgroups_path: "elsewhere".into(),
                namespaces: vec![api::LinuxNamespace {
                    r#type: "nope".into(),
                    path: String::new(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = apply_err(&mut s, &adj, &v2());
        assert_eq!(err.field, "linux.namespaces");
        let _: String = err.into();
    }

    #[test]
    fn an_empty_adjustment_changes_nothing() {
        let mut bare: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.2.0",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/pause"], "cwd": "/"},
            "root": {"path": "rootfs"}
        }))
        .unwrap();
        let before = bare.clone();
        let empty = api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment::default()),
            hooks: Some(api::Hooks::default()),
            ..Default::default()
        };
        assert_eq!(apply_ok(&mut bare, &empty), Applied::default());
        assert_eq!(bare, before);
        let mut s = spec();
        apply_ok(&mut s, &empty);
        assert_eq!(s, spec());
    }

    #[test]
    fn a_spec_without_linux_gets_an_empty_one() {
        let mut s = spec();
        s.set_linux(None);
        let adj = linux_adj(api::LinuxContainerAdjustment {
            sysctl: HashMap::from([("kernel.shm_rmid_forced".to_owned(), "1".to_owned())]),
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.namespaces().is_none(), "no invented namespaces");
        assert!(linux.masked_paths().is_none());
        assert_eq!(linux.sysctl().as_ref().unwrap().len(), 1);
    }

    #[test]
    fn updates_apply_to_resources_alone() {
        let mut res = resources(&spec()).clone();
        let update = api::LinuxResources {
            memory: Some(api::LinuxMemory {
                limit: i64v(1 << 30),
                ..Default::default()
            }),
            cpu: Some(api::LinuxCpu {
                quota: i64v(200_000),
                ..Default::default()
            }),
            pids: Some(api::LinuxPids { limit: 2048 }),
            ..Default::default()
        };
        apply_resources(&mut res, PLUGIN, &update, &v2()).unwrap();
        let m = res.memory().unwrap();
        assert_eq!(
            (m.limit(), m.swap(), m.reservation()),
            (Some(1 << 30), Some(1 << 30), Some(134_217_728))
        );
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(200_000));
        assert_eq!(res.cpu().as_ref().unwrap().period(), Some(100_000));
        assert_eq!(res.pids().unwrap().limit(), 2048);

        let before = res.clone();
        let bad = api::LinuxResources {
            pids: Some(api::LinuxPids { limit: 10 }),
            blockio_class: Some(api::OptionalString {
                value: "slow".into(),
            }),
            ..Default::default()
        };
        let err = apply_resources(&mut res, PLUGIN, &bad, &v2()).unwrap_err();
        assert_eq!(err.field, "resources.blockio_class");
        assert_eq!(res, before);
    }

    #[test]
    fn a_container_is_described_from_its_spec() {
        let parts = container_from_spec(&spec());
        assert_eq!(parts.args, ["/bin/app", "--serve"]);
        assert_eq!(parts.env.len(), 3);
        assert_eq!(parts.annotations["io.kubernetes.cri.sandbox-id"], "abc");
        assert_eq!(parts.mounts.len(), 5);
        assert_eq!(
            parts.mounts[3],
            api::Mount {
                destination: "/dev/shm".into(),
                r#type: "bind".into(),
                source: "/run/skiff/pods/abc/shm".into(),
                options: vec!["rbind".into(), "ro".into()],
            }
        );
        let hooks = parts.hooks.as_ref().unwrap();
        assert_eq!(hooks.create_runtime[0].path, "/usr/libexec/hook");
        assert_eq!(
            hooks.create_runtime[0].timeout,
            Some(api::OptionalInt { value: 5 })
        );
        assert_eq!(
            parts.rlimits,
            [api::PosixRlimit {
                r#type: "RLIMIT_NOFILE".into(),
                hard: 1_048_576,
                soft: 1_048_576
            }]
        );
        assert_eq!(
            parts.user,
            Some(api::User {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![1000, 44]
            })
        );

        let linux = parts.linux.as_ref().unwrap();
        let ns: Vec<_> = linux.namespaces.iter().map(|n| n.r#type.as_str()).collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network", "cgroup"]);
        assert_eq!(linux.namespaces[4].path, "/var/run/netns/cni-1");
        assert_eq!(
            linux.devices,
            [api::LinuxDevice {
                path: "/dev/fuse".into(),
                r#type: "c".into(),
                major: 10,
                minor: 229,
                file_mode: Some(api::OptionalFileMode { value: 0o666 }),
                uid: Some(api::OptionalUInt32 { value: 0 }),
                gid: Some(api::OptionalUInt32 { value: 0 }),
            }]
        );
        assert_eq!(linux.oom_score_adj, Some(api::OptionalInt { value: 936 }));
        assert_eq!(linux.cgroups_path, "kubepods-burstable.slice:skiff:abc");
        assert_eq!(
            linux.io_priority,
            Some(api::LinuxIoPriority {
                class: api::IoPrioClass::IoprioClassBe.into(),
                priority: 4
            })
        );
        let sch = linux.scheduler.as_ref().unwrap();
        assert_eq!(sch.policy, i32::from(api::LinuxSchedulerPolicy::SchedBatch));
        assert_eq!(sch.nice, 5);
        assert_eq!(linux.sysctl["net.ipv4.ip_forward"], "0");
        assert_eq!(linux.net_devices["eth9"].name, "net1");
        let rdt = linux.rdt.as_ref().unwrap();
        assert_eq!(rdt.clos_id.as_ref().unwrap().value, "gold");
        assert_eq!(
            rdt.enable_monitoring,
            Some(api::OptionalBool { value: true })
        );
        let sc = linux.seccomp_policy.as_ref().unwrap();
        assert_eq!(sc.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(sc.architectures, ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]);
        assert_eq!(sc.flags, ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]);
        assert_eq!(sc.syscalls[1].args[0].op, "SCMP_CMP_EQ");

        let res = linux.resources.as_ref().unwrap();
        assert_eq!(res.memory.as_ref().unwrap().limit, i64v(268_435_456));
        assert_eq!(res.cpu.as_ref().unwrap().cpus, "0-1");
        assert_eq!(res.pids, Some(api::LinuxPids { limit: 1024 }));
        assert_eq!(res.devices.len(), 2);
        assert_eq!(res.devices[0].r#type, "");
        assert_eq!(res.devices[1].major, i64v(10));
        assert_eq!(res.unified["memory.oom.group"], "1");

        let mut container = api::Container {
            id: "abc".into(),
            ..Default::default()
        };
        parts.clone().fill(&mut container);
        assert_eq!(container.id, "abc");
        assert_eq!(container.linux, parts.linux);
    }

    #[test]
    fn descriptions_round_trip_through_adjustments() {
        let original = spec();
        let parts = container_from_spec(&original);
        let linux = parts.linux.clone().unwrap();

        // Resources: NRI's view applied to nothing gives back the spec's resources.
        let mut res = LinuxResources::default();
        apply_resources(&mut res, PLUGIN, linux.resources.as_ref().unwrap(), &v2()).unwrap();
        assert_eq!(&res, resources(&original));

        // The seccomp profile and scheduler, fed back as an adjustment, come back equal.
        let mut s = original.clone();
        s.linux_mut().as_mut().unwrap().set_seccomp(None);
        s.process_mut().as_mut().unwrap().set_scheduler(None);
        let adj = linux_adj(api::LinuxContainerAdjustment {
            seccomp_policy: linux.seccomp_policy.clone(),
            scheduler: linux.scheduler.clone(),
            io_priority: linux.io_priority,
            ..Default::default()
        });
        apply_ok(&mut s, &adj);
        assert_eq!(s, original);

        // And the description of the adjusted spec is the description we started from.
        assert_eq!(container_from_spec(&s), parts);
    }

    #[test]
    fn helpers_parse_lists_and_sizes() {
        assert!(is_id_list("0"));
        assert!(is_id_list("0-3,6,8-9"));
        assert!(!is_id_list(""));
        assert!(!is_id_list("1,,2"));
        assert!(!is_id_list("+1"));
        assert!(is_page_size("64KB"));
        assert!(is_page_size("1GB"));
        assert!(!is_page_size("1gB"));
        assert!(!is_page_size("2048"));
        assert_eq!(
            clean_path(Path::new("/a/./b/../c/")),
            clean_path(Path::new("/a/c"))
        );
    }
}
