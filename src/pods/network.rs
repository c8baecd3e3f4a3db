//! Pod networking glue, in one of two modes (`[network] mode`):
//!
//! - `bridge`: the built-in bridge (crates/net) plus IPAM persisted in the metadata
//!   store (`ips` table: address → pod id), so an address is never handed out twice,
//!   also across a SIGKILL of skiffd; and skiff's nftables table (masquerade for the
//!   pod CIDR, hostPort DNAT per pod), rebuilt from the pod records at start-up.
//! - `cni`: the CNI plugins of the configuration directory's network list
//!   (`skiff_net::cni`). Each pod's attachment (the list as used, the pod's identity,
//!   the ADD result) is kept in the `cni` table, written before ADD runs, so DEL gets
//!   the same configuration and the cached result after a restart, and an ADD cut
//!   short by a crash is undone at start-up. skiff makes no bridge or nftables table.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use skiff_cri::api;
use skiff_meta::Table;
use skiff_net::cni::{Attachment, Cni, CniError, Dns, PodRef, PortMapping};
use skiff_net::nft::{HostPort, Nft, NftError, PodPorts};
use skiff_net::{BridgeConfig, BridgeNetwork, NetError};

use super::records::{PodRecord, PodState};
use super::{Runtime, RuntimeError};
use crate::config::NetworkMode;

/// CNI attachments: pod id → [`Attachment`].
pub const CNI: Table = Table::named("cni");

/// The pod network of the configured mode.
pub(super) enum PodNetwork {
    /// The built-in bridge, and nftables for masquerade and hostPorts (`None` when
    /// nftables could not be set up; `NetworkReady` then says why).
    Bridge {
        /// The bridge.
        bridge: BridgeNetwork,
        /// skiff's nftables table.
        nft: Option<Arc<Nft>>,
    },
    /// CNI plugins; the network list is read again for every pod, so a configuration
    /// installed or changed while skiffd runs is used.
    Cni(Cni),
}

/// A CNI error as the CRI sees it: the node's configuration is a precondition.
fn cni_error(e: CniError) -> RuntimeError {
    if e.is_config() {
        RuntimeError::Precondition(e.to_string())
    } else {
        RuntimeError::Net(NetError::Cni(e))
    }
}

/// The pod's hostPort mappings as the `portMappings` capability carries them
/// (`host_port == 0` entries dropped, as containerd does).
fn cni_port_mappings(c: &api::PodSandboxConfig) -> Vec<PortMapping> {
    c.port_mappings
        .iter()
        .filter(|m| m.host_port > 0)
        .map(|m| PortMapping {
            host_port: m.host_port,
            container_port: m.container_port,
            protocol: api::Protocol::try_from(m.protocol)
                .unwrap_or(api::Protocol::Tcp)
                .as_str_name()
                .to_ascii_lowercase(),
            host_ip: m.host_ip.clone(),
        })
        .collect()
}

/// The pod's DNS settings for the `dns` capability, if it has any.
fn cni_dns(c: &api::PodSandboxConfig) -> Option<Dns> {
    let d = c.dns_config.as_ref()?;
    let dns = Dns {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    };
    (dns != Dns::default()).then_some(dns)
}

/// The pod's hostPort mappings from its CRI config (`host_port == 0` entries dropped).
fn host_ports(p: &PodRecord) -> Result<Vec<HostPort>, NftError> {
    super::pod_config(p)
        .port_mappings
        .iter()
        .filter_map(|m| {
            HostPort::from_cri(m.protocol, m.container_port, m.host_port, &m.host_ip).transpose()
        })
        .collect()
}

/// Two mappings of the node's port clash when protocol and port match and their node
/// addresses overlap (no address = every address).
fn clashes(a: &HostPort, b: &HostPort) -> bool {
    a.protocol == b.protocol
        && a.host_port == b.host_port
        && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
}

/// Whether the pod asked for any host port (valid or not).
fn wants_host_ports(p: &PodRecord) -> bool {
    super::pod_config(p)
        .port_mappings
        .iter()
        .any(|m| m.host_port != 0)
}

/// Run a blocking nftables operation off the async workers.
async fn nft_blocking<T: Send + 'static>(
    op: &str,
    f: impl FnOnce() -> Result<T, NftError> + Send + 'static,
) -> Result<T, NftError> {
    crate::blocking::spawn(f).await.unwrap_or_else(|e| {
        Err(NftError::Nft {
            op: op.to_string(),
            detail: format!("task failed: {e}"),
        })
    })
}

impl Runtime {
    /// The CNI plugin runner of the configured directories (also used in bridge mode,
    /// to undo attachments left from a run in CNI mode).
    fn cni(&self) -> Cni {
        Cni::new(
            self.config.cni_conf_dir.clone(),
            self.config.cni_bin_dirs.clone(),
        )
    }

