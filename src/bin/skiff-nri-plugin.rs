//! `skiff-nri-plugin`: a real NRI plugin for testing and benchmarking NRI runtimes
//! (skiff's, or containerd's). It records every event and does what its configuration
//! says (JSON, see `skiff_nri::stub::RecorderConfig`): log events to a file, add
//! annotations and environment variables to containers, refuse events.
//!
//! Launched by a runtime from its plugin directory (as `NN-name`), it takes the
//! connection and identity the runtime gives it. Started by hand:
//!
//! ```text
//! skiff-nri-plugin --socket /var/run/nri/nri.sock [--idx 50] [--name skiff-test] [--config JSON]
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use skiff_nri::stub::{Connection, Recorder};
use skiff_nri::{EventMask, PluginId};

const USAGE: &str =
    "usage: skiff-nri-plugin [--socket PATH] [--idx NN] [--name NAME] [--config JSON]";

struct Args {
    socket: Option<std::path::PathBuf>,
    id: PluginId,
    config: Option<String>,
}

fn parse() -> Option<Args> {
    let mut out = Args {
        socket: None,
        id: PluginId {
            idx: "50".into(),
            name: "skiff-test".into(),
        },
        config: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next()?;
        match a.as_str() {
            "--socket" => out.socket = Some(value.into()),
            "--idx" => out.id.idx = value,
            "--name" => out.id.name = value,
            "--config" => out.config = Some(value),
            _ => return None,
        }
    }
    Some(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(args) = parse() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let plugin = Recorder::new(EventMask::all());
    if let Some(c) = &args.config
        && let Err(e) = plugin.configure_from(c)
    {
        eprintln!("skiff-nri-plugin: {e}");
        return ExitCode::from(2);
    }
    let launched = match Connection::from_env() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skiff-nri-plugin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let conn = match (launched, args.socket) {
        (Some((stream, launched_as)), _) => {
            Connection::register(stream, &launched_as, plugin).await
        }
        (None, Some(path)) => Connection::dial(&path, &args.id, plugin as Arc<_>).await,
        (None, None) => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match conn {
        Ok(c) => {
            tokio::select! {
                _ = c.closed() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("skiff-nri-plugin: {e}");
            ExitCode::FAILURE
        }
    }
}
