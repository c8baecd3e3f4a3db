//! Outbound masquerade and hostPort DNAT in skiff's own nftables table (`ip skiff`),
//! the built-in equivalent of the CNI bridge plugin's `ipMasq` and the `portmap`
//! plugin.
//!
//! The table, owned by skiffd:
//!
//! ```text
//! table ip skiff {
//!     chain hostports {                       # regular chain, one rule per pod mapping
//!         [ip daddr HOST_IP] tcp dport HOST_PORT dnat to POD_IP:CONTAINER_PORT comment "skiff pod ID"
//!     }
//!     chain postrouting {                     # nat, hook postrouting, priority srcnat
//!         ip saddr CIDR ip daddr != CIDR masquerade           # pods going out
//!         ct status dnat ip saddr CIDR oifname BRIDGE masquerade  # pod → hostPort → pod
//!         ip saddr 127.0.0.0/8 oifname BRIDGE masquerade      # node's 127.0.0.1:hostPort
//!     }
//!     chain prerouting {                      # nat, hook prerouting, priority dstnat
//!         fib daddr type local jump hostports
//!     }
//!     chain output {                          # nat, hook output, priority dstnat
//!         fib daddr type local jump hostports
//!     }
//! }
//! ```
//!
//! Only traffic addressed to the node itself (`fib daddr type local`) is DNATed, in
//! both the prerouting and the output chain, so a pod talking to some other host's port
//! 80 is never captured by a hostPort 80 (the same rule as portmap's
//! `--dst-type LOCAL`). A pod's rules carry its id in their comment: they are found
//! by listing the `hostports` chain and deleted by handle.
//!
//! Everything here is blocking (it runs the `nft` binary with JSON on stdin, built
//! with the `nftables` crate's types): call it from `spawn_blocking`. The `nft`
//! subprocess inherits the calling thread's network namespace.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use ipnet::Ipv4Net;
use nftables::expr::{CT, Payload, PayloadField, Prefix};
use nftables::expr::{Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{JumpTarget, Match, NAT, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The table skiffd owns.
pub const TABLE: &str = "skiff";
/// The regular chain holding every pod's hostPort rules.
pub const HOSTPORTS: &str = "hostports";
/// `priority srcnat` of the ip family.
const SRCNAT: i32 = 100;
/// `priority dstnat` of the ip family.
const DSTNAT: i32 = -100;

/// Errors of masquerade and hostPort handling.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A CRI port mapping the node cannot install.
    #[error("port mapping {mapping}: {reason}")]
    InvalidMapping {
        /// The mapping as the CRI gave it.
        mapping: String,
        /// Why it is refused.
        reason: String,
    },
    /// `nft` failed or could not be run.
    #[error("nftables: {op}: {detail}")]
    Nft {
        /// What was being done, naming the table, chain or pod.
        op: String,
        /// `nft`'s own error text (its stderr), or why it did not run.
        detail: String,
    },
    /// A sysctl or other file could not be written.
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
}

impl NftError {
    /// Whether the error is the caller's: a port mapping that cannot be installed.
    pub fn is_invalid(&self) -> bool {
        matches!(self, NftError::InvalidMapping { .. })
    }
}

/// A hostPort's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One hostPort mapping: traffic for the node's `host_ip:host_port` goes to the pod's
/// `container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The protocol.
    pub protocol: Proto,
    /// The node address it is bound to; `None`: every local address.
    pub host_ip: Option<Ipv4Addr>,
    /// The node's port.
    pub host_port: u16,
    /// The pod's port.
    pub container_port: u16,
}

