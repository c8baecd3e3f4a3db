//! `ListMetricDescriptors`.

use crate::api::ListMetricDescriptorsRequest;
use crate::validate::plain_request;

plain_request!(
    ListMetricDescriptorsRequest,
    "ListMetricDescriptors",
    read_only = true
);
