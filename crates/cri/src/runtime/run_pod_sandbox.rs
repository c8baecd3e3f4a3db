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
}
