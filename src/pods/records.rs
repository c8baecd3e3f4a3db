//! Pod and container records in the metadata store, and their state machines.

use std::path::PathBuf;

use base64::Engine;
use prost::Message;
use serde::{Deserialize, Serialize};
use skiff_cri::api;

use crate::sys::PodNs;

/// A pod's lifecycle: `Ready → NotReady`; removal deletes the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    /// Namespaces, shim and pause are up.
    Ready,
    /// Stopped: containers killed, shim gone, namespaces released.
    NotReady,
}

/// How a pod's containers share a PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidMode {
    /// One PID namespace for the pod, PID 1 is skiff-pause.
    Pod,
    /// Each container has its own.
    Container,
    /// The host's.
    Host,
}

/// A pod sandbox as skiffd remembers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    /// The sandbox id (64 hex).
    pub id: String,
    /// The CRI config, prost-encoded and base64'd.
    pub config: String,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Lifecycle state.
    pub state: PodState,
    /// The RuntimeClass handler name as requested.
    pub handler: String,
    /// The pod's state directory.
    pub dir: PathBuf,
    /// Pinned namespaces.
    pub ns: PodNs,
    /// PID namespace sharing.
    pub pid_mode: PidMode,
    /// The shim's control socket.
    pub shim_socket: PathBuf,
    /// The shim's pid.
    pub shim_pid: u32,
    /// The pause process, PID 1 of the pod's PID namespace.
    pub pause_pid: Option<u32>,
    /// The cgroup parent of the pod's containers.
    pub cgroup_parent: String,
    /// The pause process's cgroup (`<parent>/<pod id>`), if it has one.
    pub pause_cgroup: Option<String>,
    /// The pod's `/dev/shm` tmpfs, if it has its own IPC namespace.
    pub shm: Option<PathBuf>,
    /// The name key reserved for it.
    pub name_key: String,
    /// The pod's IPv4 address, once networked.
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// The host end of its veth pair.
    #[serde(default)]
    pub host_veth: Option<String>,
    /// Its user namespace's mappings, if it has its own.
    #[serde(default)]
    pub userns: Option<crate::sys::UsernsMaps>,
}

impl PodRecord {
    /// The pod's pinned user namespace, if it has its own.
    pub fn userns_file(&self) -> Option<PathBuf> {
        self.ns.user.clone().filter(|_| self.userns.is_some())
    }
}

/// A container's lifecycle: `Created → Running → Exited`; removal deletes the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtrState {
    /// Created by the runtime, not started.
    Created,
    /// Started.
    Running,
    /// Its init exited (or never could start).
    Exited,
}

impl CtrState {
    /// Whether `self → next` is a valid edge.
    pub fn can_become(self, next: CtrState) -> bool {
        matches!(
            (self, next),
            (CtrState::Created, CtrState::Running)
                | (CtrState::Created, CtrState::Exited)
                | (CtrState::Running, CtrState::Exited)
        )
    }

    /// The CRI enum value.
    pub fn cri(self) -> api::ContainerState {
        match self {
            CtrState::Created => api::ContainerState::ContainerCreated,
            CtrState::Running => api::ContainerState::ContainerRunning,
            CtrState::Exited => api::ContainerState::ContainerExited,
        }
    }
}

/// A state change the container's state machine does not allow.
#[derive(Debug, thiserror::Error)]
#[error("container {id} cannot go from {from:?} to {to:?}")]
#[must_use]
pub struct Refused {
    /// The container.
    pub id: String,
    /// Its state.
    pub from: CtrState,
    /// The state asked for.
    pub to: CtrState,
}

/// The user a container runs as.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    /// uid.
    pub uid: i64,
    /// gid.
    pub gid: i64,
    /// Supplemental gids.
    pub groups: Vec<i64>,
}

/// A container as skiffd remembers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The container id (64 hex).
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// The CRI config, prost-encoded and base64'd.
    pub config: String,
    /// The image id (config digest).
    pub image_id: String,
    /// The image as the client named it.
    pub image_name: String,
    /// Lifecycle state.
    pub state: CtrState,
    /// Times, ns since the epoch (0 = not yet).
    pub created_at: i64,
    /// When it started.
    pub started_at: i64,
    /// When it exited.
    pub finished_at: i64,
    /// Exit code.
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`, …
    pub reason: String,
    /// Details for people.
    pub message: String,
    /// The log file, absolute.
    pub log_path: Option<PathBuf>,
    /// The OCI bundle (config.json, rootfs, exit.json).
    pub bundle: PathBuf,
    /// Persistent writable layer (upper + work).
    pub layer_dir: PathBuf,
    /// The cgroupsPath given to the runtime.
    pub cgroups_path: String,
    /// The init pid.
    pub pid: Option<u32>,
    /// The user it runs as.
    pub user: User,
    /// The stop signal (from the image), a number.
    pub stop_signal: i32,
    /// The name key reserved for it.
    pub name_key: String,
    /// Images mounted as image volumes (ids).
    #[serde(default)]
    pub volume_images: Vec<String>,
    /// Whether NRI plugins were told it stopped.
    #[serde(default)]
    pub nri_stopped: bool,
}

impl ContainerRecord {
    /// Move to `next` if the edge is valid; a refused edge leaves the state as it is and
    /// says so (the caller must decide what that means).
    pub fn transition(&mut self, next: CtrState) -> Result<(), Refused> {
        if self.state.can_become(next) {
            self.state = next;
            Ok(())
        } else {
            Err(Refused {
                id: self.id.clone(),
                from: self.state,
                to: next,
            })
        }
    }

    /// The rootfs mount point.
    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }
}

/// Encode a CRI message for a record.
pub fn encode<M: Message>(m: &M) -> String {
    base64::engine::general_purpose::STANDARD.encode(m.encode_to_vec())
}

/// A record field that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("the recorded CRI config is damaged: {0}")]
pub struct Damaged(String);

/// Decode a CRI message of a record.
pub fn decode<M: Message + Default>(s: &str) -> Result<M, Damaged> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| Damaged(format!("not base64: {e}")))?;
    M::decode(bytes.as_slice()).map_err(|e| Damaged(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_state_edges() {
        use CtrState::*;
        assert!(Created.can_become(Running));
        assert!(Created.can_become(Exited));
        assert!(Running.can_become(Exited));
        assert!(!Exited.can_become(Running));
        assert!(!Running.can_become(Created));
        assert!(!Running.can_become(Running));
    }

    #[test]
    fn configs_round_trip() {
        let c = api::PodSandboxConfig {
            hostname: "h".into(),
            ..Default::default()
        };
        assert_eq!(decode::<api::PodSandboxConfig>(&encode(&c)).unwrap(), c);
        let e = decode::<api::PodSandboxConfig>("!!").unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        // Valid base64, not a message.
        assert!(decode::<api::PodSandboxConfig>("/////w==").is_err());
    }
}
