//! Reading what a registry sends about an image: the top manifest (an index or an
//! image manifest), the image manifest, and the image config. Pure functions over
//! bytes, so every check is in one place (and fuzzed, `fuzz/fuzz_targets/image_json.rs`).

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::Digest;
use crate::pipeline::Compression;

/// Why a document is refused: which document (`"manifest"`, `"index"`, `"config"`) and
/// what is wrong; or a valid document skiff cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not what the document must be.
    Malformed {
        /// The document.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Valid, but not for this runtime.
    Unsupported {
        /// What is not supported.
        what: &'static str,
        /// The value found.
        value: String,
    },
}

fn malformed(what: &'static str, e: impl std::fmt::Display) -> ParseError {
    ParseError::Malformed {
        what,
        reason: e.to_string(),
    }
}

/// What the top manifest of a reference is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Top {
    /// An image manifest: these are its bytes.
    Manifest,
    /// An index: the digest of the manifest for `linux/<arch>`.
    Index(Digest),
}

/// Read the top manifest: an index (then the `linux/<arch>` entry is chosen) or an
/// image manifest.
pub fn top(bytes: &[u8], arch: &str) -> Result<Top, ParseError> {
    let top: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| malformed("manifest", e))?;
    let is_index = top.get("manifests").is_some()
        || matches!(
            top.get("mediaType").and_then(|m| m.as_str()),
            Some("application/vnd.oci.image.index.v1+json")
                | Some("application/vnd.docker.distribution.manifest.list.v2+json")
        );
    if !is_index {
        return Ok(Top::Manifest);
    }
    let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| malformed("index", e))?;
    let chosen = index
        .manifests()
        .iter()
        .find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        })
        .ok_or_else(|| ParseError::Unsupported {
            what: "platform",
            value: format!("the index has no linux/{arch} manifest"),
        })?;
    Digest::parse(chosen.digest().as_ref())
        .map(Top::Index)
        .map_err(|e| malformed("index", e))
}

/// A layer as an image manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestLayer {
    /// The blob's digest.
    pub digest: Digest,
    /// Its media type (a compression skiff reads).
    pub media_type: String,
    /// Its size as declared.
    pub size: u64,
}

/// An image manifest, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The config blob's digest.
    pub config_digest: Digest,
    /// The config blob's declared size.
    pub config_size: u64,
    /// The layers, bottom first.
    pub layers: Vec<ManifestLayer>,
}

/// Read an image manifest: schema 2, digests that parse, layer media types skiff can
/// decompress.
pub fn manifest(bytes: &[u8]) -> Result<Manifest, ParseError> {
    let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| malformed("manifest", e))?;
    if m.schema_version() != 2 {
        return Err(ParseError::Unsupported {
            what: "manifest schema version",
            value: m.schema_version().to_string(),
        });
    }
    let config_digest =
        Digest::parse(m.config().digest().as_ref()).map_err(|e| malformed("manifest", e))?;
    let mut layers = Vec::with_capacity(m.layers().len());
    for l in m.layers() {
        let media_type = l.media_type().to_string();
        if Compression::of_media_type(&media_type).is_none() {
            return Err(ParseError::Unsupported {
                what: "layer media type",
                value: media_type,
            });
        }
        layers.push(ManifestLayer {
            digest: Digest::parse(l.digest().as_ref()).map_err(|e| malformed("manifest", e))?,
            media_type,
            size: l.size(),
        });
    }
    Ok(Manifest {
        config_digest,
        config_size: m.config().size(),
        layers,
    })
}

/// An image config, checked against its manifest.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config itself.
    pub config: ImageConfiguration,
    /// The diff ids, bottom first.
    pub diff_ids: Vec<Digest>,
    /// The chain ids, bottom first.
    pub chain_ids: Vec<Digest>,
}

/// Read an image config: its diff ids parse and there is one per layer of the manifest.
pub fn config(bytes: &[u8], layers: usize) -> Result<Config, ParseError> {
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| malformed("config", e))?;
    let diff_ids: Vec<Digest> = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Digest::parse(d))
        .collect::<Result<_, _>>()
        .map_err(|e| malformed("config", e))?;
    if diff_ids.len() != layers {
        return Err(malformed(
            "config",
            format!("{} diff_ids for {layers} layers", diff_ids.len()),
        ));
    }
    let chain_ids = Digest::chain_ids(&diff_ids);
    Ok(Config {
        config,
        diff_ids,
        chain_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn index_picks_linux_arch_and_refuses_what_it_cannot_use() {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":1,
                "platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        assert_eq!(
            top(index.as_bytes(), "amd64").unwrap(),
            Top::Index(Digest::parse(D).unwrap())
        );
        assert!(matches!(
            top(index.as_bytes(), "arm64"),
            Err(ParseError::Unsupported {
                what: "platform",
                ..
            })
        ));
        assert!(matches!(
            top(b"{", "amd64"),
            Err(ParseError::Malformed { .. })
        ));
        assert_eq!(
            top(b"{\"schemaVersion\":2}", "amd64").unwrap(),
            Top::Manifest
        );
    }

    #[test]
    fn manifest_and_config_are_checked_together() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":2}},
               "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D}","size":3}}]}}"#
        );
        let parsed = manifest(m.as_bytes()).unwrap();
        assert_eq!(parsed.layers.len(), 1);
        let bad = m.replace("tar+gzip", "tar+lz4");
        assert!(matches!(
            manifest(bad.as_bytes()),
            Err(ParseError::Unsupported {
                what: "layer media type",
                ..
            })
        ));
        let cfg = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#
        );
        assert_eq!(config(cfg.as_bytes(), 1).unwrap().chain_ids.len(), 1);
        assert!(config(cfg.as_bytes(), 2).is_err());
    }
}
