//! The cell runner: boards in parallel, one thread each; per board, for each
//! cell of the plan: pin the level, settle, cool down, run the agent's timed
//! window, check frequency and throttling, record.
//!
//! What it guarantees (the rest of the module is in service of these):
//! - every finished cell is journaled before the next starts ([`ResultsStore`]);
//! - a board's cpufreq settings are saved (on the board too) before the first
//!   write and restored on success, error and Ctrl-C; a crashed run's restore
//!   file is applied at the next connect, before anything else;
//! - one board's failure does not stop the others, and one cell's failure does
//!   not stop its board (only a board that cannot be reached again does);
//! - a cell that fails in a retryable way (SSH drop, agent crash) is retried
//!   after reconnecting, up to `measure.max_attempts`, and attempts are recorded;
//!   a window whose power measurement fell short (samples lost, the window not
//!   covered) is measured again without reconnecting;
//! - a cell without energy is still a cell: when the monitor is gone or a
//!   window cannot be covered after every attempt, its latency is recorded with
//!   energy null and the reason.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use device_agent::protocol::{
    HelloReply, LoadReply, LoadRequest, ModelSpec as WireModel, PatternMethod as WireMethod, RunRequest,
    VariantSpecWire,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::agent_client::{AgentClient, AgentError};
use crate::board::Board;
use crate::board_lock::BoardLock;
use crate::connect::{open_board, open_scenario_monitor};
use crate::deploy::{build_agent, deploy_agent, target_for_machine, Deployed};
use crate::dvfs::{
    read_time_in_state, recover_from_restore_file, residency_between, restore_file_path, DvfsGuard, PinStrategy, Sysfs,
    DEFAULT_FREQ_TOLERANCE_KHZ,
};
use crate::energy::{
    board_window_to_host, cell_power, estimate_offset, CellPower, ClockMap, HostWindow, PowerPolicy, MIN_WINDOW_SAMPLES,
};
use crate::plan::{plan_board, Cell};
use crate::power_session::PowerSession;
use crate::probe::{probe, ProbeReport};
use crate::results::{CellRecord, ResultsStore};
use crate::runmeta::BoardMeta;
use crate::scenario::probe_check::{BoardFacts, PolicyFacts, ThermalZoneFacts};
use crate::scenario::{
    validate_against_probe, BoardSpec, GovernorChoice, ModelSource, MonitorKind, MonitorPort, MonitorSettings,
    MonitorSpec, PatternMethod, Ppk2Settings, Scenario, TargetSpec, VariantKind,
};
use crate::sim::simulator::{SimOptions, Simulator};
use crate::stats::LatencySummary;

/// What `hil run` was asked to do beyond the scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where new runs go (`results/` by default).
    pub out_root: PathBuf,
    /// An earlier run directory to complete instead of starting a new one.
    pub resume: Option<PathBuf>,
    /// Show progress bars (off when stderr is not a terminal).
    pub progress: bool,
    /// A prebuilt agent to deploy instead of building one (it must suit every board's target).
    pub agent_binary: Option<PathBuf>,
}

/// How one board's part of the run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoardOutcome {
    pub board: String,
    pub cells_done: usize,
    pub cells_skipped: usize,
    pub cells_failed: usize,
    /// Cells recorded without energy on a board that has a monitor.
    pub cells_without_energy: usize,
    pub interrupted: bool,
    pub error: Option<String>,
    /// The error is the scenario not fitting the board (found by its probe: a level it does not
    /// offer, a CPU it lacks): the scenario must change, so resuming the run cannot help.
    #[serde(default)]
    pub scenario_mismatch: bool,
}

/// What a whole run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub dir: PathBuf,
    pub boards: Vec<BoardOutcome>,
}

impl RunOutcome {
    pub fn all_ok(&self) -> bool {
        self.boards.iter().all(|b| b.error.is_none() && !b.interrupted && b.cells_failed == 0)
    }

    /// Nothing was measured because the scenario does not fit a board (and nothing else went
    /// wrong): bad input, found once the boards were probed.
    pub fn scenario_mismatch_only(&self) -> bool {
        self.boards.iter().any(|b| b.scenario_mismatch)
            && self.boards.iter().all(|b| {
                b.cells_done == 0 && b.cells_failed == 0 && !b.interrupted && (b.error.is_none() || b.scenario_mismatch)
            })
    }
}

/// Shared state of one run: the results store, `run.json`, the stop flag, the agent builds.
struct RunShared<'s> {
    scenario: &'s Scenario,
    store: Mutex<ResultsStore>,
    meta: Mutex<crate::runmeta::RunMeta>,
    stop: Arc<AtomicBool>,
    agent_builds: Mutex<HashMap<Option<String>, PathBuf>>,
    agent_override: Option<PathBuf>,
    /// Boards from labgrid: board name -> (place, exporter host), for every result row.
    places: HashMap<String, (String, String)>,
}

