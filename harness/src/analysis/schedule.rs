//! The RT3 schedule: which variant to run at each frequency level.
//!
//! RT3 assigns one pattern set per DVFS level: the most accurate one that still meets the
//! timing constraint at that frequency. Here "meets the deadline" means the **p99 latency
//! over every timed inference of every repeat** (pooled) is at most the deadline: a timing
//! constraint is about single inferences, and the median would let half of them miss it.
//! Among the variants that meet it, the most accurate is chosen when every one of them
//! carries an `accuracy` in the scenario; otherwise the least sparse (sparsity being the
//! accuracy proxy: pruning less loses less), ties broken by lower latency, then name.
//! With no deadline in the scenario every variant qualifies (and the least sparse, usually
//! dense, wins everywhere); the schedule says so.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::cells::CellStats;
use super::fmt_opt;
use crate::scenario::units::format_khz;
use crate::scenario::Scenario;
use crate::stats::Statistic;

/// How variants are judged against the deadline and ranked.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRule {
    /// `None`: no deadline, every variant qualifies.
    pub deadline_ms: Option<f64>,
    /// The latency statistic compared with the deadline (p99 by default, see the module docs).
    pub statistic: Statistic,
    /// Variant name -> accuracy, for the variants the scenario gives one.
    pub accuracy: BTreeMap<String, f64>,
}

impl ScheduleRule {
    pub fn from_scenario(scenario: &Scenario) -> Self {
        Self {
            deadline_ms: scenario.constraints.latency_deadline.map(|d| d.as_secs_f64() * 1e3),
            statistic: Statistic::P99,
            accuracy: scenario.variants.iter().filter_map(|v| v.accuracy.map(|a| (v.name.clone(), a))).collect(),
        }
    }

    /// One line for reports: what the rule is.
    pub fn describe(&self) -> String {
        let ranking = if self.accuracy.is_empty() {
            "the least sparse".to_string()
        } else {
            "the most accurate (least sparse when some qualifying variant has no accuracy)".to_string()
        };
        match self.deadline_ms {
            Some(d) => format!(
                "per level, among variants whose {} latency (all inferences of all repeats pooled) is at most the \
                 {d} ms deadline, {ranking}",
                self.statistic.label()
            ),
            None => format!("no latency deadline in the scenario: every variant qualifies; per level, {ranking}"),
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
}

/// Which candidates meet the deadline, which one is chosen, and a sentence saying why.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub chosen: Option<usize>,
    pub meeting: Vec<usize>,
    pub note: String,
}

/// Applies `rule` to the candidates of one level (see the module docs for the rule).
pub fn choose(candidates: &[Candidate], rule: &ScheduleRule, freq_khz: u64) -> Choice {
    let meets = |c: &Candidate| c.latency_ms.is_finite() && rule.deadline_ms.is_none_or(|d| c.latency_ms <= d);
    let meeting: Vec<usize> = (0..candidates.len()).filter(|i| meets(&candidates[*i])).collect();
    let by_sparsity = |a: &usize, b: &usize| {
        let (ca, cb) = (&candidates[*a], &candidates[*b]);
        ca.sparsity
            .total_cmp(&cb.sparsity)
            .then(ca.latency_ms.total_cmp(&cb.latency_ms))
            .then(ca.variant.cmp(&cb.variant))
    };
    let all_have_accuracy =
        !meeting.is_empty() && meeting.iter().all(|i| rule.accuracy.contains_key(&candidates[*i].variant));
    let chosen = if all_have_accuracy {
        meeting.iter().copied().min_by(|a, b| {
            let acc = |i: &usize| rule.accuracy[&candidates[*i].variant];
            acc(b).total_cmp(&acc(a)).then(by_sparsity(a, b))
        })
    } else {
        meeting.iter().copied().min_by(by_sparsity)
    };
    let stat = rule.statistic.label();
    let note = match (chosen, rule.deadline_ms) {
        (None, Some(d)) => {
            let fastest = candidates
                .iter()
                .filter(|c| c.latency_ms.is_finite())
                .min_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms));
            match fastest {
                Some(f) => format!(
                    "no variant meets the {d} ms deadline ({stat}) at {}; the fastest, {}, has {stat} {:.2} ms",
                    format_khz(freq_khz),
                    f.variant,
                    f.latency_ms
                ),
                None => format!("no variant has a latency measured at {}", format_khz(freq_khz)),
            }
        }
        (None, None) => format!("no variant has a latency measured at {}", format_khz(freq_khz)),
        (Some(i), _) => {
            let others = meeting.len() - 1;
            let why = if all_have_accuracy { "most accurate" } else { "least sparse" };
            match rule.deadline_ms {
                Some(d) => format!(
                    "{} of {} variants meet the {d} ms deadline ({stat}); {} is the {why}",
                    meeting.len(),
                    candidates.len(),
                    candidates[i].variant
                ),
                None if others == 0 => "no deadline: the only variant".into(),
                None => format!("no deadline: {} is the {why} of {}", candidates[i].variant, meeting.len()),
            }
        }
    };
    Choice { chosen, meeting, note }
}

