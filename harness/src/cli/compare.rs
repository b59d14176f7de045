use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::analysis::{compare_runs, load_run, CompareConfig};
use crate::results::write_atomic;

/// Compare a candidate run against a base run and flag regressions.
///
/// Cells are matched by (board, frequency, variant). The repeat is the unit: each repeat of a
/// cell gives one latency (the median of its timed inferences) and one gross energy per
/// inference; thousands of inferences of one repeat are not independent measurements, so
/// they are never pooled into the test. For each metric the change is the ratio of the
/// geometric means over repeats (candidate / base - 1) with a (1 - alpha) Welch t interval on
/// the logarithms and Welch's p-value; nothing is resampled, so the result is deterministic.
///
/// Verdicts: REGRESSED when the interval lies above 0 (p < alpha) AND the change exceeds
/// +threshold %; improved, the mirror image; inconclusive with fewer than 3 repeats on a side,
/// or when the change exceeds the threshold but its interval includes 0 (the verdict says how
/// many repeats per side would detect a change of that size with 80 % power); unchanged
/// otherwise. A change whose interval includes 0 is never a regression. Changed output
/// checksums and failed selftests are correctness regressions. Unmatched cells are listed.
///
/// Prints a Markdown table. Exit code 1 when anything regressed, 0 otherwise (inconclusive
/// metrics are listed but do not fail), 2 when the input is unusable (a missing directory, no
/// cells, runs of different models) or an option is out of range.
#[derive(Debug, Args)]
pub struct CompareCmd {
    /// Results directory of the base (reference) run.
    base: PathBuf,
    /// Results directory of the candidate run.
    candidate: PathBuf,
    /// Noise threshold in percent, above 0 and at most 100: smaller changes never count as
    /// regressions (default: the candidate scenario's regression.threshold_pct, else 3).
    #[arg(long, value_name = "PCT")]
    threshold: Option<f64>,
    /// Significance level, above 0 and at most 0.5; intervals are at confidence 1 - A
    /// (default: the candidate scenario's regression.alpha, else 0.05).
    #[arg(long, value_name = "A")]
    alpha: Option<f64>,
    /// Also write the result as JUnit XML (for CI systems) to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

/// The range `--threshold` accepts (percent), as the scenario's `regression.threshold_pct`.
pub const THRESHOLD_RANGE_PCT: (f64, f64) = (0.0, 100.0);
/// The range `--alpha` accepts, as the scenario's `regression.alpha`.
pub const ALPHA_RANGE: (f64, f64) = (0.0, 0.5);

/// `--threshold PCT` checked: above 0, at most 100 (NaN and infinities refused).
pub fn check_threshold(t: f64) -> Result<f64> {
    let (lo, hi) = THRESHOLD_RANGE_PCT;
    if !(t.is_finite() && t > lo && t <= hi) {
        bail!(
            "--threshold {t:?}: the noise threshold is a percentage above {lo} and at most {hi} (as the scenario's \
             regression.threshold_pct)"
        );
    }
    Ok(t)
}

/// `--alpha A` checked: above 0, at most 0.5 (NaN and infinities refused).
pub fn check_alpha(a: f64) -> Result<f64> {
    let (lo, hi) = ALPHA_RANGE;
    if !(a.is_finite() && a > lo && a <= hi) {
        bail!("--alpha {a:?}: the significance level must be above {lo} and at most {hi} (as the scenario's regression.alpha)");
    }
    Ok(a)
}

impl CompareCmd {
    /// `config` with `--threshold` and `--alpha` applied, each checked first.
    pub fn apply_overrides(&self, mut config: CompareConfig) -> Result<CompareConfig> {
        if let Some(t) = self.threshold {
            config.threshold_pct = check_threshold(t)?;
        }
        if let Some(a) = self.alpha {
            config.alpha = check_alpha(a)?;
        }
        Ok(config)
    }

    pub fn run(self) -> Result<ExitCode> {
        // Options before files: a bad number is reported whatever the directories hold.
        self.apply_overrides(CompareConfig::default())?;
        let base = load_run(&self.base).with_context(|| format!("base run {}", self.base.display()))?;
        let candidate =
            load_run(&self.candidate).with_context(|| format!("candidate run {}", self.candidate.display()))?;
        let mut config = CompareConfig::default();
        if let Some(r) = &candidate.scenario.regression {
            config.threshold_pct = r.threshold_pct;
            config.alpha = r.alpha;
        }
        let config = self.apply_overrides(config)?;
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
