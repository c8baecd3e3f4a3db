//! Ready-made layers: a busybox rootfs and pseudo-random perf layers.

use std::path::PathBuf;

use super::{BUSYBOX_PATH, Compression, ImageError, Layer, LayerBuilder};

/// Applets [`busybox_layer`] links to `/bin/busybox`.
#[rustfmt::skip]
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "true", "false", "env", "id", "hostname", "nc", "wget",
    "ps", "top", "head", "tail", "wc", "dd", "mkdir", "rm", "touch", "grep", "sed", "kill", "date",
    "stat", "ip", "ping", "mount", "yes", "seq", "test", "awk", "readlink", "whoami", "chmod", "ln",
    "cp", "mv", "printf", "tee", "nslookup", "httpd", "sha256sum", "xargs", "find", "du", "df",
    "uname", "pwd", "basename", "dirname", "timeout", "usleep", "nproc", "free", "tr", "cut",
    "sort", "uniq",
];

/// The rootfs of [`busybox_layer`] as a builder, to extend before finishing.
///
/// Contents: `/bin/busybox` (from [`BUSYBOX_PATH`]) with relative symlinks
/// `/bin/<applet> -> busybox` for [`BUSYBOX_APPLETS`]; `/etc/passwd` with
/// root, nobody and `skiff` (1000:1000, home `/home/skiff`); `/etc/group`
/// with root, nobody, skiff (1000) and `extra` (2000, member skiff);
/// `/tmp` (1777), `/root` (0700), `/home/skiff` (owned 1000:1000), and empty
/// `/usr/bin`, `/var`, `/proc`, `/sys`, `/dev`.
pub fn busybox_rootfs() -> Result<LayerBuilder, ImageError> {
    let busybox = std::fs::read(BUSYBOX_PATH).map_err(|source| ImageError::Read {
        path: PathBuf::from(BUSYBOX_PATH),
        source,
    })?;
    let mut b = LayerBuilder::new();
    b.dir("bin", 0o755).file("bin/busybox", 0o755, busybox);
    for applet in BUSYBOX_APPLETS {
        b.symlink(&format!("bin/{applet}"), "busybox");
    }
    b.dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
             skiff:x:1000:1000:skiff:/home/skiff:/bin/sh\n",
        )
        .file(
            "etc/group",
            0o644,
            "root:x:0:\nnobody:x:65534:\nskiff:x:1000:\nextra:x:2000:skiff\n",
        )
        .dir("tmp", 0o1777)
        .dir("root", 0o700)
        .dir("home", 0o755)
        .dir_owned("home/skiff", 0o755, 1000, 1000)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .dir("var", 0o755)
        .dir("proc", 0o555)
        .dir("sys", 0o555)
        .dir("dev", 0o755);
    Ok(b)
}

/// A small runnable rootfs built from the host's static busybox; see
/// [`busybox_rootfs`] for its contents.
pub fn busybox_layer(compression: Compression) -> Result<Layer, ImageError> {
    busybox_rootfs()?.finish(compression)
}

/// Files per directory in [`many_small_files_layer`].
const FILES_PER_DIR: usize = 256;

/// A perf layer of `count` pseudo-random files of `size` bytes each, spread
/// over `data/dNNNN/` directories of 256 files (`data/d0000/f000000`, …).
pub fn many_small_files_layer(count: usize, size: u64, compression: Compression) -> Layer {
    let mut b = LayerBuilder::new();
    b.dir("data", 0o755);
    for i in 0..count {
        if i % FILES_PER_DIR == 0 {
            b.dir(&format!("data/d{:04}", i / FILES_PER_DIR), 0o755);
        }
        b.pseudo_random_file(
            &format!("data/d{:04}/f{i:06}", i / FILES_PER_DIR),
            0o644,
            i as u64,
            size,
        );
    }
    b.finish(compression)
        .expect("generated relative paths into an in-memory buffer cannot fail")
}

/// A perf layer of `count` pseudo-random files of `size_each` bytes
/// (`data/big-0000`, …), streamed without holding the plain tar in memory.
pub fn big_files_layer(count: usize, size_each: u64, compression: Compression) -> Layer {
    let mut b = LayerBuilder::new();
    b.dir("data", 0o755);
    for i in 0..count {
        b.pseudo_random_file(
            &format!("data/big-{i:04}"),
            0o644,
            0xB16 + i as u64,
            size_each,
        );
    }
    b.finish(compression)
        .expect("generated relative paths into an in-memory buffer cannot fail")
}
