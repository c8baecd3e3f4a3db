//! The ports: what the CRI services need from the daemon.
//!
//! Each port is a small async trait over the CRI message types. Every method has a
//! default body that answers `Unimplemented`, so the daemon overrides exactly what
//! it serves and a client always gets a clear answer for the rest. Requests reach
//! a port only after [`crate::validate`] accepted them.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::async_trait;

use crate::api;
use crate::error::CriError;

/// A result of a port call.
pub type PortResult<T> = Result<T, CriError>;

/// The stream of container events `GetContainerEvents` serves.
pub type EventStream = Pin<Box<dyn Stream<Item = PortResult<api::ContainerEventResponse>> + Send>>;

/// Runtime identity, readiness and configuration.
#[async_trait]
pub trait InfoPort: Send + Sync + 'static {
    /// `Version`: the runtime's name and versions.
    async fn version(&self, _req: api::VersionRequest) -> PortResult<api::VersionResponse> {
        Err(CriError::unimplemented("Version"))
    }
    /// `Status`: runtime and network readiness, handlers and features.
    async fn status(&self, _req: api::StatusRequest) -> PortResult<api::StatusResponse> {
        Err(CriError::unimplemented("Status"))
    }
    /// `RuntimeConfig`: the cgroup driver the kubelet must match.
    async fn runtime_config(
        &self,
        _req: api::RuntimeConfigRequest,
    ) -> PortResult<api::RuntimeConfigResponse> {
        Err(CriError::unimplemented("RuntimeConfig"))
    }
    /// `UpdateRuntimeConfig`: the pod CIDR from the kubelet.
    async fn update_runtime_config(
        &self,
        _req: api::UpdateRuntimeConfigRequest,
    ) -> PortResult<api::UpdateRuntimeConfigResponse> {
        Err(CriError::unimplemented("UpdateRuntimeConfig"))
    }
}

/// Pod sandbox lifecycle.
#[async_trait]
pub trait PodPort: Send + Sync + 'static {
    /// `RunPodSandbox`.
    async fn run(&self, _req: api::RunPodSandboxRequest) -> PortResult<api::RunPodSandboxResponse> {
        Err(CriError::unimplemented("RunPodSandbox"))
    }
    /// `StopPodSandbox`.
    async fn stop(
        &self,
        _req: api::StopPodSandboxRequest,
    ) -> PortResult<api::StopPodSandboxResponse> {
        Err(CriError::unimplemented("StopPodSandbox"))
    }
    /// `RemovePodSandbox`.
    async fn remove(
        &self,
        _req: api::RemovePodSandboxRequest,
    ) -> PortResult<api::RemovePodSandboxResponse> {
        Err(CriError::unimplemented("RemovePodSandbox"))
    }
    /// `PodSandboxStatus`.
    async fn status(
        &self,
        _req: api::PodSandboxStatusRequest,
    ) -> PortResult<api::PodSandboxStatusResponse> {
        Err(CriError::unimplemented("PodSandboxStatus"))
    }
    /// `ListPodSandbox`.
    async fn list(
        &self,
        _req: api::ListPodSandboxRequest,
    ) -> PortResult<api::ListPodSandboxResponse> {
        Err(CriError::unimplemented("ListPodSandbox"))
    }
    /// `UpdatePodSandboxResources`: record the pod-level resources the kubelet has
    /// already applied to the pod's cgroup (best effort for the kubelet).
    async fn update_resources(
        &self,
        _req: api::UpdatePodSandboxResourcesRequest,
    ) -> PortResult<api::UpdatePodSandboxResourcesResponse> {
        Err(CriError::unimplemented("UpdatePodSandboxResources"))
    }
}

