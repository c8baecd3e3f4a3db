//! `ListPodSandboxMetrics`.

use crate::api::ListPodSandboxMetricsRequest;
use crate::validate::plain_request;

plain_request!(
    ListPodSandboxMetricsRequest,
    "ListPodSandboxMetrics",
    read_only = true
);
