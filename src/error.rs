//! How the daemon's domain errors classify themselves for CRI clients.
//!
//! The crates below skiffd (meta, image, …) know nothing of gRPC. Their errors
//! reach the CRI crate through [`ServiceError`], which says which [`ErrorKind`]
//! each one is; `skiff_cri::error::to_status` then picks the gRPC code.

use skiff_cri::{Classify, ErrorKind};
use skiff_image::{ImageError, Kind};
use skiff_meta::MetaError;

/// A domain error on its way to a CRI client.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The metadata store failed: always an internal fault.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The image service failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A request the CRI crate's validation let through but the service refuses.
    #[error("{0}")]
    BadRequest(String),
}

impl Classify for ServiceError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::Meta(_) => ErrorKind::Internal,
            ServiceError::BadRequest(_) => ErrorKind::InvalidArgument,
            ServiceError::Image(e) => image_kind(e.kind()),
        }
    }
}

/// The CRI kind of an image store error kind.
pub fn image_kind(kind: Kind) -> ErrorKind {
    match kind {
        Kind::NotFound => ErrorKind::NotFound,
        Kind::InvalidArgument => ErrorKind::InvalidArgument,
        Kind::FailedPrecondition => ErrorKind::FailedPrecondition,
        Kind::Unavailable => ErrorKind::Unavailable,
        Kind::Unauthenticated => ErrorKind::Unauthenticated,
        Kind::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        Kind::ResourceExhausted => ErrorKind::ResourceExhausted,
        Kind::Internal => ErrorKind::Internal,
    }
}
