//! Talking to registries: one oci-client per endpoint for the token exchange and the
//! config, manifests fetched by skiff's own request so their size limit holds while
//! the body is read, layer blobs by skiff's own request so they are hashed once (by
//! the pull pipeline); everything verified, errors classified.

use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::sync::OnceCell;

use crate::digest::Digest;
use crate::error::{ImageError, Kind};
use crate::hosts::Endpoint;

/// Largest manifest or index skiff accepts.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config skiff accepts.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Media types accepted for manifests and indexes.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Network timeouts of a registry client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting.
    pub connect: Duration,
    /// Between two reads of a response body (a stalled download fails after this).
    pub read: Duration,
}

/// A client bound to one endpoint, and the reference as that endpoint is asked for it.
pub struct Remote {
    /// The oci-client.
    pub client: Client,
    /// The reference, with the mirror set when the endpoint is a mirror.
    pub reference: Reference,
    /// The endpoint's host, for errors.
    pub host: String,
    /// The requested reference, for errors.
    pub name: String,
    /// Credentials.
    pub auth: RegistryAuth,
    /// skiff's own HTTP client for manifests and layers (same TLS, timeouts and user
    /// agent).
    http: reqwest::Client,
    /// `http` or `https`.
    scheme: &'static str,
    /// The bearer token for this repository, once asked (`None`: none needed).
    token: OnceCell<Option<String>>,
}

