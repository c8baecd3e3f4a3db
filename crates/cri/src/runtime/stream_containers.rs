//! `StreamContainers`: the list RPC's result streamed in pieces (see [`crate::stream_list`]).

use crate::api::StreamContainersRequest;
use crate::validate::plain_request;

plain_request!(
    StreamContainersRequest,
    "StreamContainers",
    read_only = true
);
