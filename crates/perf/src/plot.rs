//! PNG strip charts of latency samples: one column per case, skiff and
//! containerd side by side, every sample a dot, the median a bar; log y axis.
//!
//! Text is drawn with ab_glyph from DejaVu Sans read at run time (Debian's
//! `fonts-dejavu-core`), so there is no fontconfig dependency.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;

use crate::harness::Kind;
use crate::stats::Summary;

/// The font file text is rendered with.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One system's samples of one case.
#[derive(Debug, Clone)]
pub struct Series {
    /// Whose samples.
    pub system: Kind,
    /// Latencies, ms.
    pub samples: Vec<f64>,
}

/// One case (an image, a step): a column on the x axis.
#[derive(Debug, Clone)]
pub struct Group {
    /// The column label.
    pub name: String,
    /// Up to one series per system.
    pub series: Vec<Series>,
}

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Skiff => RGBColor(0x1f, 0x77, 0xb4),
        Kind::Containerd => RGBColor(0xd6, 0x27, 0x28),
    }
}

fn offset(kind: Kind) -> f64 {
    match kind {
        Kind::Skiff => -0.18,
        Kind::Containerd => 0.18,
    }
}

fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT)
            .map_err(|e| format!("reading {FONT} (apt-get install fonts-dejavu-core): {e}"))?;
        // ab_glyph keeps a &'static reference to the font for the process lifetime.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a usable TTF"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Draws `groups` into a PNG at `path`; `labels` rename systems in the legend.
pub fn strip_chart(
    path: &Path,
    title: &str,
    groups: &[Group],
    labels: &[(Kind, String)],
) -> anyhow::Result<()> {
    register_font()?;
    let all: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.series.iter().flat_map(|s| s.samples.iter().copied()))
        .filter(|v| *v > 0.0)
        .collect();
    let (Some(lo), Some(hi)) = (
        all.iter().copied().reduce(f64::min),
        all.iter().copied().reduce(f64::max),
    ) else {
        return Err(anyhow!("no samples to plot"));
    };
    // plotters labels a log axis from the first power of ten inside the range: start at one.
    let (lo, hi) = (10f64.powf((lo / 1.2).log10().floor()), hi * 1.3);
    let n = groups.len();
    let width = u32::try_from(300 + 170 * n).unwrap_or(1600).min(2400);

    let root = BitMapBackend::new(path, (width, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), (lo..hi).log_scale())
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Over a width of n, at most n + 1 labels means a step of 1: one per column.
        .x_labels(n + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                // i is a small non-negative integer here (a column index).
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let i = i as usize;
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        // Ask for 1..9 × 10^k grid lines and label only 1, 2 and 5 × 10^k.
        .y_labels(30)
        .y_label_formatter(&|v| {
            let mantissa = v / 10f64.powf(v.log10().floor());
            if ![1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6) {
                String::new()
            } else if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        })
        .y_desc("latency (ms, log scale)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;

    // A chart of one system's samples (a scenario comparing configurations of
    // one daemon) has no empty legend entry and its dots centred on the column.
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| {
            groups
                .iter()
                .any(|g| g.series.iter().any(|s| s.system == *k))
        })
        .collect();
    for &kind in &kinds {
        let c = color(kind);
        let dx = if kinds.len() == 1 { 0.0 } else { offset(kind) };
        let mut dots = Vec::new();
        let mut bars = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            for s in g.series.iter().filter(|s| s.system == kind) {
                let x = i as f64 + dx;
                dots.extend(
                    s.samples
                        .iter()
                        .map(|&y| Circle::new((x, y), 4, c.mix(0.6).filled())),
                );
                if let Some(sum) = Summary::of(&s.samples) {
                    bars.push(PathElement::new(
                        vec![(x - 0.12, sum.p50), (x + 0.12, sum.p50)],
                        c.stroke_width(3),
                    ));
                }
            }
        }
        chart
            .draw_series(dots)
            .map_err(|e| anyhow!("{e:?}"))?
            .label(
                labels
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or(kind.label(), |(_, l)| l.as_str()),
            )
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
        chart.draw_series(bars).map_err(|e| anyhow!("{e:?}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present()
        .map_err(|e| anyhow!("{e:?}"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One line of a [`line_chart`]: a system's figure against an x value.
#[derive(Debug, Clone)]
pub struct Line {
    /// Whose figure (the colour).
    pub system: Kind,
    /// The legend text.
    pub label: String,
    /// Drawn thick with big dots when set, thin with small dots otherwise.
    pub bold: bool,
    /// (x, y) points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// Draws `lines` (linear axes from zero) into a PNG at `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
) -> anyhow::Result<()> {
    register_font()?;
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let (Some(x_max), Some(y_max)) = (xs.reduce(f64::max), ys.reduce(f64::max)) else {
        return Err(anyhow!("no points to plot"));
    };
    let (x_max, y_max) = (x_max.max(1.0), y_max.max(1.0) * 1.1);

    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max)
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        // Pod counts are whole: leave fractional ticks unlabelled.
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    for line in lines {
        let c = color(line.system);
        let width = if line.bold { 3 } else { 1 };
        let bold = line.bold;
        chart
            .draw_series(LineSeries::new(line.points.clone(), c.stroke_width(width)))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(line.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(width))
            });
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, if bold { 5 } else { 3 }, c.filled())),
            )
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present()
        .map_err(|e| anyhow!("{e:?}"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
