//! `UpdateRuntimeConfig`.

use crate::api::UpdateRuntimeConfigRequest;
use crate::validate::{Request, RequestError};

const METHOD: &str = "UpdateRuntimeConfig";

impl Request for UpdateRuntimeConfigRequest {
    const METHOD: &'static str = METHOD;

    fn validate(&self) -> Result<(), RequestError> {
        // An empty request is allowed: the kubelet sends one before it knows a CIDR.
        let cidr = self
            .runtime_config
            .as_ref()
            .and_then(|c| c.network_config.as_ref())
            .map(|n| n.pod_cidr.as_str())
            .unwrap_or("");
        for part in cidr.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let valid = part.split_once('/').is_some_and(|(ip, len)| {
                ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok()
            });
            if !valid {
                return Err(RequestError::Invalid {
                    method: METHOD,
                    field: "runtime_config.network_config.pod_cidr",
                    reason: format!("{part:?} is not a CIDR"),
                });
            }
        }
        Ok(())
    }
}
