//! A real OCI distribution registry for tests: Debian's `docker-registry`
//! (distribution 2.8) with filesystem storage in a temp directory.
//!
//! Start it inside a [`NetNs`] (it then listens on `127.0.0.1:5000` of that
//! namespace by default) or in the host namespace on a free loopback port.
//! Dropping the [`Registry`] stops the process and removes its storage.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::netns::{NetNs, NetNsError};
use crate::push::RegistryClient;

/// The registry binary, from Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "docker-registry";

/// Default listen address inside a fresh namespace.
pub const DEFAULT_NETNS_ADDR: &str = "127.0.0.1:5000";

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(2);
const LOG_TAIL_BYTES: u64 = 4096;

/// Errors from starting a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The temp directory, config or log file could not be set up.
    #[error("preparing registry directory {path}: {source}", path = path.display())]
    Prepare {
        /// The file or directory involved.
        path: PathBuf,
        /// The io error.
        #[source]
        source: std::io::Error,
    },
    /// No free loopback port could be found.
    #[error("picking a free port on 127.0.0.1: {0}")]
    PickPort(#[source] std::io::Error),
    /// The registry process could not be started.
    #[error("starting {REGISTRY_BIN} (apt-get install docker-registry): {source}")]
    Spawn {
        /// The io error.
        #[source]
        source: std::io::Error,
    },
    /// The registry exited during start-up.
    #[error("{REGISTRY_BIN} on {addr} exited during start-up ({status}); log tail:\n{log_tail}")]
    Exited {
        /// The listen address it was given.
        addr: SocketAddr,
        /// Its exit status.
        status: ExitStatus,
        /// The end of its log.
        log_tail: String,
    },
    /// `GET /v2/` did not answer 200 in time.
    #[error(
        "{REGISTRY_BIN} on {addr} not ready after {waited:?} (last probe: {last_error}); log tail:\n{log_tail}"
    )]
    NotReady {
        /// The listen address.
        addr: SocketAddr,
        /// How long we waited.
        waited: Duration,
        /// The last probe's failure.
        last_error: String,
        /// The end of its log.
        log_tail: String,
    },
    /// The readiness probe could not enter the namespace.
    #[error("probing registry in its namespace: {0}")]
    NetNs(#[from] NetNsError),
}

/// A running `docker-registry`, stopped and wiped on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    netns: Option<String>,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry listening on `addr` and waits (up to 10 s) until
    /// `GET /v2/` answers 200.
    ///
    /// With `netns`, the registry runs inside it and `addr` defaults to
    /// `127.0.0.1:5000`; reach it from code run with [`NetNs::run`]. Without,
    /// it runs in the caller's namespace and `addr` defaults to a free
    /// `127.0.0.1` port (bound and released, so a rare race is possible).
    pub fn start(
        netns: Option<&NetNs>,
        addr: Option<SocketAddr>,
    ) -> Result<Registry, RegistryError> {
        let addr = match (addr, netns) {
            (Some(a), _) => a,
            (None, Some(_)) => DEFAULT_NETNS_ADDR
                .parse()
                .expect("DEFAULT_NETNS_ADDR is a valid socket address"),
            (None, None) => free_loopback_addr()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()
            .map_err(|source| RegistryError::Prepare {
                path: std::env::temp_dir(),
                source,
            })?;
        let prepare = |path: &Path| {
            let path = path.to_owned();
            move |source| RegistryError::Prepare { path, source }
        };
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(prepare(&data))?;
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config_yaml(&data, addr)).map_err(prepare(&config_path))?;
        let log_path = dir.path().join("registry.log");
        let log = File::create(&log_path).map_err(prepare(&log_path))?;
        let log_err = log.try_clone().map_err(prepare(&log_path))?;

        let mut cmd = match netns {
            Some(ns) => ns.command(REGISTRY_BIN),
            None => Command::new(REGISTRY_BIN),
        };
        cmd.arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .map_err(|source| RegistryError::Spawn { source })?;

        // From here on the registry is owned: an early return stops it.
        let mut registry = Registry {
            child,
            addr,
            netns: netns.map(|ns| ns.name().to_owned()),
            log_path,
            dir,
        };
        match netns {
            Some(ns) => ns.try_run(|| registry.wait_ready())??,
            None => registry.wait_ready()?,
        }
        Ok(registry)
    }

    /// Polls `GET /v2/` from the calling thread's namespace.
    fn wait_ready(&mut self) -> Result<(), RegistryError> {
        let client = RegistryClient::with_timeout(&self.host(), Duration::from_secs(1));
        let start = Instant::now();
        loop {
            let last_error = match client.ping() {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(RegistryError::Exited {
                    addr: self.addr,
                    status,
                    log_tail: self.log_tail(),
                });
            }
            if start.elapsed() >= READY_TIMEOUT {
                return Err(RegistryError::NotReady {
                    addr: self.addr,
                    waited: start.elapsed(),
                    last_error,
                    log_tail: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, for image references and [`crate::push()`].
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The namespace the registry runs in, if any.
    pub fn netns_name(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The registry process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The registry's storage root.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where the registry's stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last few KiB of the registry's log.
    pub fn log_tail(&self) -> String {
        let read = || -> std::io::Result<String> {
            let mut f = File::open(&self.log_path)?;
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        read().unwrap_or_else(|e| format!("<reading {}: {e}>", self.log_path.display()))
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw)
            && let Err(e) = kill_process(pid, Signal::TERM)
        {
            eprintln!(
                "skiff-testkit: SIGTERM to registry pid {}: {e}",
                self.child.id()
            );
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    eprintln!("skiff-testkit: waiting for registry: {e}");
                    break;
                }
            }
        }
        // Child::kill sends SIGKILL to this child's pid only.
        if let Err(e) = self.child.kill() {
            eprintln!("skiff-testkit: SIGKILL to registry: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("skiff-testkit: reaping registry: {e}");
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        // `dir` is removed when the field drops, after the process is gone.
    }
}

fn free_loopback_addr() -> Result<SocketAddr, RegistryError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(RegistryError::PickPort)?;
    listener.local_addr().map_err(RegistryError::PickPort)
}

fn config_yaml(data: &Path, addr: SocketAddr) -> String {
    format!(
        "version: 0.1\n\
         log:\n  \
           level: warn\n  \
           accesslog:\n    \
             disabled: true\n\
         storage:\n  \
           filesystem:\n    \
             rootdirectory: {data}\n  \
           delete:\n    \
             enabled: true\n  \
           maintenance:\n    \
             uploadpurging:\n      \
               enabled: false\n\
         http:\n  \
           addr: {addr}\n  \
           secret: skiff-testkit\n",
        data = data.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_yaml_shape() {
        let y = config_yaml(Path::new("/tmp/x/data"), "127.0.0.1:5000".parse().unwrap());
        assert!(y.contains("\n    rootdirectory: /tmp/x/data\n"), "{y}");
        assert!(y.contains("\n  addr: 127.0.0.1:5000\n"), "{y}");
        assert!(y.contains("\n  level: warn\n"), "{y}");
        assert!(y.contains("\n  delete:\n    enabled: true\n"), "{y}");
    }

    #[test]
    fn host_namespace_registry_starts_and_stops() {
        // Needs no privileges: a loopback port in the caller's namespace.
        let registry = Registry::start(None, None).unwrap();
        let dir = registry.data_dir();
        let pid = registry.pid();
        RegistryClient::new(&registry.host()).ping().unwrap();
        drop(registry);
        assert!(!dir.exists(), "storage removed");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "registry process reaped"
        );
    }
}
