//! The two IO engines: both give the same tree, and the engine chosen is
//! the one used (`IoEngine`, `SKIFF_IO_ENGINE=blocking`).
//!
//! Which engine ran is observed from inside the unpack: the tar reader
//! counts the process's io_uring fds while it is being read. That only
//! means something in a process running nothing else, so those checks run
//! in a child process (this test binary, one ignored test, with the
//! environment set).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};
use skiff_image::unpack::{Flusher, IoEngine, UnpackOptions, unpack};
use skiff_testkit::image::LayerBuilder;

fn opts(engine: IoEngine) -> UnpackOptions {
    UnpackOptions {
        engine,
        ..UnpackOptions::default()
    }
}

/// A v2 file capability: CAP_NET_RAW, effective.
const CAP_NET_RAW: &[u8] =
    b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

/// ~5000 small files of varied sizes in 20 directories, plus a few big
/// files, symlinks, hard links, setuid and odd modes, a fifo, PAX
/// xattrs and sub-second times, and a replaced file.
fn mixed_layer() -> Vec<u8> {
    let mut b = LayerBuilder::new();
    b.dir("data", 0o755);
    for d in 0..20 {
        b.dir(
            &format!("data/d{d:02}"),
            if d % 2 == 0 { 0o755 } else { 0o750 },
        );
        for i in 0..250u64 {
            let n = d * 250 + i;
            let size = (n * 7919) % 4096;
            let mode = [0o644, 0o600, 0o755, 0o4755, 0o2750, 0o444][(n % 6) as usize];
            b.pseudo_random_file(&format!("data/d{d:02}/f{n:05}"), mode, n, size);
        }
    }
    b.dir("big", 0o755);
    for i in 0..3u64 {
        // Several 128 KiB read chunks each, and an odd tail.
        b.pseudo_random_file(&format!("big/b{i}"), 0o644, 99 + i, (3 << 20) + 4097 * i);
    }
    b.symlink("data/link-abs", "/data/d00/f00000")
        .symlink("data/link-rel", "d01/f00250")
        .hardlink("data/hard", "data/d02/f00500")
        .file("data/replaced", 0o644, "first")
        .file("data/replaced", 0o600, "second, longer")
        .raw_entry(&b"data/pipe"[..], tar::EntryType::Fifo, None, "")
        .dir("empty", 0o700);
    let mut tar = b.write_tar(Vec::new()).unwrap();
    // A PAX-described file with an xattr and sub-second times, appended
    // before the end-of-archive blocks.
    tar.truncate(tar.len() - 1024);
    let mut t = tar::Builder::new(tar);
    // Big enough to be written through the ring: its setuid bit, times and
    // xattrs must be applied after the queued writes, which would clear
    // or bump them.
    let mut records: Vec<(&str, &[u8])> = vec![
        ("SCHILY.xattr.user.skiff", b"engine"),
        ("mtime", b"1700000000.123456789"),
        ("atime", b"1600000000.5"),
    ];
    if rustix::process::geteuid().is_root() {
        records.push(("SCHILY.xattr.security.capability", CAP_NET_RAW));
    }
    t.append_pax_extensions(records).unwrap();
    let data = vec![b'x'; 300_000];
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4755);
    h.set_size(data.len() as u64);
    t.append_data(&mut h, "data/with-xattr", &data[..]).unwrap();
    t.into_inner().unwrap()
}

