//! `ImageFsInfo`.

use crate::api::ImageFsInfoRequest;
use crate::validate::plain_request;

plain_request!(ImageFsInfoRequest, "ImageFsInfo", read_only = true);