impl RunShared<'_> {
    fn update_board_meta(&self, board: &str, f: impl FnOnce(&mut BoardMeta)) {
        let mut meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        f(meta.current_mut().boards.entry(board.to_string()).or_default());
        let dir = self.store.lock().unwrap_or_else(|p| p.into_inner()).dir().to_path_buf();
        if let Err(e) = meta.write(&dir) {
            eprintln!("warning: could not update run.json: {e:#}");
        }
    }

    /// Builds the agent for `target` once per run, whichever board asks first.
    fn agent_binary(&self, target: Option<String>) -> Result<PathBuf> {
        if let Some(p) = &self.agent_override {
            self.set_agent_source(format!("given with --agent-bin: {}", p.display()));
            return Ok(p.clone());
        }
        let mut builds = self.agent_builds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = builds.get(&target) {
            return Ok(p.clone());
        }
        let source = crate::deploy::workspace_source();
        let path = build_agent(target.as_deref())?;
        builds.insert(target, path.clone());
        self.set_agent_source(source);
        Ok(path)
    }

    fn set_agent_source(&self, source: String) {
        let mut meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        meta.current_mut().agent_source = Some(source);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Whether `--resume DIR` has nothing left to do, so that it may touch no board and add no
/// session: the run in `dir` is of this very scenario; its last session finished, was not
/// interrupted and left no board with an error (a failed cpufreq restore, say); its report was
/// written; every planned cell of every board is finished with its energy (or the board had no
/// monitor) and, when the scenario has pattern sets, every board's switch costs are recorded; and
/// the scenario has no regression baseline to compare with. Returns the finished cells' count
/// then. Boards whose levels (`all`) or names (labgrid places) are known only once reached are
/// never called complete here: a resume goes through them as usual.
pub fn resume_is_complete(scenario: &Scenario, scenario_text: &str, dir: &Path) -> Result<Option<usize>> {
    let Ok(meta) = crate::runmeta::RunMeta::read(dir) else { return Ok(None) };
    let last_session_clean = meta.sessions.last().is_some_and(|s| {
        s.finished_at.is_some()
            && !s.interrupted
            && s.boards.values().all(|b| b.outcome.as_ref().is_none_or(|o| o.error.is_none() && !o.interrupted))
    });
    if meta.scenario_sha256 != crate::deploy::sha256_bytes(scenario_text.as_bytes())
        || !last_session_clean
        || !dir.join(crate::report::REPORT_MD).is_file()
        || scenario.regression.as_ref().is_some_and(|r| r.baseline.is_some())
        || scenario.boards.iter().any(|b| b.labgrid.is_some())
    {
        return Ok(None);
    }
    let store = ResultsStore::open(dir)?;
    if store.cells().iter().any(|c| c.energy_missing_reason.is_some()) {
        return Ok(None);
    }
    let done = store.finished();
    let plan = crate::plan::plan(scenario);
    let cells_done = plan
        .boards
        .iter()
        .all(|b| matches!(b.levels, crate::plan::BoardLevels::Resolved(_)) && b.pending_cells(&done).is_empty());
    let has_patterns = scenario.variants.iter().any(|v| matches!(v.kind, VariantKind::Pattern { .. }));
    let switches_done =
        !has_patterns || scenario.boards.iter().all(|b| store.switches().iter().any(|s| s.board == b.name));
    Ok((cells_done && switches_done).then_some(done.len()))
}

/// Runs `scenario`; `stop` is set by the Ctrl-C/SIGTERM handler.
pub fn run_scenario(
    scenario: &Scenario,
    scenario_text: &str,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
) -> Result<RunOutcome> {
    // What parses but cannot be run is refused before any board is touched.
    crate::scenario::check_runnable(scenario)
        .map_err(|problems| anyhow::anyhow!("{}: cannot be run:\n{problems}", scenario.name))?;
    // Counted before `keep_off_local_agent_cpus` narrows this thread to the CPUs the agents leave.
    let notes = crate::scenario::host_sharing_notes(scenario, crate::scenario::cpus_for_hil());
    for note in &notes {
        eprintln!("note: {note}");
    }
    // One hil process per board (see `board_lock`). A simulated or local board's lock needs no
    // connection, so it is taken here, before any labgrid reservation and before the run directory
    // exists: a run refused for a busy board leaves nothing behind. A remote board's lock is taken
    // once the board is reached (a refused host key is said first).
    let mut local_locks: HashMap<String, BoardLock> = HashMap::new();
    for spec in scenario.boards.iter().filter(|b| b.runs_here()) {
        let lock = BoardLock::acquire(spec, &lock_purpose(scenario)).with_context(|| format!("board {}", spec.name))?;
        local_locks.insert(spec.name.clone(), lock);
    }
    // Boards from labgrid are reserved and acquired next: a refused or failed reservation leaves
    // no run directory behind, and every place is given back whatever happens after (its lock
    // travels with its board and is dropped once the board's cpufreq settings are restored).
    let run_boards = crate::lab::resolve_boards(scenario, &stop)?;
    let expanded = Scenario { boards: run_boards.iter().map(|b| b.spec.clone()).collect(), ..scenario.clone() };
    let scenario = &expanded;
    let places: HashMap<String, (String, String)> = run_boards
        .iter()
        .filter_map(|b| b.lab.as_ref().map(|(l, _)| (b.spec.name.clone(), (l.place.clone(), l.exporter_host.clone()))))
        .collect();
    keep_off_local_agent_cpus(scenario);
    let (dir, mut meta) = crate::runmeta::open_run_dir(scenario, scenario_text, opts)?;
    meta.current_mut().notes = notes;
    let mut store = ResultsStore::open(&dir)?;
    store.set_deadline(scenario.constraints.latency_deadline.clone());
    let done: HashSet<_> = store.finished();
    if !done.is_empty() {
        eprintln!("resuming {}: {} cells already finished", dir.display(), done.len());
    }
    let shared = RunShared {
        scenario,
        store: Mutex::new(store),
        meta: Mutex::new(meta),
        stop,
        agent_builds: Mutex::new(HashMap::new()),
        agent_override: opts.agent_binary.clone(),
        places,
    };
    let progress = if opts.progress {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };

    let outcomes: Vec<BoardOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = scenario
            .boards
            .iter()
            .zip(run_boards)
            .map(|(spec, run_board_entry)| {
                let bar = progress.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_prefix(spec.name.clone());
                let shared = &shared;
                let done = &done;
                let held = local_locks.remove(&spec.name);
                s.spawn(move || {
                    let crate::lab::RunBoard { entry, lab, .. } = run_board_entry;
                    let (place, lock) = match lab {
                        Some((place, lock)) => (Some(place), Some(lock)),
                        None => (None, None),
                    };
                    if let Some(place) = place {
                        shared.update_board_meta(&spec.name, |m| {
                            m.labgrid = Some(crate::runmeta::LabgridMeta { entry, place })
                        });
                    }
                    let outcome = run_board(shared, spec, done, &bar, held);
                    // The board's cpufreq settings are restored by now: give the place back.
                    if let Some(lock) = lock {
                        if let Err(e) = lock.release() {
                            say(&bar, format!("board {}: labgrid: {e}", spec.name));
                        }
                    }
                    bar.finish_with_message(match (&outcome.error, outcome.interrupted) {
                        (Some(e), _) => format!("FAILED: {e}"),
                        (None, true) => "interrupted".to_string(),
                        (None, false) => format!("done ({} failed cells)", outcome.cells_failed),
                    });
                    shared.update_board_meta(&spec.name, |m| m.outcome = Some(outcome.clone()));
                    outcome
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&scenario.boards)
            .map(|(h, spec)| {
                h.join().unwrap_or_else(|_| BoardOutcome {
                    board: spec.name.clone(),
                    cells_done: 0,
                    cells_skipped: 0,
                    cells_failed: 0,
                    cells_without_energy: 0,
                    interrupted: false,
                    error: Some("the board's thread panicked (a bug in hil)".into()),
                    scenario_mismatch: false,
                })
            })
            .collect()
    });

    if scenario.measure.raw_power {
        crate::results::merge_power_parts(&dir)?;
    }
    let mut meta = shared.meta.into_inner().unwrap_or_else(|p| p.into_inner());
    meta.finish(shared.stop.load(Ordering::SeqCst));
    meta.write(&dir)?;
    Ok(RunOutcome { dir, boards: outcomes })
}

/// The agent of a local or simulated board shares this host with `hil` itself: `hil`'s own threads
/// (a monitor reader parsing 100 kS/s, the simulator's ticker, busy sampler and PPK2 emulator) would
/// take the agent's core now and then and show up as latency noise (p90/p10 of 1.5 at the top
/// level on a 2-core host). When such agents are pinned (`cpus:`) and other CPUs remain, the
/// calling thread, and so every thread it starts from now on, keeps to those other CPUs. An agent
/// sets its own affinity when it starts, so it is not held back by this.
fn keep_off_local_agent_cpus(scenario: &Scenario) {
    let agent_cpus: HashSet<usize> =
        scenario.boards.iter().filter(|b| b.runs_here()).filter_map(|b| b.cpus.as_ref()).flatten().copied().collect();
    if agent_cpus.is_empty() {
        return;
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set; both calls get a valid,
    // writable set of the size passed, for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return;
        }
        let mut rest: libc::cpu_set_t = std::mem::zeroed();
        let mut any = false;
        for cpu in 0..libc::CPU_SETSIZE as usize {
            if libc::CPU_ISSET(cpu, &set) && !agent_cpus.contains(&cpu) {
                libc::CPU_SET(cpu, &mut rest);
                any = true;
            }
        }
        if any {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &rest);
        }
    }
}

/// Converts a probe report into what the scenario checks need.
pub fn facts_from_probe(report: &ProbeReport) -> BoardFacts {
    BoardFacts {
        cpu_count: report.cpu.cores as usize,
        policies: report
            .cpufreq
            .iter()
            .map(|p| PolicyFacts {
                name: format!("policy{}", p.policy.id),
                related_cpus: p.policy.related_cpus.iter().map(|c| *c as usize).collect(),
                available_khz: p.policy.available_khz.clone(),
                governors: p.policy.available_governors.clone(),
            })
            .collect(),
        thermal_zones: report
            .thermal_zones
            .iter()
            .map(|z| ThermalZoneFacts { name: format!("thermal_zone{}", z.index), kind: z.zone_type.clone() })
            .collect(),
    }
}

fn policy_id(name: &str) -> Result<u32> {
    name.strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("not a cpufreq policy name: {name:?}"))
}

fn pin_strategy(g: &GovernorChoice) -> PinStrategy {
    match g {
        GovernorChoice::Auto => PinStrategy::Auto,
        GovernorChoice::Userspace => PinStrategy::Userspace,
        GovernorChoice::MinMaxUnder(name) => PinStrategy::MinMaxUnder(name.clone()),
    }
}

