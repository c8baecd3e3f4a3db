//! The install step (`scripts/install`) into a throwaway root: binaries, the systemd
//! unit (checked with `systemd-analyze verify` where systemd's tools are installed),
//! the default config (which skiffd accepts and which means the defaults), and the
//! crictl config. No root needed.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn install_into_a_throwaway_root() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bins = common::skiffd_bin().parent().unwrap().to_path_buf();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let out = Command::new(repo.join("scripts/install"))
        .arg("--from")
        .arg(&bins)
        .arg("--destdir")
        .arg(&root)
        .args(["--prefix", "/usr/local"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for b in ["skiffd", "skiff", "skiff-shim", "skiff-pause"] {
        let p = root.join("usr/local/bin").join(b);
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&p).unwrap().permissions());
        assert_eq!(mode & 0o111, 0o111, "{} is not executable", p.display());
    }
    let unit_path = root.join("etc/systemd/system/skiffd.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/skiffd",
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    // The config installed is the defaults, and skiffd takes it.
    let config = root.join("etc/skiff/config.toml");
    let check = Command::new(common::skiffd_bin())
        .arg("--config")
        .arg(&config)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let effective: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(effective["root"], "/var/lib/skiff");
    assert_eq!(effective["pod_cidr_from_file"], false);
    let bad = t.path().join("bad.toml");
    std::fs::write(&bad, "[network]\nmode = \"nope\"\n").unwrap();
    let check = Command::new(common::skiffd_bin())
        .arg("--config")
        .arg(&bad)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("network.mode"),
        "{check:?}"
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let parsed: toml::Table = text.parse().expect("the default config is TOML");
    assert_eq!(parsed["network"]["mode"].as_str(), Some("bridge"));
    assert!(
        std::fs::read_to_string(root.join("etc/crictl.yaml"))
            .unwrap()
            .contains("unix:///run/skiff/skiff.sock")
    );
    // A second install keeps an edited config and writes the defaults beside it.
    std::fs::write(&config, "# mine\n").unwrap();
    let again = Command::new(repo.join("scripts/install"))
        .arg("--from")
        .arg(&bins)
        .arg("--destdir")
        .arg(&root)
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# mine\n");
    assert!(root.join("etc/skiff/config.toml.default").exists());

    // systemd's own check of the unit, with ExecStart where the binary really is.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        skiff_testkit::skip(
            "install_into_a_throwaway_root (unit check)",
            "no systemd-analyze",
        );
        return;
    }
    let installed = root.join("usr/local/bin");
    let check = t.path().join("skiffd.service");
    std::fs::write(
        &check,
        unit.replace("/usr/local/bin", &installed.display().to_string()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&check)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
