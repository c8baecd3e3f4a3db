//! `pull`: cold `PullImage` of generated images on both systems, interleaved,
//! next to in-process floors measured in the same run.
//!
//! Cold means: before each timed pull the image is removed with CRI
//! `RemoveImage` and the daemon's store (content and snapshot bytes under its
//! root, metadata databases excluded) is measured; the report prints the
//! largest such figure so a warm store would show. containerd 1.6's CRI
//! `RemoveImage` deletes the image with `images.SynchronousDelete()`, so its
//! garbage collector removes unreferenced content blobs and snapshots before
//! the call returns; the measured store size confirms it every time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use skiff_testkit::{Compression, Image, ImageBuilder, big_files_layer, many_small_files_layer};

use super::Outcome;
use crate::harness::{Harness, Kind};
use crate::plot::{Group, Series};
use crate::stats::{Summary, fmt_opt, mb_per_s, ms, ratio};
use crate::sys;

/// Image sizes and repetitions.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Files in the many-small-files image.
    pub small_count: usize,
    /// Bytes per small file.
    pub small_size: u64,
    /// Files in the few-big-files image.
    pub big_count: usize,
    /// Bytes per big file.
    pub big_size: u64,
    /// Timed pulls per image and system.
    pub reps: usize,
}

impl Sizes {
    /// `perf/run pull`: 20k × 2 KiB and 4 × 64 MiB, 5 pulls each.
    pub const FULL: Sizes = Sizes {
        small_count: 20_000,
        small_size: 2048,
        big_count: 4,
        big_size: 64 << 20,
        reps: 5,
    };
    /// `perf/run --quick`: 1000 × 2 KiB and 2 × 2 MiB, one pull each.
    pub const QUICK: Sizes = Sizes {
        small_count: 1000,
        small_size: 2048,
        big_count: 2,
        big_size: 2 << 20,
        reps: 1,
    };
}

/// One generated image.
pub(super) struct TestImage {
    pub(super) name: String,
    pub(super) repo: String,
    pub(super) tag: String,
    pub(super) compression: Compression,
    pub(super) files: usize,
    pub(super) image: Image,
    pub(super) tar_bytes: u64,
}

impl TestImage {
    pub(super) fn blob(&self) -> &[u8] {
        &self.image.layers[0].blob
    }

    fn blob_bytes(&self) -> u64 {
        self.blob().len() as u64
    }

    pub(super) fn reference(&self) -> String {
        Harness::reference(&self.repo, &self.tag)
    }
}

/// Samples of one image on one system.
#[derive(Debug, Default)]
struct Cell {
    pull_ms: Vec<f64>,
    remove_ms: Vec<f64>,
    cpu_s: Vec<f64>,
    store_before_max: u64,
    store_after_pull_min: Option<u64>,
    store_after_remove_max: u64,
    errors: Vec<String>,
}

/// In-process floor samples of one image, ms.
#[derive(Debug, Default)]
struct Floor {
    fetch: Vec<f64>,
    decompress: Vec<f64>,
    sha256: Vec<f64>,
    untar: Vec<f64>,
}

fn say(msg: &str) {
    eprintln!("skiff-perf: pull: {msg}");
}

/// Runs the scenario.
pub fn run(h: &mut Harness, sizes: Sizes) -> anyhow::Result<Outcome> {
    let images = build_images(sizes)?;
    for img in &images {
        let t = Instant::now();
        h.push(&img.repo, &img.tag, &img.image)?;
        say(&format!(
            "pushed {} ({:.1} MB) in {:.1} s",
            img.name,
            mb(img.blob_bytes()),
            t.elapsed().as_secs_f64()
        ));
    }

    let floors = images
        .iter()
        .map(|img| measure_floor(h, img, sizes.reps))
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Start from an empty store on both sides; NotFound is expected here.
    for sys in h.systems() {
        if let Some(r) = sys.running() {
            for img in &images {
                let _ = r.cri.remove(&img.reference());
            }
        }
    }

    let mut cells: BTreeMap<(usize, Kind), Cell> = BTreeMap::new();
    for rep in 0..sizes.reps {
        for (i, img) in images.iter().enumerate() {
            // A B, then B A: alternate who goes first so drift and order cancel.
            let order = if (rep + i) % 2 == 0 {
                [Kind::Skiff, Kind::Containerd]
            } else {
                [Kind::Containerd, Kind::Skiff]
            };
            for kind in order {
                let cell = cells.entry((i, kind)).or_default();
                measure_pull(h, kind, img, cell);
            }
        }
        say(&format!("rep {}/{} done", rep + 1, sizes.reps));
    }

    Ok(outcome(h, &images, &floors, &cells, sizes))
}

