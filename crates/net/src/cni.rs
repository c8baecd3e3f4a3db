//! CNI mode: skiff runs the plugins of a network configuration list per the CNI
//! specification instead of its built-in bridge (`[network] mode = "cni"`).
//!
//! Vocabulary:
//! - a **network list** is what the configuration directory holds: the lexically first
//!   `*.conflist`, `*.conf` or `*.json` file (as containerd picks it); a single-plugin
//!   `.conf` becomes a list of one;
//! - a **plugin** is an executable named by a list entry's `type`, found in the first of
//!   the bin dirs that has it;
//! - an **attachment** is one pod on one network: the list as it was used, the pod's
//!   identity and the final ADD result. The caller persists it, so DEL runs with the
//!   same configuration and the cached result also after a restart.
//!
//! ADD runs the plugins in order, each one's result fed to the next as `prevResult`;
//! DEL runs them in reverse with the cached result; CHECK in order with it
//! (`cniVersion` 0.4.0 and later). A failed ADD is undone with DEL before the error is
//! returned. Plugins run as child processes (tokio::process) with a timeout, in the
//! network namespace of the calling thread, which is where the host side of the
//! network (e.g. the bridge) is made.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

/// File extensions of network configurations, as containerd's loader knows them.
pub const CONF_EXTENSIONS: [&str; 3] = ["conflist", "conf", "json"];
/// The interface name the pod side gets.
pub const DEFAULT_IFNAME: &str = "eth0";
/// How long one plugin may run before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this much of a plugin's output is quoted in an error.
const QUOTE_LIMIT: usize = 200;

/// Errors of CNI mode.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration directory holds no network configuration.
    #[error("no CNI network configuration (*.conflist, *.conf, *.json) in {}", dir.display())]
    NoConfig {
        /// The configuration directory.
        dir: PathBuf,
    },
    /// A configuration file or directory could not be read.
    #[error("read CNI configuration {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is not a valid network configuration.
    #[error("CNI configuration {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A plugin the network list names is in none of the bin dirs.
    #[error(
        "CNI plugin {plugin:?} of network {network:?} is not installed: no executable {plugin:?} in {dirs}"
    )]
    PluginMissing {
        /// The plugin type.
        plugin: String,
        /// The network's name.
        network: String,
        /// The bin dirs searched, `:`-separated.
        dirs: String,
    },
    /// A plugin could not be started.
    #[error("CNI plugin {} ({command}) could not be run: {source}", path.display())]
    Spawn {
        /// The plugin executable.
        path: PathBuf,
        /// ADD, DEL or CHECK.
        command: Command,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A plugin reported an error (non-zero exit).
    #[error("CNI plugin {plugin:?} ({command}) of network {network:?} failed: {failure}")]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// The network's name.
        network: String,
        /// ADD, DEL or CHECK.
        command: Command,
        /// What it said.
        failure: Box<PluginFailure>,
    },
    /// A plugin exited 0 but its output is not a CNI result.
    #[error(
        "CNI plugin {plugin:?} ({command}) of network {network:?} printed output that is not a CNI result ({reason}): {output:?}"
    )]
    BadOutput {
        /// The plugin type.
        plugin: String,
        /// The network's name.
        network: String,
        /// ADD, DEL or CHECK.
        command: Command,
        /// Why it is not a result.
        reason: String,
        /// The start of what it printed.
        output: String,
    },
    /// A plugin did not finish in time and was killed.
    #[error("CNI plugin {plugin:?} ({command}) of network {network:?} did not finish within {}s and was killed", timeout.as_secs_f64())]
    Timeout {
        /// The plugin type.
        plugin: String,
        /// The network's name.
        network: String,
        /// ADD, DEL or CHECK.
        command: Command,
        /// The limit.
        timeout: Duration,
    },
    /// The ADD result has no IPv4 address for the pod's interface.
    #[error("CNI network {network:?} gave the pod no IPv4 address on {ifname} (result: {result})")]
    NoAddress {
        /// The network's name.
        network: String,
        /// The pod's interface.
        ifname: String,
        /// The result, as JSON.
        result: String,
    },
    /// ADD failed, and so did the DEL that was to undo it.
    #[error("{add}; undoing it with DEL also failed: {del}")]
    AddUndoFailed {
        /// Why ADD failed.
        add: Box<CniError>,
        /// Why DEL failed.
        del: Box<CniError>,
    },
}

impl CniError {
    /// Whether the node's CNI configuration is at fault (missing or invalid list,
    /// missing plugin), as opposed to a plugin failing at run time.
    pub fn is_config(&self) -> bool {
        match self {
            CniError::NoConfig { .. }
            | CniError::Read { .. }
            | CniError::Invalid { .. }
            | CniError::PluginMissing { .. } => true,
            CniError::AddUndoFailed { add, .. } => add.is_config(),
            _ => false,
        }
    }
}

