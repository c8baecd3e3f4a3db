//! `Attach`.

use crate::api::AttachRequest;
use crate::validate::{Ids, Request, RequestError, require};

const METHOD: &str = "Attach";

impl Request for AttachRequest {
    const METHOD: &'static str = METHOD;

    fn ids(&self) -> Ids<'_> {
        Ids::container(&self.container_id)
    }

    fn validate(&self) -> Result<(), RequestError> {
        require(METHOD, "container_id", &self.container_id)?;
        if !(self.stdin || self.stdout || self.stderr) {
            return Err(RequestError::Invalid {
                method: METHOD,
                field: "stdin/stdout/stderr",
                reason: "one of stdin, stdout or stderr must be set".into(),
            });
        }
        Ok(())
    }
}
