//! `Exec`.

use crate::api::ExecRequest;
use crate::validate::{Ids, Request, RequestError, require};

const METHOD: &str = "Exec";

impl Request for ExecRequest {
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
