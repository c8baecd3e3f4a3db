//! End-to-end: the native handler's security properties, through skiffd's CRI socket,
//! compared field by field with runc on the same container config. Needs root.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::RegistryEnv;
use common::net::{create_and_start, pod_config};
use skiff_cri::api;
use skiff_cri::client::CriClient;
use skiff_testkit::image::{Compression, ImageBuilder, busybox_rootfs};

const IMAGE: &str = "127.0.0.1:5000/test/busybox:native";

/// skiffd + registry with a busybox image that has a symlink pointing far above its
/// root (`/escape` → `../../../../..`) and a directory only root may enter.
async fn setup(test: &str) -> Option<(RegistryEnv, CriClient)> {
    let env = common::start_with_registry(test, "", &[])?;
    let mut layer = busybox_rootfs().unwrap();
    layer.symlink("escape", "../../../../..");
    layer.dir("work", 0o755);
    layer.dir("private", 0o700);
    let image = ImageBuilder::new()
        .layer(layer.finish(Compression::Gzip).unwrap())
        .cmd(["sh"])
        .build();
    env.push("test/busybox", "native", &image);
    let mut c = env.skiffd.client().await;
    common::pull(&mut c, IMAGE).await;
    Some((env, c))
}

/// A container that reports, as its first output, what its own process got: the
/// credential lines of `/proc/self/status`, its limits, its descriptors and its
/// working directory; then sleeps.
fn restricted_ctr(name: &str, working_dir: &str) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("{REPORT}; exec sleep 1000"),
        ],
        working_dir: working_dir.into(),
        log_path: format!("{name}.log"),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                run_as_user: Some(api::Int64Value { value: 1234 }),
                run_as_group: Some(api::Int64Value { value: 2345 }),
                supplemental_groups: vec![3456, 4567],
                no_new_privs: true,
                capabilities: Some(api::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["CHOWN".into(), "KILL".into()],
                    ..Default::default()
                }),
                seccomp: Some(api::SecurityProfile {
                    profile_type: api::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a process reports about itself (run by `sh -c`).
const REPORT: &str = "grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status; \
     sed 's/^/limit /' /proc/self/limits; sed 's/^/cgroup /' /proc/self/cgroup; \
     echo fds $(ls /proc/self/fd); echo cwd $(pwd)";

/// The report's lines as key → value.
fn parse_report(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(rest) = l.strip_prefix("limit ") {
                let name: String = rest.chars().take(26).collect();
                return Some((format!("limit {}", name.trim()), rest.to_string()));
            }
            // `<hierarchy id>:<controllers>:<path>`, keyed by the hierarchy.
            if let Some(rest) = l.strip_prefix("cgroup ") {
                let (id, path) = rest.split_once(':')?;
                return Some((format!("cgroup {id}"), path.to_string()));
            }
            let (k, v) = l.split_once([':', ' '])?;
            Some((
                k.to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            ))
        })
        .collect()
}

async fn run_pod(c: &mut CriClient, cfg: &api::PodSandboxConfig, handler: &str) -> String {
    c.runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id
}

