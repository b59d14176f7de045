use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::board_lock::LockError;
use crate::runner::{run_scenario, RunOptions};
use crate::scenario::parse_scenario;

/// Run a scenario: measure every cell on every board and write the results.
///
/// For each board (in parallel), `hil run` connects, restores cpufreq settings left by an
/// interrupted earlier run, probes the board and checks the scenario against it, builds and
/// uploads the agent (only when its SHA-256 differs; verified on the board before it runs),
/// saves the cpufreq settings (also to a restore file on the board), then for every level,
/// variant and repeat: pins the frequency, settles, waits for the thermal zone to cool, runs
/// the agent's timed window and records the cell. Results go to
/// OUT/<scenario>/<UTC stamp>/ (run.json, scenario.yaml, cells.jsonl, cells.parquet,
/// latency.parquet), written after every cell. Ctrl-C (or SIGTERM) stops within about a second
/// wherever the run is (a model load, a cool-down wait, a reconnect backoff, a long window: the
/// cell in progress is abandoned), restores the boards' cpufreq settings, keeps every finished
/// cell and marks the run interrupted in run.json; `--resume RUN_DIR` completes it later, adding
/// a session to run.json.
///
/// At the end it writes report.md/report.html (and battery.csv) into the run directory and
/// prints a summary; when the scenario names `regression.baseline`, it compares against it.
///
/// A cell whose power could not be measured (the monitor was unplugged and did not come back,
/// a window could not be covered by samples after every attempt) is still recorded, with its
/// latency, energy left empty and the reason in `energy_missing_reason`; a cell that fails
/// outright is counted and the board goes on with the next one.
///
/// Exit code: 0 when every cell of every board finished with every figure (and nothing
/// regressed against the baseline), 1 when a board or a cell failed, a board is in use by another
/// hil process on this host (refused before anything is written), the run was interrupted
/// (finished cells are kept) or a regression was found, 2 on unusable input (a
/// `regression.baseline` that is missing is found before any board is touched; one that cannot be
/// compared with the run also exits 2, after it; so does a scenario a board's probe shows it does
/// not fit, e.g. a level it does not offer, with nothing measured), 3 when every cell finished but some of them lack
/// energy on a board that has a power monitor.
#[derive(Debug, Args)]
pub struct RunCmd {
    /// Scenario YAML file.
    scenario: PathBuf,
    /// Results root; the run goes to OUT/<scenario>/<UTC stamp>/.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Complete an interrupted run in this directory (skips its finished cells). The
    /// scenario must be the same file content as when the run started.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Deploy this prebuilt hil-agent instead of building one (it must suit every board).
    #[arg(long, value_name = "PATH", env = "HIL_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// No progress bars (they are off anyway when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

impl RunCmd {
    pub fn run(self) -> Result<ExitCode> {
        let text = std::fs::read_to_string(&self.scenario)
            .with_context(|| format!("reading scenario {}", self.scenario.display()))?;
        let scenario = parse_scenario(&text, &self.scenario.display().to_string())?;
        // A baseline that cannot be read is found now, before any board is touched.
        if let Some(base_dir) = scenario.regression.as_ref().and_then(|r| r.baseline.as_ref()) {
            if let Err(e) = crate::analysis::load_run(base_dir) {
                eprintln!("error: regression.baseline = {}: {e:#}", base_dir.display());
                return Ok(ExitCode::from(2));
            }
        }
        // Resuming a run that is already complete touches no board and adds no session.
        if let Some(dir) = &self.resume {
            if let Some(cells) = crate::runner::resume_is_complete(&scenario, &text, dir)? {
                println!(
                    "nothing to resume: {} is complete ({cells} cells finished, with every figure); its report \
                     stands (`hil report {}` writes it again)",
                    dir.display(),
                    dir.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handler_stop = stop.clone();
        ctrlc::set_handler(move || {
            if handler_stop.swap(true, Ordering::SeqCst) {
                eprintln!("\nhil: still restoring the boards' cpufreq settings; please wait");
            } else {
                eprintln!(
                    "\nhil: stopping now (the cell in progress is abandoned, finished cells are kept); restoring \
                     cpufreq settings; `hil run --resume RUN_DIR` completes the run"
                );
            }
        })
        .context("installing the Ctrl-C/SIGTERM handler")?;
        let opts = RunOptions {
            out_root: self.out,
            resume: self.resume,
            progress: !self.no_progress && std::io::stderr().is_terminal(),
            agent_binary: self.agent_bin,
        };
        let outcome = match run_scenario(&scenario, &text, &opts, stop) {
            Ok(outcome) => outcome,
            // A board another hil process holds (or whose lock file cannot be used) is not bad
            // input: the run is refused like a failed board (exit 1), and nothing was written.
            Err(e) if e.chain().any(|c| c.downcast_ref::<LockError>().is_some()) => {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e),
        };
        println!("results: {}", outcome.dir.display());
        for b in &outcome.boards {
            let status = match (&b.error, b.interrupted) {
                (Some(e), _) => format!("FAILED: {e}"),
                (None, true) => "interrupted".to_string(),
                (None, false) => "ok".to_string(),
            };
            let without = if b.cells_without_energy > 0 {
                format!(", {} of them without energy", b.cells_without_energy)
            } else {
                String::new()
            };
            println!(
                "  board {}: {} cells measured{without}, {} already done, {} failed: {}",
                b.board, b.cells_done, b.cells_skipped, b.cells_failed, status
            );
        }
        match crate::report::write_reports_with_summary(&outcome.dir) {
            Ok((paths, summary)) => {
                println!("report: {} ({})", paths.html.display(), paths.markdown.display());
                print!("{summary}");
            }
            Err(e) => eprintln!("warning: could not write the report: {e:#}"),
        }
        let mut regressed = false;
        let mut baseline_unusable = false;
        if let Some(baseline) = scenario.regression.as_ref().and_then(|r| r.baseline.as_ref().map(|b| (r, b))) {
            let (spec, base_dir) = baseline;
            let config = crate::analysis::CompareConfig {
                threshold_pct: spec.threshold_pct,
                alpha: spec.alpha,
                ..Default::default()
            };
            let compared = crate::analysis::load_run(base_dir)
                .and_then(|base| Ok((base, crate::analysis::load_run(&outcome.dir)?)))
                .and_then(|(base, cand)| Ok(crate::analysis::compare_runs(&base, &cand, &config)?));
            match compared {
                Ok(c) => {
                    println!("\ncompared with the baseline {}:\n{}", base_dir.display(), c.to_markdown());
                    regressed = c.regressed();
                }
                Err(e) => {
                    // A gate that cannot compare must not pass.
                    eprintln!("error: cannot compare with the baseline {}: {e:#}", base_dir.display());
                    baseline_unusable = true;
                }
            }
        }
        let without_energy: usize = outcome.boards.iter().map(|b| b.cells_without_energy).sum();
        if baseline_unusable {
            Ok(ExitCode::from(2))
        } else if outcome.all_ok() && !regressed && without_energy > 0 {
            println!("{without_energy} cell(s) have no energy (see energy_missing_reason in cells.parquet)");
            Ok(ExitCode::from(3))
        } else if outcome.all_ok() && !regressed {
            Ok(ExitCode::SUCCESS)
        } else if outcome.all_ok() {
            println!("REGRESSED against the baseline (see the table above)");
            Ok(ExitCode::from(1))
        } else if outcome.scenario_mismatch_only() {
            println!(
                "the scenario does not fit the board (see the error above): nothing was measured; change {} and \
                 start a new run",
                self.scenario.display()
            );
            Ok(ExitCode::from(2))
        } else {
            for b in outcome.boards.iter().filter(|b| b.scenario_mismatch) {
                println!("board {}: the scenario does not fit it (see above): a resume will not measure it", b.board);
            }
            println!("resume with: hil run {} --resume {}", self.scenario.display(), outcome.dir.display());
            Ok(ExitCode::from(1))
        }
    }
}
