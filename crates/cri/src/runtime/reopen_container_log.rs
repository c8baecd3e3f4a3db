//! `ReopenContainerLog`.

use crate::api::ReopenContainerLogRequest;
use crate::validate::id_request;

id_request!(
    ReopenContainerLogRequest,
    "ReopenContainerLog",
    container_id,
    container,
    read_only = false
);
