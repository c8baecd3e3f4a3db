//! `StreamImages`: `ListImages` streamed in pieces (see [`crate::stream_list`]).

use crate::api::StreamImagesRequest;
use crate::validate::plain_request;

plain_request!(StreamImagesRequest, "StreamImages", read_only = true);
