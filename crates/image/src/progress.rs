//! Progress of pulls in flight, for `skiff pull`'s progress bars.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Where a layer is in its pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LayerState {
    /// Not started.
    Waiting = 0,
    /// Bytes are flowing.
    Downloading = 1,
    /// Already present; nothing to fetch.
    Present = 2,
    /// Unpacked and committed.
    Done = 3,
    /// Failed (the pull may retry it).
    Failed = 4,
}

impl LayerState {
    fn from_u8(v: u8) -> LayerState {
        match v {
            1 => LayerState::Downloading,
            2 => LayerState::Present,
            3 => LayerState::Done,
            4 => LayerState::Failed,
            _ => LayerState::Waiting,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            LayerState::Waiting => "waiting",
            LayerState::Downloading => "downloading",
            LayerState::Present => "present",
            LayerState::Done => "done",
            LayerState::Failed => "failed",
        }
    }
}

/// One layer's live counters.
#[derive(Debug)]
pub struct LayerProgress {
    /// The blob digest.
    pub digest: String,
    /// Its size.
    pub total: u64,
    done: AtomicU64,
    state: AtomicU8,
}

impl LayerProgress {
    pub(crate) fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn reset(&self) {
        self.done.store(0, Ordering::Relaxed);
    }
    pub(crate) fn set(&self, s: LayerState) {
        self.state.store(s as u8, Ordering::Relaxed);
        if matches!(s, LayerState::Done | LayerState::Present) {
            self.done.store(self.total, Ordering::Relaxed);
        }
    }
}

/// A pull in flight.
#[derive(Debug)]
pub struct PullProgress {
    /// The reference as given to PullImage.
    pub image: String,
    /// Its layers, bottom first.
    pub layers: Vec<LayerProgress>,
}

impl PullProgress {
    pub(crate) fn new(
        image: &str,
        layers: impl IntoIterator<Item = (String, u64)>,
    ) -> Arc<PullProgress> {
        Arc::new(PullProgress {
            image: image.to_string(),
            layers: layers
                .into_iter()
                .map(|(digest, total)| LayerProgress {
                    digest,
                    total,
                    done: AtomicU64::new(0),
                    state: AtomicU8::new(LayerState::Waiting as u8),
                })
                .collect(),
        })
    }

    /// A consistent-enough copy for display.
    pub fn snapshot(&self) -> PullSnapshot {
        PullSnapshot {
            image: self.image.clone(),
            layers: self
                .layers
                .iter()
                .map(|l| LayerSnapshot {
                    digest: l.digest.clone(),
                    total: l.total,
                    done: l.done.load(Ordering::Relaxed).min(l.total),
                    state: LayerState::from_u8(l.state.load(Ordering::Relaxed)),
                })
                .collect(),
        }
    }
}

/// A copy of one layer's progress.
#[derive(Debug, Clone)]
pub struct LayerSnapshot {
    /// The blob digest.
    pub digest: String,
    /// Its size.
    pub total: u64,
    /// Bytes received.
    pub done: u64,
    /// Its state.
    pub state: LayerState,
}

/// A copy of a pull's progress.
#[derive(Debug, Clone)]
pub struct PullSnapshot {
    /// The reference.
    pub image: String,
    /// Its layers.
    pub layers: Vec<LayerSnapshot>,
}