/// Container lifecycle.
#[async_trait]
pub trait ContainerPort: Send + Sync + 'static {
    /// `CreateContainer`.
    async fn create(
        &self,
        _req: api::CreateContainerRequest,
    ) -> PortResult<api::CreateContainerResponse> {
        Err(CriError::unimplemented("CreateContainer"))
    }
    /// `StartContainer`.
    async fn start(
        &self,
        _req: api::StartContainerRequest,
    ) -> PortResult<api::StartContainerResponse> {
        Err(CriError::unimplemented("StartContainer"))
    }
    /// `StopContainer`.
    async fn stop(
        &self,
        _req: api::StopContainerRequest,
    ) -> PortResult<api::StopContainerResponse> {
        Err(CriError::unimplemented("StopContainer"))
    }
    /// `RemoveContainer`.
    async fn remove(
        &self,
        _req: api::RemoveContainerRequest,
    ) -> PortResult<api::RemoveContainerResponse> {
        Err(CriError::unimplemented("RemoveContainer"))
    }
    /// `ListContainers`.
    async fn list(
        &self,
        _req: api::ListContainersRequest,
    ) -> PortResult<api::ListContainersResponse> {
        Err(CriError::unimplemented("ListContainers"))
    }
    /// `ContainerStatus`.
    async fn status(
        &self,
        _req: api::ContainerStatusRequest,
    ) -> PortResult<api::ContainerStatusResponse> {
        Err(CriError::unimplemented("ContainerStatus"))
    }
    /// `UpdateContainerResources`.
    async fn update_resources(
        &self,
        _req: api::UpdateContainerResourcesRequest,
    ) -> PortResult<api::UpdateContainerResourcesResponse> {
        Err(CriError::unimplemented("UpdateContainerResources"))
    }
    /// `ReopenContainerLog`.
    async fn reopen_log(
        &self,
        _req: api::ReopenContainerLogRequest,
    ) -> PortResult<api::ReopenContainerLogResponse> {
        Err(CriError::unimplemented("ReopenContainerLog"))
    }
    /// `ExecSync`.
    async fn exec_sync(&self, _req: api::ExecSyncRequest) -> PortResult<api::ExecSyncResponse> {
        Err(CriError::unimplemented("ExecSync"))
    }
    /// `CheckpointContainer`.
    async fn checkpoint(
        &self,
        _req: api::CheckpointContainerRequest,
    ) -> PortResult<api::CheckpointContainerResponse> {
        Err(CriError::unimplemented("CheckpointContainer"))
    }
}

/// Streaming endpoints and the event stream.
#[async_trait]
pub trait StreamingPort: Send + Sync + 'static {
    /// `Exec`: a URL on the streaming server.
    async fn exec(&self, _req: api::ExecRequest) -> PortResult<api::ExecResponse> {
        Err(CriError::unimplemented("Exec"))
    }
    /// `Attach`: a URL on the streaming server.
    async fn attach(&self, _req: api::AttachRequest) -> PortResult<api::AttachResponse> {
        Err(CriError::unimplemented("Attach"))
    }
    /// `PortForward`: a URL on the streaming server.
    async fn port_forward(
        &self,
        _req: api::PortForwardRequest,
    ) -> PortResult<api::PortForwardResponse> {
        Err(CriError::unimplemented("PortForward"))
    }
    /// `GetContainerEvents`: container lifecycle events as they happen.
    async fn container_events(&self, _req: api::GetEventsRequest) -> PortResult<EventStream> {
        Err(CriError::unimplemented("GetContainerEvents"))
    }
}

/// Statistics and metrics.
#[async_trait]
pub trait StatsPort: Send + Sync + 'static {
    /// `ContainerStats`.
    async fn container_stats(
        &self,
        _req: api::ContainerStatsRequest,
    ) -> PortResult<api::ContainerStatsResponse> {
        Err(CriError::unimplemented("ContainerStats"))
    }
    /// `ListContainerStats`.
    async fn list_container_stats(
        &self,
        _req: api::ListContainerStatsRequest,
    ) -> PortResult<api::ListContainerStatsResponse> {
        Err(CriError::unimplemented("ListContainerStats"))
    }
    /// `PodSandboxStats`.
    async fn pod_stats(
        &self,
        _req: api::PodSandboxStatsRequest,
    ) -> PortResult<api::PodSandboxStatsResponse> {
        Err(CriError::unimplemented("PodSandboxStats"))
    }
    /// `ListPodSandboxStats`.
    async fn list_pod_stats(
        &self,
        _req: api::ListPodSandboxStatsRequest,
    ) -> PortResult<api::ListPodSandboxStatsResponse> {
        Err(CriError::unimplemented("ListPodSandboxStats"))
    }
    /// `ListMetricDescriptors`.
    async fn metric_descriptors(
        &self,
        _req: api::ListMetricDescriptorsRequest,
    ) -> PortResult<api::ListMetricDescriptorsResponse> {
        Err(CriError::unimplemented("ListMetricDescriptors"))
    }
    /// `ListPodSandboxMetrics`.
    async fn pod_metrics(
        &self,
        _req: api::ListPodSandboxMetricsRequest,
    ) -> PortResult<api::ListPodSandboxMetricsResponse> {
        Err(CriError::unimplemented("ListPodSandboxMetrics"))
    }
}

