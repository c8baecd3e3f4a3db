//! Importing images from archives on the node: an OCI image layout tar, or a
//! `docker save` tar. The result is the same as a pull: the same snapshots, blobs
//! and records, every digest checked.
//!
//! The archive is indexed once (entry name → data offset and size), then documents
//! are read and layers streamed through the pull pipeline by seeking into the file,
//! so a layer is never held in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{ImageError, io};
use crate::pipeline::{self, Compression};
use crate::reference;
use crate::registry::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::snapshot::Snapshotter;
use crate::store::{ImageRecord, LayerRecord};
use crate::unpack::UnpackOptions;

/// Where each member of the archive lies.
struct ArchiveIndex {
    path: PathBuf,
    entries: HashMap<String, (u64, u64)>,
}

impl ArchiveIndex {
    fn build(path: &Path) -> Result<ArchiveIndex, ImageError> {
        let file = File::open(path).map_err(io("open", path))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in archive.entries().map_err(io("read archive", path))? {
            let entry = entry.map_err(io("read archive", path))?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = String::from_utf8_lossy(&entry.path_bytes())
                .trim_start_matches("./")
                .to_string();
            entries.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(ArchiveIndex {
            path: path.to_path_buf(),
            entries,
        })
    }

    fn malformed(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Malformed {
            reference: self.path.display().to_string(),
            what: "archive",
            reason: reason.into(),
        }
    }

    fn open(&self, name: &str) -> Result<(std::io::Take<File>, u64), ImageError> {
        let (offset, size) = *self
            .entries
            .get(name)
            .ok_or_else(|| self.malformed(format!("no member {name:?}")))?;
        let mut f = File::open(&self.path).map_err(io("open", &self.path))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(io("seek", &self.path))?;
        Ok((f.take(size), size))
    }

    fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let (mut r, size) = self.open(name)?;
        if size > limit {
            return Err(ImageError::TooLarge {
                reference: format!("{}:{name}", self.path.display()),
                what: "archive document",
                size,
                limit,
            });
        }
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(io("read", &self.path))?;
        Ok(out)
    }

    fn blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, ImageError> {
        let bytes = self.read(&format!("blobs/sha256/{}", digest.hex()), limit)?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(ImageError::Mismatch {
                reference: self.path.display().to_string(),
                what: format!("blob {digest}"),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }
}

/// An image found in an archive, before its layers are unpacked.
pub(crate) struct Found {
    pub name: Option<String>,
    pub manifest: (Vec<u8>, Digest),
    pub index: Option<(Vec<u8>, Digest)>,
    pub config: (Vec<u8>, Digest),
    pub layers: Vec<(LayerRecord, String)>,
    /// Whether layer blobs carry digests to verify (OCI) or not (docker save).
    pub verify_digests: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    archive: &Path,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Malformed {
        reference: archive.display().to_string(),
        what,
        reason: e.to_string(),
    })
}

fn layers_of(
    archive: &ArchiveIndex,
    config: &ImageConfiguration,
    descs: Vec<(String, Option<Digest>, u64, String)>,
) -> Result<Vec<(LayerRecord, String)>, ImageError> {
    let diff_ids: Vec<Digest> = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Digest::parse(d))
        .collect::<Result<_, _>>()
        .map_err(|e| archive.malformed(e.to_string()))?;
    if diff_ids.len() != descs.len() {
        return Err(archive.malformed(format!(
            "{} diff_ids for {} layers",
            diff_ids.len(),
            descs.len()
        )));
    }
    let chains = Digest::chain_ids(&diff_ids);
    let mut out = Vec::new();
    for (i, (member, digest, size, media_type)) in descs.into_iter().enumerate() {
        out.push((
            LayerRecord {
                // Docker archives carry no blob digest: it is computed while unpacking.
                digest: digest.unwrap_or_else(|| diff_ids[i].clone()),
                diff_id: diff_ids[i].clone(),
                chain_id: chains[i].clone(),
                media_type,
                size,
            },
            member,
        ));
    }
    Ok(out)
}

