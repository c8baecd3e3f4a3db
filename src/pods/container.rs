//! Container RPCs: CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ContainerStatus, ListContainers, ExecSync, ReopenContainerLog,
//! UpdateContainerResources; and the exit watcher.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use skiff_cri::api;
use skiff_cri::ports::{ContainerPort, PortResult};
use skiff_meta::Table;
use skiff_shim_proto::protocol::{Exit, Reply, Request};
use tonic::async_trait;

use super::records::{ContainerRecord, CtrState, PidMode, PodState, User, encode};
use super::{
    CONTAINER_NAMES, Runtime, RuntimeError, Service, container_config, io_err, labels_match,
    pod_config, shim, signals,
};
use crate::spec;

fn read_exit(bundle: &std::path::Path) -> Option<Exit> {
    let bytes = fs::read(bundle.join("exit.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The CRI mounts that are idmapped, each made at `volumes/<n>` of the bundle and passed
/// on as that host path: a mount with its own uid and gid mappings (one range each),
/// and in a user-namespaced pod every host-path mount, through the pod's namespace (as
/// containerd and CRI-O do), so the host's files keep their owners inside the pod.
async fn idmap_volumes(
    rec: &ContainerRecord,
    p: &super::records::PodRecord,
    cfg: &api::ContainerConfig,
) -> Result<api::ContainerConfig, RuntimeError> {
    let mut cfg = cfg.clone();
    let pod_userns = p.userns_file();
    for (n, m) in cfg.mounts.iter_mut().enumerate() {
        let image = m.image.as_ref().is_some_and(|i| !i.image.is_empty());
        let own = !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty();
        if image || m.host_path.is_empty() || !(own || pod_userns.is_some()) {
            continue;
        }
        // A missing source is left to the spec, which reports it as for any mount.
        let Ok(source) = fs::canonicalize(&m.host_path) else {
            continue;
        };
        let by = if own {
            let one = |what: &str, maps: &[api::IdMapping]| {
                super::pod::single_mapping(what, maps).map_err(|e| {
                    RuntimeError::Invalid(format!(
                        "mount at {}: idmapped mount: {e}",
                        m.container_path
                    ))
                })
            };
            crate::sys::IdmapBy::Maps(crate::sys::UsernsMaps {
                uids: one("uid", &m.uid_mappings)?,
                gids: one("gid", &m.gid_mappings)?,
            })
        } else if let Some(u) = &pod_userns {
            crate::sys::IdmapBy::Userns(u.clone())
        } else {
            continue;
        };
        let target = rec.bundle.join("volumes").join(n.to_string());
        let at = target.clone();
        crate::blocking::spawn(move || crate::sys::bind_idmapped(&source, &at, &by))
            .await
            .map_err(super::task_err("mount"))?
            .map_err(|e| {
                RuntimeError::Invalid(format!(
                    "mount at {}: cannot idmap {}: {e}",
                    m.container_path, m.host_path
                ))
            })?;
        m.host_path = target.display().to_string();
        m.uid_mappings.clear();
        m.gid_mappings.clear();
    }
    Ok(cfg)
}

/// Whether anything is still mounted under `bundle` (its root filesystem or a volume):
/// then it must not be removed recursively, which would reach into the mounted files —
/// an idmapped host volume's among them.
fn still_mounted(bundle: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = fs::symlink_metadata(bundle).map(|m| m.dev()) else {
        return false;
    };
    let volumes = fs::read_dir(bundle.join("volumes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    std::iter::once(bundle.join("rootfs"))
        .chain(volumes)
        .any(|p| fs::symlink_metadata(&p).is_ok_and(|m| m.dev() != dev))
}

/// Remove a bundle directory unless something is still mounted in it.
fn remove_bundle(bundle: &std::path::Path) -> std::io::Result<()> {
    if still_mounted(bundle) {
        return Err(std::io::Error::other(
            "something is still mounted in it; left in place",
        ));
    }
    fs::remove_dir_all(bundle)
}

/// Unmount the image volumes under a bundle (`volumes/<n>`).
fn unmount_image_volumes(bundle: &std::path::Path) {
    if let Ok(entries) = fs::read_dir(bundle.join("volumes")) {
        for e in entries.flatten() {
            if let Err(e) = crate::sys::unmount(&e.path()) {
                tracing::warn!(error = %e, "unmount an image volume");
            }
        }
    }
}

/// NRI's part in one CreateContainer.
#[derive(Default)]
struct NriCreate {
    /// Held from before the plugins are asked until the container is visible.
    creation: Option<skiff_nri::CreationGuard>,
    /// Whether plugins were asked (a failure later must tell them it is gone).
    delivered: bool,
    /// What they answered, for the updates and evictions of other containers.
    adjusted: Option<skiff_nri::Adjusted>,
}

fn ctr_name_key(c: &api::ContainerConfig, pod: &api::PodSandboxConfig) -> String {
    let m = c.metadata.clone().unwrap_or_default();
    let p = pod.metadata.clone().unwrap_or_default();
    format!(
        "{}_{}_{}_{}_{}",
        m.name, p.name, p.namespace, p.uid, m.attempt
    )
}

impl Runtime {
    /// Bring a record up to date with what the shim wrote to disk.
    pub(super) fn refresh(&self, c: &mut ContainerRecord) {
        if c.state == CtrState::Exited {
            return;
        }
        if let Some(exit) = read_exit(&c.bundle) {
            self.record_exit(c, exit);
            if let Err(e) = self.save_container(c) {
                tracing::warn!(container_id = %c.id, error = %e, "save exit");
            }
        }
    }

    fn record_exit(&self, c: &mut ContainerRecord, exit: Exit) {
        if c.transition(CtrState::Exited).is_err() {
            // Already exited: the first record of the exit stands.
            return;
        }
        c.exit_code = exit.code;
        c.finished_at = exit.at_ns;
        let oom = self.cgroups.oom_killed(&c.cgroups_path);
        c.reason = if oom {
            "OOMKilled"
        } else if exit.code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .to_string();
        self.events
            .publish(self.event(c, api::ContainerEventType::ContainerStoppedEvent));
    }

    /// Unmount a container's root filesystem and image volumes (gone already is fine).
    pub(super) async fn unmount_container(&self, c: &ContainerRecord) -> Result<(), RuntimeError> {
        let (rootfs, bundle) = (c.rootfs(), c.bundle.clone());
        crate::blocking::spawn(move || {
            unmount_image_volumes(&bundle);
            crate::sys::unmount(&rootfs)
        })
        .await
        .map_err(super::task_err("unmount"))??;
        Ok(())
    }

    /// Mark a container exited when no exit was recorded (its shim is gone).
    pub(super) fn settle_exit(&self, c: &mut ContainerRecord, message: Option<&str>) {
        self.refresh(c);
        if c.state == CtrState::Exited {
            return;
        }
        let was_created = c.state == CtrState::Created;
        if let Err(e) = c.transition(CtrState::Exited) {
            tracing::error!(container_id = %c.id, error = %e, "settle the exit of a container");
            return;
        }
        c.finished_at = super::now_ns();
        c.exit_code = if was_created { 0 } else { 137 };
        c.reason = if message.is_some() {
            "Unknown"
        } else {
            "Error"
        }
        .to_string();
        if let Some(m) = message {
            c.message = m.to_string();
        }
        self.events
            .publish(self.event(c, api::ContainerEventType::ContainerStoppedEvent));
    }

    fn event(
        &self,
        c: &ContainerRecord,
        kind: api::ContainerEventType,
    ) -> api::ContainerEventResponse {
        let pod_status = self
            .pod(&c.pod_id)
            .ok()
            .flatten()
            .map(|p| self.pod_status(&p));
        api::ContainerEventResponse {
            container_id: c.id.clone(),
            container_event_type: kind as i32,
            created_at: super::now_ns(),
            pod_sandbox_status: pod_status,
            containers_statuses: vec![self.container_status(c)],
        }
    }

    /// Watch a running container's exit in the background.
    pub(super) fn watch(self: &Arc<Self>, c: &ContainerRecord) {
        let rt = self.clone();
        let id = c.id.clone();
        let pod = c.pod_id.clone();
        tokio::spawn(async move {
            let Ok(Some(p)) = rt.pod(&pod) else { return };
            let r = shim::call(
                &pod,
                &p.shim_socket,
                &Request::Wait { id: id.clone() },
                None,
            )
            .await;
            if let Ok(Reply::Exited(exit)) = r {
                let _guard = rt.lock(&id).await;
                if let Ok(Some(mut c)) = rt.container(&id) {
                    rt.record_exit(&mut c, exit);
                    if let Err(e) = rt.save_container(&c) {
                        tracing::warn!(container_id = %id, error = %e, "save the exit");
                    }
                    rt.nri_stopped(&mut c).await;
                }
            }
        });
    }

    pub(super) fn container_status(&self, c: &ContainerRecord) -> api::ContainerStatus {
        // A record whose config does not decode shows the container as unknown, saying
        // why, rather than as an empty container.
        let damaged = super::records::decode::<api::ContainerConfig>(&c.config).err();
        let cfg = container_config(c);
        let (state, reason, message) = match &damaged {
            Some(e) => (
                api::ContainerState::ContainerUnknown,
                "RecordDamaged".to_string(),
                e.to_string(),
            ),
            None => (c.state.cri(), c.reason.clone(), c.message.clone()),
        };
        api::ContainerStatus {
            id: c.id.clone(),
            metadata: cfg.metadata.clone(),
            state: state as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: Some(api::ImageSpec {
                image: c.image_name.clone(),
                annotations: cfg
                    .image
                    .as_ref()
                    .map(|i| i.annotations.clone())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            image_ref: c.image_id.clone(),
            image_id: c.image_id.clone(),
            reason,
            message,
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            mounts: cfg.mounts.clone(),
            log_path: c
                .log_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            resources: cfg
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| api::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
            user: Some(api::ContainerUser {
                linux: Some(api::LinuxContainerUser {
                    uid: c.user.uid,
                    gid: c.user.gid,
                    supplemental_groups: c.user.groups.clone(),
                }),
            }),
            stop_signal: signals::to_cri(c.stop_signal) as i32,
        }
    }

    fn container_info(&self, c: &ContainerRecord) -> HashMap<String, String> {
        let spec = fs::read(c.bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let info = serde_json::json!({
            "sandboxID": c.pod_id,
            "pid": c.pid.unwrap_or(0),
            "bundle": c.bundle,
            "rootfs": c.rootfs(),
            "cgroupsPath": c.cgroups_path,
            "imageRef": c.image_id,
            "runtimeSpec": spec,
        });
        HashMap::from([("info".to_string(), info.to_string())])
    }

    async fn create_container(
        &self,
        req: api::CreateContainerRequest,
    ) -> Result<String, RuntimeError> {
        let p = self.visible_pod(&req.pod_sandbox_id)?;
        let _pod_guard = self.lock(&p.id).await;
        let p = self.must_pod(&p.id)?;
        if p.state != PodState::Ready {
            return Err(RuntimeError::Precondition(format!(
                "pod sandbox {} is not ready; containers cannot be created in it",
                p.id
            )));
        }
        let mut cfg = req.config.unwrap_or_default();
        self.resolve_image_volumes(&mut cfg)?;
        let pod_cfg = pod_config(&p);
        let image_name = cfg
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image = self
            .images
            .resolve(&image_name)?
            .ok_or_else(|| RuntimeError::NotFound {
                what: "image",
                id: image_name.clone(),
            })?;
        let image_config: oci_spec::image::ImageConfiguration =
            serde_json::from_slice(&self.images.config_json(&image)?).map_err(|e| {
                RuntimeError::Invalid(format!("image {image_name}: config is not valid: {e}"))
            })?;
        let log_path = spec::resolve_log_path(&pod_cfg.log_directory, &cfg.log_path)?;
        let id = super::new_id();
        let key = ctr_name_key(&cfg, &pod_cfg);
        // Not visible through CRI until it is complete (and NRI plugins have seen it).
        let hidden = super::nri::Hidden::new(&self.creating, &id);
        self.reserve(CONTAINER_NAMES, "container", &key, &id)?;
        let _guard = self.lock(&id).await;
        let bundle = self.config.state.join("containers").join(&id);
        let layer_dir = self.config.root.join("containers").join(&id);
        // The CRI's stop signal first (1.33+), then the image's, then SIGTERM.
        let stop_signal = api::Signal::try_from(cfg.stop_signal)
            .ok()
            .and_then(signals::from_cri)
            .or_else(|| {
                image_config
                    .config()
                    .as_ref()
                    .and_then(|c| c.stop_signal().clone())
                    .and_then(|s| signals::from_name(&s))
            })
            .unwrap_or(libc::SIGTERM);
        let mut rec = ContainerRecord {
            id: id.clone(),
            pod_id: p.id.clone(),
            config: encode(&cfg),
            image_id: image.id.to_string(),
            image_name,
            state: CtrState::Created,
            created_at: super::now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path,
            bundle: bundle.clone(),
            layer_dir: layer_dir.clone(),
            cgroups_path: format!("{}/{}", p.cgroup_parent.trim_end_matches('/'), id),
            pid: None,
            user: User::default(),
            stop_signal,
            name_key: key.clone(),
            volume_images: Vec::new(),
            nri_stopped: false,
        };
        let mut nri = NriCreate::default();
        let made = self
            .make_container(
                &mut rec,
                &p,
                &pod_cfg,
                &cfg,
                &image,
                &image_config,
                &mut nri,
            )
            .await;
        match made {
            Ok(()) => {
                // Visible from here on; only then may a joining plugin synchronize.
                drop(hidden);
                drop(nri.creation.take());
                self.events
                    .publish(self.event(&rec, api::ContainerEventType::ContainerCreatedEvent));
                if let Some(n) = self.nri() {
                    if n.wants(skiff_nri::Event::PostCreateContainer)
                        && let Err(e) = n
                            .post_create_container(
                                &self.nri_pod(&p),
                                &self.nri_container(&rec, None),
                            )
                            .await
                    {
                        tracing::warn!(container_id = %id, error = %e, "NRI PostCreateContainer");
                    }
                    if let Some(adjusted) = nri.adjusted.take() {
                        // Updates and evictions of other containers the plugins asked for.
                        let n = n.clone();
                        tokio::spawn(async move { n.apply_side_effects(&adjusted).await });
                    }
                }
                Ok(id)
            }
            Err(e) => {
                if nri.delivered
                    && let Some(n) = self.nri()
                {
                    // Plugins that saw the creation learn the container is gone.
                    let (pod, ctr) = (self.nri_pod(&p), self.nri_container(&rec, None));
                    if let Err(e) = n.stop_container(&pod, &ctr).await {
                        tracing::debug!(container_id = %id, error = %e, "NRI StopContainer of a failed creation");
                    }
                    if let Err(e) = n.remove_container(&pod, &ctr).await {
                        tracing::debug!(container_id = %id, error = %e, "NRI RemoveContainer of a failed creation");
                    }
                }
                debug_assert!(
                    rec.bundle == bundle && rec.layer_dir == layer_dir && rec.name_key == key
                );
                self.undo_creation(&p, &rec).await;
                Err(e)
            }
        }
    }

    /// Undo a creation that did not complete: the shim forgets the container, its
    /// mounts and directories go, its record and name are released.
    pub(super) async fn undo_creation(&self, p: &super::PodRecord, rec: &ContainerRecord) {
        let _ = shim::call(
            &p.id,
            &p.shim_socket,
            &Request::Delete { id: rec.id.clone() },
            Some(shim::SHORT),
        )
        .await;
        // Unmounting and removing directories block: off the async workers.
        let (rootfs, bundle, layer_dir) = (rec.rootfs(), rec.bundle.clone(), rec.layer_dir.clone());
        let undone = crate::blocking::spawn(move || {
            let _ = crate::sys::unmount(&rootfs);
            unmount_image_volumes(&bundle);
            if let Err(e) = remove_bundle(&bundle) {
                tracing::warn!(path = %bundle.display(), error = %e, "remove a container's bundle");
            }
            let _ = fs::remove_dir_all(&layer_dir);
        })
        .await;
        if let Err(e) = undone {
            tracing::warn!(container_id = %rec.id, error = %e, "undo a creation's files");
        }
        let _ = self.meta.delete(Table::CONTAINERS, &rec.id);
        self.release(CONTAINER_NAMES, &rec.name_key);
    }

    /// The shim started `c` but skiffd did not record it (the answer was lost to a
    /// crash or a timeout): record it Running, started before its exit if it exited,
    /// and watch it, so its real exit is reported like any other.
    pub(super) fn record_started(
        self: &Arc<Self>,
        c: &mut ContainerRecord,
        exit: Option<Exit>,
    ) -> Result<(), RuntimeError> {
        c.started_at = exit.map_or(super::now_ns(), |e| e.at_ns.min(super::now_ns()));
        c.transition(CtrState::Running)?;
        self.save_container(c)?;
        self.events
            .publish(self.event(c, api::ContainerEventType::ContainerStartedEvent));
        self.watch(c);
        Ok(())
    }

    /// Ask the NRI plugins about a container being created: each one's adjustment is
    /// applied to its OCI spec, in plugin order.
    async fn nri_create(
        &self,
        rec: &mut ContainerRecord,
        p: &super::records::PodRecord,
        oci: &mut oci_spec::runtime::Spec,
        nri: &mut NriCreate,
    ) -> Result<(), RuntimeError> {
        let Some(n) = self.nri() else {
            return Ok(());
        };
        nri.creation = Some(n.creating().await);
        if !n.wants(skiff_nri::Event::CreateContainer)
            && !n.wants(skiff_nri::Event::ValidateContainerAdjustment)
        {
            return Ok(());
        }
        let pod = self.nri_pod(p);
        let ctr = self.nri_container(rec, Some(oci));
        let limits = self.nri_limits();
        let mut cgroups_path = None;
        nri.delivered = true;
        let adjusted = {
            let rec: &ContainerRecord = rec;
            let mut apply = |plugin: &str, adj: &skiff_nri::api::ContainerAdjustment| {
                let applied = skiff_nri::apply::apply(oci, plugin, adj, &limits)?;
                if applied.cgroups_path.is_some() {
                    cgroups_path = applied.cgroups_path;
                }
                Ok(self.nri_container(rec, Some(oci)))
            };
            n.create_container(&pod, &ctr, &mut apply).await?
        };
        if let Some(cg) = cgroups_path {
            rec.cgroups_path = cg;
        }
        nri.adjusted = Some(adjusted);
        Ok(())
    }

    /// Resolve the image of every image volume (a CRI mount naming an image) and record
    /// it in the mount's `image.image_ref` (reported in ContainerStatus, KEP 5365). The
    /// request's checks already refused writable ones and escaping sub paths.
    fn resolve_image_volumes(&self, cfg: &mut api::ContainerConfig) -> Result<(), RuntimeError> {
        for m in &mut cfg.mounts {
            let Some(spec) = m.image.as_mut().filter(|i| !i.image.is_empty()) else {
                continue;
            };
            let image =
                self.images
                    .resolve(&spec.image)?
                    .ok_or_else(|| RuntimeError::NotFound {
                        what: "image (for an image volume)",
                        id: spec.image.clone(),
                    })?;
            spec.image_ref = image.id.to_string();
        }
        Ok(())
    }

    /// Mount every image volume read-only under the bundle; the config the spec is built
    /// from gets those directories (or the sub path inside one) as host paths.
    async fn mount_image_volumes(
        &self,
        rec: &mut ContainerRecord,
        p: &super::records::PodRecord,
        cfg: &api::ContainerConfig,
    ) -> Result<api::ContainerConfig, RuntimeError> {
        let mut cfg = cfg.clone();
        let idmap = p.userns_file();
        for (n, m) in cfg.mounts.iter_mut().enumerate() {
            let Some(image_ref) = m
                .image
                .as_ref()
                .map(|i| i.image_ref.clone())
                .filter(|i| !i.is_empty())
            else {
                continue;
            };
            let image = self
                .images
                .resolve(&image_ref)?
                .ok_or_else(|| RuntimeError::NotFound {
                    what: "image (for an image volume)",
                    id: image_ref.clone(),
                })?;
            let dir = rec.bundle.join("volumes");
            let target = dir.join(n.to_string());
            // A read-only overlay needs two lower directories: an empty one at the bottom.
            let empty = dir.join(format!("{n}.empty"));
            for d in [&target, &empty] {
                fs::create_dir_all(d).map_err(io_err("create", d))?;
            }
            let mut lower = self
                .images
                .snapshots()
                .mounts(&image.chain_ids(), &empty, &empty)
                .lower;
            lower.push(empty);
            let at = target.clone();
            let sub = m.image_sub_path.clone();
            let idmap = idmap.clone();
            let source = crate::blocking::spawn(move || {
                crate::sys::mount_overlay(&at, &lower, None, idmap.as_deref())?;
                if sub.is_empty() {
                    return Ok(at);
                }
                // Symlinks in the sub path resolve inside the image, never on the host.
                crate::sys::resolve_in_root(&at, &sub)?.ok_or_else(|| {
                    RuntimeError::Invalid(format!(
                        "image_sub_path {sub:?} does not exist in the image"
                    ))
                })
            });
            rec.volume_images.push(image.id.to_string());
            let source = source
                .await
                .map_err(super::task_err("mount"))?
                .map_err(|e| match e {
                    RuntimeError::Invalid(msg) => RuntimeError::Invalid(format!(
                        "image volume at {}: {msg}",
                        m.container_path
                    )),
                    other => other,
                })?;
            m.host_path = source.display().to_string();
            m.image = None;
            m.image_sub_path.clear();
        }
        Ok(cfg)
    }

    #[allow(clippy::too_many_arguments)]
    async fn make_container(
        &self,
        rec: &mut ContainerRecord,
        p: &super::records::PodRecord,
        pod_cfg: &api::PodSandboxConfig,
        cfg: &api::ContainerConfig,
        image: &skiff_image::ImageRecord,
        image_config: &oci_spec::image::ImageConfiguration,
        nri: &mut NriCreate,
    ) -> Result<(), RuntimeError> {
        let mut steps = super::pod::Steps::new();
        let rootfs = rec.rootfs();
        let upper = rec.layer_dir.join("upper");
        let work = rec.layer_dir.join("work");
        for d in [&rootfs, &upper, &work] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        // In a user-namespaced pod the image layers are idmapped (a root-owned file is the
        // namespace root's), and the upper directory, not idmapped, belongs to the
        // namespace's root on disk: what the container writes is stored with host ids.
        let idmap = p.userns_file();
        if let Some((uid, gid)) = p.userns.map(|u| u.host_root()) {
            rustix::fs::chown(
                &upper,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| io_err("chown", &upper)(e.into()))?;
        }
        // Saved first so that a crash from here on is cleaned up at removal.
        self.save_container(rec)?;
        let mount = self
            .images
            .snapshots()
            .mounts(&image.chain_ids(), &upper, &work);
        {
            let (rootfs, lower) = (rootfs.clone(), mount.lower.clone());
            crate::blocking::spawn(move || {
                crate::sys::mount_overlay(&rootfs, &lower, Some((&upper, &work)), idmap.as_deref())
            })
            .await
            .map_err(super::task_err("mount"))??;
        }
        let cfg = &self.mount_image_volumes(rec, p, cfg).await?;
        let cfg = &idmap_volumes(rec, p, cfg).await?;
        steps.mark("rootfs");
        let pid_ns = match p.pid_mode {
            PidMode::Host => spec::PidNs::Host,
            PidMode::Container => spec::PidNs::Container,
            PidMode::Pod => spec::PidNs::Pod(PathBuf::from(format!(
                "/proc/{}/ns/pid",
                p.pause_pid.unwrap_or(0)
            ))),
        };
        // What the pod's handler supports decides what the spec may ask of it.
        let host = crate::spec::HostInfo {
            rro_supported: self
                .handler(&p.handler)
                .ok()
                .and_then(|h| self.features.get(&h.name))
                .is_some_and(|f| f.recursive_read_only),
            ..self.host.clone()
        };
        let inputs = spec::SpecInputs {
            container_id: &rec.id,
            pod_id: &p.id,
            pod: pod_cfg,
            container: cfg,
            image: image_config,
            image_name: &rec.image_name,
            rootfs: &rootfs,
            files: spec::PodFiles {
                hostname: Some(&p.dir.join("hostname")),
                hosts: Some(&p.dir.join("hosts")),
                resolv_conf: Some(&p.dir.join("resolv.conf")),
                shm: p.shm.as_deref(),
            },
            namespaces: spec::PodNamespaces {
                net: p.ns.net.as_deref(),
                ipc: p.ns.ipc.as_deref(),
                uts: p.ns.uts.as_deref(),
                pid: pid_ns,
                user: p.ns.user.as_deref().zip(p.userns),
            },
            cgroups_path: rec.cgroups_path.clone(),
            host: &host,
        };
        let mut oci = spec::build(&inputs)?;
        steps.mark("spec");
        self.nri_create(rec, p, &mut oci, nri).await?;
        steps.mark("nri");
        if let Some(u) = oci.process().as_ref().map(|p| p.user()) {
            rec.user = User {
                uid: i64::from(u.uid()),
                gid: i64::from(u.gid()),
                groups: u
                    .additional_gids()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(i64::from)
                    .collect(),
            };
        }
        let config_path = rec.bundle.join("config.json");
        let json =
            serde_json::to_vec(&oci).map_err(|e| RuntimeError::Invalid(format!("spec: {e}")))?;
        fs::write(&config_path, json).map_err(io_err("write", &config_path))?;
        steps.mark("config.json");
        let reply = shim::call(
            &p.id,
            &p.shim_socket,
            &Request::Create {
                id: rec.id.clone(),
                bundle: rec.bundle.clone(),
                log_path: rec.log_path.clone(),
                stdin: cfg.stdin,
                tty: cfg.tty,
            },
            Some(shim::SHORT),
        )
        .await?;
        steps.mark("runtime create");
        if let Reply::Created { pid } = reply {
            rec.pid = Some(pid);
        }
        self.save_container(rec)?;
        steps.mark("record");
        tracing::debug!(container_id = %rec.id, steps = %steps, "container created");
        Ok(())
    }

    async fn start_container(self: &Arc<Self>, id: &str) -> Result<(), RuntimeError> {
        let c = self.must_container(id)?;
        let _guard = self.lock(&c.id).await;
        let mut c = self.must_container(&c.id)?;
        self.refresh(&mut c);
        if c.state != CtrState::Created {
            return Err(RuntimeError::Precondition(format!(
                "container {} is {:?}, not created",
                c.id, c.state
            )));
        }
        let p = self.must_pod(&c.pod_id)?;
        let nri = self.nri().filter(|n| {
            n.wants(skiff_nri::Event::StartContainer)
                || n.wants(skiff_nri::Event::PostStartContainer)
        });
        if let Some(n) = nri {
            // A plugin refusing the start leaves the container created.
            n.start_container(&self.nri_pod(&p), &self.nri_container(&c, None))
                .await?;
        }
        // Taken before the call: a process that exits at once must not look as if
        // it finished before it started.
        let started_at = super::now_ns();
        let started = shim::call(
            &p.id,
            &p.shim_socket,
            &Request::Start { id: c.id.clone() },
            Some(shim::SHORT),
        )
        .await;
        if let Err(e) = started {
            if matches!(e, RuntimeError::Shim { .. }) {
                // The shim did not answer: the container may or may not have started.
                // Nothing is recorded; if the shim is gone, its watcher reports the
                // container exited with reason Unknown, as for any shim death.
                return Err(e);
            }
            // The shim may have started it already: an earlier StartContainer whose
            // answer was lost (it timed out) went through after all.
            if let Ok(Reply::State { status, exit, .. }) = shim::call(
                &p.id,
                &p.shim_socket,
                &Request::State { id: c.id.clone() },
                Some(shim::SHORT),
            )
            .await
                && status != skiff_shim_proto::protocol::Status::Created
            {
                tracing::info!(container_id = %c.id, "the shim had started it already; recording that");
                self.record_started(&mut c, exit)?;
                return Ok(());
            }
            // A container that could not start is finished, like containerd's StartError
            // (unless the shim recorded its exit meanwhile).
            self.refresh(&mut c);
            if c.transition(CtrState::Exited).is_err() {
                return Err(e);
            }
            c.finished_at = super::now_ns();
            c.exit_code = 128;
            c.reason = "StartError".into();
            c.message = e.to_string();
            self.save_container(&c)?;
            return Err(e);
        }
        c.started_at = started_at;
        c.transition(CtrState::Running)?;
        self.refresh(&mut c);
        self.save_container(&c)?;
        self.events
            .publish(self.event(&c, api::ContainerEventType::ContainerStartedEvent));
        self.watch(&c);
        if let Some(n) = nri
            && let Err(e) = n
                .post_start_container(&self.nri_pod(&p), &self.nri_container(&c, None))
                .await
        {
            tracing::warn!(container_id = %c.id, error = %e, "NRI PostStartContainer");
        }
        Ok(())
    }

    /// Signal the container (its image's stop signal), wait `timeout` seconds, then
    /// kill everything in it. Idempotent.
    pub(super) async fn stop_container_inner(
        self: &Arc<Self>,
        id: &str,
        timeout: i64,
    ) -> Result<(), RuntimeError> {
        let Some(c) = self.container(id)? else {
            return Ok(());
        };
        let _guard = self.lock(&c.id).await;
        let Some(mut c) = self.container(&c.id)? else {
            return Ok(());
        };
        self.refresh(&mut c);
        if c.state == CtrState::Exited {
            self.nri_stopped(&mut c).await;
            return Ok(());
        }
        let p = self.must_pod(&c.pod_id)?;
        if p.state != PodState::Ready {
            self.settle_exit(&mut c, None);
            self.save_container(&c)?;
            self.nri_stopped(&mut c).await;
            return Ok(());
        }
        let call = |req: Request, t: Option<Duration>| {
            let (pod, socket) = (p.id.clone(), p.shim_socket.clone());
            async move { shim::call(&pod, &socket, &req, t).await }
        };
        let wait = Request::Wait { id: c.id.clone() };
        let mut exit = None;
        if timeout > 0 && c.state == CtrState::Running {
            call(
                Request::Kill {
                    id: c.id.clone(),
                    signal: c.stop_signal,
                    all: false,
                },
                Some(shim::SHORT),
            )
            .await?;
            let secs = u64::try_from(timeout).unwrap_or(0);
            if let Ok(Ok(Reply::Exited(e))) =
                tokio::time::timeout(Duration::from_secs(secs), call(wait.clone(), None)).await
            {
                exit = Some(e);
            }
        }
        if exit.is_none() {
            call(
                Request::Kill {
                    id: c.id.clone(),
                    signal: libc::SIGKILL,
                    all: true,
                },
                Some(shim::SHORT),
            )
            .await?;
            match tokio::time::timeout(Duration::from_secs(30), call(wait, None)).await {
                Ok(Ok(Reply::Exited(e))) => exit = Some(e),
                Ok(Err(e)) => return Err(e),
                _ => {
                    return Err(RuntimeError::Precondition(format!(
                        "container {} did not exit within 30 s of SIGKILL",
                        c.id
                    )));
                }
            }
        }
        if let Some(e) = exit {
            self.record_exit(&mut c, e);
        }
        self.save_container(&c)?;
        self.nri_stopped(&mut c).await;
        Ok(())
    }

    /// Stop (if needed) and remove a container: runtime state, rootfs, writable
    /// layer, record. Idempotent.
    pub(super) async fn remove_container_inner(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<(), RuntimeError> {
        let Some(c) = self.container(id)? else {
            return Ok(());
        };
        self.stop_container_inner(&c.id, 0).await?;
        let _guard = self.lock(&c.id).await;
        let Some(mut c) = self.container(&c.id)? else {
            return Ok(());
        };
        // Told it stopped before they hear it is removed.
        self.nri_stopped(&mut c).await;
        let nri_msgs = match (self.nri(), self.pod(&c.pod_id)) {
            (Some(n), Ok(Some(p))) if n.wants(skiff_nri::Event::RemoveContainer) => {
                Some((self.nri_pod(&p), self.nri_container(&c, None)))
            }
            _ => None,
        };
        if let Ok(Some(p)) = self.pod(&c.pod_id)
            && p.state == PodState::Ready
        {
            match shim::call(
                &p.id,
                &p.shim_socket,
                &Request::Delete { id: c.id.clone() },
                Some(shim::SHORT),
            )
            .await
            {
                Ok(_) => {}
                Err(e) if shim::is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.unmount_container(&c).await?;
        // The writable layer may hold many files: removed off the async workers.
        let (bundle, layer_dir) = (c.bundle.clone(), c.layer_dir.clone());
        crate::blocking::spawn(move || {
            for (dir, removed) in [
                (&bundle, remove_bundle(&bundle)),
                (&layer_dir, fs::remove_dir_all(&layer_dir)),
            ] {
                if let Err(e) = removed
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %dir.display(), error = %e, "remove a container's files");
                }
            }
        })
        .await
        .map_err(super::task_err("remove container files"))?;
        self.cpu.forget(&c.id);
        self.disk.forget(&c.id);
        self.meta.delete(Table::CONTAINERS, &c.id)?;
        self.release(CONTAINER_NAMES, &c.name_key);
        self.events
            .publish(self.event(&c, api::ContainerEventType::ContainerDeletedEvent));
        if let (Some(n), Some((pod, ctr))) = (self.nri(), nri_msgs)
            && let Err(e) = n.remove_container(&pod, &ctr).await
        {
            tracing::warn!(container_id = %c.id, error = %e, "NRI RemoveContainer");
        }
        Ok(())
    }

    async fn exec_sync(
        &self,
        req: api::ExecSyncRequest,
    ) -> Result<api::ExecSyncResponse, RuntimeError> {
        let timeout_ms = u64::try_from(req.timeout).unwrap_or(0).saturating_mul(1000);
        let args = req.cmd.clone();
        let reply = self
            .call_running(&req.container_id, None, |id| Request::Exec {
                id,
                args,
                timeout_ms,
            })
            .await?;
        match reply {
            Reply::Exec {
                code,
                stdout,
                stderr,
            } => {
                let b64 = base64::engine::general_purpose::STANDARD;
                Ok(api::ExecSyncResponse {
                    stdout: b64.decode(stdout).unwrap_or_default(),
                    stderr: b64.decode(stderr).unwrap_or_default(),
                    exit_code: code,
                })
            }
            other => Err(RuntimeError::Invalid(format!(
                "unexpected shim reply {other:?}"
            ))),
        }
    }

    /// Send a request about a running container to its pod's shim.
    async fn call_running(
        &self,
        id: &str,
        timeout: Option<Duration>,
        make: impl FnOnce(String) -> Request,
    ) -> Result<Reply, RuntimeError> {
        let (id, pod, socket) = self.running_container(id)?;
        shim::call(&pod, &socket, &make(id), timeout).await
    }
}

#[async_trait]
impl ContainerPort for Service {
    async fn create(
        &self,
        req: api::CreateContainerRequest,
    ) -> PortResult<api::CreateContainerResponse> {
        let id = self.0.create_container(req).await?;
        Ok(api::CreateContainerResponse { container_id: id })
    }

    async fn start(
        &self,
        req: api::StartContainerRequest,
    ) -> PortResult<api::StartContainerResponse> {
        self.0.start_container(&req.container_id).await?;
        Ok(api::StartContainerResponse {})
    }

    async fn stop(&self, req: api::StopContainerRequest) -> PortResult<api::StopContainerResponse> {
        self.0
            .stop_container_inner(&req.container_id, req.timeout)
            .await?;
        Ok(api::StopContainerResponse {})
    }

    async fn remove(
        &self,
        req: api::RemoveContainerRequest,
    ) -> PortResult<api::RemoveContainerResponse> {
        self.0.remove_container_inner(&req.container_id).await?;
        Ok(api::RemoveContainerResponse {})
    }

    async fn list(
        &self,
        req: api::ListContainersRequest,
    ) -> PortResult<api::ListContainersResponse> {
        let rt = &self.0;
        let f = req.filter.unwrap_or_default();
        let mut containers: Vec<api::Container> = rt
            .containers()?
            .into_iter()
            .filter(|c| !rt.creating.contains(&c.id))
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
            .map(|mut c| {
                rt.refresh(&mut c);
                let cfg = container_config(&c);
                api::Container {
                    id: c.id.clone(),
                    pod_sandbox_id: c.pod_id.clone(),
                    metadata: cfg.metadata.clone(),
                    image: Some(api::ImageSpec {
                        image: c.image_name.clone(),
                        ..Default::default()
                    }),
                    image_ref: c.image_id.clone(),
                    image_id: c.image_id.clone(),
                    state: c.state.cri() as i32,
                    created_at: c.created_at,
                    labels: cfg.labels,
                    annotations: cfg.annotations,
                }
            })
            .filter(|c| f.state.as_ref().is_none_or(|s| s.state == c.state))
            .filter(|c| labels_match(&c.labels, &f.label_selector))
            .collect();
        containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(api::ListContainersResponse { containers })
    }

    async fn status(
        &self,
        req: api::ContainerStatusRequest,
    ) -> PortResult<api::ContainerStatusResponse> {
        let rt = &self.0;
        let mut c = rt.visible_container(&req.container_id)?;
        rt.refresh(&mut c);
        Ok(api::ContainerStatusResponse {
            status: Some(rt.container_status(&c)),
            info: if req.verbose {
                rt.container_info(&c)
            } else {
                HashMap::new()
            },
        })
    }

    async fn update_resources(
        &self,
        req: api::UpdateContainerResourcesRequest,
    ) -> PortResult<api::UpdateContainerResourcesResponse> {
        let Some(linux) = req.linux.as_ref() else {
            return Ok(api::UpdateContainerResourcesResponse {});
        };
        let mut resources = spec::linux_resources(linux, self.0.host.cgroup_v2);
        let nri = self.0.nri().filter(|n| {
            n.wants(skiff_nri::Event::UpdateContainer)
                || n.wants(skiff_nri::Event::PostUpdateContainer)
        });
        let mut nri_msgs = None;
        if let Some(n) = nri {
            let rt = &self.0;
            let c = rt.visible_container(&req.container_id)?;
            let p = rt.must_pod(&c.pod_id)?;
            let (pod, ctr) = (rt.nri_pod(&p), rt.nri_container(&c, None));
            // Plugins may change what is applied (their answer for this container).
            let wanted = skiff_nri::apply::resources_to_nri(&resources);
            let merged = n
                .update_container(&pod, &ctr, &wanted)
                .await
                .map_err(RuntimeError::Nri)?;
            if merged != wanted {
                skiff_nri::apply::apply_resources(&mut resources, "NRI", &merged, &rt.nri_limits())
                    .map_err(super::nri::apply_err)?;
            }
            nri_msgs = Some((pod, ctr));
        }
        let json = serde_json::to_string(&resources)
            .map_err(|e| RuntimeError::Invalid(format!("resources: {e}")))?;
        self.0
            .call_running(&req.container_id, Some(shim::SHORT), |id| Request::Update {
                id,
                resources: json,
            })
            .await?;
        // Keep the config's resources current for ContainerStatus.
        let rt = &self.0;
        let _guard = rt.lock(&req.container_id).await;
        if let Some(mut c) = rt.container(&req.container_id)? {
            let mut cfg = container_config(&c);
            cfg.linux.get_or_insert_with(Default::default).resources = Some(linux.clone());
            c.config = encode(&cfg);
            rt.save_container(&c)?;
        }
        if let (Some(n), Some((pod, ctr))) = (nri, nri_msgs)
            && let Err(e) = n.post_update_container(&pod, &ctr).await
        {
            tracing::warn!(container_id = %req.container_id, error = %e, "NRI PostUpdateContainer");
        }
        Ok(api::UpdateContainerResourcesResponse {})
    }

    async fn reopen_log(
        &self,
        req: api::ReopenContainerLogRequest,
    ) -> PortResult<api::ReopenContainerLogResponse> {
        self.0
            .call_running(&req.container_id, Some(shim::SHORT), |id| {
                Request::ReopenLog { id }
            })
            .await?;
        Ok(api::ReopenContainerLogResponse {})
    }

    async fn exec_sync(&self, req: api::ExecSyncRequest) -> PortResult<api::ExecSyncResponse> {
        Ok(self.0.exec_sync(req).await?)
    }
}
