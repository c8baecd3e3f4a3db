//! A plugin's side of NRI: connect to a runtime (or take the connection a runtime
//! launched us with), serve an [`api::Plugin`] implementation and register.
//!
//! skiff's tests and benchmarks use it as a real plugin; the `skiff-nri-plugin`
//! binary is built on it.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::api;
use crate::mux::{Mux, Trunk};
use crate::plugin::{PluginId, serve};

/// A registered plugin's connection. Dropping it disconnects.
pub struct Connection {
    /// The runtime's service: for unsolicited `UpdateContainers`.
    pub runtime: api::RuntimeClient,
    trunk: Trunk,
    _server: ttrpc::r#async::Server,
}

impl Connection {
    /// Connect to the runtime's NRI socket at `socket`.
    pub async fn dial(
        socket: &Path,
        id: &PluginId,
        plugin: Arc<dyn api::Plugin + Send + Sync>,
    ) -> std::io::Result<Connection> {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        Connection::register(stream, id, plugin).await
    }

    /// The connection and identity a runtime launched this process with
    /// (`NRI_PLUGIN_SOCKET`, `NRI_PLUGIN_NAME`, `NRI_PLUGIN_IDX`), if it did.
    pub fn from_env() -> std::io::Result<Option<(tokio::net::UnixStream, PluginId)>> {
        use std::os::fd::FromRawFd;
        let (Ok(fd), Ok(name), Ok(idx)) = (
            std::env::var("NRI_PLUGIN_SOCKET"),
            std::env::var("NRI_PLUGIN_NAME"),
            std::env::var("NRI_PLUGIN_IDX"),
        ) else {
            return Ok(None);
        };
        let fd: i32 = fd.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("NRI_PLUGIN_SOCKET={fd} is not a file descriptor"),
            )
        })?;
        // SAFETY: the runtime passed this descriptor for us to own; nothing else in
        // this process uses it.
        let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        std.set_nonblocking(true)?;
        Ok(Some((
            tokio::net::UnixStream::from_std(std)?,
            PluginId { idx, name },
        )))
    }

    /// Serve `plugin` on `stream` and register as `id`. The runtime configures and
    /// synchronizes the plugin right after; its `synchronize` telling it so.
    pub async fn register<S>(
        stream: S,
        id: &PluginId,
        plugin: Arc<dyn api::Plugin + Send + Sync>,
    ) -> std::io::Result<Connection>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + 'static,
    {
        let (plugin_conn, runtime_conn, trunk) = Mux::new(stream).into_parts();
        let server = serve(plugin_conn, api::create_plugin(plugin))
            .await
            .map_err(std::io::Error::other)?;
        let runtime = api::RuntimeClient::new(ttrpc::r#async::Client::new(
            ttrpc::r#async::transport::Socket::new(runtime_conn),
        ));
        let req = api::RegisterPluginRequest {
            plugin_name: id.name.clone(),
            plugin_idx: id.idx.clone(),
            nri_version: crate::NRI_VERSION.to_string(),
        };
        runtime
            .register_plugin(ttrpc::context::with_timeout(5_000_000_000), &req)
            .await
            .map_err(|e| std::io::Error::other(format!("RegisterPlugin: {e}")))?;
        Ok(Connection {
            runtime,
            trunk,
            _server: server,
        })
    }

    /// Wait until the runtime closes the connection.
    pub async fn closed(&self) {
        let mut c = self.trunk.closed.clone();
        let _ = c.wait_for(|c| *c).await;
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.trunk.is_closed()
    }

    /// Why it closed, if it has.
    pub fn close_reason(&self) -> Option<String> {
        self.trunk.reason()
    }

    /// Disconnect.
    pub fn close(&self) {
        self.trunk.close("closed by the plugin");
    }
}

/// What a [`Recorder`] does when an event arrives.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer with this error.
    Fail(String),
    /// Take this long to answer.
    Sleep(std::time::Duration),
    /// Wait until [`Recorder::release`] (or the runtime gives up).
    Block,
}

/// One event a [`Recorder`] saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The event.
    pub event: crate::Event,
    /// The pod's id.
    pub pod: String,
    /// The pod's name.
    pub pod_name: String,
    /// The container's id (empty for pod events).
    pub container: String,
    /// The container's name.
    pub container_name: String,
    /// The container as the plugin saw it.
    pub detail: Option<api::Container>,
}

