//! The cell runner: boards in parallel, one thread each; per board, for each
//! cell of the plan: pin the level, settle, cool down, run the agent's timed
//! window, check frequency and throttling, record.
//!
//! What it guarantees (the rest of the module is in service of these):
//! - every finished cell is journaled before the next starts ([`ResultsStore`]);
//! - a board's cpufreq settings are saved (on the board too) before the first
//!   write and restored on success, error and Ctrl-C; a crashed run's restore
//!   file is applied at the next connect, before anything else;
//! - one board's failure does not stop the others;
//! - a cell that fails in a retryable way (SSH drop, agent crash) is retried
//!   after reconnecting, up to `measure.max_attempts`, and attempts are recorded.

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
use serde::Serialize;

use crate::agent_client::{AgentClient, AgentError};
use crate::board::Board;
use crate::connect::{open_board, open_scenario_monitor};
use crate::deploy::{build_agent, deploy_agent, target_for_machine, Deployed};
use crate::dvfs::{
    read_time_in_state, recover_from_restore_file, residency_between, restore_file_path, DvfsGuard, PinStrategy, Sysfs,
    DEFAULT_FREQ_TOLERANCE_KHZ,
};
use crate::energy::{
    board_window_to_host, energy_per_inference, estimate_offset, missing_samples, window_energy, ClockMap, HostWindow,
};
use crate::plan::{plan_board, Cell};
use crate::power::MonitorInfo;
use crate::power_session::PowerSession;
use crate::probe::{probe, ProbeReport};
use crate::results::{CellRecord, ResultsStore};
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
#[derive(Clone, Debug, Serialize)]
pub struct BoardOutcome {
    pub board: String,
    pub cells_done: usize,
    pub cells_skipped: usize,
    pub cells_failed: usize,
    pub interrupted: bool,
    pub error: Option<String>,
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
}

/// Per-board facts recorded in `run.json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BoardMeta {
    pub transport: String,
    pub simulated: bool,
    /// What was simulated and how (for `sim: true` boards).
    pub simulation: Option<String>,
    pub monitor: Option<MonitorInfo>,
    pub probe: Option<ProbeReport>,
    pub restored_from_previous_crash: bool,
    pub policies: Vec<String>,
    pub levels_khz: Vec<u64>,
    pub saved_dvfs: Option<serde_json::Value>,
    pub agent: Option<Deployed>,
    pub agent_hello: Option<HelloReply>,
    pub model: Option<LoadReply>,
    /// Median time to switch the live model to each variant (pattern-set switching), ns.
    pub switch_ns: std::collections::BTreeMap<String, u64>,
    /// Every variant's kernels against the scalar reference on this board's CPU.
    pub selftest: Option<device_agent::protocol::SelftestReply>,
    pub outcome: Option<BoardOutcome>,
}

/// Shared state of one run: the results store, `run.json`, the stop flag, the agent builds.
struct RunShared<'s> {
    scenario: &'s Scenario,
    store: Mutex<ResultsStore>,
    meta: Mutex<crate::runmeta::RunMeta>,
    stop: Arc<AtomicBool>,
    agent_builds: Mutex<HashMap<Option<String>, PathBuf>>,
    agent_override: Option<PathBuf>,
}

