//! One layer's unpack and flush onto a directory of a real filesystem, page cache
//! dropped (and everything synced) before each repetition: the measurement behind
//! `docs/decisions.md` "Durable layers" (the background flusher). Root only (it
//! writes `/proc/sys/vm/drop_caches`).
//!
//! `cargo run --release -p skiff-image --example unpackdisk -- DIR small|big zstd|gzip REPS MODE`
//!
//! The layer is the `perf/run pull` image's (20,000 × 2.5 KB files, or 4 × 64 MiB),
//! generated once and kept in `/var/tmp/unpackdisk-*.blob`. MODE:
//! - `none`: unpack only, no flush;
//! - `end`: unpack, then one `syncfs` (skiff before the background flusher);
//! - `flusher`: unpack with `writeback` (a `Flusher`: big-file windows and background
//!   flushes), then the final `syncfs` (skiff now);
//! - `loop:MS`: a thread calling `syncfs` every MS ms during the unpack, then the
//!   final one (how the flusher's interval was chosen).
use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::time::{Duration, Instant};

use skiff_image::pipeline::{Compression, run_reader};
use skiff_image::unpack::UnpackOptions;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let root = Path::new(&a[1]);
    let comp = if a[3] == "gzip" {
        skiff_testkit::image::Compression::Gzip
    } else {
        skiff_testkit::image::Compression::Zstd
    };
    let cache = format!("/var/tmp/unpackdisk-{}-{}.blob", a[2], a[3]);
    let blob = std::fs::read(&cache).unwrap_or_else(|_| {
        let l = if a[2] == "big" {
            skiff_testkit::image::big_files_layer(4, 64 << 20, comp)
        } else {
            skiff_testkit::image::many_small_files_layer(20_000, 2560, comp)
        };
        std::fs::write(&cache, &l.blob).unwrap();
        l.blob
    });
    let reps: usize = a[4].parse().unwrap();
    let mode = a[5].clone();
    let c = if a[3] == "gzip" {
        Compression::Gzip
    } else {
        Compression::Zstd
    };
    for r in 0..reps {
        let dir = root.join(format!("run{r}"));
        std::fs::create_dir_all(dir.join("fs")).unwrap();
        rustix::fs::sync();
        std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/vm/drop_caches")
            .unwrap()
            .write_all(b"3")
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let dfd = std::fs::File::open(&dir).unwrap();
        let t = Instant::now();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let flusher = mode.strip_prefix("loop:").map(|ms| {
            let ms: u64 = ms.parse().unwrap();
            let fd = dfd.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut n = 0;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_millis(ms))
                {
                    rustix::fs::syncfs(fd.as_fd()).unwrap();
                    n += 1;
                }
                n
            })
        });
        let opts = UnpackOptions {
            writeback: (mode == "flusher")
                .then(|| skiff_image::unpack::Flusher::start(&dir).unwrap()),
            ..UnpackOptions::default()
        };
        let out = run_reader(&blob[..], c, &dir.join("fs"), &opts);
        out.unpacked.unwrap();
        let t_unpack = t.elapsed();
        drop(stop);
        let n = flusher.map(|h| h.join().unwrap()).unwrap_or(0);
        if mode != "none" {
            rustix::fs::syncfs(dfd.as_fd()).unwrap();
        }
        let total = t.elapsed();
        println!(
            "{mode} rep {r}: unpack {:.0} ms, total {:.0} ms, {n} loop syncs",
            t_unpack.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
