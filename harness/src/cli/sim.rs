use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::sim::simulator::{SimOptions, Simulator};

/// How often `serve` looks at its stop flag and deadline.
const POLL: Duration = Duration::from_millis(50);
/// `serve` exits at most this long after SIGINT/SIGTERM/SIGHUP or its `--seconds` limit.
const SHUTDOWN_LIMIT: Duration = Duration::from_millis(1500);

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
    /// monitor on `ROOT/ppk2`. An agent started through the wrapper ROOT/run-agent (the board's
    /// `exec_prefix`) stretches its inferences to the simulated frequency and is the load of the
    /// power model; the tree carries the marker ROOT/sys/hil-simulated.json, so the board is
    /// reported simulated. See `hil run` for the simulated board it builds itself (`sim: true`).
    Serve {
        /// Directory for the fake sysfs tree, the PPK2 link and the agent pid file.
        #[arg(long)]
        root: PathBuf,
        /// The board's name, recorded in the simulator's marker.
        #[arg(long, default_value = "serve")]
        name: String,
        /// Stop after this many seconds, 0 to a year (default: run until Ctrl-C/SIGTERM). Either way it
        /// exits within 2 s of being asked, whatever a PPK2 client left behind.
        #[arg(long)]
        seconds: Option<f64>,
    },
}

/// Longest `--seconds`: a year (a longer run is one that should be stopped by a signal).
pub const MAX_SERVE_SECONDS: f64 = 365.0 * 86_400.0;

/// `--seconds S` as a duration: a finite number from 0 to a year (0 stops at once). NaN,
/// infinities, negatives and larger values are errors naming the argument and value.
pub fn serve_limit(seconds: f64) -> Result<Duration> {
    if !(seconds.is_finite() && (0.0..=MAX_SERVE_SECONDS).contains(&seconds)) {
        anyhow::bail!(
            "--seconds {seconds:?}: give a number of seconds from 0 to {MAX_SERVE_SECONDS} (a year), or leave it out to \
             run until Ctrl-C"
        );
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl SimCmd {
    pub fn run(self) -> Result<ExitCode> {
        let SimCommands::Serve { root, name, seconds } = self.command;
        // Checked before anything starts: a bad limit must not leave a simulator behind.
        let limit = seconds.map(serve_limit).transpose()?;
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
        // SIGINT, SIGTERM and SIGHUP (ctrlc's "termination" feature) set the flag the loop below polls;
        // a second signal while shutting down ends the process at once.
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        ctrlc::set_handler(move || {
            if s.swap(true, Ordering::SeqCst) {
                eprintln!("second signal: exiting without cleanup");
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C handler")?;
        let deadline = limit.and_then(|d| Instant::now().checked_add(d));
        while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
            std::thread::sleep(POLL);
        }
        stop.store(true, Ordering::SeqCst);
        // Shutdown is bounded by the simulator itself; the watchdog makes sure the process ends within
        // SHUTDOWN_LIMIT of the request even if something else wedges.
        std::thread::Builder::new()
            .name("sim-shutdown-watchdog".into())
            .spawn(|| {
                std::thread::sleep(SHUTDOWN_LIMIT);
                eprintln!("simulator shutdown took over {} ms: exiting anyway", SHUTDOWN_LIMIT.as_millis());
                std::process::exit(1);
            })
            .context("starting the shutdown watchdog")?;
        let begin = Instant::now();
        sim.shutdown();
        eprintln!("simulator stopped ({} ms)", begin.elapsed().as_millis());
        Ok(ExitCode::SUCCESS)
    }
}
