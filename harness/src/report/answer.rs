//! The report's first section: per board, does the RT3 schedule beat dense and block at the
//! top frequency, and by how much; which pattern set runs at each level and whether it met
//! the deadline; the best static policy beside it; what switching costs against RT3's 45 ms.
//!
//! One table per board says it all (the policies, then the schedule's levels under its row);
//! a sentence above it gives the verdict in words and a short list below it the facts a
//! reader needs to trust it (incomplete levels, how sets were ranked, memory per strategy).

use super::content::{board_simulated, human_us, num, Ctx};
use super::document::{Align, BannerKind, Block, Document, Table};
use crate::analysis::battery::describe_workload;
use crate::analysis::{
    BatteryTable, PolicyKind, PolicyRow, ProjectionSource, Ranking, Rt3Schedule, SwitchCost, RT3_SWITCH_BUDGET_MS,
};
use crate::scenario::units::format_khz;

/// `1234567.8` -> `1,234,568`: inferences per charge are read, not parsed.
pub(crate) fn count(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v >= 0.0 => {
            let digits = format!("{:.0}", v);
            let mut out = String::with_capacity(digits.len() + digits.len() / 3);
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        _ => "-".into(),
    }
}

/// Bytes in MB (10^6), one decimal.
pub(crate) fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `x1.23` for a gain, `-` when missing.
fn gain(v: Option<f64>) -> String {
    match v {
        Some(g) if g.is_finite() => format!("×{g:.2}"),
        _ => "-".into(),
    }
}

fn within(total_ms: f64) -> &'static str {
    if total_ms <= RT3_SWITCH_BUDGET_MS {
        "within 45 ms"
    } else {
        "OVER 45 ms"
    }
}

/// Hot switch of one set: `0.8 µs (first inference -4.73 ms)`.
pub(crate) fn hot_text(c: Option<&SwitchCost>) -> String {
    let Some(c) = c else { return "not measured".into() };
    match c.hot_switch_us {
        Some(us) => {
            let penalty = match c.hot_first_inference_penalty_ms {
                Some(p) => format!(" (first inference {p:+.2} ms)"),
                None => String::new(),
            };
            format!("{}{penalty}", human_us(us))
        }
        None => "not measured".into(),
    }
}

/// Cold switch of one set against RT3's budget: `220.23 ms + 4.23 ms first inference: OVER 45 ms`.
pub(crate) fn cold_text(c: Option<&SwitchCost>) -> String {
    let Some(c) = c else { return "not measured".into() };
    match (c.cold_switch_ms, c.cold_total_ms()) {
        (Some(ms), Some(total)) => {
            let penalty = match c.cold_penalty_ms() {
                Some(p) => format!(" (first inference {p:+.2} ms)"),
                None => " (first inference not measured)".into(),
            };
            format!("{ms:.2} ms{penalty}: {}", within(total))
        }
        _ => "not measured".into(),
    }
}

/// The answer section: one sub-section per board with a schedule.
pub(super) fn answer_section(ctx: &Ctx, doc: &mut Document) {
    if ctx.analysis.cells.is_empty() {
        return;
    }
    doc.heading(2, "Answer: the RT3 schedule against dense and block");
    let deadline = match &ctx.run.scenario.constraints.latency_deadline {
        Some(d @ crate::scenario::Deadline::Fixed(_)) => {
            format!("the {} latency deadline (on the p99 latency)", d.describe())
        }
        Some(d) => format!(
            "a latency deadline of {} (on the p99 latency; its value per board is in each table's heading)",
            d.explain()
        ),
        None => "no latency deadline (the scenario sets none, so everything meets it)".into(),
    };
    doc.paragraph(format!(
        "Per board: the RT3 schedule (one pattern set per DVFS level, switched as the battery drains; dense and block \
         are baselines and never scheduled) and the best static policy (one level, one variant of any kind) against \
         dense and block at the top frequency, with {deadline}. Battery hours and inferences per charge are projected \
         from the measured energy per inference and latency; × is the ratio of inferences per charge. Under the \
         schedule's row, each level with its share of the battery, the pattern set run there and whether it met the \
         deadline. Switch costs are measured on the board against RT3's {RT3_SWITCH_BUDGET_MS} ms."
    ));
    for board in &ctx.boards {
        let Some(schedule) = ctx.analysis.schedules.iter().find(|s| &s.board == board) else { continue };
        let measured =
            ctx.analysis.battery.iter().find(|t| &t.board == board && t.source == ProjectionSource::Measured);
        let model = ctx.analysis.battery.iter().find(|t| &t.board == board && t.source == ProjectionSource::Rt3Model);
        answer_board(ctx, board, schedule, measured, model, doc);
    }
}

