//! `PodSandboxStatus`.

use crate::api::PodSandboxStatusRequest;
use crate::validate::id_request;

id_request!(
    PodSandboxStatusRequest,
    "PodSandboxStatus",
    pod_sandbox_id,
    pod,
    read_only = true
);
