//! skiffd: parse flags, set up logging, run the daemon.

use std::process::ExitCode;

use clap::Parser;
use skiff::daemon::{ConfigCommand, DaemonArgs, DaemonCommand, run};

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    if let Some(DaemonCommand::Config { what }) = &args.command {
        return match what {
            ConfigCommand::Default => {
                print!("{}", skiff::config::default_file());
                ExitCode::SUCCESS
            }
            ConfigCommand::Check => {
                match skiff::config::Config::load(args.config.as_deref(), &args.overrides()) {
                    Ok(c) => {
                        println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("skiffd: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        };
    }
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
