//! skiff-shim: the per-pod shim.
//!
//! One shim runs per pod. It is the subreaper and direct parent of every container
//! process of its pod, drives the OCI runtime (runc or crun), owns the containers'
//! stdio, writes CRI-format logs, records exits to disk and runs ExecSync processes.
//! skiffd talks to it over a unix socket, one JSON request and one JSON reply per
//! connection (`skiff_shim_proto::protocol`). The shim is single-threaded and has no async runtime.

pub mod logfmt;
pub mod native;
pub mod server;
mod sys;

pub use sys::cloexec_inherited;
