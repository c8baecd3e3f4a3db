//! Pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus, ListPodSandbox; and recovery after a restart.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_cri::api;
use skiff_cri::ports::{PodPort, PortResult};
use skiff_meta::Table;
use skiff_shim_proto::protocol::Request;
use tonic::async_trait;

use super::records::{CtrState, PidMode, PodRecord, PodState, encode};
use super::{POD_NAMES, Runtime, RuntimeError, Service, io_err, labels_match, pod_config, shim};
use crate::cgroups::Cgroups;
use crate::sys::{self, PodNs, PodNsSpec};

fn mode(m: i32) -> api::NamespaceMode {
    api::NamespaceMode::try_from(m).unwrap_or(api::NamespaceMode::Pod)
}

/// The pod's own user namespace, if it asks for one (`NamespaceMode::POD`), checked as
/// containerd does: one uid and one gid range, each mapping the container's id 0;
/// NODE (or nothing) is the host's; CONTAINER and TARGET mean nothing for a user
/// namespace. A user-namespaced pod shares none of the host's namespaces (Kubernetes
/// forbids `hostUsers: false` with hostNetwork, hostIPC or hostPID).
fn userns_maps(
    opts: Option<&api::UserNamespace>,
    host_net: bool,
    host_ipc: bool,
    pid_mode: PidMode,
) -> Result<Option<crate::sys::UsernsMaps>, RuntimeError> {
    let Some(opts) = opts else {
        return Ok(None);
    };
    let bad = |msg: String| Err(RuntimeError::Invalid(format!("user namespace: {msg}")));
    match api::NamespaceMode::try_from(opts.mode) {
        Ok(api::NamespaceMode::Node) => {
            if !opts.uids.is_empty() || !opts.gids.is_empty() {
                return bad("mode NODE takes no id mappings".into());
            }
            return Ok(None);
        }
        Ok(api::NamespaceMode::Pod) => {}
        Ok(other) => return bad(format!("mode {} is not supported", other.as_str_name())),
        Err(_) => return bad(format!("unknown mode {}", opts.mode)),
    }
    if host_net || host_ipc || pid_mode == PidMode::Host {
        return bad(
            "a user-namespaced pod cannot share the host's network, IPC or PID namespace".into(),
        );
    }
    let one = |what: &str, maps: &[api::IdMapping]| -> Result<crate::sys::IdMap, RuntimeError> {
        let m = single_mapping(what, maps)
            .map_err(|e| RuntimeError::Invalid(format!("user namespace: {e}")))?;
        if m.container_id != 0 {
            return Err(RuntimeError::Invalid(format!(
                "user namespace: the {what} mapping must map container id 0 (it starts at {})",
                m.container_id
            )));
        }
        if m.length == 0 || m.host_id.checked_add(m.length).is_none() || m.host_id == 0 {
            return Err(RuntimeError::Invalid(format!(
                "user namespace: bad {what} mapping host {} length {} (the host's root is never mapped)",
                m.host_id, m.length
            )));
        }
        Ok(m)
    };
    Ok(Some(crate::sys::UsernsMaps {
        uids: one("uid", &opts.uids)?,
        gids: one("gid", &opts.gids)?,
    }))
}

/// The one range of a CRI id mapping list (skiff takes exactly one, as the kubelet
/// sends), or why not.
pub(super) fn single_mapping(
    what: &str,
    maps: &[api::IdMapping],
) -> Result<crate::sys::IdMap, String> {
    match maps {
        [m] => Ok(crate::sys::IdMap {
            container_id: m.container_id,
            host_id: m.host_id,
            length: m.length,
        }),
        _ => Err(format!(
            "exactly one {what} mapping is supported, got {}",
            maps.len()
        )),
    }
}

fn name_key(c: &api::PodSandboxConfig) -> String {
    let m = c.metadata.clone().unwrap_or_default();
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// Sysctls a pod may set, split from those it may not given its namespaces.
fn check_sysctls(
    sysctls: &HashMap<String, String>,
    own_net: bool,
    own_ipc: bool,
) -> Result<Vec<(String, String)>, RuntimeError> {
    let mut out = Vec::new();
    for (k, v) in sysctls {
        let ipc = k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k == "kernel.sem"
            || k.starts_with("fs.mqueue.");
        let net = k.starts_with("net.");
        let ok = (net && own_net) || (ipc && own_ipc);
        if !ok {
            return Err(RuntimeError::Invalid(format!(
                "sysctl {k}={v} is not namespaced to this pod (only net.* with a pod network \
                 and kernel.shm*/msg*/sem, fs.mqueue.* with a pod IPC namespace are)"
            )));
        }
        if k.contains("..") || k.contains('/') && k.split('/').any(|p| p == "..") {
            return Err(RuntimeError::Invalid(format!(
                "sysctl name {k} is not valid"
            )));
        }
        out.push((k.clone(), v.clone()));
    }
    out.sort();
    Ok(out)
}

fn resolv_conf(dns: Option<&api::DnsConfig>) -> Option<String> {
    let dns = dns?;
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return None;
    }
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(s)
}

