//! Registry host configuration in containerd's `certs.d` layout.
//!
//! `<config_path>/<host[:port]>/hosts.toml`, else `<config_path>/_default/hosts.toml`,
//! else the registry itself over HTTPS. A file lists mirror hosts (`[host."URL"]`, in
//! file order) and optionally the upstream `server`. Mirrors are asked for
//! `/v2/<repository>/…?ns=<registry>`, the upstream without `ns`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What a host may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch content by digest.
    pub pull: bool,
    /// Resolve a tag to a digest.
    pub resolve: bool,
}

/// One place to fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub plain_http: bool,
    /// Accept any TLS certificate.
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<PathBuf>,
    /// What this endpoint may be used for.
    pub capabilities: Capabilities,
    /// Whether this is a mirror (requests carry `?ns=<registry>`).
    pub mirror: bool,
    /// Extra request headers (accepted; not sent yet, see docs/decisions.md).
    pub headers: Vec<(String, String)>,
}

/// A hosts.toml that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// Reading the file failed.
    #[error("cannot read registry hosts file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("registry hosts file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    server: Option<String>,
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<StringOrList>,
    #[serde(default)]
    header: toml::Table,
    override_path: Option<bool>,
    #[serde(default)]
    host: toml::Table,
    // containerd accepts client certificates; skiff does not use them yet.
    client: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSection {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<StringOrList>,
    #[serde(default)]
    header: toml::Table,
    override_path: Option<bool>,
    client: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_paths(self, base: &Path) -> Vec<PathBuf> {
        let list = match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        };
        list.into_iter()
            .map(|p| {
                let p = PathBuf::from(p);
                if p.is_absolute() { p } else { base.join(p) }
            })
            .collect()
    }
}

fn capabilities(list: Option<&[String]>, path: &Path) -> Result<Capabilities, HostsError> {
    let Some(list) = list else {
        return Ok(Capabilities {
            pull: true,
            resolve: true,
        });
    };
    let mut caps = Capabilities {
        pull: false,
        resolve: false,
    };
    for c in list {
        match c.as_str() {
            "pull" => caps.pull = true,
            "resolve" => caps.resolve = true,
            "push" => {}
            other => {
                return Err(HostsError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("unknown capability {other:?}"),
                });
            }
        }
    }
    Ok(caps)
}