impl HostPort {
    /// A CRI `PortMapping` (protocol `TCP = 0, UDP = 1, SCTP = 2`); `Ok(None)` when it
    /// asks for no host port (`host_port == 0`, a container port only declared).
    pub fn from_cri(
        protocol: i32,
        container_port: i32,
        host_port: i32,
        host_ip: &str,
    ) -> Result<Option<HostPort>, NftError> {
        if host_port == 0 {
            return Ok(None);
        }
        let proto_name = match protocol {
            0 => "TCP",
            1 => "UDP",
            2 => "SCTP",
            _ => "unknown protocol",
        };
        let invalid = |reason: String| NftError::InvalidMapping {
            mapping: format!(
                "{proto_name} {}:{host_port} -> container port {container_port}",
                if host_ip.is_empty() { "*" } else { host_ip }
            ),
            reason,
        };
        let protocol = match protocol {
            0 => Proto::Tcp,
            1 => Proto::Udp,
            2 => {
                return Err(invalid(
                    "SCTP host ports are not supported (only TCP and UDP)".into(),
                ));
            }
            p => return Err(invalid(format!("protocol {p} is not TCP (0) or UDP (1)"))),
        };
        let host_port = u16::try_from(host_port)
            .map_err(|_| invalid(format!("host port {host_port} is not in 1-65535")))?;
        let container_port = u16::try_from(container_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(format!("container port {container_port} is not in 1-65535")))?;
        let host_ip = match host_ip {
            "" | "0.0.0.0" | "::" => None,
            s => match s.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => Some(ip),
                Ok(std::net::IpAddr::V6(_)) => {
                    return Err(invalid(
                        "IPv6 host IPs are not supported: the pod network is IPv4".into(),
                    ));
                }
                Err(_) => return Err(invalid(format!("host IP {s:?} is not an address"))),
            },
        };
        Ok(Some(HostPort {
            protocol,
            host_ip,
            host_port,
            container_port,
        }))
    }
}

/// A pod's mappings, for [`Nft::reconcile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPorts {
    /// The pod id.
    pub pod_id: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its host ports.
    pub mappings: Vec<HostPort>,
}

/// skiffd's nftables table: masquerade for the pod CIDR and per-pod hostPort DNAT.
#[derive(Debug)]
pub struct Nft {
    table: String,
    cidr: Ipv4Net,
    bridge: String,
    program: PathBuf,
    /// Serialises list-then-delete against other changes.
    lock: Mutex<()>,
}

impl Nft {
    /// Set `route_localnet` on the bridge (so `127.0.0.1:hostPort` can be DNATed to a
    /// pod) and (re)create table `ip skiff` with masquerade for `cidr` and the hostPort
    /// hooks. Existing hostPort rules are kept ([`Nft::reconcile`] rebuilds them). The
    /// bridge must exist.
    pub fn init(cidr: Ipv4Net, bridge: &str) -> Result<Nft, NftError> {
        Self::init_table(TABLE, cidr, bridge)
    }

    /// [`Nft::init`] with another table name (tests).
    pub fn init_table(table: &str, cidr: Ipv4Net, bridge: &str) -> Result<Nft, NftError> {
        let nft = Nft::new(table, cidr, bridge, find_nft());
        nft.set_route_localnet()?;
        if let Err(e) = nft.apply(format!("set up table ip {table}"), &nft.base_batch(false)) {
            // A chain from an older layout (another hook or priority) cannot be changed
            // in place: start the table over.
            tracing::warn!(table, error = %e, "recreating the nftables table");
            nft.apply(format!("recreate table ip {table}"), &nft.base_batch(true))?;
        }
        Ok(nft)
    }

    fn new(table: &str, cidr: Ipv4Net, bridge: &str, program: PathBuf) -> Nft {
        Nft {
            table: table.to_string(),
            cidr: cidr.trunc(),
            bridge: bridge.to_string(),
            program,
            lock: Mutex::new(()),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Install `pod_id`'s hostPort rules, DNAT to `ip`. Nothing to do without mappings.
    pub fn add_pod(
        &self,
        pod_id: &str,
        ip: Ipv4Addr,
        mappings: &[HostPort],
    ) -> Result<(), NftError> {
        if mappings.is_empty() {
            return Ok(());
        }
        let batch: Vec<NfObject<'static>> = self
            .pod_rules(pod_id, ip, mappings)
            .into_iter()
            .map(|r| NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(r))))
            .collect();
        let _g = self.guard();
        self.apply(format!("add host ports of pod {pod_id}"), &nftables(batch))
    }

