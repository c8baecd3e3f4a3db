//! Pod networking glue: the built-in bridge (crates/net) plus IPAM persisted in the
//! metadata store (`ips` table: address → pod id), so an address is never handed out
//! twice, also across a SIGKILL of skiffd.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use skiff_meta::Table;
use skiff_net::{BridgeConfig, BridgeNetwork};

use super::records::{PodRecord, PodState};
use super::{Runtime, RuntimeError};
use crate::config::NetworkMode;

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
        match BridgeNetwork::init(cfg).await {
            Ok(net) => {
                tracing::info!(bridge = %self.config.bridge, cidr = %cidr, "pod network ready");
                let _ = self.net.set(Arc::new(net));
                None
            }
            Err(e) => Some(format!("bridge {}: {e}", self.config.bridge)),
        }
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
    pub(super) async fn setup_network(&self, rec: &mut PodRecord) -> Result<(), RuntimeError> {
        let (Some(net), Some(ns)) = (self.net.get().cloned(), rec.ns.net.clone()) else {
            return Ok(());
        };
        let ip = self.allocate_ip(&net, &rec.id)?;
        rec.ip = Some(ip);
        rec.host_veth = Some(skiff_net::host_veth(&rec.id));
        self.save_pod(rec)?;
        net.setup(&rec.id, &ns, ip).await?;
        Ok(())
    }

    /// Undo a pod's network: veth pair and addresses. Idempotent.
    pub(super) async fn teardown_network(&self, p: &PodRecord) {
        if let (Some(net), Some(veth)) = (self.net.get(), &p.host_veth)
            && let Err(e) = net.teardown(veth).await
        {
            tracing::warn!(pod_id = %p.id, error = %e, "tear down pod network");
        }
        self.release_ips(&p.id);
    }

    /// At start-up: addresses of pods that are gone or stopped are released, and veth
    /// pairs that no ready pod owns are deleted (a crash between setup steps).
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
            for link in net.pod_links().await? {
                if !owned.contains(&link) {
                    tracing::info!(link, "deleting a veth no pod owns");
                    net.teardown(&link).await?;
                }
            }
        }
        Ok(())
    }
}
