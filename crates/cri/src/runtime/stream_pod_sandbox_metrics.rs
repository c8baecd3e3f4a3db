//! `StreamPodSandboxMetrics`: the list RPC's result streamed in pieces (see [`crate::stream_list`]).

use crate::api::StreamPodSandboxMetricsRequest;
use crate::validate::plain_request;

plain_request!(
    StreamPodSandboxMetricsRequest,
    "StreamPodSandboxMetrics",
    read_only = true
);