/// The agent's command line on the board: optional exec prefix, the binary, `serve` and its options.
pub fn agent_argv(spec: &BoardSpec, remote_path: &str, threads: u32) -> Vec<String> {
    let mut argv: Vec<String> = spec.exec_prefix.clone().unwrap_or_default();
    argv.push(remote_path.to_string());
    argv.push("serve".into());
    if let Some(cpus) = &spec.cpus {
        argv.push("--cpus".into());
        argv.push(cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","));
    }
    argv.push("--threads".into());
    argv.push(threads.to_string());
    argv
}

/// The `load` request for the scenario's model and variants.
pub fn load_request(scenario: &Scenario) -> LoadRequest {
    let model = match &scenario.model.source {
        ModelSource::Preset(p) => WireModel {
            preset: p.as_str().to_string(),
            seed: scenario.model.seed,
            seq: scenario.model.seq.map(|s| s as usize),
            safetensors: None,
            lm_head: scenario.model.lm_head,
        },
        // The preset names the architecture the agent reads the file as.
        ModelSource::Safetensors { path, preset } => WireModel {
            preset: preset.as_str().to_string(),
            seed: scenario.model.seed,
            seq: scenario.model.seq.map(|s| s as usize),
            safetensors: Some(path.clone()),
            lm_head: scenario.model.lm_head,
        },
    };
    let variants = scenario
        .variants
        .iter()
        .map(|v| match &v.kind {
            VariantKind::Dense => VariantSpecWire::Dense { name: v.name.clone() },
            VariantKind::Block { sparsity, block_rows, block_cols, global } => VariantSpecWire::Block {
                name: v.name.clone(),
                sparsity: *sparsity,
                block_rows: *block_rows as usize,
                block_cols: *block_cols as usize,
                per_layer: None,
                global: *global,
            },
            VariantKind::Pattern { base, tile, patterns_per_set, sparsity, method, seed } => VariantSpecWire::Pattern {
                name: v.name.clone(),
                base: base.clone(),
                tile: *tile as usize,
                patterns_per_set: *patterns_per_set as usize,
                sparsity: *sparsity,
                method: match method {
                    PatternMethod::Rt3TileSums => WireMethod::Rt3TileSums,
                    PatternMethod::FrequentTopK => WireMethod::FrequentTopK,
                },
                seed: *seed,
            },
        })
        .collect();
    LoadRequest { model, variants, residency: Default::default() }
}

/// A simulated board's agent must stretch its inferences by the simulated clock: one that runs at
/// the host's full speed would report latencies (and energies) that do not follow the simulated
/// frequency, under a SIMULATED label that claims they do. The reverse cannot happen: the agent
/// refuses to stretch under a tree that is not the simulator's.
fn check_stretching(board: &str, simulated: bool, hello: &HelloReply) -> Result<()> {
    if simulated && hello.sim_stretch.is_none() {
        bail!(
            "board {board} is simulated, but its agent does not stretch inferences by the simulated clock \
             (its hello has no sim_stretch): latency would not follow the simulated frequency. Start the agent \
             through the simulator's wrapper (`hil sim serve` prints its run-agent path, for exec_prefix) or \
             with --sim-sysfs-root pointing at the simulator's tree"
        );
    }
    Ok(())
}

/// Starts the agent and loads the model; returns the client and the load reply.
fn start_agent(
    board: &mut dyn Board,
    spec: &BoardSpec,
    scenario: &Scenario,
    remote_path: &str,
    stop: &Arc<AtomicBool>,
) -> Result<(AgentClient, HelloReply, LoadReply)> {
    let argv = agent_argv(spec, remote_path, scenario.measure.threads);
    let session = board.spawn(&argv).with_context(|| format!("starting the agent on board {}", spec.name))?;
    // Every wait for the agent (a model load can take half an hour on a slow board) gives way to Ctrl-C.
    let mut agent = AgentClient::new(&spec.name, session).with_interrupt(stop.clone());
    let hello = agent.hello().context("agent hello")?;
    // Building every variant (pattern generation included) is slow on a small board at a low clock.
    let load = agent.load(load_request(scenario), Duration::from_secs(1800)).context("agent load")?;
    Ok((agent, hello, load))
}

fn run_board(
    shared: &RunShared,
    spec: &BoardSpec,
    done: &HashSet<crate::plan::CellKey>,
    bar: &ProgressBar,
    held: Option<BoardLock>,
) -> BoardOutcome {
    let mut outcome = BoardOutcome {
        board: spec.name.clone(),
        cells_done: 0,
        cells_skipped: 0,
        cells_failed: 0,
        cells_without_energy: 0,
        interrupted: false,
        error: None,
        scenario_mismatch: false,
    };
    match run_board_inner(shared, spec, done, bar, held, &mut outcome) {
        // Whatever a wait gave up with after Ctrl-C (a model load, a reconnect), the board was
        // interrupted, not failed: `--resume` completes it.
        Err(_) if shared.stopping() => outcome.interrupted = true,
        Err(e) => {
            outcome.scenario_mismatch = e.chain().any(|c| c.downcast_ref::<crate::scenario::ScenarioError>().is_some());
            outcome.error = Some(format!("{e:#}"));
        }
        Ok(()) => {}
    }
    outcome
}

