//! The image port: CRI ImageService over `skiff_image::Images`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use skiff_cri::api;
use skiff_cri::ports::{ImagePort, PortResult};
use skiff_image::{ImageRecord, Images, RegistryAuth};
use tonic::async_trait;

use crate::error::ServiceError;

/// Serves ImageService from the image store.
pub struct ImageService {
    images: Arc<Images>,
    in_use: InUse,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Which containers use an image (by image id); RemoveImage refuses while any do.
pub type InUse = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

impl ImageService {
    /// A port over `images`.
    pub fn new(
        images: Arc<Images>,
        in_use: InUse,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> ImageService {
        ImageService {
            images,
            in_use,
            metrics,
        }
    }
}

/// The credentials of a CRI `AuthConfig`.
pub fn registry_auth(auth: Option<&api::AuthConfig>) -> Result<RegistryAuth, ServiceError> {
    let Some(a) = auth else {
        return Ok(RegistryAuth::Anonymous);
    };
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(RegistryAuth::Basic(a.username.clone(), a.password.clone()));
    }
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            });
        return match decoded {
            Some((u, p)) => Ok(RegistryAuth::Basic(u, p)),
            None => Err(ServiceError::BadRequest(
                "auth.auth is not base64 of \"username:password\"".into(),
            )),
        };
    }
    if !a.registry_token.is_empty() {
        return Ok(RegistryAuth::Bearer(a.registry_token.clone()));
    }
    if !a.identity_token.is_empty() {
        return Ok(RegistryAuth::Bearer(a.identity_token.clone()));
    }
    Ok(RegistryAuth::Anonymous)
}

/// The CRI view of an image record.
pub fn cri_image(r: &ImageRecord) -> api::Image {
    let user = r.user.split(':').next().unwrap_or("");
    let (uid, username) = match user.parse::<i64>() {
        Ok(n) => (Some(api::Int64Value { value: n }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    api::Image {
        id: r.id.to_string(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid,
        username,
        spec: Some(api::ImageSpec {
            image: r.id.to_string(),
            ..Default::default()
        }),
        pinned: r.pinned,
    }
}

fn image_name(spec: Option<&api::ImageSpec>) -> &str {
    spec.map(|s| s.image.as_str()).unwrap_or("")
}

#[async_trait]
impl ImagePort for ImageService {
    async fn list(&self, req: api::ListImagesRequest) -> PortResult<api::ListImagesResponse> {
        let wanted = req
            .filter
            .as_ref()
            .map(|f| image_name(f.image.as_ref()))
            .unwrap_or("");
        let images = if wanted.is_empty() {
            self.images.list().map_err(ServiceError::from)?
        } else {
            self.images
                .resolve(wanted)
                .map_err(ServiceError::from)?
                .into_iter()
                .collect()
        };
        Ok(api::ListImagesResponse {
            images: images.iter().map(cri_image).collect(),
        })
    }

    async fn status(&self, req: api::ImageStatusRequest) -> PortResult<api::ImageStatusResponse> {
        let name = image_name(req.image.as_ref());
        // An image that is not present is not an error: the answer has no image.
        let Some(record) = self.images.resolve(name).map_err(ServiceError::from)? else {
            return Ok(api::ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if req.verbose {
            let config: serde_json::Value = self
                .images
                .config_json(&record)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(serde_json::Value::Null);
            let doc = serde_json::json!({
                "imageSpec": config,
                "manifest": record.manifest.to_string(),
                "index": record.index.as_ref().map(|d| d.to_string()),
                "chainID": record.layers.last().map(|l| l.chain_id.to_string()),
                "layers": record.layers.iter().map(|l| serde_json::json!({
                    "digest": l.digest.to_string(),
                    "diffID": l.diff_id.to_string(),
                    "chainID": l.chain_id.to_string(),
                    "mediaType": l.media_type,
                    "size": l.size,
                })).collect::<Vec<_>>(),
                "snapshotter": "skiff-overlay",
            });
            info.insert("info".into(), doc.to_string());
        }
        Ok(api::ImageStatusResponse {
            image: Some(cri_image(&record)),
            info,
        })
    }

    async fn pull(&self, req: api::PullImageRequest) -> PortResult<api::PullImageResponse> {
        let name = image_name(req.image.as_ref()).to_string();
        let auth = registry_auth(req.auth.as_ref())?;
        let started = std::time::Instant::now();
        let pulled = self.images.pull(&name, auth).await;
        self.metrics.pull_done(pulled.is_ok(), started.elapsed());
        // A pull's buffers (decompressors, hashers, tar state, in-flight chunks) are freed
        // when it ends; hand that memory back to the system instead of keeping it in the
        // allocator's free lists (≈17 MiB of skiffd's RSS after one pull, measured).
        // Fire and forget: nothing waits for the trim.
        drop(crate::blocking::spawn(crate::sys::release_free_memory));
        let record = pulled.map_err(ServiceError::from)?;
        Ok(api::PullImageResponse {
            image_ref: record.id.to_string(),
        })
    }

    async fn remove(&self, req: api::RemoveImageRequest) -> PortResult<api::RemoveImageResponse> {
        let name = image_name(req.image.as_ref()).to_string();
        // No containers exist yet; the container work plugs its usage check in here.
        self.images
            .remove(&name, |id| (self.in_use)(id.as_str()))
            .await
            .map_err(ServiceError::from)?;
        Ok(api::RemoveImageResponse {})
    }

    async fn fs_info(&self, _req: api::ImageFsInfoRequest) -> PortResult<api::ImageFsInfoResponse> {
        let images = self.images.clone();
        let usage = crate::blocking::spawn(move || images.usage())
            .await
            .unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let fs = api::FilesystemUsage {
            timestamp: now,
            fs_id: Some(api::FilesystemIdentifier {
                mountpoint: self.images.root().display().to_string(),
            }),
            used_bytes: Some(api::UInt64Value { value: usage.bytes }),
            inodes_used: Some(api::UInt64Value {
                value: usage.inodes,
            }),
        };
        Ok(api::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        })
    }
}
