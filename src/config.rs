//! skiffd's configuration: the TOML file, the command-line flags and the defaults.
//!
//! Precedence is flag > file > default. Every key is optional. The schema is fixed:
//! keys whose feature is not built yet are accepted, validated and reported as
//! such. Unknown keys and bad values are refused with the file, the key and why.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Where skiffd looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/skiff/config.toml";
/// Default persistent root.
pub const DEFAULT_ROOT: &str = "/var/lib/skiff";
/// Default runtime state directory.
pub const DEFAULT_STATE: &str = "/run/skiff";
/// Default CRI socket.
pub const DEFAULT_SOCKET: &str = "/run/skiff/skiff.sock";
/// How long a shim may go without answering before skiffd takes it for dead.
pub const DEFAULT_SHIM_LIVENESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Default pod CIDR of the built-in bridge network.
pub const DEFAULT_POD_CIDR: &str = "10.88.0.0/16";
/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "skiff0";
/// Default CNI configuration directory (as containerd's).
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Default CNI plugin directories, searched in order: Debian's
/// `containernetworking-plugins` installs into `/usr/lib/cni`, upstream releases into
/// `/opt/cni/bin`.
pub const DEFAULT_CNI_BIN_DIR: &str = "/usr/lib/cni:/opt/cni/bin";
/// Default registry hosts directory (containerd's `certs.d` layout).
pub const DEFAULT_REGISTRY_CONFIG_PATH: &str = "/etc/skiff/certs.d";
/// Default streaming server address: loopback, ephemeral port.
pub const DEFAULT_STREAMING_ADDRESS: &str = "127.0.0.1:0";
/// Where NRI plugins connect (NRI's default).
pub const DEFAULT_NRI_SOCKET: &str = "/var/run/nri/nri.sock";
/// Pre-installed NRI plugins (NRI's default).
pub const DEFAULT_NRI_PLUGIN_PATH: &str = "/opt/nri/plugins";
/// Their configuration files (NRI's default).
pub const DEFAULT_NRI_PLUGIN_CONFIG_PATH: &str = "/etc/nri/conf.d";
/// How long an NRI plugin has to register (NRI's default).
pub const DEFAULT_NRI_REGISTRATION_TIMEOUT_MS: u64 = 5000;
/// How long an NRI plugin has to answer an event (NRI's default).
pub const DEFAULT_NRI_REQUEST_TIMEOUT_MS: u64 = 2000;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` does not exist or cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The io error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("config file {path}: key `{key}`: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The dotted key path (`.` when the file as a whole is wrong).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("config {origin}: key `{key}`: {reason}")]
    Invalid {
        /// The file, or `flags`.
        origin: String,
        /// The dotted key path.
        key: String,
        /// Why the value is refused.
        reason: String,
    },
}

/// The config file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Persistent data (images, snapshots, metadata).
    pub root: Option<PathBuf>,
    /// Runtime state (pods, shims, namespaces).
    pub state: Option<PathBuf>,
    /// The CRI socket.
    pub socket: Option<PathBuf>,
    /// Registry access.
    pub registry: RegistrySection,
    /// Pod networking.
    pub network: NetworkSection,
    /// OCI runtimes.
    pub runtime: RuntimeSection,
    /// The streaming server (exec, attach, port-forward).
    pub streaming: StreamingSection,
    /// The Prometheus endpoint.
    pub metrics: MetricsSection,
    /// Image layers on disk.
    pub images: ImagesSection,
    /// NRI plugins.
    pub nri: NriSection,
}

/// `[nri]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NriSection {
    /// Serve NRI plugins (default true).
    pub enable: Option<bool>,
    /// The socket external plugins connect to.
    pub socket_path: Option<PathBuf>,
    /// Pre-installed plugins (`NN-name` executables) launched at start.
    pub plugin_path: Option<PathBuf>,
    /// Their configuration files (`NN-name.conf` or `name.conf`).
    pub plugin_config_path: Option<PathBuf>,
    /// Milliseconds a plugin has to register, and to answer Configure and Synchronize.
    pub registration_timeout_ms: Option<u64>,
    /// Milliseconds a plugin has to answer an event.
    pub request_timeout_ms: Option<u64>,
    /// Only pre-installed plugins: no socket for external ones.
    pub disable_connections: Option<bool>,
}