    /// Remove `pod_id`'s hostPort rules. Idempotent: none, or no table, is fine.
    pub fn remove_pod(&self, pod_id: &str) -> Result<(), NftError> {
        let _g = self.guard();
        let Some(listing) = self.list_hostports()? else {
            return Ok(());
        };
        let handles = pod_rule_handles(&listing, pod_id);
        if handles.is_empty() {
            return Ok(());
        }
        self.apply(
            format!("delete host ports of pod {pod_id}"),
            &self.delete_batch(&handles),
        )
    }

    /// After a restart: make the `hostports` chain hold exactly the rules of `live`
    /// (flush and re-add, in one transaction).
    pub fn reconcile(&self, live: &[PodPorts]) -> Result<(), NftError> {
        let _g = self.guard();
        self.apply(
            format!("rebuild chain ip {} {HOSTPORTS}", self.table),
            &self.reconcile_batch(live),
        )
    }

    /// Delete the whole table (tests, uninstall). Missing is fine.
    pub fn teardown_all(&self) -> Result<(), NftError> {
        let _g = self.guard();
        let table = self.table_obj();
        self.apply(
            format!("delete table ip {}", self.table),
            &nftables(vec![
                add(NfListObject::Table(table.clone())),
                NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table))),
            ]),
        )
    }

    /// The table as `nft -j list table` prints it (diagnostics, tests).
    pub fn list_json(&self) -> Result<String, NftError> {
        self.run(
            format!("list table ip {}", self.table),
            &["-j", "list", "table", "ip", &self.table],
            None,
        )
    }

    fn set_route_localnet(&self) -> Result<(), NftError> {
        let path = Path::new("/proc/sys/net/ipv4/conf")
            .join(&self.bridge)
            .join("route_localnet");
        std::fs::write(&path, "1").map_err(|source| NftError::Io {
            op: "enable route_localnet",
            path,
            source,
        })
    }

    /// The `hostports` chain as JSON; `None` when the table or chain does not exist.
    fn list_hostports(&self) -> Result<Option<serde_json::Value>, NftError> {
        let out = self.run(
            format!("list chain ip {} {HOSTPORTS}", self.table),
            &["-j", "list", "chain", "ip", &self.table, HOSTPORTS],
            None,
        );
        match out {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| NftError::Nft {
                    op: format!("parse chain ip {} {HOSTPORTS}", self.table),
                    detail: e.to_string(),
                }),
            Err(NftError::Nft { detail, .. }) if detail.contains("No such file or directory") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn apply(&self, op: String, batch: &Nftables<'_>) -> Result<(), NftError> {
        let json = serde_json::to_string(batch).map_err(|e| NftError::Nft {
            op: op.clone(),
            detail: format!("encode JSON: {e}"),
        })?;
        tracing::debug!(table = %self.table, %op, "nft -j -f -");
        self.run(op, &["-j", "-f", "-"], Some(&json)).map(drop)
    }

    /// Run `nft ARGS`, feeding `stdin`; its stdout, or its stderr as the error.
    fn run(&self, op: String, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let fail = |detail: String| NftError::Nft {
            op: op.clone(),
            detail,
        };
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("run {}: {e}", self.program.display())))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| fail(format!("write to {}: {e}", self.program.display())))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| fail(format!("wait for {}: {e}", self.program.display())))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim();
            return Err(fail(if err.is_empty() {
                format!("{} exited with {}", self.program.display(), out.status)
            } else {
                err.to_string()
            }));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    // --- Building the JSON (pure) ---

    fn table_obj(&self) -> Table<'static> {
        Table {
            family: NfFamily::IP,
            name: self.table.clone().into(),
            handle: None,
        }
    }

    fn chain(&self, name: &'static str, hook: Option<(NfHook, i32)>) -> Chain<'static> {
        Chain {
            family: NfFamily::IP,
            table: self.table.clone().into(),
            name: name.into(),
            _type: hook.map(|_| NfChainType::NAT),
            hook: hook.map(|(h, _)| h),
            prio: hook.map(|(_, p)| p),
            policy: hook.map(|_| NfChainPolicy::Accept),
            ..Chain::default()
        }
    }

    fn rule(
        &self,
        chain: &'static str,
        expr: Vec<Statement<'static>>,
        comment: Option<String>,
    ) -> Rule<'static> {
        Rule {
            family: NfFamily::IP,
            table: self.table.clone().into(),
            chain: chain.into(),
            expr: expr.into(),
            handle: None,
            index: None,
            comment: comment.map(Into::into),
        }
    }

    /// The commands that set up the table. `recreate`: delete it first (rules and
    /// all); otherwise existing chains are kept, the base chains flushed and refilled,
    /// and `hostports` left alone.
    fn base_batch(&self, recreate: bool) -> Nftables<'static> {
        let mut b = vec![add(NfListObject::Table(self.table_obj()))];
        if recreate {
            b.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(
                self.table_obj(),
            ))));
            b.push(add(NfListObject::Table(self.table_obj())));
        }
        b.push(add(NfListObject::Chain(self.chain(HOSTPORTS, None))));
        let base = [
            ("postrouting", NfHook::Postrouting, SRCNAT),
            ("prerouting", NfHook::Prerouting, DSTNAT),
            ("output", NfHook::Output, DSTNAT),
        ];
        for (name, hook, prio) in base {
            b.push(add(NfListObject::Chain(
                self.chain(name, Some((hook, prio))),
            )));
            b.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(
                self.chain(name, None),
            ))));
        }
        let cidr = || prefix(self.cidr);
        let bridge = || Expression::String(self.bridge.clone().into());
        let rules = [
            (
                "postrouting",
                vec![
                    matches(ip("saddr"), Operator::EQ, cidr()),
                    matches(ip("daddr"), Operator::NEQ, cidr()),
                    masquerade(),
                ],
            ),
            (
                "postrouting",
                vec![
                    matches(
                        ct("status"),
                        Operator::IN,
                        Expression::String("dnat".into()),
                    ),
                    matches(ip("saddr"), Operator::EQ, cidr()),
                    matches(meta(MetaKey::Oifname), Operator::EQ, bridge()),
                    masquerade(),
                ],
            ),
            (
                "postrouting",
                vec![
                    matches(
                        ip("saddr"),
                        Operator::EQ,
                        prefix(Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).expect("valid prefix")),
                    ),
                    matches(meta(MetaKey::Oifname), Operator::EQ, bridge()),
                    masquerade(),
                ],
            ),
            ("prerouting", vec![fib_daddr_local(), jump(HOSTPORTS)]),
            ("output", vec![fib_daddr_local(), jump(HOSTPORTS)]),
        ];
        for (chain, expr) in rules {
            b.push(add(NfListObject::Rule(self.rule(chain, expr, None))));
        }
        nftables(b)
    }

    /// One DNAT rule per mapping, commented with the pod id.
    fn pod_rules(&self, pod_id: &str, ip: Ipv4Addr, mappings: &[HostPort]) -> Vec<Rule<'static>> {
        mappings
            .iter()
            .map(|m| {
                let mut expr = Vec::new();
                if let Some(host_ip) = m.host_ip {
                    expr.push(matches(
                        self::ip("daddr"),
                        Operator::EQ,
                        Expression::String(host_ip.to_string().into()),
                    ));
                }
                expr.push(matches(
                    payload(m.protocol.name(), "dport"),
                    Operator::EQ,
                    Expression::Number(u32::from(m.host_port)),
                ));
                expr.push(Statement::DNAT(Some(NAT {
                    addr: Some(Expression::String(ip.to_string().into())),
                    family: None,
                    port: Some(Expression::Number(u32::from(m.container_port))),
                    flags: None,
                })));
                self.rule(HOSTPORTS, expr, Some(pod_comment(pod_id)))
            })
            .collect()
    }

    fn reconcile_batch(&self, live: &[PodPorts]) -> Nftables<'static> {
        let mut b = vec![
            add(NfListObject::Table(self.table_obj())),
            add(NfListObject::Chain(self.chain(HOSTPORTS, None))),
            NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(
                self.chain(HOSTPORTS, None),
            ))),
        ];
        for p in live {
            b.extend(
                self.pod_rules(&p.pod_id, p.ip, &p.mappings)
                    .into_iter()
                    .map(|r| add(NfListObject::Rule(r))),
            );
        }
        nftables(b)
    }

    fn delete_batch(&self, handles: &[u32]) -> Nftables<'static> {
        nftables(
            handles
                .iter()
                .map(|h| {
                    let mut r = self.rule(HOSTPORTS, Vec::new(), None);
                    r.handle = Some(*h);
                    NfObject::CmdObject(NfCmd::Delete(NfListObject::Rule(r)))
                })
                .collect(),
        )
    }
}

