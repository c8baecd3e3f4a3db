//! The markdown report of one scenario, and where it is written.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::harness::Kind;
use crate::machine::Machine;
use crate::scenario::{Outcome, Scenario};
use crate::stats::{Summary, fmt_opt, ratio};

/// A UTC instant as `20260501T120304Z` (file names) and `2026-05-01 12:03:04 UTC` (text).
#[derive(Debug, Clone)]
pub struct Stamp {
    /// For file names.
    pub compact: String,
    /// For humans.
    pub human: String,
}

impl Stamp {
    /// Now.
    pub fn now() -> Stamp {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
        Stamp {
            compact: format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z"),
            human: format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC"),
        }
    }
}

/// Howard Hinnant's days → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(0),
        u32::try_from(d).unwrap_or(0),
    )
}

/// A system's availability and resource use during one scenario.
#[derive(Debug, Clone)]
pub struct DaemonLine {
    /// Which system.
    pub kind: Kind,
    /// `Ok(description)` or `Err(reason it is unavailable)`.
    pub status: Result<String, String>,
    /// PID.
    pub pid: Option<u32>,
    /// VmRSS right after start-up, KiB.
    pub idle_rss_kib: Option<u64>,
    /// VmRSS at the end of the scenario, KiB.
    pub rss_kib: Option<u64>,
    /// VmHWM at the end of the scenario, KiB.
    pub hwm_kib: Option<u64>,
    /// CPU seconds the daemon used during the scenario.
    pub cpu_s: Option<f64>,
}

/// Everything one scenario's report shows.
#[derive(Debug)]
pub struct Report<'a> {
    /// The scenario.
    pub scenario: Scenario,
    /// When the run started.
    pub stamp: &'a Stamp,
    /// The command line, for the record.
    pub command: &'a str,
    /// `quick` or `full`, with repetitions.
    pub mode: String,
    /// The machine block.
    pub machine: &'a Machine,
    /// Both systems.
    pub daemons: Vec<DaemonLine>,
    /// The scenario's own sections, or `None` when it is not implemented.
    pub outcome: Option<Outcome>,
    /// Harness notes.
    pub notes: Vec<String>,
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "—".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

impl Report<'_> {
    /// The file stem: `<scenario>[-quick]`.
    pub fn stem(&self, quick: bool) -> String {
        if quick {
            format!("{}-quick", self.scenario.name())
        } else {
            self.scenario.name().to_owned()
        }
    }

    /// Renders the markdown; `plot` is the PNG's file name, if one was drawn.
    pub fn render(&self, plot: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# skiff perf: {}\n", self.scenario.name());
        let _ = writeln!(
            s,
            "Measured {} by `{}` ({}). Every number below comes from that run and was written by \
             the harness; nothing is edited by hand.\n\n{}: {}\n",
            self.stamp.human,
            self.command,
            self.mode,
            self.scenario.name(),
            self.scenario.what()
        );
        if let Some(reason) = self.scenario.not_implemented() {
            let _ = writeln!(s, "**{}: {reason}**", self.scenario.name());
            return s;
        }
        for d in &self.daemons {
            match &d.status {
                Ok(desc) => {
                    let _ = writeln!(s, "- {}: {desc}", d.kind.label());
                }
                Err(reason) => {
                    let what = match d.kind {
                        Kind::Containerd => "anchor unavailable",
                        Kind::Skiff => "skiff unavailable",
                    };
                    let (first, rest) = reason.split_once('\n').unwrap_or((reason, ""));
                    let _ = writeln!(s, "- **{what}: {first}**");
                    if !rest.trim().is_empty() {
                        let _ = writeln!(s, "\n```\n{}\n```", rest.trim_end());
                    }
                }
            }
        }
        s.push('\n');
        s.push_str(&if self.scenario.needs_daemons() {
            self.machine.markdown()
        } else {
            self.machine.host_markdown()
        });
        s.push('\n');
        if let Some(o) = &self.outcome {
            s.push_str(&o.body);
            if let Some(p) = plot {
                let title = if o.plot_title.is_empty() {
                    &o.line_title
                } else {
                    &o.plot_title
                };
                let _ = writeln!(s, "\n![{title}]({p})");
            }
        }
        if !self.daemons.is_empty() {
            self.render_daemons(&mut s);
        }
        if let Some(o) = &self.outcome
            && !o.errors.is_empty()
        {
            let _ = writeln!(s, "\n## Errors\n");
            for e in &o.errors {
                let _ = writeln!(s, "- {}", e.replace('\n', " "));
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// The table of the daemons' resource use during the scenario.
    fn render_daemons(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n## Daemons during this scenario\n\n\
             CPU = utime+stime of the daemon and its reaped children between the scenario's start \
             and end (shims and containers are not the daemon's: they are not counted here). Peak = \
             VmHWM, over the daemon's life.\n\n\
             | system | pid | RSS after start MiB | RSS at end MiB | peak RSS MiB | CPU s |\n\
             |---|---:|---:|---:|---:|---:|"
        );
        for d in &self.daemons {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                d.kind.label(),
                d.pid.map_or_else(|| "—".into(), |p| p.to_string()),
                mib(d.idle_rss_kib),
                mib(d.rss_kib),
                mib(d.hwm_kib),
                d.cpu_s.map_or_else(|| "—".into(), |c| format!("{c:.2}")),
            );
        }
    }
}

