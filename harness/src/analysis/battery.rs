//! Battery projection: how long a battery lasts, and how many inferences it gives, under a
//! policy, from measured energy per inference, idle power and latency.
//!
//! # Model
//! - **Battery**: nominal energy `E` (J) from the command line (`mAh x V x 3.6`), else the
//!   scenario's board battery, else RT3's 37,800 J (precedence: [`super::battery_model`]).
//!   Optional Peukert exponent `k` (1 = ideal): the energy a battery delivers at average
//!   current `I` is `E x min(1, I_rated / I)^(k-1)`, with `I_rated = C / H` the current that
//!   empties it in its rated time `H` (20 h, the C/20 convention Peukert ratings are quoted
//!   at). Currents are taken at the battery's nominal voltage, which cancels:
//!   `I_rated / I = E / (3600 s/h x H x P)` for average power `P`. Below the rated current the
//!   battery gives its nominal energy, never more: the rated capacity is what a slow
//!   discharge delivers, and extrapolating Peukert's law below it would invent capacity.
//!   Peukert's law describes constant loads; for the RT3 schedule it is applied per level
//!   (each level draws its share of the battery at its own power), an approximation.
//! - **Workload**: back-to-back inference costs the cell's gross energy per inference
//!   (window energy / inferences, idle included since the board is on) and takes the same
//!   window's duration per inference (window duration / inferences), so energy and time come
//!   from the same window and their ratio is the window's measured mean power. (The mean
//!   latency would leave out the time between timed inferences, making the board look faster
//!   at the same energy.) Periodic inference (one per period `T`) costs that energy plus
//!   measured idle power for the rest of the period, and takes `T`; a period shorter than an
//!   inference's time is an error for that policy (the board cannot keep up).
//! - **Policies**: dense at the top frequency, block-pruned at the top frequency, every static
//!   (frequency, variant) pair, the best static one (the pair, of any variant kind, meeting
//!   the deadline, and for a pattern set its `min_fidelity`, with the most inferences per
//!   charge), and the RT3 schedule: share `s_i` of the battery spent at level `i` (highest
//!   first) running the schedule's pattern set there; inferences
//!   `= sum_i s_i x E_eff,i / cost_i`, hours `= sum_i inferences_i x time_i / 3600`. A level
//!   without a pattern set leaves its share uncounted and the row incomplete.
//! - **Gains** are ratios of inferences per charge (RT3's "runs") against dense and against
//!   block at the top frequency. For a periodic workload the hours ratio is the same.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::cells::CellStats;
use super::fmt_opt;
use super::schedule::Rt3Schedule;
use crate::results::write_atomic;
use crate::scenario::units::format_khz;
use crate::scenario::{BatteryCapacity, BatterySpec, Workload};

/// RT3's battery in its public code: 37,800 J (10.5 Wh).
pub const RT3_BATTERY_J: f64 = 37_800.0;
/// Rated discharge time Peukert exponents are quoted at (C/20), hours.
pub const PEUKERT_RATED_HOURS: f64 = 20.0;
/// The file `hil battery` writes into the run directory.
pub const BATTERY_CSV: &str = "battery.csv";

/// A battery: nominal energy and Peukert behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct BatteryModel {
    pub energy_j: f64,
    /// 1.0: ideal (capacity independent of load).
    pub peukert_exponent: f64,
    /// Rated discharge time the exponent refers to, hours.
    pub rated_hours: f64,
    /// Where the numbers came from, for reports.
    pub source: String,
}

impl BatteryModel {
    /// RT3's 37,800 J ideal battery, used when neither the scenario nor the command line gives one.
    pub fn rt3_default() -> Self {
        Self {
            energy_j: RT3_BATTERY_J,
            peukert_exponent: 1.0,
            rated_hours: PEUKERT_RATED_HOURS,
            source: "RT3's default 37,800 J".into(),
        }
    }

