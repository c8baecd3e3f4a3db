//! A small blocking client for the OCI distribution API over plain HTTP,
//! enough to push [`Image`]s and indexes to a test [`crate::Registry`] and to
//! read manifests back.
//!
//! Sockets are opened on the calling thread, so when the registry runs in a
//! [`crate::NetNs`], call these from inside it:
//!
//! ```no_run
//! # fn t(ns: &skiff_testkit::NetNs, reg: &skiff_testkit::Registry, image: &skiff_testkit::Image)
//! # -> Result<(), skiff_testkit::PushError> {
//! ns.run(|| skiff_testkit::push(&reg.host(), "library/busybox", "latest", image))?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::image::{Image, MEDIA_TYPE_OCI_INDEX};

/// Errors talking to a registry. Each names the request.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The request could not be sent or its answer not read.
    #[error("{method} {url}: {source}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// Full URL.
        url: String,
        /// ureq's error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// Full URL.
        url: String,
        /// The status code received.
        status: u16,
        /// The response body (truncated), usually the registry's error JSON.
        body: String,
    },
    /// An upload was accepted without a `Location` to continue at.
    #[error("POST {url}: 202 without a Location header")]
    MissingLocation {
        /// The upload-start URL.
        url: String,
    },
}

/// A manifest fetched with [`RegistryClient::get_manifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedManifest {
    /// The body.
    pub bytes: Vec<u8>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Docker-Content-Digest` header.
    pub digest: Option<String>,
}

/// Every manifest media type, for `Accept` headers.
pub const ACCEPT_ALL_MANIFESTS: &[&str] = &[
    crate::image::MEDIA_TYPE_OCI_MANIFEST,
    crate::image::MEDIA_TYPE_OCI_INDEX,
    crate::image::MEDIA_TYPE_DOCKER_MANIFEST,
    crate::image::MEDIA_TYPE_DOCKER_MANIFEST_LIST,
];

const MAX_ERROR_BODY: u64 = 64 * 1024;
const MAX_MANIFEST: u64 = 16 * 1024 * 1024;

/// A client for one registry, `http://<host>`.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    agent: ureq::Agent,
    base: String,
}

impl RegistryClient {
    /// A client for `host` (`127.0.0.1:5000`), plain HTTP, no proxy, with a
    /// 5 minute limit per request.
    pub fn new(host: &str) -> RegistryClient {
        RegistryClient::with_timeout(host, Duration::from_secs(300))
    }

    /// Like [`RegistryClient::new`] with a per-request time limit.
    pub fn with_timeout(host: &str, timeout: Duration) -> RegistryClient {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .build();
        RegistryClient {
            agent: ureq::Agent::new_with_config(config),
            base: format!("http://{host}"),
        }
    }

    /// `http://<host>`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v2/` answered 200.
    pub fn ping(&self) -> Result<(), PushError> {
        let url = format!("{}/v2/", self.base);
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(transport("GET", &url))?;
        expect_status("GET", &url, resp, &[200]).map(drop)
    }

