//! Shared pieces of the fault-injection tests (`tests/faults.rs`): the agent build, small
//! scenarios, a "board" made of an in-process [`Simulator`] (fake sysfs + agent wrapper),
//! cpufreq snapshots of its fake tree, the results journal, `hil run` as a child process,
//! and waits that always have a limit.
//!
//! Every wait here is bounded and panics with what it was waiting for, so a fault that hangs
//! the product fails the test instead of hanging CI.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use harness::results::{read_journal, CellRecord};
use harness::runner::{run_scenario, RunOptions, RunOutcome};
use harness::scenario::parse_scenario;
use harness::sim::simulator::{SimOptions, Simulator};

/// The fault tests share sshd ports, the agent build and two CPU cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The global test lock, held for one test; prints the test's wall time when released.
pub struct Serial {
    test: &'static str,
    started: Instant,
    _lock: MutexGuard<'static, ()>,
}

/// Takes the global test lock (a panicked earlier test does not poison the others).
pub fn serial(test: &'static str) -> Serial {
    let lock = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    Serial { test, started: Instant::now(), _lock: lock }
}

impl Drop for Serial {
    fn drop(&mut self) {
        eprintln!("[faults] {} took {:.1?}", self.test, self.started.elapsed());
    }
}

/// Builds the host's debug agent once per test binary (kernels are optimised in dev builds).
pub fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
            let status = Command::new(env!("CARGO"))
                .current_dir(&root)
                .args(["build", "-q", "-p", "device-agent", "--bin", "hil-agent"])
                .status()
                .expect("running cargo build for hil-agent");
            assert!(status.success(), "building hil-agent failed");
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            let bin = target.join("debug").join("hil-agent");
            assert!(bin.is_file(), "{} missing after cargo build", bin.display());
            bin
        })
        .clone()
}

/// The `hil` binary of this crate.
pub fn hil_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hil"))
}

/// The binaries one test runs, pinned for its duration.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub hil: PathBuf,
    pub agent: PathBuf,
}

impl Binaries {
    /// Hard-links (or, across filesystems, copies) `hil` and the agent into `dir`: the target
    /// directory may be shared with other builds, and a rebuild that replaces `debug/hil` while a
    /// test is between its first run and its `--resume` must not change what the test runs.
    pub fn pin_into(dir: &Path) -> Binaries {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let pin = |from: PathBuf, name: &str| {
            let to = dir.join(name);
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
            }
            to
        };
        Binaries { hil: pin(hil_binary(), "hil"), agent: pin(agent_binary(), "hil-agent") }
    }
}

/// Polls `probe` every `every` until it returns `Some`, or panics after `limit` naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, every: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        thread::sleep(every);
    }
}

/// How long the measuring part of the test scenarios takes.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// `measure.min_duration`: the agent's timed window per cell.
    pub window: Duration,
    /// `measure.idle_duration` (only used with a monitor).
    pub idle: Duration,
}

impl Timing {
    pub const SHORT: Timing = Timing { window: Duration::from_millis(1200), idle: Duration::from_millis(200) };
}

/// A small scenario: rt3-transformer at seq 8, two variants (dense, bp50) at two levels
/// (1500 and 600 MHz, both in the simulator's RPi-4-like table), one repeat: 4 cells a board.
pub fn scenario_yaml(name: &str, boards: &[String], timing: Timing) -> String {
    format!(
        "name: {name}\n\
         boards:\n{boards}\
         model:\n  preset: rt3-transformer\n  seq: 8\n  seed: 5\n\
         variants:\n\
         \x20 - name: dense\n    kind: dense\n\
         \x20 - name: bp50\n    kind: block\n    sparsity: 0.5\n    block_rows: 16\n\
         dvfs:\n  levels: [1500MHz, 600MHz]\n  settle: 30ms\n\
         measure:\n  warmup_iterations: 1\n  min_iterations: 3\n  min_duration: {window}ms\n  repeats: 1\n  \
         idle_duration: {idle}ms\n  max_attempts: 3\n\
         constraints:\n  latency_deadline: 5s\n",
        boards = boards.concat(),
        window = timing.window.as_millis(),
        idle = timing.idle.as_millis(),
    )
}

/// Cells a board of [`scenario_yaml`] has.
pub const CELLS_PER_BOARD: usize = 4;

/// How to log in to an SSH "board" on loopback.
#[derive(Clone, Debug)]
pub struct SshLogin {
    pub port: u16,
    pub user: String,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
}

