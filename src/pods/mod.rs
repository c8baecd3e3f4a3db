//! Pods and containers: the RuntimeService pod and container RPCs over the per-pod
//! shim, the OCI runtime and the pod's pinned namespaces.
//!
//! The metadata store is the truth for what exists and its lifecycle state; a
//! container's exit comes from the shim (`Wait`, or the `exit.json` it writes into
//! the bundle the moment the init exits), so exits that happen while skiffd is down
//! are still reported with their real code and time.

mod container;
mod events;
mod liveness;
mod metrics;
mod network;
mod nri;
mod pod;
pub mod records;
pub mod shim;
mod signals;
mod stats;
pub mod streams;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use skiff_cri::{Classify, ErrorKind, api};
use skiff_image::Images;
use skiff_meta::{MetaError, MetaStore, Table};

pub use events::Events;
use records::{ContainerRecord, PodRecord};

use crate::cgroups::Cgroups;
use crate::config::Config;
use crate::spec::HostInfo;

/// Pod name reservations: name key → pod id.
pub const POD_NAMES: Table = Table::named("pod_names");
/// Container name reservations: name key → container id.
pub const CONTAINER_NAMES: Table = Table::named("container_names");

/// Errors of pod and container operations.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No such pod or container.
    #[error("{what} {id} not found")]
    NotFound {
        /// `pod sandbox` or `container`.
        what: &'static str,
        /// The id or prefix asked for.
        id: String,
    },
    /// The id prefix names several objects.
    #[error("{what} id prefix {id} is ambiguous")]
    Ambiguous {
        /// `pod sandbox` or `container`.
        what: &'static str,
        /// The prefix.
        id: String,
    },
    /// The CRI name is taken.
    #[error("{what} name {name} is reserved for {id}")]
    NameTaken {
        /// `pod sandbox` or `container`.
        what: &'static str,
        /// The name key.
        name: String,
        /// The id holding it.
        id: String,
    },
    /// The object is in the wrong state.
    #[error("{0}")]
    Precondition(String),
    /// The request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A limit is reached.
    #[error("{0}")]
    Exhausted(String),
    /// The shim could not be started.
    #[error("start shim of pod {pod}: {reason}")]
    ShimStart {
        /// The pod id.
        pod: String,
        /// What went wrong.
        reason: String,
    },
    /// The shim could not be reached.
    #[error("shim of pod {pod}: {source}")]
    Shim {
        /// The pod id.
        pod: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The shim answered with a failure.
    #[error("{}", .0.message)]
    ShimFailed(skiff_shim_proto::protocol::Failure),
    /// Namespaces and mounts.
    #[error(transparent)]
    Sys(#[from] crate::sys::SysError),
    /// Pod networking.
    #[error(transparent)]
    Net(#[from] skiff_net::NetError),
    /// Masquerade and hostPorts (nftables).
    #[error(transparent)]
    Nft(#[from] skiff_net::nft::NftError),
    /// The OCI spec could not be built.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// cgroups.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    /// The metadata store.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The image store.
    #[error(transparent)]
    Image(#[from] skiff_image::ImageError),
    /// An NRI plugin refused, or plugins' adjustments conflict.
    #[error(transparent)]
    Nri(#[from] skiff_nri::Error),
    /// The container's state machine refused a change.
    #[error(transparent)]
    Refused(#[from] records::Refused),
    /// A blocking task of skiffd's own panicked or was cancelled (a bug, not bad input).
    #[error("{what} task failed: {source}")]
    Task {
        /// What the task was doing.
        what: &'static str,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A file operation.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Classify for RuntimeError {
    fn kind(&self) -> ErrorKind {
        use skiff_shim_proto::protocol::FailureKind as F;
        match self {
            RuntimeError::NotFound { .. } => ErrorKind::NotFound,
            RuntimeError::Ambiguous { .. } | RuntimeError::Invalid(_) => ErrorKind::InvalidArgument,
            RuntimeError::NameTaken { .. } => ErrorKind::AlreadyExists,
            RuntimeError::Precondition(_) | RuntimeError::Refused(_) => {
                ErrorKind::FailedPrecondition
            }
            RuntimeError::Exhausted(_) => ErrorKind::ResourceExhausted,
            RuntimeError::ShimStart { .. }
            | RuntimeError::Io { .. }
            | RuntimeError::Task { .. } => ErrorKind::Internal,
            RuntimeError::Shim { .. } => ErrorKind::Unavailable,
            RuntimeError::ShimFailed(f) => match f.kind {
                F::NotFound => ErrorKind::NotFound,
                F::FailedPrecondition => ErrorKind::FailedPrecondition,
                F::InvalidArgument => ErrorKind::InvalidArgument,
                F::Timeout => ErrorKind::DeadlineExceeded,
                F::Runtime | F::Internal => ErrorKind::Internal,
            },
            RuntimeError::Sys(e) => e.kind(),
            RuntimeError::Net(e) if e.is_exhausted() => ErrorKind::ResourceExhausted,
            RuntimeError::Net(_) => ErrorKind::Internal,
            RuntimeError::Nft(e) if e.is_invalid() => ErrorKind::InvalidArgument,
            RuntimeError::Nft(_) => ErrorKind::Internal,
            RuntimeError::Spec(e) => e.kind(),
            RuntimeError::Cgroup(e) => e.kind(),
            RuntimeError::Meta(_) => ErrorKind::Internal,
            RuntimeError::Image(e) => crate::error::image_kind(e.kind()),
            RuntimeError::Nri(
                skiff_nri::Error::Refused { .. } | skiff_nri::Error::Adjustment(_),
            ) => ErrorKind::FailedPrecondition,
            RuntimeError::Nri(_) => ErrorKind::Internal,
        }
    }
}

/// Map a failed `blocking::spawn` join to [`RuntimeError::Task`].
pub(crate) fn task_err(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> RuntimeError {
    move |source| RuntimeError::Task { what, source }
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { op, path, source }
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    skiff_shim_proto::clock::now_ns()
}

/// A fresh 64-hex id.
fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Whether `s` has the form [`new_id`] gives (so it is safe as a path component).
fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The shared state of the pod and container services.
pub struct Runtime {
    config: Arc<Config>,
    meta: Arc<MetaStore>,
    images: Arc<Images>,
    cgroups: Cgroups,
    host: HostInfo,
    /// What each handler supports (`rro` differs between them).
    features: crate::info::HandlerFeatureMap,
    shim_binary: Arc<shim::ShimExe>,
    pause_binary: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    events: Events,
    cpu: crate::cgroups::CpuRate,
    disk: metrics::DiskUsageCache,
    watchers: liveness::Watchers,
    metrics: Arc<crate::metrics::Metrics>,
    net: std::sync::OnceLock<Arc<network::PodNetwork>>,
    streaming: std::sync::OnceLock<Arc<crate::stream::Server>>,
    nri: std::sync::OnceLock<Arc<skiff_nri::Adaptation>>,
    nri_domain: std::sync::OnceLock<Arc<dyn skiff_nri::Domain>>,
    /// Pods and containers being created, hidden from CRI until they are complete.
    creating: nri::Creating,
}

impl Runtime {
    /// The runtime over `meta` and `images`, with the shim binary at `shim`.
    pub fn new(
        config: Arc<Config>,
        meta: Arc<MetaStore>,
        images: Arc<Images>,
        shim: PathBuf,
        features: crate::info::HandlerFeatureMap,
    ) -> Arc<Runtime> {
        let pause_binary = shim.with_file_name("skiff-pause");
        Arc::new(Runtime {
            cgroups: Cgroups::new(config.cgroup_mode),
            host: HostInfo::detect(),
            features,
            config,
            meta,
            images,
            shim_binary: Arc::new(shim::ShimExe::new(shim)),
            pause_binary,
            locks: Mutex::new(HashMap::new()),
            events: Events::new(),
            cpu: crate::cgroups::CpuRate::default(),
            disk: metrics::DiskUsageCache::default(),
            watchers: liveness::Watchers::default(),
            metrics: crate::metrics::Metrics::new(),
            net: std::sync::OnceLock::new(),
            streaming: std::sync::OnceLock::new(),
            nri: std::sync::OnceLock::new(),
            nri_domain: std::sync::OnceLock::new(),
            creating: nri::Creating::default(),
        })
    }

    /// The metrics this runtime keeps (served when `[metrics] address` is set).
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }

    /// Serialise operations on one object.
    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, m| Arc::strong_count(m) > 1);
            locks.entry(id.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Every pod record. A damaged one (it does not decode) is reported and left out, so
    /// one bad record does not hide the others; looking it up by id reports it again.
    fn pods(&self) -> Result<Vec<PodRecord>, RuntimeError> {
        self.records(Table::PODS, "pod sandbox")
    }

    /// Every container record; a damaged one is reported and left out, as in [`Runtime::pods`].
    fn containers(&self) -> Result<Vec<ContainerRecord>, RuntimeError> {
        self.records(Table::CONTAINERS, "container")
    }

    fn records<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        what: &'static str,
    ) -> Result<Vec<T>, RuntimeError> {
        Ok(self
            .meta
            .list_each::<T>(table)?
            .into_iter()
            .filter_map(|(id, r)| match r {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!(id = %id, error = %e, "the record of {what} {id} is damaged; it is left out");
                    None
                }
            })
            .collect())
    }

    /// The full id for `id`: itself, or the one id it is a unique prefix of.
    fn resolve(
        &self,
        table: Table,
        what: &'static str,
        id: &str,
    ) -> Result<Option<String>, RuntimeError> {
        if id.is_empty() {
            return Ok(None);
        }
        if self.meta.get::<serde_json::Value>(table, id)?.is_some() {
            return Ok(Some(id.to_string()));
        }
        let keys: Vec<String> = self
            .meta
            .list::<serde_json::Value>(table)?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(id))
            .collect();
        match keys.len() {
            0 => Ok(None),
            1 => Ok(keys.into_iter().next()),
            _ => Err(RuntimeError::Ambiguous {
                what,
                id: id.to_string(),
            }),
        }
    }

    fn pod(&self, id: &str) -> Result<Option<PodRecord>, RuntimeError> {
        match self.resolve(Table::PODS, "pod sandbox", id)? {
            Some(full) => Ok(self.meta.get(Table::PODS, &full)?),
            None => Ok(None),
        }
    }

    fn must_pod(&self, id: &str) -> Result<PodRecord, RuntimeError> {
        self.pod(id)?.ok_or_else(|| RuntimeError::NotFound {
            what: "pod sandbox",
            id: id.to_string(),
        })
    }

    /// A pod as CRI may see it: not one still being created.
    fn visible_pod(&self, id: &str) -> Result<PodRecord, RuntimeError> {
        self.must_pod(id).and_then(|p| {
            if self.creating.contains(&p.id) {
                Err(RuntimeError::NotFound {
                    what: "pod sandbox",
                    id: id.to_string(),
                })
            } else {
                Ok(p)
            }
        })
    }

    /// A container as CRI may see it: not one still being created.
    fn visible_container(&self, id: &str) -> Result<ContainerRecord, RuntimeError> {
        self.must_container(id).and_then(|c| {
            if self.creating.contains(&c.id) {
                Err(RuntimeError::NotFound {
                    what: "container",
                    id: id.to_string(),
                })
            } else {
                Ok(c)
            }
        })
    }

    fn container(&self, id: &str) -> Result<Option<ContainerRecord>, RuntimeError> {
        match self.resolve(Table::CONTAINERS, "container", id)? {
            Some(full) => Ok(self.meta.get(Table::CONTAINERS, &full)?),
            None => Ok(None),
        }
    }

    fn must_container(&self, id: &str) -> Result<ContainerRecord, RuntimeError> {
        self.container(id)?.ok_or_else(|| RuntimeError::NotFound {
            what: "container",
            id: id.to_string(),
        })
    }

    fn save_pod(&self, p: &PodRecord) -> Result<(), RuntimeError> {
        Ok(self.meta.put(Table::PODS, &p.id, p)?)
    }

    fn save_container(&self, c: &ContainerRecord) -> Result<(), RuntimeError> {
        Ok(self.meta.put(Table::CONTAINERS, &c.id, c)?)
    }

    /// Reserve `key` for `id` in `table`; fails if another id holds it.
    fn reserve(
        &self,
        table: Table,
        what: &'static str,
        key: &str,
        id: &str,
    ) -> Result<(), RuntimeError> {
        let holder = self.meta.write(|tx| {
            if let Some(holder) = tx.get::<String>(table, key)? {
                return Ok(Some(holder));
            }
            tx.put(table, key, &id.to_string())?;
            Ok(None)
        })?;
        match holder {
            Some(holder) if holder != id => Err(RuntimeError::NameTaken {
                what,
                name: key.to_string(),
                id: holder,
            }),
            _ => Ok(()),
        }
    }

    fn release(&self, table: Table, key: &str) {
        if let Err(e) = self.meta.delete(table, key) {
            tracing::warn!(key, error = %e, "release name");
        }
    }

    /// Ids of containers that use image `image_id` (for RemoveImage).
    pub fn containers_using(&self, image_id: &str) -> Vec<String> {
        self.containers()
            .map(|cs| {
                cs.into_iter()
                    .filter(|c| {
                        c.image_id == image_id || c.volume_images.iter().any(|v| v == image_id)
                    })
                    .map(|c| c.id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The handler (runtime binary and root) for a RuntimeClass name.
    fn handler(&self, name: &str) -> Result<crate::config::Handler, RuntimeError> {
        let key = if name.is_empty() {
            self.config.default_handler.as_str()
        } else {
            name
        };
        self.config.handlers.get(key).cloned().ok_or_else(|| {
            RuntimeError::Invalid(format!("no runtime handler {name:?} is configured"))
        })
    }

    /// Reload state after a restart: reconnect to live shims, account for dead ones,
    /// and watch running containers again.
    pub async fn recover(self: &Arc<Self>) -> Result<(), RuntimeError> {
        pod::recover(self).await
    }

    /// Serve the pod, container, stats and streaming ports from this runtime.
    pub fn install(self: &Arc<Self>, ports: &mut skiff_cri::Ports) {
        let p = Arc::new(Service(self.clone()));
        ports.pods = p.clone();
        ports.containers = p.clone();
        ports.stats = p.clone();
        ports.streaming = p;
    }
}

/// The port implementations (one type for all four, split across the files).
pub struct Service(pub Arc<Runtime>);

/// Labels match a selector when every selector key has the same value.
fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The CRI config of a pod record; a damaged one is reported and read as empty (the
/// pod's status then says so).
fn pod_config(p: &PodRecord) -> api::PodSandboxConfig {
    records::decode(&p.config).unwrap_or_else(|e| {
        tracing::error!(pod_id = %p.id, error = %e, "the pod sandbox's record is damaged");
        Default::default()
    })
}

/// The CRI config of a container record; a damaged one is reported and read as empty
/// (ContainerStatus then shows the container as unknown).
fn container_config(c: &ContainerRecord) -> api::ContainerConfig {
    records::decode(&c.config).unwrap_or_else(|e| {
        tracing::error!(container_id = %c.id, error = %e, "the container's record is damaged");
        Default::default()
    })
}

impl crate::metrics::StateSource for Runtime {
    fn pods(&self) -> (u64, u64) {
        let pods = Runtime::pods(self).unwrap_or_default();
        let ready = pods
            .iter()
            .filter(|p| p.state == records::PodState::Ready)
            .count() as u64;
        (ready, pods.len() as u64 - ready)
    }

    fn containers(&self) -> (u64, u64, u64) {
        let mut n = (0, 0, 0);
        for c in Runtime::containers(self).unwrap_or_default() {
            match c.state {
                records::CtrState::Created => n.0 += 1,
                records::CtrState::Running => n.1 += 1,
                records::CtrState::Exited => n.2 += 1,
            }
        }
        n
    }

    fn shims(&self) -> u64 {
        self.watchers.len() as u64
    }

    fn streaming_sessions(&self) -> u64 {
        self.streaming.get().map_or(0, |s| s.sessions() as u64)
    }
}