    pub fn from_spec(spec: &BatterySpec, source: &str) -> Self {
        let what = match spec.capacity {
            BatteryCapacity::MilliampHours { mah, nominal_voltage_v } => format!("{mah} mAh at {nominal_voltage_v} V"),
            BatteryCapacity::WattHours(wh) => format!("{wh} Wh"),
        };
        Self {
            energy_j: spec.energy_joules(),
            peukert_exponent: spec.peukert_exponent.unwrap_or(1.0),
            rated_hours: PEUKERT_RATED_HOURS,
            source: format!("{source}: {what}"),
        }
    }

    /// `mah` at nominal `voltage_v` (both positive and finite).
    pub fn from_mah(mah: f64, voltage_v: f64, source: &str) -> Result<Self, String> {
        if !(mah.is_finite() && mah > 0.0) {
            return Err(format!("battery capacity {mah} mAh must be a positive number"));
        }
        if !(voltage_v.is_finite() && voltage_v > 0.0) {
            return Err(format!("battery voltage {voltage_v} V must be a positive number"));
        }
        Ok(Self {
            energy_j: mah * voltage_v * 3.6,
            peukert_exponent: 1.0,
            rated_hours: PEUKERT_RATED_HOURS,
            source: format!("{source}: {mah} mAh at {voltage_v} V"),
        })
    }

    /// The average power that empties the battery in its rated time (the C/20 load), W.
    pub fn rated_power_w(&self) -> f64 {
        self.energy_j / (3600.0 * self.rated_hours)
    }

    /// Energy delivered at constant average power `power_w` (Peukert-corrected): nominal at
    /// or below the rated power, less above it; never more than nominal.
    pub fn usable_energy_j(&self, power_w: f64) -> f64 {
        if self.peukert_exponent == 1.0 || power_w.is_nan() || power_w <= 0.0 {
            return self.energy_j;
        }
        let rated_over_actual = (self.rated_power_w() / power_w).min(1.0);
        self.energy_j * rated_over_actual.powf(self.peukert_exponent - 1.0)
    }

    pub fn describe(&self) -> String {
        let peukert = if self.peukert_exponent == 1.0 {
            "ideal (Peukert exponent 1)".to_string()
        } else {
            format!("Peukert exponent {} rated at {} h", self.peukert_exponent, self.rated_hours)
        };
        format!("{:.0} J ({}), {peukert}", self.energy_j, self.source)
    }
}

/// Describes a workload for tables.
pub fn describe_workload(w: &Workload) -> String {
    match w {
        Workload::BackToBack => "back-to-back inference".into(),
        Workload::Periodic { period } => {
            format!("one inference every {} ms, idle in between", period.as_secs_f64() * 1e3)
        }
    }
}

/// What one (frequency, variant) costs, as measured (or modelled).
#[derive(Clone, Debug, PartialEq)]
pub struct OperatingPoint {
    pub freq_khz: u64,
    pub variant: String,
    /// Time one inference takes back to back, ms. Measured ([`OperatingPoint::from_cell`]): the
    /// timed window's duration / its inferences, the window `energy_per_inference_mj` comes
    /// from (not the mean latency, which leaves out the time between inferences). In RT3's
    /// model: its scaled latency. (The name predates that; the field is the time per inference.)
    pub latency_mean_ms: f64,
    /// Gross energy per inference, mJ.
    pub energy_per_inference_mj: f64,
    /// Idle power at this frequency, W (needed for periodic workloads).
    pub idle_power_w: Option<f64>,
}

impl OperatingPoint {
    /// From aggregated cells; an error when energy was not measured.
    ///
    /// Energy and time per inference both come from each repeat's timed window, averaged over
    /// the repeats with power: energy per inference is the window's energy / inferences, and
    /// the window's duration per inference is that energy divided by the window's mean power
    /// (which the energy integration defines as window energy / window duration, see
    /// [`crate::energy::window_energy`]), i.e. window duration / inferences.
    pub fn from_cell(c: &CellStats) -> Result<Self, String> {
        let energy = c
            .energy_mean_mj()
            .ok_or_else(|| format!("{}: no energy per inference measured (no power monitor?)", c.key))?;
        Ok(Self {
            freq_khz: c.key.freq_khz,
            variant: c.key.variant.clone(),
            latency_mean_ms: window_ms_per_inference(c)?,
            energy_per_inference_mj: energy,
            idle_power_w: c.idle_power_mean_w(),
        })
    }

