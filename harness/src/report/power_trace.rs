//! The power trace a report shows for each board.
//!
//! With raw power kept (`measure.raw_power: true`) the runner writes each cell's in-window
//! samples to `power_raw/<board>_<kHz>_<variant>_r<repeat>.parquet` (merged into
//! `power.parquet` at the end of the run). The report plots one cell per board from them:
//! the top frequency, the dense variant (else the first variant run), the first repeat; a
//! few hundred thousand samples are reduced to [`TRACE_BINS`] time bins, each drawn as its
//! mean with a min/max envelope, so the SVG stays small while spikes remain visible.
//!
//! Without raw samples there is only one number per window, so the trace is every window's
//! mean power over the run's time line (the same figures `power.parquet` holds as per-window
//! aggregates, read here from the journal `cells.jsonl`, the results' source of truth), and
//! the report says so.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::results::{read_parquet, CellKey, CellRecord, POWER_PARQUET, POWER_RAW_DIR};

/// Time bins of a raw trace (about one per horizontal pixel of the plot).
pub const TRACE_BINS: usize = 600;

/// What a raw trace's values are: power when the rail voltage is known, else current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceQuantity {
    PowerW,
    /// The monitor did not know the rail voltage (an ampere meter without one configured).
    CurrentA,
}

impl TraceQuantity {
    pub fn axis_label(self) -> &'static str {
        match self {
            TraceQuantity::PowerW => "power (W)",
            TraceQuantity::CurrentA => "current (A)",
        }
    }
}

/// Samples of one time bin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceBin {
    /// Centre of the bin, seconds from the window start.
    pub t_s: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// One cell's raw samples, binned.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTrace {
    pub cell: CellKey,
    pub quantity: TraceQuantity,
    /// Samples before binning.
    pub samples: usize,
    /// Length of the agent's window, seconds (from the journal), for a marker.
    pub window_s: Option<f64>,
    pub bins: Vec<TraceBin>,
    /// Where the samples came from, relative to the run directory.
    pub source: String,
}

/// One timed window on the run's time line.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSegment {
    pub freq_khz: u64,
    pub variant: String,
    pub repeat: u32,
    /// Seconds from the board's first window start (host clock).
    pub start_s: f64,
    pub end_s: f64,
    pub mean_power_w: f64,
}

/// Every measured window of one board.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowTrace {
    pub board: String,
    pub segments: Vec<WindowSegment>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PowerTrace {
    Raw(RawTrace),
    Windows(WindowTrace),
}

impl PowerTrace {
    pub fn board(&self) -> &str {
        match self {
            PowerTrace::Raw(r) => &r.cell.board,
            PowerTrace::Windows(w) => &w.board,
        }
    }
}

/// The cell of `board` whose raw trace is shown (see the module docs), among cells with power.
pub fn trace_cell<'a>(cells: &'a [CellRecord], board: &str) -> Option<&'a CellRecord> {
    let board_cells: Vec<&CellRecord> =
        cells.iter().filter(|c| c.board == board && c.window_energy_j.is_some()).collect();
    let top = board_cells.iter().map(|c| c.freq_khz).max()?;
    let at_top: Vec<&CellRecord> = board_cells.into_iter().filter(|c| c.freq_khz == top).collect();
    let variant = at_top.iter().find(|c| c.variant_kind == "dense").or(at_top.first())?.variant.clone();
    at_top.into_iter().filter(|c| c.variant == variant).min_by_key(|c| c.repeat)
}

/// Reduces time-sorted `(t_ns, value)` samples to at most `bins` equal-width time bins
/// (empty bins are left out). Non-finite values are skipped.
pub fn bin_samples(samples: &[(i64, f64)], bins: usize) -> Vec<TraceBin> {
    let finite: Vec<(i64, f64)> = samples.iter().copied().filter(|s| s.1.is_finite()).collect();
    let (Some(first), Some(last)) = (finite.iter().map(|s| s.0).min(), finite.iter().map(|s| s.0).max()) else {
        return Vec::new();
    };
    let bins = bins.max(1);
    let span = i128::from(last) - i128::from(first);
    let mut acc: Vec<(f64, usize, f64, f64)> = vec![(0.0, 0, f64::INFINITY, f64::NEG_INFINITY); bins];
    for (t, v) in finite {
        let i = if span == 0 {
            0
        } else {
            ((i128::from(t) - i128::from(first)) * bins as i128 / span).min(bins as i128 - 1) as usize
        };
        let a = &mut acc[i];
        a.0 += v;
        a.1 += 1;
        a.2 = a.2.min(v);
        a.3 = a.3.max(v);
    }
    let width_ns = span as f64 / bins as f64;
    acc.into_iter()
        .enumerate()
        .filter(|(_, a)| a.1 > 0)
        .map(|(i, (sum, n, min, max))| TraceBin {
            t_s: (first as f64 + width_ns * (i as f64 + 0.5)) / 1e9,
            mean: sum / n as f64,
            min,
            max,
        })
        .collect()
}

