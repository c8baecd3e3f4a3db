//! skiffd's raw system work: pod namespaces (created on a dedicated thread, never by
//! forking the threaded daemon), ns-file pins, and overlay mounts with the new mount API.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags, fsconfig_create,
    fsconfig_set_string, fsmount, fsopen, move_mount,
};
use rustix::thread::UnshareFlags;

/// Errors of the namespace and mount helpers.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// A system call on `path` failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A pod sysctl is not namespaced to the pod or not writable.
    #[error("sysctl {key}={value}: {source}")]
    Sysctl {
        /// The sysctl name.
        key: String,
        /// The value.
        value: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl skiff_cri::error::Classify for SysError {
    fn kind(&self) -> skiff_cri::error::ErrorKind {
        match self {
            SysError::Sysctl { .. } => skiff_cri::error::ErrorKind::InvalidArgument,
            SysError::Io { .. } => skiff_cri::error::ErrorKind::Internal,
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SysError {
    let path = path.to_path_buf();
    move |source| SysError::Io { op, path, source }
}

/// Which namespaces a pod gets of its own.
#[derive(Debug, Clone, Default)]
pub struct PodNsSpec {
    /// A new network namespace (else the host's).
    pub net: bool,
    /// A new IPC namespace.
    pub ipc: bool,
    /// A new UTS namespace.
    pub uts: bool,
    /// The hostname to set in the new UTS namespace.
    pub hostname: String,
    /// Sysctls to write inside the new namespaces (`net.*` need `net`, `kernel.shm*`,
    /// `kernel.msg*`, `kernel.sem`, `fs.mqueue.*` need `ipc`).
    pub sysctls: Vec<(String, String)>,
}

/// The pinned namespace files of a pod (`None` = the host's namespace).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PodNs {
    /// The network namespace file.
    pub net: Option<PathBuf>,
    /// The IPC namespace file.
    pub ipc: Option<PathBuf>,
    /// The UTS namespace file.
    pub uts: Option<PathBuf>,
}

impl PodNs {
    /// Every pinned file.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts].into_iter().flatten()
    }
}

/// Create the pod's namespaces on a fresh thread, configure them, and pin them as
/// files in `dir`. On failure nothing stays pinned.
pub fn create_pod_namespaces(dir: &Path, spec: &PodNsSpec) -> Result<PodNs, SysError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let dir = dir.to_path_buf();
    let spec = spec.clone();
    let handle = std::thread::Builder::new()
        .name("skiff-netns".into())
        .spawn(move || pin_on_this_thread(&dir, &spec))
        .map_err(io_err("spawn namespace thread", Path::new("")))?;
    handle.join().unwrap_or_else(|_| {
        Err(SysError::Io {
            op: "namespace thread panicked",
            path: PathBuf::new(),
            source: io::Error::other("panic"),
        })
    })
}

fn pin_on_this_thread(dir: &Path, spec: &PodNsSpec) -> Result<PodNs, SysError> {
    let mut flags = UnshareFlags::empty();
    if spec.net {
        flags |= UnshareFlags::NEWNET;
    }
    if spec.ipc {
        flags |= UnshareFlags::NEWIPC;
    }
    if spec.uts {
        flags |= UnshareFlags::NEWUTS;
    }
    // SAFETY: FILES is not among the flags, so no fd table is unshared; the thread
    // exists only for this and ends right after, taking its namespaces with it.
    unsafe { rustix::thread::unshare_unsafe(flags) }
        .map_err(|e| io_err("unshare", dir)(e.into()))?;
    let mut pinned = PodNs::default();
    let result = (|| {
        if spec.uts && !spec.hostname.is_empty() {
            rustix::system::sethostname(spec.hostname.as_bytes())
                .map_err(|e| io_err("sethostname", dir)(e.into()))?;
        }
        if spec.net {
            loopback_up().map_err(io_err("bring up loopback in", dir))?;
        }
        for (key, value) in &spec.sysctls {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            fs::write(&path, value).map_err(|source| SysError::Sysctl {
                key: key.clone(),
                value: value.clone(),
                source,
            })?;
        }
        for (wanted, name, slot) in [
            (spec.net, "net", &mut pinned.net),
            (spec.ipc, "ipc", &mut pinned.ipc),
            (spec.uts, "uts", &mut pinned.uts),
        ] {
            if !wanted {
                continue;
            }
            let file = dir.join(name);
            fs::File::create(&file).map_err(io_err("create", &file))?;
            let src = format!("/proc/thread-self/ns/{name}");
            rustix::mount::mount_bind(src.as_str(), &file)
                .map_err(|e| io_err("pin namespace at", &file)(e.into()))?;
            *slot = Some(file);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(pinned),
        Err(e) => {
            release_namespaces(&pinned);
            Err(e)
        }
    }
}

/// Unpin and remove the namespace files; missing ones are fine.
pub fn release_namespaces(ns: &PodNs) {
    for file in ns.files() {
        let _ = rustix::mount::unmount(file, UnmountFlags::DETACH);
        let _ = fs::remove_file(file);
    }
}

/// Set `lo` up in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    use rustix::net::{AddressFamily, SocketType};
    let sock = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::try_from(*src).unwrap_or(0);
    }
    use std::os::fd::AsRawFd;
    // SAFETY: `req` is a valid ifreq naming "lo"; SIOCGIFFLAGS fills ifru_flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union member ifru_flags was just written by the kernel.
    unsafe {
        req.ifr_ifru.ifru_flags |= i16::try_from(libc::IFF_UP).unwrap_or(1);
    }
    // SAFETY: `req` is a valid ifreq; SIOCSIFFLAGS reads it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mount an overlay at `target` with `lower` (topmost first) and `rw` = (upper, work)
/// — without it the overlay is read-only and needs at least two lower directories —
/// passing lower directories one by one (`lowerdir+`, Linux ≥ 6.8) so long chains do
/// not overflow the mount option page; older kernels get the joined `lowerdir`.
pub fn mount_overlay(
    target: &Path,
    lower: &[PathBuf],
    rw: Option<(&Path, &Path)>,
) -> Result<(), SysError> {
    let err = |op| io_err(op, target);
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| err("fsopen overlay")(e.into()))?;
    let mut plus = true;
    for l in lower {
        if let Err(e) = fsconfig_set_string(fs.as_fd(), "lowerdir+", l) {
            if e == rustix::io::Errno::INVAL && plus {
                plus = false;
                break;
            }
            return Err(err("overlay lowerdir+")(e.into()));
        }
    }
    let fs = if plus {
        fs
    } else {
        let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(|e| err("fsopen overlay")(e.into()))?;
        let joined = lower
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        fsconfig_set_string(fs.as_fd(), "lowerdir", joined.as_str())
            .map_err(|e| err("overlay lowerdir")(e.into()))?;
        fs
    };
    if let Some((upper, work)) = rw {
        fsconfig_set_string(fs.as_fd(), "upperdir", upper)
            .map_err(|e| err("overlay upperdir")(e.into()))?;
        fsconfig_set_string(fs.as_fd(), "workdir", work)
            .map_err(|e| err("overlay workdir")(e.into()))?;
    }
    fsconfig_create(fs.as_fd()).map_err(|e| err("create overlay")(e.into()))?;
    let attrs = if rw.is_some() {
        MountAttrFlags::empty()
    } else {
        MountAttrFlags::MOUNT_ATTR_RDONLY | MountAttrFlags::MOUNT_ATTR_NODEV
    };
    let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| err("fsmount overlay")(e.into()))?;
    move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| err("move overlay to")(e.into()))?;
    Ok(())
}

