//! `ContainerStatus`.

use crate::api::ContainerStatusRequest;
use crate::validate::id_request;

id_request!(
    ContainerStatusRequest,
    "ContainerStatus",
    container_id,
    container,
    read_only = true
);