fn oci_images(archive: &ArchiveIndex) -> Result<Vec<Found>, ImageError> {
    let index_bytes = archive.read("index.json", MAX_MANIFEST_BYTES)?;
    let index: ImageIndex = parse_json(&index_bytes, "index.json", &archive.path)?;
    let mut out = Vec::new();
    for desc in index.manifests() {
        let annotations = desc.annotations().clone().unwrap_or_default();
        let name = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
            .cloned();
        let mut digest =
            Digest::parse(desc.digest().as_ref()).map_err(|e| archive.malformed(e.to_string()))?;
        let mut bytes = archive.blob(&digest, MAX_MANIFEST_BYTES)?;
        let mut nested = None;
        let value: serde_json::Value = parse_json(&bytes, "manifest", &archive.path)?;
        if value.get("manifests").is_some() {
            let inner: ImageIndex = parse_json(&bytes, "index", &archive.path)?;
            let arch = crate::service::goarch();
            let chosen = inner
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == arch
                    })
                })
                .ok_or_else(|| {
                    archive.malformed(format!("no linux/{arch} manifest in {digest}"))
                })?;
            nested = Some((bytes, digest));
            digest = Digest::parse(chosen.digest().as_ref())
                .map_err(|e| archive.malformed(e.to_string()))?;
            bytes = archive.blob(&digest, MAX_MANIFEST_BYTES)?;
        }
        let manifest: ImageManifest = parse_json(&bytes, "manifest", &archive.path)?;
        let config_digest = Digest::parse(manifest.config().digest().as_ref())
            .map_err(|e| archive.malformed(e.to_string()))?;
        let config_bytes = archive.blob(&config_digest, MAX_CONFIG_BYTES)?;
        let config: ImageConfiguration = parse_json(&config_bytes, "config", &archive.path)?;
        let mut descs = Vec::new();
        for l in manifest.layers() {
            let d =
                Digest::parse(l.digest().as_ref()).map_err(|e| archive.malformed(e.to_string()))?;
            descs.push((
                format!("blobs/sha256/{}", d.hex()),
                Some(d),
                l.size(),
                l.media_type().to_string(),
            ));
        }
        let layers = layers_of(archive, &config, descs)?;
        out.push(Found {
            name,
            manifest: (bytes, digest),
            index: nested,
            config: (config_bytes, config_digest),
            layers,
            verify_digests: true,
        });
    }
    Ok(out)
}

fn docker_images(archive: &ArchiveIndex) -> Result<Vec<Found>, ImageError> {
    let bytes = archive.read("manifest.json", MAX_MANIFEST_BYTES)?;
    let entries: Vec<DockerEntry> = parse_json(&bytes, "manifest.json", &archive.path)?;
    let mut out = Vec::new();
    for e in entries {
        let config_bytes = archive.read(&e.config, MAX_CONFIG_BYTES)?;
        let config_digest = Digest::of(&config_bytes);
        let config: ImageConfiguration = parse_json(&config_bytes, "config", &archive.path)?;
        let mut descs = Vec::new();
        for l in &e.layers {
            let (mut r, size) = archive.open(l)?;
            let mut magic = [0u8; 4];
            let n = r.read(&mut magic).map_err(io("read", &archive.path))?;
            let media_type = match Compression::sniff(&magic[..n]) {
                Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Zstd => "application/vnd.docker.image.rootfs.diff.tar.zstd",
                Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            };
            descs.push((l.clone(), None, size, media_type.to_string()));
        }
        let layers = layers_of(archive, &config, descs)?;
        // Synthesise the manifest a registry would serve, so the record looks like a pull's.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config_digest.to_string(),
                "size": config_bytes.len(),
            },
            "layers": [],
        });
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| archive.malformed(e.to_string()))?;
        let manifest_digest = Digest::of(&manifest_bytes);
        out.push(Found {
            name: e.repo_tags.first().cloned(),
            manifest: (manifest_bytes, manifest_digest),
            index: None,
            config: (config_bytes, config_digest),
            layers,
            verify_digests: false,
        });
    }
    Ok(out)
}

