use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::analysis::{compare_runs, load_run, CompareConfig};
use crate::results::write_atomic;

/// Compare a candidate run against a base run and flag regressions.
///
/// Cells are matched by (board, frequency, variant). Latency (all inferences of all repeats
/// pooled, median) and gross energy per inference (mean over repeats) get a change with a
/// bootstrap confidence interval and a Mann-Whitney U test; a metric regressed only when
/// the change is significant (p < alpha) AND above the threshold. Changed output checksums
/// and failed selftests are correctness regressions. Unmatched cells are listed.
///
/// Prints a Markdown table. Exit code 1 when anything regressed, 0 otherwise, 2 when the
/// input is unusable (a missing directory, no cells, runs of different models).
#[derive(Debug, Args)]
pub struct CompareCmd {
    /// Results directory of the base (reference) run.
    base: PathBuf,
    /// Results directory of the candidate run.
    candidate: PathBuf,
    /// Noise threshold in percent: smaller changes never count as regressions
    /// (default: the candidate scenario's regression.threshold_pct, else 3).
    #[arg(long, value_name = "PCT")]
    threshold: Option<f64>,
    /// Significance level of the test (default: the candidate scenario's regression.alpha, else 0.05).
    #[arg(long, value_name = "A")]
    alpha: Option<f64>,
    /// Also write the result as JUnit XML (for CI systems) to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

impl CompareCmd {
    pub fn run(self) -> Result<ExitCode> {
        let base = load_run(&self.base).with_context(|| format!("base run {}", self.base.display()))?;
        let candidate =
            load_run(&self.candidate).with_context(|| format!("candidate run {}", self.candidate.display()))?;
        let mut config = CompareConfig::default();
        if let Some(r) = &candidate.scenario.regression {
            config.threshold_pct = r.threshold_pct;
            config.alpha = r.alpha;
        }
        if let Some(t) = self.threshold {
            if !(t.is_finite() && t >= 0.0) {
                bail!("--threshold {t}: the threshold is a non-negative percentage");
            }
            config.threshold_pct = t;
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0 && a < 1.0) {
                bail!("--alpha {a}: the significance level must be between 0 and 1");
            }
            config.alpha = a;
        }
        let comparison = compare_runs(&base, &candidate, &config)?;
        print!("{}", comparison.to_markdown());
        if let Some(path) = &self.junit {
            write_atomic(path, comparison.to_junit().as_bytes())
                .with_context(|| format!("--junit: writing {}", path.display()))?;
            println!("\nwrote {}", path.display());
        }
        Ok(if comparison.regressed() { ExitCode::from(1) } else { ExitCode::SUCCESS })
    }
}
