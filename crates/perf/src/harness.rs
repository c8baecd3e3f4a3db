//! The stage both systems run on: a tmpfs, one network namespace holding a
//! local registry, containerd (the anchor) and skiffd, each on its own root,
//! state and socket under the tmpfs, both reading the same registry hosts dir.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use skiff_testkit::{Compression, ImageBuilder, NetNs, Registry, busybox_layer};

use crate::cleanup::Undo;
use crate::cri::Cri;
use crate::sys::{self, Daemon, Tmpfs};

/// Where the registry listens inside the namespace; also the image host name.
pub const REGISTRY_HOST: &str = "127.0.0.1:5000";
/// The sandbox image both systems are configured with (pushed by the harness).
pub const SANDBOX_REPO: &str = "skiff-perf/pause";
/// How long a daemon may take to answer `Version` after start.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// The two systems under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// skiffd, the system under test.
    Skiff,
    /// Debian's containerd 1.6 with its CRI plugin, the anchor.
    Containerd,
}

impl Kind {
    /// Both, in report order.
    pub const ALL: [Kind; 2] = [Kind::Skiff, Kind::Containerd];

    /// The name used in tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Skiff => "skiff",
            Kind::Containerd => "containerd",
        }
    }

    /// The order both systems take their turn in iteration `i`: skiff first
    /// in even iterations, containerd first in odd ones, so drift and order
    /// effects cancel.
    pub fn order(i: usize) -> [Kind; 2] {
        if i.is_multiple_of(2) {
            [Kind::Skiff, Kind::Containerd]
        } else {
            [Kind::Containerd, Kind::Skiff]
        }
    }
}

/// A daemon that started and answers CRI.
#[derive(Debug)]
pub struct Running {
    /// Its CRI connection.
    pub cri: Cri,
    /// Its `--root` / `root`.
    pub root: PathBuf,
    /// The directory on the tmpfs holding its root, state, socket and logs;
    /// its shims name paths under it on their command lines.
    pub dir: PathBuf,
    /// Its CRI socket.
    pub socket: PathBuf,
    /// The cgroup the harness puts this system's pods under (each pod gets
    /// `<cgroup_parent>/<pod name>` as its CRI cgroup parent, as the kubelet
    /// gives each pod its own).
    pub cgroup_parent: String,
    /// `runtime_name runtime_version` from CRI `Version`.
    pub cri_version: String,
    /// VmRSS right after start-up, KiB.
    pub idle_rss_kib: Option<u64>,
    /// The process; declared last so it stops after the connection closes.
    pub daemon: Daemon,
}

impl Running {
    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Bytes of content and snapshots under the daemon's root (metadata
    /// databases excluded): near zero means the store is cold.
    pub fn store_bytes(&self) -> u64 {
        sys::tree_bytes(&self.root, &|name| {
            name.ends_with(".db") || name.ends_with(".redb") || name.ends_with(".lock")
        })
    }
}

/// One system: running, or why not.
#[derive(Debug)]
pub struct System {
    /// Which one.
    pub kind: Kind,
    /// The running daemon, or the reason it is unavailable.
    pub state: Result<Running, String>,
}

impl System {
    /// The running daemon, if any.
    pub fn running(&mut self) -> Option<&mut Running> {
        self.state.as_mut().ok()
    }
}

/// Paths and switches for [`Harness::start`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The skiffd executable.
    pub skiffd: PathBuf,
    /// The containerd executable.
    pub containerd: PathBuf,
    /// Where the run's tmpfs is mounted.
    pub mount_point: PathBuf,
    /// tmpfs size, `mount -o size=` syntax.
    pub tmpfs_size: String,
    /// The RuntimeClass handler skiffd runs pods with (empty: its default).
    pub skiff_handler: String,
}

/// Everything the run started. Fields drop in declaration order: daemons
/// first, then the registry, the namespace, and last the tmpfs.
#[derive(Debug)]
pub struct Harness {
    /// skiffd.
    pub skiff: System,
    /// containerd.
    pub containerd: System,
    /// Runs after both daemons stopped: kills what they left running, removes the
    /// pods' cgroups and containerd's host directories.
    _leftovers: Undo,
    registry: Guarded<Registry>,
    netns: Guarded<NetNs>,
    tmpfs: Tmpfs,
    /// The registry hosts directory both daemons read.
    pub hosts_dir: PathBuf,
    /// Notes on how the stage was set up, for the report.
    pub notes: Vec<String>,
    /// The skiffd executable, for [`Harness::start_skiffd_with`].
    skiffd: PathBuf,
    /// The containerd executable, for [`Harness::start_containerd_at`].
    containerd_bin: PathBuf,
}

