//! A blocking face on the project's async CRI client: the harness is a
//! sequential program, and each call is timed around exactly one RPC.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use skiff_cri::api::runtime_service_client::RuntimeServiceClient;
use skiff_cri::api::{
    ContainerConfig, ContainerStatus, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxStatusRequest, PullImageRequest,
    RemoveImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StatusRequest, StatusResponse, StopPodSandboxRequest, VersionRequest, VersionResponse,
};
use skiff_cri::client::CriClient;
use tokio::runtime::Runtime;
use tonic::transport::Channel;

/// Longest a single RPC may take before the harness gives up on it.
const RPC_LIMIT: Duration = Duration::from_secs(600);

/// One CRI connection plus the runtime that drives it.
pub struct Cri {
    rt: Runtime,
    client: CriClient,
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cri").finish_non_exhaustive()
    }
}

/// A failed RPC, rendered for the report.
pub type RpcError = String;

impl Cri {
    /// Connects to the unix socket at `socket` and checks it answers `Version`.
    pub fn connect(socket: &Path) -> anyhow::Result<(Cri, VersionResponse)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the tokio runtime")?;
        let client = rt
            .block_on(CriClient::connect(socket))
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let mut cri = Cri { rt, client };
        let version = cri
            .version()
            .map_err(|e| anyhow::anyhow!("Version on {}: {e}", socket.display()))?;
        Ok((cri, version))
    }

    /// `RuntimeService.Version`.
    pub fn version(&mut self) -> Result<VersionResponse, RpcError> {
        let mut rt = self.client.runtime.clone();
        self.call(async move { rt.version(VersionRequest::default()).await })
    }

    /// `ImageService.PullImage`; returns the image ref and the call's latency.
    pub fn pull(&mut self, image: &str) -> Result<(String, Duration), RpcError> {
        let mut images = self.client.images.clone();
        let req = PullImageRequest {
            image: Some(spec(image)),
            auth: None,
            sandbox_config: None,
        };
        let start = Instant::now();
        let resp = self.call(async move { images.pull_image(req).await })?;
        Ok((resp.image_ref, start.elapsed()))
    }

    /// `ImageService.RemoveImage`; returns the call's latency.
    pub fn remove(&mut self, image: &str) -> Result<Duration, RpcError> {
        let mut images = self.client.images.clone();
        let req = RemoveImageRequest {
            image: Some(spec(image)),
        };
        let start = Instant::now();
        self.call(async move { images.remove_image(req).await })?;
        Ok(start.elapsed())
    }

    /// `RuntimeService.Status`.
    pub fn status(&mut self) -> Result<StatusResponse, RpcError> {
        let mut rt = self.client.runtime.clone();
        self.call(async move { rt.status(StatusRequest { verbose: false }).await })
    }

    /// RunPodSandbox → CreateContainer → StartContainer of one pod, each step timed.
    pub fn start_pod(&mut self, spec: &PodSpec) -> Result<StartedPod, FailedStart> {
        let rt = self.client.runtime.clone();
        let spec = spec.clone();
        self.rt.block_on(start_pod(rt, spec))
    }

    /// Starts every pod of `specs` at once over this one connection (as the
    /// kubelet multiplexes its calls); returns each pod's outcome and the wall
    /// time until the last one was running.
    pub fn start_pods_concurrently(
        &mut self,
        specs: &[PodSpec],
    ) -> (Vec<Result<StartedPod, FailedStart>>, Duration) {
        let rt = self.client.runtime.clone();
        let specs = specs.to_vec();
        self.rt.block_on(async move {
            let begin = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for (i, spec) in specs.into_iter().enumerate() {
                let rt = rt.clone();
                set.spawn(async move { (i, start_pod(rt, spec).await) });
            }
            let mut out: Vec<Option<Result<StartedPod, FailedStart>>> =
                (0..set.len()).map(|_| None).collect();
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((i, r)) => out[i] = Some(r),
                    Err(e) => {
                        // A panicked task: record it against the first empty slot.
                        if let Some(slot) = out.iter_mut().find(|s| s.is_none()) {
                            *slot = Some(Err(FailedStart {
                                pod_id: None,
                                step: "task",
                                error: e.to_string(),
                            }));
                        }
                    }
                }
            }
            let wall = begin.elapsed();
            let out = out
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(FailedStart {
                            pod_id: None,
                            step: "task",
                            error: "lost".into(),
                        })
                    })
                })
                .collect();
            (out, wall)
        })
    }

    /// `StopPodSandbox`; returns the call's latency.
    pub fn stop_pod(&mut self, pod_id: &str) -> Result<Duration, RpcError> {
        let rt = self.client.runtime.clone();
        self.rt.block_on(stop_pod(rt, pod_id.to_owned()))
    }

    /// `RemovePodSandbox`; returns the call's latency.
    pub fn remove_pod(&mut self, pod_id: &str) -> Result<Duration, RpcError> {
        let rt = self.client.runtime.clone();
        self.rt.block_on(remove_pod(rt, pod_id.to_owned()))
    }

    /// StopPodSandbox then RemovePodSandbox of every pod in `pod_ids`, all at
    /// once; returns each pod's first error, if any, and the wall time.
    pub fn stop_remove_concurrently(
        &mut self,
        pod_ids: &[String],
    ) -> (Vec<Result<(), RpcError>>, Duration) {
        let rt = self.client.runtime.clone();
        let ids = pod_ids.to_vec();
        self.rt.block_on(async move {
            let begin = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for id in ids {
                let rt = rt.clone();
                set.spawn(async move {
                    stop_pod(rt.clone(), id.clone()).await?;
                    remove_pod(rt, id).await.map(|_| ())
                });
            }
            let mut out = Vec::new();
            while let Some(joined) = set.join_next().await {
                out.push(joined.unwrap_or_else(|e| Err(e.to_string())));
            }
            (out, begin.elapsed())
        })
    }

    /// The IDs of every pod sandbox the daemon knows.
    pub fn list_pods(&mut self) -> Result<Vec<String>, RpcError> {
        let mut rt = self.client.runtime.clone();
        let resp = self.call(async move {
            rt.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })?;
        Ok(resp.items.into_iter().map(|p| p.id).collect())
    }

    /// The pod's IP from `PodSandboxStatus` (empty without pod networking).
    pub fn pod_ip(&mut self, pod_id: &str) -> Result<String, RpcError> {
        let mut rt = self.client.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_owned(),
            verbose: false,
        };
        let resp = self.call(async move { rt.pod_sandbox_status(req).await })?;
        Ok(resp
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    /// The `pid` field of the verbose `PodSandboxStatus` info: the sandbox's
    /// pause process (containerd's and skiff's both name it so).
    pub fn pod_pid(&mut self, pod_id: &str) -> Result<Option<u32>, RpcError> {
        let mut rt = self.client.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_owned(),
            verbose: true,
        };
        let resp = self.call(async move { rt.pod_sandbox_status(req).await })?;
        Ok(info_pid(&resp.info))
    }

    /// The `pid` field of the verbose `ContainerStatus` info.
    pub fn container_pid(&mut self, container_id: &str) -> Result<Option<u32>, RpcError> {
        let mut rt = self.client.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: container_id.to_owned(),
            verbose: true,
        };
        let resp = self.call(async move { rt.container_status(req).await })?;
        Ok(info_pid(&resp.info))
    }

    /// RunPodSandbox then CreateContainer, the container not started: the pod
    /// and container ids (for scenarios that time StartContainer on its own).
    pub fn create_pod(&mut self, spec: &PodSpec) -> Result<(String, String), FailedStart> {
        let mut rt = self.client.runtime.clone();
        let spec = spec.clone();
        self.rt.block_on(async move {
            let req = RunPodSandboxRequest {
                config: Some(spec.sandbox.clone()),
                runtime_handler: String::new(),
            };
            let pod_id = rpc(rt.run_pod_sandbox(req))
                .await
                .map_err(|error| FailedStart {
                    pod_id: None,
                    step: "RunPodSandbox",
                    error,
                })?
                .pod_sandbox_id;
            let req = CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(spec.container),
                sandbox_config: Some(spec.sandbox),
            };
            let container_id = rpc(rt.create_container(req))
                .await
                .map_err(|error| FailedStart {
                    pod_id: Some(pod_id.clone()),
                    step: "CreateContainer",
                    error,
                })?
                .container_id;
            Ok((pod_id, container_id))
        })
    }

    /// `StartContainer`; returns the call's latency.
    pub fn start_container(&mut self, container_id: &str) -> Result<Duration, RpcError> {
        let mut rt = self.client.runtime.clone();
        let req = StartContainerRequest {
            container_id: container_id.to_owned(),
        };
        let t = Instant::now();
        self.call(async move { rt.start_container(req).await })?;
        Ok(t.elapsed())
    }

    /// The verbose `PodSandboxStatus` info (the `info` JSON; `Null` without one).
    pub fn pod_info(&mut self, pod_id: &str) -> Result<serde_json::Value, RpcError> {
        let mut rt = self.client.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_owned(),
            verbose: true,
        };
        let resp = self.call(async move { rt.pod_sandbox_status(req).await })?;
        Ok(resp
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default())
    }

    /// `ContainerStatus` (not verbose).
    pub fn container_status(&mut self, container_id: &str) -> Result<ContainerStatus, RpcError> {
        let mut rt = self.client.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: container_id.to_owned(),
            verbose: false,
        };
        let resp = self.call(async move { rt.container_status(req).await })?;
        resp.status
            .ok_or_else(|| format!("ContainerStatus of {container_id}: no status"))
    }

    fn call<T>(
        &mut self,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RpcError> {
        self.rt.block_on(rpc(fut))
    }
}

