//! `ListPodSandbox`.

use crate::api::ListPodSandboxRequest;
use crate::validate::plain_request;

plain_request!(ListPodSandboxRequest, "ListPodSandbox", read_only = true);
