//! Keeping blocking work off skiffd's async workers.
//!
//! A `sleep`, a directory walk or a cgroup removal (which waits for exiting processes)
//! on a tokio worker stalls every CRI call queued behind it. skiffd runs such work with
//! [`spawn`] (tokio's blocking pool); functions that block call [`assert_may_block`],
//! which in debug builds (every test) panics when called inside the runtime but not
//! from [`spawn`], naming the function, so a new call site on a worker is caught by the
//! first test that reaches it. Release builds check nothing.

use std::cell::Cell;

thread_local! {
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Run blocking `f` on tokio's blocking pool, where [`assert_may_block`] lets it block.
pub fn spawn<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(move || {
        let before = MAY_BLOCK.with(|m| m.replace(true));
        let out = f();
        MAY_BLOCK.with(|m| m.set(before));
        out
    })
}

/// Whether blocking is fine here: outside the tokio runtime (a plain thread), or in
/// work started with [`spawn`].
pub fn may_block() -> bool {
    MAY_BLOCK.with(Cell::get) || tokio::runtime::Handle::try_current().is_err()
}

/// In debug builds, panic if `what` (a blocking function) runs where it would stall
/// async work.
#[track_caller]
pub fn assert_may_block(what: &str) {
    if cfg!(debug_assertions) && !may_block() {
        panic!("{what} blocks and was called inside the async runtime: use blocking::spawn");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn blocking_is_allowed_only_where_it_stalls_nothing() {
        assert!(!may_block(), "an async task may not block");
        assert!(
            spawn(may_block).await.unwrap(),
            "work from blocking::spawn may"
        );
        let plain = std::thread::spawn(may_block).join().unwrap();
        assert!(plain, "a plain thread may");
        let caught = tokio::spawn(async { assert_may_block("test") }).await;
        assert!(caught.is_err(), "debug builds panic on a worker");
    }
}
