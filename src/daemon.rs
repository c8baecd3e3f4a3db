//! skiffd's life: directories, the state lock, the socket, the CRI runtime thread,
//! signals and a bounded shutdown.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, ConfigError, Overrides};
use crate::images::ImageService;
use crate::info::Info;
use crate::meta::{MetaError, MetaStore};

/// How long open connections (streams, pulls) may delay the exit after SIGTERM.
const DRAIN: Duration = Duration::from_secs(3);

/// skiffd's command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "skiffd",
    version,
    about = "skiff: a Kubernetes CRI container runtime"
)]
pub struct DaemonArgs {
    /// Config file (default /etc/skiff/config.toml, which may be missing; a file named here must exist).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// CRI socket path (default /run/skiff/skiff.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Persistent data directory (default /var/lib/skiff).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Runtime state directory (default /run/skiff).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter directive.
    #[arg(long, default_value = "info", env = "SKIFF_LOG")]
    pub log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: crate::logging::Format,
    /// Instead of serving: a helper command.
    #[command(subcommand)]
    pub command: Option<DaemonCommand>,
}

/// skiffd's helper commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DaemonCommand {
    /// Configuration helpers.
    Config {
        /// What to do.
        #[command(subcommand)]
        what: ConfigCommand,
    },
}

/// `skiffd config …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration file with every key, explained, set to its default.
    Default,
    /// Read the configuration (file, defaults and flags) and print the effective one as
    /// JSON; exit non-zero naming the key if it is not valid.
    Check,
}

impl DaemonArgs {
    /// The flag values that override the config file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            socket: self.socket.clone(),
            root: self.root.clone(),
            state: self.state.clone(),
        }
    }
}

/// Why skiffd could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A directory skiffd needs cannot be created.
    #[error("cannot create directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another skiffd holds the state directory.
    #[error("another skiffd is running with state directory {0} (its lock file is held)")]
    StateLocked(PathBuf),
    /// Another process answers on the socket.
    #[error("another process is serving on {0}; refusing to replace a live socket")]
    SocketLive(PathBuf),
    /// The socket cannot be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metadata store cannot be opened.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The image store cannot be opened.
    #[error(transparent)]
    Images(#[from] skiff_image::ImageError),
    /// The tokio runtime or a signal handler cannot be set up.
    #[error("cannot start the CRI runtime thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("CRI server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

fn make_dir(path: &Path) -> Result<(), DaemonError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(path)
        .map_err(|source| DaemonError::Dir {
            path: path.to_path_buf(),
            source,
        })
}

/// Hold an exclusive lock on `<state>/skiffd.lock` for the daemon's lifetime.
fn lock_state(state: &Path) -> Result<fs::File, DaemonError> {
    let path = state.join("skiffd.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DaemonError::Dir {
            path: path.clone(),
            source,
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(_) => Err(DaemonError::StateLocked(state.to_path_buf())),
    }
}

