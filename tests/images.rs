//! End-to-end: the CRI ImageService against a real registry (Debian's docker-registry)
//! in a test network namespace. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{REGISTRY, RegistryEnv};
use skiff_cri::api;
use skiff_cri::client::CriClient;
use skiff_testkit::image::{Compression, ImageBuilder, LayerBuilder, busybox_layer};

fn spec(image: &str) -> Option<api::ImageSpec> {
    Some(api::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(c: &mut CriClient, image: &str) -> Result<String, tonic::Status> {
    c.images
        .pull_image(api::PullImageRequest {
            image: spec(image),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(c: &mut CriClient, image: &str, verbose: bool) -> api::ImageStatusResponse {
    c.images
        .image_status(api::ImageStatusRequest {
            image: spec(image),
            verbose,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn list(c: &mut CriClient) -> Vec<api::Image> {
    c.images
        .list_images(api::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn remove(c: &mut CriClient, image: &str) {
    c.images
        .remove_image(api::RemoveImageRequest { image: spec(image) })
        .await
        .unwrap();
}

fn snapshot_dirs(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("snapshots"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn busybox(compression: Compression) -> skiff_testkit::image::Image {
    ImageBuilder::new()
        .layer(busybox_layer(compression).unwrap())
        .cmd(["sh"])
        .user("1000")
        .build()
}

#[tokio::test]
async fn pull_list_inspect_remove() {
    let Some(env) = common::start_with_registry("pull_list_inspect_remove", "", &[]) else {
        return;
    };
    let image = busybox(Compression::Gzip);
    env.push("test/busybox", "1.0", &image);
    let mut c = env.skiffd.client().await;
    let name = format!("{REGISTRY}/test/busybox:1.0");

    let id = pull(&mut c, &name).await.unwrap();
    assert_eq!(id, image.config_digest, "image_ref is the config digest");

    let images = list(&mut c).await;
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(img.id, image.config_digest);
    assert_eq!(img.repo_tags, vec![name.clone()]);
    assert_eq!(
        img.repo_digests,
        vec![format!("{REGISTRY}/test/busybox@{}", image.manifest_digest)]
    );
    assert_eq!(img.uid.as_ref().map(|u| u.value), Some(1000));
    assert!(img.size > 0);

    // Status by tag, by id, by short hex id, by digest name.
    for key in [
        name.clone(),
        image.config_digest.clone(),
        image
            .config_digest
            .trim_start_matches("sha256:")
            .to_string(),
        format!("{REGISTRY}/test/busybox@{}", image.manifest_digest),
    ] {
        let s = status(&mut c, &key, false).await;
        assert_eq!(
            s.image.map(|i| i.id),
            Some(image.config_digest.clone()),
            "{key}"
        );
    }
    let s = status(&mut c, &name, true).await;
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "sh");
    assert!(
        status(&mut c, "docker.io/library/nothing:here", false)
            .await
            .image
            .is_none()
    );

    // The layer is unpacked for real.
    let snaps = snapshot_dirs(&env.skiffd.root);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let sh = snaps[0].join("fs/bin/sh");
    assert_eq!(std::fs::read_link(&sh).unwrap(), PathBuf::from("busybox"));
    assert!(snaps[0].join("fs/bin/busybox").is_file());

    // Filtered list.
    let filtered = c
        .images
        .list_images(api::ListImagesRequest {
            filter: Some(api::ImageFilter { image: spec(&name) }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);

    // ImageFsInfo reports real usage.
    let fs = c
        .images
        .image_fs_info(api::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(usage.used_bytes.as_ref().unwrap().value > 1_000_000);
    assert!(usage.inodes_used.as_ref().unwrap().value > 10);

    // A second pull asks the registry again and gives the same id.
    assert_eq!(pull(&mut c, &name).await.unwrap(), id);

    // Remove by tag removes the image with all its names, and GC drops the layer.
    remove(&mut c, &name).await;
    assert!(
        status(&mut c, &image.config_digest, false)
            .await
            .image
            .is_none()
    );
    assert!(list(&mut c).await.is_empty());
    assert!(snapshot_dirs(&env.skiffd.root).is_empty());
    // Removing again is not an error.
    remove(&mut c, &name).await;
}

#[tokio::test]
async fn mirror_zstd_docker_types_and_index() {
    let Some(env) = common::start_with_registry("mirror_zstd_docker_types_and_index", "", &[])
    else {
        return;
    };
    let mut c = env.skiffd.client().await;

    // docker.io is mirrored to the local registry; the short name is normalised.
    let zstd = busybox(Compression::Zstd);
    env.push("library/busybox", "latest", &zstd);
    let id = pull(&mut c, "busybox").await.unwrap();
    assert_eq!(id, zstd.config_digest);
    let img = status(&mut c, "busybox", false).await.image.unwrap();
    assert_eq!(
        img.repo_tags,
        vec!["docker.io/library/busybox:latest".to_string()]
    );
    assert!(
        status(&mut c, "docker.io/library/busybox:latest", false)
            .await
            .image
            .is_some()
    );

    // Docker schema 2 media types.
    let docker = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .docker_media_types(true)
        .build();
    env.push("test/docker", "v2", &docker);
    assert_eq!(
        pull(&mut c, &format!("{REGISTRY}/test/docker:v2"))
            .await
            .unwrap(),
        docker.config_digest
    );

    // A multi-arch index resolves to this node's platform.
    let native = busybox(Compression::Gzip);
    let other = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("other-arch", 0o644, "x")
                .finish(Compression::Gzip)
                .unwrap(),
        )
        .arch(if skiff_testkit::image::host_arch() == "amd64" {
            "arm64"
        } else {
            "amd64"
        })
        .build();
    let arch = skiff_testkit::image::host_arch();
    let other_arch = if arch == "amd64" { "arm64" } else { "amd64" };
    let (index, index_digest) =
        skiff_testkit::image::index(&[(&other, other_arch), (&native, arch)]);
    env.netns
        .run(|| skiff_testkit::push_index(REGISTRY, "test/multi", "1", &index, &[&other, &native]))
        .unwrap();
    let name = format!("{REGISTRY}/test/multi:1");
    assert_eq!(pull(&mut c, &name).await.unwrap(), native.config_digest);
    let img = status(&mut c, &name, false).await.image.unwrap();
    // The same config as the busybox pulled above: one image with both names.
    assert!(
        img.repo_digests
            .contains(&format!("{REGISTRY}/test/multi@{index_digest}")),
        "{img:?}"
    );
    assert!(
        img.repo_tags
            .contains(&"docker.io/library/busybox:latest".to_string())
    );

    // Pull by digest.
    let by_digest = format!("{REGISTRY}/test/docker@{}", docker.manifest_digest);
    assert_eq!(
        pull(&mut c, &by_digest).await.unwrap(),
        docker.config_digest
    );
}

#[tokio::test]
async fn shared_layers_survive_removal_of_one_image() {
    let Some(env) = common::start_with_registry("shared_layers_survive_removal", "", &[]) else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let base = busybox_layer(Compression::Gzip).unwrap();
    let a = ImageBuilder::new()
        .layer(base.clone())
        .layer(
            LayerBuilder::new()
                .file("a.txt", 0o644, "a")
                .finish(Compression::Gzip)
                .unwrap(),
        )
        .build();
    let b = ImageBuilder::new()
        .layer(base)
        .layer(
            LayerBuilder::new()
                .file("b.txt", 0o644, "b")
                .finish(Compression::Zstd)
                .unwrap(),
        )
        .build();
    env.push("test/a", "1", &a);
    env.push("test/b", "1", &b);
    pull(&mut c, &format!("{REGISTRY}/test/a:1")).await.unwrap();
    pull(&mut c, &format!("{REGISTRY}/test/b:1")).await.unwrap();
    assert_eq!(
        snapshot_dirs(&env.skiffd.root).len(),
        3,
        "base layer shared"
    );
    remove(&mut c, &a.config_digest).await;
    assert_eq!(snapshot_dirs(&env.skiffd.root).len(), 2);
    assert!(
        status(&mut c, &format!("{REGISTRY}/test/b:1"), false)
            .await
            .image
            .is_some()
    );
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_share_the_work() {
    let Some(env) = common::start_with_registry("concurrent_pulls_share_work", "", &[]) else {
        return;
    };
    let image = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .layer(skiff_testkit::image::big_files_layer(
            4,
            4 << 20,
            Compression::Zstd,
        ))
        .build();
    env.push("test/big", "1", &image);
    let name = format!("{REGISTRY}/test/big:1");
    let c = env.skiffd.client().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = c.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move { pull(&mut c, &name).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), image.config_digest);
    }
    assert_eq!(snapshot_dirs(&env.skiffd.root).len(), 2);
}

#[tokio::test]
async fn registry_errors_are_clear_and_leave_nothing() {
    let Some(env) = common::start_with_registry(
        "registry_errors_are_clear",
        "",
        &[("SKIFF_REGISTRY_ATTEMPTS", "2")],
    ) else {
        return;
    };
    let mut c = env.skiffd.client().await;

    let e = pull(&mut c, &format!("{REGISTRY}/test/missing:1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("test/missing"), "{e:?}");

    let e = pull(&mut c, "UPPER/Case:bad").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // A registry nobody serves: Unavailable, naming the host.
    let e = pull(&mut c, "127.0.0.1:1/x/y:1").await.unwrap_err();
    assert!(matches!(e.code(), tonic::Code::Unavailable), "{e:?}");
    assert!(e.message().contains("127.0.0.1:1"), "{e:?}");

    // A config whose diff_id does not match its layer: refused, nothing visible.
    let mut bad = busybox(Compression::Gzip);
    let mut config: serde_json::Value = serde_json::from_slice(&bad.config).unwrap();
    config["rootfs"]["diff_ids"][0] =
        serde_json::Value::String(format!("sha256:{}", "0".repeat(64)));
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = skiff_testkit::sha256_digest(&config_bytes);
    let mut manifest: serde_json::Value = serde_json::from_slice(&bad.manifest).unwrap();
    manifest["config"]["digest"] = serde_json::Value::String(config_digest.clone());
    manifest["config"]["size"] = serde_json::json!(config_bytes.len());
    bad.config = config_bytes;
    bad.config_digest = config_digest;
    bad.manifest = serde_json::to_vec(&manifest).unwrap();
    bad.manifest_digest = skiff_testkit::sha256_digest(&bad.manifest);
    env.push("test/bad", "1", &bad);
    let e = pull(&mut c, &format!("{REGISTRY}/test/bad:1"))
        .await
        .unwrap_err();
    assert!(e.message().contains("diff_id"), "{e:?}");
    assert!(list(&mut c).await.is_empty());
    assert!(
        snapshot_dirs(&env.skiffd.root).is_empty(),
        "no half layer visible"
    );

    // A blob corrupted in the registry's storage: digest mismatch, nothing visible.
    let good = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .pseudo_random_file("f", 0o644, 7, 1 << 20)
                .finish(Compression::Gzip)
                .unwrap(),
        )
        .build();
    env.push("test/corrupt", "1", &good);
    let digest_hex = good.layers[0]
        .digest
        .trim_start_matches("sha256:")
        .to_string();
    let data = env
        .registry
        .data_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&digest_hex[..2])
        .join(&digest_hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let e = pull(&mut c, &format!("{REGISTRY}/test/corrupt:1"))
        .await
        .unwrap_err();
    assert!(e.message().contains(&digest_hex[..12]), "{e:?}");
    assert!(list(&mut c).await.is_empty());
    assert!(snapshot_dirs(&env.skiffd.root).is_empty());

    // The next good pull succeeds.
    env.push("test/good", "1", &busybox(Compression::Gzip));
    pull(&mut c, &format!("{REGISTRY}/test/good:1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn hostile_layer_cannot_write_outside_its_root() {
    let Some(env) = common::start_with_registry("hostile_layer_cannot_escape", "", &[]) else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let outside = env.skiffd.dir().join("pwned");
    let mut layer = LayerBuilder::new();
    layer
        .raw_entry(
            b"../../../pwned",
            tar::EntryType::Regular,
            None,
            b"x".to_vec(),
        )
        .raw_entry(
            format!("{}", outside.display()).as_bytes(),
            tar::EntryType::Regular,
            None,
            b"x".to_vec(),
        )
        .symlink("evil", "/")
        .raw_entry(
            format!("evil{}", outside.display()).as_bytes(),
            tar::EntryType::Regular,
            None,
            b"x".to_vec(),
        )
        .symlink("up", "../../../../../..")
        .raw_entry(b"up/pwned", tar::EntryType::Regular, None, b"x".to_vec());
    let image = ImageBuilder::new()
        .layer(layer.finish(Compression::Gzip).unwrap())
        .build();
    env.push("test/hostile", "1", &image);
    let _ = pull(&mut c, &format!("{REGISTRY}/test/hostile:1")).await;
    assert!(!outside.exists(), "a tar entry escaped the layer root");
    assert!(!env.skiffd.dir().join("root/pwned").exists());
    assert!(!env.skiffd.dir().join("root/snapshots/pwned").exists());
    assert!(!Path::new("/pwned").exists());
    // skiffd is still fine.
    c.runtime
        .version(api::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn sigkill_mid_pull_then_pull_again() {
    let Some(mut env) = common::start_with_registry("sigkill_mid_pull", "", &[]) else {
        return;
    };
    let image = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .layer(skiff_testkit::image::many_small_files_layer(
            4_000,
            2048,
            Compression::Gzip,
        ))
        .layer(skiff_testkit::image::big_files_layer(
            4,
            8 << 20,
            Compression::Gzip,
        ))
        .build();
    env.push("test/crash", "1", &image);
    let name = format!("{REGISTRY}/test/crash:1");
    let mut c = env.skiffd.client().await;
    let pulling = {
        let mut c = c.clone();
        let name = name.clone();
        tokio::spawn(async move { pull(&mut c, &name).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.skiffd.kill();
    assert!(pulling.await.unwrap().is_err(), "the pull was interrupted");
    env.skiffd.restart().unwrap();
    c = env.skiffd.client().await;
    // Restart cleaned every half-written snapshot and ingest.
    for p in snapshot_dirs(&env.skiffd.root) {
        assert!(
            !p.file_name().unwrap().to_string_lossy().starts_with("tmp-"),
            "{p:?} left over"
        );
    }
    assert_eq!(pull(&mut c, &name).await.unwrap(), image.config_digest);
    assert_eq!(snapshot_dirs(&env.skiffd.root).len(), 3);
    let img = status(&mut c, &name, false).await.image.unwrap();
    assert_eq!(img.id, image.config_digest);
    let _ = &env as &RegistryEnv;
}

fn docker_save_tar(image: &skiff_testkit::image::Image, tag: &str, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes).unwrap();
    };
    let config_name = format!("{}.json", image.config_digest.trim_start_matches("sha256:"));
    add(&config_name, &image.config);
    let mut layers = Vec::new();
    for (i, l) in image.layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        add(&name, &l.tar());
        layers.push(name);
    }
    let manifest =
        serde_json::json!([{ "Config": config_name, "RepoTags": [tag], "Layers": layers }]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.into_inner().unwrap();
}

fn skiff(env: &RegistryEnv, args: &[&str]) -> std::process::Output {
    let endpoint = format!("unix://{}", env.skiffd.socket.display());
    std::process::Command::new(common::skiff_bin())
        .arg("-r")
        .arg(endpoint)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn import_oci_layout_and_docker_save_like_a_pull() {
    let Some(env) = common::start_with_registry("import_oci_layout_and_docker_save", "", &[])
    else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let dir = tempfile::tempdir().unwrap();

    // OCI layout whose ref name is a full reference.
    let image = busybox(Compression::Gzip);
    let oci = dir.path().join("oci.tar");
    skiff_testkit::image::write_oci_layout_tar(&image, "example.com/app/busybox:1.2", &oci)
        .unwrap();
    let out = skiff(&env, &["image", "import", oci.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&image.config_digest));
    let img = status(&mut c, "example.com/app/busybox:1.2", false)
        .await
        .image
        .unwrap();
    assert_eq!(img.id, image.config_digest);
    assert_eq!(snapshot_dirs(&env.skiffd.root).len(), 1);

    // The same image pulled afterwards shares the snapshot.
    env.push("test/busybox", "1", &image);
    assert_eq!(
        pull(&mut c, &format!("{REGISTRY}/test/busybox:1"))
            .await
            .unwrap(),
        image.config_digest
    );
    assert_eq!(snapshot_dirs(&env.skiffd.root).len(), 1);

    // docker save, two layers, zstd-free plain tars, a short tag normalised.
    let two = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .layer(
            LayerBuilder::new()
                .file("etc/app.conf", 0o644, "x=1")
                .finish(Compression::Gzip)
                .unwrap(),
        )
        .build();
    let saved = dir.path().join("docker.tar");
    docker_save_tar(&two, "myapp:v3", &saved);
    let out = skiff(&env, &["image", "import", saved.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = status(&mut c, "docker.io/library/myapp:v3", false)
        .await
        .image
        .unwrap();
    assert_eq!(img.id, two.config_digest);
    assert!(
        snapshot_dirs(&env.skiffd.root)
            .iter()
            .any(|p| p.join("fs/etc/app.conf").is_file())
    );

    // --name for an archive that names nothing; a bad archive is a clear error.
    let unnamed = dir.path().join("unnamed.tar");
    skiff_testkit::image::write_oci_layout_tar(&image, "latest", &unnamed).unwrap();
    let out = skiff(
        &env,
        &[
            "image",
            "import",
            "--name",
            "local/thing:7",
            unnamed.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status(&mut c, "docker.io/local/thing:7", false)
            .await
            .image
            .is_some()
    );
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar at all").unwrap();
    let out = skiff(&env, &["image", "import", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("junk.tar"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn cli_pull_images_rmi() {
    let Some(env) = common::start_with_registry("cli_pull_images_rmi", "", &[]) else {
        return;
    };
    let image = busybox(Compression::Zstd);
    env.push("test/cli", "2", &image);
    let name = format!("{REGISTRY}/test/cli:2");
    let out = skiff(&env, &["pull", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&image.config_digest), "{text}");
    assert!(
        text.contains("done"),
        "plain per-layer lines off a terminal: {text}"
    );
    let out = skiff(&env, &["images"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("127.0.0.1:5000/test/cli") && text.contains(" 2 "),
        "{text}"
    );
    let out = skiff(&env, &["images", "-q"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        image.config_digest
    );
    let out = skiff(&env, &["inspecti", &name]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"]["id"], image.config_digest.as_str());
    let out = skiff(&env, &["rmi", &name]);
    assert!(out.status.success());
    let out = skiff(&env, &["images", "-q"]);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    let out = skiff(&env, &["inspecti", &name]);
    assert!(!out.status.success());
}
