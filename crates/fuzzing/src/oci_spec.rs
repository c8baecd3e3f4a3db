//! The CRI → OCI spec generator on hostile CRI configs: a container and a pod config
//! (protobuf, as the kubelet sends them) and an image config (JSON). It builds a spec or
//! refuses with an error, never panics, and a spec it builds keeps every mount inside
//! the container and serialises.

use prost::Message;
use skiff::spec::{self, HostInfo, PidNs, PodFiles, PodNamespaces, SpecInputs};
use skiff_cri::api;
use std::path::{Path, PathBuf};

/// Split `data` into three parts at the lengths its first two bytes give.
fn parts(data: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (&a, rest) = data.split_first()?;
    let (&b, rest) = rest.split_first()?;
    let a = usize::from(a).min(rest.len());
    let (first, rest) = rest.split_at(a);
    let b = usize::from(b).min(rest.len());
    let (second, third) = rest.split_at(b);
    Some((first, second, third))
}

/// One input.
pub fn run(data: &[u8]) {
    let Some((ctr, pod, image)) = parts(data) else {
        return;
    };
    let (Ok(ctr), Ok(pod)) = (
        api::ContainerConfig::decode(ctr),
        api::PodSandboxConfig::decode(pod),
    ) else {
        return;
    };
    let image: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(image).unwrap_or_default();
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(rootfs.path().join("etc")).unwrap();
    std::fs::write(
        rootfs.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.path().join("etc/group"), "root:x:0:\n").unwrap();
    let host = HostInfo {
        bounding_caps: vec![
            "CAP_CHOWN".into(),
            "CAP_KILL".into(),
            "CAP_NET_BIND_SERVICE".into(),
        ],
        min_oom_score_adj: 0,
        cgroup_v2: false,
        rro_supported: false,
        swap_controller: true,
    };
    let inputs = SpecInputs {
        container_id: "c",
        pod_id: "p",
        pod: &pod,
        container: &ctr,
        image: &image,
        image_name: "",
        rootfs: rootfs.path(),
        files: PodFiles {
            hostname: None,
            hosts: None,
            resolv_conf: None,
            shm: None,
        },
        namespaces: PodNamespaces {
            net: Some(Path::new("/run/netns/x")),
            ipc: None,
            uts: None,
            pid: PidNs::Pod(PathBuf::from("/proc/1/ns/pid")),
            user: None,
        },
        cgroups_path: "/skiff/p/c".into(),
        host: &host,
    };
    if let Ok(s) = spec::build(&inputs) {
        for m in s.mounts().iter().flatten() {
            assert!(m.destination().is_absolute(), "{m:?}");
            assert!(
                !m.destination()
                    .components()
                    .any(|c| c == std::path::Component::ParentDir),
                "a mount destination with '..': {m:?}"
            );
        }
        serde_json::to_vec(&s).unwrap();
    }
}
