//! The info port: Version, Status, RuntimeConfig, UpdateRuntimeConfig.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use skiff_cri::api;
use skiff_cri::ports::{InfoPort, PortResult};
use tonic::async_trait;

use crate::config::{Config, NetworkMode};
use crate::error::ServiceError;
use crate::meta::{MetaStore, Table};

/// The CRI runtime name skiff reports.
pub const RUNTIME_NAME: &str = "skiff";
/// The CRI API version skiff speaks.
pub const RUNTIME_API_VERSION: &str = "v1";
/// The version of the kubelet-facing API (`VersionResponse.version`).
pub const KUBELET_API_VERSION: &str = "0.1.0";

/// Answers identity and readiness from the daemon's config and host probes.
pub struct Info {
    config: Arc<Config>,
    meta: Arc<MetaStore>,
    shim: PathBuf,
    io_engine: skiff_uring_io::Engine,
    network_problem: Option<String>,
    features: HandlerFeatureMap,
}

impl Info {
    /// An info port for a daemon with `config`, whose shim binary is `shim`.
    pub fn new(
        config: Arc<Config>,
        meta: Arc<MetaStore>,
        shim: PathBuf,
        network_problem: Option<String>,
        features: HandlerFeatureMap,
    ) -> Info {
        Info {
            config,
            meta,
            shim,
            io_engine: skiff_uring_io::select(),
            network_problem,
            features,
        }
    }

    fn handler_features(&self, name: &str) -> api::RuntimeHandlerFeatures {
        let key = if name.is_empty() {
            self.config.default_handler.as_str()
        } else {
            name
        };
        api::RuntimeHandlerFeatures {
            recursive_read_only_mounts: self
                .features
                .get(key)
                .is_some_and(|f| f.recursive_read_only),
            // Only the native handler is built and tested for user-namespaced pods
            // (skiff makes the idmapped mounts; runc 1.1.5 could not take the rest).
            user_namespaces: self.features.get(key).is_some_and(|f| f.user_namespaces),
        }
    }

    /// Why pod networking is not ready, or `None` when it is. In CNI mode this is read
    /// now: a valid network list whose plugins are all installed (a configuration a
    /// network add-on installs after skiffd started counts from then on).
    fn network_problem(&self) -> Option<String> {
        if self.config.network_mode != NetworkMode::Cni {
            return self.network_problem.clone();
        }
        skiff_net::cni::Cni::new(
            self.config.cni_conf_dir.clone(),
            self.config.cni_bin_dirs.clone(),
        )
        .load()
        .err()
        .map(|e| e.to_string())
    }

    /// Why the runtime is not ready, or `None` when it is.
    fn runtime_problem(&self) -> Option<String> {
        let handler = self.config.handler("")?;
        if !handler.native && find_executable(&handler.binary).is_none() {
            return Some(format!(
                "OCI runtime {:?} for the default handler {:?} is not installed",
                handler.binary.display().to_string(),
                handler.name
            ));
        }
        if !is_executable(&self.shim) {
            return Some(format!("skiff-shim is missing at {}", self.shim.display()));
        }
        None
    }
}

/// What an OCI runtime says it supports (`<runtime> features`, runc ≥ 1.1 and crun ≥ 1.8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerFeatures {
    /// The `rro` mount option (recursive read-only, needs mount_setattr).
    pub recursive_read_only: bool,
    /// User-namespaced pods (`NamespaceMode::POD` user namespaces): the native handler
    /// where the kernel idmaps mounts on the filesystem of skiff's root.
    pub user_namespaces: bool,
}

/// What each configured handler supports, by handler name.
pub type HandlerFeatureMap = std::collections::BTreeMap<String, HandlerFeatures>;

/// Probe every configured handler once (at start-up).
pub fn probe_all(config: &Config) -> HandlerFeatureMap {
    let idmap = match crate::sys::idmap_supported(&config.root) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(root = %config.root.display(), error = %e, "no idmapped mounts here: no user-namespaced pods");
            false
        }
    };
    config
        .handlers
        .iter()
        .map(|(name, h)| {
            let features = if h.native {
                // libcontainer mounts `rro` with mount_setattr (Linux 5.12).
                HandlerFeatures {
                    recursive_read_only: kernel_at_least(5, 12),
                    // Overlayfs takes idmapped layers since 5.19.
                    user_namespaces: idmap && kernel_at_least(5, 19),
                }
            } else {
                probe_features(&h.binary)
            };
            (name.clone(), features)
        })
        .collect()
}

