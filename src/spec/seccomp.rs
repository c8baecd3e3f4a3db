//! Seccomp: the CRI profile choice, `Localhost` profile files, and skiff's
//! `RuntimeDefault` profile.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use oci_spec::runtime::{Arch, Capability, LinuxSeccomp};
use skiff_cri::api;
use skiff_cri::api::security_profile::ProfileType;

use super::SpecError;

/// skiff's `RuntimeDefault` seccomp profile, as shipped (no architectures: they are set
/// for the host when used).
///
/// It is a **deny list**: the default action allows, and `EPERM` is returned for the
/// syscalls Docker's default profile keeps from unprivileged containers (kernel keyring,
/// module loading, kexec, reboot, clock setting, mount and the new mount API, namespace
/// creation with `unshare`/`setns`/`clone` namespace flags, ptrace and cross-process
/// memory access, bpf, perf, userfaultfd, io_uring, obsolete syscalls). `clone3` gets
/// `ENOSYS` so the C library falls back to `clone`, whose flags the filter can see.
/// It is narrower than Docker's allow-list profile: a syscall added to the kernel after
/// this list was written is allowed.
pub const RUNTIME_DEFAULT_JSON: &str = include_str!("seccomp_default.json");

static RUNTIME_DEFAULT: LazyLock<LinuxSeccomp> = LazyLock::new(|| {
    serde_json::from_str(RUNTIME_DEFAULT_JSON).expect("seccomp_default.json is a valid profile")
});

/// Syscalls of the deny list that a container holding one of the capabilities may use,
/// as Docker's profile allows them with those capabilities.
const LIFTED_BY: &[(&str, &[Capability])] = &[
    ("acct", &[Capability::SysPacct]),
    ("bpf", &[Capability::SysAdmin, Capability::Bpf]),
    ("clock_adjtime", &[Capability::SysTime]),
    ("clock_settime", &[Capability::SysTime]),
    ("clone", &[Capability::SysAdmin]),
    ("clone3", &[Capability::SysAdmin]),
    ("delete_module", &[Capability::SysModule]),
    ("finit_module", &[Capability::SysModule]),
    ("fsconfig", &[Capability::SysAdmin]),
    ("fsmount", &[Capability::SysAdmin]),
    ("fsopen", &[Capability::SysAdmin]),
    ("fspick", &[Capability::SysAdmin]),
    ("get_mempolicy", &[Capability::SysNice]),
    ("init_module", &[Capability::SysModule]),
    ("ioperm", &[Capability::SysRawio]),
    ("iopl", &[Capability::SysRawio]),
    ("kcmp", &[Capability::SysPtrace]),
    ("kexec_file_load", &[Capability::SysBoot]),
    ("kexec_load", &[Capability::SysBoot]),
    ("lookup_dcookie", &[Capability::SysAdmin]),
    ("mbind", &[Capability::SysNice]),
    ("mount", &[Capability::SysAdmin]),
    ("mount_setattr", &[Capability::SysAdmin]),
    ("move_mount", &[Capability::SysAdmin]),
    ("move_pages", &[Capability::SysNice]),
    ("open_by_handle_at", &[Capability::DacReadSearch]),
    ("open_tree", &[Capability::SysAdmin]),
    (
        "perf_event_open",
        &[Capability::SysAdmin, Capability::Perfmon],
    ),
    ("pivot_root", &[Capability::SysAdmin]),
    ("process_vm_readv", &[Capability::SysPtrace]),
    ("process_vm_writev", &[Capability::SysPtrace]),
    ("ptrace", &[Capability::SysPtrace]),
    ("quotactl", &[Capability::SysAdmin]),
    ("quotactl_fd", &[Capability::SysAdmin]),
    ("reboot", &[Capability::SysBoot]),
    ("set_mempolicy", &[Capability::SysNice]),
    ("setns", &[Capability::SysAdmin]),
    ("settimeofday", &[Capability::SysTime]),
    ("stime", &[Capability::SysTime]),
    ("syslog", &[Capability::Syslog]),
    ("umount", &[Capability::SysAdmin]),
    ("umount2", &[Capability::SysAdmin]),
    ("unshare", &[Capability::SysAdmin]),
    ("userfaultfd", &[Capability::SysPtrace]),
    ("vhangup", &[Capability::SysTtyConfig]),
];

