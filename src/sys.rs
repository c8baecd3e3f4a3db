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
    /// A new user namespace with these mappings, created first so that it owns the
    /// pod's other namespaces.
    pub userns: Option<UsernsMaps>,
}

/// One contiguous range of a user namespace's id mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMap {
    /// The first id inside the namespace.
    pub container_id: u32,
    /// The host id it maps to.
    pub host_id: u32,
    /// How many ids.
    pub length: u32,
}

impl IdMap {
    fn line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }
}

/// A pod's user namespace: one uid and one gid range, container id 0 mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsernsMaps {
    /// The uid mapping.
    pub uids: IdMap,
    /// The gid mapping.
    pub gids: IdMap,
}

impl UsernsMaps {
    /// Uids and gids alike: container ids 0..`length` as host ids `host_id`...
    pub fn uniform(host_id: u32, length: u32) -> UsernsMaps {
        let map = IdMap {
            container_id: 0,
            host_id,
            length,
        };
        UsernsMaps {
            uids: map,
            gids: map,
        }
    }

    /// The host uid and gid of the namespace's root.
    pub fn host_root(&self) -> (u32, u32) {
        (self.uids.host_id, self.gids.host_id)
    }
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
    /// The user namespace file (owner of the others), if the pod has its own.
    #[serde(default)]
    pub user: Option<PathBuf>,
}

impl PodNs {
    /// Every pinned file.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts, &self.user]
            .into_iter()
            .flatten()
    }
}

/// A process parked in a new user namespace (and the namespaces `flags` name, which
/// that user namespace owns) until dropped. A threaded process may not unshare a user
/// namespace itself; a child made by `clone` may be born in one.
struct NsHolder {
    pid: i32,
    pidfd: std::os::fd::OwnedFd,
    /// Closing it lets the holder exit.
    release: Option<std::os::fd::OwnedFd>,
}

impl NsHolder {
    fn spawn(flags: libc::c_int, maps: &UsernsMaps) -> io::Result<NsHolder> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let pipe = || -> io::Result<(OwnedFd, OwnedFd)> {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: pipe2 fills two fds we then own.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both were just returned by pipe2 and are owned by nobody else.
            Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
        };
        let (read, write) = pipe()?;
        let all = flags | libc::CLONE_NEWUSER | libc::SIGCHLD;
        // SAFETY: a raw clone without CLONE_VM is a fork; the child of this threaded
        // process only calls async-signal-safe close/read/_exit.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::c_long::from(all),
                0 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        };
        if pid == 0 {
            let mut b = 0u8;
            // SAFETY: async-signal-safe calls on fds this child inherited.
            unsafe {
                libc::close(write.as_raw_fd());
                while libc::read(read.as_raw_fd(), std::ptr::addr_of_mut!(b).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::_exit(0);
            }
        }
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(read);
        let pid = i32::try_from(pid).map_err(|_| io::Error::other("clone returned a bad pid"))?;
        let reap = |e: io::Error| {
            // SAFETY: our own child; dropping `write` lets it exit, the wait reaps it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            e
        };
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid).ok_or_else(|| io::Error::other("pid 0"))?,
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| reap(e.into()))?;
        for (file, map) in [("uid_map", maps.uids), ("gid_map", maps.gids)] {
            fs::write(format!("/proc/{pid}/{file}"), map.line())
                .map_err(|e| reap(io::Error::new(e.kind(), format!("write {file}: {e}"))))?;
        }
        Ok(NsHolder {
            pid,
            pidfd,
            release: Some(write),
        })
    }
}

impl NsHolder {
    /// The holder's user namespace file.
    fn userns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.pid))
    }
}

