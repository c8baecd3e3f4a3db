//! Image configs, manifests and indexes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{
    DEFAULT_PATH_ENV, FIXED_CREATED, Layer, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use crate::sha256_digest;

/// The image architecture of the host in Go's `GOARCH` spelling.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Builds an [`Image`] from layers and a runtime config.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
    labels: BTreeMap<String, String>,
    stop_signal: Option<String>,
    exposed_ports: BTreeSet<String>,
    volumes: BTreeSet<String>,
    arch: String,
    variant: Option<String>,
    os: String,
    docker: bool,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    /// No layers, `PATH` set to [`DEFAULT_PATH_ENV`], host arch, linux, OCI
    /// media types.
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            layers: Vec::new(),
            entrypoint: None,
            cmd: None,
            env: vec![DEFAULT_PATH_ENV.to_owned()],
            working_dir: None,
            user: None,
            labels: BTreeMap::new(),
            stop_signal: None,
            exposed_ports: BTreeSet::new(),
            volumes: BTreeSet::new(),
            arch: host_arch().to_owned(),
            variant: None,
            os: "linux".to_owned(),
            docker: false,
        }
    }

    /// Appends a layer (lowest first).
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Sets `Entrypoint`.
    pub fn entrypoint<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `Cmd`.
    pub fn cmd<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.cmd = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `KEY=value` in `Env`, replacing an earlier value of `KEY`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        let prefix = format!("{key}=");
        let entry = format!("{key}={value}");
        match self.env.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(e) => *e = entry,
            None => self.env.push(entry),
        }
        self
    }

    /// Removes every `Env` entry, the default `PATH` included.
    pub fn clear_env(mut self) -> Self {
        self.env.clear();
        self
    }

    /// Sets `WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.to_owned());
        self
    }

    /// Sets `User` (`name`, `uid`, `uid:gid`, …).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    /// Adds a config label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets `StopSignal` (e.g. `SIGQUIT`).
    pub fn stop_signal(mut self, signal: &str) -> Self {
        self.stop_signal = Some(signal.to_owned());
        self
    }

    /// Adds an exposed port (`80/tcp`, `53/udp`).
    pub fn expose(mut self, port: &str) -> Self {
        self.exposed_ports.insert(port.to_owned());
        self
    }

    /// Adds a volume (`/data`).
    pub fn volume(mut self, path: &str) -> Self {
        self.volumes.insert(path.to_owned());
        self
    }

    /// Sets the architecture, optionally with a variant: `arm64`, `arm/v7`.
    pub fn arch(mut self, arch: &str) -> Self {
        let (arch, variant) = split_arch(arch);
        self.arch = arch.to_owned();
        self.variant = variant.map(str::to_owned);
        self
    }

    /// Sets the OS (default `linux`).
    pub fn os(mut self, os: &str) -> Self {
        self.os = os.to_owned();
        self
    }

    /// Uses Docker schema2 media types instead of OCI ones.
    pub fn docker_media_types(mut self, docker: bool) -> Self {
        self.docker = docker;
        self
    }

    /// Serialises config and manifest. Layer media types are converted to
    /// the selected family.
    pub fn build(self) -> Image {
        let mut layers = self.layers;
        for layer in &mut layers {
            if let Some(c) = layer.compression() {
                layer.media_type = if self.docker {
                    c.docker_media_type()
                } else {
                    c.oci_media_type()
                }
                .to_owned();
            }
        }

        let non_empty = |v: BTreeSet<String>| {
            (!v.is_empty()).then(|| v.into_iter().map(|k| (k, Empty {})).collect())
        };
        let config = ConfigJson {
            created: FIXED_CREATED,
            architecture: &self.arch,
            variant: self.variant.as_deref(),
            os: &self.os,
            config: RunConfig {
                user: self.user,
                exposed_ports: non_empty(self.exposed_ports),
                env: self.env,
                entrypoint: self.entrypoint,
                cmd: self.cmd,
                volumes: non_empty(self.volumes),
                working_dir: self.working_dir,
                labels: (!self.labels.is_empty()).then_some(self.labels),
                stop_signal: self.stop_signal,
            },
            rootfs: RootFs {
                kind: "layers",
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
            history: layers
                .iter()
                .enumerate()
                .map(|(i, l)| History {
                    created: FIXED_CREATED,
                    created_by: format!("skiff-testkit layer {i} ({})", l.diff_id),
                })
                .collect(),
        };
        let config = to_json(&config);
        let config_digest = sha256_digest(&config);

        let (manifest_media_type, config_media_type) = if self.docker {
            (MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_CONFIG)
        } else {
            (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_CONFIG)
        };
        let manifest = ManifestJson {
            schema_version: 2,
            media_type: manifest_media_type,
            config: DescriptorJson::new(config_media_type, &config_digest, config.len()),
            layers: layers
                .iter()
                .map(|l| DescriptorJson::new(&l.media_type, &l.digest, l.blob.len()))
                .collect(),
        };
        let manifest = to_json(&manifest);
        Image {
            layers,
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config,
            config_digest,
            manifest_media_type: manifest_media_type.to_owned(),
        }
    }
}

