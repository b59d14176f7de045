//! What the report says: builds the [`Document`] from a loaded run, its analysis and its
//! power traces. Pure: no I/O, no clock, everything sorted, so the same directory gives the
//! same report bytes.

use std::collections::{BTreeMap, BTreeSet};

use super::answer::{count, megabytes};
use super::document::{Align, BannerKind, Block, Document, Figure, Table};
use super::plots::{self, Bar, BarPlot, ReferenceLine, Series, SeriesStyle, Whisker, XyPlot};
use super::power_trace::{PowerTrace, TRACE_BINS};
use crate::analysis::battery::describe_workload;
use crate::analysis::schedule::fmt_ms;
use crate::analysis::{
    BatteryTable, CellStats, PolicyKind, PolicyRow, ProjectionSource, Rt3Schedule, RunAnalysis, RunData,
    SelftestSummary, SwitchCost,
};
use crate::results::CellRecord;
use crate::runmeta::BoardMeta;
use crate::scenario::units::format_khz;
use crate::scenario::Workload;
use crate::stats::{Estimate, Statistic};

pub use crate::analysis::RT3_SWITCH_BUDGET_MS;

/// Intervals from fewer values than this are not printed: with 2 repeats a 95 % Student-t
/// interval spans ±6.3 standard errors and reads like a measurement when it is not one.
pub const MIN_INTERVAL_VALUES: usize = 3;

/// `v` with `decimals`, `-` when missing or not finite.
pub(crate) fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".into(),
    }
}

/// `point [lower, upper]` from `n` values; with fewer than [`MIN_INTERVAL_VALUES`], the point
/// and `(n=2: no interval)`.
fn with_ci(e: &Estimate, decimals: usize, n: usize) -> String {
    if n < MIN_INTERVAL_VALUES {
        return format!("{} (n={n}: no interval)", num(Some(e.point), decimals));
    }
    format!("{} [{}, {}]", num(Some(e.point), decimals), num(Some(e.lower), decimals), num(Some(e.upper), decimals))
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn mhz(freq_khz: u64) -> f64 {
    freq_khz as f64 / 1e3
}

/// Variants in the scenario's order, then any the journal has that the scenario does not.
fn variant_order(run: &RunData) -> Vec<String> {
    let mut order: Vec<String> = run.scenario.variants.iter().map(|v| v.name.clone()).collect();
    for c in &run.cells {
        if !order.contains(&c.variant) {
            order.push(c.variant.clone());
        }
    }
    order
}

/// Every board the run knows of (run.json and journal), in name order.
pub(crate) fn board_names(run: &RunData) -> Vec<String> {
    let set: BTreeSet<String> = run
        .meta
        .board_names()
        .into_iter()
        .map(str::to_string)
        .chain(run.cells.iter().map(|c| c.board.clone()))
        .collect();
    set.into_iter().collect()
}

/// Whether `board` was simulated (run.json says so, or any of its cells or switch rows does).
pub(crate) fn board_simulated(run: &RunData, board: &str) -> bool {
    run.meta.board_simulated(board)
        || run.cells.iter().any(|c| c.board == board && c.simulated)
        || run.switches.of_board(board).any(|r| r.simulated == Some(true))
}

/// The builder's shared context.
pub(super) struct Ctx<'a> {
    pub(super) run: &'a RunData,
    pub(super) analysis: &'a RunAnalysis,
    pub(super) variants: Vec<String>,
    pub(super) boards: Vec<String>,
}

impl Ctx<'_> {
    pub(super) fn color_of(&self, variant: &str) -> usize {
        self.variants.iter().position(|v| v == variant).unwrap_or(self.variants.len())
    }
    fn cells_of(&self, board: &str) -> Vec<&CellStats> {
        self.analysis.cells.iter().filter(|c| c.key.board == board).collect()
    }
}

/// Builds the whole report: the answer first (RT3 schedule and best static policy against
/// dense and block, per board), then the plots, then the details (schedule, battery, switching,
/// every cell, power trace), then provenance (run, boards) and method.
pub fn build_document(run: &RunData, analysis: &RunAnalysis, traces: &[PowerTrace]) -> Document {
    let ctx = Ctx { run, analysis, variants: variant_order(run), boards: board_names(run) };
    let mut doc = Document { title: format!("hil report: {}", run.scenario.name), blocks: Vec::new() };
    banners(&ctx, &mut doc);
    super::answer::answer_section(&ctx, &mut doc);
    frequency_plots(&ctx, &mut doc);
    summary_plots(&ctx, &mut doc);
    schedule_section(&ctx, &mut doc);
    battery_section(&ctx, &mut doc);
    switching_section(&ctx, &mut doc);
    cells_section(&ctx, &mut doc);
    power_section(&ctx, traces, &mut doc);
    run_section(&ctx, &mut doc);
    boards_section(&ctx, &mut doc);
    method_section(&ctx, &mut doc);
    doc
}

fn banners(ctx: &Ctx, doc: &mut Document) {
    let simulated: Vec<&String> = ctx.boards.iter().filter(|b| board_simulated(ctx.run, b)).collect();
    if !simulated.is_empty() {
        let mut lines = vec![
            "This run measured a simulated board, not ARM hardware: latency comes from this host's CPU (each inference \
             stretched, busy on its core, by f_max / f of the simulated clock) and power from the simulator's model, read through an emulated monitor. \
             Use these numbers to check the tooling, not to judge a board."
                .to_string(),
        ];
        for b in simulated {
            let what = ctx
                .run
                .meta
                .board(b)
                .and_then(|i| i.simulation.clone())
                .unwrap_or_else(|| "simulated (no description recorded in run.json)".into());
            lines.push(format!("Board {b}: {what}"));
        }
        doc.blocks.push(Block::Banner { kind: BannerKind::Warning, title: "SIMULATED".into(), lines });
    }
    if ctx.run.meta.interrupted() {
        doc.blocks.push(Block::Banner {
            kind: BannerKind::Warning,
            title: "INTERRUPTED".into(),
            lines: vec![
                "The run was interrupted: only the cells that finished are reported; hil run --resume RUN_DIR \
                         completes it."
                    .into(),
            ],
        });
    }
    if ctx.run.cells.is_empty() {
        doc.blocks.push(Block::Banner {
            kind: BannerKind::Note,
            title: "NO CELLS".into(),
            lines: vec!["The journal (cells.jsonl) holds no finished cell: there is nothing to report yet.".into()],
        });
    }
}

