//! Regression checks between two runs (`hil compare BASE CAND`).
//!
//! Cells are matched by (board, frequency, variant). **The repeat is the unit**: each repeat
//! of a cell gives one value per metric, its median latency (over its timed inferences) and
//! its gross energy per inference (window energy / inferences). Thousands of inferences of
//! one repeat are not thousands of independent measurements: what differs between two runs
//! is mostly what differs between repeats (placement, temperature, the OS), so a test that
//! pooled them would call any such difference significant (it did: +20 % [-22 %, +85 %] was
//! "p < 0.0001, REGRESSED").
//!
//! For each metric, [`crate::stats::repeat_change`] gives the change of the geometric mean over
//! repeats, `candidate / base - 1`, with a `1 - alpha` Welch t interval on the logarithms and
//! its p-value. The verdict ([`decide`]):
//! - **REGRESSED**: the interval lies above zero (p < alpha) AND the change exceeds
//!   `+threshold` %. A change whose interval includes zero is never a regression;
//! - **improved**: the mirror image;
//! - **inconclusive**: fewer than [`MIN_REPEATS`] repeats on a side (the spread between
//!   repeats cannot be estimated), or a change beyond the threshold whose interval includes
//!   zero; the verdict says how many repeats per side would detect a change of that size;
//! - **unchanged**: otherwise (within the threshold, or no evidence of a change);
//! - **not tested**: a side has no value at all (e.g. no power monitor), or a value is not
//!   positive.
//!
//! Correctness regressions: a matched cell whose output checksums differ between the runs
//! (same model and same variant definition: the kernels must give the same bits), and a
//! failed agent selftest recorded in the candidate's `run.json`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

use super::cells::CellGroupKey;
use super::load::{RunData, SelftestFailure};
use crate::results::CellRecord;
use crate::scenario::{ModelSource, ModelSpec};
use crate::stats::{
    geometric_mean_change_pct, percentile_sorted, repeat_change, repeats_needed, Estimate, RepeatChangeError,
    Statistic, MAX_REPEATS_NEEDED, MIN_REPEATS,
};

/// Default power the "need >= N repeats per side" advice is computed for.
pub const PLANNING_POWER: f64 = 0.8;

/// The noise threshold and the significance level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompareConfig {
    /// Changes smaller than this (percent) are noise whatever the test says.
    pub threshold_pct: f64,
    /// Significance level of the test; intervals are at confidence `1 - alpha`, so "the
    /// interval excludes zero" and "p < alpha" are the same statement.
    pub alpha: f64,
    /// Probability of detection the "need >= N repeats per side" advice of an inconclusive
    /// verdict aims at (default [`PLANNING_POWER`]).
    pub planning_power: f64,
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self { threshold_pct: 3.0, alpha: 0.05, planning_power: PLANNING_POWER }
    }
}

/// `0.95` as `95`, `0.975` as `97.5`.
fn percent(x: f64) -> String {
    let p = (x * 1000.0).round() / 10.0;
    format!("{p}")
}

impl CompareConfig {
    /// Confidence of the change's interval (`1 - alpha`).
    pub fn confidence(&self) -> f64 {
        1.0 - self.alpha
    }

    /// How the comparison was made, for reports and `hil compare`'s output.
    pub fn method(&self) -> String {
        format!(
            "Repeats are the unit: each repeat of a cell gives one value per metric (latency: the median of its \
             timed inferences; energy: its gross energy per inference), so the spread between repeats, not the number \
             of inferences, sets the uncertainty. Change = ratio of the geometric means over repeats, candidate / base \
             - 1, with a {conf} % Welch t interval on the logarithms (Welch-Satterthwaite degrees of freedom) and \
             Welch's two-sided p-value; no resampling, so the result is deterministic. REGRESSED when the interval \
             lies above 0 (p < {alpha}) and the change exceeds +{thr} %; improved when it lies below 0 and the change \
             is beyond -{thr} %; inconclusive with fewer than {min} repeats on a side, or when the change exceeds the \
             threshold but its interval includes 0 (the verdict gives the repeats per side that would detect a change \
             of that size with {power} % power); unchanged otherwise. A change whose interval includes 0 is never a \
             regression.",
            conf = percent(self.confidence()),
            alpha = self.alpha,
            thr = self.threshold_pct,
            min = MIN_REPEATS,
            power = percent(self.planning_power),
        )
    }
}

