//! `logs`: how fast a container's stdout reaches its CRI log file, and what
//! the runtime spends on it.
//!
//! Each sample is one pod whose busybox container writes N bytes to stdout and
//! exits: (a) big writes, `dd if=/dev/zero bs=1M`, a stream with no newline
//! that both runtimes split into partial (`P`) entries; (b) 100-byte lines,
//! `yes <99 chars> | head -c N`. The pod is created and its container created,
//! then the shim's and the daemon's CPU are read, StartContainer is called and
//! the harness polls (every 2 ms) the container's process and the log file's
//! size: the time is from the StartContainer call until the log file last
//! grew, once the process is gone, CRI ContainerStatus says the container
//! exited (asked every [`STATUS_EVERY`] once the process is gone and the file
//! quiet: a shim may still be busy with output it read) and the file stayed
//! the same for [`QUIET`]. Then the log file is parsed back (every entry's content counted,
//! the newline a full entry stands for included) to check every byte arrived,
//! and deleted with the pod.
//!
//! skiff's shim writes the log file itself. containerd 1.6's shim
//! (`containerd-shim-runc-v2`) copies the container's pipe into a FIFO, and
//! the CRI plugin inside the containerd daemon reads it and writes the log
//! file: so CPU is reported for the shim, for the daemon, and for both.
//! The shim is found from the sandbox's process: skiff's verbose
//! PodSandboxStatus names it (`shimPid`), containerd's is the parent of the
//! sandbox `pid` (a shim is the subreaper its containers are re-parented to);
//! both are checked against the shim's program name. CPU is the process's
//! own utime + stime, not its reaped children's (runc, the container).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_cri::api;
use skiff_testkit::image::BUSYBOX_PATH;

use super::Outcome;
use super::pods::{self, PodSweep};
use crate::harness::{Harness, Kind, Running};
use crate::plot::{Group, Series};
use crate::report::{met, why_none};
use crate::stats::{Summary, fmt_opt, mb_per_s, ms, ratio};
use crate::sys;

/// How long the log file must stay the same after the container exited.
const QUIET: Duration = Duration::from_millis(500);
/// How often the file and the process are looked at.
const POLL: Duration = Duration::from_millis(2);
/// How often, once the process is gone and the file quiet, the runtime is
/// asked whether the container exited.
const STATUS_EVERY: Duration = Duration::from_millis(50);
/// Longest one sample may take.
const SAMPLE_LIMIT: Duration = Duration::from_secs(300);
/// A GiB, for CPU seconds per GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// How much and how often.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Bytes each container writes.
    pub bytes: u64,
    /// Samples per case and system.
    pub reps: usize,
}

impl Sizes {
    /// `perf/run logs`: 1 GiB, 3 samples per case and system.
    pub const FULL: Sizes = Sizes {
        bytes: 1 << 30,
        reps: 3,
    };
    /// `perf/run --quick`: 16 MiB, one sample.
    pub const QUICK: Sizes = Sizes {
        bytes: 16 << 20,
        reps: 1,
    };
}

/// What the container writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    /// `dd if=/dev/zero bs=1M`.
    BigWrites,
    /// `yes <99 chars> | head -c N`.
    Lines,
}

/// 99 characters: with `yes`'s newline, a 100-byte line.
const LINE: &str = "skiff-perf-log-line-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789-end";

impl Case {
    const ALL: [Case; 2] = [Case::BigWrites, Case::Lines];

    fn label(self) -> &'static str {
        match self {
            Case::BigWrites => "1 MiB writes",
            Case::Lines => "100-byte lines",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Case::BigWrites => "big",
            Case::Lines => "lines",
        }
    }

    /// The shell command writing `bytes` to stdout; `bin` prefixes each applet
    /// (empty inside the image, `/bin/busybox ` on the host for the floor).
    fn shell(self, bytes: u64, bin: &str) -> String {
        match self {
            Case::BigWrites => format!(
                "{bin}dd if=/dev/zero bs=1048576 count={} 2>/dev/null",
                bytes >> 20
            ),
            Case::Lines => format!("{bin}yes {LINE} | {bin}head -c {bytes}"),
        }
    }
}

