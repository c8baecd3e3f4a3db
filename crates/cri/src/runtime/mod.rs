//! The CRI `RuntimeService`: one file per RPC holds its validation; this file routes
//! each RPC through [`call`] to its port.

mod attach;
mod checkpoint_container;
mod container_stats;
mod container_status;
mod create_container;
mod exec;
mod exec_sync;
mod get_container_events;
mod list_container_stats;
mod list_containers;
mod list_metric_descriptors;
mod list_pod_sandbox;
mod list_pod_sandbox_metrics;
mod list_pod_sandbox_stats;
mod pod_sandbox_stats;
mod pod_sandbox_status;
mod port_forward;
mod remove_container;
mod remove_pod_sandbox;
mod reopen_container_log;
mod run_pod_sandbox;
mod runtime_config;
mod start_container;
mod status;
mod stop_container;
mod stop_pod_sandbox;
mod stream_container_stats;
mod stream_containers;
mod stream_pod_sandbox_metrics;
mod stream_pod_sandbox_stats;
mod stream_pod_sandboxes;
mod update_container_resources;
mod update_pod_sandbox_resources;
mod update_runtime_config;
mod version;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, async_trait};

use crate::api::{self, runtime_service_server::RuntimeService};
use crate::error::to_status;
use crate::ports::Ports;
use crate::stream_list::{ListStream, stream_of};
use crate::wrap::call;

/// The tonic `RuntimeService` backed by [`Ports`].
#[derive(Clone)]
pub struct RuntimeServer {
    ports: Ports,
}

impl RuntimeServer {
    /// A service that forwards validated requests to `ports`.
    pub fn new(ports: Ports) -> Self {
        RuntimeServer { ports }
    }
}

type Rpc<T> = Result<Response<T>, Status>;

/// The event stream as tonic serves it.
pub type EventStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<api::ContainerEventResponse, Status>> + Send>,
>;