/// Why two runs cannot be compared (`hil compare` exits 2).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CompareError {
    #[error("{side} run {dir} has no cells (cells.jsonl is missing or empty)")]
    NoCells { side: &'static str, dir: PathBuf },
    #[error("the runs used different models, so their latencies, energies and checksums are not comparable: {detail}")]
    DifferentModels { detail: String },
    /// The runs (or the sessions of one resumed run) differ in something that changes what is
    /// measured other than the code under test: a variant's definition, the agent's platform.
    #[error("{field} differs: {detail}; the runs are not comparable")]
    DifferentSetup { field: String, detail: String },
    #[error("no cell of {base} matches a cell of {candidate} by (board, frequency, variant)")]
    NothingMatches { base: PathBuf, candidate: PathBuf },
}

/// The outcome for one metric of one matched cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Regressed,
    Improved,
    Unchanged,
    /// The data cannot decide (why, and the repeats per side that would).
    Inconclusive(String),
    /// Nothing to test (the reason).
    NotTested(String),
}

impl Verdict {
    pub fn label(&self) -> &str {
        match self {
            Verdict::Regressed => "REGRESSED",
            Verdict::Improved => "improved",
            Verdict::Unchanged => "unchanged",
            Verdict::Inconclusive(_) => "inconclusive",
            Verdict::NotTested(_) => "not tested",
        }
    }

    /// `inconclusive: why`, `not tested: why`, or the label.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Inconclusive(why) | Verdict::NotTested(why) => format!("{}: {why}", self.label()),
            v => v.label().to_string(),
        }
    }
}

/// One metric compared.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricComparison {
    /// `latency` or `energy per inference`.
    pub metric: &'static str,
    pub unit: &'static str,
    /// The per-repeat statistic (latency: the median of a repeat's inferences).
    pub statistic: Statistic,
    /// Repeats with a value on each side.
    pub n_base: usize,
    pub n_candidate: usize,
    /// Geometric mean over repeats on each side (`NaN` when not tested).
    pub base: f64,
    pub candidate: f64,
    /// Percent change with its `1 - alpha` interval (bounds `NaN` with too few repeats).
    pub change_pct: Estimate,
    /// Welch's two-sided p-value (`NaN` when not computed).
    pub p_value: f64,
    /// For an inconclusive verdict: repeats per side that would decide it (`None`: more than
    /// [`MAX_REPEATS_NEEDED`], or not applicable).
    pub repeats_needed: Option<usize>,
    pub verdict: Verdict,
}

const NAN_ESTIMATE: Estimate = Estimate { point: f64::NAN, lower: f64::NAN, upper: f64::NAN };

/// The verdict for a change with its interval (see the module docs), given the spread between
/// repeats for the advice on how many are needed. Pure; a change whose interval includes zero
/// is never [`Verdict::Regressed`] nor [`Verdict::Improved`].
pub fn decide(
    change_pct: &Estimate,
    sd_logs: (f64, f64),
    repeats: (usize, usize),
    config: &CompareConfig,
) -> (Verdict, Option<usize>) {
    let (e, thr) = (change_pct, config.threshold_pct);
    if e.lower > 0.0 && e.point > thr {
        return (Verdict::Regressed, None);
    }
    if e.upper < 0.0 && e.point < -thr {
        return (Verdict::Improved, None);
    }
    if e.point.abs() > thr {
        // Beyond the threshold, but the interval reaches zero: the data cannot tell.
        let have = repeats.0.max(repeats.1);
        let needed =
            repeats_needed(sd_logs.0, sd_logs.1, e.point, config.alpha, config.planning_power).map(|n| n.max(have + 1));
        let advice = match needed {
            Some(n) => format!(
                "need >= {n} repeats per side to detect a change of this size ({} % power, from the variation between \
                 repeats seen here)",
                percent(config.planning_power)
            ),
            None => format!(
                "more than {MAX_REPEATS_NEEDED} repeats per side would be needed to detect a change of this size: reduce \
                 the variation between repeats"
            ),
        };
        let why = format!(
            "the change {:+.2} % exceeds the {thr} % threshold but its {} % interval [{:+.2}, {:+.2}] includes 0; \
             {advice}",
            e.point,
            percent(config.confidence()),
            e.lower,
            e.upper
        );
        return (Verdict::Inconclusive(why), needed);
    }
    (Verdict::Unchanged, None)
}

