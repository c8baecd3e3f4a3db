//! One connected plugin, seen from the runtime: registration, configuration, and
//! calls into its `Plugin` service with the request timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::api;
use crate::mux::{Mux, Trunk};
use crate::{Domain, Error, Event, EventMask};

/// gRPC status codes ttrpc uses.
pub(crate) mod code {
    pub const NOT_FOUND: i32 = 5;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// How a plugin call failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The plugin answered with an error: the runtime's operation fails.
    Refused(String),
    /// The plugin is unusable (timed out, disconnected, answered garbage): it is
    /// closed and the operation goes on without it.
    Fatal(String),
    /// The plugin does not implement this call.
    Unimplemented,
}

/// What identifies a plugin: `NN-name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PluginId {
    /// Two-digit invocation index; plugins are called in ascending order.
    pub idx: String,
    /// The plugin's name.
    pub name: String,
}

impl std::fmt::Display for PluginId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.idx, self.name)
    }
}

/// A plugin index is exactly two decimal digits.
pub fn check_index(idx: &str) -> Result<(), String> {
    if idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin index {idx:?}: it must be two digits (00-99)"
        ))
    }
}

/// A plugin name: letters, digits and `_.+-`, as NRI requires.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
    {
        return Err(format!(
            "invalid plugin name {name:?}: it must be letters, digits and _.+- only"
        ));
    }
    Ok(())
}

/// A registered, configured plugin.
pub(crate) struct Plugin {
    pub id: PluginId,
    /// The events it subscribed to (set by Configure).
    events: AtomicU32,
    client: api::PluginClient,
    /// Set once the plugin answered a dedicated event call with Unimplemented: it is an
    /// older plugin and gets events through StateChange.
    legacy: AtomicBool,
    closed: AtomicBool,
    request_timeout: Duration,
    trunk: Trunk,
    /// The launched process, for pre-started plugins (killed on close).
    pub child: std::sync::Mutex<Option<tokio::process::Child>>,
    _server: tokio::sync::Mutex<ttrpc::r#async::Server>,
}

impl Plugin {
    /// Whether the plugin's connection is gone or it was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.trunk.is_closed()
    }

    /// Close the plugin: its connection, and its process if skiffd launched it.
    pub fn close(&self, why: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(plugin = %self.id, reason = why, "NRI plugin closed");
        self.trunk.close(why);
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take()
            && let Err(e) = child.start_kill()
        {
            tracing::debug!(plugin = %self.id, error = %e, "kill a launched NRI plugin");
        }
    }

    /// Wait until the plugin's connection closes.
    pub async fn closed(&self) {
        let mut c = self.trunk.closed.clone();
        let _ = c.wait_for(|c| *c).await;
    }

    /// The reason the connection closed, if known.
    pub fn close_reason(&self) -> Option<String> {
        self.trunk.reason()
    }

    pub fn subscribed(&self, e: Event) -> bool {
        EventMask(self.events.load(Ordering::Relaxed)).is_set(e)
    }

    pub fn is_legacy(&self) -> bool {
        self.legacy.load(Ordering::Relaxed)
    }

    pub fn set_legacy(&self) {
        self.legacy.store(true, Ordering::Relaxed);
    }

    pub fn client(&self) -> &api::PluginClient {
        &self.client
    }

    /// Run one call with the request timeout, classifying its failure.
    pub async fn call<T, F>(
        &self,
        what: &str,
        timeout: Option<Duration>,
        f: F,
    ) -> Result<T, CallError>
    where
        F: std::future::Future<Output = ttrpc::Result<T>>,
    {
        if self.is_closed() {
            return Err(CallError::Fatal("the plugin's connection is closed".into()));
        }
        let t = timeout.unwrap_or(self.request_timeout);
        let r = tokio::select! {
            r = tokio::time::timeout(t, f) => r,
            _ = self.closed() => {
                return Err(CallError::Fatal(format!(
                    "the plugin disconnected during {what}{}",
                    self.close_reason().map(|r| format!(" ({r})")).unwrap_or_default()
                )));
            }
        };
        match r {
            Err(_) => Err(CallError::Fatal(format!(
                "{what} timed out after {} ms",
                t.as_millis()
            ))),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(ttrpc::Error::RpcStatus(s))) => match s.code {
                code::UNIMPLEMENTED => Err(CallError::Unimplemented),
                // ttrpc-rust's default for a method a plugin does not implement.
                code::NOT_FOUND if s.message.ends_with("is not supported") => {
                    Err(CallError::Unimplemented)
                }
                code::DEADLINE_EXCEEDED => Err(CallError::Fatal(format!(
                    "{what} timed out in the plugin: {}",
                    s.message
                ))),
                _ => Err(CallError::Refused(s.message)),
            },
            Ok(Err(e)) => Err(CallError::Fatal(format!("{what}: {e}"))),
        }
    }

    /// The ttrpc context of a call with the request timeout.
    pub fn ctx(&self, timeout: Option<Duration>) -> ttrpc::context::Context {
        let t = timeout.unwrap_or(self.request_timeout);
        ttrpc::context::with_timeout(i64::try_from(t.as_nanos()).unwrap_or(i64::MAX))
    }
}

