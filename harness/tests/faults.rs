//! Faults injected into whole runs (issue 7, item 2): each test breaks something a real lab
//! breaks (an SSH link, a power monitor's USB, the operator's Ctrl-C, a `kill -9`, a dead or
//! impostor board) and checks that nothing is lost: every finished cell stays in the journal
//! exactly once, and the board's cpufreq settings end as they started.
//!
//! The "boards" are this host: SSH boards are the `common::Sshd` fixture on 127.0.0.1, and every
//! board's hardware is an in-process [`harness::sim::simulator::Simulator`] (fake sysfs tree kept
//! consistent by its ticker, agent wrapper). The power monitor of the monitor faults is a
//! [`Ppk2Emulator`] the test owns, so it can be "unplugged" and "plugged back" mid-cell. The agent
//! is the host's debug build, deployed with `--agent-bin`.
//!
//! The tests run one at a time (`faults_support::serial`). Without `/usr/sbin/sshd` the SSH ones
//! print why and pass, unless `HIL_REQUIRE_SSHD=1`. Every wait is bounded.
//!
//! The endless-stream faults (an SSH command printing forever, an agent line or a monitor reply
//! that never ends, a flood past the capture memory) live in `bounded_reads.rs`, beside the limits
//! they check.
//!
//! Three tests pin down behaviour these faults first revealed as missing: a stalled monitor is
//! detected, Ctrl-C is honoured during the wait for a lost monitor, and the agent of a dropped
//! session exits instead of running into the retried window.

mod common;
mod faults_support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::Sshd;
use faults_support::{
    cpufreq_settings, find_run_dir, local_board_yaml, restore_file, run_bounded, sample_overlap, scenario_yaml, serial,
    ssh_board_yaml, start_simulator, unique_journal, wait_for_journaled, Binaries, HilRun, SshLogin, Timing,
    CELLS_PER_BOARD,
};
use harness::sim::ppk2_emulator::{EmulatorConfig, Ppk2Emulator};

/// Upper bound of one whole run of the small scenario (agent load, switching, 4 cells, retries).
const RUN_LIMIT: Duration = Duration::from_secs(180);
/// Upper bound until the first cell of a run is journaled.
const FIRST_CELL_LIMIT: Duration = Duration::from_secs(120);

macro_rules! sshd_or_skip {
    () => {
        match Sshd::start() {
            Some(sshd) => sshd,
            None => return,
        }
    };
}

fn login(sshd: &Sshd) -> SshLogin {
    SshLogin {
        port: sshd.port,
        user: sshd.user.clone(),
        identity: sshd.client_key.clone(),
        known_hosts: sshd.known_hosts.clone(),
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("hil-faults-").tempdir().expect("tempdir")
}

/// An emulated PPK2 drawing a steady 2.5 W from its 5 V rail, linked at `port`.
fn plug_in_ppk2(port: &Path) -> Ppk2Emulator {
    let model = |_t_s: f64, supply_v: f64| 2.5 / supply_v.max(0.8);
    let config = EmulatorConfig { initial_vdd_mv: 5000, ..EmulatorConfig::default() };
    let mut emulator = Ppk2Emulator::spawn(model, config).expect("spawning the PPK2 emulator");
    emulator.link_at(port).unwrap_or_else(|e| panic!("linking the emulator at {}: {e}", port.display()));
    emulator
}

fn run_json(run_dir: &Path) -> harness::runmeta::RunMeta {
    harness::runmeta::RunMeta::read(run_dir).unwrap_or_else(|e| panic!("{}: {e:#}", run_dir.display()))
}

/// A board "site": the simulator's tree under `<work>/<name>-sim`, the workdir under `<work>/<name>-wd`.
struct Site {
    sim_root: PathBuf,
    workdir: PathBuf,
    _sim: harness::sim::simulator::Simulator,
}

impl Site {
    fn new(work: &Path, name: &str) -> Site {
        let sim_root = work.join(format!("{name}-sim"));
        let sim = start_simulator(&sim_root, name);
        Site { workdir: work.join(format!("{name}-wd")), sim_root, _sim: sim }
    }

    fn sys(&self) -> PathBuf {
        self.sim_root.join("sys")
    }
}

/// What the SSH-drop run left behind.
struct SshDrop {
    cells: Vec<harness::results::CellRecord>,
    /// Copies of the deployed agent seen running at once from the drop to the end of the run.
    agents: faults_support::Overlap,
}

/// Runs the small scenario on an SSH board and kills the sshd processes serving it while cell 2's
/// window runs; checks what every SSH drop must leave (all cells once, a retry, a reconnect,
/// cpufreq restored) and returns the journal and the agent overlap for further checks.
fn ssh_drop_run(sshd: &Sshd) -> SshDrop {
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "drop");
    let before = cpufreq_settings(&site.sys());
    let timing = Timing { window: Duration::from_millis(2000), ..Timing::SHORT };
    let text =
        scenario_yaml("ssh-drop", &[ssh_board_yaml("sshboard", &login(sshd), &site.sim_root, &site.workdir)], timing);
    let out = work.path().join("results");

    let run_done = AtomicBool::new(false);
    let (outcome, (killed, agents)) = thread::scope(|s| {
        let killer = s.spawn(|| {
            wait_for_journaled(&out, "ssh-drop", 1, FIRST_CELL_LIMIT);
            // Cell 2 is at the same level (no re-pin): its 2 s window starts after a few sysfs
            // reads, so 600 ms after cell 1 is journaled cell 2 is running, most likely mid-window.
            thread::sleep(Duration::from_millis(600));
            let killed = sshd.kill_connections();
            // Without a pty, sshd does not signal the command of a dropped session: its agent only
            // notices when it next writes (the end of its window). Watch it against the new one.
            (killed, sample_overlap(&site.workdir.join("hil-agent"), &run_done))
        });
        let outcome = run_bounded(&text, &out, &bins.agent, RUN_LIMIT);
        run_done.store(true, Ordering::SeqCst);
        (outcome, killer.join().expect("killer thread"))
    });
    eprintln!(
        "[faults] agents after the drop: at most {} at once, {:.1?} overlapped",
        agents.max_running, agents.overlapped
    );
    let outcome = outcome.unwrap_or_else(|e| panic!("run failed: {e:#}\nsshd log:\n{}", sshd.log_text()));
    assert!(killed >= 1, "no sshd connection process to kill mid-cell");
    assert!(outcome.all_ok(), "{:?}", outcome.boards);

    let cells = unique_journal(&outcome.dir);
    assert_eq!(cells.len(), CELLS_PER_BOARD, "every cell journaled once");
    assert_eq!(cells[0].attempts, 1, "the first cell finished before the fault");
    assert!(cells[1].attempts >= 2, "the cell running when the link dropped records a retry: {cells:#?}");
    assert!(sshd.accepted_logins() >= 2, "a second login (the reconnect) happened:\n{}", sshd.log_text());
    assert_eq!(cpufreq_settings(&site.sys()), before, "cpufreq settings restored");
    assert!(!restore_file(&site.workdir).exists(), "restore file removed after the clean restore");
    SshDrop { cells, agents }
}

