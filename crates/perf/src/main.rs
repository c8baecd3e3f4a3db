//! skiff-perf: measures skiffd against Debian's containerd side by side over
//! CRI and writes markdown reports and PNG plots to `perf/results/`.
//!
//! Run it through `perf/run`, which installs the packages it needs and builds
//! this binary and skiffd in release mode. See `perf/README.md`.

mod cleanup;
mod cri;
mod harness;
mod machine;
mod plot;
mod report;
mod scenario;
mod stats;
mod sys;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Parser;

use harness::{Harness, Kind, Options};
use machine::Machine;
use report::{DaemonLine, Report, Stamp};
use scenario::{Outcome, Scenario, density, netsetup, nri, podstart, pull, pulldisk};

/// skiff against containerd, side by side over CRI.
#[derive(Debug, Parser)]
#[command(version, about, after_help = scenarios_help())]
struct Args {
    /// Scenarios to run (default: all but pulldisk): pull, podstart, density, logs, exec,
    /// netsetup, nri, pulldisk.
    scenarios: Vec<String>,
    /// Small images and one repetition: keeps the harness working (CI); asserts no timings.
    #[arg(long)]
    quick: bool,
    /// Timed repetitions per case (default 5, quick 1).
    #[arg(long)]
    reps: Option<usize>,
    /// The skiffd binary.
    #[arg(long, default_value = "target/release/skiffd")]
    skiffd: PathBuf,
    /// The containerd binary (the anchor).
    #[arg(long, default_value = "/usr/bin/containerd")]
    containerd: PathBuf,
    /// Where reports go.
    #[arg(long, default_value = "perf/results")]
    results: PathBuf,
    /// tmpfs size for the run (`mount -o size=` syntax).
    #[arg(long, default_value = "16g")]
    tmpfs_size: String,
    /// pull: files in the many-small-files image.
    #[arg(long)]
    small_count: Option<usize>,
    /// pull: bytes per small file.
    #[arg(long)]
    small_size: Option<u64>,
    /// pull: files in the few-big-files image.
    #[arg(long)]
    big_count: Option<usize>,
    /// pull: MiB per big file.
    #[arg(long)]
    big_mib: Option<u64>,
    /// podstart: pods started one at a time per system (default 30, quick 3).
    #[arg(long)]
    starts: Option<usize>,
    /// podstart: pods per concurrent batch (default 10, quick 2).
    #[arg(long)]
    batch: Option<usize>,
    /// podstart: concurrent batches per system (default 2, quick 1).
    #[arg(long)]
    batches: Option<usize>,
    /// density: pods started on each system (default 100, quick 5).
    #[arg(long)]
    pods: Option<usize>,
    /// density: seconds the pods sit idle while CPU is measured (default 10, quick 1).
    #[arg(long)]
    idle_secs: Option<u64>,
    /// exec: ExecSync and streaming exec samples per system (default 200, quick 3).
    #[arg(long)]
    execs: Option<usize>,
    /// exec: MiB per port-forward transfer (default 256, quick 4).
    #[arg(long)]
    forward_mib: Option<u64>,
    /// logs: MiB each container writes to stdout (default 1024, quick 16).
    #[arg(long)]
    log_mib: Option<u64>,
    /// netsetup: pods set up and torn down one at a time per path (default 200, quick 5).
    #[arg(long)]
    net_pods: Option<usize>,
    /// netsetup: pods set up at once per path (default 100, quick 10).
    #[arg(long)]
    net_concurrent: Option<usize>,
    /// nri: pods started one at a time per skiffd configuration (default 40, quick 3).
    #[arg(long)]
    nri_pods: Option<usize>,
    /// The RuntimeClass handler skiffd's pods use (runc, crun, native; default: skiffd's
    /// own default handler).
    #[arg(long, default_value = "")]
    skiff_handler: String,
    /// pulldisk: also count syscalls and context switches per file with `perf stat -a`.
    #[arg(long)]
    perf_stat: bool,
    /// pulldisk: files in the neighbour's deleted tree (default 26000, quick 2000).
    #[arg(long)]
    neighbour_files: Option<usize>,
}

