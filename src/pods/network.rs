//! Pod networking glue: the built-in bridge (crates/net) plus IPAM persisted in the
//! metadata store (`ips` table: address → pod id), so an address is never handed out
//! twice, also across a SIGKILL of skiffd; and skiff's nftables table (masquerade for
//! the pod CIDR, hostPort DNAT per pod), rebuilt from the pod records at start-up.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use skiff_meta::Table;
use skiff_net::nft::{HostPort, Nft, NftError, PodPorts};
use skiff_net::{BridgeConfig, BridgeNetwork};

use super::records::{PodRecord, PodState};
use super::{Runtime, RuntimeError};
use crate::config::NetworkMode;

/// The built-in pod network: the bridge, and nftables for masquerade and hostPorts
/// (`None` when nftables could not be set up; `NetworkReady` then says why).
pub(super) struct PodNetwork {
    bridge: BridgeNetwork,
    nft: Option<Arc<Nft>>,
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
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(NftError::Nft {
            op: op.to_string(),
            detail: format!("task failed: {e}"),
        })
    })
}

impl Runtime {
    /// Bring up the bridge network; the problem for `NetworkReady` if it cannot be.
    pub async fn init_network(&self) -> Option<String> {
        if self.config.network_mode == NetworkMode::Cni {
            return Some(
                "network.mode = \"cni\" is configured but CNI execution is not implemented yet; \
                 pods get a network namespace with loopback only"
                    .into(),
            );
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
        let _ = self.net.set(Arc::new(PodNetwork { bridge, nft }));
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

    /// Wire a pod that has its own network namespace; records ip and veth.
    /// Its hostPorts are DNATed to it; on failure the caller tears down what was made.
    pub(super) async fn setup_network(&self, rec: &mut PodRecord) -> Result<(), RuntimeError> {
        let (Some(net), Some(ns)) = (self.net.get().cloned(), rec.ns.net.clone()) else {
            return Ok(());
        };
        // Refused before anything is allocated.
        let ports = host_ports(rec)?;
        let nft = match (&net.nft, ports.is_empty()) {
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
        let ip = self.allocate_ip(&net.bridge, &rec.id)?;
        rec.ip = Some(ip);
        rec.host_veth = Some(skiff_net::host_veth(&rec.id));
        self.save_pod(rec)?;
        net.bridge.setup(&rec.id, &ns, ip).await?;
        if let Some(nft) = nft {
            let id = rec.id.clone();
            nft_blocking("add host ports", move || nft.add_pod(&id, ip, &ports)).await?;
            tracing::debug!(pod_id = %rec.id, "host ports mapped");
        }
        Ok(())
    }

    /// Undo a pod's network: hostPort rules, veth pair and addresses. Idempotent.
    pub(super) async fn teardown_network(&self, p: &PodRecord) {
        if let Some(net) = self.net.get() {
            if let Some(nft) = net.nft.clone()
                && wants_host_ports(p)
            {
                let id = p.id.clone();
                if let Err(e) = nft_blocking("remove host ports", move || nft.remove_pod(&id)).await
                {
                    tracing::warn!(pod_id = %p.id, error = %e, "remove host ports");
                }
            }
            if let Some(veth) = &p.host_veth
                && let Err(e) = net.bridge.teardown(veth).await
            {
                tracing::warn!(pod_id = %p.id, error = %e, "tear down pod network");
            }
        }
        self.release_ips(&p.id);
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
        if let Some(net) = self.net.get() {
            let owned: HashSet<String> = pods
                .iter()
                .filter(|p| p.state == PodState::Ready)
                .filter_map(|p| p.host_veth.clone())
                .collect();
            for link in net.bridge.pod_links().await? {
                if !owned.contains(&link) {
                    tracing::info!(link, "deleting a veth no pod owns");
                    net.bridge.teardown(&link).await?;
                }
            }
            if let Some(nft) = net.nft.clone() {
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
