//! The image service's errors, each classifying itself.

use std::path::PathBuf;

/// The class of an image error, for the daemon to map onto CRI codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The image, tag or blob does not exist.
    NotFound,
    /// The request is malformed (bad reference, unsupported media type).
    InvalidArgument,
    /// The image is in use, or the node's configuration refuses the request.
    FailedPrecondition,
    /// The registry is unreachable, rate-limits, or sent bad data; retrying may help.
    Unavailable,
    /// Credentials were refused.
    Unauthenticated,
    /// The pull took longer than allowed.
    DeadlineExceeded,
    /// A size limit was exceeded.
    ResourceExhausted,
    /// A local fault (disk, store).
    Internal,
}

/// A failure of the image service.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What was given.
        reference: String,
        /// Why it is refused.
        reason: String,
    },
    /// No such image in the store.
    #[error("image {0:?} not found")]
    NotFound(String),
    /// The image is used by containers.
    #[error("image {image} is in use by container(s) {containers}")]
    InUse {
        /// The image id.
        image: String,
        /// The container ids.
        containers: String,
    },
    /// The registry answered with an error or could not be reached.
    #[error("pulling {reference} from {endpoint}: {message}")]
    Registry {
        /// The image reference.
        reference: String,
        /// The host asked.
        endpoint: String,
        /// What went wrong.
        message: String,
        /// The class of failure.
        kind: Kind,
    },
    /// Content did not match its digest or size.
    #[error("{what} of {reference}: expected {expected}, got {actual}")]
    Mismatch {
        /// The image reference.
        reference: String,
        /// Which blob and what property (e.g. `layer sha256:… digest`).
        what: String,
        /// The expected value.
        expected: String,
        /// The value received.
        actual: String,
    },
    /// A manifest, config or layer uses something skiff does not support.
    #[error("{reference}: unsupported {what}: {value}")]
    Unsupported {
        /// The image reference.
        reference: String,
        /// What is unsupported (media type, schema version, platform).
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A document exceeded skiff's size limit.
    #[error("{what} of {reference} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The image reference.
        reference: String,
        /// Which document.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A document did not parse.
    #[error("{what} of {reference} is not valid: {reason}")]
    Malformed {
        /// The image reference.
        reference: String,
        /// Which document.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// Unpacking a layer failed.
    #[error("unpacking layer {layer} of {reference}: {source}")]
    Unpack {
        /// The image reference.
        reference: String,
        /// The layer digest.
        layer: String,
        /// The cause.
        #[source]
        source: crate::pipeline::LayerError,
    },
    /// Storing an unpacked layer (flushing it to disk, renaming it into place)
    /// failed.
    #[error("storing layer {layer} of {reference}: {source}")]
    Store {
        /// The image reference.
        reference: String,
        /// The layer digest.
        layer: String,
        /// The cause.
        #[source]
        source: Box<ImageError>,
    },
    /// The registry hosts configuration is unusable.
    #[error(transparent)]
    Hosts(#[from] crate::hosts::HostsError),
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] skiff_meta::MetaError),
}

impl ImageError {
    /// The class of this error.
    pub fn kind(&self) -> Kind {
        match self {
            ImageError::InvalidReference { .. } | ImageError::Unsupported { .. } => {
                Kind::InvalidArgument
            }
            ImageError::Malformed { .. } => Kind::Unavailable,
            ImageError::NotFound(_) => Kind::NotFound,
            ImageError::InUse { .. } | ImageError::Hosts(_) => Kind::FailedPrecondition,
            ImageError::Registry { kind, .. } => *kind,
            ImageError::Mismatch { .. } => Kind::Unavailable,
            ImageError::TooLarge { .. } => Kind::ResourceExhausted,
            ImageError::Store { source, .. } => source.kind(),
            ImageError::Unpack { .. } | ImageError::Io { .. } if self.disk_full() => {
                Kind::ResourceExhausted
            }
            ImageError::Unpack { .. } | ImageError::Io { .. } | ImageError::Meta(_) => {
                Kind::Internal
            }
        }
    }

    /// Whether the filesystem ran out of space or quota (ENOSPC, EDQUOT) somewhere
    /// in the error's causes: the node, not skiff, must make room.
    fn disk_full(&self) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            {
                return true;
            }
            source = e.source();
        }
        false
    }

    /// Whether retrying the same fetch may succeed.
    pub fn transient(&self) -> bool {
        matches!(self.kind(), Kind::Unavailable)
    }
}

/// `map_err` helper for io errors: `.map_err(io("create", &path))`.
pub(crate) fn io(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { op, path, source }
}