    fn label(&self) -> String {
        format!("{} at {}", self.variant, format_khz(self.freq_khz))
    }
}

/// The timed window's duration per inference (ms), mean over the repeats with power: per repeat,
/// gross energy per inference (mJ) / the window's mean power (W) = window duration / inferences.
pub fn window_ms_per_inference(c: &CellStats) -> Result<f64, String> {
    let (energy, power) = (&c.energy_per_inference_mj, &c.mean_power_w);
    if energy.is_empty() {
        return Err(format!("{}: no energy per inference measured (no power monitor?)", c.key));
    }
    if energy.len() != power.len() {
        return Err(format!(
            "{}: {} repeats have an energy per inference but {} a window mean power; the time per inference \
             cannot be paired with its energy",
            c.key,
            energy.len(),
            power.len()
        ));
    }
    let mut total = 0.0;
    for (e, p) in energy.iter().zip(power) {
        if !(*p > 0.0 && p.is_finite()) {
            return Err(format!("{}: a window's mean power is {p} W, cannot time its inferences", c.key));
        }
        total += e / p;
    }
    Ok(total / energy.len() as f64)
}

/// Energy and time of one unit of work: an inference back to back, or one period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkCost {
    pub energy_j: f64,
    pub seconds: f64,
}

/// The cost of one inference under `workload` (see the module docs).
pub fn work_cost(op: &OperatingPoint, workload: &Workload) -> Result<WorkCost, String> {
    let busy_s = op.latency_mean_ms / 1e3;
    let energy_j = op.energy_per_inference_mj / 1e3;
    if !(busy_s.is_finite() && busy_s > 0.0) {
        return Err(format!("{}: no usable time per inference ({} ms)", op.label(), op.latency_mean_ms));
    }
    if !(energy_j.is_finite() && energy_j > 0.0) {
        return Err(format!("{}: no usable energy per inference ({} mJ)", op.label(), op.energy_per_inference_mj));
    }
    match workload {
        Workload::BackToBack => Ok(WorkCost { energy_j, seconds: busy_s }),
        Workload::Periodic { period } => {
            let period_s = period.as_secs_f64();
            if period_s < busy_s {
                return Err(format!(
                    "the period {} ms is shorter than the time one inference of {} takes back to back ({:.3} ms): \
                     the board cannot keep up",
                    period_s * 1e3,
                    op.label(),
                    op.latency_mean_ms
                ));
            }
            let idle_w = op
                .idle_power_w
                .filter(|p| p.is_finite())
                .ok_or_else(|| format!("{}: no idle power measured, needed for a periodic workload", op.label()))?;
            Ok(WorkCost { energy_j: energy_j + idle_w * (period_s - busy_s), seconds: period_s })
        }
    }
}

/// Part of a policy: a share of the battery spent at one operating point.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub share: f64,
    pub point: OperatingPoint,
}

/// Battery life and inferences of a policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Projection {
    pub hours: f64,
    pub inferences: f64,
    /// Average power over the whole discharge, W.
    pub mean_power_w: f64,
}

/// Projects `segments` (shares of one battery) under `workload`.
pub fn project(battery: &BatteryModel, workload: &Workload, segments: &[Segment]) -> Result<Projection, String> {
    if segments.is_empty() {
        return Err("no operating point to run".into());
    }
    let (mut inferences, mut seconds, mut energy) = (0.0, 0.0, 0.0);
    for s in segments {
        if !(s.share.is_finite() && s.share >= 0.0) {
            return Err(format!("battery share {} for {} is not a non-negative number", s.share, s.point.label()));
        }
        let cost = work_cost(&s.point, workload)?;
        let power = cost.energy_j / cost.seconds;
        let usable = s.share * battery.usable_energy_j(power);
        let runs = usable / cost.energy_j;
        inferences += runs;
        seconds += runs * cost.seconds;
        energy += usable;
    }
    Ok(Projection {
        hours: seconds / 3600.0,
        inferences,
        mean_power_w: if seconds > 0.0 { energy / seconds } else { 0.0 },
    })
}

