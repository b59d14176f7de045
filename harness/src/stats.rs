//! Statistics over measured samples: pure functions, no I/O.

/// Percentile of sorted data by linear interpolation between closest ranks
/// (Hyndman-Fan type 7, what numpy and polars use by default). `q` in [0, 1].
pub fn percentile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

/// The per-cell latency figures stored in `cells.parquet`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencySummary {
    pub median_ms: f64,
    pub mean_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// `None` for an empty window.
    pub fn from_ns(latencies_ns: &[u64]) -> Option<Self> {
        let mut ms: Vec<f64> = latencies_ns.iter().map(|ns| *ns as f64 / 1e6).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        Some(Self {
            median_ms: percentile_sorted(&ms, 0.5)?,
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            p90_ms: percentile_sorted(&ms, 0.9)?,
            p99_ms: percentile_sorted(&ms, 0.99)?,
            min_ms: ms[0],
            max_ms: ms[ms.len() - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_linear() {
        let d = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile_sorted(&d, 0.5), Some(2.5));
        assert_eq!(percentile_sorted(&d, 0.9), Some(3.7));
        assert_eq!(percentile_sorted(&d, 0.0), Some(1.0));
        assert_eq!(percentile_sorted(&d, 1.0), Some(4.0));
        assert_eq!(percentile_sorted(&[], 0.5), None);
    }

    #[test]
    fn latency_summary_in_ms() {
        let s = LatencySummary::from_ns(&[3_000_000, 1_000_000, 2_000_000]).unwrap();
        assert_eq!(s.median_ms, 2.0);
        assert_eq!(s.mean_ms, 2.0);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.max_ms, 3.0);
        assert!(LatencySummary::from_ns(&[]).is_none());
    }
}