/// How long after the retried attempt of cell 2 began the dropped session's agent was last seen
/// running (negative: it had exited before).
fn orphan_after_retry_start(drop: &SshDrop) -> Option<chrono::Duration> {
    let last = drop.agents.last_overlap?;
    let retry_started = chrono::DateTime::parse_from_rfc3339(&drop.cells[1].started_at).ok()?;
    Some(chrono::DateTime::<chrono::Utc>::from(last) - retry_started.to_utc())
}

#[test]
fn ssh_connection_dropped_mid_cell_is_reconnected_and_the_cell_retried() {
    let _serial = serial("ssh_connection_dropped_mid_cell_is_reconnected_and_the_cell_retried");
    let sshd = sshd_or_skip!();
    let drop = ssh_drop_run(&sshd);
    if let Some(late) = orphan_after_retry_start(&drop) {
        eprintln!("[faults] orphan agent last seen {} ms after the retried attempt started", late.num_milliseconds());
    }
}

/// The agent of a dropped SSH session must not keep computing its window into the retried one
/// (sshd does not signal a command without a pty): the agent exits when it is orphaned.
#[test]
fn ssh_drop_leaves_no_agent_running_into_the_retried_window() {
    let _serial = serial("ssh_drop_leaves_no_agent_running_into_the_retried_window");
    let sshd = sshd_or_skip!();
    let drop = ssh_drop_run(&sshd);
    if let Some(late) = orphan_after_retry_start(&drop) {
        assert!(
            late <= chrono::Duration::zero(),
            "the dropped session's agent ran {} ms into the retried attempt",
            late.num_milliseconds()
        );
    }
}

#[test]
fn power_monitor_closed_mid_cell_is_reopened_when_it_comes_back_and_the_cell_retried() {
    let _serial = serial("power_monitor_closed_mid_cell_is_reopened_when_it_comes_back_and_the_cell_retried");
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "ppk");
    let port = site.sim_root.join("ppk2");
    let emulator = plug_in_ppk2(&port);
    let before = cpufreq_settings(&site.sys());
    let text = scenario_yaml(
        "monitor-back",
        &[local_board_yaml("bench", &site.sim_root, &site.workdir, Some(&port))],
        Timing::SHORT,
    );
    let out = work.path().join("results");

    let (outcome, replugged) = thread::scope(|s| {
        let fault = s.spawn(|| {
            wait_for_journaled(&out, "monitor-back", 1, FIRST_CELL_LIMIT);
            thread::sleep(Duration::from_millis(400));
            // Unplugged: the pty closes and the link disappears, as a USB device node would.
            let unplugged = emulator.shutdown();
            assert!(unplugged.streams_started >= 1, "the harness was streaming from the monitor");
            thread::sleep(Duration::from_millis(1500));
            plug_in_ppk2(&port)
        });
        let outcome = run_bounded(&text, &out, &bins.agent, RUN_LIMIT);
        (outcome, fault.join().expect("fault thread"))
    });
    let outcome = outcome.unwrap_or_else(|e| panic!("run failed: {e:#}"));
    assert!(outcome.all_ok(), "{:?}", outcome.boards);
    assert!(
        replugged.stats().streams_started >= 1,
        "the harness reopened the monitor that came back and streamed from it"
    );

    let cells = unique_journal(&outcome.dir);
    assert_eq!(cells.len(), CELLS_PER_BOARD, "every cell journaled once");
    assert_eq!(cells[0].attempts, 1, "the first cell finished before the fault");
    assert!(cells[1].attempts >= 2, "the cell running when the monitor closed records a retry: {cells:#?}");
    for c in &cells {
        let energy = c.energy_per_inference_mj.unwrap_or(f64::NAN);
        assert!(energy > 0.0, "cell {} has energy from the monitor: {energy}", c.key());
        assert!(c.idle_power_w.is_some(), "cell {} has idle power (re-measured after the reopen)", c.key());
    }
    assert_eq!(cpufreq_settings(&site.sys()), before, "cpufreq settings restored");
    assert!(!restore_file(&site.workdir).exists(), "restore file removed after the clean restore");
}

