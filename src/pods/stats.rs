//! Stats RPCs from the containers' cgroups, and the container event stream.

use skiff_cri::api;
use skiff_cri::ports::{EventStream, PortResult, StatsPort, StreamingPort};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::async_trait;

use std::sync::Arc;

use super::records::{ContainerRecord, CtrState, PodRecord, PodState};
use super::{Runtime, RuntimeError, Service, container_config, labels_match, metrics, pod_config};
use crate::cgroups;
use crate::stream::{Pending, StdioOpts};

impl Runtime {
    /// Stats of one container. Blocks (cgroup files, a layer walk when its cached size
    /// is stale): call it from [`Runtime::blocking`].
    fn one_container_stats(&self, c: &ContainerRecord) -> api::ContainerStats {
        let cfg = container_config(c);
        let attributes = api::ContainerAttributes {
            id: c.id.clone(),
            metadata: cfg.metadata,
            labels: cfg.labels,
            annotations: cfg.annotations,
        };
        let s = self.cgroups.stats(&c.cgroups_path).ok().flatten();
        let mut stats =
            cgroups::container_stats(attributes, s.as_ref(), Some(self.writable_layer(c)));
        if let (Some(s), Some(cpu)) = (s.as_ref(), stats.cpu.as_mut()) {
            cpu.usage_nano_cores = self
                .cpu
                .nano_cores(&c.id, s.timestamp_ns, s.cpu_usage_ns)
                .map(|v| api::UInt64Value { value: v });
        }
        stats
    }

    fn writable_layer(&self, c: &ContainerRecord) -> api::FilesystemUsage {
        let (bytes, inodes) = self.disk.usage(&c.id, &c.layer_dir.join("upper"));
        api::FilesystemUsage {
            timestamp: super::now_ns(),
            fs_id: Some(api::FilesystemIdentifier {
                mountpoint: self.config.root.display().to_string(),
            }),
            used_bytes: Some(api::UInt64Value { value: bytes }),
            inodes_used: Some(api::UInt64Value { value: inodes }),
        }
    }

    fn one_pod_stats(&self, p: &PodRecord, all: &[ContainerRecord]) -> api::PodSandboxStats {
        let cfg = pod_config(p);
        let containers = all
            .iter()
            .filter(|c| c.pod_id == p.id)
            .map(|c| self.one_container_stats(c))
            .collect();
        let attributes = api::PodSandboxAttributes {
            id: p.id.clone(),
            metadata: cfg.metadata,
            labels: cfg.labels,
            annotations: cfg.annotations,
        };
        let s = if p.state == PodState::Ready {
            self.cgroups.stats(&p.cgroup_parent).ok().flatten()
        } else {
            None
        };
        cgroups::pod_stats(attributes, s.as_ref(), containers)
    }

    /// The metrics of one pod and its containers. Blocks.
    fn one_pod_metrics(&self, p: &PodRecord, all: &[ContainerRecord]) -> api::PodSandboxMetrics {
        let md = pod_config(p).metadata.unwrap_or_default();
        let mine: Vec<&ContainerRecord> = all.iter().filter(|c| c.pod_id == p.id).collect();
        // The pod's own interfaces, read from inside its network namespace (a pod on
        // the host's network has none of its own).
        let net = match (&p.ns.net, p.state) {
            (Some(ns), PodState::Ready) => crate::sys::in_netns(Some(ns), || {
                std::fs::read_to_string("/proc/thread-self/net/dev")
            })
            .map(|t| metrics::parse_net_dev(&t))
            .unwrap_or_default(),
            _ => Vec::new(),
        };
        let (device, limit_bytes, inodes_total, inodes_free) = metrics::fs_of(&self.config.root);
        let container_metrics = mine
            .iter()
            .filter_map(|c| {
                let detail = self.cgroups.detail(&c.cgroups_path).ok().flatten()?;
                let cfg = container_config(c);
                let (used_bytes, _) = self.disk.usage(&c.id, &c.layer_dir.join("upper"));
                let fs = metrics::FsUsage {
                    device: device.clone(),
                    used_bytes,
                    limit_bytes,
                    inodes_total,
                    inodes_free,
                };
                let name = cfg.metadata.map(|m| m.name).unwrap_or_default();
                let image = cfg
                    .image
                    .map(|i| i.user_specified_image)
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| c.image_name.clone());
                let running = c.state == CtrState::Running;
                let input = metrics::ContainerInput {
                    labels: [&md.name, &md.namespace, &name, &c.id, &image],
                    cgroup: &detail,
                    fs: &fs,
                    started_at_ns: c.started_at,
                    nofile_soft: c.pid.filter(|_| running).and_then(metrics::nofile_soft),
                };
                Some(api::ContainerMetrics {
                    container_id: c.id.clone(),
                    metrics: metrics::container_metrics(&input),
                })
            })
            .collect();
        api::PodSandboxMetrics {
            pod_sandbox_id: p.id.clone(),
            metrics: metrics::pod_metrics(&md.name, &md.namespace, &p.id, &net),
            container_metrics,
        }
    }

    /// Run blocking stats work on the blocking pool, never on an async worker.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Runtime) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let rt = self.clone();
        crate::blocking::spawn(move || f(&rt))
            .await
            .map_err(super::task_err("stats"))?
    }
}

