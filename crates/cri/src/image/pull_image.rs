//! `PullImage`.

use crate::api::PullImageRequest;
use crate::validate::{Request, RequestError, require, require_some};

const METHOD: &str = "PullImage";

impl Request for PullImageRequest {
    const METHOD: &'static str = METHOD;

    fn validate(&self) -> Result<(), RequestError> {
        require_some(METHOD, "image", self.image.as_ref())?;
        require(
            METHOD,
            "image.image",
            self.image.as_ref().map(|i| i.image.as_str()).unwrap_or(""),
        )
    }
}
