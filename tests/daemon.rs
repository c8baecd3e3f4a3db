//! End-to-end: skiffd's CRI endpoint, config handling and life cycle, driven over its
//! real socket with the project's CRI client. Most need no root (`common::start_daemon`
//! runs skiffd as the caller, in CNI mode); those that check the built-in network do.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use skiff_cri::api;
use skiff_testkit::skiffd::SkiffdOptions;
use tokio_stream::StreamExt;

#[tokio::test]
async fn version_status_and_runtime_config() {
    let Some(env) = common::start(
        "version_status_and_runtime_config",
        SkiffdOptions::default(),
    ) else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let v = c
        .runtime
        .version(api::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "skiff");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    let s = c
        .runtime
        .status(api::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conds = s.status.unwrap().conditions;
    let runtime = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    // runc is installed by the set-up script and skiff-shim sits next to skiffd.
    assert!(runtime.status, "runtime not ready: {runtime:?}");
    let network = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    // The built-in bridge came up in the test's network namespace.
    assert!(network.status, "network not ready: {network:?}");
    assert!(
        s.runtime_handlers.iter().any(|h| h.name.is_empty()),
        "default handler listed"
    );
    assert!(s.runtime_handlers.iter().any(|h| h.name == "runc"));
    // Features come from `runc features` (runc 1.1 lists `rro`); no user namespaces with runc 1.1.
    let runc_features = std::process::Command::new("runc")
        .arg("features")
        .output()
        .unwrap();
    let rro = String::from_utf8_lossy(&runc_features.stdout).contains("\"rro\"");
    let runc = s
        .runtime_handlers
        .iter()
        .find(|h| h.name == "runc")
        .unwrap();
    let f = runc.features.unwrap();
    assert_eq!(f.recursive_read_only_mounts, rro);
    assert!(!f.user_namespaces);
    // The native handler (the default) mounts `rro` itself and runs user-namespaced pods
    // (this kernel idmaps mounts on ext4 and tmpfs, where the tests' roots are).
    for name in ["native", ""] {
        let h = s.runtime_handlers.iter().find(|h| h.name == name).unwrap();
        let f = h.features.unwrap();
        assert!(f.recursive_read_only_mounts, "{name:?}");
        assert!(f.user_namespaces, "{name:?}");
    }
    assert!(s.features.unwrap().supplemental_groups_policy);
    for value in s.info.values() {
        serde_json::from_str::<serde_json::Value>(value).expect("verbose info values are JSON");
    }

    let rc = c
        .runtime
        .runtime_config(api::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        api::CgroupDriver::Cgroupfs as i32
    );

    // The socket is 0660.
    let mode = std::fs::metadata(&env.skiffd.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
}

#[tokio::test]
async fn unimplemented_and_invalid_requests_get_clear_codes() {
    let env = common::start_daemon(SkiffdOptions::default());
    let mut c = env.skiffd.client().await;

    // A well-formed request for a feature not built yet: Unimplemented, naming the method.
    let e = c
        .runtime
        .checkpoint_container(api::CheckpointContainerRequest {
            container_id: "c1".into(),
            location: "/tmp/c1.tar".into(),
            timeout: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    assert!(e.message().contains("CheckpointContainer"), "{e:?}");
    // Streaming requests for objects that do not exist: NotFound.
    let e = c
        .runtime
        .exec(api::ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = c
        .runtime
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // An unknown runtime handler is refused, naming it.
    let pod = api::RunPodSandboxRequest {
        config: Some(api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: "p".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            linux: Some(api::LinuxPodSandboxConfig::default()),
            ..Default::default()
        }),
        runtime_handler: "no-such-handler".into(),
    };
    let e = c.runtime.run_pod_sandbox(pod).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("no-such-handler"), "{e:?}");

    // Missing required fields: InvalidArgument naming the field.
    let e = c
        .runtime
        .run_pod_sandbox(api::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("config"), "{e:?}");
    let e = c
        .runtime
        .container_status(api::ContainerStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("container_id"), "{e:?}");
    let e = c
        .images
        .pull_image(api::PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = c
        .runtime
        .exec_sync(api::ExecSyncRequest {
            container_id: "abc".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("cmd"), "{e:?}");

    // Still serving.
    c.runtime
        .version(api::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn garbage_on_the_socket_does_not_stop_serving() {
    let env = common::start_daemon(SkiffdOptions::default());
    for payload in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x09\x00\x00\x00\x00\x00garbage",
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&env.skiffd.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(payload);
        let mut buf = [0u8; 256];
        let _ = std::io::Read::read(&mut s, &mut buf);
    }
    // A connection that sends nothing and stays open must not block others either.
    let _idle = std::os::unix::net::UnixStream::connect(&env.skiffd.socket).unwrap();
    let mut c = env.skiffd.client().await;
    let v = c
        .runtime
        .version(api::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "skiff");
}

#[tokio::test]
async fn sigterm_exits_zero_quickly_with_connections_open() {
    let mut env = common::start_daemon(SkiffdOptions::default());
    let mut c = env.skiffd.client().await;
    c.runtime
        .version(api::VersionRequest::default())
        .await
        .unwrap();
    let _idle = std::os::unix::net::UnixStream::connect(&env.skiffd.socket).unwrap();
    // A stream of calls in flight from another task while the signal arrives.
    let mut c2 = c.clone();
    let busy = tokio::spawn(async move {
        let mut stream = tokio_stream::iter(0..1000);
        while stream.next().await.is_some() {
            if c2
                .runtime
                .version(api::VersionRequest::default())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let (status, took) = env.skiffd.stop(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "exit status {status}\n{}",
        env.skiffd.log_text()
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!env.skiffd.socket.exists(), "socket removed on clean exit");
    busy.abort();
    drop(c);
}

#[tokio::test]
async fn stale_socket_is_replaced_and_live_one_refused() {
    let mut env = common::start_daemon(SkiffdOptions::default());
    // A second skiffd on the same socket (other state dir) must refuse to start.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(common::skiffd_bin())
        .arg("--socket")
        .arg(&env.skiffd.socket)
        .arg("--root")
        .arg(other.path().join("root"))
        .arg("--state")
        .arg(other.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another process is serving") && err.contains("skiff.sock"),
        "{err}"
    );
    // Same state dir, other socket: refused by the state lock.
    let out = Command::new(common::skiffd_bin())
        .arg("--socket")
        .arg(other.path().join("x.sock"))
        .arg("--root")
        .arg(&env.skiffd.root)
        .arg("--state")
        .arg(&env.skiffd.state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another skiffd is running"), "{err}");

    // Crash: the socket file stays behind; a restart replaces it.
    env.skiffd.kill();
    assert!(env.skiffd.socket.exists());
    env.skiffd.restart().unwrap();
    let mut c = env.skiffd.client().await;
    c.runtime
        .version(api::VersionRequest::default())
        .await
        .unwrap();
}

fn start_fails(args: &[&str], config: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(common::skiffd_bin());
    cmd.arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"));
    if !args.contains(&"--socket") {
        cmd.arg("--socket").arg(dir.path().join("s.sock"));
    }
    if let Some(text) = config {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(path);
    }
    let out = cmd.args(args).output().unwrap();
    assert!(
        !out.status.success(),
        "skiffd started with {args:?} {config:?}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_start_up_input_exits_nonzero_naming_the_problem() {
    let e = start_fails(&[], Some("this is = = not toml"));
    assert!(e.contains("bad.toml"), "{e}");
    let e = start_fails(&[], Some("[network]\nbogus = 1\n"));
    assert!(e.contains("bad.toml") && e.contains("bogus"), "{e}");
    let e = start_fails(&[], Some("[network]\npod_cidr = \"10.1.0.0/99\"\n"));
    assert!(e.contains("network.pod_cidr"), "{e}");
    let e = start_fails(&["--config", "/nonexistent/skiff.toml"], None);
    assert!(e.contains("/nonexistent/skiff.toml"), "{e}");
    // A socket whose directory cannot be created (its parent is a regular file).
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let sock = blocker.path().join("sub").join("s.sock");
    let e = start_fails(&["--socket", sock.to_str().unwrap()], None);
    assert!(e.contains(blocker.path().to_str().unwrap()), "{e}");
    let e = start_fails(&["--log-level", "[[["], None);
    assert!(e.contains("log-level"), "{e}");
}

#[test]
fn version_flag() {
    let out = Command::new(common::skiffd_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn cli_version_and_info_talk_to_skiffd() {
    let env = common::start_daemon(SkiffdOptions::default());
    let endpoint = format!("unix://{}", env.skiffd.socket.display());
    let out = Command::new(common::skiff_bin())
        .args(["-r", &endpoint, "version"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("RuntimeName:  skiff") && text.contains("RuntimeApiVersion:  v1"),
        "{text}"
    );

    let out = Command::new(common::skiff_bin())
        .args(["-r", &endpoint, "info"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["status"]["conditions"].is_array(), "{doc}");
    assert_eq!(doc["config"]["socket"], env.skiffd.socket.to_str().unwrap());

    // An endpoint nobody serves: a clear error, non-zero.
    let out = Command::new(common::skiff_bin())
        .args(["-r", "unix:///nonexistent/skiff.sock", "version"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/skiff.sock"));
}

#[test]
fn config_file_flags_override() {
    let env = common::start_daemon(SkiffdOptions {
        config_toml: Some(
            "socket = \"/nonexistent/ignored.sock\"\n[network]\npod_cidr = \"10.77.0.0/24\"\n"
                .into(),
        ),
        ..Default::default()
    });
    // The harness passes --socket, which wins over the file's socket.
    let endpoint = format!("unix://{}", env.skiffd.socket.display());
    let out = Command::new(common::skiff_bin())
        .args(["-r", &endpoint, "info"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["config"]["pod_cidr"], "10.77.0.0/24");
    assert_eq!(doc["config"]["pod_cidr_from_file"], true);
}

#[tokio::test]
async fn cni_mode_is_reported_not_ready_truthfully() {
    let env = common::start_daemon(SkiffdOptions {
        config_toml: Some("[network]\nmode = \"cni\"\n".into()),
        ..Default::default()
    });
    let mut c = env.skiffd.client().await;
    let s = c
        .runtime
        .status(api::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let network = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!network.status);
    assert!(
        network.message.to_lowercase().contains("cni"),
        "{network:?}"
    );
}
