//! `pulldisk`: the pull on a disk instead of tmpfs.
//!
//! A journaled ext4 (mkfs.ext4 defaults, as nodes have) on a loop device backed by a
//! sparse file on this machine's root disk, mounted under the run's tmpfs. On it, side
//! by side in one run: skiffd (durable, the default; io_uring engine where the probe
//! allows it), skiffd with the blocking engine, skiffd with `[images] durable = false`,
//! and containerd 1.6 (its overlayfs snapshotter does not sync). The images are the
//! `pull` scenario's. Before each timed pull the image is removed (cold store), dirty
//! data is written back and the page cache dropped (`sync; echo 3 > drop_caches`), so
//! the blob is read from the registry's disk and every write reaches this disk. Each
//! pull runs next to one of three neighbours on the same filesystem:
//!
//! - quiet: nothing else;
//! - deleted: a tree of small files, created and synced beforehand, removed with
//!   `rm -rf` right before the pull (what a node's image GC or a finished job does);
//! - writer: a process writing a file steadily (buffered, no fsync) during the pull.
//!
//! Floors: GNU tar extracting the uncompressed tar into the disk, then `sync`.
//! With `--perf-stat` the scenario also runs one quiet pull of each image per system
//! under `perf stat -a` and reports syscalls and context switches per file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::Outcome;
use super::pull::{self, TestImage};
use crate::cleanup::Undo;
use crate::harness::{Harness, Running};
use crate::stats::{Summary, fmt_opt, ms, ratio};
use crate::sys;

/// Sizes and repetitions.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// The images (the `pull` scenario's sizes).
    pub images: pull::Sizes,
    /// Timed pulls per image, neighbour and system.
    pub reps: usize,
    /// Files in the neighbour's deleted tree.
    pub neighbour_files: usize,
    /// The loop filesystem's size, GiB (sparse).
    pub disk_gib: u64,
    /// Also count syscalls and context switches with `perf stat`.
    pub perf_stat: bool,
}

impl Sizes {
    /// `perf/run pulldisk`: the pull's images, 3 pulls per cell, a 26,000-file neighbour.
    pub const FULL: Sizes = Sizes {
        images: pull::Sizes::FULL,
        reps: 3,
        neighbour_files: 26_000,
        disk_gib: 8,
        perf_stat: false,
    };
    /// `--quick`: small images, one pull per cell.
    pub const QUICK: Sizes = Sizes {
        images: pull::Sizes::QUICK,
        reps: 1,
        neighbour_files: 2_000,
        disk_gib: 4,
        perf_stat: false,
    };
}

/// The systems compared, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sys {
    Skiff,
    SkiffBlocking,
    SkiffNoSync,
    Containerd,
}

impl Sys {
    const ALL: [Sys; 4] = [
        Sys::Skiff,
        Sys::SkiffBlocking,
        Sys::SkiffNoSync,
        Sys::Containerd,
    ];

    fn label(self) -> &'static str {
        match self {
            Sys::Skiff => "skiff",
            Sys::SkiffBlocking => "skiff-blocking",
            Sys::SkiffNoSync => "skiff-nosync",
            Sys::Containerd => "containerd",
        }
    }

    /// Its own bridge and pod CIDR (it runs beside the harness's skiffd in one
    /// namespace), plus its settings.
    fn toml(self) -> String {
        let n = self as u8;
        let mut s = format!("\n[network]\nbridge = \"skdisk{n}\"\npod_cidr = \"10.9{n}.0.0/16\"\n");
        if self == Sys::SkiffNoSync {
            s.push_str("\n[images]\ndurable = false\n");
        }
        s
    }

    fn what(self) -> &'static str {
        match self {
            Sys::Skiff => "skiffd defaults: durable (one syncfs per layer), io_uring engine",
            Sys::SkiffBlocking => "skiffd, durable, SKIFF_IO_ENGINE=blocking",
            Sys::SkiffNoSync => "skiffd with `[images] durable = false` (no flush)",
            Sys::Containerd => "containerd 1.6 overlayfs snapshotter (no sync)",
        }
    }
}