/// Which policy a row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    DenseAtTop,
    BlockAtTop,
    /// One (frequency, variant) for the whole battery.
    Static,
    /// The static policy (any variant kind) meeting the deadline with the most inferences per
    /// charge: what a device that never switches would do best.
    BestStatic,
    Rt3Schedule,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::DenseAtTop => "dense_top",
            PolicyKind::BlockAtTop => "block_top",
            PolicyKind::Static => "static",
            PolicyKind::BestStatic => "best_static",
            PolicyKind::Rt3Schedule => "rt3_schedule",
        }
    }
}

/// Whether a table comes from measurements or from the RT3 paper's formulas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectionSource {
    Measured,
    Rt3Model,
}

impl ProjectionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionSource::Measured => "measured",
            ProjectionSource::Rt3Model => "rt3_model",
        }
    }
}

/// One policy's projection.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyRow {
    /// `dense@1500 MHz`, `RT3 schedule`, ...
    pub name: String,
    pub kind: PolicyKind,
    /// For single-point policies.
    pub freq_khz: Option<u64>,
    pub variant: Option<String>,
    /// The projection, or why there is none.
    pub outcome: Result<Projection, String>,
    /// Inferences per charge relative to dense / block at the top frequency.
    pub gain_vs_dense_top: Option<f64>,
    pub gain_vs_block_top: Option<f64>,
    /// False when part of the policy could not be projected (see `note`).
    pub complete: bool,
    /// For single-point policies: whether that point meets the latency deadline (and, for a
    /// pattern set, its `min_fidelity`); `None` when not judged.
    pub meets_deadline: Option<bool>,
    /// For the RT3 schedule: each level's share of the battery and what it gives.
    pub levels: Vec<LevelShare>,
    pub note: String,
}

/// One level of the RT3 schedule's projection.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelShare {
    pub freq_khz: u64,
    pub share: f64,
    /// The pattern set run there; `None`: nothing qualifies, so the share is not counted.
    pub variant: Option<String>,
    /// What this share of the battery gives (hours and inferences add up to the policy's).
    pub outcome: Result<Projection, String>,
}

impl PolicyRow {
    fn single(
        kind: PolicyKind,
        op: Result<OperatingPoint, String>,
        key: (&str, u64),
        battery: &BatteryModel,
        workload: &Workload,
    ) -> Self {
        let (variant, freq_khz) = key;
        let name = match kind {
            PolicyKind::DenseAtTop => format!("dense at top ({variant}@{})", format_khz(freq_khz)),
            PolicyKind::BlockAtTop => format!("block at top ({variant}@{})", format_khz(freq_khz)),
            _ => format!("{variant}@{}", format_khz(freq_khz)),
        };
        let outcome = op.and_then(|point| project(battery, workload, &[Segment { share: 1.0, point }]));
        Self {
            name,
            kind,
            freq_khz: Some(freq_khz),
            variant: Some(variant.to_string()),
            complete: outcome.is_ok(),
            outcome,
            gain_vs_dense_top: None,
            gain_vs_block_top: None,
            meets_deadline: None,
            levels: Vec::new(),
            note: String::new(),
        }
    }
}

/// The best static policy: of the single-point rows (`Static`) that `qualifies` accepts and
/// that were projected, the one with the most inferences per charge (ties: the first in
/// table order). A row saying so when none qualifies.
pub(crate) fn best_static_row(rows: &[PolicyRow], criterion: &str) -> PolicyRow {
    let eligible: Vec<&PolicyRow> =
        rows.iter().filter(|r| r.kind == PolicyKind::Static && r.meets_deadline == Some(true)).collect();
    let projected = eligible.iter().filter_map(|r| r.outcome.as_ref().ok().map(|p| (*r, p)));
    let best = projected.fold(None::<(&PolicyRow, &Projection)>, |best, (r, p)| match best {
        Some((_, bp)) if bp.inferences >= p.inferences => best,
        _ => Some((r, p)),
    });
    match best {
        Some((r, _)) => PolicyRow {
            name: format!("best static ({})", r.name),
            kind: PolicyKind::BestStatic,
            note: format!(
                "the most inferences per charge of the {} static (frequency, variant) pairs {criterion}",
                eligible.len()
            ),
            ..r.clone()
        },
        None => PolicyRow {
            name: "best static".into(),
            kind: PolicyKind::BestStatic,
            freq_khz: None,
            variant: None,
            outcome: Err(if eligible.is_empty() {
                format!("no static (frequency, variant) pair {criterion}")
            } else {
                format!("none of the {} static pairs {criterion} could be projected", eligible.len())
            }),
            gain_vs_dense_top: None,
            gain_vs_block_top: None,
            complete: false,
            meets_deadline: Some(false),
            levels: Vec::new(),
            note: String::new(),
        },
    }
}