/// Tests `candidate` against `base` for one metric where larger is worse. `base` and
/// `candidate` hold one value per repeat.
pub fn compare_metric(
    metric: &'static str,
    unit: &'static str,
    statistic: Statistic,
    base: &[f64],
    candidate: &[f64],
    config: &CompareConfig,
) -> MetricComparison {
    let mut m = MetricComparison {
        metric,
        unit,
        statistic,
        n_base: base.len(),
        n_candidate: candidate.len(),
        base: f64::NAN,
        candidate: f64::NAN,
        change_pct: NAN_ESTIMATE,
        p_value: f64::NAN,
        repeats_needed: None,
        verdict: Verdict::Unchanged,
    };
    for (side, v) in [("base", base), ("candidate", candidate)] {
        if v.is_empty() {
            m.verdict = Verdict::NotTested(format!("the {side} run has no {metric} value in any repeat"));
            return m;
        }
    }
    match repeat_change(base, candidate, config.confidence()) {
        Ok(ch) => {
            m.base = ch.base;
            m.candidate = ch.candidate;
            m.change_pct = ch.change_pct;
            m.p_value = ch.p_value;
            let (verdict, needed) =
                decide(&ch.change_pct, (ch.sd_log_base, ch.sd_log_candidate), (base.len(), candidate.len()), config);
            m.verdict = verdict;
            m.repeats_needed = needed;
        }
        Err(RepeatChangeError::TooFewRepeats { .. }) => {
            // Still say what the change looks like, without an interval.
            if let Some((b, c, pct)) = geometric_mean_change_pct(base, candidate) {
                m.base = b;
                m.candidate = c;
                m.change_pct = Estimate { point: pct, ..NAN_ESTIMATE };
            }
            m.repeats_needed = Some(MIN_REPEATS);
            m.verdict = Verdict::Inconclusive(format!(
                "need >= {MIN_REPEATS} repeats per side to estimate the variation between repeats (base {}, candidate \
                 {})",
                base.len(),
                candidate.len()
            ));
        }
        Err(e @ RepeatChangeError::NotPositive { .. }) => m.verdict = Verdict::NotTested(e.to_string()),
    }
    m
}

/// One (board, frequency, variant) of a run as `hil compare` sees it: one value per repeat.
#[derive(Clone, Debug, PartialEq)]
pub struct RepeatValues {
    pub key: CellGroupKey,
    /// Per repeat, in repeat order: the median latency of its timed inferences, ms (the
    /// journal's per-repeat median when the inferences were not stored).
    pub latency_median_ms: Vec<f64>,
    /// Per repeat with power, in repeat order: gross energy per inference, mJ.
    pub energy_per_inference_mj: Vec<f64>,
    /// Output checksums seen over the repeats.
    pub checksums: BTreeSet<String>,
}

/// The median of one repeat's latencies (ms), or its stored median without them.
fn repeat_median_ms(r: &CellRecord) -> Option<f64> {
    if r.latencies_ns.is_empty() {
        return (r.iterations > 0 && r.latency_median_ms.is_finite()).then_some(r.latency_median_ms);
    }
    let mut ms: Vec<f64> = r.latencies_ns.iter().map(|ns| *ns as f64 / 1e6).collect();
    ms.sort_by(f64::total_cmp);
    percentile_sorted(&ms, 0.5)
}