fn spec_hostname(dir: &Path) -> String {
    fs::read_to_string(dir.join("hostname"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn host_hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Write the pod's hostname, hosts and resolv.conf files.
fn write_pod_files(
    dir: &Path,
    c: &api::PodSandboxConfig,
    host_net: bool,
) -> Result<(), RuntimeError> {
    // As containerd and CRI-O: a pod that names no hostname (or shares the host's
    // network) gets the node's. The pod name is no hostname: it may be longer than
    // the kernel allows (64 bytes) and contain characters a hostname may not.
    let hostname = if host_net || c.hostname.is_empty() {
        host_hostname()
    } else {
        c.hostname.clone()
    };
    let w = |name: &str, body: String| {
        let p = dir.join(name);
        fs::write(&p, body).map_err(io_err("write", &p))
    };
    w("hostname", format!("{hostname}\n"))?;
    let hosts = if host_net {
        fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n"
            .to_string()
    };
    w("hosts", hosts)?;
    let resolv = resolv_conf(c.dns_config.as_ref())
        .unwrap_or_else(|| fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    w("resolv.conf", resolv)?;
    Ok(())
}

/// Undo what a (possibly half-made) pod holds on the host: shim, network, namespaces,
/// shm, cgroups. Every step tolerates what is already gone and runs whatever the others
/// did; a failed CNI DEL (which stays recorded for a retry) is returned at the end.
pub(super) async fn release_pod(rt: &Runtime, p: &PodRecord) -> Result<(), RuntimeError> {
    let mut steps = Steps::new();
    if p.shim_socket.exists() {
        let r = shim::call(&p.id, &p.shim_socket, &Request::Shutdown, Some(shim::SHORT)).await;
        if let Err(e) = r {
            tracing::warn!(pod_id = %p.id, error = %e, "shim shutdown");
        }
        // The shim removes its socket when it exits, right after answering; give it a
        // moment (it has nothing left to do but that).
        for i in 0..150 {
            if !p.shim_socket.exists() {
                break;
            }
            let ms = if i < 50 { 1 } else { 10 };
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Err(e) = fs::remove_file(&p.shim_socket)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(pod_id = %p.id, error = %e, "remove the shim's socket");
        }
    }
    steps.mark("shim");
    let network = rt.teardown_network(p).await;
    steps.mark("network");
    sys::release_namespaces(&p.ns);
    if let Some(shm) = &p.shm
        && let Err(e) = sys::unmount(shm)
    {
        tracing::warn!(pod_id = %p.id, error = %e, "unmount the pod's /dev/shm");
    }
    steps.mark("namespaces");
    if let Some(cg) = p.pause_cgroup.clone() {
        // Removing a cgroup waits (briefly) for exiting processes: off the async workers.
        let cgroups = rt.cgroups.clone();
        let removed = crate::blocking::spawn(move || {
            // The pause joins its cgroup by itself right after the shim starts it; when
            // the shim died at once, it may have joined after the pod's processes were
            // killed (see kill_orphans). Nothing of the pod may run on: kill what is
            // there, and again while the removal finds the cgroup busy.
            let mut tries = 0;
            loop {
                kill_cgroup(&cgroups, &cg);
                match cgroups.remove(&cg) {
                    Err(e) if tries < 3 && !cgroups.pids(&cg).is_empty() => {
                        tracing::debug!(cgroup = %cg, error = %e, "pause cgroup still busy");
                        tries += 1;
                    }
                    other => break other,
                }
            }
        })
        .await
        .map_err(super::task_err("remove cgroup"))?;
        if let Err(e) = removed {
            tracing::warn!(pod_id = %p.id, error = %e, "remove pause cgroup");
        }
    }
    steps.mark("cgroups");
    tracing::debug!(pod_id = %p.id, steps = %steps, "pod sandbox released");
    network
}

impl Runtime {
    fn pod_dir(&self, id: &str) -> PathBuf {
        self.config.state.join("pods").join(id)
    }

    fn shim_socket(&self, id: &str) -> PathBuf {
        // sun_path is 108 bytes: a short name in the state dir.
        self.config.state.join("s").join(&id[..16])
    }

    async fn run_pod(
        self: &Arc<Self>,
        req: api::RunPodSandboxRequest,
    ) -> Result<String, RuntimeError> {
        let c = req.config.unwrap_or_default();
        let handler = self.handler(&req.runtime_handler)?;
        let linux = c.linux.clone().unwrap_or_default();
        let sc = linux.security_context.clone().unwrap_or_default();
        let ns_opts = sc.namespace_options.clone().unwrap_or_default();
        let host_net = mode(ns_opts.network) == api::NamespaceMode::Node;
        let host_ipc = mode(ns_opts.ipc) == api::NamespaceMode::Node;
        let pid_mode = match mode(ns_opts.pid) {
            api::NamespaceMode::Node => PidMode::Host,
            api::NamespaceMode::Container | api::NamespaceMode::Target => PidMode::Container,
            api::NamespaceMode::Pod => PidMode::Pod,
        };
        let userns = userns_maps(
            ns_opts.userns_options.as_ref(),
            host_net,
            host_ipc,
            pid_mode,
        )?;
        if userns.is_some()
            && !self
                .features
                .get(&handler.name)
                .is_some_and(|f| f.user_namespaces)
        {
            return Err(RuntimeError::Invalid(format!(
                "user namespace: runtime handler {:?} cannot run user-namespaced pods on this node (the native handler can where the kernel idmaps mounts; see Status)",
                handler.name
            )));
        }
        let sysctls = check_sysctls(&linux.sysctls, !host_net, !host_ipc)?;
        let id = super::new_id();
        let key = name_key(&c);
        // Not visible through CRI until it is complete (and NRI plugins have seen it).
        let hidden = super::nri::Hidden::new(&self.creating, &id);
        self.reserve(POD_NAMES, "pod sandbox", &key, &id)?;
        let _guard = self.lock(&id).await;
        let dir = self.pod_dir(&id);
        let cgroup_parent = if linux.cgroup_parent.is_empty() {
            format!("/skiff/{id}")
        } else {
            linux.cgroup_parent.clone()
        };
        let mut rec = PodRecord {
            id: id.clone(),
            config: encode(&c),
            created_at: super::now_ns(),
            state: PodState::Ready,
            handler: req.runtime_handler.clone(),
            dir: dir.clone(),
            ns: PodNs::default(),
            pid_mode,
            shim_socket: self.shim_socket(&id),
            shim_pid: 0,
            pause_pid: None,
            cgroup_parent: cgroup_parent.clone(),
            pause_cgroup: None,
            shm: None,
            name_key: key.clone(),
            ip: None,
            host_veth: None,
            userns,
        };
        let mut made = self
            .make_pod(&mut rec, &c, host_net, host_ipc, sysctls, &handler)
            .await;
        // NRI plugins see the pod once its sandbox is up; a refusal undoes it. The
        // creation guard is released only after the pod is visible (see skiff_nri).
        let mut creation = None;
        if made.is_ok()
            && let Some(nri) = self.nri()
        {
            creation = Some(nri.creating().await);
            if nri.wants(skiff_nri::Event::RunPodSandbox) {
                let pod = self.nri_pod(&rec);
                if let Err(e) = nri.run_pod_sandbox(&pod).await {
                    // Plugins that took the pod before the refusal learn it is gone.
                    if let Err(e) = nri.remove_pod_sandbox(&pod).await {
                        tracing::debug!(pod_id = %id, error = %e, "NRI RemovePodSandbox of a refused pod");
                    }
                    made = Err(e.into());
                }
            }
        }
        let result = match made {
            Ok(()) => {
                self.watch_shim(&id, rec.shim_pid);
                Ok(id)
            }
            Err(e) => {
                if let Err(net) = release_pod(self, &rec).await {
                    tracing::warn!(pod_id = %id, error = %net, "undo the pod's network");
                }
                // Its directories and its own cgroup (blocking, as at RemovePodSandbox).
                let (rt, pod) = (self.clone(), rec.clone());
                if let Err(e) = crate::blocking::spawn(move || rt.remove_pod_files(&pod)).await {
                    tracing::warn!(pod_id = %id, error = %e, "undo the pod's files");
                }
                let _ = self.meta.delete(Table::PODS, &id);
                self.release(POD_NAMES, &key);
                Err(e)
            }
        };
        drop(hidden);
        drop(creation);
        result
    }

    async fn make_pod(
        &self,
        rec: &mut PodRecord,
        c: &api::PodSandboxConfig,
        host_net: bool,
        host_ipc: bool,
        sysctls: Vec<(String, String)>,
        handler: &crate::config::Handler,
    ) -> Result<(), RuntimeError> {
        let dir = rec.dir.clone();
        let mut steps = Steps::new();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        write_pod_files(&dir, c, host_net)?;
        let hostname = fs::read_to_string(dir.join("hostname"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let spec = PodNsSpec {
            net: !host_net,
            ipc: !host_ipc,
            uts: !host_net,
            hostname,
            sysctls,
            userns: rec.userns,
        };
        let ns_dir = self.config.state.join("ns").join(&rec.id);
        // Recorded before creation so a failure half way is still cleaned.
        rec.ns = PodNs {
            net: spec.net.then(|| ns_dir.join("net")),
            ipc: spec.ipc.then(|| ns_dir.join("ipc")),
            uts: spec.uts.then(|| ns_dir.join("uts")),
            user: spec.userns.is_some().then(|| ns_dir.join("user")),
        };
        self.save_pod(rec)?;
        steps.mark("files");
        let made = crate::blocking::spawn({
            let ns_dir = ns_dir.clone();
            move || sys::create_pod_namespaces(&ns_dir, &spec)
        })
        .await
        .map_err(super::task_err("namespace"))??;
        rec.ns = made;
        steps.mark("namespaces");
        self.setup_network(rec).await?;
        steps.mark("network");
        if let Some(ip) = rec.ip {
            let hosts = dir.join("hosts");
            let line = format!("{ip}\t{}\n", spec_hostname(&dir));
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&hosts)
                .map_err(io_err("open", &hosts))?;
            std::io::Write::write_all(&mut f, line.as_bytes()).map_err(io_err("write", &hosts))?;
        }
        // Recorded before they are made: a crash right after leaves a record that
        // names them, so the recovery's release finds them.
        if !host_ipc {
            rec.shm = Some(dir.join("shm"));
        }
        if rec.pid_mode == PidMode::Pod {
            rec.pause_cgroup = Some(format!(
                "{}/{}",
                rec.cgroup_parent.trim_end_matches('/'),
                rec.id
            ));
        }
        self.save_pod(rec)?;
        if let Some(shm) = &rec.shm {
            sys::mount_shm(shm, rec.userns.map(|u| u.host_root()))?;
        }
        let (pause, procs) = match &rec.pause_cgroup {
            Some(cg) => {
                self.cgroups.create(cg)?;
                (
                    Some(self.pause_binary.clone()),
                    self.cgroups.procs_files(cg),
                )
            }
            None => (None, Vec::new()),
        };
        steps.mark("shm+cgroup");
        let started = shim::start(&shim::ShimStart {
            binary: self.shim_binary.clone(),
            opts: skiff_shim_proto::options::Options {
                pod_id: rec.id.clone(),
                socket: rec.shim_socket.clone(),
                dir: dir.clone(),
                runtime: if handler.native {
                    skiff_shim_proto::options::Runtime::Native
                } else {
                    skiff_shim_proto::options::Runtime::Binary(handler.binary.clone())
                },
                runtime_root: handler.root.clone(),
                pause,
                pause_procs: procs,
                pause_userns: rec.ns.user.clone(),
            },
        })
        .await?;
        steps.mark("shim");
        rec.shim_pid = started.pid;
        rec.pause_pid = started.pause_pid;
        if rec.pid_mode == PidMode::Pod && rec.pause_pid.is_none() {
            return Err(RuntimeError::ShimStart {
                pod: rec.id.clone(),
                reason: "the pause process did not start".into(),
            });
        }
        self.save_pod(rec)?;
        steps.mark("record");
        tracing::debug!(pod_id = %rec.id, steps = %steps, "pod sandbox made");
        Ok(())
    }

    /// Stop every container of the pod, shut its shim down and release its
    /// namespaces. Idempotent.
    pub(super) async fn stop_pod(self: &Arc<Self>, id: &str) -> Result<(), RuntimeError> {
        let Some(p) = self.pod(id)? else {
            return Ok(());
        };
        let _guard = self.lock(&p.id).await;
        let Some(mut p) = self.pod(&p.id)? else {
            return Ok(());
        };
        let containers: Vec<_> = self
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == p.id)
            .collect();
        for c in containers {
            if c.state != CtrState::Exited
                && let Err(e) = self.stop_container_inner(&c.id, 0).await
            {
                tracing::warn!(pod_id = %p.id, container_id = %c.id, error = %e, "stop container with its pod");
            }
        }
        if p.state == PodState::Ready
            && let Some(nri) = self.nri()
            && nri.wants(skiff_nri::Event::StopPodSandbox)
            && let Err(e) = nri.stop_pod_sandbox(&self.nri_pod(&p)).await
        {
            // The pod stops regardless: the kubelet would retry forever otherwise.
            tracing::warn!(pod_id = %p.id, error = %e, "NRI StopPodSandbox");
        }
        if p.state == PodState::Ready {
            // The shim goes down on purpose now: its end is no death.
            self.watchers.cancel(&p.id);
            let released = release_pod(self, &p).await;
            // Containers the shim deleted are no longer running; record that.
            for mut c in self.containers()?.into_iter().filter(|c| c.pod_id == p.id) {
                if c.state != CtrState::Exited {
                    self.settle_exit(&mut c, None);
                    self.save_container(&c)?;
                }
                self.nri_stopped(&mut c).await;
            }
            p.state = PodState::NotReady;
            self.save_pod(&p)?;
            // A failed CNI DEL goes to the kubelet, which calls StopPodSandbox again.
            released?;
        } else {
            // A CNI DEL that failed before is tried again.
            self.teardown_cni(&p.id).await?;
        }
        Ok(())
    }

    async fn remove_pod(self: &Arc<Self>, id: &str) -> Result<(), RuntimeError> {
        let Some(p) = self.pod(id)? else {
            return Ok(());
        };
        let mut steps = Steps::new();
        self.stop_pod(&p.id).await?;
        steps.mark("stop");
        let nri_pod = self.nri().map(|_| self.nri_pod(&p));
        let containers: Vec<_> = self
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == p.id)
            .collect();
        for c in containers {
            self.remove_container_inner(&c.id).await?;
        }
        let _guard = self.lock(&p.id).await;
        steps.mark("containers");
        self.ensure_veth_gone(&p).await;
        steps.mark("veth");
        // Directory and cgroup removal block (a cgroup waits briefly for exiting
        // processes): off the async workers.
        let (rt, pod) = (self.clone(), p.clone());
        crate::blocking::spawn(move || rt.remove_pod_files(&pod))
            .await
            .map_err(super::task_err("remove pod files"))?;
        steps.mark("files+cgroups");
        self.meta.delete(Table::PODS, &p.id)?;
        self.release(POD_NAMES, &p.name_key);
        steps.mark("record");
        if let (Some(nri), Some(pod)) = (self.nri(), nri_pod)
            && let Err(e) = nri.remove_pod_sandbox(&pod).await
        {
            tracing::warn!(pod_id = %p.id, error = %e, "NRI RemovePodSandbox");
        }
        tracing::debug!(pod_id = %p.id, steps = %steps, "pod sandbox removed");
        Ok(())
    }

    /// A removed pod's directories and its own cgroup (blocking).
    fn remove_pod_files(&self, p: &PodRecord) {
        let ns_dir = self.config.state.join("ns").join(&p.id);
        for (dir, all) in [(&p.dir, true), (&ns_dir, false)] {
            let removed = if all {
                fs::remove_dir_all(dir)
            } else {
                fs::remove_dir(dir)
            };
            if let Err(e) = removed
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(pod_id = %p.id, path = %dir.display(), error = %e, "remove a pod directory");
            }
        }
        if p.cgroup_parent == format!("/skiff/{}", p.id)
            && let Err(e) = self.cgroups.remove(&p.cgroup_parent)
        {
            tracing::warn!(pod_id = %p.id, error = %e, "remove pod cgroup");
        }
        if p.cgroup_parent.starts_with("/skiff/") {
            // The shared default parent goes with the last pod that used it.
            self.cgroups.remove_if_empty("/skiff");
        }
    }

    pub(super) fn pod_status(&self, p: &PodRecord) -> api::PodSandboxStatus {
        let c = pod_config(p);
        let ns_opts = c
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        api::PodSandboxStatus {
            id: p.id.clone(),
            metadata: c.metadata.clone(),
            state: match p.state {
                PodState::Ready => api::PodSandboxState::SandboxReady as i32,
                PodState::NotReady => api::PodSandboxState::SandboxNotready as i32,
            },
            created_at: p.created_at,
            network: Some(api::PodSandboxNetworkStatus {
                ip: p.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                additional_ips: Vec::new(),
            }),
            linux: Some(api::LinuxPodSandboxStatus {
                namespaces: Some(api::Namespace {
                    options: Some(ns_opts),
                }),
            }),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            runtime_handler: p.handler.clone(),
        }
    }

    fn pod_info(&self, p: &PodRecord, cni: Option<serde_json::Value>) -> HashMap<String, String> {
        let mut info = serde_json::json!({
            "pid": p.pause_pid.unwrap_or(0),
            "shimPid": p.shim_pid,
            "shimSocket": p.shim_socket,
            "pidMode": format!("{:?}", p.pid_mode),
            "namespaces": p.ns,
            "userns": p.userns,
            "cgroupParent": p.cgroup_parent,
            "runtimeHandler": p.handler,
            "stateDir": p.dir,
            "config": pod_config(p),
        });
        if let Some(cni) = cni {
            info["cni"] = cni;
        }
        HashMap::from([("info".to_string(), info.to_string())])
    }
}

/// The shim is gone: its containers' processes (re-parented to init) and the pause
/// process are killed through the runtime and the pod's cgroups, so nothing runs on
/// unaccounted.
pub(super) async fn kill_orphans(rt: &Arc<Runtime>, p: &PodRecord) {
    let handler = rt.handler(&p.handler).ok();
    for c in rt
        .containers()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.pod_id == p.id)
    {
        if let Some(h) = &handler {
            // The native handler's delete is the shim binary's `oci` command.
            let mut cmd = if h.native {
                let mut cmd = tokio::process::Command::new(&rt.shim_binary.path);
                cmd.arg("oci");
                cmd
            } else {
                tokio::process::Command::new(&h.binary)
            };
            let out = cmd
                .arg("--root")
                .arg(&h.root)
                .args(["delete", "--force", &c.id])
                .output()
                .await;
            if let Ok(o) = out
                && !o.status.success()
            {
                tracing::debug!(container_id = %c.id, stderr = %String::from_utf8_lossy(&o.stderr), "runtime delete of an orphan");
            }
        }
        kill_cgroup(&rt.cgroups, &c.cgroups_path);
    }
    if let Some(cg) = &p.pause_cgroup {
        kill_cgroup(&rt.cgroups, cg);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paths: Vec<(String, String)> = rt
        .containers()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.pod_id == p.id)
        .map(|c| (c.id, c.cgroups_path))
        .collect();
    // Removing a cgroup waits (briefly) for exiting processes: off the async workers.
    let cgroups = rt.cgroups.clone();
    let done = crate::blocking::spawn(move || {
        for (id, path) in paths {
            if let Err(e) = cgroups.remove(&path) {
                tracing::warn!(container_id = %id, error = %e, "remove an orphan's cgroup");
            }
        }
    })
    .await;
    if let Err(e) = done {
        tracing::error!(pod_id = %p.id, error = %e, "cgroup removal task");
    }
}

fn kill_cgroup(cgroups: &Cgroups, path: &str) {
    for pid in cgroups.pids(path) {
        if let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            && let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::KILL)
            && e != rustix::io::Errno::SRCH
        {
            tracing::warn!(cgroup = path, pid = pid.as_raw_nonzero().get(), error = %e, "kill a process left in a cgroup");
        }
    }
}

