//! End-to-end: outbound masquerade and hostPort mappings (skiff's nftables table),
//! through skiffd's CRI socket with real pods. skiffd runs in a test network namespace
//! (the "node"); a second namespace, wired to it with a veth pair, plays another host.
//! Needs root.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::RegistryEnv;
use common::net::{
    create_and_start, ctr_config, exec, no_answer, pod_config, pod_ip, port, run_pod, wait_http,
    wget,
};
use skiff_cri::api;
use skiff_cri::client::CriClient;
use skiff_testkit::NetNs;

/// The node's address towards the other host, and the other host's.
const NODE_EXT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

/// `nft list table ip skiff` in skiffd's namespace (empty when there is no table).
fn ruleset(env: &RegistryEnv) -> String {
    let out = env
        .netns
        .command("nft")
        .args(["list", "table", "ip", "skiff"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft(env: &RegistryEnv, args: &[&str]) {
    let out = env.netns.command("nft").args(args).output().unwrap();
    assert!(out.status.success(), "nft {args:?}: {out:?}");
}

/// Another host: a namespace joined to skiffd's by the veth pair `ext0` (node side,
/// 192.168.77.1/24) — `ext1` (192.168.77.2/24). It has no route to the pod CIDR, so
/// a pod reaches it only masqueraded. Dropping it deletes the pair and the namespace.
struct Outside {
    ns: NetNs,
    node_ns: String,
}

impl Outside {
    fn create(env: &RegistryEnv) -> Outside {
        let outside = Outside {
            ns: NetNs::create("outside").expect("create outside netns"),
            node_ns: env.netns.name().to_string(),
        };
        let (node, other) = (outside.node_ns.as_str(), outside.ns.name());
        let node_addr = format!("{NODE_EXT}/24");
        let other_addr = format!("{OUTSIDE}/24");
        for args in [
            vec![
                "-n", node, "link", "add", "ext0", "type", "veth", "peer", "name", "ext1", "netns",
                other,
            ],
            vec!["-n", node, "addr", "add", &node_addr, "dev", "ext0"],
            vec!["-n", node, "link", "set", "ext0", "up"],
            vec!["-n", other, "addr", "add", &other_addr, "dev", "ext1"],
            vec!["-n", other, "link", "set", "ext1", "up"],
        ] {
            let out = std::process::Command::new("ip")
                .args(&args)
                .output()
                .unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        // The namespace (dropped next) takes its end with it; this end goes explicitly.
        let _ = std::process::Command::new("ip")
            .args(["-n", &self.node_ns, "link", "del", "ext0"])
            .output();
    }
}

/// Accept one connection on `listener` within 8 s: the peer's address and what it sent.
fn accept_one(listener: TcpListener) -> std::thread::JoinHandle<Option<(SocketAddr, String)>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        loop {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut text = String::new();
                    let _ = s.read_to_string(&mut text);
                    return Some((peer, text));
                }
                Err(_) if start.elapsed() < Duration::from_secs(8) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => return None,
            }
        }
    })
}

async fn ping_outside(c: &mut CriClient, ctr: &str) -> i32 {
    exec(
        c,
        ctr,
        &["ping", "-c", "1", "-W", "3", &OUTSIDE.to_string()],
        10,
    )
    .await
    .exit_code
}

