//! `UpdateContainerResources`.

use crate::api::UpdateContainerResourcesRequest;
use crate::validate::id_request;

id_request!(
    UpdateContainerResourcesRequest,
    "UpdateContainerResources",
    container_id,
    container,
    read_only = false
);