/// Projections of every policy for one board.
#[derive(Clone, Debug, PartialEq)]
pub struct BatteryTable {
    pub board: String,
    /// Whether the board's cells came from a simulated board (any of them).
    pub simulated: bool,
    pub source: ProjectionSource,
    pub battery: BatteryModel,
    pub workload: Workload,
    pub rows: Vec<PolicyRow>,
    /// Facts a reader needs (missing baselines, model assumptions).
    pub notes: Vec<String>,
}

impl BatteryTable {
    pub fn row(&self, kind: PolicyKind) -> Option<&PolicyRow> {
        self.rows.iter().find(|r| r.kind == kind)
    }

    pub fn to_markdown(&self) -> String {
        let title = match self.source {
            ProjectionSource::Measured => "Battery projection from measurements",
            ProjectionSource::Rt3Model => "RT3 paper's analytic model",
        };
        let mut out = format!(
            "{title}, board {}: battery {}; workload: {}.\n\n",
            self.board,
            self.battery.describe(),
            describe_workload(&self.workload)
        );
        out.push_str(
            "| policy | hours | inferences per charge | mean power (W) | x dense@top | x block@top | note |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---|\n");
        for r in &self.rows {
            match &r.outcome {
                Ok(p) => {
                    let _ = writeln!(
                        out,
                        "| {} | {:.2} | {:.0} | {:.3} | {} | {} | {} |",
                        r.name,
                        p.hours,
                        p.inferences,
                        p.mean_power_w,
                        fmt_opt(r.gain_vs_dense_top, 2),
                        fmt_opt(r.gain_vs_block_top, 2),
                        r.note
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "| {} | - | - | - | - | - | not projected: {e} |", r.name);
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n{n}");
        }
        out
    }
}

/// Fills the gain columns from the dense@top and block@top rows.
pub(crate) fn fill_gains(rows: &mut [PolicyRow], notes: &mut Vec<String>) {
    let inferences_of = |kind: PolicyKind, rows: &[PolicyRow]| {
        rows.iter().find(|r| r.kind == kind).and_then(|r| r.outcome.as_ref().ok()).map(|p| p.inferences)
    };
    let dense = inferences_of(PolicyKind::DenseAtTop, rows);
    let block = inferences_of(PolicyKind::BlockAtTop, rows);
    if dense.is_none() {
        notes.push("No dense variant projected at the top frequency: gains against dense are not available.".into());
    }
    if block.is_none() {
        notes.push("No block variant projected at the top frequency: gains against block are not available.".into());
    }
    for r in rows.iter_mut() {
        if let Ok(p) = &r.outcome {
            r.gain_vs_dense_top = dense.filter(|d| *d > 0.0).map(|d| p.inferences / d);
            r.gain_vs_block_top = block.filter(|b| *b > 0.0).map(|b| p.inferences / b);
        }
    }
}

/// The RT3-schedule row: shares of the battery per level (highest first), each level running
/// the schedule's variant via `point_of`. Levels without a variant are left out and said so.
pub(crate) fn schedule_row(
    levels: &[(u64, Option<String>)],
    shares: &[f64],
    battery: &BatteryModel,
    workload: &Workload,
    point_of: impl Fn(u64, &str) -> Result<OperatingPoint, String>,
) -> PolicyRow {
    let mut row = PolicyRow {
        name: "RT3 schedule".into(),
        kind: PolicyKind::Rt3Schedule,
        freq_khz: None,
        variant: None,
        outcome: Err(String::new()),
        gain_vs_dense_top: None,
        gain_vs_block_top: None,
        complete: false,
        meets_deadline: None,
        levels: Vec::new(),
        note: String::new(),
    };
    if shares.len() != levels.len() {
        row.outcome = Err(format!(
            "policy.battery_shares has {} entries but the board has {} measured levels",
            shares.len(),
            levels.len()
        ));
        return row;
    }
    let mut segments = Vec::new();
    let mut missing = Vec::new();
    let mut plan = Vec::new();
    for ((freq, variant), share) in levels.iter().zip(shares) {
        match variant {
            Some(v) => match point_of(*freq, v) {
                Ok(point) => {
                    plan.push(format!("{:.0} % {v}@{}", share * 100.0, format_khz(*freq)));
                    let segment = Segment { share: *share, point };
                    row.levels.push(LevelShare {
                        freq_khz: *freq,
                        share: *share,
                        variant: Some(v.clone()),
                        outcome: project(battery, workload, std::slice::from_ref(&segment)),
                    });
                    segments.push(segment);
                }
                Err(e) => {
                    row.outcome = Err(e);
                    return row;
                }
            },
            None => {
                missing.push(format!("{} ({:.0} %)", format_khz(*freq), share * 100.0));
                row.levels.push(LevelShare {
                    freq_khz: *freq,
                    share: *share,
                    variant: None,
                    outcome: Err("no pattern set qualifies here: this share of the battery is not counted".into()),
                });
            }
        }
    }
    row.note = plan.join(", ");
    if segments.is_empty() {
        row.outcome = Err("no level has a pattern set that qualifies (meets the deadline and any min_fidelity)".into());
        return row;
    }
    row.complete = missing.is_empty();
    if !missing.is_empty() {
        row.note.push_str(&format!(
            "; INCOMPLETE: no pattern set qualifies at {}, those shares of the battery are not counted",
            missing.join(", ")
        ));
    }
    row.outcome = project(battery, workload, &segments);
    row
}

/// What a static pair must do to be the best static policy, for notes.
pub(crate) fn static_criterion(rule: &super::schedule::ScheduleRule) -> String {
    let deadline = match rule.deadline_ms {
        Some(d) => format!("meeting the {} ms deadline ({})", super::schedule::fmt_ms(d), rule.statistic.label()),
        None => "(no deadline: all of them)".to_string(),
    };
    if rule.min_fidelity.is_empty() {
        deadline
    } else {
        format!("{deadline}, pattern sets also reaching their min_fidelity")
    }
}

/// The first variant of `kind` at the top frequency, in table order.
fn at_top<'a>(cells: &[&'a CellStats], kind: &str, top: u64) -> Option<&'a CellStats> {
    cells.iter().copied().find(|c| c.key.freq_khz == top && c.variant_kind == kind)
}

