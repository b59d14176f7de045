//! The results directory: `results/<scenario>/<UTC stamp>/`.
//!
//! Source of truth is an append-only journal, `cells.jsonl`: one JSON line per
//! finished cell (including its per-iteration latencies), fsync'd before the
//! runner moves on. After every cell the tabular outputs that pandas/polars
//! open (`cells.parquet`, `latency.parquet`) are regenerated from the journal
//! and replaced atomically (write to a temporary name, then rename), so a run
//! killed at any point keeps every finished cell, and `--resume` reads the
//! journal to skip them.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::plan::CellKey;
use crate::scenario::Deadline;

/// One finished cell: what `cells.parquet` holds per row (latencies go to `latency.parquet`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    pub board: String,
    pub freq_khz: u64,
    pub variant: String,
    pub repeat: u32,
    /// Index of the DVFS level in the scenario (0 = first listed).
    pub level: u32,
    pub variant_kind: String,
    /// Achieved weight sparsity of the variant over the linear layers (0 for dense).
    pub sparsity: f64,
    pub simulated: bool,
    /// UTC start of the cell, RFC 3339.
    pub started_at: String,
    /// Attempts used (1 = first try succeeded).
    pub attempts: u32,
    pub iterations: u64,
    /// Board-clock duration of the timed window.
    pub window_ns: u64,
    pub latency_median_ms: f64,
    pub latency_mean_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_min_ms: f64,
    pub latency_max_ms: f64,
    pub deadline_ms: Option<f64>,
    pub deadline_met: Option<bool>,
    /// `scaling_cur_freq` read back after settling, in kHz.
    pub cur_freq_khz: Option<u64>,
    pub freq_verified: bool,
    /// Time spent at another frequency during the cell (from `stats/time_in_state`).
    pub off_target_ms: Option<f64>,
    pub throttled: bool,
    pub temp_before_c: Option<f64>,
    pub temp_after_c: Option<f64>,
    /// The cool-down wait before the cell gave up at `measure.cooldown_timeout`: measured warm.
    #[serde(default)]
    pub cooldown_timed_out: bool,
    /// The agent's checksum of all outputs in the window (hex).
    pub checksum: String,
    // Power (absent when the board has no monitor).
    pub mean_power_w: Option<f64>,
    pub idle_power_w: Option<f64>,
    pub energy_per_inference_mj: Option<f64>,
    pub net_energy_per_inference_mj: Option<f64>,
    /// Samples inside the window.
    pub power_samples: Option<u64>,
    /// Sample slots lost inside the window (each counted once).
    pub lost_samples: Option<u64>,
    pub clock_offset_uncertainty_us: Option<f64>,
    /// More samples lost than `measure.max_lost_fraction` allows, after every attempt.
    pub power_flagged: Option<bool>,
    /// Samples per second of window.
    #[serde(default)]
    pub power_rate_hz: Option<f64>,
    /// Fewer samples in the window than an energy figure to the scenario's accuracy needs
    /// ([`crate::energy::MIN_WINDOW_SAMPLES`]).
    #[serde(default)]
    pub power_few_samples: Option<bool>,
    /// Why a cell on a board with a monitor has no energy (the monitor was gone, the window could not
    /// be covered); `None` when it has one or the board has no monitor.
    #[serde(default)]
    pub energy_missing_reason: Option<String>,
    /// The fit of the monitor's own clock to the host clock the window's samples were placed with:
    /// its rate error against nominal (ppm), the segments it used and how tightly arrivals hug it.
    #[serde(default)]
    pub monitor_clock_ppm: Option<f64>,
    #[serde(default)]
    pub monitor_clock_points: Option<u64>,
    #[serde(default)]
    pub monitor_clock_spread_us: Option<f64>,
    /// For monitors that flush whole (INA sketches): how far off the fit can place a reading given
    /// the arrivals and the flush bounds, microseconds (see `ClockLine::bound_ns`).
    #[serde(default)]
    pub monitor_clock_bound_us: Option<f64>,
    /// The variant's final hidden states against the dense model's over the seeded inputs, on the
    /// board: cosine similarity and relative L2 error, and what they measure
    /// (`perturbation (synthetic weights)` or `checkpoint`).
    #[serde(default)]
    pub fidelity_cosine: Option<f64>,
    #[serde(default)]
    pub fidelity_rel_l2: Option<f64>,
    #[serde(default)]
    pub fidelity_kind: Option<String>,
    /// The window stopped at its wall-time cap before its minimum iterations or duration (the
    /// agent's note says how far it got).
    #[serde(default)]
    pub time_capped: bool,
    #[serde(default)]
    pub agent_note: Option<String>,
    /// On a simulated board: the mean factor the agent stretched the window's inferences by
    /// (`f_max / f` of the simulated clock); `None` on real hardware.
    #[serde(default)]
    pub sim_stretch_factor: Option<f64>,
    /// Cores the agent kept busy over the window on average: its threads' CPU time over the
    /// window's length (1.0 for one thread that never waits; `None`: not measured).
    #[serde(default)]
    pub cpu_busy_cores: Option<f64>,
    /// On a simulated board: the power model's mean busy cores over the window (`busy_cores` in
    /// `P = static_w + dyn_coeff * V(f)^2 * f * busy_cores`, run.json), which counts the agent's
    /// threads running or waiting to run; `None` on real hardware.
    #[serde(default)]
    pub sim_busy_cores: Option<f64>,
    /// For a board from a labgrid lab: the place it ran on and the host of the exporter serving it.
    #[serde(default)]
    pub place: Option<String>,
    #[serde(default)]
    pub exporter_host: Option<String>,
    /// The agent's window on the host's monotonic clock (after clock alignment), ns.
    #[serde(default)]
    pub window_host_start_ns: Option<i64>,
    #[serde(default)]
    pub window_host_end_ns: Option<i64>,
    /// Energy of the whole window, joules.
    #[serde(default)]
    pub window_energy_j: Option<f64>,
    /// Per-iteration latencies in ns (journal only; exploded into latency.parquet).
    #[serde(default)]
    pub latencies_ns: Vec<u64>,
}

