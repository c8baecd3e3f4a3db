//! End-to-end: `[network] mode = "cni"` with Debian's containernetworking-plugins
//! (bridge + host-local + loopback + portmap), through skiffd's CRI socket with real
//! pods. skiffd runs in a test network namespace (the "node"), so the plugins' bridge,
//! veths and iptables rules live and die there; each test writes its own conflist into
//! a temp dir, with host-local's `dataDir` in a temp dir too. Needs root and
//! `/usr/lib/cni`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::RegistryEnv;
use common::net::{
    create_and_start, ctr_config, exec, links, network_ready, no_answer, output_in, pod_config,
    pod_ip, pod_status, port, run_pod, wait_http, wget,
};
use skiff_cri::api;
use skiff_cri::client::CriClient;

/// Debian's plugin directory.
const PLUGINS: &str = "/usr/lib/cni";
/// The network's name in every conflist (host-local keeps its allocations under it).
const NETWORK: &str = "skiff-test";
/// The pods' subnet, inside the test namespace only.
const SUBNET: &str = "10.77.0.0/24";
const GATEWAY: &str = "10.77.0.1";

/// A CNI-mode skiffd: the conf dir (the test writes the conflist), host-local's data
/// dir, and a dir for fake plugins, searched after Debian's. Field order: skiffd (which
/// removes its pods through the CRI on drop, running DEL) goes before the dirs.
struct CniEnv {
    env: RegistryEnv,
    c: CriClient,
    conf: tempfile::TempDir,
    ipam: tempfile::TempDir,
    bin: tempfile::TempDir,
    /// The bridge the plugin makes (unique per test process).
    bridge: String,
}

async fn setup(test: &str) -> Option<CniEnv> {
    if !Path::new(PLUGINS).join("bridge").exists() {
        skiff_testkit::skip(
            test,
            "Debian's containernetworking-plugins is not installed",
        );
        return None;
    }
    let conf = tempfile::tempdir().unwrap();
    let ipam = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let extra = format!(
        "[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dir = \"{PLUGINS}:{}\"\n",
        conf.path().display(),
        bin.path().display()
    );
    let (env, c) = common::net::setup(test, &extra).await?;
    Some(CniEnv {
        env,
        c,
        conf,
        ipam,
        bin,
        bridge: format!("skc{}", std::process::id() % 1_000_000),
    })
}

