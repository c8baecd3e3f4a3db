//! `StreamPodSandboxes`: the list RPC's result streamed in pieces (see [`crate::stream_list`]).

use crate::api::StreamPodSandboxesRequest;
use crate::validate::plain_request;

plain_request!(
    StreamPodSandboxesRequest,
    "StreamPodSandboxes",
    read_only = true
);
