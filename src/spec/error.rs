//! The error of OCI spec generation.

use std::io;
use std::path::PathBuf;

use skiff_cri::error::{Classify, ErrorKind};

/// Why a CRI container config could not be turned into an OCI runtime spec.
///
/// Every variant names the object at fault (the container, the path, the user name)
/// so that the message a kubelet operator reads says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the CRI config nor the image gives a command to run.
    #[error(
        "container {container}: no command specified (neither the CRI config nor the image has one)"
    )]
    NoCommand {
        /// The container name from the CRI metadata.
        container: String,
    },
    /// `run_as_group` was given without `run_as_user` or `run_as_username`.
    #[error("user group {gid} is specified without user")]
    GroupWithoutUser {
        /// The group id that was given.
        gid: i64,
    },
    /// A user or group value cannot be used (out of range, malformed image `User`).
    #[error("invalid user {value:?}: {reason}")]
    InvalidUser {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A user name is not in the image's `/etc/passwd`.
    #[error("user {user:?} not found in {} of the image", file.display())]
    UserNotFound {
        /// The user name.
        user: String,
        /// The file searched, as seen inside the container (`/etc/passwd`).
        file: PathBuf,
    },
    /// A group name is not in the image's `/etc/group`.
    #[error("group {group:?} not found in {} of the image", file.display())]
    GroupNotFound {
        /// The group name.
        group: String,
        /// The file searched, as seen inside the container (`/etc/group`).
        file: PathBuf,
    },
    /// A file of the image (`/etc/passwd`, `/etc/group`) exists but cannot be used.
    #[error("{} in the image rootfs {}: {reason}", file.display(), rootfs.display())]
    BadImageFile {
        /// The file, as seen inside the container.
        file: PathBuf,
        /// The rootfs on the host.
        rootfs: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host path of a CRI mount does not exist.
    #[error("mount {container_path}: host path {} does not exist", host_path.display())]
    MountSourceNotFound {
        /// The host path as given by the kubelet.
        host_path: PathBuf,
        /// Where it was to be mounted in the container.
        container_path: String,
    },
    /// A CRI mount cannot be honoured as asked.
    #[error("mount {container_path}: {reason}")]
    InvalidMount {
        /// Where it was to be mounted in the container.
        container_path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host path of a CRI device does not exist.
    #[error("device {container_path}: host path {} does not exist", host_path.display())]
    DeviceNotFound {
        /// The host path as given by the kubelet.
        host_path: PathBuf,
        /// Where it was to appear in the container.
        container_path: String,
    },
    /// A CRI device cannot be honoured as asked.
    #[error("device {}: {reason}", host_path.display())]
    InvalidDevice {
        /// The host path as given by the kubelet.
        host_path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A capability name is not a Linux capability.
    #[error("unknown capability {name:?}")]
    UnknownCapability {
        /// The name as given.
        name: String,
    },
    /// A `Localhost` seccomp profile file does not exist.
    #[error("seccomp profile {} not found", path.display())]
    SeccompProfileNotFound {
        /// The profile path on the host.
        path: PathBuf,
    },
    /// A `Localhost` seccomp profile file is not a valid OCI seccomp profile.
    #[error("seccomp profile {} is not a valid OCI seccomp profile", path.display())]
    InvalidSeccompProfile {
        /// The profile path on the host.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A seccomp profile reference cannot be understood.
    #[error("seccomp profile reference {value:?}: {reason}")]
    InvalidSeccompRef {
        /// The reference as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A resource value is out of the range the OCI spec allows.
    #[error("resource {field} = {value} is out of range")]
    InvalidResource {
        /// The CRI field name.
        field: &'static str,
        /// The value given.
        value: i64,
    },
    /// A container log path cannot be used.
    #[error("log path {path:?}: {reason}")]
    InvalidLogPath {
        /// The path as given (directory or file part).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A host file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl SpecError {
    /// A closure wrapping an io error with the operation and path, for `map_err`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| SpecError::Io { op, path, source }
    }
}

impl Classify for SpecError {
    fn kind(&self) -> ErrorKind {
        match self {
            SpecError::NoCommand { .. }
            | SpecError::GroupWithoutUser { .. }
            | SpecError::InvalidUser { .. }
            | SpecError::InvalidMount { .. }
            | SpecError::InvalidDevice { .. }
            | SpecError::UnknownCapability { .. }
            | SpecError::InvalidSeccompProfile { .. }
            | SpecError::InvalidSeccompRef { .. }
            | SpecError::InvalidResource { .. }
            | SpecError::InvalidLogPath { .. } => ErrorKind::InvalidArgument,
            SpecError::UserNotFound { .. }
            | SpecError::GroupNotFound { .. }
            | SpecError::MountSourceNotFound { .. }
            | SpecError::DeviceNotFound { .. }
            | SpecError::SeccompProfileNotFound { .. } => ErrorKind::NotFound,
            SpecError::BadImageFile { .. } => ErrorKind::FailedPrecondition,
            SpecError::Io { .. } => ErrorKind::Internal,
        }
    }
}
