use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::analysis::battery::{battery_csv, BATTERY_CSV};
use crate::analysis::{analyze_run, load_run, AnalysisOptions, BatteryModel, ProjectionSource};
use crate::scenario::Workload;

/// Project battery life per policy from a run's measurements, and write battery.csv.
///
/// From the measured energy per inference, idle power and latency of every cell: hours of
/// battery life and inferences per charge for dense and block at the top frequency, every
/// static (frequency, variant) pair, and the RT3 schedule (at each level, among the pattern
/// sets meeting the latency deadline, judged on p99, the most accurate when the scenario gives
/// each an accuracy, else the one with the best measured output fidelity, else the least
/// sparse; with the scenario's battery shares, default 50/30/20 % highest level first). Gains
/// are against dense and block at the top frequency. Beside it, RT3's analytic model (37,800 J, P = f x V^2 x 1e-10, latency
/// scaled by 1/f from the top level) from the same measurements.
///
/// Battery: --capacity-mah/--voltage when given (for every board), else the scenario board's
/// `battery`, else RT3's 37,800 J. --peukert, when given, replaces the Peukert exponent of
/// whichever battery that is (the scenario's peukert_exponent, else 1 = ideal); the exponent
/// never raises the capacity above nominal (below the rated C/20 load a battery gives its
/// nominal energy). Back to back, an inference costs its window's energy per inference and
/// takes its window's duration per inference (not the mean latency, which leaves out the
/// time between inferences). The workload is the scenario's policy.workload unless --period-ms
/// is given. Writes RUN_DIR/battery.csv, or RUN_DIR/battery-whatif.csv when any option
/// above changes the battery, workload or model (the run's battery.csv stays what its report
/// shows). Exit code 0, or 2 when nothing can be projected or an
/// option is out of range (every number is checked: NaN, infinities and negatives are refused).
#[derive(Debug, Args)]
pub struct BatteryCmd {
    /// Results directory of a run (results/<scenario>/<UTC stamp>).
    run_dir: PathBuf,
    /// Battery capacity in mAh, above 0 and at most 10,000,000 (needs --voltage); replaces
    /// every board's battery, the scenario's included.
    #[arg(long, value_name = "N", requires = "voltage")]
    capacity_mah: Option<f64>,
    /// Nominal battery voltage in volts, above 0 and at most 100, for --capacity-mah.
    #[arg(long, value_name = "V", requires = "capacity_mah")]
    voltage: Option<f64>,
    /// One inference every N milliseconds (above 0, at most a year), idling at the measured
    /// idle power in between (default: the scenario's policy.workload).
    #[arg(long, value_name = "N")]
    period_ms: Option<f64>,
    /// Peukert exponent, 1 (ideal) to 2; typical Li-ion 1.02-1.1, rated at 20 h. Replaces the
    /// battery's own (the scenario's peukert_exponent), whichever battery is used.
    #[arg(long, value_name = "K")]
    peukert: Option<f64>,
    /// Core voltage per DVFS level, highest level first, each above 0 and at most 5 V, for
    /// RT3's power model (default: RT3's 1.24,1.06625,0.9925 V when the run has three levels).
    #[arg(long, value_name = "V,V,..", value_delimiter = ',')]
    voltages: Option<Vec<f64>>,
}

/// Where a what-if projection is written, beside the run's own battery.csv.
pub const BATTERY_WHAT_IF_CSV: &str = "battery-whatif.csv";

/// Largest `--capacity-mah` (as the scenario's `capacity_mah`).
pub const MAX_CAPACITY_MAH: f64 = 10_000_000.0;
/// Largest `--voltage` (as the scenario's `nominal_voltage_v`).
pub const MAX_BATTERY_VOLTAGE_V: f64 = 100.0;
/// Largest `--voltages` entry: CPU core voltages are around 1 V (RT3's: 0.99-1.24 V).
pub const MAX_CORE_VOLTAGE_V: f64 = 5.0;
/// Longest `--period-ms`: a year.
pub const MAX_PERIOD: Duration = Duration::from_secs(86_400 * 365);

/// `value` for `arg` when it is finite and in `(lo, hi]` (`[lo, hi]` with `lo_inclusive`);
/// otherwise an error naming the argument, the value and the range.
fn check_range(arg: &str, value: f64, lo: f64, lo_inclusive: bool, hi: f64, what: &str) -> Result<f64> {
    let above = if lo_inclusive { value >= lo } else { value > lo };
    if !(value.is_finite() && above && value <= hi) {
        let from = if lo_inclusive { "from" } else { "above" };
        bail!("{arg} {value:?}: {what} must be a number {from} {lo} and at most {hi}");
    }
    Ok(value)
}

