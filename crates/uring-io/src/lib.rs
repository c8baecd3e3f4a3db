//! io_uring for skiff, with a blocking fallback.
//!
//! This crate is the only place with `unsafe` io code. It answers the
//! question the daemon reports in `Status` — can this process use io_uring,
//! and does the kernel support the opcodes skiff needs ([`probe`],
//! [`select`]) — and provides [`Ring`], a small driver for batched file IO
//! whose operations own their buffers until the kernel is done with them.

mod ring;

use std::ffi::OsStr;
use std::fs;
use std::sync::OnceLock;

pub use ring::{
    DEFAULT_ENTRIES, DEFAULT_MAX_IN_FLIGHT_BYTES, OpKind, OpTarget, Ring, RingConfig, RingError,
};

/// The environment variable that forces the blocking engine:
/// `SKIFF_IO_ENGINE=blocking`. Any other value (or none) lets [`select`]
/// use io_uring when the [`probe`] allows it.
pub const ENGINE_ENV: &str = "SKIFF_IO_ENGINE";

/// The io_uring opcodes skiff's pipelines use: the unpack engine queues
/// writes and closes, nothing else. ([`Ring::mkdirat`], [`Ring::symlinkat`]
/// and [`Ring::linkat`] are not probed: nothing calls them yet, and a kernel
/// without them answers `EINVAL`.)
const NEEDED: &[(u8, &str)] = &[
    (io_uring::opcode::Write::CODE, "write"),
    (io_uring::opcode::Close::CODE, "close"),
];

/// Why io_uring cannot be used; skiff then takes the blocking path.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// `/proc/sys/kernel/io_uring_disabled` forbids it.
    #[error("io_uring is disabled by /proc/sys/kernel/io_uring_disabled = {0}")]
    Disabled(u8),
    /// Creating a ring failed (seccomp, old kernel, resource limits).
    #[error("cannot create an io_uring: {0}")]
    Setup(String),
    /// The kernel lacks opcodes skiff needs.
    #[error("the kernel's io_uring lacks opcodes: {}", .0.join(", "))]
    MissingOpcodes(Vec<&'static str>),
    /// The operator chose the blocking engine with `SKIFF_IO_ENGINE=blocking`.
    #[error("the blocking engine was chosen with {ENGINE_ENV}=blocking")]
    Forced,
}

/// Which IO engine a pipeline runs on.
#[derive(Debug, Clone)]
pub enum Engine {
    /// io_uring, all needed opcodes present.
    Uring,
    /// Plain blocking syscalls, and why.
    Blocking(Unavailable),
}

impl Engine {
    /// A short name for logs and `Status` info: `io_uring` or `blocking`.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Uring => "io_uring",
            Engine::Blocking(_) => "blocking",
        }
    }
}

/// Probe io_uring once: the sysctl, a real ring, and the opcodes skiff needs.
pub fn probe() -> Engine {
    match try_probe() {
        Ok(()) => Engine::Uring,
        Err(why) => Engine::Blocking(why),
    }
}

/// The engine to use: blocking when [`ENGINE_ENV`] says `blocking`,
/// otherwise what [`probe`] finds (probed once per process).
pub fn select() -> Engine {
    select_with(std::env::var_os(ENGINE_ENV).as_deref())
}

/// [`select`] with the environment variable's value given.
pub fn select_with(env: Option<&OsStr>) -> Engine {
    if env.is_some_and(|v| v.eq_ignore_ascii_case("blocking")) {
        return Engine::Blocking(Unavailable::Forced);
    }
    static PROBED: OnceLock<Engine> = OnceLock::new();
    PROBED.get_or_init(probe).clone()
}

fn try_probe() -> Result<(), Unavailable> {
    if let Ok(text) = fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        let level = text.trim().parse::<u8>().unwrap_or(0);
        // 1 allows only processes in io_uring_group; skiffd runs as root, which is
        // allowed with CAP_SYS_ADMIN, so only 2 is a hard refusal.
        if level >= 2 {
            return Err(Unavailable::Disabled(level));
        }
    }
    let ring = io_uring::IoUring::new(8).map_err(|e| Unavailable::Setup(e.to_string()))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| Unavailable::Setup(e.to_string()))?;
    let missing: Vec<_> = NEEDED
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Unavailable::MissingOpcodes(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers() {
        // Either engine is fine; the probe must not panic and must name itself.
        let engine = probe();
        assert!(["io_uring", "blocking"].contains(&engine.name()));
    }

    #[test]
    fn select_honours_the_environment_and_the_probe() {
        for forced in ["blocking", "BLOCKING"] {
            let engine = select_with(Some(OsStr::new(forced)));
            assert!(
                matches!(engine, Engine::Blocking(Unavailable::Forced)),
                "{forced}"
            );
            assert!(engine_reason(&engine).contains("SKIFF_IO_ENGINE=blocking"));
        }
        for other in [None, Some("io_uring"), Some("auto"), Some("")] {
            let engine = select_with(other.map(OsStr::new));
            assert_eq!(engine.name(), probe().name(), "{other:?}");
        }
    }

    fn engine_reason(engine: &Engine) -> String {
        match engine {
            Engine::Uring => String::new(),
            Engine::Blocking(why) => why.to_string(),
        }
    }
}