/// The image service.
#[async_trait]
pub trait ImagePort: Send + Sync + 'static {
    /// `ListImages`.
    async fn list(&self, _req: api::ListImagesRequest) -> PortResult<api::ListImagesResponse> {
        Err(CriError::unimplemented("ListImages"))
    }
    /// `ImageStatus`.
    async fn status(&self, _req: api::ImageStatusRequest) -> PortResult<api::ImageStatusResponse> {
        Err(CriError::unimplemented("ImageStatus"))
    }
    /// `PullImage`.
    async fn pull(&self, _req: api::PullImageRequest) -> PortResult<api::PullImageResponse> {
        Err(CriError::unimplemented("PullImage"))
    }
    /// `RemoveImage`.
    async fn remove(&self, _req: api::RemoveImageRequest) -> PortResult<api::RemoveImageResponse> {
        Err(CriError::unimplemented("RemoveImage"))
    }
    /// `ImageFsInfo`.
    async fn fs_info(&self, _req: api::ImageFsInfoRequest) -> PortResult<api::ImageFsInfoResponse> {
        Err(CriError::unimplemented("ImageFsInfo"))
    }
}

/// Told of every CRI call once it is answered: the metrics endpoint's view of the CRI.
pub trait CallObserver: Send + Sync + 'static {
    /// `method` (e.g. `RunPodSandbox`) answered `code` after `elapsed`.
    fn observe(&self, method: &'static str, code: tonic::Code, elapsed: std::time::Duration);
}

/// An observer that keeps nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl CallObserver for NoObserver {
    fn observe(&self, _: &'static str, _: tonic::Code, _: std::time::Duration) {}
}

/// A port that implements nothing: every method answers `Unimplemented`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unimplemented;

impl InfoPort for Unimplemented {}
impl PodPort for Unimplemented {}
impl ContainerPort for Unimplemented {}
impl StreamingPort for Unimplemented {}
impl StatsPort for Unimplemented {}
impl ImagePort for Unimplemented {}

/// Everything the CRI services call, one implementation per port.
#[derive(Clone)]
pub struct Ports {
    /// Version, status, runtime config.
    pub info: Arc<dyn InfoPort>,
    /// Pod sandboxes.
    pub pods: Arc<dyn PodPort>,
    /// Containers.
    pub containers: Arc<dyn ContainerPort>,
    /// Exec/attach/port-forward URLs and events.
    pub streaming: Arc<dyn StreamingPort>,
    /// Stats and metrics.
    pub stats: Arc<dyn StatsPort>,
    /// Images.
    pub images: Arc<dyn ImagePort>,
    /// Told of every call (metrics).
    pub observer: Arc<dyn CallObserver>,
}

impl Default for Ports {
    /// Ports that answer `Unimplemented` everywhere; replace the ones you serve.
    fn default() -> Self {
        Ports {
            info: Arc::new(Unimplemented),
            pods: Arc::new(Unimplemented),
            containers: Arc::new(Unimplemented),
            streaming: Arc::new(Unimplemented),
            stats: Arc::new(Unimplemented),
            images: Arc::new(Unimplemented),
            observer: Arc::new(NoObserver),
        }
    }
}