fn headers(table: &toml::Table) -> Vec<(String, String)> {
    table
        .iter()
        .flat_map(|(k, v)| match v {
            toml::Value::String(s) => vec![(k.clone(), s.clone())],
            toml::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(|s| (k.clone(), s.to_string())))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// Split `http://host:port/v2` into (host, plain_http), refusing path prefixes skiff cannot honour.
fn parse_url(url: &str, override_path: bool, path: &Path) -> Result<(String, bool), HostsError> {
    let invalid = |reason: String| HostsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let (plain_http, rest) = if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else {
        (false, url)
    };
    let (host, prefix) = match rest.split_once('/') {
        Some((h, p)) => (h, p.trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(invalid(format!("{url:?} has no host")));
    }
    if !(prefix.is_empty() || prefix == "v2") || override_path {
        return Err(invalid(format!(
            "{url:?}: path prefixes and override_path are not supported by skiff yet"
        )));
    }
    Ok((host.to_string(), plain_http))
}

/// The endpoints to try for `registry` (a `host[:port]` as in the image reference), in order.
pub fn endpoints(config_path: &Path, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
    let dir_name = registry.replace(['/', '\\'], "_");
    let candidates = [
        config_path.join(&dir_name).join("hosts.toml"),
        config_path.join("_default").join("hosts.toml"),
    ];
    for file in &candidates {
        match std::fs::read_to_string(file) {
            Ok(text) => return parse(&text, file, registry),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(source) => {
                return Err(HostsError::Read {
                    path: file.clone(),
                    source,
                });
            }
        }
    }
    Ok(vec![upstream(registry)])
}

fn upstream(registry: &str) -> Endpoint {
    Endpoint {
        host: registry.to_string(),
        plain_http: false,
        skip_verify: false,
        ca: Vec::new(),
        capabilities: Capabilities {
            pull: true,
            resolve: true,
        },
        mirror: false,
        headers: Vec::new(),
    }
}

/// Parse one hosts.toml for `registry`.
pub fn parse(text: &str, path: &Path, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
    let file: HostsFile = toml::from_str(text).map_err(|e| HostsError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string().trim().replace('\n', " "),
    })?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for (url, section) in &file.host {
        let section: HostSection =
            section
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| HostsError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("[host.{url:?}]: {}", e.to_string().trim()),
                })?;
        let (host, plain_http) = parse_url(url, section.override_path.unwrap_or(false), path)?;
        let _ = &section.client;
        out.push(Endpoint {
            mirror: host != registry,
            host,
            plain_http,
            skip_verify: section.skip_verify.unwrap_or(false),
            ca: section.ca.map(|c| c.into_paths(base)).unwrap_or_default(),
            capabilities: capabilities(section.capabilities.as_deref(), path)?,
            headers: headers(&section.header),
        });
    }
    let _ = &file.client;
    match &file.server {
        Some(server) => {
            let (host, plain_http) = parse_url(server, file.override_path.unwrap_or(false), path)?;
            out.push(Endpoint {
                mirror: host != registry,
                host,
                plain_http,
                skip_verify: file.skip_verify.unwrap_or(false),
                ca: file.ca.map(|c| c.into_paths(base)).unwrap_or_default(),
                capabilities: capabilities(file.capabilities.as_deref(), path)?,
                headers: headers(&file.header),
            });
        }
        None => out.push(upstream(registry)),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_then_upstream_in_file_order() {
        let text = r#"
            server = "https://registry-1.docker.io"
            [host."http://127.0.0.1:5000"]
              capabilities = ["pull", "resolve"]
            [host."https://mirror.example:8443/v2"]
              capabilities = ["pull"]
              skip_verify = true
              ca = "ca.pem"
              [host."https://mirror.example:8443/v2".header]
                x-token = "abc"
        "#;
        let eps = parse(
            text,
            Path::new("/etc/skiff/certs.d/docker.io/hosts.toml"),
            "docker.io",
        )
        .unwrap();
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0].host, "127.0.0.1:5000");
        assert!(eps[0].plain_http && eps[0].mirror);
        assert_eq!(eps[1].host, "mirror.example:8443");
        assert!(!eps[1].capabilities.resolve && eps[1].skip_verify);
        assert_eq!(
            eps[1].ca,
            vec![PathBuf::from("/etc/skiff/certs.d/docker.io/ca.pem")]
        );
        assert_eq!(eps[1].headers, vec![("x-token".into(), "abc".into())]);
        assert_eq!(eps[2].host, "registry-1.docker.io");
        assert!(
            eps[2].mirror,
            "a server other than the registry name is asked with ns="
        );
    }

    #[test]
    fn plain_http_server_for_a_local_registry() {
        let eps = parse(
            "server = \"http://127.0.0.1:5000\"",
            Path::new("/x/127.0.0.1:5000/hosts.toml"),
            "127.0.0.1:5000",
        )
        .unwrap();
        assert_eq!(eps.len(), 1);
        assert!(eps[0].plain_http && !eps[0].mirror);
    }

    #[test]
    fn lookup_order_and_default() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing configured: the registry itself over HTTPS.
        let eps = endpoints(dir.path(), "quay.io").unwrap();
        assert_eq!(eps, vec![upstream("quay.io")]);
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"http://127.0.0.1:1\"]\n",
        )
        .unwrap();
        let eps = endpoints(dir.path(), "quay.io").unwrap();
        assert_eq!(eps[0].host, "127.0.0.1:1");
        assert_eq!(eps[1].host, "quay.io");
        std::fs::create_dir_all(dir.path().join("quay.io")).unwrap();
        std::fs::write(
            dir.path().join("quay.io/hosts.toml"),
            "server = \"http://127.0.0.1:2\"\n",
        )
        .unwrap();
        let eps = endpoints(dir.path(), "quay.io").unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].host, "127.0.0.1:2");
    }

    #[test]
    fn bad_files_name_the_file() {
        let p = Path::new("/c/h/hosts.toml");
        let e = parse("[host.\"http://x\"]\ncapabilities = [\"fly\"]", p, "h").unwrap_err();
        assert!(e.to_string().contains("/c/h/hosts.toml") && e.to_string().contains("fly"));
        let e = parse("serverr = 1", p, "h").unwrap_err();
        assert!(e.to_string().contains("serverr"));
        let e = parse("server = \"https://h/some/prefix\"", p, "h").unwrap_err();
        assert!(e.to_string().contains("prefix"));
    }
}