impl Harness {
    /// Mounts the tmpfs, creates the namespace, starts the registry, pushes
    /// the sandbox image, writes the hosts dir, then starts both daemons. A
    /// daemon that fails to start is recorded as unavailable; anything else
    /// failing is an error.
    pub fn start(opts: &Options) -> anyhow::Result<Harness> {
        let tmpfs = Tmpfs::mount(&opts.mount_point, &opts.tmpfs_size)?;
        let base = tmpfs.path().to_path_buf();

        let ns = NetNs::create("perf").context("creating the network namespace")?;
        let ns_name = ns.name().to_owned();
        let netns = Guarded::new(ns, format!("delete netns {ns_name}"), move || {
            let _ = sys::run(Command::new("ip").args(["netns", "del", &ns_name]));
        });

        let registry = Registry::start(Some(&netns.inner), Some(REGISTRY_HOST.parse()?))
            .context("starting docker-registry in the namespace")?;
        let reg_pid = registry.pid();
        let reg_dir = registry.data_dir().parent().map(Path::to_path_buf);
        let registry = Guarded::new(
            registry,
            format!("stop registry (pid {reg_pid})"),
            move || {
                if let Some(pid) = i32::try_from(reg_pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                if let Some(dir) = reg_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
            },
        );

        let hosts_dir = base.join("certs.d");
        let host_dir = hosts_dir.join(REGISTRY_HOST);
        std::fs::create_dir_all(&host_dir)?;
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!(
                "server = \"http://{REGISTRY_HOST}\"\n\n[host.\"http://{REGISTRY_HOST}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;

        // Shims and containers outlive their daemon; a scenario removes its pods, and this
        // catches what an error or a crash left: processes naming the tmpfs (a path unique
        // to this run) on their command line, and their descendants, by PID.
        // Then the pods' cgroups, which only this run uses, and the directories containerd
        // 1.6 makes outside its root and state (shim sockets in /run/containerd/s, the CNI
        // cache in /var/lib/cni) if they were not there before and are empty again.
        let needle = format!("{}/", base.display());
        let cgroups = cgroup_root();
        let host_dirs: Vec<PathBuf> = CONTAINERD_HOST_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect();
        let leftovers = Undo::register(
            "kill what is left under the tmpfs, remove the run's cgroups",
            move || {
                let killed = sys::kill_mentioning(&needle);
                for (pid, argv) in &killed {
                    eprintln!("skiff-perf: killed leftover pid {pid}: {argv}");
                }
                if !killed.is_empty() {
                    // Let the kernel release their mounts and cgroups.
                    std::thread::sleep(Duration::from_millis(200));
                }
                for dir in sys::remove_cgroup_tree(&cgroups) {
                    eprintln!("skiff-perf: could not remove cgroup {}", dir.display());
                }
                for dir in &host_dirs {
                    sys::remove_empty_dirs(dir);
                }
            },
        );

        let mut h = Harness {
            skiff: System {
                kind: Kind::Skiff,
                state: Err("not started".into()),
            },
            containerd: System {
                kind: Kind::Containerd,
                state: Err("not started".into()),
            },
            _leftovers: leftovers,
            registry,
            netns,
            tmpfs,
            hosts_dir,
            notes: Vec::new(),
            skiffd: opts.skiffd.clone(),
            containerd_bin: opts.containerd.clone(),
        };

        let sandbox = ImageBuilder::new()
            .layer(busybox_layer(Compression::Gzip).context("building the sandbox image")?)
            .entrypoint(["/bin/sleep", "infinity"])
            .build();
        h.push(SANDBOX_REPO, "latest", &sandbox)
            .context("pushing the sandbox image")?;

        h.notes.push(format!(
            "both daemons run with `nsenter --net=/run/netns/{ns}` (host mount namespace), \
             TMPDIR on the tmpfs, and the same hosts dir ({REGISTRY_HOST}/hosts.toml: server = \
             \"http://{REGISTRY_HOST}\"); the harness talks CRI to them over their unix sockets",
            ns = h.netns.inner.name()
        ));
        h.notes.push(
            "the registry's storage is a temp dir on the root filesystem; blobs are served from the \
             page cache after the push"
                .into(),
        );
        h.containerd.state = h.start_containerd_at(&base, Kind::Containerd.label());
        let handler_config = if opts.skiff_handler.is_empty() {
            String::new()
        } else {
            h.notes.push(format!(
                "skiffd's default runtime handler: {} (--skiff-handler)",
                opts.skiff_handler
            ));
            format!("[runtime]\ndefault_handler = \"{}\"\n", opts.skiff_handler)
        };
        h.skiff.state = h.start_skiffd_with(Kind::Skiff.label(), &handler_config);
        Ok(h)
    }

    /// The tmpfs everything lives on.
    pub fn base(&self) -> &Path {
        self.tmpfs.path()
    }

    /// The network namespace's bind mount (`/run/netns/<name>`): both daemons'
    /// streaming servers listen on its loopback, so clients of theirs create
    /// their sockets from a thread that entered it.
    pub fn netns_path(&self) -> &Path {
        self.netns.inner.path()
    }

    /// `127.0.0.1:5000/<repo>:<tag>`.
    pub fn reference(repo: &str, tag: &str) -> String {
        format!("{REGISTRY_HOST}/{repo}:{tag}")
    }

    /// Pushes `image` to the registry as `<repo>:<tag>`, from a thread inside
    /// the namespace.
    pub fn push(&self, repo: &str, tag: &str, image: &skiff_testkit::Image) -> anyhow::Result<()> {
        let host = self.registry.inner.host();
        self.netns
            .inner
            .try_run(|| skiff_testkit::push(&host, repo, tag, image))?
            .with_context(|| format!("pushing {repo}:{tag}"))
    }

    /// Fetches a blob from the registry into memory, from inside the namespace.
    pub fn fetch_blob(&self, repo: &str, digest: &str) -> anyhow::Result<Vec<u8>> {
        let client = skiff_testkit::RegistryClient::new(&self.registry.inner.host());
        self.netns
            .inner
            .try_run(|| client.get_blob(repo, digest))?
            .with_context(|| format!("fetching {repo}@{digest}"))
    }

    /// Both systems, skiff first.
    pub fn systems(&mut self) -> [&mut System; 2] {
        [&mut self.skiff, &mut self.containerd]
    }

    /// The system of `kind`.
    pub fn system(&mut self, kind: Kind) -> &mut System {
        match kind {
            Kind::Skiff => &mut self.skiff,
            Kind::Containerd => &mut self.containerd,
        }
    }

    fn nsenter(&self, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.inner.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Starts a containerd (the anchor's configuration) in the namespace with its root,
    /// state, socket and log under `<base>/<name>`; its pods go under the cgroup
    /// `<run's cgroup>/<name>`. The harness's own is `<tmpfs>/containerd`; `pulldisk`
    /// starts one on its disk.
    pub fn start_containerd_at(&self, base: &Path, name: &str) -> Result<Running, String> {
        let dir = base.join(name);
        let root = dir.join("root");
        let state = dir.join("state");
        let tmp = dir.join("tmp");
        let cni = dir.join("cni/net.d");
        let socket = dir.join("containerd.sock");
        for d in [&root, &state, &tmp, &cni] {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("runc");
        let cni_conflist = cni.join("10-skiff-perf.conflist");
        std::fs::write(&cni_conflist, cni_config(&dir.join("cni/ipam")))
            .map_err(|e| format!("writing {}: {e}", cni_conflist.display()))?;
        let runc_root = state.join("runc");
        let config = containerd_config(&ContainerdPaths {
            root: &root,
            state: &state,
            socket: &socket,
            cni_conf: &cni,
            hosts: &self.hosts_dir,
            runc,
            runc_root: &runc_root,
        });
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let mut cmd = self.nsenter(&self.containerd_bin);
        cmd.arg("--config").arg(&config_path).env("TMPDIR", &tmp);
        let daemon = Daemon::spawn(
            "containerd",
            cmd,
            &dir.join("containerd.log"),
            Duration::from_secs(10),
        )
        .map_err(|e| format!("{e:#}"))?;
        wait_ready(daemon, socket, root, dir, name)
    }

    /// Starts a skiffd in the namespace on its own root, state, socket, TMPDIR
    /// and log under `<tmpfs>/<name>`, with a config of the harness's
    /// `[registry]` table followed by `extra` (more TOML tables). Its pods go
    /// under the cgroup `<run's cgroup>/<name>`. The harness's own skiffd is
    /// `name` = `skiff` with nothing extra; scenarios that compare skiffd
    /// configurations start more. The daemon stops when the returned
    /// [`Running`] drops, or on a signal; what its pods leave is the harness's
    /// leftover sweep's (it names the tmpfs).
    pub fn start_skiffd_with(&self, name: &str, extra: &str) -> Result<Running, String> {
        self.start_skiffd_at(self.base(), name, extra, &[])
    }

    /// [`Harness::start_skiffd_with`] under `<base>/<name>` instead of the tmpfs, with
    /// `env` added to its environment.
    pub fn start_skiffd_at(
        &self,
        base: &Path,
        name: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Result<Running, String> {
        if !self.skiffd.exists() {
            return Err(format!(
                "{} does not exist (build it: cargo build --release --bin skiffd)",
                self.skiffd.display()
            ));
        }
        let dir = base.join(name);
        let root = dir.join("root");
        let state = dir.join("state");
        let tmp = dir.join("tmp");
        let socket = dir.join("skiff.sock");
        for d in [&root, &state, &tmp] {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let config_path = dir.join("config.toml");
        // NRI on as a node runs it, but on a socket of this run's own (never the
        // node's /var/run/nri, never a plugin the node has installed).
        let nri = if extra.contains("[nri]") {
            String::new()
        } else {
            format!(
                "[nri]\nsocket_path = \"{}\"\nplugin_path = \"{}\"\n",
                dir.join("nri.sock").display(),
                dir.join("nri-plugins").display()
            )
        };
        std::fs::write(
            &config_path,
            format!(
                "[registry]\nconfig_path = \"{}\"\n{extra}{nri}",
                self.hosts_dir.display()
            ),
        )
        .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let mut cmd = self.nsenter(&self.skiffd);
        cmd.arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(&state)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config_path)
            .args(["--log-level", "info"])
            .env("TMPDIR", &tmp)
            .envs(env.iter().copied());
        let daemon = Daemon::spawn(
            "skiffd",
            cmd,
            &dir.join("skiffd.log"),
            Duration::from_secs(10),
        )
        .map_err(|e| format!("{e:#}"))?;
        wait_ready(daemon, socket, root, dir, name)
    }
}

/// Polls `socket` with CRI `Version` until it answers, the daemon exits, or
/// [`READY_LIMIT`] passes.
fn wait_ready(
    daemon: Daemon,
    socket: PathBuf,
    root: PathBuf,
    dir: PathBuf,
    cgroup_name: &str,
) -> Result<Running, String> {
    let start = Instant::now();
    loop {
        let last = if socket.exists() {
            match Cri::connect(&socket) {
                Ok((cri, v)) => {
                    return Ok(Running {
                        cri,
                        root,
                        dir,
                        socket,
                        cgroup_parent: format!("{}/{cgroup_name}", cgroup_root()),
                        cri_version: format!("{} {}", v.runtime_name, v.runtime_version),
                        idle_rss_kib: sys::status_kib(daemon.pid(), "VmRSS"),
                        daemon,
                    });
                }
                Err(e) => format!("{e:#}"),
            }
        } else {
            format!("{} does not exist yet", socket.display())
        };
        if let Some(status) = daemon.exited() {
            return Err(format!(
                "{} exited during start-up ({status}); log tail:\n{}",
                daemon.name(),
                daemon.log_tail(2048)
            ));
        }
        if start.elapsed() > READY_LIMIT {
            return Err(format!(
                "{} did not answer CRI Version within {READY_LIMIT:?} (last: {last}); log tail:\n{}",
                daemon.name(),
                daemon.log_tail(2048)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Host directories containerd 1.6 creates whatever its root and state are.
const CONTAINERD_HOST_DIRS: [&str; 2] = ["/run/containerd", "/var/lib/cni"];

/// The cgroup (in every hierarchy) all of this run's pods go under.
pub fn cgroup_root() -> String {
    format!("/skiff-perf-{}", std::process::id())
}

/// Paths that go into containerd's config.
#[derive(Debug)]
pub struct ContainerdPaths<'a> {
    /// `root`.
    pub root: &'a Path,
    /// `state`.
    pub state: &'a Path,
    /// `grpc.address`.
    pub socket: &'a Path,
    /// The CRI plugin's CNI conf dir (holds [`cni_config`]).
    pub cni_conf: &'a Path,
    /// The registry hosts dir.
    pub hosts: &'a Path,
    /// The runc binary.
    pub runc: &'a str,
    /// runc's `--root` (its state), on the tmpfs rather than `/run/containerd/runc`.
    pub runc_root: &'a Path,
}

/// The subnet containerd's pods get addresses from (inside the harness's namespace).
pub const POD_SUBNET: &str = "10.99.0.0/16";
/// The bridge the CNI plugin creates in the harness's namespace.
pub const POD_BRIDGE: &str = "cni-perf0";

/// The CNI network containerd's pods join: Debian's bridge plugin (`isGateway`,
/// no masquerading: nothing touches iptables) with host-local IPAM keeping its
/// state in `ipam_dir` on the tmpfs, then loopback. It lives in the harness's
/// network namespace, as containerd does.
pub fn cni_config(ipam_dir: &Path) -> String {
    format!(
        r#"{{
  "cniVersion": "0.4.0",
  "name": "skiff-perf",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{POD_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{ "subnet": "{POD_SUBNET}" }}]],
        "routes": [{{ "dst": "0.0.0.0/0" }}],
        "dataDir": "{ipam}"
      }}
    }},
    {{ "type": "loopback" }}
  ]
}}
"#,
        ipam = ipam_dir.display()
    )
}

/// containerd 1.6's config (version 2) for the anchor: its own root, state
/// and sockets; only the overlayfs snapshotter; CRI with runc (cgroupfs
/// driver, state on the tmpfs), oom_score_adj restricted to what the host
/// allows, the harness's sandbox image, CNI config and registry hosts dir.
pub fn containerd_config(p: &ContainerdPaths<'_>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Without CAP_SYS_RESOURCE (as here) runc cannot lower oom_score_adj to the sandbox's
  # -998: keep it at or above containerd's own, as skiff clamps it.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{runc_root}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
"#,
        root = p.root.display(),
        state = p.state.display(),
        socket = p.socket.display(),
        sandbox = Harness::reference(SANDBOX_REPO, "latest"),
        runc = p.runc,
        runc_root = p.runc_root.display(),
        cni = p.cni_conf.display(),
        hosts = p.hosts.display(),
    );
    s
}