/// A plugin that records every event, and can be told to refuse, stall or adjust:
/// the test plugin of skiff's own tests, and the no-op plugin of its benchmarks.
pub struct Recorder {
    mask: crate::EventMask,
    seen: std::sync::Mutex<Vec<Seen>>,
    actions: std::sync::Mutex<std::collections::HashMap<i32, Action>>,
    adjust: std::sync::Mutex<Option<api::ContainerAdjustment>>,
    updates: std::sync::Mutex<Vec<api::ContainerUpdate>>,
    synced: std::sync::Mutex<Option<(Vec<String>, Vec<String>)>>,
    sync_action: std::sync::Mutex<Option<Action>>,
    changed: tokio::sync::Notify,
    release: tokio::sync::Notify,
    /// Whether events are recorded (a benchmark's no-op plugin does not).
    record: bool,
    /// Where each event is also written, one JSON line each (set by the configuration).
    log: std::sync::Mutex<Option<std::fs::File>>,
}

/// A [`Recorder`]'s configuration (the NRI configuration string, JSON): how a
/// pre-installed copy is told what to do.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecorderConfig {
    /// Append every event to this file, one JSON object per line.
    pub log: Option<std::path::PathBuf>,
    /// Add these annotations to every container created.
    pub annotations: std::collections::HashMap<String, String>,
    /// Add these environment variables to every container created.
    pub env: std::collections::HashMap<String, String>,
    /// Refuse these events (by name, e.g. `RunPodSandbox`).
    pub fail: Vec<String>,
}

impl Recorder {
    /// A recorder subscribed to `mask`.
    pub fn new(mask: crate::EventMask) -> Arc<Recorder> {
        Arc::new(Recorder {
            mask,
            seen: Default::default(),
            actions: Default::default(),
            adjust: Default::default(),
            updates: Default::default(),
            synced: Default::default(),
            sync_action: Default::default(),
            changed: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
            record: true,
            log: std::sync::Mutex::new(None),
        })
    }

    /// A plugin that answers every event at once and keeps nothing.
    pub fn noop() -> Arc<Recorder> {
        let mut r = Arc::into_inner(Recorder::new(crate::EventMask::all())).expect("fresh");
        r.record = false;
        Arc::new(r)
    }

    /// Do `action` on every `event` from now on.
    pub fn on(&self, event: crate::Event, action: Action) {
        lock(&self.actions).insert(event as i32, action);
    }

    /// Answer `event` normally again.
    pub fn clear(&self, event: crate::Event) {
        lock(&self.actions).remove(&(event as i32));
    }

    /// Do `action` when synchronized.
    pub fn on_sync(&self, action: Action) {
        *lock(&self.sync_action) = Some(action);
    }

    /// Answer CreateContainer with this adjustment.
    pub fn adjust_with(&self, adj: api::ContainerAdjustment) {
        *lock(&self.adjust) = Some(adj);
    }

    /// Answer CreateContainer, UpdateContainer and StopContainer with these updates.
    pub fn update_with(&self, updates: Vec<api::ContainerUpdate>) {
        *lock(&self.updates) = updates;
    }

    /// Let every blocked event answer.
    pub fn release(&self) {
        self.release.notify_waiters();
    }

    /// The events seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }

    /// Forget the events seen.
    pub fn reset(&self) {
        lock(&self.seen).clear();
    }

    /// The pod and container ids of the last Synchronize, once there was one.
    pub fn synced(&self) -> Option<(Vec<String>, Vec<String>)> {
        lock(&self.synced).clone()
    }