/// A monitor unplugged for good: the board goes on with latency only; every cell after the fault is
/// journaled with energy empty and a reason naming the monitor, its port and what happened.
#[test]
fn power_monitor_that_does_not_come_back_leaves_cells_without_energy_and_the_reason() {
    let _serial = serial("power_monitor_that_does_not_come_back_leaves_cells_without_energy_and_the_reason");
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "gone");
    let port = site.sim_root.join("ppk2");
    let emulator = plug_in_ppk2(&port);
    let before = cpufreq_settings(&site.sys());
    let text = scenario_yaml(
        "monitor-gone",
        &[local_board_yaml("bench", &site.sim_root, &site.workdir, Some(&port))],
        Timing::SHORT,
    );
    let out = work.path().join("results");

    // The runner waits 30 s (runner::MONITOR_RETURN_TIMEOUT) for the monitor before giving up.
    let outcome = thread::scope(|s| {
        s.spawn(|| {
            wait_for_journaled(&out, "monitor-gone", 1, FIRST_CELL_LIMIT);
            thread::sleep(Duration::from_millis(400));
            emulator.shutdown();
        });
        run_bounded(&text, &out, &bins.agent, RUN_LIMIT)
    })
    .unwrap_or_else(|e| panic!("run failed outside the board: {e:#}"));
    let board = &outcome.boards[0];
    assert!(board.error.is_none() && board.cells_failed == 0, "a lost monitor does not end the board: {board:?}");
    assert!(board.cells_without_energy >= 1, "{board:?}");
    let cells = unique_journal(&outcome.dir);
    assert_eq!(cells.len(), CELLS_PER_BOARD, "every cell is still measured");
    assert!(cells[0].energy_per_inference_mj.is_some_and(|e| e > 0.0), "the cell before the fault has energy");
    let without: Vec<_> = cells.iter().filter(|c| c.window_energy_j.is_none()).collect();
    assert_eq!(without.len(), board.cells_without_energy);
    for c in &without {
        let why = c.energy_missing_reason.as_deref().unwrap_or_else(|| panic!("{} says why", c.key()));
        eprintln!("[faults] monitor gone, {}: {why}", c.key());
        assert!(why.contains("power monitor"), "the reason names the power monitor: {why}");
        assert!(why.contains(&port.display().to_string()), "the reason names the port {}: {why}", port.display());
        assert!(c.latency_median_ms > 0.0 && !c.latencies_ns.is_empty(), "latency kept");
    }
    assert!(
        without.iter().any(|c| c.energy_missing_reason.as_deref().is_some_and(|w| w.contains("gone"))),
        "a reason says the monitor is gone: {without:#?}"
    );
    assert_eq!(cpufreq_settings(&site.sys()), before, "cpufreq settings restored after the failure");
    assert!(!restore_file(&site.workdir).exists(), "restore file removed after the restore");
}

/// A monitor that stops streaming without hanging up (a PPK2 whose firmware stalls while its USB
/// port stays open): the emulator drops every sample from mid-cell on. The board goes on; the cells
/// after the stall say the power monitor on its port stopped.
#[test]
fn power_monitor_that_stops_streaming_leaves_cells_without_energy_naming_it() {
    let _serial = serial("power_monitor_that_stops_streaming_leaves_cells_without_energy_naming_it");
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "stall");
    let port = site.sim_root.join("ppk2");
    let emulator = plug_in_ppk2(&port);
    let before = cpufreq_settings(&site.sys());
    let text = scenario_yaml(
        "monitor-stall",
        &[local_board_yaml("bench", &site.sim_root, &site.workdir, Some(&port))],
        Timing::SHORT,
    );
    let out = work.path().join("results");

    let outcome = thread::scope(|s| {
        s.spawn(|| {
            wait_for_journaled(&out, "monitor-stall", 1, FIRST_CELL_LIMIT);
            thread::sleep(Duration::from_millis(400));
            // Every sample from now on is dropped: the port stays open and silent.
            emulator.inject_loss(u64::MAX / 2);
        });
        run_bounded(&text, &out, &bins.agent, RUN_LIMIT)
    })
    .unwrap_or_else(|e| panic!("run failed outside the board: {e:#}"));
    let board = &outcome.boards[0];
    assert!(board.error.is_none(), "a stalled monitor does not end the board: {board:?}");
    let cells = unique_journal(&outcome.dir);
    assert_eq!(cells.len(), CELLS_PER_BOARD, "every cell is still measured");
    let without: Vec<_> = cells.iter().filter(|c| c.window_energy_j.is_none()).collect();
    assert!(!without.is_empty() && without.len() == board.cells_without_energy, "{board:?}");
    for c in &without {
        let why = c.energy_missing_reason.as_deref().unwrap_or_else(|| panic!("{} says why", c.key()));
        eprintln!("[faults] monitor stalled, {}: {why}", c.key());
        assert!(why.contains("power monitor"), "the reason names the power monitor: {why}");
        assert!(why.contains(&port.display().to_string()), "the reason names the port {}: {why}", port.display());
    }
    assert_eq!(cpufreq_settings(&site.sys()), before, "cpufreq settings restored after the failure");
    assert!(!restore_file(&site.workdir).exists());
}

#[test]
fn sigint_stops_promptly_restores_cpufreq_keeps_cells_and_resume_completes() {
    let _serial = serial("sigint_stops_promptly_restores_cpufreq_keeps_cells_and_resume_completes");
    let sshd = sshd_or_skip!();
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "int");
    let before = cpufreq_settings(&site.sys());
    let scenario = work.path().join("sigint.yaml");
    let text = scenario_yaml(
        "sigint",
        &[ssh_board_yaml("sshboard", &login(&sshd), &site.sim_root, &site.workdir)],
        Timing::SHORT,
    );
    std::fs::write(&scenario, &text).unwrap();
    let out = work.path().join("results");

    let mut first = HilRun::start(&bins, &scenario, &out, None, &work.path().join("first"));
    first.wait_for_journaled(&out, "sigint", 1, FIRST_CELL_LIMIT);
    assert!(first.running(), "the run is still going when interrupted:\n{}", first.output());
    first.signal(libc::SIGINT);
    let (status, took) = first.wait(Duration::from_secs(30));
    eprintln!("[faults] hil run exited {took:.1?} after SIGINT");
    assert_eq!(status.code(), Some(1), "an interrupted run exits 1 (after {took:?}):\n{}", first.output());
    let stdout = first.stdout_text();
    assert!(stdout.contains("interrupted"), "the board is reported interrupted:\n{}", first.output());
    assert!(stdout.contains("resume with:") && stdout.contains("--resume"), "says how to resume:\n{}", first.output());
    assert_eq!(cpufreq_settings(&site.sys()), before, "cpufreq restored on Ctrl-C");
    assert!(!restore_file(&site.workdir).exists(), "restore file removed after the restore on Ctrl-C");

    let run_dir = find_run_dir(&out, "sigint").expect("run directory");
    let kept = unique_journal(&run_dir);
    assert!(!kept.is_empty() && kept.len() < CELLS_PER_BOARD, "stopped early with finished cells kept: {}", kept.len());
    assert!(run_json(&run_dir).interrupted(), "run.json records the interruption");

    let mut resumed = HilRun::start(&bins, &scenario, &out, Some(&run_dir), &work.path().join("resumed"));
    let (status, _) = resumed.wait(RUN_LIMIT);
    assert!(status.success(), "--resume completes the run:\n{}", resumed.output());
    let expected = format!("{} cells measured, {} already done", CELLS_PER_BOARD - kept.len(), kept.len());
    assert!(
        resumed.stdout_text().contains(&expected),
        "resume measured only the rest ({expected}):\n{}",
        resumed.output()
    );
    let cells = unique_journal(&run_dir);
    assert_eq!(cells.len(), CELLS_PER_BOARD, "all cells present after --resume");
    for (old, now) in kept.iter().zip(&cells) {
        assert_eq!((old.key(), &old.started_at), (now.key(), &now.started_at), "finished cells are kept as they were");
    }
    assert_eq!(cpufreq_settings(&site.sys()), before, "cpufreq restored after the resumed run");
    assert!(!restore_file(&site.workdir).exists());
}