impl CellRecord {
    pub fn key(&self) -> CellKey {
        CellKey {
            board: self.board.clone(),
            freq_khz: self.freq_khz,
            variant: self.variant.clone(),
            repeat: self.repeat,
        }
    }
}

/// Builds a polars frame from rows, one `column name => |row| value` per column.
macro_rules! frame {
    ($rows:expr; $($name:literal => |$r:ident| $e:expr),* $(,)?) => {
        DataFrame::new(vec![$(
            Column::new($name.into(), $rows.iter().map(|$r| $e).collect::<Vec<_>>())
        ),*])
    };
}

/// `cells.parquet`: one row per cell. `started_at` is a UTC timestamp (ms).
pub fn cells_frame(rows: &[CellRecord]) -> PolarsResult<DataFrame> {
    let mut df = cells_frame_text(rows)?;
    let ms: Vec<Option<i64>> = rows
        .iter()
        .map(|r| chrono::DateTime::parse_from_rfc3339(&r.started_at).ok().map(|t| t.timestamp_millis()))
        .collect();
    let started = Column::new("started_at".into(), ms)
        .cast(&DataType::Datetime(TimeUnit::Milliseconds, Some(polars::prelude::TimeZone::UTC)))?;
    df.replace("started_at", started.take_materialized_series())?;
    Ok(df)
}

fn cells_frame_text(rows: &[CellRecord]) -> PolarsResult<DataFrame> {
    frame!(rows;
        "board" => |r| r.board.clone(),
        "freq_khz" => |r| r.freq_khz,
        "level" => |r| r.level,
        "variant" => |r| r.variant.clone(),
        "variant_kind" => |r| r.variant_kind.clone(),
        "sparsity" => |r| r.sparsity,
        "repeat" => |r| r.repeat,
        "simulated" => |r| r.simulated,
        "started_at" => |r| r.started_at.clone(),
        "attempts" => |r| r.attempts,
        "iterations" => |r| r.iterations,
        "window_ns" => |r| r.window_ns,
        "latency_median_ms" => |r| r.latency_median_ms,
        "latency_mean_ms" => |r| r.latency_mean_ms,
        "latency_p90_ms" => |r| r.latency_p90_ms,
        "latency_p99_ms" => |r| r.latency_p99_ms,
        "latency_min_ms" => |r| r.latency_min_ms,
        "latency_max_ms" => |r| r.latency_max_ms,
        "deadline_ms" => |r| r.deadline_ms,
        "deadline_met" => |r| r.deadline_met,
        "cur_freq_khz" => |r| r.cur_freq_khz,
        "freq_verified" => |r| r.freq_verified,
        "off_target_ms" => |r| r.off_target_ms,
        "throttled" => |r| r.throttled,
        "temp_before_c" => |r| r.temp_before_c,
        "temp_after_c" => |r| r.temp_after_c,
        "cooldown_timed_out" => |r| r.cooldown_timed_out,
        "checksum" => |r| r.checksum.clone(),
        "mean_power_w" => |r| r.mean_power_w,
        "idle_power_w" => |r| r.idle_power_w,
        "energy_per_inference_mj" => |r| r.energy_per_inference_mj,
        "net_energy_per_inference_mj" => |r| r.net_energy_per_inference_mj,
        "power_samples" => |r| r.power_samples,
        "lost_samples" => |r| r.lost_samples,
        "clock_offset_uncertainty_us" => |r| r.clock_offset_uncertainty_us,
        "power_flagged" => |r| r.power_flagged,
        "power_rate_hz" => |r| r.power_rate_hz,
        "power_few_samples" => |r| r.power_few_samples,
        "energy_missing_reason" => |r| r.energy_missing_reason.clone(),
        "monitor_clock_ppm" => |r| r.monitor_clock_ppm,
        "monitor_clock_points" => |r| r.monitor_clock_points,
        "monitor_clock_spread_us" => |r| r.monitor_clock_spread_us,
        "monitor_clock_bound_us" => |r| r.monitor_clock_bound_us,
        "fidelity_cosine" => |r| r.fidelity_cosine,
        "fidelity_rel_l2" => |r| r.fidelity_rel_l2,
        "fidelity_kind" => |r| r.fidelity_kind.clone(),
        "time_capped" => |r| r.time_capped,
        "agent_note" => |r| r.agent_note.clone(),
        "sim_stretch_factor" => |r| r.sim_stretch_factor,
        "cpu_busy_cores" => |r| r.cpu_busy_cores,
        "sim_busy_cores" => |r| r.sim_busy_cores,
        "place" => |r| r.place.clone(),
        "exporter_host" => |r| r.exporter_host.clone(),
    )
}