fn answer_board(
    ctx: &Ctx,
    board: &str,
    schedule: &Rt3Schedule,
    measured: Option<&BatteryTable>,
    model: Option<&BatteryTable>,
    doc: &mut Document,
) {
    let simulated = board_simulated(ctx.run, board);
    doc.heading(3, format!("Board {board}{}", if simulated { " (SIMULATED)" } else { "" }));
    if simulated {
        doc.blocks.push(Block::Banner {
            kind: BannerKind::Warning,
            title: "SIMULATED".into(),
            lines: vec![format!(
                "Board {board} is simulated: these figures describe this host and the simulator's power model, not \
                 ARM hardware."
            )],
        });
    }
    let row = |kind: PolicyKind| measured.and_then(|t| t.row(kind));
    doc.paragraph(verdict(schedule, row(PolicyKind::Rt3Schedule), row(PolicyKind::BestStatic)));
    doc.table(answer_table(ctx, board, schedule, measured));
    doc.list(answer_notes(ctx, board, schedule, measured, model));
}

/// The verdict in one or two sentences.
fn verdict(schedule: &Rt3Schedule, rt3: Option<&PolicyRow>, best: Option<&PolicyRow>) -> String {
    let mut out = match rt3.map(|r| (r, &r.outcome)) {
        Some((r, Ok(p))) => {
            let against = |g: Option<f64>, what: &str| match g {
                Some(g) if g.is_finite() && g > 1.0 => format!("×{g:.2} {what} (more inferences per charge)"),
                Some(g) if g.is_finite() => format!("×{g:.2} {what} (does not beat it)"),
                _ => format!("no comparison with {what} (not projected)"),
            };
            format!(
                "RT3 schedule{}: {:.2} h and {} inferences per charge: {}, {}.",
                if r.complete { "" } else { " (INCOMPLETE)" },
                p.hours,
                count(Some(p.inferences)),
                against(r.gain_vs_dense_top, "dense at the top frequency"),
                against(r.gain_vs_block_top, "block at the top frequency"),
            )
        }
        Some((_, Err(e))) => format!("RT3 schedule not projected: {e}."),
        None => "RT3 schedule not projected (no battery projection for this board).".into(),
    };
    for n in [schedule.incomplete_note(), schedule.unverified_note()].into_iter().flatten() {
        out.push(' ');
        out.push_str(&n);
    }
    match best.map(|b| (b, &b.outcome)) {
        Some((b, Ok(p))) => {
            let vs_rt3 = rt3.and_then(|r| r.outcome.as_ref().ok()).filter(|r| r.inferences > 0.0).map(|r| {
                let ratio = r.inferences / p.inferences;
                format!("; the RT3 schedule gets {ratio:.2}× the best static policy's inferences per charge")
            });
            out.push_str(&format!(
                " Best static policy: {} at {:.2} h, {} dense at top, {} block at top{}.",
                b.variant
                    .as_ref()
                    .zip(b.freq_khz)
                    .map(|(v, f)| format!("{v}@{}", format_khz(f)))
                    .unwrap_or_else(|| b.name.clone()),
                p.hours,
                gain(b.gain_vs_dense_top),
                gain(b.gain_vs_block_top),
                vs_rt3.unwrap_or_default()
            ));
        }
        Some((_, Err(e))) => out.push_str(&format!(" Best static policy: none ({e}).")),
        None => {}
    }
    out
}

/// The deadline column for a single-point row.
fn point_deadline(ctx: &Ctx, board: &str, r: &PolicyRow, stat: crate::stats::Statistic) -> String {
    let latency = ctx
        .analysis
        .cells
        .iter()
        .find(|c| {
            c.key.board == board && Some(c.key.freq_khz) == r.freq_khz && r.variant.as_deref() == Some(&c.key.variant)
        })
        .map(|c| c.latency_ms(stat));
    let lat = latency.filter(|l| l.is_finite()).map(|l| format!(" ({} {l:.2} ms)", stat.label())).unwrap_or_default();
    match r.meets_deadline {
        Some(true) => format!("met{lat}"),
        Some(false) => format!("MISSED{lat}"),
        None => "-".into(),
    }
}

