//! The Node Resource Interface (NRI) for skiff.
//!
//! NRI plugins ([containerd/nri](https://github.com/containerd/nri)) hook into the pod
//! and container lifecycle of a runtime: they see every event, adjust containers
//! before they are created, and update or evict running ones. This crate is both
//! sides of the protocol:
//!
//! - [`Adaptation`]: the runtime side that skiffd runs. It accepts plugins on the NRI
//!   socket and launches pre-installed ones, registers, configures and synchronizes
//!   them, delivers events in plugin index order with timeouts, collects and merges
//!   adjustments (refusing conflicts), and passes plugins' unsolicited updates and
//!   evictions to the runtime through [`Domain`].
//! - [`stub`]: a plugin's side, used by skiff's tests and benchmarks as a real plugin.
//!
//! The wire: one unix-socket connection per plugin carries two ttrpc connections
//! multiplexed ([`mux`]): the runtime calls the plugin's `Plugin` service on one and
//! serves the `Runtime` service on the other.

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}

/// The generated NRI messages and ttrpc services (`nri.pkg.api.v1alpha1`).
pub use generated::nri::pkg::api::v1alpha1 as api;
pub mod mux;

mod adaptation;
pub mod apply;
mod launch;
mod plugin;
mod result;
pub mod stub;

use std::path::PathBuf;
use std::time::Duration;

pub use adaptation::{Adaptation, CreationGuard};
pub use async_trait::async_trait;
pub use plugin::{PluginId, check_index, check_name};
pub use result::{Adjusted, owner_conflict};
pub use ttrpc;

/// The NRI version this implementation follows (the vendored `api.proto`).
pub const NRI_VERSION: &str = "v0.12.1";

/// Errors of the NRI adaptation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plugin refused the operation (its hook returned an error).
    #[error("NRI plugin {plugin} failed {event}: {message}")]
    Refused {
        /// The plugin (`NN-name`).
        plugin: String,
        /// The event.
        event: &'static str,
        /// What the plugin said.
        message: String,
    },
    /// Two plugins adjusted the same thing, or one asked for something invalid.
    #[error("NRI: {0}")]
    Adjustment(String),
    /// A plugin could not be connected, registered or configured.
    #[error("NRI plugin: {0}")]
    Plugin(String),
    /// The socket could not be set up.
    #[error("NRI socket {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// NRI lifecycle events (the `Event` enum of the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Event {
    /// RunPodSandbox.
    RunPodSandbox = 1,
    /// StopPodSandbox.
    StopPodSandbox = 2,
    /// RemovePodSandbox.
    RemovePodSandbox = 3,
    /// CreateContainer.
    CreateContainer = 4,
    /// PostCreateContainer.
    PostCreateContainer = 5,
    /// StartContainer.
    StartContainer = 6,
    /// PostStartContainer.
    PostStartContainer = 7,
    /// UpdateContainer.
    UpdateContainer = 8,
    /// PostUpdateContainer.
    PostUpdateContainer = 9,
    /// StopContainer.
    StopContainer = 10,
    /// RemoveContainer.
    RemoveContainer = 11,
    /// UpdatePodSandbox.
    UpdatePodSandbox = 12,
    /// PostUpdatePodSandbox.
    PostUpdatePodSandbox = 13,
    /// ValidateContainerAdjustment.
    ValidateContainerAdjustment = 14,
}

impl Event {
    /// Every event.
    pub const ALL: [Event; 14] = [
        Event::RunPodSandbox,
        Event::StopPodSandbox,
        Event::RemovePodSandbox,
        Event::CreateContainer,
        Event::PostCreateContainer,
        Event::StartContainer,
        Event::PostStartContainer,
        Event::UpdateContainer,
        Event::PostUpdateContainer,
        Event::StopContainer,
        Event::RemoveContainer,
        Event::UpdatePodSandbox,
        Event::PostUpdatePodSandbox,
        Event::ValidateContainerAdjustment,
    ];