impl RunShared<'_> {
    fn update_board_meta(&self, board: &str, f: impl FnOnce(&mut BoardMeta)) {
        let mut meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        f(meta.boards.entry(board.to_string()).or_default());
        let dir = self.store.lock().unwrap_or_else(|p| p.into_inner()).dir().to_path_buf();
        if let Err(e) = meta.write(&dir) {
            eprintln!("warning: could not update run.json: {e:#}");
        }
    }

    /// Builds the agent for `target` once per run, whichever board asks first.
    fn agent_binary(&self, target: Option<String>) -> Result<PathBuf> {
        if let Some(p) = &self.agent_override {
            return Ok(p.clone());
        }
        let mut builds = self.agent_builds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = builds.get(&target) {
            return Ok(p.clone());
        }
        let path = build_agent(target.as_deref())?;
        builds.insert(target, path.clone());
        Ok(path)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Runs `scenario`; `stop` is set by the Ctrl-C/SIGTERM handler.
pub fn run_scenario(
    scenario: &Scenario,
    scenario_text: &str,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
) -> Result<RunOutcome> {
    let (dir, meta) = crate::runmeta::open_run_dir(scenario, scenario_text, opts)?;
    let store = ResultsStore::open(&dir)?;
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
            .map(|spec| {
                let bar = progress.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_prefix(spec.name.clone());
                let shared = &shared;
                let done = &done;
                s.spawn(move || {
                    let outcome = run_board(shared, spec, done, &bar);
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
                    interrupted: false,
                    error: Some("the board's thread panicked (a bug in hil)".into()),
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
        GovernorChoice::MinMaxUnder(_) => PinStrategy::MinMax,
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
        },
        ModelSource::Safetensors { path } => WireModel {
            preset: "safetensors".to_string(),
            seed: scenario.model.seed,
            seq: scenario.model.seq.map(|s| s as usize),
            safetensors: Some(path.clone()),
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
    LoadRequest { model, variants }
}

/// Starts the agent and loads the model; returns the client and the load reply.
fn start_agent(
    board: &mut dyn Board,
    spec: &BoardSpec,
    scenario: &Scenario,
    remote_path: &str,
) -> Result<(AgentClient, HelloReply, LoadReply)> {
    let argv = agent_argv(spec, remote_path, scenario.measure.threads);
    let session = board.spawn(&argv).with_context(|| format!("starting the agent on board {}", spec.name))?;
    let mut agent = AgentClient::new(&spec.name, session);
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
) -> BoardOutcome {
    let mut outcome = BoardOutcome {
        board: spec.name.clone(),
        cells_done: 0,
        cells_skipped: 0,
        cells_failed: 0,
        interrupted: false,
        error: None,
    };
    if let Err(e) = run_board_inner(shared, spec, done, bar, &mut outcome) {
        outcome.error = Some(format!("{e:#}"));
    }
    outcome
}

fn run_board_inner(
    shared: &RunShared,
    spec: &BoardSpec,
    done: &HashSet<crate::plan::CellKey>,
    bar: &ProgressBar,
    outcome: &mut BoardOutcome,
) -> Result<()> {
    let scenario = shared.scenario;
    let name = spec.name.as_str();
    // A simulated board brings its own fake sysfs, throttled agent and emulated PPK2.
    let sim = if spec.sim {
        bar.set_message("starting simulator");
        let root = Path::new(&spec.workdir).join("sim");
        let opts = SimOptions {
            name: spec.name.clone(),
            power: Default::default(),
            agent_threads: scenario.measure.threads,
            with_monitor: true,
        };
        let sim = Simulator::start(&root, opts)
            .with_context(|| format!("board {name}: starting the simulated board in {}", root.display()))?;
        shared.update_board_meta(name, |m| m.simulation = Some(sim.describe()));
        Some(sim)
    } else {
        None
    };
    let effective = effective_spec(spec, sim.as_ref());
    let spec = &effective;
    bar.set_message("connecting");
    let mut board = open_board(spec)?;
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
    shared.update_board_meta(name, |m| {
        m.transport = board.transport().to_string();
        m.simulated = spec.sim;
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
    if cells.is_empty() {
        return Ok(());
    }

    bar.set_message("building agent");
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
    shared.update_board_meta(name, |m| m.saved_dvfs = serde_json::to_value(guard.saved()).ok());

    let mut power = match &spec.monitor {
        Some(m) => {
            bar.set_message("opening power monitor");
            let session = PowerSession::start(open_scenario_monitor(m)?)?;
            let info = session.info().clone();
            shared.update_board_meta(name, |meta| meta.monitor = Some(info));
            Some(PowerState { spec: m.clone(), session: Some(session), idle_w: HashMap::new() })
        }
        None => None,
    };
    let result = measure_cells(
        shared,
        spec,
        &resolved.thermal_zone,
        &deployed,
        &mut guard,
        &cells,
        bar,
        outcome,
        power.as_mut(),
    );
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

/// Prints a line above the board's progress bar, or to stderr when there are no bars
/// (`--no-progress`, or stderr is not a terminal), so retries show in CI logs too.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Runs the cells in order, retrying retryable failures after reconnecting.
#[allow(clippy::too_many_arguments)]
fn measure_cells(
    shared: &RunShared,
    spec: &BoardSpec,
    thermal_zone: &Option<String>,
    deployed: &Deployed,
    guard: &mut DvfsGuard<'_>,
    cells: &[Cell],
    bar: &ProgressBar,
    outcome: &mut BoardOutcome,
    mut power: Option<&mut PowerState>,
) -> Result<()> {
    let scenario = shared.scenario;
    let name = spec.name.as_str();
    bar.set_message("loading model");
    let (mut agent, hello, load) = start_agent(guard.board(), spec, scenario, &deployed.remote_path)?;
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
    shared.update_board_meta(name, |m| {
        m.switch_ns = switch_ns;
        m.selftest = Some(selftest);
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
            let ctx = CellContext { scenario, spec, zone, sparsity: &sparsity, attempts, results_dir: &results_dir };
            if pinned_khz != Some(cell.key.freq_khz) || cell.starts_level_visit {
                pinned_khz = None;
            }
            let result = measure_cell(&ctx, guard, &mut agent, cell, &mut pinned_khz, power.as_deref_mut());
            match result {
                Ok(record) => {
                    shared.store.lock().unwrap_or_else(|p| p.into_inner()).append(record)?;
                    outcome.cells_done += 1;
                    break;
                }
                Err(CellError::Retryable(e)) if attempts < scenario.measure.max_attempts && !shared.stopping() => {
                    say(bar, format!("board {name}: cell {} attempt {attempts} failed: {e:#}; reconnecting", cell.key));
                    pinned_khz = None;
                    if let Some(p) = power.as_deref_mut() {
                        match p.ensure_healthy(bar, &shared.stop) {
                            Ok(true) => {}
                            Ok(false) => {
                                outcome.interrupted = true;
                                return Ok(());
                            }
                            Err(err) => {
                                outcome.cells_failed += 1;
                                return Err(err.context(format!("board {name}: after: {e:#}")));
                            }
                        }
                    }
                    if let Err(err) = reconnect_with_agent(guard, spec, scenario, &deployed.remote_path, &mut agent) {
                        outcome.cells_failed += 1;
                        return Err(err.context(format!("board {name}: reconnecting after: {e:#}")));
                    }
                }
                Err(CellError::Retryable(e)) | Err(CellError::Fatal(e)) => {
                    outcome.cells_failed += 1;
                    return Err(e.context(format!("cell {} failed after {attempts} attempt(s)", cell.key)));
                }
            }
        }
        bar.inc(1);
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
) -> Result<()> {
    guard.board().reconnect()?;
    let (new_agent, _, _) = start_agent(guard.board(), spec, scenario, remote_path)?;
    *agent = new_agent;
    Ok(())
}

struct CellContext<'a> {
    scenario: &'a Scenario,
    spec: &'a BoardSpec,
    zone: Option<u32>,
    sparsity: &'a HashMap<String, f64>,
    attempts: u32,
    results_dir: &'a Path,
}

/// A cell failure: worth a reconnect-and-retry, or not.
enum CellError {
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
            if !scenario.measure.idle_duration.is_zero() {
                let idle = p.measure_idle(scenario.measure.idle_duration)?;
                p.idle_w.insert(khz, idle);
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
        ) {
            eprintln!("warning: {e}; measuring anyway (temperatures are recorded)");
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

    let before = match power.as_deref() {
        Some(_) => Some(clock_offset(agent)?),
        None => None,
    };
    if let Some(p) = power.as_deref() {
        p.session()?.begin().map_err(|e| CellError::Retryable(e.into()))?;
    }
    let run = agent.run(RunRequest {
        variant: Some(cell.key.variant.clone()),
        warmup: scenario.measure.warmup_iterations,
        min_iters: scenario.measure.min_iterations.min(u32::MAX as u64) as u32,
        min_ms: scenario.measure.min_duration.as_millis() as u64,
        ..RunRequest::default()
    })?;

    let energy = match (power.as_deref(), before) {
        (Some(p), Some(before)) => {
            let capture = p.session()?.end(Duration::from_millis(100)).map_err(|e| CellError::Retryable(e.into()))?;
            let after = clock_offset(agent)?;
            let map = ClockMap::new(before, Some(after));
            let window = board_window_to_host(&map, run.window_start_ns, run.window_end_ns)
                .map_err(|e| CellError::Fatal(anyhow!("aligning the window of {}: {e}", cell.key)))?;
            let w = window_energy(&capture.samples, window).map_err(|e| {
                CellError::Retryable(anyhow!(
                    "power samples from the power monitor on {} for {}: {e}",
                    p.session().map(|s| s.info().port.clone()).unwrap_or_default(),
                    cell.key
                ))
            })?;
            let rate = p.session()?.info().sample_rate_hz;
            let lost = capture.lost + rate.map(|r| missing_samples(&w, r)).unwrap_or(0);
            let expected = rate.map(|r| r * w.duration_s).unwrap_or(w.samples_in_window as f64).max(1.0);
            let flagged = lost as f64 / expected > scenario.measure.max_lost_fraction;
            if flagged && ctx.attempts < scenario.measure.max_attempts {
                return Err(CellError::Retryable(anyhow!(
                    "{} of ~{expected:.0} power samples lost in the window of {} (limit {:.1} %)",
                    lost,
                    cell.key,
                    scenario.measure.max_lost_fraction * 100.0
                )));
            }
            if scenario.measure.raw_power {
                let range = crate::energy::samples_in_window(&capture.samples, window);
                crate::results::write_power_part(ctx.results_dir, &cell.key, &capture.samples[range], window.start_ns)
                    .map_err(CellError::Fatal)?;
            }
            let idle = p.idle_w.get(&khz).copied().unwrap_or(f64::NAN);
            let e = energy_per_inference(&w, if idle.is_nan() { 0.0 } else { idle }, run.iterations)
                .map_err(|e| CellError::Fatal(anyhow!("energy of {}: {e}", cell.key)))?;
            Some(PowerFigures {
                mean_power_w: e.mean_power_w,
                idle_power_w: (!idle.is_nan()).then_some(idle),
                gross_mj: e.gross_j * 1e3,
                net_mj: (!idle.is_nan()).then_some(e.net_j * 1e3),
                samples: w.samples_in_window as u64,
                lost,
                uncertainty_us: map.uncertainty_ns() as f64 / 1e3,
                flagged,
                window,
                energy_j: w.energy_j,
            })
        }
        _ => None,
    };

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
    let deadline_ms = scenario.constraints.latency_deadline.map(|d| d.as_secs_f64() * 1000.0);
    let variant = scenario.variant(&cell.key.variant).expect("planned variants exist");
    Ok(CellRecord {
        board: cell.key.board.clone(),
        freq_khz: khz,
        variant: cell.key.variant.clone(),
        repeat: cell.key.repeat,
        level: cell.level_index as u32,
        variant_kind: variant.kind.as_str().to_string(),
        sparsity: ctx.sparsity.get(&cell.key.variant).copied().unwrap_or(variant.kind.sparsity()),
        simulated: ctx.spec.sim,
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
        checksum: run.checksum.clone(),
        mean_power_w: energy.as_ref().map(|e| e.mean_power_w),
        idle_power_w: energy.as_ref().and_then(|e| e.idle_power_w),
        energy_per_inference_mj: energy.as_ref().map(|e| e.gross_mj),
        net_energy_per_inference_mj: energy.as_ref().and_then(|e| e.net_mj),
        power_samples: energy.as_ref().map(|e| e.samples),
        lost_samples: energy.as_ref().map(|e| e.lost),
        clock_offset_uncertainty_us: energy.as_ref().map(|e| e.uncertainty_us),
        power_flagged: energy.as_ref().map(|e| e.flagged),
        window_host_start_ns: energy.as_ref().map(|e| e.window.start_ns),
        window_host_end_ns: energy.as_ref().map(|e| e.window.end_ns),
        window_energy_j: energy.as_ref().map(|e| e.energy_j),
        latencies_ns: run.latencies_ns,
    })
}

/// The board's entry as the runner uses it: for a simulated board, pointed at the simulator's
/// fake sysfs, with the agent started inside the simulator and the emulated PPK2 as monitor.
fn effective_spec(spec: &BoardSpec, sim: Option<&Simulator>) -> BoardSpec {
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
    idle_w: HashMap<u64, f64>,
}

/// How long to wait for an unplugged monitor to come back before failing the board.
const MONITOR_RETURN_TIMEOUT: Duration = Duration::from_secs(30);

impl PowerState {
    fn session(&self) -> Result<&PowerSession, CellError> {
        self.session.as_ref().ok_or_else(|| CellError::Retryable(anyhow!("power monitor is not open")))
    }

    /// Mean power over `duration` with nothing running.
    fn measure_idle(&mut self, duration: Duration) -> Result<f64, CellError> {
        let session = self.session()?;
        session.begin().map_err(|e| CellError::Retryable(e.into()))?;
        std::thread::sleep(duration);
        let capture = session.end(Duration::from_millis(50)).map_err(|e| CellError::Retryable(e.into()))?;
        let (Some(first), Some(last)) = (capture.samples.first(), capture.samples.last()) else {
            return Err(CellError::Retryable(anyhow!(
                "the power monitor on {} delivered no samples during the idle measurement (did it stop streaming?)",
                session.info().port
            )));
        };
        let window = HostWindow { start_ns: first.t_ns as i64, end_ns: last.t_ns as i64 };
        let w =
            window_energy(&capture.samples, window).map_err(|e| CellError::Retryable(anyhow!("idle power: {e}")))?;
        Ok(w.mean_power_w)
    }

    /// Reopens the monitor if its reader stopped (unplugged, pty closed, stalled), waiting for it
    /// to come back. `Ok(false)` when the run was asked to stop meanwhile.
    fn ensure_healthy(&mut self, bar: &ProgressBar, stop: &AtomicBool) -> Result<bool> {
        let failed = match &self.session {
            Some(s) => s.failure().map(|e| e.to_string()),
            None => Some("not open".into()),
        };
        let Some(reason) = failed else { return Ok(true) };
        if let Some(s) = self.session.take() {
            s.stop();
        }
        say(
            bar,
            format!("power monitor failed ({reason}); waiting up to {MONITOR_RETURN_TIMEOUT:?} for it to come back"),
        );
        let start = std::time::Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            match open_scenario_monitor(&self.spec).and_then(|m| Ok(PowerSession::start(m)?)) {
                Ok(s) => {
                    self.session = Some(s);
                    self.idle_w.clear();
                    return Ok(true);
                }
                Err(e) if start.elapsed() >= MONITOR_RETURN_TIMEOUT => {
                    bail!("the power monitor did not come back within {MONITOR_RETURN_TIMEOUT:?}: {e:#} (first failure: {reason})")
                }
                Err(_) => {
                    // Sleep in short slices so Ctrl-C is honoured while waiting.
                    let until = std::time::Instant::now() + delay;
                    while std::time::Instant::now() < until {
                        if stop.load(Ordering::SeqCst) {
                            return Ok(false);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    delay = (delay * 2).min(Duration::from_secs(4));
                }
            }
        }
    }
}

/// Power figures of one cell.
struct PowerFigures {
    mean_power_w: f64,
    idle_power_w: Option<f64>,
    gross_mj: f64,
    net_mj: Option<f64>,
    samples: u64,
    lost: u64,
    uncertainty_us: f64,
    flagged: bool,
    window: HostWindow,
    energy_j: f64,
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
