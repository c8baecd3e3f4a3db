//! Collecting plugins' answers to CreateContainer and UpdateContainer: who adjusts
//! what, refusing two plugins that touch the same thing.
//!
//! Every adjustable field has one owner. A simple field (the memory limit, the args)
//! is owned by the plugin that set it; a compound one (annotations, mounts, env,
//! devices, ...) is owned entry by entry (by annotation key, mount destination,
//! variable name, ...). Removing an entry (`-key`) claims it as setting it does. A
//! second plugin claiming an owned field is a conflict: the call fails naming both.

use std::collections::HashMap;

use crate::api;
use crate::api::Field;

/// The message for two plugins claiming one field.
pub fn owner_conflict(what: &str, first: &str, second: &str) -> String {
    format!("plugins {first:?} and {second:?} both adjust {what}: conflicting adjustments")
}

/// Owners of one container's fields.
#[derive(Debug, Default, Clone)]
pub(crate) struct Owners {
    simple: HashMap<i32, String>,
    compound: HashMap<i32, HashMap<String, String>>,
}

impl Owners {
    fn simple(&mut self, f: Field, plugin: &str, what: &str) -> Result<(), String> {
        match self.simple.get(&(f as i32)) {
            Some(owner) if owner != plugin => Err(owner_conflict(what, owner, plugin)),
            _ => {
                self.simple.insert(f as i32, plugin.to_string());
                Ok(())
            }
        }
    }

    fn compound(&mut self, f: Field, key: &str, plugin: &str, what: &str) -> Result<(), String> {
        let key = key.strip_prefix('-').unwrap_or(key);
        let entries = self.compound.entry(f as i32).or_default();
        match entries.get(key) {
            Some(owner) if owner != plugin => {
                Err(owner_conflict(&format!("{what} {key:?}"), owner, plugin))
            }
            _ => {
                entries.insert(key.to_string(), plugin.to_string());
                Ok(())
            }
        }
    }

    /// As the API's `FieldOwners`.
    pub fn to_api(&self) -> api::FieldOwners {
        api::FieldOwners {
            simple: self.simple.clone(),
            compound: self
                .compound
                .iter()
                .map(|(k, v)| (*k, api::CompoundFieldOwners { owners: v.clone() }))
                .collect(),
        }
    }