/// One row of `latency.parquet`.
struct LatencyRow<'a> {
    cell: &'a CellRecord,
    iteration: u32,
    latency_ns: u64,
}

/// `latency.parquet`: one row per timed iteration of every cell.
pub fn latency_frame(rows: &[CellRecord]) -> PolarsResult<DataFrame> {
    let flat: Vec<LatencyRow> = rows
        .iter()
        .flat_map(|cell| {
            cell.latencies_ns.iter().enumerate().map(move |(i, ns)| LatencyRow {
                cell,
                iteration: i as u32,
                latency_ns: *ns,
            })
        })
        .collect();
    frame!(flat;
        "board" => |r| r.cell.board.clone(),
        "freq_khz" => |r| r.cell.freq_khz,
        "variant" => |r| r.cell.variant.clone(),
        "repeat" => |r| r.cell.repeat,
        "simulated" => |r| r.cell.simulated,
        "place" => |r| r.cell.place.clone(),
        "exporter_host" => |r| r.cell.exporter_host.clone(),
        "iteration" => |r| r.iteration,
        "latency_ns" => |r| r.latency_ns,
    )
}

/// Writes `bytes` to `path` atomically: a temporary sibling, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_sibling(path);
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Writes a frame as parquet, atomically.
pub fn write_parquet_atomic(path: &Path, df: &mut DataFrame) -> Result<()> {
    let tmp = tmp_sibling(path);
    {
        let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        ParquetWriter::new(f).finish(df).with_context(|| format!("writing parquet {}", tmp.display()))?;
    }
    File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Reads a parquet file into a frame.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    ParquetReader::new(f).finish().with_context(|| format!("reading parquet {}", path.display()))
}

fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// `power.parquet` without raw samples: one row per measured window.
pub fn power_windows_frame(rows: &[CellRecord]) -> PolarsResult<DataFrame> {
    let rows: Vec<&CellRecord> = rows.iter().filter(|r| r.window_energy_j.is_some()).collect();
    frame!(rows;
        "board" => |r| r.board.clone(),
        "freq_khz" => |r| r.freq_khz,
        "variant" => |r| r.variant.clone(),
        "repeat" => |r| r.repeat,
        "simulated" => |r| r.simulated,
        "place" => |r| r.place.clone(),
        "exporter_host" => |r| r.exporter_host.clone(),
        "window_host_start_ns" => |r| r.window_host_start_ns,
        "window_host_end_ns" => |r| r.window_host_end_ns,
        "samples" => |r| r.power_samples,
        "lost_samples" => |r| r.lost_samples,
        "rate_hz" => |r| r.power_rate_hz,
        "few_samples" => |r| r.power_few_samples,
        "monitor_clock_ppm" => |r| r.monitor_clock_ppm,
        "monitor_clock_spread_us" => |r| r.monitor_clock_spread_us,
        "monitor_clock_bound_us" => |r| r.monitor_clock_bound_us,
        "energy_j" => |r| r.window_energy_j,
        "mean_power_w" => |r| r.mean_power_w,
        "idle_power_w" => |r| r.idle_power_w,
        "inferences" => |r| r.iterations,
    )
}

pub const POWER_PARQUET: &str = "power.parquet";
/// With raw power on, per-window aggregates move here and `power.parquet` holds the samples.
pub const POWER_WINDOWS_PARQUET: &str = "power_windows.parquet";
/// Raw power samples, one part per cell, merged into `power.parquet` at the end of the run.
pub const POWER_RAW_DIR: &str = "power_raw";

/// Rows per batch when raw power is written to parquet: 1 s of a PPK2 (some 6 MB as a frame), so a
/// part of any length is written, and `power.parquet` merged, in memory of one batch.
pub const RAW_POWER_BATCH_ROWS: usize = 100_000;

/// What every raw power row of a board repeats: whether the board is simulated and, for a board
/// reserved from labgrid, its place and exporter host (as in `cells.parquet`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoardLabels {
    pub simulated: bool,
    pub place: Option<String>,
    pub exporter_host: Option<String>,
}

impl BoardLabels {
    /// The labels of a board, with its labgrid place and exporter host when it was reserved from one.
    pub fn new(simulated: bool, place: Option<&(String, String)>) -> Self {
        Self { simulated, place: place.map(|(p, _)| p.clone()), exporter_host: place.map(|(_, h)| h.clone()) }
    }

    /// A board not reserved from labgrid.
    pub fn local(simulated: bool) -> Self {
        Self::new(simulated, None)
    }
}

/// One batch of raw samples as a frame (times relative to the window start on the host clock).
fn raw_power_frame(
    key: &CellKey,
    samples: &[crate::power::Sample],
    window_start_ns: i64,
    labels: &BoardLabels,
) -> PolarsResult<DataFrame> {
    frame!(samples;
        "board" => |_s| key.board.clone(),
        "freq_khz" => |_s| key.freq_khz,
        "variant" => |_s| key.variant.clone(),
        "repeat" => |_s| key.repeat,
        "simulated" => |_s| labels.simulated,
        "place" => |_s| labels.place.clone(),
        "exporter_host" => |_s| labels.exporter_host.clone(),
        "t_ns" => |s| s.t_ns as i64 - window_start_ns,
        "t_host_ns" => |s| s.t_ns as i64,
        "current_a" => |s| s.current_a,
        "voltage_v" => |s| s.voltage_v,
        "logic" => |s| s.logic.map(u32::from),
    )
}