/// A container recorded as Created may be further along in its shim: skiffd died
/// after asking the shim to create or start it and before recording the answer. The
/// shim (whose loop finished that request before answering this one) says where it
/// is: created (its pid is recorded), started (it is recorded Running and watched,
/// so its exit is reported as any other), or unknown when it was never created (the
/// creation is undone as a failed one would have been; the client, whose call never
/// returned, retries).
async fn reconcile_created(
    rt: &Arc<Runtime>,
    p: &PodRecord,
    c: &mut super::records::ContainerRecord,
) -> Result<(), RuntimeError> {
    use skiff_shim_proto::protocol::{FailureKind, Reply, Status};
    let state = shim::call(
        &p.id,
        &p.shim_socket,
        &Request::State { id: c.id.clone() },
        Some(shim::SHORT),
    )
    .await;
    match state {
        Ok(Reply::State { status, pid, exit }) => {
            if c.pid.is_none() {
                c.pid = pid;
            }
            if status != Status::Created {
                tracing::info!(container_id = %c.id, "recording a start skiffd was killed in");
                return rt.record_started(c, exit);
            }
            rt.save_container(c)
        }
        Err(RuntimeError::ShimFailed(f)) if f.kind == FailureKind::NotFound && c.pid.is_none() => {
            tracing::info!(container_id = %c.id, "undoing a creation skiffd was killed in");
            rt.undo_creation(p, c).await;
            Ok(())
        }
        Ok(other) => {
            tracing::warn!(container_id = %c.id, reply = ?other, "unexpected answer to State at recovery");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(container_id = %c.id, error = %e, "state of a created container at recovery");
            Ok(())
        }
    }
}

