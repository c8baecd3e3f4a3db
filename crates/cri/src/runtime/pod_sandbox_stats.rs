//! `PodSandboxStats`.

use crate::api::PodSandboxStatsRequest;
use crate::validate::id_request;

id_request!(
    PodSandboxStatsRequest,
    "PodSandboxStats",
    pod_sandbox_id,
    pod,
    read_only = true
);