fn split_arch(arch: &str) -> (&str, Option<&str>) {
    match arch.split_once('/') {
        Some((a, v)) => (a, Some(v)),
        None => (arch, None),
    }
}

/// A built image: blobs plus the JSON documents that reference them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Layers, lowest first, with the media types the manifest uses.
    pub layers: Vec<Layer>,
    /// The config JSON.
    pub config: Vec<u8>,
    /// `sha256:…` of `config`.
    pub config_digest: String,
    /// The manifest JSON.
    pub manifest: Vec<u8>,
    /// `sha256:…` of `manifest`: the image's content address.
    pub manifest_digest: String,
    /// The manifest's media type.
    pub manifest_media_type: String,
}

impl Image {
    /// Every blob the manifest references, config first:
    /// `(digest, bytes)`.
    pub fn blobs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        std::iter::once((self.config_digest.as_str(), self.config.as_slice())).chain(
            self.layers
                .iter()
                .map(|l| (l.digest.as_str(), l.blob.as_slice())),
        )
    }

    /// The config's media type, matching the manifest's family.
    pub fn config_media_type(&self) -> &'static str {
        if self.manifest_media_type == MEDIA_TYPE_DOCKER_MANIFEST {
            MEDIA_TYPE_DOCKER_CONFIG
        } else {
            MEDIA_TYPE_OCI_CONFIG
        }
    }
}

/// A multi-arch OCI image index over `manifests` (each with its platform,
/// `amd64`, `arm64`, `arm/v7`, os linux). Returns the JSON and its digest.
/// The children must be pushed alongside it ([`crate::push_index`]).
pub fn index(manifests: &[(&Image, &str)]) -> (Vec<u8>, String) {
    let index = IndexJson {
        schema_version: 2,
        media_type: MEDIA_TYPE_OCI_INDEX,
        manifests: manifests
            .iter()
            .map(|(image, arch)| {
                let (architecture, variant) = split_arch(arch);
                let mut d = DescriptorJson::new(
                    &image.manifest_media_type,
                    &image.manifest_digest,
                    image.manifest.len(),
                );
                d.platform = Some(PlatformJson {
                    architecture,
                    os: "linux",
                    variant,
                });
                d
            })
            .collect(),
    };
    let bytes = to_json(&index);
    let digest = sha256_digest(&bytes);
    (bytes, digest)
}

pub(super) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("structs of strings and maps always serialise")
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct ConfigJson<'a> {
    created: &'a str,
    architecture: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    os: &'a str,
    config: RunConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exposed_ports: Option<BTreeMap<String, Empty>>,
    env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    volumes: Option<BTreeMap<String, Empty>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_signal: Option<String>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created: &'static str,
    created_by: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: DescriptorJson<'a>,
    layers: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct IndexJson<'a> {
    pub(super) schema_version: u32,
    pub(super) media_type: &'a str,
    pub(super) manifests: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DescriptorJson<'a> {
    pub(super) media_type: &'a str,
    pub(super) digest: &'a str,
    pub(super) size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) platform: Option<PlatformJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) annotations: Option<BTreeMap<&'a str, &'a str>>,
}

impl<'a> DescriptorJson<'a> {
    pub(super) fn new(media_type: &'a str, digest: &'a str, size: usize) -> Self {
        DescriptorJson {
            media_type,
            digest,
            size: size as u64,
            platform: None,
            annotations: None,
        }
    }
}