/// Reconnect after a restart: a pod whose shim answers is watched again (the shim and
/// its running containers); one whose shim is gone is handled as a shim death while
/// skiffd runs (its containers reported exited, reason `Unknown`, its resources released).
pub(super) async fn recover(rt: &Arc<Runtime>) -> Result<(), RuntimeError> {
    // Each step reports its own failure and recovery goes on: one bad record must not
    // leave every other pod unwatched.
    if let Err(e) = release_orphan_names(rt) {
        tracing::error!(error = %e, "releasing names whose object was never recorded");
    }
    for p in rt.pods()? {
        if p.state != PodState::Ready {
            continue;
        }
        let pong = shim::call(
            &p.id,
            &p.shim_socket,
            &Request::Ping,
            Some(Duration::from_secs(5)),
        )
        .await;
        match pong {
            Ok(skiff_shim_proto::protocol::Reply::Pong { pid, .. }) if pid == p.shim_pid => {
                for mut c in rt.containers()?.into_iter().filter(|c| c.pod_id == p.id) {
                    if c.state == CtrState::Running {
                        rt.watch(&c);
                    } else if c.state == CtrState::Created
                        && let Err(e) = reconcile_created(rt, &p, &mut c).await
                    {
                        tracing::error!(container_id = %c.id, error = %e, "reconciling a created container with its shim");
                    }
                }
                // After the containers are settled: a shim death handled meanwhile
                // would race with the reconciliation's own record writes.
                rt.watch_shim(&p.id, pid);
            }
            _ => {
                rt.shim_gone(
                    &p.id,
                    p.shim_pid,
                    "the pod's shim died while skiffd was down",
                )
                .await?;
            }
        }
    }
    rt.reconcile_network().await?;
    Ok(())
}

