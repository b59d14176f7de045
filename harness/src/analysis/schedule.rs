//! The RT3 schedule: which pattern set to run at each frequency level.
//!
//! RT3 switches among *pattern sets* (a block-pruned base plus one set of pattern masks),
//! one per DVFS level; dense and block-only are its baselines and are never scheduled. At
//! each level the schedule runs, among the scenario's pattern variants:
//! 1. only those that **meet the deadline**: the p99 latency over every timed inference of
//!    every repeat (pooled) is at most the deadline (a timing constraint is about single
//!    inferences; the median would let half of them miss it);
//! 2. only those whose measured output fidelity (cosine similarity to the dense model's
//!    output, `fidelity_cosine`) reaches the scenario's `min_fidelity` for that set, when it
//!    gives one (a set whose fidelity was not measured cannot show it does, and is left out);
//! 3. of those, the **most accurate** when every one carries the scenario's `accuracy` (task
//!    accuracy the user measured, as RT3 chose its pattern sets; it outranks a proxy); else the
//!    one with the **best output fidelity** when every one has it measured; else the **least
//!    sparse** (pruning less loses less). Ties: less sparse, then lower latency, then name.
//!
//! A level where no pattern set qualifies has no entry, says why, and marks the schedule
//! incomplete. With no deadline in the scenario every pattern set meets it; the rule says so.
//! A level whose choice hangs on noise says "close call": its chosen set meets the deadline by
//! at most 5 %, or a pattern set misses it by at most 5 % (a p99 moves that much between runs
//! on a busy host, and the choice with it).
//!
//! The same rule (deadline and fidelity floor, over every variant kind) decides which static
//! (frequency, variant) policies are eligible to be the *best static* one
//! ([`super::battery::project_board`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::cells::CellStats;
use super::fmt_opt;
use crate::scenario::units::format_khz;
use crate::scenario::{Deadline, Scenario};
use crate::stats::Statistic;

/// The variant kind RT3 schedules; every other kind is a baseline.
pub const PATTERN_KIND: &str = "pattern";

/// How variants are judged against the deadline and ranked.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRule {
    /// The scenario's deadline (`None`: no deadline, every variant qualifies).
    pub deadline: Option<Deadline>,
    /// The deadline in ms on this board: the scenario's fixed one, or a relative one resolved
    /// against the board's cells ([`ScheduleRule::for_board`]). `None` with a deadline set means
    /// it could not be resolved (its reference was not measured): then nothing meets it.
    pub deadline_ms: Option<f64>,
    /// The latency statistic compared with the deadline (p99 by default, see the module docs).
    pub statistic: Statistic,
    /// Variant name -> accuracy, for the variants the scenario gives one.
    pub accuracy: BTreeMap<String, f64>,
    /// Pattern set -> the least `fidelity_cosine` for it to be scheduled (scenario `min_fidelity`).
    pub min_fidelity: BTreeMap<String, f64>,
}

impl Default for ScheduleRule {
    fn default() -> Self {
        Self {
            deadline: None,
            deadline_ms: None,
            statistic: Statistic::P99,
            accuracy: BTreeMap::new(),
            min_fidelity: BTreeMap::new(),
        }
    }
}

impl ScheduleRule {
    pub fn from_scenario(scenario: &Scenario) -> Self {
        let deadline = scenario.constraints.latency_deadline.clone();
        Self {
            deadline_ms: deadline.as_ref().and_then(Deadline::fixed_ms),
            deadline,
            statistic: Statistic::P99,
            accuracy: scenario.variants.iter().filter_map(|v| v.accuracy.map(|a| (v.name.clone(), a))).collect(),
            min_fidelity: scenario
                .variants
                .iter()
                .filter_map(|v| v.min_fidelity.map(|f| (v.name.clone(), f)))
                .collect(),
        }
    }

    /// A fixed deadline in ms (`Some(d)`), a deadline given as a variant's latency.
    pub fn fixed(deadline_ms: Option<f64>) -> Self {
        Self {
            deadline: deadline_ms.map(|d| Deadline::Fixed(std::time::Duration::from_secs_f64(d / 1e3))),
            deadline_ms,
            ..Self::default()
        }
    }