/// Keep glibc to two malloc arenas: by default every thread that allocates (tokio's
/// workers and its blocking pool, which a pull fills) may get its own, each keeping
/// freed memory; skiffd's allocations are small and short, so contention is no issue.
/// Call before any thread starts.
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called while single-threaded.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Return memory the allocator holds in its free lists to the system (glibc's
/// `malloc_trim`); a no-op on other C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own state; 0 = keep no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Unmount `target` if something is mounted there (lazily, so a busy mount goes away
/// once its last user does).
pub fn unmount(target: &Path) -> Result<(), SysError> {
    match rustix::mount::unmount(target, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err("unmount", target)(e.into())),
    }
}

/// Mount a tmpfs for a pod's `/dev/shm` at `target`.
pub fn mount_shm(target: &Path) -> Result<(), SysError> {
    fs::create_dir_all(target).map_err(io_err("create", target))?;
    rustix::mount::mount(
        "shm",
        target,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        c"mode=1777,size=65536k",
    )
    .map_err(|e| io_err("mount shm at", target)(e.into()))
}

/// Run `f` on a fresh thread that joined the network namespace pinned at `netns` (`None`:
/// here, on this thread). The thread and its membership end with `f`; the threaded
/// daemon never changes a namespace of a thread it keeps.
pub fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    crate::blocking::assert_may_block("sys::in_netns");
    let Some(netns) = netns else {
        return f();
    };
    let file = fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// The real path of `rel` inside `root`, every component (symlinks included) resolved as
