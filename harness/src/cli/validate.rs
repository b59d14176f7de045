use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::plan::Plan;
use crate::scenario::load_scenario;

/// Check a scenario without touching any board, and print the plan.
///
/// Every field is validated (names, hosts, paths, numbers, variants, levels); the plan
/// lists boards, levels, variants, the number of cells and an estimated duration.
/// Checks that need the board (offered frequencies, CPUs, thermal zones) happen when
/// `hil run` or `hil board probe` connects, except for a simulated board (`sim: true`), whose
/// tree is known: it is checked here, on this host's CPUs. A board from labgrid is checked against its
/// coordinator (labgrid-client runs, the coordinator answers, enough places match), without
/// acquiring anything. A `note:` line says when a board on this host would share its CPUs with
/// hil (threads that take every CPU hil may use), which blurs its figures. Exit code 0 when
/// valid, 2 otherwise.
#[derive(Debug, Args)]
pub struct ValidateCmd {
    /// Scenario YAML file.
    scenario: PathBuf,
}

impl ValidateCmd {
    pub fn run(self) -> Result<ExitCode> {
        let scenario = load_scenario(&self.scenario)?;
        if let Err(problems) = crate::scenario::check_runnable(&scenario) {
            anyhow::bail!("{}: cannot be run:\n{problems}", self.scenario.display());
        }
        // Boards from labgrid: the client runs, the coordinator answers, enough places carry the
        // tags (nothing is acquired; a failure names the command and its stderr).
        let lab = crate::lab::preflight_all(&scenario)?;
        let plan = Plan::new(&scenario);
        println!("scenario {} ({}) is valid", scenario.name, self.scenario.display());
        for note in crate::scenario::host_sharing_notes(&scenario, crate::scenario::cpus_for_hil()) {
            println!("note: {note}");
        }
        for line in lab {
            println!("{line}");
        }
        println!("{plan}");
        Ok(ExitCode::SUCCESS)
    }
}