/// Release the name reservations whose holder has no record: skiffd was killed
/// between reserving a name and saving the object's first record, so nothing else
/// would ever free the name. The directories such an object may already have (its
/// first record is saved before anything is mounted or started) go with it.
fn release_orphan_names(rt: &Runtime) -> Result<(), RuntimeError> {
    for (table, records) in [
        (super::POD_NAMES, Table::PODS),
        (super::CONTAINER_NAMES, Table::CONTAINERS),
    ] {
        for (key, holder) in rt.meta.list::<String>(table)? {
            if rt
                .meta
                .get::<serde_json::Value>(records, &holder)?
                .is_none()
            {
                tracing::info!(name = %key, id = %holder, "releasing a name whose object was never recorded");
                let dirs = if records == Table::PODS {
                    vec![rt.pod_dir(&holder)]
                } else {
                    vec![
                        rt.config.state.join("containers").join(&holder),
                        rt.config.root.join("containers").join(&holder),
                    ]
                };
                for dir in dirs.iter().filter(|d| super::is_id(&holder) && d.exists()) {
                    if let Err(e) = fs::remove_dir_all(dir) {
                        tracing::warn!(id = %holder, path = %dir.display(), error = %e, "remove the directory of an object never recorded");
                    }
                }
                rt.release(table, &key);
            }
        }
    }
    Ok(())
}