    /// The rule on one board: a relative deadline (`1.3x dense`) becomes that factor times the
    /// reference variant's statistic at the highest frequency measured on the board.
    pub fn for_board(&self, cells: &[&CellStats]) -> Self {
        let mut rule = self.clone();
        if let Some(d @ Deadline::Relative { reference, .. }) = &self.deadline {
            let top = cells.iter().filter(|c| &c.key.variant == reference).map(|c| c.key.freq_khz).max();
            let reference_ms = cells
                .iter()
                .find(|c| Some(c.key.freq_khz) == top && &c.key.variant == reference)
                .map(|c| c.latency_ms(self.statistic));
            rule.deadline_ms = d.resolve_ms(reference_ms);
        }
        rule
    }

    /// How the deadline was set, for reports: `20 ms` or `1.3 x dense's p99 at 1500 MHz = 5.21 ms`.
    pub fn deadline_basis(&self) -> Option<String> {
        match (&self.deadline, self.deadline_ms) {
            (None, None) => None,
            (None, Some(ms)) | (Some(Deadline::Fixed(_)), Some(ms)) => Some(format!("{} ms", fmt_ms(ms))),
            (Some(Deadline::Relative { factor, reference }), Some(ms)) => Some(format!(
                "{} ms ({factor} x {reference}'s {} at the highest level measured)",
                fmt_ms(ms),
                self.statistic.label()
            )),
            (Some(d), None) => Some(format!("{} (unresolved: its reference was not measured)", d.describe())),
        }
    }

    /// Whether a latency (the rule's statistic, ms) meets the deadline; a missing one never does,
    /// nor does any when a relative deadline could not be resolved.
    pub fn meets_deadline(&self, latency_ms: f64) -> bool {
        if self.deadline.is_some() && self.deadline_ms.is_none() {
            return false;
        }
        latency_ms.is_finite() && self.deadline_ms.is_none_or(|d| latency_ms <= d)
    }

    /// `Err(why)` when `variant` has a `min_fidelity` its measured cosine does not reach (or
    /// that cannot be checked because fidelity was not measured).
    pub fn fidelity_floor(&self, variant: &str, fidelity_cosine: Option<f64>) -> Result<(), String> {
        let Some(&min) = self.min_fidelity.get(variant) else { return Ok(()) };
        match fidelity_cosine.filter(|f| f.is_finite()) {
            Some(f) if f >= min => Ok(()),
            Some(f) => Err(format!("{variant}: fidelity (cosine) {f:.4} below its min_fidelity {min}")),
            None => Err(format!("{variant}: fidelity not measured, so its min_fidelity {min} cannot be checked")),
        }
    }

    /// One line for reports: what the rule is.
    pub fn describe(&self) -> String {
        let floor = if self.min_fidelity.is_empty() {
            String::new()
        } else {
            format!(
                " and reaching its min_fidelity ({})",
                self.min_fidelity.iter().map(|(v, f)| format!("{v} {f}")).collect::<Vec<_>>().join(", ")
            )
        };
        let ranking = "the most accurate when the scenario gives every one an accuracy, else the one with the best \
                       output fidelity (cosine to dense) when measured for all of them, else the least sparse";
        let qualifying = match self.deadline_ms {
            Some(_) => format!(
                "per level, among the pattern sets (dense and block are baselines, never scheduled) whose {} latency \
                 (all inferences of all repeats pooled) is at most the deadline of {}{floor}",
                self.statistic.label(),
                self.deadline_basis().unwrap_or_default()
            ),
            None if self.deadline.is_some() => format!(
                "the deadline {} could not be resolved, so no pattern set meets it{floor}",
                self.deadline_basis().unwrap_or_default()
            ),
            None => format!(
                "no latency deadline in the scenario, so every pattern set meets it; per level, among the pattern sets \
                 (dense and block are baselines, never scheduled){floor}"
            ),
        };
        format!("{qualifying}, {ranking}")
    }
}

