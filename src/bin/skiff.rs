//! skiff: a small CRI client for people and tests.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = skiff::cli::Cli::parse();
    match skiff::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(skiff::cli::CliError::ExitCode(code)) => {
            ExitCode::from(u8::try_from(code.clamp(1, 255)).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::FAILURE
        }
    }
}