/// Everything about each node below `root`: type, mode, owner, size,
/// times (ns), link count, symlink target, xattrs, sha256 of contents.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = fs::symlink_metadata(&path).unwrap();
        let kind = meta.file_type();
        let mut desc = format!(
            "type={kind:?} fifo={} mode={:o} owner={}:{} size={} mtime={}.{:09} nlink={}",
            kind.is_fifo(),
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.nlink(),
        );
        if !kind.is_dir() && meta.nlink() == 1 {
            // Reading a directory, or a file through another of its links,
            // moves its atime: this walk does both.
            desc.push_str(&format!(" atime={}.{:09}", meta.atime(), meta.atime_nsec()));
        }
        if kind.is_symlink() {
            desc.push_str(&format!(" -> {:?}", fs::read_link(&path).unwrap()));
        } else if kind.is_file() {
            let digest = Sha256::digest(fs::read(&path).unwrap());
            desc.push_str(&format!(" sha256={}", hex::encode(digest)));
        }
        if !kind.is_symlink() {
            let mut names = vec![0u8; 4096];
            let n = rustix::fs::listxattr(&path, &mut names[..]).unwrap();
            for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                let name = std::ffi::OsStr::from_bytes(name);
                let mut value = vec![0u8; 4096];
                let len = rustix::fs::getxattr(&path, name, &mut value[..]).unwrap();
                desc.push_str(&format!(
                    " xattr:{}={:?}",
                    name.to_string_lossy(),
                    String::from_utf8_lossy(&value[..len])
                ));
            }
        }
        out.insert(path.strip_prefix(root).unwrap().to_path_buf(), desc);
        if kind.is_dir() {
            walk(root, &path, out);
        }
    }
}

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
}

#[test]
fn both_engines_unpack_five_thousand_files_identically() {
    let tar = mixed_layer();
    let mut trees = Vec::new();
    for engine in [IoEngine::Uring, IoEngine::Blocking, IoEngine::Auto] {
        let layer = Layer::new();
        let stats = unpack(&tar[..], &layer.root, &opts(engine)).unwrap();
        assert_eq!(stats.files, 5000 + 3 + 2 + 1, "{engine:?}: {stats:?}");
        trees.push((engine, stats, tree(&layer.root)));
    }
    let (_, stats, reference) = &trees[1];
    assert!(reference.len() > 5000);
    assert!(
        reference[Path::new("data/with-xattr")].contains("xattr:user.skiff=\"engine\""),
        "{}",
        reference[Path::new("data/with-xattr")]
    );
    let with_xattr = &reference[Path::new("data/with-xattr")];
    assert!(
        with_xattr.contains("mtime=1700000000.123456789"),
        "{with_xattr}"
    );
    assert!(with_xattr.contains("mode=104755"), "{with_xattr}");
    if rustix::process::geteuid().is_root() {
        assert!(
            with_xattr.contains("xattr:security.capability"),
            "{with_xattr}"
        );
    }
    for (engine, s, t) in &trees {
        assert_eq!(s, stats, "{engine:?}");
        if t != reference {
            let diff: Vec<_> = t
                .iter()
                .filter(|(k, v)| reference.get(*k) != Some(*v))
                .take(5)
                .collect();
            panic!(
                "{engine:?} differs from blocking ({} vs {} nodes): {diff:#?}",
                t.len(),
                reference.len()
            );
        }
    }
}

/// Starting the writeback of big files while they are written (what a durable
/// snapshotter asks for) leaves their contents and metadata as without it, on both
/// engines (the io_uring one still has writes in flight behind the offset).
#[test]
fn early_writeback_changes_nothing_in_the_tree() {
    let mut b = LayerBuilder::new();
    b.pseudo_random_file("big", 0o640, 5, (21 << 20) + 333)
        .pseudo_random_file("window", 0o644, 6, 4 << 20)
        .file("small", 0o644, "s");
    let tar = b.write_tar(Vec::new()).unwrap();
    let mut trees = Vec::new();
    for engine in [IoEngine::Uring, IoEngine::Blocking] {
        for writeback in [false, true] {
            let layer = Layer::new();
            let o = UnpackOptions {
                writeback: writeback.then(|| Flusher::start(&layer.root).unwrap()),
                ..opts(engine)
            };
            unpack(&tar[..], &layer.root, &o).unwrap();
            trees.push(((engine, writeback), tree(&layer.root)));
        }
    }
    for (case, t) in &trees[1..] {
        assert_eq!(t, &trees[0].1, "{case:?}");
    }
}