/// The comment that marks a pod's rules.
pub fn pod_comment(pod_id: &str) -> String {
    format!("skiff pod {pod_id}")
}

/// Handles of the rules commented for `pod_id` in an `nft -j list` output. Read as
/// plain JSON: only `comment` and `handle` matter, and a rule someone added by hand
/// must not make the listing unreadable.
fn pod_rule_handles(listing: &serde_json::Value, pod_id: &str) -> Vec<u32> {
    let want = pod_comment(pod_id);
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["comment"].as_str() == Some(want.as_str()))
        .filter_map(|r| r["handle"].as_u64())
        .filter_map(|h| u32::try_from(h).ok())
        .collect()
}

/// `nft` from `PATH`, else the usual sbin directories (daemons often run without
/// them on `PATH`).
fn find_nft() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nft"))
}

fn nftables(objects: Vec<NfObject<'static>>) -> Nftables<'static> {
    Nftables {
        objects: objects.into(),
    }
}

fn add(o: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(o))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn ip(field: &'static str) -> Expression<'static> {
    payload("ip", field)
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.network().to_string().into())),
        len: u32::from(net.prefix_len()),
    }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn masquerade() -> Statement<'static> {
    Statement::Masquerade(None)
}

fn jump(target: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: target.into(),
    })
}

