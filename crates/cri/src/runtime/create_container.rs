//! `CreateContainer`.

use crate::api::CreateContainerRequest;
use crate::validate::{Ids, Request, RequestError, require, require_some};

const METHOD: &str = "CreateContainer";

impl Request for CreateContainerRequest {
    const METHOD: &'static str = METHOD;

    fn ids(&self) -> Ids<'_> {
        Ids::pod(&self.pod_sandbox_id)
    }

    fn validate(&self) -> Result<(), RequestError> {
        require(METHOD, "pod_sandbox_id", &self.pod_sandbox_id)?;
        require_some(METHOD, "config", self.config.as_ref())?;
        let metadata = self.config.as_ref().and_then(|c| c.metadata.as_ref());
        require_some(METHOD, "config.metadata", metadata)?;
        if let Some(md) = metadata {
            require(METHOD, "config.metadata.name", &md.name)?;
        }
        let image = self.config.as_ref().and_then(|c| c.image.as_ref());
        require_some(METHOD, "config.image", image)?;
        if let Some(image) = image {
            require(METHOD, "config.image.image", &image.image)?;
        }
        Ok(())
    }
}