/// Timeouts and identity the runtime hands to a plugin.
#[derive(Clone)]
pub(crate) struct Setup {
    pub registration_timeout: Duration,
    pub request_timeout: Duration,
    pub runtime_name: String,
    pub runtime_version: String,
}

/// A connection that has not registered yet.
pub(crate) struct Pending {
    /// The identity the launcher gave it (pre-started plugins), checked against what it
    /// registers as.
    pub expected: Option<PluginId>,
    pub child: Option<tokio::process::Child>,
}

/// The runtime's `Runtime` service on one plugin connection.
struct RuntimeService {
    registered: std::sync::Mutex<Option<oneshot::Sender<api::RegisterPluginRequest>>>,
    domain: Arc<dyn Domain>,
    /// The plugin's identity, known after registration.
    id: std::sync::OnceLock<PluginId>,
    /// Unsolicited updates are handled one at a time per plugin, so a flood queues
    /// behind the one in progress instead of running in parallel.
    updates: tokio::sync::Semaphore,
    ready: Arc<AtomicBool>,
}

#[async_trait]
impl api::Runtime for RuntimeService {
    async fn register_plugin(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: api::RegisterPluginRequest,
    ) -> ttrpc::Result<api::Empty> {
        if let Err(e) = check_index(&req.plugin_idx).and_then(|()| check_name(&req.plugin_name)) {
            return Err(status(3, e));
        }
        let tx = self
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match tx {
            Some(tx) => {
                let _ = tx.send(req);
                Ok(api::Empty {})
            }
            None => Err(status(9, "the plugin is already registered".to_string())),
        }
    }

    async fn update_containers(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: api::UpdateContainersRequest,
    ) -> ttrpc::Result<api::UpdateContainersResponse> {
        let Some(id) = self.id.get() else {
            return Err(status(9, "the plugin is not registered".to_string()));
        };
        if !self.ready.load(Ordering::Acquire) {
            return Err(status(
                9,
                "the plugin is not synchronized yet; send updates in the Synchronize reply".into(),
            ));
        }
        let _one = self
            .updates
            .acquire()
            .await
            .map_err(|_| status(14, "closing".to_string()))?;
        tracing::debug!(plugin = %id, updates = req.update.len(), evictions = req.evict.len(), "NRI unsolicited container updates");
        let mut failed = self
            .domain
            .update_containers(&id.to_string(), req.update)
            .await;
        for ev in req.evict {
            if let Err(e) = self
                .domain
                .evict_container(&ev.container_id, &format!("NRI plugin {id}: {}", ev.reason))
                .await
            {
                tracing::warn!(plugin = %id, container_id = %ev.container_id, error = %e, "NRI eviction failed");
                failed.push(api::ContainerUpdate {
                    container_id: ev.container_id,
                    ..Default::default()
                });
            }
        }
        Ok(api::UpdateContainersResponse { failed })
    }
}

fn status(code: i32, msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::Status {
        code,
        message: msg,
        ..Default::default()
    })
}

/// A connected, registered and configured plugin, not yet synchronized.
pub(crate) struct Connected {
    pub plugin: Arc<Plugin>,
    ready: Arc<AtomicBool>,
}

