//! `Status`.

use crate::api::StatusRequest;
use crate::validate::plain_request;

plain_request!(StatusRequest, "Status", read_only = true);
