//! What the host allows a container to have: capabilities, oom_score_adj, cgroup version.

use std::path::Path;

use oci_spec::runtime::Capability;

/// Linux capabilities by bit number, as in `<linux/capability.h>`.
const CAP_BITS: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// The bit of `CAP_SYS_RESOURCE`.
const CAP_SYS_RESOURCE_BIT: u32 = 24;

/// What the host lets skiff give a container; spec generation never asks for more.
///
/// Detected once at start-up with [`HostInfo::detect`]; tests build it by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The daemon's bounding capability set, as `CAP_*` names. The OCI runtime runs
    /// with this set, so a container can never get a capability outside it (runc fails
    /// the start if asked to).
    pub bounding_caps: Vec<String>,
    /// The lowest `oom_score_adj` the OCI runtime may give a container: -1000 with
    /// `CAP_SYS_RESOURCE`, else the daemon's own current value (an unprivileged process
    /// cannot go below it).
    pub min_oom_score_adj: i64,
    /// Whether `/sys/fs/cgroup` is the cgroup v2 unified hierarchy.
    pub cgroup_v2: bool,
    /// Whether the OCI runtime and kernel support recursive read-only (`rro`) mounts.
    /// [`HostInfo::detect`] reports `false`: runc 1.1 has no `rro`, and skiff does not
    /// probe the runtime's `features` yet.
    pub rro_supported: bool,
    /// Whether the memory cgroup can limit swap (`memory.memsw.limit_in_bytes` on v1,
    /// `memory.swap.max` on v2). When it can, a container without a swap limit gets
    /// swap = memory limit (no swapping), as containerd does.
    pub swap_controller: bool,
}

impl HostInfo {
    /// Reads the host's limits from `/proc/self/status`, `/proc/self/oom_score_adj` and
    /// `/sys/fs/cgroup`. Anything unreadable falls back to a conservative value (logged).
    pub fn detect() -> HostInfo {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read /proc/self/status; assuming no capabilities");
            String::new()
        });
        let bounding = status_mask(&status, "CapBnd:").unwrap_or(0);
        let effective = status_mask(&status, "CapEff:").unwrap_or(0);
        let current_oom = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or_else(|| {
                tracing::warn!("cannot read /proc/self/oom_score_adj; assuming 0");
                0
            });
        let min_oom_score_adj = if effective & (1 << CAP_SYS_RESOURCE_BIT) != 0 {
            -1000
        } else {
            current_oom
        };
        let cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let swap_controller = if cgroup_v2 {
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            own.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .is_some_and(|p| {
                    Path::new("/sys/fs/cgroup")
                        .join(p.trim_start_matches('/'))
                        .join("memory.swap.max")
                        .exists()
                })
        } else {
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        };
        HostInfo {
            bounding_caps: caps_from_mask(bounding),
            min_oom_score_adj,
            cgroup_v2,
            rro_supported: false,
            swap_controller,
        }
    }
}

/// Parses a hex capability mask line (`CapBnd:\t000001ffffffffff`) of `/proc/<pid>/status`.
fn status_mask(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(key))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// The `CAP_*` names of the bits set in `mask` (bits unknown to oci-spec are skipped).
pub(crate) fn caps_from_mask(mask: u64) -> Vec<String> {
    CAP_BITS
        .iter()
        .zip(0u32..)
        .filter(|(_, bit)| mask & (1u64 << bit) != 0)
        .map(|(cap, _)| cap_name(*cap))
        .collect()
}

/// The `CAP_*` name of a capability.
pub(crate) fn cap_name(cap: Capability) -> String {
    format!("CAP_{cap}")
}

/// Every capability skiff knows, by bit order.
pub(crate) fn all_caps() -> &'static [Capability] {
    &CAP_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_to_names_skips_missing_bits() {
        // This machine's CapBnd: everything but CAP_SYS_RESOURCE.
        let names = caps_from_mask(0x0000_01ff_feff_ffff);
        assert_eq!(names.len(), 40);
        assert!(names.contains(&"CAP_CHOWN".to_string()));
        assert!(names.contains(&"CAP_CHECKPOINT_RESTORE".to_string()));
        assert!(!names.contains(&"CAP_SYS_RESOURCE".to_string()));
    }

    #[test]
    fn status_line_is_parsed() {
        let status = "Name:\tx\nCapEff:\t0000000000000003\nCapBnd:\t000001fffeffffff\n";
        assert_eq!(status_mask(status, "CapEff:"), Some(3));
        assert_eq!(status_mask(status, "CapBnd:"), Some(0x01ff_feff_ffff));
        assert_eq!(status_mask(status, "CapAmb:"), None);
    }

    #[test]
    fn detect_reads_this_host() {
        let host = HostInfo::detect();
        assert!((-1000..=1000).contains(&host.min_oom_score_adj));
        // Set by the daemon from `runtime features`, not by detect().
        assert!(!host.rro_supported);
    }
}