/// Ctrl-C while the runner waits for an unplugged monitor to come back: `hil` stops promptly.
#[test]
fn sigint_while_waiting_for_a_lost_monitor_stops_promptly_and_resume_completes() {
    let _serial = serial("sigint_while_waiting_for_a_lost_monitor_stops_promptly_and_resume_completes");
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "wait");
    let port = site.sim_root.join("ppk2");
    let emulator = plug_in_ppk2(&port);
    let before = cpufreq_settings(&site.sys());
    let scenario = work.path().join("monitor-sigint.yaml");
    let text = scenario_yaml(
        "monitor-sigint",
        &[local_board_yaml("bench", &site.sim_root, &site.workdir, Some(&port))],
        Timing::SHORT,
    );
    std::fs::write(&scenario, &text).unwrap();
    let out = work.path().join("results");

    let mut first = HilRun::start(&bins, &scenario, &out, None, &work.path().join("first"));
    first.wait_for_journaled(&out, "monitor-sigint", 1, FIRST_CELL_LIMIT);
    thread::sleep(Duration::from_millis(400));
    emulator.shutdown();
    // The cell notices at the end of its window (1.2 s) and the runner starts waiting.
    thread::sleep(Duration::from_millis(2500));
    assert!(first.running(), "hil is waiting for the monitor:\n{}", first.output());
    first.signal(libc::SIGINT);
    let (status, took) = first.wait(Duration::from_secs(60));
    eprintln!("[faults] hil run exited {took:.1?} after SIGINT while waiting for the monitor\n{}", first.output());
    assert_eq!(status.code(), Some(1), "{}", first.output());
    assert!(took < Duration::from_secs(10), "Ctrl-C is acted on promptly, took {took:?}:\n{}", first.output());
    assert_eq!(cpufreq_settings(&site.sys()), before, "cpufreq restored on Ctrl-C");
    assert!(!restore_file(&site.workdir).exists());

    let run_dir = find_run_dir(&out, "monitor-sigint").expect("run directory");
    let kept = unique_journal(&run_dir);
    assert!(!kept.is_empty(), "finished cells are kept");
    let _back = plug_in_ppk2(&port);
    let mut resumed = HilRun::start(&bins, &scenario, &out, Some(&run_dir), &work.path().join("resumed"));
    let (status, _) = resumed.wait(RUN_LIMIT);
    assert!(status.success(), "--resume completes the run:\n{}", resumed.output());
    assert_eq!(unique_journal(&run_dir).len(), CELLS_PER_BOARD);
    assert_eq!(cpufreq_settings(&site.sys()), before);
}

#[test]
fn sigkill_leaves_the_restore_file_and_resume_restores_cpufreq_first_then_completes() {
    let _serial = serial("sigkill_leaves_the_restore_file_and_resume_restores_cpufreq_first_then_completes");
    let sshd = sshd_or_skip!();
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "kill");
    let before = cpufreq_settings(&site.sys());
    let scenario = work.path().join("sigkill.yaml");
    let text = scenario_yaml(
        "sigkill",
        &[ssh_board_yaml("sshboard", &login(&sshd), &site.sim_root, &site.workdir)],
        Timing::SHORT,
    );
    std::fs::write(&scenario, &text).unwrap();
    let out = work.path().join("results");

    let mut first = HilRun::start(&bins, &scenario, &out, None, &work.path().join("first"));
    first.wait_for_journaled(&out, "sigkill", 1, FIRST_CELL_LIMIT);
    first.signal(libc::SIGKILL);
    let (status, _) = first.wait(Duration::from_secs(10));
    assert_eq!(status.code(), None, "killed by a signal");

    // Nothing ran after the kill: the board is left pinned, with its restore file.
    let pinned = cpufreq_settings(&site.sys());
    assert_ne!(pinned, before, "a killed run leaves the board pinned");
    assert!(restore_file(&site.workdir).is_file(), "the restore file stays on the board");
    let run_dir = find_run_dir(&out, "sigkill").expect("run directory");
    let kept = unique_journal(&run_dir);
    assert!(!kept.is_empty() && kept.len() < CELLS_PER_BOARD, "finished cells are kept: {}", kept.len());

    let mut resumed = HilRun::start(&bins, &scenario, &out, Some(&run_dir), &work.path().join("resumed"));
    let (status, _) = resumed.wait(RUN_LIMIT);
    assert!(status.success(), "--resume completes the run:\n{}", resumed.output());
    assert!(
        resumed.stderr_text().contains("restored cpufreq settings left by an interrupted run"),
        "the resumed run says it restored the board:\n{}",
        resumed.output()
    );
    let meta = run_json(&run_dir);
    // Both sessions are in run.json: the killed one and the resume.
    assert_eq!(meta.sessions.len(), 2, "{meta:#?}");
    assert!(meta.sessions[0].boards.contains_key("sshboard"), "the killed session's provenance is kept");
    let board = meta.board("sshboard").expect("sshboard in run.json");
    assert!(board.restored_from_previous_crash, "run.json: {board:#?}");
    // The settings this run saved (before its own first write) are the original ones, not the
    // pinned ones the killed run left: the restore file was applied before anything else.
    for policy in &board.saved_dvfs.as_ref().expect("saved_dvfs").policies {
        let name = format!("policy{}", policy.policy);
        let s = &policy.settings;
        assert_eq!(s.governor, before[&format!("{name}/scaling_governor")], "{policy:?}");
        assert_eq!(s.min_khz.to_string(), before[&format!("{name}/scaling_min_freq")], "{policy:?}");
        assert_eq!(s.max_khz.to_string(), before[&format!("{name}/scaling_max_freq")], "{policy:?}");
    }
    let expected = format!("{} cells measured, {} already done", CELLS_PER_BOARD - kept.len(), kept.len());
    assert!(
        resumed.stdout_text().contains(&expected),
        "resume measured only the rest ({expected}):\n{}",
        resumed.output()
    );
    assert_eq!(unique_journal(&run_dir).len(), CELLS_PER_BOARD, "all cells present after --resume");
    assert_eq!(cpufreq_settings(&site.sys()), before, "cpufreq back to the original after the resumed run");
    assert!(!restore_file(&site.workdir).exists(), "restore file removed");
}

