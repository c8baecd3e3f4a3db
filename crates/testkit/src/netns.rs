//! Throw-away network namespaces for tests, managed with `ip netns`.
//!
//! A [`NetNs`] is a named namespace (`/run/netns/NAME`) with only `lo`, up.
//! Run code inside it with [`NetNs::run`] (a fresh thread that `setns`es into
//! it) or start programs in it with [`NetNs::command`]. Dropping the value
//! deletes the namespace.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// Errors from creating or entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// `ip` could not be started at all.
    #[error("running `{command}`: {source}")]
    Spawn {
        /// The command line that was attempted.
        command: String,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// `ip` ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line that failed.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The namespace file could not be opened.
    #[error("opening network namespace {path}: {source}", path = path.display())]
    Open {
        /// `/run/netns/NAME`.
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: std::io::Error,
    },
    /// `setns(CLONE_NEWNET)` failed.
    #[error("entering network namespace {name}: {source}")]
    Setns {
        /// The namespace name.
        name: String,
        /// Why the kernel refused.
        #[source]
        source: std::io::Error,
    },
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The environment variable that turns every test skip into a failure. `.ci/run`
/// sets it: there, a test that cannot run its real check must fail, never pass.
pub const STRICT_ENV: &str = "SKIFF_TEST_STRICT";

/// Whether skips are forbidden ([`STRICT_ENV`] set to anything but empty or `0`).
pub fn strict() -> bool {
    std::env::var(STRICT_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The one place a test gives up on its real check: prints `skipping <test>: <why>` and
/// returns `false`, or, under [`STRICT_ENV`], panics with that message.
pub fn skip(test: &str, why: &str) -> bool {
    assert!(
        !strict(),
        "{test} cannot run its real check ({why}) and {STRICT_ENV} forbids skipping"
    );
    eprintln!("skipping {test}: {why}");
    false
}

/// Returns `true` when running as root; otherwise [`skip`]s with `needs root`
/// (a failure under [`STRICT_ENV`]).
///
/// ```no_run
/// # fn t() {
/// if !skiff_testkit::require_root("pulls_from_registry") {
///     return;
/// }
/// # }
/// ```
pub fn require_root(test: &str) -> bool {
    is_root() || skip(test, "needs root")
}

/// Returns early from the enclosing test (which must return `()`) unless
/// running as root, printing why.
///
/// Without an argument the test name is taken from the current thread's
/// name, which libtest sets to the test's path.
#[macro_export]
macro_rules! skip_unless_root {
    () => {
        if !$crate::netns::require_root(
            ::std::thread::current()
                .name()
                .unwrap_or(::std::module_path!()),
        ) {
            return;
        }
    };
    ($test:expr) => {
        if !$crate::netns::require_root($test) {
            return;
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    /// Creates a namespace named `skt-<prefix>-<pid>-<n>` and brings `lo` up
    /// in it. `prefix` is cut to 12 characters to keep the name short.
    pub fn create(prefix: &str) -> Result<NetNs, NetNsError> {
        let prefix: String = prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(12)
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("skt-{prefix}-{}-{n}", std::process::id());
        run_ip(&["netns", "add", &name])?;
        let ns = NetNs {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        // From here on `ns` owns the namespace: an error drops it and deletes it.
        run_ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the bind mount that keeps the namespace alive.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A [`Command`] that runs `program` inside the namespace
    /// (`ip netns exec NAME program`); add arguments to it as usual.
    /// `ip netns exec` execs the program, so the child's PID is the
    /// program's own.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(&self.name).arg(program);
        cmd
    }

    /// Runs `f` on a fresh thread that first moves into this namespace, and
    /// returns its result; sockets `f` opens live in the namespace. A panic
    /// in `f` is resumed on the calling thread.
    ///
    /// # Panics
    /// If the thread cannot enter the namespace; see [`NetNs::try_run`].
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`NetNs::run`], but reports a failure to enter the namespace.
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetNsError> {
        let ns_file = File::open(&self.path).map_err(|source| NetNsError::Open {
            path: self.path.clone(),
            source,
        })?;
        let name = self.name.as_str();
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(scope, move || {
                    move_into_link_name_space(ns_file.as_fd(), Some(LinkNameSpaceType::Network))
                        .map_err(|e| NetNsError::Setns {
                            name: name.to_owned(),
                            source: e.into(),
                        })?;
                    drop(ns_file);
                    Ok(f())
                })
                .map_err(|source| NetNsError::Spawn {
                    command: format!("thread for netns {name}"),
                    source,
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!(
                "skiff-testkit: deleting network namespace {}: {e}",
                self.name
            );
        }
    }
}

fn run_ip(args: &[&str]) -> Result<Output, NetNsError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetNsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetNsError::CommandFailed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}
