//! `Version`.

use crate::api::VersionRequest;
use crate::validate::plain_request;

plain_request!(VersionRequest, "Version", read_only = true);