/// Every policy for one board from its aggregated cells (as ordered by
/// [`super::aggregate_cells`]) and its RT3 schedule. `shares` are per schedule level, highest first.
pub fn project_board(
    board: &str,
    cells: &[&CellStats],
    schedule: &Rt3Schedule,
    shares: &[f64],
    battery: &BatteryModel,
    workload: Workload,
) -> BatteryTable {
    let cells: Vec<&CellStats> = cells.iter().copied().filter(|c| c.key.board == board).collect();
    let mut notes = Vec::new();
    let mut rows = Vec::new();
    let top = cells.iter().map(|c| c.key.freq_khz).max();
    let rule = &schedule.rule;
    let qualifies = |c: &CellStats| {
        rule.meets_deadline(c.latency_ms(rule.statistic))
            && rule.fidelity_floor(&c.key.variant, c.fidelity_cosine).is_ok()
    };
    if let Some(top) = top {
        for (kind, name) in [(PolicyKind::DenseAtTop, "dense"), (PolicyKind::BlockAtTop, "block")] {
            if let Some(c) = at_top(&cells, name, top) {
                let mut row = PolicyRow::single(
                    kind,
                    OperatingPoint::from_cell(c),
                    (&c.key.variant, c.key.freq_khz),
                    battery,
                    &workload,
                );
                row.meets_deadline = Some(qualifies(c));
                rows.push(row);
            }
        }
    }
    let levels: Vec<(u64, Option<String>)> =
        schedule.levels.iter().map(|l| (l.freq_khz, l.selected.as_ref().map(|s| s.variant.clone()))).collect();
    rows.push(schedule_row(&levels, shares, battery, &workload, |freq, variant| {
        cells
            .iter()
            .find(|c| c.key.freq_khz == freq && c.key.variant == variant)
            .ok_or_else(|| format!("{variant} at {} was not measured", format_khz(freq)))
            .and_then(|c| OperatingPoint::from_cell(c))
    }));
    for c in &cells {
        let mut row = PolicyRow::single(
            PolicyKind::Static,
            OperatingPoint::from_cell(c),
            (&c.key.variant, c.key.freq_khz),
            battery,
            &workload,
        );
        row.meets_deadline = Some(qualifies(c));
        rows.push(row);
    }
    let best = best_static_row(&rows, &static_criterion(rule));
    let at = rows.iter().position(|r| r.kind == PolicyKind::Rt3Schedule).map_or(rows.len(), |i| i + 1);
    rows.insert(at, best);
    fill_gains(&mut rows, &mut notes);
    if rows.iter().all(|r| r.outcome.is_err()) {
        notes.push("No policy could be projected (see the notes per row).".into());
    }
    BatteryTable {
        board: board.to_string(),
        simulated: cells.iter().any(|c| c.simulated),
        source: ProjectionSource::Measured,
        battery: battery.clone(),
        workload,
        rows,
        notes,
    }
}

