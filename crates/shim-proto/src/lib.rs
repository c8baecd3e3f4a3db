//! What skiffd and `skiff-shim` share, and nothing else: the request/answer protocol
//! over the shim's control socket ([`protocol`]), the options the shim is started with
//! ([`options`]), and the clock both stamp events with ([`clock`]).
//!
//! skiffd links this crate, never the shim's server: the shim forks and must stay a
//! single-threaded process of its own.

pub mod clock;
pub mod options;
pub mod protocol;