/// if `root` were `/` (`openat2` with `RESOLVE_IN_ROOT`): a `..` or an absolute symlink
/// cannot lead out of `root`. `Ok(None)` when it does not exist.
pub fn resolve_in_root(root: &Path, rel: &str) -> Result<Option<PathBuf>, SysError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", root)(e.into()))?;
    let rel = rel.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let fd = match rustix::fs::openat2(
        &dir,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(io_err("resolve in", &root.join(rel))(e.into())),
    };
    let link = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ));
    let real = fs::read_link(&link).map_err(io_err("read link", &link))?;
    let root_real = fs::canonicalize(root).map_err(io_err("resolve", root))?;
    if !real.starts_with(&root_real) {
        // Only possible if something was mounted over a component meanwhile.
        return Err(io_err("resolve in", &root.join(rel))(io::Error::other(
            format!("resolved to {} outside the root", real.display()),
        )));
    }
    Ok(Some(real))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_in_root_keeps_symlinks_and_dotdot_inside() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc/ssl")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", r.join("etc/up")).unwrap();
        let real = fs::canonicalize(r).unwrap();
        assert_eq!(
            resolve_in_root(r, "etc/ssl").unwrap(),
            Some(real.join("etc/ssl"))
        );
        // An absolute symlink means the root's /etc, never the host's.
        assert_eq!(
            resolve_in_root(r, "abs/ssl").unwrap(),
            Some(real.join("etc/ssl"))
        );
        // `..` stops at the root.
        assert_eq!(
            resolve_in_root(r, "etc/up/etc").unwrap(),
            Some(real.join("etc"))
        );
        assert_eq!(resolve_in_root(r, "missing").unwrap(), None);
        assert_eq!(resolve_in_root(r, "").unwrap(), Some(real));
    }

    fn root() -> bool {
        skiff_testkit::require_root("sys::tests")
    }

    #[test]
    fn namespaces_are_pinned_configured_and_released() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let spec = PodNsSpec {
            net: true,
            ipc: true,
            uts: true,
            hostname: "pod-host".into(),
            sysctls: vec![("net.ipv4.ip_unprivileged_port_start".into(), "80".into())],
        };
        let ns = create_pod_namespaces(dir.path(), &spec).unwrap();
        assert_eq!(ns.files().count(), 3);
        let out = std::process::Command::new("nsenter")
            .arg(format!("--uts={}", ns.uts.as_ref().unwrap().display()))
            .arg(format!("--net={}", ns.net.as_ref().unwrap().display()))
            .args(["sh", "-c", "hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; cat /sys/class/net/lo/operstate"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // A thread that joins the namespace sees its interfaces (only lo), not ours.
        let dev = in_netns(ns.net.as_deref(), || {
            fs::read_to_string("/proc/thread-self/net/dev")
        })
        .unwrap();
        let ifaces: Vec<&str> = dev
            .lines()
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
            .collect();
        assert_eq!(ifaces, ["lo"], "{dev}");
        release_namespaces(&ns);
        assert!(text.starts_with("pod-host\n80\n"), "{text}");
        assert!(!dir.path().join("net").exists());
    }

    #[test]
    fn a_bad_sysctl_leaves_nothing_pinned() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let spec = PodNsSpec {
            net: true,
            ipc: false,
            uts: false,
            hostname: String::new(),
            sysctls: vec![("net.no.such.knob".into(), "1".into())],
        };
        let err = create_pod_namespaces(dir.path(), &spec).unwrap_err();
        assert!(err.to_string().contains("net.no.such.knob"), "{err}");
        assert!(!dir.path().join("net").exists());
    }
}