/// One container's run.
#[derive(Debug, Clone)]
struct Sample {
    /// StartContainer until the log file last grew.
    elapsed_ms: f64,
    /// The StartContainer call alone.
    start_ms: f64,
    /// The log file's size.
    file_bytes: u64,
    /// The log read back.
    parsed: Parsed,
    /// CPU seconds of the shim over the sample.
    shim_cpu_s: f64,
    /// CPU seconds of the daemon over the sample.
    daemon_cpu_s: f64,
}

/// One system's samples.
#[derive(Debug, Default)]
struct Cell {
    samples: BTreeMap<Case, Vec<Sample>>,
    errors: Vec<String>,
}

fn say(msg: &str) {
    eprintln!("skiff-perf: logs: {msg}");
}

/// Runs the scenario.
pub fn run(h: &mut Harness, sizes: Sizes) -> anyhow::Result<Outcome> {
    let mut o = Outcome {
        // Short: two columns make a narrow chart.
        plot_title: format!("StartContainer until {} MiB are logged", sizes.bytes >> 20),
        ..Outcome::default()
    };
    o.notes = pods::prepare(h, "logs")?;
    o.notes.retain(|n| !n.starts_with("workload:"));
    let _sweeps = PodSweep::all(h);

    let mut floors: BTreeMap<Case, Vec<f64>> = BTreeMap::new();
    let mut cells: BTreeMap<Kind, Cell> = BTreeMap::new();
    let mut n = 0;
    for rep in 0..sizes.reps {
        for case in Case::ALL {
            match floor(case, sizes.bytes) {
                Ok(d) => floors.entry(case).or_default().push(ms(d)),
                Err(e) => o.errors.push(format!("floor {}: {e:#}", case.label())),
            }
            // Consecutive samples alternate which system goes first.
            for kind in Kind::order(n) {
                n += 1;
                let Some(r) = h.system(kind).running() else {
                    continue;
                };
                let cell = cells.entry(kind).or_default();
                if let Some(status) = r.daemon.exited() {
                    cell.errors.push(format!("daemon exited ({status})"));
                    continue;
                }
                let name = format!("logs-{}-{rep}", case.tag());
                match sample(r, kind, case, &name, sizes.bytes) {
                    Ok(s) => {
                        let expected = sizes.bytes;
                        if s.parsed.stdout_payload.abs_diff(expected) > 1 {
                            cell.errors.push(format!(
                                "{}: the log holds {} stdout bytes, {expected} were written",
                                case.label(),
                                s.parsed.stdout_payload
                            ));
                        }
                        cell.samples.entry(case).or_default().push(s);
                    }
                    Err(e) => cell.errors.push(format!("{}: {e}", case.label())),
                }
            }
        }
        say(&format!("{}/{} rounds", rep + 1, sizes.reps));
    }
    write_body(h, &mut o, &cells, &floors, sizes);
    Ok(o)
}

/// The writer alone: the same busybox command on the host, its stdout a pipe
/// the harness drains in 1 MiB reads.
fn floor(case: Case, bytes: u64) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut child = Command::new(BUSYBOX_PATH)
        .args(["sh", "-c", &case.shell(bytes, &format!("{BUSYBOX_PATH} "))])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no pipe"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        match out.read(&mut buf)? {
            0 => break,
            n => got += n as u64,
        }
    }
    let status = child.wait()?;
    let d = t.elapsed();
    anyhow::ensure!(status.success(), "the writer exited with {status}");
    anyhow::ensure!(got == bytes, "read {got} bytes, expected {bytes}");
    Ok(d)
}

