//! `PortForward`.

use crate::api::PortForwardRequest;
use crate::validate::{Ids, Request, RequestError, require};

const METHOD: &str = "PortForward";

impl Request for PortForwardRequest {
    const METHOD: &'static str = METHOD;

    fn ids(&self) -> Ids<'_> {
        Ids::pod(&self.pod_sandbox_id)
    }

    fn validate(&self) -> Result<(), RequestError> {
        require(METHOD, "pod_sandbox_id", &self.pod_sandbox_id)?;
        if let Some(port) = self.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(RequestError::Invalid {
                method: METHOD,
                field: "port",
                reason: format!("{port} is not a TCP port"),
            });
        }
        Ok(())
    }
}
