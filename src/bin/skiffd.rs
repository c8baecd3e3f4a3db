//! skiffd: parse flags, set up logging, run the daemon.

use std::process::ExitCode;

use clap::Parser;
use skiff::daemon::{DaemonArgs, run};

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    if let Err(e) = skiff::logging::init(&args.log_level, args.log_format) {
        eprintln!("skiffd: {e}");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "skiffd failed");
            eprintln!("skiffd: {e}");
            ExitCode::FAILURE
        }
    }
}
