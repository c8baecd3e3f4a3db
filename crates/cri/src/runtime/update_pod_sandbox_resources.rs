//! `UpdatePodSandboxResources`.

use crate::api::UpdatePodSandboxResourcesRequest;
use crate::validate::id_request;

id_request!(
    UpdatePodSandboxResourcesRequest,
    "UpdatePodSandboxResources",
    pod_sandbox_id,
    pod,
    read_only = false
);
