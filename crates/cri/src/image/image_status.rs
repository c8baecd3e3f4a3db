//! `ImageStatus`.

use crate::api::ImageStatusRequest;
use crate::validate::{Request, RequestError, require, require_some};

const METHOD: &str = "ImageStatus";

impl Request for ImageStatusRequest {
    const METHOD: &'static str = METHOD;
    const READ_ONLY: bool = true;

    fn validate(&self) -> Result<(), RequestError> {
        require_some(METHOD, "image", self.image.as_ref())?;
        require(
            METHOD,
            "image.image",
            self.image.as_ref().map(|i| i.image.as_str()).unwrap_or(""),
        )
    }
}