/// Groups a run's cells by (board, frequency, variant), one value per repeat, ordered as
/// [`super::aggregate_cells`] orders them (board, frequency highest first, variants in the
/// order they first appear).
pub fn repeat_values(cells: &[CellRecord]) -> Vec<RepeatValues> {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let mut groups: BTreeMap<CellGroupKey, Vec<&CellRecord>> = BTreeMap::new();
    for c in cells {
        let n = first_seen.len();
        first_seen.entry(c.variant.as_str()).or_insert(n);
        groups
            .entry(CellGroupKey { board: c.board.clone(), freq_khz: c.freq_khz, variant: c.variant.clone() })
            .or_default()
            .push(c);
    }
    let mut out: Vec<RepeatValues> = groups
        .into_iter()
        .map(|(key, mut reps)| {
            reps.sort_by_key(|r| r.repeat);
            RepeatValues {
                key,
                latency_median_ms: reps.iter().filter_map(|r| repeat_median_ms(r)).collect(),
                energy_per_inference_mj: reps
                    .iter()
                    .filter_map(|r| r.energy_per_inference_mj)
                    .filter(|v| v.is_finite())
                    .collect(),
                checksums: reps.iter().map(|r| r.checksum.clone()).collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.key.board.as_str(), std::cmp::Reverse(a.key.freq_khz), first_seen[a.key.variant.as_str()]).cmp(&(
            b.key.board.as_str(),
            std::cmp::Reverse(b.key.freq_khz),
            first_seen[b.key.variant.as_str()],
        ))
    });
    out
}

/// Output checksums of a matched cell on both sides.
#[derive(Clone, Debug, PartialEq)]
pub struct ChecksumCheck {
    pub base: BTreeSet<String>,
    pub candidate: BTreeSet<String>,
    /// The variant's definition differs between the two scenarios (checksums may differ then).
    pub variant_definition_changed: bool,
}

impl ChecksumCheck {
    /// A correctness regression: same definition, different outputs.
    pub fn regressed(&self) -> bool {
        !self.variant_definition_changed && self.base != self.candidate
    }
}

/// Everything compared for one (board, frequency, variant).
#[derive(Clone, Debug, PartialEq)]
pub struct CellComparison {
    pub key: CellGroupKey,
    pub latency: MetricComparison,
    pub energy: MetricComparison,
    pub checksum: ChecksumCheck,
}

impl CellComparison {
    pub fn regressed(&self) -> bool {
        self.latency.verdict == Verdict::Regressed
            || self.energy.verdict == Verdict::Regressed
            || self.checksum.regressed()
    }
}

/// The comparison of two runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub base_dir: PathBuf,
    pub candidate_dir: PathBuf,
    pub config: CompareConfig,
    pub cells: Vec<CellComparison>,
    pub only_in_base: Vec<CellGroupKey>,
    pub only_in_candidate: Vec<CellGroupKey>,
    /// Failed selftests recorded in the candidate's `run.json`, by board.
    pub selftest_failures: Vec<(String, SelftestFailure)>,
    /// Boards whose candidate selftest failed without naming a variant.
    pub selftest_failed_boards: Vec<String>,
}

/// Compares cells' per-repeat values (the pure core of [`compare_runs`]). `variant_changed`
/// names the variants whose definition differs between the two scenarios.
pub fn compare_cells(
    base: &[RepeatValues],
    candidate: &[RepeatValues],
    variant_changed: &BTreeSet<String>,
    config: &CompareConfig,
) -> (Vec<CellComparison>, Vec<CellGroupKey>, Vec<CellGroupKey>) {
    let cand_by_key: BTreeMap<&CellGroupKey, &RepeatValues> = candidate.iter().map(|c| (&c.key, c)).collect();
    let base_keys: BTreeSet<&CellGroupKey> = base.iter().map(|c| &c.key).collect();
    let mut matched = Vec::new();
    let mut only_in_base = Vec::new();
    for b in base {
        let Some(c) = cand_by_key.get(&b.key) else {
            only_in_base.push(b.key.clone());
            continue;
        };
        matched.push(CellComparison {
            key: b.key.clone(),
            latency: compare_metric(
                "latency",
                "ms",
                Statistic::Median,
                &b.latency_median_ms,
                &c.latency_median_ms,
                config,
            ),
            energy: compare_metric(
                "energy per inference",
                "mJ",
                Statistic::Mean,
                &b.energy_per_inference_mj,
                &c.energy_per_inference_mj,
                config,
            ),
            checksum: ChecksumCheck {
                base: b.checksums.clone(),
                candidate: c.checksums.clone(),
                variant_definition_changed: variant_changed.contains(&b.key.variant),
            },
        });
    }
    let only_in_candidate = candidate.iter().filter(|c| !base_keys.contains(&c.key)).map(|c| c.key.clone()).collect();
    (matched, only_in_base, only_in_candidate)
}