    /// Claim everything `adj` touches for `plugin`.
    pub fn claim_adjustment(
        &mut self,
        plugin: &str,
        adj: &api::ContainerAdjustment,
    ) -> Result<(), String> {
        for k in adj.annotations.keys() {
            self.compound(Field::Annotations, k, plugin, "annotation")?;
        }
        for m in &adj.mounts {
            self.compound(Field::Mounts, &m.destination, plugin, "mount")?;
        }
        for e in &adj.env {
            self.compound(Field::Env, &e.key, plugin, "environment variable")?;
        }
        if let Some(h) = &adj.hooks
            && hooks_len(h) > 0
        {
            // Hooks accumulate: every plugin may add some. Recorded, never a conflict.
            self.compound.entry(Field::OciHooks as i32).or_default();
        }
        for r in &adj.rlimits {
            self.compound(Field::Rlimits, &r.r#type, plugin, "rlimit")?;
        }
        for d in &adj.cdi_devices {
            self.compound(Field::CdiDevices, &d.name, plugin, "CDI device")?;
        }
        if !adj.args.is_empty() {
            self.simple(Field::Args, plugin, "the process arguments")?;
        }
        if let Some(l) = &adj.linux {
            for d in &l.devices {
                self.compound(Field::Devices, &d.path, plugin, "device")?;
            }
            if let Some(r) = &l.resources {
                self.claim_resources(plugin, r)?;
            }
            if !l.cgroups_path.is_empty() {
                self.simple(Field::CgroupsPath, plugin, "the cgroups path")?;
            }
            if l.oom_score_adj.is_some() {
                self.simple(Field::OomScoreAdj, plugin, "the OOM score adjustment")?;
            }
            if l.io_priority.is_some() {
                self.simple(Field::IoPriority, plugin, "the I/O priority")?;
            }
            if l.seccomp_policy.is_some() {
                self.simple(Field::SeccompPolicy, plugin, "the seccomp policy")?;
            }
            for n in &l.namespaces {
                self.compound(Field::Namespace, &n.r#type, plugin, "namespace")?;
            }
            for k in l.sysctl.keys() {
                self.compound(Field::Sysctl, k, plugin, "sysctl")?;
            }
            for k in l.net_devices.keys() {
                self.compound(Field::LinuxNetDevices, k, plugin, "network device")?;
            }
            if l.scheduler.is_some() {
                self.simple(Field::LinuxSched, plugin, "the scheduling policy")?;
            }
            if l.rdt.is_some() {
                self.simple(Field::RdtClosId, plugin, "the RDT settings")?;
            }
            if l.memory_policy.is_some() {
                self.simple(Field::MemoryPolicy, plugin, "the memory policy")?;
            }
        }
        Ok(())
    }

    /// Claim the resource fields `r` sets for `plugin`.
    pub fn claim_resources(&mut self, plugin: &str, r: &api::LinuxResources) -> Result<(), String> {
        if let Some(m) = &r.memory {
            for (set, f, what) in [
                (m.limit.is_some(), Field::MemLimit, "the memory limit"),
                (
                    m.reservation.is_some(),
                    Field::MemReservation,
                    "the memory reservation",
                ),
                (m.swap.is_some(), Field::MemSwapLimit, "the swap limit"),
                (
                    m.kernel.is_some(),
                    Field::MemKernelLimit,
                    "the kernel memory limit",
                ),
                (
                    m.kernel_tcp.is_some(),
                    Field::MemTcpLimit,
                    "the kernel TCP memory limit",
                ),
                (
                    m.swappiness.is_some(),
                    Field::MemSwappiness,
                    "the swappiness",
                ),
                (
                    m.disable_oom_killer.is_some(),
                    Field::MemDisableOomKiller,
                    "the OOM killer setting",
                ),
                (
                    m.use_hierarchy.is_some(),
                    Field::MemUseHierarchy,
                    "the memory hierarchy setting",
                ),
            ] {
                if set {
                    self.simple(f, plugin, what)?;
                }
            }
        }
        if let Some(c) = &r.cpu {
            for (set, f, what) in [
                (c.shares.is_some(), Field::CpuShares, "the CPU shares"),
                (c.quota.is_some(), Field::CpuQuota, "the CPU quota"),
                (c.period.is_some(), Field::CpuPeriod, "the CPU period"),
                (
                    c.realtime_runtime.is_some(),
                    Field::CpuRealtimeRuntime,
                    "the realtime CPU runtime",
                ),
                (
                    c.realtime_period.is_some(),
                    Field::CpuRealtimePeriod,
                    "the realtime CPU period",
                ),
                (!c.cpus.is_empty(), Field::CpuSetCpUs, "the cpuset CPUs"),
                (
                    !c.mems.is_empty(),
                    Field::CpuSetMems,
                    "the cpuset memory nodes",
                ),
            ] {
                if set {
                    self.simple(f, plugin, what)?;
                }
            }
        }
        for h in &r.hugepage_limits {
            self.compound(
                Field::HugepageLimits,
                &h.page_size,
                plugin,
                "hugepage limit",
            )?;
        }
        if r.blockio_class.is_some() {
            self.simple(Field::BlockioClass, plugin, "the block I/O class")?;
        }
        if r.rdt_class.is_some() {
            self.simple(Field::RdtClass, plugin, "the RDT class")?;
        }
        for k in r.unified.keys() {
            self.compound(Field::CgroupsUnified, k, plugin, "unified cgroup setting")?;
        }
        if r.pids.is_some() {
            self.simple(Field::PidsLimit, plugin, "the pids limit")?;
        }
        Ok(())
    }
}

fn hooks_len(h: &api::Hooks) -> usize {
    h.prestart.len()
        + h.create_runtime.len()
        + h.create_container.len()
        + h.start_container.len()
        + h.poststart.len()
        + h.poststop.len()
}

/// Plugins' answers to one CreateContainer, checked for conflicts.
#[derive(Debug, Default, Clone)]
pub struct Adjusted {
    /// Each plugin's adjustment (`NN-name`, adjustment), in the order they were asked;
    /// applied to the spec in that order.
    pub adjustments: Vec<(String, api::ContainerAdjustment)>,
    /// Updates to other containers, with the plugin asking.
    pub updates: Vec<(String, api::ContainerUpdate)>,
    /// Evictions of other containers, with the plugin asking.
    pub evictions: Vec<(String, api::ContainerEviction)>,
    owners: Owners,
    update_owners: HashMap<String, Owners>,
}

impl Adjusted {
    /// Record `plugin`'s answer; a conflict with an earlier plugin is an error.
    pub(crate) fn add(
        &mut self,
        plugin: &str,
        reply: api::CreateContainerResponse,
        target: &str,
    ) -> Result<(), String> {
        if let Some(adj) = reply.adjust {
            self.owners.claim_adjustment(plugin, &adj)?;
            self.adjustments.push((plugin.to_string(), adj));
        }
        self.add_updates(plugin, reply.update, target)?;
        for e in reply.evict {
            self.evictions.push((plugin.to_string(), e));
        }
        Ok(())
    }

    /// Record updates `plugin` asks for. Updates of the container being created are
    /// refused (that is what its adjustment is for).
    pub(crate) fn add_updates(
        &mut self,
        plugin: &str,
        updates: Vec<api::ContainerUpdate>,
        target: &str,
    ) -> Result<(), String> {
        for u in updates {
            if u.container_id == target {
                return Err(format!(
                    "plugin {plugin:?} sent an update for the container being created; \
                     adjust it instead"
                ));
            }
            if let Some(r) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) {
                self.update_owners
                    .entry(u.container_id.clone())
                    .or_default()
                    .claim_resources(plugin, r)
                    .map_err(|e| format!("container {}: {e}", u.container_id))?;
            }
            self.updates.push((plugin.to_string(), u));
        }
        Ok(())
    }

    /// All adjustments merged into one (for validating plugins): maps and lists joined,
    /// simple fields from their owner.
    pub fn merged(&self) -> api::ContainerAdjustment {
        let mut out = api::ContainerAdjustment::default();
        for (_, a) in &self.adjustments {
            out.annotations.extend(a.annotations.clone());
            out.mounts.extend(a.mounts.clone());
            out.env.extend(a.env.clone());
            if let Some(h) = &a.hooks {
                let o = out.hooks.get_or_insert_with(Default::default);
                o.prestart.extend(h.prestart.clone());
                o.create_runtime.extend(h.create_runtime.clone());
                o.create_container.extend(h.create_container.clone());
                o.start_container.extend(h.start_container.clone());
                o.poststart.extend(h.poststart.clone());
                o.poststop.extend(h.poststop.clone());
            }
            out.rlimits.extend(a.rlimits.clone());
            out.cdi_devices.extend(a.cdi_devices.clone());
            if !a.args.is_empty() {
                out.args = a.args.clone();
            }
            if let Some(l) = &a.linux {
                let o = out.linux.get_or_insert_with(Default::default);
                o.devices.extend(l.devices.clone());
                if let Some(r) = &l.resources {
                    merge_resources(o.resources.get_or_insert_with(Default::default), r);
                }
                if !l.cgroups_path.is_empty() {
                    o.cgroups_path = l.cgroups_path.clone();
                }
                if l.oom_score_adj.is_some() {
                    o.oom_score_adj = l.oom_score_adj;
                }
                if l.io_priority.is_some() {
                    o.io_priority = l.io_priority;
                }
                if l.seccomp_policy.is_some() {
                    o.seccomp_policy = l.seccomp_policy.clone();
                }
                o.namespaces.extend(l.namespaces.clone());
                o.sysctl.extend(l.sysctl.clone());
                o.net_devices.extend(l.net_devices.clone());
                if l.scheduler.is_some() {
                    o.scheduler = l.scheduler.clone();
                }
                if l.rdt.is_some() {
                    o.rdt = l.rdt.clone();
                }
                if l.memory_policy.is_some() {
                    o.memory_policy = l.memory_policy.clone();
                }
            }
        }
        out
    }

    /// Who owns what, for validating plugins (keyed by container id).
    pub fn owners(&self, container_id: &str) -> api::OwningPlugins {
        let mut owners = HashMap::from([(container_id.to_string(), self.owners.to_api())]);
        for (id, o) in &self.update_owners {
            owners.insert(id.clone(), o.to_api());
        }
        api::OwningPlugins { owners }
    }
}

/// Overlay the fields `r` sets onto `into`.
pub(crate) fn merge_resources(into: &mut api::LinuxResources, r: &api::LinuxResources) {
    if let Some(m) = &r.memory {
        let o = into.memory.get_or_insert_with(Default::default);
        macro_rules! take {
            ($($f:ident),*) => { $( if m.$f.is_some() { o.$f = m.$f; } )* };
        }
        take!(
            limit,
            reservation,
            swap,
            kernel,
            kernel_tcp,
            swappiness,
            disable_oom_killer,
            use_hierarchy
        );
    }
    if let Some(c) = &r.cpu {
        let o = into.cpu.get_or_insert_with(Default::default);
        macro_rules! take {
            ($($f:ident),*) => { $( if c.$f.is_some() { o.$f = c.$f; } )* };
        }
        take!(shares, quota, period, realtime_runtime, realtime_period);
        if !c.cpus.is_empty() {
            o.cpus = c.cpus.clone();
        }
        if !c.mems.is_empty() {
            o.mems = c.mems.clone();
        }
    }
    for h in &r.hugepage_limits {
        into.hugepage_limits.retain(|x| x.page_size != h.page_size);
        into.hugepage_limits.push(h.clone());
    }
    if r.blockio_class.is_some() {
        into.blockio_class = r.blockio_class.clone();
    }
    if r.rdt_class.is_some() {
        into.rdt_class = r.rdt_class.clone();
    }
    into.unified.extend(r.unified.clone());
    into.devices.extend(r.devices.clone());
    if r.pids.is_some() {
        into.pids = r.pids;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adj_with_annotation(k: &str) -> api::ContainerAdjustment {
        api::ContainerAdjustment {
            annotations: HashMap::from([(k.to_string(), "v".to_string())]),
            ..Default::default()
        }
    }

    fn with_adjust(a: api::ContainerAdjustment) -> api::CreateContainerResponse {
        api::CreateContainerResponse {
            adjust: Some(a),
            ..Default::default()
        }
    }

    #[test]
    fn two_plugins_setting_one_annotation_conflict_naming_both() {
        let mut r = Adjusted::default();
        r.add("10-a", with_adjust(adj_with_annotation("x")), "c")
            .unwrap();
        r.add("20-b", with_adjust(adj_with_annotation("y")), "c")
            .unwrap();
        let e = r
            .add("30-c", with_adjust(adj_with_annotation("-x")), "c")
            .unwrap_err();
        assert!(
            e.contains("\"10-a\"") && e.contains("\"30-c\"") && e.contains("\"x\""),
            "{e}"
        );
    }

    #[test]
    fn one_plugin_may_remove_and_set_the_same_entry() {
        let mut r = Adjusted::default();
        let mut a = adj_with_annotation("-x");
        a.annotations.insert("x".into(), "new".into());
        r.add("10-a", with_adjust(a), "c").unwrap();
    }

    #[test]
    fn simple_fields_conflict_and_hooks_accumulate() {
        let mem = |v| api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment {
                resources: Some(api::LinuxResources {
                    memory: Some(api::LinuxMemory {
                        limit: Some(api::OptionalInt64 { value: v }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            hooks: Some(api::Hooks {
                prestart: vec![api::Hook {
                    path: "/bin/true".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut r = Adjusted::default();
        r.add("10-a", with_adjust(mem(1 << 20)), "c").unwrap();
        let e = r.add("20-b", with_adjust(mem(2 << 20)), "c").unwrap_err();
        assert!(e.contains("memory limit"), "{e}");
        let mut r = Adjusted::default();
        let mut only_hooks = mem(0);
        only_hooks.linux = None;
        r.add("10-a", with_adjust(only_hooks.clone()), "c").unwrap();
        r.add("20-b", with_adjust(only_hooks), "c").unwrap();
        assert_eq!(r.merged().hooks.unwrap().prestart.len(), 2);
    }

    #[test]
    fn updates_of_the_created_container_are_refused() {
        let mut r = Adjusted::default();
        let reply = api::CreateContainerResponse {
            update: vec![api::ContainerUpdate {
                container_id: "c".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(r.add("10-a", reply, "c").is_err());
    }
}