/// `fib daddr type local`: the packet is addressed to the node itself.
fn fib_daddr_local() -> Statement<'static> {
    matches(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: [FibFlag::Daddr].into_iter().collect(),
        })),
        Operator::EQ,
        Expression::String("local".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nft() -> Nft {
        Nft::new(
            "skiff",
            "10.88.0.0/16".parse().unwrap(),
            "skiff0",
            PathBuf::from("nft"),
        )
    }

    fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn cri_mappings_are_checked() {
        let tcp = HostPort::from_cri(0, 8080, 18080, "").unwrap().unwrap();
        assert_eq!(
            tcp,
            HostPort {
                protocol: Proto::Tcp,
                host_ip: None,
                host_port: 18080,
                container_port: 8080
            }
        );
        let udp = HostPort::from_cri(1, 53, 5353, "192.168.1.5")
            .unwrap()
            .unwrap();
        assert_eq!(udp.protocol, Proto::Udp);
        assert_eq!(udp.host_ip, Some(Ipv4Addr::new(192, 168, 1, 5)));
        assert_eq!(
            HostPort::from_cri(0, 80, 80, "0.0.0.0")
                .unwrap()
                .unwrap()
                .host_ip,
            None
        );
        // A declared container port without a host port: nothing to do, whatever it is.
        assert_eq!(HostPort::from_cri(2, 0, 0, "").unwrap(), None);
        for (proto, cport, hport, ip, needle) in [
            (2, 80, 80, "", "SCTP"),
            (7, 80, 80, "", "protocol 7"),
            (0, 80, 70000, "", "host port 70000"),
            (0, 80, -1, "", "host port -1"),
            (0, 0, 80, "", "container port 0"),
            (0, 65536, 80, "", "container port 65536"),
            (0, 80, 80, "fe80::1", "IPv6"),
            (0, 80, 80, "nonsense", "not an address"),
        ] {
            let e = HostPort::from_cri(proto, cport, hport, ip).unwrap_err();
            assert!(e.is_invalid(), "{e}");
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn base_table_rules() {
        let b = to_json(&nft().base_batch(false));
        let cmds = b["nftables"].as_array().unwrap();
        assert_eq!(
            cmds[0],
            json!({"add": {"table": {"family": "ip", "name": "skiff"}}})
        );
        assert_eq!(
            cmds[1],
            json!({"add": {"chain": {"family": "ip", "table": "skiff", "name": "hostports"}}})
        );
        assert_eq!(
            cmds[2],
            json!({"add": {"chain": {"family": "ip", "table": "skiff", "name": "postrouting",
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}})
        );
        assert_eq!(
            cmds[3],
            json!({"flush": {"chain": {"family": "ip", "table": "skiff", "name": "postrouting"}}})
        );
        assert_eq!(cmds[4]["add"]["chain"]["prio"], -100);
        assert_eq!(cmds[4]["add"]["chain"]["hook"], "prerouting");
        assert_eq!(cmds[6]["add"]["chain"]["hook"], "output");
        let rules: Vec<_> = cmds
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| (r["chain"].as_str().unwrap(), r["expr"].clone()))
            .collect();
        let cidr = json!({"prefix": {"addr": "10.88.0.0", "len": 16}});
        assert_eq!(
            rules[0],
            (
                "postrouting",
                json!([
                    {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": cidr, "op": "=="}},
                    {"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": cidr, "op": "!="}},
                    {"masquerade": null}
                ])
            )
        );
        assert_eq!(
            rules[1].1[0],
            json!({"match": {"left": {"ct": {"key": "status"}}, "right": "dnat", "op": "in"}})
        );
        assert_eq!(
            rules[2].1,
            json!([
                {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}, "op": "=="}},
                {"match": {"left": {"meta": {"key": "oifname"}}, "right": "skiff0", "op": "=="}},
                {"masquerade": null}
            ])
        );
        let local_jump = json!([
            {"match": {"left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local", "op": "=="}},
            {"jump": {"target": "hostports"}}
        ]);
        assert_eq!(rules[3], ("prerouting", local_jump.clone()));
        assert_eq!(rules[4], ("output", local_jump));
        assert_eq!(rules.len(), 5);

        let again = to_json(&nft().base_batch(true));
        assert_eq!(
            again["nftables"].as_array().unwrap()[..3],
            json!([
                {"add": {"table": {"family": "ip", "name": "skiff"}}},
                {"delete": {"table": {"family": "ip", "name": "skiff"}}},
                {"add": {"table": {"family": "ip", "name": "skiff"}}}
            ])
            .as_array()
            .unwrap()[..]
        );
    }

    #[test]
    fn a_cidr_with_host_bits_is_masqueraded_as_its_network() {
        let n = Nft::new(
            "t",
            "10.88.0.1/16".parse().unwrap(),
            "b",
            PathBuf::from("nft"),
        );
        let b = to_json(&n.base_batch(false));
        assert!(
            b.to_string().contains(r#"{"addr":"10.88.0.0","len":16}"#),
            "{b}"
        );
    }

    #[test]
    fn pod_rules_dnat_with_the_pod_id() {
        let id = "ab".repeat(32);
        let rules = nft().pod_rules(
            &id,
            Ipv4Addr::new(10, 88, 0, 2),
            &[
                HostPort {
                    protocol: Proto::Tcp,
                    host_ip: None,
                    host_port: 18080,
                    container_port: 8080,
                },
                HostPort {
                    protocol: Proto::Udp,
                    host_ip: Some(Ipv4Addr::new(192, 168, 77, 1)),
                    host_port: 5353,
                    container_port: 53,
                },
            ],
        );
        assert_eq!(
            to_json(&rules[0]),
            json!({"family": "ip", "table": "skiff", "chain": "hostports",
            "comment": format!("skiff pod {id}"),
            "expr": [
                {"match": {"left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 18080, "op": "=="}},
                {"dnat": {"addr": "10.88.0.2", "port": 8080}}
            ]})
        );
        assert_eq!(
            to_json(&rules[1])["expr"],
            json!([
                {"match": {"left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.77.1", "op": "=="}},
                {"match": {"left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 5353, "op": "=="}},
                {"dnat": {"addr": "10.88.0.2", "port": 53}}
            ])
        );
        // nft's comment limit is 128 bytes.
        assert!(pod_comment(&id).len() <= 128);
    }

    #[test]
    fn reconcile_flushes_then_adds_every_live_pod() {
        let live = [
            PodPorts {
                pod_id: "a".into(),
                ip: Ipv4Addr::new(10, 88, 0, 2),
                mappings: vec![HostPort {
                    protocol: Proto::Tcp,
                    host_ip: None,
                    host_port: 80,
                    container_port: 8080,
                }],
            },
            PodPorts {
                pod_id: "b".into(),
                ip: Ipv4Addr::new(10, 88, 0, 3),
                mappings: vec![],
            },
        ];
        let b = to_json(&nft().reconcile_batch(&live));
        let cmds = b["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 4);
        assert_eq!(
            cmds[2],
            json!({"flush": {"chain": {"family": "ip", "table": "skiff", "name": "hostports"}}})
        );
        assert_eq!(cmds[3]["add"]["rule"]["comment"], "skiff pod a");
    }

    #[test]
    fn pod_rules_are_found_by_comment_and_deleted_by_handle() {
        // As `nft -j list chain ip skiff hostports` prints it (nft 1.0.6).
        let listing = json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"chain": {"family": "ip", "table": "skiff", "name": "hostports", "handle": 1}},
            {"rule": {"family": "ip", "table": "skiff", "chain": "hostports", "handle": 8,
                "comment": "skiff pod abc", "expr": [
                    {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 18080}},
                    {"dnat": {"addr": "10.88.0.2", "port": 8080}}]}},
            {"rule": {"family": "ip", "table": "skiff", "chain": "hostports", "handle": 9,
                "comment": "skiff pod abcd", "expr": []}},
            {"rule": {"family": "ip", "table": "skiff", "chain": "hostports", "handle": 10,
                "expr": [{"xt": null}]}},
            {"rule": {"family": "ip", "table": "skiff", "chain": "hostports", "handle": 11,
                "comment": "skiff pod abc", "expr": []}}
        ]});
        assert_eq!(pod_rule_handles(&listing, "abc"), vec![8, 11]);
        assert_eq!(pod_rule_handles(&listing, "zzz"), Vec::<u32>::new());
        assert_eq!(
            to_json(&nft().delete_batch(&[8, 11])),
            json!({"nftables": [
                {"delete": {"rule": {"family": "ip", "table": "skiff", "chain": "hostports", "expr": [], "handle": 8}}},
                {"delete": {"rule": {"family": "ip", "table": "skiff", "chain": "hostports", "expr": [], "handle": 11}}}
            ]})
        );
    }
}
