//! The `skiff` command line: a small CRI client, crictl-style.

use std::time::Duration;

use clap::{Parser, Subcommand};
use skiff_cri::api;
use skiff_cri::client::{ClientError, CriClient};

/// skiff's CRI client.
#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "A CRI client for skiffd (and any CRI runtime)"
)]
pub struct Cli {
    /// CRI endpoint: unix:///path/to/socket or a path.
    #[arg(
        short = 'r',
        long,
        global = true,
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = "unix:///run/skiff/skiff.sock"
    )]
    pub runtime_endpoint: String,
    /// Timeout of each CRI call, in seconds.
    #[arg(short = 't', long, global = true, default_value_t = 10)]
    pub timeout: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the runtime's name and versions.
    Version,
    /// Print the runtime's status, conditions, handlers and configuration as JSON.
    Info,
}

/// A failed CLI command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The endpoint cannot be reached.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The runtime answered with an error.
    #[error("{method} failed: {code:?}: {message}")]
    Rpc {
        /// The CRI method.
        method: &'static str,
        /// The gRPC code.
        code: tonic::Code,
        /// The runtime's message.
        message: String,
    },
    /// The call did not finish within `--timeout`.
    #[error("{method} timed out after {seconds}s")]
    Timeout {
        /// The CRI method.
        method: &'static str,
        /// The timeout.
        seconds: u64,
    },
    /// The local tokio runtime cannot start.
    #[error("cannot start the client runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Run one CLI invocation.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    rt.block_on(async move {
        let timeout = Duration::from_secs(cli.timeout.max(1));
        let connect = CriClient::connect_endpoint(&cli.runtime_endpoint);
        let mut client =
            tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| CliError::Timeout {
                    method: "connect",
                    seconds: cli.timeout,
                })??;
        match cli.command {
            Command::Version => {
                let v = rpc(
                    "Version",
                    cli.timeout,
                    client.runtime.version(api::VersionRequest {
                        version: "v1".into(),
                    }),
                )
                .await?;
                println!("Version:  {}", v.version);
                println!("RuntimeName:  {}", v.runtime_name);
                println!("RuntimeVersion:  {}", v.runtime_version);
                println!("RuntimeApiVersion:  {}", v.runtime_api_version);
            }
            Command::Info => {
                let s = rpc(
                    "Status",
                    cli.timeout,
                    client.runtime.status(api::StatusRequest { verbose: true }),
                )
                .await?;
                println!("{}", render_info(&s));
            }
        }
        Ok(())
    })
}

async fn rpc<T>(
    method: &'static str,
    seconds: u64,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CliError> {
    match tokio::time::timeout(Duration::from_secs(seconds.max(1)), fut).await {
        Err(_) => Err(CliError::Timeout { method, seconds }),
        Ok(Err(status)) => Err(CliError::Rpc {
            method,
            code: status.code(),
            message: status.message().to_string(),
        }),
        Ok(Ok(resp)) => Ok(resp.into_inner()),
    }
}

/// The `info` document: status, handlers, features and the verbose info values
/// (which are JSON themselves and are embedded as such, as crictl does).
pub fn render_info(s: &api::StatusResponse) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert(
        "status".into(),
        serde_json::to_value(&s.status).unwrap_or_default(),
    );
    doc.insert(
        "runtimeHandlers".into(),
        serde_json::to_value(&s.runtime_handlers).unwrap_or_default(),
    );
    doc.insert(
        "features".into(),
        serde_json::to_value(s.features).unwrap_or_default(),
    );
    let mut keys: Vec<_> = s.info.keys().collect();
    keys.sort();
    for key in keys {
        let raw = &s.info[key];
        let value =
            serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.clone()));
        doc.insert(key.clone(), value);
    }
    serde_json::to_string_pretty(&serde_json::Value::Object(doc)).unwrap_or_default()
}
