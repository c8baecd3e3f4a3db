//! `CreateContainer`.

use crate::api::CreateContainerRequest;
use crate::validate::{Ids, Request, RequestError, require, require_some};

const METHOD: &str = "CreateContainer";

impl Request for CreateContainerRequest {
    const METHOD: &'static str = METHOD;

    fn ids(&self) -> Ids<'_> {
        Ids::pod(&self.pod_sandbox_id)
    }

    fn validate(&self) -> Result<(), RequestError> {
        require(METHOD, "pod_sandbox_id", &self.pod_sandbox_id)?;
        require_some(METHOD, "config", self.config.as_ref())?;
        let metadata = self.config.as_ref().and_then(|c| c.metadata.as_ref());
        require_some(METHOD, "config.metadata", metadata)?;
        if let Some(md) = metadata {
            require(METHOD, "config.metadata.name", &md.name)?;
        }
        let image = self.config.as_ref().and_then(|c| c.image.as_ref());
        require_some(METHOD, "config.image", image)?;
        if let Some(image) = image {
            require(METHOD, "config.image.image", &image.image)?;
        }
        if let Some(c) = self.config.as_ref()
            && crate::api::Signal::try_from(c.stop_signal).is_err()
        {
            return Err(RequestError::Invalid {
                method: METHOD,
                field: "config.stop_signal",
                reason: format!("{} is not a CRI Signal value", c.stop_signal),
            });
        }
        for m in self.config.iter().flat_map(|c| &c.mounts) {
            validate_image_volume(m)?;
        }
        for kv in self.config.iter().flat_map(|c| &c.envs) {
            // An OCI spec holds the environment as JSON strings.
            if std::str::from_utf8(&kv.value).is_err() {
                return Err(RequestError::Invalid {
                    method: METHOD,
                    field: "config.envs.value",
                    reason: format!("the value of {:?} is not valid UTF-8", kv.key),
                });
            }
        }
        Ok(())
    }
}

/// An image volume (KEP 4639) is read-only, has no host path, and its `image_sub_path`
/// is relative and stays inside the image (no `..`). A sub path needs an image.
fn validate_image_volume(m: &crate::api::Mount) -> Result<(), RequestError> {
    let invalid = |field, reason: String| {
        Err(RequestError::Invalid {
            method: METHOD,
            field,
            reason: format!("mount at {:?}: {reason}", m.container_path),
        })
    };
    let is_image = m.image.as_ref().is_some_and(|i| !i.image.is_empty());
    if !is_image {
        if !m.image_sub_path.is_empty() {
            return invalid(
                "config.mounts.image_sub_path",
                "image_sub_path is only valid for an image volume".into(),
            );
        }
        return Ok(());
    }
    if !m.host_path.is_empty() {
        return invalid(
            "config.mounts.host_path",
            "host_path and image are mutually exclusive".into(),
        );
    }
    if !m.readonly {
        return invalid(
            "config.mounts.readonly",
            "an image volume must be read-only".into(),
        );
    }
    let sub = &m.image_sub_path;
    if sub.starts_with('/') || sub.split('/').any(|c| c == "..") || sub.contains('\0') {
        return invalid(
            "config.mounts.image_sub_path",
            format!("{sub:?} must be a relative path inside the image, without '..'"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ContainerConfig, ContainerMetadata, ImageSpec, Mount};

    fn req(mounts: Vec<Mount>) -> CreateContainerRequest {
        CreateContainerRequest {
            pod_sandbox_id: "p".into(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "c".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                mounts,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn image_mount(readonly: bool, sub: &str) -> Mount {
        Mount {
            container_path: "/mnt".into(),
            readonly,
            image: Some(ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            image_sub_path: sub.into(),
            ..Default::default()
        }
    }

    #[test]
    fn image_volumes_are_read_only_and_sub_paths_stay_inside() {
        req(vec![image_mount(true, "")]).validate().unwrap();
        req(vec![image_mount(true, "etc/ssl")]).validate().unwrap();
        let err = |m| req(vec![m]).validate().unwrap_err().to_string();
        assert!(err(image_mount(false, "")).contains("config.mounts.readonly"));
        for bad in ["/etc", "../x", "a/../../b", ".."] {
            assert!(
                err(image_mount(true, bad)).contains("image_sub_path"),
                "{bad}"
            );
        }
        let mut host = image_mount(true, "");
        host.host_path = "/tmp".into();
        assert!(err(host).contains("host_path"));
        let plain = Mount {
            container_path: "/m".into(),
            host_path: "/tmp".into(),
            image_sub_path: "etc".into(),
            ..Default::default()
        };
        assert!(err(plain).contains("image_sub_path"));
    }

    #[test]
    fn unknown_stop_signal_and_non_utf8_env_are_refused() {
        let mut r = req(vec![]);
        r.config.as_mut().unwrap().stop_signal = 99;
        assert!(
            r.validate()
                .unwrap_err()
                .to_string()
                .contains("stop_signal")
        );
        let mut r = req(vec![]);
        r.config.as_mut().unwrap().envs = vec![crate::api::KeyValue {
            key: "A".into(),
            value: vec![0xff, 0xfe],
        }];
        assert!(r.validate().unwrap_err().to_string().contains("envs"));
    }
}
