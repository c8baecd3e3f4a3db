//! `skiff` subcommands for pods and containers, crictl-style: runp, stopp, rmp, pods,
//! inspectp, create, start, stop, rm, ps, inspect, logs, exec, stats.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use skiff_cri::api;
use skiff_cri::client::CriClient;

use crate::cli::{CliError, rpc};

/// Pod and container subcommands.
#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Run a pod sandbox from a crictl-format JSON/YAML config; prints its id.
    Runp {
        /// The pod sandbox config file.
        config: PathBuf,
        /// The RuntimeClass handler.
        #[arg(long, default_value = "")]
        runtime: String,
    },
    /// Stop pod sandboxes.
    Stopp {
        /// Pod ids (or unique prefixes).
        ids: Vec<String>,
    },
    /// Remove pod sandboxes (stopping them first).
    Rmp {
        /// Pod ids (or unique prefixes).
        ids: Vec<String>,
        /// Remove every pod.
        #[arg(short, long)]
        all: bool,
        /// Accepted for crictl compatibility (pods are always stopped first).
        #[arg(short, long)]
        force: bool,
    },
    /// List pod sandboxes.
    Pods {
        /// Print only ids.
        #[arg(short, long)]
        quiet: bool,
        /// Only pods with this id prefix.
        #[arg(long)]
        id: Option<String>,
    },
    /// Print a pod sandbox's status as JSON (verbose).
    Inspectp {
        /// The pod id.
        id: String,
    },
    /// Create a container in a pod; prints its id.
    Create {
        /// The pod id.
        pod: String,
        /// The container config file.
        container_config: PathBuf,
        /// The pod sandbox config file.
        pod_config: PathBuf,
    },
    /// Start created containers.
    Start {
        /// Container ids.
        ids: Vec<String>,
    },
    /// Stop running containers.
    Stop {
        /// Container ids.
        ids: Vec<String>,
        /// Seconds to wait after the stop signal before SIGKILL.
        #[arg(long, default_value_t = 10)]
        stop_timeout: i64,
    },
    /// Remove containers (stopping them first).
    Rm {
        /// Container ids.
        ids: Vec<String>,
        /// Remove every container.
        #[arg(short, long)]
        all: bool,
        /// Accepted for crictl compatibility (containers are always stopped first).
        #[arg(short, long)]
        force: bool,
    },
    /// List containers (running ones, or all with -a).
    Ps {
        /// Show all containers, not only running ones.
        #[arg(short, long)]
        all: bool,
        /// Print only ids.
        #[arg(short, long)]
        quiet: bool,
        /// Only containers of this pod.
        #[arg(short, long)]
        pod: Option<String>,
    },
    /// Print a container's status as JSON (verbose).
    Inspect {
        /// The container id.
        id: String,
    },
    /// Print a container's log (from the file its status names).
    Logs {
        /// The container id.
        id: String,
    },
    /// Run a command in a running container: ExecSync, or with -i/-t a streaming exec.
    Exec {
        /// Kill the command after this many seconds (0 = no limit; ExecSync only).
        #[arg(long, default_value_t = 0)]
        exec_timeout: i64,
        /// Send this terminal's stdin to the command (streaming exec).
        #[arg(short, long)]
        interactive: bool,
        /// Give the command a terminal (streaming exec).
        #[arg(short, long)]
        tty: bool,
        /// The container id.
        id: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        cmd: Vec<String>,
    },
    /// Attach to a running container's stdio.
    Attach {
        /// Send this terminal's stdin to the container.
        #[arg(short = 'i', long = "stdin")]
        stdin: bool,
        /// The container has a terminal.
        #[arg(short, long)]
        tty: bool,
        /// The container id.
        id: String,
    },
    /// Forward local ports to ports in a pod: `[LOCAL:]REMOTE`.
    PortForward {
        /// The pod id.
        pod: String,
        /// Port pairs, `LOCAL:REMOTE` or `REMOTE` (same local port).
        #[arg(required = true)]
        ports: Vec<String>,
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
    },
    /// Print container resource usage as JSON.
    Stats {
        /// Only this container.
        id: Option<String>,
    },
}

fn load<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, CliError> {
    crate::crictl_config::load(path).map_err(|e| CliError::Config(e.to_string()))
}

fn pretty(status: &impl serde::Serialize, info: &HashMap<String, String>) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert(
        "status".into(),
        serde_json::to_value(status).unwrap_or_default(),
    );
    for (k, v) in info {
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.clone()));
        doc.insert(k.clone(), value);
    }
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Turn CRI log lines into the container's output: partial entries are joined.
pub fn decode_cri_log(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(_ts), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        out.push_str(parts.next().unwrap_or(""));
        if tag == "F" {
            out.push('\n');
        }
    }
    out
}

