//! The RT3 paper's analytic battery model, computed from this run's inputs so readers can
//! set model against measurement.
//!
//! RT3's public code never measured power or latency; it modelled them:
//! - power at a level: `P = f x V^2 x 1e-10` W (f in Hz; 0.215, 0.114 and 0.079 W at its
//!   1.4/1.0/0.8 GHz levels at 1.24/1.06625/0.9925 V), the same for every variant;
//! - latency proportional to work over frequency: here, the latency measured at the top
//!   level scaled by `f_top / f`;
//! - battery 37,800 J split 50/30/20 % across the levels, highest first; runs per level
//!   `= share x 37,800 / (P x latency)`, summed.
//!
//! The model is back-to-back only (it has no idle power). Voltages come from
//! `--voltages` (highest level first) or, for exactly three levels, RT3's own three;
//! otherwise the model is unavailable and the table says so.

use super::battery::{
    best_static_row, fill_gains, project, schedule_row, static_criterion, BatteryModel, BatteryTable, OperatingPoint,
    PolicyKind, PolicyRow, ProjectionSource, Segment, RT3_BATTERY_J,
};
use super::cells::CellStats;
use super::schedule::{choose, Candidate, ScheduleRule};
use crate::scenario::units::format_khz;
use crate::scenario::Workload;

/// RT3's DVFS levels (kHz), highest first.
pub const RT3_LEVELS_KHZ: [u64; 3] = [1_400_000, 1_000_000, 800_000];
/// RT3's core voltages at those levels (V), from its public code.
pub const RT3_VOLTAGES_V: [f64; 3] = [1.24, 1.066_25, 0.9925];
/// RT3's dynamic-power coefficient: `P = f x V^2 x 1e-10`.
pub const RT3_POWER_COEFFICIENT: f64 = 1e-10;

/// The paper's power at `freq_khz` and `voltage_v`, W.
pub fn rt3_power_w(freq_khz: u64, voltage_v: f64) -> f64 {
    freq_khz as f64 * 1e3 * voltage_v * voltage_v * RT3_POWER_COEFFICIENT
}

/// Latency at `freq_khz` scaled from the one measured at `top_khz` (latency ~ 1/f).
pub fn scaled_latency_ms(top_latency_ms: f64, top_khz: u64, freq_khz: u64) -> f64 {
    top_latency_ms * top_khz as f64 / freq_khz as f64
}

/// One level of the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelLevel {
    pub freq_khz: u64,
    pub voltage_v: f64,
    pub power_w: f64,
}

/// Pairs levels (highest first) with voltages: the given ones (one per level), else RT3's
/// three when there are exactly three levels. Returns the levels and where the voltages came from.
pub fn model_levels(levels_khz: &[u64], voltages_v: Option<&[f64]>) -> Result<(Vec<ModelLevel>, String), String> {
    let (volts, source): (Vec<f64>, String) = match voltages_v {
        Some(v) if v.len() == levels_khz.len() => (v.to_vec(), "voltages given on the command line".into()),
        Some(v) => {
            return Err(format!(
                "unavailable: {} voltages given for {} levels; give one per level, highest first",
                v.len(),
                levels_khz.len()
            ))
        }
        None if levels_khz.len() == 3 => (
            RT3_VOLTAGES_V.to_vec(),
            "RT3's voltages 1.24/1.06625/0.9925 V mapped to the three levels highest first".into(),
        ),
        None => {
            return Err(format!(
                "unavailable: the paper's power model needs a core voltage per level; the run has {} levels and \
                 RT3's voltages fit only three (give them with --voltages)",
                levels_khz.len()
            ))
        }
    };
    if let Some(bad) = volts.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        return Err(format!("voltage {bad} V is not a positive number"));
    }
    let levels = levels_khz
        .iter()
        .zip(volts)
        .map(|(&freq_khz, voltage_v)| ModelLevel { freq_khz, voltage_v, power_w: rt3_power_w(freq_khz, voltage_v) })
        .collect();
    Ok((levels, source))
}

/// Runs a battery of `battery_j` gives at `power_w` with `latency_ms` per run (the paper's formula).
pub fn rt3_runs(battery_j: f64, power_w: f64, latency_ms: f64) -> f64 {
    battery_j / (power_w * latency_ms / 1e3)
}