impl Drop for NsHolder {
    fn drop(&mut self) {
        drop(self.release.take());
        // SAFETY: our own child, which exits once `release` is closed.
        unsafe {
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Whether this kernel and the filesystem of `path` take idmapped mounts for a user
/// namespace like a pod's: the check of what a handler's `user_namespaces` promises.
pub fn idmap_supported(path: &Path) -> io::Result<()> {
    let holder = NsHolder::spawn(0, &UsernsMaps::uniform(65536, 65536))?;
    let userns = fs::File::open(holder.userns_path())?;
    idmapped_tree(path, &userns).map(drop)
}

/// Where an idmapped mount takes its mapping from.
#[derive(Debug, Clone)]
pub enum IdmapBy {
    /// A pinned user namespace (a pod's).
    Userns(PathBuf),
    /// Mappings of its own (a user namespace is made for the moment of the mount).
    Maps(UsernsMaps),
}

/// Attach at `target` (made an empty file or directory, like `source`) an idmapped copy
/// of the mount at `source`, without its submounts.
pub fn bind_idmapped(source: &Path, target: &Path, by: &IdmapBy) -> Result<(), SysError> {
    let holder;
    let ns = match by {
        IdmapBy::Userns(p) => fs::File::open(p).map_err(io_err("open", p))?,
        IdmapBy::Maps(m) => {
            holder = NsHolder::spawn(0, m).map_err(io_err("make a user namespace for", target))?;
            let p = holder.userns_path();
            fs::File::open(&p).map_err(io_err("open", &p))?
        }
    };
    let tree = idmapped_tree(source, &ns).map_err(io_err("idmap", source))?;
    if source.is_dir() {
        fs::create_dir_all(target).map_err(io_err("create", target))?;
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        fs::File::create(target).map_err(io_err("create", target))?;
    }
    move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| io_err("attach an idmapped mount at", target)(e.into()))
}

/// A detached copy of the mount tree at `path`, idmapped through `userns`: files owned
/// by id N on disk show as the host id that N maps to in the namespace.
fn idmapped_tree(path: &Path, userns: &fs::File) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        path,
        rustix::mount::OpenTreeFlags::OPEN_TREE_CLONE
            | rustix::mount::OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).unwrap_or(0),
    };
    // SAFETY: mount_setattr reads `attr` (of the size given) and changes only the
    // detached tree `tree` we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
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
    if let Some(maps) = &spec.userns {
        return pin_with_userns(dir, spec, maps);
    }
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
    configure_and_pin(dir, spec, PodNs::default())
}

/// The pod's user namespace comes from a holder process born in it together with the
/// net, IPC and UTS namespaces it owns; this thread joins those three to configure
/// them as for any pod, and the user namespace is pinned from the holder.
fn pin_with_userns(dir: &Path, spec: &PodNsSpec, maps: &UsernsMaps) -> Result<PodNs, SysError> {
    use std::os::fd::AsRawFd;
    let mut flags = 0;
    for (wanted, flag) in [
        (spec.net, libc::CLONE_NEWNET),
        (spec.ipc, libc::CLONE_NEWIPC),
        (spec.uts, libc::CLONE_NEWUTS),
    ] {
        if wanted {
            flags |= flag;
        }
    }
    let holder =
        NsHolder::spawn(flags, maps).map_err(io_err("create the user namespace for", dir))?;
    // SAFETY: setns on a pidfd we own; only this thread's net/ipc/uts change, and the
    // thread ends after pinning.
    if flags != 0 && unsafe { libc::setns(holder.pidfd.as_raw_fd(), flags) } != 0 {
        return Err(io_err("join the new namespaces for", dir)(
            io::Error::last_os_error(),
        ));
    }
    let file = dir.join("user");
    fs::File::create(&file).map_err(io_err("create", &file))?;
    if let Err(e) = rustix::mount::mount_bind(holder.userns_path(), &file) {
        let _ = fs::remove_file(&file);
        return Err(io_err("pin namespace at", &file)(e.into()));
    }
    let pinned = PodNs {
        user: Some(file),
        ..PodNs::default()
    };
    configure_and_pin(dir, spec, pinned)
}

