//! Layer unpacking: contents and metadata, confinement against hostile
//! archives, replacement semantics, PAX records and malformed input.
//!
//! These run as any user; where being root changes the outcome (owners)
//! the assertion is made only as root. Root-only behaviour (whiteouts,
//! device nodes, privileged xattrs) is in `unpack_root.rs`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use skiff_image::unpack::{IoEngine, UnpackError, UnpackOptions, UnpackStats, unpack};
use skiff_testkit::image::{
    BUSYBOX_APPLETS, BUSYBOX_PATH, FIXED_MTIME, LayerBuilder, busybox_rootfs,
};
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
    busybox_rootfs_unpacks_with_metadata,
    directory_modes_and_times_are_applied_after_children,
    missing_parents_are_created_0755,
    non_utf8_names_and_fifos,
    dotdot_names_are_clamped_at_the_root,
    absolute_symlink_parent_stays_inside,
    relative_symlink_parent_stays_inside,
    symlink_chain_stays_inside,
    symlink_directory_then_directory_entries_beneath_it,
    file_replaces_a_symlink_instead_of_writing_through_it,
    directory_replaces_a_symlink_then_is_written_through,
    hardlink_outside_the_root_is_not_reachable,
    hardlink_through_a_symlinked_directory_stays_inside,
    hardlink_to_an_escaping_symlink_links_the_symlink_itself,
    fifo_and_dir_entries_with_escaping_names_stay_inside,
    replacement_semantics,
    pax_xattrs_times_and_long_paths,
    privileged_xattrs_are_dropped_when_unprivileged,
    gnu_sparse_files_are_expanded,
    pax_sparse_files_are_refused,
    name_longer_than_the_limit_is_refused,
    huge_extension_headers_are_refused_before_reading,
    real_long_name_over_the_extension_limit_is_refused,
    truncated_archives_name_the_entry,
    bad_checksum_is_an_error,
    hardlink_to_missing_or_directory_target,
    devices_are_skipped_when_unprivileged,
    unknown_entry_types_and_aufs_metadata_are_skipped,
    whiteouts_need_privileges,
    root_entry_that_is_not_a_directory_is_skipped,
    missing_root_is_an_error,
    file_modes_and_owners_hold_whatever_creation_gave,
    a_hundred_thousand_empty_files,
    thousands_of_hard_links_to_one_file,
);

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn tar_of(b: &LayerBuilder) -> Vec<u8> {
    b.write_tar(Vec::new()).expect("building test layer")
}

fn opts(engine: IoEngine) -> UnpackOptions {
    UnpackOptions {
        engine,
        ..UnpackOptions::default()
    }
}

fn unprivileged(engine: IoEngine) -> UnpackOptions {
    UnpackOptions {
        privileged: false,
        ..opts(engine)
    }
}

/// A fresh empty layer root inside its own temp dir.
struct Layer {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Layer {
    fn new() -> Layer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        Layer { _dir: dir, root }
    }