#[async_trait]
impl StatsPort for Service {
    async fn container_stats(
        &self,
        req: api::ContainerStatsRequest,
    ) -> PortResult<api::ContainerStatsResponse> {
        let c = self.0.must_container(&req.container_id)?;
        let stats = self
            .0
            .blocking(move |rt| Ok(rt.one_container_stats(&c)))
            .await?;
        Ok(api::ContainerStatsResponse { stats: Some(stats) })
    }

    async fn list_container_stats(
        &self,
        req: api::ListContainerStatsRequest,
    ) -> PortResult<api::ListContainerStatsResponse> {
        let f = req.filter.unwrap_or_default();
        let stats = self
            .0
            .blocking(move |rt| {
                Ok(rt
                    .containers()?
                    .into_iter()
                    .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
                    .filter(|c| {
                        f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id)
                    })
                    .filter(|c| labels_match(&container_config(c).labels, &f.label_selector))
                    .map(|c| rt.one_container_stats(&c))
                    .collect())
            })
            .await?;
        Ok(api::ListContainerStatsResponse { stats })
    }

    async fn pod_stats(
        &self,
        req: api::PodSandboxStatsRequest,
    ) -> PortResult<api::PodSandboxStatsResponse> {
        let p = self.0.must_pod(&req.pod_sandbox_id)?;
        let stats = self
            .0
            .blocking(move |rt| Ok(rt.one_pod_stats(&p, &rt.containers()?)))
            .await?;
        Ok(api::PodSandboxStatsResponse { stats: Some(stats) })
    }

    async fn list_pod_stats(
        &self,
        req: api::ListPodSandboxStatsRequest,
    ) -> PortResult<api::ListPodSandboxStatsResponse> {
        let f = req.filter.unwrap_or_default();
        let stats = self
            .0
            .blocking(move |rt| {
                let all = rt.containers()?;
                Ok(rt
                    .pods()?
                    .into_iter()
                    .filter(|p| f.id.is_empty() || p.id.starts_with(&f.id))
                    .filter(|p| labels_match(&pod_config(p).labels, &f.label_selector))
                    .map(|p| rt.one_pod_stats(&p, &all))
                    .collect())
            })
            .await?;
        Ok(api::ListPodSandboxStatsResponse { stats })
    }

    async fn metric_descriptors(
        &self,
        _req: api::ListMetricDescriptorsRequest,
    ) -> PortResult<api::ListMetricDescriptorsResponse> {
        Ok(api::ListMetricDescriptorsResponse {
            descriptors: metrics::descriptors(),
        })
    }

    async fn pod_metrics(
        &self,
        _req: api::ListPodSandboxMetricsRequest,
    ) -> PortResult<api::ListPodSandboxMetricsResponse> {
        let pod_metrics = self
            .0
            .blocking(|rt| {
                let all = rt.containers()?;
                Ok(rt
                    .pods()?
                    .into_iter()
                    .filter(|p| p.state == PodState::Ready)
                    .map(|p| rt.one_pod_metrics(&p, &all))
                    .collect())
            })
            .await?;
        Ok(api::ListPodSandboxMetricsResponse { pod_metrics })
    }
}

#[async_trait]
impl StreamingPort for Service {
    async fn exec(&self, req: api::ExecRequest) -> PortResult<api::ExecResponse> {
        if req.cmd.is_empty() {
            return Err(RuntimeError::Invalid("exec: no command given".into()).into());
        }
        let io = StdioOpts {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            tty: req.tty,
        };
        let container = self.0.check_stdio_request(&req.container_id, io)?;
        let url = self.0.streaming_url(Pending::Exec {
            container,
            cmd: req.cmd,
            io,
        })?;
        Ok(api::ExecResponse { url })
    }

    async fn attach(&self, req: api::AttachRequest) -> PortResult<api::AttachResponse> {
        let io = StdioOpts {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            tty: req.tty,
        };
        let container = self.0.check_stdio_request(&req.container_id, io)?;
        let url = self.0.streaming_url(Pending::Attach { container, io })?;
        Ok(api::AttachResponse { url })
    }

    async fn port_forward(
        &self,
        req: api::PortForwardRequest,
    ) -> PortResult<api::PortForwardResponse> {
        let pod = self.0.check_port_forward(&req)?;
        let url = self.0.streaming_url(Pending::PortForward { pod })?;
        Ok(api::PortForwardResponse { url })
    }

    async fn container_events(&self, _req: api::GetEventsRequest) -> PortResult<EventStream> {
        let rx = self.0.events.subscribe();
        let stream = BroadcastStream::new(rx).filter_map(|r| r.ok().map(Ok));
        Ok(Box::pin(stream))
    }
}