/// `[images]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesSection {
    /// Flush a layer's files to disk before recording it (default true).
    pub durable: Option<bool>,
}

/// `[registry]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// A directory of `<host>/hosts.toml` files (containerd's format).
    pub config_path: Option<PathBuf>,
}

/// `[network] mode`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// skiff's built-in netlink bridge networking.
    #[default]
    Bridge,
    /// CNI plugins from `cni_conf_dir` / `cni_bin_dir`.
    Cni,
}

/// `[network]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// `bridge` or `cni`.
    pub mode: Option<NetworkMode>,
    /// The pod CIDR of the built-in bridge.
    pub pod_cidr: Option<String>,
    /// The bridge name.
    pub bridge: Option<String>,
    /// CNI configuration directory.
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directories, `:`-separated (as `CNI_PATH`).
    pub cni_bin_dir: Option<String>,
}

/// `[runtime]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// The handler used for RuntimeClass `""`.
    pub default_handler: Option<String>,
    /// Handlers by RuntimeClass handler name.
    pub handlers: BTreeMap<String, HandlerSection>,
    /// Seconds a pod's shim may go without answering (stopped, hung) before skiffd
    /// kills it and reports its containers exited.
    pub shim_liveness_timeout: Option<u64>,
}

/// `[runtime.handlers.<name>]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerSection {
    /// Run containers with skiff's own handler in the shim (no runtime binary).
    pub native: Option<bool>,
    /// The OCI runtime binary (absolute path, or a name looked up in PATH).
    pub binary: Option<PathBuf>,
    /// The OCI runtime's state root.
    pub root: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `host:port` of the Prometheus endpoint (`/metrics`); unset: no endpoint.
    pub address: Option<String>,
}

/// `[streaming]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingSection {
    /// `host:port` of the streaming server.
    pub address: Option<String>,
    /// Seconds a streaming session may move no byte before it is closed (default 14400,
    /// the kubelet's `streamingConnectionIdleTimeout`).
    pub idle_timeout: Option<u64>,
    /// Streaming sessions at once (default 1000); more are refused with 503.
    pub max_sessions: Option<usize>,
}

/// Values given on the command line; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--root`.
    pub root: Option<PathBuf>,
    /// `--state`.
    pub state: Option<PathBuf>,
}

/// The cgroup layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// cgroup v1 only.
    Legacy,
    /// v1 controllers with v2 mounted beside them (`/sys/fs/cgroup/unified`).
    Hybrid,
    /// Pure cgroup v2.
    Unified,
}

impl CgroupMode {
    /// Read the host's cgroup layout from `/sys/fs/cgroup`.
    pub fn detect() -> CgroupMode {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(base: &Path) -> CgroupMode {
        if base.join("cgroup.controllers").exists() {
            CgroupMode::Unified
        } else if base.join("unified").join("cgroup.controllers").exists() {
            CgroupMode::Hybrid
        } else {
            CgroupMode::Legacy
        }
    }
}

/// One OCI runtime handler, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Handler {
    /// The RuntimeClass handler name.
    pub name: String,
    /// skiff's own handler in the shim: `binary` is unused.
    pub native: bool,
    /// The binary to execute.
    pub binary: PathBuf,
    /// The runtime's `--root`.
    pub root: PathBuf,
}