    /// Whether `HEAD /v2/<repo>/blobs/<digest>` answers 200.
    pub fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool, PushError> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self
            .agent
            .head(&url)
            .call()
            .map_err(transport("HEAD", &url))?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => expect_status("HEAD", &url, resp, &[200]).map(|_| true),
        }
    }

    /// Uploads a blob unless the registry already has it: `POST` an upload
    /// session, then one monolithic `PUT <location>?digest=<digest>`.
    pub fn push_blob(&self, repo: &str, digest: &str, bytes: &[u8]) -> Result<(), PushError> {
        if self.blob_exists(repo, digest)? {
            return Ok(());
        }
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let resp = self
            .agent
            .post(&start)
            .send_empty()
            .map_err(transport("POST", &start))?;
        let resp = expect_status("POST", &start, resp, &[202])?;
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| PushError::MissingLocation { url: start.clone() })?;
        let mut url = self.resolve(location);
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("digest=");
        url.push_str(digest);
        let resp = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .map_err(transport("PUT", &url))?;
        expect_status("PUT", &url, resp, &[201]).map(drop)
    }

    /// `PUT /v2/<repo>/manifests/<reference>` (a tag or a digest).
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), PushError> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let resp = self
            .agent
            .put(&url)
            .header("Content-Type", media_type)
            .send(bytes)
            .map_err(transport("PUT", &url))?;
        expect_status("PUT", &url, resp, &[201]).map(drop)
    }

    /// Pushes the image's blobs, then its manifest under `tag`.
    pub fn push(&self, repo: &str, tag: &str, image: &Image) -> Result<(), PushError> {
        for (digest, bytes) in image.blobs() {
            self.push_blob(repo, digest, bytes)?;
        }
        self.put_manifest(repo, tag, &image.manifest_media_type, &image.manifest)
    }

    /// Pushes every child (blobs, manifest by digest), then `index` under
    /// `tag`, with the media type its `mediaType` field names (OCI index if
    /// absent).
    pub fn push_index(
        &self,
        repo: &str,
        tag: &str,
        index: &[u8],
        children: &[&Image],
    ) -> Result<(), PushError> {
        for child in children {
            self.push(repo, &child.manifest_digest, child)?;
        }
        let media_type = serde_json::from_slice::<serde_json::Value>(index)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| MEDIA_TYPE_OCI_INDEX.to_owned());
        self.put_manifest(repo, tag, &media_type, index)
    }

    /// `GET /v2/<repo>/manifests/<reference>` with `Accept: <accept…>`.
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<FetchedManifest, PushError> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let mut req = self.agent.get(&url);
        if !accept.is_empty() {
            req = req.header("Accept", accept.join(", "));
        }
        let resp = req.call().map_err(transport("GET", &url))?;
        let mut resp = expect_status("GET", &url, resp, &[200])?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type");
        let digest = header("docker-content-digest");
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(transport("GET", &url))?;
        Ok(FetchedManifest {
            bytes,
            content_type,
            digest,
        })
    }

    /// `GET /v2/<repo>/blobs/<digest>`, whole blob in memory.
    pub fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>, PushError> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(transport("GET", &url))?;
        let mut resp = expect_status("GET", &url, resp, &[200])?;
        resp.body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(transport("GET", &url))
    }

    /// Turns a `Location` header into a full URL.
    fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        }
    }
}

/// Pushes `image` to `http://<registry_host>/v2/<repo>` and tags it `tag`.
/// Call inside [`crate::NetNs::run`] when the registry lives in a namespace.
pub fn push(registry_host: &str, repo: &str, tag: &str, image: &Image) -> Result<(), PushError> {
    RegistryClient::new(registry_host).push(repo, tag, image)
}

/// Pushes `children` (by digest) and then the `index` bytes as `tag`.
/// Call inside [`crate::NetNs::run`] when the registry lives in a namespace.
pub fn push_index(
    registry_host: &str,
    repo: &str,
    tag: &str,
    index: &[u8],
    children: &[&Image],
) -> Result<(), PushError> {
    RegistryClient::new(registry_host).push_index(repo, tag, index, children)
}

fn transport(method: &'static str, url: &str) -> impl FnOnce(ureq::Error) -> PushError {
    let url = url.to_owned();
    move |source| PushError::Transport {
        method,
        url,
        source: Box::new(source),
    }
}

type Response = ureq::http::Response<ureq::Body>;

fn expect_status(
    method: &'static str,
    url: &str,
    mut resp: Response,
    ok: &[u16],
) -> Result<Response, PushError> {
    let status = resp.status().as_u16();
    if ok.contains(&status) {
        return Ok(resp);
    }
    let body = match resp
        .body_mut()
        .with_config()
        .limit(MAX_ERROR_BODY)
        .read_to_vec()
    {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(e) => format!("<body unreadable: {e}>"),
    };
    Err(PushError::Status {
        method,
        url: url.to_owned(),
        status,
        body,
    })
}
