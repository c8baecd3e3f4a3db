//! End-to-end: skiffd's image pulls against a registry that misbehaves on purpose
//! ([`skiff_testkit::fake_registry::FakeRegistry`]) in a test network namespace:
//! retries, error codes, authentication, timeouts, corrupt and hostile documents,
//! mirrors. Every failure must leave nothing behind (no image, no snapshot) and a
//! following good pull must succeed. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use skiff_cri::api;
use skiff_cri::client::CriClient;
use skiff_testkit::NetNs;
use skiff_testkit::fake_registry::{Auth, FakeRegistry, Fault, Target, Times};
use skiff_testkit::image::{Compression, Image, ImageBuilder, LayerBuilder};
use skiff_testkit::skiffd::{Skiffd, SkiffdOptions};

/// `SKIFF_REGISTRY_ATTEMPTS` unless a test says otherwise.
const ATTEMPTS: usize = 3;

/// skiffd and fake registries in one fresh namespace.
struct Env {
    // Drop order: skiffd, the registries, then the namespace.
    skiffd: Skiffd,
    registry: FakeRegistry,
    extra: Vec<FakeRegistry>,
    netns: NetNs,
    _hosts: tempfile::TempDir,
}

impl Env {
    /// `127.0.0.1:<port>/<repo_tag>` on the main registry.
    fn name(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.host())
    }

    fn snapshots(&self) -> Vec<PathBuf> {
        snapshot_dirs(&self.skiffd.root)
    }
}