fn run_board_inner(
    shared: &RunShared,
    spec: &BoardSpec,
    done: &HashSet<crate::plan::CellKey>,
    bar: &ProgressBar,
    held: Option<BoardLock>,
    outcome: &mut BoardOutcome,
) -> Result<()> {
    let scenario = shared.scenario;
    let name = spec.name.as_str();
    // One hil process per board: another run on it would pin its frequencies and take its saved
    // cpufreq settings (see `board_lock`). Held until this board's session ends: a simulated or
    // local board's since `run_scenario` began (`held`), a remote board's from when it is reached
    // (a board that refuses the connection, e.g. its host key, says so first), before anything is
    // written to it. Declared before the simulator and the board so that it is dropped after both
    // are stopped.
    let mut lock = held;
    // A simulated board brings its own fake sysfs, stretching agent wrapper and emulated PPK2.
    let sim = if spec.sim {
        bar.set_message("starting simulator");
        let sim = start_simulator(spec, scenario, true)?;
        shared.update_board_meta(name, |m| m.simulation = Some(sim.describe()));
        Some(sim)
    } else {
        None
    };
    let effective = effective_spec(spec, sim.as_ref());
    let spec = &effective;
    bar.set_message("connecting");
    let mut board = open_board(spec)?;
    if lock.is_none() {
        lock.replace(BoardLock::acquire(spec, &lock_purpose(scenario))?);
    }
    board.set_interrupt(shared.stop.clone());
    let sysfs = Sysfs::new(spec.sysfs_root.clone(), spec.sudo);
    let restore_path = restore_file_path(&spec.workdir);

    // A crashed earlier run left the board pinned: put it back before anything else.
    let recovered = recover_from_restore_file(board.as_mut(), &sysfs, &restore_path)
        .with_context(|| format!("board {name}: restoring cpufreq from {restore_path}"))?;
    if recovered.is_some() {
        eprintln!("board {name}: restored cpufreq settings left by an interrupted run ({restore_path})");
    }

    bar.set_message("probing");
    let report = probe(board.as_mut(), &spec.sysfs_root)?;
    let resolved = validate_against_probe(scenario, name, &facts_from_probe(&report))?;
    // Simulated when the scenario says so, or when the sysfs tree is the simulator's (a board
    // served by `hil sim serve` looks like any SSH board otherwise).
    let simulated = spec.sim || report.simulated.is_some();
    if simulated && !spec.sim {
        say(bar, format!("board {name}: its sysfs tree is hil's simulator's: every result is labelled SIMULATED"));
    }
    let served_description = (simulated && !spec.sim).then(|| served_sim_description(report.simulated.as_ref()));
    shared.update_board_meta(name, |m| {
        m.transport = board.transport().to_string();
        m.simulated = simulated;
        if let Some(d) = &served_description {
            m.simulation = Some(d.clone());
        }
        m.probe = Some(report.clone());
        m.restored_from_previous_crash = recovered.is_some();
        m.policies = resolved.policies.clone();
        m.levels_khz = resolved.levels_khz.clone();
    });

    let board_plan = plan_board(scenario, spec, &resolved.levels_khz);
    let cells = board_plan.pending_cells(done);
    outcome.cells_skipped = board_plan.cells.len() - cells.len();
    bar.set_length(board_plan.cells.len() as u64);
    bar.set_position(outcome.cells_skipped as u64);
    let has_pattern_sets =
        scenario.variants.iter().any(|v| matches!(v.kind, crate::scenario::VariantKind::Pattern { .. }));
    let switches_done = shared.store.lock().unwrap_or_else(|p| p.into_inner()).has_switches(name);
    if cells.is_empty() && (switches_done || !has_pattern_sets) {
        return Ok(());
    }
    let lowest_khz = resolved.levels_khz.iter().copied().min();

    bar.set_message(if shared.agent_override.is_some() { "checking agent" } else { "building agent" });
    let target = match &spec.target {
        TargetSpec::Triple(t) => Some(t.clone()),
        TargetSpec::Auto if spec.sim => None,
        TargetSpec::Auto => Some(target_for_machine(&report.arch)?.to_string()),
    };
    let binary = shared.agent_binary(target)?;
    bar.set_message("deploying agent");
    let deployed = deploy_agent(board.as_mut(), &binary, &spec.workdir)?;
    shared.update_board_meta(name, |m| m.agent = Some(deployed.clone()));

    let policy_ids: Vec<u32> = resolved.policies.iter().map(|p| policy_id(p)).collect::<Result<_>>()?;
    let mut guard = DvfsGuard::save(board.as_mut(), sysfs.clone(), &policy_ids, &restore_path)?;
    shared.update_board_meta(name, |m| m.saved_dvfs = Some(guard.saved().clone()));

    let mut power = match &spec.monitor {
        Some(m) => {
            bar.set_message("opening power monitor");
            // A capture too long for memory spills next to the results (the system temp directory
            // may be RAM-backed).
            let spill = crate::power_session::CaptureLimits::spilling_to(&shared_results_dir(shared));
            let session = PowerSession::start_with(open_scenario_monitor(m)?, spill)?;
            let info = session.info().clone();
            shared.update_board_meta(name, |meta| meta.monitor = Some(info));
            // A labgrid exporter that restarts serves the port anew (possibly on another TCP port):
            // reopening asks labgrid where it is now.
            let relocate: Option<Relocate> = shared.places.get(name).and_then(|_| {
                let meta = shared.meta.lock().unwrap_or_else(|p| p.into_inner());
                let lab = meta.board(name).and_then(|b| b.labgrid.clone())?;
                Some(Box::new(move || {
                    let client = crate::labgrid::LabgridClient::from_env(Some(&lab.place.coordinator));
                    client.env(&lab.place.place).ok()?.serial().ok().flatten().map(|s| s.address().to_string())
                }) as Relocate)
            });
            Some(PowerState {
                spec: m.clone(),
                session: Some(session),
                gone: None,
                idle_w: HashMap::new(),
                relocate,
                limits: crate::power_session::CaptureLimits::spilling_to(&shared_results_dir(shared)),
            })
        }
        None => None,
    };
    let board_run = BoardRun {
        spec,
        simulated,
        thermal_zone: &resolved.thermal_zone,
        deployed: &deployed,
        lowest_khz,
        sim: sim.as_ref(),
    };
    let result = measure_cells(shared, &board_run, &mut guard, &cells, bar, outcome, power.as_mut());
    // Restore whatever happened above; report both errors if both fail.
    bar.set_message("restoring cpufreq");
    let restored = guard.restore();
    match (result, restored) {
        (Ok(()), Ok(_)) => Ok(()),
        (Err(e), Ok(_)) => Err(e),
        (Ok(()), Err(r)) => Err(anyhow!(r).context(format!("board {name}: restoring cpufreq settings"))),
        (Err(e), Err(r)) => Err(e.context(format!("and restoring cpufreq settings also failed: {r}"))),
    }
}

/// What a board served by `hil sim serve` is, from the marker its simulator left in the sysfs tree
/// (the same facts a `sim: true` board records from its own simulator).
fn served_sim_description(marker: Option<&serde_json::Value>) -> String {
    let field = |k: &str| marker.and_then(|m| m.pointer(k)).and_then(|v| v.as_str()).map(str::to_string);
    let number = |k: &str| marker.and_then(|m| m.pointer(k)).and_then(|v| v.as_f64());
    let speed = field("/speed").unwrap_or_else(|| "speed model not recorded".into());
    let power = match (field("/model/formula"), number("/model/static_w"), number("/model/dyn_coeff")) {
        (Some(f), Some(s), Some(c)) => format!("power model {f} with static_w {s} W, dyn_coeff {c:.3e} W/(V^2 Hz)"),
        _ => "power model not recorded".into(),
    };
    format!(
        "SIMULATED board served by `hil sim serve` (its sysfs tree carries the simulator's marker): {speed}; \
         {power}; power read through its emulated PPK2"
    )
}

/// Prints a line above the board's progress bar, or to stderr when there are no bars
/// (`--no-progress`, or stderr is not a terminal), so retries show in CI logs too.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// What a board's cells share: its entry, whether it is simulated, its thermal zone, the agent.
struct BoardRun<'a> {
    spec: &'a BoardSpec,
    simulated: bool,
    thermal_zone: &'a Option<String>,
    deployed: &'a Deployed,
    /// The level reconfiguration is measured at.
    lowest_khz: Option<u64>,
    /// A simulated board's simulator (`None` for a board served by `hil sim serve` elsewhere).
    sim: Option<&'a Simulator>,
}