/// Writes `<dir>/<stem>-<stamp>.md` and `<dir>/latest-<stem>.md` (and the
/// PNG under both names when `png` holds a drawn plot); returns the paths written.
pub fn write(
    dir: &Path,
    report: &Report<'_>,
    quick: bool,
    png: Option<&Path>,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = report.stem(quick);
    let stamped = format!("{stem}-{}", report.stamp.compact);
    let latest = format!("latest-{stem}");
    let mut written = Vec::new();
    for name in [&stamped, &latest] {
        let plot = match png {
            Some(src) => {
                let file = format!("{name}.png");
                let dst = dir.join(&file);
                std::fs::copy(src, &dst)
                    .with_context(|| format!("copying the plot to {}", dst.display()))?;
                written.push(dst);
                Some(file)
            }
            None => None,
        };
        let md = dir.join(format!("{name}.md"));
        std::fs::write(&md, report.render(plot.as_deref()))
            .with_context(|| format!("writing {}", md.display()))?;
        written.push(md);
    }
    Ok(written)
}

/// Why a system has no samples in a table row: it was unavailable, its first
/// error (escaped for a table cell), or that none were taken.
pub fn why_none(available: bool, errors: &[String]) -> String {
    if !available {
        "unavailable".to_owned()
    } else if let Some(e) = errors.first() {
        format!("failed: {}", e.replace('|', "\\|").replace('\n', " "))
    } else {
        "no samples".to_owned()
    }
}

/// Appends the rows `| case | system | n | p50 | p95 | p99 | min | max |` of one
/// case: each system's summary with `digits` decimals (or, without samples,
/// its entry in `why`), then a bold skiff/containerd ratio row when both have
/// samples. Returns the summaries.
pub fn summary_rows(
    b: &mut String,
    case: &str,
    digits: usize,
    samples: &[(Kind, &[f64], String)],
) -> Vec<(Kind, Summary)> {
    let mut sums = Vec::new();
    for (kind, values, why) in samples {
        match Summary::of(values) {
            Some(s) => {
                sums.push((*kind, s));
                let _ = writeln!(
                    b,
                    "| {case} | {} | {} | {:.digits$} | {:.digits$} | {:.digits$} | {:.digits$} | \
                     {:.digits$} |",
                    kind.label(),
                    s.n,
                    s.p50,
                    s.p95,
                    s.p99,
                    s.min,
                    s.max
                );
            }
            None => {
                let _ = writeln!(b, "| {case} | {} | 0 | {why} | | | | |", kind.label());
            }
        }
    }
    let find = |k: Kind| sums.iter().find(|(kind, _)| *kind == k).map(|(_, s)| *s);
    if let (Some(s), Some(c)) = (find(Kind::Skiff), find(Kind::Containerd)) {
        let r = |a: f64, b: f64| fmt_opt(ratio(Some(a), Some(b)), 2);
        let _ = writeln!(
            b,
            "| {case} | **skiff/containerd** | | **{}** | {} | {} | {} | {} |",
            r(s.p50, c.p50),
            r(s.p95, c.p95),
            r(s.p99, c.p99),
            r(s.min, c.min),
            r(s.max, c.max),
        );
    }
    sums
}

/// A target table's verdict on `ratio`: `yes` when `ok`, `**no**` when not, `—` without one.
pub fn met(ratio: Option<f64>, ok: impl Fn(f64) -> bool) -> &'static str {
    match ratio {
        Some(r) if ok(r) => "yes",
        Some(_) => "**no**",
        None => "—",
    }
}

/// A row `| case | skiff p50 | containerd p50 | skiff/containerd | ≤ max | met |`
/// of a target that skiff's p50 be at most `max` times containerd's.
pub fn target_row(
    b: &mut String,
    case: &str,
    digits: usize,
    skiff: Option<f64>,
    containerd: Option<f64>,
    max: f64,
) {
    let r = ratio(skiff, containerd);
    let _ = writeln!(
        b,
        "| {case} | {} | {} | {} | ≤ {max:.2} | {} |",
        fmt_opt(skiff, digits),
        fmt_opt(containerd, digits),
        fmt_opt(r, 2),
        met(r, |r| r <= max)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_rows_end_with_the_ratio() {
        let mut b = String::new();
        let sums = summary_rows(
            &mut b,
            "x",
            1,
            &[
                (Kind::Skiff, &[1.0, 2.0, 3.0], String::new()),
                (Kind::Containerd, &[4.0], String::new()),
            ],
        );
        assert_eq!(sums.len(), 2);
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(lines[0], "| x | skiff | 3 | 2.0 | 3.0 | 3.0 | 1.0 | 3.0 |");
        assert_eq!(
            lines[2],
            "| x | **skiff/containerd** | | **0.50** | 0.75 | 0.75 | 0.25 | 0.75 |"
        );
        let mut b = String::new();
        summary_rows(
            &mut b,
            "x",
            1,
            &[(Kind::Containerd, &[], why_none(true, &["a|b".into()]))],
        );
        assert_eq!(b, "| x | containerd | 0 | failed: a\\|b | | | | |\n");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
