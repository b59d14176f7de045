//! The compact table `hil run` prints after a run (and `hil report` prints too): per board,
//! level and variant the median latency, whether the deadline was met, and energy per
//! inference; the RT3 schedule's pick marked, with its battery gain and the best static
//! policy's; a SIMULATED banner first when any board was
//! simulated, so a simulated result is never mistaken for hardware.

use std::fmt::Write as _;

use super::content::{board_names, board_simulated, num};
use super::document::{Align, Table};
use crate::analysis::{PolicyKind, ProjectionSource, RunAnalysis, RunData};
use crate::scenario::units::format_khz;
use crate::stats::Statistic;

/// Renders `t` as fixed-width text columns (two spaces apart), numbers right-aligned.
pub fn text_table(t: &Table) -> String {
    let widths: Vec<usize> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| t.rows.iter().map(|r| r[i].chars().count()).chain([c.title.chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<&str>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&t.columns)
            .zip(&widths)
            .map(|((text, c), w)| match c.align {
                Align::Left => format!("{text:<w$}"),
                Align::Right => format!("{text:>w$}"),
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = line(t.columns.iter().map(|c| c.title.as_str()).collect());
    out.push('\n');
    for r in &t.rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// The summary text for a loaded and analysed run.
pub fn summary_text(run: &RunData, analysis: &RunAnalysis) -> String {
    let mut out = String::new();
    let boards = board_names(run);
    let simulated: Vec<&str> = boards.iter().filter(|b| board_simulated(run, b)).map(String::as_str).collect();
    if !simulated.is_empty() {
        let _ = writeln!(
            out,
            "*** SIMULATED: board(s) {} were simulated; these numbers describe this host and the simulator's power \
             model, not ARM hardware ***",
            simulated.join(", ")
        );
    }
    if run.meta.interrupted() {
        out.push_str("*** INTERRUPTED: only finished cells are summarised ***\n");
    }
    if analysis.cells.is_empty() {
        out.push_str("no finished cells\n");
        return out;
    }
    // One deadline for every board when it is fixed; a relative one is resolved per board.
    let fixed = run.scenario.constraints.latency_deadline.as_ref().and_then(|d| d.fixed_ms());
    let deadline_title = match (&run.scenario.constraints.latency_deadline, fixed) {
        (Some(_), Some(d)) => format!("p99<={}ms", crate::analysis::schedule::fmt_ms(d)),
        (Some(d), None) => format!("p99<={}", d.describe()),
        (None, _) => "deadline".into(),
    };
    let mut t = Table::new(&[
        ("board", Align::Left),
        ("level", Align::Right),
        ("frequency", Align::Right),
        ("variant", Align::Left),
        ("median ms", Align::Right),
        ("p99 ms", Align::Right),
        (deadline_title.as_str(), Align::Left),
        ("mJ/inference", Align::Right),
        ("net mJ", Align::Right),
        ("RT3", Align::Left),
    ]);
    for c in &analysis.cells {
        let p99 = c.latency_ms(Statistic::P99);
        let met = match analysis.deadline_ms(&c.key.board) {
            Some(_) if !p99.is_finite() => "-",
            Some(d) if p99 <= d => "met",
            Some(_) => "MISSED",
            None => "-",
        };
        let picked = analysis.schedules.iter().any(|s| {
            s.board == c.key.board
                && s.levels.iter().any(|l| {
                    l.freq_khz == c.key.freq_khz && l.selected.as_ref().is_some_and(|v| v.variant == c.key.variant)
                })
        });
        t.push(vec![
            c.key.board.clone(),
            c.level.to_string(),
            format_khz(c.key.freq_khz),
            c.key.variant.clone(),
            num(Some(c.latency_ms(Statistic::Median)), 2),
            num(Some(p99), 2),
            met.into(),
            num(c.energy_mean_mj(), 2),
            num(c.net_energy_mean_mj(), 2),
            if picked { "*".into() } else { String::new() },
        ]);
    }
    out.push_str(&text_table(&t));
    out.push_str("(RT3 *: the pattern set the RT3 schedule runs at that level)\n");
    for note in analysis.schedules.iter().filter_map(|s| s.unverified_note()) {
        let _ = writeln!(out, "{note}");
    }
    for table in analysis.battery.iter().filter(|t| t.source == ProjectionSource::Measured) {
        let Some(row) = table.row(PolicyKind::Rt3Schedule) else { continue };
        match &row.outcome {
            Ok(p) => {
                let _ = writeln!(
                    out,
                    "battery, board {}: RT3 schedule {:.2} h, inferences per charge x{} vs dense at top, x{} vs block at top{}",
                    table.board,
                    p.hours,
                    num(row.gain_vs_dense_top, 2),
                    num(row.gain_vs_block_top, 2),
                    if row.complete { "" } else { " (INCOMPLETE: some level has no pattern set meeting the deadline)" }
                );
            }
            Err(e) => {
                let _ = writeln!(out, "battery, board {}: RT3 schedule not projected: {e}", table.board);
            }
        }
        if let Some(best) = table.row(PolicyKind::BestStatic) {
            match &best.outcome {
                Ok(p) => {
                    let _ = writeln!(
                        out,
                        "battery, board {}: {} {:.2} h, inferences per charge x{} vs dense at top, x{} vs block at top",
                        table.board,
                        best.name,
                        p.hours,
                        num(best.gain_vs_dense_top, 2),
                        num(best.gain_vs_block_top, 2),
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "battery, board {}: best static policy: none ({e})", table.board);
                }
            }
        }
    }
    out
}