/// One pod writing `bytes` in `case`; always removes the pod and its log.
fn sample(
    r: &mut Running,
    kind: Kind,
    case: Case,
    name: &str,
    bytes: u64,
) -> Result<Sample, String> {
    let mut spec = pods::pod_spec(r, kind, name).map_err(|e| format!("{e:#}"))?;
    spec.container.metadata = Some(api::ContainerMetadata {
        name: "writer".into(),
        attempt: 0,
    });
    spec.container.command = vec!["sh".into(), "-c".into(), case.shell(bytes, "")];
    spec.container.log_path = "writer.log".into();
    let log_dir = PathBuf::from(&spec.sandbox.log_directory);
    let log = log_dir.join("writer.log");
    let (pod, container) = match r.cri.create_pod(&spec) {
        Ok(ids) => ids,
        Err(f) => {
            if let Some(pod) = &f.pod_id {
                let _ = r.cri.stop_pod(pod);
                let _ = r.cri.remove_pod(pod);
            }
            return Err(f.to_string());
        }
    };
    let result = measure(r, kind, &pod, &container, &log);
    let mut cleanup = Vec::new();
    if let Err(e) = r.cri.stop_pod(&pod) {
        cleanup.push(format!("StopPodSandbox: {e}"));
    }
    if let Err(e) = r.cri.remove_pod(&pod) {
        cleanup.push(format!("RemovePodSandbox: {e}"));
    }
    // Neither runtime deletes a container's log (the kubelet does): the next
    // sample's gigabyte must not sit on the tmpfs next to this one.
    if let Err(e) = std::fs::remove_dir_all(&log_dir) {
        cleanup.push(format!("removing {}: {e}", log_dir.display()));
    }
    match (result, cleanup.is_empty()) {
        (Ok(s), true) => Ok(s),
        (Ok(_), false) => Err(cleanup.join("; ")),
        (Err(e), _) => Err(e),
    }
}

fn measure(
    r: &mut Running,
    kind: Kind,
    pod: &str,
    container: &str,
    log: &Path,
) -> Result<Sample, String> {
    let shim = find_shim(r, kind, pod)?;
    let daemon = r.pid();
    let cpu = |pid: u32| sys::own_cpu_seconds(pid).map_err(|e| format!("{e:#}"));
    let (shim0, daemon0) = (cpu(shim)?, cpu(daemon)?);

    let t0 = Instant::now();
    let start = r
        .cri
        .start_container(container)
        .map_err(|e| format!("StartContainer: {e}"))?;
    // Verbose ContainerStatus names the container's process; a container that
    // is already gone may report none.
    let pid = r
        .cri
        .container_pid(container)
        .ok()
        .flatten()
        .filter(|p| *p > 0);
    let mut gone = false;
    let mut status: Option<api::ContainerStatus> = None;
    let mut asked = t0;
    let mut size = 0u64;
    let mut last_change = t0;
    loop {
        let now = Instant::now();
        let s = std::fs::metadata(log).map_or(0, |m| m.len());
        if s != size {
            size = s;
            last_change = now;
        }
        gone = gone || !pid.is_some_and(sys::alive);
        let quiet = now.duration_since(last_change) >= QUIET;
        // A shim may still be writing (or stuck) after the process is gone: only the
        // runtime saying the container exited, and a quiet file after that, end it.
        if gone && quiet && status.is_none() && now.duration_since(asked) >= STATUS_EVERY {
            asked = now;
            let st = r
                .cri
                .container_status(container)
                .map_err(|e| format!("ContainerStatus: {e}"))?;
            if st.state == api::ContainerState::ContainerExited as i32 {
                status = Some(st);
                continue;
            }
        }
        if status.is_some() && quiet {
            break;
        }
        if t0.elapsed() > SAMPLE_LIMIT {
            return Err(format!(
                "not done within {SAMPLE_LIMIT:?}: {size} log bytes, the process {}, the \
                 container {}",
                if gone { "gone" } else { "running" },
                if status.is_some() {
                    "reported exited"
                } else {
                    "not reported exited"
                }
            ));
        }
        std::thread::sleep(POLL);
    }
    let (shim1, daemon1) = (cpu(shim)?, cpu(daemon)?);
    let elapsed = last_change.duration_since(t0);

    let status = status.unwrap_or_default();
    if status.exit_code != 0 {
        return Err(format!("the writer exited {}", status.exit_code));
    }
    let parsed = parse_log(log).map_err(|e| format!("reading {}: {e}", log.display()))?;
    Ok(Sample {
        elapsed_ms: ms(elapsed),
        start_ms: ms(start),
        file_bytes: size,
        parsed,
        shim_cpu_s: shim1 - shim0,
        daemon_cpu_s: daemon1 - daemon0,
    })
}