/// The operation a plugin is asked to do (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container to the network.
    Add,
    /// Detach it; must succeed when things are already gone.
    Del,
    /// Verify the attachment is as the cached result says.
    Check,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        })
    }
}

/// A plugin's error: its error JSON (`{code, msg, details}`) or, when it printed none,
/// its exit status and stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFailure {
    /// The CNI error code, if the plugin printed an error object.
    pub code: Option<u64>,
    /// `msg`, or stderr when there was no error object.
    pub msg: String,
    /// `details`.
    pub details: String,
    /// The exit status, e.g. `exit status: 1`.
    pub status: String,
}

impl fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => match error_code_name(code) {
                Some(name) => write!(f, "error code {code} ({name}): {}", self.msg)?,
                None => write!(f, "error code {code}: {}", self.msg)?,
            },
            None if self.msg.is_empty() => write!(f, "{} with no error output", self.status)?,
            None => write!(f, "{}: {}", self.status, self.msg)?,
        }
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

/// The names of the error codes the CNI spec reserves.
pub fn error_code_name(code: u64) -> Option<&'static str> {
    Some(match code {
        1 => "incompatible CNI version",
        2 => "unsupported field in network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "I/O failure",
        6 => "failed to decode content",
        7 => "invalid network config",
        11 => "try again later",
        _ => return None,
    })
}

/// Parse what a failed plugin printed: its error JSON on stdout, else stderr.
pub fn parse_failure(stdout: &[u8], stderr: &[u8], status: &str) -> PluginFailure {
    let text = |b: &[u8]| quote(String::from_utf8_lossy(b).trim());
    if let Ok(Value::Object(err)) = serde_json::from_slice::<Value>(stdout)
        && (err.contains_key("code") || err.contains_key("msg"))
    {
        let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        return PluginFailure {
            code: err.get("code").and_then(Value::as_u64),
            msg: s("msg"),
            details: s("details"),
            status: status.to_string(),
        };
    }
    let mut msg = text(stderr);
    if msg.is_empty() {
        msg = text(stdout);
    }
    PluginFailure {
        code: None,
        msg,
        details: String::new(),
        status: status.to_string(),
    }
}

fn quote(s: &str) -> String {
    if s.len() <= QUOTE_LIMIT {
        return s.to_string();
    }
    let mut end = QUOTE_LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// One entry of a network list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginConf {
    /// `type`: the plugin executable's name.
    pub plugin_type: String,
    /// The capabilities it declares (`"capabilities": {"portMappings": true}`).
    pub capabilities: BTreeSet<String>,
    /// The entry as written.
    pub conf: Map<String, Value>,
}

/// A network configuration list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkList {
    /// `name`.
    pub name: String,
    /// `cniVersion`, given to every plugin.
    pub cni_version: String,
    /// `disableCheck`.
    pub disable_check: bool,
    /// The plugins, in ADD order.
    pub plugins: Vec<PluginConf>,
    /// The file it was read from.
    pub source: PathBuf,
}

/// `major.minor.patch` of a CNI version string.
fn version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let out = (it.next()??, it.next()??, it.next().unwrap_or(Some(0))?);
    it.next().is_none().then_some(out)
}

