//! Exec'd processes of the native handler, written here rather than taken from
//! libcontainer: its tenant builder rebuilds the container's `linux` section without
//! the seccomp profile, so an exec'd process would run unfiltered (docs/decisions.md).
//!
//! Runs in the operation's fork (`C`), single-threaded:
//! 1. everything on the host side first: the container's record and bundle spec, a
//!    pidfd of its init, the init's cgroups joined (all of them, as listed in
//!    `/proc/<init>/cgroup`), the pid file and console socket opened,
//!    AppArmor/SELinux exec labels set (they carry over fork and apply at exec);
//! 2. one `setns` on the pidfd for every namespace the init does not share with us;
//! 3. a fork (`G`, the first process in the container's PID namespace) that sets up
//!    the tty, rlimits, groups and ids, capabilities, working directory (resolved in
//!    the container's root), `no_new_privs` and seccomp, closes every inherited
//!    descriptor but the status pipe, and execs. `C` learns of a failure before the
//!    exec from that close-on-exec pipe, writes `G`'s pid, and waits for it unless
//!    detached. No `/proc` write happens after step 2.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxSeccomp, Process, Spec};

use super::Handler;

/// An exec into a running container.
pub struct ExecRequest<'a> {
    /// The command and its arguments (the rest of the process is the container's).
    pub args: &'a [String],
    /// Where the exec'd process's pid goes.
    pub pid_file: &'a Path,
    /// Return once it runs instead of waiting for its exit.
    pub detach: bool,
    /// With a terminal: the socket the pty master is sent over.
    pub console: Option<&'a Path>,
}

/// The namespaces an exec'd process joins when the init's differ from ours.
const NAMESPACES: [(&str, libc::c_int); 7] = [
    ("user", libc::CLONE_NEWUSER),
    ("mnt", libc::CLONE_NEWNS),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
];

/// PATH when the process sets none (runc's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Handler {
    /// Run `req` in container `id`: the process's exit code (0 once it runs when
    /// detached), or why it could not be started.
    pub fn exec(&self, id: &str, req: &ExecRequest) -> Result<i32, String> {
        if req.args.is_empty() {
            return Err("exec: no command given".into());
        }
        let mut container = self.load(id)?;
        container
            .refresh_status()
            .map_err(|e| format!("container {id}: {e}"))?;
        if !container.can_exec() {
            return Err(format!("cannot exec in a {} container", container.status()));
        }
        let init = container
            .pid()
            .ok_or_else(|| format!("container {id} has no init pid"))?;
        let bundle = container.bundle().clone();
        let spec = Spec::load(bundle.join("config.json"))
            .map_err(|e| format!("container {id}: load its spec: {e}"))?;
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| format!("container {id}: its spec has no process"))?;
        process.set_args(Some(req.args.to_vec()));
        process.set_terminal(Some(req.console.is_some()));
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        if let Some(s) = &seccomp
            && libcontainer::seccomp::is_notify(s)
        {
            return Err("seccomp notify profiles are not supported by the native handler".into());
        }

        // 1. Host side.
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(init.as_raw()).ok_or("bad init pid")?,
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| format!("container {id}: its init {init} is gone: {e}"))?;
        let flags = namespace_flags(init.as_raw())?;
        super::cgroups::join_cgroups_of(init.as_raw())
            .map_err(|e| format!("container {id}: {e}"))?;
        let mut pid_file = File::create(req.pid_file)
            .map_err(|e| format!("create {}: {e}", req.pid_file.display()))?;
        let console = req
            .console
            .map(UnixStream::connect)
            .transpose()
            .map_err(|e| format!("connect to the console socket: {e}"))?;
        set_labels(&process)?;

        // 2. Into the container's namespaces, all at once.
        // SAFETY: setns on a pidfd we own, with namespace flags.
        if flags != 0 && unsafe { libc::setns(pidfd.as_raw_fd(), flags) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                // The init is exiting: its namespaces went before its exit is final. Wait
                // for that (the pidfd turns readable), so the shim, seeing the exit, takes
                // this for the race with the container's end that it is.
                let mut fds = [rustix::event::PollFd::new(
                    &pidfd,
                    rustix::event::PollFlags::IN,
                )];
                let limit = rustix::event::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                };
                let _ = rustix::event::poll(&mut fds, Some(&limit));
                return Err(format!("container {id} has exited"));
            }
            return Err(format!("container {id}: join its namespaces: {e}"));
        }
        drop(pidfd);

        // 3. The process itself.
        let (status_r, status_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| format!("status pipe: {e}"))?;
        // SAFETY: this fork is single-threaded (a fork of the single-threaded shim).
        let child = unsafe { crate::sys::fork_pid() }.map_err(|e| format!("fork: {e}"))?;
        let Some(pid) = child else {
            drop(status_r);
            let err = become_process(&process, seccomp.as_ref(), console, &status_w);
            let mut w = File::from(status_w);
            let _ = w.write_all(err.as_bytes());
            // SAFETY: ends the child without running destructors.
            unsafe { libc::_exit(127) }
        };
        drop(status_w);
        drop(console);
        let mut failure = String::new();
        let _ = File::from(status_r).read_to_string(&mut failure);
        if !failure.is_empty() {
            let _ = crate::sys::wait_exit(pid);
            return Err(failure);
        }
        pid_file
            .write_all(pid.to_string().as_bytes())
            .map_err(|e| format!("write {}: {e}", req.pid_file.display()))?;
        drop(pid_file);
        if req.detach {
            return Ok(0);
        }
        crate::sys::wait_exit(pid).map_err(|e| format!("wait for pid {pid}: {e}"))
    }
}