/// A scenario board entry reached over SSH, whose "hardware" is the simulator at `sim_root`.
pub fn ssh_board_yaml(name: &str, login: &SshLogin, sim_root: &Path, workdir: &Path) -> String {
    format!(
        "  - name: {name}\n    transport: ssh\n    host: 127.0.0.1\n    port: {port}\n    user: {user}\n    \
         identity: {identity}\n    known_hosts: {known_hosts}\n    host_key_checking: strict\n    \
         connect_timeout: 2s\n    command_timeout: 60s\n    exec_prefix: [{run_agent}]\n    workdir: {workdir}\n    \
         sysfs_root: {sys}\n    cpus: [0]\n",
        port = login.port,
        user = login.user,
        identity = login.identity.display(),
        known_hosts = login.known_hosts.display(),
        run_agent = sim_root.join("run-agent").display(),
        workdir = workdir.display(),
        sys = sim_root.join("sys").display(),
    )
}

/// A `transport: local`, `sim: false` board entry whose sysfs and agent wrapper come from the
/// simulator at `sim_root`, with a PPK2 (source meter, 5 V) at `ppk2_port` when given.
pub fn local_board_yaml(name: &str, sim_root: &Path, workdir: &Path, ppk2_port: Option<&Path>) -> String {
    let mut yaml = format!(
        "  - name: {name}\n    transport: local\n    exec_prefix: [{run_agent}]\n    workdir: {workdir}\n    \
         sysfs_root: {sys}\n    cpus: [0]\n",
        run_agent = sim_root.join("run-agent").display(),
        workdir = workdir.display(),
        sys = sim_root.join("sys").display(),
    );
    if let Some(port) = ppk2_port {
        yaml.push_str(&format!(
            "    monitor:\n      kind: ppk2\n      port: {}\n      mode: source\n      source_voltage_mv: 5000\n",
            port.display()
        ));
    }
    yaml
}

/// A simulated board's hardware (fake sysfs tree, agent wrapper, no monitor) under `root`.
pub fn start_simulator(root: &Path, name: &str) -> Simulator {
    Simulator::start(
        root,
        SimOptions { name: name.to_string(), power: Default::default(), agent_threads: 1, with_monitor: false },
    )
    .unwrap_or_else(|e| panic!("starting the simulator in {}: {e}", root.display()))
}

/// The cpufreq settings the harness must put back: every policy's governor and limits.
pub type CpufreqSettings = BTreeMap<String, String>;

/// Reads `scaling_governor`, `scaling_min_freq` and `scaling_max_freq` of every policy of the
/// fake tree under `sys_root` (`policyN/file` -> trimmed content).
pub fn cpufreq_settings(sys_root: &Path) -> CpufreqSettings {
    let dir = sys_root.join("devices/system/cpu/cpufreq");
    let mut settings = BTreeMap::new();
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("cpufreq dir entry");
        let policy = entry.file_name().to_string_lossy().into_owned();
        if !policy.starts_with("policy") {
            continue;
        }
        for file in ["scaling_governor", "scaling_min_freq", "scaling_max_freq"] {
            let path = entry.path().join(file);
            let value = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            settings.insert(format!("{policy}/{file}"), value.trim().to_string());
        }
    }
    assert!(!settings.is_empty(), "no cpufreq policy under {}", dir.display());
    settings
}

/// `<workdir>/hil-dvfs-restore.json`, where the runner keeps a board's saved settings.
pub fn restore_file(workdir: &Path) -> PathBuf {
    workdir.join(harness::dvfs::RESTORE_FILE_NAME)
}

/// The one run directory under `out_root/<scenario>/`, once `run.json` exists.
pub fn find_run_dir(out_root: &Path, scenario: &str) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = fs::read_dir(out_root.join(scenario))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(harness::runmeta::RUN_JSON).is_file())
        .collect();
    match dirs.as_slice() {
        [one] => Some(one.clone()),
        [] => None,
        many => panic!("expected one run directory under {}, found {many:?}", out_root.display()),
    }
}

/// Journaled cells of the run in `out_root/<scenario>/` (0 before the run directory exists).
pub fn journaled_cells(out_root: &Path, scenario: &str) -> usize {
    find_run_dir(out_root, scenario).and_then(|dir| read_journal(&dir).ok()).map_or(0, |cells| cells.len())
}

/// Waits (bounded) until the run under `out_root` has journaled at least `n` cells.
pub fn wait_for_journaled(out_root: &Path, scenario: &str, n: usize, limit: Duration) {
    wait_for(&format!("{n} journaled cell(s) under {}", out_root.display()), limit, Duration::from_millis(50), || {
        (journaled_cells(out_root, scenario) >= n).then_some(())
    })
}

/// The journal of `run_dir`, checked to hold each cell once; returns the records.
pub fn unique_journal(run_dir: &Path) -> Vec<CellRecord> {
    let cells = read_journal(run_dir).unwrap_or_else(|e| panic!("reading the journal of {}: {e:#}", run_dir.display()));
    let mut seen = HashSet::new();
    for c in &cells {
        assert!(seen.insert(c.key()), "cell {} journaled twice in {}", c.key(), run_dir.display());
    }
    cells
}