/// The effective configuration: defaults, file and flags merged and checked.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Persistent data.
    pub root: PathBuf,
    /// Runtime state.
    pub state: PathBuf,
    /// The CRI socket.
    pub socket: PathBuf,
    /// Registry hosts directory.
    pub registry_config_path: PathBuf,
    /// Flush pulled layers to disk before recording them (skipped on tmpfs roots).
    pub images_durable: bool,
    /// Network mode.
    pub network_mode: NetworkMode,
    /// The pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// Whether the pod CIDR came from the file (then the kubelet's is ignored).
    pub pod_cidr_from_file: bool,
    /// The bridge name.
    pub bridge: String,
    /// CNI configuration directory.
    pub cni_conf_dir: PathBuf,
    /// CNI plugin directories, searched in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The handler name used for RuntimeClass `""`.
    pub default_handler: String,
    /// How long a shim may go without answering before it is taken for dead.
    pub shim_liveness_timeout: std::time::Duration,
    /// Every handler, by name (always includes `runc`, `crun` and `native`).
    pub handlers: BTreeMap<String, Handler>,
    /// The streaming server address.
    pub streaming_address: SocketAddr,
    /// The Prometheus endpoint, if any.
    pub metrics_address: Option<SocketAddr>,
    /// The streaming server's session bounds.
    #[serde(skip)]
    pub streaming_limits: crate::stream::Limits,
    /// The host's cgroup layout, as detected.
    pub cgroup_mode: CgroupMode,
    /// NRI, when enabled.
    pub nri: Option<NriConfig>,
}

/// The effective `[nri]` settings.
#[derive(Debug, Clone, Serialize)]
pub struct NriConfig {
    /// The socket, unless connections are disabled.
    pub socket_path: Option<PathBuf>,
    /// Pre-installed plugins.
    pub plugin_path: PathBuf,
    /// Their configuration files.
    pub plugin_config_path: PathBuf,
    /// Registration (and Configure, Synchronize) timeout.
    pub registration_timeout: std::time::Duration,
    /// Event timeout.
    pub request_timeout: std::time::Duration,
}

impl Config {
    /// Load the configuration: `--config FILE` (must exist) or the default file (may be
    /// missing), then apply the flags.
    pub fn load(explicit: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let (file, path) = match explicit {
            Some(path) => (Self::read(path)?, Some(path.to_path_buf())),
            None => {
                let path = Path::new(DEFAULT_CONFIG);
                match std::fs::read_to_string(path) {
                    Ok(text) => (Self::parse(&text, path)?, Some(path.to_path_buf())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        (FileConfig::default(), None)
                    }
                    Err(source) => {
                        return Err(ConfigError::Read {
                            path: path.to_path_buf(),
                            source,
                        });
                    }
                }
            }
        };
        Self::resolve(file, path, flags, CgroupMode::detect())
    }

    fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse a config file's text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            key: ".".into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            key: e.path().to_string(),
            message: e.inner().message().trim().to_string(),
        })
    }

    /// Merge defaults, the parsed file and the flags, and check every value.
    pub fn resolve(
        file: FileConfig,
        path: Option<PathBuf>,
        flags: &Overrides,
        cgroup_mode: CgroupMode,
    ) -> Result<Config, ConfigError> {
        let origin = path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            origin: origin.clone(),
            key: key.into(),
            reason,
        };
        let pick = |flag: &Option<PathBuf>, file: &Option<PathBuf>, default: &str| {
            flag.clone()
                .or_else(|| file.clone())
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let root = pick(&flags.root, &file.root, DEFAULT_ROOT);
        let state = pick(&flags.state, &file.state, DEFAULT_STATE);
        let socket = pick(&flags.socket, &file.socket, DEFAULT_SOCKET);
        for (key, p) in [("root", &root), ("state", &state), ("socket", &socket)] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        // sun_path holds 108 bytes including the NUL.
        if socket.as_os_str().len() > 107 {
            return Err(invalid(
                "socket",
                format!(
                    "{} is longer than a unix socket path may be (107 bytes)",
                    socket.display()
                ),
            ));
        }

        let pod_cidr_text = file.network.pod_cidr.clone();
        let pod_cidr: Ipv4Net = pod_cidr_text
            .as_deref()
            .unwrap_or(DEFAULT_POD_CIDR)
            .parse()
            .map_err(|e| {
                invalid(
                    "network.pod_cidr",
                    format!(
                        "{:?} is not an IPv4 CIDR: {e}",
                        pod_cidr_text.as_deref().unwrap_or("")
                    ),
                )
            })?;
        if pod_cidr.prefix_len() > 30 {
            return Err(invalid(
                "network.pod_cidr",
                format!("{pod_cidr} is too small for a gateway and pods (at most /30)"),
            ));
        }
        let pod_cidr = pod_cidr.trunc();

        let bridge = file
            .network
            .bridge
            .clone()
            .unwrap_or_else(|| DEFAULT_BRIDGE.into());
        if !valid_ifname(&bridge) {
            return Err(invalid(
                "network.bridge",
                format!(
                    "{bridge:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
                ),
            ));
        }

        let mut handlers = BTreeMap::new();
        for builtin in ["runc", "crun", "native"] {
            let native = builtin == "native";
            handlers.insert(
                builtin.to_string(),
                Handler {
                    name: builtin.into(),
                    native,
                    binary: if native {
                        PathBuf::new()
                    } else {
                        PathBuf::from(builtin)
                    },
                    root: state.join("runtime").join(builtin),
                },
            );
        }
        for (name, h) in &file.runtime.handlers {
            if !valid_handler_name(name) {
                return Err(invalid(
                    &format!("runtime.handlers.{name}"),
                    "a handler name must be a DNS label (lowercase letters, digits, '-', at most 63)".into(),
                ));
            }
            let builtin = handlers.get(name);
            let native = h
                .native
                .unwrap_or_else(|| builtin.is_some_and(|b: &Handler| b.native));
            if native && h.binary.is_some() {
                return Err(invalid(
                    &format!("runtime.handlers.{name}.binary"),
                    "a native handler runs no binary".into(),
                ));
            }
            let binary = if native {
                PathBuf::new()
            } else {
                h.binary.clone().unwrap_or_else(|| match builtin {
                    Some(b) if !b.native => b.binary.clone(),
                    _ => PathBuf::from(name),
                })
            };
            if !native && binary.as_os_str().is_empty() {
                return Err(invalid(
                    &format!("runtime.handlers.{name}.binary"),
                    "must not be empty".into(),
                ));
            }
            let hroot = h
                .root
                .clone()
                .unwrap_or_else(|| state.join("runtime").join(name));
            if !hroot.is_absolute() {
                return Err(invalid(
                    &format!("runtime.handlers.{name}.root"),
                    format!("{} is not an absolute path", hroot.display()),
                ));
            }
            handlers.insert(
                name.clone(),
                Handler {
                    name: name.clone(),
                    native,
                    binary,
                    root: hroot,
                },
            );
        }
        // The native handler: critest passes as many specs with it as with runc, and
        // it executes no runtime binary (docs/decisions.md).
        let default_handler = file
            .runtime
            .default_handler
            .clone()
            .unwrap_or_else(|| "native".into());
        if !handlers.contains_key(&default_handler) {
            return Err(invalid(
                "runtime.default_handler",
                format!(
                    "{default_handler:?} is not a handler (known: {})",
                    handlers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }

        let shim_liveness_timeout = match file.runtime.shim_liveness_timeout {
            None => DEFAULT_SHIM_LIVENESS_TIMEOUT,
            Some(s) if (1..=3600).contains(&s) => std::time::Duration::from_secs(s),
            Some(s) => {
                return Err(invalid(
                    "runtime.shim_liveness_timeout",
                    format!("{s} is not between 1 and 3600 seconds"),
                ));
            }
        };

        let address_text = file
            .streaming
            .address
            .clone()
            .unwrap_or_else(|| DEFAULT_STREAMING_ADDRESS.into());
        let streaming_address: SocketAddr = address_text.parse().map_err(|e| {
            invalid(
                "streaming.address",
                format!("{address_text:?} is not an ip:port address: {e}"),
            )
        })?;

        let metrics_address = match &file.metrics.address {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "metrics.address",
                    format!("{text:?} is not an ip:port address: {e}"),
                )
            })?),
        };
        let defaults = crate::stream::Limits::default();
        let streaming_limits = crate::stream::Limits {
            idle_timeout: match file.streaming.idle_timeout {
                None => defaults.idle_timeout,
                Some(s) if s > 0 => std::time::Duration::from_secs(s),
                Some(_) => {
                    return Err(invalid(
                        "streaming.idle_timeout",
                        "must be at least 1 second".into(),
                    ));
                }
            },
            max_sessions: match file.streaming.max_sessions {
                None => defaults.max_sessions,
                Some(n) if (1..=1_000_000).contains(&n) => n,
                Some(n) => {
                    return Err(invalid(
                        "streaming.max_sessions",
                        format!("{n} is not between 1 and 1000000"),
                    ));
                }
            },
        };

        let path_or =
            |p: &Option<PathBuf>, key: &str, default: &str| -> Result<PathBuf, ConfigError> {
                let p = p.clone().unwrap_or_else(|| PathBuf::from(default));
                if p.is_absolute() {
                    Ok(p)
                } else {
                    Err(invalid(
                        key,
                        format!("{} is not an absolute path", p.display()),
                    ))
                }
            };
        let nri = if file.nri.enable.unwrap_or(true) {
            let ms = |v: Option<u64>, key: &str, default: u64| match v {
                None => Ok(std::time::Duration::from_millis(default)),
                Some(v) if (1..=300_000).contains(&v) => Ok(std::time::Duration::from_millis(v)),
                Some(v) => Err(invalid(
                    key,
                    format!("{v} is not between 1 and 300000 milliseconds"),
                )),
            };
            let socket = path_or(&file.nri.socket_path, "nri.socket_path", DEFAULT_NRI_SOCKET)?;
            if socket.as_os_str().len() > 107 {
                return Err(invalid(
                    "nri.socket_path",
                    format!(
                        "{} is longer than a unix socket path may be (107 bytes)",
                        socket.display()
                    ),
                ));
            }
            Some(NriConfig {
                socket_path: (!file.nri.disable_connections.unwrap_or(false)).then_some(socket),
                plugin_path: path_or(
                    &file.nri.plugin_path,
                    "nri.plugin_path",
                    DEFAULT_NRI_PLUGIN_PATH,
                )?,
                plugin_config_path: path_or(
                    &file.nri.plugin_config_path,
                    "nri.plugin_config_path",
                    DEFAULT_NRI_PLUGIN_CONFIG_PATH,
                )?,
                registration_timeout: ms(
                    file.nri.registration_timeout_ms,
                    "nri.registration_timeout_ms",
                    DEFAULT_NRI_REGISTRATION_TIMEOUT_MS,
                )?,
                request_timeout: ms(
                    file.nri.request_timeout_ms,
                    "nri.request_timeout_ms",
                    DEFAULT_NRI_REQUEST_TIMEOUT_MS,
                )?,
            })
        } else {
            None
        };
        Ok(Config {
            nri,
            registry_config_path: path_or(
                &file.registry.config_path,
                "registry.config_path",
                DEFAULT_REGISTRY_CONFIG_PATH,
            )?,
            images_durable: file.images.durable.unwrap_or(true),
            network_mode: file.network.mode.unwrap_or_default(),
            pod_cidr,
            pod_cidr_from_file: pod_cidr_text.is_some(),
            bridge,
            cni_conf_dir: path_or(
                &file.network.cni_conf_dir,
                "network.cni_conf_dir",
                DEFAULT_CNI_CONF_DIR,
            )?,
            cni_bin_dirs: path_list(file.network.cni_bin_dir.as_deref(), DEFAULT_CNI_BIN_DIR)
                .map_err(|reason| invalid("network.cni_bin_dir", reason))?,
            default_handler,
            shim_liveness_timeout,
            handlers,
            streaming_address,
            streaming_limits,
            metrics_address,
            cgroup_mode,
            file: path,
            root,
            state,
            socket,
        })
    }

    /// The handler for a RuntimeClass handler name (`""` is the default handler).
    pub fn handler(&self, name: &str) -> Option<&Handler> {
        let name = if name.is_empty() {
            &self.default_handler
        } else {
            name
        };
        self.handlers.get(name)
    }

    /// The path of the metadata database.
    pub fn meta_path(&self) -> PathBuf {
        self.root.join("meta.redb")
    }
}