/// The shim serving `pod` (see the module doc).
fn find_shim(r: &mut Running, kind: Kind, pod: &str) -> Result<u32, String> {
    let info = r
        .cri
        .pod_info(pod)
        .map_err(|e| format!("PodSandboxStatus: {e}"))?;
    let as_pid = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
    };
    let sandbox = as_pid(&info["pid"]);
    let procs = sys::processes();
    let parent = sandbox.and_then(|s| procs.iter().find(|p| p.pid == s).map(|p| p.ppid));
    let shim = match kind {
        Kind::Skiff => as_pid(&info["shimPid"]).or(parent),
        Kind::Containerd => parent,
    }
    .ok_or_else(|| format!("no shim: verbose PodSandboxStatus info {info}"))?;
    let program = procs
        .iter()
        .find(|p| p.pid == shim)
        .map(|p| p.program().to_owned())
        .unwrap_or_default();
    if program != pods::shim_program(kind) {
        return Err(format!(
            "pid {shim} (from the sandbox's status) is {program:?}, not {}",
            pods::shim_program(kind)
        ));
    }
    Ok(shim)
}

/// A CRI log file read back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Parsed {
    /// Entries.
    entries: u64,
    /// Partial (`P`) entries.
    partial: u64,
    /// stdout bytes the entries stand for: each entry's content, plus the
    /// newline a full (`F`) entry ends.
    stdout_payload: u64,
    /// stderr entries.
    stderr_entries: u64,
    /// Lines not in `<time> <stream> <P|F> <content>` form.
    malformed: u64,
}

/// Reads a CRI log file (`<RFC 3339 time> <stdout|stderr> <P|F> <content>\n`).
fn parse_log(path: &Path) -> std::io::Result<Parsed> {
    let f = std::fs::File::open(path)?;
    let mut rd = std::io::BufReader::with_capacity(1 << 20, f);
    let mut line = Vec::with_capacity(64 << 10);
    let mut p = Parsed::default();
    loop {
        line.clear();
        if rd.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        parse_entry(&line, &mut p);
    }
    Ok(p)
}

