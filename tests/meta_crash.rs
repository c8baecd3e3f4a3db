//! The metadata store survives SIGKILL in the middle of writes: a child process
//! writes transactions in a loop, the test kills it, reopens the store and checks
//! that every committed transaction is whole.

use std::process::Command;
use std::time::Duration;

use skiff::meta::{MetaStore, Table};

const CHILD_ENV: &str = "SKIFF_META_CRASH_CHILD";

/// Not a test of its own: the writer the parent test runs in a child process.
#[test]
fn meta_writer_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = MetaStore::open(std::path::Path::new(&path)).unwrap();
    let mut n: u64 = store.get(Table::META, "n").unwrap().unwrap_or(0);
    let pad = "x".repeat(4096);
    loop {
        n += 1;
        store
            .write(|tx| {
                tx.put(Table::PODS, &format!("pod-{n}"), &(n, &pad))?;
                tx.put(Table::META, "n", &n)?;
                tx.put(Table::META, "n-copy", &n)?;
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn sigkill_mid_write_reopens_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let mut last = 0u64;
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "meta_writer_child", "--nocapture"])
            .env(CHILD_ENV, &path)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400 + 150 * round));
        child.kill().unwrap();
        child.wait().unwrap();

        let store = MetaStore::open(&path).expect("reopen after SIGKILL");
        let n: u64 = store.get(Table::META, "n").unwrap().unwrap_or(0);
        let copy: u64 = store.get(Table::META, "n-copy").unwrap().unwrap_or(0);
        assert_eq!(n, copy, "a transaction was torn");
        assert!(n >= last, "committed data went back: {n} < {last}");
        let pods = store.list::<(u64, String)>(Table::PODS).unwrap();
        assert_eq!(
            pods.len() as u64,
            n,
            "every committed pod is there, no more"
        );
        last = n;
    }
    assert!(last > 0, "the writer committed nothing");
}