/// What decided among the qualifying pattern sets at a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranking {
    /// The scenario's `accuracy`, highest first.
    Accuracy,
    /// Measured output fidelity (cosine to dense), highest first.
    Fidelity,
    /// Neither known for every candidate: the least sparse.
    LeastSparse,
}

impl Ranking {
    pub fn label(self) -> &'static str {
        match self {
            Ranking::Fidelity => "best fidelity",
            Ranking::Accuracy => "most accurate",
            Ranking::LeastSparse => "least sparse",
        }
    }
}

/// A variant at one level, as the chooser sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub variant: String,
    pub kind: String,
    pub sparsity: f64,
    /// The rule's statistic, ms.
    pub latency_ms: f64,
    /// Measured cosine similarity to the dense model's output, when measured.
    pub fidelity: Option<f64>,
}

impl Candidate {
    pub fn from_cell(c: &CellStats, rule: &ScheduleRule) -> Self {
        Self {
            variant: c.key.variant.clone(),
            kind: c.variant_kind.clone(),
            sparsity: c.sparsity,
            latency_ms: c.latency_ms(rule.statistic),
            fidelity: c.fidelity_cosine.filter(|f| f.is_finite()),
        }
    }

    fn is_pattern(&self) -> bool {
        self.kind == PATTERN_KIND
    }
}

/// Which pattern sets meet the deadline, which were excluded by their fidelity floor, which
/// one is chosen, and a sentence saying why.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub chosen: Option<usize>,
    /// Pattern sets meeting the deadline (indices into the candidates), fidelity floor aside.
    pub meeting: Vec<usize>,
    /// Pattern sets meeting the deadline but below (or unable to show) their `min_fidelity`.
    pub excluded: Vec<(usize, String)>,
    /// What ranked the qualifying sets (`None` when none qualified).
    pub ranking: Option<Ranking>,
    pub note: String,
}

/// Applies `rule` to the candidates of one level (see the module docs for the rule). Only
/// pattern sets are scheduled; other candidates are ignored.
pub fn choose(candidates: &[Candidate], rule: &ScheduleRule, freq_khz: u64) -> Choice {
    let patterns: Vec<usize> = (0..candidates.len()).filter(|i| candidates[*i].is_pattern()).collect();
    let meeting: Vec<usize> =
        patterns.iter().copied().filter(|i| rule.meets_deadline(candidates[*i].latency_ms)).collect();
    let mut excluded = Vec::new();
    let mut eligible = Vec::new();
    for &i in &meeting {
        match rule.fidelity_floor(&candidates[i].variant, candidates[i].fidelity) {
            Ok(()) => eligible.push(i),
            Err(why) => excluded.push((i, why)),
        }
    }
    let ranking = if eligible.is_empty() {
        None
    } else if eligible.iter().all(|i| rule.accuracy.contains_key(&candidates[*i].variant)) {
        Some(Ranking::Accuracy)
    } else if eligible.iter().all(|i| candidates[*i].fidelity.is_some()) {
        Some(Ranking::Fidelity)
    } else {
        Some(Ranking::LeastSparse)
    };
    let score = |i: usize| -> f64 {
        match ranking {
            Some(Ranking::Fidelity) => candidates[i].fidelity.unwrap_or(f64::NEG_INFINITY),
            Some(Ranking::Accuracy) => rule.accuracy.get(&candidates[i].variant).copied().unwrap_or(f64::NEG_INFINITY),
            _ => 0.0,
        }
    };
    let chosen = eligible.iter().copied().min_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        score(b)
            .total_cmp(&score(a))
            .then(ca.sparsity.total_cmp(&cb.sparsity))
            .then(ca.latency_ms.total_cmp(&cb.latency_ms))
            .then(ca.variant.cmp(&cb.variant))
    });
    let mut note = choice_note(candidates, rule, freq_khz, &patterns, &meeting, &excluded, chosen, ranking);
    if let Some(close) = close_call(candidates, rule, &patterns, chosen) {
        note.push_str("; ");
        note.push_str(&close);
    }
    Choice { chosen, meeting, excluded, ranking, note }
}

