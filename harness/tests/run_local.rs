//! End to end on the local transport: a small scenario on a simulated board and on a plain
//! local board with a static fake sysfs tree; rows, energy, restore and resume are checked.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use harness::results::{read_journal, read_parquet, CELLS_PARQUET, JOURNAL, LATENCY_PARQUET, POWER_PARQUET};
use harness::runner::{run_scenario, RunOptions};
use harness::scenario::parse_scenario;
use harness::sim::simulator::PowerParams;
use harness::sim::sysfs::FakeCpufreqTree;

/// The tests share the agent build and the host's CPU: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Builds the debug agent once (kernels are optimised in dev builds, see Cargo.toml).
fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
            let status = Command::new(env!("CARGO"))
                .current_dir(&root)
                .args(["build", "-q", "-p", "device-agent", "--bin", "hil-agent"])
                .status()
                .expect("running cargo");
            assert!(status.success(), "building hil-agent failed");
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            let bin = target.join("debug").join("hil-agent");
            assert!(bin.is_file(), "{} missing", bin.display());
            bin
        })
        .clone()
}

fn scenario_text(board: &str) -> String {
    format!(
        r#"
name: e2e
boards:
{board}
model:
  preset: rt3-transformer
  seq: 8
  seed: 3
variants:
  - name: dense
    kind: dense
  - name: bp50
    kind: block
    sparsity: 0.5
    block_rows: 16
  - name: pp75
    kind: pattern
    base: bp50
    tile: 16
    sparsity: 0.75
dvfs:
  levels: [1500MHz, 600MHz]
  settle: 30ms
measure:
  warmup_iterations: 2
  min_iterations: 5
  min_duration: 300ms
  repeats: 1
  idle_duration: 200ms
  max_attempts: 2
constraints:
  latency_deadline: 500ms
"#
    )
}

fn run(text: &str, out: &Path, resume: Option<PathBuf>) -> harness::runner::RunOutcome {
    let scenario = parse_scenario(text, "e2e.yaml").expect("valid scenario");
    let opts = RunOptions { out_root: out.to_path_buf(), resume, progress: false, agent_binary: Some(agent_binary()) };
    run_scenario(&scenario, text, &opts, Arc::new(AtomicBool::new(false))).expect("run completes")
}

