//! skiff's pod networking.
//!
//! Built in (this module), in-process over netlink (no exec on the fast path): a
//! bridge in the daemon's network namespace with the gateway address, one veth pair
//! per pod with the pod end moved into the pod's namespace as `eth0`, an address from
//! skiff's IPAM and a default route via the gateway; [`nft`] adds masquerade and
//! hostPorts. [`cni`] is the alternative: CNI plugins run per the CNI spec.
//!
//! Netlink sockets belong to the network namespace of the thread that opens them, so
//! the pod-side configuration runs on a short-lived thread that has entered the pod's
//! namespace (`setns`), never by forking the threaded daemon.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoPortData, InfoPortKind, InfoVeth,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

pub mod cni;
pub mod nft;

/// Errors of pod networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done, naming the link or address.
        op: String,
        /// The cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// A file or namespace operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Every address of the pod CIDR is taken.
    #[error("pod CIDR {cidr} has no free address")]
    Exhausted {
        /// The CIDR.
        cidr: Ipv4Net,
    },
    /// The CIDR cannot hold pods (too small).
    #[error("pod CIDR {cidr} is too small for a gateway and pods")]
    TooSmall {
        /// The CIDR.
        cidr: Ipv4Net,
    },
    /// CNI mode: the configuration or a plugin.
    #[error(transparent)]
    Cni(#[from] cni::CniError),
}

impl NetError {
    /// Whether the error means the pod network is out of addresses.
    pub fn is_exhausted(&self) -> bool {
        matches!(self, NetError::Exhausted { .. })
    }
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Netlink { op, source }
}

/// The bridge network's settings.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The bridge's name, e.g. `skiff0`.
    pub bridge: String,
    /// The pod CIDR; its first address is the gateway, on the bridge.
    pub cidr: Ipv4Net,
    /// The MTU of the bridge and the veth pairs.
    pub mtu: u32,
}

impl BridgeConfig {
    /// The gateway: the first address of the CIDR.
    pub fn gateway(&self) -> Result<Ipv4Addr, NetError> {
        self.cidr
            .hosts()
            .next()
            .ok_or(NetError::TooSmall { cidr: self.cidr })
    }
}

/// The lowest free pod address in `cidr` (after the gateway) not in `used`.
pub fn next_free(cidr: Ipv4Net, used: &HashSet<Ipv4Addr>) -> Result<Ipv4Addr, NetError> {
    let mut hosts = cidr.hosts();
    hosts.next().ok_or(NetError::TooSmall { cidr })?;
    hosts
        .find(|ip| !used.contains(ip))
        .ok_or(NetError::Exhausted { cidr })
}

/// The pod's end of its veth pair, inside the pod's network namespace.
pub const POD_IFNAME: &str = "eth0";

/// The host-side veth name of a pod (≤ 15 bytes).
pub fn host_veth(pod_id: &str) -> String {
    format!("sk{}", &pod_id[..pod_id.len().min(12)])
}

/// A pod's network, as set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNet {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: Ipv4Addr,
    /// The host end of the veth pair.
    pub host_veth: String,
}

/// The built-in bridge network, in the namespace skiffd runs in.
#[derive(Debug, Clone)]
pub struct BridgeNetwork {
    cfg: BridgeConfig,
    handle: Handle,
    bridge_index: u32,
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(nl(format!("look up link {name}"))(e)),
    }
}