/// How near the deadline a pattern set's statistic may be for the choice to count as a close
/// call: run-to-run noise on a busy host moves a p99 by a few per cent.
pub const CLOSE_CALL: f64 = 0.05;

/// A sentence when the level's choice hangs on noise: the chosen set meets the deadline by at
/// most [`CLOSE_CALL`], or some pattern set misses it by at most that (and might be chosen in a
/// run where it meets it).
fn close_call(
    candidates: &[Candidate],
    rule: &ScheduleRule,
    patterns: &[usize],
    chosen: Option<usize>,
) -> Option<String> {
    let d = rule.deadline_ms?;
    let near = |c: &Candidate| c.latency_ms.is_finite() && (c.latency_ms - d).abs() <= CLOSE_CALL * d;
    let close: Vec<&Candidate> = patterns
        .iter()
        .filter(|&&i| Some(i) == chosen || !rule.meets_deadline(candidates[i].latency_ms))
        .map(|&i| &candidates[i])
        .filter(|c| near(c))
        .collect();
    if close.is_empty() {
        return None;
    }
    Some(format!(
        "close call: {} within {:.0} % of the {} ms deadline, so another run may choose differently",
        close
            .iter()
            .map(|c| format!("{} {} {:.2} ms", c.variant, rule.statistic.label(), c.latency_ms))
            .collect::<Vec<_>>()
            .join(", "),
        CLOSE_CALL * 100.0,
        fmt_ms(d)
    ))
}

#[allow(clippy::too_many_arguments)]
fn choice_note(
    candidates: &[Candidate],
    rule: &ScheduleRule,
    freq_khz: u64,
    patterns: &[usize],
    meeting: &[usize],
    excluded: &[(usize, String)],
    chosen: Option<usize>,
    ranking: Option<Ranking>,
) -> String {
    let stat = rule.statistic.label();
    let at = format_khz(freq_khz);
    let excluded_text = || excluded.iter().map(|(_, why)| why.clone()).collect::<Vec<_>>().join("; ");
    if patterns.is_empty() {
        return format!(
            "no pattern set measured at {at}: RT3 schedules pattern sets only (dense and block are baselines)"
        );
    }
    match (chosen, rule.deadline_ms) {
        (Some(i), deadline) => {
            let c = &candidates[i];
            let why = match ranking {
                Some(Ranking::Fidelity) => {
                    format!("has the best fidelity (cosine {:.4})", c.fidelity.unwrap_or(f64::NAN))
                }
                Some(Ranking::Accuracy) => {
                    format!("is the most accurate ({})", fmt_opt(rule.accuracy.get(&c.variant).copied(), 4))
                }
                _ => "is the least sparse (fidelity and accuracy not known for every one)".to_string(),
            };
            let head = match deadline {
                Some(d) => format!(
                    "{} of {} pattern sets meet the {} ms deadline ({stat}) at {at}; {} {why}",
                    meeting.len(),
                    patterns.len(),
                    fmt_ms(d),
                    c.variant
                ),
                None => format!("no deadline: {} {why} of {} pattern sets", c.variant, patterns.len()),
            };
            if excluded.is_empty() {
                head
            } else {
                format!("{head}; left out by min_fidelity: {}", excluded_text())
            }
        }
        (None, _) if !meeting.is_empty() => format!(
            "{} pattern set(s) meet the deadline at {at} but none reaches its min_fidelity: {}",
            meeting.len(),
            excluded_text()
        ),
        (None, Some(d)) => {
            let fastest = patterns
                .iter()
                .map(|i| &candidates[*i])
                .filter(|c| c.latency_ms.is_finite())
                .min_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms));
            match fastest {
                Some(f) => format!(
                    "no pattern set meets the {} ms deadline ({stat}) at {at}; the fastest, {}, has {stat} {:.2} ms",
                    fmt_ms(d),
                    f.variant,
                    f.latency_ms
                ),
                None => format!("no pattern set has a latency measured at {at}"),
            }
        }
        (None, None) if rule.deadline.is_some() => {
            format!("no pattern set can meet the deadline at {at}: {}", rule.deadline_basis().unwrap_or_default())
        }
        (None, None) => format!("no pattern set has a latency measured at {at}"),
    }
}