#[test]
fn empty_and_tiny_layers_on_both_engines() {
    for engine in [IoEngine::Uring, IoEngine::Blocking] {
        let layer = Layer::new();
        let stats = unpack(&[0u8; 1024][..], &layer.root, &opts(engine)).unwrap();
        assert_eq!(stats.entries, 0);
        let mut b = LayerBuilder::new();
        b.file("empty", 0o644, "").file("one", 0o644, "1");
        let tar = b.write_tar(Vec::new()).unwrap();
        unpack(&tar[..], &layer.root, &opts(engine)).unwrap();
        assert_eq!(fs::read(layer.root.join("empty")).unwrap(), b"");
        assert_eq!(fs::read(layer.root.join("one")).unwrap(), b"1");
    }
}

// ---------------------------------------------------------------------------
// Which engine runs.

/// io_uring instances open in this process.
fn io_uring_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.as_os_str() == "anon_inode:[io_uring]")
        .count()
}

/// A tar reader noting the most io_uring fds seen while being read.
struct Spy<R> {
    inner: R,
    max_rings: usize,
}

impl<R: Read> Read for Spy<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.max_rings = self.max_rings.max(io_uring_fds());
        self.inner.read(buf)
    }
}

const CHILD: &str = "engine_used_in_child";
const CHILD_ENGINE: &str = "SKIFF_TEST_ENGINE";
const CHILD_EXPECT: &str = "SKIFF_TEST_EXPECT_RING";

/// Runs [`engine_used_in_child`] in a child process with `SKIFF_IO_ENGINE`
/// set to `env` (or unset), asking for `engine` and expecting a ring or not.
fn run_child(env: Option<&str>, engine: &str, expect_ring: bool) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        CHILD,
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENGINE, engine)
    .env(CHILD_EXPECT, if expect_ring { "1" } else { "0" });
    match env {
        Some(v) => cmd.env(skiff_uring_io::ENGINE_ENV, v),
        None => cmd.env_remove(skiff_uring_io::ENGINE_ENV),
    };
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "SKIFF_IO_ENGINE={env:?} engine={engine}: {text}"
    );
}

#[test]
fn chosen_engine_is_the_one_used() {
    let uring = matches!(skiff_uring_io::probe(), skiff_uring_io::Engine::Uring);
    if !uring {
        eprintln!("io_uring unavailable here: only checking the blocking paths");
    }
    // The operator's override wins over Auto…
    run_child(Some("blocking"), "auto", false);
    // …an explicit engine wins over the environment…
    run_child(None, "blocking", false);
    if uring {
        run_child(Some("blocking"), "uring", true);
        // …and Auto uses io_uring when it can.
        run_child(None, "auto", true);
        run_child(Some("io_uring"), "auto", true);
    }
}

#[test]
#[ignore = "run by chosen_engine_is_the_one_used in a child process"]
fn engine_used_in_child() {
    let engine = match std::env::var(CHILD_ENGINE).as_deref() {
        Ok("uring") => IoEngine::Uring,
        Ok("blocking") => IoEngine::Blocking,
        Ok("auto") => IoEngine::Auto,
        other => panic!("{CHILD_ENGINE} is {other:?}"),
    };
    let expect_ring = std::env::var(CHILD_EXPECT).as_deref() == Ok("1");
    let forced = std::env::var_os(skiff_uring_io::ENGINE_ENV).is_some_and(|v| v == "blocking");
    assert_eq!(
        matches!(
            skiff_uring_io::select(),
            skiff_uring_io::Engine::Blocking(_)
        ),
        forced || !matches!(skiff_uring_io::probe(), skiff_uring_io::Engine::Uring)
    );
    let mut b = LayerBuilder::new();
    for i in 0..50 {
        b.pseudo_random_file(&format!("f{i}"), 0o644, i, 200_000);
    }
    let tar = b.write_tar(Vec::new()).unwrap();
    let layer = Layer::new();
    let before = io_uring_fds();
    let mut spy = Spy {
        inner: &tar[..],
        max_rings: 0,
    };
    let stats = unpack(&mut spy, &layer.root, &opts(engine)).unwrap();
    assert_eq!(stats.files, 50);
    assert_eq!(
        spy.max_rings > before,
        expect_ring,
        "rings seen: {}",
        spy.max_rings
    );
    assert_eq!(
        io_uring_fds(),
        before,
        "the ring is closed after the unpack"
    );
    assert_eq!(fs::read(layer.root.join("f7")).unwrap().len(), 200_000);
}
