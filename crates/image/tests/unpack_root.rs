//! Layer unpacking that needs root: overlay whiteouts, device nodes,
//! owners with setuid bits, `security.*` / `trusted.*` xattrs. Each test
//! skips with a message when not run as root.

use std::fs;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use skiff_image::unpack::{IoEngine, UnpackError, UnpackOptions, UnpackStats, unpack};
use skiff_testkit::image::{FIXED_MTIME, LayerBuilder};
use tar::EntryType;

/// Runs each listed test once per IO engine, as `uring::<name>` and
/// `blocking::<name>`: both engines must give the same results.
macro_rules! engine_tests {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test]
            fn $name() {
                super::$name(super::IoEngine::Uring)
            })*
        }
        mod blocking {
            $(#[test]
            fn $name() {
                super::$name(super::IoEngine::Blocking)
            })*
        }
    };
}

engine_tests!(
    whiteouts_and_opaque_directories,
    whiteout_replaces_an_earlier_entry_and_stays_inside,
    device_nodes_when_privileged,
    setuid_survives_chown,
    symlink_owner_is_set_without_following,
    capability_and_trusted_xattrs_are_kept_overlay_ones_dropped,
);

fn need_root(test: &str) -> bool {
    skiff_testkit::require_root(test)
}

fn privileged(engine: IoEngine) -> UnpackOptions {
    UnpackOptions {
        privileged: true,
        engine,
        ..UnpackOptions::default()
    }
}

struct Layer {
    dir: tempfile::TempDir,
    root: PathBuf,
    engine: IoEngine,
}