/// Runs the cells in order, retrying retryable failures after reconnecting, then measures what
/// putting each pattern set into effect costs.
fn measure_cells(
    shared: &RunShared,
    board_run: &BoardRun,
    guard: &mut DvfsGuard<'_>,
    cells: &[Cell],
    bar: &ProgressBar,
    outcome: &mut BoardOutcome,
    mut power: Option<&mut PowerState>,
) -> Result<()> {
    let BoardRun { spec, simulated, thermal_zone, deployed, lowest_khz, sim } = *board_run;
    let scenario = shared.scenario;
    let name = spec.name.as_str();
    bar.set_message("loading model");
    let (mut agent, hello, load) = start_agent(guard.board(), spec, scenario, &deployed.remote_path, &shared.stop)?;
    check_stretching(name, simulated, &hello)?;
    shared.update_board_meta(name, |m| {
        m.agent_hello = Some(hello);
        m.model = Some(load.clone());
    });
    let sparsity: HashMap<String, f64> = load.variants.iter().map(|v| (v.name.clone(), v.sparsity)).collect();
    let switch_ns = measure_switching(&mut agent, &load).context("measuring variant switching")?;
    let selftest = agent.selftest().context("agent selftest")?;
    if !selftest.passed {
        say(bar, format!("board {name}: WARNING: agent selftest failed: kernels disagree with the scalar reference"));
    }
    bar.set_message("measuring output fidelity");
    let fidelity = agent.fidelity().context("agent fidelity check")?;
    let fidelity_of: HashMap<String, (f64, f64)> =
        fidelity.results.iter().map(|r| (r.variant.clone(), (r.cosine, r.rel_l2))).collect();
    let fidelity_kind = fidelity.kind.clone();
    shared.update_board_meta(name, |m| {
        m.switch_ns = switch_ns;
        m.selftest = Some(selftest);
        m.fidelity = Some(fidelity);
    });
    let zone = thermal_zone.as_deref().and_then(|z| z.strip_prefix("thermal_zone")).and_then(|n| n.parse::<u32>().ok());
    let mut pinned_khz: Option<u64> = None;
    let results_dir = shared.store.lock().unwrap_or_else(|p| p.into_inner()).dir().to_path_buf();

    for cell in cells {
        if shared.stopping() {
            outcome.interrupted = true;
            break;
        }
        bar.set_message(format!("{} MHz {} r{}", cell.key.freq_khz / 1000, cell.key.variant, cell.key.repeat));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let ctx = CellContext {
                scenario,
                simulated,
                zone,
                sparsity: &sparsity,
                fidelity: &fidelity_of,
                fidelity_kind: &fidelity_kind,
                attempts,
                results_dir: &results_dir,
                stop: &shared.stop,
                place: shared.places.get(name),
                sim,
            };
            if pinned_khz != Some(cell.key.freq_khz) || cell.starts_level_visit {
                pinned_khz = None;
            }
            let result = measure_cell(&ctx, guard, &mut agent, cell, &mut pinned_khz, power.as_deref_mut());
            let retry_left = attempts < scenario.measure.max_attempts && !shared.stopping();
            match result {
                Ok(record) => {
                    if power.is_some() && record.window_energy_j.is_none() {
                        outcome.cells_without_energy += 1;
                        say(
                            bar,
                            format!(
                                "board {name}: cell {} recorded without energy: {}",
                                cell.key,
                                record.energy_missing_reason.as_deref().unwrap_or("no reason given")
                            ),
                        );
                    }
                    // Without a progress bar (stderr not a terminal: CI logs, `2> file`), a line per
                    // finished cell shows the run advancing.
                    let line = bar.is_hidden().then(|| {
                        let energy = record
                            .energy_per_inference_mj
                            .map(|e| format!(", {e:.2} mJ/inference"))
                            .unwrap_or_default();
                        format!(
                            "board {name}: cell {}/{} {} done: median {:.2} ms{energy}",
                            outcome.cells_done + 1,
                            cells.len(),
                            cell.key,
                            record.latency_median_ms
                        )
                    });
                    shared.store.lock().unwrap_or_else(|p| p.into_inner()).append(record)?;
                    outcome.cells_done += 1;
                    if let Some(line) = line {
                        eprintln!("{line}");
                    }
                    break;
                }
                Err(CellError::Remeasure(e)) if retry_left => {
                    // The board and the agent are fine; only the power measurement fell short.
                    say(bar, format!("board {name}: cell {} attempt {attempts}: {e:#}; measuring it again", cell.key));
                }
                Err(CellError::MonitorLost(e)) if retry_left => {
                    say(bar, format!("board {name}: cell {} attempt {attempts}: {e:#}", cell.key));
                    // Pin again, so the idle power of this level is measured again on the reopened monitor.
                    pinned_khz = None;
                    if let Some(p) = power.as_deref_mut() {
                        if !p.ensure_healthy(bar, &shared.stop) {
                            outcome.interrupted = true;
                            return Ok(());
                        }
                    }
                }
                Err(CellError::Retryable(e)) if retry_left => {
                    say(bar, format!("board {name}: cell {} attempt {attempts} failed: {e:#}; reconnecting", cell.key));
                    pinned_khz = None;
                    if let Some(p) = power.as_deref_mut() {
                        if !p.ensure_healthy(bar, &shared.stop) {
                            outcome.interrupted = true;
                            return Ok(());
                        }
                    }
                    if let Err(err) =
                        reconnect_with_agent(guard, spec, scenario, &deployed.remote_path, &mut agent, &shared.stop)
                    {
                        if shared.stopping() {
                            outcome.interrupted = true;
                            return Ok(());
                        }
                        outcome.cells_failed += 1;
                        return Err(err.context(format!("board {name}: reconnecting after: {e:#}")));
                    }
                }
                Err(CellError::Retryable(e))
                | Err(CellError::Fatal(e))
                | Err(CellError::Remeasure(e))
                | Err(CellError::MonitorLost(e)) => {
                    if shared.stopping() {
                        outcome.interrupted = true;
                        return Ok(());
                    }
                    // One bad cell never ends a board: say it, count it, go on with the next.
                    outcome.cells_failed += 1;
                    say(bar, format!("board {name}: cell {} failed after {attempts} attempt(s): {e:#}", cell.key));
                    pinned_khz = None;
                    break;
                }
            }
        }
        bar.inc(1);
    }
    if !shared.stopping() && load.variants.iter().any(|v| v.kind == "pattern") {
        bar.set_message("measuring reconfiguration");
        if let Some(khz) = lowest_khz {
            for id in guard.policies().iter().map(|p| p.id).collect::<Vec<_>>() {
                guard.pin(id, khz, pin_strategy(&scenario.dvfs.governor))?;
            }
            std::thread::sleep(scenario.dvfs.settle);
        }
        let place = shared.places.get(name);
        match measure_reconfiguration(&mut agent, &load, name, simulated, lowest_khz.unwrap_or(0), &shared.stop, place)
        {
            Ok(rows) if !rows.is_empty() => {
                shared.store.lock().unwrap_or_else(|p| p.into_inner()).append_switches(&rows)?;
            }
            Ok(_) => {}
            // The cells are recorded; the switch figures are what is missing, and that is said.
            Err(e) => say(bar, format!("board {name}: measuring pattern-set switching failed: {e:#}")),
        }
    }
    let _ = agent.quit();
    Ok(())
}

fn reconnect_with_agent(
    guard: &mut DvfsGuard<'_>,
    spec: &BoardSpec,
    scenario: &Scenario,
    remote_path: &str,
    agent: &mut AgentClient,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    guard.board().reconnect()?;
    let (new_agent, _, _) = start_agent(guard.board(), spec, scenario, remote_path, stop)?;
    *agent = new_agent;
    Ok(())
}

struct CellContext<'a> {
    scenario: &'a Scenario,
    simulated: bool,
    zone: Option<u32>,
    sparsity: &'a HashMap<String, f64>,
    /// Per variant: cosine and relative L2 against dense; and what they measure.
    fidelity: &'a HashMap<String, (f64, f64)>,
    fidelity_kind: &'a str,
    attempts: u32,
    results_dir: &'a Path,
    stop: &'a AtomicBool,
    /// The labgrid place and its exporter host, for labgrid boards.
    place: Option<&'a (String, String)>,
    /// The simulator of a simulated board (its agent runs on this host's clock).
    sim: Option<&'a Simulator>,
}

impl CellContext<'_> {
    fn power_policy(&self) -> PowerPolicy {
        PowerPolicy { max_lost_fraction: self.scenario.measure.max_lost_fraction, min_samples: MIN_WINDOW_SAMPLES }
    }
}

/// A cell failure: worth measuring again as it is, worth a reconnect-and-retry, or not.
enum CellError {
    /// The power measurement fell short (too many samples lost, the window not covered) while the
    /// board, the agent and the monitor are fine: run the cell again without reconnecting.
    Remeasure(anyhow::Error),
    /// The monitor stopped (unplugged, stalled): wait for it to come back, then run the cell again.
    MonitorLost(anyhow::Error),
    Retryable(anyhow::Error),
    Fatal(anyhow::Error),
}

impl From<AgentError> for CellError {
    fn from(e: AgentError) -> Self {
        if e.is_retryable() {
            CellError::Retryable(e.into())
        } else {
            CellError::Fatal(e.into())
        }
    }
}

impl From<crate::dvfs::DvfsError> for CellError {
    fn from(e: crate::dvfs::DvfsError) -> Self {
        if e.is_retryable() {
            CellError::Retryable(e.into())
        } else {
            CellError::Fatal(e.into())
        }
    }
}