/// The paper's model for one board: the same policies as the measured table, with power and
/// latency from the formulas above, on RT3's 37,800 J ideal battery, back to back.
pub fn model_projection(
    board: &str,
    cells: &[&CellStats],
    rule: &ScheduleRule,
    shares: &[f64],
    voltages_v: Option<&[f64]>,
) -> BatteryTable {
    let cells: Vec<&CellStats> = cells.iter().copied().filter(|c| c.key.board == board).collect();
    let battery = BatteryModel { source: "RT3's battery".into(), ..BatteryModel::rt3_default() };
    let workload = Workload::BackToBack;
    let mut table = BatteryTable {
        board: board.to_string(),
        simulated: cells.iter().any(|c| c.simulated),
        source: ProjectionSource::Rt3Model,
        battery: battery.clone(),
        workload,
        rows: Vec::new(),
        notes: Vec::new(),
    };
    debug_assert_eq!(battery.energy_j, RT3_BATTERY_J);
    let mut levels_khz: Vec<u64> = cells.iter().map(|c| c.key.freq_khz).collect();
    levels_khz.sort_by_key(|f| std::cmp::Reverse(*f));
    levels_khz.dedup();
    let Some(&top) = levels_khz.first() else {
        table.notes.push("No cells: the model has nothing to scale.".into());
        return table;
    };
    let (levels, voltage_source) = match model_levels(&levels_khz, voltages_v) {
        Ok(l) => l,
        Err(e) => {
            table.notes.push(format!("The paper's model is {e}"));
            return table;
        }
    };
    let top_cells: Vec<&CellStats> = cells.iter().copied().filter(|c| c.key.freq_khz == top).collect();
    // Whether a variant meets the rule at a model level: its statistic at the top, scaled.
    let qualifies = |c: &CellStats, level: &ModelLevel| {
        rule.meets_deadline(scaled_latency_ms(c.latency_ms(rule.statistic), top, level.freq_khz))
            && rule.fidelity_floor(&c.key.variant, c.fidelity_cosine).is_ok()
    };
    let point = |c: &CellStats, level: &ModelLevel| {
        let latency = scaled_latency_ms(c.latency_mean_ms, top, level.freq_khz);
        OperatingPoint {
            freq_khz: level.freq_khz,
            variant: c.key.variant.clone(),
            latency_mean_ms: latency,
            energy_per_inference_mj: level.power_w * latency,
            idle_power_w: None,
        }
    };
    for (kind, name) in [(PolicyKind::DenseAtTop, "dense"), (PolicyKind::BlockAtTop, "block")] {
        if let Some(c) = top_cells.iter().find(|c| c.variant_kind == name) {
            let label = match kind {
                PolicyKind::DenseAtTop => "dense at top",
                _ => "block at top",
            };
            let mut r =
                row(format!("{label} ({}@{})", c.key.variant, format_khz(top)), kind, point(c, &levels[0]), &battery);
            r.meets_deadline = Some(qualifies(c, &levels[0]));
            table.rows.push(r);
        }
    }
    // The model's own schedule: the rule (pattern sets only) applied to latencies scaled from the top level.
    let schedule_levels: Vec<(u64, Option<String>)> = levels
        .iter()
        .map(|level| {
            let candidates: Vec<Candidate> = top_cells
                .iter()
                .map(|c| Candidate {
                    latency_ms: scaled_latency_ms(c.latency_ms(rule.statistic), top, level.freq_khz),
                    ..Candidate::from_cell(c, rule)
                })
                .collect();
            let choice = choose(&candidates, rule, level.freq_khz);
            (level.freq_khz, choice.chosen.map(|i| candidates[i].variant.clone()))
        })
        .collect();
    table.rows.push(schedule_row(&schedule_levels, shares, &battery, &workload, |freq, variant| {
        let level = levels.iter().find(|l| l.freq_khz == freq).ok_or_else(|| format!("no model level {freq} kHz"))?;
        let c = top_cells.iter().find(|c| c.key.variant == variant).ok_or_else(|| format!("{variant} not measured"))?;
        Ok(point(c, level))
    }));
    for level in &levels {
        for c in &top_cells {
            let mut r = row(
                format!("{}@{}", c.key.variant, format_khz(level.freq_khz)),
                PolicyKind::Static,
                point(c, level),
                &battery,
            );
            r.meets_deadline = Some(qualifies(c, level));
            table.rows.push(r);
        }
    }
    let best = best_static_row(&table.rows, &static_criterion(rule));
    let at = table.rows.iter().position(|r| r.kind == PolicyKind::Rt3Schedule).map_or(table.rows.len(), |i| i + 1);
    table.rows.insert(at, best);
    let mut notes = Vec::new();
    fill_gains(&mut table.rows, &mut notes);
    table.notes.push(format!(
        "Model inputs: mean latency measured at {} scaled by f_top/f; P = f x V^2 x 1e-10 W with {voltage_source} \
         ({}); the deadline is checked on the {} latency measured at the top level, scaled the same way; \
         battery {RT3_BATTERY_J} J, back to back.",
        format_khz(top),
        levels
            .iter()
            .map(|l| format!("{}: {} V, {:.4} W", format_khz(l.freq_khz), l.voltage_v, l.power_w))
            .collect::<Vec<_>>()
            .join("; "),
        rule.statistic.label(),
    ));
    table.notes.extend(notes);
    table
}

fn row(name: String, kind: PolicyKind, point: OperatingPoint, battery: &BatteryModel) -> PolicyRow {
    let freq_khz = point.freq_khz;
    let variant = point.variant.clone();
    let outcome = project(battery, &Workload::BackToBack, &[Segment { share: 1.0, point }]);
    PolicyRow {
        name,
        kind,
        freq_khz: Some(freq_khz),
        variant: Some(variant),
        complete: outcome.is_ok(),
        outcome,
        gain_vs_dense_top: None,
        gain_vs_block_top: None,
        meets_deadline: None,
        levels: Vec::new(),
        note: String::new(),
    }
}
