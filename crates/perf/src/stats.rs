//! Percentiles over a handful of samples.
//!
//! Percentiles use the nearest-rank method: p is the smallest sample with at
//! least p% of the samples at or below it. With 5 samples p95 and p99 are the
//! maximum; the report prints n next to them so nobody reads more into them.

use std::time::Duration;

/// Order statistics of one series, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median (nearest rank).
    pub p50: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Milliseconds in `d`.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Summary {
    /// Summarises `samples` (ms); `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Summary {
            n: s.len(),
            p50: nearest_rank(&s, 50.0),
            p90: nearest_rank(&s, 90.0),
            p95: nearest_rank(&s, 95.0),
            p99: nearest_rank(&s, 99.0),
            min: s[0],
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        })
    }
}

/// The nearest-rank percentile `p` of sorted, non-empty `sorted`.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    // rank = ceil(p/100 · n) lies in 1..=n for p in (0, 100] and n ≥ 1, so the
    // float → usize conversion neither truncates nor loses a sign; clamp anyway.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = (p / 100.0 * n as f64).ceil().max(1.0) as usize;
    sorted[rank.min(n) - 1]
}

/// `v` with `digits` decimals, or `—` when missing.
pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.digits$}"))
}

/// `a / b`, or `None` when `b` is zero or either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// MB/s (10^6 bytes per second) for `bytes` moved in `ms` milliseconds.
pub fn mb_per_s(bytes: u64, ms: f64) -> f64 {
    bytes as f64 / 1e6 / (ms / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_and_rates() {
        assert_eq!(fmt_opt(Some(1.234), 1), "1.2");
        assert_eq!(fmt_opt(None, 1), "—");
        assert!((mb_per_s(2_000_000, 1000.0) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::of(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            (s.n, s.min, s.p50, s.p95, s.p99, s.max),
            (5, 1.0, 3.0, 5.0, 5.0, 5.0)
        );
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.p50, s.p90, s.p95, s.p99), (50.0, 90.0, 95.0, 99.0));
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(Summary::of(&[7.0]).unwrap().p99, 7.0);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(2.0), Some(4.0)), Some(0.5));
        assert_eq!(ratio(Some(2.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
