//! NRI in skiffd: pods and containers described to plugins, the adaptation's view of
//! the runtime ([`skiff_nri::Domain`]: synchronization, updates, evictions), and the
//! objects hidden from CRI while their creation hooks run.
//!
//! Where the hooks sit in the lifecycle (the pod and container RPCs call them):
//! RunPodSandbox once the sandbox is up, before it is visible; CreateContainer with
//! the OCI spec built, before the OCI runtime sees it (adjustments are applied to the
//! spec); StartContainer before the start; StopContainer once per container, when it
//! has stopped, whether asked to or by itself; StopPodSandbox after the pod's
//! containers stopped, before its sandbox is torn down; the Remove events after the
//! objects are gone.

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use skiff_cri::api;
use skiff_nri::api as nri;
use skiff_shim_proto::protocol::Request;

use super::records::{ContainerRecord, CtrState, PodRecord, PodState};
use super::{Runtime, RuntimeError, container_config, pod_config, shim};

/// Ids of pods and containers being created: not visible through CRI yet.
#[derive(Default)]
pub(super) struct Creating(std::sync::Mutex<HashSet<String>>);

impl Creating {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` is being created.
    pub(super) fn contains(&self, id: &str) -> bool {
        self.set().contains(id)
    }
}

/// Keeps an object hidden from CRI until dropped.
pub(super) struct Hidden<'a> {
    creating: &'a Creating,
    id: String,
}

impl<'a> Hidden<'a> {
    pub(super) fn new(creating: &'a Creating, id: &str) -> Hidden<'a> {
        creating.set().insert(id.to_string());
        Hidden {
            creating,
            id: id.to_string(),
        }
    }
}

impl Drop for Hidden<'_> {
    fn drop(&mut self) {
        self.creating.set().remove(&self.id);
    }
}

/// The runtime as the NRI adaptation sees it.
pub(super) struct NriDomain(pub(super) Weak<Runtime>);

#[skiff_nri::async_trait]
impl skiff_nri::Domain for NriDomain {
    async fn snapshot(&self) -> (Vec<nri::PodSandbox>, Vec<nri::Container>) {
        let Some(rt) = self.0.upgrade() else {
            return (Vec::new(), Vec::new());
        };
        let pods = rt
            .pods()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| !rt.creating.contains(&p.id))
            .map(|p| rt.nri_pod(&p))
            .collect();
        let containers = rt
            .containers()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !rt.creating.contains(&c.id) && !rt.creating.contains(&c.pod_id))
            .map(|mut c| {
                rt.refresh(&mut c);
                rt.nri_container(&c, None)
            })
            .collect();
        (pods, containers)
    }

    async fn update_containers(
        &self,
        plugin: &str,
        updates: Vec<nri::ContainerUpdate>,
    ) -> Vec<nri::ContainerUpdate> {
        let Some(rt) = self.0.upgrade() else {
            return updates;
        };
        let mut failed = Vec::new();
        for u in updates {
            if let Err(e) = rt.nri_update(plugin, &u).await {
                if u.ignore_failure {
                    tracing::debug!(plugin, container_id = %u.container_id, error = %e, "NRI update failed (ignored)");
                } else {
                    tracing::warn!(plugin, container_id = %u.container_id, error = %e, "NRI update failed");
                    failed.push(u);
                }
            }
        }
        failed
    }

    async fn evict_container(&self, id: &str, reason: &str) -> Result<(), String> {
        let Some(rt) = self.0.upgrade() else {
            return Err("skiffd is shutting down".into());
        };
        rt.nri_evict(id, reason).await.map_err(|e| e.to_string())
    }
}

impl Runtime {
    /// The NRI adaptation, when NRI is enabled.
    pub(super) fn nri(&self) -> Option<&Arc<skiff_nri::Adaptation>> {
        self.nri.get()
    }

    /// Start NRI: the socket and the pre-installed plugins. A failure is reported and
    /// skiffd runs on without NRI's socket.
    pub async fn start_nri(self: &Arc<Self>, cfg: &crate::config::NriConfig) {
        let domain: Arc<dyn skiff_nri::Domain> = Arc::new(NriDomain(Arc::downgrade(self)));
        let weak = Arc::downgrade(&domain);
        // The domain only holds the runtime weakly; the runtime keeps the domain.
        let _ = self.nri_domain.set(domain);
        let adaptation = skiff_nri::Adaptation::new(
            skiff_nri::Config {
                socket_path: cfg.socket_path.clone(),
                plugin_path: cfg.plugin_path.clone(),
                plugin_config_path: cfg.plugin_config_path.clone(),
                registration_timeout: cfg.registration_timeout,
                request_timeout: cfg.request_timeout,
                runtime_name: "skiff".into(),
                runtime_version: env!("CARGO_PKG_VERSION").into(),
                observer: Some({
                    let metrics = self.metrics.clone();
                    Arc::new(move |c: &skiff_nri::Call<'_>| metrics.nri_call(c))
                }),
            },
            weak,
        );
        let _ = self.nri.set(adaptation.clone());
        if let Err(e) = adaptation.start().await {
            tracing::error!(error = %e, "NRI: plugins cannot connect; skiffd runs on without them");
        }
    }

    /// Disconnect the NRI plugins (skiffd is stopping): launched ones are killed, the
    /// socket removed.
    pub fn stop_nri(&self) {
        if let Some(n) = self.nri() {
            n.shutdown();
        }
    }

    /// A pod as NRI describes it.
    pub(super) fn nri_pod(&self, p: &PodRecord) -> nri::PodSandbox {
        let c = pod_config(p);
        let m = c.metadata.clone().unwrap_or_default();
        let linux = c.linux.clone().unwrap_or_default();
        let v2 = self.host.cgroup_v2;
        let res = |r: Option<&api::LinuxContainerResources>| {
            r.map(|r| skiff_nri::apply::resources_to_nri(&crate::spec::linux_resources(r, v2)))
        };
        let mut namespaces = Vec::new();
        for (kind, path) in [
            ("network", &p.ns.net),
            ("ipc", &p.ns.ipc),
            ("uts", &p.ns.uts),
        ] {
            if let Some(path) = path {
                namespaces.push(nri::LinuxNamespace {
                    r#type: kind.into(),
                    path: path.display().to_string(),
                });
            }
        }
        nri::PodSandbox {
            id: p.id.clone(),
            name: m.name,
            uid: m.uid,
            namespace: m.namespace,
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            runtime_handler: p.handler.clone(),
            linux: Some(nri::LinuxPodSandbox {
                pod_overhead: res(linux.overhead.as_ref()),
                pod_resources: res(linux.resources.as_ref()),
                cgroup_parent: p.cgroup_parent.clone(),
                cgroups_path: p.pause_cgroup.clone().unwrap_or_default(),
                namespaces,
                resources: None,
            }),
            pid: p.pause_pid.unwrap_or(0),
            ips: p.ip.map(|ip| vec![ip.to_string()]).unwrap_or_default(),
        }
    }

    /// A container as NRI describes it: from its OCI spec (given, or read from its
    /// bundle) and its record.
    pub(super) fn nri_container(
        &self,
        c: &ContainerRecord,
        spec: Option<&oci_spec::runtime::Spec>,
    ) -> nri::Container {
        let read;
        let spec = match spec {
            Some(s) => Some(s),
            None => {
                read = std::fs::read(c.bundle.join("config.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<oci_spec::runtime::Spec>(&b).ok());
                read.as_ref()
            }
        };
        let cfg = container_config(c);
        let mut out = nri::Container::default();
        if let Some(s) = spec {
            skiff_nri::apply::container_from_spec(s).fill(&mut out);
        }
        out.id = c.id.clone();
        out.pod_sandbox_id = c.pod_id.clone();
        out.name = cfg.metadata.map(|m| m.name).unwrap_or_default();
        out.state = match c.state {
            CtrState::Created => nri::ContainerState::ContainerCreated,
            CtrState::Running => nri::ContainerState::ContainerRunning,
            CtrState::Exited => nri::ContainerState::ContainerStopped,
        } as i32;
        out.labels = cfg.labels;
        if out.annotations.is_empty() {
            out.annotations = cfg.annotations;
        }
        out.pid = c.pid.unwrap_or(0);
        out.created_at = c.created_at;
        out.started_at = c.started_at;
        out.finished_at = c.finished_at;
        out.exit_code = c.exit_code;
        out.status_reason = c.reason.clone();
        out.status_message = c.message.clone();
        out
    }

    /// Send StopContainer to the plugins, once per container: when it stopped (asked
    /// to or by itself), at the latest before it is removed. The caller holds the
    /// container's lock; the record is saved.
    pub(super) async fn nri_stopped(&self, c: &mut ContainerRecord) {
        let Some(nri) = self.nri() else { return };
        if c.nri_stopped || c.state != CtrState::Exited {
            return;
        }
        c.nri_stopped = true;
        if let Err(e) = self.save_container(c) {
            tracing::warn!(container_id = %c.id, error = %e, "save a container record");
        }
        if !nri.wants(skiff_nri::Event::StopContainer) {
            return;
        }
        let Ok(Some(p)) = self.pod(&c.pod_id) else {
            return;
        };
        if let Err(e) = nri
            .stop_container(&self.nri_pod(&p), &self.nri_container(c, None))
            .await
        {
            tracing::warn!(container_id = %c.id, error = %e, "NRI StopContainer");
        }
    }

    /// Apply one plugin's update of a container's resources.
    async fn nri_update(&self, plugin: &str, u: &nri::ContainerUpdate) -> Result<(), RuntimeError> {
        let c = self.must_container(&u.container_id)?;
        let _guard = self.lock(&c.id).await;
        let c = self.must_container(&c.id)?;
        if c.state != CtrState::Running && c.state != CtrState::Created {
            return Err(RuntimeError::Precondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let Some(res) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
            return Ok(());
        };
        let p = self.must_pod(&c.pod_id)?;
        if p.state != PodState::Ready {
            return Err(RuntimeError::Precondition(format!(
                "the pod of container {} is not ready",
                c.id
            )));
        }
        let spec_path = c.bundle.join("config.json");
        let mut spec: oci_spec::runtime::Spec = serde_json::from_slice(
            &std::fs::read(&spec_path).map_err(super::io_err("read", &spec_path))?,
        )
        .map_err(|e| RuntimeError::Invalid(format!("{}: {e}", spec_path.display())))?;
        let mut current = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .unwrap_or_default();
        skiff_nri::apply::apply_resources(&mut current, plugin, res, &self.nri_limits())
            .map_err(apply_err)?;
        let json = serde_json::to_string(&current)
            .map_err(|e| RuntimeError::Invalid(format!("resources: {e}")))?;
        shim::call(
            &p.id,
            &p.shim_socket,
            &Request::Update {
                id: c.id.clone(),
                resources: json,
            },
            Some(shim::SHORT),
        )
        .await?;
        // The bundle's spec follows, so the next update (and plugins) see it.
        if let Some(linux) = spec.linux_mut() {
            linux.set_resources(Some(current));
        }
        if let Ok(json) = serde_json::to_vec(&spec)
            && let Err(e) = std::fs::write(&spec_path, json)
        {
            tracing::warn!(container_id = %c.id, error = %e, "record the updated spec");
        }
        Ok(())
    }

    /// Stop a container a plugin evicts; its status says who and why.
    async fn nri_evict(self: &Arc<Self>, id: &str, reason: &str) -> Result<(), RuntimeError> {
        let c = self.must_container(id)?;
        self.stop_container_inner(&c.id, 0).await?;
        let _guard = self.lock(&c.id).await;
        if let Some(mut c) = self.container(&c.id)? {
            c.reason = "Evicted".into();
            c.message = reason.to_string();
            self.save_container(&c)?;
        }
        Ok(())
    }

    /// What the host lets an adjustment set.
    pub(super) fn nri_limits(&self) -> skiff_nri::apply::Limits {
        skiff_nri::apply::Limits {
            min_oom_score_adj: self.host.min_oom_score_adj,
            cgroup_v2: self.host.cgroup_v2,
        }
    }
}

/// An adjustment or update that cannot be applied.
pub(super) fn apply_err(e: skiff_nri::apply::ApplyError) -> RuntimeError {
    match e.kind {
        skiff_nri::apply::ApplyErrorKind::Invalid => RuntimeError::Invalid(e.to_string()),
        skiff_nri::apply::ApplyErrorKind::Unsupported => RuntimeError::Precondition(e.to_string()),
    }
}
