//! Small, real, reproducible container images built in memory.
//!
//! - [`LayerBuilder`] turns programmatic tar entries (including hostile ones:
//!   `../escape`, absolute paths, whiteouts) into a [`Layer`].
//! - [`busybox_layer`] is a tiny runnable rootfs made from the host's static
//!   `/bin/busybox`; [`many_small_files_layer`] and [`big_files_layer`] are
//!   perf fixtures with pseudo-random content.
//! - [`ImageBuilder`] assembles layers and a runtime config into an [`Image`]
//!   (config + manifest JSON with their digests), with OCI media types by
//!   default or Docker schema2 ones on request.
//! - [`index`] makes a multi-arch OCI image index and
//!   [`write_oci_layout_tar`] an OCI image-layout tarball.
//!
//! Everything is deterministic: the same inputs give the same digests.

mod fixtures;
mod layer;
mod layout;
mod manifest;

use std::io::{self, Read as _};
use std::path::PathBuf;

pub use fixtures::{
    BUSYBOX_APPLETS, big_files_layer, busybox_layer, busybox_rootfs, many_small_files_layer,
};
pub use layer::{Layer, LayerBuilder, PseudoRandom};
pub use layout::write_oci_layout_tar;
pub use manifest::{Image, ImageBuilder, host_arch, index};

/// Modification time stamped on every entry and `created` field
/// (2000-01-01T00:00:00Z), so builds are reproducible.
pub const FIXED_MTIME: u64 = 946_684_800;
const FIXED_CREATED: &str = "2000-01-01T00:00:00Z";

/// Default `PATH` in image configs.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where [`busybox_layer`] takes busybox from (Debian's `busybox-static`).
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// OCI image manifest media type.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer media type.
pub const MEDIA_TYPE_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer media type.
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer media type.
pub const MEDIA_TYPE_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker schema2 manifest media type.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker uncompressed layer media type.
pub const MEDIA_TYPE_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker gzip layer media type.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker zstd layer media type (as containerd names it).
pub const MEDIA_TYPE_DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// The annotation an OCI image layout uses to name a manifest.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors from building layers and images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A tar entry could not be written (invalid path, long link name, …).
    #[error("writing tar entry {path}: {source}")]
    TarEntry {
        /// The entry's path as given to the builder.
        path: String,
        /// The tar crate's complaint.
        #[source]
        source: io::Error,
    },
    /// Compressing the layer failed.
    #[error("compressing layer with {compression:?}: {source}")]
    Compress {
        /// The compression in use.
        compression: Compression,
        /// The encoder's error.
        #[source]
        source: io::Error,
    },
    /// An input file could not be read.
    #[error("reading {path}: {source}", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
    /// An output file could not be written.
    #[error("writing {path}: {source}", path = path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why it could not be written.
        #[source]
        source: io::Error,
    },
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (deterministic header: no name, mtime 0).
    Gzip,
    /// zstd (level 3).
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_OCI_LAYER,
            Compression::Gzip => MEDIA_TYPE_OCI_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_OCI_LAYER_ZSTD,
        }
    }

    /// The Docker schema2 layer media type for this compression.
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_DOCKER_LAYER,
            Compression::Gzip => MEDIA_TYPE_DOCKER_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_DOCKER_LAYER_ZSTD,
        }
    }

    /// Recognises a layer media type of either family.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            MEDIA_TYPE_OCI_LAYER | MEDIA_TYPE_DOCKER_LAYER => Some(Compression::None),
            MEDIA_TYPE_OCI_LAYER_GZIP | MEDIA_TYPE_DOCKER_LAYER_GZIP => Some(Compression::Gzip),
            MEDIA_TYPE_OCI_LAYER_ZSTD | MEDIA_TYPE_DOCKER_LAYER_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Decompresses `blob` (for checks in tests).
    pub fn decompress(self, blob: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Compression::None => out.extend_from_slice(blob),
            Compression::Gzip => {
                flate2::read::GzDecoder::new(blob).read_to_end(&mut out)?;
            }
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(blob)?.read_to_end(&mut out)?;
            }
        }
        Ok(out)
    }
}
