//! Stats RPCs from the containers' cgroups, and the container event stream.

use skiff_cri::api;
use skiff_cri::ports::{EventStream, PortResult, StatsPort, StreamingPort};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::async_trait;

use super::records::{ContainerRecord, PodRecord, PodState};
use super::{Runtime, RuntimeError, Service, container_config, labels_match, pod_config};
use crate::cgroups;
use crate::stream::{Pending, StdioOpts};

impl Runtime {
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
        let upper = c.layer_dir.join("upper");
        let (bytes, inodes) = dir_usage(&upper);
        api::FilesystemUsage {
            timestamp: super::now_ns(),
            fs_id: Some(api::FilesystemIdentifier {
                mountpoint: self.config.root.display().to_string(),
            }),
            used_bytes: Some(api::UInt64Value { value: bytes }),
            inodes_used: Some(api::UInt64Value { value: inodes }),
        }
    }

    fn one_pod_stats(&self, p: &PodRecord) -> Result<api::PodSandboxStats, RuntimeError> {
        let cfg = pod_config(p);
        let containers = self
            .containers()?
            .into_iter()
            .filter(|c| c.pod_id == p.id)
            .map(|c| self.one_container_stats(&c))
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
        Ok(cgroups::pod_stats(attributes, s.as_ref(), containers))
    }
}

/// Bytes and inodes used under `dir` (not following symlinks).
fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            inodes += 1;
            bytes += md.len();
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[async_trait]
impl StatsPort for Service {
    async fn container_stats(
        &self,
        req: api::ContainerStatsRequest,
    ) -> PortResult<api::ContainerStatsResponse> {
        let c = self.0.must_container(&req.container_id)?;
        Ok(api::ContainerStatsResponse {
            stats: Some(self.0.one_container_stats(&c)),
        })
    }

    async fn list_container_stats(
        &self,
        req: api::ListContainerStatsRequest,
    ) -> PortResult<api::ListContainerStatsResponse> {
        let f = req.filter.unwrap_or_default();
        let stats = self
            .0
            .containers()?
            .into_iter()
            .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
            .filter(|c| f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
            .filter(|c| labels_match(&container_config(c).labels, &f.label_selector))
            .map(|c| self.0.one_container_stats(&c))
            .collect();
        Ok(api::ListContainerStatsResponse { stats })
    }

    async fn pod_stats(
        &self,
        req: api::PodSandboxStatsRequest,
    ) -> PortResult<api::PodSandboxStatsResponse> {
        let p = self.0.must_pod(&req.pod_sandbox_id)?;
        Ok(api::PodSandboxStatsResponse {
            stats: Some(self.0.one_pod_stats(&p)?),
        })
    }

    async fn list_pod_stats(
        &self,
        req: api::ListPodSandboxStatsRequest,
    ) -> PortResult<api::ListPodSandboxStatsResponse> {
        let f = req.filter.unwrap_or_default();
        let mut stats = Vec::new();
        for p in self.0.pods()? {
            if (!f.id.is_empty() && !p.id.starts_with(&f.id))
                || !labels_match(&pod_config(&p).labels, &f.label_selector)
            {
                continue;
            }
            stats.push(self.0.one_pod_stats(&p)?);
        }
        Ok(api::ListPodSandboxStatsResponse { stats })
    }

    async fn metric_descriptors(
        &self,
        _req: api::ListMetricDescriptorsRequest,
    ) -> PortResult<api::ListMetricDescriptorsResponse> {
        Ok(api::ListMetricDescriptorsResponse {
            descriptors: Vec::new(),
        })
    }

    async fn pod_metrics(
        &self,
        _req: api::ListPodSandboxMetricsRequest,
    ) -> PortResult<api::ListPodSandboxMetricsResponse> {
        Ok(api::ListPodSandboxMetricsResponse {
            pod_metrics: Vec::new(),
        })
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
