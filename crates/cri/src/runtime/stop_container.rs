//! `StopContainer`.

use crate::api::StopContainerRequest;
use crate::validate::id_request;

id_request!(
    StopContainerRequest,
    "StopContainer",
    container_id,
    container,
    read_only = false
);
