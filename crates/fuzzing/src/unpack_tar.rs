//! A tar stream unpacked into a throwaway root: it may fail, but nothing may appear
//! outside the root (a sibling canary directory stays empty, and the root's parent holds
//! nothing new).

use skiff_image::unpack::{IoEngine, UnpackOptions, unpack};

/// One input.
pub fn run(data: &[u8]) {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let canary = base.path().join("canary");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&canary).unwrap();
    let opts = UnpackOptions {
        privileged: false,
        max_path_len: 4096,
        max_pax_bytes: 1 << 20,
        engine: IoEngine::Blocking,
        writeback: None,
    };
    let _ = unpack(data, &root, &opts);
    let mut names: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["canary", "root"],
        "something was written next to the root"
    );
    assert_eq!(
        std::fs::read_dir(&canary).unwrap().count(),
        0,
        "something was written into a sibling of the root"
    );
    // Make sure the root can be removed again (read-only dirs in the layer).
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+rwx"])
        .arg(&root)
        .status();
}
