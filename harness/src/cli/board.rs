use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::board_lock::BoardLock;
use crate::connect::open_board;
use crate::probe::{probe, ProbeReport};
use crate::runner::{effective_spec, facts_from_probe, start_simulator};
use crate::scenario::{load_scenario, validate_against_probe, BoardSpec, Scenario};

/// Inspect boards.
#[derive(Debug, Args)]
pub struct BoardCmd {
    #[command(subcommand)]
    command: BoardCommands,
}

#[derive(Debug, Subcommand)]
enum BoardCommands {
    /// Connect to the scenario's boards and report what they have: architecture, CPU model,
    /// cores, cpufreq policies (related CPUs, frequencies, governors, current/min/max),
    /// thermal zones, memory and kernel; then check the scenario against it (levels the
    /// board does not offer, CPUs it does not have, a missing thermal zone). Nothing is
    /// written to a real board. A simulated board (`sim: true`) is started for the probe, as
    /// `hil run` starts it (its fake tree written into its workdir), and is refused while a
    /// run is using it.
    Probe {
        /// Scenario YAML file naming the boards.
        scenario: PathBuf,
        /// Only this board.
        #[arg(long)]
        board: Option<String>,
        /// One JSON object per board, one per line, instead of text.
        #[arg(long)]
        json: bool,
    },
}

impl BoardCmd {
    pub fn run(self) -> Result<ExitCode> {
        let BoardCommands::Probe { scenario: path, board, json } = self.command;
        let scenario = load_scenario(&path)?;
        let selected: Vec<_> =
            scenario.boards.iter().filter(|b| board.as_deref().is_none_or(|n| n == b.name)).cloned().collect();
        if selected.is_empty() {
            let names: Vec<_> = scenario.boards.iter().map(|b| b.name.as_str()).collect();
            bail!("no board {:?} in {} (boards: {})", board.unwrap_or_default(), path.display(), names.join(", "));
        }
        // Boards from labgrid are acquired for the probe and given back when it is done.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let only = crate::scenario::Scenario { boards: selected, ..scenario.clone() };
        let run_boards = crate::lab::resolve_boards(&only, &stop)?;
        let scenario =
            crate::scenario::Scenario { boards: run_boards.iter().map(|b| b.spec.clone()).collect(), ..only };
        let specs: Vec<_> = scenario.boards.iter().collect();
        let mut failed = false;
        for spec in specs {
            let result = probe_board(spec, &scenario);
            match result {
                Ok(report) => {
                    let check = validate_against_probe(&scenario, &spec.name, &facts_from_probe(&report));
                    if json {
                        println!("{}", serde_json::to_string(&report)?);
                    } else {
                        println!("{report}");
                    }
                    match check {
                        Ok(resolved) => eprintln!(
                            "board {}: scenario OK (policies {}, levels {} kHz)",
                            spec.name,
                            resolved.policies.join(","),
                            resolved.levels_khz.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(",")
                        ),
                        Err(e) => {
                            failed = true;
                            eprintln!("board {}: the scenario does not fit this board:\n{e}", spec.name);
                        }
                    }
                }
                Err(e) => {
                    failed = true;
                    eprintln!("error: board {}: {e:#}", spec.name);
                }
            }
        }
        Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
    }
}

/// Probes one board; a simulated one is started first (its fake sysfs tree in its workdir, no
/// monitor) under the board's lock, so a run using it is not disturbed.
fn probe_board(spec: &BoardSpec, scenario: &Scenario) -> Result<ProbeReport> {
    if !spec.sim {
        let mut board = open_board(spec)?;
        return Ok(probe(board.as_mut(), &spec.sysfs_root)?);
    }
    let _lock = BoardLock::acquire(spec, "hil board probe")?;
    let sim = start_simulator(spec, scenario, false)?;
    let effective = effective_spec(spec, Some(&sim));
    let mut board = open_board(&effective)?;
    Ok(probe(board.as_mut(), &effective.sysfs_root)?)
}
