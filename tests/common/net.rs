//! Helpers of the pod networking tests (built-in bridge and CNI mode): a busybox image
//! with a web page, pod and container configs, and HTTP from inside a namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use skiff_cri::api;
use skiff_cri::client::CriClient;
use skiff_testkit::NetNs;
use skiff_testkit::image::{Compression, ImageBuilder, busybox_rootfs};

use super::RegistryEnv;

/// The test image: busybox with `/www/index.html` ("hello from the pod").
pub const IMAGE: &str = "127.0.0.1:5000/test/busybox:net";

/// skiffd (with `extra_config` appended to its config) + registry with [`IMAGE`]
/// pulled; `None` (skip) without root.
pub async fn setup(test: &str, extra_config: &str) -> Option<(RegistryEnv, CriClient)> {
    let env = super::start_with_registry(test, extra_config, &[])?;
    let mut rootfs = busybox_rootfs().unwrap();
    rootfs
        .dir("www", 0o755)
        .file("www/index.html", 0o644, "hello from the pod\n");
    let image = ImageBuilder::new()
        .layer(rootfs.finish(Compression::Gzip).unwrap())
        .cmd(["sh"])
        .build();
    env.push("test/busybox", "net", &image);
    let mut c = env.skiffd.client().await;
    super::pull(&mut c, IMAGE).await;
    Some((env, c))
}

/// A pod in namespace `default` with hostname `<name>-host` and these port mappings.
pub fn pod_config(name: &str, logs: &Path, ports: Vec<api::PortMapping>) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("{name}-uid"),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: logs.display().to_string(),
        port_mappings: ports,
        linux: Some(api::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// A CRI port mapping.
pub fn port(protocol: api::Protocol, container: i32, host: i32, host_ip: &str) -> api::PortMapping {
    api::PortMapping {
        protocol: protocol as i32,
        container_port: container,
        host_port: host,
        host_ip: host_ip.into(),
    }
}

/// A container of [`IMAGE`] running `cmd`.
pub fn ctr_config(name: &str, cmd: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(api::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// RunPodSandbox.
pub async fn run_pod(
    c: &mut CriClient,
    cfg: &api::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    c.runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// CreateContainer + StartContainer.
pub async fn create_and_start(
    c: &mut CriClient,
    pod: &str,
    pod_cfg: &api::PodSandboxConfig,
    cfg: api::ContainerConfig,
) -> String {
    let id = c
        .runtime
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    c.runtime
        .start_container(api::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    id
}

/// ExecSync.
pub async fn exec(
    c: &mut CriClient,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> api::ExecSyncResponse {
    c.runtime
        .exec_sync(api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .expect("ExecSync")
        .into_inner()
}

/// `wget -q -O - url` inside container `ctr`, limited to 8 s (busybox 1.35's `wget -T`
/// crashes): the exit code, stdout and stderr.
pub async fn wget(c: &mut CriClient, ctr: &str, url: &str) -> (i32, String, String) {
    let r = exec(c, ctr, &["timeout", "8", "wget", "-q", "-O", "-", url], 10).await;
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

/// PodSandboxStatus.
pub async fn pod_status(
    c: &mut CriClient,
    pod: &str,
    verbose: bool,
) -> api::PodSandboxStatusResponse {
    c.runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose,
        })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {pod}: {e:?}"))
        .into_inner()
}

/// The pod's IP as PodSandboxStatus reports it.
pub async fn pod_ip(c: &mut CriClient, pod: &str) -> String {
    pod_status(c, pod, false)
        .await
        .status
        .unwrap()
        .network
        .unwrap()
        .ip
}

/// The `NetworkReady` condition of Status.
pub async fn network_ready(c: &mut CriClient) -> api::RuntimeCondition {
    c.runtime
        .status(api::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap()
}

/// One HTTP/1.0 GET of `/index.html` from the calling thread's namespace.
pub fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// GET `addr` from inside `ns` until the pod answers (its httpd may still be starting).
pub fn wait_http(ns: &NetNs, addr: &str) -> String {
    let addr: SocketAddr = addr.parse().unwrap();
    let start = Instant::now();
    loop {
        match ns.run(|| http_get(addr)) {
            Ok(body) if body.contains("hello from the pod") => return body,
            r => assert!(
                start.elapsed() < Duration::from_secs(20),
                "{addr} from {}: {r:?}",
                ns.name()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a TCP connection to `addr` from inside `ns` is refused or times out.
pub fn no_answer(ns: &NetNs, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(|| http_get(addr)).is_err()
}

/// The stdout of `program args` run inside `ns`.
pub fn output_in(ns: &NetNs, program: &str, args: &[&str]) -> String {
    let out = ns.command(program).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of the links in `ns` (without the `@peer` suffix).
pub fn links(ns: &NetNs) -> Vec<String> {
    output_in(ns, "ip", &["-o", "link"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}