    fn unpack(&self, tar: &[u8], opts: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
        unpack(tar, &self.root, opts)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

// ---------------------------------------------------------------------------
// 1. A real rootfs.

fn busybox_rootfs_unpacks_with_metadata(engine: IoEngine) {
    let tar = tar_of(&busybox_rootfs().unwrap());
    let layer = Layer::new();
    let stats = layer.unpack(&tar, &opts(engine)).unwrap();

    assert_eq!(
        fs::read_link(layer.path("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let busybox = fs::read(layer.path("bin/busybox")).unwrap();
    assert_eq!(busybox, fs::read(BUSYBOX_PATH).unwrap());
    assert_eq!(mode_of(&layer.path("bin/busybox")), 0o755);
    assert_eq!(mode_of(&layer.path("etc/passwd")), 0o644);
    assert_eq!(mode_of(&layer.path("tmp")), 0o1777);
    assert_eq!(mode_of(&layer.path("root")), 0o700);
    assert_eq!(mode_of(&layer.path("proc")), 0o555);
    assert!(
        fs::read_to_string(layer.path("etc/passwd"))
            .unwrap()
            .contains("skiff:x:1000:1000")
    );

    // Every entry keeps the archive's mtime, directories included (their
    // children were created after them).
    for rel in [
        "bin",
        "bin/busybox",
        "bin/sh",
        "etc",
        "tmp",
        "home",
        "home/skiff",
        "usr/bin",
    ] {
        let meta = fs::symlink_metadata(layer.path(rel)).unwrap();
        assert_eq!(meta.mtime(), FIXED_MTIME as i64, "{rel}");
    }

    if is_root() {
        let home = fs::metadata(layer.path("home/skiff")).unwrap();
        assert_eq!((home.uid(), home.gid()), (1000, 1000));
        let bin = fs::metadata(layer.path("bin")).unwrap();
        assert_eq!((bin.uid(), bin.gid()), (0, 0));
    } else {
        skiff_testkit::skip("unpack ownership checks", "needs root");
    }

    assert_eq!(stats.files, 3);
    assert_eq!(stats.symlinks, BUSYBOX_APPLETS.len() as u64);
    assert_eq!(stats.dirs, 12);
    let text_bytes: u64 = ["etc/passwd", "etc/group"]
        .iter()
        .map(|rel| fs::metadata(layer.path(rel)).unwrap().len())
        .sum();
    assert_eq!(stats.bytes, busybox.len() as u64 + text_bytes);
    assert_eq!(
        stats.entries,
        stats.files + stats.symlinks + stats.dirs,
        "{stats:?}"
    );
}

fn directory_modes_and_times_are_applied_after_children(engine: IoEngine) {
    let mut root = tar::Header::new_gnu();
    root.as_old_mut().name[..2].copy_from_slice(b"./");
    root.set_entry_type(EntryType::Directory);
    root.set_mode(0o711);
    root.set_uid(0);
    root.set_gid(0);
    root.set_mtime(FIXED_MTIME);
    root.set_size(0);
    root.set_cksum();
    let mut b = LayerBuilder::new();
    b.raw_header(root, Vec::new())
        .dir("ro", 0o555)
        .dir("ro/sub", 0o500)
        .file("ro/sub/f", 0o400, "x")
        .file("ro/g", 0o644, "y");
    let layer = Layer::new();
    // Unprivileged, a read-only directory applied early would stop its
    // children from being created.
    layer.unpack(&tar_of(&b), &unprivileged(engine)).unwrap();
    assert_eq!(mode_of(&layer.root), 0o711);
    assert_eq!(mode_of(&layer.path("ro")), 0o555);
    assert_eq!(mode_of(&layer.path("ro/sub")), 0o500);
    assert_eq!(fs::read(layer.path("ro/sub/f")).unwrap(), b"x");
    for rel in ["", "ro", "ro/sub"] {
        assert_eq!(
            fs::metadata(layer.path(rel)).unwrap().mtime(),
            FIXED_MTIME as i64,
            "{rel:?}"
        );
    }
    // Let the temp dir be removed.
    for rel in ["ro/sub", "ro"] {
        fs::set_permissions(layer.path(rel), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn missing_parents_are_created_0755(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.file("a/b/c/file", 0o600, "deep");
    let layer = Layer::new();
    layer.unpack(&tar_of(&b), &unprivileged(engine)).unwrap();
    assert_eq!(fs::read(layer.path("a/b/c/file")).unwrap(), b"deep");
    assert_eq!(mode_of(&layer.path("a/b/c/file")), 0o600);
    for rel in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode_of(&layer.path(rel)), 0o755, "{rel}");
    }
}

fn non_utf8_names_and_fifos(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.raw_entry(&b"caf\xe9"[..], EntryType::Regular, None, "latin-1")
        .raw_entry(&b"pipe"[..], EntryType::Fifo, None, "");
    let layer = Layer::new();
    let stats = layer.unpack(&tar_of(&b), &unprivileged(engine)).unwrap();
    let name = layer.root.join(OsStr::from_bytes(b"caf\xe9"));
    assert_eq!(fs::read(name).unwrap(), b"latin-1");
    assert!(
        fs::symlink_metadata(layer.path("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(stats.devices, 1);
}

// ---------------------------------------------------------------------------
// 2. Nothing outside the root changes.

/// A parent temp dir holding the layer root and sentinel siblings.
struct Sandbox {
    parent: tempfile::TempDir,
    root: PathBuf,
    engine: IoEngine,
}

impl Sandbox {
    fn new(engine: IoEngine) -> Sandbox {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::create_dir(parent.path().join("sentinel")).unwrap();
        fs::write(parent.path().join("sentinel/file"), "keep").unwrap();
        fs::write(parent.path().join("outside"), "outside").unwrap();
        Sandbox {
            parent,
            root,
            engine,
        }
    }

    /// Everything under the parent except the root: type, mode, owner,
    /// link count, size, mtime and file contents.
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let mut seen = BTreeMap::new();
        walk(self.parent.path(), &self.root, &mut seen);
        seen
    }

    /// Unpacks `b` and asserts nothing outside the root changed and no
    /// `marker` file appeared at the places an escape would reach.
    fn unpack_checked(&self, b: &LayerBuilder, marker: &str) -> Result<UnpackStats, UnpackError> {
        let before = self.outside();
        let result = unpack(&tar_of(b)[..], &self.root, &opts(self.engine));
        assert_eq!(self.outside(), before, "something outside the root changed");
        let tmp = self.parent.path().parent().unwrap();
        for escaped in [
            tmp.join(marker),
            Path::new("/").join(marker),
            Path::new("/etc").join(marker),
        ] {
            assert!(!escaped.exists(), "{} was created", escaped.display());
        }
        result
    }
}

fn walk(dir: &Path, skip: &Path, seen: &mut BTreeMap<PathBuf, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path == skip {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        let mut desc = format!(
            "{:?} mode={:o} owner={}:{} nlink={} size={} mtime={}",
            meta.file_type(),
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.nlink(),
            meta.len(),
            meta.mtime()
        );
        if meta.is_file() {
            desc.push_str(&String::from_utf8_lossy(&fs::read(&path).unwrap()));
        }
        seen.insert(path.clone(), desc);
        if meta.is_dir() {
            walk(&path, skip, seen);
        }
    }
}

fn raw_file<'b>(b: &'b mut LayerBuilder, name: &str) -> &'b mut LayerBuilder {
    b.raw_entry(name.as_bytes(), EntryType::Regular, None, "pwned")
}

fn dotdot_names_are_clamped_at_the_root(engine: IoEngine) {
    for (name, lands) in [
        ("../skiff-esc-1", "skiff-esc-1"),
        ("../../skiff-esc-2", "skiff-esc-2"),
        ("/abs/skiff-esc-3", "abs/skiff-esc-3"),
        ("a/../../skiff-esc-4", "skiff-esc-4"),
        ("./../x/../../skiff-esc-5", "skiff-esc-5"),
    ] {
        let sb = Sandbox::new(engine);
        let mut b = LayerBuilder::new();
        raw_file(&mut b, name);
        let marker = lands.rsplit('/').next().unwrap();
        sb.unpack_checked(&b, marker).unwrap();
        assert_eq!(fs::read(sb.root.join(lands)).unwrap(), b"pwned", "{name}");
    }
}

fn absolute_symlink_parent_stays_inside(engine: IoEngine) {
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.symlink("evil", "/");
    raw_file(&mut b, "evil/etc/skiff-esc-6");
    sb.unpack_checked(&b, "skiff-esc-6").unwrap();
    assert_eq!(fs::read(sb.root.join("etc/skiff-esc-6")).unwrap(), b"pwned");
}

fn relative_symlink_parent_stays_inside(engine: IoEngine) {
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.symlink("evil", "../../..");
    raw_file(&mut b, "evil/skiff-esc-7");
    raw_file(&mut b, "evil/sentinel/file");
    sb.unpack_checked(&b, "skiff-esc-7").unwrap();
    assert_eq!(fs::read(sb.root.join("skiff-esc-7")).unwrap(), b"pwned");
    assert_eq!(fs::read(sb.root.join("sentinel/file")).unwrap(), b"pwned");
}

fn symlink_chain_stays_inside(engine: IoEngine) {
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.symlink("a", "b").symlink("b", "../c").symlink("c", "/..");
    raw_file(&mut b, "a/skiff-esc-8");
    b.dir("sentinel", 0o755).symlink("d", "a/../../sentinel");
    raw_file(&mut b, "d/file");
    sb.unpack_checked(&b, "skiff-esc-8").unwrap();
    assert_eq!(fs::read(sb.root.join("skiff-esc-8")).unwrap(), b"pwned");
    assert_eq!(fs::read(sb.root.join("sentinel/file")).unwrap(), b"pwned");
}

fn symlink_directory_then_directory_entries_beneath_it(engine: IoEngine) {
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.dir("real", 0o755)
        .symlink("up", "../../real")
        .dir("up/new", 0o755);
    b.dir("sentinel", 0o755)
        .symlink("sent", "../sentinel")
        .dir("sent/new", 0o755);
    sb.unpack_checked(&b, "none").unwrap();
    assert!(sb.root.join("real/new").is_dir());
    assert!(sb.root.join("sentinel/new").is_dir());

    // A symlink to a directory that does not exist (in the layer) is not
    // followed to create it, wherever it points.
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.symlink("t", "/tmp").dir("t/skiff-esc-9", 0o777);
    let err = sb.unpack_checked(&b, "skiff-esc-9").unwrap_err();
    assert!(
        matches!(&err, UnpackError::Invalid { path, reason } if path == "t/skiff-esc-9/" && reason.contains("symlink")),
        "{err}"
    );

    // Inside the root, `/tmp` is this very symlink: a loop.
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.symlink("tmp", "/tmp").dir("tmp/skiff-esc-9", 0o777);
    let err = sb.unpack_checked(&b, "skiff-esc-9").unwrap_err();
    assert!(
        matches!(&err, UnpackError::Fs { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
        "{err}"
    );
}

fn file_replaces_a_symlink_instead_of_writing_through_it(engine: IoEngine) {
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.symlink("f", "../outside")
        .symlink("g", "/proc/self/root/etc/passwd");
    raw_file(&mut b, "f");
    raw_file(&mut b, "g");
    sb.unpack_checked(&b, "none").unwrap();
    for name in ["f", "g"] {
        let meta = fs::symlink_metadata(sb.root.join(name)).unwrap();
        assert!(meta.is_file(), "{name}");
        assert_eq!(fs::read(sb.root.join(name)).unwrap(), b"pwned");
    }
}

fn directory_replaces_a_symlink_then_is_written_through(engine: IoEngine) {
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.symlink("d", "../..").dir("d", 0o755);
    raw_file(&mut b, "d/skiff-esc-10");
    sb.unpack_checked(&b, "skiff-esc-10").unwrap();
    let d = fs::symlink_metadata(sb.root.join("d")).unwrap();
    assert!(d.is_dir());
    assert_eq!(fs::read(sb.root.join("d/skiff-esc-10")).unwrap(), b"pwned");
}

fn hardlink_outside_the_root_is_not_reachable(engine: IoEngine) {
    // Nothing named `outside` in the layer: clamped, the target is missing.
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.raw_entry(&b"h"[..], EntryType::Link, Some(b"../../outside"), "");
    let err = sb.unpack_checked(&b, "none").unwrap_err();
    assert!(
        matches!(&err, UnpackError::HardlinkTargetMissing { path, target } if path == "h" && target == "../../outside"),
        "{err}"
    );

    // With one in the layer, the clamped target is the layer's own file.
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.file("outside", 0o644, "layer");
    b.raw_entry(&b"h"[..], EntryType::Link, Some(b"../../outside"), "");
    sb.unpack_checked(&b, "none").unwrap();
    assert_eq!(fs::read(sb.root.join("h")).unwrap(), b"layer");
    assert_eq!(fs::metadata(sb.root.join("h")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(sb.parent.path().join("outside"))
            .unwrap()
            .nlink(),
        1
    );
}

fn hardlink_through_a_symlinked_directory_stays_inside(engine: IoEngine) {
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.symlink("d", "../..");
    b.raw_entry(&b"h"[..], EntryType::Link, Some(b"d/sentinel/file"), "");
    let err = sb.unpack_checked(&b, "none").unwrap_err();
    assert!(
        matches!(err, UnpackError::HardlinkTargetMissing { .. }),
        "{err}"
    );

    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.file("sentinel/file", 0o644, "layer").symlink("d", "/");
    b.raw_entry(&b"h"[..], EntryType::Link, Some(b"d/sentinel/file"), "");
    sb.unpack_checked(&b, "none").unwrap();
    assert_eq!(fs::read(sb.root.join("h")).unwrap(), b"layer");
    assert_eq!(
        fs::metadata(sb.parent.path().join("sentinel/file"))
            .unwrap()
            .nlink(),
        1
    );
}

fn hardlink_to_an_escaping_symlink_links_the_symlink_itself(engine: IoEngine) {
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.symlink("s", "../../outside");
    b.raw_entry(&b"h"[..], EntryType::Link, Some(b"s"), "");
    raw_file(&mut b, "h/x");
    let err = sb.unpack_checked(&b, "none").unwrap_err();
    // `h` is a symlink to a missing file: no directory to write into.
    assert!(matches!(err, UnpackError::Invalid { .. }), "{err}");
    assert!(
        fs::symlink_metadata(sb.root.join("h"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

fn fifo_and_dir_entries_with_escaping_names_stay_inside(engine: IoEngine) {
    let sb = Sandbox::new(engine);
    let mut b = LayerBuilder::new();
    b.raw_entry(&b"../skiff-esc-11"[..], EntryType::Fifo, None, "")
        .raw_entry(&b"../../skiff-esc-12/"[..], EntryType::Directory, None, "")
        .raw_entry(&b"../"[..], EntryType::Directory, None, "");
    sb.unpack_checked(&b, "skiff-esc-11").unwrap();
    assert!(
        fs::symlink_metadata(sb.root.join("skiff-esc-11"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(sb.root.join("skiff-esc-12").is_dir());
    assert!(
        !sb.parent
            .path()
            .parent()
            .unwrap()
            .join("skiff-esc-12")
            .exists()
    );
}

// ---------------------------------------------------------------------------
// 4. Later entries replace earlier ones.

fn replacement_semantics(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    // file, then a directory at the same path
    b.file("x", 0o644, "file")
        .dir("x", 0o750)
        .file("x/inner", 0o644, "in");
    // directory (with contents), then a file
    b.dir("y", 0o755)
        .file("y/z", 0o644, "z")
        .dir("y/sub", 0o755)
        .file("y", 0o600, "now a file");
    // the same file twice: last wins
    b.file("f", 0o644, "one").file("f", 0o640, "two");
    // a hard link keeps the old content when its source is replaced
    b.file("a", 0o644, "old")
        .hardlink("b", "a")
        .hardlink("b", "a")
        .file("a", 0o644, "new");
    // directory over directory merges
    b.dir("m", 0o700).file("m/keep", 0o644, "k").dir("m", 0o755);
    let layer = Layer::new();
    let stats = layer.unpack(&tar_of(&b), &unprivileged(engine)).unwrap();

    assert!(layer.path("x").is_dir());
    assert_eq!(mode_of(&layer.path("x")), 0o750);
    assert_eq!(fs::read(layer.path("x/inner")).unwrap(), b"in");
    assert!(layer.path("y").is_file());
    assert_eq!(fs::read(layer.path("y")).unwrap(), b"now a file");
    assert_eq!(mode_of(&layer.path("y")), 0o600);
    assert_eq!(fs::read(layer.path("f")).unwrap(), b"two");
    assert_eq!(mode_of(&layer.path("f")), 0o640);
    assert_eq!(fs::read(layer.path("a")).unwrap(), b"new");
    assert_eq!(fs::read(layer.path("b")).unwrap(), b"old");
    assert_eq!(fs::read(layer.path("m/keep")).unwrap(), b"k");
    assert_eq!(mode_of(&layer.path("m")), 0o755);
    assert_eq!(stats.hardlinks, 2);
}

/// Files are created with their permission bits and only chowned/chmodded
/// where creation could not give them: special bits, bits the umask takes,
/// another owner, a setgid root. Every case must land exactly.
fn file_modes_and_owners_hold_whatever_creation_gave(engine: IoEngine) {
    let modes = [
        0o644, 0o755, 0o777, 0o666, 0o444, 0o000, 0o4755, 0o2711, 0o1644, 0o6750,
    ];
    let mut b = LayerBuilder::new();
    for m in modes {
        b.file(&format!("m{m:o}"), m, format!("{m:o}"));
    }
    if is_root() {
        b.file_owned("owned", 0o4750, 1000, 1001, "o")
            .file_owned("rootowned", 0o640, 0, 0, "r");
    }
    let tar = tar_of(&b);
    let layer = Layer::new();
    layer.unpack(&tar, &opts(engine)).unwrap();
    for m in modes {
        let p = layer.path(&format!("m{m:o}"));
        assert_eq!(mode_of(&p), m, "m{m:o}");
        if m & 0o400 != 0 || is_root() {
            assert_eq!(fs::read_to_string(&p).unwrap(), format!("{m:o}"));
        }
    }
    if !is_root() {
        return;
    }
    let owned = fs::metadata(layer.path("owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), mode_of(&layer.path("owned"))),
        (1000, 1001, 0o4750)
    );
    // A setgid root passes its group on to what is created in it: the unpacker
    // must then chown even files owned by itself.
    let layer = Layer::new();
    std::os::unix::fs::chown(&layer.root, None, Some(4242)).unwrap();
    fs::set_permissions(&layer.root, fs::Permissions::from_mode(0o2755)).unwrap();
    layer.unpack(&tar, &opts(engine)).unwrap();
    let r = fs::metadata(layer.path("rootowned")).unwrap();
    assert_eq!(
        (r.uid(), r.gid(), mode_of(&layer.path("rootowned"))),
        (0, 0, 0o640)
    );
}

// ---------------------------------------------------------------------------
// 5. PAX records.

/// Appends a regular file preceded by a PAX header with `records`.
fn pax_file(b: &mut tar::Builder<Vec<u8>>, records: &[(&str, &[u8])], path: &str, data: &[u8]) {
    b.append_pax_extensions(records.iter().copied()).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(FIXED_MTIME);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn pax_xattrs_times_and_long_paths(engine: IoEngine) {
    let long_dir = "d".repeat(200);
    let long_path = format!("{long_dir}/{}", "f".repeat(200));
    let mut b = tar::Builder::new(Vec::new());
    pax_file(
        &mut b,
        &[
            ("SCHILY.xattr.user.foo", b"bar"),
            ("mtime", b"1700000000.25"),
            ("atime", b"1600000000"),
        ],
        "withxattr",
        b"content",
    );
    pax_file(
        &mut b,
        &[("path", long_path.as_bytes())],
        "ignored",
        b"long",
    );
    let tar = b.into_inner().unwrap();

    let layer = Layer::new();
    layer.unpack(&tar, &unprivileged(engine)).unwrap();
    let file = layer.path("withxattr");
    let mut value = [0u8; 16];
    let n = rustix::fs::getxattr(&file, "user.foo", &mut value[..]).unwrap();
    assert_eq!(&value[..n], b"bar");
    let meta = fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_700_000_000, 250_000_000)
    );
    assert_eq!(meta.atime(), 1_600_000_000);
    assert_eq!(fs::read(layer.path(&long_path)).unwrap(), b"long");
}

fn privileged_xattrs_are_dropped_when_unprivileged(engine: IoEngine) {
    let mut b = tar::Builder::new(Vec::new());
    pax_file(
        &mut b,
        &[
            ("SCHILY.xattr.trusted.foo", b"t"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
        ],
        "f",
        b"",
    );
    let layer = Layer::new();
    layer
        .unpack(&b.into_inner().unwrap(), &unprivileged(engine))
        .unwrap();
    let mut value = [0u8; 32];
    assert!(rustix::fs::getxattr(layer.path("f"), "trusted.foo", &mut value[..]).is_err());
}

fn gnu_sparse_files_are_expanded(engine: IoEngine) {
    let src = tempfile::tempdir().unwrap();
    let sparse = src.path().join("sparse");
    let file = fs::File::create(&sparse).unwrap();
    file.set_len(3 << 20).unwrap();
    rustix::io::pwrite(&file, b"hello", 1_500_000).unwrap();
    rustix::io::pwrite(&file, b"tail", (3 << 20) - 4).unwrap();
    drop(file);
    let mut b = tar::Builder::new(Vec::new());
    b.sparse(true);
    b.append_path_with_name(&sparse, "sparse").unwrap();
    let tar = b.into_inner().unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let first = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(first.header().entry_type(), EntryType::GNUSparse);

    let layer = Layer::new();
    let stats = layer.unpack(&tar, &unprivileged(engine)).unwrap();
    assert_eq!(
        fs::read(layer.path("sparse")).unwrap(),
        fs::read(&sparse).unwrap()
    );
    assert_eq!(stats.bytes, 3 << 20);
}

fn pax_sparse_files_are_refused(engine: IoEngine) {
    let mut b = tar::Builder::new(Vec::new());
    pax_file(
        &mut b,
        &[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"sparse"),
            ("GNU.sparse.realsize", b"3145728"),
        ],
        "GNUSparseFile.0/sparse",
        b"1\n0\n0\n",
    );
    let layer = Layer::new();
    let err = layer
        .unpack(&b.into_inner().unwrap(), &unprivileged(engine))
        .unwrap_err();
    assert!(
        matches!(&err, UnpackError::Invalid { reason, .. } if reason.contains("sparse")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// 6. Hostile and malformed archives.

fn name_longer_than_the_limit_is_refused(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.raw_entry(vec![b'a'; 5000], EntryType::Regular, None, "x");
    let layer = Layer::new();
    let err = layer
        .unpack(&tar_of(&b), &unprivileged(engine))
        .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::PathTooLong {
                len: 5000,
                limit: 4096,
                ..
            }
        ),
        "{err}"
    );

    let mut b = LayerBuilder::new();
    b.raw_entry(
        &b"link"[..],
        EntryType::Symlink,
        Some(&vec![b'a'; 5000]),
        "",
    );
    let err = layer
        .unpack(&tar_of(&b), &unprivileged(engine))
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::PathTooLong { len: 5000, .. }),
        "{err}"
    );
}

fn extension_header(kind: EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_path("PaxHeaders/0").unwrap();
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    h
}

fn huge_extension_headers_are_refused_before_reading(engine: IoEngine) {
    for kind in [
        EntryType::XHeader,
        EntryType::GNULongName,
        EntryType::XGlobalHeader,
    ] {
        let mut b = LayerBuilder::new();
        b.file("first", 0o644, "1");
        // Claims 100 MiB; the stream holds a few bytes.
        b.raw_header(
            extension_header(kind, 100 << 20),
            &b"20 path=whatever\n"[..],
        );
        b.file("second", 0o644, "2");
        let layer = Layer::new();
        let err = layer
            .unpack(&tar_of(&b), &unprivileged(engine))
            .unwrap_err();
        let want = char::from(kind.as_byte());
        assert!(
            matches!(&err, UnpackError::ExtensionTooLarge { kind, size, limit, path }
                if *kind == want && *size == 100 << 20 && *limit == 1 << 20 && path == "after entry first"),
            "{err}"
        );
    }
}

fn real_long_name_over_the_extension_limit_is_refused(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.raw_entry(vec![b'n'; 3000], EntryType::Regular, None, "x");
    let layer = Layer::new();
    let opts = UnpackOptions {
        max_pax_bytes: 1024,
        ..unprivileged(engine)
    };
    let err = layer.unpack(&tar_of(&b), &opts).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::ExtensionTooLarge {
                kind: 'L',
                size: 3001,
                ..
            }
        ),
        "{err}"
    );
}

fn truncated_archives_name_the_entry(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.file("small", 0o644, "s")
        .pseudo_random_file("big", 0o644, 7, 10_000)
        .file("after", 0o644, "a");
    let tar = tar_of(&b);

    // Inside big's data.
    let cut = 512 * 2 + 512 + 3000;
    let layer = Layer::new();
    let err = layer
        .unpack(&tar[..cut], &unprivileged(engine))
        .unwrap_err();
    assert!(
        matches!(&err, UnpackError::Truncated { path, size: 10_000, read: 3000 } if path == "big"),
        "{err}"
    );

    // Inside the next header.
    let cut = 512 * 2 + 512 + 10_240 + 100;
    let layer = Layer::new();
    let err = layer
        .unpack(&tar[..cut], &unprivileged(engine))
        .unwrap_err();
    assert!(
        matches!(&err, UnpackError::Read { path, .. } if path == "after entry big"),
        "{err}"
    );

    // Inside the padding after big's data.
    let cut = 512 * 2 + 512 + 10_000 + 10;
    let layer = Layer::new();
    let err = layer
        .unpack(&tar[..cut], &unprivileged(engine))
        .unwrap_err();
    assert!(matches!(&err, UnpackError::Read { .. }), "{err}");
}

fn bad_checksum_is_an_error(engine: IoEngine) {
    let mut h = tar::Header::new_gnu();
    h.set_path("f").unwrap();
    h.set_size(0);
    h.set_cksum();
    h.as_old_mut().cksum[0] ^= 1;
    let mut b = LayerBuilder::new();
    b.raw_header(h, Vec::new());
    let layer = Layer::new();
    let err = layer
        .unpack(&tar_of(&b), &unprivileged(engine))
        .unwrap_err();
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");
}

/// A layer of 100,000 empty files (in 100 directories): all there, nothing else.
fn a_hundred_thousand_empty_files(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    for d in 0..100 {
        b.dir(&format!("d{d}"), 0o755);
        for f in 0..1000 {
            b.file(&format!("d{d}/f{f}"), 0o644, Vec::new());
        }
    }
    let layer = Layer::new();
    let stats = layer.unpack(&tar_of(&b), &opts(engine)).unwrap();
    assert_eq!(stats.files, 100_000);
    assert_eq!(stats.bytes, 0);
    for d in [0, 57, 99] {
        assert_eq!(
            fs::read_dir(layer.path(&format!("d{d}"))).unwrap().count(),
            1000
        );
    }
    assert_eq!(fs::metadata(layer.path("d99/f999")).unwrap().len(), 0);
}

/// Every entry but the first a hard link to one file: one inode, all names.
fn thousands_of_hard_links_to_one_file(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.file("one", 0o644, "shared");
    for i in 0..5000 {
        b.hardlink(&format!("l{i}"), "one");
    }
    let layer = Layer::new();
    let stats = layer.unpack(&tar_of(&b), &opts(engine)).unwrap();
    assert_eq!(stats.hardlinks, 5000);
    let one = fs::metadata(layer.path("one")).unwrap();
    assert_eq!(one.nlink(), 5001);
    for i in [0, 2500, 4999] {
        let l = fs::metadata(layer.path(&format!("l{i}"))).unwrap();
        assert_eq!((l.dev(), l.ino()), (one.dev(), one.ino()));
    }
    assert_eq!(fs::read(layer.path("l4999")).unwrap(), b"shared");
}

fn hardlink_to_missing_or_directory_target(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.hardlink("h", "nope");
    let layer = Layer::new();
    let err = layer
        .unpack(&tar_of(&b), &unprivileged(engine))
        .unwrap_err();
    assert!(
        matches!(&err, UnpackError::HardlinkTargetMissing { path, target } if path == "h" && target == "nope"),
        "{err}"
    );

    let mut b = LayerBuilder::new();
    b.dir("d", 0o755).hardlink("h", "d");
    let layer = Layer::new();
    let err = layer
        .unpack(&tar_of(&b), &unprivileged(engine))
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::HardlinkToDirectory { .. }),
        "{err}"
    );

    let mut b = LayerBuilder::new();
    b.raw_entry(&b"h"[..], EntryType::Link, Some(b"./"), "");
    let layer = Layer::new();
    let err = layer
        .unpack(&tar_of(&b), &unprivileged(engine))
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::HardlinkToDirectory { .. }),
        "{err}"
    );
}

fn device_header(path: &str, kind: EntryType, major: u32, minor: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(0o666);
    h.set_mtime(FIXED_MTIME);
    h.set_size(0);
    h.set_device_major(major).unwrap();
    h.set_device_minor(minor).unwrap();
    h.set_cksum();
    h
}

fn devices_are_skipped_when_unprivileged(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.dir("dev", 0o755)
        .raw_header(device_header("dev/null", EntryType::Char, 1, 3), Vec::new())
        .raw_header(device_header("dev/sda", EntryType::Block, 8, 0), Vec::new())
        .file("after", 0o644, "ok");
    let layer = Layer::new();
    let stats = layer.unpack(&tar_of(&b), &unprivileged(engine)).unwrap();
    assert_eq!(stats.skipped_devices, 2);
    assert_eq!(stats.devices, 0);
    assert!(!layer.path("dev/null").exists());
    assert!(!layer.path("dev/sda").exists());
    assert_eq!(fs::read(layer.path("after")).unwrap(), b"ok");
}

fn unknown_entry_types_and_aufs_metadata_are_skipped(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.raw_entry(&b"label"[..], EntryType::new(b'V'), None, "volume")
        .raw_entry(&b"odd"[..], EntryType::new(b'Z'), None, "")
        .dir(".wh..wh.plnk", 0o700)
        .file(".wh..wh.plnk/1.2", 0o644, "")
        .file(".wh..wh.aufs", 0o644, "")
        .file("a", 0o644, "a");
    let layer = Layer::new();
    let stats = layer.unpack(&tar_of(&b), &unprivileged(engine)).unwrap();
    assert_eq!(stats.skipped, 5, "{stats:?}");
    assert_eq!(stats.entries, 6);
    let names: Vec<_> = fs::read_dir(&layer.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["a"]);
}

fn whiteouts_need_privileges(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.whiteout("etc/passwd");
    let layer = Layer::new();
    let err = layer
        .unpack(&tar_of(&b), &unprivileged(engine))
        .unwrap_err();
    assert!(
        matches!(&err, UnpackError::Unprivileged { path, .. } if path == "etc/.wh.passwd"),
        "{err}"
    );
}

fn root_entry_that_is_not_a_directory_is_skipped(engine: IoEngine) {
    let mut b = LayerBuilder::new();
    b.raw_entry(&b"./"[..], EntryType::Regular, None, "")
        .raw_entry(&b"/"[..], EntryType::Symlink, Some(b"/etc"), "");
    let layer = Layer::new();
    let stats = layer.unpack(&tar_of(&b), &unprivileged(engine)).unwrap();
    assert_eq!(stats.skipped, 2);
    assert!(fs::symlink_metadata(&layer.root).unwrap().is_dir());
}

fn missing_root_is_an_error(engine: IoEngine) {
    let err = unpack(
        &b""[..],
        Path::new("/nonexistent/skiff"),
        &unprivileged(engine),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Root { .. }), "{err}");
}
