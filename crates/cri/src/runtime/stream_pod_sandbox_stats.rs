//! `StreamPodSandboxStats`: the list RPC's result streamed in pieces (see [`crate::stream_list`]).

use crate::api::StreamPodSandboxStatsRequest;
use crate::validate::plain_request;

plain_request!(
    StreamPodSandboxStatsRequest,
    "StreamPodSandboxStats",
    read_only = true
);
