//! `RunPodSandbox`.

use crate::api::RunPodSandboxRequest;
use crate::validate::{Ids, Request, RequestError, require, require_some};

const METHOD: &str = "RunPodSandbox";

impl Request for RunPodSandboxRequest {
    const METHOD: &'static str = METHOD;

    fn ids(&self) -> Ids<'_> {
        Ids::default()
    }

    fn validate(&self) -> Result<(), RequestError> {
        require_some(METHOD, "config", self.config.as_ref())?;
        let config = self.config.as_ref().map(|c| c.metadata.as_ref());
        require_some(METHOD, "config.metadata", config.flatten())?;
        if let Some(c) = self.config.as_ref() {
            validate_hostname(&c.hostname)?;
        }
        if let Some(md) = config.flatten() {
            require(METHOD, "config.metadata.name", &md.name)?;
            require(METHOD, "config.metadata.namespace", &md.namespace)?;
            if md.attempt > 1 << 20 {
                return Err(RequestError::Invalid {
                    method: METHOD,
                    field: "config.metadata.attempt",
                    reason: format!("{} is not a plausible attempt number", md.attempt),
                });
            }
        }
        Ok(())
    }
}

/// The longest hostname the kernel takes (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;

/// An explicit hostname must be one the kernel can set: at most 64 bytes, no NUL.
/// (The kubelet truncates a pod's hostname to 63 bytes; other clients may not.)
fn validate_hostname(hostname: &str) -> Result<(), RequestError> {
    let reason = if hostname.len() > HOST_NAME_MAX {
        format!(
            "{} bytes is longer than a hostname may be ({HOST_NAME_MAX})",
            hostname.len()
        )
    } else if hostname.contains('\0') || hostname.contains('/') {
        format!("{hostname:?} contains a NUL or '/'")
    } else {
        return Ok(());
    };
    Err(RequestError::Invalid {
        method: METHOD,
        field: "config.hostname",
        reason,
    })
}

#[cfg(test)]
mod tests {
    use crate::api::{PodSandboxConfig, PodSandboxMetadata, RunPodSandboxRequest};
    use crate::validate::Request;

    #[test]
    fn requires_config_and_metadata() {
        let mut req = RunPodSandboxRequest::default();
        assert!(req.validate().unwrap_err().to_string().contains("`config`"));
        req.config = Some(PodSandboxConfig::default());
        assert!(req.validate().unwrap_err().to_string().contains("metadata"));
        req.config.as_mut().unwrap().metadata = Some(PodSandboxMetadata {
            name: "p".into(),
            namespace: "ns".into(),
            ..Default::default()
        });
        req.validate().unwrap();
    }

    #[test]
    fn hostname_at_and_past_the_kernel_limit() {
        let mut req = RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "p".repeat(300),
                    namespace: "ns".into(),
                    ..Default::default()
                }),
                hostname: "h".repeat(64),
                ..Default::default()
            }),
            ..Default::default()
        };
        req.validate().unwrap();
        req.config.as_mut().unwrap().hostname = "h".repeat(65);
        let err = req.validate().unwrap_err().to_string();
        assert!(err.contains("config.hostname"), "{err}");
        req.config.as_mut().unwrap().hostname = "a\0b".into();
        assert!(req.validate().is_err());
    }
}