fn power_part_path(dir: &Path, key: &CellKey) -> PathBuf {
    dir.join(POWER_RAW_DIR).join(format!("{}_{}_{}_r{}.parquet", key.board, key.freq_khz, key.variant, key.repeat))
}

/// A parquet file written batch by batch under a temporary name and renamed into place when
/// complete (fsync'd first), so a reader sees the whole file or none of it.
struct BatchedParquet {
    path: PathBuf,
    tmp: PathBuf,
    writer: polars::io::parquet::write::BatchedWriter<File>,
    done: bool,
}

impl Drop for BatchedParquet {
    /// A file abandoned half-written (an error on the way) leaves no temporary behind.
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl BatchedParquet {
    fn create(path: &Path, schema: &Schema) -> Result<Self> {
        let tmp = tmp_sibling(path);
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let writer =
            ParquetWriter::new(file).batched(schema).with_context(|| format!("writing parquet {}", tmp.display()))?;
        Ok(Self { path: path.to_path_buf(), tmp, writer, done: false })
    }

    fn write(&mut self, df: &mut DataFrame) -> Result<()> {
        // The writer wants every column in the same chunk layout.
        df.align_chunks_par();
        self.writer.write_batch(df).with_context(|| format!("writing parquet {}", self.tmp.display()))
    }

    fn finish(mut self) -> Result<()> {
        self.writer.finish().with_context(|| format!("writing parquet {}", self.tmp.display()))?;
        File::open(&self.tmp).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", self.tmp.display()))?;
        fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.path.display()))?;
        self.done = true;
        Ok(())
    }
}

/// Writes one cell's raw samples (times relative to the window start on the host clock) as a part file.
///
/// `samples` must be the window's (at least one: a cell with energy has some). A capture too long for
/// memory has none here; it is written with [`write_capture_power_part`].
pub fn write_power_part(
    dir: &Path,
    key: &CellKey,
    samples: &[crate::power::Sample],
    window_start_ns: i64,
    labels: &BoardLabels,
) -> Result<()> {
    anyhow::ensure!(
        !samples.is_empty(),
        "no raw power samples for {key}: a capture longer than the samples a capture holds in memory \
         (CAPTURE_MEMORY_SAMPLES) is on disk and must be written with write_capture_power_part"
    );
    write_power_batches(
        dir,
        key,
        std::iter::once(Ok(std::borrow::Cow::Borrowed(samples))),
        None,
        window_start_ns,
        labels,
    )
    .map(|_| ())
}

/// Writes the samples of `capture` inside `window` (half-open, as counted for energy) as the cell's
/// raw power part, streaming: a capture spilled to disk is read back chunk by chunk and written
/// [`RAW_POWER_BATCH_ROWS`] at a time. Returns the rows written.
pub fn write_capture_power_part(
    dir: &Path,
    key: &CellKey,
    capture: &crate::samples::Capture,
    window: crate::energy::HostWindow,
    labels: &BoardLabels,
) -> Result<u64> {
    write_power_batches(dir, key, capture.chunks(), Some(window), window.start_ns, labels)
}

fn write_power_batches<'a>(
    dir: &Path,
    key: &CellKey,
    chunks: impl Iterator<Item = std::io::Result<std::borrow::Cow<'a, [crate::power::Sample]>>>,
    window: Option<crate::energy::HostWindow>,
    window_start_ns: i64,
    labels: &BoardLabels,
) -> Result<u64> {
    let parts = dir.join(POWER_RAW_DIR);
    fs::create_dir_all(&parts).with_context(|| format!("creating {}", parts.display()))?;
    let path = power_part_path(dir, key);
    let schema =
        raw_power_frame(key, &[], window_start_ns, labels).context("building raw power table")?.schema().clone();
    let mut out = BatchedParquet::create(&path, &schema)?;
    let mut rows = 0u64;
    for chunk in chunks {
        let chunk = chunk.with_context(|| format!("reading back the spilled samples of {key}"))?;
        let range = match window {
            Some(w) => crate::energy::samples_in_window(&chunk, w),
            None => 0..chunk.len(),
        };
        for batch in chunk[range].chunks(RAW_POWER_BATCH_ROWS) {
            let mut df = raw_power_frame(key, batch, window_start_ns, labels).context("building raw power table")?;
            out.write(&mut df)?;
            rows += batch.len() as u64;
        }
    }
    out.finish()?;
    Ok(rows)
}

