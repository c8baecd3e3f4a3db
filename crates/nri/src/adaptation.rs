//! The runtime side of NRI: the plugin registry and event delivery.
//!
//! Plugins are kept sorted by index, then name, and called one after the other. A
//! plugin that answers an event with an error fails the runtime's operation; one that
//! times out, disconnects or answers garbage is closed and the operation goes on
//! without it.
//!
//! A plugin that joins late is synchronized with every pod and container under the
//! write side of `sync`; pod and container creation holds the read side from before
//! its creation event until the object is visible ([`CreationGuard`]). So an object is
//! either complete before the snapshot is taken (and in it) or has its creation event
//! delivered after the new plugin is in the registry: none is lost.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use prost::Message;
use tokio::net::UnixListener;

use crate::api;
use crate::plugin::{self, CallError, Connected, Pending, Plugin, PluginId, Setup};
use crate::result::Adjusted;
use crate::{Config, Domain, Error, Event};

/// Held while a pod or container is being created (see the module doc).
pub struct CreationGuard {
    _g: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
}

/// The NRI adaptation of one runtime.
pub struct Adaptation {
    cfg: Config,
    domain: Weak<dyn Domain>,
    plugins: Registry,
    sync: Arc<tokio::sync::RwLock<()>>,
    tasks: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// A reply that carries something back.
enum Reply {
    Empty,
    Create(Box<api::CreateContainerResponse>),
    Update(api::UpdateContainerResponse),
    Stop(api::StopContainerResponse),
}

/// The objects of one event.
struct Subject<'a> {
    pod: &'a api::PodSandbox,
    container: Option<&'a api::Container>,
    resources: Option<&'a api::LinuxResources>,
    overhead: Option<&'a api::LinuxResources>,
}

impl Adaptation {
    /// An adaptation serving `domain` (the runtime). Nothing runs until [`Adaptation::start`].
    pub fn new(cfg: Config, domain: Weak<dyn Domain>) -> Arc<Adaptation> {
        Arc::new(Adaptation {
            cfg,
            domain,
            plugins: Arc::new(std::sync::RwLock::new(Arc::new(Vec::new()))),
            sync: Arc::new(tokio::sync::RwLock::new(())),
            tasks: std::sync::Mutex::new(tokio::task::JoinSet::new()),
        })
    }

    fn setup(&self) -> Setup {
        Setup {
            registration_timeout: self.cfg.registration_timeout,
            request_timeout: self.cfg.request_timeout,
            runtime_name: self.cfg.runtime_name.clone(),
            runtime_version: self.cfg.runtime_version.clone(),
        }
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn(f);
    }

