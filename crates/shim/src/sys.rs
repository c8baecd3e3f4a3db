//! The shim's few raw system calls: signal mask and signalfd, fork, and the
//! CLONE_NEWPID clone that starts the pod's pause process. The shim is
//! single-threaded when it calls these.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

/// Block SIGCHLD, SIGTERM, SIGINT and SIGHUP and return a signalfd that reports them.
pub fn signalfd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it fully.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
    }
    // SAFETY: `set` is initialised; the old mask is not wanted (null).
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `set` is initialised; -1 asks for a new fd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Unblock every signal again (in a child before exec).
pub fn unblock_all() {
    // SAFETY: as in `signalfd`; sigprocmask is async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Drain a signalfd; returns whether anything but SIGCHLD arrived (a stop request).
pub fn read_signals(fd: &OwnedFd) -> bool {
    let mut stop = false;
    let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n < buf.len() {
            break;
        }
        let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if signo != libc::SIGCHLD as u32 {
            stop = true;
        }
    }
    stop
}

/// Whether this process is the parent or the child after [`fork`].
pub enum Forked {
    /// In the parent; the child's pid.
    Parent,
    /// In the child.
    Child,
}

/// fork(2).
///
/// # Safety
/// The calling process must be single-threaded: the child goes on running Rust code,
/// which is only sound if no other thread held a lock at the fork.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees a single-threaded process (the shim never spawns a
    // thread), so the child may run Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        _ => Ok(Forked::Parent),
    }
}

/// fork(2), returning the child's pid in the parent and `None` in the child.
///
/// # Safety
/// As [`fork`]: the calling process must be single-threaded.
pub unsafe fn fork_pid() -> io::Result<Option<i32>> {
    // SAFETY: the caller guarantees a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// Close every descriptor from `first` up (in a forked child, before it runs anything
/// that could hand a descriptor on). On a kernel without close_range (< 5.9) they are
/// left (they are close-on-exec).
pub fn close_from(first: u32) {
    close_range(first, u32::MAX, 0);
}

/// `close_range(first, last, flags)`: the one wrapper of the raw syscall (async-signal-
/// safe); 0 or -1 with errno, as the kernel answers.
pub fn close_range(first: u32, last: u32, flags: libc::c_uint) -> libc::c_long {
    // SAFETY: a raw syscall with plain integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::from(first),
            libc::c_uint::from(last),
            flags,
        )
    }
}

/// SIGPIPE back to its default action (Rust's runtime ignores it, and an ignored
/// signal stays ignored across exec).
pub fn default_sigpipe() {
    // SAFETY: setting a standard disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Wait for the operation process `pid` (our child) and return its exit code
/// (128 + the signal that killed it).
pub fn wait_exit(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}

/// Marks every descriptor above stdio close-on-exec: what the shim inherited from
/// whoever started it (skiffd's parent's descriptors, a lock file…) is not its own and
/// must reach neither the OCI runtime nor a container. Called first thing, before the
/// shim opens anything.
pub fn cloexec_inherited() {
    let r = close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
    if r == 0 {
        return;
    }
    // Before 5.11: one fcntl per open descriptor.
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<i32> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect();
        for fd in fds {
            // SAFETY: F_SETFD on a descriptor number; a closed one just fails.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

/// Start the pod's pause binary as PID 1 of a new PID namespace, joined to the cgroups
/// whose `cgroup.procs` files are listed; with `userns` (a user-namespaced pod's pinned
/// user namespace) the PID namespace is made inside it and the pause runs as its root.
/// Returns its pid in the shim's namespace.
pub fn spawn_pause(
    pause: &Path,
    procs_files: &[std::path::PathBuf],
    userns: Option<&Path>,
) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    let prog = CString::new(pause.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in pause path"))?;
    // Opened before the clone: the child only dup2s it over its stdio, so it holds
    // none of the pipes skiffd reads from the shim.
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let Some(userns) = userns else {
        // SAFETY: a raw clone without CLONE_VM behaves like fork: the child gets a copy
        // of the (single-threaded) shim's memory and its own stack copy.
        let pid = unsafe { raw_fork(libc::CLONE_NEWPID) };
        return match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => exec_pause(&prog, &null, procs_files, false),
            pid => i32::try_from(pid).map_err(|_| io::Error::other("clone returned a bad pid")),
        };
    };
    // A PID namespace is owned by the user namespace of the process that makes it, and
    // the shim must stay in the host's: a go-between child joins the pod's user
    // namespace, makes the PID namespace, forks the pause as its PID 1 and exits, so the
    // pause is re-parented to us (the subreaper).
    let userns = std::fs::File::open(userns)?;
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: as above, a fork of the single-threaded shim.
    let mid = unsafe { raw_fork(0) };
    if mid == 0 {
        // SAFETY: in the go-between: setns, unshare, fork, write and _exit only.
        unsafe {
            if libc::setns(userns.as_raw_fd(), libc::CLONE_NEWUSER) != 0
                || libc::unshare(libc::CLONE_NEWPID) != 0
            {
                libc::_exit(126);
            }
            let pid = raw_fork(0);
            if pid == 0 {
                exec_pause(&prog, &null, procs_files, true);
            }
            let bytes = i32::try_from(pid).unwrap_or(-1).to_ne_bytes();
            libc::write(wr.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        }
    }
    if mid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(wr);
    let mut bytes = [0u8; 4];
    let got = rustix::io::read(&rd, &mut bytes);
    // SAFETY: our own child, which has exited or is about to.
    unsafe {
        libc::waitpid(i32::try_from(mid).unwrap_or(-1), std::ptr::null_mut(), 0);
    }
    match (got, i32::from_ne_bytes(bytes)) {
        (Ok(4), pid) if pid > 0 => Ok(pid),
        _ => Err(io::Error::other(
            "could not start the pause process in the pod's user namespace",
        )),
    }
}

/// A raw `clone` with `flags | SIGCHLD` and no CLONE_VM: a fork.
///
/// # Safety
/// As fork: the caller must be single-threaded or the child async-signal-safe.
unsafe fn raw_fork(flags: libc::c_int) -> libc::c_long {
    // SAFETY: the caller's contract.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_long::from(flags | libc::SIGCHLD),
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    }
}

/// In the pause's child: join its cgroups, become the root of the user namespace it is
/// in if `ns_root`, put /dev/null on stdio, close everything else, exec; exit 127 if
/// that fails.
fn exec_pause(
    prog: &CString,
    null: &std::fs::File,
    procs_files: &[std::path::PathBuf],
    ns_root: bool,
) -> ! {
    let argv = [prog.as_ptr(), std::ptr::null()];
    for f in procs_files {
        let _ = std::fs::write(f, b"0");
    }
    if ns_root {
        // SAFETY: plain syscalls in a single-threaded child; any failure ends it.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(0, 0, 0) != 0
                || libc::setresuid(0, 0, 0) != 0
            {
                libc::_exit(126);
            }
        }
    }
    for fd in 0..3 {
        // SAFETY: `null` is an open fd; dup2 is async-signal-safe.
        unsafe {
            libc::dup2(std::os::fd::AsRawFd::as_raw_fd(null), fd);
        }
    }
    // Nothing but stdio reaches the pause (the shim's own fds are CLOEXEC, but
    // `null` and anything it inherited are not); on a kernel without close_range
    // (< 5.9) the fds stay, as before.
    close_from(3);
    unblock_all();
    let _ = rustix::process::setsid();
    // SAFETY: argv is a NUL-terminated array of valid C strings that outlive the call.
    unsafe {
        libc::execv(prog.as_ptr(), argv.as_ptr());
        libc::_exit(127);
    }
}