/// Concatenates the raw power parts into `power.parquet` (no-op without parts), streaming: each part
/// is read [`RAW_POWER_BATCH_ROWS`] rows at a time and appended, so memory is one batch however long
/// the run. The parts stay (the report's power traces read them).
pub fn merge_power_parts(dir: &Path) -> Result<()> {
    let parts = dir.join(POWER_RAW_DIR);
    let Ok(entries) = fs::read_dir(&parts) else { return Ok(()) };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && !p.file_name().unwrap_or_default().to_string_lossy().starts_with('.')
        })
        .collect();
    files.sort();
    let mut merged: Option<(BatchedParquet, Schema)> = None;
    for f in &files {
        let rows = File::open(f)
            .map_err(PolarsError::from)
            .and_then(|file| ParquetReader::new(file).num_rows())
            .with_context(|| format!("reading parquet {}", f.display()))?;
        let mut offset = 0;
        // At least one read per part, so an empty part still contributes its schema.
        loop {
            let take = RAW_POWER_BATCH_ROWS.min(rows - offset);
            let mut batch = File::open(f)
                .map_err(PolarsError::from)
                .and_then(|file| ParquetReader::new(file).with_slice(Some((offset, take))).finish())
                .with_context(|| format!("reading parquet {}", f.display()))?;
            let (out, schema) = match &mut merged {
                Some(m) => m,
                None => {
                    let schema = batch.schema().as_ref().clone();
                    merged.insert((BatchedParquet::create(&dir.join(POWER_PARQUET), &schema)?, schema))
                }
            };
            anyhow::ensure!(
                batch.schema().as_ref() == schema,
                "appending {}: its columns {:?} differ from the first part's {:?}",
                f.display(),
                batch.schema(),
                schema
            );
            out.write(&mut batch)?;
            offset += take;
            if offset >= rows {
                break;
            }
        }
    }
    if let Some((out, _)) = merged {
        out.finish()?;
    }
    Ok(())
}
pub const JOURNAL: &str = "cells.jsonl";
/// Reconfiguration costs, one line per board and pattern set (the newest line wins on resume).
pub const SWITCH_JOURNAL: &str = "switch.jsonl";
pub const SWITCH_PARQUET: &str = "switch.parquet";

/// One row of `switch.parquet`: what putting a pattern set into effect costs on a board.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchRecord {
    pub board: String,
    pub variant: String,
    /// The level it was measured at (the board's lowest: where a battery-driven switch lands).
    pub freq_khz: u64,
    pub simulated: bool,
    /// Switches measured of each kind; the figures are their medians.
    pub rounds: u32,
    /// The live model changes its active, prepacked set.
    pub hot_switch_us: f64,
    /// The set is put into effect from the resident BP weights and its pattern definitions
    /// (assignment and packing), as on a device holding one packed set at a time.
    pub cold_switch_ms: f64,
    /// First inference after the switch minus the median of the next ones, ms.
    pub hot_first_inference_penalty_ms: f64,
    pub cold_first_inference_penalty_ms: f64,
    /// The cold figure: the penalty a device holding one set pays.
    pub first_inference_penalty_ms: f64,
    /// Bytes this set's packed layers and mask take.
    pub resident_bytes: u64,
    /// What the model holds with every set prepacked, and with one set at a time.
    pub resident_bytes_all_prepacked: Option<u64>,
    pub resident_bytes_one_set: Option<u64>,
    /// RT3's claim: a switch within 45 ms (the cold switch plus its first-inference penalty).
    pub within_45_ms: bool,
    /// For a board from a labgrid lab: the place and the exporter host serving it.
    #[serde(default)]
    pub place: Option<String>,
    #[serde(default)]
    pub exporter_host: Option<String>,
}

/// `switch.parquet`.
pub fn switch_frame(rows: &[SwitchRecord]) -> PolarsResult<DataFrame> {
    frame!(rows;
        "board" => |r| r.board.clone(),
        "variant" => |r| r.variant.clone(),
        "freq_khz" => |r| r.freq_khz,
        "simulated" => |r| r.simulated,
        "rounds" => |r| r.rounds,
        "hot_switch_us" => |r| r.hot_switch_us,
        "cold_switch_ms" => |r| r.cold_switch_ms,
        "hot_first_inference_penalty_ms" => |r| r.hot_first_inference_penalty_ms,
        "cold_first_inference_penalty_ms" => |r| r.cold_first_inference_penalty_ms,
        "first_inference_penalty_ms" => |r| r.first_inference_penalty_ms,
        "resident_bytes" => |r| r.resident_bytes,
        "resident_bytes_all_prepacked" => |r| r.resident_bytes_all_prepacked,
        "resident_bytes_one_set" => |r| r.resident_bytes_one_set,
        "within_45_ms" => |r| r.within_45_ms,
        "place" => |r| r.place.clone(),
        "exporter_host" => |r| r.exporter_host.clone(),
    )
}
pub const CELLS_PARQUET: &str = "cells.parquet";
pub const LATENCY_PARQUET: &str = "latency.parquet";

/// The journal of finished cells of one run, and the tables regenerated from it.
#[derive(Debug)]
pub struct ResultsStore {
    dir: PathBuf,
    cells: Vec<CellRecord>,
    switches: Vec<SwitchRecord>,
    /// A deadline relative to a measured variant, resolved in the tables as cells arrive.
    deadline: Option<Deadline>,
}