fn run_section(ctx: &Ctx, doc: &mut Document) {
    let run = ctx.run;
    let meta = &run.meta;
    doc.heading(2, "Provenance: run");
    if let Some(d) = &run.scenario.description {
        doc.paragraph(d.trim());
    }
    let levels: BTreeSet<u64> = run.cells.iter().map(|c| c.freq_khz).collect();
    let repeats: BTreeSet<u32> = run.cells.iter().map(|c| c.repeat).collect();
    let measured_variants: BTreeSet<&str> = run.cells.iter().map(|c| c.variant.as_str()).collect();
    let deadline = match &run.scenario.constraints.latency_deadline {
        Some(d) => format!("{}, judged on the p99 latency of each cell", d.explain()),
        None => "none".into(),
    };
    let sessions: Vec<String> = meta
        .sessions
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "{}: {} to {}{} on {}, hil {}{}{}",
                i + 1,
                s.started_at,
                s.finished_at.as_deref().unwrap_or("not finished"),
                if s.interrupted { " (interrupted)" } else { "" },
                s.host,
                s.build.describe(),
                s.agent_source.as_deref().map(|a| format!(", agent {a}")).unwrap_or_default(),
                s.notes.iter().map(|n| format!(" (note: {n})")).collect::<String>()
            )
        })
        .collect();
    let facts = vec![
        ("scenario".to_string(), run.scenario.name.clone()),
        ("scenario SHA-256".into(), meta.scenario_sha256.clone()),
        ("started".into(), meta.started_at().unwrap_or("unknown").to_string()),
        ("finished".into(), meta.finished_at().unwrap_or("not finished").to_string()),
        ("interrupted".into(), yes_no(meta.interrupted())),
        (format!("sessions ({})", sessions.len()), sessions.join("; ")),
        (
            "cells".into(),
            format!(
                "{} finished ({} boards, {} frequencies, {} variants, {} repeats)",
                run.cells.len(),
                ctx.boards.len(),
                levels.len(),
                measured_variants.len(),
                repeats.len()
            ),
        ),
        ("latency deadline".into(), deadline),
        ("workload".into(), describe_workload(&run.scenario.policy.workload)),
    ];
    doc.facts(facts);
}