/// What else happens on the filesystem during a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Neighbour {
    Quiet,
    Deleted,
    Writer,
}

impl Neighbour {
    const ALL: [Neighbour; 3] = [Neighbour::Quiet, Neighbour::Deleted, Neighbour::Writer];

    fn label(self) -> &'static str {
        match self {
            Neighbour::Quiet => "quiet",
            Neighbour::Deleted => "deleted",
            Neighbour::Writer => "writer",
        }
    }
}

/// Bytes per second the writer neighbour aims at.
const WRITER_RATE: u64 = 64 << 20;
/// The writer starts over (truncates its file) after this many bytes.
const WRITER_WRAP: u64 = 1 << 30;
/// Bytes per file of the deleted tree.
const NEIGHBOUR_FILE_BYTES: usize = 4096;

fn say(msg: &str) {
    eprintln!("skiff-perf: pulldisk: {msg}");
}

/// The loop-mounted ext4: unmounted (the loop device is freed with it) and its
/// backing file removed on drop, or on a signal.
struct Disk {
    mount: PathBuf,
    _undo: Undo,
}

impl Disk {
    fn create(mount: &Path, gib: u64) -> anyhow::Result<(Disk, String)> {
        let image = PathBuf::from(format!(
            "/var/tmp/skiff-perf-disk-{}.img",
            std::process::id()
        ));
        let file = std::fs::File::create(&image)
            .with_context(|| format!("creating {}", image.display()))?;
        let (img, mnt) = (image.clone(), mount.to_path_buf());
        let undo = Undo::register(
            format!("unmount {} and remove {}", mount.display(), image.display()),
            move || {
                if mnt.exists() {
                    sys::unmount_tree(&mnt);
                }
                let _ = std::fs::remove_file(&img);
            },
        );
        file.set_len(gib << 30)?;
        drop(file);
        sys::run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        std::fs::create_dir_all(mount)?;
        sys::run(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(mount),
        )?;
        let backing = sys::run(Command::new("findmnt").args([
            "-no",
            "SOURCE,FSTYPE,OPTIONS",
            "-T",
            "/var/tmp",
        ]))
        .unwrap_or_default();
        let ours = sys::run(
            Command::new("findmnt")
                .args(["-no", "SOURCE,FSTYPE,OPTIONS"])
                .arg(mount),
        )
        .unwrap_or_default();
        let journal = sys::run(Command::new("dumpe2fs").args(["-h"]).arg(&image))
            .map(|t| {
                t.lines()
                    .find(|l| l.starts_with("Filesystem features:"))
                    .map(|l| l.contains("has_journal"))
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        let note = format!(
            "disk: {gib} GiB sparse file {} on the root disk ({}), as ext4 ({}) mounted at {} \
             ({}); journal: {}",
            image.display(),
            backing.trim(),
            if journal { "has_journal" } else { "no journal" },
            mount.display(),
            ours.trim(),
            if journal { "yes" } else { "no" },
        );
        Ok((
            Disk {
                mount: mount.to_path_buf(),
                _undo: undo,
            },
            note,
        ))
    }
}

/// Samples of one image × neighbour × system.
#[derive(Debug, Default)]
struct Cell {
    pull_ms: Vec<f64>,
    cpu_s: Vec<f64>,
    errors: Vec<String>,
}

/// `perf stat -a` counts of one pull.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    syscalls: f64,
    switches: f64,
    ms: f64,
}

/// Runs the scenario.
pub fn run(h: &mut Harness, sizes: Sizes) -> anyhow::Result<Outcome> {
    let mut images = pull::build_images(sizes.images)?;
    // The gzip big-file image adds minutes and nothing the zstd one does not show.
    images.retain(|i| i.name != "big-gzip");
    for img in &images {
        h.push(&img.repo, &img.tag, &img.image)?;
    }
    let (disk, disk_note) = Disk::create(&h.base().join("disk"), sizes.disk_gib)?;
    say(&disk_note);
    let base = disk.mount.clone();

    let mut systems: BTreeMap<Sys, Result<Running, String>> = BTreeMap::new();
    for s in Sys::ALL {
        let started = match s {
            Sys::Skiff => h.start_skiffd_at(&base, s.label(), &s.toml(), &[]),
            Sys::SkiffBlocking => h.start_skiffd_at(
                &base,
                s.label(),
                &s.toml(),
                &[("SKIFF_IO_ENGINE", "blocking")],
            ),
            Sys::SkiffNoSync => h.start_skiffd_at(&base, s.label(), &s.toml(), &[]),
            Sys::Containerd => h.start_containerd_at(&base, "containerd"),
        };
        if let Err(e) = &started {
            say(&format!("{} unavailable: {e}", s.label()));
        }
        systems.insert(s, started);
    }

    let floors = images
        .iter()
        .map(|img| floor(h, &base, img, sizes.reps))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut cells: BTreeMap<(usize, Neighbour, Sys), Cell> = BTreeMap::new();
    let mut turn = 0usize;
    for rep in 0..sizes.reps {
        for (i, img) in images.iter().enumerate() {
            for n in Neighbour::ALL {
                // Rotate who goes first so drift and order cancel.
                let mut order = Sys::ALL;
                order.rotate_left(turn % Sys::ALL.len());
                turn += 1;
                for s in order {
                    let Some(Ok(r)) = systems.get_mut(&s) else {
                        continue;
                    };
                    let cell = cells.entry((i, n, s)).or_default();
                    if let Err(e) = timed_pull(r, &base, img, n, sizes, cell, None) {
                        cell.errors.push(format!("{e:#}"));
                    }
                }
            }
        }
        say(&format!("rep {}/{} done", rep + 1, sizes.reps));
    }

    let mut counts: BTreeMap<(usize, Sys), Counts> = BTreeMap::new();
    if sizes.perf_stat {
        for (i, img) in images.iter().enumerate() {
            for s in Sys::ALL {
                let Some(Ok(r)) = systems.get_mut(&s) else {
                    continue;
                };
                let mut scratch = Cell::default();
                let mut c = Counts::default();
                match timed_pull(
                    r,
                    &base,
                    img,
                    Neighbour::Quiet,
                    sizes,
                    &mut scratch,
                    Some(&mut c),
                ) {
                    Ok(()) => {
                        counts.insert((i, s), c);
                    }
                    Err(e) => say(&format!(
                        "perf stat pull of {} on {}: {e:#}",
                        img.name,
                        s.label()
                    )),
                }
            }
        }
    }

    let mut o = outcome(&images, &floors, &cells, &counts, &systems, sizes);
    o.notes.push(disk_note);
    for (s, r) in &systems {
        match r {
            Ok(r) => o.notes.push(format!(
                "{}: {} ({}), pid {}, root {}",
                s.label(),
                s.what(),
                r.cri_version,
                r.pid(),
                r.root.display()
            )),
            Err(e) => o.errors.push(format!("{} unavailable: {e}", s.label())),
        }
    }
    // Daemons stop before the disk is unmounted.
    drop(systems);
    drop(disk);
    Ok(o)
}

/// Removes the image, prepares the neighbour, drops the page cache, pulls.
fn timed_pull(
    r: &mut Running,
    base: &Path,
    img: &TestImage,
    n: Neighbour,
    sizes: Sizes,
    cell: &mut Cell,
    counts: Option<&mut Counts>,
) -> anyhow::Result<()> {
    if let Some(status) = r.daemon.exited() {
        anyhow::bail!("daemon exited ({status})");
    }
    let reference = img.reference();
    // NotFound is expected: the store is cold after the last pull's removal.
    let _ = r.cri.remove(&reference);
    let stored = r.store_bytes();
    if stored > img.blob().len() as u64 / 10 {
        anyhow::bail!("the store is not cold before the pull: {stored} bytes under the root");
    }
    let scratch = base.join("neighbour");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let tree = scratch.join("tree");
    if n == Neighbour::Deleted {
        make_tree(&tree, sizes.neighbour_files)?;
    }
    sync_and_drop_caches()?;
    let writer = match n {
        Neighbour::Quiet => None,
        Neighbour::Deleted => {
            sys::run(Command::new("rm").arg("-rf").arg(&tree))?;
            None
        }
        Neighbour::Writer => {
            let w = Writer::start(&scratch.join("stream"))?;
            // Let it build up dirty data before the pull starts.
            std::thread::sleep(Duration::from_millis(500));
            Some(w)
        }
    };
    let stat = if counts.is_some() {
        Some(PerfStat::start()?)
    } else {
        None
    };
    let cpu0 = sys::cpu_seconds(r.pid()).ok();
    let pulled = r.cri.pull(&reference);
    let cpu1 = sys::cpu_seconds(r.pid()).ok();
    let measured = stat.map(PerfStat::finish).transpose()?;
    if let Some(w) = writer {
        w.stop()?;
    }
    let (_ref, took) = pulled.map_err(|e| anyhow::anyhow!("PullImage {reference}: {e}"))?;
    cell.pull_ms.push(ms(took));
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        cell.cpu_s.push(b - a);
    }
    if let (Some(m), Some(c)) = (measured, counts) {
        *c = Counts { ms: ms(took), ..m };
    }
    let _ = r.cri.remove(&reference);
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// `count` files of [`NEIGHBOUR_FILE_BYTES`] in 100 directories under `dir`, synced.
fn make_tree(dir: &Path, count: usize) -> anyhow::Result<()> {
    let data = vec![b'n'; NEIGHBOUR_FILE_BYTES];
    for i in 0..count {
        let d = dir.join(format!("{}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&d)?;
        }
        std::fs::write(d.join(format!("f{i}")), &data)?;
    }
    Ok(())
}

/// `sync`, then drop clean page cache, dentries and inodes.
fn sync_and_drop_caches() -> anyhow::Result<()> {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("dropping the page cache")
}

/// The writer neighbour: a thread writing 1 MiB blocks at [`WRITER_RATE`], buffered.
/// Stopped by [`Writer::stop`], or when dropped.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // An error or panic of the thread was reported by `stop` if it was called.
            let _ = t.join();
        }
    }
}

