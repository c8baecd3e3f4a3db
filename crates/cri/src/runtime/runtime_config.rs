//! `RuntimeConfig`.

use crate::api::RuntimeConfigRequest;
use crate::validate::plain_request;

plain_request!(RuntimeConfigRequest, "RuntimeConfig", read_only = true);
