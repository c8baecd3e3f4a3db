//! Process capabilities: containerd's default set, CRI adds and drops, the host's limit.

use std::collections::HashSet;
use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};
use skiff_cri::api;

use super::SpecError;
use super::host::{all_caps, cap_name};

/// The capabilities an unprivileged container gets by default (containerd's and Docker's
/// list), before the CRI config adds or drops any.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Parses a capability name as the kubelet passes it: with or without `CAP_`, any case.
pub(crate) fn parse_cap(name: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| SpecError::UnknownCapability {
        name: name.to_string(),
    })
}

/// The host's bounding set as capabilities (names oci-spec does not know are skipped).
pub(crate) fn host_caps(names: &[String]) -> HashSet<Capability> {
    names
        .iter()
        .filter_map(|n| match parse_cap(n) {
            Ok(c) => Some(c),
            Err(_) => {
                tracing::debug!(capability = %n, "host capability unknown to skiff; ignored");
                None
            }
        })
        .collect()
}

/// The container's capability set, limited to what the host has.
///
/// Order as containerd applies them: `ALL` in adds, `ALL` in drops, then each named add,
/// then each named drop. Privileged containers get the host's whole bounding set.
pub(crate) fn capability_set(
    caps: Option<&api::Capability>,
    privileged: bool,
    host: &HashSet<Capability>,
) -> Result<HashSet<Capability>, SpecError> {
    let mut set: HashSet<Capability> = if privileged {
        host.clone()
    } else {
        let mut set: HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
        if let Some(c) = caps {
            let is_all = |n: &String| n.trim().eq_ignore_ascii_case("ALL");
            if c.add_capabilities.iter().any(is_all) {
                set.extend(all_caps().iter().copied());
            }
            if c.drop_capabilities.iter().any(is_all) {
                set.clear();
            }
            for name in c.add_capabilities.iter().filter(|n| !is_all(n)) {
                set.insert(parse_cap(name)?);
            }
            for name in c.drop_capabilities.iter().filter(|n| !is_all(n)) {
                set.remove(&parse_cap(name)?);
            }
        }
        set
    };
    set.retain(|c| {
        let keep = host.contains(c);
        if !keep {
            tracing::debug!(
                capability = %cap_name(*c),
                "capability not in the host's bounding set; dropped"
            );
        }
        keep
    });
    Ok(set)
}

/// The OCI capabilities of the process: `set` as bounding, effective and permitted;
/// the CRI ambient capabilities (those also in `set`) as ambient and inheritable.
pub(crate) fn linux_capabilities(
    set: &HashSet<Capability>,
    caps: Option<&api::Capability>,
) -> Result<LinuxCapabilities, SpecError> {
    let mut ambient = Capabilities::new();
    if let Some(c) = caps {
        for name in &c.add_ambient_capabilities {
            let cap = parse_cap(name)?;
            if set.contains(&cap) {
                ambient.insert(cap);
            } else {
                tracing::debug!(
                    capability = %cap_name(cap),
                    "ambient capability not in the container's set; dropped"
                );
            }
        }
    }
    let mut out = LinuxCapabilities::default();
    out.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set.clone()))
        .set_inheritable(Some(ambient.clone()))
        .set_ambient(Some(ambient));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_without_sys_resource() -> HashSet<Capability> {
        all_caps()
            .iter()
            .copied()
            .filter(|c| *c != Capability::SysResource)
            .collect()
    }

    fn cri(add: &[&str], drop: &[&str]) -> api::Capability {
        api::Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn every_known_capability_parses_by_its_name() {
        for cap in all_caps() {
            assert_eq!(parse_cap(&cap_name(*cap)).unwrap(), *cap);
            assert_eq!(parse_cap(&cap.to_string().to_lowercase()).unwrap(), *cap);
        }
        assert!(matches!(
            parse_cap("CAP_FLY"),
            Err(SpecError::UnknownCapability { .. })
        ));
    }

    #[test]
    fn default_set_without_cri_capabilities() {
        let host = host_without_sys_resource();
        let set = capability_set(None, false, &host).unwrap();
        assert_eq!(set, DEFAULT_CAPS.into_iter().collect());
    }

    #[test]
    fn adds_and_drops_accept_any_prefix_and_case() {
        let host = host_without_sys_resource();
        let c = cri(&["net_admin", "CAP_SYS_TIME"], &["cap_chown", "KILL"]);
        let set = capability_set(Some(&c), false, &host).unwrap();
        assert!(set.contains(&Capability::NetAdmin));
        assert!(set.contains(&Capability::SysTime));
        assert!(!set.contains(&Capability::Chown));
        assert!(!set.contains(&Capability::Kill));
        assert!(set.contains(&Capability::Setuid));
    }

    #[test]
    fn drop_all_then_add_keeps_only_the_adds() {
        let host = host_without_sys_resource();
        let c = cri(&["NET_BIND_SERVICE"], &["ALL"]);
        let set = capability_set(Some(&c), false, &host).unwrap();
        assert_eq!(set, [Capability::NetBindService].into_iter().collect());
    }

    #[test]
    fn add_all_is_the_host_set_minus_drops() {
        let host = host_without_sys_resource();
        let c = cri(&["all"], &["SYS_ADMIN"]);
        let set = capability_set(Some(&c), false, &host).unwrap();
        let mut want = host.clone();
        want.remove(&Capability::SysAdmin);
        assert_eq!(set, want);
    }

    #[test]
    fn capabilities_outside_the_host_bounding_set_are_dropped() {
        let host = host_without_sys_resource();
        let c = cri(&["SYS_RESOURCE", "SYS_NICE"], &[]);
        let set = capability_set(Some(&c), false, &host).unwrap();
        assert!(!set.contains(&Capability::SysResource));
        assert!(set.contains(&Capability::SysNice));
        let privileged = capability_set(None, true, &host).unwrap();
        assert_eq!(privileged, host);
    }

    #[test]
    fn unknown_names_are_invalid() {
        let host = host_without_sys_resource();
        let c = cri(&["CAP_TELEPORT"], &[]);
        assert!(matches!(
            capability_set(Some(&c), false, &host),
            Err(SpecError::UnknownCapability { name }) if name == "CAP_TELEPORT"
        ));
    }

    #[test]
    fn ambient_only_from_the_set_and_inheritable_follows() {
        let set: HashSet<Capability> = [Capability::NetBindService].into_iter().collect();
        let c = api::Capability {
            add_ambient_capabilities: vec!["NET_BIND_SERVICE".into(), "SYS_ADMIN".into()],
            ..Default::default()
        };
        let lc = linux_capabilities(&set, Some(&c)).unwrap();
        assert_eq!(lc.ambient().as_ref(), Some(&set));
        assert_eq!(lc.inheritable().as_ref(), Some(&set));
        assert_eq!(lc.bounding().as_ref(), Some(&set));
        let none = linux_capabilities(&set, None).unwrap();
        assert!(none.ambient().as_ref().unwrap().is_empty());
        assert!(none.inheritable().as_ref().unwrap().is_empty());
    }
}