impl Runtime {
    /// `UpdatePodSandboxResources`: the kubelet has already resized the pod's cgroup
    /// (the call comes after, and is best effort for it); skiff records the pod-level
    /// resources and overhead in the pod's config, where PodSandboxStatus and a
    /// restart see them, as containerd does.
    async fn update_pod_resources(
        &self,
        req: api::UpdatePodSandboxResourcesRequest,
    ) -> Result<(), RuntimeError> {
        let p = self.must_pod(&req.pod_sandbox_id)?;
        let _guard = self.lock(&p.id).await;
        let mut p = self.must_pod(&p.id)?;
        if p.state != PodState::Ready {
            return Err(RuntimeError::Precondition(format!(
                "pod sandbox {} is not ready; its resources cannot be updated",
                p.id
            )));
        }
        let mut cfg = pod_config(&p);
        let linux = cfg.linux.get_or_insert_with(Default::default);
        if req.resources.is_some() {
            linux.resources = req.resources.clone();
        }
        if req.overhead.is_some() {
            linux.overhead = req.overhead.clone();
        }
        let nri = self.nri().filter(|n| {
            n.wants(skiff_nri::Event::UpdatePodSandbox)
                || n.wants(skiff_nri::Event::PostUpdatePodSandbox)
        });
        if let Some(nri) = nri {
            let v2 = self.host.cgroup_v2;
            let res = |r: &Option<api::LinuxContainerResources>| {
                r.as_ref().map(|r| {
                    skiff_nri::apply::resources_to_nri(&crate::spec::linux_resources(r, v2))
                })
            };
            nri.update_pod_sandbox(
                &self.nri_pod(&p),
                res(&req.overhead).as_ref(),
                res(&req.resources).as_ref(),
            )
            .await?;
        }
        p.config = super::records::encode(&cfg);
        self.save_pod(&p)?;
        if let Some(nri) = nri
            && let Err(e) = nri.post_update_pod_sandbox(&self.nri_pod(&p)).await
        {
            tracing::warn!(pod_id = %p.id, error = %e, "NRI PostUpdatePodSandbox");
        }
        Ok(())
    }
}

