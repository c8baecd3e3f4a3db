//! `CheckpointContainer`.

use crate::api::CheckpointContainerRequest;
use crate::validate::id_request;

id_request!(
    CheckpointContainerRequest,
    "CheckpointContainer",
    container_id,
    container,
    read_only = false
);