    /// Listen on the socket (unless connections are disabled) and launch the
    /// pre-installed plugins, waiting until each has registered and synchronized (or
    /// failed to).
    pub async fn start(self: &Arc<Self>) -> Result<(), Error> {
        if let Some(path) = self.cfg.socket_path.clone() {
            let listener = bind(&path)?;
            let me = Arc::downgrade(self);
            self.spawn(async move {
                loop {
                    let conn = listener.accept().await;
                    let Some(me) = me.upgrade() else { return };
                    match conn {
                        Ok((stream, _)) => {
                            let me2 = me.clone();
                            me.spawn(async move {
                                me2.add(
                                    stream,
                                    Pending {
                                        expected: None,
                                        child: None,
                                    },
                                )
                                .await;
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "NRI: accept a plugin connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
            tracing::info!(socket = %path.display(), "NRI: plugins may connect");
        }
        let launched = crate::launch::launch_all(&self.cfg.plugin_path);
        let mut joins = Vec::new();
        for (stream, pending) in launched {
            let me = self.clone();
            joins.push(tokio::spawn(async move { me.add(stream, pending).await }));
        }
        for j in joins {
            let _ = j.await;
        }
        Ok(())
    }

    /// Close every plugin (skiffd is shutting down).
    pub fn shutdown(&self) {
        for p in self.plugins().iter() {
            p.close("the runtime is shutting down");
        }
        if let Some(path) = &self.cfg.socket_path {
            let _ = std::fs::remove_file(path);
        }
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }

    /// The registered plugins, in call order.
    fn plugins(&self) -> Arc<Vec<Arc<Plugin>>> {
        self.plugins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many plugins are registered.
    pub fn plugin_count(&self) -> usize {
        self.plugins().len()
    }

    /// The registered plugins' names (`NN-name`), in call order.
    pub fn plugin_names(&self) -> Vec<String> {
        self.plugins().iter().map(|p| p.id.to_string()).collect()
    }

    /// Hold this from before a pod's or container's creation event until it is
    /// visible; a joining plugin's synchronization waits for it.
    pub async fn creating(&self) -> CreationGuard {
        CreationGuard {
            _g: Some(self.sync.clone().read_owned().await),
        }
    }

    /// Take a new plugin connection through registration, configuration and
    /// synchronization; then it gets events.
    async fn add<S>(self: &Arc<Self>, stream: S, pending: Pending)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + 'static,
    {
        let Some(domain) = self.domain.upgrade() else {
            return;
        };
        let expected = pending.expected.clone();
        let cfg_dir = self.cfg.plugin_config_path.clone();
        let connected = plugin::connect(stream, pending, &self.setup(), domain.clone(), |id| {
            crate::launch::plugin_config(&cfg_dir, id)
        })
        .await;
        let c = match connected {
            Ok(c) => c,
            Err(e) => {
                let who = expected
                    .map(|id| id.to_string())
                    .unwrap_or_else(|| "a plugin".into());
                tracing::warn!(plugin = %who, error = %e, "NRI: plugin not registered");
                return;
            }
        };
        if let Err(e) = self.synchronize(&c, domain.as_ref()).await {
            tracing::warn!(plugin = %c.plugin.id, error = %e, "NRI: plugin not synchronized");
            c.plugin.close(&e.to_string());
        }
    }

    /// Synchronize `c` with every pod and container and put it in the registry.
    async fn synchronize(&self, c: &Connected, domain: &dyn Domain) -> Result<(), Error> {
        let p = &c.plugin;
        let _w = self.sync.write().await;
        if self
            .plugins()
            .iter()
            .any(|q| q.id == p.id && !q.is_closed())
        {
            return Err(Error::Plugin(format!(
                "a plugin {} is already registered",
                p.id
            )));
        }
        let (pods, containers) = domain.snapshot().await;
        let updates = self.send_sync(p, pods, containers).await?;
        if !updates.is_empty() {
            let failed = domain.update_containers(&p.id.to_string(), updates).await;
            if !failed.is_empty() {
                tracing::warn!(plugin = %p.id, failed = failed.len(), "NRI: container updates from Synchronize failed");
            }
        }
        {
            let mut list = self.plugins.write().unwrap_or_else(|p| p.into_inner());
            let mut v: Vec<Arc<Plugin>> = list.iter().filter(|q| !q.is_closed()).cloned().collect();
            v.push(p.clone());
            v.sort_by(|a, b| a.id.cmp(&b.id));
            *list = Arc::new(v);
        }
        c.mark_ready();
        tracing::info!(plugin = %p.id, "NRI: plugin registered and synchronized");
        // Drop it from the registry when its connection ends.
        let (plugin, list) = (p.clone(), self.plugins.clone());
        self.spawn(async move {
            plugin.closed().await;
            plugin.close(
                &plugin
                    .close_reason()
                    .unwrap_or_else(|| "connection closed".into()),
            );
            remove(&list, &plugin.id);
        });
        Ok(())
    }

    /// Send the snapshot, in parts if it is larger than one ttrpc message may be.
    async fn send_sync(
        &self,
        p: &Plugin,
        pods: Vec<api::PodSandbox>,
        containers: Vec<api::Container>,
    ) -> Result<Vec<api::ContainerUpdate>, Error> {
        let limit = crate::mux::TTRPC_MAX - (64 << 10);
        let t = Some(self.cfg.registration_timeout);
        let whole = api::SynchronizeRequest {
            pods,
            containers,
            more: false,
        };
        let chunks = if whole.encoded_len() <= limit {
            vec![whole]
        } else {
            split_sync(whole, limit)
        };
        let n = chunks.len();
        let mut updates = Vec::new();
        for (i, req) in chunks.into_iter().enumerate() {
            let r = p
                .call("Synchronize", t, p.client().synchronize(p.ctx(t), &req))
                .await;
            match r {
                Ok(reply) => {
                    updates.extend(reply.update);
                    if i + 1 < n && !reply.more {
                        return Err(Error::Plugin(format!(
                            "{}: the pods and containers do not fit one Synchronize message and \
                             the plugin cannot take them in parts",
                            p.id
                        )));
                    }
                }
                Err(CallError::Refused(m)) => {
                    return Err(Error::Refused {
                        plugin: p.id.to_string(),
                        event: "Synchronize",
                        message: m,
                    });
                }
                Err(CallError::Fatal(m)) => return Err(Error::Plugin(m)),
                Err(CallError::Unimplemented) => {
                    return Err(Error::Plugin("Synchronize is not implemented".into()));
                }
            }
        }
        Ok(updates)
    }

    /// Drop a plugin from the registry.
    fn remove_plugin(&self, id: &PluginId) {
        remove(&self.plugins, id);
    }

    /// Deliver one event to one plugin: the dedicated call, or StateChange for a plugin
    /// that does not have it.
    /// Deliver `e` to `p`, telling the observer what it took.
    async fn deliver(&self, p: &Plugin, e: Event, s: &Subject<'_>) -> Result<Reply, CallError> {
        let Some(observer) = &self.cfg.observer else {
            return self.deliver_untimed(p, e, s).await;
        };
        let started = std::time::Instant::now();
        let r = self.deliver_untimed(p, e, s).await;
        let result = match &r {
            Ok(_) => "ok",
            Err(CallError::Refused(_)) => "refused",
            Err(CallError::Fatal(_)) => "failed",
            Err(CallError::Unimplemented) => "unimplemented",
        };
        observer(&crate::Call {
            plugin: &p.id.to_string(),
            event: e,
            took: started.elapsed(),
            result,
        });
        r
    }

    async fn deliver_untimed(
        &self,
        p: &Plugin,
        e: Event,
        s: &Subject<'_>,
    ) -> Result<Reply, CallError> {
        let name = e.name();
        let pod = Some(s.pod.clone());
        let container = s.container.cloned();
        let c = p.client();
        let ctx = || p.ctx(None);
        if !p.is_legacy() {
            let r = match e {
                Event::RunPodSandbox => p
                    .call(
                        name,
                        None,
                        c.run_pod_sandbox(ctx(), &api::RunPodSandboxRequest { pod }),
                    )
                    .await
                    .map(|_| Reply::Empty),
                Event::StopPodSandbox => p
                    .call(
                        name,
                        None,
                        c.stop_pod_sandbox(ctx(), &api::StopPodSandboxRequest { pod }),
                    )
                    .await
                    .map(|_| Reply::Empty),
                Event::RemovePodSandbox => p
                    .call(
                        name,
                        None,
                        c.remove_pod_sandbox(ctx(), &api::RemovePodSandboxRequest { pod }),
                    )
                    .await
                    .map(|_| Reply::Empty),
                Event::UpdatePodSandbox => p
                    .call(
                        name,
                        None,
                        c.update_pod_sandbox(
                            ctx(),
                            &api::UpdatePodSandboxRequest {
                                pod,
                                overhead_linux_resources: s.overhead.cloned(),
                                linux_resources: s.resources.cloned(),
                            },
                        ),
                    )
                    .await
                    .map(|_| Reply::Empty),
                Event::PostUpdatePodSandbox => p
                    .call(
                        name,
                        None,
                        c.post_update_pod_sandbox(ctx(), &api::PostUpdatePodSandboxRequest { pod }),
                    )
                    .await
                    .map(|_| Reply::Empty),
                Event::CreateContainer => p
                    .call(
                        name,
                        None,
                        c.create_container(ctx(), &api::CreateContainerRequest { pod, container }),
                    )
                    .await
                    .map(|r| Reply::Create(Box::new(r))),
                Event::PostCreateContainer => p
                    .call(
                        name,
                        None,
                        c.post_create_container(
                            ctx(),
                            &api::PostCreateContainerRequest { pod, container },
                        ),
                    )
                    .await
                    .map(|_| Reply::Empty),
                Event::StartContainer => p
                    .call(
                        name,
                        None,
                        c.start_container(ctx(), &api::StartContainerRequest { pod, container }),
                    )
                    .await
                    .map(|_| Reply::Empty),
                Event::PostStartContainer => p
                    .call(
                        name,
                        None,
                        c.post_start_container(
                            ctx(),
                            &api::PostStartContainerRequest { pod, container },
                        ),
                    )
                    .await
                    .map(|_| Reply::Empty),
                Event::UpdateContainer => p
                    .call(
                        name,
                        None,
                        c.update_container(
                            ctx(),
                            &api::UpdateContainerRequest {
                                pod,
                                container,
                                linux_resources: s.resources.cloned(),
                            },
                        ),
                    )
                    .await
                    .map(Reply::Update),
                Event::PostUpdateContainer => p
                    .call(
                        name,
                        None,
                        c.post_update_container(
                            ctx(),
                            &api::PostUpdateContainerRequest { pod, container },
                        ),
                    )
                    .await
                    .map(|_| Reply::Empty),
                Event::StopContainer => p
                    .call(
                        name,
                        None,
                        c.stop_container(ctx(), &api::StopContainerRequest { pod, container }),
                    )
                    .await
                    .map(Reply::Stop),
                Event::RemoveContainer => p
                    .call(
                        name,
                        None,
                        c.remove_container(ctx(), &api::RemoveContainerRequest { pod, container }),
                    )
                    .await
                    .map(|_| Reply::Empty),
                Event::ValidateContainerAdjustment => {
                    unreachable!("validation is delivered by validate()")
                }
            };
            match r {
                Err(CallError::Unimplemented) if has_state_change_form(e) => {
                    tracing::debug!(plugin = %p.id, event = name, "NRI: an older plugin; events go through StateChange");
                    p.set_legacy();
                }
                other => return other,
            }
        }
        if !has_state_change_form(e) {
            return Err(CallError::Fatal(format!("{name} is not implemented")));
        }
        let ev = api::StateChangeEvent {
            event: e as i32,
            pod: Some(s.pod.clone()),
            container: s.container.cloned(),
        };
        p.call(name, None, c.state_change(ctx(), &ev))
            .await
            .map(|_| Reply::Empty)
    }

    /// Deliver `e` to every subscribed plugin in order, collecting replies. A refusal
    /// stops at once; an unusable plugin is closed and skipped.
    async fn each(&self, e: Event, s: &Subject<'_>) -> Result<Vec<(String, Reply)>, Error> {
        let plugins = self.plugins();
        let mut replies = Vec::new();
        for p in plugins.iter().filter(|p| p.subscribed(e) && !p.is_closed()) {
            match self.deliver(p, e, s).await {
                Ok(r) => replies.push((p.id.to_string(), r)),
                Err(err) => self.failed(p, e, err)?,
            }
        }
        Ok(replies)
    }

    /// A plugin's failed call: a refusal is the operation's error; an unusable plugin
    /// is closed and dropped, and the operation goes on.
    fn failed(&self, p: &Plugin, e: Event, err: CallError) -> Result<(), Error> {
        let why = match err {
            CallError::Refused(message) => {
                return Err(Error::Refused {
                    plugin: p.id.to_string(),
                    event: e.name(),
                    message,
                });
            }
            CallError::Fatal(why) => why,
            CallError::Unimplemented => format!("{} is not implemented", e.name()),
        };
        tracing::warn!(plugin = %p.id, event = e.name(), reason = %why, "NRI: plugin failed; going on without it");
        p.close(&why);
        self.remove_plugin(&p.id);
        Ok(())
    }

    /// Whether any plugin takes `e`: callers skip building event messages otherwise.
    pub fn wants(&self, e: Event) -> bool {
        self.plugins().iter().any(|p| p.subscribed(e))
    }

    async fn pod_event(&self, e: Event, pod: &api::PodSandbox) -> Result<(), Error> {
        self.each(
            e,
            &Subject {
                pod,
                container: None,
                resources: None,
                overhead: None,
            },
        )
        .await
        .map(|_| ())
    }

    async fn container_event(
        &self,
        e: Event,
        pod: &api::PodSandbox,
        c: &api::Container,
    ) -> Result<Vec<(String, Reply)>, Error> {
        self.each(
            e,
            &Subject {
                pod,
                container: Some(c),
                resources: None,
                overhead: None,
            },
        )
        .await
    }

    /// RunPodSandbox: an error fails the pod's creation.
    pub async fn run_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), Error> {
        self.pod_event(Event::RunPodSandbox, pod).await
    }

    /// StopPodSandbox (after the pod's containers stopped).
    pub async fn stop_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), Error> {
        self.pod_event(Event::StopPodSandbox, pod).await
    }

    /// RemovePodSandbox.
    pub async fn remove_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), Error> {
        self.pod_event(Event::RemovePodSandbox, pod).await
    }

    /// UpdatePodSandbox with the pod's new resources and overhead.
    pub async fn update_pod_sandbox(
        &self,
        pod: &api::PodSandbox,
        overhead: Option<&api::LinuxResources>,
        resources: Option<&api::LinuxResources>,
    ) -> Result<(), Error> {
        self.each(
            Event::UpdatePodSandbox,
            &Subject {
                pod,
                container: None,
                resources,
                overhead,
            },
        )
        .await
        .map(|_| ())
    }

    /// PostUpdatePodSandbox.
    pub async fn post_update_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), Error> {
        self.pod_event(Event::PostUpdatePodSandbox, pod).await
    }

    /// CreateContainer: plugins are asked in order; each one's adjustment is checked
    /// against the earlier ones' (a conflict fails the creation, naming both) and
    /// handed to `apply`, which applies it to the container's spec and describes the
    /// container as it now is, for the next plugin. Then the validating plugins see
    /// the original container and everything collected.
    ///
    /// The updates and evictions of other containers in the replies are returned, to
    /// be applied with [`Adaptation::apply_side_effects`] once the container exists.
    pub async fn create_container(
        &self,
        pod: &api::PodSandbox,
        c: &api::Container,
        apply: &mut (
                 dyn FnMut(&str, &api::ContainerAdjustment) -> Result<api::Container, String> + Send
             ),
    ) -> Result<Adjusted, Error> {
        let e = Event::CreateContainer;
        let mut adjusted = Adjusted::default();
        let mut current = c.clone();
        let plugins = self.plugins();
        for p in plugins.iter().filter(|p| p.subscribed(e) && !p.is_closed()) {
            let s = Subject {
                pod,
                container: Some(&current),
                resources: None,
                overhead: None,
            };
            let reply = match self.deliver(p, e, &s).await {
                Ok(Reply::Create(r)) => *r,
                Ok(_) => continue,
                Err(err) => {
                    self.failed(p, e, err)?;
                    continue;
                }
            };
            let plugin = p.id.to_string();
            let adjust = reply.adjust.clone();
            adjusted
                .add(&plugin, reply, &c.id)
                .map_err(Error::Adjustment)?;
            if let Some(adj) = adjust {
                current = apply(&plugin, &adj).map_err(Error::Adjustment)?;
            }
        }
        self.validate(pod, c, &adjusted).await?;
        Ok(adjusted)
    }

    /// Apply the updates and evictions a CreateContainer asked for (after the
    /// container is created).
    pub async fn apply_side_effects(&self, adjusted: &Adjusted) {
        let Some(domain) = self.domain.upgrade() else {
            return;
        };
        for (plugin, u) in &adjusted.updates {
            let failed = domain.update_containers(plugin, vec![u.clone()]).await;
            for f in failed {
                tracing::warn!(plugin = %plugin, container_id = %f.container_id, "NRI: a requested container update failed");
            }
        }
        for (plugin, ev) in &adjusted.evictions {
            if let Err(e) = domain
                .evict_container(
                    &ev.container_id,
                    &format!("NRI plugin {plugin}: {}", ev.reason),
                )
                .await
            {
                tracing::warn!(plugin = %plugin, container_id = %ev.container_id, error = %e, "NRI: eviction failed");
            }
        }
    }

    /// Let the validating plugins accept or reject the collected adjustments.
    async fn validate(
        &self,
        pod: &api::PodSandbox,
        c: &api::Container,
        adjusted: &Adjusted,
    ) -> Result<(), Error> {
        let e = Event::ValidateContainerAdjustment;
        let plugins = self.plugins();
        let validators: Vec<_> = plugins.iter().filter(|p| p.subscribed(e)).collect();
        if validators.is_empty() {
            return Ok(());
        }
        let req = api::ValidateContainerAdjustmentRequest {
            pod: Some(pod.clone()),
            container: Some(c.clone()),
            adjust: Some(adjusted.merged()),
            update: adjusted.updates.iter().map(|(_, u)| u.clone()).collect(),
            owners: Some(adjusted.owners(&c.id)),
            plugins: plugins
                .iter()
                .filter(|p| p.subscribed(Event::CreateContainer))
                .map(|p| api::PluginInstance {
                    name: p.id.name.clone(),
                    index: p.id.idx.clone(),
                })
                .collect(),
        };
        for p in validators {
            let r = p
                .call(
                    e.name(),
                    None,
                    p.client().validate_container_adjustment(p.ctx(None), &req),
                )
                .await;
            match r {
                Ok(v) if v.reject => {
                    return Err(Error::Refused {
                        plugin: p.id.to_string(),
                        event: e.name(),
                        message: format!("adjustments rejected: {}", v.reason),
                    });
                }
                Ok(_) => {}
                Err(CallError::Refused(message)) => {
                    return Err(Error::Refused {
                        plugin: p.id.to_string(),
                        event: e.name(),
                        message,
                    });
                }
                Err(CallError::Fatal(why)) => {
                    p.close(&why);
                    self.remove_plugin(&p.id);
                }
                Err(CallError::Unimplemented) => {
                    p.close("ValidateContainerAdjustment is not implemented");
                    self.remove_plugin(&p.id);
                }
            }
        }
        Ok(())
    }

    /// PostCreateContainer.
    pub async fn post_create_container(
        &self,
        pod: &api::PodSandbox,
        c: &api::Container,
    ) -> Result<(), Error> {
        self.container_event(Event::PostCreateContainer, pod, c)
            .await
            .map(|_| ())
    }

    /// StartContainer (before the container starts): an error fails the start.
    pub async fn start_container(
        &self,
        pod: &api::PodSandbox,
        c: &api::Container,
    ) -> Result<(), Error> {
        self.container_event(Event::StartContainer, pod, c)
            .await
            .map(|_| ())
    }

    /// PostStartContainer.
    pub async fn post_start_container(
        &self,
        pod: &api::PodSandbox,
        c: &api::Container,
    ) -> Result<(), Error> {
        self.container_event(Event::PostStartContainer, pod, c)
            .await
            .map(|_| ())
    }

    /// UpdateContainer with the requested resources: returns the resources to apply
    /// (the request's with the plugins' changes for this container); updates of other
    /// containers are applied here.
    pub async fn update_container(
        &self,
        pod: &api::PodSandbox,
        c: &api::Container,
        resources: &api::LinuxResources,
    ) -> Result<api::LinuxResources, Error> {
        let replies = self
            .each(
                Event::UpdateContainer,
                &Subject {
                    pod,
                    container: Some(c),
                    resources: Some(resources),
                    overhead: None,
                },
            )
            .await?;
        let mut owners = crate::result::Owners::default();
        let mut out = resources.clone();
        let mut others = Adjusted::default();
        for (plugin, r) in replies {
            let Reply::Update(r) = r else { continue };
            for u in r.update {
                if u.container_id == c.id {
                    if let Some(res) = u.linux.as_ref().and_then(|l| l.resources.as_ref()) {
                        owners
                            .claim_resources(&plugin, res)
                            .map_err(Error::Adjustment)?;
                        crate::result::merge_resources(&mut out, res);
                    }
                } else {
                    others
                        .add_updates(&plugin, vec![u], &c.id)
                        .map_err(Error::Adjustment)?;
                }
            }
            for ev in r.evict {
                others.evictions.push((plugin.clone(), ev));
            }
        }
        self.apply_side_effects(&others).await;
        Ok(out)
    }

    /// PostUpdateContainer.
    pub async fn post_update_container(
        &self,
        pod: &api::PodSandbox,
        c: &api::Container,
    ) -> Result<(), Error> {
        self.container_event(Event::PostUpdateContainer, pod, c)
            .await
            .map(|_| ())
    }

    /// StopContainer (once the container stopped, by request or by itself); updates
    /// plugins ask for are applied here.
    pub async fn stop_container(
        &self,
        pod: &api::PodSandbox,
        c: &api::Container,
    ) -> Result<(), Error> {
        let replies = self.container_event(Event::StopContainer, pod, c).await?;
        let mut others = Adjusted::default();
        for (plugin, r) in replies {
            if let Reply::Stop(r) = r {
                // The stopped container itself needs no update: it is gone.
                let u: Vec<_> = r
                    .update
                    .into_iter()
                    .filter(|u| u.container_id != c.id)
                    .collect();
                others
                    .add_updates(&plugin, u, &c.id)
                    .map_err(Error::Adjustment)?;
            }
        }
        self.apply_side_effects(&others).await;
        Ok(())
    }

    /// RemoveContainer.
    pub async fn remove_container(
        &self,
        pod: &api::PodSandbox,
        c: &api::Container,
    ) -> Result<(), Error> {
        self.container_event(Event::RemoveContainer, pod, c)
            .await
            .map(|_| ())
    }
}

/// The registered plugins, shared with the tasks that watch their connections.
type Registry = Arc<std::sync::RwLock<Arc<Vec<Arc<Plugin>>>>>;

fn remove(list: &Registry, id: &PluginId) {
    let mut list = list.write().unwrap_or_else(|p| p.into_inner());
    if list.iter().any(|p| &p.id == id && p.is_closed()) {
        let v: Vec<_> = list
            .iter()
            .filter(|p| !(&p.id == id && p.is_closed()))
            .cloned()
            .collect();
        *list = Arc::new(v);
    }
}

/// Events older plugins receive through StateChange.
fn has_state_change_form(e: Event) -> bool {
    !matches!(
        e,
        Event::CreateContainer | Event::UpdateContainer | Event::StopContainer
    )
}

/// Split a snapshot into messages of at most `limit` bytes, all but the last with
/// `more` set.
fn split_sync(whole: api::SynchronizeRequest, limit: usize) -> Vec<api::SynchronizeRequest> {
    let mut out = Vec::new();
    let mut cur = api::SynchronizeRequest::default();
    let flush = |cur: &mut api::SynchronizeRequest, out: &mut Vec<api::SynchronizeRequest>| {
        if !cur.pods.is_empty() || !cur.containers.is_empty() {
            cur.more = true;
            out.push(std::mem::take(cur));
        }
    };
    for pod in whole.pods {
        if cur.encoded_len() + pod.encoded_len() + 16 > limit {
            flush(&mut cur, &mut out);
        }
        cur.pods.push(pod);
    }
    for c in whole.containers {
        if cur.encoded_len() + c.encoded_len() + 16 > limit {
            flush(&mut cur, &mut out);
        }
        cur.containers.push(c);
    }
    flush(&mut cur, &mut out);
    if let Some(last) = out.last_mut() {
        last.more = false;
    } else {
        out.push(api::SynchronizeRequest::default());
    }
    out
}

/// Bind the NRI socket: its directory made (0711), a stale socket replaced, the socket
/// itself only for root (0600).
fn bind(path: &Path) -> Result<UnixListener, Error> {
    let err = |source| Error::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another runtime serves NRI on this socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_snapshot_is_split_with_more_on_all_but_the_last() {
        let pods: Vec<_> = (0..100)
            .map(|i| api::PodSandbox {
                id: format!("{i:064}"),
                name: "x".repeat(1000),
                ..Default::default()
            })
            .collect();
        let parts = split_sync(
            api::SynchronizeRequest {
                pods,
                containers: Vec::new(),
                more: false,
            },
            20_000,
        );
        assert!(parts.len() > 4);
        assert!(parts.iter().all(|p| p.encoded_len() <= 20_000));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.more));
        assert!(!parts.last().unwrap().more);
        assert_eq!(parts.iter().map(|p| p.pods.len()).sum::<usize>(), 100);
    }
}
