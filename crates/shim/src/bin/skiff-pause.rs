//! skiff-pause: PID 1 of a pod's PID namespace. It holds the namespace open, reaps
//! the orphans that are re-parented to it, and exits on SIGTERM or SIGINT.

fn main() {
    let set = sig::SigSet::stop_and_child();
    set.block();
    loop {
        match set.wait() {
            Some(libc::SIGCHLD) => sig::reap(),
            Some(libc::SIGTERM) | Some(libc::SIGINT) => return,
            _ => {}
        }
    }
}

/// The few signal calls pause needs, on libc.
mod sig {
    pub struct SigSet(libc::sigset_t);

    impl SigSet {
        /// SIGCHLD, SIGTERM and SIGINT.
        pub fn stop_and_child() -> SigSet {
            // SAFETY: sigset_t is plain data, initialised by sigemptyset below.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: `set` is a valid sigset_t.
            unsafe {
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGCHLD);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::sigaddset(&mut set, libc::SIGINT);
            }
            SigSet(set)
        }

        /// Block the set so that `wait` receives them.
        pub fn block(&self) {
            // SAFETY: the set is initialised.
            unsafe {
                libc::sigprocmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut());
            }
        }

        /// Wait for one of the signals.
        pub fn wait(&self) -> Option<i32> {
            let mut sig = 0;
            // SAFETY: the set is initialised and `sig` is a valid out pointer.
            let r = unsafe { libc::sigwait(&self.0, &mut sig) };
            (r == 0).then_some(sig)
        }
    }

    /// Reap every exited child.
    pub fn reap() {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
        }
    }
}