#[test]
fn simulated_board_measures_latency_and_energy_and_restores_cpufreq() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let board = format!(
        "  - name: simboard\n    sim: true\n    cpus: [0]\n    workdir: {}\n",
        work.path().join("wd").display()
    );
    let out = work.path().join("results");
    let text = scenario_text(&board);
    let outcome = run(&text, &out, None);
    assert!(outcome.all_ok(), "{:?}", outcome.boards);
    assert_eq!(outcome.boards[0].cells_done, 6);
    if harness::scenario::cpus_for_hil() > 1 {
        // One thread pinned to CPU 0 leaves hil the others: no note, in run.json either (the
        // runner moves itself off CPU 0 after counting).
        let meta = harness::runmeta::RunMeta::read(&outcome.dir).unwrap();
        assert!(meta.sessions[0].notes.is_empty(), "{:?}", meta.sessions[0].notes);
    }

    let cells = read_parquet(&outcome.dir.join(CELLS_PARQUET)).unwrap();
    assert_eq!(cells.height(), 6);
    let verified = cells.column("freq_verified").unwrap().bool().unwrap();
    assert!(verified.into_iter().all(|v| v == Some(true)), "the simulator follows pinned frequencies");
    let energy = cells.column("energy_per_inference_mj").unwrap().f64().unwrap();
    assert!(energy.into_iter().all(|e| e.is_some_and(|e| e > 0.0)), "energy per inference is positive");
    let idle = cells.column("idle_power_w").unwrap().f64().unwrap();
    assert!(
        idle.into_iter().all(|p| p.is_some_and(|p| (p / PowerParams::default().static_w - 1.0).abs() < 0.05)),
        "idle power is the model's static power"
    );
    let simulated = cells.column("simulated").unwrap().bool().unwrap();
    assert!(simulated.into_iter().all(|s| s == Some(true)));
    assert_eq!(read_parquet(&outcome.dir.join(POWER_PARQUET)).unwrap().height(), 6);
    let lat = read_parquet(&outcome.dir.join(LATENCY_PARQUET)).unwrap();
    assert!(lat.height() >= 6 * 5);
    for (table, df) in [("latency", &lat), ("power", &read_parquet(&outcome.dir.join(POWER_PARQUET)).unwrap())] {
        let s = df.column("simulated").unwrap_or_else(|e| panic!("{table}.parquet: {e}"));
        assert!(s.bool().unwrap().into_iter().all(|s| s == Some(true)), "{table}.parquet says simulated");
    }

    // Output fidelity per variant, measured by the agent against dense.
    let variant = cells.column("variant").unwrap().str().unwrap();
    let cosine = cells.column("fidelity_cosine").unwrap().f64().unwrap();
    let rel = cells.column("fidelity_rel_l2").unwrap().f64().unwrap();
    for ((v, c), r) in variant.into_iter().zip(cosine).zip(rel) {
        let (v, c, r) = (v.unwrap(), c.unwrap(), r.unwrap());
        match v {
            "dense" => assert_eq!((c, r), (1.0, 0.0)),
            // Synthetic weights have no redundancy to lose: RT3's model (ReLU, causal, embedded
            // tokens) keeps a cosine of about 0.45 at BP 50 % + PP 75 %; what matters is that the
            // output stays correlated with dense and differs from it.
            _ => assert!(c < 1.0 && c > 0.3 && r > 0.0, "{v}: cosine {c}, rel_l2 {r}"),
        }
    }
    let kind = cells.column("fidelity_kind").unwrap().str().unwrap();
    assert!(kind.into_iter().all(|k| k == Some("perturbation (synthetic weights)")));

    // Reconfiguration costs of the pattern set, measured at the lowest level.
    let sw = read_parquet(&outcome.dir.join(harness::results::SWITCH_PARQUET)).unwrap();
    assert_eq!(sw.height(), 1, "{sw}");
    let f = |c: &str| {
        sw.column(c).unwrap().cast(&polars::prelude::DataType::Float64).unwrap().f64().unwrap().get(0).unwrap()
    };
    assert_eq!(sw.column("variant").unwrap().str().unwrap().get(0), Some("pp75"));
    assert_eq!(f("freq_khz"), 600_000.0);
    assert!(f("hot_switch_us") > 0.0 && f("hot_switch_us") < 1e4, "a hot switch is an index store: {sw}");
    assert!(f("cold_switch_ms") * 1e3 > f("hot_switch_us"), "a cold switch assigns and packs: {sw}");
    // One pattern set: holding one at a time saves nothing here (the kernels test covers three).
    assert_eq!(f("resident_bytes_one_set"), f("resident_bytes_all_prepacked"));
    assert!(f("resident_bytes") > 0.0);
    assert_eq!(sw.column("simulated").unwrap().bool().unwrap().get(0), Some(true));

    let mut meta = harness::runmeta::RunMeta::read(&outcome.dir).unwrap();
    assert_eq!(meta.schema_version, harness::runmeta::RUN_JSON_SCHEMA);
    assert_eq!(meta.sessions.len(), 1);
    let source = meta.sessions[0].agent_source.as_deref().unwrap_or_default();
    assert!(source.starts_with("given with --agent-bin: "), "where the agent came from: {source:?}");
    let board = meta.board("simboard").unwrap();
    assert!(board.simulation.as_deref().unwrap().contains("SIMULATED"));
    assert!(board.monitor.as_ref().unwrap().simulated);
    assert!(board.agent.is_some() && board.model.is_some() && board.selftest.is_some());
    // A later session that reached the board but had nothing to do (no agent run) does not hide
    // what this one found.
    let mut later = meta.sessions[0].clone();
    let reached = harness::runmeta::BoardMeta { probe: board.probe.clone(), ..Default::default() };
    later.boards.insert("simboard".into(), reached);
    meta.sessions.push(later);
    let board = meta.board("simboard").unwrap();
    assert!(board.model.is_some() && board.monitor.is_some() && board.agent.is_some(), "{board:?}");

    // The simulator's tree is back to what it booted with: ondemand, full range.
    let policy = work.path().join("wd/sim/sys/devices/system/cpu/cpufreq/policy0");
    let read = |f: &str| std::fs::read_to_string(policy.join(f)).unwrap().trim().to_string();
    assert_eq!(read("scaling_governor"), "ondemand");
    assert_eq!(read("scaling_min_freq"), "600000");
    assert_eq!(read("scaling_max_freq"), "1500000");
    assert!(!work.path().join("wd/hil-dvfs-restore.json").exists(), "restore file removed after a clean restore");

    // The run is complete (and `hil run` writes its report): resuming it has nothing to do, so
    // `hil run --resume` touches no board.
    let scenario = parse_scenario(&text, "e2e.yaml").unwrap();
    assert_eq!(harness::runner::resume_is_complete(&scenario, &text, &outcome.dir).unwrap(), None, "no report yet");
    harness::report::write_reports_with_summary(&outcome.dir).unwrap();
    assert_eq!(harness::runner::resume_is_complete(&scenario, &text, &outcome.dir).unwrap(), Some(6));
    let other = parse_scenario(&text.replace("seed: 3", "seed: 4"), "e2e.yaml").unwrap();
    assert_eq!(
        harness::runner::resume_is_complete(&other, &text.replace("seed: 3", "seed: 4"), &outcome.dir).unwrap(),
        None
    );

    // While another process holds the board, a run is refused before it starts the simulator
    // and before it makes a run directory.
    let held = harness::board_lock::BoardLock::acquire(&scenario.boards[0], "another hil run").unwrap();
    std::fs::remove_dir_all(work.path().join("wd/sim")).unwrap();
    let run_dirs = || std::fs::read_dir(outcome.dir.parent().unwrap()).unwrap().count();
    let before = run_dirs();
    let opts = RunOptions { out_root: out.clone(), resume: None, progress: false, agent_binary: Some(agent_binary()) };
    let refused = run_scenario(&scenario, &text, &opts, Arc::new(AtomicBool::new(false))).unwrap_err();
    let error = format!("{refused:#}");
    assert!(error.starts_with("board simboard: "), "{error}");
    assert!(error.contains("in use by another hil process") && error.contains("`another hil run`"), "{error}");
    assert!(!work.path().join("wd/sim").exists(), "the busy board's simulator was not started again");
    assert_eq!(run_dirs(), before, "a refused run leaves no run directory");
    drop(held);
}