/// Read the archive's images (without unpacking).
pub(crate) fn scan(path: &Path) -> Result<(Vec<Found>, ArchiveHandle), ImageError> {
    let archive = ArchiveIndex::build(path)?;
    let found = if archive.entries.contains_key("index.json") {
        oci_images(&archive)?
    } else if archive.entries.contains_key("manifest.json") {
        docker_images(&archive)?
    } else {
        return Err(archive.malformed(
            "neither an OCI layout (index.json) nor a docker save archive (manifest.json)",
        ));
    };
    Ok((found, ArchiveHandle(archive)))
}

/// An indexed archive, for unpacking layers from it.
pub(crate) struct ArchiveHandle(ArchiveIndex);

impl ArchiveHandle {
    /// Unpack one layer member into a new snapshot, checking its digests. Returns the
    /// blob digest and size actually read.
    pub(crate) fn unpack_layer(
        &self,
        snapshots: &Snapshotter,
        layer: &LayerRecord,
        member: &str,
        opts: &UnpackOptions,
        verify_blob_digest: bool,
    ) -> Result<(Digest, u64), ImageError> {
        let archive = &self.0;
        let (reader, _) = archive.open(member)?;
        let compression =
            Compression::of_media_type(&layer.media_type).unwrap_or(Compression::None);
        let temp = snapshots.prepare(&layer.chain_id)?;
        let out = pipeline::run_reader(reader, compression, &temp.fs(), opts);
        let name = archive.path.display().to_string();
        if let Some(msg) = out.stream_failed {
            return Err(ImageError::Io {
                op: "read layer",
                path: archive.path.clone(),
                source: std::io::Error::other(msg),
            });
        }
        let digest = out.digest.unwrap_or_else(|| Digest::of(b""));
        if verify_blob_digest && (digest != layer.digest || out.size != layer.size) {
            return Err(ImageError::Mismatch {
                reference: name,
                what: format!("layer {member} (digest, size)"),
                expected: format!("{}, {} bytes", layer.digest, layer.size),
                actual: format!("{digest}, {} bytes", out.size),
            });
        }
        out.unpacked.map_err(|source| ImageError::Unpack {
            reference: name.clone(),
            layer: member.to_string(),
            source,
        })?;
        if out.diff_id.as_ref() != Some(&layer.diff_id) {
            return Err(ImageError::Mismatch {
                reference: name,
                what: format!("layer {member} diff_id"),
                expected: layer.diff_id.to_string(),
                actual: out
                    .diff_id
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "(unknown)".into()),
            });
        }
        snapshots.commit(temp, &layer.chain_id)?;
        Ok((digest, out.size))
    }
}

/// The names to record an imported image under.
pub(crate) fn record_names(
    found: &Found,
    name: Option<&str>,
) -> Result<(Vec<String>, Vec<String>), ImageError> {
    let chosen = match (name, &found.name) {
        (Some(n), _) => n.to_string(),
        (None, Some(n)) => n.clone(),
        (None, None) => {
            return Err(ImageError::InvalidReference {
                reference: String::new(),
                reason: "the archive names no image; give a name".into(),
            });
        }
    };
    let r = reference::parse(&chosen)?;
    let tags: Vec<String> = reference::tag_name(&r).into_iter().collect();
    let digests = vec![reference::digest_name(
        &r,
        found
            .index
            .as_ref()
            .map(|(_, d)| d)
            .unwrap_or(&found.manifest.1),
    )];
    Ok((tags, digests))
}

/// Build the record of an imported image.
pub(crate) fn record(
    found: &Found,
    tags: Vec<String>,
    digests: Vec<String>,
    layers: Vec<LayerRecord>,
) -> ImageRecord {
    let config: Option<ImageConfiguration> = serde_json::from_slice(&found.config.0).ok();
    let user = config
        .as_ref()
        .and_then(|c| c.config().as_ref().and_then(|c| c.user().clone()))
        .unwrap_or_default();
    ImageRecord {
        id: found.config.1.clone(),
        repo_tags: tags,
        repo_digests: digests,
        manifest: found.manifest.1.clone(),
        index: found.index.as_ref().map(|(_, d)| d.clone()),
        size: found.config.0.len() as u64 + layers.iter().map(|l| l.size).sum::<u64>(),
        layers,
        user,
        pinned: false,
    }
}