/// Run one pod/container subcommand.
pub async fn run(client: &mut CriClient, t: u64, cmd: PodCommand) -> Result<(), CliError> {
    let rt = &mut client.runtime;
    match cmd {
        PodCommand::Runp { config, runtime } => {
            let config: api::PodSandboxConfig = load(&config)?;
            let r = rpc(
                "RunPodSandbox",
                t,
                rt.run_pod_sandbox(api::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: runtime,
                }),
            )
            .await?;
            println!("{}", r.pod_sandbox_id);
        }
        PodCommand::Stopp { ids } => {
            for id in ids {
                rpc(
                    "StopPodSandbox",
                    t,
                    rt.stop_pod_sandbox(api::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    }),
                )
                .await?;
                println!("Stopped sandbox {id}");
            }
        }
        PodCommand::Rmp {
            mut ids,
            all,
            force: _,
        } => {
            if all {
                let r = rpc(
                    "ListPodSandbox",
                    t,
                    rt.list_pod_sandbox(api::ListPodSandboxRequest { filter: None }),
                )
                .await?;
                ids.extend(r.items.into_iter().map(|p| p.id));
            }
            for id in ids {
                rpc(
                    "RemovePodSandbox",
                    t,
                    rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    }),
                )
                .await?;
                println!("Removed sandbox {id}");
            }
        }
        PodCommand::Pods { quiet, id } => {
            let r = rpc(
                "ListPodSandbox",
                t,
                rt.list_pod_sandbox(api::ListPodSandboxRequest {
                    filter: id.map(|id| api::PodSandboxFilter {
                        id,
                        ..Default::default()
                    }),
                }),
            )
            .await?;
            let mut out = std::io::stdout().lock();
            if !quiet {
                let _ = writeln!(
                    out,
                    "{:<13} {:<10} {:<30} {:<20} ATTEMPT",
                    "POD ID", "STATE", "NAME", "NAMESPACE"
                );
            }
            for p in r.items {
                if quiet {
                    let _ = writeln!(out, "{}", p.id);
                    continue;
                }
                let m = p.metadata.unwrap_or_default();
                let state = if p.state == api::PodSandboxState::SandboxReady as i32 {
                    "Ready"
                } else {
                    "NotReady"
                };
                let _ = writeln!(
                    out,
                    "{:<13} {:<10} {:<30} {:<20} {}",
                    &p.id[..p.id.len().min(13)],
                    state,
                    m.name,
                    m.namespace,
                    m.attempt
                );
            }
        }
        PodCommand::Inspectp { id } => {
            let r = rpc(
                "PodSandboxStatus",
                t,
                rt.pod_sandbox_status(api::PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: true,
                }),
            )
            .await?;
            println!("{}", pretty(&r.status, &r.info));
        }
        PodCommand::Create {
            pod,
            container_config,
            pod_config,
        } => {
            let config: api::ContainerConfig = load(&container_config)?;
            let sandbox_config: api::PodSandboxConfig = load(&pod_config)?;
            let r = rpc(
                "CreateContainer",
                t,
                rt.create_container(api::CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(config),
                    sandbox_config: Some(sandbox_config),
                }),
            )
            .await?;
            println!("{}", r.container_id);
        }
        PodCommand::Start { ids } => {
            for id in ids {
                rpc(
                    "StartContainer",
                    t,
                    rt.start_container(api::StartContainerRequest {
                        container_id: id.clone(),
                    }),
                )
                .await?;
                println!("{id}");
            }
        }
        PodCommand::Stop {
            ids,
            stop_timeout: timeout,
        } => {
            for id in ids {
                let secs = t + u64::try_from(timeout).unwrap_or(0);
                rpc(
                    "StopContainer",
                    secs,
                    rt.stop_container(api::StopContainerRequest {
                        container_id: id.clone(),
                        timeout,
                    }),
                )
                .await?;
                println!("{id}");
            }
        }
        PodCommand::Rm {
            mut ids,
            all,
            force: _,
        } => {
            if all {
                let r = rpc(
                    "ListContainers",
                    t,
                    rt.list_containers(api::ListContainersRequest { filter: None }),
                )
                .await?;
                ids.extend(r.containers.into_iter().map(|c| c.id));
            }
            for id in ids {
                rpc(
                    "RemoveContainer",
                    t,
                    rt.remove_container(api::RemoveContainerRequest {
                        container_id: id.clone(),
                    }),
                )
                .await?;
                println!("{id}");
            }
        }
        PodCommand::Ps { all, quiet, pod } => {
            let filter = api::ContainerFilter {
                pod_sandbox_id: pod.unwrap_or_default(),
                state: (!all).then_some(api::ContainerStateValue {
                    state: api::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            };
            let r = rpc(
                "ListContainers",
                t,
                rt.list_containers(api::ListContainersRequest {
                    filter: Some(filter),
                }),
            )
            .await?;
            let mut out = std::io::stdout().lock();
            if !quiet {
                let _ = writeln!(
                    out,
                    "{:<13} {:<30} {:<17} {:<20} {:<13}",
                    "CONTAINER", "IMAGE", "STATE", "NAME", "POD ID"
                );
            }
            for c in r.containers {
                if quiet {
                    let _ = writeln!(out, "{}", c.id);
                    continue;
                }
                let state = api::ContainerState::try_from(c.state)
                    .map(|s| s.as_str_name())
                    .unwrap_or("?");
                let name = c.metadata.map(|m| m.name).unwrap_or_default();
                let image = c.image.map(|i| i.image).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{:<13} {:<30} {:<17} {:<20} {:<13}",
                    &c.id[..c.id.len().min(13)],
                    image,
                    state,
                    name,
                    &c.pod_sandbox_id[..c.pod_sandbox_id.len().min(13)]
                );
            }
        }
        PodCommand::Inspect { id } => {
            let r = rpc(
                "ContainerStatus",
                t,
                rt.container_status(api::ContainerStatusRequest {
                    container_id: id,
                    verbose: true,
                }),
            )
            .await?;
            println!("{}", pretty(&r.status, &r.info));
        }
        PodCommand::Logs { id } => {
            let r = rpc(
                "ContainerStatus",
                t,
                rt.container_status(api::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                }),
            )
            .await?;
            let path = r.status.map(|s| s.log_path).unwrap_or_default();
            if path.is_empty() {
                return Err(CliError::Config(format!("container {id} has no log path")));
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| CliError::Config(format!("read {path}: {e}")))?;
            print!("{}", decode_cri_log(&text));
        }
        PodCommand::Exec {
            interactive,
            tty,
            id,
            cmd,
            ..
        } if interactive || tty => {
            let r = rpc(
                "Exec",
                t,
                rt.exec(api::ExecRequest {
                    container_id: id,
                    cmd,
                    tty,
                    stdin: interactive,
                    stdout: true,
                    stderr: !tty,
                }),
            )
            .await?;
            crate::cli_stream::session(&r.url, interactive, tty).await?;
        }
        PodCommand::Attach { stdin, tty, id } => {
            let r = rpc(
                "Attach",
                t,
                rt.attach(api::AttachRequest {
                    container_id: id,
                    stdin,
                    tty,
                    stdout: true,
                    stderr: !tty,
                }),
            )
            .await?;
            crate::cli_stream::session(&r.url, stdin, tty).await?;
        }
        PodCommand::PortForward {
            pod,
            ports,
            address,
        } => {
            let pairs = crate::cli_stream::port_pairs(&ports)?;
            let r = rpc(
                "PortForward",
                t,
                rt.port_forward(api::PortForwardRequest {
                    pod_sandbox_id: pod,
                    port: pairs.iter().map(|p| i32::from(p.1)).collect(),
                }),
            )
            .await?;
            crate::cli_stream::port_forward(&r.url, address, &pairs).await?;
        }
        PodCommand::Exec {
            exec_timeout: timeout,
            id,
            cmd,
            ..
        } => {
            let secs = if timeout > 0 {
                u64::try_from(timeout).unwrap_or(0) + t
            } else {
                86_400
            };
            let r = rpc(
                "ExecSync",
                secs,
                rt.exec_sync(api::ExecSyncRequest {
                    container_id: id,
                    cmd,
                    timeout,
                }),
            )
            .await?;
            let _ = std::io::stdout().write_all(&r.stdout);
            let _ = std::io::stderr().write_all(&r.stderr);
            if r.exit_code != 0 {
                return Err(CliError::ExitCode(r.exit_code));
            }
        }
        PodCommand::Stats { id } => {
            let r = rpc(
                "ListContainerStats",
                t,
                rt.list_container_stats(api::ListContainerStatsRequest {
                    filter: Some(api::ContainerStatsFilter {
                        id: id.unwrap_or_default(),
                        ..Default::default()
                    }),
                }),
            )
            .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&r.stats).unwrap_or_default()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_decode_to_output() {
        let log = "2026-01-01T00:00:00.000000000Z stdout P abc\n\
                   2026-01-01T00:00:00.000000000Z stdout F def\n\
                   2026-01-01T00:00:00.000000000Z stderr F err line\n\
                   garbage\n";
        assert_eq!(decode_cri_log(log), "abcdef\nerr line\n");
    }
}