impl NetworkList {
    /// Parse a `.conflist` (an object with `plugins`) or a single-plugin `.conf`.
    pub fn parse(bytes: &[u8], source: &Path) -> Result<NetworkList, CniError> {
        let invalid = |reason: String| CniError::Invalid {
            path: source.to_path_buf(),
            reason,
        };
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let Value::Object(doc) = doc else {
            return Err(invalid("not a JSON object".into()));
        };
        let string = |obj: &Map<String, Value>, key: &str| -> Result<String, CniError> {
            match obj.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(Value::String(_)) | None => Err(invalid(format!("`{key}` is missing"))),
                Some(other) => Err(invalid(format!("`{key}` is not a string: {other}"))),
            }
        };
        let name = string(&doc, "name")?;
        let cni_version = string(&doc, "cniVersion")?;
        if version(&cni_version).is_none() {
            return Err(invalid(format!(
                "`cniVersion` {cni_version:?} is not a version (like \"1.0.0\")"
            )));
        }
        let entries: Vec<Map<String, Value>> = match doc.get("plugins") {
            None => vec![doc.clone()],
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(invalid("`plugins` is empty".into()));
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(o) => Ok(o.clone()),
                    other => Err(invalid(format!("plugins[{i}] is not an object: {other}"))),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(invalid(format!("`plugins` is not a list: {other}"))),
        };
        let mut plugins = Vec::with_capacity(entries.len());
        for (i, conf) in entries.into_iter().enumerate() {
            let plugin_type = string(&conf, "type").map_err(|_| {
                invalid(format!(
                    "plugins[{i}] has no `type` (the plugin's executable)"
                ))
            })?;
            if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
                return Err(invalid(format!(
                    "plugins[{i}]: type {plugin_type:?} is not a plugin name"
                )));
            }
            let capabilities = match conf.get("capabilities") {
                None => BTreeSet::new(),
                Some(Value::Object(caps)) => caps
                    .iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect(),
                Some(other) => {
                    return Err(invalid(format!(
                        "plugins[{i}]: `capabilities` is not an object: {other}"
                    )));
                }
            };
            plugins.push(PluginConf {
                plugin_type,
                capabilities,
                conf,
            });
        }
        Ok(NetworkList {
            name,
            cni_version,
            disable_check: doc.get("disableCheck").and_then(Value::as_bool) == Some(true),
            plugins,
            source: source.to_path_buf(),
        })
    }

    /// Whether this list's version passes the cached result to DEL and knows CHECK
    /// (0.4.0 and later).
    pub fn has_check(&self) -> bool {
        version(&self.cni_version).is_some_and(|v| v >= (0, 4, 0))
    }

    /// The stdin of one plugin: its entry with the list's `name` and `cniVersion`,
    /// `prevResult` if given, and `runtimeConfig` for the capabilities it declares.
    pub fn plugin_stdin(&self, index: usize, prev: Option<&Value>, pod: &PodRef) -> Value {
        let plugin = &self.plugins[index];
        let mut conf = plugin.conf.clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        match prev {
            Some(prev) => {
                conf.insert("prevResult".into(), prev.clone());
            }
            None => {
                conf.remove("prevResult");
            }
        }
        let runtime = pod.runtime_config(&plugin.capabilities);
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        Value::Object(conf)
    }
}

/// The network list in `conf_dir`: the lexically first file with a known extension.
pub fn load_network_list(conf_dir: &Path) -> Result<NetworkList, CniError> {
    let read_err = |source| CniError::Read {
        path: conf_dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| CONF_EXTENSIONS.contains(&e))
                && p.is_file()
        })
        .collect();
    files.sort();
    let Some(first) = files.into_iter().next() else {
        return Err(CniError::NoConfig {
            dir: conf_dir.to_path_buf(),
        });
    };
    let bytes = std::fs::read(&first).map_err(|source| CniError::Read {
        path: first.clone(),
        source,
    })?;
    NetworkList::parse(&bytes, &first)
}

/// A hostPort mapping as the `portMappings` capability carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The node's port.
    pub host_port: i32,
    /// The pod's port.
    pub container_port: i32,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The node address it is bound to; empty for all.
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The pod's DNS settings as the `dns` capability carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The pod being attached: what goes into the plugins' environment and runtimeConfig.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// `CNI_CONTAINERID`: the sandbox id.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's pinned network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The pod's Kubernetes namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID.
    pub uid: String,
    /// hostPort mappings (host port ≠ 0).
    pub port_mappings: Vec<PortMapping>,
    /// DNS settings, if the pod has any.
    pub dns: Option<Dns>,
}

impl PodRef {
    /// `CNI_ARGS`, as the kubelet's runtimes pass them.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace, self.name, self.container_id, self.uid
        )
    }

    /// `runtimeConfig` for a plugin that declares `capabilities`.
    pub fn runtime_config(&self, capabilities: &BTreeSet<String>) -> Map<String, Value> {
        let mut rc = Map::new();
        if capabilities.contains("portMappings") && !self.port_mappings.is_empty() {
            rc.insert(
                "portMappings".into(),
                serde_json::to_value(&self.port_mappings).unwrap_or_default(),
            );
        }
        if capabilities.contains("dns")
            && let Some(dns) = &self.dns
        {
            rc.insert("dns".into(), serde_json::to_value(dns).unwrap_or_default());
        }
        rc
    }
}

/// One pod on one network, as ADD left it: persist it, DEL and CHECK need it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network list as ADD used it.
    pub network: NetworkList,
    /// The pod.
    pub pod: PodRef,
    /// The final ADD result; `None` while ADD runs (a crash then still gets a DEL).
    pub result: Option<Value>,
}

impl Attachment {
    /// Before ADD: the record of an attachment that may be half made.
    pub fn pending(network: NetworkList, pod: PodRef) -> Attachment {
        Attachment {
            network,
            pod,
            result: None,
        }
    }

    /// The pod's addresses from the result.
    pub fn addresses(&self) -> Vec<IpNet> {
        self.result
            .as_ref()
            .map(|r| result_addresses(r, &self.pod.ifname))
            .unwrap_or_default()
    }

    /// The pod's first IPv4 address.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.addresses().into_iter().find_map(|a| match a.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    }
}