impl Connected {
    /// The plugin is synchronized: its unsolicited updates are accepted from now on.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// Take a plugin connection through registration and configuration.
pub(crate) async fn connect<S>(
    stream: S,
    pending: Pending,
    setup: &Setup,
    domain: Arc<dyn Domain>,
    config_for: impl FnOnce(&PluginId) -> String,
) -> Result<Connected, Error>
where
    S: AsyncRead + AsyncWrite + Send + Sync + 'static,
{
    let (plugin_conn, runtime_conn, trunk) = Mux::new(stream).into_parts();
    let (tx, rx) = oneshot::channel();
    let ready = Arc::new(AtomicBool::new(false));
    let service = Arc::new(RuntimeService {
        registered: std::sync::Mutex::new(Some(tx)),
        domain,
        id: std::sync::OnceLock::new(),
        updates: tokio::sync::Semaphore::new(1),
        ready: ready.clone(),
    });
    let server = serve(runtime_conn, api::create_runtime(service.clone()))
        .await
        .map_err(|e| Error::Plugin(format!("start the runtime service: {e}")))?;
    let client = api::PluginClient::new(ttrpc::r#async::Client::new(
        ttrpc::r#async::transport::Socket::new(plugin_conn),
    ));
    let mut closed = trunk.closed.clone();
    let reg = tokio::select! {
        r = tokio::time::timeout(setup.registration_timeout, rx) => match r {
            Ok(Ok(reg)) => reg,
            Ok(Err(_)) => return Err(Error::Plugin("the connection ended before the plugin registered".into())),
            Err(_) => return Err(Error::Plugin(format!(
                "the plugin did not register within {} ms", setup.registration_timeout.as_millis()
            ))),
        },
        _ = closed.wait_for(|c| *c) => {
            return Err(Error::Plugin(format!(
                "the plugin disconnected before registering{}",
                trunk.reason().map(|r| format!(" ({r})")).unwrap_or_default()
            )));
        }
    };
    let id = PluginId {
        idx: reg.plugin_idx.clone(),
        name: reg.plugin_name.clone(),
    };
    if let Some(expected) = &pending.expected
        && expected != &id
    {
        return Err(Error::Plugin(format!(
            "plugin launched as {expected} registered as {id}"
        )));
    }
    let _ = service.id.set(id.clone());
    let plugin = Arc::new(Plugin {
        id: id.clone(),
        events: AtomicU32::new(0),
        client,
        legacy: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        request_timeout: setup.request_timeout,
        trunk,
        child: std::sync::Mutex::new(pending.child),
        _server: tokio::sync::Mutex::new(server),
    });
    let req = api::ConfigureRequest {
        config: config_for(&id),
        runtime_name: setup.runtime_name.clone(),
        runtime_version: setup.runtime_version.clone(),
        registration_timeout: ms(setup.registration_timeout),
        request_timeout: ms(setup.request_timeout),
        nri_version: crate::NRI_VERSION.to_string(),
    };
    let ctx = plugin.ctx(Some(setup.registration_timeout));
    let reply = plugin
        .call(
            "Configure",
            Some(setup.registration_timeout),
            plugin.client().configure(ctx, &req),
        )
        .await;
    let events = match reply {
        Ok(r) => EventMask::from_reply(r.events).map_err(Error::Plugin)?,
        Err(CallError::Refused(m)) => {
            return Err(Error::Plugin(format!(
                "the plugin refused its configuration: {m}"
            )));
        }
        Err(CallError::Fatal(m)) => return Err(Error::Plugin(m)),
        Err(CallError::Unimplemented) => {
            return Err(Error::Plugin(
                "the plugin does not implement Configure".into(),
            ));
        }
    };
    plugin.events.store(events.0, Ordering::Relaxed);
    Ok(Connected { plugin, ready })
}

/// Serve `services` on one multiplexed connection.
pub(crate) async fn serve(
    conn: tokio::io::DuplexStream,
    services: std::collections::HashMap<String, ttrpc::r#async::Service>,
) -> ttrpc::Result<ttrpc::r#async::Server> {
    let (tx, rx) = mpsc::channel::<std::io::Result<tokio::io::DuplexStream>>(1);
    let _ = tx.send(Ok(conn)).await;
    // The listener yields the one connection, then stays open (an ended listener
    // would stop the server).
    let listener = ttrpc::r#async::transport::Listener::new(futures_util::stream::unfold(
        (rx, tx),
        |(mut rx, tx)| async move { rx.recv().await.map(|c| (c, (rx, tx))) },
    ));
    let mut server = ttrpc::r#async::Server::new()
        .register_service(services)
        .add_listener(listener);
    server.start().await?;
    Ok(server)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