impl BridgeNetwork {
    /// Connect to netlink in the current namespace and make sure the bridge exists,
    /// is up and carries the gateway address; turn on IPv4 forwarding. Call from
    /// inside a tokio runtime.
    pub async fn init(cfg: BridgeConfig) -> Result<BridgeNetwork, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
            op: "open netlink socket",
            path: PathBuf::new(),
            source,
        })?;
        tokio::spawn(conn);
        let gateway = cfg.gateway()?;
        let bridge_index = match link_index(&handle, &cfg.bridge).await? {
            Some(i) => i,
            None => {
                handle
                    .link()
                    .add(LinkBridge::new(&cfg.bridge).mtu(cfg.mtu).build())
                    .execute()
                    .await
                    .map_err(nl(format!("create bridge {}", cfg.bridge)))?;
                link_index(&handle, &cfg.bridge)
                    .await?
                    .ok_or_else(|| NetError::Io {
                        op: "find the new bridge",
                        path: PathBuf::from(&cfg.bridge),
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    })?
            }
        };
        let has_gateway = {
            let mut addrs = handle
                .address()
                .get()
                .set_link_index_filter(bridge_index)
                .execute();
            let mut found = false;
            while let Some(a) = addrs
                .try_next()
                .await
                .map_err(nl(format!("list addresses of {}", cfg.bridge)))?
            {
                found |= a.attributes.iter().any(|attr| {
                    matches!(attr, rtnetlink::packet_route::address::AddressAttribute::Address(ip) if *ip == std::net::IpAddr::V4(gateway))
                });
            }
            found
        };
        if !has_gateway {
            handle
                .address()
                .add(bridge_index, gateway.into(), cfg.cidr.prefix_len())
                .execute()
                .await
                .map_err(nl(format!("add {gateway} to {}", cfg.bridge)))?;
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(bridge_index).up().build())
            .execute()
            .await
            .map_err(nl(format!("bring up {}", cfg.bridge)))?;
        let fwd = Path::new("/proc/sys/net/ipv4/ip_forward");
        std::fs::write(fwd, "1").map_err(|source| NetError::Io {
            op: "enable forwarding",
            path: fwd.to_path_buf(),
            source,
        })?;
        Ok(BridgeNetwork {
            cfg,
            handle,
            bridge_index,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    /// Wire the pod whose network namespace is pinned at `netns` with address `ip`.
    /// On failure nothing of the pod's stays on the host.
    pub async fn setup(
        &self,
        pod_id: &str,
        netns: &Path,
        ip: Ipv4Addr,
    ) -> Result<PodNet, NetError> {
        let host = host_veth(pod_id);
        // A half-made pair from a crash is replaced.
        self.teardown(&host).await?;
        let result = self.setup_inner(&host, netns, ip).await;
        if result.is_err() {
            let _ = self.teardown(&host).await;
        }
        result
    }

    async fn setup_inner(
        &self,
        host: &str,
        netns: &Path,
        ip: Ipv4Addr,
    ) -> Result<PodNet, NetError> {
        let h = &self.handle;
        let ns = std::fs::File::open(netns).map_err(|source| NetError::Io {
            op: "open network namespace",
            path: netns.to_path_buf(),
            source,
        })?;
        // One message makes the pair with the pod's end already named eth0 inside the
        // pod's namespace, and the host end on the bridge and up: moving a link between
        // namespaces afterwards costs an RCU grace period (~20 ms here).
        let pod_end = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
            .name(POD_IFNAME.to_string())
            .mtu(self.cfg.mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        h.link()
            .add(
                LinkVeth::new(host, POD_IFNAME)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(pod_end)))
                    .mtu(self.cfg.mtu)
                    .controller(self.bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!(
                "create veth {host} with its peer in {}",
                netns.display()
            )))?;
        let host_index = link_index(h, host).await?.ok_or_else(|| NetError::Io {
            op: "find veth",
            path: PathBuf::from(host),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        // Hairpin: a pod's packet to its own hostPort is DNATed back out of the port
        // it came in on (with br_netfilter), which a bridge port refuses by default.
        h.link()
            .set_port(
                LinkUnspec::new_with_index(host_index)
                    .set_port_kind(InfoPortKind::Bridge)
                    .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                        true,
                    )]))
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("hairpin mode on {host}")))?;
        let gateway = self.cfg.gateway()?;
        let prefix = self.cfg.cidr.prefix_len();
        let netns = netns.to_path_buf();
        tokio::task::spawn_blocking(move || configure_in_ns(ns, &netns, ip, prefix, gateway))
            .await
            .map_err(|e| NetError::Io {
                op: "pod network task",
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(PodNet {
            ip,
            prefix,
            gateway,
            host_veth: host.to_string(),
        })
    }

    /// Remove the pod's veth pair (deleting the host end removes both). Missing is fine.
    pub async fn teardown(&self, host_veth: &str) -> Result<(), NetError> {
        if let Some(index) = link_index(&self.handle, host_veth).await? {
            match self.handle.link().del(index).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => {}
                Err(e) => return Err(nl(format!("delete veth {host_veth}"))(e)),
            }
        }
        Ok(())
    }

    /// Host-side veth names of every pod link on the bridge (for leak checks).
    pub async fn pod_links(&self) -> Result<Vec<String>, NetError> {
        use rtnetlink::packet_route::link::LinkAttribute;
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(nl("list links"))? {
            // Only ports of this bridge: another skiffd's bridge and veths in the same
            // namespace (or anything else named sk…) are not ours.
            let ours = l
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == self.bridge_index));
            if !ours {
                continue;
            }
            for attr in &l.attributes {
                if let LinkAttribute::IfName(n) = attr
                    && n.starts_with("sk")
                {
                    out.push(n.clone());
                }
            }
        }
        Ok(out)
    }
}

