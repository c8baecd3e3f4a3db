//! `StartContainer`.

use crate::api::StartContainerRequest;
use crate::validate::id_request;

id_request!(
    StartContainerRequest,
    "StartContainer",
    container_id,
    container,
    read_only = false
);