/// Fills `deadline_ms` / `deadline_met` of cells journaled without them because the scenario's
/// deadline is relative (`1.3x dense`): per board, the factor times the reference variant's p99
/// over every timed inference of every repeat at the highest frequency it was measured at (the
/// statistic the RT3 schedule judges, [`crate::analysis::ScheduleRule::for_board`]). Cells of a
/// board whose reference has no latencies yet keep them empty.
pub fn fill_relative_deadlines(cells: &mut [CellRecord], deadline: &Deadline) {
    let Deadline::Relative { reference, .. } = deadline else { return };
    let boards: HashSet<String> = cells.iter().map(|c| c.board.clone()).collect();
    for board in boards {
        let of_reference = || cells.iter().filter(|c| c.board == board && &c.variant == reference);
        let Some(top) = of_reference().map(|c| c.freq_khz).max() else { continue };
        let pooled: Vec<u64> =
            of_reference().filter(|c| c.freq_khz == top).flat_map(|c| c.latencies_ns.iter().copied()).collect();
        let p99 = crate::stats::Sample::from_ns(&pooled).ok().map(|s| crate::stats::Statistic::P99.of(&s));
        let Some(ms) = deadline.resolve_ms(p99) else { continue };
        for c in cells.iter_mut().filter(|c| c.board == board) {
            c.deadline_ms = Some(ms);
            c.deadline_met = Some(c.latency_p99_ms <= ms);
        }
    }
}

