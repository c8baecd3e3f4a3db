//! skiff-shim: the per-pod shim.
//!
//! The shim's event loop, container stdio and exit handling arrive with the pod
//! and container work; until then this binary only identifies itself, so that
//! skiffd can find and check the shim that sits next to its own executable.

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") | Some("-V") => {
            println!("skiff-shim {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "skiff-shim {}: pods are not supported yet; this binary only answers --version",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::from(2)
        }
    }
}