/// The `setns` flags for the namespaces of `pid` that differ from ours.
fn namespace_flags(pid: i32) -> Result<libc::c_int, String> {
    let mut flags = 0;
    for (name, flag) in NAMESPACES {
        let theirs = fs::metadata(format!("/proc/{pid}/ns/{name}"));
        let ours = fs::metadata(format!("/proc/self/ns/{name}"));
        match (theirs, ours) {
            (Ok(t), Ok(o)) if t.ino() == o.ino() && t.dev() == o.dev() => {}
            (Ok(_), Ok(_)) => flags |= flag,
            (Err(e), _) => return Err(format!("namespace {name} of pid {pid}: {e}")),
            // A namespace type this kernel lacks is not one the init can be in.
            (Ok(_), Err(_)) => {}
        }
    }
    Ok(flags)
}

/// The AppArmor profile and SELinux label the process gets at exec, set before the
/// namespaces change (the exec attributes are copied by fork).
fn set_labels(process: &Process) -> Result<(), String> {
    if let Some(profile) = process.apparmor_profile()
        && !profile.is_empty()
    {
        libcontainer::apparmor::apply_profile(profile)
            .map_err(|e| format!("AppArmor profile {profile}: {e}"))?;
    }
    if let Some(label) = process.selinux_label()
        && !label.is_empty()
    {
        if !Path::new("/sys/fs/selinux/enforce").exists() {
            return Err(format!(
                "SELinux label {label}: SELinux is not enabled on this host"
            ));
        }
        fs::write("/proc/thread-self/attr/exec", label)
            .map_err(|e| format!("SELinux label {label}: {e}"))?;
    }
    Ok(())
}