#[async_trait]
impl PodPort for Service {
    async fn run(&self, req: api::RunPodSandboxRequest) -> PortResult<api::RunPodSandboxResponse> {
        let id = self.0.run_pod(req).await?;
        Ok(api::RunPodSandboxResponse { pod_sandbox_id: id })
    }

    async fn stop(
        &self,
        req: api::StopPodSandboxRequest,
    ) -> PortResult<api::StopPodSandboxResponse> {
        self.0.stop_pod(&req.pod_sandbox_id).await?;
        Ok(api::StopPodSandboxResponse {})
    }

    async fn remove(
        &self,
        req: api::RemovePodSandboxRequest,
    ) -> PortResult<api::RemovePodSandboxResponse> {
        self.0.remove_pod(&req.pod_sandbox_id).await?;
        Ok(api::RemovePodSandboxResponse {})
    }

    async fn status(
        &self,
        req: api::PodSandboxStatusRequest,
    ) -> PortResult<api::PodSandboxStatusResponse> {
        let rt = &self.0;
        let p = rt.visible_pod(&req.pod_sandbox_id)?;
        let containers_statuses = rt
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == p.id && !rt.creating.contains(&c.id))
            .map(|mut c| {
                rt.refresh(&mut c);
                rt.container_status(&c)
            })
            .collect();
        Ok(api::PodSandboxStatusResponse {
            status: Some(rt.pod_status(&p)),
            info: if req.verbose {
                rt.pod_info(&p, rt.network_info(&p).await)
            } else {
                HashMap::new()
            },
            containers_statuses,
            timestamp: super::now_ns(),
        })
    }

    async fn update_resources(
        &self,
        req: api::UpdatePodSandboxResourcesRequest,
    ) -> PortResult<api::UpdatePodSandboxResourcesResponse> {
        self.0.update_pod_resources(req).await?;
        Ok(api::UpdatePodSandboxResourcesResponse {})
    }

    async fn list(
        &self,
        req: api::ListPodSandboxRequest,
    ) -> PortResult<api::ListPodSandboxResponse> {
        let rt = &self.0;
        let f = req.filter.unwrap_or_default();
        let mut items: Vec<api::PodSandbox> = rt
            .pods()?
            .into_iter()
            .filter(|p| !rt.creating.contains(&p.id))
            .filter(|p| f.id.is_empty() || p.id.starts_with(&f.id))
            .map(|p| {
                let s = rt.pod_status(&p);
                api::PodSandbox {
                    id: s.id,
                    metadata: s.metadata,
                    state: s.state,
                    created_at: s.created_at,
                    labels: s.labels,
                    annotations: s.annotations,
                    runtime_handler: s.runtime_handler,
                }
            })
            .filter(|p| f.state.as_ref().is_none_or(|s| s.state == p.state))
            .filter(|p| labels_match(&p.labels, &f.label_selector))
            .collect();
        items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        Ok(api::ListPodSandboxResponse { items })
    }
}

