//! Regression checks between two runs (`hil compare BASE CAND`).
//!
//! Cells are matched by (board, frequency, variant). For each match:
//! - **latency**: every timed inference of every repeat pooled per side; the change in the
//!   median, with a seeded percentile-bootstrap interval, and a two-sided Mann-Whitney U
//!   test (normal approximation, tie-corrected) on the pooled inferences;
//! - **energy per inference** (gross): one value per repeat; the change in the mean across
//!   repeats with a bootstrap interval and the same test. With fewer than two repeats with
//!   power on a side it is not tested, and when the samples are too small for the test ever
//!   to reach significance (3 against 3 repeats cannot; 4 against 4 can) the metric is
//!   reported as "not tested" with the change and its interval, never as "unchanged".
//!
//! A metric **regressed** only when the change is significant (p < alpha) AND larger than the
//! noise threshold (default 3 %): a tiny but significant change from thousands of
//! inferences is not a regression, nor is a large change the data cannot support. A metric
//! that got significantly better by more than the threshold is "improved".
//! Pooling inferences treats them as independent; drift between repeats makes the test
//! optimistic, which the threshold guards against.
//!
//! Correctness regressions: a matched cell whose output checksums differ between the runs
//! (same model and same variant definition: the kernels must give the same bits), and a
//! failed agent selftest recorded in the candidate's `run.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use super::cells::{aggregate_cells, CellGroupKey, CellStats};
use super::load::{RunData, SelftestFailure};
use crate::scenario::{ModelSource, ModelSpec};
use crate::stats::{
    bootstrap_relative_change, mann_whitney_min_p, mann_whitney_u, Estimate, Sample, Statistic, SummaryConfig,
};

/// Thresholds and the bootstrap's configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompareConfig {
    /// Changes smaller than this (percent) are noise whatever the test says.
    pub threshold_pct: f64,
    /// Significance level of the test.
    pub alpha: f64,
    pub summary: SummaryConfig,
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self { threshold_pct: 3.0, alpha: 0.05, summary: SummaryConfig::default() }
    }
}

impl CompareConfig {
    pub fn method(&self) -> String {
        format!(
            "Latency: median of all inferences pooled over repeats; energy: mean gross energy per inference over \
             repeats. Change = candidate / base - 1 with a {:.0} % percentile-bootstrap interval ({} resamples, \
             ChaCha8 seed {:#x}); two-sided Mann-Whitney U test (normal approximation, tie and continuity \
             corrected). Regressed when p < {} and the change exceeds +{} %.",
            self.summary.confidence * 100.0,
            self.summary.resamples,
            self.summary.seed,
            self.alpha,
            self.threshold_pct
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
    #[error("no cell of {base} matches a cell of {candidate} by (board, frequency, variant)")]
    NothingMatches { base: PathBuf, candidate: PathBuf },
}

/// The outcome for one metric of one matched cell.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Regressed,
    Improved,
    Unchanged,
    /// Not enough data to test (the reason).
    NotTested(String),
}

impl Verdict {
    pub fn label(&self) -> &str {
        match self {
            Verdict::Regressed => "REGRESSED",
            Verdict::Improved => "improved",
            Verdict::Unchanged => "unchanged",
            Verdict::NotTested(_) => "not tested",
        }
    }
}

/// One metric compared.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricComparison {
    /// `latency` or `energy per inference`.
    pub metric: &'static str,
    pub unit: &'static str,
    pub statistic: Statistic,
    pub n_base: usize,
    pub n_candidate: usize,
    /// The statistic on each side (`NaN` when not tested).
    pub base: f64,
    pub candidate: f64,
    /// Percent change with its interval.
    pub change_pct: Estimate,
    pub p_value: f64,
    pub verdict: Verdict,
}

impl MetricComparison {
    fn not_tested(
        metric: &'static str,
        unit: &'static str,
        statistic: Statistic,
        n: (usize, usize),
        why: String,
    ) -> Self {
        let nan = Estimate { point: f64::NAN, lower: f64::NAN, upper: f64::NAN };
        Self {
            metric,
            unit,
            statistic,
            n_base: n.0,
            n_candidate: n.1,
            base: f64::NAN,
            candidate: f64::NAN,
            change_pct: nan,
            p_value: f64::NAN,
            verdict: Verdict::NotTested(why),
        }
    }
}

