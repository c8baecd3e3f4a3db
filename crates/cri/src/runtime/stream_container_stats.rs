//! `StreamContainerStats`: the list RPC's result streamed in pieces (see [`crate::stream_list`]).

use crate::api::StreamContainerStatsRequest;
use crate::validate::plain_request;

plain_request!(
    StreamContainerStatsRequest,
    "StreamContainerStats",
    read_only = true
);