/// One RPC under [`RPC_LIMIT`], its status rendered for the report. The
/// timer must be created inside the runtime: call this from async code.
pub async fn rpc<T>(
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, RpcError> {
    match tokio::time::timeout(RPC_LIMIT, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message().trim())),
        Err(_) => Err(format!("no answer within {RPC_LIMIT:?}")),
    }
}

/// What one pod is made of: its sandbox and its one container.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// The sandbox config (also sent with CreateContainer, as the kubelet does).
    pub sandbox: PodSandboxConfig,
    /// The container config.
    pub container: ContainerConfig,
}

/// A pod whose container is running, and how long each step took.
#[derive(Debug, Clone)]
pub struct StartedPod {
    /// The sandbox id.
    pub pod_id: String,
    /// The container id.
    pub container_id: String,
    /// RunPodSandbox.
    pub run: Duration,
    /// CreateContainer.
    pub create: Duration,
    /// StartContainer.
    pub start: Duration,
}

impl StartedPod {
    /// The three steps together.
    pub fn total(&self) -> Duration {
        self.run + self.create + self.start
    }
}

/// A pod that did not get to running.
#[derive(Debug, Clone)]
pub struct FailedStart {
    /// The sandbox id, when RunPodSandbox succeeded (the pod must be removed).
    pub pod_id: Option<String>,
    /// The step that failed.
    pub step: &'static str,
    /// The RPC's error.
    pub error: RpcError,
}