impl CniEnv {
    /// A conflist: bridge (host-local IPAM) and `then`, cniVersion `version`.
    fn conflist(&self, version: &str, then: &[&str]) -> String {
        let mut plugins = vec![format!(
            r#"{{"type": "bridge", "bridge": "{br}", "isGateway": true, "ipMasq": false,
              "hairpinMode": true,
              "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{SUBNET}"}}]],
                       "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{data}"}}}}"#,
            br = self.bridge,
            data = self.ipam.path().display()
        )];
        plugins.extend(then.iter().map(|p| p.to_string()));
        format!(
            r#"{{"cniVersion": "{version}", "name": "{NETWORK}", "plugins": [{}]}}"#,
            plugins.join(",\n")
        )
    }

    /// Replace the configuration: `10-test.conflist` holds `text` (nothing when `None`).
    fn write_conf(&self, text: Option<&str>) {
        let path = self.conf.path().join("10-test.conflist");
        match text {
            Some(t) => std::fs::write(&path, t).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// A fake plugin: a shell script in the extra bin dir.
    fn fake_plugin(&self, name: &str, body: &str) {
        let path = self.bin.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\ncat >/dev/null\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Addresses host-local has handed out (its files named like IPs).
    fn allocated(&self) -> Vec<String> {
        let dir = self.ipam.path().join(NETWORK);
        let mut ips: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        ips.sort();
        ips
    }

    /// The veths of the node namespace (the host ends of the pods' pairs).
    fn veths(&self) -> Vec<String> {
        links(&self.env.netns)
            .into_iter()
            .filter(|l| l.starts_with("veth"))
            .collect()
    }

    /// The pods' pinned namespace directories.
    fn ns_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.env.skiffd.state.join("ns"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// `iptables-save -t nat` of the node namespace.
    fn nat_rules(&self) -> String {
        output_in(&self.env.netns, "iptables-save", &["-t", "nat"])
    }

    async fn pods(&mut self) -> Vec<api::PodSandbox> {
        self.c
            .runtime
            .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items
    }

    async fn remove(&mut self, pod: &str) {
        self.c
            .runtime
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox {pod}: {e:?}"));
    }

    /// No pod, veth, host-local address, namespace file or portmap chain is left.
    async fn assert_nothing_left(&mut self, when: &str) {
        assert_eq!(self.pods().await.len(), 0, "{when}: pods");
        assert_eq!(self.veths(), Vec::<String>::new(), "{when}: veths");
        assert_eq!(self.allocated(), Vec::<String>::new(), "{when}: addresses");
        assert_eq!(self.ns_dirs(), Vec::<PathBuf>::new(), "{when}: ns files");
        let nat = self.nat_rules();
        assert!(
            !nat.contains("CNI-DN-"),
            "{when}: portmap rules left:\n{nat}"
        );
    }
}

const LOOPBACK: &str = r#"{"type": "loopback"}"#;
const PORTMAP: &str = r#"{"type": "portmap", "capabilities": {"portMappings": true}}"#;

async fn verbose_info(c: &mut CriClient, pod: &str) -> serde_json::Value {
    let info = pod_status(c, pod, true).await.info;
    serde_json::from_str(&info["info"]).unwrap()
}

#[tokio::test]
async fn cni_pods_reach_each_other_map_host_ports_and_leave_nothing_behind() {
    let Some(mut t) =
        setup("cni_pods_reach_each_other_map_host_ports_and_leave_nothing_behind").await
    else {
        return;
    };
    t.write_conf(Some(&t.conflist("1.0.0", &[LOOPBACK, PORTMAP])));
    let ready = network_ready(&mut t.c).await;
    assert!(ready.status, "{ready:?}");

    let logs = t.env.skiffd.dir().join("logs");
    let web_cfg = pod_config(
        "web",
        &logs,
        vec![port(api::Protocol::Tcp, 8080, 18090, "")],
    );
    let web = run_pod(&mut t.c, &web_cfg)
        .await
        .expect("RunPodSandbox web");
    let peer_cfg = pod_config("peer", &logs, vec![]);
    let peer = run_pod(&mut t.c, &peer_cfg)
        .await
        .expect("RunPodSandbox peer");
    let (web_ip, peer_ip) = (pod_ip(&mut t.c, &web).await, pod_ip(&mut t.c, &peer).await);
    assert!(
        web_ip.starts_with("10.77.0.") && peer_ip.starts_with("10.77.0.") && web_ip != peer_ip,
        "{web_ip} {peer_ip}"
    );
    assert_eq!(t.allocated().len(), 2, "{:?}", t.allocated());
    assert_eq!(t.veths().len(), 2, "{:?}", links(&t.env.netns));
    // skiff made no bridge or nftables table of its own.
    let node_links = links(&t.env.netns);
    assert!(node_links.contains(&t.bridge), "{node_links:?}");
    assert!(
        !node_links.contains(&"skiff0".to_string()),
        "{node_links:?}"
    );
    let tables = output_in(&t.env.netns, "nft", &["list", "tables"]);
    assert!(!tables.contains("ip skiff"), "{tables}");

    let web_ctr = create_and_start(
        &mut t.c,
        &web,
        &web_cfg,
        ctr_config("web", &["httpd", "-f", "-p", "8080", "-h", "/www"]),
    )
    .await;
    let peer_ctr = create_and_start(
        &mut t.c,
        &peer,
        &peer_cfg,
        ctr_config("peer", &["sleep", "3600"]),
    )
    .await;
    // The pod's eth0 has the address the status reports, and /etc/hosts names it.
    let r = exec(
        &mut t.c,
        &web_ctr,
        &[
            "sh",
            "-c",
            "ip -o -4 addr show eth0; ip -o link show lo; cat /etc/hosts",
        ],
        10,
    )
    .await;
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains(&format!("{web_ip}/24")), "{text}");
    assert!(text.contains("UP"), "loopback: {text}");
    assert!(text.contains(&format!("{web_ip}\tweb-host")), "{text}");
    // Pod to pod, and pod to gateway.
    for target in [web_ip.as_str(), GATEWAY] {
        let r = exec(
            &mut t.c,
            &peer_ctr,
            &["ping", "-c", "1", "-W", "3", target],
            10,
        )
        .await;
        assert_eq!(
            r.exit_code,
            0,
            "ping {target}: {}",
            String::from_utf8_lossy(&r.stdout)
        );
    }
    let (_, body, err) = wget(
        &mut t.c,
        &peer_ctr,
        &format!("http://{web_ip}:8080/index.html"),
    )
    .await;
    assert_eq!(body, "hello from the pod\n", "{err}");
    // hostPort through portmap, from the node namespace.
    wait_http(&t.env.netns, &format!("{GATEWAY}:18090"));
    let nat = t.nat_rules();
    assert!(nat.contains("CNI-DN-") && nat.contains("18090"), "{nat}");

    // The verbose status shows the cached result and runs CHECK through the chain.
    let info = verbose_info(&mut t.c, &peer).await;
    assert_eq!(info["cni"]["network"], NETWORK, "{info}");
    assert_eq!(info["cni"]["check"], "passed", "{info}");
    let info = verbose_info(&mut t.c, &web).await;
    assert!(
        info["cni"]["result"]["ips"][0]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with(&web_ip)),
        "{info}"
    );
    // Debian's portmap (1.1.1) fails CHECK for IPv4-only mappings: it looks for the
    // IPv6 chain it never made (containernetworking/plugins#819, fixed in 1.2).
    let check = info["cni"]["check"].as_str().unwrap_or_default();
    assert!(
        check == "passed" || check.contains("\"portmap\" (CHECK)") && check.contains("ipv6"),
        "{info}"
    );

    // DEL works from the cached attachment after a crash of skiffd.
    t.env.skiffd.kill();
    t.env.skiffd.restart().unwrap();
    t.c = t.env.skiffd.client().await;
    assert_eq!(pod_ip(&mut t.c, &web).await, web_ip);
    t.remove(&web).await;
    assert_eq!(t.allocated(), vec![peer_ip.clone()]);
    assert_eq!(t.veths().len(), 1);
    assert!(no_answer(&t.env.netns, &format!("{GATEWAY}:18090")));
    assert!(!t.nat_rules().contains("CNI-DN-"), "{}", t.nat_rules());
    // StopPodSandbox releases the network; RemovePodSandbox after it is fine.
    t.c.runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: peer.clone(),
        })
        .await
        .unwrap();
    assert_eq!(t.allocated(), Vec::<String>::new());
    assert_eq!(
        pod_ip(&mut t.c, &peer).await,
        peer_ip,
        "the IP stays on record"
    );
    t.remove(&peer).await;
    t.assert_nothing_left("after removing both pods").await;

    // Ten more pods get distinct addresses and go without a trace.
    let mut ids = Vec::new();
    for i in 0..10 {
        let cfg = pod_config(&format!("many-{i}"), &logs, vec![]);
        ids.push(run_pod(&mut t.c, &cfg).await.expect("RunPodSandbox"));
    }
    assert_eq!(t.allocated().len(), 10);
    for id in &ids {
        t.remove(id).await;
    }
    t.assert_nothing_left("after 10 pods").await;
}

