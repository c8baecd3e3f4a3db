//! Container lifecycle events for `GetContainerEvents`.

use skiff_cri::api;
use tokio::sync::broadcast;

/// A fan-out of container events; slow subscribers lose the oldest events.
pub struct Events {
    tx: broadcast::Sender<api::ContainerEventResponse>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// A channel keeping up to 1024 events per subscriber.
    pub fn new() -> Events {
        let (tx, _) = broadcast::channel(1024);
        Events { tx }
    }

    /// Publish an event (nobody listening is fine).
    pub fn publish(&self, event: api::ContainerEventResponse) {
        let _ = self.tx.send(event);
    }

    /// Subscribe to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<api::ContainerEventResponse> {
        self.tx.subscribe()
    }
}