fn measure_cell(
    ctx: &CellContext,
    guard: &mut DvfsGuard<'_>,
    agent: &mut AgentClient,
    cell: &Cell,
    pinned_khz: &mut Option<u64>,
    mut power: Option<&mut PowerState>,
) -> Result<CellRecord, CellError> {
    let scenario = ctx.scenario;
    let khz = cell.key.freq_khz;
    let ids: Vec<u32> = guard.policies().iter().map(|p| p.id).collect();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);

    if pinned_khz.is_none() {
        for &id in &ids {
            guard.pin(id, khz, pin_strategy(&scenario.dvfs.governor))?;
        }
        std::thread::sleep(scenario.dvfs.settle);
        *pinned_khz = Some(khz);
        // Idle power at this level, with the agent idle, before its variants run.
        if let Some(p) = power.as_deref_mut() {
            if p.session.is_none() {
                // A monitor given up on earlier gets one quick try to come back at each level.
                p.ensure_healthy(&ProgressBar::hidden(), ctx.stop);
            }
            if !scenario.measure.idle_duration.is_zero() {
                p.idle_w.remove(&khz);
                if let Some(idle) = p.measure_idle(scenario.measure.idle_duration, ctx.stop, &ProgressBar::hidden()) {
                    p.idle_w.insert(khz, idle);
                }
            }
        }
    }
    let mut freq_verified = true;
    let mut cur_freq_khz = None;
    for &id in &ids {
        let rb = guard.read_back(id, khz, DEFAULT_FREQ_TOLERANCE_KHZ)?;
        freq_verified &= rb.holds;
        cur_freq_khz.get_or_insert(rb.scaling_cur_khz);
    }

    let sysfs = guard.sysfs().clone();
    let mut cooldown_timed_out = false;
    if let (Some(zone), Some(limit)) = (ctx.zone, scenario.measure.cooldown_temp_c) {
        let mut clock = crate::dvfs::SystemClock::new();
        if let Err(e) = crate::dvfs::wait_for_cool_down(
            guard.board(),
            &sysfs,
            zone,
            (limit * 1000.0) as i64,
            scenario.measure.cooldown_timeout,
            Duration::from_millis(500),
            &mut clock,
            Some(ctx.stop),
        ) {
            if e.kind == crate::dvfs::DvfsErrorKind::Interrupted {
                return Err(CellError::Fatal(anyhow!(e)));
            }
            cooldown_timed_out = true;
            eprintln!("warning: {e}; measuring anyway (the cell is flagged cooldown_timed_out)");
        }
    }
    let temp = |guard: &mut DvfsGuard<'_>| {
        ctx.zone.and_then(|z| crate::dvfs::read_zone_temp(guard.board(), &sysfs, z).ok()).map(|m| m as f64 / 1000.0)
    };
    let temp_before_c = temp(guard);
    let mut tis_before = Vec::new();
    for &id in &ids {
        tis_before.push(read_time_in_state(guard.board(), &sysfs, id)?);
    }

    // Power: a capture opened before the window, the window placed on the host clock after it.
    let session = power.as_deref().and_then(|p| p.session.as_ref());
    let before = match session {
        Some(_) => Some(clock_offset(agent)?),
        None => None,
    };
    let last_attempt = ctx.attempts >= scenario.measure.max_attempts;
    let mut energy_missing_reason: Option<String> = None;
    let mut session = session;
    if let Some(s) = session {
        match s.begin() {
            Ok(()) => {}
            Err(e) if !last_attempt => return Err(CellError::MonitorLost(e.into())),
            Err(e) => {
                // Out of attempts: the cell is measured all the same, its energy says why not.
                energy_missing_reason = Some(format!("the power monitor failed before the window: {e}"));
                session = None;
            }
        }
    }
    let run = agent.run(RunRequest {
        variant: Some(cell.key.variant.clone()),
        warmup: scenario.measure.warmup_iterations,
        min_iters: scenario.measure.min_iterations.min(u32::MAX as u64) as u32,
        min_ms: scenario.measure.min_duration.as_millis() as u64,
        max_ms: Some(window_cap_ms(scenario.measure.min_duration)),
        ..RunRequest::default()
    })?;

    let mut measured: Option<MeasuredPower> = None;
    if let (Some(p), None) = (power.as_deref(), &energy_missing_reason) {
        match (session, before) {
            (Some(session), Some(before)) => {
                let after = clock_offset(agent)?;
                let map = ClockMap::new(before, Some(after));
                let window = board_window_to_host(&map, run.window_start_ns, run.window_end_ns)
                    .map_err(|e| CellError::Fatal(anyhow!("aligning the window of {}: {e}", cell.key)))?;
                match session.finish(Some(window.end_ns), ctx.stop) {
                    Err(e) if !last_attempt => return Err(CellError::MonitorLost(e.into())),
                    Err(e) => energy_missing_reason = Some(format!("the power monitor failed during the window: {e}")),
                    Ok(finished) => {
                        let idle = p.idle_w.get(&khz).copied();
                        match cell_power(&finished.capture, window, idle, run.iterations, &ctx.power_policy()) {
                            Ok(cp) if cp.lost_flagged && !last_attempt => {
                                return Err(CellError::Remeasure(anyhow!(
                                    "{} of {} power samples lost in the window of {} (limit {:.1} %)",
                                    cp.lost,
                                    cp.lost + cp.energy.samples_in_window as u64,
                                    cell.key,
                                    scenario.measure.max_lost_fraction * 100.0
                                )))
                            }
                            Ok(cp) => {
                                if scenario.measure.raw_power {
                                    crate::results::write_capture_power_part(
                                        ctx.results_dir,
                                        &cell.key,
                                        &finished.capture,
                                        window,
                                        &crate::results::BoardLabels::new(ctx.simulated, ctx.place),
                                    )
                                    .map_err(CellError::Fatal)?;
                                }
                                measured = Some(MeasuredPower {
                                    power: cp,
                                    idle_power_w: idle,
                                    window,
                                    uncertainty_us: map.uncertainty_ns() as f64 / 1e3,
                                });
                            }
                            Err(e) => {
                                let mut why =
                                    format!("the power monitor on {} for {}: {e}", session.info().port, cell.key);
                                if !finished.covered {
                                    why.push_str(&format!(
                                        " (waited {:?} for a sample after the window's end: 3 x the longest gap \
                                         between deliveries in the last 30 s + 250 ms)",
                                        finished.limit
                                    ));
                                }
                                if !last_attempt {
                                    return Err(CellError::Remeasure(anyhow!(why)));
                                }
                                energy_missing_reason = Some(why);
                            }
                        }
                    }
                }
            }
            _ => {
                energy_missing_reason =
                    Some(p.gone.clone().unwrap_or_else(|| "the power monitor is not open".to_string()));
            }
        }
    }

    let mut off_target_ms: Option<f64> = None;
    let mut throttled = false;
    for (i, &id) in ids.iter().enumerate() {
        let after = read_time_in_state(guard.board(), &sysfs, id)?;
        if let (Some(before), Some(after)) = (&tis_before[i], &after) {
            let r = residency_between(before, after, khz);
            throttled |= r.left_pinned_frequency();
            *off_target_ms.get_or_insert(0.0) += r.elsewhere.as_secs_f64() * 1000.0;
        }
    }
    let temp_after_c = temp(guard);

    let summary = LatencySummary::from_ns(&run.latencies_ns)
        .ok_or_else(|| CellError::Fatal(anyhow!("agent returned no latencies for {}", cell.key)))?;
    // A relative deadline depends on cells measured later: the tables and the analysis resolve it.
    let deadline_ms = scenario.constraints.latency_deadline.as_ref().and_then(|d| d.fixed_ms());
    let variant = scenario.variant(&cell.key.variant).expect("planned variants exist");
    Ok(CellRecord {
        board: cell.key.board.clone(),
        freq_khz: khz,
        variant: cell.key.variant.clone(),
        repeat: cell.key.repeat,
        level: cell.level_index as u32,
        variant_kind: variant.kind.as_str().to_string(),
        sparsity: ctx.sparsity.get(&cell.key.variant).copied().unwrap_or(variant.kind.sparsity()),
        simulated: ctx.simulated,
        started_at,
        attempts: ctx.attempts,
        iterations: run.iterations,
        window_ns: run.window_ns(),
        latency_median_ms: summary.median_ms,
        latency_mean_ms: summary.mean_ms,
        latency_p90_ms: summary.p90_ms,
        latency_p99_ms: summary.p99_ms,
        latency_min_ms: summary.min_ms,
        latency_max_ms: summary.max_ms,
        deadline_ms,
        deadline_met: deadline_ms.map(|d| summary.p99_ms <= d),
        cur_freq_khz,
        freq_verified,
        off_target_ms,
        throttled,
        temp_before_c,
        temp_after_c,
        cooldown_timed_out,
        checksum: run.checksum.clone(),
        mean_power_w: measured.as_ref().map(|m| m.power.energy.mean_power_w),
        idle_power_w: measured.as_ref().and_then(|m| m.idle_power_w),
        energy_per_inference_mj: measured.as_ref().map(|m| m.power.per_inference.gross_j * 1e3),
        net_energy_per_inference_mj: measured
            .as_ref()
            .and_then(|m| m.idle_power_w.map(|_| m.power.per_inference.net_j * 1e3)),
        power_samples: measured.as_ref().map(|m| m.power.energy.samples_in_window as u64),
        lost_samples: measured.as_ref().map(|m| m.power.lost),
        clock_offset_uncertainty_us: measured.as_ref().map(|m| m.uncertainty_us),
        power_flagged: measured.as_ref().map(|m| m.power.lost_flagged),
        power_rate_hz: measured.as_ref().map(|m| m.power.effective_rate_hz),
        power_few_samples: measured.as_ref().map(|m| m.power.few_samples),
        energy_missing_reason,
        monitor_clock_ppm: measured.as_ref().and_then(|m| m.power.fit.and_then(|f| f.rate_error_ppm())),
        monitor_clock_points: measured.as_ref().and_then(|m| m.power.fit.map(|f| f.points as u64)),
        monitor_clock_spread_us: measured.as_ref().and_then(|m| m.power.fit.map(|f| f.spread_ns / 1e3)),
        monitor_clock_bound_us: measured.as_ref().and_then(|m| m.power.fit.and_then(|f| f.bound_ns).map(|b| b / 1e3)),
        fidelity_cosine: ctx.fidelity.get(&cell.key.variant).map(|f| f.0).filter(|v| v.is_finite()),
        fidelity_rel_l2: ctx.fidelity.get(&cell.key.variant).map(|f| f.1).filter(|v| v.is_finite()),
        fidelity_kind: ctx.fidelity.contains_key(&cell.key.variant).then(|| ctx.fidelity_kind.to_string()),
        window_host_start_ns: measured.as_ref().map(|m| m.window.start_ns),
        window_host_end_ns: measured.as_ref().map(|m| m.window.end_ns),
        window_energy_j: measured.as_ref().map(|m| m.power.energy.energy_j),
        time_capped: run.time_capped,
        agent_note: run.note.clone(),
        sim_stretch_factor: run.sim_stretch_factor,
        cpu_busy_cores: run.cpu_time_ns.filter(|_| run.window_ns() > 0).map(|c| c as f64 / run.window_ns() as f64),
        sim_busy_cores: ctx.sim.and_then(|s| s.mean_busy_cores(run.window_start_ns, run.window_end_ns)),
        place: ctx.place.map(|(p, _)| p.clone()),
        exporter_host: ctx.place.map(|(_, h)| h.clone()),
        latencies_ns: run.latencies_ns,
    })
}

