//! Request validation: what every CRI request must carry before a port sees it.

use crate::error::{Classify, ErrorKind};

/// A malformed CRI request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A required field is missing or empty.
    #[error("{method}: required field `{field}` is missing or empty")]
    Missing {
        /// The CRI method.
        method: &'static str,
        /// The proto field path, e.g. `config.metadata.name`.
        field: &'static str,
    },
    /// A field has a value the CRI does not allow.
    #[error("{method}: field `{field}` is invalid: {reason}")]
    Invalid {
        /// The CRI method.
        method: &'static str,
        /// The proto field path.
        field: &'static str,
        /// Why the value is refused.
        reason: String,
    },
}

impl Classify for RequestError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// The object ids a request names, for the tracing span.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ids<'a> {
    /// The pod sandbox id, if the request names one.
    pub pod: Option<&'a str>,
    /// The container id, if the request names one.
    pub container: Option<&'a str>,
}

impl<'a> Ids<'a> {
    pub(crate) fn pod(id: &'a str) -> Self {
        Ids {
            pod: Some(id),
            container: None,
        }
    }
    pub(crate) fn container(id: &'a str) -> Self {
        Ids {
            pod: None,
            container: Some(id),
        }
    }
}

/// Implemented by every CRI request: its method name, the ids it names, and its checks.
pub trait Request: Send + 'static {
    /// The CRI method name, e.g. `RunPodSandbox`.
    const METHOD: &'static str;
    /// Whether the method only reads state (logged at debug level: kubelets poll these).
    const READ_ONLY: bool = false;
    /// The ids this request names.
    fn ids(&self) -> Ids<'_> {
        Ids::default()
    }
    /// Reject a malformed request.
    fn validate(&self) -> Result<(), RequestError> {
        Ok(())
    }
}

/// `Err(Missing)` when `value` is empty.
pub(crate) fn require(
    method: &'static str,
    field: &'static str,
    value: &str,
) -> Result<(), RequestError> {
    if value.is_empty() {
        Err(RequestError::Missing { method, field })
    } else {
        Ok(())
    }
}

/// `Err(Missing)` when `value` is `None`.
pub(crate) fn require_some<T>(
    method: &'static str,
    field: &'static str,
    value: Option<&T>,
) -> Result<(), RequestError> {
    if value.is_none() {
        Err(RequestError::Missing { method, field })
    } else {
        Ok(())
    }
}

/// Declares a request whose only requirement is a non-empty id field.
macro_rules! id_request {
    ($ty:ty, $method:literal, $field:ident, $kind:ident, read_only = $ro:literal) => {
        impl $crate::validate::Request for $ty {
            const METHOD: &'static str = $method;
            const READ_ONLY: bool = $ro;
            fn ids(&self) -> $crate::validate::Ids<'_> {
                $crate::validate::Ids::$kind(&self.$field)
            }
            fn validate(&self) -> Result<(), $crate::validate::RequestError> {
                $crate::validate::require($method, stringify!($field), &self.$field)
            }
        }
    };
}

/// Declares a request without required fields.
macro_rules! plain_request {
    ($ty:ty, $method:literal, read_only = $ro:literal) => {
        impl $crate::validate::Request for $ty {
            const METHOD: &'static str = $method;
            const READ_ONLY: bool = $ro;
        }
    };
}

pub(crate) use {id_request, plain_request};
