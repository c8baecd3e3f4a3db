//! skiff: a small CRI client for people and tests.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = skiff::cli::Cli::parse();
    match skiff::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::FAILURE
        }
    }
}
