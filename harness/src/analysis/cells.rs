//! The repeats of one (board, frequency, variant) pooled into one [`CellStats`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::results::CellRecord;
use crate::scenario::units::format_khz;
use crate::stats::{summarize, Sample, SampleSummary, Statistic, SummaryConfig};

/// A cell without its repeat: what the schedule, the battery projection and `hil compare`
/// work on. Shown as `board@1500 MHz/variant`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellGroupKey {
    pub board: String,
    pub freq_khz: u64,
    pub variant: String,
}

impl fmt::Display for CellGroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}/{}", self.board, format_khz(self.freq_khz), self.variant)
    }
}

/// One (board, frequency, variant) across its repeats.
///
/// Latency pools every timed inference of every repeat (so its intervals describe single
/// inferences; drift between repeats widens the spread but is not modelled separately).
/// Energy, power and idle power have one value per repeat (a window gives one number), so
/// their statistics are across repeats and need at least two.
#[derive(Clone, Debug, PartialEq)]
pub struct CellStats {
    pub key: CellGroupKey,
    /// DVFS level index in the scenario (0 = highest listed).
    pub level: u32,
    pub variant_kind: String,
    /// Achieved weight sparsity (0 for dense).
    pub sparsity: f64,
    pub simulated: bool,
    pub repeats: usize,
    /// Timed inferences over all repeats.
    pub iterations: u64,
    /// Pooled per-iteration latencies in ms (`None` with fewer than two, e.g. a journal
    /// without per-iteration latencies).
    pub latency_sample: Option<Sample>,
    pub latency: Option<SampleSummary>,
    /// Mean latency per inference (ms), iteration-weighted over repeats: equal to the pooled
    /// mean, and available even without per-iteration latencies.
    pub latency_mean_ms: f64,
    /// Per repeat, in journal order (missing values skipped).
    pub energy_per_inference_mj: Vec<f64>,
    pub net_energy_per_inference_mj: Vec<f64>,
    pub mean_power_w: Vec<f64>,
    pub idle_power_w: Vec<f64>,
    /// Gross energy per inference across repeats (`None` with fewer than two repeats with power).
    pub energy: Option<SampleSummary>,
    /// Output checksums seen over the repeats (one when the variant is deterministic).
    pub checksums: BTreeSet<String>,
    /// Repeats whose frequency was not verified, that throttled, or whose power was flagged.
    pub unverified_freq_repeats: usize,
    pub throttled_repeats: usize,
    pub power_flagged_repeats: usize,
    /// The variant's output against the dense model's (cosine similarity, relative L2 error),
    /// mean over the repeats that carry it; `None`: not measured.
    pub fidelity_cosine: Option<f64>,
    pub fidelity_rel_l2: Option<f64>,
    /// What the fidelity measures (`perturbation (synthetic weights)` or `checkpoint`).
    pub fidelity_kind: Option<String>,
    /// Stored per-repeat latency figures, for when per-iteration latencies are missing.
    repeat_latency: Vec<(u64, [f64; 4])>,
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

impl CellStats {
    /// Latency statistic in ms: from the pooled iterations when present, else the
    /// iteration-weighted mean of the per-repeat figures stored in the journal.
    pub fn latency_ms(&self, statistic: Statistic) -> f64 {
        if let Some(s) = &self.latency_sample {
            return statistic.of(s);
        }
        let idx = match statistic {
            Statistic::Mean => return self.latency_mean_ms,
            Statistic::Median => 0,
            Statistic::P90 => 1,
            Statistic::P99 => 2,
        };
        let total: u64 = self.repeat_latency.iter().map(|(n, _)| *n).sum();
        if total == 0 {
            return f64::NAN;
        }
        self.repeat_latency.iter().map(|(n, v)| *n as f64 * v[idx]).sum::<f64>() / total as f64
    }

