//! skiff's image service: registry client, content store, snapshots, unpack, GC.
//!
//! A pull resolves the reference through the configured hosts (mirrors first), picks
//! the node's platform from an index, and streams every layer concurrently through
//! one pipeline (HTTP body → sha256 → decompressor → sha256 → tar → snapshot files).
//! Nothing becomes visible before its digests match.

pub mod content;
pub mod counters;
pub mod digest;
pub mod error;
pub mod hosts;
mod import;
pub mod parse;
pub mod pipeline;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::{ImageError, Kind};
pub use oci_client::secrets::RegistryAuth;
pub use service::{GcStats, Images, ImagesConfig, Usage};
pub use store::{ImageRecord, LayerRecord};
