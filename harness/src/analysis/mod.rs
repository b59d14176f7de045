//! Analysis of a results directory: statistics per cell, the RT3 schedule, battery
//! projections (measured and the paper's analytic model) and regression comparisons.
//!
//! How the pieces fit (measurement, analysis and reporting stay apart):
//! - [`load_run`] reads a run directory (`cells.jsonl`, `scenario.yaml`, `run.json`, and
//!   `switch.parquet` through [`switch::load_switch_costs`]) into a plain [`RunData`]; it is
//!   the only I/O here apart from [`battery::write_battery_csv`].
//! - [`cells::aggregate_cells`] pools the repeats of each (board, frequency, variant) into a
//!   [`CellStats`]: latency over every timed inference with confidence intervals, energy per
//!   inference across repeats, checksums and measurement flags.
//! - [`schedule::rt3_schedule`] picks, per frequency level, the pattern set RT3 would run
//!   (dense and block are baselines, never scheduled).
//! - [`battery::project_board`] turns measured energy, idle power and latency into battery
//!   life per policy (the baselines, every static pair, the best static one, the RT3
//!   schedule); [`rt3_model::model_projection`] does the same with the paper's formulas.
//! - [`switch`] holds the measured reconfiguration costs against RT3's 45 ms.
//! - [`compare::compare_runs`] matches the cells of two runs and decides what regressed.
//! - [`analyze_run`] runs the first four for a whole run: what `hil battery` and the reports call.
//!
//! Every function past the loader is pure over plain data, so reports regenerate identically
//! from the same directory (all resampling is seeded).

pub mod battery;
pub mod cells;
pub mod compare;
pub mod load;
pub mod rt3_model;
pub mod schedule;
pub mod switch;

pub use battery::{BatteryModel, BatteryTable, LevelShare, PolicyKind, PolicyRow, Projection, ProjectionSource};
pub use cells::{aggregate_cells, CellGroupKey, CellStats};
pub use compare::{compare_runs, CompareConfig, Comparison, Verdict};
pub use load::{load_run, RunData, SelftestFailure, SelftestSummary};
pub use schedule::{rt3_schedule, Ranking, Rt3Schedule, ScheduleLevel, ScheduleRule};
pub use switch::{SwitchCost, SwitchData, RT3_SWITCH_BUDGET_MS};

use crate::scenario::{Scenario, Workload};
use crate::stats::SummaryConfig;

/// Choices that are not in the scenario (battery overrides from the command line, the
/// bootstrap's size and seed). What the command line gives wins over the scenario: see
/// [`battery_model`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnalysisOptions {
    pub summary: SummaryConfig,
    /// Replaces every board's battery, the scenario's included (`hil battery --capacity-mah N
    /// --voltage V`).
    pub battery_override: Option<BatteryModel>,
    /// Overrides the scenario's workload (`hil battery --period-ms N`).
    pub workload_override: Option<Workload>,
    /// Replaces the Peukert exponent of whichever battery is used, the scenario's
    /// `peukert_exponent` included (`--peukert`).
    pub peukert_override: Option<f64>,
    /// Core voltages per level, highest first, for the paper's power model (`--voltages`);
    /// `None`: RT3's own three voltages when there are three levels.
    pub voltages_v: Option<Vec<f64>>,
}

/// Everything derived from one run, per board.
#[derive(Clone, Debug)]
pub struct RunAnalysis {
    /// One per (board, frequency, variant), boards in name order, frequencies highest first.
    pub cells: Vec<CellStats>,
    /// One per board.
    pub schedules: Vec<Rt3Schedule>,
    /// Per board: the measured projection, then the paper-model one.
    pub battery: Vec<BatteryTable>,
    /// How the confidence intervals were made ([`SummaryConfig::method`]).
    pub method: String,
}

/// The battery projected for `board`, by precedence (the command line wins, as command-line
/// options do everywhere in `hil`):
/// 1. `options.battery_override` (`--capacity-mah/--voltage`) when given;
/// 2. else the scenario board's `battery`;
/// 3. else RT3's 37,800 J ideal battery.
///
/// Then `options.peukert_override` (`--peukert`), when given, replaces the exponent of that
/// battery, whatever it was (the scenario's `peukert_exponent`, else 1), and the battery's
/// `source` says so.
pub fn battery_model(scenario: &Scenario, board: &str, options: &AnalysisOptions) -> BatteryModel {
    let mut model = options.battery_override.clone().unwrap_or_else(|| {
        scenario
            .board(board)
            .and_then(|b| b.battery.as_ref())
            .map(|spec| BatteryModel::from_spec(spec, &format!("scenario boards[{board}].battery")))
            .unwrap_or_else(BatteryModel::rt3_default)
    });
    if let Some(k) = options.peukert_override {
        if k != model.peukert_exponent {
            model.source =
                format!("{}; Peukert exponent {k} from --peukert (was {})", model.source, model.peukert_exponent);
        }
        model.peukert_exponent = k;
    }
    model
}

/// Statistics, RT3 schedule and battery projections (measured and modelled) for a run.
pub fn analyze_run(run: &RunData, options: &AnalysisOptions) -> RunAnalysis {
    let cells = aggregate_cells(&run.cells, &options.summary);
    let rule = ScheduleRule::from_scenario(&run.scenario);
    let workload = options.workload_override.unwrap_or(run.scenario.policy.workload);
    let mut boards: Vec<&str> = cells.iter().map(|c| c.key.board.as_str()).collect();
    boards.dedup();
    let mut schedules = Vec::new();
    let mut battery = Vec::new();
    for board in boards {
        let board_cells: Vec<&CellStats> = cells.iter().filter(|c| c.key.board == board).collect();
        let rule = rule.for_board(&board_cells);
        let schedule = rt3_schedule(board, &board_cells, &rule);
        let shares = run.scenario.policy.shares_for(schedule.levels.len());
        // A board from a labgrid lab is named after its place; its settings are its entry's.
        let entry = run.meta.board(board).and_then(|b| b.labgrid.as_ref()).map_or(board, |l| l.entry.as_str());
        let model = battery_model(&run.scenario, entry, options);
        battery.push(battery::project_board(board, &board_cells, &schedule, &shares, &model, workload));
        battery.push(rt3_model::model_projection(board, &board_cells, &rule, &shares, options.voltages_v.as_deref()));
        schedules.push(schedule);
    }
    RunAnalysis { cells, schedules, battery, method: options.summary.method() }
}

impl RunAnalysis {
    /// The latency deadline on `board` in ms (a relative one resolved against that board's cells);
    /// `None` without a deadline or when it could not be resolved.
    pub fn deadline_ms(&self, board: &str) -> Option<f64> {
        self.schedules.iter().find(|s| s.board == board).and_then(|s| s.rule.deadline_ms)
    }
}

/// Formats a float for tables: `-` for missing or non-finite values.
pub(crate) fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "-".into(),
    }
}