fn describe_model(m: &ModelSpec) -> String {
    let source = match &m.source {
        ModelSource::Preset(p) => format!("preset {}", p.as_str()),
        ModelSource::Safetensors { path, preset } => format!("{} from safetensors {path}", preset.as_str()),
    };
    let source = if m.lm_head { format!("{source} with its lm_head") } else { source };
    let seq = m.seq.map(|s| s.to_string()).unwrap_or_else(|| "the preset's".into());
    format!("{source}, sequence length {seq}, seed {}", m.seed)
}

/// The loaded model of every session of every board, `(board, session, model)`.
fn loaded_models(run: &RunData) -> Vec<(String, usize, &device_agent::protocol::ModelInfo)> {
    let mut out = Vec::new();
    for board in run.meta.board_names() {
        for (i, b) in run.meta.board_sessions(board) {
            if let Some(load) = &b.model {
                out.push((board.to_string(), i, &load.model));
            }
        }
    }
    out
}

/// What an agent ran on and how, apart from its code: a change here changes the numbers without
/// anything regressing (another architecture, SIMD extension or thread count).
fn agent_platform(hello: &device_agent::protocol::HelloReply) -> String {
    format!("{} / SIMD [{}] / {} thread(s)", hello.arch, hello.simd.join(", "), hello.threads)
}

