//! Talking to registries: one oci-client per endpoint, manifests and configs fetched
//! with size limits and verified, errors classified.

use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

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
        for ca in &endpoint.ca {
            let data = std::fs::read(ca).map_err(crate::error::io("read CA", ca))?;
            certs.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
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
        })
    }

    /// Classify an oci-client error into an [`ImageError`].
    pub fn error(&self, e: OciDistributionError) -> ImageError {
        let kind = match &e {
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => Kind::Unauthenticated,
            OciDistributionError::ImageManifestNotFoundError(_) => Kind::NotFound,
            OciDistributionError::ServerError { code, .. } => match code {
                401 | 403 => Kind::Unauthenticated,
                404 => Kind::NotFound,
                _ => Kind::Unavailable,
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                if envelope.errors.iter().any(|err| {
                    matches!(
                        err.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    Kind::NotFound
                } else if envelope.errors.iter().any(|err| {
                    matches!(err.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)
                }) {
                    Kind::Unauthenticated
                } else {
                    Kind::Unavailable
                }
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
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| self.error(e))?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ImageError::TooLarge {
                reference: self.name.clone(),
                what: "manifest",
                size: bytes.len() as u64,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let actual = Digest::of(&bytes);
        if let Some(expected) = reference.digest()
            && expected != actual.as_str()
        {
            return Err(ImageError::Mismatch {
                reference: self.name.clone(),
                what: "manifest digest".into(),
                expected: expected.into(),
                actual: actual.to_string(),
            });
        }
        Ok((bytes.to_vec(), actual))
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