#[async_trait]
impl RuntimeService for RuntimeServer {
    async fn version(&self, r: Request<api::VersionRequest>) -> Rpc<api::VersionResponse> {
        call(&self.ports.observer, r, |r| self.ports.info.version(r)).await
    }
    async fn status(&self, r: Request<api::StatusRequest>) -> Rpc<api::StatusResponse> {
        call(&self.ports.observer, r, |r| self.ports.info.status(r)).await
    }
    async fn runtime_config(
        &self,
        r: Request<api::RuntimeConfigRequest>,
    ) -> Rpc<api::RuntimeConfigResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.info.runtime_config(r)
        })
        .await
    }
    async fn update_runtime_config(
        &self,
        r: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Rpc<api::UpdateRuntimeConfigResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.info.update_runtime_config(r)
        })
        .await
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<api::RunPodSandboxRequest>,
    ) -> Rpc<api::RunPodSandboxResponse> {
        call(&self.ports.observer, r, |r| self.ports.pods.run(r)).await
    }
    async fn stop_pod_sandbox(
        &self,
        r: Request<api::StopPodSandboxRequest>,
    ) -> Rpc<api::StopPodSandboxResponse> {
        call(&self.ports.observer, r, |r| self.ports.pods.stop(r)).await
    }
    async fn remove_pod_sandbox(
        &self,
        r: Request<api::RemovePodSandboxRequest>,
    ) -> Rpc<api::RemovePodSandboxResponse> {
        call(&self.ports.observer, r, |r| self.ports.pods.remove(r)).await
    }
    async fn pod_sandbox_status(
        &self,
        r: Request<api::PodSandboxStatusRequest>,
    ) -> Rpc<api::PodSandboxStatusResponse> {
        call(&self.ports.observer, r, |r| self.ports.pods.status(r)).await
    }
    async fn list_pod_sandbox(
        &self,
        r: Request<api::ListPodSandboxRequest>,
    ) -> Rpc<api::ListPodSandboxResponse> {
        call(&self.ports.observer, r, |r| self.ports.pods.list(r)).await
    }

    type StreamPodSandboxesStream = ListStream<api::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        r: Request<api::StreamPodSandboxesRequest>,
    ) -> Rpc<Self::StreamPodSandboxesStream> {
        call(&self.ports.observer, r, |r| async move {
            let list = self
                .ports
                .pods
                .list(api::ListPodSandboxRequest { filter: r.filter });
            Ok(stream_of(list.await?.items, |pod_sandboxes| {
                api::StreamPodSandboxesResponse { pod_sandboxes }
            }))
        })
        .await
    }
    async fn update_pod_sandbox_resources(
        &self,
        r: Request<api::UpdatePodSandboxResourcesRequest>,
    ) -> Rpc<api::UpdatePodSandboxResourcesResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.pods.update_resources(r)
        })
        .await
    }

    async fn create_container(
        &self,
        r: Request<api::CreateContainerRequest>,
    ) -> Rpc<api::CreateContainerResponse> {
        call(&self.ports.observer, r, |r| self.ports.containers.create(r)).await
    }
    async fn start_container(
        &self,
        r: Request<api::StartContainerRequest>,
    ) -> Rpc<api::StartContainerResponse> {
        call(&self.ports.observer, r, |r| self.ports.containers.start(r)).await
    }
    async fn stop_container(
        &self,
        r: Request<api::StopContainerRequest>,
    ) -> Rpc<api::StopContainerResponse> {
        call(&self.ports.observer, r, |r| self.ports.containers.stop(r)).await
    }
    async fn remove_container(
        &self,
        r: Request<api::RemoveContainerRequest>,
    ) -> Rpc<api::RemoveContainerResponse> {
        call(&self.ports.observer, r, |r| self.ports.containers.remove(r)).await
    }
    async fn list_containers(
        &self,
        r: Request<api::ListContainersRequest>,
    ) -> Rpc<api::ListContainersResponse> {
        call(&self.ports.observer, r, |r| self.ports.containers.list(r)).await
    }

    type StreamContainersStream = ListStream<api::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        r: Request<api::StreamContainersRequest>,
    ) -> Rpc<Self::StreamContainersStream> {
        call(&self.ports.observer, r, |r| async move {
            let list = self
                .ports
                .containers
                .list(api::ListContainersRequest { filter: r.filter });
            Ok(stream_of(list.await?.containers, |containers| {
                api::StreamContainersResponse { containers }
            }))
        })
        .await
    }
    async fn container_status(
        &self,
        r: Request<api::ContainerStatusRequest>,
    ) -> Rpc<api::ContainerStatusResponse> {
        call(&self.ports.observer, r, |r| self.ports.containers.status(r)).await
    }
    async fn update_container_resources(
        &self,
        r: Request<api::UpdateContainerResourcesRequest>,
    ) -> Rpc<api::UpdateContainerResourcesResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.containers.update_resources(r)
        })
        .await
    }
    async fn reopen_container_log(
        &self,
        r: Request<api::ReopenContainerLogRequest>,
    ) -> Rpc<api::ReopenContainerLogResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.containers.reopen_log(r)
        })
        .await
    }
    async fn exec_sync(&self, r: Request<api::ExecSyncRequest>) -> Rpc<api::ExecSyncResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.containers.exec_sync(r)
        })
        .await
    }
    async fn checkpoint_container(
        &self,
        r: Request<api::CheckpointContainerRequest>,
    ) -> Rpc<api::CheckpointContainerResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.containers.checkpoint(r)
        })
        .await
    }

    async fn exec(&self, r: Request<api::ExecRequest>) -> Rpc<api::ExecResponse> {
        call(&self.ports.observer, r, |r| self.ports.streaming.exec(r)).await
    }
    async fn attach(&self, r: Request<api::AttachRequest>) -> Rpc<api::AttachResponse> {
        call(&self.ports.observer, r, |r| self.ports.streaming.attach(r)).await
    }
    async fn port_forward(
        &self,
        r: Request<api::PortForwardRequest>,
    ) -> Rpc<api::PortForwardResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.streaming.port_forward(r)
        })
        .await
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        r: Request<api::GetEventsRequest>,
    ) -> Rpc<Self::GetContainerEventsStream> {
        call(&self.ports.observer, r, |r| async move {
            let events = self.ports.streaming.container_events(r).await?;
            let mapped: EventStream = Box::pin(events.map(|e| e.map_err(|err| to_status(&err))));
            Ok(mapped)
        })
        .await
    }

    async fn container_stats(
        &self,
        r: Request<api::ContainerStatsRequest>,
    ) -> Rpc<api::ContainerStatsResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.stats.container_stats(r)
        })
        .await
    }
    async fn list_container_stats(
        &self,
        r: Request<api::ListContainerStatsRequest>,
    ) -> Rpc<api::ListContainerStatsResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.stats.list_container_stats(r)
        })
        .await
    }

    type StreamContainerStatsStream = ListStream<api::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        r: Request<api::StreamContainerStatsRequest>,
    ) -> Rpc<Self::StreamContainerStatsStream> {
        call(&self.ports.observer, r, |r| async move {
            let req = api::ListContainerStatsRequest { filter: r.filter };
            let list = self.ports.stats.list_container_stats(req);
            Ok(stream_of(list.await?.stats, |container_stats| {
                api::StreamContainerStatsResponse { container_stats }
            }))
        })
        .await
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<api::PodSandboxStatsRequest>,
    ) -> Rpc<api::PodSandboxStatsResponse> {
        call(&self.ports.observer, r, |r| self.ports.stats.pod_stats(r)).await
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<api::ListPodSandboxStatsRequest>,
    ) -> Rpc<api::ListPodSandboxStatsResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.stats.list_pod_stats(r)
        })
        .await
    }

    type StreamPodSandboxStatsStream = ListStream<api::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<api::StreamPodSandboxStatsRequest>,
    ) -> Rpc<Self::StreamPodSandboxStatsStream> {
        call(&self.ports.observer, r, |r| async move {
            let req = api::ListPodSandboxStatsRequest { filter: r.filter };
            let list = self.ports.stats.list_pod_stats(req);
            Ok(stream_of(list.await?.stats, |pod_sandbox_stats| {
                api::StreamPodSandboxStatsResponse { pod_sandbox_stats }
            }))
        })
        .await
    }
    async fn list_metric_descriptors(
        &self,
        r: Request<api::ListMetricDescriptorsRequest>,
    ) -> Rpc<api::ListMetricDescriptorsResponse> {
        call(&self.ports.observer, r, |r| {
            self.ports.stats.metric_descriptors(r)
        })
        .await
    }
    async fn list_pod_sandbox_metrics(
        &self,
        r: Request<api::ListPodSandboxMetricsRequest>,
    ) -> Rpc<api::ListPodSandboxMetricsResponse> {
        call(&self.ports.observer, r, |r| self.ports.stats.pod_metrics(r)).await
    }

    type StreamPodSandboxMetricsStream = ListStream<api::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        r: Request<api::StreamPodSandboxMetricsRequest>,
    ) -> Rpc<Self::StreamPodSandboxMetricsStream> {
        call(&self.ports.observer, r, |_| async move {
            let list = self
                .ports
                .stats
                .pod_metrics(api::ListPodSandboxMetricsRequest {});
            Ok(stream_of(list.await?.pod_metrics, |pod_sandbox_metrics| {
                api::StreamPodSandboxMetricsResponse {
                    pod_sandbox_metrics,
                }
            }))
        })
        .await
    }
}