impl Writer {
    fn start(path: &Path) -> anyhow::Result<Writer> {
        let mut file = std::fs::File::create(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (s, w) = (stop.clone(), written.clone());
        let thread = std::thread::spawn(move || -> std::io::Result<()> {
            let block = vec![b'w'; 1 << 20];
            let start = Instant::now();
            let mut total = 0u64;
            let mut in_file = 0u64;
            while !s.load(Ordering::Relaxed) {
                let due = Duration::from_secs_f64(total as f64 / WRITER_RATE as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_millis(20)));
                    continue;
                }
                if in_file >= WRITER_WRAP {
                    file.set_len(0)?;
                    std::io::Seek::rewind(&mut file)?;
                    in_file = 0;
                }
                file.write_all(&block)?;
                total += block.len() as u64;
                in_file += block.len() as u64;
                w.store(total, Ordering::Relaxed);
            }
            Ok(())
        });
        Ok(Writer {
            stop,
            written,
            thread: Some(thread),
        })
    }

    /// Stops the writer; its bytes written.
    fn stop(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(r) => r.context("the writer neighbour failed")?,
                Err(_) => anyhow::bail!("the writer neighbour panicked"),
            }
        }
        Ok(self.written.load(Ordering::Relaxed))
    }
}

/// `perf stat -a` over one pull: system-wide syscalls and context switches.
/// Killed if dropped before [`PerfStat::finish`].
struct PerfStat {
    child: std::process::Child,
    out: PathBuf,
}