pub(super) fn build_images(sizes: Sizes) -> anyhow::Result<Vec<TestImage>> {
    let mut images = Vec::new();
    for compression in [Compression::Gzip, Compression::Zstd] {
        let suffix = match compression {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "tar",
        };
        let t = Instant::now();
        let small = many_small_files_layer(sizes.small_count, sizes.small_size, compression);
        let big = big_files_layer(sizes.big_count, sizes.big_size, compression);
        say(&format!(
            "built {suffix} layers in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        for (kind, layer, files) in [
            ("small", small, sizes.small_count),
            ("big", big, sizes.big_count),
        ] {
            let tar_bytes = compression
                .decompress(&layer.blob)
                .context("measuring the layer's tar size")?
                .len() as u64;
            let image = ImageBuilder::new()
                .layer(layer)
                .entrypoint(["/bin/sh"])
                .label("org.skiff.perf", &format!("{kind}-{suffix}"))
                .build();
            images.push(TestImage {
                name: format!("{kind}-{suffix}"),
                repo: format!("skiff-perf/{kind}"),
                tag: suffix.to_owned(),
                compression,
                files,
                image,
                tar_bytes,
            });
        }
    }
    // Report order: small-gzip, small-zstd, big-gzip, big-zstd.
    images.sort_by_key(|i| (!i.name.starts_with("small"), i.tag.clone()));
    Ok(images)
}

fn measure_pull(h: &mut Harness, kind: Kind, img: &TestImage, cell: &mut Cell) {
    let sys = h.system(kind);
    let Some(r) = sys.running() else { return };
    if let Some(status) = r.daemon.exited() {
        cell.errors.push(format!("daemon exited ({status})"));
        return;
    }
    let reference = img.reference();
    // Cold store: the image must be absent (NotFound is fine) and its content gone.
    let _ = r.cri.remove(&reference);
    cell.store_before_max = cell.store_before_max.max(r.store_bytes());
    let cpu0 = sys::cpu_seconds(r.pid()).ok();
    let pulled = r.cri.pull(&reference);
    let cpu1 = sys::cpu_seconds(r.pid()).ok();
    match pulled {
        Ok((_image_ref, took)) => {
            cell.pull_ms.push(ms(took));
            let stored = r.store_bytes();
            cell.store_after_pull_min =
                Some(cell.store_after_pull_min.map_or(stored, |m| m.min(stored)));
            if let (Some(a), Some(b)) = (cpu0, cpu1) {
                cell.cpu_s.push(b - a);
            }
            match r.cri.remove(&reference) {
                Ok(took) => cell.remove_ms.push(ms(took)),
                Err(e) => cell.errors.push(format!("RemoveImage {reference}: {e}")),
            }
            cell.store_after_remove_max = cell.store_after_remove_max.max(r.store_bytes());
        }
        Err(e) => cell.errors.push(format!("PullImage {reference}: {e}")),
    }
}

fn measure_floor(h: &Harness, img: &TestImage, reps: usize) -> anyhow::Result<Floor> {
    let blob = img.blob();
    let tar = img.compression.decompress(blob)?;
    let dir = h.base().join("floor");
    std::fs::create_dir_all(&dir)?;
    let tar_path = dir.join("layer.tar");
    std::fs::write(&tar_path, &tar)?;
    let mut floor = Floor::default();
    for _ in 0..reps {
        let digest = &img.image.layers[0].digest;
        let t = Instant::now();
        let fetched = h.fetch_blob(&img.repo, digest)?;
        floor.fetch.push(ms(t.elapsed()));
        anyhow::ensure!(
            fetched.len() == blob.len(),
            "fetched blob has the wrong size"
        );
        drop(fetched);

        let t = Instant::now();
        let n = decompress_to_sink(img.compression, blob)?;
        floor.decompress.push(ms(t.elapsed()));
        anyhow::ensure!(n == tar.len() as u64, "decompressed size mismatch");

        let t = Instant::now();
        let a = Sha256::digest(blob);
        let b = Sha256::digest(&tar);
        floor.sha256.push(ms(t.elapsed()));
        std::hint::black_box((a, b));

        let out = dir.join("x");
        std::fs::create_dir_all(&out)?;
        let t = Instant::now();
        sys::run(
            Command::new("tar")
                .arg("-xf")
                .arg(&tar_path)
                .arg("-C")
                .arg(&out),
        )?;
        floor.untar.push(ms(t.elapsed()));
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::remove_file(&tar_path)?;
    say(&format!("floors measured for {}", img.name));
    Ok(floor)
}

fn decompress_to_sink(compression: Compression, blob: &[u8]) -> anyhow::Result<u64> {
    let mut reader: Box<dyn std::io::Read> = match compression {
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(blob)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob)?),
        Compression::None => Box::new(blob),
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        std::hint::black_box(&buf[..n]);
    }
}