/// A deadline in ms as reports print it: whole numbers bare, others to 0.01 ms.
pub fn fmt_ms(ms: f64) -> String {
    if ms.fract() == 0.0 {
        format!("{ms}")
    } else {
        format!("{ms:.2}")
    }
}

/// The pattern set the schedule runs at a level, with its measured figures.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledVariant {
    pub variant: String,
    pub kind: String,
    pub sparsity: f64,
    pub accuracy: Option<f64>,
    /// Cosine similarity and relative L2 error of its output to dense's, and what they measure.
    pub fidelity_cosine: Option<f64>,
    pub fidelity_rel_l2: Option<f64>,
    pub fidelity_kind: Option<String>,
    /// The rule's statistic (p99 by default), ms.
    pub latency_ms: f64,
    pub latency_median_ms: f64,
    pub latency_mean_ms: f64,
    /// Gross energy per inference, mean over repeats (mJ).
    pub energy_per_inference_mj: Option<f64>,
    pub net_energy_per_inference_mj: Option<f64>,
}

/// One row of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleLevel {
    pub level: u32,
    pub freq_khz: u64,
    /// `None`: no pattern set qualifies here ([`ScheduleLevel::note`] says why).
    pub selected: Option<ScheduledVariant>,
    /// Pattern sets meeting the deadline at this level (fidelity floor aside).
    pub meeting: Vec<String>,
    /// Pattern sets meeting the deadline but left out by their `min_fidelity`, with why.
    pub excluded: Vec<String>,
    /// Pattern sets measured at this level.
    pub pattern_sets: usize,
    pub ranking: Option<Ranking>,
    pub note: String,
    /// Repeats at this level (over all its variants) whose frequency the board did not read
    /// back as pinned (`freq_verified` false), and all repeats at this level.
    pub unverified_repeats: usize,
    pub repeats: usize,
}

/// The RT3 schedule of one board: one row per measured frequency, highest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Rt3Schedule {
    pub board: String,
    pub rule: ScheduleRule,
    pub levels: Vec<ScheduleLevel>,
}

impl Rt3Schedule {
    /// True when every level has a pattern set (and there is at least one level).
    pub fn is_complete(&self) -> bool {
        !self.levels.is_empty() && self.levels.iter().all(|l| l.selected.is_some())
    }

    /// The levels without a pattern set.
    pub fn missing_levels(&self) -> Vec<&ScheduleLevel> {
        self.levels.iter().filter(|l| l.selected.is_none()).collect()
    }

    /// A plain sentence when the schedule is incomplete, naming the levels and why.
    pub fn incomplete_note(&self) -> Option<String> {
        if self.levels.is_empty() {
            return Some(format!("INCOMPLETE: board {} has no measured level to schedule.", self.board));
        }
        let missing = self.missing_levels();
        if missing.is_empty() {
            return None;
        }
        Some(format!(
            "INCOMPLETE schedule on board {}: {}.",
            self.board,
            missing.iter().map(|l| l.note.clone()).collect::<Vec<_>>().join("; ")
        ))
    }

    /// The levels where some repeat's frequency was not verified.
    pub fn unverified_levels(&self) -> Vec<&ScheduleLevel> {
        self.levels.iter().filter(|l| l.unverified_repeats > 0).collect()
    }

    /// A plain sentence when some level's frequency was not verified: its figures (and the
    /// schedule's choice there) may describe another frequency.
    pub fn unverified_note(&self) -> Option<String> {
        let levels = self.unverified_levels();
        if levels.is_empty() {
            return None;
        }
        Some(format!(
            "UNVERIFIED frequency on board {} at {}: the board did not read back the pinned frequency in {} of {} \
             repeats there, so those levels' figures (and the schedule's choice) may describe another frequency (see \
             freq_verified and cur_freq_khz in cells.parquet).",
            self.board,
            levels.iter().map(|l| format_khz(l.freq_khz)).collect::<Vec<_>>().join(", "),
            levels.iter().map(|l| l.unverified_repeats).sum::<usize>(),
            levels.iter().map(|l| l.repeats).sum::<usize>()
        ))
    }

