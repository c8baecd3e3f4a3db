//! Undo actions for everything the harness starts or mounts.
//!
//! Each resource registers one [`Undo`] action (stop a daemon by its PID, delete a
//! namespace, unmount a tmpfs). On the normal path the action runs when its guard
//! drops; on SIGINT, SIGTERM or SIGHUP a signal thread runs every action still
//! registered, newest first, and exits. An action runs at most once either way.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

type Action = Box<dyn FnOnce() + Send>;

struct Entry {
    id: u64,
    what: String,
    action: Action,
}

static ACTIONS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn actions() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    ACTIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A registered undo action; runs when dropped unless [`Undo::disarm`]ed.
#[derive(Debug)]
pub struct Undo {
    id: u64,
}

impl Undo {
    /// Registers `action`, described by `what` in the log.
    pub fn register(what: impl Into<String>, action: impl FnOnce() + Send + 'static) -> Undo {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        actions().push(Entry {
            id,
            what: what.into(),
            action: Box::new(action),
        });
        Undo { id }
    }

    /// Forgets the action without running it (the owner cleans up itself).
    pub fn disarm(self) {
        take(self.id);
        std::mem::forget(self);
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(entry) = take(self.id) {
            (entry.action)();
        }
    }
}

fn take(id: u64) -> Option<Entry> {
    let mut list = actions();
    let pos = list.iter().position(|e| e.id == id)?;
    Some(list.remove(pos))
}

/// Runs every registered action, newest first.
pub fn run_all() {
    loop {
        // Pop under the lock, run outside it: an action may register or drop guards.
        let Some(entry) = actions().pop() else { return };
        eprintln!("skiff-perf: cleanup: {}", entry.what);
        (entry.action)();
    }
}

/// Starts the thread that turns SIGINT/SIGTERM/SIGHUP into cleanup and exit.
pub fn install_signal_handler() -> anyhow::Result<()> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                eprintln!("skiff-perf: got signal {sig}, cleaning up");
                run_all();
                // The main thread may be blocked in a CRI call or a child process: exiting
                // here, after every undo action ran, is the only way out.
                #[allow(clippy::exit)]
                std::process::exit(128 + sig);
            }
        })
        .context("spawning the signal thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn drop_runs_once_and_disarm_skips() {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let undo = Undo::register("count", move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        drop(undo);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        let c = count.clone();
        Undo::register("never", move || {
            c.fetch_add(10, Ordering::SeqCst);
        })
        .disarm();
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