/// The addresses of a CNI result (0.3.x, 0.4.0 and 1.x `ips[].address`; 0.1/0.2
/// `ip4.ip` / `ip6.ip`). Addresses whose `interface` names the pod's interface
/// come first; without any, all addresses count.
pub fn result_addresses(result: &Value, ifname: &str) -> Vec<IpNet> {
    let parse = |v: Option<&Value>| v.and_then(Value::as_str).and_then(|s| s.parse().ok());
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        let interfaces = result.get("interfaces").and_then(Value::as_array);
        let on_pod_if = |ip: &Value| -> bool {
            let idx = ip.get("interface").and_then(Value::as_u64);
            let iface = idx
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| interfaces?.get(i));
            iface.is_some_and(|i| {
                i.get("name").and_then(Value::as_str) == Some(ifname)
                    && i.get("sandbox")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
            })
        };
        let mine: Vec<IpNet> = ips
            .iter()
            .filter(|ip| on_pod_if(ip))
            .filter_map(|ip| parse(ip.get("address")))
            .collect();
        if !mine.is_empty() {
            return mine;
        }
        return ips
            .iter()
            .filter_map(|ip| parse(ip.get("address")))
            .collect();
    }
    ["ip4", "ip6"]
        .iter()
        .filter_map(|k| parse(result.get(*k).and_then(|v| v.get("ip"))))
        .collect()
}