    /// Bring up the pod network of the configured mode; the problem for `NetworkReady`
    /// if it cannot be.
    pub async fn init_network(&self) -> Option<String> {
        if self.config.network_mode == NetworkMode::Cni {
            let cni = self.cni();
            let problem = match cni.load() {
                Ok(list) => {
                    tracing::info!(network = %list.name, config = %list.source.display(),
                        "pod network: CNI");
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            let _ = self.net.set(Arc::new(PodNetwork::Cni(cni)));
            return problem;
        }
        let mut cidr = self.config.pod_cidr;
        if !self.config.pod_cidr_from_file
            && let Ok(Some(kubelet)) = self.meta.get::<String>(Table::META, "kubelet_pod_cidr")
        {
            match kubelet.parse() {
                Ok(c) => cidr = c,
                Err(e) => {
                    tracing::warn!(cidr = %kubelet, error = %e, "ignoring the kubelet's pod CIDR")
                }
            }
        }
        let cfg = BridgeConfig {
            bridge: self.config.bridge.clone(),
            cidr,
            mtu: 1500,
        };
        let bridge = match BridgeNetwork::init(cfg).await {
            Ok(net) => net,
            Err(e) => return Some(format!("bridge {}: {e}", self.config.bridge)),
        };
        let name = self.config.bridge.clone();
        let (nft, problem) =
            match nft_blocking("set up nftables", move || Nft::init(cidr, &name)).await {
                Ok(nft) => (Some(Arc::new(nft)), None),
                // Pods still get the bridge; without masquerade they only reach the node
                // and each other, so the node is reported not ready.
                Err(e) => (None, Some(format!("masquerade and host ports: {e}"))),
            };
        if problem.is_none() {
            tracing::info!(bridge = %self.config.bridge, cidr = %cidr, "pod network ready");
        }
        let _ = self.net.set(Arc::new(PodNetwork::Bridge { bridge, nft }));
        problem
    }

    /// Allocate an address for `pod_id` (the lowest free one).
    fn allocate_ip(&self, net: &BridgeNetwork, pod_id: &str) -> Result<Ipv4Addr, RuntimeError> {
        loop {
            let used: HashSet<Ipv4Addr> = self
                .meta
                .list::<String>(Table::IPS)?
                .into_iter()
                .filter_map(|(ip, _)| ip.parse().ok())
                .collect();
            let ip = skiff_net::next_free(net.config().cidr, &used)?;
            let key = ip.to_string();
            let won = self.meta.write(|tx| {
                if tx.get::<String>(Table::IPS, &key)?.is_some() {
                    return Ok(false);
                }
                tx.put(Table::IPS, &key, &pod_id.to_string())?;
                Ok(true)
            })?;
            if won {
                return Ok(ip);
            }
        }
    }

    /// Release every address held by `pod_id`.
    fn release_ips(&self, pod_id: &str) {
        let held = self.meta.list::<String>(Table::IPS).unwrap_or_default();
        for (ip, owner) in held {
            if owner == pod_id
                && let Err(e) = self.meta.delete(Table::IPS, &ip)
            {
                tracing::warn!(pod_id, ip, error = %e, "release address");
            }
        }
    }

    /// Wire a pod that has its own network namespace; records its ip (and veth).
    /// On failure the caller tears down what was made.
    pub(super) async fn setup_network(&self, rec: &mut PodRecord) -> Result<(), RuntimeError> {
        let (Some(net), Some(ns)) = (self.net.get().cloned(), rec.ns.net.clone()) else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let done = match &*net {
            PodNetwork::Bridge { bridge, nft } => self.setup_bridge(bridge, nft, rec, ns).await,
            PodNetwork::Cni(cni) => self.setup_cni(cni, rec, ns).await,
        };
        self.metrics.network_setup(started.elapsed());
        done
    }

    /// Built-in: address, veth pair, and hostPorts DNATed to the pod.
    async fn setup_bridge(
        &self,
        bridge: &BridgeNetwork,
        nft: &Option<Arc<Nft>>,
        rec: &mut PodRecord,
        ns: PathBuf,
    ) -> Result<(), RuntimeError> {
        // Refused before anything is allocated.
        let ports = host_ports(rec)?;
        if !ports.is_empty() {
            self.check_port_clashes(rec, &ports)?;
        }
        let nft = match (nft, ports.is_empty()) {
            (_, true) => None,
            (Some(nft), false) => Some(nft.clone()),
            (None, false) => {
                return Err(RuntimeError::Precondition(
                    "the pod asks for host ports, but nftables could not be set up at start-up \
                     (see the NetworkReady condition)"
                        .into(),
                ));
            }
        };
        let ip = self.allocate_ip(bridge, &rec.id)?;
        rec.ip = Some(ip);
        rec.host_veth = Some(skiff_net::host_veth(&rec.id));
        self.save_pod(rec)?;
        bridge.setup(&rec.id, &ns, ip).await?;
        if let Some(nft) = nft {
            let id = rec.id.clone();
            nft_blocking("add host ports", move || nft.add_pod(&id, ip, &ports)).await?;
            tracing::debug!(pod_id = %rec.id, "host ports mapped");
        }
        Ok(())
    }

    /// CNI: read the network list, record the attachment, run ADD. The pod's address
    /// is the result's first IPv4 address on `eth0`.
    async fn setup_cni(
        &self,
        cni: &Cni,
        rec: &mut PodRecord,
        netns: PathBuf,
    ) -> Result<(), RuntimeError> {
        let list = cni.load().map_err(cni_error)?;
        let c = super::pod_config(rec);
        let m = c.metadata.clone().unwrap_or_default();
        let pod = PodRef {
            container_id: rec.id.clone(),
            netns,
            ifname: skiff_net::cni::DEFAULT_IFNAME.into(),
            namespace: m.namespace,
            name: m.name,
            uid: m.uid,
            port_mappings: cni_port_mappings(&c),
            dns: cni_dns(&c),
        };
        // Recorded before any plugin runs: a crash during ADD is undone at start-up.
        self.meta.put(
            CNI,
            &rec.id,
            &Attachment::pending(list.clone(), pod.clone()),
        )?;
        let att = match cni.add(&list, &pod).await {
            Ok(att) => att,
            Err(e) => {
                // ADD was undone; only a DEL that failed too leaves the record for a retry.
                if !matches!(e, CniError::AddUndoFailed { .. }) {
                    self.meta.delete(CNI, &rec.id)?;
                }
                return Err(cni_error(e));
            }
        };
        self.meta.put(CNI, &rec.id, &att)?;
        rec.ip = att.ipv4();
        self.save_pod(rec)?;
        tracing::debug!(pod_id = %rec.id, network = %list.name, ip = ?rec.ip, "CNI ADD done");
        Ok(())
    }

    /// Undo a pod's network: hostPort rules, veth pair and addresses, or its CNI
    /// attachment. Idempotent. Only a failed CNI DEL is an error; its record stays, and
    /// the DEL is tried again by the next StopPodSandbox and at start-up.
    pub(super) async fn teardown_network(&self, p: &PodRecord) -> Result<(), RuntimeError> {
        let started = std::time::Instant::now();
        let done = self.teardown_network_inner(p).await;
        self.metrics.network_teardown(started.elapsed());
        done
    }

    async fn teardown_network_inner(&self, p: &PodRecord) -> Result<(), RuntimeError> {
        if let Some(net) = self.net.get()
            && let PodNetwork::Bridge { bridge, nft } = &**net
        {
            if let Some(nft) = nft.clone()
                && wants_host_ports(p)
            {
                let id = p.id.clone();
                if let Err(e) = nft_blocking("remove host ports", move || nft.remove_pod(&id)).await
                {
                    tracing::warn!(pod_id = %p.id, error = %e, "remove host ports");
                }
            }
            // A pod with its own network namespace loses its veth pair with the namespace
            // (released next): the kernel's namespace cleanup deletes both ends off this
            // path, where a delete here waits for an RCU grace period (~20-40 ms).
            // RemovePodSandbox makes sure the pair is gone.
            if let Some(veth) = &p.host_veth
                && p.ns.net.is_none()
                && let Err(e) = bridge.teardown(veth).await
            {
                tracing::warn!(pod_id = %p.id, error = %e, "tear down pod network");
            }
        }
        self.release_ips(&p.id);
        self.teardown_cni(&p.id).await
    }

    /// A host port another ready pod already maps is refused: its DNAT rule would
    /// shadow (or be shadowed by) the other pod's without a word.
    fn check_port_clashes(&self, rec: &PodRecord, ports: &[HostPort]) -> Result<(), RuntimeError> {
        for other in self.pods()? {
            if other.id == rec.id || other.state != PodState::Ready {
                continue;
            }
            let Ok(theirs) = host_ports(&other) else {
                continue;
            };
            if let Some((mine, _)) = ports
                .iter()
                .flat_map(|m| theirs.iter().map(move |t| (m, t)))
                .find(|(m, t)| clashes(m, t))
            {
                return Err(RuntimeError::Precondition(format!(
                    "host port {}/{} is already mapped by pod sandbox {}",
                    mine.host_port,
                    format!("{:?}", mine.protocol).to_uppercase(),
                    other.id
                )));
            }
        }
        Ok(())
    }

    /// At removal: the pod's host veth is gone. The kernel removes it with the pod's
    /// namespace (asynchronously, tens of ms after StopPodSandbox); when it is still
    /// there, it is deleted here (also when something else holds the namespace).
    pub(super) async fn ensure_veth_gone(&self, p: &PodRecord) {
        if let (Some(net), Some(veth)) = (self.net.get(), &p.host_veth)
            && let PodNetwork::Bridge { bridge, .. } = &**net
            && let Err(e) = bridge.teardown(veth).await
        {
            tracing::warn!(pod_id = %p.id, error = %e, "remove the pod's veth");
        }
    }

    /// CNI DEL of the pod's recorded attachment, if it has one; the record goes once
    /// DEL succeeded.
    pub(super) async fn teardown_cni(&self, pod_id: &str) -> Result<(), RuntimeError> {
        let Some(att) = self.meta.get::<Attachment>(CNI, pod_id)? else {
            return Ok(());
        };
        self.cni().del(&att).await.map_err(cni_error)?;
        self.meta.delete(CNI, pod_id)?;
        tracing::debug!(pod_id, network = %att.network.name, "CNI DEL done");
        Ok(())
    }

    /// For a verbose PodSandboxStatus: the pod's CNI network, cached result and a
    /// CHECK run now (while the pod is ready).
    pub(super) async fn network_info(&self, p: &PodRecord) -> Option<serde_json::Value> {
        let att = self.meta.get::<Attachment>(CNI, &p.id).ok()??;
        let check = if p.state != PodState::Ready {
            "not run: the pod is not ready".to_string()
        } else {
            match self.cni().check(&att).await {
                Ok(true) => "passed".to_string(),
                Ok(false) => format!(
                    "not run: cniVersion {} has no CHECK, or the list disables it",
                    att.network.cni_version
                ),
                Err(e) => format!("failed: {e}"),
            }
        };
        Some(serde_json::json!({
            "network": att.network.name,
            "config": att.network.source,
            "result": att.result,
            "check": check,
        }))
    }

    /// At start-up: addresses of pods that are gone or stopped are released, veth
    /// pairs that no ready pod owns are deleted (a crash between setup steps), and the
    /// hostPort rules are rebuilt from the ready pods' records.
    pub(super) async fn reconcile_network(&self) -> Result<(), RuntimeError> {
        let pods = self.pods()?;
        let ready: HashSet<&str> = pods
            .iter()
            .filter(|p| p.state == PodState::Ready)
            .map(|p| p.id.as_str())
            .collect();
        for (ip, owner) in self.meta.list::<String>(Table::IPS)? {
            if !ready.contains(owner.as_str()) {
                tracing::info!(ip, pod_id = %owner, "releasing the address of a pod that is gone");
                self.meta.delete(Table::IPS, &ip)?;
            }
        }
        for (pod_id, _) in self.meta.list::<serde_json::Value>(CNI)? {
            if !ready.contains(pod_id.as_str()) {
                tracing::info!(pod_id, "undoing the CNI attachment of a pod that is gone");
                if let Err(e) = self.teardown_cni(&pod_id).await {
                    tracing::warn!(pod_id, error = %e, "CNI DEL; tried again at the next start");
                }
            }
        }
        if let Some(net) = self.net.get()
            && let PodNetwork::Bridge { bridge, nft } = &**net
        {
            let owned: HashSet<String> = pods
                .iter()
                .filter(|p| p.state == PodState::Ready)
                .filter_map(|p| p.host_veth.clone())
                .collect();
            for link in bridge.pod_links().await? {
                if !owned.contains(&link) {
                    tracing::info!(link, "deleting a veth no pod owns");
                    bridge.teardown(&link).await?;
                }
            }
            if let Some(nft) = nft.clone() {
                let live: Vec<PodPorts> = pods
                    .iter()
                    .filter(|p| p.state == PodState::Ready)
                    .filter_map(|p| {
                        let ip = p.ip?;
                        match host_ports(p) {
                            Ok(mappings) if !mappings.is_empty() => Some(PodPorts {
                                pod_id: p.id.clone(),
                                ip,
                                mappings,
                            }),
                            Ok(_) => None,
                            Err(e) => {
                                tracing::warn!(pod_id = %p.id, error = %e, "skipping host ports");
                                None
                            }
                        }
                    })
                    .collect();
                let n = live.len();
                nft_blocking("rebuild host ports", move || nft.reconcile(&live)).await?;
                tracing::info!(pods = n, "host port rules rebuilt");
            }
        }
        Ok(())
    }
}
