//! `ContainerStats`.

use crate::api::ContainerStatsRequest;
use crate::validate::id_request;

id_request!(
    ContainerStatsRequest,
    "ContainerStats",
    container_id,
    container,
    read_only = true
);