#[test]
fn boards_that_do_not_answer_fail_with_clear_messages_while_the_other_completes() {
    let _serial = serial("boards_that_do_not_answer_fail_with_clear_messages_while_the_other_completes");
    let sshd = sshd_or_skip!();
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let good = Site::new(work.path(), "good");
    let before = cpufreq_settings(&good.sys());
    // Accepts TCP connections (the kernel completes them into the backlog) and never speaks SSH.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().unwrap().port();
    // A port nobody listens on (bound, then released).
    let closed_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let with_port = |port| SshLogin { port, ..login(&sshd) };
    let boards = [
        ssh_board_yaml("silent", &with_port(silent_port), &good.sim_root, &work.path().join("silent-wd")),
        ssh_board_yaml("refused", &with_port(closed_port), &good.sim_root, &work.path().join("refused-wd")),
        ssh_board_yaml("good", &login(&sshd), &good.sim_root, &good.workdir),
    ];
    let text = scenario_yaml("unanswered", &boards, Timing::SHORT);
    let out = work.path().join("results");

    let outcome = run_bounded(&text, &out, &bins.agent, RUN_LIMIT).unwrap_or_else(|e| panic!("run failed: {e:#}"));
    drop(silent);
    let by_name =
        |name: &str| outcome.boards.iter().find(|b| b.board == name).unwrap_or_else(|| panic!("no outcome for {name}"));
    let silent_error = by_name("silent").error.clone().expect("the silent board fails");
    eprintln!("[faults] silent board: {silent_error}");
    assert!(silent_error.contains(&format!("127.0.0.1:{silent_port}")), "names the address: {silent_error}");
    assert!(silent_error.contains("silent"), "names the board: {silent_error}");
    assert!(
        silent_error.contains("handshake") || silent_error.to_lowercase().contains("timed out"),
        "says the board did not answer: {silent_error}"
    );
    let refused_error = by_name("refused").error.clone().expect("the unreachable board fails");
    eprintln!("[faults] refused board: {refused_error}");
    assert!(refused_error.contains(&format!("127.0.0.1:{closed_port}")), "names the address: {refused_error}");
    assert!(refused_error.contains("refused"), "says the connection was refused: {refused_error}");

    let ok = by_name("good");
    assert!(ok.error.is_none() && ok.cells_done == CELLS_PER_BOARD, "the answering board completes: {ok:?}");
    let cells = unique_journal(&outcome.dir);
    assert_eq!(cells.len(), CELLS_PER_BOARD);
    assert!(cells.iter().all(|c| c.board == "good"));
    assert_eq!(cpufreq_settings(&good.sys()), before, "cpufreq restored on the board that ran");
    for dead in ["silent-wd", "refused-wd"] {
        assert!(!work.path().join(dead).exists(), "nothing was deployed for {dead}");
    }
}

#[test]
fn wrong_or_unknown_host_key_is_refused_and_nothing_runs_on_the_board() {
    let _serial = serial("wrong_or_unknown_host_key_is_refused_and_nothing_runs_on_the_board");
    let sshd = sshd_or_skip!();
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "keys");
    let before = cpufreq_settings(&site.sys());
    let impostor = SshLogin {
        known_hosts: sshd.write_known_hosts("known_hosts_wrong", &format!("{}\n", sshd.wrong_key_line())),
        ..login(&sshd)
    };
    let unknown = SshLogin { known_hosts: sshd.write_known_hosts("known_hosts_empty", ""), ..login(&sshd) };
    let boards = [
        ssh_board_yaml("changed", &impostor, &site.sim_root, &work.path().join("changed-wd")),
        ssh_board_yaml("unknown", &unknown, &site.sim_root, &work.path().join("unknown-wd")),
    ];
    let text = scenario_yaml("hostkey", &boards, Timing::SHORT);
    let out = work.path().join("results");

    let outcome = run_bounded(&text, &out, &bins.agent, RUN_LIMIT).unwrap_or_else(|e| panic!("run failed: {e:#}"));
    assert!(!outcome.all_ok());
    for board in &outcome.boards {
        let error =
            board.error.as_deref().unwrap_or_else(|| panic!("board {} must be refused: {board:?}", board.board));
        eprintln!("[faults] board {}: {error}", board.board);
        assert!(
            error.to_lowercase().contains("host key"),
            "board {}: the message is about the host key: {error}",
            board.board
        );
        assert!(
            error.contains(&format!("127.0.0.1:{}", sshd.port)) || error.contains("127.0.0.1"),
            "names the host: {error}"
        );
        assert_eq!(board.cells_done, 0);
    }
    let changed = &outcome.boards.iter().find(|b| b.board == "changed").unwrap().error;
    assert!(changed.as_deref().is_some_and(|e| e.contains("CHANGED")), "a changed key is called out: {changed:?}");

    assert_eq!(sshd.accepted_logins(), 0, "no login was attempted past the host key check:\n{}", sshd.log_text());
    for wd in ["changed-wd", "unknown-wd"] {
        let dir = work.path().join(wd);
        assert!(
            !dir.join("hil-agent").exists() && !restore_file(&dir).exists(),
            "nothing deployed in {}",
            dir.display()
        );
    }
    assert!(!site.sim_root.join("agent.pid").exists(), "no agent was started");
    assert_eq!(cpufreq_settings(&site.sys()), before, "cpufreq untouched");
    assert!(unique_journal(&outcome.dir).is_empty(), "no cells");
}