    /// Wait until `f` holds for the events seen (or `timeout` passes); the events.
    pub async fn wait_for(
        &self,
        timeout: std::time::Duration,
        f: impl Fn(&[Seen]) -> bool,
    ) -> Result<Vec<Seen>, Vec<Seen>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            {
                let seen = lock(&self.seen);
                if f(&seen) {
                    return Ok(seen.clone());
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(self.seen());
            }
        }
    }

    /// Take a [`RecorderConfig`] (JSON).
    pub fn configure_from(&self, text: &str) -> Result<(), String> {
        let cfg: RecorderConfig =
            serde_json::from_str(text).map_err(|e| format!("configuration: {e}"))?;
        if let Some(path) = &cfg.log {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            *lock(&self.log) = Some(f);
        }
        for name in &cfg.fail {
            let e = crate::Event::from_name(name).ok_or_else(|| format!("no event {name:?}"))?;
            self.on(e, Action::Fail(format!("configured to refuse {name}")));
        }
        if !cfg.annotations.is_empty() || !cfg.env.is_empty() {
            self.adjust_with(api::ContainerAdjustment {
                annotations: cfg.annotations,
                env: cfg
                    .env
                    .into_iter()
                    .map(|(key, value)| api::KeyValue { key, value })
                    .collect(),
                ..Default::default()
            });
        }
        Ok(())
    }

    async fn act(&self, action: Option<Action>) -> ttrpc::Result<()> {
        match action {
            None => Ok(()),
            Some(Action::Fail(m)) => Err(ttrpc::Error::RpcStatus(ttrpc::Status {
                code: 2,
                message: m,
                ..Default::default()
            })),
            Some(Action::Sleep(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Some(Action::Block) => {
                self.release.notified().await;
                Ok(())
            }
        }
    }

    async fn event(
        &self,
        e: crate::Event,
        pod: Option<&api::PodSandbox>,
        c: Option<&api::Container>,
    ) -> ttrpc::Result<()> {
        if let Some(f) = lock(&self.log).as_mut() {
            let line = serde_json::json!({
                "event": e.name(),
                "pod": pod.map(|p| p.id.as_str()).unwrap_or(""),
                "container": c.map(|c| c.id.as_str()).unwrap_or(""),
            });
            let _ = writeln!(f, "{line}");
        }
        if self.record {
            let pod = pod.cloned().unwrap_or_default();
            let c = c.cloned();
            lock(&self.seen).push(Seen {
                event: e,
                pod: pod.id,
                pod_name: pod.name,
                container: c.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
                container_name: c.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
                detail: c,
            });
            self.changed.notify_waiters();
        }
        let action = lock(&self.actions).get(&(e as i32)).cloned();
        self.act(action).await
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Ctx = ttrpc::r#async::TtrpcContext;

#[async_trait::async_trait]
impl api::Plugin for Recorder {
    async fn configure(
        &self,
        _: &Ctx,
        req: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        if !req.config.trim().is_empty() {
            self.configure_from(&req.config).map_err(|e| {
                ttrpc::Error::RpcStatus(ttrpc::Status {
                    code: 3,
                    message: e,
                    ..Default::default()
                })
            })?;
        }
        Ok(api::ConfigureResponse {
            events: self.mask.0 as i32,
        })
    }

    async fn synchronize(
        &self,
        _: &Ctx,
        req: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        {
            let mut s = lock(&self.synced);
            let (pods, ctrs) = s.get_or_insert_with(Default::default);
            pods.extend(req.pods.iter().map(|p| p.id.clone()));
            ctrs.extend(req.containers.iter().map(|c| c.id.clone()));
        }
        self.changed.notify_waiters();
        if req.more {
            return Ok(api::SynchronizeResponse {
                update: Vec::new(),
                more: true,
            });
        }
        let action = lock(&self.sync_action).clone();
        self.act(action).await?;
        Ok(api::SynchronizeResponse::default())
    }

    async fn shutdown(&self, _: &Ctx, _: api::Empty) -> ttrpc::Result<api::Empty> {
        Ok(api::Empty {})
    }

    async fn run_pod_sandbox(
        &self,
        _: &Ctx,
        r: api::RunPodSandboxRequest,
    ) -> ttrpc::Result<api::RunPodSandboxResponse> {
        self.event(crate::Event::RunPodSandbox, r.pod.as_ref(), None)
            .await?;
        Ok(api::RunPodSandboxResponse {})
    }

    async fn update_pod_sandbox(
        &self,
        _: &Ctx,
        r: api::UpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::UpdatePodSandboxResponse> {
        self.event(crate::Event::UpdatePodSandbox, r.pod.as_ref(), None)
            .await?;
        Ok(api::UpdatePodSandboxResponse {})
    }

    async fn post_update_pod_sandbox(
        &self,
        _: &Ctx,
        r: api::PostUpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::PostUpdatePodSandboxResponse> {
        self.event(crate::Event::PostUpdatePodSandbox, r.pod.as_ref(), None)
            .await?;
        Ok(api::PostUpdatePodSandboxResponse {})
    }

    async fn stop_pod_sandbox(
        &self,
        _: &Ctx,
        r: api::StopPodSandboxRequest,
    ) -> ttrpc::Result<api::StopPodSandboxResponse> {
        self.event(crate::Event::StopPodSandbox, r.pod.as_ref(), None)
            .await?;
        Ok(api::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        _: &Ctx,
        r: api::RemovePodSandboxRequest,
    ) -> ttrpc::Result<api::RemovePodSandboxResponse> {
        self.event(crate::Event::RemovePodSandbox, r.pod.as_ref(), None)
            .await?;
        Ok(api::RemovePodSandboxResponse {})
    }

    async fn create_container(
        &self,
        _: &Ctx,
        r: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        self.event(
            crate::Event::CreateContainer,
            r.pod.as_ref(),
            r.container.as_ref(),
        )
        .await?;
        Ok(api::CreateContainerResponse {
            adjust: lock(&self.adjust).clone(),
            update: lock(&self.updates).clone(),
            evict: Vec::new(),
        })
    }

    async fn post_create_container(
        &self,
        _: &Ctx,
        r: api::PostCreateContainerRequest,
    ) -> ttrpc::Result<api::PostCreateContainerResponse> {
        self.event(
            crate::Event::PostCreateContainer,
            r.pod.as_ref(),
            r.container.as_ref(),
        )
        .await?;
        Ok(api::PostCreateContainerResponse {})
    }

    async fn start_container(
        &self,
        _: &Ctx,
        r: api::StartContainerRequest,
    ) -> ttrpc::Result<api::StartContainerResponse> {
        self.event(
            crate::Event::StartContainer,
            r.pod.as_ref(),
            r.container.as_ref(),
        )
        .await?;
        Ok(api::StartContainerResponse {})
    }

    async fn post_start_container(
        &self,
        _: &Ctx,
        r: api::PostStartContainerRequest,
    ) -> ttrpc::Result<api::PostStartContainerResponse> {
        self.event(
            crate::Event::PostStartContainer,
            r.pod.as_ref(),
            r.container.as_ref(),
        )
        .await?;
        Ok(api::PostStartContainerResponse {})
    }

    async fn update_container(
        &self,
        _: &Ctx,
        r: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::UpdateContainerResponse> {
        self.event(
            crate::Event::UpdateContainer,
            r.pod.as_ref(),
            r.container.as_ref(),
        )
        .await?;
        Ok(api::UpdateContainerResponse {
            update: lock(&self.updates).clone(),
            evict: Vec::new(),
        })
    }

    async fn post_update_container(
        &self,
        _: &Ctx,
        r: api::PostUpdateContainerRequest,
    ) -> ttrpc::Result<api::PostUpdateContainerResponse> {
        self.event(
            crate::Event::PostUpdateContainer,
            r.pod.as_ref(),
            r.container.as_ref(),
        )
        .await?;
        Ok(api::PostUpdateContainerResponse {})
    }

    async fn stop_container(
        &self,
        _: &Ctx,
        r: api::StopContainerRequest,
    ) -> ttrpc::Result<api::StopContainerResponse> {
        self.event(
            crate::Event::StopContainer,
            r.pod.as_ref(),
            r.container.as_ref(),
        )
        .await?;
        Ok(api::StopContainerResponse {
            update: lock(&self.updates).clone(),
        })
    }

    async fn remove_container(
        &self,
        _: &Ctx,
        r: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::RemoveContainerResponse> {
        self.event(
            crate::Event::RemoveContainer,
            r.pod.as_ref(),
            r.container.as_ref(),
        )
        .await?;
        Ok(api::RemoveContainerResponse {})
    }

    async fn validate_container_adjustment(
        &self,
        _: &Ctx,
        r: api::ValidateContainerAdjustmentRequest,
    ) -> ttrpc::Result<api::ValidateContainerAdjustmentResponse> {
        self.event(
            crate::Event::ValidateContainerAdjustment,
            r.pod.as_ref(),
            r.container.as_ref(),
        )
        .await
        .map(|()| api::ValidateContainerAdjustmentResponse::default())
        .or_else(|e| {
            Ok(api::ValidateContainerAdjustmentResponse {
                reject: true,
                reason: e.to_string(),
            })
        })
    }
}