fn boards_section(ctx: &Ctx, doc: &mut Document) {
    doc.heading(2, "Provenance: boards");
    for board in &ctx.boards {
        let default = BoardMeta::default();
        let b = ctx.run.meta.board(board).unwrap_or(&default);
        let hello = b.agent_hello.as_ref();
        let probe = b.probe.as_ref();
        let simulated = board_simulated(ctx.run, board);
        doc.heading(3, format!("Board {board}{}", if simulated { " (SIMULATED)" } else { "" }));
        let mut facts: Vec<(String, String)> = Vec::new();
        let mut fact = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                facts.push((k.to_string(), v));
            }
        };
        let join = |items: &[String]| (!items.is_empty()).then(|| items.join(", "));
        fact("hardware", Some(if simulated { "SIMULATED (not ARM hardware)".into() } else { "real board".into() }));
        if simulated {
            fact("simulation", Some(b.simulation.clone().unwrap_or_else(|| "no description recorded".into())));
        }
        fact("transport", (!b.transport.is_empty()).then(|| b.transport.clone()));
        if let Some(lab) = &b.labgrid {
            fact(
                "labgrid place",
                Some(format!(
                    "{} (entry {}, coordinator {}, reservation {})",
                    lab.place.place,
                    lab.entry,
                    lab.place.coordinator,
                    lab.place.reservation.as_deref().unwrap_or("-")
                )),
            );
            fact("exporter host", Some(lab.place.exporter_host.clone()));
            fact(
                "reached at",
                Some(format!("{}@{}:{}", lab.place.ssh.username, lab.place.ssh.address, lab.place.ssh.port)),
            );
        }
        fact("architecture", hello.map(|h| h.arch.clone()).or_else(|| probe.map(|p| p.arch.clone())));
        fact("kernel", hello.map(|h| h.kernel.release.clone()).or_else(|| probe.map(|p| p.kernel.clone())));
        fact("CPU", hello.map(|h| h.cpu_model.clone()).or_else(|| probe.and_then(|p| p.cpu.model.clone())));
        fact(
            "board model",
            probe.and_then(|p| p.cpu.board_model.clone()).or_else(|| hello.and_then(|h| h.board_model.clone())),
        );
        fact("cores", hello.map(|h| h.cores.to_string()).or_else(|| probe.map(|p| p.cpu.cores.to_string())));
        fact("agent CPUs", hello.and_then(|h| join(&h.allowed_cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>())));
        fact("SIMD", hello.and_then(|h| join(&h.simd)));
        fact("cpufreq policies", join(&b.policies));
        fact("levels measured", join(&b.levels_khz.iter().map(|k| format_khz(*k)).collect::<Vec<_>>()));
        fact(
            "cpufreq before the run",
            b.saved_dvfs.as_ref().map(|d| {
                d.policies
                    .iter()
                    .map(|p| {
                        format!(
                            "policy{}: {} {}-{}",
                            p.policy,
                            p.settings.governor,
                            format_khz(p.settings.min_khz),
                            format_khz(p.settings.max_khz)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        );
        fact(
            "thermal zones",
            probe.and_then(|p| {
                join(
                    &p.thermal_zones
                        .iter()
                        .map(|z| {
                            let temp = z.temp_millicelsius.map(|t| format!(" {:.1} °C at probe", t as f64 / 1e3));
                            format!("{}{}", z.zone_type, temp.unwrap_or_default())
                        })
                        .collect::<Vec<_>>(),
                )
            }),
        );
        fact("agent version", hello.map(|h| h.agent_version.clone()));
        fact("agent SHA-256", b.agent.as_ref().map(|a| a.sha256.clone()));
        fact("agent path", b.agent.as_ref().map(|a| a.remote_path.clone()));
        let earlier_agents: BTreeSet<&str> = ctx
            .run
            .meta
            .board_sessions(board)
            .filter_map(|(_, s)| s.agent.as_ref().map(|a| a.sha256.as_str()))
            .filter(|sha| Some(*sha) != b.agent.as_ref().map(|a| a.sha256.as_str()))
            .collect();
        if !earlier_agents.is_empty() {
            fact(
                "AGENT CHANGED between sessions",
                Some(format!(
                    "earlier sessions ran {}: cells of this board were measured by different builds",
                    earlier_agents.into_iter().collect::<Vec<_>>().join(", ")
                )),
            );
        }
        match &b.monitor {
            Some(m) => {
                let kv = |pairs: &[(String, String)]| {
                    (!pairs.is_empty())
                        .then(|| pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "))
                };
                fact("power monitor", Some(m.model.clone()));
                fact("monitor port", Some(m.port.clone()));
                fact("monitor serial", Some(m.serial.clone().unwrap_or_else(|| "not reported".into())));
                fact("monitor sample rate", m.sample_rate_hz.map(|r| format!("{r} Hz")));
                fact("monitor sample clock", Some(format!("{:?}", m.clock)));
                fact("monitor calibration", Some(kv(&m.calibration).unwrap_or_else(|| "none reported".into())));
            }
            None => fact("power monitor", Some("none: no energy or power figures".into())),
        }
        if let Some(load) = &b.model {
            let m = &load.model;
            let mut text = vec![format!("preset {}", m.preset), format!("source {}", m.source)];
            if let Some(path) = &m.path {
                text.push(format!("path {path}"));
            }
            text.extend([
                format!("layers {}", m.layers),
                format!("d_model {}", m.d_model),
                format!("heads {}", m.heads),
                format!("ffn {}", m.ffn),
                format!("seq {}", m.seq),
                format!("seed {}", m.seed),
            ]);
            if m.lm_head {
                text.push("lm_head".into());
            }
            fact("model", Some(text.join(", ")));
        }
        if let Some(reply) = &b.selftest {
            let st = SelftestSummary::from_reply(reply);
            let text = if st.passed {
                "passed".to_string()
            } else {
                let failed: Vec<String> = st
                    .failures
                    .iter()
                    .map(|f| format!("{} (worst {}, max abs err {})", f.variant, f.worst, num(f.max_abs_err, 6)))
                    .collect();
                format!("FAILED: {}", failed.join("; "))
            };
            fact("kernel selftest", Some(text));
        }
        doc.facts(facts);
        if let Some(load) = b.model.as_ref().filter(|l| !l.variants.is_empty()) {
            let mut t = Table::new(&[
                ("variant", Align::Left),
                ("kind", Align::Left),
                ("base", Align::Left),
                ("sparsity", Align::Right),
                ("non-zero weights", Align::Right),
                ("weights multiplied", Align::Right),
                ("bytes", Align::Right),
                ("prepare (ms)", Align::Right),
                ("pattern generation (ms)", Align::Right),
            ]);
            let ms = |ns: Option<u64>| num(ns.map(|ns| ns as f64 / 1e6), 1);
            for v in &load.variants {
                t.push(vec![
                    v.name.clone(),
                    v.kind.clone(),
                    v.base.clone().unwrap_or_else(|| "-".into()),
                    num(Some(v.sparsity), 3),
                    count(Some(v.nnz as f64)),
                    if v.multiplied > 0 { count(Some(v.multiplied as f64)) } else { "-".into() },
                    count(Some(v.bytes as f64)),
                    ms(Some(v.prepare_ns)),
                    ms(v.pattern_generation_ns),
                ]);
            }
            doc.paragraph(format!("Variants the agent loaded on {board}:"));
            doc.table(t);
        }
    }
}

fn flags(c: &CellStats) -> String {
    let mut out = Vec::new();
    if c.unverified_freq_repeats > 0 {
        out.push(format!("frequency not verified in {} repeat(s)", c.unverified_freq_repeats));
    }
    if c.throttled_repeats > 0 {
        out.push(format!("throttled in {} repeat(s)", c.throttled_repeats));
    }
    if c.power_flagged_repeats > 0 {
        out.push(format!("power flagged in {} repeat(s)", c.power_flagged_repeats));
    }
    if let Some(l) = &c.latency {
        if l.outliers.count() > 0 {
            out.push(format!(
                "{} latency outlier(s), {} extreme (kept)",
                l.outliers.count(),
                l.outliers.count_extreme()
            ));
        }
    }
    if c.checksums.len() > 1 {
        out.push(format!("{} different output checksums across repeats", c.checksums.len()));
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join("; ")
    }
}

fn cells_section(ctx: &Ctx, doc: &mut Document) {
    doc.heading(2, "Results per cell");
    doc.paragraph(
        "One row per (board, frequency, variant), repeats pooled: latency over every timed inference of every \
         repeat, energy per inference across repeats (gross: window energy over inferences, the board's idle power \
         included; net: idle power at the same frequency subtracted). Brackets are 95 % confidence intervals (see \
         Method); an interval from fewer than 3 values is not printed (n=2: no interval). The deadline is met when \
         the pooled p99 latency is at most the deadline. Fidelity: the variant's final hidden states against the \
         dense model's over the seeded inputs, measured on the board.",
    );
    for board in &ctx.boards {
        let cells = ctx.cells_of(board);
        if cells.is_empty() {
            continue;
        }
        doc.heading(3, format!("Board {board}"));
        let deadline = ctx.analysis.deadline_ms(board);
        let mut t = Table::new(&[
            ("level", Align::Right),
            ("frequency", Align::Right),
            ("variant", Align::Left),
            ("kind", Align::Left),
            ("sparsity", Align::Right),
            ("repeats", Align::Right),
            ("inferences", Align::Right),
            ("median latency (ms)", Align::Right),
            ("p99 latency (ms)", Align::Right),
            ("deadline", Align::Left),
            ("energy/inference (mJ)", Align::Right),
            ("net energy/inference (mJ)", Align::Right),
            ("mean power (W)", Align::Right),
            ("idle power (W)", Align::Right),
            ("fidelity (cosine)", Align::Right),
            ("fidelity (rel. L2)", Align::Right),
            ("flags", Align::Left),
        ]);
        for c in cells {
            let (median, p99) = match &c.latency {
                Some(l) => (with_ci(&l.median, 3, l.n), with_ci(&l.p99, 3, l.n)),
                None => (num(Some(c.latency_ms(Statistic::Median)), 3), num(Some(c.latency_ms(Statistic::P99)), 3)),
            };
            let met = match deadline {
                Some(d) => {
                    let p = c.latency_ms(Statistic::P99);
                    if !p.is_finite() {
                        "-".to_string()
                    } else if p <= d {
                        "met".into()
                    } else {
                        "MISSED".into()
                    }
                }
                None => "-".into(),
            };
            let energy = match (&c.energy, c.energy_mean_mj()) {
                (Some(e), _) => with_ci(&e.mean, 3, e.n),
                // One repeat with power: its value, said to have no interval.
                (None, Some(mean)) => {
                    let n = c.energy_per_inference_mj.iter().filter(|v| v.is_finite()).count();
                    with_ci(&Estimate { point: mean, lower: mean, upper: mean }, 3, n.min(MIN_INTERVAL_VALUES - 1))
                }
                (None, None) => "-".into(),
            };
            t.push(vec![
                c.level.to_string(),
                format_khz(c.key.freq_khz),
                c.key.variant.clone(),
                c.variant_kind.clone(),
                num(Some(c.sparsity), 3),
                c.repeats.to_string(),
                c.iterations.to_string(),
                median,
                p99,
                met,
                energy,
                num(c.net_energy_mean_mj(), 3),
                num(c.mean_power_mean_w(), 3),
                num(c.idle_power_mean_w(), 3),
                num(c.fidelity_cosine, 4),
                num(c.fidelity_rel_l2, 4),
                flags(c),
            ]);
        }
        doc.table(t);
        doc.paragraph(format!("Every repeat on {board}, as journaled (cells.jsonl):"));
        doc.table(repeat_table(ctx, board));
    }
}

fn repeat_table(ctx: &Ctx, board: &str) -> Table {
    let mut rows: Vec<&CellRecord> = ctx.run.cells.iter().filter(|c| c.board == board).collect();
    rows.sort_by(|a, b| {
        (std::cmp::Reverse(a.freq_khz), ctx.color_of(&a.variant), &a.variant, a.repeat).cmp(&(
            std::cmp::Reverse(b.freq_khz),
            ctx.color_of(&b.variant),
            &b.variant,
            b.repeat,
        ))
    });
    let mut t = Table::new(&[
        ("frequency", Align::Right),
        ("variant", Align::Left),
        ("repeat", Align::Right),
        ("inferences", Align::Right),
        ("median (ms)", Align::Right),
        ("p99 (ms)", Align::Right),
        ("deadline met", Align::Left),
        ("energy/inference (mJ)", Align::Right),
        ("net (mJ)", Align::Right),
        ("mean power (W)", Align::Right),
        ("idle (W)", Align::Right),
        ("frequency verified", Align::Left),
        ("throttled", Align::Left),
        ("temperature (°C)", Align::Right),
        ("lost samples", Align::Right),
        ("clock offset ± (µs)", Align::Right),
        ("checksum", Align::Left),
    ]);
    for c in rows {
        let temp = match (c.temp_before_c, c.temp_after_c) {
            (None, None) => "-".to_string(),
            (a, b) => format!("{} → {}", num(a, 1), num(b, 1)),
        };
        let freq_verified = match c.cur_freq_khz {
            Some(cur) if !c.freq_verified => format!("no (read {})", format_khz(cur)),
            _ => yes_no(c.freq_verified),
        };
        t.push(vec![
            format_khz(c.freq_khz),
            c.variant.clone(),
            c.repeat.to_string(),
            c.iterations.to_string(),
            num(Some(c.latency_median_ms), 3),
            num(Some(c.latency_p99_ms), 3),
            c.deadline_met.map(yes_no).unwrap_or_else(|| "-".into()),
            num(c.energy_per_inference_mj, 3),
            num(c.net_energy_per_inference_mj, 3),
            num(c.mean_power_w, 3),
            num(c.idle_power_w, 3),
            freq_verified,
            yes_no(c.throttled),
            temp,
            c.lost_samples.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            num(c.clock_offset_uncertainty_us, 1),
            c.checksum.clone(),
        ]);
    }
    t
}

/// A plot, or a paragraph saying why there is none.
fn push_plot(doc: &mut Document, file: String, caption: String, svg: Result<String, plots::PlotError>) {
    match svg {
        Ok(svg) => doc.figure(Figure { file, svg, caption }),
        Err(e) => doc.paragraph(format!("No plot: {e}.")),
    }
}

/// One series per variant of `cells`: `value` against frequency (MHz), with whiskers.
fn frequency_series(ctx: &Ctx, cells: &[&CellStats], value: impl Fn(&CellStats) -> Option<Estimate>) -> Vec<Series> {
    let mut by_variant: BTreeMap<(usize, String), Vec<(f64, Estimate)>> = BTreeMap::new();
    for c in cells {
        if let Some(e) = value(c).filter(|e| e.point.is_finite()) {
            by_variant
                .entry((ctx.color_of(&c.key.variant), c.key.variant.clone()))
                .or_default()
                .push((mhz(c.key.freq_khz), e));
        }
    }
    by_variant
        .into_iter()
        .map(|((color, name), mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                name,
                color,
                style: SeriesStyle::LineAndPoints,
                paths: vec![points.iter().map(|(x, e)| (*x, e.point)).collect()],
                whiskers: points
                    .iter()
                    .filter(|(_, e)| e.lower.is_finite() && e.upper.is_finite() && e.upper > e.lower)
                    .map(|(x, e)| Whisker { x: *x, low: e.lower, high: e.upper })
                    .collect(),
            }
        })
        .collect()
}

fn frequency_plots(ctx: &Ctx, doc: &mut Document) {
    if ctx.analysis.cells.is_empty() {
        return;
    }
    doc.heading(2, "Plots: latency and energy against frequency");
    for board in &ctx.boards {
        let cells = ctx.cells_of(board);
        if cells.is_empty() {
            continue;
        }
        let deadline = ctx.analysis.deadline_ms(board);
        let latency = XyPlot {
            title: format!("Median latency per inference, board {board}"),
            x_label: "CPU frequency (MHz)".into(),
            y_label: "latency (ms)".into(),
            series: frequency_series(ctx, &cells, |c| match &c.latency {
                Some(l) => Some(l.median),
                None => {
                    let p = c.latency_ms(Statistic::Median);
                    Some(Estimate { point: p, lower: p, upper: p })
                }
            }),
            horizontal: deadline
                .map(|d| ReferenceLine { value: d, label: format!("deadline {} ms (on p99)", fmt_ms(d)) })
                .into_iter()
                .collect(),
            vertical: vec![],
            y_from_zero: true,
            x_decimals: 0,
        };
        push_plot(
            doc,
            format!("latency_{board}.svg"),
            format!(
                "Median latency per inference against CPU frequency, one line per variant, board {board}. Whiskers: \
                 95 % confidence interval of the median (bootstrap). Dashed: the latency deadline, which is judged on \
                 the p99 latency."
            ),
            plots::xy_plot_svg(&latency),
        );
        if cells.iter().any(|c| c.energy_mean_mj().is_some()) {
            let energy = XyPlot {
                title: format!("Energy per inference, board {board}"),
                x_label: "CPU frequency (MHz)".into(),
                y_label: "energy per inference (mJ)".into(),
                series: frequency_series(ctx, &cells, |c| match &c.energy {
                    Some(e) if e.n >= MIN_INTERVAL_VALUES => Some(e.mean),
                    _ => c.energy_mean_mj().map(|p| Estimate { point: p, lower: p, upper: p }),
                }),
                horizontal: vec![],
                vertical: vec![],
                y_from_zero: true,
                x_decimals: 0,
            };
            push_plot(
                doc,
                format!("energy_{board}.svg"),
                format!(
                    "Gross energy per inference (board idle power included) against CPU frequency, mean over repeats, \
                     one line per variant, board {board}. Whiskers: 95 % Student-t interval of the mean across repeats, \
                     drawn only from {MIN_INTERVAL_VALUES} or more repeats{}.",
                    if cells.iter().any(|c| c.energy_per_inference_mj.len() < MIN_INTERVAL_VALUES) {
                        " (this run has fewer, so no whiskers)"
                    } else {
                        ""
                    }
                ),
                plots::xy_plot_svg(&energy),
            );
        } else {
            doc.paragraph(format!("Board {board}: no energy measured (no power monitor), so no energy plot."));
        }
    }
}

fn schedule_section(ctx: &Ctx, doc: &mut Document) {
    if ctx.analysis.schedules.is_empty() {
        return;
    }
    doc.heading(2, "Details: RT3 schedule");
    for s in &ctx.analysis.schedules {
        doc.heading(3, format!("Board {}", s.board));
        doc.paragraph(format!("Rule: {}.", s.rule.describe()));
        doc.table(schedule_table(s));
        for n in [s.incomplete_note(), s.unverified_note()].into_iter().flatten() {
            doc.paragraph(n);
        }
    }
}

fn schedule_table(s: &Rt3Schedule) -> Table {
    let stat = s.rule.statistic.label();
    let has_accuracy = !s.rule.accuracy.is_empty();
    let mut cols = vec![
        ("level", Align::Right),
        ("frequency", Align::Right),
        ("pattern set", Align::Left),
        ("sparsity", Align::Right),
        ("fidelity (cosine)", Align::Right),
    ];
    if has_accuracy {
        cols.push(("accuracy", Align::Right));
    }
    let lat = format!("{stat} latency (ms)");
    cols.extend([
        (lat.as_str(), Align::Right),
        ("median latency (ms)", Align::Right),
        ("energy/inference (mJ)", Align::Right),
        ("net energy/inference (mJ)", Align::Right),
        ("pattern sets meeting the deadline", Align::Left),
        ("ranked by", Align::Left),
        ("note", Align::Left),
    ]);
    let mut t = Table::new(&cols);
    for l in &s.levels {
        let meeting = if l.meeting.is_empty() { "none".to_string() } else { l.meeting.join(", ") };
        let mut row = vec![l.level.to_string(), format_khz(l.freq_khz)];
        match &l.selected {
            Some(v) => {
                row.extend([v.variant.clone(), num(Some(v.sparsity), 3), num(v.fidelity_cosine, 4)]);
                if has_accuracy {
                    row.push(num(v.accuracy, 4));
                }
                row.extend([
                    num(Some(v.latency_ms), 3),
                    num(Some(v.latency_median_ms), 3),
                    num(v.energy_per_inference_mj, 3),
                    num(v.net_energy_per_inference_mj, 3),
                ]);
            }
            None => {
                row.extend(["none".to_string(), "-".into(), "-".into()]);
                if has_accuracy {
                    row.push("-".into());
                }
                row.extend(["-".to_string(), "-".into(), "-".into(), "-".into()]);
            }
        }
        row.extend([meeting, l.ranking.map(|r| r.label().to_string()).unwrap_or_else(|| "-".into()), l.note.clone()]);
        t.push(row);
    }
    t
}

fn battery_table(t: &BatteryTable) -> Table {
    let mut table = Table::new(&[
        ("policy", Align::Left),
        ("meets the deadline", Align::Left),
        ("hours", Align::Right),
        ("inferences per charge", Align::Right),
        ("mean power (W)", Align::Right),
        ("× dense at top", Align::Right),
        ("× block at top", Align::Right),
        ("note", Align::Left),
    ]);
    for r in &t.rows {
        let meets = match (r.kind, r.meets_deadline) {
            (PolicyKind::Rt3Schedule, _) => {
                if r.complete {
                    "at every level".to_string()
                } else {
                    "not at every level".into()
                }
            }
            (_, Some(m)) => yes_no(m),
            (_, None) => "-".into(),
        };
        match &r.outcome {
            Ok(p) => table.push(vec![
                r.name.clone(),
                meets,
                num(Some(p.hours), 2),
                count(Some(p.inferences)),
                num(Some(p.mean_power_w), 3),
                num(r.gain_vs_dense_top, 2),
                num(r.gain_vs_block_top, 2),
                if r.note.is_empty() { "-".into() } else { r.note.clone() },
            ]),
            Err(e) => table.push(vec![
                r.name.clone(),
                meets,
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("not projected: {e}"),
            ]),
        }
    }
    table
}

/// The measured table's policies beside the paper model's: the named policies (baselines,
/// best static, RT3 schedule) by kind, since each side picks its own best static pair and
/// schedule; the static pairs by name.
fn model_vs_measurement(measured: &BatteryTable, model: &BatteryTable) -> Table {
    let mut t = Table::new(&[
        ("policy", Align::Left),
        ("measured inferences", Align::Right),
        ("model inferences", Align::Right),
        ("model / measured", Align::Right),
        ("measured × dense", Align::Right),
        ("model × dense", Align::Right),
        ("measured × block", Align::Right),
        ("model × block", Align::Right),
    ]);
    for r in &measured.rows {
        let m = match r.kind {
            PolicyKind::Static => model.rows.iter().find(|m| m.kind == PolicyKind::Static && m.name == r.name),
            kind => model.rows.iter().find(|m| m.kind == kind),
        };
        let Some(m) = m else { continue };
        let name = if r.name == m.name { r.name.clone() } else { format!("{} (model: {})", r.name, m.name) };
        let (a, b) = (r.outcome.as_ref().ok().map(|p| p.inferences), m.outcome.as_ref().ok().map(|p| p.inferences));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => Some(b / a),
            _ => None,
        };
        t.push(vec![
            name,
            count(a),
            count(b),
            num(ratio, 2),
            num(r.gain_vs_dense_top, 2),
            num(m.gain_vs_dense_top, 2),
            num(r.gain_vs_block_top, 2),
            num(m.gain_vs_block_top, 2),
        ]);
    }
    t
}

/// The measured battery projection as bars: the named policies first (RT3 schedule, best
/// static, baselines), then every static pair.
fn battery_plot(ctx: &Ctx, t: &BatteryTable) -> BarPlot {
    let rank = |k: PolicyKind| match k {
        PolicyKind::Rt3Schedule => 0,
        PolicyKind::BestStatic => 1,
        PolicyKind::DenseAtTop => 2,
        PolicyKind::BlockAtTop => 3,
        PolicyKind::Static => 4,
    };
    let mut rows: Vec<&PolicyRow> = t.rows.iter().collect();
    rows.sort_by_key(|r| rank(r.kind));
    let bars = rows
        .iter()
        .map(|r| {
            let color = match (r.kind, &r.variant) {
                (PolicyKind::Rt3Schedule, _) | (_, None) => ctx.variants.len(),
                (_, Some(v)) => ctx.color_of(v),
            };
            // Inferences per charge (RT3's "runs"): what the gains and the best static compare.
            let (value, value_text) = match &r.outcome {
                Ok(p) => (
                    p.inferences / 1e6,
                    format!(
                        "{:.2} M, {:.2} h{}",
                        p.inferences / 1e6,
                        p.hours,
                        if r.complete { "" } else { " (incomplete)" }
                    ),
                ),
                Err(_) => (f64::NAN, "not projected".into()),
            };
            let label = match (r.kind, r.meets_deadline) {
                (PolicyKind::Static, Some(false)) => format!("{} (misses deadline)", r.name),
                _ => r.name.clone(),
            };
            Bar { label, value, color, value_text }
        })
        .collect();
    BarPlot {
        title: format!("Inferences per charge per policy, board {} ({})", t.board, describe_workload(&t.workload)),
        value_label: "inferences per charge (millions)".into(),
        bars,
        reference: None,
        log_scale: false,
    }
}

/// Battery life and switch costs per board, as plots (the tables are in the answer and the details).
fn summary_plots(ctx: &Ctx, doc: &mut Document) {
    let measured: Vec<&BatteryTable> =
        ctx.analysis.battery.iter().filter(|t| t.source == ProjectionSource::Measured).collect();
    let any_switch = ctx.boards.iter().any(|b| ctx.run.switches.of_board(b).next().is_some());
    if measured.iter().all(|t| t.rows.iter().all(|r| r.outcome.is_err())) && !any_switch {
        return;
    }
    doc.heading(2, "Plots: battery life and switching");
    for board in &ctx.boards {
        if let Some(m) = measured.iter().find(|t| &t.board == board) {
            if m.rows.iter().any(|r| r.outcome.is_ok()) {
                push_plot(
                    doc,
                    format!("battery_{board}.svg"),
                    format!(
                        "Projected inferences per charge (and hours of battery life) per policy on board {board} \
                         (measured energy, {}): the RT3 schedule, the best static policy, dense and block at the top \
                         frequency, then every static (frequency, variant) pair.",
                        m.battery.describe()
                    ),
                    plots::bar_plot_svg(&battery_plot(ctx, m)),
                );
            }
        }
        let rows: Vec<&SwitchCost> = ctx.run.switches.of_board(board).collect();
        if rows.is_empty() {
            continue;
        }
        let mut bars = Vec::new();
        for r in &rows {
            let color = ctx.color_of(&r.variant);
            if let Some(h) = r.hot_total_ms() {
                bars.push(Bar {
                    label: format!("{} hot + first inference", r.variant),
                    value: h.max(1e-6),
                    color,
                    value_text: format!("{h:.3} ms"),
                });
            }
            if let Some(c) = r.cold_switch_ms {
                bars.push(Bar {
                    label: format!("{} cold", r.variant),
                    value: c.max(1e-6),
                    color,
                    value_text: format!("{c:.2} ms"),
                });
            }
            if let Some(c) = r.cold_total_ms() {
                bars.push(Bar {
                    label: format!("{} cold + first inference", r.variant),
                    value: c.max(1e-6),
                    color,
                    value_text: format!("{c:.2} ms"),
                });
            }
        }
        if bars.is_empty() {
            continue;
        }
        let plot = BarPlot {
            title: format!("Pattern-set switch costs, board {board}"),
            value_label: "time (ms, log scale)".into(),
            bars,
            reference: Some(ReferenceLine {
                value: RT3_SWITCH_BUDGET_MS,
                label: format!("RT3: {RT3_SWITCH_BUDGET_MS} ms"),
            }),
            log_scale: true,
        };
        push_plot(
            doc,
            format!("switch_{board}.svg"),
            format!(
                "Switching to each pattern set on board {board} (log scale), against RT3's {RT3_SWITCH_BUDGET_MS} ms \
                 (dashed): hot (prepacked, with its first-inference penalty), cold (packed from the set's \
                 definitions) and cold with its first-inference penalty. A negative penalty counts as none."
            ),
            plots::bar_plot_svg(&plot),
        );
    }
}

fn battery_section(ctx: &Ctx, doc: &mut Document) {
    if ctx.analysis.battery.is_empty() {
        return;
    }
    doc.heading(2, "Details: battery life");
    let shares = ctx.run.scenario.policy.battery_shares.clone();
    doc.paragraph(format!(
        "Projected from measured energy per inference, idle power and latency per cell. Policies: dense and block at \
         the top frequency, every measured (frequency, variant) pair, the best static one (meeting the deadline, most \
         inferences per charge) and the RT3 schedule with the battery's energy split across its levels (highest \
         first) {}. Gains are ratios of inferences per charge.",
        match shares {
            Some(s) => format!(
                "as the scenario says: {}",
                s.iter().map(|x| format!("{:.0} %", x * 100.0)).collect::<Vec<_>>().join(" / ")
            ),
            None => "by RT3's 50 / 30 / 20 % for three levels, equal shares otherwise".into(),
        }
    ));
    for board in &ctx.boards {
        let measured =
            ctx.analysis.battery.iter().find(|t| &t.board == board && t.source == ProjectionSource::Measured);
        let model = ctx.analysis.battery.iter().find(|t| &t.board == board && t.source == ProjectionSource::Rt3Model);
        if measured.is_none() && model.is_none() {
            continue;
        }
        doc.heading(3, format!("Board {board}"));
        if let Some(m) = measured {
            doc.paragraph(format!(
                "Measured: battery {}; workload: {}.",
                m.battery.describe(),
                describe_workload(&m.workload)
            ));
            doc.table(battery_table(m));
            if !m.notes.is_empty() {
                doc.list(m.notes.clone());
            }
        }
        if let Some(model) = model {
            doc.heading(3, format!("RT3 paper's analytic model, board {board}"));
            doc.paragraph(
                "The paper's own estimate from the same inputs: power P = f × V² × 1e-10 W per level, latency scaled \
                 by 1/f from the top level, a 37,800 J battery, back-to-back inference.",
            );
            doc.table(battery_table(model));
            if !model.notes.is_empty() {
                doc.list(model.notes.clone());
            }
            if let Some(m) = measured {
                let vs = model_vs_measurement(m, model);
                if !vs.rows.is_empty() {
                    doc.paragraph(format!(
                        "Model against measurement, board {board} (absolute numbers differ by the batteries and \
                         workloads used; compare the gains):"
                    ));
                    doc.table(vs);
                }
            }
        }
    }
}

/// A duration in the unit that keeps it readable: `206 ns`, `12.4 µs`, `1.20 ms`.
pub(crate) fn human_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns} ns"),
        1_000..=999_999 => format!("{:.1} µs", ns as f64 / 1e3),
        _ => format!("{:.2} ms", ns as f64 / 1e6),
    }
}