/// Quotes a CSV field when needed (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => String::new(),
    }
}

/// `battery.csv`: one line per (board, source, policy), measured and modelled together, with
/// whether the board was simulated and whether a single-point policy meets the deadline.
pub fn battery_csv(tables: &[BatteryTable]) -> String {
    let mut out = String::from(
        "board,simulated,source,policy,kind,freq_khz,variant,battery_j,peukert_exponent,workload,period_ms,hours,\
         inferences,mean_power_w,gain_vs_dense_top,gain_vs_block_top,complete,meets_deadline,error,note\n",
    );
    for t in tables {
        let (workload, period_ms) = match t.workload {
            Workload::BackToBack => ("back_to_back", None),
            Workload::Periodic { period } => ("periodic", Some(period.as_secs_f64() * 1e3)),
        };
        for r in &t.rows {
            let p = r.outcome.as_ref().ok();
            let fields = [
                csv_field(&t.board),
                t.simulated.to_string(),
                t.source.as_str().into(),
                csv_field(&r.name),
                r.kind.as_str().into(),
                r.freq_khz.map(|f| f.to_string()).unwrap_or_default(),
                csv_field(r.variant.as_deref().unwrap_or("")),
                csv_num(Some(t.battery.energy_j)),
                csv_num(Some(t.battery.peukert_exponent)),
                workload.into(),
                csv_num(period_ms),
                csv_num(p.map(|p| p.hours)),
                csv_num(p.map(|p| p.inferences)),
                csv_num(p.map(|p| p.mean_power_w)),
                csv_num(r.gain_vs_dense_top),
                csv_num(r.gain_vs_block_top),
                r.complete.to_string(),
                r.meets_deadline.map(|m| m.to_string()).unwrap_or_default(),
                csv_field(r.outcome.as_ref().err().map(String::as_str).unwrap_or("")),
                csv_field(&r.note),
            ];
            out.push_str(&fields.join(","));
            out.push('\n');
        }
    }
    out
}

/// Writes `battery.csv` into the run directory (atomically); returns its path.
pub fn write_battery_csv(dir: &Path, tables: &[BatteryTable]) -> Result<PathBuf> {
    let path = dir.join(BATTERY_CSV);
    write_atomic(&path, battery_csv(tables).as_bytes())?;
    Ok(path)
}