fn scenarios_help() -> String {
    let mut s = String::from("Scenarios:\n");
    for sc in Scenario::ALL {
        s.push_str(&format!("  {:<9} {}", sc.name(), sc.what()));
        if let Some(r) = sc.not_implemented() {
            s.push_str(&format!(" [{r}]"));
        }
        s.push('\n');
    }
    s
}

fn main() -> ExitCode {
    let args = Args::parse();
    let code = match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiff-perf: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Everything is normally released by its guard already; this is the safety net.
    cleanup::run_all();
    code
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut scenarios = Vec::new();
    for name in &args.scenarios {
        match Scenario::parse(name) {
            Some(s) => scenarios.push(s),
            None => bail!("unknown scenario {name:?}\n{}", scenarios_help()),
        }
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL
            .into_iter()
            .filter(|s| s.by_default())
            .collect();
    }
    scenarios.sort();
    scenarios.dedup();

    let mut sizes = if args.quick {
        pull::Sizes::QUICK
    } else {
        pull::Sizes::FULL
    };
    if let Some(r) = args.reps {
        sizes.reps = r.max(1);
    }
    if let Some(v) = args.small_count {
        sizes.small_count = v;
    }
    if let Some(v) = args.small_size {
        sizes.small_size = v;
    }
    if let Some(v) = args.big_count {
        sizes.big_count = v;
    }
    if let Some(v) = args.big_mib {
        sizes.big_size = v << 20;
    }
    let mut pod_sizes = if args.quick {
        podstart::Sizes::QUICK
    } else {
        podstart::Sizes::FULL
    };
    if let Some(v) = args.starts {
        pod_sizes.starts = v.max(1);
    }
    if let Some(v) = args.batch {
        pod_sizes.batch = v.max(1);
    }
    if let Some(v) = args.batches {
        pod_sizes.batches = v;
    }
    let mut density_sizes = if args.quick {
        density::Sizes::QUICK
    } else {
        density::Sizes::FULL
    };
    if let Some(v) = args.pods {
        density_sizes.pods = v.max(1);
    }
    if let Some(v) = args.idle_secs {
        density_sizes.idle = std::time::Duration::from_secs(v);
    }
    let mut exec_sizes = if args.quick {
        scenario::exec::Sizes::QUICK
    } else {
        scenario::exec::Sizes::FULL
    };
    if let Some(v) = args.execs {
        exec_sizes.execs = v.max(1);
    }
    if let Some(v) = args.forward_mib {
        exec_sizes.forward_bytes = v.max(1) << 20;
    }
    if let Some(r) = args.reps {
        exec_sizes.forwards = r.max(1);
    }
    let mut log_sizes = if args.quick {
        scenario::logs::Sizes::QUICK
    } else {
        scenario::logs::Sizes::FULL
    };
    if let Some(v) = args.log_mib {
        log_sizes.bytes = v.max(1) << 20;
    }
    if let Some(r) = args.reps {
        log_sizes.reps = r.max(1);
    }
    let mut net_sizes = if args.quick {
        netsetup::Sizes::QUICK
    } else {
        netsetup::Sizes::FULL
    };
    if let Some(v) = args.net_pods {
        net_sizes.pods = v.max(1);
    }
    if let Some(v) = args.net_concurrent {
        net_sizes.concurrent = v.max(1);
    }
    let mut nri_sizes = if args.quick {
        nri::Sizes::QUICK
    } else {
        nri::Sizes::FULL
    };
    if let Some(v) = args.nri_pods {
        nri_sizes.pods = v.max(1);
    }
    let mut disk_sizes = if args.quick {
        pulldisk::Sizes::QUICK
    } else {
        pulldisk::Sizes::FULL
    };
    disk_sizes.images = pull::Sizes {
        reps: disk_sizes.images.reps,
        ..sizes
    };
    if let Some(r) = args.reps {
        disk_sizes.reps = r.max(1);
    }
    if let Some(v) = args.neighbour_files {
        disk_sizes.neighbour_files = v;
    }
    disk_sizes.perf_stat = args.perf_stat;
    let quick_word = if args.quick { "quick" } else { "full" };
    let mode = format!(
        "{} mode, {} repetition{}",
        if args.quick { "quick" } else { "full" },
        sizes.reps,
        if sizes.reps == 1 { "" } else { "s" }
    );

    let stamp = Stamp::now();
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let skiffd = std::path::absolute(&args.skiffd).context("resolving --skiffd")?;
    let machine = Machine::describe(&skiffd, &args.containerd);
    let needs_daemons = scenarios.iter().any(|s| s.needs_daemons());
    if scenarios.iter().any(|s| s.not_implemented().is_none()) {
        cleanup::install_signal_handler()?;
    }

    let mut harness = if needs_daemons {
        harness::preflight()?;
        let mount_point = std::env::temp_dir().join(format!("skiff-perf-{}", std::process::id()));
        eprintln!(
            "skiff-perf: starting registry, containerd and skiffd on tmpfs {}",
            mount_point.display()
        );
        Some(Harness::start(&Options {
            skiffd: skiffd.clone(),
            containerd: args.containerd.clone(),
            mount_point,
            tmpfs_size: args.tmpfs_size.clone(),
            skiff_handler: args.skiff_handler.clone(),
        })?)
    } else {
        None
    };

    let mut anchor_missing = false;
    for sc in scenarios {
        let mut report = Report {
            scenario: sc,
            stamp: &stamp,
            command: &command,
            mode: match sc {
                Scenario::PodStart => format!(
                    "{} mode, {} sequential pods and {} batch{} of {} per system",
                    quick_word,
                    pod_sizes.starts,
                    pod_sizes.batches,
                    if pod_sizes.batches == 1 { "" } else { "es" },
                    pod_sizes.batch
                ),
                Scenario::Density => format!(
                    "{} mode, {} pods per system",
                    quick_word, density_sizes.pods
                ),
                Scenario::Exec => format!(
                    "{} mode, {} ExecSync and {} streaming execs, {} port-forward transfer{} of \
                     {} MiB each way per system",
                    quick_word,
                    exec_sizes.execs,
                    exec_sizes.execs,
                    exec_sizes.forwards,
                    if exec_sizes.forwards == 1 { "" } else { "s" },
                    exec_sizes.forward_bytes >> 20
                ),
                Scenario::Logs => format!(
                    "{} mode, {} MiB per container, {} sample{} per case and system",
                    quick_word,
                    log_sizes.bytes >> 20,
                    log_sizes.reps,
                    if log_sizes.reps == 1 { "" } else { "s" }
                ),
                Scenario::NetSetup => format!(
                    "{} mode, {} sequential pods and {} at once per path",
                    quick_word, net_sizes.pods, net_sizes.concurrent
                ),
                Scenario::Nri => format!(
                    "{} mode, {} sequential pods per skiffd configuration",
                    quick_word, nri_sizes.pods
                ),
                Scenario::PullDisk => format!(
                    "{} mode, {} pull{} per image, neighbour and system",
                    quick_word,
                    disk_sizes.reps,
                    if disk_sizes.reps == 1 { "" } else { "s" }
                ),
                _ => mode.clone(),
            },
            machine: &machine,
            daemons: Vec::new(),
            outcome: None,
            notes: Vec::new(),
        };
        let mut png = None;
        let daemons = if sc.needs_daemons() {
            harness.as_mut()
        } else {
            None
        };
        if sc == Scenario::NetSetup || daemons.is_some() {
            let load0 = loadavg();
            let outcome = match daemons {
                Some(h) => {
                    if sc.compares_systems()
                        && let Err(reason) = &h.containerd.state
                    {
                        eprintln!("skiff-perf: anchor unavailable: {reason}");
                        anchor_missing = true;
                    }
                    if let Err(reason) = &h.skiff.state {
                        eprintln!("skiff-perf: skiff unavailable: {reason}");
                    }
                    let cpu0 = cpu_now(h);
                    let outcome = match sc {
                        Scenario::Pull => pull::run(h, sizes)?,
                        Scenario::PodStart => podstart::run(h, pod_sizes)?,
                        Scenario::Density => density::run(h, density_sizes)?,
                        Scenario::Exec => scenario::exec::run(h, exec_sizes)?,
                        Scenario::Logs => scenario::logs::run(h, log_sizes)?,
                        Scenario::Nri => nri::run(h, nri_sizes)?,
                        Scenario::PullDisk => pulldisk::run(h, disk_sizes)?,
                        _ => Outcome::default(),
                    };
                    // `nri` reports its own skiffds; the harness's two ran idle.
                    if sc.compares_systems() {
                        report.daemons = daemon_lines(h, &cpu0);
                    }
                    report.notes = h.notes.clone();
                    outcome
                }
                None => netsetup::run(net_sizes)?,
            };
            report.notes.extend(outcome.notes.iter().cloned());
            report.notes.push(format!(
                "load average (1/5/15 min) at the scenario's start: {load0}; at its end: {}; \
                 other work on the machine shows here",
                loadavg()
            ));
            let tmp = std::env::temp_dir().join(format!(
                "skiff-perf-{}-{}.png",
                std::process::id(),
                sc.name()
            ));
            let drawn = if !outcome.plot.is_empty() {
                Some(plot::strip_chart(
                    &tmp,
                    &outcome.plot_title,
                    &outcome.plot,
                    &outcome.plot_labels,
                ))
            } else if !outcome.lines.is_empty() {
                let (x, y) = &outcome.line_axes;
                Some(plot::line_chart(
                    &tmp,
                    &outcome.line_title,
                    x,
                    y,
                    &outcome.lines,
                ))
            } else {
                None
            };
            match drawn {
                Some(Ok(())) => png = Some(tmp),
                Some(Err(e)) => report.notes.push(format!("no plot: {e:#}")),
                None => {}
            }
            report.outcome = Some(outcome);
        }
        let written = report::write(&args.results, &report, args.quick, png.as_deref());
        if let Some(p) = &png {
            let _ = std::fs::remove_file(p);
        }
        let written = written?;
        println!("{}", report.render(None));
        for p in written {
            eprintln!("skiff-perf: wrote {}", p.display());
        }
    }
    drop(harness);

    if anchor_missing && !args.quick {
        eprintln!("skiff-perf: the anchor was unavailable: the report has skiff's side only");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn cpu_now(h: &mut Harness) -> Vec<(Kind, Option<f64>)> {
    h.systems()
        .into_iter()
        .map(|s| {
            let kind = s.kind;
            (
                kind,
                s.running().and_then(|r| sys::cpu_seconds(r.pid()).ok()),
            )
        })
        .collect()
}

fn daemon_lines(h: &mut Harness, cpu0: &[(Kind, Option<f64>)]) -> Vec<DaemonLine> {
    let mut lines = Vec::new();
    for s in h.systems() {
        let kind = s.kind;
        let before = cpu0.iter().find(|(k, _)| *k == kind).and_then(|(_, c)| *c);
        let line = match &mut s.state {
            Ok(r) => {
                let pid = r.pid();
                let after = sys::cpu_seconds(pid).ok();
                DaemonLine {
                    kind,
                    status: Ok(format!(
                        "{} (CRI Version: {}), pid {pid}",
                        match kind {
                            Kind::Skiff => "skiffd",
                            Kind::Containerd => "containerd",
                        },
                        r.cri_version
                    )),
                    pid: Some(pid),
                    idle_rss_kib: r.idle_rss_kib,
                    rss_kib: sys::status_kib(pid, "VmRSS"),
                    hwm_kib: sys::status_kib(pid, "VmHWM"),
                    cpu_s: before.zip(after).map(|(a, b)| b - a),
                }
            }
            Err(reason) => DaemonLine {
                kind,
                status: Err(reason.clone()),
                pid: None,
                idle_rss_kib: None,
                rss_kib: None,
                hwm_kib: None,
                cpu_s: None,
            },
        };
        lines.push(line);
    }
    lines
}
