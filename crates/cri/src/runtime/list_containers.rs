//! `ListContainers`.

use crate::api::ListContainersRequest;
use crate::validate::plain_request;

plain_request!(ListContainersRequest, "ListContainers", read_only = true);