    /// The schedule as the paper would tabulate it (Markdown).
    pub fn to_markdown(&self) -> String {
        let stat = self.rule.statistic.label();
        let mut out = format!("RT3 schedule for board {}: {}.\n\n", self.board, self.rule.describe());
        let _ = writeln!(
            out,
            "| level | frequency | pattern set | sparsity | fidelity (cosine) | {stat} latency (ms) | median latency (ms) | energy/inference (mJ) | net energy/inference (mJ) | note |"
        );
        out.push_str("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|\n");
        for l in &self.levels {
            match &l.selected {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {:.3} | {} | {:.2} | {:.2} | {} | {} | {} |",
                        l.level,
                        format_khz(l.freq_khz),
                        s.variant,
                        s.sparsity,
                        fmt_opt(s.fidelity_cosine, 4),
                        s.latency_ms,
                        s.latency_median_ms,
                        fmt_opt(s.energy_per_inference_mj, 2),
                        fmt_opt(s.net_energy_per_inference_mj, 2),
                        l.note
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | none | - | - | - | - | - | - | {} |",
                        l.level,
                        format_khz(l.freq_khz),
                        l.note
                    );
                }
            }
        }
        for n in [self.incomplete_note(), self.unverified_note()].into_iter().flatten() {
            let _ = writeln!(out, "\n{n}");
        }
        out
    }
}

/// The RT3 schedule of one board from its aggregated cells (any order; other boards' cells
/// are ignored).
pub fn rt3_schedule(board: &str, cells: &[&CellStats], rule: &ScheduleRule) -> Rt3Schedule {
    let mut freqs: Vec<(u64, u32)> =
        cells.iter().filter(|c| c.key.board == board).map(|c| (c.key.freq_khz, c.level)).collect();
    freqs.sort_by_key(|f| std::cmp::Reverse(f.0));
    freqs.dedup_by_key(|f| f.0);
    let levels = freqs
        .into_iter()
        .map(|(freq_khz, level)| {
            let at_level: Vec<&CellStats> =
                cells.iter().copied().filter(|c| c.key.board == board && c.key.freq_khz == freq_khz).collect();
            let candidates: Vec<Candidate> = at_level.iter().map(|c| Candidate::from_cell(c, rule)).collect();
            let choice = choose(&candidates, rule, freq_khz);
            ScheduleLevel {
                level,
                freq_khz,
                selected: choice.chosen.map(|i| {
                    let c = at_level[i];
                    ScheduledVariant {
                        variant: c.key.variant.clone(),
                        kind: c.variant_kind.clone(),
                        sparsity: c.sparsity,
                        accuracy: rule.accuracy.get(&c.key.variant).copied(),
                        fidelity_cosine: c.fidelity_cosine,
                        fidelity_rel_l2: c.fidelity_rel_l2,
                        fidelity_kind: c.fidelity_kind.clone(),
                        latency_ms: candidates[i].latency_ms,
                        latency_median_ms: c.latency_ms(Statistic::Median),
                        latency_mean_ms: c.latency_mean_ms,
                        energy_per_inference_mj: c.energy_mean_mj(),
                        net_energy_per_inference_mj: c.net_energy_mean_mj(),
                    }
                }),
                meeting: choice.meeting.iter().map(|i| candidates[*i].variant.clone()).collect(),
                excluded: choice.excluded.iter().map(|(_, why)| why.clone()).collect(),
                pattern_sets: candidates.iter().filter(|c| c.is_pattern()).count(),
                ranking: choice.ranking,
                note: choice.note,
                unverified_repeats: at_level.iter().map(|c| c.unverified_freq_repeats).sum(),
                repeats: at_level.iter().map(|c| c.repeats).sum(),
            }
        })
        .collect();
    Rt3Schedule { board: board.to_string(), rule: rule.clone(), levels }
}
