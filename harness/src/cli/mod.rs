//! The `hil` command line: one file per subcommand, each a clap `Args` struct
//! with a `run()` returning the process exit code. `main` only parses and
//! prints errors.

mod agent;
mod battery;
mod board;
mod compare;
mod monitor;
mod report;
mod run;
mod sim;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// hil: hardware-in-the-loop benchmarking of sparse Transformer inference on ARM boards.
///
/// A scenario YAML names boards (over SSH, or a simulated board on this host), DVFS
/// frequency levels, model variants (dense, block-pruned, pattern sets) and how to
/// measure. `hil run` pins each level, runs the on-board agent and records latency
/// (and energy, with a power monitor) per cell under results/<scenario>/<UTC stamp>/.
#[derive(Debug, Parser)]
#[command(name = "hil", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    Run(run::RunCmd),
    Validate(validate::ValidateCmd),
    Board(board::BoardCmd),
    Agent(agent::AgentCmd),
    Monitor(monitor::MonitorCmd),
    Report(report::ReportCmd),
    Battery(battery::BatteryCmd),
    Compare(compare::CompareCmd),
    Sim(sim::SimCmd),
}

/// Parses the command line and runs it; errors are printed with their whole context chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that only read files and print end quietly when their reader goes away (`| head`),
    // as Unix tools do, instead of panicking on the broken pipe. Commands that talk to boards keep
    // Rust's default (SIGPIPE ignored): a dead agent or SSH connection is then an error they
    // handle, restoring cpufreq settings, not a signal that kills them.
    if matches!(cli.command, Commands::Validate(_) | Commands::Report(_) | Commands::Battery(_) | Commands::Compare(_))
    {
        // SAFETY: resetting a signal's disposition before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Commands::Run(c) => c.run(),
        Commands::Validate(c) => c.run(),
        Commands::Board(c) => c.run(),
        Commands::Agent(c) => c.run(),
        Commands::Monitor(c) => c.run(),
        Commands::Report(c) => c.run(),
        Commands::Battery(c) => c.run(),
        Commands::Compare(c) => c.run(),
        Commands::Sim(c) => c.run(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
