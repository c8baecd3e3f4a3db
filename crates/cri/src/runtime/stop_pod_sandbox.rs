//! `StopPodSandbox`.

use crate::api::StopPodSandboxRequest;
use crate::validate::id_request;

id_request!(
    StopPodSandboxRequest,
    "StopPodSandbox",
    pod_sandbox_id,
    pod,
    read_only = false
);