// -------------------------------------------------------------------------------------------------
// Issue 13: torn journal + resume, Ctrl-C during a model load and during a cool-down wait.
// -------------------------------------------------------------------------------------------------

/// Time from SIGINT until the board's cpufreq settings are back (the promise: within 2 s,
/// wherever the run was). The process exits after that, once the report is written.
const RESTORED_WITHIN: Duration = Duration::from_secs(2);

/// Sends SIGINT to `run` and returns how long the board's cpufreq took to be `before` again
/// (polled every 20 ms) and how long the process took to exit.
fn interrupt_and_time(run: &mut HilRun, site: &Site, before: &faults_support::CpufreqSettings) -> (Duration, Duration) {
    let sent = std::time::Instant::now();
    run.signal(libc::SIGINT);
    let restored = faults_support::wait_for(
        "cpufreq restored after SIGINT",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || (cpufreq_settings(&site.sys()) == *before).then(|| sent.elapsed()),
    );
    let (status, _) = run.wait(Duration::from_secs(60));
    let exited = sent.elapsed();
    assert_eq!(status.code(), Some(1), "an interrupted run exits 1:\n{}", run.output());
    (restored, exited)
}

/// Asserts what an interruption must leave: the board reported interrupted (not failed), the
/// restore file gone, run.json marking the session interrupted, and no agent left running.
fn assert_interrupted_cleanly(run: &HilRun, out: &Path, scenario: &str, site: &Site) -> PathBuf {
    let stdout = run.stdout_text();
    assert!(stdout.contains("interrupted") && !stdout.contains("FAILED"), "interrupted, not failed:\n{}", run.output());
    assert!(!restore_file(&site.workdir).exists(), "restore file removed after the restore on Ctrl-C");
    let run_dir = find_run_dir(out, scenario).expect("run directory");
    assert!(run_json(&run_dir).interrupted(), "run.json records the interruption");
    let agent = site.workdir.join("hil-agent");
    faults_support::wait_for("the agent to exit", Duration::from_secs(10), Duration::from_millis(50), || {
        faults_support::processes_running(&agent).is_empty().then_some(())
    });
    run_dir
}

#[test]
fn torn_journal_line_is_cut_aside_and_resume_reads_every_cell_back() {
    let _serial = serial("torn_journal_line_is_cut_aside_and_resume_reads_every_cell_back");
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "torn");
    let scenario = work.path().join("torn.yaml");
    let board = local_board_yaml("bench", &site.sim_root, &site.workdir, None);
    std::fs::write(&scenario, scenario_yaml("torn", &[board], Timing::SHORT)).unwrap();
    let out = work.path().join("results");

    let mut first = HilRun::start(&bins, &scenario, &out, None, &work.path().join("first"));
    let (status, _) = first.wait(RUN_LIMIT);
    assert!(status.success(), "{}", first.output());
    let run_dir = find_run_dir(&out, "torn").expect("run directory");
    let complete = unique_journal(&run_dir);
    assert_eq!(complete.len(), CELLS_PER_BOARD);

    // A crash in the middle of writing the last cell: its line is half there, no newline.
    let journal = run_dir.join(harness::results::JOURNAL);
    let text = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let last = lines[lines.len() - 1];
    let torn = format!("{}\n{}", lines[..lines.len() - 1].join("\n"), &last[..last.len() / 2]);
    std::fs::write(&journal, &torn).unwrap();

    let mut resumed = HilRun::start(&bins, &scenario, &out, Some(&run_dir), &work.path().join("resumed"));
    let (status, _) = resumed.wait(RUN_LIMIT);
    assert!(status.success(), "--resume completes the run:\n{}", resumed.output());
    assert!(resumed.stderr_text().contains("ended in half a line"), "the cut is said:\n{}", resumed.output());
    let aside = std::fs::read_to_string(run_dir.join("cells.jsonl.torn")).expect("the torn line is kept aside");
    assert_eq!(aside.trim_end(), &last[..last.len() / 2]);
    let cells = unique_journal(&run_dir);
    assert_eq!(cells.len(), CELLS_PER_BOARD, "every cell reads back: the torn one was measured again");
    let lost = complete.last().unwrap().key();
    assert!(cells.iter().any(|c| c.key() == lost), "the cell whose line was torn is measured again");
    // Report, compare and a further resume read the journal.
    harness::analysis::load_run(&run_dir).expect("the run loads");
    let meta = run_json(&run_dir);
    assert_eq!(meta.sessions.len(), 2, "both sessions in run.json");
}

