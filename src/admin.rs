//! skiff's own API beside CRI on the same socket (`proto/admin.proto`): image import
//! and pull progress.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use skiff_image::Images;
use skiff_image::progress::PullSnapshot;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, async_trait};

/// The generated admin API types, client and server.
pub mod api {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("skiff.admin.v1");
}

use api::admin_server::{Admin, AdminServer};

/// Serves the admin API from the image service.
pub struct AdminService {
    images: Arc<Images>,
}

impl AdminService {
    /// The tonic service.
    pub fn server(images: Arc<Images>) -> AdminServer<AdminService> {
        AdminServer::new(AdminService { images })
    }
}

fn to_status(e: skiff_image::ImageError) -> Status {
    skiff_cri::error::to_status(&skiff_cri::CriError::from(
        crate::error::ServiceError::from(e),
    ))
}

fn to_api(s: PullSnapshot, finished: bool) -> api::PullProgressResponse {
    api::PullProgressResponse {
        image: s.image,
        layers: s
            .layers
            .into_iter()
            .map(|l| api::LayerProgress {
                digest: l.digest,
                total: l.total,
                done: l.done,
                state: l.state.name().into(),
            })
            .collect(),
        finished,
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<api::PullProgressResponse, Status>> + Send>>;

#[async_trait]
impl Admin for AdminService {
    async fn import_image(
        &self,
        req: Request<api::ImportImageRequest>,
    ) -> Result<Response<api::ImportImageResponse>, Status> {
        let req = req.into_inner();
        let path = std::path::PathBuf::from(&req.path);
        if !path.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "ImportImage: path {:?} must be absolute (it is read by skiffd)",
                req.path
            )));
        }
        let name = (!req.name.is_empty()).then_some(req.name.as_str());
        let started = std::time::Instant::now();
        let records = self.images.import(&path, name).await.map_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ImportImage failed");
            to_status(e)
        })?;
        tracing::info!(path = %path.display(), images = records.len(), elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "ImportImage");
        Ok(Response::new(api::ImportImageResponse {
            images: records
                .into_iter()
                .map(|r| api::ImportedImage {
                    id: r.id.to_string(),
                    repo_tags: r.repo_tags,
                })
                .collect(),
        }))
    }

    type PullProgressStream = ProgressStream;

    async fn pull_progress(
        &self,
        req: Request<api::PullProgressRequest>,
    ) -> Result<Response<Self::PullProgressStream>, Status> {
        let req = req.into_inner();
        let interval = Duration::from_millis(u64::from(req.interval_ms.clamp(50, 10_000)));
        let images = self.images.clone();
        let wanted = req.image;
        let stream = async_stream_progress(images, wanted, interval);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Emit snapshots of matching pulls every `interval`, and at once when a layer changes
/// state, until none is in flight; a pull that disappears is reported once more as finished.
fn async_stream_progress(
    images: Arc<Images>,
    wanted: String,
    interval: Duration,
) -> impl Stream<Item = Result<api::PullProgressResponse, Status>> + Send {
    const TICK: Duration = Duration::from_millis(25);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut seen: Vec<PullSnapshot> = Vec::new();
        let mut last_emit = std::time::Instant::now();
        // Give a pull started at the same moment two seconds to register.
        let mut grace = 2000 / TICK.as_millis();
        loop {
            let now: Vec<PullSnapshot> = images
                .progress()
                .into_iter()
                .filter(|p| wanted.is_empty() || p.image == wanted || p.image.contains(&wanted))
                .collect();
            for gone in seen
                .iter()
                .filter(|s| !now.iter().any(|n| n.image == s.image))
            {
                let mut last = gone.clone();
                for l in &mut last.layers {
                    if l.state != skiff_image::progress::LayerState::Failed {
                        l.state = skiff_image::progress::LayerState::Done;
                        l.done = l.total;
                    }
                }
                if tx.send(Ok(to_api(last, true))).await.is_err() {
                    return;
                }
            }
            let changed = now.iter().any(|n| {
                seen.iter().find(|s| s.image == n.image).is_none_or(|s| {
                    s.layers
                        .iter()
                        .zip(&n.layers)
                        .any(|(a, b)| a.state != b.state)
                })
            });
            if changed || last_emit.elapsed() >= interval {
                for p in &now {
                    if tx.send(Ok(to_api(p.clone(), false))).await.is_err() {
                        return;
                    }
                }
                last_emit = std::time::Instant::now();
            }
            if now.is_empty() {
                if !seen.is_empty() || grace == 0 {
                    return;
                }
                grace -= 1;
            }
            seen = now;
            tokio::time::sleep(TICK).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