#[test]
fn local_board_with_static_fake_sysfs_records_rows_restores_the_tree_and_resumes() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let sys = work.path().join("sys");
    let fake = FakeCpufreqTree::raspberry_pi_4().write(&sys).unwrap();
    let snapshot = |f: &str| fake.read_policy_attr(0, f).unwrap();
    let before: Vec<String> =
        ["scaling_governor", "scaling_min_freq", "scaling_max_freq"].iter().map(|f| snapshot(f)).collect();
    let board = format!(
        "  - name: bench\n    transport: local\n    workdir: {}\n    sysfs_root: {}\n",
        work.path().join("wd").display(),
        sys.display()
    );
    let text = scenario_text(&board);
    let out = work.path().join("results");
    let outcome = run(&text, &out, None);
    // Nothing moves scaling_cur_freq in a static tree: the cells are recorded, flagged unverified.
    assert!(outcome.all_ok(), "{:?}", outcome.boards);
    let cells = read_parquet(&outcome.dir.join(CELLS_PARQUET)).unwrap();
    assert_eq!(cells.height(), 6);
    let verified = cells.column("freq_verified").unwrap().bool().unwrap();
    assert!(verified.into_iter().any(|v| v == Some(false)));
    assert!(cells.column("mean_power_w").unwrap().null_count() == 6, "no monitor, no power");
    let after: Vec<String> =
        ["scaling_governor", "scaling_min_freq", "scaling_max_freq"].iter().map(|f| snapshot(f)).collect();
    assert_eq!(before, after, "cpufreq settings restored");

    // Drop the last two cells from the journal, as if the run had been killed, and resume.
    let journal = outcome.dir.join(JOURNAL);
    let text_j = std::fs::read_to_string(&journal).unwrap();
    let kept: Vec<&str> = text_j.lines().take(4).collect();
    std::fs::write(&journal, kept.join("\n") + "\n").unwrap();
    let resumed = run(&text, &out, Some(outcome.dir.clone()));
    assert_eq!(resumed.dir, outcome.dir);
    assert_eq!(resumed.boards[0].cells_skipped, 4);
    assert_eq!(resumed.boards[0].cells_done, 2);
    assert_eq!(read_journal(&outcome.dir).unwrap().len(), 6);
    // The summary and the report say which levels' frequency was not verified.
    let (paths, summary) = harness::report::write_reports_with_summary(&outcome.dir).unwrap();
    assert!(summary.contains("UNVERIFIED frequency on board bench at "), "{summary}");
    let report = std::fs::read_to_string(paths.markdown).unwrap();
    assert!(report.contains("(frequency UNVERIFIED)") && report.contains("UNVERIFIED frequency on board bench"));

    // A level the board does not offer is found by its probe: nothing is measured, and the run
    // says the scenario does not fit rather than that it could be resumed.
    let text_650 = text.replace("levels: [1500MHz, 600MHz]", "levels: [1500MHz, 650MHz]");
    let mismatch = run(&text_650, &out, None);
    assert!(mismatch.boards[0].scenario_mismatch && mismatch.scenario_mismatch_only(), "{:?}", mismatch.boards);
    let error = mismatch.boards[0].error.clone().unwrap_or_default();
    assert!(error.contains("dvfs.levels[1] = 650 MHz") && error.contains("does not offer 650 MHz"), "{error}");
    assert!(!outcome.scenario_mismatch_only(), "a run that measured is not a mismatch");

    // Threads that keep every CPU hil may use busy: the run says the harness shares them, and
    // keeps the note in run.json and the report. This thread (whose affinity hil counts, and
    // which the run's threads inherit) is narrowed to at most 2 CPUs, so the test runs 1 or 2
    // agent threads on any host.
    narrow_this_thread_to(2);
    let cpus = harness::scenario::cpus_for_hil(); // 1 or 2 (a cgroup quota may say 1)
    let text_all_cpus = text
        .replace("  repeats: 1", &format!("  repeats: 1\n  threads: {cpus}"))
        .replace("levels: [1500MHz, 600MHz]", "levels: [1500MHz]");
    let shared = run(&text_all_cpus, &out, None);
    assert!(shared.all_ok(), "{:?}", shared.boards);
    let meta = harness::runmeta::RunMeta::read(&shared.dir).unwrap();
    let notes = &meta.sessions[0].notes;
    assert_eq!(notes.len(), 1, "{notes:?}");
    let want =
        format!("measure.threads = {cpus} on 1 board(s) run on this host (bench (local)) keep all {cpus} CPU(s)");
    assert!(notes[0].starts_with(&want), "{notes:?}");
    let (paths, _) = harness::report::write_reports_with_summary(&shared.dir).unwrap();
    assert!(std::fs::read_to_string(paths.markdown).unwrap().contains(&format!("(note: {want}")));
    if cpus > 1 {
        let quiet = harness::runmeta::RunMeta::read(&outcome.dir).unwrap();
        assert!(quiet.sessions.iter().all(|s| s.notes.is_empty()), "one thread leaves a CPU free: no note");
    }

    // A different scenario cannot resume this run.
    let scenario = parse_scenario(&text.replace("seed: 3", "seed: 4"), "e2e.yaml").unwrap();
    let opts =
        RunOptions { out_root: out.clone(), resume: Some(outcome.dir.clone()), progress: false, agent_binary: None };
    let err = run_scenario(&scenario, &text.replace("seed: 3", "seed: 4"), &opts, Arc::new(AtomicBool::new(false)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("scenario has changed"), "{err}");
}

