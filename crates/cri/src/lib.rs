//! The CRI `runtime.v1` protocol for skiff.
//!
//! This crate owns the wire side of the Container Runtime Interface: the generated
//! types and tonic services (from the `k8s-cri` crate), request validation, the
//! tracing wrapper every RPC goes through, and the single place that turns a
//! domain error into a gRPC status. It knows nothing of images, shims or
//! networking: it calls the [`ports`] that the daemon implements.

pub mod client;
pub mod error;
mod image;
pub mod ports;
mod runtime;
pub mod server;
mod validate;
mod wrap;

pub use error::{Classify, CriError, ErrorKind};
/// The generated CRI `runtime.v1` types, clients and servers.
pub use k8s_cri::v1 as api;
pub use ports::Ports;
