//! Test fixtures for skiff's integration tests and perf harness.
//!
//! - [`netns`]: throw-away network namespaces ([`NetNs`]) and root checks
//!   ([`is_root`], [`require_root`], [`skip_unless_root!`]).
//! - [`registry`]: a real OCI distribution registry (Debian's `docker-registry`)
//!   on loopback, in the host namespace or inside a [`NetNs`].
//! - [`image`]: small real OCI / Docker schema2 images built in memory
//!   (layers from programmatic tar entries, a static busybox rootfs,
//!   pseudo-random perf layers, image indexes, OCI image-layout tarballs).
//! - [`push`](mod@push): a blocking OCI distribution client that pushes those
//!   images.
//!
//! Everything that owns an external resource (namespace, registry process,
//! temp directory) releases it in `Drop`, so a panicking test still cleans up.
//! Diagnostics go to stderr: this crate only ever runs inside tests and
//! benchmarks.

pub mod fake_registry;
pub mod image;
pub mod netns;
pub mod push;
pub mod registry;
pub mod skiffd;

pub use image::{
    Compression, Image, ImageBuilder, ImageError, Layer, LayerBuilder, big_files_layer,
    busybox_layer, index, many_small_files_layer, write_oci_layout_tar,
};
pub use netns::{NetNs, NetNsError, STRICT_ENV, is_root, require_root, skip, strict};
pub use push::{FetchedManifest, PushError, RegistryClient, push, push_index};
pub use registry::{Registry, RegistryError};

/// Returns `sha256:<hex>` for `bytes`: the digest form used in OCI descriptors.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