#[test]
fn board_probe_starts_a_simulated_board_and_refuses_one_a_run_holds() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let board = format!(
        "  - name: simboard\n    sim: true\n    cpus: [0]\n    workdir: {}\n",
        work.path().join("wd").display()
    );
    let path = work.path().join("probe.yaml");
    std::fs::write(&path, scenario_text(&board)).unwrap();
    let probe = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hil"))
            .args(["board", "probe", path.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = probe();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("scenario OK"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(report["simulated"]["simulator"], "hil", "the probe read the simulator's tree: {report}");

    let scenario = parse_scenario(&scenario_text(&board), "probe.yaml").unwrap();
    let held = harness::board_lock::BoardLock::acquire(&scenario.boards[0], "hil run, scenario e2e").unwrap();
    let (code, _, stderr) = probe();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("in use by another hil process") && stderr.contains("scenario e2e"), "{stderr}");
    drop(held);
}

/// `hil validate` judges a simulated board on facts known in advance; they must be what a probe
/// of the simulator's real tree finds (CPUs, policies, levels, governors, thermal zones).
#[test]
fn a_simulated_boards_advance_facts_are_what_its_probe_finds() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let board = format!("  - name: simboard\n    sim: true\n    workdir: {}\n", work.path().join("wd").display());
    let scenario = parse_scenario(&scenario_text(&board), "facts.yaml").unwrap();
    let spec = &scenario.boards[0];
    let sim = harness::runner::start_simulator(spec, &scenario, false).unwrap();
    let effective = harness::runner::effective_spec(spec, Some(&sim));
    let mut reached = harness::connect::open_board(&effective).unwrap();
    let report = harness::probe::probe(reached.as_mut(), &effective.sysfs_root).unwrap();
    assert_eq!(
        harness::runner::facts_from_probe(&report),
        harness::sim::simulator::simulated_board_facts(),
        "advance facts against the probe of {}",
        effective.sysfs_root
    );
}

/// Narrows the calling thread's CPU affinity to its first `at_most` CPUs.
fn narrow_this_thread_to(at_most: usize) {
    // SAFETY: cpu_set_t is a plain bit array; both calls get a valid set of the size passed, for
    // the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
        let mut narrow: libc::cpu_set_t = std::mem::zeroed();
        let mut n = 0;
        for cpu in 0..libc::CPU_SETSIZE as usize {
            if n < at_most && libc::CPU_ISSET(cpu, &set) {
                libc::CPU_SET(cpu, &mut narrow);
                n += 1;
            }
        }
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &narrow), 0);
    }
}