/// What another hil process is told holds a board this run locked.
fn lock_purpose(scenario: &Scenario) -> String {
    format!("hil run, scenario {}", scenario.name)
}

/// Starts a simulated board's simulator in its workdir (`sim/`), with or without its emulated PPK2.
pub fn start_simulator(spec: &BoardSpec, scenario: &Scenario, with_monitor: bool) -> Result<Simulator> {
    let root = Path::new(&spec.workdir).join("sim");
    let opts = SimOptions {
        name: spec.name.clone(),
        power: Default::default(),
        agent_threads: scenario.measure.threads,
        with_monitor,
    };
    Simulator::start(&root, opts)
        .with_context(|| format!("board {}: starting the simulated board in {}", spec.name, root.display()))
}

/// The board's entry as the runner uses it: for a simulated board, pointed at the simulator's
/// fake sysfs, with the agent started inside the simulator and the emulated PPK2 as monitor.
pub fn effective_spec(spec: &BoardSpec, sim: Option<&Simulator>) -> BoardSpec {
    let mut eff = spec.clone();
    if let Some(sim) = sim {
        eff.sysfs_root = sim.sysfs_root();
        let mut prefix = sim.agent_exec_prefix();
        prefix.extend(spec.exec_prefix.clone().unwrap_or_default());
        eff.exec_prefix = Some(prefix);
        if let Some(port) = sim.ppk2_port() {
            eff.monitor = Some(MonitorSpec {
                kind: MonitorKind::Ppk2,
                port: MonitorPort::Path(port),
                baud: 115_200,
                settings: MonitorSettings::Ppk2(Ppk2Settings::SourceMeter {
                    source_mv: (sim.power_params().supply_v * 1000.0) as u32,
                }),
            });
        }
    }
    eff
}

/// A board's power monitor during a run, and the idle power measured at each level.
struct PowerState {
    spec: MonitorSpec,
    session: Option<PowerSession>,
    /// Why the monitor is gone for good (it did not come back): cells are recorded without energy.
    gone: Option<String>,
    idle_w: HashMap<u64, f64>,
    /// Where a network monitor is now (a labgrid place's serial port after its exporter restarted).
    relocate: Option<Relocate>,
    /// What a reopened session's captures may hold in memory, and where they spill.
    limits: crate::power_session::CaptureLimits,
}

/// The run directory (for spilled captures).
fn shared_results_dir(shared: &RunShared) -> PathBuf {
    shared.store.lock().unwrap_or_else(|p| p.into_inner()).dir().to_path_buf()
}

/// Finds a monitor's current network address (`None`: not known now).
type Relocate = Box<dyn Fn() -> Option<String> + Send>;

/// How long to wait for an unplugged monitor to come back before going on without it.
const MONITOR_RETURN_TIMEOUT: Duration = Duration::from_secs(30);

