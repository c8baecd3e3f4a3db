//! skiffd: the daemon that composes skiff's crates, and the `skiff` CLI.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod info;
pub mod logging;
pub mod meta;
