use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::sim::simulator::{SimOptions, Simulator};

/// The simulated board, on its own.
#[derive(Debug, Args)]
pub struct SimCmd {
    #[command(subcommand)]
    command: SimCommands,
}

#[derive(Debug, Subcommand)]
enum SimCommands {
    /// Run a simulated board's hardware until Ctrl-C: a fake sysfs tree under ROOT/sys with
    /// an RPi-4-like cpufreq policy whose governor semantics are kept by the simulator, and
    /// an emulated Nordic PPK2 on a pseudo-terminal linked at ROOT/ppk2. A scenario board
    /// reached over SSH (e.g. on loopback) can then use `sysfs_root: ROOT/sys` and a ppk2
    /// monitor on `ROOT/ppk2`. Agents started through ROOT/agent.pid's wrapper are throttled;
    /// see `hil run` for the simulated board it builds itself (`sim: true`).
    Serve {
        /// Directory for the fake sysfs tree, the PPK2 link and the agent pid file.
        #[arg(long)]
        root: PathBuf,
        /// Name used for the cgroup that throttles the agent.
        #[arg(long, default_value = "serve")]
        name: String,
        /// Stop after this many seconds (default: run until Ctrl-C/SIGTERM).
        #[arg(long)]
        seconds: Option<f64>,
    },
}

impl SimCmd {
    pub fn run(self) -> Result<ExitCode> {
        let SimCommands::Serve { root, name, seconds } = self.command;
        let root = std::path::absolute(&root).with_context(|| format!("resolving {}", root.display()))?;
        let sim = Simulator::start(
            &root,
            SimOptions { name, power: Default::default(), agent_threads: 1, with_monitor: true },
        )
        .with_context(|| format!("starting the simulator in {}", root.display()))?;
        println!("{}", sim.describe());
        println!("sysfs_root: {}", sim.sysfs_root());
        if let Some(p) = sim.ppk2_port() {
            println!("ppk2 port:  {}", p.display());
        }
        println!("agent wrapper (exec_prefix): {}", sim.run_agent_script().display());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
        let deadline = seconds.map(|s| std::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
        while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| std::time::Instant::now() < d) {
            std::thread::sleep(Duration::from_millis(100));
        }
        sim.shutdown();
        eprintln!("simulator stopped");
        Ok(ExitCode::SUCCESS)
    }
}