/// The variant the schedule runs at a level, with its measured figures.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledVariant {
    pub variant: String,
    pub kind: String,
    pub sparsity: f64,
    pub accuracy: Option<f64>,
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
    /// `None`: nothing meets the deadline here ([`ScheduleLevel::note`] says so).
    pub selected: Option<ScheduledVariant>,
    /// Variants meeting the deadline at this level.
    pub meeting: Vec<String>,
    pub note: String,
}

/// The RT3 schedule of one board: one row per measured frequency, highest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Rt3Schedule {
    pub board: String,
    pub rule: ScheduleRule,
    pub levels: Vec<ScheduleLevel>,
}

impl Rt3Schedule {
    /// True when every level has a variant.
    pub fn is_complete(&self) -> bool {
        self.levels.iter().all(|l| l.selected.is_some())
    }

    /// The schedule as the paper would tabulate it (Markdown).
    pub fn to_markdown(&self) -> String {
        let stat = self.rule.statistic.label();
        let mut out = format!("RT3 schedule for board {}: {}.\n\n", self.board, self.rule.describe());
        let _ = writeln!(
            out,
            "| level | frequency | variant | sparsity | {stat} latency (ms) | median latency (ms) | energy/inference (mJ) | net energy/inference (mJ) | note |"
        );
        out.push_str("|---:|---:|---|---:|---:|---:|---:|---:|---|\n");
        for l in &self.levels {
            match &l.selected {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {:.3} | {:.2} | {:.2} | {} | {} | {} |",
                        l.level,
                        format_khz(l.freq_khz),
                        s.variant,
                        s.sparsity,
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
                        "| {} | {} | none | - | - | - | - | - | {} |",
                        l.level,
                        format_khz(l.freq_khz),
                        l.note
                    );
                }
            }
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
            let candidates: Vec<Candidate> = at_level
                .iter()
                .map(|c| Candidate {
                    variant: c.key.variant.clone(),
                    kind: c.variant_kind.clone(),
                    sparsity: c.sparsity,
                    latency_ms: c.latency_ms(rule.statistic),
                })
                .collect();
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
                        latency_ms: candidates[i].latency_ms,
                        latency_median_ms: c.latency_ms(Statistic::Median),
                        latency_mean_ms: c.latency_mean_ms,
                        energy_per_inference_mj: c.energy_mean_mj(),
                        net_energy_per_inference_mj: c.net_energy_mean_mj(),
                    }
                }),
                meeting: choice.meeting.iter().map(|i| candidates[*i].variant.clone()).collect(),
                note: choice.note,
            }
        })
        .collect();
    Rt3Schedule { board: board.to_string(), rule: rule.clone(), levels }
}
