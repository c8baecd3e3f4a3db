//! Reaping: the shim is the subreaper and parent of every container process of its pod.
//! On SIGCHLD it collects every exit with `waitpid(-1, WNOHANG)` and gives it to the
//! pid's owner at once (a container's exit goes to `<bundle>/exit.json` before anything
//! else). An exit of a pid the shim does not know yet (the runtime wrote the pid file
//! after the process died) is kept, bounded, until the pid is learnt.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use rustix::process::{Pid, WaitOptions};
use skiff_shim_proto::clock::now_ns;
use skiff_shim_proto::protocol::{Exit, Reply, Status};

use super::conns::ConnId;
use super::containers::Key;
use super::{Shim, note};

/// How many exits of unknown pids are remembered.
const MAX_EARLY_EXITS: usize = 1024;

/// Who a child process belongs to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Owner {
    /// A container's init.
    Init(Key),
    /// The init of a container that was deleted before it was reaped.
    Gone,
    /// The runtime process of ExecSync job `n`.
    Exec(u64),
    /// A streaming exec, answered on this connection.
    Stream(ConnId),
    /// The pod's pause process.
    Pause,
}

/// Pids and their owners, and exits that came before their pid was known.
#[derive(Default)]
pub(super) struct Reaper {
    owners: HashMap<i32, Owner>,
    early_exits: HashMap<i32, Exit>,
}

impl Reaper {
    /// `pid` belongs to `owner` from now on.
    pub(super) fn own(&mut self, pid: i32, owner: Owner) {
        self.owners.insert(pid, owner);
    }

    /// The exit of `pid` if it was reaped before anyone owned it.
    pub(super) fn take_early_exit(&mut self, pid: i32) -> Option<Exit> {
        self.early_exits.remove(&pid)
    }
}

/// SIGKILL a child of ours (it cannot have been reused: we have not reaped it); a
/// process that is already gone is fine, anything else is noted with `what` it was.
pub(super) fn kill(pid: i32, what: &str) {
    let Some(p) = Pid::from_raw(pid) else {
        return;
    };
    match rustix::process::kill_process(p, rustix::process::Signal::KILL) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => note!("kill {what} ({pid}): {e}"),
    }
}

fn exit_of(status: rustix::process::WaitStatus) -> Exit {
    let signal = status.terminating_signal();
    let code = status
        .exit_status()
        .or(signal.map(|s| 128 + s))
        .unwrap_or(255);
    Exit {
        code,
        signal,
        at_ns: now_ns(),
    }
}

/// Write `bytes` to `path` durably: temp file, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

impl Shim {
    /// Collect every exited child and hand its exit to its owner.
    pub(super) fn reap(&mut self) {
        loop {
            let (pid, status) = match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some(got)) => got,
                Ok(None) | Err(rustix::io::Errno::CHILD) => return,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    note!("wait: {e}");
                    return;
                }
            };
            let exit = exit_of(status);
            let pid = pid.as_raw_nonzero().get();
            match self.reaper.owners.remove(&pid) {
                Some(Owner::Init(key)) => self.container_exited(key, exit),
                Some(Owner::Gone) => {}
                Some(Owner::Exec(n)) => self.execs.exited(n, exit.code),
                Some(Owner::Stream(conn)) => self.conns.answer(conn, &Ok(Reply::Exited(exit))),
                Some(Owner::Pause) => {
                    note!("pause process {pid} exited ({})", exit.code);
                    self.pause = None;
                }
                None => {
                    if self.reaper.early_exits.len() < MAX_EARLY_EXITS {
                        self.reaper.early_exits.insert(pid, exit);
                    } else {
                        note!("exit of unknown pid {pid} dropped: {MAX_EARLY_EXITS} kept already");
                    }
                }
            }
        }
    }

    /// A container's init exited: record it on disk first, then answer its waiters.
    pub(super) fn container_exited(&mut self, key: Key, exit: Exit) {
        let Some(c) = self.containers.get_mut(key) else {
            return;
        };
        c.status = Status::Exited;
        c.exit = Some(exit);
        match serde_json::to_vec(&exit) {
            Ok(json) => {
                if let Err(e) = write_atomic(&c.bundle.join("exit.json"), &json) {
                    note!("container {}: record exit: {e}", c.id);
                }
            }
            Err(e) => note!("container {}: encode exit: {e}", c.id),
        }
        let waiters = std::mem::take(&mut c.waiters);
        for w in waiters {
            self.conns.answer(w, &Ok(Reply::Exited(exit)));
        }
    }
}