/// In `G`: set up the process as its spec says and exec it. Returns only on failure,
/// with the reason.
fn become_process(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    console: Option<UnixStream>,
    status: &OwnedFd,
) -> String {
    match prepare(process, seccomp, console, status) {
        Ok((path, argv, envp)) => {
            let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
            argv_p.push(std::ptr::null());
            let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
            envp_p.push(std::ptr::null());
            // SAFETY: NUL-terminated arrays of valid C strings that outlive the call.
            unsafe { libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
            format!(
                "exec {}: {}",
                path.to_string_lossy(),
                io::Error::last_os_error()
            )
        }
        Err(e) => e,
    }
}

type Exec = (CString, Vec<CString>, Vec<CString>);

fn prepare(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    console: Option<UnixStream>,
    status: &OwnedFd,
) -> Result<Exec, String> {
    let sys = libcontainer::syscall::syscall::create_syscall();
    if let Some(sock) = console {
        setup_tty(&sock)?;
    }
    for limit in process.rlimits().iter().flatten() {
        sys.set_rlimit(limit)
            .map_err(|e| format!("rlimit {:?}: {e}", limit.typ()))?;
    }
    let nnp = process.no_new_privileges().unwrap_or(false);
    // Without no_new_privs loading a filter needs CAP_SYS_ADMIN: before the drop.
    if !nnp && let Some(s) = seccomp {
        load_seccomp(s)?;
    }
    let user = process.user();
    let gids: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    sys.set_groups(&gids)
        .map_err(|e| format!("set groups {gids:?}: {e}"))?;
    sys.set_id(Uid::from_raw(user.uid()), Gid::from_raw(user.gid()))
        .map_err(|e| format!("set uid {} gid {}: {e}", user.uid(), user.gid()))?;
    if let Some(mask) = user.umask() {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
    }
    libcontainer::capabilities::reset_effective(sys.as_ref())
        .map_err(|e| format!("capabilities: {e}"))?;
    if let Some(caps) = process.capabilities() {
        libcontainer::capabilities::drop_privileges(caps, sys.as_ref())
            .map_err(|e| format!("capabilities: {e}"))?;
    }
    // Nothing from the shim's side may be reachable by the process, not even as a
    // working directory through /proc/self/fd: only stdio and the status pipe stay.
    let keep = u32::try_from(status.as_raw_fd()).map_err(|_| "bad status fd")?;
    if keep > 3 {
        crate::sys::close_range(3, keep - 1, 0);
    }
    crate::sys::close_from(keep + 1);
    let cwd = process.cwd();
    std::env::set_current_dir(cwd)
        .map_err(|e| format!("working directory {}: {e}", cwd.display()))?;
    match std::env::current_dir() {
        Ok(p) if p.is_absolute() => {}
        _ => {
            return Err(format!(
                "working directory {} is outside the container",
                cwd.display()
            ));
        }
    }
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(user.uid())));
    }
    let path = resolve(&process.args().clone().unwrap_or_default()[0], &env)?;
    if nnp {
        rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
        if let Some(s) = seccomp {
            load_seccomp(s)?;
        }
    }
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("NUL byte in {s:?}"));
    let argv = process
        .args()
        .iter()
        .flatten()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>, _>>()?;
    let path = CString::new(path.into_os_string().into_encoded_bytes())
        .map_err(|_| "NUL byte in the command path".to_string())?;
    Ok((path, argv, envp))
}

fn load_seccomp(s: &LinuxSeccomp) -> Result<(), String> {
    libcontainer::seccomp::initialize_seccomp(s)
        .map(|_| ())
        .map_err(|e| format!("seccomp: {e}"))
}

/// A new pty in the container's devpts as the process's controlling terminal and
/// stdio; the master goes to the shim over the console socket.
fn setup_tty(sock: &UnixStream) -> Result<(), String> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(|e| format!("open /dev/ptmx: {e}"))?;
    grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let name = ptsname(&master, Vec::new()).map_err(|e| format!("ptsname: {e}"))?;
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(Path::new(std::ffi::OsStr::from_bytes(name.as_bytes())))
        .map_err(|e| format!("open {name:?}: {e}"))?;
    rustix::process::setsid().map_err(|e| format!("setsid: {e}"))?;
    rustix::process::ioctl_tiocsctty(&slave).map_err(|e| format!("TIOCSCTTY: {e}"))?;
    for fd in 0..3 {
        // SAFETY: `slave` is open; dup2 onto stdio.
        unsafe {
            libc::dup2(slave.as_raw_fd(), fd);
        }
    }
    let fds = [master.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    let iov = [io::IoSlice::new(b"/dev/ptmx")];
    rustix::net::sendmsg(sock, &iov, &mut control, rustix::net::SendFlags::empty())
        .map_err(|e| format!("send the pty master: {e}"))?;
    Ok(())
}

/// The home directory of `uid` from the container's `/etc/passwd`, or `/`.
fn home_of(uid: u32) -> String {
    let Ok(text) = fs::read_to_string("/etc/passwd") else {
        return "/".into();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
        })
        .next()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// The executable `cmd` names: itself if it has a slash, else the first executable
/// file of that name on the process's PATH (in the container's root).
fn resolve(cmd: &str, env: &[String]) -> Result<PathBuf, String> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(cmd);
        if let Ok(m) = fs::metadata(&p)
            && m.is_file()
            && m.mode() & 0o111 != 0
        {
            return Ok(p);
        }
    }
    Err(format!("exec: {cmd:?}: executable file not found in $PATH"))
}
