//! A blocking face on the project's async CRI client: the harness is a
//! sequential program, and each call is timed around exactly one RPC.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use skiff_cri::api::{
    ImageSpec, PullImageRequest, RemoveImageRequest, VersionRequest, VersionResponse,
};
use skiff_cri::client::CriClient;
use tokio::runtime::Runtime;

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

    fn call<T>(
        &mut self,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RpcError> {
        // The timer must be created inside the runtime, hence the async block.
        match self
            .rt
            .block_on(async move { tokio::time::timeout(RPC_LIMIT, fut).await })
        {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message().trim())),
            Err(_) => Err(format!("no answer within {RPC_LIMIT:?}")),
        }
    }
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}