/// The configuration file with every key, each explained, set to its default:
/// `skiffd config default` prints it (a starting point for `/etc/skiff/config.toml`).
/// Keys whose default depends on the host or whose mere presence changes behaviour are
/// left commented out.
pub fn default_file() -> String {
    let liveness = DEFAULT_SHIM_LIVENESS_TIMEOUT.as_secs();
    let stream = crate::stream::Limits::default();
    format!(
        r#"# skiffd configuration ({DEFAULT_CONFIG}). Every key is optional; these are the
# defaults. Command-line flags win over this file.

root = "{DEFAULT_ROOT}"          # persistent data: images, snapshots, metadata
state = "{DEFAULT_STATE}"             # runtime state: pods, shims, namespaces, lock file
socket = "{DEFAULT_SOCKET}" # the CRI socket (mode 0660)

[registry]
# A directory of <host[:port]>/hosts.toml files (containerd's certs.d format): mirrors,
# plain-HTTP registries, CAs. A registry without one is reached over HTTPS.
config_path = "{DEFAULT_REGISTRY_CONFIG_PATH}"

[images]
# Flush each layer's files to disk before recording the layer as pulled, so a power cut
# cannot leave a recorded layer with missing or empty files. One syncfs per layer (it
# also writes out what other processes have dirty on that filesystem). Never done when
# root is on tmpfs or ramfs; false skips it everywhere.
durable = true

[network]
# "bridge": skiff's built-in netlink bridge, veth pairs and IPAM. "cni": the first network
# list in cni_conf_dir, run per the CNI spec (never chosen by itself).
mode = "bridge"
# The built-in bridge's pod CIDR. Set here, it wins over the CIDR the kubelet sends with
# UpdateRuntimeConfig; left out, the kubelet's is used once it sends one.
# pod_cidr = "{DEFAULT_POD_CIDR}"
bridge = "{DEFAULT_BRIDGE}"
cni_conf_dir = "{DEFAULT_CNI_CONF_DIR}"
cni_bin_dir = "{DEFAULT_CNI_BIN_DIR}"

[runtime]
# The handler of RuntimeClass "" (and of pods that name none): skiff's native handler
# (no OCI runtime binary; runc and crun stay available per RuntimeClass).
# default_handler = "native"
# Seconds a pod's shim may go without answering (stopped, hung) before skiffd kills it
# and reports its containers exited.
shim_liveness_timeout = {liveness}

# One table per RuntimeClass handler; runc, crun and native always exist. "native" is
# skiff's own handler in the shim (no runtime binary; docs/native-handler.md).
# [runtime.handlers.crun]
# binary = "/usr/bin/crun"               # absolute, or a name looked up in PATH
# root = "{DEFAULT_STATE}/runtime/crun"   # the runtime's --root
# [runtime.handlers.fast]
# native = true

[streaming]
# Exec, attach and port-forward (SPDY/3.1 and WebSocket). Loopback and an ephemeral port
# by default: the kubelet is on the same node.
address = "{DEFAULT_STREAMING_ADDRESS}"
# Seconds a session may move no byte before it is closed (the kubelet's
# streamingConnectionIdleTimeout).
idle_timeout = {idle}
# Sessions at once; more are refused with 503.
max_sessions = {max}

[metrics]
# host:port of the Prometheus endpoint (GET /metrics). Unset: no endpoint.
# address = "127.0.0.1:1338"

[nri]
# Node Resource Interface plugins (containerd/nri): resource policies, device
# injection, hook injection. Plugins started elsewhere connect to socket_path;
# executables named NN-name in plugin_path are launched by skiffd at start.
enable = true
socket_path = "{DEFAULT_NRI_SOCKET}"
plugin_path = "{DEFAULT_NRI_PLUGIN_PATH}"
plugin_config_path = "{DEFAULT_NRI_PLUGIN_CONFIG_PATH}"   # NN-name.conf or name.conf
# Milliseconds a plugin has to register (and answer Configure and Synchronize), and to
# answer an event; a plugin that misses one is disconnected and skiff goes on without it.
registration_timeout_ms = {DEFAULT_NRI_REGISTRATION_TIMEOUT_MS}
request_timeout_ms = {DEFAULT_NRI_REQUEST_TIMEOUT_MS}
# true: only the pre-installed plugins, no socket.
disable_connections = false
"#,
        idle = stream.idle_timeout.as_secs(),
        max = stream.max_sessions,
    )
}