impl Drop for PerfStat {
    fn drop(&mut self) {
        // Already reaped when `finish` ran; otherwise stop it now.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.out);
    }
}

impl PerfStat {
    fn start() -> anyhow::Result<PerfStat> {
        let out = std::env::temp_dir().join(format!("skiff-perf-stat-{}.csv", std::process::id()));
        let child = Command::new("perf")
            .args([
                "stat",
                "-a",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter,context-switches",
                "-o",
            ])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting perf stat")?;
        // perf needs a moment to open its counters.
        std::thread::sleep(Duration::from_millis(300));
        Ok(PerfStat { child, out })
    }

    fn finish(mut self) -> anyhow::Result<Counts> {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        self.child.wait()?;
        let text = std::fs::read_to_string(&self.out)?;
        let mut c = Counts::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(',').collect();
            let (Some(v), Some(event)) = (fields.first(), fields.get(2)) else {
                continue;
            };
            let Ok(v) = v.parse::<f64>() else { continue };
            if event.contains("sys_enter") {
                c.syscalls = v;
            } else if event.contains("context-switches") || *event == "cs" {
                c.switches = v;
            }
        }
        Ok(c)
    }
}

/// `tar -x` of the uncompressed layer (read from the tmpfs) into the disk, then `sync`.
#[derive(Debug, Default)]
struct Floor {
    untar: Vec<f64>,
    sync: Vec<f64>,
}