/// Refuses a pair that measured different things: the scenario's model section and the model
/// each board's agent reported loading (in every session of both runs), the definition of every
/// variant both runs have, and each board's agent platform. The agent's own code may differ (that
/// is what a regression check compares), but not within one run: a resumed run whose sessions ran
/// different agent builds mixes two codes in its cells.
fn check_comparable(base: &RunData, candidate: &RunData) -> Result<(), CompareError> {
    let (bm, cm) = (&base.scenario.model, &candidate.scenario.model);
    if bm != cm {
        return Err(CompareError::DifferentModels {
            detail: format!("base scenario model: {}; candidate: {}", describe_model(bm), describe_model(cm)),
        });
    }
    let all: Vec<(&str, String, usize, &device_agent::protocol::ModelInfo)> = loaded_models(base)
        .into_iter()
        .map(|(b, i, m)| ("base", b, i, m))
        .chain(loaded_models(candidate).into_iter().map(|(b, i, m)| ("candidate", b, i, m)))
        .collect();
    for (side, board, session, model) in &all {
        for (other_side, other_board, other_session, other) in &all {
            if board == other_board && model != other {
                return Err(CompareError::DifferentModels {
                    detail: format!(
                        "board {board} loaded {} in session {session} of the {side} run and {} in session \
                         {other_session} of the {other_side} run",
                        serde_json::to_string(model).unwrap_or_default(),
                        serde_json::to_string(other).unwrap_or_default()
                    ),
                });
            }
        }
    }
    for v in &base.scenario.variants {
        if let Some(c) = candidate.scenario.variant(&v.name) {
            if c.kind != v.kind {
                return Err(CompareError::DifferentSetup {
                    field: format!("variants[{}]", v.name),
                    detail: format!(
                        "base {}, candidate {}",
                        crate::plan::describe_variant(v),
                        crate::plan::describe_variant(c)
                    ),
                });
            }
        }
    }
    for (side, run) in [("base", base), ("candidate", candidate)] {
        for board in run.meta.board_names() {
            let builds: BTreeSet<&str> = run
                .meta
                .board_sessions(board)
                .filter_map(|(_, b)| b.agent.as_ref().map(|a| a.sha256.as_str()))
                .collect();
            if builds.len() > 1 {
                return Err(CompareError::DifferentSetup {
                    field: format!("boards.{board}.agent.sha256"),
                    detail: format!(
                        "the {side} run was resumed with another agent build ({}), so its cells were measured by \
                         different code",
                        builds.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        }
    }
    for board in base.meta.board_names() {
        let platform = |run: &RunData| run.meta.board(board).and_then(|b| b.agent_hello.as_ref()).map(agent_platform);
        if let (Some(b), Some(c)) = (platform(base), platform(candidate)) {
            if b != c {
                return Err(CompareError::DifferentSetup {
                    field: format!("boards.{board}.agent_hello"),
                    detail: format!("base {b}, candidate {c}"),
                });
            }
        }
    }
    Ok(())
}

/// Compares two loaded runs. Errors are unusable input (no cells, different models,
/// nothing in common); regressions are in the returned [`Comparison`].
pub fn compare_runs(base: &RunData, candidate: &RunData, config: &CompareConfig) -> Result<Comparison, CompareError> {
    if base.cells.is_empty() {
        return Err(CompareError::NoCells { side: "base", dir: base.dir.clone() });
    }
    if candidate.cells.is_empty() {
        return Err(CompareError::NoCells { side: "candidate", dir: candidate.dir.clone() });
    }
    check_comparable(base, candidate)?;
    let variant_changed: BTreeSet<String> = base
        .scenario
        .variants
        .iter()
        .filter(|v| candidate.scenario.variant(&v.name).is_some_and(|c| c.kind != v.kind))
        .map(|v| v.name.clone())
        .collect();
    let b = repeat_values(&base.cells);
    let c = repeat_values(&candidate.cells);
    let (cells, only_in_base, only_in_candidate) = compare_cells(&b, &c, &variant_changed, config);
    if cells.is_empty() {
        return Err(CompareError::NothingMatches { base: base.dir.clone(), candidate: candidate.dir.clone() });
    }
    let mut selftest_failures = Vec::new();
    let mut selftest_failed_boards = Vec::new();
    for board in candidate.meta.board_names() {
        let Some(reply) = candidate.meta.board(board).and_then(|b| b.selftest.as_ref()) else { continue };
        let st = super::load::SelftestSummary::from_reply(reply);
        let board = board.to_string();
        {
            if !st.passed {
                if st.failures.is_empty() {
                    selftest_failed_boards.push(board.clone());
                }
                selftest_failures.extend(st.failures.iter().map(|f| (board.clone(), f.clone())));
            }
        }
    }
    Ok(Comparison {
        base_dir: base.dir.clone(),
        candidate_dir: candidate.dir.clone(),
        config: *config,
        cells,
        only_in_base,
        only_in_candidate,
        selftest_failures,
        selftest_failed_boards,
    })
}

fn fmt_change(m: &MetricComparison) -> String {
    let e = &m.change_pct;
    if e.point.is_nan() {
        return "-".into();
    }
    if e.lower.is_nan() || e.upper.is_nan() {
        // Fewer than MIN_REPEATS repeats on a side: the spread between repeats is unknown.
        return format!("{:+.2} % (repeats {}/{}: no interval)", e.point, m.n_base, m.n_candidate);
    }
    format!("{:+.2} % [{:+.2}, {:+.2}]", e.point, e.lower, e.upper)
}

fn fmt_value(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "-".into()
    }
}

fn fmt_p(p: f64) -> String {
    if !p.is_finite() {
        "-".into()
    } else if p < 1e-4 {
        "<0.0001".into()
    } else {
        format!("{p:.4}")
    }
}

impl Comparison {
    /// True when any metric, checksum or selftest regressed (`hil compare` exits 1).
    pub fn regressed(&self) -> bool {
        self.cells.iter().any(CellComparison::regressed)
            || !self.selftest_failures.is_empty()
            || !self.selftest_failed_boards.is_empty()
    }

    /// One line per regression, for summaries.
    pub fn regressions(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.cells {
            for m in [&c.latency, &c.energy] {
                if m.verdict == Verdict::Regressed {
                    out.push(format!("{}: {} {} (p = {})", c.key, m.metric, fmt_change(m), fmt_p(m.p_value)));
                }
            }
            if c.checksum.regressed() {
                out.push(format!("{}: {}", c.key, checksum_message(&c.checksum)));
            }
        }
        for (board, f) in &self.selftest_failures {
            out.push(format!("{board}: {}", selftest_message(f)));
        }
        for board in &self.selftest_failed_boards {
            out.push(format!("{board}: the agent selftest failed"));
        }
        out
    }

    /// One line per inconclusive metric: what could not be decided and how many repeats would.
    pub fn inconclusive(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.cells {
            for m in [&c.latency, &c.energy] {
                if let Verdict::Inconclusive(why) = &m.verdict {
                    out.push(format!("{}: {} {}: {why}", c.key, m.metric, fmt_change(m)));
                }
            }
        }
        out
    }

    /// The comparison as a Markdown table and lists.
    pub fn to_markdown(&self) -> String {
        let conf = percent(self.config.confidence());
        let mut out = format!(
            "Comparison of {} (candidate) against {} (base): threshold {} %, alpha {}. Base and candidate are \
             geometric means over repeats of each repeat's value (latency: the median of its inferences).\n\n",
            self.candidate_dir.display(),
            self.base_dir.display(),
            self.config.threshold_pct,
            self.config.alpha
        );
        let _ = writeln!(
            out,
            "| cell | metric (per repeat) | base | candidate | change ({conf} % CI) | p | repeats base/cand | verdict |"
        );
        out.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
        for c in &self.cells {
            for m in [&c.latency, &c.energy] {
                let verdict = m.verdict.describe();
                let _ = writeln!(
                    out,
                    "| {} | {} {} ({}) | {} | {} | {} | {} | {}/{} | {} |",
                    c.key,
                    m.metric,
                    m.statistic.label(),
                    m.unit,
                    fmt_value(m.base),
                    fmt_value(m.candidate),
                    fmt_change(m),
                    fmt_p(m.p_value),
                    m.n_base,
                    m.n_candidate,
                    verdict
                );
            }
        }
        let checksum_lines: Vec<String> = self
            .cells
            .iter()
            .filter(|c| c.checksum.base != c.checksum.candidate)
            .map(|c| format!("- {}: {}", c.key, checksum_message(&c.checksum)))
            .collect();
        if !checksum_lines.is_empty() {
            out.push_str("\nOutput checksums:\n");
            out.push_str(&checksum_lines.join("\n"));
            out.push('\n');
        }
        if !self.selftest_failures.is_empty() || !self.selftest_failed_boards.is_empty() {
            out.push_str("\nSelftests failed in the candidate:\n");
            for (board, f) in &self.selftest_failures {
                let _ = writeln!(out, "- {board}: {}", selftest_message(f));
            }
            for board in &self.selftest_failed_boards {
                let _ = writeln!(out, "- {board}: the agent selftest failed");
            }
        }
        for (what, keys) in [("base only", &self.only_in_base), ("candidate only", &self.only_in_candidate)] {
            if !keys.is_empty() {
                let _ = writeln!(
                    out,
                    "\nUnmatched cells ({what}): {}",
                    keys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
            }
        }
        let inconclusive = self.inconclusive();
        if !inconclusive.is_empty() {
            let _ = writeln!(
                out,
                "\n{} inconclusive (not counted as regressions; measure more repeats):",
                inconclusive.len()
            );
            for line in inconclusive {
                let _ = writeln!(out, "- {line}");
            }
        }
        let regressions = self.regressions();
        if regressions.is_empty() {
            out.push_str("\nNo regressions.\n");
        } else {
            let _ = writeln!(out, "\n{} regression(s):", regressions.len());
            for r in regressions {
                let _ = writeln!(out, "- {r}");
            }
        }
        let _ = writeln!(out, "\nMethod: {}", self.config.method());
        out
    }

    /// JUnit XML: one test case per (cell, metric), per cell checksum and per candidate board
    /// selftest; regressions are failures, untested metrics and unmatched cells are skipped.
    pub fn to_junit(&self) -> String {
        struct Case {
            class: String,
            name: String,
            failure: Option<String>,
            skipped: Option<String>,
        }
        let mut cases = Vec::new();
        for c in &self.cells {
            let class = format!("hil.compare.{}.{}kHz", c.key.board, c.key.freq_khz);
            for m in [&c.latency, &c.energy] {
                let detail = format!(
                    "{} {}: base {} {}, candidate {} {}, change {}, p = {}",
                    m.metric,
                    m.statistic.label(),
                    fmt_value(m.base),
                    m.unit,
                    fmt_value(m.candidate),
                    m.unit,
                    fmt_change(m),
                    fmt_p(m.p_value)
                );
                cases.push(Case {
                    class: class.clone(),
                    name: format!("{} {}", c.key.variant, m.metric),
                    failure: (m.verdict == Verdict::Regressed).then(|| detail.clone()),
                    skipped: match &m.verdict {
                        Verdict::NotTested(_) | Verdict::Inconclusive(_) => Some(m.verdict.describe()),
                        _ => None,
                    },
                });
            }
            cases.push(Case {
                class: class.clone(),
                name: format!("{} output checksum", c.key.variant),
                failure: c.checksum.regressed().then(|| checksum_message(&c.checksum)),
                skipped: None,
            });
        }
        for key in self.only_in_base.iter().chain(&self.only_in_candidate) {
            cases.push(Case {
                class: format!("hil.compare.{}.{}kHz", key.board, key.freq_khz),
                name: format!("{} matched", key.variant),
                failure: None,
                skipped: Some(format!("{key} is in only one of the runs")),
            });
        }
        for (board, f) in &self.selftest_failures {
            cases.push(Case {
                class: format!("hil.compare.{board}"),
                name: format!("selftest {}", f.variant),
                failure: Some(selftest_message(f)),
                skipped: None,
            });
        }
        for board in &self.selftest_failed_boards {
            cases.push(Case {
                class: format!("hil.compare.{board}"),
                name: "selftest".into(),
                failure: Some("the agent selftest failed".into()),
                skipped: None,
            });
        }
        let failures = cases.iter().filter(|c| c.failure.is_some()).count();
        let skipped = cases.iter().filter(|c| c.skipped.is_some()).count();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"hil compare\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">",
            cases.len()
        );
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" errors=\"0\">",
            xml_escape(&format!("{} vs {}", self.candidate_dir.display(), self.base_dir.display())),
            cases.len()
        );
        let _ = writeln!(out, "    <properties>");
        for (name, value) in [
            ("base", self.base_dir.display().to_string()),
            ("candidate", self.candidate_dir.display().to_string()),
            ("threshold_pct", self.config.threshold_pct.to_string()),
            ("alpha", self.config.alpha.to_string()),
            ("method", self.config.method()),
        ] {
            let _ = writeln!(out, "      <property name=\"{}\" value=\"{}\"/>", xml_escape(name), xml_escape(&value));
        }
        let _ = writeln!(out, "    </properties>");
        for c in &cases {
            let open = format!("    <testcase classname=\"{}\" name=\"{}\"", xml_escape(&c.class), xml_escape(&c.name));
            match (&c.failure, &c.skipped) {
                (Some(f), _) => {
                    let _ = writeln!(
                        out,
                        "{open}>\n      <failure message=\"{}\" type=\"regression\">{}</failure>\n    </testcase>",
                        xml_escape(f),
                        xml_escape(f)
                    );
                }
                (None, Some(s)) => {
                    let _ = writeln!(out, "{open}>\n      <skipped message=\"{}\"/>\n    </testcase>", xml_escape(s));
                }
                (None, None) => {
                    let _ = writeln!(out, "{open}/>");
                }
            }
        }
        out.push_str("  </testsuite>\n</testsuites>\n");
        out
    }
}

fn checksum_message(c: &ChecksumCheck) -> String {
    let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join("/");
    let mut m = format!("output checksum changed: base {}, candidate {}", join(&c.base), join(&c.candidate));
    if c.variant_definition_changed {
        m.push_str(" (the variant's definition changed, so this is expected)");
    }
    m
}

fn selftest_message(f: &SelftestFailure) -> String {
    let err = |v: Option<f64>| v.map(|v| format!("{v:.3e}")).unwrap_or_else(|| "?".into());
    format!(
        "selftest of {} failed (worst at {}: max abs error {}, max rel error {})",
        f.variant,
        if f.worst.is_empty() { "?" } else { &f.worst },
        err(f.max_abs_err),
        err(f.max_rel_err)
    )
}

/// Escapes text for XML attributes and character data. Characters XML 1.0 forbids
/// (control characters other than tab, newline, carriage return) are replaced by U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // As character references so attribute values keep them (parsers normalise raw ones to spaces).
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}
