//! `RemovePodSandbox`.

use crate::api::RemovePodSandboxRequest;
use crate::validate::id_request;

id_request!(
    RemovePodSandboxRequest,
    "RemovePodSandbox",
    pod_sandbox_id,
    pod,
    read_only = false
);