/// The seccomp architectures of this host's kernel family.
fn host_architectures() -> Option<Vec<Arch>> {
    if cfg!(target_arch = "x86_64") {
        Some(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
    } else if cfg!(target_arch = "aarch64") {
        Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm])
    } else {
        None
    }
}

/// skiff's `RuntimeDefault` profile for a container holding `caps`: the shipped deny list
/// minus the syscalls those capabilities unlock, with this host's architectures.
pub fn runtime_default_profile(caps: &HashSet<Capability>) -> LinuxSeccomp {
    let mut profile = RUNTIME_DEFAULT.clone();
    let lifted = |name: &str| {
        LIFTED_BY
            .iter()
            .find(|(n, _)| *n == name)
            .is_some_and(|(_, by)| by.iter().any(|c| caps.contains(c)))
    };
    let syscalls = profile
        .syscalls()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|mut s| {
            let names: Vec<String> = s.names().iter().filter(|n| !lifted(n)).cloned().collect();
            if names.is_empty() {
                return None;
            }
            s.set_names(names);
            Some(s)
        })
        .collect();
    profile
        .set_syscalls(Some(syscalls))
        .set_architectures(host_architectures());
    profile
}

/// The seccomp profile a container asked for.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    Unconfined,
    RuntimeDefault,
    Localhost(PathBuf),
}

fn localhost(value: &str, path: &str) -> Result<Choice, SpecError> {
    if path.is_empty() || !Path::new(path).is_absolute() {
        return Err(SpecError::InvalidSeccompRef {
            value: value.to_string(),
            reason: "a Localhost profile must be an absolute path",
        });
    }
    Ok(Choice::Localhost(PathBuf::from(path)))
}

/// The `seccomp` field if set, else the deprecated `seccomp_profile_path`.
#[allow(deprecated)] // seccomp_profile_path: older kubelets still send it.
fn choice(sc: &api::LinuxContainerSecurityContext) -> Result<Choice, SpecError> {
    if let Some(p) = &sc.seccomp {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Unconfined) => Ok(Choice::Unconfined),
            Ok(ProfileType::RuntimeDefault) => Ok(Choice::RuntimeDefault),
            Ok(ProfileType::Localhost) => localhost(&p.localhost_ref, &p.localhost_ref),
            Err(_) => Err(SpecError::InvalidSeccompRef {
                value: p.profile_type.to_string(),
                reason: "unknown seccomp profile type",
            }),
        };
    }
    let path = sc.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(Choice::Unconfined),
        "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
        _ => match path.strip_prefix("localhost/") {
            Some(file) => localhost(path, file),
            None => Err(SpecError::InvalidSeccompRef {
                value: path.to_string(),
                reason: "expected unconfined, runtime/default or localhost/<path>",
            }),
        },
    }
}