    /// The event called `name` (as in the API).
    pub fn from_name(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The event's name as in the API.
    pub fn name(self) -> &'static str {
        match self {
            Event::RunPodSandbox => "RunPodSandbox",
            Event::StopPodSandbox => "StopPodSandbox",
            Event::RemovePodSandbox => "RemovePodSandbox",
            Event::CreateContainer => "CreateContainer",
            Event::PostCreateContainer => "PostCreateContainer",
            Event::StartContainer => "StartContainer",
            Event::PostStartContainer => "PostStartContainer",
            Event::UpdateContainer => "UpdateContainer",
            Event::PostUpdateContainer => "PostUpdateContainer",
            Event::StopContainer => "StopContainer",
            Event::RemoveContainer => "RemoveContainer",
            Event::UpdatePodSandbox => "UpdatePodSandbox",
            Event::PostUpdatePodSandbox => "PostUpdatePodSandbox",
            Event::ValidateContainerAdjustment => "ValidateContainerAdjustment",
        }
    }
}

/// The events a plugin subscribed to: bit `e - 1` for event `e`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventMask(pub u32);

/// Every event (bits 0..14).
const ALL_EVENTS: u32 = (1 << 14) - 1;

impl EventMask {
    /// Whether `e` is in the mask.
    pub fn is_set(self, e: Event) -> bool {
        self.0 & (1 << (e as i32 - 1)) != 0
    }

    /// A mask with every event.
    pub fn all() -> EventMask {
        EventMask(ALL_EVENTS)
    }

    /// A mask of the given events.
    pub fn of(events: &[Event]) -> EventMask {
        EventMask(events.iter().fold(0, |m, e| m | 1 << (*e as i32 - 1)))
    }

    /// The mask of a `ConfigureResponse`: 0 subscribes to every event; unknown bits
    /// are refused.
    pub fn from_reply(events: i32) -> Result<EventMask, String> {
        let m = events.cast_unsigned();
        if m == 0 {
            return Ok(EventMask::all());
        }
        if m & !ALL_EVENTS != 0 {
            return Err(format!(
                "the plugin subscribed to unknown events (mask {events:#x})"
            ));
        }
        Ok(EventMask(m))
    }
}

/// What the adaptation needs from the runtime.
#[async_trait::async_trait]
pub trait Domain: Send + Sync {
    /// Every pod and container the runtime has (that is not being created), for
    /// synchronizing a plugin.
    async fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>);
    /// Apply container updates requested by plugin `plugin`; return those that failed.
    async fn update_containers(
        &self,
        plugin: &str,
        updates: Vec<api::ContainerUpdate>,
    ) -> Vec<api::ContainerUpdate>;
    /// Stop a container a plugin asked to evict.
    async fn evict_container(&self, id: &str, reason: &str) -> Result<(), String>;
}

/// One event delivered to one plugin, as reported to [`Config::observer`].
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The plugin, `NN-name`.
    pub plugin: &'a str,
    /// The event.
    pub event: Event,
    /// From sending the request to its answer (or the failure).
    pub took: std::time::Duration,
    /// `ok`, `refused` (the plugin answered an error), `failed` (timed out,
    /// disconnected, garbage: the plugin is dropped) or `unimplemented`.
    pub result: &'static str,
}

/// Told of every event delivery (for metrics); called on the delivering task, so it
/// must be quick.
pub type Observer = std::sync::Arc<dyn Fn(&Call<'_>) + Send + Sync>;

/// Settings of the adaptation (skiffd's `[nri]` table).
#[derive(Clone)]
pub struct Config {
    /// The socket external plugins connect to; `None` with `disable_connections`.
    pub socket_path: Option<PathBuf>,
    /// Pre-installed plugins (`NN-name` executables) to launch.
    pub plugin_path: PathBuf,
    /// Configuration files of pre-installed plugins.
    pub plugin_config_path: PathBuf,
    /// How long a plugin has to register (and to answer Configure and Synchronize).
    pub registration_timeout: Duration,
    /// How long a plugin has to answer an event.
    pub request_timeout: Duration,
    /// The runtime's name and version, told to plugins.
    pub runtime_name: String,
    /// See `runtime_name`.
    pub runtime_version: String,
    /// Told of every event delivery, when set.
    pub observer: Option<Observer>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("socket_path", &self.socket_path)
            .field("plugin_path", &self.plugin_path)
            .field("plugin_config_path", &self.plugin_config_path)
            .field("registration_timeout", &self.registration_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("runtime_name", &self.runtime_name)
            .field("runtime_version", &self.runtime_version)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}