/// The windows of `board` that have a mean power and host-clock times, on one time line.
pub fn window_trace(cells: &[CellRecord], board: &str) -> Option<WindowTrace> {
    let mut windows: Vec<(i64, i64, &CellRecord, f64)> = cells
        .iter()
        .filter(|c| c.board == board)
        .filter_map(|c| match (c.window_host_start_ns, c.window_host_end_ns, c.mean_power_w) {
            (Some(s), Some(e), Some(p)) if p.is_finite() && e >= s => Some((s, e, c, p)),
            _ => None,
        })
        .collect();
    windows.sort_by_key(|w| (w.0, w.1));
    let origin = windows.first()?.0;
    let segments = windows
        .into_iter()
        .map(|(s, e, c, p)| WindowSegment {
            freq_khz: c.freq_khz,
            variant: c.variant.clone(),
            repeat: c.repeat,
            start_s: (s - origin) as f64 / 1e9,
            end_s: (e - origin) as f64 / 1e9,
            mean_power_w: p,
        })
        .collect();
    Some(WindowTrace { board: board.to_string(), segments })
}

/// The part file the runner writes for `key` (see `results::write_power_part`).
pub fn raw_part_path(dir: &Path, key: &CellKey) -> PathBuf {
    dir.join(POWER_RAW_DIR).join(format!("{}_{}_{}_r{}.parquet", key.board, key.freq_khz, key.variant, key.repeat))
}

/// One cell's raw samples as read.
#[derive(Clone, Debug, PartialEq)]
pub struct RawSamples {
    /// `(t_ns from the window start, value)`, sorted by time.
    pub samples: Vec<(i64, f64)>,
    pub quantity: TraceQuantity,
    /// The file, relative to the run directory.
    pub source: String,
}

/// Raw samples of one cell from its part file or else from a merged `power.parquet` that
/// holds samples. `None` when the run kept no raw power.
pub fn read_raw_samples(dir: &Path, key: &CellKey) -> Result<Option<RawSamples>> {
    let part = raw_part_path(dir, key);
    let (df, filter, source) = if part.is_file() {
        let source = format!("{POWER_RAW_DIR}/{}", part.file_name().unwrap_or_default().to_string_lossy());
        (read_parquet(&part)?, false, source)
    } else {
        let merged = dir.join(POWER_PARQUET);
        if !merged.is_file() {
            return Ok(None);
        }
        let df = read_parquet(&merged)?;
        if df.column("t_ns").is_err() {
            // Per-window aggregates, not samples.
            return Ok(None);
        }
        (df, true, POWER_PARQUET.to_string())
    };
    let path = if filter { dir.join(POWER_PARQUET) } else { part };
    let col = |name: &str| df.column(name).with_context(|| format!("{}: no column {name}", path.display()));
    let t = col("t_ns")?.i64().with_context(|| format!("{}: t_ns is not i64", path.display()))?.clone();
    let current = col("current_a")?.f64().with_context(|| format!("{}: current_a is not f64", path.display()))?.clone();
    let voltage = col("voltage_v")?.f64().with_context(|| format!("{}: voltage_v is not f64", path.display()))?.clone();
    let keep: Vec<bool> = if filter {
        let board = col("board")?.str().with_context(|| format!("{}: board is not text", path.display()))?.clone();
        let freq = col("freq_khz")?.u64().with_context(|| format!("{}: freq_khz is not u64", path.display()))?.clone();
        let variant =
            col("variant")?.str().with_context(|| format!("{}: variant is not text", path.display()))?.clone();
        let repeat = col("repeat")?.u32().with_context(|| format!("{}: repeat is not u32", path.display()))?.clone();
        (0..df.height())
            .map(|i| {
                board.get(i) == Some(key.board.as_str())
                    && freq.get(i) == Some(key.freq_khz)
                    && variant.get(i) == Some(key.variant.as_str())
                    && repeat.get(i) == Some(key.repeat)
            })
            .collect()
    } else {
        vec![true; df.height()]
    };
    let rows: Vec<(i64, f64, f64)> = (0..df.height())
        .filter(|i| keep[*i])
        .filter_map(|i| Some((t.get(i)?, current.get(i)?, voltage.get(i).unwrap_or(f64::NAN))))
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let quantity =
        if rows.iter().any(|r| (r.1 * r.2).is_finite()) { TraceQuantity::PowerW } else { TraceQuantity::CurrentA };
    let mut samples: Vec<(i64, f64)> =
        rows.into_iter().map(|(t, i, v)| (t, if quantity == TraceQuantity::PowerW { i * v } else { i })).collect();
    samples.sort_by_key(|s| s.0);
    Ok(Some(RawSamples { samples, quantity, source }))
}

