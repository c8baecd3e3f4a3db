//! `ExecSync`.

use crate::api::ExecSyncRequest;
use crate::validate::{Ids, Request, RequestError, require};

const METHOD: &str = "ExecSync";

impl Request for ExecSyncRequest {
    const METHOD: &'static str = METHOD;

    fn ids(&self) -> Ids<'_> {
        Ids::container(&self.container_id)
    }

    fn validate(&self) -> Result<(), RequestError> {
        require(METHOD, "container_id", &self.container_id)?;
        if self.cmd.is_empty() {
            return Err(RequestError::Missing {
                method: METHOD,
                field: "cmd",
            });
        }
        if self.timeout < 0 {
            return Err(RequestError::Invalid {
                method: METHOD,
                field: "timeout",
                reason: format!("{} seconds is negative", self.timeout),
            });
        }
        Ok(())
    }
}
