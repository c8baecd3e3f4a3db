//! `RemoveContainer`.

use crate::api::RemoveContainerRequest;
use crate::validate::id_request;

id_request!(
    RemoveContainerRequest,
    "RemoveContainer",
    container_id,
    container,
    read_only = false
);