async fn exec(
    c: &mut CriClient,
    id: &str,
    cmd: &[&str],
) -> Result<api::ExecSyncResponse, tonic::Status> {
    c.runtime
        .exec_sync(api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .map(|r| r.into_inner())
}

/// The container's log, once it holds the init's whole report.
fn init_report(logs: &Path, name: &str) -> BTreeMap<String, String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
        // CRI log lines: "<time> stdout F <text>".
        let plain: String = text
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .map(|l| format!("{l}\n"))
            .collect();
        if plain.contains("cwd ") {
            return parse_report(&plain);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no report from {name}: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn state(c: &mut CriClient, id: &str) -> i32 {
    c.runtime
        .container_status(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("status")
        .state
}

/// An exec'd process gets exactly what the container's own process got (ids, groups,
/// capabilities, no_new_privs, seccomp, limits), no descriptor but stdio, and the
/// container's working directory; and all of it is what runc gives on the same config.
#[tokio::test]
async fn exec_gets_what_the_init_got_and_what_runc_gives() {
    let Some((env, mut c)) = setup("native_exec_same_as_init").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let mut reports = BTreeMap::new();
    for handler in ["runc", "native"] {
        let pod_cfg = pod_config(&format!("sec-{handler}"), &logs, vec![]);
        let pod = run_pod(&mut c, &pod_cfg, handler).await;
        let name = format!("ctr-{handler}");
        let ctr = create_and_start(&mut c, &pod, &pod_cfg, restricted_ctr(&name, "/work")).await;
        let init = init_report(&logs, &name);
        let r = exec(&mut c, &ctr, &["sh", "-c", REPORT])
            .await
            .expect("ExecSync");
        assert_eq!(
            r.exit_code,
            0,
            "{handler}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let exec = parse_report(&String::from_utf8_lossy(&r.stdout));
        for key in [
            "Uid",
            "Gid",
            "Groups",
            "CapInh",
            "CapPrm",
            "CapEff",
            "CapBnd",
            "CapAmb",
            "NoNewPrivs",
            "Seccomp",
            "cwd",
        ] {
            assert!(
                init.contains_key(key),
                "{handler}: init report lacks {key}: {init:?}"
            );
        }
        assert_eq!(init["Uid"], "1234 1234 1234 1234", "{handler}");
        assert_eq!(init["Gid"], "2345 2345 2345 2345", "{handler}");
        assert_eq!(init["NoNewPrivs"], "1", "{handler}");
        assert_eq!(
            init["Seccomp"], "2",
            "{handler}: the init runs under a filter"
        );
        assert_eq!(init["cwd"], "/work", "{handler}");
        // Only stdio and the descriptor `ls` opened for the directory it lists.
        assert_eq!(init["fds"], "0 1 2 3", "{handler}: init's descriptors");
        assert_eq!(
            exec["fds"], "0 1 2 3",
            "{handler}: exec'd process's descriptors"
        );
        assert_eq!(
            exec, init,
            "{handler}: the exec'd process differs from the init"
        );
        // Each container's own cgroup, in every hierarchy (as runc places it: the
        // named and, on a hybrid host, the unified one too), named alike for both.
        let exec: BTreeMap<String, String> = exec
            .into_iter()
            .map(|(k, v)| (k, v.replace(&ctr, "CTR").replace(&pod, "POD")))
            .collect();
        for (k, v) in exec.iter().filter(|(k, _)| k.starts_with("cgroup ")) {
            assert!(v.ends_with("/POD/CTR"), "{handler}: {k} is {v}");
        }
        reports.insert(handler, exec);
        common::end_pod(&mut c, &pod).await;
    }
    assert_eq!(
        reports["native"], reports["runc"],
        "the native handler's exec differs from runc's"
    );
}

/// Exec failures under the native handler are clear errors that leave the container
/// running: a missing binary, a working directory that leaves the root through a
/// symlink (it resolves inside the container), a directory the user may not enter.
#[tokio::test]
async fn native_exec_failures_are_clear_and_leave_the_container_alone() {
    let Some((env, mut c)) = setup("native_exec_failures").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config("fail-native", &logs, vec![]);
    let pod = run_pod(&mut c, &pod_cfg, "native").await;

    // The symlink resolves in the container's root: `/escape` is `/` there, for the
    // init and for an exec'd process.
    let ctr = create_and_start(&mut c, &pod, &pod_cfg, restricted_ctr("esc", "/escape")).await;
    let init = init_report(&logs, "esc");
    assert_eq!(init["cwd"], "/");
    let r = exec(
        &mut c,
        &ctr,
        &["sh", "-c", "ls -a /proc/self/cwd/ | tr '\\n' ' '"],
    )
    .await
    .expect("ExecSync");
    let listing = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(
        listing.contains("escape") && listing.contains("work"),
        "{listing}"
    );

    let missing = exec(&mut c, &ctr, &["no-such-binary"]).await;
    let err = missing.expect_err("exec of a missing binary");
    assert!(
        err.message().contains("no-such-binary") && err.message().contains("not found"),
        "{err:?}"
    );
    let denied = exec(&mut c, &ctr, &["ls", "/private"])
        .await
        .expect("ExecSync");
    assert_ne!(
        denied.exit_code, 0,
        "user 1234 listed a 0700 root directory"
    );

    assert_eq!(
        state(&mut c, &ctr).await,
        api::ContainerState::ContainerRunning as i32
    );
    let ok = exec(&mut c, &ctr, &["true"]).await.expect("ExecSync");
    assert_eq!(ok.exit_code, 0);
    common::end_pod(&mut c, &pod).await;
}

/// Shims run from a sealed in-memory copy of the binary: what `/proc/<pid>/exe` leads
/// to cannot be written, even by root.
#[tokio::test]
async fn the_shim_binary_cannot_be_written_through_proc_exe() {
    let Some((env, mut c)) = setup("native_sealed_shim").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = pod_config("sealed", &logs, vec![]);
    let pod = run_pod(&mut c, &pod_cfg, "native").await;
    let pid: u32 =
        std::fs::read_to_string(env.skiffd.state.join("pods").join(&pod).join("shim.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let exe = format!("/proc/{pid}/exe");
    let target = std::fs::read_link(&exe).unwrap();
    assert!(
        target.to_string_lossy().starts_with("/memfd:skiff-shim"),
        "the shim runs from {target:?}"
    );
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&exe)
        .and_then(|mut f| f.write_all(b"\x7fELF-overwritten"));
    assert!(written.is_err(), "wrote into the shim's executable");
    common::end_pod(&mut c, &pod).await;
}

/// A pod config with its own user namespace mapping container ids 0..65536 to host
/// ids `host`..`host+65536` (uids and gids alike).
fn userns_pod(name: &str, logs: &Path, host: u32) -> api::PodSandboxConfig {
    let mut cfg = pod_config(name, logs, vec![]);
    let map = api::IdMapping {
        host_id: host,
        container_id: 0,
        length: 65536,
    };
    cfg.linux = Some(api::LinuxPodSandboxConfig {
        security_context: Some(api::LinuxSandboxSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                userns_options: Some(api::UserNamespace {
                    mode: api::NamespaceMode::Pod as i32,
                    uids: vec![map],
                    gids: vec![map],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

async fn sh(c: &mut CriClient, ctr: &str, script: &str) -> String {
    let r = exec(c, ctr, &["sh", "-c", script]).await.expect("ExecSync");
    assert_eq!(
        r.exit_code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// A user-namespaced pod: its processes are root only inside their namespace (host ids
/// from the mapping), the image's files are theirs through idmapped layers, what they
/// write lands on disk with the mapped host ids, the host's root-owned files stay out
/// of reach, and its pause, /proc, /sys and /dev/shm work inside the namespace.
#[tokio::test]
async fn a_user_namespaced_pod_is_root_only_in_its_namespace() {
    let Some((env, mut c)) = setup("native_userns_pod").await else {
        return;
    };
    let status = c
        .runtime
        .status(api::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let userns: BTreeMap<String, bool> = status
        .runtime_handlers
        .iter()
        .map(|h| {
            (
                h.name.clone(),
                h.features.as_ref().is_some_and(|f| f.user_namespaces),
            )
        })
        .collect();
    assert_eq!(userns.get("native"), Some(&true), "{userns:?}");
    assert_eq!(userns.get("runc"), Some(&false), "{userns:?}");

    let logs = env.skiffd.dir().join("logs");
    let pod_cfg = userns_pod("userns", &logs, 200_000);
    let pod = run_pod(&mut c, &pod_cfg, "native").await;
    let mut ctr_cfg = restricted_ctr("userns-ctr", "/");
    ctr_cfg.command = vec!["sleep".into(), "1000".into()];
    ctr_cfg.linux = Some(api::LinuxContainerConfig::default());
    // A host directory and a host file, root's on the host, as volumes.
    let vol = env.skiffd.dir().join("userns-volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("from-host"), "h").unwrap();
    let single = env.skiffd.dir().join("userns-file");
    std::fs::write(&single, "f").unwrap();
    ctr_cfg.mounts = vec![
        api::Mount {
            container_path: "/vol".into(),
            host_path: vol.display().to_string(),
            ..Default::default()
        },
        api::Mount {
            container_path: "/etc/single".into(),
            host_path: single.display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    let ctr = create_and_start(&mut c, &pod, &pod_cfg, ctr_cfg).await;

    let words = |s: String| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        words(sh(&mut c, &ctr, "cat /proc/self/uid_map /proc/self/gid_map").await),
        ["0", "200000", "65536", "0", "200000", "65536"]
    );
    assert_eq!(sh(&mut c, &ctr, "id -u; id -g").await, "0\n0");
    // The image's files are root's inside, and root may write everywhere in its root.
    assert_eq!(
        sh(&mut c, &ctr, "stat -c %u:%g /bin/busybox /etc /").await,
        "0:0\n0:0\n0:0"
    );
    assert_eq!(
        sh(
            &mut c,
            &ctr,
            "echo x > /made-here && echo y > /etc/made-here && stat -c %u:%g /made-here /etc/made-here"
        )
        .await,
        "0:0\n0:0"
    );
    // The pause is PID 1 of the pod's PID namespace and runs as the namespace's root.
    let pid1 = sh(&mut c, &ctr, "grep -E '^(Name|Uid):' /proc/1/status").await;
    assert!(
        pid1.contains("pause") && pid1.contains("Uid:\t0\t0\t0\t0"),
        "{pid1}"
    );
    // On the host the pause runs as the mapped uid, in the pod's pause cgroup.
    let verbose = c
        .runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    let pause = info["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pause}/status")).unwrap();
    assert!(
        status.contains("Uid:\t200000\t200000\t200000\t200000"),
        "{status}"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pause}/cgroup")).unwrap();
    assert!(cgroups.contains(&pod), "{cgroups}");
    assert_eq!(info["userns"]["uids"]["host_id"], 200000, "{info}");

    // /sys belongs to the pod's network namespace; /dev/shm to the namespace's root.
    assert!(sh(&mut c, &ctr, "ls /sys/class/net").await.contains("eth0"));
    assert_eq!(sh(&mut c, &ctr, "stat -c %u /dev/shm").await, "0");
    // A file the host's root owns (the pod's hosts file) is nobody's and read-only.
    assert_eq!(sh(&mut c, &ctr, "stat -c %u /etc/hosts").await, "65534");
    let denied = exec(&mut c, &ctr, &["sh", "-c", "echo evil >> /etc/hosts"])
        .await
        .expect("ExecSync");
    assert_ne!(
        denied.exit_code, 0,
        "the container's root wrote a host root file"
    );

    // Volumes are idmapped through the pod's namespace: the host's root files are the
    // pod root's, and what it writes there is root's on the host.
    assert_eq!(
        sh(
            &mut c,
            &ctr,
            "stat -c %u:%g /vol /vol/from-host /etc/single && echo w > /vol/from-pod && cat /etc/single"
        )
        .await,
        "0:0\n0:0\n0:0\nf"
    );
    let from_pod = std::fs::metadata(vol.join("from-pod")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((from_pod.uid(), from_pod.gid()), (0, 0));

    // On the host the new files carry the mapped ids; the image's layers are untouched.
    let found = std::process::Command::new("find")
        .arg(env.skiffd.dir())
        .args([
            "-path",
            "*/upper/*",
            "-name",
            "made-here",
            "-printf",
            "%U:%G\\n",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&found.stdout).trim(),
        "200000:200000\n200000:200000"
    );
    common::end_pod(&mut c, &pod).await;
    let ns_dir = env.skiffd.state.join("ns").join(&pod);
    assert!(
        !ns_dir.join("user").exists(),
        "the user namespace stayed pinned"
    );
    // The volumes were unmounted, not emptied, when the container went.
    assert_eq!(std::fs::read_to_string(vol.join("from-host")).unwrap(), "h");
    assert_eq!(std::fs::read_to_string(&single).unwrap(), "f");
}

/// User-namespace requests the node cannot honour are refused before anything is made.
#[tokio::test]
async fn bad_user_namespace_requests_are_refused_cleanly() {
    let Some((env, mut c)) = setup("native_userns_bad").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let map = |container_id, host_id| api::IdMapping {
        host_id,
        container_id,
        length: 65536,
    };
    let cases: Vec<(&str, api::UserNamespace, &str)> = vec![
        (
            "two mappings",
            api::UserNamespace {
                mode: api::NamespaceMode::Pod as i32,
                uids: vec![map(0, 100_000), map(0, 300_000)],
                gids: vec![map(0, 100_000)],
            },
            "native",
        ),
        (
            "id 0 unmapped",
            api::UserNamespace {
                mode: api::NamespaceMode::Pod as i32,
                uids: vec![map(1, 100_000)],
                gids: vec![map(1, 100_000)],
            },
            "native",
        ),
        (
            "host root mapped",
            api::UserNamespace {
                mode: api::NamespaceMode::Pod as i32,
                uids: vec![map(0, 0)],
                gids: vec![map(0, 0)],
            },
            "native",
        ),
        (
            "mode container",
            api::UserNamespace {
                mode: api::NamespaceMode::Container as i32,
                ..Default::default()
            },
            "native",
        ),
        (
            "mode target",
            api::UserNamespace {
                mode: api::NamespaceMode::Target as i32,
                ..Default::default()
            },
            "native",
        ),
        (
            "a handler without user namespaces",
            api::UserNamespace {
                mode: api::NamespaceMode::Pod as i32,
                uids: vec![map(0, 100_000)],
                gids: vec![map(0, 100_000)],
            },
            "runc",
        ),
    ];
    for (what, opts, handler) in cases {
        let mut cfg = userns_pod("bad-userns", &logs, 100_000);
        cfg.linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
            .unwrap()
            .userns_options = Some(opts);
        let err = c
            .runtime
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: handler.into(),
            })
            .await
            .expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains("user namespace"), "{what}: {err:?}");
    }
    let ns = env.skiffd.state.join("ns");
    let left = std::fs::read_dir(&ns).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "namespaces left in {}", ns.display());
    // The same name then runs (nothing of the refused attempts was reserved).
    let cfg = userns_pod("bad-userns", &logs, 100_000);
    let pod = run_pod(&mut c, &cfg, "native").await;
    common::end_pod(&mut c, &pod).await;
}

/// A user-namespaced pod as the kubelet sends it (each container its own PID namespace)
/// with a non-root container user, across a skiffd crash: the namespace holds after the
/// restart, exec still enters it, and the pod goes without leaving a pinned namespace
/// or a mount behind.
#[tokio::test]
async fn a_user_namespaced_pod_survives_a_skiffd_crash_and_goes_cleanly() {
    let Some((mut env, c)) = setup("native_userns_restart").await else {
        return;
    };
    let mut c = c;
    let logs = env.skiffd.dir().join("logs");
    let mut pod_cfg = userns_pod("userns-crash", &logs, 300_000);
    if let Some(ns) = pod_cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = api::NamespaceMode::Container as i32;
    }
    let pod = run_pod(&mut c, &pod_cfg, "native").await;
    let mut ctr_cfg = restricted_ctr("userns-crash-ctr", "/");
    ctr_cfg.command = vec!["sleep".into(), "1000".into()];
    ctr_cfg.linux = Some(api::LinuxContainerConfig {
        security_context: Some(api::LinuxContainerSecurityContext {
            run_as_user: Some(api::Int64Value { value: 1000 }),
            namespace_options: Some(api::NamespaceOption {
                pid: api::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let ctr = create_and_start(&mut c, &pod, &pod_cfg, ctr_cfg).await;
    let check = |c: &mut CriClient| {
        let ctr = ctr.clone();
        let mut c = c.clone();
        async move {
            let out = sh(
                &mut c,
                &ctr,
                "id -u; cat /proc/self/uid_map; tr '\\0' ' ' < /proc/1/cmdline",
            )
            .await;
            let words: Vec<String> = out.split_whitespace().map(String::from).collect();
            assert_eq!(words, ["1000", "0", "300000", "65536", "sleep", "1000"]);
        }
    };
    check(&mut c).await;
    drop(c);
    env.skiffd.kill();
    env.skiffd.restart().unwrap();
    let mut c = env.skiffd.client().await;
    check(&mut c).await;
    common::end_pod(&mut c, &pod).await;
    let ns_dir = env.skiffd.state.join("ns").join(&pod);
    assert!(
        !ns_dir.join("user").exists(),
        "the user namespace stayed pinned"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&pod[..16]),
        "mounts of the pod are left: {mounts}"
    );
}

/// A CRI mount with mappings of its own is idmapped with them, in a pod without a user
/// namespace too (on any handler: skiff makes the mount).
#[tokio::test]
async fn a_mount_with_its_own_mappings_is_idmapped() {
    let Some((env, mut c)) = setup("native_idmapped_mount").await else {
        return;
    };
    let logs = env.skiffd.dir().join("logs");
    let vol = env.skiffd.dir().join("mapped-volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("file"), "x").unwrap();
    std::os::unix::fs::chown(vol.join("file"), Some(7), Some(8)).unwrap();
    for handler in ["native", "runc"] {
        let pod_cfg = pod_config(&format!("mapped-{handler}"), &logs, vec![]);
        let pod = run_pod(&mut c, &pod_cfg, handler).await;
        let mut ctr_cfg = restricted_ctr(&format!("mapped-ctr-{handler}"), "/");
        ctr_cfg.command = vec!["sleep".into(), "1000".into()];
        ctr_cfg.linux = Some(api::LinuxContainerConfig::default());
        let map = api::IdMapping {
            host_id: 5000,
            container_id: 0,
            length: 1000,
        };
        ctr_cfg.mounts = vec![api::Mount {
            container_path: "/mapped".into(),
            host_path: vol.display().to_string(),
            readonly: true,
            uid_mappings: vec![map],
            gid_mappings: vec![map],
            ..Default::default()
        }];
        let ctr = create_and_start(&mut c, &pod, &pod_cfg, ctr_cfg).await;
        assert_eq!(
            sh(&mut c, &ctr, "stat -c %u:%g /mapped/file").await,
            "5007:5008",
            "{handler}"
        );
        common::end_pod(&mut c, &pod).await;
    }
    assert_eq!(std::fs::read_to_string(vol.join("file")).unwrap(), "x");
}
