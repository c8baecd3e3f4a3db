//! The container process: command line, working directory, environment, oom_score_adj.

use oci_spec::image::Config as ImageConfig;
use skiff_cri::api;

use super::SpecError;

/// The `PATH` a container gets when neither the image nor the CRI config sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The command line, with the Docker/containerd rules.
///
/// The CRI `command` replaces the image `Entrypoint`, the CRI `args` replace the image
/// `Cmd`; when the CRI config has a command but no args, the image `Cmd` is not used.
pub(crate) fn args(
    container: &api::ContainerConfig,
    image: Option<&ImageConfig>,
) -> Result<Vec<String>, SpecError> {
    let (mut command, mut args) = (container.command.clone(), container.args.clone());
    if command.is_empty() {
        if args.is_empty() {
            args = image.and_then(|c| c.cmd().clone()).unwrap_or_default();
        }
        command = image
            .and_then(|c| c.entrypoint().clone())
            .unwrap_or_default();
    }
    command.extend(args);
    if command.is_empty() {
        return Err(SpecError::NoCommand {
            container: container_name(container),
        });
    }
    Ok(command)
}

/// The working directory: the CRI `working_dir`, else the image `WorkingDir`, else `/`.
pub(crate) fn cwd(container: &api::ContainerConfig, image: Option<&ImageConfig>) -> String {
    if !container.working_dir.is_empty() {
        return container.working_dir.clone();
    }
    image
        .and_then(|c| c.working_dir().clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// The environment: a default `PATH`, then the image `Env`, then `HOSTNAME` (the pod
/// hostname, when there is one), then the CRI envs; a later entry replaces an earlier
/// one with the same key in place.
pub(crate) fn env(
    container: &api::ContainerConfig,
    image: Option<&ImageConfig>,
    hostname: &str,
) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH.to_string()];
    for e in image.and_then(|c| c.env().as_ref()).into_iter().flatten() {
        set_env(&mut env, e.clone());
    }
    if !hostname.is_empty() {
        set_env(&mut env, format!("HOSTNAME={hostname}"));
    }
    for kv in &container.envs {
        if kv.key.is_empty() {
            continue;
        }
        // CreateContainer's validation refused values that are not UTF-8.
        let value = String::from_utf8_lossy(&kv.value);
        set_env(&mut env, format!("{}={value}", kv.key));
    }
    env
}

/// Replaces the entry with the same key as `entry` or appends it. An entry without `=`
/// removes the key (Docker's convention for an unset variable).
fn set_env(env: &mut Vec<String>, entry: String) {
    let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
    let pos = env
        .iter()
        .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
    match (pos, entry.contains('=')) {
        (Some(i), true) => env[i] = entry,
        (Some(i), false) => {
            env.remove(i);
        }
        (None, true) => env.push(entry),
        (None, false) => {}
    }
}

/// The kubelet's `oom_score_adj`, clamped to what the host lets the runtime set.
pub(crate) fn oom_score_adj(requested: i64, min: i64) -> i32 {
    let floor = min.clamp(-1000, 1000);
    let value = requested.clamp(floor, 1000);
    if value != requested {
        tracing::debug!(
            requested,
            clamped = value,
            host_min = min,
            "oom_score_adj clamped to what the host allows"
        );
    }
    // In -1000..=1000, so the conversion cannot fail.
    i32::try_from(value).unwrap_or(0)
}

/// The container name from the CRI metadata, for messages.
pub(crate) fn container_name(container: &api::ContainerConfig) -> String {
    container
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        let mut c = ImageConfig::default();
        if !entrypoint.is_empty() {
            c.set_entrypoint(Some(entrypoint.iter().map(|s| s.to_string()).collect()));
        }
        if !cmd.is_empty() {
            c.set_cmd(Some(cmd.iter().map(|s| s.to_string()).collect()));
        }
        c
    }

    fn ctr(command: &[&str], args: &[&str]) -> api::ContainerConfig {
        api::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            metadata: Some(api::ContainerMetadata {
                name: "web".into(),
                attempt: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn image_entrypoint_and_cmd_are_used_by_default() {
        let img = image(&["/entry"], &["-x"]);
        assert_eq!(args(&ctr(&[], &[]), Some(&img)).unwrap(), ["/entry", "-x"]);
    }

    #[test]
    fn cri_args_replace_image_cmd_only() {
        let img = image(&["/entry"], &["-x"]);
        assert_eq!(
            args(&ctr(&[], &["-y"]), Some(&img)).unwrap(),
            ["/entry", "-y"]
        );
    }

    #[test]
    fn cri_command_drops_image_entrypoint_and_cmd() {
        let img = image(&["/entry"], &["-x"]);
        assert_eq!(
            args(&ctr(&["/bin/sh"], &[]), Some(&img)).unwrap(),
            ["/bin/sh"]
        );
        assert_eq!(
            args(&ctr(&["/bin/sh"], &["-c", "true"]), Some(&img)).unwrap(),
            ["/bin/sh", "-c", "true"]
        );
    }

    #[test]
    fn no_command_anywhere_is_invalid() {
        let err = args(&ctr(&[], &[]), Some(&image(&[], &[]))).unwrap_err();
        assert!(matches!(&err, SpecError::NoCommand { container } if container == "web"));
        assert!(err.to_string().contains("no command specified"));
        assert!(args(&ctr(&[], &[]), None).is_err());
    }

    #[test]
    fn cwd_precedence() {
        let mut img = ImageConfig::default();
        assert_eq!(cwd(&ctr(&[], &[]), Some(&img)), "/");
        img.set_working_dir(Some("/app".into()));
        assert_eq!(cwd(&ctr(&[], &[]), Some(&img)), "/app");
        let mut c = ctr(&[], &[]);
        c.working_dir = "/work".into();
        assert_eq!(cwd(&c, Some(&img)), "/work");
    }

    #[test]
    fn env_layers_and_overrides_in_place() {
        let mut img = ImageConfig::default();
        img.set_env(Some(vec![
            "PATH=/opt/bin".into(),
            "A=image".into(),
            "B=image".into(),
        ]));
        let mut c = ctr(&[], &[]);
        c.envs = vec![
            api::KeyValue {
                key: "B".into(),
                value: "cri".into(),
            },
            api::KeyValue {
                key: "C".into(),
                value: "x=y".into(),
            },
        ];
        assert_eq!(
            env(&c, Some(&img), "pod-1"),
            [
                "PATH=/opt/bin",
                "A=image",
                "B=cri",
                "HOSTNAME=pod-1",
                "C=x=y"
            ]
        );
    }

    #[test]
    fn env_default_path_and_cri_hostname_override() {
        let mut c = ctr(&[], &[]);
        c.envs = vec![api::KeyValue {
            key: "HOSTNAME".into(),
            value: "mine".into(),
        }];
        assert_eq!(env(&c, None, "pod-1"), [DEFAULT_PATH, "HOSTNAME=mine"]);
        assert_eq!(env(&ctr(&[], &[]), None, ""), [DEFAULT_PATH]);
    }

    #[test]
    fn oom_score_adj_is_clamped() {
        assert_eq!(oom_score_adj(0, -1000), 0);
        assert_eq!(oom_score_adj(-997, -1000), -997);
        assert_eq!(oom_score_adj(-997, 0), 0);
        assert_eq!(oom_score_adj(-997, -500), -500);
        assert_eq!(oom_score_adj(5000, 0), 1000);
        assert_eq!(oom_score_adj(-5000, -2000), -1000);
    }
}