    /// Mean gross energy per inference over repeats (mJ), `None` without power data.
    pub fn energy_mean_mj(&self) -> Option<f64> {
        mean(&self.energy_per_inference_mj)
    }
    pub fn net_energy_mean_mj(&self) -> Option<f64> {
        mean(&self.net_energy_per_inference_mj)
    }
    pub fn mean_power_mean_w(&self) -> Option<f64> {
        mean(&self.mean_power_w)
    }
    pub fn idle_power_mean_w(&self) -> Option<f64> {
        mean(&self.idle_power_w)
    }
    /// Any repeat with an unverified frequency, throttling or flagged power.
    pub fn has_measurement_flags(&self) -> bool {
        self.unverified_freq_repeats + self.throttled_repeats + self.power_flagged_repeats > 0
    }
}

/// Pools the repeats of each (board, frequency, variant). Ordered by board name, then
/// frequency highest first, then the order variants first appear in the journal (the
/// scenario's order, since the plan runs them that way in the first repeat).
pub fn aggregate_cells(cells: &[CellRecord], config: &SummaryConfig) -> Vec<CellStats> {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let mut groups: HashMap<CellGroupKey, Vec<&CellRecord>> = HashMap::new();
    for c in cells {
        let n = first_seen.len();
        first_seen.entry(c.variant.as_str()).or_insert(n);
        groups
            .entry(CellGroupKey { board: c.board.clone(), freq_khz: c.freq_khz, variant: c.variant.clone() })
            .or_default()
            .push(c);
    }
    let mut out: Vec<CellStats> = groups.into_iter().map(|(key, reps)| cell_stats(key, &reps, config)).collect();
    out.sort_by(|a, b| {
        (a.key.board.as_str(), std::cmp::Reverse(a.key.freq_khz), first_seen[a.key.variant.as_str()]).cmp(&(
            b.key.board.as_str(),
            std::cmp::Reverse(b.key.freq_khz),
            first_seen[b.key.variant.as_str()],
        ))
    });
    out
}

fn cell_stats(key: CellGroupKey, reps: &[&CellRecord], config: &SummaryConfig) -> CellStats {
    let first = reps[0];
    let pooled: Vec<f64> = reps.iter().flat_map(|r| r.latencies_ns.iter().map(|ns| *ns as f64 / 1e6)).collect();
    let latency_sample = Sample::new(pooled).ok();
    let iterations: u64 = reps.iter().map(|r| r.iterations).sum();
    let latency_mean_ms = if iterations == 0 {
        mean(&reps.iter().map(|r| r.latency_mean_ms).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    } else {
        reps.iter().map(|r| r.iterations as f64 * r.latency_mean_ms).sum::<f64>() / iterations as f64
    };
    let collect = |f: fn(&CellRecord) -> Option<f64>| -> Vec<f64> {
        reps.iter().filter_map(|r| f(r)).filter(|v| v.is_finite()).collect()
    };
    let energy_per_inference_mj = collect(|r| r.energy_per_inference_mj);
    let energy = Sample::new(energy_per_inference_mj.clone()).ok().map(|s| summarize(&s, config));
    CellStats {
        level: first.level,
        variant_kind: first.variant_kind.clone(),
        sparsity: first.sparsity,
        simulated: reps.iter().any(|r| r.simulated),
        repeats: reps.len(),
        iterations,
        latency: latency_sample.as_ref().map(|s| summarize(s, config)),
        latency_sample,
        latency_mean_ms,
        net_energy_per_inference_mj: collect(|r| r.net_energy_per_inference_mj),
        mean_power_w: collect(|r| r.mean_power_w),
        idle_power_w: collect(|r| r.idle_power_w),
        energy_per_inference_mj,
        energy,
        checksums: reps.iter().map(|r| r.checksum.clone()).collect(),
        unverified_freq_repeats: reps.iter().filter(|r| !r.freq_verified).count(),
        throttled_repeats: reps.iter().filter(|r| r.throttled).count(),
        power_flagged_repeats: reps.iter().filter(|r| r.power_flagged == Some(true)).count(),
        fidelity_cosine: mean(&collect(|r| r.fidelity_cosine)),
        fidelity_rel_l2: mean(&collect(|r| r.fidelity_rel_l2)),
        fidelity_kind: reps.iter().find_map(|r| r.fidelity_kind.clone()),
        repeat_latency: reps
            .iter()
            .map(|r| (r.iterations, [r.latency_median_ms, r.latency_p90_ms, r.latency_p99_ms, r.latency_mean_ms]))
            .collect(),
        key,
    }
}