impl std::fmt::Display for FailedStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

async fn start_pod(
    mut rt: RuntimeServiceClient<Channel>,
    spec: PodSpec,
) -> Result<StartedPod, FailedStart> {
    let fail = |pod_id: Option<&str>, step, error| FailedStart {
        pod_id: pod_id.map(str::to_owned),
        step,
        error,
    };
    let req = RunPodSandboxRequest {
        config: Some(spec.sandbox.clone()),
        runtime_handler: String::new(),
    };
    let t = Instant::now();
    let pod_id = rpc(rt.run_pod_sandbox(req))
        .await
        .map_err(|e| fail(None, "RunPodSandbox", e))?
        .pod_sandbox_id;
    let run = t.elapsed();
    let req = CreateContainerRequest {
        pod_sandbox_id: pod_id.clone(),
        config: Some(spec.container),
        sandbox_config: Some(spec.sandbox),
    };
    let t = Instant::now();
    let container_id = rpc(rt.create_container(req))
        .await
        .map_err(|e| fail(Some(&pod_id), "CreateContainer", e))?
        .container_id;
    let create = t.elapsed();
    let req = StartContainerRequest {
        container_id: container_id.clone(),
    };
    let t = Instant::now();
    rpc(rt.start_container(req))
        .await
        .map_err(|e| fail(Some(&pod_id), "StartContainer", e))?;
    Ok(StartedPod {
        pod_id,
        container_id,
        run,
        create,
        start: t.elapsed(),
    })
}

async fn stop_pod(mut rt: RuntimeServiceClient<Channel>, id: String) -> Result<Duration, RpcError> {
    let t = Instant::now();
    rpc(rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })).await?;
    Ok(t.elapsed())
}

async fn remove_pod(
    mut rt: RuntimeServiceClient<Channel>,
    id: String,
) -> Result<Duration, RpcError> {
    let t = Instant::now();
    rpc(rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })).await?;
    Ok(t.elapsed())
}

/// `pid` from a verbose status's `info` JSON.
fn info_pid(info: &std::collections::HashMap<String, String>) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    v.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Stops and removes every pod of the daemon at `socket` over a fresh
/// connection; returns the errors. For cleanup paths, including the signal
/// thread, where the scenario's own connection is out of reach.
pub fn remove_all_pods(socket: &Path) -> Vec<String> {
    let mut cri = match Cri::connect(socket) {
        Ok((cri, _)) => cri,
        Err(e) => return vec![format!("{e:#}")],
    };
    let ids = match cri.list_pods() {
        Ok(ids) => ids,
        Err(e) => return vec![format!("ListPodSandbox: {e}")],
    };
    let (results, _) = cri.stop_remove_concurrently(&ids);
    results
        .into_iter()
        .zip(&ids)
        .filter_map(|(r, id)| r.err().map(|e| format!("removing pod {id}: {e}")))
        .collect()
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}
