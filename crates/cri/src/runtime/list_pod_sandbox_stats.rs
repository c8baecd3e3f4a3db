//! `ListPodSandboxStats`.

use crate::api::ListPodSandboxStatsRequest;
use crate::validate::plain_request;

plain_request!(
    ListPodSandboxStatsRequest,
    "ListPodSandboxStats",
    read_only = true
);
