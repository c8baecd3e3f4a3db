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