#[test]
fn sigint_during_a_model_load_restores_within_two_seconds() {
    let _serial = serial("sigint_during_a_model_load_restores_within_two_seconds");
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "load");
    let before = cpufreq_settings(&site.sys());
    // DistilBERT with a pattern set: building it takes this debug agent many seconds.
    let board = local_board_yaml("bench", &site.sim_root, &site.workdir, None);
    let text = scenario_yaml("load", &[board], Timing::SHORT)
        .replace("preset: rt3-transformer\n  seq: 8", "preset: distilbert\n  seq: 128")
        .replace(
            "    block_rows: 16\n",
            "    block_rows: 16\n  - name: pp75\n    kind: pattern\n    base: bp50\n    tile: 16\n    sparsity: 0.75\n",
        );
    let scenario = work.path().join("load.yaml");
    std::fs::write(&scenario, &text).unwrap();
    let out = work.path().join("results");

    let mut run = HilRun::start(&bins, &scenario, &out, None, &work.path().join("run"));
    // The agent is up (hello answered at once): the run is inside the load.
    let agent = site.workdir.join("hil-agent");
    faults_support::wait_for("the agent to start", FIRST_CELL_LIMIT, Duration::from_millis(20), || {
        (!faults_support::processes_running(&agent).is_empty()).then_some(())
    });
    thread::sleep(Duration::from_millis(500));
    let (restored, exited) = interrupt_and_time(&mut run, &site, &before);
    eprintln!("[faults] SIGINT during the model load: cpufreq restored after {restored:.2?}, exit after {exited:.2?}");
    let run_dir = assert_interrupted_cleanly(&run, &out, "load", &site);
    let meta = run_json(&run_dir);
    let board = meta.board("bench").expect("bench in run.json");
    assert!(board.model.is_none(), "the SIGINT came during the load (no model recorded): {board:#?}");
    assert!(restored <= RESTORED_WITHIN, "cpufreq restored {restored:?} after SIGINT (at most {RESTORED_WITHIN:?})");
    assert!(unique_journal(&run_dir).is_empty());
}

#[test]
fn sigint_during_a_cool_down_wait_restores_within_two_seconds_in_every_session() {
    let _serial = serial("sigint_during_a_cool_down_wait_restores_within_two_seconds_in_every_session");
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "cool");
    let before = cpufreq_settings(&site.sys());
    // The simulated SoC idles at 45 °C: a 30 °C threshold is never reached.
    let board = local_board_yaml("bench", &site.sim_root, &site.workdir, None) + "    thermal_zone: cpu-thermal\n";
    let text = scenario_yaml("cool", &[board], Timing::SHORT)
        .replace("  max_attempts: 3\n", "  max_attempts: 3\n  cooldown_temp_c: 30\n  cooldown_timeout: 10min\n");
    let scenario = work.path().join("cool.yaml");
    std::fs::write(&scenario, &text).unwrap();
    let out = work.path().join("results");

    let mut run = HilRun::start(&bins, &scenario, &out, None, &work.path().join("run"));
    // Pinned for the first cell, then waiting for the zone to cool.
    faults_support::wait_for("the first level to be pinned", FIRST_CELL_LIMIT, Duration::from_millis(20), || {
        (cpufreq_settings(&site.sys()) != before).then_some(())
    });
    thread::sleep(Duration::from_secs(1));
    assert!(run.running(), "still waiting for the cool-down:\n{}", run.output());
    let (restored, exited) = interrupt_and_time(&mut run, &site, &before);
    eprintln!("[faults] SIGINT during the cool-down: cpufreq restored after {restored:.2?}, exit after {exited:.2?}");
    let run_dir = assert_interrupted_cleanly(&run, &out, "cool", &site);
    assert!(restored <= RESTORED_WITHIN, "cpufreq restored {restored:?} after SIGINT (at most {RESTORED_WITHIN:?})");
    assert!(unique_journal(&run_dir).is_empty(), "no cell was measured warm");

    // A resume must use the same scenario, so it waits again: interrupt it too, then check that
    // run.json keeps both sessions.
    let mut resumed = HilRun::start(&bins, &scenario, &out, Some(&run_dir), &work.path().join("resumed"));
    faults_support::wait_for("the resumed run to pin", FIRST_CELL_LIMIT, Duration::from_millis(20), || {
        (cpufreq_settings(&site.sys()) != before).then_some(())
    });
    let (restored, _) = interrupt_and_time(&mut resumed, &site, &before);
    assert!(restored <= RESTORED_WITHIN, "cpufreq restored {restored:?} after the second SIGINT");
    let meta = run_json(&run_dir);
    assert_eq!(meta.sessions.len(), 2, "each session is kept");
    assert!(meta.sessions.iter().all(|s| s.interrupted && s.boards.contains_key("bench")), "{meta:#?}");
}

#[test]
fn a_revoked_host_key_refuses_the_board_even_under_accept_new_and_nothing_runs() {
    let _serial = serial("a_revoked_host_key_refuses_the_board_even_under_accept_new_and_nothing_runs");
    let sshd = sshd_or_skip!();
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "revoked");
    let before = cpufreq_settings(&site.sys());
    let text = format!("@revoked * {}\n", sshd.host_public_key);
    let revoked = SshLogin { known_hosts: sshd.write_known_hosts("known_hosts_revoked", &text), ..login(&sshd) };
    let board = ssh_board_yaml("revoked", &revoked, &site.sim_root, &site.workdir)
        .replace("host_key_checking: strict", "host_key_checking: accept-new");
    let scenario = scenario_yaml("revoked", &[board], Timing::SHORT);
    let out = work.path().join("results");
    let outcome = run_bounded(&scenario, &out, &bins.agent, RUN_LIMIT).unwrap_or_else(|e| panic!("{e:#}"));
    let error = outcome.boards[0].error.as_deref().unwrap_or_else(|| panic!("refused: {:?}", outcome.boards));
    eprintln!("[faults] revoked key: {error}");
    assert!(error.contains("REVOKED"), "the message says the key is revoked: {error}");
    assert_eq!(sshd.accepted_logins(), 0, "no login with a revoked host key:\n{}", sshd.log_text());
    assert_eq!(std::fs::read_to_string(&revoked.known_hosts).unwrap(), text, "accept-new added nothing");
    assert!(!site.workdir.join("hil-agent").exists(), "nothing deployed");
    assert_eq!(cpufreq_settings(&site.sys()), before, "cpufreq untouched");
}