/// A testkit fixture plus an undo action for the signal path. On the normal
/// path the action is disarmed and the fixture's own `Drop` cleans up.
#[derive(Debug)]
struct Guarded<T> {
    inner: T,
    undo: Option<Undo>,
}

impl<T> Guarded<T> {
    fn new(inner: T, what: String, on_signal: impl FnOnce() + Send + 'static) -> Guarded<T> {
        Guarded {
            inner,
            undo: Some(Undo::register(what, on_signal)),
        }
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        if let Some(undo) = self.undo.take() {
            undo.disarm();
        }
        // `inner` drops after this, running the fixture's own cleanup.
    }
}

/// Checks the harness can run at all.
pub fn preflight() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!("skiff-perf needs root (tmpfs mount, network namespaces, daemons)");
    }
    for tool in ["ip", "nsenter", "mount", "umount", "tar", "docker-registry"] {
        if !sys::on_path(tool) {
            bail!("`{tool}` not found on PATH (perf/run installs what is missing)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_alternates() {
        assert_eq!(Kind::order(0), [Kind::Skiff, Kind::Containerd]);
        assert_eq!(Kind::order(1), [Kind::Containerd, Kind::Skiff]);
    }

    #[test]
    fn containerd_config_is_valid_toml() {
        let c = containerd_config(&ContainerdPaths {
            root: Path::new("/t/root"),
            state: Path::new("/t/state"),
            socket: Path::new("/t/c.sock"),
            cni_conf: Path::new("/t/cni"),
            hosts: Path::new("/t/certs.d"),
            runc: "/usr/sbin/runc",
            runc_root: Path::new("/t/state/runc"),
        });
        let v: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(v["version"].as_integer(), Some(2));
        assert_eq!(v["grpc"]["address"].as_str(), Some("/t/c.sock"));
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["registry"]["config_path"].as_str(), Some("/t/certs.d"));
        assert_eq!(
            cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(false)
        );
        assert!(c.contains("address = \"/t/c.sock\""));
        assert!(c.contains("config_path = \"/t/certs.d\""));
        assert!(c.contains("SystemdCgroup = false"));
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        assert!(c.contains("sandbox_image = \"127.0.0.1:5000/skiff-perf/pause:latest\""));
        assert_eq!(
            cri["containerd"]["runtimes"]["runc"]["options"]["Root"].as_str(),
            Some("/t/state/runc")
        );
    }

    #[test]
    fn cni_config_is_a_bridge_and_loopback_list() {
        let c = cni_config(Path::new("/t/cni/ipam"));
        let v: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][0]["bridge"], POD_BRIDGE);
        assert_eq!(v["plugins"][0]["isGateway"], true);
        assert_eq!(v["plugins"][0]["ipMasq"], false);
        assert_eq!(v["plugins"][0]["ipam"]["type"], "host-local");
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            POD_SUBNET
        );
        assert_eq!(v["plugins"][0]["ipam"]["dataDir"], "/t/cni/ipam");
        assert_eq!(v["plugins"][1]["type"], "loopback");
    }
}