/// Runs `text` as a new run (deploying `agent`) in this process on a thread of its own and
/// returns its outcome, or panics when it has not finished within `limit` (a hang is a finding,
/// not a reason to hang the test binary).
pub fn run_bounded(text: &str, out_root: &Path, agent: &Path, limit: Duration) -> anyhow::Result<RunOutcome> {
    let (tx, rx) = mpsc::channel();
    let (text, out_root, agent) = (text.to_string(), out_root.to_path_buf(), agent.to_path_buf());
    thread::Builder::new()
        .name("faults-run".into())
        .spawn(move || {
            let result = parse_scenario(&text, "faults.yaml").map_err(anyhow::Error::from).and_then(|scenario| {
                let opts = RunOptions { out_root, resume: None, progress: false, agent_binary: Some(agent) };
                run_scenario(&scenario, &text, &opts, Arc::new(AtomicBool::new(false)))
            });
            let _ = tx.send(result);
        })
        .expect("spawning the run thread");
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(_) => panic!("the run did not finish within {limit:?}"),
    }
}

/// `hil run` as a child process, its stdout and stderr captured in files.
#[derive(Debug)]
pub struct HilRun {
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl HilRun {
    /// Starts `hil run SCENARIO --out OUT --agent-bin AGENT --no-progress [--resume DIR]`;
    /// `logs` names the files (`<logs>.stdout`, `<logs>.stderr`).
    pub fn start(bins: &Binaries, scenario: &Path, out_root: &Path, resume: Option<&Path>, logs: &Path) -> HilRun {
        close_inherited_descriptors_on_exec();
        let stdout = logs.with_extension("stdout");
        let stderr = logs.with_extension("stderr");
        let mut cmd = Command::new(&bins.hil);
        cmd.arg("run")
            .arg(scenario)
            .arg("--out")
            .arg(out_root)
            .arg("--agent-bin")
            .arg(&bins.agent)
            .arg("--no-progress");
        if let Some(dir) = resume {
            cmd.arg("--resume").arg(dir);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("stdout log"))
            .stderr(fs::File::create(&stderr).expect("stderr log"))
            .spawn()
            .expect("spawning hil run");
        HilRun { child, stdout, stderr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to `hil` itself (not its process group: the agent is not signalled).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed: {}", self.pid(), std::io::Error::last_os_error());
    }

    /// Waits for the exit, at most `limit`; on timeout kills it and panics with its output.
    pub fn wait(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for hil") {
                return (status, start.elapsed());
            }
            if start.elapsed() >= limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("hil run did not exit within {limit:?}\n{}", self.output());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the run under `out_root` has journaled `n` cells while this process
    /// is still running; panics with its output when it exits first or the limit passes.
    pub fn wait_for_journaled(&mut self, out_root: &Path, scenario: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if journaled_cells(out_root, scenario) >= n {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("polling hil") {
                panic!("hil run exited ({status}) before {n} cell(s) were journaled\n{}", self.output());
            }
            if Instant::now() >= deadline {
                panic!("no {n} journaled cell(s) within {limit:?}\n{}", self.output());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("polling hil").is_none()
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Both streams, for assertion messages.
    pub fn output(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout_text(), self.stderr_text())
    }
}

impl Drop for HilRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Pids of live processes whose executable is `exe` (the deployed agent), from `/proc/*/exe`.
pub fn processes_running(exe: &Path) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|target| target == exe))
        .collect()
}

/// How many copies of one program ran at once while sampled.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overlap {
    /// Most copies seen in one sample.
    pub max_running: usize,
    /// Time during which two or more ran (sum of sample intervals).
    pub overlapped: Duration,
    /// Wall-clock time of the last sample that saw two or more.
    pub last_overlap: Option<std::time::SystemTime>,
}

/// Samples [`processes_running`] every 20 ms until `stop` is set.
pub fn sample_overlap(exe: &Path, stop: &AtomicBool) -> Overlap {
    let mut overlap = Overlap::default();
    let mut last = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let running = processes_running(exe).len();
        let now = Instant::now();
        overlap.max_running = overlap.max_running.max(running);
        if running >= 2 {
            overlap.overlapped += now - last;
            overlap.last_overlap = Some(std::time::SystemTime::now());
        }
        last = now;
        thread::sleep(Duration::from_millis(20));
    }
    overlap
}

/// Marks every descriptor of this process above stderr close-on-exec.
///
/// The PPK2 emulator's pseudo-terminal pair (`serialport::TTYPort::pair`) is opened without
/// `O_CLOEXEC`, so a `hil` spawned afterwards inherits the emulator's master side. Closing the
/// emulator in the test then no longer hangs up the port `hil` reads (the child holds the master
/// open itself): the stream just stops, which is a different fault from an unplug. Rust's own
/// descriptors are already close-on-exec; this only affects such leaks.
pub fn close_inherited_descriptors_on_exec() {
    let Ok(entries) = fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> =
        entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number of this process; F_GETFD/F_SETFD only change the
        // close-on-exec flag (a descriptor closed meanwhile, e.g. read_dir's own, just fails).
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}