fn parse_entry(line: &[u8], p: &mut Parsed) {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = body.splitn(4, |b| *b == b' ');
    let (Some(_time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        p.malformed += 1;
        return;
    };
    let content = parts.next().unwrap_or_default();
    let full = match tag {
        b"F" => true,
        b"P" => false,
        _ => {
            p.malformed += 1;
            return;
        }
    };
    p.entries += 1;
    if !full {
        p.partial += 1;
    }
    match stream {
        b"stdout" => p.stdout_payload += content.len() as u64 + u64::from(full),
        b"stderr" => p.stderr_entries += 1,
        _ => p.malformed += 1,
    }
}

/// The p50 of `f` over `samples`.
fn p50(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Option<f64> {
    Summary::of(&samples.iter().map(f).collect::<Vec<_>>()).map(|s| s.p50)
}

fn write_body(
    h: &mut Harness,
    o: &mut Outcome,
    cells: &BTreeMap<Kind, Cell>,
    floors: &BTreeMap<Case, Vec<f64>>,
    sizes: Sizes,
) {
    let empty = Cell::default();
    let cell = |k: Kind| cells.get(&k).unwrap_or(&empty);
    let none: Vec<Sample> = Vec::new();
    let samples = |k: Kind, c: Case| cell(k).samples.get(&c).unwrap_or(&none);
    let gib = sizes.bytes as f64 / GIB;
    let b = &mut o.body;

    let _ = writeln!(
        b,
        "## Log throughput (MB/s of stdout, 10^6 bytes)\n\n\
         Each sample: one pod whose busybox container writes {mib} MiB to stdout and exits; \
         {reps} sample{s} per case and system, systems alternating which goes first. Time = from \
         the StartContainer call until the log file last grew (the process gone, ContainerStatus \
         reporting the container exited, and the file the same for {quiet} ms after that; \
         polled every {poll} ms). MB/s = {mib} MiB / time; the \
         StartContainer call itself is inside the time and shown on its own. Big writes: `dd \
         if=/dev/zero bs=1M` (no newline: both runtimes split it into partial entries); lines: \
         `yes <99 chars> | head -c N`.\n\n\
         | case | system | n | p50 MB/s | min MB/s | max MB/s | p50 time ms | p50 StartContainer ms |\n\
         |---|---|---:|---:|---:|---:|---:|---:|",
        mib = sizes.bytes >> 20,
        reps = sizes.reps,
        s = if sizes.reps == 1 { "" } else { "s" },
        quiet = QUIET.as_millis(),
        poll = POLL.as_millis(),
    );
    let mut thr: BTreeMap<(Case, Kind), f64> = BTreeMap::new();
    for case in Case::ALL {
        for kind in Kind::ALL {
            let ss = samples(kind, case);
            let rates: Vec<f64> = ss
                .iter()
                .map(|s| mb_per_s(sizes.bytes, s.elapsed_ms))
                .collect();
            match Summary::of(&rates) {
                Some(rs) => {
                    thr.insert((case, kind), rs.p50);
                    let _ = writeln!(
                        b,
                        "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
                        case.label(),
                        kind.label(),
                        rs.n,
                        rs.p50,
                        rs.min,
                        rs.max,
                        fmt_opt(p50(ss, |s| s.elapsed_ms), 0),
                        fmt_opt(p50(ss, |s| s.start_ms), 1),
                    );
                }
                None => {
                    let why = why_none(h.system(kind).state.is_ok(), &cell(kind).errors);
                    let _ = writeln!(
                        b,
                        "| {} | {} | 0 | {why} | | | | |",
                        case.label(),
                        kind.label()
                    );
                }
            }
        }
        let r = ratio(
            thr.get(&(case, Kind::Skiff)).copied(),
            thr.get(&(case, Kind::Containerd)).copied(),
        );
        if r.is_some() {
            let _ = writeln!(
                b,
                "| {} | **skiff/containerd** | | **{}** | | | | |",
                case.label(),
                fmt_opt(r, 2)
            );
        }
        if let Some(f) = floors.get(&case).and_then(|f| Summary::of(f)) {
            let _ = writeln!(
                b,
                "| {} | floor: the writer into a pipe | {} | {:.1} | {:.1} | {:.1} | {:.0} | |",
                case.label(),
                f.n,
                mb_per_s(sizes.bytes, f.p50),
                mb_per_s(sizes.bytes, f.max),
                mb_per_s(sizes.bytes, f.min),
                f.p50
            );
        }
    }

    let _ = writeln!(
        b,
        "\n## CPU per GiB of stdout (seconds, p50 over the samples)\n\n\
         utime + stime of the process itself (not its reaped children: not runc, not the \
         container), from StartContainer until the log stopped growing, divided by the GiB \
         written. skiff's shim writes the log file; containerd's shim copies the pipe into a \
         FIFO and the CRI plugin in the containerd daemon writes the file, so the log path's CPU \
         is shim + daemon for both.\n\n\
         | case | system | shim s/GiB | daemon s/GiB | shim + daemon s/GiB |\n\
         |---|---|---:|---:|---:|"
    );
    let mut cpu: BTreeMap<(Case, Kind), f64> = BTreeMap::new();
    for case in Case::ALL {
        for kind in Kind::ALL {
            let ss = samples(kind, case);
            let shim = p50(ss, |s| s.shim_cpu_s / gib);
            let daemon = p50(ss, |s| s.daemon_cpu_s / gib);
            let both = p50(ss, |s| (s.shim_cpu_s + s.daemon_cpu_s) / gib);
            if let Some(v) = both {
                cpu.insert((case, kind), v);
            }
            let _ = writeln!(
                b,
                "| {} | {} | {} | {} | {} |",
                case.label(),
                kind.label(),
                fmt_opt(shim, 2),
                fmt_opt(daemon, 2),
                fmt_opt(both, 2)
            );
        }
        let r = ratio(
            cpu.get(&(case, Kind::Skiff)).copied(),
            cpu.get(&(case, Kind::Containerd)).copied(),
        );
        if r.is_some() {
            let _ = writeln!(
                b,
                "| {} | **skiff/containerd** | | | **{}** |",
                case.label(),
                fmt_opt(r, 2)
            );
        }
    }

    let _ = writeln!(
        b,
        "\n## Against the issue's target\n\n\
         Issue 4 asks for skiff's log throughput to be at least 2x containerd's at no more CPU \
         (compared here as shim + daemon CPU per GiB). The harness reports; it asserts \
         nothing{}.\n\n\
         | case | throughput skiff/containerd | ≥ 2.00 | CPU skiff/containerd | ≤ 1.00 |\n\
         |---|---:|---|---:|---|",
        if sizes.bytes < 1 << 30 {
            " (and at this size the figures are indicative only)"
        } else {
            ""
        }
    );
    for case in Case::ALL {
        let t = ratio(
            thr.get(&(case, Kind::Skiff)).copied(),
            thr.get(&(case, Kind::Containerd)).copied(),
        );
        let c = ratio(
            cpu.get(&(case, Kind::Skiff)).copied(),
            cpu.get(&(case, Kind::Containerd)).copied(),
        );
        let _ = writeln!(
            b,
            "| {} | {} | {} | {} | {} |",
            case.label(),
            fmt_opt(t, 2),
            met(t, |r| r >= 2.0),
            fmt_opt(c, 2),
            met(c, |r| r <= 1.0),
        );
    }

    let _ = writeln!(
        b,
        "\n## The log files read back (last sample of each)\n\n\
         Every entry parsed as `<time> <stream> <P|F> <content>`; stdout bytes = the entries' \
         content plus the newline each full (F) entry ends. A difference of more than one byte \
         from what was written is listed under Errors.\n\n\
         | case | system | file MB | entries | partial | stdout bytes | written | stderr entries | malformed |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for case in Case::ALL {
        for kind in Kind::ALL {
            if let Some(s) = samples(kind, case).last() {
                let p = s.parsed;
                let _ = writeln!(
                    b,
                    "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} |",
                    case.label(),
                    kind.label(),
                    s.file_bytes as f64 / 1e6,
                    p.entries,
                    p.partial,
                    p.stdout_payload,
                    sizes.bytes,
                    p.stderr_entries,
                    p.malformed
                );
            }
        }
    }

    for case in Case::ALL {
        o.plot.push(Group {
            name: case.label().to_owned(),
            series: Kind::ALL
                .into_iter()
                .map(|k| Series {
                    system: k,
                    samples: samples(k, case).iter().map(|s| s.elapsed_ms).collect(),
                })
                .collect(),
        });
    }
    o.notes.push(format!(
        "workload: one pod per sample, busybox (`{}`) running `sh -c` with the writer command \
         (`{}` / `{}`), its log at `<pod log dir>/writer.log` on the run's tmpfs; pod, log file \
         and log directory are removed after each sample",
        pods::workload_image(),
        Case::BigWrites.shell(sizes.bytes, ""),
        Case::Lines.shell(sizes.bytes, ""),
    ));
    o.notes.push(
        "skiff's shim splits lines longer than 16 KiB into partial entries; containerd's CRI \
         plugin likewise (`max_container_log_line_size`, default 16384)"
            .into(),
    );
    for kind in Kind::ALL {
        o.system_errors(kind, &cell(kind).errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_99_characters() {
        assert_eq!(LINE.len(), 99);
    }

    #[test]
    fn entries_count_back_to_the_bytes_written() {
        let mut p = Parsed::default();
        parse_entry(b"2026-01-01T00:00:00.000000000Z stdout P abc\n", &mut p);
        parse_entry(b"2026-01-01T00:00:00.000000000Z stdout F de\n", &mut p);
        parse_entry(b"2026-01-01T00:00:00.000000000Z stdout F \n", &mut p);
        parse_entry(b"2026-01-01T00:00:00.000000000Z stderr F oops\n", &mut p);
        parse_entry(b"garbage\n", &mut p);
        assert_eq!(
            p,
            Parsed {
                entries: 4,
                partial: 1,
                // "abc" + "de\n" + "\n"
                stdout_payload: 7,
                stderr_entries: 1,
                malformed: 1,
            }
        );
    }

    #[test]
    fn commands_write_the_asked_size() {
        assert_eq!(
            Case::BigWrites.shell(16 << 20, ""),
            "dd if=/dev/zero bs=1048576 count=16 2>/dev/null"
        );
        assert!(
            Case::Lines
                .shell(100, "/bin/busybox ")
                .ends_with("/bin/busybox head -c 100")
        );
    }
}