impl PowerState {
    /// Mean power over `duration` with nothing running; `None` (said on the terminal) when the monitor
    /// could not measure it: the level's cells then have gross energy only.
    fn measure_idle(&mut self, duration: Duration, stop: &AtomicBool, bar: &ProgressBar) -> Option<f64> {
        let session = self.session.as_ref()?;
        let result = (|| -> Result<f64> {
            session.begin()?;
            let start = crate::power::host_monotonic_ns() as i64;
            let until = std::time::Instant::now() + duration;
            while std::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
                std::thread::sleep((until - std::time::Instant::now()).min(Duration::from_millis(100)));
            }
            let window = HostWindow { start_ns: start, end_ns: crate::power::host_monotonic_ns() as i64 };
            let finished = session.finish(Some(window.end_ns), stop)?;
            Ok(crate::energy::capture_mean_power_w(&finished.capture, window)?)
        })();
        match result {
            Ok(w) => Some(w),
            Err(e) => {
                say(bar, format!("idle power not measured ({e:#}); net energy stays empty at this level"));
                None
            }
        }
    }

    /// Reopens the monitor if its reader stopped (unplugged, pty closed, stalled), waiting up to
    /// [`MONITOR_RETURN_TIMEOUT`] for it to come back; when it does not, the run goes on without it
    /// (cells get latency only, and say why). `false` when the run was asked to stop meanwhile.
    fn ensure_healthy(&mut self, bar: &ProgressBar, stop: &AtomicBool) -> bool {
        let failed = match &self.session {
            Some(s) => s.failure().map(|e| e.to_string()),
            None => Some(self.gone.clone().unwrap_or_else(|| "not open".into())),
        };
        let Some(reason) = failed else { return true };
        if let Some(s) = self.session.take() {
            s.stop();
        }
        // A monitor already given up on gets one quick try per cell, not another long wait.
        let patience = if self.gone.is_some() { Duration::ZERO } else { MONITOR_RETURN_TIMEOUT };
        if !patience.is_zero() {
            say(bar, format!("power monitor failed ({reason}); waiting up to {patience:?} for it to come back"));
        }
        let start = std::time::Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            if let Some(address) = self.relocate.as_ref().and_then(|r| r()) {
                self.spec.port = MonitorPort::Network(address);
            }
            match open_scenario_monitor(&self.spec).and_then(|m| Ok(PowerSession::start_with(m, self.limits.clone())?))
            {
                Ok(s) => {
                    self.session = Some(s);
                    self.gone = None;
                    self.idle_w.clear();
                    return true;
                }
                Err(e) if start.elapsed() >= patience => {
                    if self.gone.is_none() {
                        say(
                            bar,
                            format!(
                                "power monitor did not come back within {patience:?} ({e:#}); going on with latency only"
                            ),
                        );
                    }
                    self.gone = Some(format!("the power monitor is gone ({reason}; reopening: {e:#})"));
                    return true;
                }
                Err(_) => {
                    // Sleep in short slices so Ctrl-C is honoured while waiting.
                    let until = std::time::Instant::now() + delay;
                    while std::time::Instant::now() < until {
                        if stop.load(Ordering::SeqCst) {
                            return false;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    delay = (delay * 2).min(Duration::from_secs(4));
                }
            }
        }
    }
}

/// The power of one measured cell, with what it was measured against.
struct MeasuredPower {
    power: CellPower,
    idle_power_w: Option<f64>,
    window: HostWindow,
    /// Half the round trip of the board-to-host clock exchange used.
    uncertainty_us: f64,
}

/// Board-to-host clock offset from several `clock` exchanges (the smallest round trip wins).
fn clock_offset(agent: &mut AgentClient) -> Result<crate::energy::ClockOffset, CellError> {
    let exchanges = agent.clock_exchanges(7)?;
    estimate_offset(&exchanges).map_err(|e| CellError::Fatal(anyhow!("clock offset: {e}")))
}

/// Switches the live model to every variant several times (RT3's run-time reconfiguration)
/// and returns the median switch time per variant as the agent measured it.
fn measure_switching(agent: &mut AgentClient, load: &LoadReply) -> Result<std::collections::BTreeMap<String, u64>> {
    const ROUNDS: usize = 9;
    let mut times: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..ROUNDS {
        for v in &load.variants {
            let reply = agent.switch(&v.name)?;
            times.entry(v.name.clone()).or_default().push(reply.switch_ns);
        }
    }
    Ok(times
        .into_iter()
        .map(|(name, mut t)| {
            t.sort_unstable();
            (name, t[t.len() / 2])
        })
        .collect())
}

/// The wall-time cap of a window (warm-up included): four times its minimum duration plus a minute,
/// so a board that turned slow ends the window with a reply saying so instead of a reply timeout.
fn window_cap_ms(min_duration: Duration) -> u64 {
    (min_duration.as_millis() as u64).saturating_mul(4).saturating_add(60_000)
}

/// Hot and cold switches measured per pattern set.
const SWITCH_ROUNDS: u32 = 5;
/// Inferences timed after each switch: the first against the median of the rest.
const SWITCH_PROBE: u32 = 6;

/// What putting each pattern set into effect costs, RT3's way: from the set's block base, a hot
/// switch (the prepacked set becomes active) and a cold one (the set is assigned and packed from
/// its definitions), each followed by a probe of inferences for the first-inference penalty.
fn measure_reconfiguration(
    agent: &mut AgentClient,
    load: &LoadReply,
    board: &str,
    simulated: bool,
    freq_khz: u64,
    stop: &AtomicBool,
    place: Option<&(String, String)>,
) -> Result<Vec<crate::results::SwitchRecord>> {
    use device_agent::protocol::SwitchMode;
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    };
    // First probe inference minus the median of the rest, ms.
    let penalty_ms = |probe: &[u64]| -> f64 {
        let rest: Vec<f64> = probe.iter().skip(1).map(|&t| t as f64).collect();
        probe.first().map_or(f64::NAN, |&first| (first as f64 - median(rest)) / 1e6)
    };
    let mut rows = Vec::new();
    for v in load.variants.iter().filter(|v| v.kind == "pattern") {
        let base = v.base.clone().unwrap_or_default();
        let (mut hot_us, mut cold_ms, mut hot_pen, mut cold_pen) = (vec![], vec![], vec![], vec![]);
        for _ in 0..SWITCH_ROUNDS {
            if stop.load(Ordering::SeqCst) {
                return Ok(rows);
            }
            agent.switch_with(&base, SwitchMode::Hot, 0)?;
            let hot = agent.switch_with(&v.name, SwitchMode::Hot, SWITCH_PROBE)?;
            hot_us.push(hot.switch_ns as f64 / 1e3);
            hot_pen.push(penalty_ms(&hot.probe_ns));
            agent.switch_with(&base, SwitchMode::Hot, 0)?;
            let cold = agent.switch_with(&v.name, SwitchMode::Cold, SWITCH_PROBE)?;
            cold_ms.push(cold.switch_ns as f64 / 1e6);
            cold_pen.push(penalty_ms(&cold.probe_ns));
        }
        let (cold_switch_ms, cold_penalty) = (median(cold_ms), median(cold_pen));
        rows.push(crate::results::SwitchRecord {
            board: board.to_string(),
            variant: v.name.clone(),
            freq_khz,
            simulated,
            rounds: SWITCH_ROUNDS,
            hot_switch_us: median(hot_us),
            cold_switch_ms,
            hot_first_inference_penalty_ms: median(hot_pen),
            cold_first_inference_penalty_ms: cold_penalty,
            first_inference_penalty_ms: cold_penalty,
            resident_bytes: v.bytes,
            resident_bytes_all_prepacked: load.resident_bytes_all_prepacked,
            resident_bytes_one_set: load.resident_bytes_one_set,
            within_45_ms: cold_switch_ms + cold_penalty.max(0.0) <= 45.0,
            place: place.map(|(p, _)| p.clone()),
            exporter_host: place.map(|(_, h)| h.clone()),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(name: &str, done: usize, failed: usize, error: bool, mismatch: bool) -> BoardOutcome {
        BoardOutcome {
            board: name.into(),
            cells_done: done,
            cells_skipped: 0,
            cells_failed: failed,
            cells_without_energy: 0,
            interrupted: false,
            error: error.then(|| "boom".to_string()),
            scenario_mismatch: mismatch,
        }
    }

    #[test]
    fn only_a_run_that_measured_nothing_for_a_mismatch_alone_is_a_scenario_mismatch() {
        let run = |boards| RunOutcome { dir: PathBuf::new(), boards };
        assert!(run(vec![board("a", 0, 0, true, true)]).scenario_mismatch_only());
        assert!(run(vec![board("a", 0, 0, true, true), board("b", 0, 0, false, false)]).scenario_mismatch_only());
        // Another board measured, failed cells or failed otherwise: a resume has work to do.
        assert!(!run(vec![board("a", 0, 0, true, true), board("b", 3, 0, false, false)]).scenario_mismatch_only());
        assert!(!run(vec![board("a", 0, 0, true, true), board("b", 0, 2, false, false)]).scenario_mismatch_only());
        assert!(!run(vec![board("a", 0, 0, true, true), board("b", 0, 0, true, false)]).scenario_mismatch_only());
        assert!(!run(vec![board("a", 0, 0, true, false)]).scenario_mismatch_only());
    }
}