#[tokio::test]
async fn cni_bad_configurations_give_clear_errors_and_leave_nothing_behind() {
    let Some(mut t) =
        setup("cni_bad_configurations_give_clear_errors_and_leave_nothing_behind").await
    else {
        return;
    };
    let logs = t.env.skiffd.dir().join("logs");
    t.fake_plugin(
        "skiff-test-error",
        r#"[ "$CNI_COMMAND" = ADD ] || exit 0
echo '{"cniVersion": "0.4.0", "code": 7, "msg": "skiff test plugin refuses", "details": "on purpose"}'
exit 1"#,
    );
    t.fake_plugin(
        "skiff-test-garbage",
        r#"[ "$CNI_COMMAND" = ADD ] && echo 'garbage, not json'
exit 0"#,
    );
    let cases: Vec<(&str, Option<String>, tonic::Code, Vec<&str>)> = vec![
        (
            "no configuration",
            None,
            tonic::Code::FailedPrecondition,
            vec!["no CNI network configuration", "/"],
        ),
        (
            "missing plugin",
            Some(t.conflist("0.4.0", &[r#"{"type": "no-such-plugin"}"#])),
            tonic::Code::FailedPrecondition,
            vec!["\"no-such-plugin\"", "not installed", PLUGINS],
        ),
        (
            "plugin error",
            Some(t.conflist("0.4.0", &[r#"{"type": "skiff-test-error"}"#])),
            tonic::Code::Internal,
            vec![
                "\"skiff-test-error\" (ADD)",
                "error code 7 (invalid network config): skiff test plugin refuses (on purpose)",
            ],
        ),
        (
            "garbage output",
            Some(t.conflist("0.4.0", &[LOOPBACK, r#"{"type": "skiff-test-garbage"}"#])),
            tonic::Code::Internal,
            vec![
                "\"skiff-test-garbage\" (ADD)",
                "not a CNI result",
                "garbage, not json",
            ],
        ),
        (
            "invalid JSON",
            Some("{\"cniVersion\": \"1.0.0\", \"name\": ".into()),
            tonic::Code::FailedPrecondition,
            vec!["10-test.conflist", "not valid JSON"],
        ),
    ];
    for (i, (what, conf, code, needles)) in cases.into_iter().enumerate() {
        t.write_conf(conf.as_deref());
        let ready = network_ready(&mut t.c).await;
        let cfg = pod_config(&format!("bad-{i}"), &logs, vec![]);
        let e = run_pod(&mut t.c, &cfg).await.unwrap_err();
        eprintln!("{what}: {e:?}");
        assert_eq!(e.code(), code, "{what}: {e:?}");
        for n in needles {
            assert!(e.message().contains(n), "{what}: {n:?} not in {e:?}");
        }
        if code == tonic::Code::FailedPrecondition {
            // The node's configuration is at fault: Status says so, with the same words.
            assert!(!ready.status, "{what}: {ready:?}");
            assert_eq!(ready.reason, "NetworkPluginNotReady");
            assert!(
                e.message().contains(&ready.message),
                "{what}: {ready:?} vs {e:?}"
            );
        } else {
            // The plugins are there; one fails at run time. bridge and host-local ran,
            // so the DEL that undid them is what leaves nothing behind.
            assert!(ready.status, "{what}: {ready:?}");
        }
        t.assert_nothing_left(what).await;
    }

    // skiffd stays usable: a good configuration, written now, is picked up.
    t.write_conf(Some(&t.conflist("0.4.0", &[LOOPBACK])));
    assert!(network_ready(&mut t.c).await.status);
    let good = run_pod(&mut t.c, &pod_config("good", &logs, vec![]))
        .await
        .expect("RunPodSandbox after the bad configurations");
    assert!(pod_ip(&mut t.c, &good).await.starts_with("10.77.0."));
    // A plugin that fails DEL: StopPodSandbox reports it, keeps the attachment, and
    // the next StopPodSandbox (once the plugin is fixed) finishes the job.
    t.fake_plugin(
        "skiff-test-del",
        r#"[ "$CNI_COMMAND" = DEL ] || { echo '{"cniVersion":"0.4.0","ips":[{"address":"10.77.0.250/24"}]}'; exit 0; }
[ -e "$(dirname "$0")/fixed" ] && exit 0
echo '{"cniVersion": "0.4.0", "code": 11, "msg": "not now"}'
exit 1"#,
    );
    t.write_conf(Some(
        &t.conflist("0.4.0", &[r#"{"type": "skiff-test-del"}"#]),
    ));
    let flaky = run_pod(&mut t.c, &pod_config("flaky", &logs, vec![]))
        .await
        .expect("RunPodSandbox flaky");
    // Its result is the last plugin's.
    assert_eq!(pod_ip(&mut t.c, &flaky).await, "10.77.0.250");
    let e =
        t.c.runtime
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: flaky.clone(),
            })
            .await
            .unwrap_err();
    assert!(e.message().contains("not now"), "{e:?}");
    // Every other plugin still got its DEL: the bridge released the address.
    assert_eq!(t.allocated().len(), 1, "{:?}", t.allocated());
    std::fs::write(t.bin.path().join("fixed"), "").unwrap();
    t.remove(&flaky).await;
    t.remove(&good).await;
    t.assert_nothing_left("after the good pods").await;
}

#[tokio::test]
async fn a_crash_during_cni_add_is_undone_at_the_next_start() {
    let Some(mut t) = setup("a_crash_during_cni_add_is_undone_at_the_next_start").await else {
        return;
    };
    // bridge (and host-local) run, then a plugin that hangs in ADD, writing its pid.
    t.fake_plugin(
        "skiff-test-hang",
        r#"[ "$CNI_COMMAND" = ADD ] || exit 0
echo $$ > "$(dirname "$0")/hang.pid"
exec sleep 60"#,
    );
    t.write_conf(Some(
        &t.conflist("1.0.0", &[r#"{"type": "skiff-test-hang"}"#]),
    ));
    let logs = t.env.skiffd.dir().join("logs");
    let cfg = pod_config("crash", &logs, vec![]);
    let mut c = t.env.skiffd.client().await;
    let run = tokio::spawn(async move { run_pod(&mut c, &cfg).await });
    let pid_file = t.bin.path().join("hang.pid");
    let start = std::time::Instant::now();
    while !pid_file.exists() {
        assert!(
            start.elapsed().as_secs() < 20,
            "the hanging plugin never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The bridge plugin made the veth and host-local took an address.
    assert_eq!(t.allocated().len(), 1);
    assert_eq!(t.veths().len(), 1);
    t.env.skiffd.kill();
    assert!(run.await.unwrap().is_err());
    // The plugin outlived skiffd (it was skiffd's child): stop it by its pid.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    // At the next start the pending attachment gets its DEL.
    t.env.skiffd.restart().unwrap();
    t.c = t.env.skiffd.client().await;
    // The socket accepts connections once bound; a call is answered after recovery.
    let pods = t.pods().await;
    assert_eq!(t.allocated(), Vec::<String>::new());
    assert_eq!(t.veths(), Vec::<String>::new());
    assert!(
        pods.iter()
            .all(|p| p.state == api::PodSandboxState::SandboxNotready as i32),
        "{pods:?}"
    );
    for p in pods {
        t.remove(&p.id).await;
    }
    t.assert_nothing_left("after the crash").await;
    // And the network works again.
    t.write_conf(Some(&t.conflist("1.0.0", &[LOOPBACK])));
    let pod = run_pod(&mut t.c, &pod_config("after", &logs, vec![]))
        .await
        .expect("RunPodSandbox after the restart");
    assert!(pod_ip(&mut t.c, &pod).await.starts_with("10.77.0."));
}