#[test]
fn a_regression_baseline_of_another_model_fails_the_gate_with_exit_2_after_the_run() {
    let _serial = serial("a_regression_baseline_of_another_model_fails_the_gate_with_exit_2_after_the_run");
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "gate");
    let board = local_board_yaml("bench", &site.sim_root, &site.workdir, None);
    let base_text = scenario_yaml("gate", &[board], Timing::SHORT);
    let base_scenario = work.path().join("base.yaml");
    std::fs::write(&base_scenario, &base_text).unwrap();
    let out = work.path().join("base-results");
    let mut base = HilRun::start(&bins, &base_scenario, &out, None, &work.path().join("base"));
    let (status, _) = base.wait(RUN_LIMIT);
    assert!(status.success(), "{}", base.output());
    let base_dir = find_run_dir(&out, "gate").expect("baseline run directory");

    // Same scenario but another model seed (other weights): the gate cannot compare, so it fails.
    let cand_text = base_text.replace("seed: 5", "seed: 6")
        + &format!("regression:\n  baseline: {}\n  threshold_pct: 5\n", base_dir.display());
    let cand_scenario = work.path().join("cand.yaml");
    std::fs::write(&cand_scenario, &cand_text).unwrap();
    let out = work.path().join("cand-results");
    let mut cand = HilRun::start(&bins, &cand_scenario, &out, None, &work.path().join("cand"));
    let (status, _) = cand.wait(RUN_LIMIT);
    assert_eq!(status.code(), Some(2), "an incompatible baseline fails the gate:\n{}", cand.output());
    assert!(cand.stderr_text().contains("different models"), "says why:\n{}", cand.output());
    let cand_dir = find_run_dir(&out, "gate").expect("the run itself is kept");
    assert_eq!(unique_journal(&cand_dir).len(), CELLS_PER_BOARD, "the cells are kept");
}

#[test]
fn sigint_during_a_long_window_restores_within_two_seconds() {
    let _serial = serial("sigint_during_a_long_window_restores_within_two_seconds");
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "window");
    let before = cpufreq_settings(&site.sys());
    let board = local_board_yaml("bench", &site.sim_root, &site.workdir, None);
    // A 60 s window: the SIGINT lands in it.
    let timing = Timing { window: Duration::from_secs(60), ..Timing::SHORT };
    let scenario = work.path().join("window.yaml");
    std::fs::write(&scenario, scenario_yaml("window", &[board], timing)).unwrap();
    let out = work.path().join("results");
    let mut run = HilRun::start(&bins, &scenario, &out, None, &work.path().join("run"));
    faults_support::wait_for("the first level to be pinned", FIRST_CELL_LIMIT, Duration::from_millis(20), || {
        (cpufreq_settings(&site.sys()) != before).then_some(())
    });
    // Settle (30 ms), idle power (200 ms), one warm-up inference: then the window runs.
    thread::sleep(Duration::from_secs(2));
    assert!(run.running(), "{}", run.output());
    let (restored, exited) = interrupt_and_time(&mut run, &site, &before);
    eprintln!("[faults] SIGINT during a 60 s window: cpufreq restored after {restored:.2?}, exit after {exited:.2?}");
    let run_dir = assert_interrupted_cleanly(&run, &out, "window", &site);
    assert!(restored <= RESTORED_WITHIN, "cpufreq restored {restored:?} after SIGINT (at most {RESTORED_WITHIN:?})");
    assert!(unique_journal(&run_dir).is_empty(), "the abandoned window is not recorded");
}

#[test]
fn sigint_during_the_reconnect_backoff_stops_within_two_seconds() {
    let _serial = serial("sigint_during_the_reconnect_backoff_stops_within_two_seconds");
    let mut sshd = sshd_or_skip!();
    let work = tempdir();
    let bins = Binaries::pin_into(&work.path().join("bin"));
    let site = Site::new(work.path(), "backoff");
    let timing = Timing { window: Duration::from_secs(3), ..Timing::SHORT };
    let text =
        scenario_yaml("backoff", &[ssh_board_yaml("sshboard", &login(&sshd), &site.sim_root, &site.workdir)], timing);
    let scenario = work.path().join("backoff.yaml");
    std::fs::write(&scenario, &text).unwrap();
    let out = work.path().join("results");
    let mut run = HilRun::start(&bins, &scenario, &out, None, &work.path().join("run"));
    run.wait_for_journaled(&out, "backoff", 1, FIRST_CELL_LIMIT);
    // The board goes away for good mid-cell: the run reconnects with backoff (0.5, 1, 2, 4, 8 s).
    thread::sleep(Duration::from_millis(500));
    sshd.stop();
    thread::sleep(Duration::from_millis(2500));
    assert!(run.running(), "still trying to reconnect:\n{}", run.output());
    let sent = std::time::Instant::now();
    run.signal(libc::SIGINT);
    let (status, _) = run.wait(Duration::from_secs(30));
    let took = sent.elapsed();
    eprintln!("[faults] SIGINT during the reconnect backoff: exit after {took:.2?}");
    assert_eq!(status.code(), Some(1), "{}", run.output());
    let stdout = run.stdout_text();
    assert!(stdout.contains("interrupted") && !stdout.contains("FAILED"), "interrupted, not failed:\n{}", run.output());
    // The board cannot be reached, so its settings stay pinned, with the restore file that the
    // next run applies first (the SIGKILL test covers that next run).
    assert!(restore_file(&site.workdir).exists(), "the restore file stays for the next run");
    // The report is written before exiting: allow it a few seconds on a loaded host.
    assert!(took <= Duration::from_secs(8), "hil exited {took:?} after SIGINT");
    let run_dir = find_run_dir(&out, "backoff").unwrap();
    assert!(run_json(&run_dir).interrupted());
    assert!(!unique_journal(&run_dir).is_empty(), "the finished cell is kept");
}