/// Whether the running kernel's version is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Ask `binary features` (a missing binary or an old runtime supports nothing extra).
pub fn probe_features(binary: &Path) -> HandlerFeatures {
    let Some(path) = find_executable(binary) else {
        return HandlerFeatures::default();
    };
    let out = std::process::Command::new(path)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else {
        return HandlerFeatures::default();
    };
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let rro = doc["mountOptions"]
        .as_array()
        .is_some_and(|opts| opts.iter().any(|o| o == "rro"));
    HandlerFeatures {
        recursive_read_only: out.status.success() && rro,
        user_namespaces: false,
    }
}

/// The absolute path of `binary`: itself when absolute, else looked up in `PATH`.
pub fn find_executable(binary: &Path) -> Option<PathBuf> {
    if binary.is_absolute() {
        return is_executable(binary).then(|| binary.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn condition(kind: &str, problem: Option<String>, reason: &str) -> api::RuntimeCondition {
    api::RuntimeCondition {
        r#type: kind.into(),
        status: problem.is_none(),
        reason: if problem.is_some() {
            reason.into()
        } else {
            String::new()
        },
        message: problem.unwrap_or_default(),
    }
}

#[async_trait]
impl InfoPort for Info {
    async fn version(&self, _req: api::VersionRequest) -> PortResult<api::VersionResponse> {
        Ok(api::VersionResponse {
            version: KUBELET_API_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        })
    }

    async fn status(&self, req: api::StatusRequest) -> PortResult<api::StatusResponse> {
        let runtime = condition("RuntimeReady", self.runtime_problem(), "RuntimeNotReady");
        let network = condition(
            "NetworkReady",
            self.network_problem(),
            "NetworkPluginNotReady",
        );
        let mut handlers = vec![api::RuntimeHandler {
            name: String::new(),
            features: Some(self.handler_features("")),
        }];
        handlers.extend(self.config.handlers.keys().map(|name| api::RuntimeHandler {
            name: name.clone(),
            features: Some(self.handler_features(name)),
        }));
        let mut info = HashMap::new();
        if req.verbose {
            let config = serde_json::to_string(&*self.config).unwrap_or_default();
            info.insert("config".into(), config);
            let host = serde_json::json!({
                "cgroupMode": self.config.cgroup_mode,
                "ioEngine": self.io_engine.name(),
                "ioEngineReason": match &self.io_engine {
                    skiff_uring_io::Engine::Uring => String::new(),
                    skiff_uring_io::Engine::Blocking(why) => why.to_string(),
                },
                "shim": self.shim,
                "defaultHandlerBinary": self.config.handler("").and_then(|h| find_executable(&h.binary)),
            });
            info.insert("host".into(), host.to_string());
        }
        Ok(api::StatusResponse {
            status: Some(api::RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info,
            runtime_handlers: handlers,
            features: Some(api::RuntimeFeatures {
                // The spec generator honours SupplementalGroupsPolicy Strict.
                supplemental_groups_policy: true,
                // User-namespaced pods get their own network namespace, never the host's.
                user_namespaces_host_network: false,
            }),
        })
    }

    async fn runtime_config(
        &self,
        _req: api::RuntimeConfigRequest,
    ) -> PortResult<api::RuntimeConfigResponse> {
        Ok(api::RuntimeConfigResponse {
            linux: Some(api::LinuxRuntimeConfiguration {
                cgroup_driver: api::CgroupDriver::Cgroupfs as i32,
            }),
        })
    }

    async fn update_runtime_config(
        &self,
        req: api::UpdateRuntimeConfigRequest,
    ) -> PortResult<api::UpdateRuntimeConfigResponse> {
        let cidr = req
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if cidr.is_empty() {
            return Ok(api::UpdateRuntimeConfigResponse {});
        }
        if self.config.pod_cidr_from_file {
            tracing::info!(kubelet_cidr = %cidr, file_cidr = %self.config.pod_cidr,
                "ignoring the kubelet's pod CIDR: the config file sets network.pod_cidr");
        } else {
            self.meta
                .put(Table::META, "kubelet_pod_cidr", &cidr)
                .map_err(ServiceError::from)?;
            tracing::info!(pod_cidr = %cidr, "recorded the kubelet's pod CIDR");
        }
        Ok(api::UpdateRuntimeConfigResponse {})
    }
}
