//! skiffd: the daemon that composes skiff's crates, and the `skiff` CLI.

pub mod admin;
pub mod blocking;
pub mod cgroups;
pub mod cli;
pub mod cli_pods;
pub mod cli_stream;
pub mod config;
pub mod crictl_config;
pub mod daemon;
pub mod error;
pub mod images;
pub mod info;
pub mod logging;
pub mod metrics;
pub mod pods;
pub mod progress;
pub mod spec;
pub mod stream;
pub mod sys;

/// The metadata store (crates/meta).
pub use skiff_meta as meta;