impl BatteryCmd {
    /// Every numeric option checked and turned into [`AnalysisOptions`]; errors name the
    /// option and its value.
    pub fn options(&self) -> Result<AnalysisOptions> {
        let mut options = AnalysisOptions::default();
        if let (Some(mah), Some(v)) = (self.capacity_mah, self.voltage) {
            let mah = check_range("--capacity-mah", mah, 0.0, false, MAX_CAPACITY_MAH, "the capacity in mAh")?;
            let v = check_range("--voltage", v, 0.0, false, MAX_BATTERY_VOLTAGE_V, "the nominal voltage in volts")?;
            options.battery_override =
                Some(BatteryModel::from_mah(mah, v, "--capacity-mah/--voltage").map_err(anyhow::Error::msg)?);
        }
        if let Some(ms) = self.period_ms {
            if !(ms.is_finite() && ms > 0.0) {
                bail!("--period-ms {ms:?}: the period must be a positive number of milliseconds");
            }
            let period = Duration::try_from_secs_f64(ms / 1e3).ok().filter(|p| *p <= MAX_PERIOD).ok_or_else(|| {
                anyhow::anyhow!("--period-ms {ms:?}: longer than a year; give the period in milliseconds")
            })?;
            if period.is_zero() {
                bail!("--period-ms {ms:?}: shorter than a nanosecond");
            }
            options.workload_override = Some(Workload::Periodic { period });
        }
        if let Some(k) = self.peukert {
            if !(k.is_finite() && (1.0..=2.0).contains(&k)) {
                bail!("--peukert {k:?}: a Peukert exponent is between 1 (ideal) and 2");
            }
            options.peukert_override = Some(k);
        }
        if let Some(volts) = &self.voltages {
            for (i, &v) in volts.iter().enumerate() {
                check_range(
                    "--voltages",
                    v,
                    0.0,
                    false,
                    MAX_CORE_VOLTAGE_V,
                    &format!("core voltage {} (volts)", i + 1),
                )?;
            }
            options.voltages_v = Some(volts.clone());
        }
        Ok(options)
    }

    pub fn run(self) -> Result<ExitCode> {
        let options = self.options()?;
        let run = load_run(&self.run_dir)?;
        if run.cells.is_empty() {
            bail!("{}: the run has no finished cells, nothing to project", self.run_dir.display());
        }
        // RT3's model is built per board, from that board's levels: one voltage per level of each.
        if let Some(volts) = &options.voltages_v {
            let mut levels: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
            for key in run.cells.iter().map(|c| c.key()) {
                levels.entry(key.board.clone()).or_default().push(key.freq_khz);
            }
            for (board, levels) in &mut levels {
                levels.sort_unstable_by(|a, b| b.cmp(a));
                levels.dedup();
                if volts.len() != levels.len() {
                    let shown: Vec<String> = levels.iter().map(|k| format!("{} MHz", k / 1000)).collect();
                    bail!(
                        "--voltages: {} voltage(s) given, board {board} has {} level(s) ({}); give one per level, \
                         highest first",
                        volts.len(),
                        levels.len(),
                        shown.join(", ")
                    );
                }
            }
        }
        let analysis = analyze_run(&run, &options);
        let measured: Vec<_> = analysis.battery.iter().filter(|t| t.source == ProjectionSource::Measured).collect();
        if measured.iter().all(|t| t.rows.iter().all(|r| r.outcome.is_err())) {
            let mut reasons: Vec<String> =
                measured.iter().flat_map(|t| t.rows.iter().filter_map(|r| r.outcome.as_ref().err().cloned())).collect();
            reasons.sort();
            reasons.dedup();
            bail!(
                "{}: no policy can be projected:\n  {}",
                self.run_dir.display(),
                reasons.into_iter().take(5).collect::<Vec<_>>().join("\n  ")
            );
        }
        if run.cells.iter().any(|c| c.simulated) {
            println!("NOTE: this run used a SIMULATED board: its energies come from a power model, not a board.\n");
        }
        for schedule in &analysis.schedules {
            println!("{}", schedule.to_markdown());
        }
        for table in &analysis.battery {
            println!("{}", table.to_markdown());
        }
        // A what-if (any option that changes the battery, workload or model) goes beside the run's
        // own battery.csv, which stays what the run's report shows.
        let what_if = self.capacity_mah.is_some()
            || self.period_ms.is_some()
            || self.peukert.is_some()
            || self.voltages.is_some();
        let path = run.dir.join(if what_if { BATTERY_WHAT_IF_CSV } else { BATTERY_CSV });
        crate::results::write_atomic(&path, battery_csv(&analysis.battery).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
        Ok(ExitCode::SUCCESS)
    }
}
