//! `GetContainerEvents`.

use crate::api::GetEventsRequest;
use crate::validate::plain_request;

plain_request!(GetEventsRequest, "GetContainerEvents", read_only = true);