/// Runs CNI plugins: finds them in the bin dirs, reads the network list from the
/// configuration directory.
#[derive(Debug, Clone)]
pub struct Cni {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Cni {
    /// Plugins from `bin_dirs` (searched in order), the list from `conf_dir`.
    pub fn new(conf_dir: impl Into<PathBuf>, bin_dirs: Vec<PathBuf>) -> Cni {
        Cni {
            conf_dir: conf_dir.into(),
            bin_dirs,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same with another per-plugin time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Cni {
        self.timeout = timeout;
        self
    }

    /// The configuration directory.
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// `CNI_PATH`: the bin dirs, `:`-separated.
    pub fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The executable of plugin `plugin_type` of `network`.
    pub fn plugin_path(&self, plugin_type: &str, network: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| is_executable(p))
            .ok_or_else(|| CniError::PluginMissing {
                plugin: plugin_type.to_string(),
                network: network.to_string(),
                dirs: self.cni_path(),
            })
    }

    /// Read the network list now (it may change while skiffd runs) and check that every
    /// plugin it names is installed. `Ok` is what `NetworkReady` means in CNI mode.
    pub fn load(&self) -> Result<NetworkList, CniError> {
        let list = load_network_list(&self.conf_dir)?;
        for p in &list.plugins {
            self.plugin_path(&p.plugin_type, &list.name)?;
        }
        Ok(list)
    }

    /// Attach `pod` to `list`: ADD through every plugin in order. On failure every
    /// plugin gets a DEL (in reverse) before the error is returned.
    pub async fn add(&self, list: &NetworkList, pod: &PodRef) -> Result<Attachment, CniError> {
        // Every executable is found before anything runs.
        let paths = list
            .plugins
            .iter()
            .map(|p| self.plugin_path(&p.plugin_type, &list.name))
            .collect::<Result<Vec<_>, _>>()?;
        let mut prev: Option<Value> = None;
        let mut failure = None;
        for (i, path) in paths.iter().enumerate() {
            let stdin = list.plugin_stdin(i, prev.as_ref(), pod);
            match self.exec(list, i, path, Command::Add, pod, &stdin).await {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut att = Attachment::pending(list.clone(), pod.clone());
        att.result = prev;
        let failure = failure.or_else(|| {
            att.ipv4().is_none().then(|| CniError::NoAddress {
                network: list.name.clone(),
                ifname: pod.ifname.clone(),
                result: att
                    .result
                    .as_ref()
                    .map(Value::to_string)
                    .map(|s| quote(&s))
                    .unwrap_or_default(),
            })
        });
        match failure {
            None => Ok(att),
            Some(add) => match self.del(&att).await {
                Ok(()) => Err(add),
                Err(del) => Err(CniError::AddUndoFailed {
                    add: Box::new(add),
                    del: Box::new(del),
                }),
            },
        }
    }

    /// Detach: DEL through every plugin in reverse order, with the cached result as
    /// `prevResult` (0.4.0 and later). Every plugin gets its DEL even when one fails;
    /// the first failure is returned.
    pub async fn del(&self, att: &Attachment) -> Result<(), CniError> {
        let list = &att.network;
        let prev = if list.has_check() {
            att.result.as_ref()
        } else {
            None
        };
        let mut first = None;
        for i in (0..list.plugins.len()).rev() {
            let r = match self.plugin_path(&list.plugins[i].plugin_type, &list.name) {
                Ok(path) => {
                    let stdin = list.plugin_stdin(i, prev, &att.pod);
                    self.exec(list, i, &path, Command::Del, &att.pod, &stdin)
                        .await
                        .map(drop)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!(pod_id = %att.pod.container_id, error = %e, "CNI DEL");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Verify the attachment: CHECK through every plugin in order with the cached
    /// result. `Ok(false)` when the list's version has no CHECK (before 0.4.0), it
    /// disables it, or ADD never finished.
    pub async fn check(&self, att: &Attachment) -> Result<bool, CniError> {
        let list = &att.network;
        let Some(result) = att.result.as_ref() else {
            return Ok(false);
        };
        if !list.has_check() || list.disable_check {
            return Ok(false);
        }
        for (i, p) in list.plugins.iter().enumerate() {
            let path = self.plugin_path(&p.plugin_type, &list.name)?;
            let stdin = list.plugin_stdin(i, Some(result), &att.pod);
            self.exec(list, i, &path, Command::Check, &att.pod, &stdin)
                .await?;
        }
        Ok(true)
    }

    /// Run one plugin. For ADD the parsed result; for DEL and CHECK `Null`.
    async fn exec(
        &self,
        list: &NetworkList,
        index: usize,
        path: &Path,
        command: Command,
        pod: &PodRef,
        stdin: &Value,
    ) -> Result<Value, CniError> {
        let plugin = &list.plugins[index].plugin_type;
        // A DEL after the namespace is gone passes none (the spec allows it for DEL).
        let netns = if command == Command::Del && !is_netns(&pod.netns) {
            String::new()
        } else {
            pod.netns.display().to_string()
        };
        let mut child = tokio::process::Command::new(path)
            .env("CNI_COMMAND", command.to_string())
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", &pod.ifname)
            .env("CNI_ARGS", pod.cni_args())
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CniError::Spawn {
                path: path.to_path_buf(),
                command,
                source,
            })?;
        let input = serde_json::to_vec(stdin).unwrap_or_default();
        let mut pipe = child.stdin.take();
        let write = async move {
            if let Some(pipe) = pipe.as_mut() {
                // A plugin that exits without reading its stdin is judged by its exit.
                let _ = pipe.write_all(&input).await;
            }
            drop(pipe);
        };
        let run = async {
            let ((), out) = tokio::join!(write, child.wait_with_output());
            out
        };
        let out = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => {
                return Err(CniError::Spawn {
                    path: path.to_path_buf(),
                    command,
                    source,
                });
            }
            Err(_) => {
                return Err(CniError::Timeout {
                    plugin: plugin.clone(),
                    network: list.name.clone(),
                    command,
                    timeout: self.timeout,
                });
            }
        };
        tracing::debug!(pod_id = %pod.container_id, plugin = %plugin, %command,
            status = %out.status, "CNI plugin ran");
        if !out.status.success() {
            return Err(CniError::Plugin {
                plugin: plugin.clone(),
                network: list.name.clone(),
                command,
                failure: Box::new(parse_failure(
                    &out.stdout,
                    &out.stderr,
                    &out.status.to_string(),
                )),
            });
        }
        if command != Command::Add {
            return Ok(Value::Null);
        }
        parse_result(&out.stdout).map_err(|reason| CniError::BadOutput {
            plugin: plugin.clone(),
            network: list.name.clone(),
            command,
            reason,
            output: quote(String::from_utf8_lossy(&out.stdout).trim()),
        })
    }
}

/// An ADD's stdout as a result: a JSON object.
pub fn parse_result(stdout: &[u8]) -> Result<Value, String> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Err("no output".into());
    }
    match serde_json::from_slice::<Value>(stdout) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Whether `path` is a network namespace (a live nsfs bind mount or /proc link).
fn is_netns(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // `f_type` is i64 on x86_64 but narrower on other architectures.
    #[allow(clippy::useless_conversion)]
    rustix::fs::statfs(path).is_ok_and(|s| i64::from(s.f_type) == NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn pod() -> PodRef {
        PodRef {
            container_id: "abc123".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            namespace: "default".into(),
            name: "web".into(),
            uid: "u-1".into(),
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            dns: None,
        }
    }

    #[test]
    fn cni_args_carry_the_pod() {
        assert_eq!(
            pod().cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1"
        );
    }

    #[test]
    fn conflists_parse_and_plugins_get_name_version_prev_result_and_capabilities() {
        let text = br#"{
            "cniVersion": "1.0.0", "name": "pods", "disableCheck": true,
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
                {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}},
                {"type": "tuning", "capabilities": {"dns": true}}
            ]}"#;
        let list = NetworkList::parse(text, Path::new("/c/10-pods.conflist")).unwrap();
        assert_eq!(list.name, "pods");
        assert!(list.disable_check && list.has_check());
        let types: Vec<_> = list
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "tuning"]);
        assert_eq!(
            list.plugins[1].capabilities,
            BTreeSet::from(["portMappings".to_string()])
        );
        let first = list.plugin_stdin(0, None, &pod());
        assert_eq!(first["name"], "pods");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert_eq!(first["bridge"], "cni0");
        assert!(first.get("prevResult").is_none() && first.get("runtimeConfig").is_none());
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}]});
        let second = list.plugin_stdin(1, Some(&prev), &pod());
        assert_eq!(second["prevResult"], prev);
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
        // dns is declared but the pod has none; with some it is passed.
        assert!(
            list.plugin_stdin(2, None, &pod())
                .get("runtimeConfig")
                .is_none()
        );
        let mut with_dns = pod();
        with_dns.dns = Some(Dns {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec![],
        });
        assert_eq!(
            list.plugin_stdin(2, None, &with_dns)["runtimeConfig"],
            json!({"dns": {"servers": ["10.0.0.10"], "searches": ["svc.cluster.local"]}})
        );
    }

    #[test]
    fn a_single_conf_is_a_list_of_one() {
        let list = NetworkList::parse(
            br#"{"cniVersion": "0.3.1", "name": "one", "type": "bridge"}"#,
            Path::new("/c/a.conf"),
        )
        .unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0].plugin_type, "bridge");
        assert!(!list.has_check());
    }

    #[test]
    fn invalid_configurations_say_what_is_wrong() {
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "not valid JSON"),
            (b"[1]", "not a JSON object"),
            (
                br#"{"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}"#,
                "`name`",
            ),
            (
                br#"{"name": "n", "plugins": [{"type": "x"}]}"#,
                "`cniVersion`",
            ),
            (
                br#"{"name": "n", "cniVersion": "one", "type": "x"}"#,
                "not a version",
            ),
            (
                br#"{"name": "n", "cniVersion": "1.0.0", "plugins": []}"#,
                "empty",
            ),
            (
                br#"{"name": "n", "cniVersion": "1.0.0", "plugins": [{"ipam": {}}]}"#,
                "no `type`",
            ),
            (
                br#"{"name": "n", "cniVersion": "1.0.0", "type": "../../bin/sh"}"#,
                "not a plugin name",
            ),
        ];
        for (text, needle) in cases {
            let e = NetworkList::parse(text, Path::new("/c/x.conflist"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && e.contains("/c/x.conflist"), "{e}");
            assert!(
                NetworkList::parse(text, Path::new("/c/x.conflist"))
                    .unwrap_err()
                    .is_config()
            );
        }
    }

    #[test]
    fn the_lexically_first_configuration_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_network_list(dir.path()).unwrap_err();
        assert!(matches!(e, CniError::NoConfig { .. }), "{e}");
        let w = |name: &str, net: &str| {
            std::fs::write(
                dir.path().join(name),
                format!(r#"{{"cniVersion":"1.0.0","name":"{net}","type":"bridge"}}"#),
            )
            .unwrap()
        };
        w("README", "ignored");
        w("20-b.conflist", "b");
        w("30-c.json", "c");
        assert_eq!(load_network_list(dir.path()).unwrap().name, "b");
        w("10-a.conf", "a");
        assert_eq!(load_network_list(dir.path()).unwrap().name, "a");
        let missing = load_network_list(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }

    #[test]
    fn results_of_every_version_give_the_pod_address() {
        // 1.0.0 from the bridge plugin: the host-side interfaces carry no address.
        let v1 = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"}
            ],
            "ips": [{"interface": 2, "address": "10.22.0.5/24", "gateway": "10.22.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}]
        });
        let att = |r: Value| Attachment {
            network: NetworkList::parse(
                br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
                Path::new("/c/a.conf"),
            )
            .unwrap(),
            pod: pod(),
            result: Some(r),
        };
        assert_eq!(att(v1).ipv4(), Some(Ipv4Addr::new(10, 22, 0, 5)));
        // 0.3.1 carries `version`; an IPv6 address first, and one on another interface.
        let v031 = json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "eth1", "sandbox": "/x"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [
                {"version": "6", "interface": 1, "address": "fd00::5/64"},
                {"version": "4", "interface": 0, "address": "10.9.0.9/16"},
                {"version": "4", "interface": 1, "address": "10.8.0.8/16"}
            ]
        });
        assert_eq!(att(v031).ipv4(), Some(Ipv4Addr::new(10, 8, 0, 8)));
        // No interface indexes: every address counts.
        let plain = json!({"cniVersion": "0.4.0", "ips": [{"address": "10.7.0.7/24"}]});
        assert_eq!(att(plain).ipv4(), Some(Ipv4Addr::new(10, 7, 0, 7)));
        // 0.2.0.
        let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.6.0.6/24"}});
        assert_eq!(att(old).ipv4(), Some(Ipv4Addr::new(10, 6, 0, 6)));
        assert_eq!(att(json!({"cniVersion": "1.0.0"})).ipv4(), None);
    }

    #[test]
    fn output_that_is_not_a_result_is_refused() {
        assert!(parse_result(b"").unwrap_err().contains("no output"));
        assert!(parse_result(b"hello").unwrap_err().contains("not JSON"));
        assert!(
            parse_result(b"[]")
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(parse_result(br#"{"cniVersion":"1.0.0"}"#).is_ok());
    }

    #[test]
    fn plugin_errors_are_read_from_their_error_json_or_stderr() {
        let f = parse_failure(
            br#"{"cniVersion":"1.0.0","code":7,"msg":"bad subnet","details":"10.0.0.0/33"}"#,
            b"",
            "exit status: 1",
        );
        assert_eq!(
            f.to_string(),
            "error code 7 (invalid network config): bad subnet (10.0.0.0/33)"
        );
        let f = parse_failure(br#"{"code":100,"msg":"mine"}"#, b"", "exit status: 1");
        assert_eq!(f.to_string(), "error code 100: mine");
        let f = parse_failure(b"", b"panic: oops\n", "exit status: 2");
        assert_eq!(f.to_string(), "exit status: 2: panic: oops");
        let f = parse_failure(b"", b"", "signal: 9 (SIGKILL)");
        assert_eq!(f.to_string(), "signal: 9 (SIGKILL) with no error output");
    }

    /// A fake plugin: logs `CNI_COMMAND name env stdin` to `log`, and for ADD prints a
    /// result that records which plugins ran (`ips` from the first, a growing `chain`).
    fn fake_plugin(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    const LOGGING: &str = r#"in=$(cat)
echo "$CNI_COMMAND $(basename "$0") $CNI_CONTAINERID $CNI_IFNAME $CNI_NETNS|$CNI_ARGS|$CNI_PATH|$in" >> "$(dirname "$0")/log"
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}],"ips":[{"interface":0,"address":"10.5.0.'"$N"'/24"}]}'
fi"#;

    struct Fixture {
        dir: tempfile::TempDir,
        cni: Cni,
        list: NetworkList,
    }

    fn fixture(plugins: &[&str], version: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        for (i, p) in ["one", "two"].iter().enumerate() {
            fake_plugin(&bin, p, &format!("N={}\n{LOGGING}", i + 2));
        }
        fake_plugin(
            &bin,
            "fails",
            r#"cat >/dev/null; echo "$CNI_COMMAND fails" >> "$(dirname "$0")/log"
[ "$CNI_COMMAND" = ADD ] || exit 0
echo '{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"try later"}'; exit 1"#,
        );
        fake_plugin(
            &bin,
            "garbage",
            r#"cat >/dev/null; echo "$CNI_COMMAND garbage" >> "$(dirname "$0")/log"
[ "$CNI_COMMAND" = ADD ] && echo 'this is not json'; exit 0"#,
        );
        fake_plugin(&bin, "hangs", "cat >/dev/null; exec sleep 30");
        let entries: Vec<String> = plugins
            .iter()
            .map(|p| format!(r#"{{"type":"{p}","capabilities":{{"portMappings":true}}}}"#))
            .collect();
        let text = format!(
            r#"{{"cniVersion":"{version}","name":"fake","plugins":[{}]}}"#,
            entries.join(",")
        );
        std::fs::write(conf.join("10-fake.conflist"), text).unwrap();
        let cni = Cni::new(&conf, vec![dir.path().join("empty"), bin])
            .with_timeout(Duration::from_secs(2));
        let list = cni.load().unwrap();
        Fixture { dir, cni, list }
    }

    fn log(f: &Fixture) -> Vec<String> {
        std::fs::read_to_string(f.dir.path().join("bin/log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn steps(f: &Fixture) -> Vec<String> {
        log(f)
            .iter()
            .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[tokio::test]
    async fn add_chains_prev_results_and_del_runs_in_reverse_with_the_cached_result() {
        let f = fixture(&["one", "two"], "1.0.0");
        let att = f.cni.add(&f.list, &pod()).await.unwrap();
        // The final result is the last plugin's.
        assert_eq!(att.ipv4(), Some(Ipv4Addr::new(10, 5, 0, 3)));
        let lines = log(&f);
        assert!(lines[0].starts_with(
            "ADD one abc123 eth0 /run/netns/x|IgnoreUnknown=1;K8S_POD_NAMESPACE=default;"
        ));
        assert!(lines[0].contains(&format!("|{}|", f.cni.cni_path())));
        let stdin = |line: &str| -> Value {
            serde_json::from_str(line.rsplit_once('|').unwrap().1).unwrap()
        };
        assert!(stdin(&lines[0]).get("prevResult").is_none());
        assert_eq!(
            stdin(&lines[1])["prevResult"]["ips"][0]["address"],
            "10.5.0.2/24"
        );
        assert_eq!(
            stdin(&lines[1])["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert!(f.cni.check(&att).await.unwrap());
        f.cni.del(&att).await.unwrap();
        assert_eq!(
            steps(&f),
            [
                "ADD one",
                "ADD two",
                "CHECK one",
                "CHECK two",
                "DEL two",
                "DEL one"
            ]
        );
        let lines = log(&f);
        // CHECK and DEL get the cached final result; the netns is gone, so DEL gets none.
        assert_eq!(
            stdin(&lines[2])["prevResult"]["ips"][0]["address"],
            "10.5.0.3/24"
        );
        assert_eq!(
            stdin(&lines[4])["prevResult"]["ips"][0]["address"],
            "10.5.0.3/24"
        );
        assert!(lines[4].contains("eth0 |"), "{}", lines[4]);
        // The attachment survives a round trip through JSON (the metadata store).
        let back: Attachment = serde_json::from_str(&serde_json::to_string(&att).unwrap()).unwrap();
        assert_eq!(back, att);
    }

    #[tokio::test]
    async fn old_versions_get_no_prev_result_on_del_and_no_check() {
        let f = fixture(&["one"], "0.3.1");
        let att = f.cni.add(&f.list, &pod()).await.unwrap();
        assert!(!f.cni.check(&att).await.unwrap());
        f.cni.del(&att).await.unwrap();
        let lines = log(&f);
        assert_eq!(lines.len(), 2);
        assert!(!lines[1].contains("prevResult"), "{}", lines[1]);
    }

    #[tokio::test]
    async fn a_failing_plugin_is_reported_and_everything_is_undone() {
        let f = fixture(&["one", "fails", "two"], "1.0.0");
        let e = f.cni.add(&f.list, &pod()).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("\"fails\" (ADD)")
                && msg.contains("error code 11 (try again later): busy (try later)"),
            "{msg}"
        );
        assert!(!e.is_config());
        assert_eq!(
            steps(&f),
            ["ADD one", "ADD fails", "DEL two", "DEL fails", "DEL one"]
        );
    }

    #[tokio::test]
    async fn garbage_output_is_a_clear_error_and_is_undone() {
        let f = fixture(&["one", "garbage"], "1.0.0");
        let msg = f.cni.add(&f.list, &pod()).await.unwrap_err().to_string();
        assert!(
            msg.contains("\"garbage\" (ADD)")
                && msg.contains("not a CNI result")
                && msg.contains("this is not json"),
            "{msg}"
        );
        assert_eq!(
            steps(&f),
            ["ADD one", "ADD garbage", "DEL garbage", "DEL one"]
        );
    }

    #[tokio::test]
    async fn a_missing_plugin_is_named_before_anything_runs() {
        let f = fixture(&["one", "two"], "1.0.0");
        std::fs::write(
            f.cni.conf_dir().join("10-fake.conflist"),
            r#"{"cniVersion":"1.0.0","name":"fake","plugins":[{"type":"one"},{"type":"nope"}]}"#,
        )
        .unwrap();
        let e = f.cni.load().unwrap_err();
        assert!(e.is_config());
        let msg = e.to_string();
        assert!(
            msg.contains("\"nope\"") && msg.contains("not installed") && msg.contains("/bin"),
            "{msg}"
        );
        let mut list = f.list.clone();
        list.plugins[1].plugin_type = "nope".into();
        assert!(f.cni.add(&list, &pod()).await.unwrap_err().is_config());
        assert!(log(&f).is_empty());
    }

    #[tokio::test]
    async fn a_hanging_plugin_is_killed_after_the_timeout() {
        let f = fixture(&["hangs"], "1.0.0");
        let cni = f.cni.clone().with_timeout(Duration::from_millis(300));
        let start = std::time::Instant::now();
        let e = cni.add(&f.list, &pod()).await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // The DEL that undoes it hangs too.
        let msg = e.to_string();
        assert!(msg.contains("did not finish within 0.3s"), "{msg}");
        assert!(matches!(e, CniError::AddUndoFailed { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_result_without_an_address_is_refused() {
        let f = fixture(&["garbage"], "1.0.0");
        fake_plugin(
            &f.dir.path().join("bin"),
            "garbage",
            r#"cat >/dev/null; [ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.0.0"}'; exit 0"#,
        );
        let msg = f.cni.add(&f.list, &pod()).await.unwrap_err().to_string();
        assert!(msg.contains("no IPv4 address on eth0"), "{msg}");
    }
}
