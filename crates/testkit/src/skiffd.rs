//! A real `skiffd` process for end-to-end tests: temp root, state and socket,
//! optionally inside a test network namespace, stopped and cleaned up on drop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use skiff_cri::client::CriClient;

use crate::netns::NetNs;

/// A failure to start or stop skiffd.
#[derive(Debug, thiserror::Error)]
pub enum SkiffdError {
    /// Spawning the process failed.
    #[error("cannot spawn {bin}: {source}")]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// skiffd exited before its socket answered.
    #[error("skiffd exited with {status} before serving; log:\n{log}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// Its log.
        log: String,
    },
    /// The socket did not answer in time.
    #[error("skiffd did not serve on {socket} within {secs}s; log:\n{log}")]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// How long we waited.
        secs: u64,
        /// Its log.
        log: String,
    },
    /// A file operation of the harness failed.
    #[error("harness io on {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Options for starting skiffd.
#[derive(Debug, Default, Clone)]
pub struct SkiffdOptions {
    /// The contents of a config file passed with `--config`.
    pub config_toml: Option<String>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Run inside this network namespace (its `/run/netns/…` path), via `nsenter --net`.
    pub netns: Option<PathBuf>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// A running skiffd.
pub struct Skiffd {
    bin: PathBuf,
    options: SkiffdOptions,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The CRI socket.
    pub socket: PathBuf,
    /// `--root`.
    pub root: PathBuf,
    /// `--state`.
    pub state: PathBuf,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// The NRI socket (in the temp directory, unless the config sets `socket_path`).
    pub nri_socket: PathBuf,
}

impl Skiffd {
    /// Start `bin` (the skiffd executable) on fresh temp directories and wait until it serves.
    pub fn start(bin: &Path, options: SkiffdOptions) -> Result<Skiffd, SkiffdError> {
        let dir = tempfile::Builder::new()
            .prefix("skiffd-")
            .tempdir()
            .map_err(|source| SkiffdError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let base = dir.path().to_path_buf();
        let mut d = Skiffd {
            bin: bin.to_path_buf(),
            options,
            child: None,
            socket: base.join("skiff.sock"),
            root: base.join("root"),
            state: base.join("state"),
            log: base.join("skiffd.log"),
            nri_socket: base.join("nri.sock"),
            dir,
        };
        d.spawn()?;
        d.wait_ready(Duration::from_secs(20))?;
        Ok(d)
    }

    /// Start skiffd inside `netns`.
    pub fn start_in(
        bin: &Path,
        netns: &NetNs,
        mut options: SkiffdOptions,
    ) -> Result<Skiffd, SkiffdError> {
        options.netns = Some(netns.path().to_path_buf());
        Self::start(bin, options)
    }

    /// The temp directory everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The command that starts this skiffd (without spawning it).
    pub fn command(&self) -> Result<Command, SkiffdError> {
        let mut cmd = match &self.options.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--log-level")
            .arg("debug");
        // Every test daemon gets its own NRI socket and plugin directory, so that two
        // never share the node's defaults; a test's own `[nri]` table gets the keys it
        // does not set.
        let mut toml = self.options.config_toml.clone().unwrap_or_default();
        let mut keys = String::new();
        for (key, value) in [
            ("socket_path", self.nri_socket.clone()),
            ("plugin_path", self.dir.path().join("nri-plugins")),
        ] {
            if !toml.contains(&format!("{key} =")) {
                keys.push_str(&format!("{key} = \"{}\"\n", value.display()));
            }
        }
        if toml.contains("[nri]\n") {
            toml = toml.replacen("[nri]\n", &format!("[nri]\n{keys}"), 1);
        } else {
            toml.push_str(&format!("\n[nri]\n{keys}"));
        }
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, toml).map_err(|source| SkiffdError::Io {
            path: path.clone(),
            source,
        })?;
        cmd.arg("--config").arg(path);
        cmd.args(&self.options.args);
        cmd.envs(
            self.options
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        Ok(cmd)
    }

    fn spawn(&mut self) -> Result<(), SkiffdError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| SkiffdError::Io {
                path: self.log.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| SkiffdError::Io {
            path: self.log.clone(),
            source,
        })?;
        let child = self
            .command()?
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| SkiffdError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), SkiffdError> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(SkiffdError::Exited {
                    status,
                    log: self.log_text(),
                });
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(SkiffdError::Timeout {
                    socket: self.socket.clone(),
                    secs: limit.as_secs(),
                    log: self.log_text(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// skiffd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A CRI client connected to the socket.
    pub async fn client(&self) -> CriClient {
        CriClient::connect(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("connect to skiffd: {e}\nlog:\n{}", self.log_text()))
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(Pid::from_raw)
        {
            let _ = kill_process(pid, sig);
        }
    }

    /// SIGTERM, then wait up to `limit`; SIGKILL after that. Returns the exit status and how long it took.
    pub fn stop(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        self.signal(Signal::TERM);
        let mut child = self.child.take()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, start.elapsed()));
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let status = child.wait().ok()?;
                return Some((status, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL skiffd (a crash) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start skiffd again on the same directories (after [`Skiffd::stop`] or [`Skiffd::kill`]).
    pub fn restart(&mut self) -> Result<(), SkiffdError> {
        if self.child.is_some() {
            self.kill();
        }
        self.spawn()?;
        self.wait_ready(Duration::from_secs(20))
    }
}

impl Skiffd {
    /// Remove every pod through the CRI (which stops containers and shims), then
    /// lazily unmount anything still mounted under the temp directory, so a test
    /// that failed half way leaves no process, mount or namespace behind.
    pub fn remove_all_pods(&self) {
        if self.child.is_none() {
            return;
        }
        let socket = self.socket.clone();
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut c) = CriClient::connect(&socket).await else {
                    return;
                };
                let Ok(pods) = c
                    .runtime
                    .list_pod_sandbox(skiff_cri::api::ListPodSandboxRequest { filter: None })
                    .await
                else {
                    return;
                };
                for p in pods.into_inner().items {
                    let _ = c
                        .runtime
                        .remove_pod_sandbox(skiff_cri::api::RemovePodSandboxRequest {
                            pod_sandbox_id: p.id,
                        })
                        .await;
                }
            });
        });
        let _ = worker.join();
    }

    fn unmount_leftovers(&self) {
        let base = self.dir.path().to_string_lossy().into_owned();
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&base))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            eprintln!("skiffd harness: unmounting leftover {p}");
            let _ = rustix::mount::unmount(p, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

impl Drop for Skiffd {
    fn drop(&mut self) {
        self.remove_all_pods();
        if self.child.is_some() {
            self.stop(Duration::from_secs(5));
        }
        self.unmount_leftovers();
        if std::thread::panicking() {
            eprintln!(
                "--- skiffd log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}
