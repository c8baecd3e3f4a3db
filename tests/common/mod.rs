//! Shared set-up for skiffd's end-to-end tests.
#![allow(dead_code)]

pub mod net;

use std::path::{Path, PathBuf};

use skiff_testkit::NetNs;
use skiff_testkit::skiffd::{Skiffd, SkiffdOptions};

/// The skiffd binary cargo built for these tests (`SKIFF_TEST_BIN_DIR` names another
/// directory holding skiffd and skiff, for runs as a user who cannot read the target dir).
pub fn skiffd_bin() -> PathBuf {
    bin("skiffd", env!("CARGO_BIN_EXE_skiffd"))
}

/// The skiff CLI binary cargo built for these tests (see [`skiffd_bin`]).
pub fn skiff_bin() -> PathBuf {
    bin("skiff", env!("CARGO_BIN_EXE_skiff"))
}

fn bin(name: &str, built: &str) -> PathBuf {
    match std::env::var_os("SKIFF_TEST_BIN_DIR") {
        Some(dir) => Path::new(&dir).join(name),
        None => PathBuf::from(built),
    }
}

/// A skiffd in its own network namespace; `None` (and a skip message) without root.
pub struct Env {
    // Field order matters: skiffd stops before its namespace is deleted.
    pub skiffd: Skiffd,
    pub netns: NetNs,
}

/// A skiffd for tests of the daemon itself (its socket, config, life cycle), which need
/// no pod: as root in a fresh network namespace like [`start`]; without root, in the
/// caller's namespace in CNI mode with an empty conf dir (so it makes no bridge and no
/// nftables rules, which need root), as the caller.
pub struct DaemonEnv {
    pub skiffd: Skiffd,
    _netns: Option<NetNs>,
    _cni: tempfile::TempDir,
}

/// Start a skiffd for a daemon test, root or not.
pub fn start_daemon(options: SkiffdOptions) -> DaemonEnv {
    let cni = tempfile::tempdir().unwrap();
    if skiff_testkit::is_root() {
        let netns = NetNs::create("e2e").expect("create test netns");
        let skiffd = Skiffd::start_in(&skiffd_bin(), &netns, options).expect("start skiffd");
        return DaemonEnv {
            skiffd,
            _netns: Some(netns),
            _cni: cni,
        };
    }
    let mut table: toml::Table = options
        .config_toml
        .as_deref()
        .map(|t| t.parse().expect("test config is TOML"))
        .unwrap_or_default();
    let network = table
        .entry("network")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[network] is a table");
    network
        .entry("mode")
        .or_insert_with(|| toml::Value::String("cni".into()));
    network
        .entry("cni_conf_dir")
        .or_insert_with(|| toml::Value::String(cni.path().display().to_string()));
    let options = SkiffdOptions {
        config_toml: Some(table.to_string()),
        ..options
    };
    let skiffd = Skiffd::start(&skiffd_bin(), options).expect("start skiffd");
    DaemonEnv {
        skiffd,
        _netns: None,
        _cni: cni,
    }
}

/// Start skiffd in a fresh network namespace, or skip the test when not root.
pub fn start(test: &str, options: SkiffdOptions) -> Option<Env> {
    if !skiff_testkit::require_root(test) {
        return None;
    }
    let netns = NetNs::create("e2e").expect("create test netns");
    let skiffd = Skiffd::start_in(&skiffd_bin(), &netns, options).expect("start skiffd");
    Some(Env { skiffd, netns })
}

/// skiffd with a local registry, both in one fresh network namespace, and a hosts
/// directory that sends `127.0.0.1:5000` over plain HTTP and mirrors `docker.io` to it.
pub struct RegistryEnv {
    // Drop order: skiffd, then the registry, then the namespace.
    pub skiffd: Skiffd,
    pub registry: skiff_testkit::Registry,
    pub netns: NetNs,
    pub hosts: tempfile::TempDir,
}

/// The registry address inside the test namespace.
pub const REGISTRY: &str = "127.0.0.1:5000";

impl RegistryEnv {
    /// Push `image` as `repo:tag` to the test registry.
    pub fn push(&self, repo: &str, tag: &str, image: &skiff_testkit::image::Image) {
        self.netns
            .run(|| skiff_testkit::push(REGISTRY, repo, tag, image))
            .unwrap_or_else(|e| panic!("push {repo}:{tag}: {e}"));
    }
}

/// Start a registry and skiffd in a fresh namespace; `None` (skip) without root.
pub fn start_with_registry(
    test: &str,
    extra_config: &str,
    env: &[(&str, &str)],
) -> Option<RegistryEnv> {
    if !skiff_testkit::require_root(test) {
        return None;
    }
    let netns = NetNs::create("img").expect("create test netns");
    let registry = skiff_testkit::Registry::start(Some(&netns), Some(REGISTRY.parse().unwrap()))
        .expect("start registry");
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(hosts.path().join(REGISTRY)).unwrap();
    std::fs::write(
        hosts.path().join(REGISTRY).join("hosts.toml"),
        format!("server = \"http://{REGISTRY}\"\n"),
    )
    .unwrap();
    std::fs::create_dir_all(hosts.path().join("docker.io")).unwrap();
    std::fs::write(
        hosts.path().join("docker.io").join("hosts.toml"),
        format!("[host.\"http://{REGISTRY}\"]\ncapabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
    let config = format!(
        "[registry]\nconfig_path = \"{}\"\n{extra_config}",
        hosts.path().display()
    );
    let mut options = SkiffdOptions {
        config_toml: Some(with_test_handler(&config)),
        ..Default::default()
    };
    options.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let skiffd = Skiffd::start_in(&skiffd_bin(), &netns, options).expect("start skiffd");
    Some(RegistryEnv {
        skiffd,
        registry,
        netns,
        hosts,
    })
}

/// `config` with `runtime.default_handler` set from `SKIFF_TEST_HANDLER` when that is
/// set: the same end-to-end tests then run on another handler (`.ci/run` runs the pod
/// tests on the native one too).
pub fn with_test_handler(config: &str) -> String {
    let Ok(handler) = std::env::var("SKIFF_TEST_HANDLER") else {
        return config.to_string();
    };
    let mut table: toml::Table = config.parse().expect("test config is TOML");
    table
        .entry("runtime")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[runtime] is a table")
        .insert("default_handler".into(), toml::Value::String(handler));
    table.to_string()
}

/// Pull `image` through skiffd's CRI ImageService; panics naming it on failure.
pub async fn pull(c: &mut skiff_cri::client::CriClient, image: &str) {
    c.images
        .pull_image(skiff_cri::api::PullImageRequest {
            image: Some(skiff_cri::api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e}"));
}

/// GET `path` on `addr` from inside the test namespace; the response body.
pub fn scrape(env: &RegistryEnv, addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let (addr, path) = (addr.to_string(), path.to_string());
    env.netns.run(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
}

/// StopPodSandbox then RemovePodSandbox, both expected to succeed.
pub async fn end_pod(c: &mut skiff_cri::client::CriClient, id: &str) {
    c.runtime
        .stop_pod_sandbox(skiff_cri::api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("StopPodSandbox");
    c.runtime
        .remove_pod_sandbox(skiff_cri::api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("RemovePodSandbox");
}
