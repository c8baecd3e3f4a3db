//! A registry inside a fresh network namespace: push OCI, Docker schema2 and
//! index manifests and read them back. Needs root; skips otherwise.

use skiff_testkit::image::{
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use skiff_testkit::push::ACCEPT_ALL_MANIFESTS;
use skiff_testkit::{
    Compression, ImageBuilder, NetNs, Registry, RegistryClient, busybox_layer, index, push,
    push_index, sha256_digest, skip_unless_root,
};

#[test]
fn netns_is_isolated_and_removed_on_drop() {
    skip_unless_root!();
    let ns = NetNs::create("iso").unwrap();
    let path = ns.path().to_owned();
    assert!(path.exists());
    assert!(ns.name().len() < 30, "{}", ns.name());

    // A listener opened inside stays inside, even when used from here;
    // threads spawned inside `run` would inherit the namespace, so the
    // outside probe runs on the test thread.
    let listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "host namespace reached a socket inside the netns"
    );
    let inside = ns.run(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(inside, "socket reachable inside its namespace");
    drop(listener);

    let out = ns.command("ip").args(["-o", "link"]).output().unwrap();
    assert!(out.status.success());
    let links = String::from_utf8_lossy(&out.stdout);
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");

    drop(ns);
    assert!(!path.exists(), "namespace removed");
}

#[test]
fn panics_inside_run_propagate_and_still_clean_up() {
    skip_unless_root!();
    let ns = NetNs::create("panic").unwrap();
    let path = ns.path().to_owned();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(|| panic!("boom"));
    }));
    assert!(result.is_err());
    let registry_dir = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let registry = Registry::start(Some(&ns), None).unwrap();
        let dir = registry.data_dir();
        std::panic::panic_any(dir);
    }))
    .unwrap_err();
    let dir = registry_dir.downcast::<std::path::PathBuf>().unwrap();
    assert!(!dir.exists(), "registry storage removed while unwinding");
    drop(ns);
    assert!(!path.exists());
}

#[test]
fn push_and_fetch_oci_docker_and_index_in_netns() {
    skip_unless_root!();
    let ns = NetNs::create("reg").unwrap();
    let registry = Registry::start(Some(&ns), None).unwrap();
    assert_eq!(registry.host(), "127.0.0.1:5000");

    let oci = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .cmd(["/bin/sh"])
        .build();
    let docker = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .cmd(["/bin/sh"])
        .docker_media_types(true)
        .build();
    let zstd = ImageBuilder::new()
        .layer(busybox_layer(Compression::Zstd).unwrap())
        .build();
    let amd64 = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .arch("amd64")
        .build();
    let arm64 = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).unwrap())
        .arch("arm64")
        .build();
    let (index_bytes, index_digest) = index(&[(&amd64, "amd64"), (&arm64, "arm64")]);

    // The registry is only reachable from inside the namespace.
    let outside = RegistryClient::with_timeout(&registry.host(), std::time::Duration::from_secs(2));
    if registry_port_is_free_outside() {
        assert!(
            outside.ping().is_err(),
            "registry reachable from the host namespace"
        );
    }

    let host = registry.host();
    ns.run(|| {
        push(&host, "test/busybox", "oci", &oci).unwrap();
        push(&host, "test/busybox", "docker", &docker).unwrap();
        push(&host, "test/busybox", "zstd", &zstd).unwrap();
        // Pushing again is a no-op for blobs and rewrites the tag.
        push(&host, "test/busybox", "oci", &oci).unwrap();
        push_index(
            &host,
            "test/multi",
            "latest",
            &index_bytes,
            &[&amd64, &arm64],
        )
        .unwrap();

        let client = RegistryClient::new(&host);
        for (tag, image, media_type) in [
            ("oci", &oci, MEDIA_TYPE_OCI_MANIFEST),
            ("docker", &docker, MEDIA_TYPE_DOCKER_MANIFEST),
            ("zstd", &zstd, MEDIA_TYPE_OCI_MANIFEST),
        ] {
            let got = client
                .get_manifest("test/busybox", tag, &[media_type])
                .unwrap();
            assert_eq!(
                got.digest.as_deref(),
                Some(image.manifest_digest.as_str()),
                "{tag}"
            );
            assert_eq!(got.content_type.as_deref(), Some(media_type), "{tag}");
            assert_eq!(got.bytes, image.manifest, "{tag}");
            let by_digest = client
                .get_manifest("test/busybox", &image.manifest_digest, ACCEPT_ALL_MANIFESTS)
                .unwrap();
            assert_eq!(by_digest.bytes, image.manifest);
            let layer = &image.layers[0];
            let blob = client.get_blob("test/busybox", &layer.digest).unwrap();
            assert_eq!(sha256_digest(&blob), layer.digest);
            let config = client
                .get_blob("test/busybox", &image.config_digest)
                .unwrap();
            assert_eq!(config, image.config);
        }

        let got = client
            .get_manifest("test/multi", "latest", &[MEDIA_TYPE_OCI_INDEX])
            .unwrap();
        assert_eq!(got.digest.as_deref(), Some(index_digest.as_str()));
        assert_eq!(got.bytes, index_bytes);
        for child in [&amd64, &arm64] {
            let got = client
                .get_manifest("test/multi", &child.manifest_digest, ACCEPT_ALL_MANIFESTS)
                .unwrap();
            assert_eq!(got.digest.as_deref(), Some(child.manifest_digest.as_str()));
        }

        let missing = client
            .get_manifest("test/busybox", "nope", ACCEPT_ALL_MANIFESTS)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("404"), "{missing}");
        assert!(
            missing.contains("/v2/test/busybox/manifests/nope"),
            "{missing}"
        );
    });
}

#[test]
fn two_registries_in_two_namespaces_share_the_default_port() {
    skip_unless_root!();
    let a = NetNs::create("two-a").unwrap();
    let b = NetNs::create("two-b").unwrap();
    let ra = Registry::start(Some(&a), None).unwrap();
    let rb = Registry::start(Some(&b), None).unwrap();
    assert_eq!(ra.addr(), rb.addr());
    let image = ImageBuilder::new()
        .layer(busybox_layer(Compression::None).unwrap())
        .build();
    a.run(|| push(&ra.host(), "only/in-a", "v1", &image))
        .unwrap();
    let in_b = b.run(|| {
        RegistryClient::new(&rb.host()).get_manifest("only/in-a", "v1", ACCEPT_ALL_MANIFESTS)
    });
    assert!(in_b.is_err(), "registry b must not see a's push");
}

/// Whether nothing in the host namespace listens on 127.0.0.1:5000 (if
/// something does, the outside ping proves nothing).
fn registry_port_is_free_outside() -> bool {
    std::net::TcpListener::bind("127.0.0.1:5000").is_ok()
}