/// The seccomp filter of the container, `None` for unconfined (and always when privileged).
pub(crate) fn seccomp(
    sc: Option<&api::LinuxContainerSecurityContext>,
    privileged: bool,
    caps: &HashSet<Capability>,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    let Some(sc) = sc else {
        return Ok(None);
    };
    if privileged {
        return Ok(None);
    }
    match choice(sc)? {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => Ok(Some(runtime_default_profile(caps))),
        Choice::Localhost(path) => {
            let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => SpecError::SeccompProfileNotFound { path: path.clone() },
                _ => SpecError::Io {
                    op: "read seccomp profile",
                    path: path.clone(),
                    source: e,
                },
            })?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| SpecError::InvalidSeccompProfile { path, source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxSeccompAction;

    #[allow(deprecated)]
    fn with_profile(
        p: Option<api::SecurityProfile>,
        path: &str,
    ) -> api::LinuxContainerSecurityContext {
        api::LinuxContainerSecurityContext {
            seccomp: p,
            seccomp_profile_path: path.into(),
            ..Default::default()
        }
    }

    fn profile(t: ProfileType, r: &str) -> Option<api::SecurityProfile> {
        Some(api::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        })
    }

    fn denied(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls()
            .clone()
            .unwrap_or_default()
            .iter()
            .filter(|s| s.args().is_none())
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn shipped_profile_parses_and_is_a_deny_list() {
        let p: LinuxSeccomp = serde_json::from_str(RUNTIME_DEFAULT_JSON).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        for s in p.syscalls().as_ref().unwrap() {
            assert_eq!(s.action(), LinuxSeccompAction::ScmpActErrno);
        }
        let names = denied(&p);
        for must in [
            "keyctl",
            "mount",
            "unshare",
            "setns",
            "ptrace",
            "bpf",
            "kexec_load",
            "reboot",
        ] {
            assert!(names.contains(&must.to_string()), "{must}");
        }
        for (name, _) in LIFTED_BY {
            let all: Vec<String> = p
                .syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .flat_map(|s| s.names().clone())
                .collect();
            assert!(
                all.contains(&name.to_string()),
                "{name} is lifted but never denied"
            );
        }
    }

    #[test]
    fn no_security_context_or_unconfined_means_no_filter() {
        let caps = HashSet::new();
        assert!(seccomp(None, false, &caps).unwrap().is_none());
        for path in ["", "unconfined"] {
            assert!(
                seccomp(Some(&with_profile(None, path)), false, &caps)
                    .unwrap()
                    .is_none()
            );
        }
        let sc = with_profile(profile(ProfileType::Unconfined, ""), "runtime/default");
        assert!(seccomp(Some(&sc), false, &caps).unwrap().is_none());
    }

    #[test]
    fn runtime_default_by_field_or_path_and_privileged_ignores_it() {
        let caps = HashSet::new();
        let zero = api::SecurityProfile::default();
        assert_eq!(zero.profile_type, ProfileType::RuntimeDefault as i32);
        let sc = with_profile(Some(zero), "");
        let p = seccomp(Some(&sc), false, &caps).unwrap().unwrap();
        assert!(denied(&p).contains(&"mount".to_string()));
        assert!(
            p.architectures().is_some()
                || !cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
        );
        for path in ["runtime/default", "docker/default"] {
            assert!(
                seccomp(Some(&with_profile(None, path)), false, &caps)
                    .unwrap()
                    .is_some()
            );
        }
        assert!(seccomp(Some(&sc), true, &caps).unwrap().is_none());
    }

    #[test]
    fn capabilities_lift_their_syscalls() {
        let p = runtime_default_profile(&[Capability::SysAdmin].into_iter().collect());
        let names: Vec<String> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|s| s.names().clone())
            .collect();
        for lifted in ["mount", "unshare", "setns", "clone", "clone3", "bpf"] {
            assert!(!names.contains(&lifted.to_string()), "{lifted}");
        }
        assert!(names.contains(&"keyctl".to_string()));
        assert!(names.contains(&"ptrace".to_string()));
        let p = runtime_default_profile(&[Capability::SysPtrace].into_iter().collect());
        assert!(!denied(&p).contains(&"ptrace".to_string()));
        assert!(denied(&p).contains(&"mount".to_string()));
    }

    #[test]
    fn localhost_profiles_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
        )
        .unwrap();
        let caps = HashSet::new();
        let sc = with_profile(profile(ProfileType::Localhost, &good.to_string_lossy()), "");
        let p = seccomp(Some(&sc), false, &caps).unwrap().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        let sc = with_profile(None, &format!("localhost/{}", good.display()));
        assert!(seccomp(Some(&sc), false, &caps).unwrap().is_some());

        let missing = dir.path().join("missing.json");
        let sc = with_profile(
            profile(ProfileType::Localhost, &missing.to_string_lossy()),
            "",
        );
        let err = seccomp(Some(&sc), false, &caps).unwrap_err();
        assert!(matches!(&err, SpecError::SeccompProfileNotFound { path } if *path == missing));

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let sc = with_profile(profile(ProfileType::Localhost, &bad.to_string_lossy()), "");
        let err = seccomp(Some(&sc), false, &caps).unwrap_err();
        assert!(matches!(&err, SpecError::InvalidSeccompProfile { path, .. } if *path == bad));

        let sc = with_profile(profile(ProfileType::Localhost, "relative.json"), "");
        assert!(matches!(
            seccomp(Some(&sc), false, &caps),
            Err(SpecError::InvalidSeccompRef { .. })
        ));
        let sc = with_profile(None, "bogus/profile");
        assert!(matches!(
            seccomp(Some(&sc), false, &caps),
            Err(SpecError::InvalidSeccompRef { .. })
        ));
    }
}