/// A duration given in µs, readable: `0.8 µs`, `12.4 µs`, `1.20 ms`.
pub(crate) fn human_us(us: f64) -> String {
    if !us.is_finite() {
        "-".into()
    } else if us < 1_000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1e3)
    }
}

/// Median switch time per variant (ns) from `run.json`'s `boards.<board>.switch_ns`.
fn switching_section(ctx: &Ctx, doc: &mut Document) {
    doc.heading(2, "Details: pattern-set switching");
    doc.paragraph(format!(
        "RT3 claims a pattern-set switch within {RT3_SWITCH_BUDGET_MS} ms: putting a set into effect. Measured per \
         pattern set on the board (switch.parquet), each switch from the set's block base: hot (the set was prepacked \
         at load; the live model points at it), cold (the set is assigned and packed from the resident BP weights and \
         its stored pattern definitions, as on a device that holds one packed set at a time), and the first-inference \
         penalty after each (the first inference minus the median of the next ones; negative: it was faster). \
         Against {RT3_SWITCH_BUDGET_MS} ms: the switch plus its penalty (a negative penalty counts as none)."
    ));
    if let Some(p) = &ctx.run.switches.problem {
        doc.paragraph(format!("switch.parquet could not be read: {p}. Switch costs are not measured here."));
    }
    for board in &ctx.boards {
        doc.heading(3, format!("Board {board}"));
        let rows: Vec<&SwitchCost> = ctx.run.switches.of_board(board).collect();
        if rows.is_empty() {
            doc.paragraph(format!(
                "Board {board}: switch costs not measured in this run (no switch.parquet rows): hot switch, cold \
                 switch, first-inference penalty and memory per strategy are unknown."
            ));
        } else {
            let within_cell = |total: Option<f64>| match total {
                Some(t) => yes_no(t <= RT3_SWITCH_BUDGET_MS),
                None => "-".into(),
            };
            let mut t = Table::new(&[
                ("pattern set", Align::Left),
                ("measured at", Align::Right),
                ("rounds", Align::Right),
                ("hot switch", Align::Right),
                ("hot first-inference penalty (ms)", Align::Right),
                (&format!("hot within {RT3_SWITCH_BUDGET_MS} ms"), Align::Left),
                ("cold switch (ms)", Align::Right),
                ("cold first-inference penalty (ms)", Align::Right),
                (&format!("cold within {RT3_SWITCH_BUDGET_MS} ms"), Align::Left),
                ("this set's packed bytes", Align::Right),
            ]);
            for r in &rows {
                t.push(vec![
                    r.variant.clone(),
                    r.freq_khz.map(format_khz).unwrap_or_else(|| "-".into()),
                    r.rounds.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                    r.hot_switch_us.map(human_us).unwrap_or_else(|| "not measured".into()),
                    num(r.hot_first_inference_penalty_ms, 2),
                    within_cell(r.hot_total_ms()),
                    r.cold_switch_ms.map(|c| format!("{c:.2}")).unwrap_or_else(|| "not measured".into()),
                    num(r.cold_penalty_ms(), 2),
                    within_cell(r.cold_total_ms()),
                    r.resident_bytes.map(megabytes).unwrap_or_else(|| "-".into()),
                ]);
            }
            doc.table(t);
            let all = rows.iter().find_map(|r| r.resident_bytes_all_prepacked);
            let one = rows.iter().find_map(|r| r.resident_bytes_one_set);
            let mut m = Table::new(&[
                ("strategy", Align::Left),
                ("model memory held", Align::Right),
                ("switch it allows", Align::Left),
            ]);
            m.push(vec![
                "every pattern set prepacked".into(),
                all.map(megabytes).unwrap_or_else(|| "not measured".into()),
                "hot".into(),
            ]);
            m.push(vec![
                "one pattern set at a time".into(),
                one.map(megabytes).unwrap_or_else(|| "not measured".into()),
                "cold".into(),
            ]);
            doc.paragraph(format!("Memory each strategy costs on board {board} (packed weights of the model):"));
            doc.table(m);
        }
        // Older runs (and this one, for every variant) record the agent's hot switch in run.json.
        let times = ctx.run.meta.board(board).map(|b| b.switch_ns.clone()).unwrap_or_default();
        if !times.is_empty() {
            let mut ordered: Vec<(&String, &u64)> = times.iter().collect();
            ordered.sort_by_key(|(v, _)| (ctx.color_of(v), v.to_string()));
            doc.paragraph(format!(
                "Hot switch of every loaded variant as the agent timed it (run.json switch_ns, median; all variants \
                 prepacked, so a pointer swap): {}.",
                ordered.iter().map(|(v, ns)| format!("{v} {}", human_ns(**ns))).collect::<Vec<_>>().join(", ")
            ));
        }
    }
}

