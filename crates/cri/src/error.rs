//! Error classification and the one mapping from domain errors to gRPC status codes.

use std::fmt;

/// What kind of failure an error is, as a CRI client needs to know it.
///
/// Every domain error in skiff classifies itself into one of these; [`to_status`]
/// is the only place that turns a kind into a gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named object does not exist.
    NotFound,
    /// An object with that name or id exists already.
    AlreadyExists,
    /// The request itself is malformed (missing field, bad value).
    InvalidArgument,
    /// The request is well formed but the object is in the wrong state for it.
    FailedPrecondition,
    /// A dependency (registry, OCI runtime, shim) is not reachable right now; retrying may help.
    Unavailable,
    /// skiff does not implement this yet.
    Unimplemented,
    /// Credentials were missing or refused.
    Unauthenticated,
    /// The operation did not finish in the time it was given.
    DeadlineExceeded,
    /// A limit was reached (address pool, disk, size cap).
    ResourceExhausted,
    /// A bug or an unexpected host failure.
    Internal,
}

/// An error that knows which [`ErrorKind`] it is.
pub trait Classify: std::error::Error + Send + Sync + 'static {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;
}

/// The error type the ports return: any classified domain error.
pub struct CriError(Box<dyn Classify>);

impl CriError {
    /// The kind of the wrapped error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind()
    }

    /// An `Unimplemented` error for a CRI method skiff does not serve yet.
    pub fn unimplemented(method: &'static str) -> Self {
        Self::from(NotImplemented { method })
    }
}

impl<E: Classify> From<E> for CriError {
    fn from(err: E) -> Self {
        CriError(Box::new(err))
    }
}

impl fmt::Display for CriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Walk the source chain so the client sees the whole cause; a cause the
        // message already shows (many errors print their source) is not repeated.
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(s) = source {
            let cause = s.to_string();
            if !text.contains(&cause) {
                text.push_str(": ");
                text.push_str(&cause);
            }
            source = s.source();
        }
        f.write_str(&text)
    }
}

impl fmt::Debug for CriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CriError({:?}: {self})", self.kind())
    }
}

/// The error the default port methods return.
#[derive(Debug, thiserror::Error)]
#[error("{method} is not implemented by skiff yet")]
pub struct NotImplemented {
    /// The CRI method name, e.g. `RunPodSandbox`.
    pub method: &'static str,
}

impl Classify for NotImplemented {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Unimplemented
    }
}

/// The one mapping from a classified error to a gRPC status.
pub fn to_status(err: &CriError) -> tonic::Status {
    let message = err.to_string();
    let code = match err.kind() {
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Unimplemented => tonic::Code::Unimplemented,
        ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorKind::Internal => tonic::Code::Internal,
    };
    tonic::Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("pod {0} not found")]
    struct Missing(String);
    impl Classify for Missing {
        fn kind(&self) -> ErrorKind {
            ErrorKind::NotFound
        }
    }

    #[test]
    fn maps_kind_and_message() {
        let status = to_status(&CriError::from(Missing("abc".into())));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "pod abc not found");
        let status = to_status(&CriError::unimplemented("Attach"));
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains("Attach"));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("flushing {path}: {source}")]
    struct Flush {
        path: String,
        #[source]
        source: std::io::Error,
    }
    impl Classify for Flush {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Internal
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("storing layer")]
    struct Store(#[source] Flush);
    impl Classify for Store {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Internal
        }
    }

    #[test]
    fn causes_are_shown_once() {
        let io = || std::io::Error::from_raw_os_error(5);
        // The cause printed by the error itself is not appended again.
        let status = to_status(&CriError::from(Flush {
            path: "/x".into(),
            source: io(),
        }));
        assert_eq!(status.message(), format!("flushing /x: {}", io()));
        // One that is not printed is.
        let status = to_status(&CriError::from(Store(Flush {
            path: "/x".into(),
            source: io(),
        })));
        assert_eq!(
            status.message(),
            format!("storing layer: flushing /x: {}", io())
        );
    }
}