fn answer_table(ctx: &Ctx, board: &str, schedule: &Rt3Schedule, measured: Option<&BatteryTable>) -> Table {
    let stat = schedule.rule.statistic;
    let deadline_title = match schedule.rule.deadline_ms {
        Some(d) => format!("deadline ({} ≤ {} ms)", stat.label(), crate::analysis::schedule::fmt_ms(d)),
        None => "deadline (none set)".into(),
    };
    let mut t = Table::new(&[
        ("policy", Align::Left),
        ("runs", Align::Left),
        (deadline_title.as_str(), Align::Left),
        ("battery hours", Align::Right),
        ("inferences per charge", Align::Right),
        ("× dense at top", Align::Right),
        ("× block at top", Align::Right),
        ("hot switch (prepacked set)", Align::Left),
        ("cold switch (packed from definitions) vs RT3's 45 ms", Align::Left),
    ]);
    let switches = &ctx.run.switches;
    let outcome_cells = |r: &PolicyRow| -> [String; 4] {
        match &r.outcome {
            Ok(p) => {
                [num(Some(p.hours), 2), count(Some(p.inferences)), gain(r.gain_vs_dense_top), gain(r.gain_vs_block_top)]
            }
            Err(e) => [format!("not projected: {e}"), "-".into(), "-".into(), "-".into()],
        }
    };
    let rows = |kind: PolicyKind| measured.map(|m| m.rows.iter().filter(move |r| r.kind == kind)).into_iter().flatten();

    // The RT3 schedule, then its levels.
    let rt3 = rows(PolicyKind::Rt3Schedule).next();
    let plan: Vec<String> = schedule
        .levels
        .iter()
        .map(|l| l.selected.as_ref().map(|s| s.variant.clone()).unwrap_or_else(|| "none".into()))
        .collect();
    let scheduled: Vec<&str> =
        schedule.levels.iter().filter_map(|l| l.selected.as_ref()).map(|s| s.variant.as_str()).collect();
    let costs: Vec<&SwitchCost> = scheduled.iter().filter_map(|v| switches.get(board, v)).collect();
    let (hot_summary, cold_summary) = if scheduled.is_empty() {
        ("-".to_string(), "-".to_string())
    } else if costs.is_empty() {
        ("not measured".to_string(), "not measured".to_string())
    } else {
        let worst_hot = costs
            .iter()
            .filter(|c| c.hot_switch_us.is_some())
            .max_by(|a, b| a.hot_total_ms().unwrap_or(0.0).total_cmp(&b.hot_total_ms().unwrap_or(0.0)));
        let worst_cold = costs
            .iter()
            .filter(|c| c.cold_total_ms().is_some())
            .max_by(|a, b| a.cold_total_ms().unwrap_or(0.0).total_cmp(&b.cold_total_ms().unwrap_or(0.0)));
        let partial = if costs.len() < scheduled.len() { " (some sets not measured)" } else { "" };
        (
            worst_hot
                .map_or("not measured".into(), |c| format!("slowest, {}: {}{partial}", c.variant, hot_text(Some(c)))),
            worst_cold
                .map_or("not measured".into(), |c| format!("slowest, {}: {}{partial}", c.variant, cold_text(Some(c)))),
        )
    };
    let rt3_deadline = if schedule.is_complete() {
        "met at every level".to_string()
    } else {
        let missing: Vec<String> = schedule.missing_levels().iter().map(|l| format_khz(l.freq_khz)).collect();
        format!("INCOMPLETE: no pattern set qualifies at {}", missing.join(", "))
    };
    let mut row = vec!["RT3 schedule".to_string(), plan.join(" → "), rt3_deadline];
    match rt3 {
        Some(r) => row.extend(outcome_cells(r)),
        None => row.extend(["not projected".to_string(), "-".into(), "-".into(), "-".into()]),
    }
    row.extend([hot_summary, cold_summary]);
    t.push(row);
    for l in &schedule.levels {
        let share = rt3.and_then(|r| r.levels.iter().find(|s| s.freq_khz == l.freq_khz));
        let label = format!(
            "↳ level {}: {}{}{}",
            l.level,
            format_khz(l.freq_khz),
            share.map(|s| format!(", {:.0} % of the battery", s.share * 100.0)).unwrap_or_default(),
            if l.unverified_repeats > 0 { " (frequency UNVERIFIED)" } else { "" }
        );
        let (hours, inferences) = match share.map(|s| &s.outcome) {
            Some(Ok(p)) => (num(Some(p.hours), 2), count(Some(p.inferences))),
            Some(Err(_)) => ("not counted".into(), "not counted".into()),
            None => ("-".into(), "-".into()),
        };
        match &l.selected {
            Some(s) => {
                let mut what = format!("{} (sparsity {:.3}", s.variant, s.sparsity);
                if let Some(f) = s.fidelity_cosine {
                    what.push_str(&format!(", cosine {f:.4}"));
                }
                if let Some(a) = s.accuracy {
                    what.push_str(&format!(", accuracy {a:.4}"));
                }
                what.push(')');
                let c = switches.get(board, &s.variant);
                t.push(vec![
                    label,
                    what,
                    format!("met ({} {:.2} ms)", stat.label(), s.latency_ms),
                    hours,
                    inferences,
                    "-".into(),
                    "-".into(),
                    hot_text(c),
                    cold_text(c),
                ]);
            }
            None => t.push(vec![
                label,
                "none".into(),
                l.note.clone(),
                hours,
                inferences,
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    // The best static policy and the baselines.
    for (kind, label) in [
        (PolicyKind::BestStatic, "best static"),
        (PolicyKind::DenseAtTop, "dense at top"),
        (PolicyKind::BlockAtTop, "block at top"),
    ] {
        let Some(r) = rows(kind).next() else {
            if kind != PolicyKind::BestStatic {
                t.push(vec![
                    label.into(),
                    "not measured".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
            }
            continue;
        };
        let runs = r
            .variant
            .as_ref()
            .zip(r.freq_khz)
            .map(|(v, f)| format!("{v}@{}", format_khz(f)))
            .unwrap_or_else(|| "none".into());
        let mut row = vec![label.to_string(), runs, point_deadline(ctx, board, r, stat)];
        row.extend(outcome_cells(r));
        row.extend(["- (never switches)".to_string(), "- (never switches)".into()]);
        t.push(row);
    }
    t
}

fn answer_notes(
    ctx: &Ctx,
    board: &str,
    schedule: &Rt3Schedule,
    measured: Option<&BatteryTable>,
    model: Option<&BatteryTable>,
) -> Vec<String> {
    let mut notes = Vec::new();
    if !schedule.is_complete() {
        let missing: Vec<String> = schedule.missing_levels().iter().map(|l| format_khz(l.freq_khz)).collect();
        notes.push(format!(
            "Incomplete schedule: no pattern set qualifies at {}; its projection counts only the levels that have \
             one (the shares of the battery meant for the others are not spent).",
            if missing.is_empty() { "any level".to_string() } else { missing.join(", ") }
        ));
    }
    let selected: Vec<_> = schedule.levels.iter().filter_map(|l| l.selected.as_ref().map(|s| (l, s))).collect();
    let mut sets: Vec<&str> = selected.iter().map(|(_, s)| s.variant.as_str()).collect();
    sets.sort_unstable();
    sets.dedup();
    if sets.len() == 1 && schedule.levels.len() > 1 {
        notes.push(format!(
            "The schedule runs {} at every level it fills: it never switches pattern sets, so it only changes the \
             frequency as the battery drains.",
            sets[0]
        ));
    }
    let rankings: Vec<Ranking> = schedule.levels.iter().filter_map(|l| l.ranking).collect();
    if rankings.contains(&Ranking::Accuracy) {
        notes.push(
            "Pattern sets were ranked by the accuracy the scenario gives them (it outranks measured fidelity).".into(),
        );
    }
    if rankings.contains(&Ranking::Fidelity) {
        let kind = selected.iter().find_map(|(_, s)| s.fidelity_kind.clone()).unwrap_or_else(|| "unlabelled".into());
        let caveat = if kind.contains("perturbation") {
            ": with synthetic weights it measures how far pruning moves the output, not task accuracy"
        } else {
            ""
        };
        notes.push(format!(
            "Pattern sets were ranked by output fidelity, the cosine similarity of their final hidden states to the \
             dense model's over the seeded inputs, measured on the board ({kind}{caveat})."
        ));
    }
    if rankings.contains(&Ranking::LeastSparse) {
        notes.push(
            "Neither fidelity nor accuracy was known for every qualifying pattern set: the least sparse was run."
                .into(),
        );
    }
    let excluded: Vec<&String> = schedule.levels.iter().flat_map(|l| l.excluded.iter()).collect();
    if !excluded.is_empty() {
        let mut unique: Vec<&String> = excluded.clone();
        unique.sort();
        unique.dedup();
        notes.push(format!(
            "Left out by min_fidelity: {}.",
            unique.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")
        ));
    }
    if let Some(r) = measured.and_then(|t| t.row(PolicyKind::BestStatic)) {
        if !r.note.is_empty() {
            notes.push(format!("Best static: {}.", r.note));
        }
    }
    // Switching: where it was measured and what the memory strategies cost.
    let rows: Vec<&SwitchCost> = ctx.run.switches.of_board(board).collect();
    if let Some(p) = &ctx.run.switches.problem {
        notes.push(format!("Switch costs: switch.parquet could not be read ({p}), so they are not measured here."));
    } else if rows.is_empty() {
        notes.push(
            "Switch costs: not measured (no switch.parquet rows for this board): neither the hot and cold switch nor \
             the first-inference penalty nor the memory per strategy."
                .into(),
        );
    } else {
        let at = rows.iter().find_map(|r| r.freq_khz).map(|f| format!(" at {}", format_khz(f))).unwrap_or_default();
        let rounds =
            rows.iter().find_map(|r| r.rounds).map(|n| format!(", medians of {n} switches")).unwrap_or_default();
        notes.push(format!(
            "Switch costs measured on the board{at}{rounds}, each from the set's block base. RT3's \
             {RT3_SWITCH_BUDGET_MS} ms covers putting a set into effect, so the comparable figure is the cold switch \
             plus its first-inference penalty (a device holding one packed set); a hot switch only repoints the live \
             model at a set prepacked at load."
        ));
        let all = rows.iter().find_map(|r| r.resident_bytes_all_prepacked);
        let one = rows.iter().find_map(|r| r.resident_bytes_one_set);
        notes.push(match (all, one) {
            (Some(a), Some(o)) => {
                let saved = a.saturating_sub(o);
                format!(
                    "Memory: every pattern set prepacked (hot switching) holds {}; one set at a time (cold switching) \
                     holds {}, {} less ({:.0} %).",
                    megabytes(a),
                    megabytes(o),
                    megabytes(saved),
                    if a > 0 { saved as f64 / a as f64 * 100.0 } else { 0.0 }
                )
            }
            _ => "Memory per strategy: not measured.".into(),
        });
    }
    if let Some(m) = model.and_then(|t| t.row(PolicyKind::Rt3Schedule)) {
        if let Ok(p) = &m.outcome {
            notes.push(format!(
                "RT3's analytic model (P = f × V² × 1e-10, latency scaled by 1/f from the top level, 37,800 J) on the \
                 same top-level latencies predicts {} inferences for its schedule, {} dense at top and {} block at \
                 top (details below).",
                count(Some(p.inferences)),
                gain(m.gain_vs_dense_top),
                gain(m.gain_vs_block_top)
            ));
        }
    }
    if let Some(t) = measured {
        notes.push(format!("Battery: {}; workload: {}.", t.battery.describe(), describe_workload(&t.workload)));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(Some(3_181_500.4)), "3,181,500");
        assert_eq!(count(Some(999.0)), "999");
        assert_eq!(count(Some(1000.0)), "1,000");
        assert_eq!(count(None), "-");
        assert_eq!(count(Some(f64::NAN)), "-");
    }

    #[test]
    fn switch_texts_say_not_measured_and_judge_the_cold_total() {
        assert_eq!(hot_text(None), "not measured");
        assert_eq!(cold_text(None), "not measured");
        let c = SwitchCost {
            hot_switch_us: Some(0.8),
            hot_first_inference_penalty_ms: Some(-4.734),
            cold_switch_ms: Some(40.0),
            cold_first_inference_penalty_ms: Some(6.0),
            ..SwitchCost::default()
        };
        assert_eq!(hot_text(Some(&c)), "0.8 µs (first inference -4.73 ms)");
        assert_eq!(cold_text(Some(&c)), "40.00 ms (first inference +6.00 ms): OVER 45 ms");
        let c = SwitchCost { cold_switch_ms: Some(12.0), ..SwitchCost::default() };
        assert_eq!(cold_text(Some(&c)), "12.00 ms (first inference not measured): within 45 ms");
    }
}