/// A `:`-separated list of absolute directories (`default` when not given).
fn path_list(text: Option<&str>, default: &str) -> Result<Vec<PathBuf>, String> {
    let text = text.unwrap_or(default);
    let dirs: Vec<PathBuf> = text
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    if dirs.is_empty() {
        return Err("names no directory".into());
    }
    match dirs.iter().find(|d| !d.is_absolute()) {
        Some(d) => Err(format!("{} is not an absolute path", d.display())),
        None => Ok(dirs),
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

fn valid_handler_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<Config, ConfigError> {
        let path = Path::new("/etc/skiff/test.toml");
        let file = Config::parse(text, path)?;
        Config::resolve(
            file,
            Some(path.into()),
            &Overrides::default(),
            CgroupMode::Hybrid,
        )
    }

    #[test]
    fn the_default_file_is_the_defaults() {
        let text = default_file();
        let from_file = resolve(&text).unwrap();
        let from_nothing = resolve("").unwrap();
        let a = serde_json::to_value(&from_file).unwrap();
        let b = serde_json::to_value(&from_nothing).unwrap();
        assert_eq!(a, b);
        // Every section and key of the file format appears, set or commented.
        for key in [
            "root",
            "state",
            "socket",
            "config_path",
            "mode",
            "pod_cidr",
            "bridge",
            "cni_conf_dir",
            "cni_bin_dir",
            "default_handler",
            "shim_liveness_timeout",
            "binary",
            "address",
            "idle_timeout",
            "max_sessions",
            "enable",
            "socket_path",
            "plugin_path",
            "plugin_config_path",
            "registration_timeout_ms",
            "request_timeout_ms",
            "disable_connections",
            "durable",
        ] {
            assert!(text.contains(&format!("{key} =")), "{key} missing");
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = resolve("").unwrap();
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(c.state, PathBuf::from(DEFAULT_STATE));
        assert_eq!(c.pod_cidr.to_string(), "10.88.0.0/16");
        assert!(!c.pod_cidr_from_file);
        assert_eq!(c.bridge, "skiff0");
        assert_eq!(c.default_handler, "native");
        assert_eq!(c.network_mode, NetworkMode::Bridge);
        assert!(c.images_durable);
        assert!(
            !resolve("[images]\ndurable = false\n")
                .unwrap()
                .images_durable
        );
        assert!(resolve("[images]\ndurable = \"no\"\n").is_err());
        assert_eq!(
            c.cni_bin_dirs,
            [PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]
        );
        assert_eq!(c.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.streaming_address.to_string(), "127.0.0.1:0");
        assert_eq!(c.handler("").unwrap().name, "native");
        assert!(c.handler("").unwrap().native);
        assert!(!c.handler("runc").unwrap().native);
        assert!(
            resolve("[runtime.handlers.fast]\nnative = true\n")
                .unwrap()
                .handlers["fast"]
                .native
        );
        assert!(resolve("[runtime.handlers.native]\nbinary = \"/bin/runc\"\n").is_err());
    }

    #[test]
    fn every_host_defaults_to_the_native_handler() {
        for mode in [CgroupMode::Unified, CgroupMode::Hybrid, CgroupMode::Legacy] {
            let c =
                Config::resolve(FileConfig::default(), None, &Overrides::default(), mode).unwrap();
            assert_eq!(c.default_handler, "native", "{mode:?}");
        }
    }

    #[test]
    fn full_schema_parses() {
        let c = resolve(
            r#"
            root = "/data/skiff"
            state = "/run/s"
            socket = "/run/s/s.sock"
            [registry]
            config_path = "/etc/skiff/certs.d"
            [network]
            mode = "cni"
            pod_cidr = "10.200.0.0/24"
            bridge = "br-pods"
            cni_conf_dir = "/etc/cni/net.d"
            cni_bin_dir = "/usr/lib/cni:/usr/local/lib/cni"
            [runtime]
            default_handler = "fast"
            [runtime.handlers.fast]
            binary = "/usr/bin/crun"
            root = "/run/crun"
            [streaming]
            address = "127.0.0.1:10010"
            "#,
        )
        .unwrap();
        assert_eq!(c.network_mode, NetworkMode::Cni);
        assert_eq!(
            c.cni_bin_dirs,
            [
                PathBuf::from("/usr/lib/cni"),
                PathBuf::from("/usr/local/lib/cni")
            ]
        );
        assert!(c.pod_cidr_from_file);
        assert_eq!(
            c.handler("").unwrap().binary,
            PathBuf::from("/usr/bin/crun")
        );
        assert_eq!(
            c.handlers["runc"].root,
            PathBuf::from("/run/s/runtime/runc")
        );
    }

    #[test]
    fn flags_win_over_file() {
        let path = Path::new("/x.toml");
        let file = Config::parse("root = \"/a\"\nsocket = \"/b.sock\"", path).unwrap();
        let flags = Overrides {
            root: Some("/flag".into()),
            ..Default::default()
        };
        let c = Config::resolve(file, Some(path.into()), &flags, CgroupMode::Hybrid).unwrap();
        assert_eq!(c.root, PathBuf::from("/flag"));
        assert_eq!(c.socket, PathBuf::from("/b.sock"));
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = resolve("[network]\npod_cidrr = \"10.0.0.0/8\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/skiff/test.toml") && e.contains("pod_cidrr"),
            "{e}"
        );
        let e = resolve("[network]\npod_cidr = \"10.0.0.0/33\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("network.pod_cidr"), "{e}");
        let e = resolve("[network]\nmode = \"magic\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("network.mode"), "{e}");
        let e = resolve("this is not toml").unwrap_err().to_string();
        assert!(e.contains("/etc/skiff/test.toml"), "{e}");
        let e = resolve("[runtime]\ndefault_handler = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime.default_handler"), "{e}");
        let e = resolve("[streaming]\naddress = \"localhost\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("streaming.address"), "{e}");
        let e = resolve("[network]\ncni_bin_dir = \"/usr/lib/cni:bin\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("network.cni_bin_dir") && e.contains("bin"),
            "{e}"
        );
        let e = resolve("[network]\ncni_bin_dir = \":\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("network.cni_bin_dir"), "{e}");
        let e = resolve("root = \"relative\"").unwrap_err().to_string();
        assert!(e.contains("`root`"), "{e}");
        let e = resolve("[network]\nbridge = \"a-very-long-bridge-name\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("network.bridge"), "{e}");
        let e = resolve("[runtime.handlers.Bad_Name]\nbinary = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime.handlers"), "{e}");
    }

    #[test]
    fn cgroup_detection() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(CgroupMode::detect_at(dir.path()), CgroupMode::Legacy);
        std::fs::create_dir(dir.path().join("unified")).unwrap();
        std::fs::write(dir.path().join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(CgroupMode::detect_at(dir.path()), CgroupMode::Hybrid);
        std::fs::write(dir.path().join("cgroup.controllers"), "").unwrap();
        assert_eq!(CgroupMode::detect_at(dir.path()), CgroupMode::Unified);
    }
}