/// On a fresh thread inside the pod's network namespace: give `eth0` its address,
/// bring it up and route via the gateway.
fn configure_in_ns(
    ns: std::fs::File,
    netns: &Path,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), NetError> {
    let io = |op: &'static str| {
        let path = netns.to_path_buf();
        move |e: std::io::Error| NetError::Io {
            op,
            path,
            source: e,
        }
    };
    // Runs on a fresh thread so the blocking pool's threads never change namespace.
    let netns_owned = netns.to_path_buf();
    let worker = std::thread::Builder::new()
        .name("skiff-podnet".into())
        .spawn(move || -> Result<(), NetError> {
            let path = netns_owned;
            rustix::thread::move_into_link_name_space(
                rustix::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| NetError::Io {
                op: "enter network namespace",
                path: path.clone(),
                source: e.into(),
            })?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|source| NetError::Io {
                    op: "pod network runtime",
                    path: path.clone(),
                    source,
                })?;
            rt.block_on(async move {
                let (conn, h, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
                    op: "open netlink socket in",
                    path: path.clone(),
                    source,
                })?;
                tokio::spawn(conn);
                let index = link_index(&h, POD_IFNAME)
                    .await?
                    .ok_or_else(|| NetError::Io {
                        op: "find the pod's veth end in",
                        path: path.clone(),
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    })?;
                h.address()
                    .add(index, ip.into(), prefix)
                    .execute()
                    .await
                    .map_err(nl(format!("add {ip}/{prefix} to eth0")))?;
                h.link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
                    .map_err(nl("bring up eth0"))?;
                h.route()
                    .add(
                        RouteMessageBuilder::<Ipv4Addr>::new()
                            .gateway(gateway)
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(nl(format!("default route via {gateway}")))?;
                Ok(())
            })
        })
        .map_err(io("spawn pod network thread for"))?;
    worker.join().unwrap_or_else(|_| {
        Err(NetError::Io {
            op: "pod network thread panicked for",
            path: netns.to_path_buf(),
            source: std::io::Error::other("panic"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_arithmetic() {
        let cidr: Ipv4Net = "10.88.0.0/29".parse().unwrap();
        let mut used = HashSet::new();
        let cfg = BridgeConfig {
            bridge: "b".into(),
            cidr,
            mtu: 1500,
        };
        assert_eq!(cfg.gateway().unwrap(), Ipv4Addr::new(10, 88, 0, 1));
        for want in 2..=6 {
            let ip = next_free(cidr, &used).unwrap();
            assert_eq!(ip, Ipv4Addr::new(10, 88, 0, want));
            used.insert(ip);
        }
        assert!(next_free(cidr, &used).unwrap_err().is_exhausted());
        used.remove(&Ipv4Addr::new(10, 88, 0, 4));
        assert_eq!(next_free(cidr, &used).unwrap(), Ipv4Addr::new(10, 88, 0, 4));
        let tiny: Ipv4Net = "10.0.0.0/32".parse().unwrap();
        assert!(next_free(tiny, &HashSet::new()).is_err());
    }

    #[test]
    fn veth_names_fit_ifnamsiz() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(host_veth(id).len() <= 15);
        assert_eq!(host_veth(id), "sk0123456789ab");
    }
}