fn power_section(ctx: &Ctx, traces: &[PowerTrace], doc: &mut Document) {
    doc.heading(2, "Details: power trace");
    for board in &ctx.boards {
        let Some(trace) = traces.iter().find(|t| t.board() == board) else {
            doc.paragraph(format!("Board {board}: no power measured (no monitor), so no trace."));
            continue;
        };
        match trace {
            PowerTrace::Raw(r) => {
                let points = |f: fn(&super::power_trace::TraceBin) -> f64| -> Vec<(f64, f64)> {
                    r.bins.iter().map(|b| (b.t_s, f(b))).collect()
                };
                let color = ctx.color_of(&r.cell.variant);
                let plot = XyPlot {
                    title: format!(
                        "{} at {}, repeat {}, board {board}",
                        r.cell.variant,
                        format_khz(r.cell.freq_khz),
                        r.cell.repeat
                    ),
                    x_label: "time from window start (s)".into(),
                    y_label: r.quantity.axis_label().into(),
                    series: vec![
                        Series {
                            name: "min-max per bin".into(),
                            color,
                            style: SeriesStyle::Faint,
                            paths: vec![points(|b| b.min), points(|b| b.max)],
                            whiskers: vec![],
                        },
                        Series {
                            name: "mean per bin".into(),
                            color,
                            style: SeriesStyle::Line,
                            paths: vec![points(|b| b.mean)],
                            whiskers: vec![],
                        },
                    ],
                    horizontal: vec![],
                    vertical: r
                        .window_s
                        .map(|w| ReferenceLine { value: w, label: format!("window end ({w:.3} s)") })
                        .into_iter()
                        .collect(),
                    y_from_zero: false,
                    x_decimals: 2,
                };
                push_plot(
                    doc,
                    format!("power_{board}.svg"),
                    format!(
                        "{} drawn by board {board} during the timed window of {} at {}, repeat {}: {} raw samples \
                         from {} reduced to at most {TRACE_BINS} time bins, each drawn as its mean (line) and its \
                         minimum and maximum (light).",
                        if r.quantity == super::power_trace::TraceQuantity::PowerW { "Power" } else { "Current" },
                        r.cell.variant,
                        format_khz(r.cell.freq_khz),
                        r.cell.repeat,
                        r.samples,
                        r.source
                    ),
                    plots::xy_plot_svg(&plot),
                );
            }
            PowerTrace::Windows(w) => {
                let mut by_variant: BTreeMap<(usize, String), Vec<plots::Polyline>> = BTreeMap::new();
                for s in &w.segments {
                    by_variant
                        .entry((ctx.color_of(&s.variant), s.variant.clone()))
                        .or_default()
                        .push(vec![(s.start_s, s.mean_power_w), (s.end_s, s.mean_power_w)]);
                }
                let plot = XyPlot {
                    title: format!("Mean power per timed window, board {board}"),
                    x_label: "time from the first window (s)".into(),
                    y_label: "mean power (W)".into(),
                    series: by_variant
                        .into_iter()
                        .map(|((color, name), paths)| Series {
                            name,
                            color,
                            style: SeriesStyle::Line,
                            paths,
                            whiskers: vec![],
                        })
                        .collect(),
                    horizontal: vec![],
                    vertical: vec![],
                    y_from_zero: false,
                    x_decimals: 0,
                };
                push_plot(
                    doc,
                    format!("power_{board}.svg"),
                    format!(
                        "Per-window mean power over the run on board {board}: one segment per timed window (frequency \
                         levels and variants in the order run), coloured by variant. Raw samples were not kept, so \
                         this shows per-window means, not the sample-level trace (set measure.raw_power: true to keep \
                         the samples)."
                    ),
                    plots::xy_plot_svg(&plot),
                );
            }
        }
    }
}