/// One trace per board (boards in name order): raw when kept, else per-window means.
/// Boards without any power data get none.
pub fn load_power_traces(dir: &Path, cells: &[CellRecord]) -> Result<Vec<PowerTrace>> {
    let mut boards: Vec<&str> = cells.iter().map(|c| c.board.as_str()).collect();
    boards.sort_unstable();
    boards.dedup();
    let mut traces = Vec::new();
    for board in boards {
        if let Some(cell) = trace_cell(cells, board) {
            let key = cell.key();
            if let Some(RawSamples { samples, quantity, source }) = read_raw_samples(dir, &key)? {
                let window_s = match (cell.window_host_start_ns, cell.window_host_end_ns) {
                    (Some(s), Some(e)) if e >= s => Some((e - s) as f64 / 1e9),
                    _ => Some(cell.window_ns as f64 / 1e9),
                };
                traces.push(PowerTrace::Raw(RawTrace {
                    samples: samples.len(),
                    bins: bin_samples(&samples, TRACE_BINS),
                    cell: key,
                    quantity,
                    window_s,
                    source,
                }));
                continue;
            }
        }
        if let Some(w) = window_trace(cells, board) {
            traces.push(PowerTrace::Windows(w));
        }
    }
    Ok(traces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_keep_mean_min_and_max_per_time_bin() {
        // 0..10 ns in two bins: [0, 5) and [5, 10].
        let samples: Vec<(i64, f64)> = (0..=10).map(|t| (t, t as f64)).collect();
        let bins = bin_samples(&samples, 2);
        assert_eq!(bins.len(), 2);
        assert_eq!((bins[0].min, bins[0].max, bins[0].mean), (0.0, 4.0, 2.0));
        assert_eq!((bins[1].min, bins[1].max, bins[1].mean), (5.0, 10.0, 7.5));
        assert!((bins[0].t_s - 2.5e-9).abs() < 1e-18);
    }

    #[test]
    fn binning_skips_non_finite_values_and_empty_bins() {
        let samples = vec![(0, 1.0), (1, f64::NAN), (100, 3.0)];
        let bins = bin_samples(&samples, 10);
        assert_eq!(bins.len(), 2, "{bins:?}");
        assert_eq!(bins[0].mean, 1.0);
        assert_eq!(bins[1].mean, 3.0);
        assert!(bin_samples(&[(5, f64::NAN)], 10).is_empty());
        assert_eq!(bin_samples(&[(5, 2.0), (5, 4.0)], 10), vec![TraceBin { t_s: 5e-9, mean: 3.0, min: 2.0, max: 4.0 }]);
    }

    fn cell(freq_khz: u64, variant: &str, kind: &str, repeat: u32, start_ns: i64, power: f64) -> CellRecord {
        let mut c = crate::results::tests::sample_cell("b", freq_khz, variant, repeat);
        c.variant_kind = kind.into();
        c.window_host_start_ns = Some(start_ns);
        c.window_host_end_ns = Some(start_ns + 2_000_000_000);
        c.mean_power_w = Some(power);
        c.window_energy_j = Some(power * 2.0);
        c
    }

    #[test]
    fn the_trace_cell_is_dense_at_the_top_frequency_first_repeat() {
        let cells = vec![
            cell(1_500_000, "bp", "block", 0, 0, 2.0),
            cell(1_500_000, "dense", "dense", 1, 10, 2.5),
            cell(1_500_000, "dense", "dense", 0, 20, 2.4),
            cell(600_000, "dense", "dense", 0, 30, 2.1),
        ];
        let c = trace_cell(&cells, "b").unwrap();
        assert_eq!((c.freq_khz, c.variant.as_str(), c.repeat), (1_500_000, "dense", 0));
        assert!(trace_cell(&cells, "other").is_none());
        let no_dense = vec![cell(1_000_000, "bp", "block", 0, 0, 2.0), cell(1_000_000, "pp", "pattern", 0, 5, 2.0)];
        assert_eq!(trace_cell(&no_dense, "b").unwrap().variant, "bp");
    }

    #[test]
    fn window_trace_puts_windows_on_one_time_line_in_time_order() {
        let cells = vec![
            cell(600_000, "dense", "dense", 0, 7_000_000_000, 2.1),
            cell(1_500_000, "dense", "dense", 0, 3_000_000_000, 2.5),
        ];
        let w = window_trace(&cells, "b").unwrap();
        assert_eq!(w.segments.len(), 2);
        assert_eq!((w.segments[0].start_s, w.segments[0].end_s, w.segments[0].freq_khz), (0.0, 2.0, 1_500_000));
        assert_eq!((w.segments[1].start_s, w.segments[1].mean_power_w), (4.0, 2.1));
        assert!(window_trace(&cells, "nope").is_none());
    }
}