/// Where the time of a multi-step operation went, for a debug log line.
pub(super) struct Steps {
    last: std::time::Instant,
    done: Vec<(&'static str, u128)>,
}

impl Steps {
    pub(super) fn new() -> Steps {
        Steps {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    /// The step `name` ended now.
    pub(super) fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.done
            .push((name, now.duration_since(self.last).as_micros()));
        self.last = now;
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, us)) in self.done.iter().enumerate() {
            write!(f, "{}{name}={us}us", if i == 0 { "" } else { " " })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_must_be_namespaced_to_the_pod() {
        let m = HashMap::from([("net.ipv4.ip_forward".to_string(), "1".to_string())]);
        assert_eq!(check_sysctls(&m, true, true).unwrap().len(), 1);
        assert!(check_sysctls(&m, false, true).is_err());
        let m = HashMap::from([("kernel.shmmax".to_string(), "1".to_string())]);
        assert!(check_sysctls(&m, true, true).is_ok());
        assert!(check_sysctls(&m, true, false).is_err());
        let m = HashMap::from([("vm.swappiness".to_string(), "1".to_string())]);
        assert!(check_sysctls(&m, true, true).is_err());
    }

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = api::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns)).unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        assert!(resolv_conf(Some(&api::DnsConfig::default())).is_none());
        assert!(resolv_conf(None).is_none());
    }
}
