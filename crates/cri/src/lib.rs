//! The CRI `runtime.v1` protocol for skiff.
//!
//! This crate owns the wire side of the Container Runtime Interface: the generated
//! types and tonic services (compiled from the vendored cri-api `api.proto`), request validation, the
//! tracing wrapper every RPC goes through, and the single place that turns a
//! domain error into a gRPC status. It knows nothing of images, shims or
//! networking: it calls the [`ports`] that the daemon implements.

pub mod client;
pub mod error;
mod image;
mod json;
pub mod ports;
mod runtime;
pub mod server;
mod stream_list;
mod validate;
mod wrap;

pub use error::{Classify, CriError, ErrorKind};
/// The generated CRI `runtime.v1` types, clients and servers (cri-api v0.36).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}
pub use ports::Ports;

#[cfg(test)]
mod tests {
    use sha2::Digest;

    /// The vendored proto is the file `proto/cri-api/README.md` names, byte for byte.
    #[test]
    fn vendored_proto_is_unchanged() {
        let text = include_bytes!("../proto/cri-api/api.proto");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(text)),
            "6d130c2651d335bfc755d25efc63072a1cd1eba3591ead6422dc0a27f20167f3"
        );
    }
}
