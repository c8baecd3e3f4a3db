//! Running totals of the image service's work, for the metrics endpoint: how much time
//! pulls spent in each stage and how many layer bytes they moved. Plain atomics, read by
//! a scrape, written once per stage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The stages of a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Manifest (and index) and config fetched and checked.
    Resolve,
    /// Every layer fetched, verified and unpacked (wall time of all of them at once).
    Layers,
    /// Manifest, config and image record stored.
    Commit,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 3] = [Stage::Resolve, Stage::Layers, Stage::Commit];

    /// Its metric label.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Resolve => "resolve",
            Stage::Layers => "layers",
            Stage::Commit => "commit",
        }
    }
}

/// The totals.
#[derive(Debug, Default)]
pub struct Counters {
    stage_ns: [AtomicU64; 3],
    layer_bytes: AtomicU64,
    layers_fetched: AtomicU64,
    layers_present: AtomicU64,
}

/// A copy of the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Seconds spent per stage (nanoseconds), indexed like [`Stage::ALL`].
    pub stage_ns: [u64; 3],
    /// Compressed layer bytes received from registries.
    pub layer_bytes: u64,
    /// Layers fetched and unpacked.
    pub layers_fetched: u64,
    /// Layers a pull found already unpacked (shared with another image).
    pub layers_present: u64,
}

impl Counters {
    pub(crate) fn stage(&self, stage: Stage, took: Duration) {
        let i = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.stage_ns[i].fetch_add(ns, Ordering::Relaxed);
    }

    pub(crate) fn layer_bytes(&self, n: u64) {
        self.layer_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn layer_done(&self, fetched: bool) {
        let c = if fetched {
            &self.layers_fetched
        } else {
            &self.layers_present
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The totals now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            stage_ns: [0, 1, 2].map(|i| self.stage_ns[i].load(Ordering::Relaxed)),
            layer_bytes: self.layer_bytes.load(Ordering::Relaxed),
            layers_fetched: self.layers_fetched.load(Ordering::Relaxed),
            layers_present: self.layers_present.load(Ordering::Relaxed),
        }
    }
}