#[derive(Serialize)]
pub(super) struct PlatformJson<'a> {
    pub(super) architecture: &'a str,
    pub(super) os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) variant: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Compression, LayerBuilder, MEDIA_TYPE_DOCKER_LAYER_GZIP};

    #[test]
    fn image_config_lists_diff_ids_and_history() {
        let l1 = LayerBuilder::new()
            .file("a", 0o644, "a")
            .finish(Compression::Gzip)
            .unwrap();
        let l2 = LayerBuilder::new()
            .file("b", 0o644, "b")
            .finish(Compression::None)
            .unwrap();
        let image = ImageBuilder::new()
            .layer(l1.clone())
            .layer(l2.clone())
            .entrypoint(["/bin/sh", "-c"])
            .cmd(["echo hi"])
            .env("FOO", "bar")
            .env("FOO", "baz")
            .working_dir("/tmp")
            .user("1000:1000")
            .label("a", "b")
            .stop_signal("SIGQUIT")
            .expose("80/tcp")
            .volume("/data")
            .arch("arm/v7")
            .build();
        let config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([l1.diff_id, l2.diff_id])
        );
        assert_eq!(config["history"].as_array().unwrap().len(), 2);
        assert_eq!(config["architecture"], "arm");
        assert_eq!(config["variant"], "v7");
        assert_eq!(
            config["config"]["Env"],
            serde_json::json!([DEFAULT_PATH_ENV, "FOO=baz"])
        );
        assert_eq!(
            config["config"]["ExposedPorts"]["80/tcp"],
            serde_json::json!({})
        );
        assert_eq!(config["config"]["Volumes"]["/data"], serde_json::json!({}));
        assert_eq!(config["config"]["StopSignal"], "SIGQUIT");

        // The documents parse with oci-spec, the types skiff itself uses.
        let parsed =
            oci_spec::image::ImageConfiguration::from_reader(image.config.as_slice()).unwrap();
        let run = parsed.config().as_ref().unwrap();
        assert_eq!(run.working_dir().as_deref(), Some("/tmp"));
        assert_eq!(run.user().as_deref(), Some("1000:1000"));
        let manifest =
            oci_spec::image::ImageManifest::from_reader(image.manifest.as_slice()).unwrap();
        assert_eq!(manifest.layers().len(), 2);
        assert_eq!(manifest.config().digest().to_string(), image.config_digest);
        assert_eq!(manifest.layers()[1].size(), l2.blob.len() as u64);
        assert_eq!(image.manifest_digest, sha256_digest(&image.manifest));
    }

    #[test]
    fn docker_media_types_rewrite_manifest_and_layers() {
        let layer = LayerBuilder::new()
            .file("a", 0o644, "a")
            .finish(Compression::Gzip)
            .unwrap();
        let image = ImageBuilder::new()
            .layer(layer)
            .docker_media_types(true)
            .build();
        let m: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], MEDIA_TYPE_DOCKER_MANIFEST);
        assert_eq!(m["config"]["mediaType"], MEDIA_TYPE_DOCKER_CONFIG);
        assert_eq!(m["layers"][0]["mediaType"], MEDIA_TYPE_DOCKER_LAYER_GZIP);
        assert_eq!(image.layers[0].media_type, MEDIA_TYPE_DOCKER_LAYER_GZIP);
        assert_eq!(image.manifest_media_type, MEDIA_TYPE_DOCKER_MANIFEST);
        assert_eq!(image.config_media_type(), MEDIA_TYPE_DOCKER_CONFIG);
    }

    #[test]
    fn index_carries_platforms() {
        let amd = ImageBuilder::new().arch("amd64").build();
        let arm = ImageBuilder::new().arch("arm64").build();
        let (bytes, digest) = index(&[(&amd, "amd64"), (&arm, "arm64/v8")]);
        assert_eq!(digest, sha256_digest(&bytes));
        let parsed = oci_spec::image::ImageIndex::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(parsed.manifests().len(), 2);
        let p = parsed.manifests()[1].platform().as_ref().unwrap();
        assert_eq!(p.architecture().to_string(), "arm64");
        assert_eq!(p.variant().as_deref(), Some("v8"));
        assert_eq!(
            parsed.manifests()[0].digest().to_string(),
            amd.manifest_digest
        );
    }
}