/// MB (10^6 bytes).
fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn p50(samples: &[f64]) -> Option<f64> {
    Summary::of(samples).map(|s| s.p50)
}

fn outcome(
    h: &mut Harness,
    images: &[TestImage],
    floors: &[Floor],
    cells: &BTreeMap<(usize, Kind), Cell>,
    sizes: Sizes,
) -> Outcome {
    let mut o = Outcome {
        plot_title: "cold PullImage latency (each dot one pull; bar = p50)".into(),
        ..Outcome::default()
    };
    let empty = Cell::default();
    let cell = |i: usize, k: Kind| cells.get(&(i, k)).unwrap_or(&empty);
    let b = &mut o.body;

    let _ = writeln!(
        b,
        "## Images\n\nOne layer each, built by the harness (testkit fixtures, pseudo-random content \
         over a 16-letter alphabet, ~2:1 compressible), pushed to the local registry.\n\n\
         | image | files | tar MB | blob MB | compression |\n|---|---:|---:|---:|---|"
    );
    for img in images {
        let _ = writeln!(
            b,
            "| {} | {} | {:.1} | {:.1} | {:?} |",
            img.name,
            img.files,
            mb(img.tar_bytes),
            mb(img.blob_bytes()),
            img.compression
        );
    }

    let _ = writeln!(
        b,
        "\n## PullImage, cold store (ms)\n\n{} timed pulls per image and system, interleaved \
         (A B, B A, …). MB/s = blob MB / p50. CPU = the daemon's utime+stime (+ reaped children) \
         during the call. \"store before\" = the largest content+snapshot bytes under the daemon's \
         root right before a timed pull (0 = cold); \"after pull\" = the smallest such figure right \
         after a pull: the unpacked files, plus the compressed blob where the daemon keeps it in its \
         content store (containerd 1.6 does: `discard_unpacked_layers` is false by default).\n\n\
         | image | system | n | p50 | p95 | p99 | min | max | MB/s | CPU s/pull | store before | after pull |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        sizes.reps
    );
    for (i, img) in images.iter().enumerate() {
        let mut p50s = BTreeMap::new();
        for kind in Kind::ALL {
            let c = cell(i, kind);
            let avail = h.system(kind).state.is_ok();
            match Summary::of(&c.pull_ms) {
                Some(s) => {
                    p50s.insert(kind, s);
                    let cpu = (!c.cpu_s.is_empty())
                        .then(|| c.cpu_s.iter().sum::<f64>() / c.cpu_s.len() as f64);
                    let warm = if c.store_before_max > img.blob_bytes() / 10 {
                        " **not cold**"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        b,
                        "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} B{warm} | {:.1} MB |",
                        img.name,
                        kind.label(),
                        s.n,
                        s.p50,
                        s.p95,
                        s.p99,
                        s.min,
                        s.max,
                        mb_per_s(img.blob_bytes(), s.p50),
                        fmt_opt(cpu, 2),
                        c.store_before_max,
                        mb(c.store_after_pull_min.unwrap_or(0)),
                    );
                }
                None => {
                    let why = if !avail {
                        "unavailable".to_owned()
                    } else if c.errors.is_empty() {
                        "no samples".to_owned()
                    } else {
                        format!(
                            "failed: {}",
                            c.errors[0].replace('|', "\\|").replace('\n', " ")
                        )
                    };
                    let _ = writeln!(
                        b,
                        "| {} | {} | 0 | {why} | | | | | | | | |",
                        img.name,
                        kind.label()
                    );
                }
            }
        }
        if let (Some(s), Some(c)) = (p50s.get(&Kind::Skiff), p50s.get(&Kind::Containerd)) {
            let r = |a: f64, b: f64| fmt_opt(ratio(Some(a), Some(b)), 2);
            let _ = writeln!(
                b,
                "| {} | **skiff/containerd** | | **{}** | {} | {} | {} | {} | | | | |",
                img.name,
                r(s.p50, c.p50),
                r(s.p95, c.p95),
                r(s.p99, c.p99),
                r(s.min, c.min),
                r(s.max, c.max),
            );
        }
    }

    let _ = writeln!(
        b,
        "\n## Floors (in-process, same run; p50 ms, MB/s of blob bytes)\n\n\
         fetch = HTTP GET of the layer blob from the registry into memory (from inside the \
         namespace); decompress = flate2 (zlib-rs) or zstd to a sink; sha256 = digest of blob + \
         tar (sha2); tar -x = GNU tar extracting the uncompressed tar from tmpfs into tmpfs. \
         serial = the sum of the four (one core, no overlap); a pipelined pull on 2 cores can \
         beat it. x/floor = p50 pull / serial floor.\n\n\
         | image | fetch | decompress | sha256 | tar -x | serial | skiff/floor | containerd/floor |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, (img, f)) in images.iter().zip(floors).enumerate() {
        let parts = [
            p50(&f.fetch),
            p50(&f.decompress),
            p50(&f.sha256),
            p50(&f.untar),
        ];
        let serial = parts.iter().copied().sum::<Option<f64>>();
        let show = |v: Option<f64>| match v {
            Some(v) => format!("{v:.1} ({:.0})", mb_per_s(img.blob_bytes(), v)),
            None => "—".into(),
        };
        let _ = writeln!(
            b,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            img.name,
            show(parts[0]),
            show(parts[1]),
            show(parts[2]),
            show(parts[3]),
            show(serial),
            fmt_opt(ratio(p50(&cell(i, Kind::Skiff).pull_ms), serial), 2),
            fmt_opt(ratio(p50(&cell(i, Kind::Containerd).pull_ms), serial), 2),
        );
    }

    let _ = writeln!(
        b,
        "\n## RemoveImage after each pull (ms)\n\n\"store after\" = the largest content+snapshot \
         bytes left under the root once RemoveImage returned (containerd collects garbage \
         synchronously here).\n\n\
         | image | system | n | p50 | max | store after |\n|---|---|---:|---:|---:|---:|"
    );
    for (i, img) in images.iter().enumerate() {
        for kind in Kind::ALL {
            let c = cell(i, kind);
            if let Some(s) = Summary::of(&c.remove_ms) {
                let _ = writeln!(
                    b,
                    "| {} | {} | {} | {:.1} | {:.1} | {} B |",
                    img.name,
                    kind.label(),
                    s.n,
                    s.p50,
                    s.max,
                    c.store_after_remove_max
                );
            }
        }
    }

    for (i, img) in images.iter().enumerate() {
        let mut group = Group {
            name: img.name.clone(),
            series: Vec::new(),
        };
        for kind in Kind::ALL {
            let c = cell(i, kind);
            group.series.push(Series {
                system: kind,
                samples: c.pull_ms.clone(),
            });
            for e in super::dedup(&c.errors) {
                o.errors
                    .push(format!("{} on {}: {e}", kind.label(), img.name));
            }
        }
        o.plot.push(group);
    }
    o
}
