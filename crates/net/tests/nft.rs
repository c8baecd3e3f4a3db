//! skiff's nftables table against the real `nft`, inside a throw-away network
//! namespace (never the host's). Needs root.

use std::net::Ipv4Addr;

use skiff_net::nft::{HostPort, Nft, PodPorts, Proto};
use skiff_testkit::NetNs;

fn ns_with_bridge(test: &str) -> Option<NetNs> {
    if !skiff_testkit::require_root(test) {
        return None;
    }
    let ns = NetNs::create("nft").expect("create netns");
    let out = ns
        .command("ip")
        .args(["link", "add", "skiff0", "type", "bridge"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    Some(ns)
}

fn listing(ns: &NetNs) -> String {
    let out = ns
        .command("nft")
        .args(["list", "table", "ip", "skiff"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tcp(host_port: u16, container_port: u16) -> HostPort {
    HostPort {
        protocol: Proto::Tcp,
        host_ip: None,
        host_port,
        container_port,
    }
}

#[test]
fn table_lifecycle_in_a_namespace() {
    let Some(ns) = ns_with_bridge("table_lifecycle_in_a_namespace") else {
        return;
    };
    let cidr = "10.88.0.0/16".parse().unwrap();
    ns.run(|| {
        let nft = Nft::init(cidr, "skiff0").expect("init");
        let text = listing(&ns);
        assert!(
            text.contains("ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade"),
            "{text}"
        );
        assert!(
            text.contains("fib daddr type local jump hostports"),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/conf/skiff0/route_localnet")
                .unwrap()
                .trim(),
            "1"
        );

        let a = "a".repeat(64);
        let b = "b".repeat(64);
        nft.add_pod(&a, Ipv4Addr::new(10, 88, 0, 2), &[tcp(18080, 8080)])
            .unwrap();
        nft.add_pod(
            &b,
            Ipv4Addr::new(10, 88, 0, 3),
            &[
                tcp(18081, 80),
                HostPort {
                    protocol: Proto::Udp,
                    host_ip: Some(Ipv4Addr::new(192, 168, 77, 1)),
                    host_port: 5353,
                    container_port: 53,
                },
            ],
        )
        .unwrap();
        let text = listing(&ns);
        assert!(
            text.contains(&format!(
                "tcp dport 18080 dnat to 10.88.0.2:8080 comment \"skiff pod {a}\""
            )),
            "{text}"
        );
        assert!(
            text.contains("ip daddr 192.168.77.1 udp dport 5353 dnat to 10.88.0.3:53"),
            "{text}"
        );

        // Re-initialising (a restart) keeps the pods' rules and does not duplicate the
        // static ones.
        let nft = Nft::init(cidr, "skiff0").expect("init again");
        let text = listing(&ns);
        assert_eq!(text.matches("masquerade").count(), 3, "{text}");
        assert!(text.contains(&a), "{text}");

        nft.remove_pod(&a).unwrap();
        let text = listing(&ns);
        assert!(!text.contains(&a), "{text}");
        assert_eq!(text.matches(&b).count(), 2, "{text}");
        nft.remove_pod(&a).unwrap();

        // Reconcile makes the chain exactly the live pods'.
        nft.reconcile(&[PodPorts {
            pod_id: a.clone(),
            ip: Ipv4Addr::new(10, 88, 0, 9),
            mappings: vec![tcp(18080, 8080)],
        }])
        .unwrap();
        let text = listing(&ns);
        assert!(text.contains("dnat to 10.88.0.9:8080"), "{text}");
        assert!(!text.contains(&b), "{text}");

        // The table gone: removal is still fine, init brings it back.
        nft.teardown_all().unwrap();
        assert_eq!(listing(&ns), "");
        nft.remove_pod(&a).unwrap();
        nft.teardown_all().unwrap();
        let nft = Nft::init(cidr, "skiff0").unwrap();
        nft.reconcile(&[]).unwrap();
        assert!(listing(&ns).contains("masquerade"));
        nft.teardown_all().unwrap();
    });
}

#[test]
fn a_table_of_an_older_layout_is_recreated() {
    let Some(ns) = ns_with_bridge("a_table_of_an_older_layout_is_recreated") else {
        return;
    };
    // A prerouting chain at another priority cannot be changed in place.
    let out = ns
        .command("nft")
        .args([
            "add table ip skiff; add chain ip skiff prerouting { type nat hook prerouting priority 0; }",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    ns.run(|| {
        let nft = Nft::init("10.88.0.0/16".parse().unwrap(), "skiff0").expect("init");
        let text = listing(&ns);
        assert!(
            text.contains("type nat hook prerouting priority dstnat"),
            "{text}"
        );
        nft.teardown_all().unwrap();
    });
}

#[test]
fn nft_errors_carry_nft_text() {
    let Some(ns) = ns_with_bridge("nft_errors_carry_nft_text") else {
        return;
    };
    ns.run(|| {
        let nft = Nft::init("10.88.0.0/16".parse().unwrap(), "skiff0").expect("init");
        nft.teardown_all().unwrap();
        let e = nft
            .add_pod("p", Ipv4Addr::new(10, 88, 0, 2), &[tcp(1, 2)])
            .unwrap_err();
        assert!(!e.is_invalid());
        assert!(e.to_string().contains("No such file or directory"), "{e}");
        let e = Nft::init("10.88.0.0/16".parse().unwrap(), "nosuchbridge").unwrap_err();
        assert!(e.to_string().contains("route_localnet"), "{e}");
    });
}
