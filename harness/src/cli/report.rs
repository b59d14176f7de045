use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::report::write_reports_with_summary;

/// Regenerate a run's report from its results directory alone.
///
/// Reads RUN_DIR/cells.jsonl, run.json, scenario.yaml and the power files (power_raw/*.parquet
/// when raw power was kept) and writes RUN_DIR/report.md, a self-contained report.html (inline
/// SVG plots, no scripts or external files), plots/*.svg and battery.csv: provenance (boards,
/// kernel, agent version and SHA-256, power monitor and calibration, and a SIMULATED label
/// when a board was simulated), per-cell tables with confidence intervals, latency and energy
/// against frequency, the RT3 schedule, battery life per policy (measured and the paper's
/// model), switching time against RT3's 45 ms and a power trace. Regenerating from the same
/// directory gives byte-identical files. Prints the paths written, then the summary table.
///
/// Exit code: 0 when written, 2 when the directory cannot be read.
#[derive(Debug, Args)]
pub struct ReportCmd {
    /// Results directory of one run (results/<scenario>/<UTC stamp>).
    run_dir: PathBuf,
    /// Print only the paths written, not the summary table.
    #[arg(long)]
    quiet: bool,
}

impl ReportCmd {
    pub fn run(self) -> Result<ExitCode> {
        let (paths, summary) = write_reports_with_summary(&self.run_dir)?;
        for line in paths.lines() {
            println!("{line}");
        }
        if !self.quiet {
            println!();
            print!("{summary}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
