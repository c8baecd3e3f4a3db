//! OCI image-layout tarballs, as `skiff image import` reads them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::path::Path;

use super::manifest::{DescriptorJson, IndexJson, to_json};
use super::{ANNOTATION_REF_NAME, Image, ImageError, LayerBuilder, MEDIA_TYPE_OCI_INDEX};

/// Writes `image` as an OCI image-layout tarball at `out`: `oci-layout`,
/// `index.json` (one manifest annotated
/// `org.opencontainers.image.ref.name: <ref_name>`) and
/// `blobs/sha256/<hex>` for the manifest, config and layers.
pub fn write_oci_layout_tar(image: &Image, ref_name: &str, out: &Path) -> Result<(), ImageError> {
    let write_err = |source| ImageError::Write {
        path: out.to_owned(),
        source,
    };
    let mut desc = DescriptorJson::new(
        &image.manifest_media_type,
        &image.manifest_digest,
        image.manifest.len(),
    );
    desc.annotations = Some(BTreeMap::from([(ANNOTATION_REF_NAME, ref_name)]));
    let index = to_json(&IndexJson {
        schema_version: 2,
        media_type: MEDIA_TYPE_OCI_INDEX,
        manifests: vec![desc],
    });

    let mut layout = LayerBuilder::new();
    layout
        .file("oci-layout", 0o644, r#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("index.json", 0o644, index)
        .dir("blobs", 0o755)
        .dir("blobs/sha256", 0o755);
    let mut seen = BTreeSet::new();
    let blobs = std::iter::once((image.manifest_digest.as_str(), image.manifest.as_slice()))
        .chain(image.blobs());
    for (digest, bytes) in blobs {
        if seen.insert(digest) {
            let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
            layout.file(&format!("blobs/sha256/{hex}"), 0o644, bytes);
        }
    }

    let file = File::create(out).map_err(write_err)?;
    layout
        .write_tar(io::BufWriter::new(file))?
        .into_inner()
        .map_err(io::IntoInnerError::into_error)
        .and_then(|f| f.sync_all())
        .map_err(write_err)
}
