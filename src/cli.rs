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
    /// Timeout of each CRI call, in seconds (before the subcommand: `-t` after it is
    /// exec's and attach's tty flag, as in crictl).
    #[arg(short = 't', long, default_value_t = 10)]
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
    /// Pull an image (asks the registry even if the image is present).
    Pull {
        /// The image reference, e.g. `busybox` or `registry:5000/app:v1`.
        image: String,
        /// Registry credentials as `USER:PASSWORD`.
        #[arg(long)]
        creds: Option<String>,
        /// A registry bearer token.
        #[arg(long)]
        auth_token: Option<String>,
    },
    /// List images.
    Images {
        /// Only this image (reference or id).
        image: Option<String>,
        /// Print only image ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print an image's status as JSON (verbose, with its config).
    Inspecti {
        /// The image reference or id.
        image: String,
    },
    /// Remove images (by reference or id); all their tags go with them.
    Rmi {
        /// Images to remove.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Print the image filesystem usage as JSON.
    Imagefsinfo,
    /// Image operations beyond CRI.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Pod and container commands.
    #[command(flatten)]
    Pod(crate::cli_pods::PodCommand),
}

/// `skiff image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout tar or a `docker save` tar (read by skiffd on this node).
    Import {
        /// The archive.
        file: std::path::PathBuf,
        /// The name to record the image under (needed when the archive names none).
        #[arg(long)]
        name: Option<String>,
    },
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
    /// The named object does not exist.
    #[error("{0:?} not found")]
    NotFound(String),
    /// A config file or log could not be used.
    #[error("{0}")]
    Config(String),
    /// An exec'd command exited non-zero (its code becomes the CLI's).
    #[error("command exited with code {0}")]
    ExitCode(i32),
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
            Command::Pull {
                image,
                creds,
                auth_token,
            } => {
                let auth = match (creds, auth_token) {
                    (Some(c), _) => {
                        let (u, p) = c.split_once(':').unwrap_or((c.as_str(), ""));
                        Some(api::AuthConfig {
                            username: u.into(),
                            password: p.into(),
                            ..Default::default()
                        })
                    }
                    (None, Some(t)) => Some(api::AuthConfig {
                        registry_token: t,
                        ..Default::default()
                    }),
                    (None, None) => None,
                };
                let image_ref =
                    crate::progress::pull_with_progress(&mut client, &image, auth).await?;
                println!("Image is up to date for {image_ref}");
            }
            Command::Images { image, quiet } => {
                let r = rpc(
                    "ListImages",
                    cli.timeout,
                    client.images.list_images(api::ListImagesRequest {
                        filter: image.map(|i| api::ImageFilter {
                            image: Some(image_spec(&i)),
                        }),
                    }),
                )
                .await?;
                print_images(&r.images, quiet);
            }
            Command::Inspecti { image } => {
                let r = rpc(
                    "ImageStatus",
                    cli.timeout,
                    client.images.image_status(api::ImageStatusRequest {
                        image: Some(image_spec(&image)),
                        verbose: true,
                    }),
                )
                .await?;
                let Some(img) = &r.image else {
                    return Err(CliError::NotFound(image));
                };
                let mut doc = serde_json::Map::new();
                doc.insert(
                    "status".into(),
                    serde_json::to_value(img).unwrap_or_default(),
                );
                for (k, v) in &r.info {
                    let value = serde_json::from_str(v)
                        .unwrap_or_else(|_| serde_json::Value::String(v.clone()));
                    doc.insert(k.clone(), value);
                }
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            Command::Rmi { images } => {
                for image in images {
                    rpc(
                        "RemoveImage",
                        cli.timeout,
                        client.images.remove_image(api::RemoveImageRequest {
                            image: Some(image_spec(&image)),
                        }),
                    )
                    .await?;
                    println!("Deleted: {image}");
                }
            }
            Command::Image(ImageCommand::Import { file, name }) => {
                let path = std::path::absolute(&file).map_err(CliError::Runtime)?;
                let mut admin =
                    crate::admin::api::admin_client::AdminClient::new(client.channel.clone());
                let r = rpc(
                    "ImportImage",
                    86_400,
                    admin.import_image(crate::admin::api::ImportImageRequest {
                        path: path.display().to_string(),
                        name: name.unwrap_or_default(),
                    }),
                )
                .await?;
                for i in r.images {
                    println!("imported {} {}", i.id, i.repo_tags.join(" "));
                }
            }
            Command::Pod(cmd) => {
                crate::cli_pods::run(&mut client, cli.timeout, cmd).await?;
            }
            Command::Imagefsinfo => {
                let r = rpc(
                    "ImageFsInfo",
                    cli.timeout,
                    client.images.image_fs_info(api::ImageFsInfoRequest {}),
                )
                .await?;
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            }
        }
        Ok(())
    })
}

pub(crate) async fn rpc<T>(
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

fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}{}", UNITS[unit])
    }
}

/// Print images as crictl does: IMAGE, TAG, IMAGE ID (13 characters), SIZE.
fn print_images(images: &[api::Image], quiet: bool) {
    if quiet {
        for i in images {
            println!("{}", i.id);
        }
        return;
    }
    println!("{:<48} {:<16} {:<15} SIZE", "IMAGE", "TAG", "IMAGE ID");
    for i in images {
        let short =
            i.id.trim_start_matches("sha256:")
                .chars()
                .take(13)
                .collect::<String>();
        let mut rows: Vec<(String, String)> = i
            .repo_tags
            .iter()
            .filter_map(|t| {
                t.rsplit_once(':')
                    .map(|(r, t)| (r.to_string(), t.to_string()))
            })
            .collect();
        if rows.is_empty() {
            let repo = i
                .repo_digests
                .first()
                .and_then(|d| d.split_once('@'))
                .map(|(r, _)| r.to_string())
                .unwrap_or_else(|| "<none>".into());
            rows.push((repo, "<none>".into()));
        }
        for (repo, tag) in rows {
            println!("{repo:<48} {tag:<16} {short:<15} {}", human_size(i.size));
        }
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