impl ResultsStore {
    /// Opens (or creates) the store in `dir`, loading any cells already journaled.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating results directory {}", dir.display()))?;
        for journal in [JOURNAL, SWITCH_JOURNAL] {
            repair_torn_tail(&dir.join(journal))?;
        }
        let cells = read_journal(dir)?;
        let mut switches: Vec<SwitchRecord> = Vec::new();
        for r in read_jsonl::<SwitchRecord>(&dir.join(SWITCH_JOURNAL))? {
            switches.retain(|s| !(s.board == r.board && s.variant == r.variant));
            switches.push(r);
        }
        Ok(Self { dir: dir.to_path_buf(), cells, switches, deadline: None })
    }

    /// The scenario's deadline, for resolving a relative one in the tables.
    pub fn set_deadline(&mut self, deadline: Option<Deadline>) {
        self.deadline = deadline;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cells(&self) -> &[CellRecord] {
        &self.cells
    }

    /// The switch measurements journaled so far (the latest per board and variant).
    pub fn switches(&self) -> &[SwitchRecord] {
        &self.switches
    }

    /// Keys of the cells already finished (what `--resume` skips).
    pub fn finished(&self) -> HashSet<CellKey> {
        self.cells.iter().map(CellRecord::key).collect()
    }

    /// Appends a finished cell: journal line (fsync'd) first, then the parquet tables.
    pub fn append(&mut self, cell: CellRecord) -> Result<()> {
        let path = self.dir.join(JOURNAL);
        let mut line = serde_json::to_string(&cell).context("serialising cell")?;
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(line.as_bytes()).with_context(|| format!("appending to {}", path.display()))?;
        f.sync_data().with_context(|| format!("syncing {}", path.display()))?;
        self.cells.push(cell);
        self.write_tables()
    }

    /// Whether a board's reconfiguration costs are recorded.
    pub fn has_switches(&self, board: &str) -> bool {
        self.switches.iter().any(|s| s.board == board)
    }

    /// Appends a board's reconfiguration costs (journal first), replacing earlier rows of the
    /// same board and set, and rewrites `switch.parquet`.
    pub fn append_switches(&mut self, rows: &[SwitchRecord]) -> Result<()> {
        let path = self.dir.join(SWITCH_JOURNAL);
        let mut text = String::new();
        for r in rows {
            text.push_str(&serde_json::to_string(r).context("serialising a switch record")?);
            text.push('\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("appending to {}", path.display()))?;
        f.sync_data().with_context(|| format!("syncing {}", path.display()))?;
        for r in rows {
            self.switches.retain(|s| !(s.board == r.board && s.variant == r.variant));
            self.switches.push(r.clone());
        }
        let mut df = switch_frame(&self.switches).context("building switch table")?;
        write_parquet_atomic(&self.dir.join(SWITCH_PARQUET), &mut df)
    }

    /// Regenerates `cells.parquet` and `latency.parquet` from the journal.
    pub fn write_tables(&self) -> Result<()> {
        let mut rows = self.cells.clone();
        if let Some(d) = &self.deadline {
            fill_relative_deadlines(&mut rows, d);
        }
        let mut cells = cells_frame(&rows).context("building cells table")?;
        write_parquet_atomic(&self.dir.join(CELLS_PARQUET), &mut cells)?;
        let mut lat = latency_frame(&self.cells).context("building latency table")?;
        write_parquet_atomic(&self.dir.join(LATENCY_PARQUET), &mut lat)?;
        let mut power = power_windows_frame(&self.cells).context("building power table")?;
        if power.height() > 0 {
            // With raw samples kept, power.parquet is theirs (merged at the end of the run).
            let name = if self.dir.join(POWER_RAW_DIR).is_dir() { POWER_WINDOWS_PARQUET } else { POWER_PARQUET };
            write_parquet_atomic(&self.dir.join(name), &mut power)?;
        }
        Ok(())
    }
}

/// Reads `cells.jsonl`. A torn last line (the process died mid-write) is ignored with a warning;
/// a corrupt line elsewhere is an error naming the line.
pub fn read_journal(dir: &Path) -> Result<Vec<CellRecord>> {
    read_jsonl(&dir.join(JOURNAL))
}

/// Longest journal line read back: a cell with the agent's most iterations (1,000,000 latencies of
/// up to 20 digits) fits many times over; a longer line is not one of ours.
pub const MAX_JOURNAL_LINE_BYTES: usize = 64 << 20;

/// Reads a whole file of at most `limit` bytes as UTF-8; a larger one is an error naming the limit
/// and the file (run.json, a scenario copy: small files this crate wrote).
pub fn read_capped(path: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    f.take(limit + 1).read_to_string(&mut text).with_context(|| format!("reading {}", path.display()))?;
    if text.len() as u64 > limit {
        anyhow::bail!("{} is larger than the {limit} bytes this reader allows: not a file hil wrote", path.display());
    }
    Ok(text)
}

/// Cuts a journal back to its last complete line when a crash left half a line at its end, so the
/// next append starts on a line of its own; the fragment is appended to `<journal>.torn` and said on
/// the terminal. Returns the bytes cut. Only the file's tail is read (at most one journal line).
pub fn repair_torn_tail(path: &Path) -> Result<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let len = f.metadata().with_context(|| format!("reading {}", path.display()))?.len();
    let tail_len = len.min(MAX_JOURNAL_LINE_BYTES as u64 + 1);
    let mut tail = vec![0u8; tail_len as usize];
    f.seek(SeekFrom::Start(len - tail_len))
        .and_then(|_| f.read_exact(&mut tail))
        .with_context(|| format!("reading the end of {}", path.display()))?;
    if tail.is_empty() || tail.ends_with(b"\n") {
        return Ok(0);
    }
    let keep_in_tail = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if tail_len == len => 0,
        None => anyhow::bail!(
            "{}: its last line is longer than {MAX_JOURNAL_LINE_BYTES} bytes: not a journal hil wrote",
            path.display()
        ),
    };
    let keep = len - tail_len + keep_in_tail as u64;
    let fragment = &tail[keep_in_tail..];
    let torn = path.with_extension(format!(
        "{}.torn",
        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let mut aside = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&torn)
        .with_context(|| format!("opening {}", torn.display()))?;
    aside
        .write_all(fragment)
        .and_then(|()| aside.write_all(b"\n"))
        .and_then(|()| aside.sync_data())
        .with_context(|| format!("keeping the torn line of {} in {}", path.display(), torn.display()))?;
    f.set_len(keep).and_then(|()| f.sync_data()).with_context(|| format!("truncating {}", path.display()))?;
    eprintln!(
        "warning: {} ended in half a line ({} bytes, from an interrupted write): cut off and kept in {}",
        path.display(),
        fragment.len(),
        torn.display()
    );
    Ok(fragment.len())
}

/// Reads a JSON-lines journal of records (missing file: none). A torn last line is ignored with a
/// warning; a corrupt line elsewhere, or one longer than [`MAX_JOURNAL_LINE_BYTES`], is an error
/// naming the line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    use std::io::Read;
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut reader = BufReader::new(f);
    let mut records = Vec::new();
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_JOURNAL_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        number += 1;
        let complete = line.ends_with(b"\n");
        if !complete && line.len() > MAX_JOURNAL_LINE_BYTES {
            anyhow::bail!("{}: line {number} is longer than {MAX_JOURNAL_LINE_BYTES} bytes", path.display());
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(&text) {
            Ok(c) => records.push(c),
            // Only the last line can be torn (it has no newline): a crash mid-write.
            Err(e) if !complete => {
                eprintln!("warning: ignoring a torn last line in {} ({e})", path.display());
            }
            Err(e) => anyhow::bail!("{}: line {number}: not a record of this journal: {e}", path.display()),
        }
    }
    Ok(records)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_cell(board: &str, freq_khz: u64, variant: &str, repeat: u32) -> CellRecord {
        CellRecord {
            board: board.into(),
            freq_khz,
            variant: variant.into(),
            repeat,
            level: 0,
            variant_kind: "dense".into(),
            sparsity: 0.0,
            simulated: true,
            fidelity_cosine: None,
            fidelity_rel_l2: None,
            fidelity_kind: None,
            time_capped: false,
            agent_note: None,
            sim_stretch_factor: None,
            cpu_busy_cores: None,
            sim_busy_cores: None,
            place: None,
            exporter_host: None,
            started_at: "2026-11-28T10:00:00Z".into(),
            attempts: 1,
            iterations: 3,
            window_ns: 3_000_000,
            latency_median_ms: 1.0,
            latency_mean_ms: 1.0,
            latency_p90_ms: 1.0,
            latency_p99_ms: 1.0,
            latency_min_ms: 0.9,
            latency_max_ms: 1.1,
            deadline_ms: Some(2.0),
            deadline_met: Some(true),
            cur_freq_khz: Some(freq_khz),
            freq_verified: true,
            off_target_ms: Some(0.0),
            throttled: false,
            temp_before_c: None,
            temp_after_c: None,
            cooldown_timed_out: false,
            checksum: "00ff".into(),
            mean_power_w: None,
            idle_power_w: None,
            energy_per_inference_mj: None,
            net_energy_per_inference_mj: None,
            power_samples: None,
            lost_samples: None,
            clock_offset_uncertainty_us: None,
            power_flagged: None,
            power_rate_hz: None,
            power_few_samples: None,
            energy_missing_reason: None,
            monitor_clock_ppm: None,
            monitor_clock_points: None,
            monitor_clock_spread_us: None,
            monitor_clock_bound_us: None,
            window_host_start_ns: None,
            window_host_end_ns: None,
            window_energy_j: None,
            latencies_ns: vec![900_000, 1_000_000, 1_100_000],
        }
    }

    #[test]
    fn append_writes_journal_and_tables_that_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ResultsStore::open(dir.path()).unwrap();
        store.append(sample_cell("pi", 600_000, "dense", 0)).unwrap();
        store.append(sample_cell("pi", 1_500_000, "dense", 0)).unwrap();
        let cells = read_parquet(&dir.path().join(CELLS_PARQUET)).unwrap();
        assert_eq!(cells.height(), 2);
        assert_eq!(cells.column("freq_khz").unwrap().u64().unwrap().get(1), Some(1_500_000));
        let lat = read_parquet(&dir.path().join(LATENCY_PARQUET)).unwrap();
        assert_eq!(lat.height(), 6);
        let reopened = ResultsStore::open(dir.path()).unwrap();
        assert_eq!(reopened.finished().len(), 2);
        assert_eq!(reopened.cells()[0], sample_cell("pi", 600_000, "dense", 0));
    }

    #[test]
    fn a_torn_tail_is_cut_aside_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ResultsStore::open(dir.path()).unwrap();
        store.append(sample_cell("pi", 600_000, "dense", 0)).unwrap();
        drop(store);
        // A crash mid-write: half of the next cell's line.
        let line = serde_json::to_string(&sample_cell("pi", 600_000, "bp", 0)).unwrap();
        let mut f = OpenOptions::new().append(true).open(dir.path().join(JOURNAL)).unwrap();
        f.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
        drop(f);
        let mut store = ResultsStore::open(dir.path()).unwrap();
        assert_eq!(store.cells().len(), 1);
        store.append(sample_cell("pi", 1_500_000, "dense", 0)).unwrap();
        let back = read_journal(dir.path()).unwrap();
        assert_eq!(back.len(), 2, "every complete cell reads back, none fused with the fragment");
        let torn = fs::read_to_string(dir.path().join("cells.jsonl.torn")).unwrap();
        assert_eq!(torn.trim_end(), &line[..line.len() / 2]);
    }

    #[test]
    fn started_at_is_a_utc_timestamp_in_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ResultsStore::open(dir.path()).unwrap();
        let mut cell = sample_cell("pi", 600_000, "dense", 0);
        cell.started_at = "2026-12-04T10:11:12.345Z".into();
        store.append(cell).unwrap();
        let cells = read_parquet(&dir.path().join(CELLS_PARQUET)).unwrap();
        let col = cells.column("started_at").unwrap();
        assert_eq!(col.dtype(), &DataType::Datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC)));
        let ms = col.cast(&DataType::Int64).unwrap().i64().unwrap().get(0).unwrap();
        assert_eq!(ms, chrono::DateTime::parse_from_rfc3339("2026-12-04T10:11:12.345Z").unwrap().timestamp_millis());
    }

    #[test]
    fn switch_rows_replace_earlier_rows_of_the_same_set_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ResultsStore::open(dir.path()).unwrap();
        let row = |variant: &str, cold: f64| SwitchRecord {
            board: "pi".into(),
            variant: variant.into(),
            freq_khz: 600_000,
            simulated: false,
            rounds: 5,
            hot_switch_us: 0.2,
            cold_switch_ms: cold,
            hot_first_inference_penalty_ms: 0.1,
            cold_first_inference_penalty_ms: 0.3,
            first_inference_penalty_ms: 0.3,
            resident_bytes: 1000,
            resident_bytes_all_prepacked: Some(5000),
            resident_bytes_one_set: Some(3000),
            within_45_ms: cold < 45.0,
            place: None,
            exporter_host: None,
        };
        assert!(!store.has_switches("pi"));
        store.append_switches(&[row("pp62", 12.0), row("pp75", 10.0)]).unwrap();
        store.append_switches(&[row("pp75", 50.0)]).unwrap();
        let df = read_parquet(&dir.path().join(SWITCH_PARQUET)).unwrap();
        assert_eq!(df.height(), 2);
        let reopened = ResultsStore::open(dir.path()).unwrap();
        assert!(reopened.has_switches("pi"));
        let pp75: Vec<&SwitchRecord> = reopened.switches.iter().filter(|s| s.variant == "pp75").collect();
        assert_eq!((pp75.len(), pp75[0].cold_switch_ms, pp75[0].within_45_ms), (1, 50.0, false));
    }

    #[test]
    fn torn_last_journal_line_is_ignored_but_corruption_elsewhere_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&sample_cell("pi", 600_000, "dense", 0)).unwrap();
        fs::write(dir.path().join(JOURNAL), format!("{good}\n{{\"board\":\"pi\",\"fr")).unwrap();
        assert_eq!(read_journal(dir.path()).unwrap().len(), 1);
        fs::write(dir.path().join(JOURNAL), format!("garbage\n{good}\n")).unwrap();
        let err = read_journal(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