/// Bind the CRI socket: refuse a live one, replace a stale one, mode 0660.
pub fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        make_dir(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(DaemonError::SocketLive(path.to_path_buf()));
    }
    match fs::symlink_metadata(path) {
        Ok(_) => {
            tracing::info!(socket = %path.display(), "replacing stale socket file");
            fs::remove_file(path).map_err(|source| DaemonError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DaemonError::Bind {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let bind_err = |source| DaemonError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// The shim binary skiffd runs: `skiff-shim` next to skiffd's own executable.
pub fn shim_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("skiff-shim")))
        .unwrap_or_else(|| PathBuf::from("skiff-shim"))
}

/// The image service's settings. `SKIFF_REGISTRY_READ_TIMEOUT_MS` and
/// `SKIFF_REGISTRY_ATTEMPTS` shorten the registry timeouts and retries for tests.
fn image_config(config: &Config) -> skiff_image::ImagesConfig {
    let mut c =
        skiff_image::ImagesConfig::new(config.root.clone(), config.registry_config_path.clone());
    c.durable = config.images_durable;
    if let Some(ms) = std::env::var("SKIFF_REGISTRY_READ_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        c.timeouts.read = Duration::from_millis(ms.max(1));
    }
    if let Some(n) = std::env::var("SKIFF_REGISTRY_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        c.attempts = n.max(1);
    }
    c
}

/// Run skiffd until SIGTERM or SIGINT.
pub fn run(args: &DaemonArgs) -> Result<(), DaemonError> {
    crate::sys::limit_malloc_arenas();
    let config = Arc::new(Config::load(args.config.as_deref(), &args.overrides())?);
    make_dir(&config.root)?;
    make_dir(&config.state)?;
    let _lock = lock_state(&config.state)?;
    let meta = Arc::new(MetaStore::open(&config.meta_path())?);
    let images = Arc::new(skiff_image::Images::open(
        image_config(&config),
        meta.clone(),
    )?);
    let shim = shim_path();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        socket = %config.socket.display(),
        root = %config.root.display(),
        state = %config.state.display(),
        config = config.file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(defaults)".into()),
        handler = %config.default_handler,
        cgroups = ?config.cgroup_mode,
        "skiffd starting"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("skiff-cri")
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let socket = config.socket.clone();
    let result = runtime.block_on(async {
        let listener =
            tokio::net::UnixListener::from_std(bind_socket(&socket)?).map_err(|source| {
                DaemonError::Bind {
                    path: socket.clone(),
                    source,
                }
            })?;
        // Each handler's `features` is asked once; the spec generator and Status share it.
        let features = crate::info::probe_all(&config);
        let runtime = crate::pods::Runtime::new(
            config.clone(),
            meta.clone(),
            images.clone(),
            shim.clone(),
            features.clone(),
        );
        let network_problem = runtime.init_network().await;
        if let Some(p) = &network_problem {
            tracing::error!(problem = %p, "pod networking is not ready");
        }
        match runtime.start_streaming(config.streaming_address).await {
            Ok(url) => tracing::info!(url = %url, "streaming server listening"),
            Err(e) => tracing::error!(
                address = %config.streaming_address,
                error = %e,
                "the streaming server could not start; Exec, Attach and PortForward will fail"
            ),
        }
        if let Err(e) = runtime.recover().await {
            tracing::error!(error = %e, "recovering pods and containers");
        }
        // After recovery: a pre-installed plugin is synchronized with what survived.
        if let Some(nri) = &config.nri {
            runtime.start_nri(nri).await;
        }
        let in_use: crate::images::InUse = {
            let rt = runtime.clone();
            Arc::new(move |id: &str| rt.containers_using(id))
        };
        let mut ports = skiff_cri::Ports {
            info: Arc::new(Info::new(
                config.clone(),
                meta.clone(),
                shim,
                network_problem,
                features,
            )),
            images: Arc::new(ImageService::new(
                images.clone(),
                in_use,
                runtime.metrics(),
            )),
            observer: runtime.metrics(),
            ..Default::default()
        };
        runtime.install(&mut ports);
        let metrics = runtime.metrics();
        let state: Arc<dyn crate::metrics::StateSource> = runtime.clone();
        let engine = skiff_uring_io::select();
        metrics.collect(crate::metrics::StateCollector {
            state: Arc::downgrade(&state),
            images: Arc::downgrade(&images),
            engine: (
                engine.name(),
                match &engine {
                    skiff_uring_io::Engine::Uring => String::new(),
                    skiff_uring_io::Engine::Blocking(why) => why.to_string(),
                },
            ),
        });
        drop(state);
        if let Some(addr) = config.metrics_address {
            match crate::metrics::serve(addr, metrics).await {
                Ok(at) => tracing::info!(address = %at, "metrics endpoint listening"),
                Err(e) => tracing::error!(address = %addr, error = %e, "the metrics endpoint could not start"),
            }
        }
        let extra = tonic::service::Routes::default()
            .add_service(crate::admin::AdminService::server(images.clone()));
        let served = serve_until_signal(listener, ports, extra).await;
        runtime.stop_nri();
        served
    });
    // Only remove the socket we bound; a failure to bind leaves others' sockets alone.
    if !matches!(
        result,
        Err(DaemonError::SocketLive(_)) | Err(DaemonError::Bind { .. })
    ) {
        let _ = fs::remove_file(&config.socket);
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    if result.is_ok() {
        tracing::info!("skiffd stopped");
    }
    result
}

async fn serve_until_signal(
    listener: tokio::net::UnixListener,
    ports: skiff_cri::Ports,
    extra: tonic::service::Routes,
) -> Result<(), DaemonError> {
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(skiff_cri::server::serve(listener, ports, extra, async {
        let _ = stop_rx.await;
    }));
    tracing::info!("serving CRI");
    let signal_name = tokio::select! {
        joined = &mut server => {
            return match joined {
                Ok(result) => result.map_err(DaemonError::Serve),
                Err(e) => Err(DaemonError::Runtime(std::io::Error::other(e))),
            };
        }
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = signal_name,
        "shutting down; running containers are left alone"
    );
    let _ = stop_tx.send(());
    if tokio::time::timeout(DRAIN, &mut server).await.is_err() {
        tracing::warn!(
            drain_s = DRAIN.as_secs(),
            "connections still open; closing them"
        );
        server.abort();
    }
    Ok(())
}