#[tokio::test]
async fn host_ports_and_masquerade_work_and_survive_a_restart() {
    let Some((mut env, mut c)) =
        common::net::setup("host_ports_and_masquerade_work_and_survive_a_restart", "").await
    else {
        return;
    };
    let outside = Outside::create(&env);
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config(
        "web",
        &logs,
        vec![
            port(api::Protocol::Tcp, 8080, 18080, ""),
            // Bound to the node's outside address only.
            port(api::Protocol::Tcp, 8080, 18081, &NODE_EXT.to_string()),
            // Declared, not published.
            port(api::Protocol::Tcp, 9999, 0, ""),
        ],
    );
    let pod = run_pod(&mut c, &pod_cfg).await.expect("RunPodSandbox");
    let ip = pod_ip(&mut c, &pod).await;
    let web = create_and_start(
        &mut c,
        &pod,
        &pod_cfg,
        ctr_config("web", &["httpd", "-f", "-p", "8080", "-h", "/www"]),
    )
    .await;

    let rules = ruleset(&env);
    eprintln!("--- nft list table ip skiff ---\n{rules}");
    assert!(
        rules.contains(&format!(
            "tcp dport 18080 dnat to {ip}:8080 comment \"skiff pod {pod}\""
        )),
        "{rules}"
    );
    assert!(
        rules.contains(&format!(
            "ip daddr {NODE_EXT} tcp dport 18081 dnat to {ip}:8080"
        )),
        "{rules}"
    );
    assert!(!rules.contains("9999"), "{rules}");

    // (1) From the node itself, over loopback and over its own outside address.
    wait_http(&env.netns, "127.0.0.1:18080");
    wait_http(&env.netns, &format!("{NODE_EXT}:18080"));
    // (2) From the other host.
    wait_http(&outside.ns, &format!("{NODE_EXT}:18080"));
    wait_http(&outside.ns, &format!("{NODE_EXT}:18081"));
    // The mapping bound to 192.168.77.1 does not answer on loopback.
    assert!(no_answer(&env.netns, "127.0.0.1:18081"));
    // Another pod reaches the hostPort via the node's gateway address; masqueraded,
    // so the reply comes back through the node's conntrack (also when br_netfilter
    // makes the DNATed packet bridged).
    let peer_cfg = pod_config("peer", &logs, vec![]);
    let peer = run_pod(&mut c, &peer_cfg)
        .await
        .expect("RunPodSandbox peer");
    let peer_ctr = create_and_start(
        &mut c,
        &peer,
        &peer_cfg,
        ctr_config("peer", &["sleep", "3600"]),
    )
    .await;
    let (code, body, err) = wget(&mut c, &peer_ctr, "http://10.88.0.1:18080/index.html").await;
    assert_eq!((code, body.as_str()), (0, "hello from the pod\n"), "{err}");

    // Hairpin: the pod reaches its own hostPort through the node.
    let (code, body, err) = wget(&mut c, &web, "http://10.88.0.1:18080/index.html").await;
    assert_eq!(
        (code, body.as_str()),
        (0, "hello from the pod\n"),
        "hairpin: {err}"
    );

    // (3) Outbound: the other host sees the node's address, not the pod's.
    async fn pod_to_outside(
        outside: &Outside,
        c: &mut CriClient,
        ctr: &str,
    ) -> (i32, Option<(SocketAddr, String)>) {
        let listener = outside
            .ns
            .run(|| TcpListener::bind((OUTSIDE, 9000)))
            .unwrap();
        let accepted = accept_one(listener);
        let r = exec(
            c,
            ctr,
            &[
                "sh",
                "-c",
                &format!("echo from-pod | timeout 5 nc -w 3 {OUTSIDE} 9000"),
            ],
            10,
        )
        .await;
        let got = tokio::task::spawn_blocking(move || accepted.join().unwrap())
            .await
            .unwrap();
        (r.exit_code, got)
    }
    let (code, got) = pod_to_outside(&outside, &mut c, &web).await;
    let (peer, text) = got.expect("the pod's connection never arrived");
    assert_eq!(code, 0);
    assert_eq!(peer.ip(), std::net::IpAddr::V4(NODE_EXT), "not masqueraded");
    assert_eq!(text, "from-pod\n");
    assert_eq!(ping_outside(&mut c, &web).await, 0);
    // Without the masquerade rules the other host cannot answer.
    nft(&env, &["flush", "chain", "ip", "skiff", "postrouting"]);
    let (_, got) = pod_to_outside(&outside, &mut c, &web).await;
    assert!(
        got.is_none(),
        "reached the outside without masquerade: {got:?}"
    );

    // A crash that loses the table: the restarted skiffd rebuilds it from its records.
    drop(c);
    env.skiffd.kill();
    nft(&env, &["delete", "table", "ip", "skiff"]);
    assert!(no_answer(&env.netns, "127.0.0.1:18080"));
    env.skiffd.restart().unwrap();
    let mut c = env.skiffd.client().await;
    c.runtime
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .unwrap();
    let rebuilt = ruleset(&env);
    assert!(rebuilt.contains(&pod), "{rebuilt}");
    wait_http(&env.netns, "127.0.0.1:18080");
    wait_http(&outside.ns, &format!("{NODE_EXT}:18080"));
    assert_eq!(ping_outside(&mut c, &web).await, 0);

    // (4) Removing the pod removes its rules, and the ports stop answering.
    c.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let json = env
        .netns
        .command("nft")
        .args(["-j", "list", "table", "ip", "skiff"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(json.contains("masquerade"), "{json}");
    assert!(!json.contains(&pod), "{json}");
    assert!(!json.contains(r#""dnat": {"#), "{json}");
    assert!(no_answer(&env.netns, "127.0.0.1:18080"));
    assert!(no_answer(&outside.ns, &format!("{NODE_EXT}:18080")));
}

#[tokio::test]
async fn invalid_port_mappings_are_refused_and_leave_nothing_behind() {
    let Some((env, mut c)) = common::net::setup(
        "invalid_port_mappings_are_refused_and_leave_nothing_behind",
        "",
    )
    .await
    else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    for (i, (mapping, needle)) in [
        (port(api::Protocol::Sctp, 80, 8080, ""), "SCTP"),
        (port(api::Protocol::Tcp, 0, 8080, ""), "container port 0"),
        (port(api::Protocol::Tcp, 80, 70000, ""), "host port 70000"),
        (port(api::Protocol::Udp, 53, 5353, "fe80::1"), "IPv6"),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = pod_config(&format!("bad-{i}"), &logs, vec![mapping]);
        let e = run_pod(&mut c, &cfg).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(needle), "{e:?}");
    }
    let pods = c
        .runtime
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    // No address was taken: the next pod gets the first one.
    let ok = run_pod(&mut c, &pod_config("good", &logs, vec![]))
        .await
        .unwrap();
    assert_eq!(pod_ip(&mut c, &ok).await, "10.88.0.2");
    assert!(!ruleset(&env).contains("dnat to"));

    // A host port another ready pod maps is refused, naming that pod; another protocol
    // or another node address is fine; once the first pod stops, the port is free.
    let first = run_pod(
        &mut c,
        &pod_config(
            "web-1",
            &logs,
            vec![port(api::Protocol::Tcp, 80, 18080, "")],
        ),
    )
    .await
    .unwrap();
    let e = run_pod(
        &mut c,
        &pod_config(
            "web-2",
            &logs,
            vec![port(api::Protocol::Tcp, 8080, 18080, "127.0.0.1")],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("18080/TCP") && e.message().contains(&first),
        "{e:?}"
    );
    let udp = run_pod(
        &mut c,
        &pod_config(
            "dns-1",
            &logs,
            vec![port(api::Protocol::Udp, 80, 18080, "")],
        ),
    )
    .await
    .expect("the same port over UDP");
    c.runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: first.clone(),
        })
        .await
        .unwrap();
    let again = run_pod(
        &mut c,
        &pod_config(
            "web-3",
            &logs,
            vec![port(api::Protocol::Tcp, 80, 18080, "")],
        ),
    )
    .await
    .expect("the port is free once its pod stopped");
    for id in [first, udp, again, ok] {
        c.runtime
            .remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
    }
    assert!(!ruleset(&env).contains("dnat to"));
}

/// At start-up skiffd deletes the veths on its bridge that no pod owns (left by a
/// skiffd killed mid-setup), and nothing else: another bridge in the namespace and
/// its ports stay, whatever they are named.
#[tokio::test]
async fn restart_deletes_only_the_stale_veths_of_its_own_bridge() {
    let Some((mut env, mut c)) =
        common::net::setup("restart_deletes_only_the_stale_veths_of_its_own_bridge", "").await
    else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let pod = run_pod(&mut c, &pod_config("kept", &logs, vec![]))
        .await
        .unwrap();
    let ip = |args: &[&str]| {
        let out = env.netns.command("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    // Another runtime's bridge with a port, both named like skiff's links.
    ip(&["link", "add", "skother0", "type", "bridge"]);
    ip(&[
        "link",
        "add",
        "skforeign0001",
        "type",
        "veth",
        "peer",
        "name",
        "skforeignp01",
    ]);
    ip(&["link", "set", "skforeign0001", "master", "skother0"]);
    // A stale port of skiffd's own bridge.
    ip(&[
        "link",
        "add",
        "skstale000001",
        "type",
        "veth",
        "peer",
        "name",
        "skstalep0001",
    ]);
    ip(&["link", "set", "skstale000001", "master", "skiff0"]);
    drop(c);
    env.skiffd.restart().expect("restart skiffd");
    let mut c = env.skiffd.client().await;
    let links = || {
        let out = env
            .netns
            .command("ip")
            .args(["-o", "link"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The socket is bound before skiffd reconciles (and serves only after): wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while links().contains("skstale000001") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let links = links();
    assert!(links.contains("skother0"), "{links}");
    assert!(links.contains("skforeign0001"), "{links}");
    assert!(!links.contains("skstale000001"), "{links}");
    // The pod's own veth stays, and the pod still answers.
    let status = c
        .runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status.unwrap().state,
        api::PodSandboxState::SandboxReady as i32
    );
    ip(&["link", "del", "skforeign0001"]);
    ip(&["link", "del", "skother0"]);
    common::end_pod(&mut c, &pod).await;
}