impl Remote {
    /// A client for `endpoint` asking for `reference`.
    pub fn new(
        endpoint: &Endpoint,
        reference: &Reference,
        auth: &RegistryAuth,
        timeouts: Timeouts,
    ) -> Result<Remote, ImageError> {
        let protocol = if endpoint.plain_http {
            ClientProtocol::HttpsExcept(vec![endpoint.host.clone()])
        } else {
            ClientProtocol::Https
        };
        let mut certs = Vec::new();
        let mut http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(endpoint.skip_verify)
            .read_timeout(timeouts.read)
            .connect_timeout(timeouts.connect)
            .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")));
        for ca in &endpoint.ca {
            let data = std::fs::read(ca).map_err(crate::error::io("read CA", ca))?;
            let cert = reqwest::Certificate::from_pem(&data).map_err(|e| ImageError::Registry {
                reference: reference.whole(),
                endpoint: endpoint.host.clone(),
                message: format!("CA certificate {}: {e}", ca.display()),
                kind: Kind::FailedPrecondition,
            })?;
            http = http.add_root_certificate(cert);
            certs.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let http = http.build().map_err(|e| ImageError::Registry {
            reference: reference.whole(),
            endpoint: endpoint.host.clone(),
            message: format!("HTTP client: {e}"),
            kind: Kind::FailedPrecondition,
        })?;
        let config = ClientConfig {
            protocol,
            accept_invalid_certificates: endpoint.skip_verify,
            extra_root_certificates: certs,
            platform_resolver: None,
            read_timeout: Some(timeouts.read),
            connect_timeout: Some(timeouts.connect),
            user_agent: concat!("skiff/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let mut r = reference.clone();
        if endpoint.mirror {
            r.set_mirror_registry(endpoint.host.clone());
        }
        Ok(Remote {
            client: Client::new(config),
            reference: r,
            host: endpoint.host.clone(),
            name: reference.whole(),
            auth: auth.clone(),
            http,
            scheme: if endpoint.plain_http { "http" } else { "https" },
            token: OnceCell::new(),
        })
    }

    /// Classify an oci-client error into an [`ImageError`].
    pub fn error(&self, e: OciDistributionError) -> ImageError {
        let kind = match &e {
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => Kind::Unauthenticated,
            OciDistributionError::ImageManifestNotFoundError(_) => Kind::NotFound,
            OciDistributionError::ServerError { code, .. } => status_kind(*code),
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope_kind(envelope).unwrap_or(Kind::Unavailable)
            }
            _ => Kind::Unavailable,
        };
        ImageError::Registry {
            reference: self.name.clone(),
            endpoint: self.host.clone(),
            message: e.to_string(),
            kind,
        }
    }

    /// Fetch a manifest or index; verify its digest if the reference (or `digest`) names one.
    pub async fn manifest(&self, digest: Option<&Digest>) -> Result<(Vec<u8>, Digest), ImageError> {
        let reference = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_string()),
            None => self.reference.clone(),
        };
        let (bytes, header) = self.manifest_body(&reference).await?;
        let actual = Digest::of(&bytes);
        // The digest asked for, and the one the registry announced (when it is a
        // sha256: skiff computes no other).
        let announced = header.as_deref().filter(|h| h.starts_with("sha256:"));
        for expected in [reference.digest(), announced].into_iter().flatten() {
            if expected != actual.as_str() {
                return Err(ImageError::Mismatch {
                    reference: self.name.clone(),
                    what: "manifest digest".into(),
                    expected: expected.into(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok((bytes, actual))
    }

    /// The bearer token for pulling from this repository: asked once per remote
    /// through oci-client, which keeps it for the blob requests that follow.
    async fn bearer(&self) -> Result<Option<String>, ImageError> {
        self.token
            .get_or_try_init(|| async {
                self.client
                    .auth(&self.reference, &self.auth, RegistryOperation::Pull)
                    .await
                    .map_err(|e| self.error(e))
            })
            .await
            .cloned()
    }

    /// A GET of `path` (after `/v2/<repository>/`) on this endpoint, authorized as
    /// oci-client would: its bearer token for the repository, or basic credentials.
    async fn get(
        &self,
        reference: &Reference,
        path: &str,
    ) -> Result<(String, reqwest::RequestBuilder), ImageError> {
        let registry = reference.resolve_registry();
        let mut url = format!(
            "{}://{registry}/v2/{}/{path}",
            self.scheme,
            reference.repository(),
        );
        if let Some(ns) = reference.namespace() {
            url.push_str("?ns=");
            url.push_str(ns);
        }
        let mut req = self.http.get(&url);
        match (self.bearer().await?, &self.auth) {
            (Some(token), _) => req = req.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => {
                req = req.basic_auth(user, Some(password));
            }
            (None, _) => {}
        }
        Ok((url, req))
    }

    /// An error answer to a GET of `url`: its status and the start of its body.
    async fn refused(&self, url: &str, mut res: reqwest::Response) -> ImageError {
        let status = res.status();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = res.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= 4096 {
                body.truncate(4096);
                break;
            }
        }
        ImageError::Registry {
            reference: self.name.clone(),
            endpoint: self.host.clone(),
            message: format!(
                "GET {url}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ),
            kind: error_kind(status.as_u16(), &body),
        }
    }

    /// Start downloading the layer blob `digest`: its body as a stream of chunks,
    /// unverified (the pull pipeline hashes it; oci-client's own stream would hash
    /// every byte a second time). A redirect to another host (blob storage) is
    /// followed without the credentials.
    pub async fn layer_stream(
        &self,
        digest: &Digest,
    ) -> Result<impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + use<>, ImageError>
    {
        let (url, req) = self
            .get(&self.reference, &format!("blobs/{digest}"))
            .await?;
        let res = req.send().await.map_err(|e| ImageError::Registry {
            reference: self.name.clone(),
            endpoint: self.host.clone(),
            message: format!("GET {url}: {}", error_chain(&e)),
            kind: Kind::Unavailable,
        })?;
        if !res.status().is_success() {
            return Err(self.refused(&url, res).await);
        }
        Ok(res
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| std::io::Error::other(error_chain(&e)))))
    }

    /// GET a manifest, reading at most [`MAX_MANIFEST_BYTES`] of its body: a
    /// registry announcing or sending more is refused as soon as it is seen, so a
    /// hostile one cannot make skiffd buffer an unbounded response. The body and the
    /// `Docker-Content-Digest` header, if any.
    async fn manifest_body(
        &self,
        reference: &Reference,
    ) -> Result<(Vec<u8>, Option<String>), ImageError> {
        let tag_or_digest = reference
            .digest()
            .or_else(|| reference.tag())
            .unwrap_or("latest");
        let (url, req) = self
            .get(reference, &format!("manifests/{tag_or_digest}"))
            .await?;
        let failed = |message: String| ImageError::Registry {
            reference: self.name.clone(),
            endpoint: self.host.clone(),
            message,
            kind: Kind::Unavailable,
        };
        let mut res = req
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES.join(", "))
            .send()
            .await
            .map_err(|e| failed(format!("GET {url}: {}", error_chain(&e))))?;
        if !res.status().is_success() {
            return Err(self.refused(&url, res).await);
        }
        let too_large = |size: u64| ImageError::TooLarge {
            reference: self.name.clone(),
            what: "manifest",
            size,
            limit: MAX_MANIFEST_BYTES,
        };
        if let Some(len) = res.content_length()
            && len > MAX_MANIFEST_BYTES
        {
            return Err(too_large(len));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| failed(format!("reading manifest from {url}: {}", error_chain(&e))))?
        {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(too_large(body.len() as u64));
            }
        }
        let header = res
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((body, header))
    }

    /// Fetch a small blob (the config) into memory, with a size limit, verified.
    pub async fn small_blob(
        &self,
        digest: &Digest,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, ImageError> {
        if size > limit {
            return Err(ImageError::TooLarge {
                reference: self.name.clone(),
                what: "config",
                size,
                limit,
            });
        }
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, digest.as_str())
            .await
            .map_err(|e| self.error(e))?
            .stream;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ImageError::Registry {
                reference: self.name.clone(),
                endpoint: self.host.clone(),
                message: format!("reading blob {digest}: {e}"),
                kind: Kind::Unavailable,
            })?;
            out.extend_from_slice(&chunk);
            if out.len() as u64 > limit {
                return Err(ImageError::TooLarge {
                    reference: self.name.clone(),
                    what: "config",
                    size: out.len() as u64,
                    limit,
                });
            }
        }
        let actual = Digest::of(&out);
        if &actual != digest {
            return Err(ImageError::Mismatch {
                reference: self.name.clone(),
                what: format!("blob {digest} digest"),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(out)
    }
}

/// The class of a registry's error answer: the codes of its error envelope when it
/// sent one (the distribution spec's `{"errors": [{"code": …}]}`), else its status.
fn error_kind(status: u16, body: &[u8]) -> Kind {
    serde_json::from_slice::<OciEnvelope>(body)
        .ok()
        .and_then(|e| envelope_kind(&e))
        .unwrap_or_else(|| status_kind(status))
}

/// The class an error envelope's codes give, if any of them says.
fn envelope_kind(envelope: &OciEnvelope) -> Option<Kind> {
    let any = |f: fn(&OciErrorCode) -> bool| envelope.errors.iter().any(|e| f(&e.code));
    if any(|c| {
        matches!(
            c,
            OciErrorCode::ManifestUnknown
                | OciErrorCode::BlobUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::NotFound
        )
    }) {
        Some(Kind::NotFound)
    } else if any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
        Some(Kind::Unauthenticated)
    } else {
        None
    }
}

/// The class of an HTTP error status from a registry.
fn status_kind(status: u16) -> Kind {
    match status {
        401 | 403 => Kind::Unauthenticated,
        404 => Kind::NotFound,
        _ => Kind::Unavailable,
    }
}

/// An error and its sources, joined (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_are_classified_by_envelope_then_status() {
        let env = |code: &str| format!(r#"{{"errors":[{{"code":"{code}","message":"x"}}]}}"#);
        assert_eq!(
            error_kind(404, env("MANIFEST_UNKNOWN").as_bytes()),
            Kind::NotFound
        );
        assert_eq!(
            error_kind(400, env("NAME_UNKNOWN").as_bytes()),
            Kind::NotFound
        );
        assert_eq!(
            error_kind(400, env("DENIED").as_bytes()),
            Kind::Unauthenticated
        );
        assert_eq!(error_kind(403, b"forbidden"), Kind::Unauthenticated);
        assert_eq!(error_kind(404, b""), Kind::NotFound);
        assert_eq!(
            error_kind(500, env("UNKNOWN").as_bytes()),
            Kind::Unavailable
        );
        assert_eq!(error_kind(429, b""), Kind::Unavailable);
    }
}