/// Start `extra` more registries next to the main one and skiffd with a hosts
/// directory: the main registry over plain HTTP as itself, plus the files
/// `hosts(main, extra)` returns (`(directory name, hosts.toml)`). `env` overrides
/// the default attempts (3) and read timeout (5 s). `None` (skip) without root.
fn start(
    test: &str,
    env: &[(&str, &str)],
    extra: usize,
    hosts: impl FnOnce(&FakeRegistry, &[FakeRegistry]) -> Vec<(String, String)>,
) -> Option<Env> {
    if !skiff_testkit::require_root(test) {
        return None;
    }
    let netns = NetNs::create("fault").expect("create test netns");
    let registry = FakeRegistry::start(Some(&netns)).expect("start fake registry");
    let extra: Vec<FakeRegistry> = (0..extra)
        .map(|_| FakeRegistry::start(Some(&netns)).expect("start fake registry"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![(
        registry.host(),
        format!("server = \"{}\"\n", registry.url()),
    )];
    files.extend(hosts(&registry, &extra));
    for (name, text) in files {
        std::fs::create_dir_all(dir.path().join(&name)).unwrap();
        std::fs::write(dir.path().join(&name).join("hosts.toml"), text).unwrap();
    }
    let mut vars = vec![
        ("SKIFF_REGISTRY_ATTEMPTS".to_string(), ATTEMPTS.to_string()),
        (
            "SKIFF_REGISTRY_READ_TIMEOUT_MS".to_string(),
            "5000".to_string(),
        ),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let options = SkiffdOptions {
        config_toml: Some(format!(
            "[registry]\nconfig_path = \"{}\"\n",
            dir.path().display()
        )),
        env: vars,
        ..Default::default()
    };
    let skiffd = Skiffd::start_in(&common::skiffd_bin(), &netns, options).expect("start skiffd");
    Some(Env {
        skiffd,
        registry,
        extra,
        netns,
        _hosts: dir,
    })
}

/// [`start`] with only the main registry and default settings.
fn start_default(test: &str) -> Option<Env> {
    start(test, &[], 0, |_, _| Vec::new())
}

fn snapshot_dirs(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("snapshots"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// One gzip layer of incompressible data (~192 KiB) and a small file; `seed`
/// makes the layer, config and manifest distinct.
fn small_image(seed: u64) -> Image {
    ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .pseudo_random_file("data", 0o644, seed, 192 * 1024)
                .file("seed", 0o644, seed.to_string())
                .finish(Compression::Gzip)
                .unwrap(),
        )
        .cmd(["/data"])
        .build()
}

fn basic(username: &str, password: &str) -> Option<api::AuthConfig> {
    Some(api::AuthConfig {
        username: username.into(),
        password: password.into(),
        ..Default::default()
    })
}

async fn pull(
    c: &mut CriClient,
    image: &str,
    auth: Option<api::AuthConfig>,
) -> Result<String, tonic::Status> {
    c.images
        .pull_image(api::PullImageRequest {
            image: Some(api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
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
        .remove_image(api::RemoveImageRequest {
            image: Some(api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

/// The pull failed with `code`, naming the image or the registry host.
fn assert_failed(e: &tonic::Status, code: tonic::Code, image: &str, host: &str) {
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(image) || e.message().contains(host),
        "the message names neither {image} nor {host}: {e:?}"
    );
}

/// Nothing of a failed pull is visible: no image, no snapshot (not even a temp one).
async fn assert_left_nothing(c: &mut CriClient, env: &Env) {
    let images = list(c).await;
    assert!(
        images.is_empty(),
        "images left after a failed pull: {images:?}"
    );
    let snaps = env.snapshots();
    assert!(
        snaps.is_empty(),
        "snapshots left after a failed pull: {snaps:?}"
    );
}

/// With the faults gone, `image` pulls and gives `id`.
async fn assert_good_pull(c: &mut CriClient, env: &Env, image: &str, id: &str) {
    env.registry.clear_faults();
    for r in &env.extra {
        r.clear_faults();
    }
    assert_eq!(pull(c, image, None).await.unwrap(), id);
    assert_eq!(list(c).await.len(), 1);
}

#[tokio::test]
async fn server_errors_then_ok_are_retried() {
    let Some(env) = start_default("server_errors_then_ok_are_retried") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let reg = &env.registry;

    // The manifest: 500 twice, then fine.
    let img = small_image(1);
    reg.add_image("test/manifest", "1", &img);
    let fault = reg.inject(
        Target::manifests("test/manifest"),
        Fault::Status(500),
        Times::N(2),
    );
    let name = env.name("test/manifest:1");
    assert_eq!(pull(&mut c, &name, None).await.unwrap(), img.config_digest);
    assert_eq!(reg.hits(fault), 2);
    assert_eq!(reg.count("GET", "/v2/test/manifest/manifests/*"), 3);
    remove(&mut c, &name).await;

    // The config blob (500) and the layer blob (503) once each.
    let img = small_image(2);
    reg.add_image("test/blobs", "1", &img);
    let layer = &img.layers[0].digest;
    reg.inject(
        Target::blob(&img.config_digest),
        Fault::Status(500),
        Times::Once,
    );
    reg.inject(Target::blob(layer), Fault::Status(503), Times::Once);
    let name = env.name("test/blobs:1");
    assert_eq!(pull(&mut c, &name, None).await.unwrap(), img.config_digest);
    let config_path = format!("/v2/test/blobs/blobs/{}", img.config_digest);
    assert_eq!(reg.count("GET", &config_path), 2);
    assert_eq!(
        reg.count("GET", &format!("/v2/test/blobs/blobs/{layer}")),
        2
    );
    assert_eq!(env.snapshots().len(), 1, "{:?}", env.snapshots());
    remove(&mut c, &name).await;

    // A multi-arch index whose platform manifest fails once (asked by digest).
    let native = small_image(3);
    let other = ImageBuilder::new()
        .layer(
            LayerBuilder::new()
                .file("other", 0o644, "x")
                .finish(Compression::Gzip)
                .unwrap(),
        )
        .build();
    let arch = skiff_testkit::image::host_arch();
    let other_arch = if arch == "amd64" { "arm64" } else { "amd64" };
    let (index, _) = skiff_testkit::image::index(&[(&other, other_arch), (&native, arch)]);
    reg.add_index("test/multi", "1", &index, &[&other, &native]);
    let child = format!("/v2/test/multi/manifests/{}", native.manifest_digest);
    reg.inject(Target::path(child.clone()), Fault::Status(502), Times::Once);
    let name = env.name("test/multi:1");
    assert_eq!(
        pull(&mut c, &name, None).await.unwrap(),
        native.config_digest
    );
    assert_eq!(reg.count("GET", &child), 2);
    assert_eq!(reg.count("GET", "/v2/test/multi/manifests/1"), 1);
    assert_eq!(list(&mut c).await.len(), 1);
}

#[tokio::test]
async fn rate_limited_forever_is_unavailable_after_all_attempts() {
    let Some(env) = start_default("rate_limited_forever_is_unavailable") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let img = small_image(1);
    env.registry.add_image("test/limited", "1", &img);
    env.registry.inject(
        Target::manifests("test/limited"),
        Fault::Status(429),
        Times::Always,
    );
    let name = env.name("test/limited:1");
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(&e, tonic::Code::Unavailable, &name, &env.registry.host());
    assert_eq!(
        env.registry.count("GET", "/v2/test/limited/manifests/*"),
        ATTEMPTS
    );
    assert_left_nothing(&mut c, &env).await;
    assert_good_pull(&mut c, &env, &name, &img.config_digest).await;
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let Some(env) = start_default("client_errors_are_not_retried") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let reg = &env.registry;
    let host = reg.host();

    // A tag the registry does not have: NotFound, asked once.
    let missing = env.name("test/missing:1");
    let e = pull(&mut c, &missing, None).await.unwrap_err();
    assert_failed(&e, tonic::Code::NotFound, &missing, &host);
    assert_eq!(reg.count("GET", "/v2/test/missing/manifests/*"), 1);

    // A layer blob that is gone: NotFound, asked once.
    let img = small_image(1);
    reg.add_image("test/app", "1", &img);
    let name = env.name("test/app:1");
    let layer = img.layers[0].digest.clone();
    reg.inject(Target::blob(&layer), Fault::Status(404), Times::Always);
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(&e, tonic::Code::NotFound, &name, &host);
    assert_eq!(reg.count("GET", &format!("/v2/test/app/blobs/{layer}")), 1);
    assert_left_nothing(&mut c, &env).await;

    // Access denied on the manifest: Unauthenticated, asked once.
    reg.clear_faults();
    reg.clear_requests();
    reg.inject(
        Target::manifests("test/app"),
        Fault::Status(403),
        Times::Always,
    );
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(&e, tonic::Code::Unauthenticated, &name, &host);
    assert_eq!(reg.count("GET", "/v2/test/app/manifests/*"), 1);
    assert_left_nothing(&mut c, &env).await;

    assert_good_pull(&mut c, &env, &name, &img.config_digest).await;
}

#[tokio::test]
async fn basic_auth_with_username_password_and_auth_field() {
    let Some(env) = start_default("basic_auth") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let reg = &env.registry;
    let img = small_image(1);
    reg.add_image("test/private", "1", &img);
    reg.set_auth(Auth::Basic {
        username: "user".into(),
        password: "s3cret".into(),
    });
    let name = env.name("test/private:1");

    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(&e, tonic::Code::Unauthenticated, &name, &reg.host());
    let e = pull(&mut c, &name, basic("user", "wrong"))
        .await
        .unwrap_err();
    assert_failed(&e, tonic::Code::Unauthenticated, &name, &reg.host());
    assert_left_nothing(&mut c, &env).await;

    assert_eq!(
        pull(&mut c, &name, basic("user", "s3cret")).await.unwrap(),
        img.config_digest
    );
    let served = reg
        .requests_matching("GET", "/v2/test/private/*")
        .into_iter()
        .filter(|r| r.status == 200)
        .collect::<Vec<_>>();
    assert_eq!(served.len(), 3, "manifest, config, layer: {served:?}");
    for r in &served {
        assert!(
            r.header("authorization")
                .is_some_and(|a| a.starts_with("Basic ")),
            "{r:?}"
        );
    }
    remove(&mut c, &name).await;

    // The same credentials as the `auth` field: base64 of "user:password".
    let auth = Some(api::AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("user:s3cret"),
        ..Default::default()
    });
    assert_eq!(pull(&mut c, &name, auth).await.unwrap(), img.config_digest);
    assert_eq!(list(&mut c).await.len(), 1);
}

#[tokio::test]
async fn bearer_token_auth() {
    let Some(env) = start_default("bearer_token_auth") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let reg = &env.registry;
    let img = small_image(1);
    reg.add_image("test/tokened", "1", &img);
    reg.set_auth(Auth::Bearer {
        credentials: Some(("user".into(), "s3cret".into())),
    });
    let name = env.name("test/tokened:1");

    // Wrong password: the token endpoint refuses, the registry then too.
    let e = pull(&mut c, &name, basic("user", "wrong"))
        .await
        .unwrap_err();
    assert_failed(&e, tonic::Code::Unauthenticated, &name, &reg.host());
    assert!(reg.count("GET", "/token") >= 1);
    assert!(
        reg.requests_matching("GET", "/token")
            .iter()
            .all(|r| r.status == 401)
    );
    // No credentials at all.
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(&e, tonic::Code::Unauthenticated, &name, &reg.host());
    assert_left_nothing(&mut c, &env).await;

    reg.clear_requests();
    assert_eq!(
        pull(&mut c, &name, basic("user", "s3cret")).await.unwrap(),
        img.config_digest
    );
    let tokens = reg.requests_matching("GET", "/token");
    let granted = tokens
        .iter()
        .find(|r| r.status == 200)
        .unwrap_or_else(|| panic!("no token granted: {tokens:?}"));
    assert!(
        granted
            .header("authorization")
            .is_some_and(|a| a.starts_with("Basic ")),
        "{granted:?}"
    );
    assert_eq!(
        granted.query_param("scope").as_deref(),
        Some("repository:test/tokened:pull")
    );
    assert_eq!(granted.query_param("service").as_deref(), Some("fake"));
    let served = reg
        .requests_matching("GET", "/v2/test/tokened/*")
        .into_iter()
        .filter(|r| r.status == 200)
        .collect::<Vec<_>>();
    assert_eq!(served.len(), 3, "manifest, config, layer: {served:?}");
    for r in &served {
        assert!(
            r.header("authorization")
                .is_some_and(|a| a.starts_with("Bearer fake-token-")),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn truncated_blob_once_is_retried() {
    let Some(env) = start_default("truncated_blob_once_is_retried") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let img = small_image(1);
    env.registry.add_image("test/cut", "1", &img);
    let layer = &img.layers[0];
    env.registry.inject(
        Target::blob(&layer.digest),
        Fault::Truncate {
            after: layer.blob.len() / 2,
        },
        Times::Once,
    );
    let name = env.name("test/cut:1");
    assert_eq!(pull(&mut c, &name, None).await.unwrap(), img.config_digest);
    assert_eq!(
        env.registry
            .count("GET", &format!("/v2/test/cut/blobs/{}", layer.digest)),
        2
    );
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(
        std::fs::read_to_string(snaps[0].join("fs/seed")).unwrap(),
        "1"
    );
}

#[tokio::test]
async fn truncated_blob_always_is_unavailable_naming_the_layer() {
    let Some(env) = start_default("truncated_blob_always") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let img = small_image(1);
    env.registry.add_image("test/cut", "1", &img);
    let layer = &img.layers[0];
    env.registry.inject(
        Target::blob(&layer.digest),
        Fault::Truncate {
            after: layer.blob.len() / 2,
        },
        Times::Always,
    );
    let name = env.name("test/cut:1");
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(&e, tonic::Code::Unavailable, &name, &env.registry.host());
    assert!(e.message().contains(&layer.digest), "{e:?}");
    assert_eq!(
        env.registry
            .count("GET", &format!("/v2/test/cut/blobs/{}", layer.digest)),
        ATTEMPTS
    );
    assert_left_nothing(&mut c, &env).await;
    assert_good_pull(&mut c, &env, &name, &img.config_digest).await;
}

#[tokio::test]
async fn stalled_blob_times_out_while_the_daemon_stays_responsive() {
    const READ_TIMEOUT_MS: u64 = 500;
    const STALL_ATTEMPTS: u64 = 2;
    let Some(env) = start(
        "stalled_blob_times_out",
        &[
            ("SKIFF_REGISTRY_READ_TIMEOUT_MS", "500"),
            ("SKIFF_REGISTRY_ATTEMPTS", "2"),
        ],
        0,
        |_, _| Vec::new(),
    ) else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let img = small_image(1);
    env.registry.add_image("test/stall", "1", &img);
    let layer = img.layers[0].digest.clone();
    let stall = env.registry.inject(
        Target::blob(&layer),
        Fault::Stall {
            after: 4096,
            duration: Duration::from_secs(60),
        },
        Times::Always,
    );
    let name = env.name("test/stall:1");
    let started = Instant::now();
    let pulling = {
        let mut c = c.clone();
        let name = name.clone();
        tokio::spawn(async move { pull(&mut c, &name, None).await })
    };
    // While the download hangs, the daemon answers other calls promptly.
    let mut answered_during_stall = 0;
    while !pulling.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let asked = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(1),
            c.runtime.version(api::VersionRequest::default()),
        )
        .await
        .expect("Version answered within 1 s during a stalled pull")
        .expect("Version");
        assert!(asked.elapsed() < Duration::from_secs(1));
        if env.registry.hits(stall) > 0 && !pulling.is_finished() {
            answered_during_stall += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the stalled pull never ended"
        );
    }
    let e = pulling.await.unwrap().unwrap_err();
    let took = started.elapsed();
    assert!(
        answered_during_stall > 0,
        "Version was never asked during the stall"
    );
    assert_failed(&e, tonic::Code::Unavailable, &name, &env.registry.host());
    assert!(e.message().contains(&layer), "{e:?}");
    // Each attempt waits one read timeout; one back-off (400 ms) between the two; slack.
    let limit = Duration::from_millis(READ_TIMEOUT_MS * STALL_ATTEMPTS + 400 + 3000);
    assert!(
        took < limit,
        "the stalled pull took {took:?} (limit {limit:?})"
    );
    assert!(
        took >= Duration::from_millis(READ_TIMEOUT_MS * STALL_ATTEMPTS),
        "failed before the read timeouts: {took:?}"
    );
    assert_eq!(env.registry.hits(stall), 2);
    assert_left_nothing(&mut c, &env).await;
    assert_good_pull(&mut c, &env, &name, &img.config_digest).await;
}

#[tokio::test]
async fn wrong_blob_bytes_are_a_digest_mismatch() {
    let Some(env) = start_default("wrong_blob_bytes") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let img = small_image(1);
    env.registry.add_image("test/flipped", "1", &img);
    let layer = img.layers[0].digest.clone();
    env.registry
        .inject(Target::blob(&layer), Fault::WrongBytes, Times::Always);
    let name = env.name("test/flipped:1");
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(&e, tonic::Code::Unavailable, &name, &env.registry.host());
    assert!(e.message().contains(&layer), "{e:?}");
    assert!(e.message().to_lowercase().contains("digest"), "{e:?}");
    let asked = env
        .registry
        .count("GET", &format!("/v2/test/flipped/blobs/{layer}"));
    assert!((1..=ATTEMPTS).contains(&asked), "{asked} downloads");
    assert_left_nothing(&mut c, &env).await;
    assert_good_pull(&mut c, &env, &name, &img.config_digest).await;
}

#[tokio::test]
async fn oversized_manifest_is_resource_exhausted() {
    let Some(env) = start_default("oversized_manifest") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let img = small_image(1);
    env.registry.add_image("test/huge", "1", &img);
    env.registry.inject(
        Target::manifests("test/huge"),
        Fault::OversizedManifest { size: 8 << 20 },
        Times::Always,
    );
    let name = env.name("test/huge:1");
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(
        &e,
        tonic::Code::ResourceExhausted,
        &name,
        &env.registry.host(),
    );
    assert!(e.message().contains("manifest"), "{e:?}");
    assert_eq!(env.registry.count("GET", "/v2/test/huge/manifests/*"), 1);
    assert_eq!(env.registry.count("GET", "/v2/test/huge/blobs/*"), 0);
    assert_left_nothing(&mut c, &env).await;
    assert_good_pull(&mut c, &env, &name, &img.config_digest).await;
}

/// A manifest response without a length that never ends: skiffd stops reading it
/// once it passes the 4 MiB limit (before, the whole body was read and only then
/// measured: a hostile registry chose how much skiffd buffered).
#[tokio::test]
async fn an_endless_manifest_is_cut_at_the_limit() {
    let Some(env) = start_default("endless_manifest") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let img = small_image(1);
    env.registry.add_image("test/endless", "1", &img);
    const LIMIT: usize = 1 << 30;
    env.registry.inject(
        Target::manifests("test/endless"),
        Fault::Endless { limit: LIMIT },
        Times::Once,
    );
    let name = env.name("test/endless:1");
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(
        &e,
        tonic::Code::ResourceExhausted,
        &name,
        &env.registry.host(),
    );
    assert!(e.message().contains("manifest"), "{e:?}");
    // The registry's writer notices the closed connection once its socket buffer
    // is full: a few MiB past the limit at most.
    let start = Instant::now();
    let sent = loop {
        if let Some(&n) = env.registry.endless_sent().first() {
            break n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the response never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(sent < 32 << 20, "skiffd read {sent} bytes of the manifest");
    assert_eq!(env.registry.count("GET", "/v2/test/endless/blobs/*"), 0);
    assert_left_nothing(&mut c, &env).await;
    assert_good_pull(&mut c, &env, &name, &img.config_digest).await;
}

#[tokio::test]
async fn unsupported_layer_media_type_is_invalid_argument() {
    let Some(env) = start_default("unsupported_layer_media_type") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let img = small_image(1);
    env.registry.add_image("test/odd", "1", &img);
    let media_type = "application/vnd.oci.image.layer.v1.tar+bzip2";
    env.registry.inject(
        Target::manifests("test/odd"),
        Fault::LayerMediaType(media_type.into()),
        Times::Always,
    );
    let name = env.name("test/odd:1");
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(
        &e,
        tonic::Code::InvalidArgument,
        &name,
        &env.registry.host(),
    );
    assert!(e.message().contains(media_type), "{e:?}");
    assert_eq!(env.registry.count("GET", "/v2/test/odd/manifests/*"), 1);
    assert_eq!(
        env.registry.count(
            "GET",
            &format!("/v2/test/odd/blobs/{}", img.layers[0].digest)
        ),
        0,
        "no layer is downloaded before the media types are checked"
    );
    assert_left_nothing(&mut c, &env).await;
    assert_good_pull(&mut c, &env, &name, &img.config_digest).await;
}

fn mirror_entry(url: &str) -> String {
    format!("[host.\"{url}\"]\ncapabilities = [\"pull\", \"resolve\"]\n")
}

#[tokio::test]
async fn mirror_is_asked_with_ns_and_the_image_keeps_its_docker_io_name() {
    let Some(env) = start("mirror_is_asked_with_ns", &[], 0, |main, _| {
        vec![("docker.io".into(), mirror_entry(&main.url()))]
    }) else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let img = small_image(1);
    env.registry.add_image("library/fakebox", "1.0", &img);
    assert_eq!(
        pull(&mut c, "fakebox:1.0", None).await.unwrap(),
        img.config_digest
    );
    let asked = env
        .registry
        .requests_matching("GET", "/v2/library/fakebox/*");
    assert_eq!(asked.len(), 3, "manifest, config, layer: {asked:?}");
    for r in &asked {
        assert_eq!(r.query_param("ns").as_deref(), Some("docker.io"), "{r:?}");
    }
    assert_eq!(asked[0].path, "/v2/library/fakebox/manifests/1.0");
    let images = list(&mut c).await;
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].repo_tags,
        vec!["docker.io/library/fakebox:1.0".to_string()]
    );
    assert_eq!(
        images[0].repo_digests,
        vec![format!("docker.io/library/fakebox@{}", img.manifest_digest)]
    );
}

#[tokio::test]
async fn mirror_fallback_past_a_refused_and_a_failing_host() {
    let Some(env) = start(
        "mirror_fallback",
        &[("SKIFF_REGISTRY_ATTEMPTS", "2")],
        1,
        |main, extra| {
            // Nothing listens on port 1 in a fresh namespace: connection refused.
            let text = [
                mirror_entry("http://127.0.0.1:1"),
                mirror_entry(&extra[0].url()),
                mirror_entry(&main.url()),
            ]
            .concat();
            vec![("docker.io".into(), text)]
        },
    ) else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let img = small_image(1);
    let broken = &env.extra[0];
    broken.add_image("library/fakebox", "1.0", &img);
    broken.inject(Target::any(), Fault::Status(503), Times::Always);
    env.registry.add_image("library/fakebox", "1.0", &img);

    assert_eq!(
        pull(&mut c, "docker.io/library/fakebox:1.0", None)
            .await
            .unwrap(),
        img.config_digest
    );
    let failed = broken.requests_matching("GET", "/v2/library/fakebox/manifests/*");
    assert_eq!(
        failed.len(),
        2,
        "both attempts on the 503 mirror: {failed:?}"
    );
    assert!(
        failed
            .iter()
            .all(|r| r.status == 503 && r.query_param("ns").as_deref() == Some("docker.io"))
    );
    assert_eq!(
        broken.count("GET", "/v2/library/fakebox/blobs/*"),
        0,
        "nothing else asked of the failing mirror"
    );
    let served = env
        .registry
        .requests_matching("GET", "/v2/library/fakebox/*");
    assert_eq!(served.len(), 3, "{served:?}");
    assert_eq!(
        list(&mut c).await[0].repo_tags,
        vec!["docker.io/library/fakebox:1.0".to_string()]
    );
    let _ = &env.netns;
}

#[tokio::test]
async fn failed_pull_of_a_multi_layer_image_leaves_no_snapshot() {
    let Some(env) = start_default("failed_multi_layer_pull") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let good = LayerBuilder::new()
        .file("good", 0o644, "fine")
        .finish(Compression::Gzip)
        .unwrap();
    let bad = LayerBuilder::new()
        .pseudo_random_file("bad", 0o644, 9, 192 * 1024)
        .finish(Compression::Gzip)
        .unwrap();
    let img = ImageBuilder::new().layer(good).layer(bad.clone()).build();
    env.registry.add_image("test/half", "1", &img);
    env.registry.inject(
        Target::blob(&bad.digest),
        Fault::Truncate {
            after: bad.blob.len() / 2,
        },
        Times::Always,
    );
    let name = env.name("test/half:1");
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_failed(&e, tonic::Code::Unavailable, &name, &env.registry.host());
    assert_left_nothing(&mut c, &env).await;
    assert_good_pull(&mut c, &env, &name, &img.config_digest).await;
}

/// A small ext4 loop-mounted over a directory until dropped (lazily unmounted then:
/// the loop device goes with the mount).
struct SmallDisk {
    at: PathBuf,
    _image: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(at: &Path, mib: u64) -> SmallDisk {
        let image = tempfile::tempdir().unwrap();
        let file = image.path().join("disk.ext4");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let ok = |cmd: &mut std::process::Command| {
            let out = cmd.output().expect("run a filesystem tool");
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        };
        ok(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&file));
        ok(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(at));
        SmallDisk {
            at: at.to_path_buf(),
            _image: image,
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_pull_clearly_and_leaves_nothing() {
    let Some(env) = start_default("full_disk_pull") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    // The layers go to a 12 MiB filesystem; the image unpacks to 24 MiB.
    let disk = SmallDisk::mount(&env.skiffd.root.join("snapshots"), 12);
    let layer = LayerBuilder::new()
        .pseudo_random_file("big", 0o644, 7, 24 << 20)
        .finish(Compression::Gzip)
        .unwrap();
    let img = ImageBuilder::new().layer(layer).build();
    env.registry.add_image("test/full", "1", &img);
    let name = env.name("test/full:1");
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("No space left") && e.message().contains("big"),
        "{e:?}"
    );
    // With room again the same pull works.
    assert_failed_on_a_bad_disk_then_good(&mut c, &env, disk, &name, &img.config_digest).await;
}

/// A block device that fails its writes with EIO: a loop device over a 256 MiB
/// sparse file on a 24 MiB tmpfs, like a thin-provisioned volume out of space (this
/// kernel has no device-mapper or fault injection to fail writes otherwise). The ext4
/// on it (no journal, so a failed write does not abort a journal and turn it
/// read-only) has room to spare and takes every write into the page cache; the
/// device fails when the data is written out. Unmounted (lazily) when dropped, the
/// tmpfs after it.
struct FailingDisk {
    at: PathBuf,
    backing: PathBuf,
    _dir: tempfile::TempDir,
}

impl FailingDisk {
    fn mount(at: &Path) -> FailingDisk {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("tmpfs");
        std::fs::create_dir(&backing).unwrap();
        let ok = |cmd: &mut std::process::Command| {
            let out = cmd.output().expect("run a filesystem tool");
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        };
        ok(std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m", "skiff-test-failing-disk"])
            .arg(&backing));
        let disk = FailingDisk {
            at: at.to_path_buf(),
            backing: backing.clone(),
            _dir: dir,
        };
        let file = backing.join("disk.ext4");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        ok(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal", "-E", "nodiscard"])
            .arg(&file));
        ok(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(at));
        disk
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        for path in [&self.at, &self.backing] {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(path)
                .status();
        }
    }
}

#[tokio::test]
async fn a_device_failing_its_writes_fails_the_pull_and_leaves_nothing() {
    let Some(env) = start_default("eio_disk_pull") else {
        return;
    };
    let mut c = env.skiffd.client().await;
    let disk = FailingDisk::mount(&env.skiffd.root.join("snapshots"));
    // 48 MiB of files for a device that can store ~20 MiB.
    let layer = LayerBuilder::new()
        .pseudo_random_file("big", 0o644, 11, 40 << 20)
        .pseudo_random_file("small", 0o644, 12, 8 << 20)
        .finish(Compression::Zstd)
        .unwrap();
    let img = ImageBuilder::new().layer(layer).build();
    env.registry.add_image("test/eio", "1", &img);
    let name = env.name("test/eio:1");
    let e = pull(&mut c, &name, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    // Names the image and the layer, says what failed, and says it once.
    let layer_digest = img.layers[0].digest.clone();
    assert!(
        e.message().contains("Input/output error")
            && e.message().contains(&name)
            && e.message().contains(&layer_digest)
            && e.message().contains("syncfs")
            && e.message().matches("Input/output error").count() == 1,
        "{e:?}"
    );
    // On a working store the same pull works.
    assert_failed_on_a_bad_disk_then_good(&mut c, &env, disk, &name, &img.config_digest).await;
}

/// After a pull failed on the disk mounted over the snapshots (`disk`): no image,
/// no snapshot (the filesystem's own `lost+found` aside); with the disk gone, the
/// same pull gives `id`.
async fn assert_failed_on_a_bad_disk_then_good<D>(
    c: &mut CriClient,
    env: &Env,
    disk: D,
    name: &str,
    id: &str,
) {
    assert!(list(c).await.is_empty());
    let left: Vec<_> = env
        .snapshots()
        .into_iter()
        .filter(|p| !p.ends_with("lost+found"))
        .collect();
    assert!(
        left.is_empty(),
        "the half-written snapshot is left: {left:?}"
    );
    drop(disk);
    assert_eq!(pull(c, name, None).await.unwrap(), id);
}
