//! `ListContainerStats`.

use crate::api::ListContainerStatsRequest;
use crate::validate::plain_request;

plain_request!(
    ListContainerStatsRequest,
    "ListContainerStats",
    read_only = true
);
