//! Shared set-up for skiffd's end-to-end tests.
#![allow(dead_code)]

use std::path::Path;

use skiff_testkit::NetNs;
use skiff_testkit::skiffd::{Skiffd, SkiffdOptions};

/// The skiffd binary cargo built for these tests.
pub fn skiffd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_skiffd"))
}

/// The skiff CLI binary cargo built for these tests.
pub fn skiff_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_skiff"))
}

/// A skiffd in its own network namespace; `None` (and a skip message) without root.
pub struct Env {
    // Field order matters: skiffd stops before its namespace is deleted.
    pub skiffd: Skiffd,
    pub netns: NetNs,
}

/// Start skiffd in a fresh network namespace, or skip the test when not root.
pub fn start(test: &str, options: SkiffdOptions) -> Option<Env> {
    if !skiff_testkit::require_root(test) {
        return None;
    }
    let netns = NetNs::create("e2e").expect("create test netns");
    let skiffd = Skiffd::start_in(skiffd_bin(), &netns, options).expect("start skiffd");
    Some(Env { skiffd, netns })
}