/// Tests `candidate` against `base` for one metric where larger is worse.
pub fn compare_metric(
    metric: &'static str,
    unit: &'static str,
    statistic: Statistic,
    base: &[f64],
    candidate: &[f64],
    config: &CompareConfig,
) -> MetricComparison {
    let n = (base.len(), candidate.len());
    let (b, c) = match (Sample::new(base.to_vec()), Sample::new(candidate.to_vec())) {
        (Ok(b), Ok(c)) => (b, c),
        (Err(e), _) => return MetricComparison::not_tested(metric, unit, statistic, n, format!("base: {e}")),
        (_, Err(e)) => return MetricComparison::not_tested(metric, unit, statistic, n, format!("candidate: {e}")),
    };
    let change = bootstrap_relative_change(&b, &c, statistic, &config.summary);
    let test = mann_whitney_u(&c, &b);
    let significant = test.p_value < config.alpha;
    let pct = change.change_pct.point;
    let min_p = mann_whitney_min_p(b.len(), c.len());
    let verdict = if pct.is_nan() {
        Verdict::NotTested(format!("the base {} is zero", statistic.label()))
    } else if min_p >= config.alpha {
        Verdict::NotTested(format!(
            "{} against {} values cannot reach p < {} (at best p = {min_p:.3}); measure more repeats",
            n.0, n.1, config.alpha
        ))
    } else if significant && pct > config.threshold_pct {
        Verdict::Regressed
    } else if significant && pct < -config.threshold_pct {
        Verdict::Improved
    } else {
        Verdict::Unchanged
    };
    MetricComparison {
        metric,
        unit,
        statistic,
        n_base: n.0,
        n_candidate: n.1,
        base: change.base,
        candidate: change.candidate,
        change_pct: change.change_pct,
        p_value: test.p_value,
        verdict,
    }
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

/// Compares aggregated cells (the pure core of [`compare_runs`]). `variant_changed` names the
/// variants whose definition differs between the two scenarios.
pub fn compare_cells(
    base: &[CellStats],
    candidate: &[CellStats],
    variant_changed: &BTreeSet<String>,
    config: &CompareConfig,
) -> (Vec<CellComparison>, Vec<CellGroupKey>, Vec<CellGroupKey>) {
    let cand_by_key: BTreeMap<&CellGroupKey, &CellStats> = candidate.iter().map(|c| (&c.key, c)).collect();
    let base_keys: BTreeSet<&CellGroupKey> = base.iter().map(|c| &c.key).collect();
    let mut matched = Vec::new();
    let mut only_in_base = Vec::new();
    for b in base {
        let Some(c) = cand_by_key.get(&b.key) else {
            only_in_base.push(b.key.clone());
            continue;
        };
        let pooled = |s: &CellStats| s.latency_sample.as_ref().map(|s| s.sorted().to_vec()).unwrap_or_default();
        matched.push(CellComparison {
            key: b.key.clone(),
            latency: compare_metric("latency", "ms", Statistic::Median, &pooled(b), &pooled(c), config),
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

/// Refuses runs of different models: the scenario's model section, and the model each
/// board's agent reported loading, must agree.
fn check_same_model(base: &RunData, candidate: &RunData) -> Result<(), CompareError> {
    let (bm, cm) = (&base.scenario.model, &candidate.scenario.model);
    if bm != cm {
        return Err(CompareError::DifferentModels {
            detail: format!("base scenario model: {}; candidate: {}", describe_model(bm), describe_model(cm)),
        });
    }
    for (board, b) in &base.info.boards {
        if let (Some(bmodel), Some(cmodel)) =
            (&b.model, candidate.info.boards.get(board).and_then(|c| c.model.as_ref()))
        {
            if bmodel != cmodel {
                return Err(CompareError::DifferentModels {
                    detail: format!("board {board} loaded {bmodel} in the base run and {cmodel} in the candidate"),
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
    check_same_model(base, candidate)?;
    let variant_changed: BTreeSet<String> = base
        .scenario
        .variants
        .iter()
        .filter(|v| candidate.scenario.variant(&v.name).is_some_and(|c| c.kind != v.kind))
        .map(|v| v.name.clone())
        .collect();
    let b = aggregate_cells(&base.cells, &config.summary);
    let c = aggregate_cells(&candidate.cells, &config.summary);
    let (cells, only_in_base, only_in_candidate) = compare_cells(&b, &c, &variant_changed, config);
    if cells.is_empty() {
        return Err(CompareError::NothingMatches { base: base.dir.clone(), candidate: candidate.dir.clone() });
    }
    let mut selftest_failures = Vec::new();
    let mut selftest_failed_boards = Vec::new();
    for (board, info) in &candidate.info.boards {
        if let Some(st) = &info.selftest {
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
    // An interval from fewer than 3 values per side is too wide to mean anything: say so.
    let n = m.n_base.min(m.n_candidate);
    if n < 3 {
        return format!("{:+.2} % (n={n}: no interval)", e.point);
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

    /// The comparison as a Markdown table and lists.
    pub fn to_markdown(&self) -> String {
        let conf = self.config.summary.confidence * 100.0;
        let mut out = format!(
            "Comparison of {} (candidate) against {} (base): threshold {} %, alpha {}.\n\n",
            self.candidate_dir.display(),
            self.base_dir.display(),
            self.config.threshold_pct,
            self.config.alpha
        );
        let _ =
            writeln!(out, "| cell | metric | base | candidate | change ({conf:.0} % CI) | p | n base/cand | verdict |");
        out.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
        for c in &self.cells {
            for m in [&c.latency, &c.energy] {
                let verdict = match &m.verdict {
                    Verdict::NotTested(why) => format!("not tested: {why}"),
                    v => v.label().to_string(),
                };
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
                        Verdict::NotTested(why) => Some(why.clone()),
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