/// Configure the calling thread's namespaces (hostname, loopback, sysctls) and pin
/// each one `spec` asks for beside those already in `pinned`.
fn configure_and_pin(dir: &Path, spec: &PodNsSpec, mut pinned: PodNs) -> Result<PodNs, SysError> {
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
/// With `idmap` (a user namespace file) every lower directory is an idmapped copy, so
/// the image's root-owned files belong to the namespace's root (overlayfs takes
/// idmapped layers since Linux 5.19); the copies are detached mounts held by fd and
/// named by `/proc/self/fd/N`, so nothing is ever attached to a path of ours.
pub fn mount_overlay(
    target: &Path,
    lower: &[PathBuf],
    rw: Option<(&Path, &Path)>,
    idmap: Option<&Path>,
) -> Result<(), SysError> {
    let err = |op| io_err(op, target);
    let mut trees = Vec::new();
    let idmapped: Vec<PathBuf>;
    let lower = match idmap {
        None => lower,
        Some(userns) => {
            use std::os::fd::AsRawFd;
            let ns = fs::File::open(userns).map_err(io_err("open", userns))?;
            for l in lower {
                trees.push(idmapped_tree(l, &ns).map_err(io_err("idmap", l))?);
            }
            idmapped = trees
                .iter()
                .map(|t| PathBuf::from(format!("/proc/self/fd/{}", t.as_raw_fd())))
                .collect();
            &idmapped[..]
        }
    };
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
pub fn mount_shm(target: &Path, owner: Option<(u32, u32)>) -> Result<(), SysError> {
    fs::create_dir_all(target).map_err(io_err("create", target))?;
    let mut opts = "mode=1777,size=65536k".to_string();
    if let Some((uid, gid)) = owner {
        opts.push_str(&format!(",uid={uid},gid={gid}"));
    }
    rustix::mount::mount(
        "shm",
        target,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        std::ffi::CString::new(opts)
            .map_err(|_| io_err("mount shm at", target)(io::ErrorKind::InvalidInput.into()))?
            .as_c_str(),
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
            userns: None,
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
            userns: None,
        };
        let err = create_pod_namespaces(dir.path(), &spec).unwrap_err();
        assert!(err.to_string().contains("net.no.such.knob"), "{err}");
        assert!(!dir.path().join("net").exists());
        // Likewise with a user namespace: the user file goes too.
        let spec = PodNsSpec {
            userns: Some(UsernsMaps::uniform(300_000, 65536)),
            ..spec
        };
        let err = create_pod_namespaces(dir.path(), &spec).unwrap_err();
        assert!(err.to_string().contains("net.no.such.knob"), "{err}");
        assert!(!dir.path().join("net").exists());
        assert!(!dir.path().join("user").exists());
    }

    /// The inode of the namespace file at `path`, or of the user namespace owning it.
    fn ns_inode(path: &Path, owner: bool) -> u64 {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::fs::MetadataExt;
        let f = fs::File::open(path).unwrap();
        if !owner {
            return f.metadata().unwrap().ino();
        }
        const NS_GET_USERNS: libc::c_ulong = 0xb701;
        // SAFETY: NS_GET_USERNS returns a new fd (or -1) for an open nsfs file.
        let fd = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS) };
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: the kernel just gave us this fd.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        fs::File::from(owned).metadata().unwrap().ino()
    }

    #[test]
    fn a_user_namespace_owns_the_pods_other_namespaces() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (uids, gids) = (
            IdMap {
                container_id: 0,
                host_id: 200_000,
                length: 65536,
            },
            IdMap {
                container_id: 0,
                host_id: 300_000,
                length: 1000,
            },
        );
        let spec = PodNsSpec {
            net: true,
            ipc: true,
            uts: true,
            hostname: "userns-pod".into(),
            sysctls: vec![("net.ipv4.ip_unprivileged_port_start".into(), "81".into())],
            userns: Some(UsernsMaps { uids, gids }),
        };
        let ns = create_pod_namespaces(dir.path(), &spec).unwrap();
        assert_eq!(ns.files().count(), 4);
        let user = ns.user.clone().unwrap();
        for owned in [&ns.net, &ns.ipc, &ns.uts] {
            assert_eq!(
                ns_inode(owned.as_ref().unwrap(), true),
                ns_inode(&user, false)
            );
        }
        let out = std::process::Command::new("nsenter")
            .arg(format!("--user={}", user.display()))
            .arg(format!("--uts={}", ns.uts.as_ref().unwrap().display()))
            .arg(format!("--net={}", ns.net.as_ref().unwrap().display()))
            .args([
                "sh",
                "-c",
                "cat /proc/self/uid_map /proc/self/gid_map; hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        release_namespaces(&ns);
        assert_eq!(
            words,
            [
                "0",
                "200000",
                "65536",
                "0",
                "300000",
                "1000",
                "userns-pod",
                "81"
            ],
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn idmapped_layers_show_image_files_as_the_namespace_root() {
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let holder = NsHolder::spawn(0, &UsernsMaps::uniform(400_000, 65536)).unwrap();
        let userns = holder.userns_path();
        for sub in ["l1/etc", "l2", "upper", "work", "merged"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        fs::write(d.join("l1/etc/file"), "x").unwrap();
        std::os::unix::fs::chown(d.join("l1/etc/file"), Some(7), Some(8)).unwrap();
        let merged = d.join("merged");
        mount_overlay(
            &merged,
            &[d.join("l2"), d.join("l1")],
            Some((&d.join("upper"), &d.join("work"))),
            Some(&userns),
        )
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(merged.join("etc/file"));
        let etc = fs::metadata(merged.join("etc"));
        unmount(&merged).unwrap();
        drop(holder);
        let (meta, etc) = (meta.unwrap(), etc.unwrap());
        assert_eq!((meta.uid(), meta.gid()), (400_007, 400_008));
        assert_eq!((etc.uid(), etc.gid()), (400_000, 400_000));
        // The layer itself is untouched.
        let disk = fs::metadata(d.join("l1/etc/file")).unwrap();
        assert_eq!((disk.uid(), disk.gid()), (7, 8));
    }
}
