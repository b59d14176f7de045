use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::analysis::battery::write_battery_csv;
use crate::analysis::{analyze_run, load_run, AnalysisOptions, BatteryModel, ProjectionSource};
use crate::scenario::Workload;

/// Project battery life per policy from a run's measurements, and write battery.csv.
///
/// From the measured energy per inference, idle power and latency of every cell: hours of
/// battery life and inferences per charge for dense and block at the top frequency, every
/// static (frequency, variant) pair, and the RT3 schedule (the least sparse variant meeting
/// the latency deadline, judged on p99, at each level, with the scenario's battery shares,
/// default 50/30/20 % highest level first). Gains are against dense and block at the top
/// frequency. Beside it, RT3's analytic model (37,800 J, P = f x V^2 x 1e-10, latency
/// scaled by 1/f from the top level) from the same measurements.
///
/// The battery is the scenario board's `battery`, else --capacity-mah/--voltage, else RT3's
/// 37,800 J. The workload is the scenario's policy.workload unless --period-ms is given.
/// Writes RUN_DIR/battery.csv. Exit code 0, or 2 when nothing can be projected.
#[derive(Debug, Args)]
pub struct BatteryCmd {
    /// Results directory of a run (results/<scenario>/<UTC stamp>).
    run_dir: PathBuf,
    /// Battery capacity in mAh (needs --voltage); overrides the scenario's battery.
    #[arg(long, value_name = "N", requires = "voltage")]
    capacity_mah: Option<f64>,
    /// Nominal battery voltage in volts, for --capacity-mah.
    #[arg(long, value_name = "V", requires = "capacity_mah")]
    voltage: Option<f64>,
    /// One inference every N milliseconds, idling at the measured idle power in between
    /// (default: the scenario's policy.workload).
    #[arg(long, value_name = "N")]
    period_ms: Option<f64>,
    /// Peukert exponent of the battery (1 = ideal; typical Li-ion 1.02-1.1), rated at 20 h.
    #[arg(long, value_name = "K")]
    peukert: Option<f64>,
    /// Core voltage per DVFS level, highest level first, for RT3's power model
    /// (default: RT3's 1.24,1.06625,0.9925 V when the run has three levels).
    #[arg(long, value_name = "V,V,..", value_delimiter = ',')]
    voltages: Option<Vec<f64>>,
}

impl BatteryCmd {
    pub fn run(self) -> Result<ExitCode> {
        let mut options = AnalysisOptions::default();
        if let (Some(mah), Some(v)) = (self.capacity_mah, self.voltage) {
            options.battery_override =
                Some(BatteryModel::from_mah(mah, v, "--capacity-mah/--voltage").map_err(anyhow::Error::msg)?);
        }
        if let Some(ms) = self.period_ms {
            if !(ms.is_finite() && ms > 0.0) {
                bail!("--period-ms {ms}: the period must be a positive number of milliseconds");
            }
            let period = Duration::try_from_secs_f64(ms / 1e3)
                .ok()
                .filter(|p| *p <= Duration::from_secs(86_400 * 365))
                .ok_or_else(|| {
                    anyhow::anyhow!("--period-ms {ms}: longer than a year; give the period in milliseconds")
                })?;
            options.workload_override = Some(Workload::Periodic { period });
        }
        if let Some(k) = self.peukert {
            if !(k.is_finite() && (1.0..=2.0).contains(&k)) {
                bail!("--peukert {k}: a Peukert exponent is between 1 (ideal) and 2");
            }
            options.peukert_override = Some(k);
        }
        options.voltages_v = self.voltages;
        let run = load_run(&self.run_dir)?;
        if run.cells.is_empty() {
            bail!("{}: the run has no finished cells, nothing to project", self.run_dir.display());
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
        let path = write_battery_csv(&run.dir, &analysis.battery)
            .with_context(|| format!("writing battery.csv into {}", run.dir.display()))?;
        println!("wrote {}", path.display());
        Ok(ExitCode::SUCCESS)
    }
}