impl Layer {
    fn new(engine: IoEngine) -> Layer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        Layer { dir, root, engine }
    }

    fn unpack(&self, b: &LayerBuilder) -> Result<UnpackStats, UnpackError> {
        unpack(
            &b.write_tar(Vec::new()).unwrap()[..],
            &self.root,
            &privileged(self.engine),
        )
    }

    fn unpack_tar(&self, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
        unpack(tar, &self.root, &privileged(self.engine))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn assert_whiteout(path: &Path) {
    let meta = fs::symlink_metadata(path).unwrap();
    assert!(meta.file_type().is_char_device(), "{}", path.display());
    assert_eq!(meta.rdev(), 0, "{}", path.display());
}

// ---------------------------------------------------------------------------
// 3. Whiteouts and opaque directories.

fn whiteouts_and_opaque_directories(engine: IoEngine) {
    if !need_root("whiteouts_and_opaque_directories") {
        return;
    }
    let mut b = LayerBuilder::new();
    b.dir("etc", 0o755)
        .whiteout("etc/passwd")
        .whiteout("gone")
        .dir("var", 0o755)
        .opaque("var")
        .file("var/new", 0o644, "n")
        // Marker for a directory with no entry of its own: created.
        .opaque("opt/app")
        // AUFS metadata: skipped.
        .file("etc/.wh..wh.plnk", 0o644, "");
    let layer = Layer::new(engine);
    let stats = layer.unpack(&b).unwrap();

    assert_whiteout(&layer.path("etc/passwd"));
    assert_whiteout(&layer.path("gone"));
    assert_eq!(
        xattr(&layer.path("var"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr(&layer.path("opt/app"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(&layer.path("etc"), "trusted.overlay.opaque"), None);
    assert_eq!(fs::read(layer.path("var/new")).unwrap(), b"n");
    // No marker is ever written as a file.
    for rel in [
        "etc/.wh.passwd",
        ".wh.gone",
        "var/.wh..wh..opq",
        "opt/app/.wh..wh..opq",
        "etc/.wh..wh.plnk",
    ] {
        assert!(fs::symlink_metadata(layer.path(rel)).is_err(), "{rel}");
    }
    assert_eq!(stats.whiteouts, 4);
    assert_eq!(stats.skipped, 1);
    // The opaque xattr did not disturb the directory's times.
    assert_eq!(
        fs::metadata(layer.path("var")).unwrap().mtime(),
        FIXED_MTIME as i64
    );
}

fn whiteout_replaces_an_earlier_entry_and_stays_inside(engine: IoEngine) {
    if !need_root("whiteout_replaces_an_earlier_entry_and_stays_inside") {
        return;
    }
    let mut b = LayerBuilder::new();
    b.file("f", 0o644, "x").whiteout("f");
    b.symlink("up", "../..").whiteout("up/skiff-esc-wh");
    b.raw_entry(
        &b"../../.wh.skiff-esc-wh2"[..],
        EntryType::Regular,
        None,
        "",
    );
    let layer = Layer::new(engine);
    let before: Vec<_> = fs::read_dir(layer.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    layer.unpack(&b).unwrap();
    assert_whiteout(&layer.path("f"));
    assert_whiteout(&layer.path("skiff-esc-wh"));
    assert_whiteout(&layer.path("skiff-esc-wh2"));
    let after: Vec<_> = fs::read_dir(layer.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after);
}

// ---------------------------------------------------------------------------
// Device nodes.

fn device_header(path: &str, kind: EntryType, major: u32, minor: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(0o620);
    h.set_uid(0);
    h.set_gid(5);
    h.set_mtime(FIXED_MTIME);
    h.set_size(0);
    h.set_device_major(major).unwrap();
    h.set_device_minor(minor).unwrap();
    h.set_cksum();
    h
}

fn device_nodes_when_privileged(engine: IoEngine) {
    if !need_root("device_nodes_when_privileged") {
        return;
    }
    let mut b = LayerBuilder::new();
    b.dir("dev", 0o755)
        .raw_header(device_header("dev/null", EntryType::Char, 1, 3), Vec::new())
        .raw_header(
            device_header("dev/loop9", EntryType::Block, 7, 9),
            Vec::new(),
        );
    let layer = Layer::new(engine);
    let stats = layer.unpack(&b).unwrap();
    let null = fs::symlink_metadata(layer.path("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o620);
    assert_eq!((null.uid(), null.gid()), (0, 5));
    assert_eq!(null.mtime(), FIXED_MTIME as i64);
    let lo = fs::symlink_metadata(layer.path("dev/loop9")).unwrap();
    assert!(lo.file_type().is_block_device());
    assert_eq!(lo.rdev(), rustix::fs::makedev(7, 9));
    assert_eq!(stats.devices, 2);
    assert_eq!(stats.skipped_devices, 0);
}

// ---------------------------------------------------------------------------
// 7. Owners and setuid bits.

fn setuid_survives_chown(engine: IoEngine) {
    if !need_root("setuid_survives_chown") {
        return;
    }
    let mut b = LayerBuilder::new();
    b.file_owned("bin/su", 0o4755, 1000, 1000, "su")
        .file_owned("bin/wall", 0o2755, 0, 5, "wall")
        .dir_owned("shared", 0o3775, 1000, 2000)
        .file_owned("shared/f", 0o640, 1000, 2000, "f");
    let layer = Layer::new(engine);
    layer.unpack(&b).unwrap();
    let su = fs::metadata(layer.path("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    assert_eq!((su.uid(), su.gid()), (1000, 1000));
    let wall = fs::metadata(layer.path("bin/wall")).unwrap();
    assert_eq!(wall.permissions().mode() & 0o7777, 0o2755);
    assert_eq!((wall.uid(), wall.gid()), (0, 5));
    let shared = fs::metadata(layer.path("shared")).unwrap();
    assert_eq!(shared.permissions().mode() & 0o7777, 0o3775);
    assert_eq!((shared.uid(), shared.gid()), (1000, 2000));
    let f = fs::metadata(layer.path("shared/f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1000, 2000));
}

fn symlink_owner_is_set_without_following(engine: IoEngine) {
    if !need_root("symlink_owner_is_set_without_following") {
        return;
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Symlink);
    h.set_path("link").unwrap();
    h.set_link_name("target").unwrap();
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mode(0o777);
    h.set_mtime(FIXED_MTIME);
    h.set_size(0);
    h.set_cksum();
    let mut b = LayerBuilder::new();
    b.file("target", 0o644, "t").raw_header(h, Vec::new());
    let layer = Layer::new(engine);
    layer.unpack(&b).unwrap();
    let link = fs::symlink_metadata(layer.path("link")).unwrap();
    assert_eq!((link.uid(), link.gid()), (1000, 1001));
    assert_eq!(link.mtime(), FIXED_MTIME as i64);
    let target = fs::metadata(layer.path("target")).unwrap();
    assert_eq!((target.uid(), target.gid()), (0, 0));
}

// ---------------------------------------------------------------------------
// Privileged xattrs.

/// A v2 file capability: CAP_NET_RAW, effective.
const CAP_NET_RAW: &[u8] =
    b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

fn capability_and_trusted_xattrs_are_kept_overlay_ones_dropped(engine: IoEngine) {
    if !need_root("capability_and_trusted_xattrs_are_kept_overlay_ones_dropped") {
        return;
    }
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.security.capability", CAP_NET_RAW),
        ("SCHILY.xattr.trusted.app", &b"kept"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
    ])
    .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(FIXED_MTIME);
    h.set_size(4);
    b.append_data(&mut h, "ping", &b"ping"[..]).unwrap();
    let layer = Layer::new(engine);
    layer.unpack_tar(&b.into_inner().unwrap()).unwrap();

    let ping = layer.path("ping");
    // Set after chown, which would have cleared it.
    assert_eq!(
        xattr(&ping, "security.capability").as_deref(),
        Some(CAP_NET_RAW)
    );
    assert_eq!(xattr(&ping, "trusted.app").as_deref(), Some(&b"kept"[..]));
    assert_eq!(xattr(&ping, "trusted.overlay.redirect"), None);
    assert_eq!(xattr(&ping, "trusted.overlay.opaque"), None);
    let meta = fs::metadata(&ping).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(meta.uid(), 1000);
}
