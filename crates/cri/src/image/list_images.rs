//! `ListImages`.

use crate::api::ListImagesRequest;
use crate::validate::plain_request;

plain_request!(ListImagesRequest, "ListImages", read_only = true);