fn method_section(ctx: &Ctx, doc: &mut Document) {
    doc.heading(2, "Method");
    let mut items = vec![format!("{}.", ctx.analysis.method)];
    if let Some(s) = ctx.analysis.schedules.first() {
        items.push(format!("RT3 schedule: {}.", s.rule.describe()));
    }
    items.push(
        "Energy per inference: the energy the monitor measured over the agent's timed window (samples placed by the \
         monitor's own clock, window aligned to the host clock by the smallest-round-trip clock exchange) divided by \
         the inferences in it; net subtracts the idle power measured at the same frequency before the cell."
            .into(),
    );
    if ctx.run.scenario.policy.workload != Workload::BackToBack {
        items.push(format!("Battery workload: {}.", describe_workload(&ctx.run.scenario.policy.workload)));
    }
    items.push(
        "This report is regenerated from the results directory alone (cells.jsonl, run.json, scenario.yaml and the \
         power files) by hil report RUN_DIR; the same directory gives byte-identical files."
            .into(),
    );
    doc.list(items);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_intervals_format_with_dashes_for_missing_values() {
        assert_eq!(num(Some(1.23456), 2), "1.23");
        assert_eq!(num(None, 2), "-");
        assert_eq!(num(Some(f64::NAN), 2), "-");
        let e = Estimate { point: 2.0, lower: 1.5, upper: 2.25 };
        assert_eq!(with_ci(&e, 2, 3), "2.00 [1.50, 2.25]");
        // Fewer than 3 values: no interval, said so.
        assert_eq!(with_ci(&e, 2, 2), "2.00 (n=2: no interval)");
        assert_eq!(human_us(0.78), "0.8 µs");
        assert_eq!(human_us(1500.0), "1.50 ms");
    }

    #[test]
    fn switch_times_are_shown_in_a_readable_unit() {
        assert_eq!(human_ns(206), "206 ns");
        assert_eq!(human_ns(12_400), "12.4 µs");
        assert_eq!(human_ns(45_000_000), "45.00 ms");
    }
}