fn floor(h: &Harness, base: &Path, img: &TestImage, reps: usize) -> anyhow::Result<Floor> {
    let tar = img.compression.decompress(img.blob())?;
    let tar_path = h.base().join("floor-layer.tar");
    std::fs::write(&tar_path, &tar)?;
    let mut f = Floor::default();
    for _ in 0..reps {
        let out = base.join("floor");
        std::fs::create_dir_all(&out)?;
        sync_and_drop_caches()?;
        let t = Instant::now();
        sys::run(
            Command::new("tar")
                .arg("-xf")
                .arg(&tar_path)
                .arg("-C")
                .arg(&out),
        )?;
        f.untar.push(ms(t.elapsed()));
        let t = Instant::now();
        rustix::fs::sync();
        f.sync.push(ms(t.elapsed()));
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::remove_file(&tar_path)?;
    say(&format!("floor measured for {}", img.name));
    Ok(f)
}

fn p50(v: &[f64]) -> Option<f64> {
    Summary::of(v).map(|s| s.p50)
}

fn outcome(
    images: &[TestImage],
    floors: &[Floor],
    cells: &BTreeMap<(usize, Neighbour, Sys), Cell>,
    counts: &BTreeMap<(usize, Sys), Counts>,
    systems: &BTreeMap<Sys, Result<Running, String>>,
    sizes: Sizes,
) -> Outcome {
    let mut o = Outcome::default();
    let empty = Cell::default();
    let cell = |i: usize, n: Neighbour, s: Sys| cells.get(&(i, n, s)).unwrap_or(&empty);
    let b = &mut o.body;
    let _ = writeln!(
        b,
        "## Images\n\nThe `pull` scenario's images (big-gzip left out).\n\n| image | files | tar MB | blob MB |\n|---|---:|---:|---:|"
    );
    for img in images {
        let _ = writeln!(
            b,
            "| {} | {} | {:.1} | {:.1} |",
            img.name,
            img.files,
            img.tar_bytes as f64 / 1e6,
            img.blob().len() as f64 / 1e6
        );
    }
    let _ = writeln!(b, "\n## Systems\n\n| system | what |\n|---|---|");
    for s in Sys::ALL {
        let what = match systems.get(&s) {
            Some(Ok(_)) => s.what().to_owned(),
            Some(Err(e)) => format!("unavailable: {}", e.lines().next().unwrap_or("")),
            None => "not started".into(),
        };
        let _ = writeln!(b, "| {} | {what} |", s.label());
    }
    let _ = writeln!(
        b,
        "\n## PullImage on the disk, cold store, page cache dropped (ms)\n\n{} pulls per cell. Neighbours: quiet = nothing else; deleted = a {}-file tree ({} B each) removed with `rm -rf` right before the pull; writer = a thread writing {} MiB/s (buffered, no fsync) during the pull. x cd = p50 / containerd's p50 in the same row group. CPU = the daemon's CPU seconds per pull.\n\n| image | neighbour | system | n | p50 | min | max | x cd | CPU s |\n|---|---|---|---:|---:|---:|---:|---:|---:|",
        sizes.reps,
        sizes.neighbour_files,
        NEIGHBOUR_FILE_BYTES,
        WRITER_RATE >> 20
    );
    for (i, img) in images.iter().enumerate() {
        for n in Neighbour::ALL {
            let anchor = p50(&cell(i, n, Sys::Containerd).pull_ms);
            for s in Sys::ALL {
                let c = cell(i, n, s);
                let cpu = (!c.cpu_s.is_empty())
                    .then(|| c.cpu_s.iter().sum::<f64>() / c.cpu_s.len() as f64);
                match Summary::of(&c.pull_ms) {
                    Some(x) => {
                        let _ = writeln!(
                            b,
                            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} |",
                            img.name,
                            n.label(),
                            s.label(),
                            x.n,
                            x.p50,
                            x.min,
                            x.max,
                            fmt_opt(ratio(Some(x.p50), anchor), 2),
                            fmt_opt(cpu, 2)
                        );
                    }
                    None => {
                        let why = c
                            .errors
                            .first()
                            .map(|e| {
                                format!("failed: {}", e.replace('|', "\\|").replace('\n', " "))
                            })
                            .unwrap_or_else(|| "no samples".into());
                        let _ = writeln!(
                            b,
                            "| {} | {} | {} | 0 | {why} | | | | |",
                            img.name,
                            n.label(),
                            s.label()
                        );
                    }
                }
                for e in super::dedup(&c.errors) {
                    o.errors.push(format!(
                        "{} on {} ({}): {e}",
                        s.label(),
                        img.name,
                        n.label()
                    ));
                }
            }
        }
    }
    let _ = writeln!(
        b,
        "\n## Floors on the disk (p50 ms)\n\nGNU tar extracting the uncompressed tar (read from the tmpfs) into the disk after the page cache was dropped, then `sync`.\n\n| image | tar -x | sync | total |\n|---|---:|---:|---:|"
    );
    for (img, f) in images.iter().zip(floors) {
        let (u, s) = (p50(&f.untar), p50(&f.sync));
        let _ = writeln!(
            b,
            "| {} | {} | {} | {} |",
            img.name,
            fmt_opt(u, 0),
            fmt_opt(s, 0),
            fmt_opt(u.zip(s).map(|(a, b)| a + b), 0)
        );
    }
    if !counts.is_empty() {
        let _ = writeln!(
            b,
            "\n## Syscalls and context switches per file (`perf stat -a`, one quiet pull)\n\nSystem-wide counts over the pull (the registry serving the blob and the harness included; the machine is otherwise idle), divided by the image's files.\n\n| image | system | ms | syscalls/file | context switches/file |\n|---|---|---:|---:|---:|"
        );
        for ((i, s), c) in counts {
            let files = images[*i].files.max(1) as f64;
            let _ = writeln!(
                b,
                "| {} | {} | {:.0} | {:.1} | {:.2} |",
                images[*i].name,
                s.label(),
                c.ms,
                c.syscalls / files,
                c.switches / files
            );
        }
    }
    o
}
