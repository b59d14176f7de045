//! The simulated board's behaviour: what a real board's kernel and power rail
//! would do, run on this host for a `sim: true` board or `hil sim serve`.
//!
//! - **cpufreq**: a fake sysfs tree (RPi-4-like policy, [`super::sysfs`]) whose
//!   governor/min/max/setspeed writes are turned into `scaling_cur_freq` and
//!   `stats/time_in_state` by a ticker thread, as the kernel would. Its root
//!   holds the simulator's marker [`SIM_MARKER`] (JSON: `"simulator": "hil"`, the
//!   board, and the power model's numbers with the voltage of every level), which
//!   the probe reads to label the board simulated and `run.json` keeps.
//! - **speed**: the agent stretches every timed inference itself
//!   ([`device_agent::sim_stretch`]): it times the inference, then stays busy on
//!   its own core until `f_max / f` times that has passed, `f` being the fake
//!   tree's `scaling_cur_freq`. The agent learns the tree from
//!   `HIL_SIM_SYSFS_ROOT`, set by the wrapper [`Simulator::agent_exec_prefix`]
//!   (or `ROOT/run-agent` for `hil sim serve`), and refuses it unless the marker
//!   is there and the root is not `/sys`. Latency at level `f` is then `f_max/f`
//!   times the top level's, continuously, however short the inference (a CPU
//!   bandwidth quota, the earlier design, acts per scheduler tick and made
//!   millisecond inferences bimodal).
//! - **power**: a PPK2 emulator on a pseudo-terminal streams the board's
//!   current at 100 kS/s from `P = P_static + C * V(f)^2 * f * u` ([`PowerParams`]),
//!   where `u` is the number of busy simulated cores: the time the agent's threads
//!   were on a CPU or waiting for one (the stretch's spinning included) per wall
//!   time, at most as many cores as the agent is pinned to and has threads
//!   ([`BusySampler`], every [`BUSY_PERIOD`]). Time the *host* gave to another
//!   process while the agent was runnable counts as busy: the simulated core is
//!   the agent's alone and would have been computing then. The kernel reports
//!   that time at scheduler ticks and context switches, so it is credited as
//!   reported: the energy is exact and the trace lags the agent by at most a
//!   tick. Each PPK2 sample gets the busy value of its own time, not that of the
//!   moment its chunk was written.
//! - **thermal**: a first-order model heats the `cpu-thermal` zone with the dynamic power.
//!
//! Everything here is simulated and says so: the monitor identifies as
//! "PPK2 (simulated)", and `run.json`/reports carry [`Simulator::describe`] and the marker.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::ppk2_emulator::{join_within, EmulatorConfig, Ppk2Emulator};
use super::sysfs::{FakeCpufreqTree, FakeSysfs};
pub use device_agent::sim_stretch::{SIM_MARKER, SIM_SYSFS_ENV};

/// The simulated board's power model: `P = static_w + dyn_coeff * V(f)^2 * f * busy_cores`,
/// with `V(f)` linear from `v_min_v` at `f_min_khz` to `v_max_v` at `f_max_khz` (clamped).
///
/// The defaults describe a Raspberry Pi 4 B (BCM2711, 4x Cortex-A72 at 600-1500 MHz) measured
/// at its 5 V input:
/// - `static_w` = 2.1 W: the Pi 4 B idles at 2.7 W (540 mA at 5 V) on its launch firmware, with
///   `stress --cpu 4` at 6.4 W (1280 mA) (Jeff Geerling's pidramble "Power Consumption
///   Benchmarks" table, pidramble.com/wiki/benchmarks/power-consumption); the firmware updates
///   of 2019 "have taken over half a watt out of idle power and nearly a watt out of fully
///   loaded power", to 2.1 W idle (Raspberry Pi blog "Thermal testing Raspberry Pi 4", from
///   The MagPi 88, Gareth Halfacree, November 2019).
/// - `dyn_coeff` = 6.2e-10 W/(V^2 Hz): one busy core at 1.5 GHz and the assumed 1.0 V adds
///   0.93 W, pidramble's (6.4 W - 2.7 W) / 4 cores (same firmware for both figures).
/// - `v_min_v` = 0.8375 V at 600 MHz: the `vcgencmd measure_volts` reading typical of an idle
///   Pi 4 B (homebridge-rpi wiki, "Hardware Monitoring"). `v_max_v` = 1.0 V at 1.5 GHz is
///   **illustrative**: the BCM2711's voltage per frequency is chosen by its firmware's DVFS
///   (Raspberry Pi documentation, `frequency-management.md`: the voltage is lowered when a
///   clock runs below full speed) and not published; overclocked CM4s run 2.1-2.25 GHz at
///   0.99-1.035 V (raspberrypi/firmware issue 1825), so 1.0 V at 1.5 GHz is on the high side
///   and makes low levels look somewhat more efficient than a real Pi 4 may be. The linear
///   shape between the two is illustrative too.
/// - `supply_v` = 5.0 V: the USB-C input the PPK2 (in source mode) stands in for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PowerParams {
    /// Board power with the CPU idle, watts.
    pub static_w: f64,
    /// Dynamic power coefficient `C` per busy core, W / (V^2 Hz).
    pub dyn_coeff: f64,
    /// The rail the PPK2 sources, volts.
    pub supply_v: f64,
    pub f_min_khz: u64,
    pub v_min_v: f64,
    pub f_max_khz: u64,
    pub v_max_v: f64,
}

impl Default for PowerParams {
    fn default() -> Self {
        Self {
            static_w: 2.1,
            dyn_coeff: 6.2e-10,
            supply_v: 5.0,
            f_min_khz: 600_000,
            v_min_v: 0.8375,
            f_max_khz: 1_500_000,
            v_max_v: 1.0,
        }
    }
}

impl PowerParams {
    /// Core voltage at `freq_khz`: linear between the two ends, clamped to them.
    pub fn voltage_v(&self, freq_khz: u64) -> f64 {
        if self.f_max_khz <= self.f_min_khz {
            return self.v_max_v;
        }
        let x = (freq_khz as f64 - self.f_min_khz as f64) / (self.f_max_khz - self.f_min_khz) as f64;
        self.v_min_v + (self.v_max_v - self.v_min_v) * x.clamp(0.0, 1.0)
    }

    /// Dynamic power of one busy core at `freq_khz`, watts: `C * V(f)^2 * f`.
    pub fn core_dynamic_w(&self, freq_khz: u64) -> f64 {
        let v = self.voltage_v(freq_khz);
        self.dyn_coeff * v * v * (freq_khz as f64 * 1000.0)
    }

    /// Board power in watts at `freq_khz` with `busy_cores` simulated cores busy (0..=n).
    pub fn power_w(&self, freq_khz: u64, busy_cores: f64) -> f64 {
        self.static_w + self.core_dynamic_w(freq_khz) * busy_cores.max(0.0)
    }

    /// The model as recorded in the marker and `run.json`, for the frequencies `levels_khz`.
    pub fn model(&self, levels_khz: &[u64]) -> SimModel {
        SimModel {
            formula: "P = static_w + dyn_coeff * V(f)^2 * f * busy_cores".into(),
            busy_cores: format!(
                "time the agent's threads ran or were runnable (on-CPU plus run-queue wait, the stretch's spinning \
                 included) per wall time, sampled every {} ms, at most the CPUs it is pinned to and its threads",
                BUSY_PERIOD.as_millis()
            ),
            static_w: self.static_w,
            dyn_coeff: self.dyn_coeff,
            supply_v: self.supply_v,
            levels: levels_khz
                .iter()
                .map(|&f| SimLevel {
                    freq_khz: f,
                    voltage_v: self.voltage_v(f),
                    core_dynamic_w: self.core_dynamic_w(f),
                    one_core_busy_w: self.power_w(f, 1.0),
                })
                .collect(),
            sources: vec![
                "static_w, dyn_coeff: Raspberry Pi 4 B idle 2.7 W / stress --cpu 4 6.4 W (pidramble.com power \
                 consumption benchmarks, launch firmware); idle 2.1 W after the 2019 firmware updates (Raspberry \
                 Pi blog / The MagPi 88, 'Thermal testing Raspberry Pi 4')"
                    .into(),
                "voltage: 0.8375 V at 600 MHz is the typical idle vcgencmd measure_volts of a Pi 4 B; 1.0 V at \
                 1.5 GHz and the linear shape are illustrative (the BCM2711's DVFS table is firmware-internal)"
                    .into(),
            ],
        }
    }
}

/// The power model's numbers, serialisable (the marker's `model`, kept in `run.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimModel {
    pub formula: String,
    /// How `busy_cores` is measured.
    pub busy_cores: String,
    pub static_w: f64,
    pub dyn_coeff: f64,
    pub supply_v: f64,
    /// Every level of the simulated policy, with its voltage.
    pub levels: Vec<SimLevel>,
    /// Where the default numbers come from.
    pub sources: Vec<String>,
}

/// One DVFS level of the model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimLevel {
    pub freq_khz: u64,
    pub voltage_v: f64,
    /// `C * V^2 * f` of one busy core, watts.
    pub core_dynamic_w: f64,
    /// Board power with one core busy (a back-to-back single-threaded window), watts.
    pub one_core_busy_w: f64,
}

/// What frequency a policy runs at, given its governor and limits, as the kernel decides.
/// `userspace` follows `scaling_setspeed` (clamped to the limits); `performance` and
/// `powersave` take the max/min; load-driven governors go to max when busy, min when idle.
pub fn governed_frequency(
    governor: &str,
    min_khz: u64,
    max_khz: u64,
    setspeed_khz: Option<u64>,
    cur_khz: u64,
    busy: bool,
) -> u64 {
    let (lo, hi) = (min_khz.min(max_khz), max_khz.max(min_khz));
    match governor {
        "userspace" => setspeed_khz.unwrap_or(cur_khz).clamp(lo, hi),
        "performance" => hi,
        "powersave" => lo,
        _ if busy => hi,
        _ => lo,
    }
}

/// Options of a simulated board.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The board's name, recorded in the marker.
    pub name: String,
    pub power: PowerParams,
    /// The agent's inference threads: the most simulated cores the power model counts busy
    /// (together with the CPUs the agent is pinned to).
    pub agent_threads: u32,
    /// Start the PPK2 emulator.
    pub with_monitor: bool,
}

/// How often the busy fraction is sampled (the power trace's time resolution, below the
/// kernel's accounting granularity of one scheduler tick, 1-10 ms).
pub const BUSY_PERIOD: Duration = Duration::from_millis(1);

/// Busy samples kept for the power model (its samples are written at most a few chunks late).
const BUSY_HISTORY: Duration = Duration::from_millis(500);

/// Spacing of the points of the busy integral ([`SimState::integral`]).
const INTEGRAL_STEP: Duration = Duration::from_millis(10);

/// How long the busy integral is kept: a window's mean busy cores is read when it ends, and a
/// window may last up to an hour (`measure.min_duration`'s limit); at most ~11 MB of points.
const INTEGRAL_HISTORY: Duration = Duration::from_secs(2 * 60 * 60);

/// One busy sample: over the period ending `at`, `busy` cores were busy at `freq_khz`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct BusyPoint {
    at: Instant,
    busy: f64,
    freq_khz: u64,
}

/// Live simulator state shared with the ticker, the busy sampler and the power model.
#[derive(Debug, Default)]
struct SimState {
    freq_khz: AtomicU64,
    /// Latest busy cores x 1e6 (for the governor and the thermal model).
    busy_micro: AtomicU64,
    /// The agent's pid, 0 when none.
    agent_pid: AtomicU64,
    timeline: Mutex<VecDeque<BusyPoint>>,
    /// The power model's busy cores integrated over time: (CLOCK_MONOTONIC ns, busy core-seconds
    /// since the simulator started), a point every [`INTEGRAL_STEP`], kept [`INTEGRAL_HISTORY`].
    integral: Mutex<VecDeque<(u64, f64)>>,
}

impl SimState {
    fn busy_now(&self) -> f64 {
        self.busy_micro.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Mean busy cores between two CLOCK_MONOTONIC readings, from the integral (linear between
    /// its points); `None` when the span is empty or not (or no longer) covered.
    fn mean_busy(&self, start_ns: u64, end_ns: u64) -> Option<f64> {
        let integral = self.integral.lock().unwrap_or_else(|p| p.into_inner());
        let at = |t: u64| -> Option<f64> {
            let i = integral.partition_point(|p| p.0 < t);
            let hi = *integral.get(i)?;
            if hi.0 == t {
                return Some(hi.1);
            }
            let lo = *integral.get(i.checked_sub(1)?)?;
            Some(lo.1 + (hi.1 - lo.1) * (t - lo.0) as f64 / (hi.0 - lo.0) as f64)
        };
        (end_ns > start_ns).then_some(())?;
        Some((at(end_ns)? - at(start_ns)?) / ((end_ns - start_ns) as f64 / 1e9))
    }
}

/// A running simulated board.
#[derive(Debug)]
pub struct Simulator {
    root: PathBuf,
    fake: FakeSysfs,
    pidfile: PathBuf,
    power: PowerParams,
    model: SimModel,
    state: Arc<SimState>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    emulator: Option<Ppk2Emulator>,
}

/// Records the agent's pid in "$1", points the agent at the fake sysfs root "$2" (which turns on
/// its stretching to the simulated clock), then runs the rest of the arguments in its place.
const RUN_AGENT_SCRIPT: &str =
    r#"echo $$ > "$1" || exit 97; HIL_SIM_SYSFS_ROOT="$2"; export HIL_SIM_SYSFS_ROOT; shift 2; exec "$@""#;

/// Ticker period: how quickly the fake kernel reacts to sysfs writes.
const TICK: Duration = Duration::from_millis(5);

/// How long shutdown waits for each of the simulator's threads (which sleep at most [`TICK`]).
const THREAD_GRACE: Duration = Duration::from_millis(500);

/// What a probe of a simulated board finds: the tree [`Simulator::start`] lays out, on this
/// host's CPUs (see [`FakeCpufreqTree::facts`]).
pub fn simulated_board_facts() -> crate::scenario::BoardFacts {
    let cpus = host_cpus();
    FakeCpufreqTree::raspberry_pi_4_on(cpus).build().facts(cpus as usize)
}

/// This host's online CPUs: a simulated board's CPUs.
fn host_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(online)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}

impl Simulator {
    /// Lays out the fake sysfs under `root/sys` with the marker at its root, starts the ticker
    /// and the busy sampler and (with `with_monitor`) the PPK2 emulator.
    pub fn start(root: &Path, opts: SimOptions) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let sys = root.join("sys");
        let fake = FakeCpufreqTree::raspberry_pi_4_on(host_cpus()).write(&sys)?;
        let pidfile = root.join("agent.pid");
        let _ = std::fs::remove_file(&pidfile);
        let state = Arc::new(SimState::default());
        let policy = fake.policy_ids()[0];
        let cur: u64 = fake.read_policy_attr(policy, "scaling_cur_freq")?.parse().unwrap_or(600_000);
        state.freq_khz.store(cur, Ordering::SeqCst);
        let levels: Vec<u64> = fake
            .read_policy_attr(policy, "scaling_available_frequencies")?
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let model = opts.power.model(&levels);
        write_marker(fake.root(), &opts.name, &model)?;

        let emulator = if opts.with_monitor {
            let config =
                EmulatorConfig { initial_vdd_mv: (opts.power.supply_v * 1000.0) as u32, ..EmulatorConfig::default() };
            let mut emu = Ppk2Emulator::spawn(BusyPower::new(state.clone(), opts.power), config)?;
            emu.link_at(&root.join("ppk2"))?;
            Some(emu)
        } else {
            None
        };

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (fake, state, stop, pidfile) = (fake.clone(), state.clone(), stop.clone(), pidfile.clone());
            let power = opts.power;
            std::thread::Builder::new()
                .name("sim-kernel".into())
                .spawn(move || Ticker::new(fake, state, pidfile, power).run(&stop))?
        };
        let sampler = {
            let (state, stop) = (state.clone(), stop.clone());
            let sampler = BusySampler::new(opts.agent_threads);
            std::thread::Builder::new().name("sim-busy".into()).spawn(move || sampler.run(&state, &stop))?
        };
        let sim = Self {
            root: root.to_path_buf(),
            fake,
            pidfile,
            power: opts.power,
            model,
            state,
            stop,
            threads: vec![ticker, sampler],
            emulator,
        };
        sim.write_run_agent_script()?;
        Ok(sim)
    }

    /// The fake sysfs mount point (a board's `sysfs_root`).
    pub fn sysfs_root(&self) -> String {
        self.fake.root_str()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The marker at the fake sysfs root.
    pub fn marker_path(&self) -> PathBuf {
        self.fake.root().join(SIM_MARKER)
    }

    /// The PPK2 emulator's port (a stable symlink `root/ppk2`).
    pub fn ppk2_port(&self) -> Option<PathBuf> {
        self.emulator.as_ref().map(|_| self.root.join("ppk2"))
    }

    /// The program prefix that starts the agent inside the simulator: it records the agent's
    /// pid (for the busy fraction the power model uses) and sets `HIL_SIM_SYSFS_ROOT` to the
    /// fake tree (so the agent stretches its inferences to the simulated clock), then `exec`s
    /// the real command. The script is constant; paths are positional arguments.
    pub fn agent_exec_prefix(&self) -> Vec<String> {
        vec![
            "/bin/sh".into(),
            "-c".into(),
            RUN_AGENT_SCRIPT.into(),
            "hil-sim-agent".into(),
            self.pidfile.to_string_lossy().into_owned(),
            self.sysfs_root(),
        ]
    }

    /// `root/run-agent`: the same wrapper as a script, for boards reached over SSH that use a
    /// simulator started by `hil sim serve` (`exec_prefix: [ROOT/run-agent, ...]`).
    pub fn run_agent_script(&self) -> PathBuf {
        self.root.join("run-agent")
    }

    fn write_run_agent_script(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let text = format!(
            "#!/bin/sh\n# Written by hil's simulator: runs \"$@\" as the simulated board's agent.\nset -- {} {} \"$@\"\n{}\n",
            crate::board::quote::shell_quote(&self.pidfile.to_string_lossy()),
            crate::board::quote::shell_quote(&self.sysfs_root()),
            RUN_AGENT_SCRIPT
        );
        let path = self.run_agent_script();
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
    }

    pub fn power_params(&self) -> PowerParams {
        self.power
    }

    /// The power model's numbers with the voltage of every level (also in the marker).
    pub fn model(&self) -> &SimModel {
        &self.model
    }

    /// The simulated frequency now.
    pub fn freq_khz(&self) -> u64 {
        self.state.freq_khz.load(Ordering::SeqCst)
    }

    /// The power model's mean busy cores between two CLOCK_MONOTONIC readings of this host
    /// (a window's, for the agent runs here), to 10 ms at each end; `None` for a span not covered.
    pub fn mean_busy_cores(&self, start_ns: u64, end_ns: u64) -> Option<f64> {
        // A window that just ended may be past the integral's last point (one every 10 ms).
        let deadline = Instant::now() + 5 * INTEGRAL_STEP;
        loop {
            let covered = self.state.integral.lock().unwrap_or_else(|p| p.into_inner()).back().map(|p| p.0);
            if covered.is_some_and(|c| c >= end_ns) || Instant::now() >= deadline {
                return self.state.mean_busy(start_ns, end_ns);
            }
            std::thread::sleep(BUSY_PERIOD);
        }
    }

    /// Busy simulated cores over the last [`BUSY_PERIOD`].
    pub fn busy_cores(&self) -> f64 {
        self.state.busy_now()
    }

    /// One line for run.json and reports.
    pub fn describe(&self) -> String {
        let p = &self.power;
        format!(
            "SIMULATED board: fake sysfs at {} (RPi-4-like policy {}-{} MHz, V {:.4}-{:.3} V assumed); agent \
             inferences stretched by f_max/f of that tree (HIL_SIM_SYSFS_ROOT), busy on the agent's core; power \
             model P = {:.2} W + {:.2e} W/(V^2 Hz) * V^2 * f * busy cores, read through an emulated PPK2 at {:.1} V",
            self.fake.root().display(),
            p.f_min_khz / 1000,
            p.f_max_khz / 1000,
            p.v_min_v,
            p.v_max_v,
            p.static_w,
            p.dyn_coeff,
            p.supply_v
        )
    }

    /// Stops the threads and the emulator.
    pub fn shutdown(mut self) {
        self.halt();
    }

    /// Bounded: no thread is waited for longer than its grace period (the emulator's
    /// [`super::ppk2_emulator::SHUTDOWN_GRACE`], then [`THREAD_GRACE`] each), whatever a PPK2 client did.
    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(e) = self.emulator.take() {
            e.shutdown();
        }
        for t in self.threads.drain(..) {
            let name = t.thread().name().unwrap_or("simulator").to_string();
            if join_within(t, THREAD_GRACE).is_err() {
                eprintln!("warning: the simulator's {name} thread did not stop within {} ms", THREAD_GRACE.as_millis());
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Writes `sys/hil-simulated.json`: the simulator's identity, the board and the power model.
fn write_marker(sysfs_root: &Path, board: &str, model: &SimModel) -> io::Result<()> {
    let marker = serde_json::json!({
        "simulator": "hil",
        "harness_version": env!("CARGO_PKG_VERSION"),
        "board": board,
        "speed": format!(
            "the agent stretches each timed inference, busy on its core, by cpuinfo_max_freq / scaling_cur_freq \
             of this tree ({SIM_SYSFS_ENV})"
        ),
        "model": model,
    });
    let text = serde_json::to_string_pretty(&marker).map_err(io::Error::other)?;
    atomic_write(&sysfs_root.join(SIM_MARKER), &text)
}

/// The PPK2 emulator's current: the power model at each sample's own time.
///
/// The emulator asks for samples in chunks (every 10 ms, for the samples due by then), by their
/// time since the stream started. The stream's start on this host's clock is the earliest
/// `now - t` seen (a sample is never asked for before it is due; the last of each chunk is asked
/// for microseconds after), reset when `t` goes back (a restarted stream).
struct BusyPower {
    state: Arc<SimState>,
    power: PowerParams,
    origin: Option<Instant>,
    last_t_s: f64,
    /// A copy of the recent timeline, taken once per chunk.
    local: Vec<BusyPoint>,
    copied_at: Option<Instant>,
}

impl BusyPower {
    fn new(state: Arc<SimState>, power: PowerParams) -> Self {
        Self { state, power, origin: None, last_t_s: f64::NEG_INFINITY, local: Vec::new(), copied_at: None }
    }
}

impl super::ppk2_emulator::PowerModel for BusyPower {
    fn current_a(&mut self, t_s: f64, supply_v: f64) -> f64 {
        let now = Instant::now();
        if t_s < self.last_t_s {
            self.origin = None;
        }
        self.last_t_s = t_s;
        let since_start = Duration::from_secs_f64(t_s.max(0.0));
        if let Some(candidate) = now.checked_sub(since_start) {
            self.origin = Some(self.origin.map_or(candidate, |o| o.min(candidate)));
        }
        if self.copied_at.is_none_or(|c| now.duration_since(c) >= BUSY_PERIOD) {
            let timeline = self.state.timeline.lock().unwrap_or_else(|p| p.into_inner());
            self.local.clear();
            self.local.extend(timeline.iter().copied());
            self.copied_at = Some(now);
        }
        let at = self.origin.map_or(now, |o| o + since_start);
        let (busy, freq) = busy_at(&self.local, at)
            .unwrap_or_else(|| (self.state.busy_now(), self.state.freq_khz.load(Ordering::Relaxed)));
        self.power.power_w(freq, busy) / supply_v.max(0.8)
    }
}

/// The busy cores and frequency in force at `at`: those of the period that contains it (the
/// first point at or after it), the latest for times after the last point; `None` for an empty
/// timeline.
fn busy_at(points: &[BusyPoint], at: Instant) -> Option<(f64, u64)> {
    let i = points.partition_point(|p| p.at < at).min(points.len().checked_sub(1)?);
    let p = points[i];
    Some((p.busy, p.freq_khz))
}

/// Samples the agent's busy time every [`BUSY_PERIOD`] into the shared timeline as busy cores.
///
/// The kernel's counters of another process's time lag by up to a scheduler tick (they jump at
/// ticks and context switches), so the busy time is *credited* as it is reported: each period
/// gets what was reported since the time already credited, at most `cap` cores' worth; the rest
/// is carried to the next periods. The credited total follows the reported one exactly, and no
/// period reads more cores than the agent may use. (A per-window rate clipped at the cap would
/// lose the ticks that land in a window, 2.5 % of a spinning agent's time at HZ 250.)
struct BusySampler {
    max_threads: u32,
    pid: u64,
    cap: f64,
    cap_checked: Option<Instant>,
    tasks: AgentTasks,
    /// Busy ns of the current agent credited so far, and when the last period ended.
    credited: Option<(u64, Instant)>,
}

impl BusySampler {
    fn new(agent_threads: u32) -> Self {
        Self {
            max_threads: agent_threads.max(1),
            pid: 0,
            cap: 1.0,
            cap_checked: None,
            tasks: AgentTasks::default(),
            credited: None,
        }
    }

    fn run(mut self, state: &SimState, stop: &AtomicBool) {
        // The busy integral: core-seconds so far, and the last period's end (monotonic ns).
        let (mut total, mut last_ns) = (0.0, device_agent::platform::monotonic_ns());
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(BUSY_PERIOD);
            let now = Instant::now();
            let now_ns = device_agent::platform::monotonic_ns();
            let busy = self.sample(state.agent_pid.load(Ordering::Relaxed), now);
            state.busy_micro.store((busy * 1e6) as u64, Ordering::Relaxed);
            total += busy * now_ns.saturating_sub(last_ns) as f64 / 1e9;
            last_ns = now_ns;
            {
                let mut integral = state.integral.lock().unwrap_or_else(|p| p.into_inner());
                if integral.back().is_none_or(|p| now_ns - p.0 >= INTEGRAL_STEP.as_nanos() as u64) {
                    integral.push_back((now_ns, total));
                }
                while integral.front().is_some_and(|p| now_ns - p.0 > INTEGRAL_HISTORY.as_nanos() as u64) {
                    integral.pop_front();
                }
            }
            let point = BusyPoint { at: now, busy, freq_khz: state.freq_khz.load(Ordering::Relaxed) };
            let mut timeline = state.timeline.lock().unwrap_or_else(|p| p.into_inner());
            timeline.push_back(point);
            while timeline.front().is_some_and(|p| now.duration_since(p.at) > BUSY_HISTORY) {
                timeline.pop_front();
            }
        }
    }

    /// Busy cores of agent `pid` (0: none) over the period ending `now`.
    fn sample(&mut self, pid: u64, now: Instant) -> f64 {
        if pid != self.pid {
            self.pid = pid;
            self.cap_checked = None;
            self.tasks = AgentTasks::default();
            self.credited = None;
        }
        let Some(reported) = (pid != 0).then(|| self.tasks.busy_ns(pid, now)).flatten() else {
            self.credited = None;
            return 0.0;
        };
        if self.cap_checked.is_none_or(|c| now.duration_since(c) > Duration::from_millis(100)) {
            // The agent pins itself after it starts: look again now and then.
            let pinned = allowed_cpus(pid).unwrap_or(self.max_threads);
            self.cap = f64::from(pinned.min(self.max_threads).max(1));
            self.cap_checked = Some(now);
        }
        let Some((credited, since)) = self.credited else {
            // A new agent: what it did before now is not this period's.
            self.credited = Some((reported, now));
            return 0.0;
        };
        let (busy, credit) = credit_period(reported.saturating_sub(credited), now.duration_since(since), self.cap);
        self.credited = Some((forgive_excess(reported, credited + credit, self.cap), now));
        busy
    }
}

/// How far behind the credited busy time may fall before the rest is dropped: a few scheduler
/// ticks (the lag the carrying exists for). Reported time beyond it is not the simulated core's:
/// an agent with more runnable threads than its core (qemu-user's helper thread waiting beside the
/// emulated one on a loaded host) reports more than `cap` cores of run and run-queue time, and
/// carrying that would keep the core "busy" long after the work ended (idle power read as busy).
pub const MAX_BUSY_CARRY: Duration = Duration::from_millis(20);

/// The new credited total: `credited`, raised so that at most [`MAX_BUSY_CARRY`] at `cap` cores
/// stays owed of `reported`.
fn forgive_excess(reported: u64, credited: u64, cap: f64) -> u64 {
    let max_owed = (cap * MAX_BUSY_CARRY.as_nanos() as f64) as u64;
    credited.max(reported.saturating_sub(max_owed))
}

/// One period of `period` with `owed` ns of reported busy time not yet credited: the busy cores
/// the period reads (at most `cap`) and the ns credited to it.
fn credit_period(owed: u64, period: Duration, cap: f64) -> (f64, u64) {
    let wall = period.as_nanos() as f64;
    if wall <= 0.0 {
        return (0.0, 0);
    }
    let credit = (owed as f64).min(cap * wall);
    (credit / wall, credit.round() as u64)
}

/// The fake kernel's loop.
struct Ticker {
    fake: FakeSysfs,
    state: Arc<SimState>,
    pidfile: PathBuf,
    power: PowerParams,
    /// Residency per available frequency, in seconds (written as 10 ms ticks).
    residency: Vec<(u64, f64)>,
    temp_c: f64,
}

impl Ticker {
    fn new(fake: FakeSysfs, state: Arc<SimState>, pidfile: PathBuf, power: PowerParams) -> Self {
        let policy = fake.policy_ids()[0];
        let residency = fake
            .read_policy_attr(policy, "scaling_available_frequencies")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .map(|f| (f, 0.0))
            .collect();
        Self { fake, state, pidfile, power, residency, temp_c: 45.0 }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut last = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            let now = Instant::now();
            let dt = now.duration_since(last).as_secs_f64();
            last = now;
            let pid = std::fs::read_to_string(&self.pidfile).ok().and_then(|p| p.trim().parse::<u64>().ok());
            self.state.agent_pid.store(pid.unwrap_or(0), Ordering::Relaxed);
            let freq = self.step_cpufreq(dt);
            self.step_thermal(freq, dt);
        }
    }

    /// Applies governor semantics; returns the frequency now in force.
    fn step_cpufreq(&mut self, dt: f64) -> u64 {
        let busy = self.state.busy_now() > 0.3;
        let mut first_freq = None;
        for &id in self.fake.policy_ids() {
            let read = |f: &str| self.fake.read_policy_attr(id, f).ok();
            let governor = read("scaling_governor").unwrap_or_default();
            let num = |f: &str| read(f).and_then(|v| v.parse::<u64>().ok());
            let (Some(min), Some(max), Some(cur)) =
                (num("scaling_min_freq"), num("scaling_max_freq"), num("scaling_cur_freq"))
            else {
                continue;
            };
            let want = governed_frequency(&governor, min, max, num("scaling_setspeed"), cur, busy);
            // Snap to an available level, like a real driver.
            let snapped = self.residency.iter().map(|r| r.0).filter(|f| *f <= want).max().unwrap_or(want);
            if snapped != cur {
                let _ = atomic_write(&self.fake.policy_file(id, "scaling_cur_freq"), &snapped.to_string());
                let _ = atomic_write(&self.fake.policy_file(id, "cpuinfo_cur_freq"), &snapped.to_string());
            }
            first_freq.get_or_insert(snapped);
        }
        let freq = first_freq.unwrap_or_else(|| self.state.freq_khz.load(Ordering::Relaxed));
        self.state.freq_khz.store(freq, Ordering::SeqCst);
        if let Some(slot) = self.residency.iter_mut().find(|r| r.0 == freq) {
            slot.1 += dt;
        }
        let text: String = self.residency.iter().map(|(f, s)| format!("{f} {}\n", (s * 100.0) as u64)).collect();
        for &id in self.fake.policy_ids() {
            let _ = atomic_write(&self.fake.policy_file(id, "stats/time_in_state"), text.trim_end());
        }
        freq
    }

    /// First-order thermal model: 45 °C ambient-at-idle, +20 °C per watt of dynamic power, tau 5 s.
    fn step_thermal(&mut self, freq: u64, dt: f64) {
        let dynamic = self.power.power_w(freq, self.state.busy_now()) - self.power.static_w;
        let target = 45.0 + 20.0 * dynamic;
        self.temp_c += (target - self.temp_c) * (dt / 5.0).min(1.0);
        for zone in 0..self.fake.thermal_zone_count() {
            let _ = atomic_write(&self.fake.thermal_file(zone, "temp"), &((self.temp_c * 1000.0) as i64).to_string());
        }
    }
}

/// The agent's threads' `/proc/<pid>/task/<tid>/schedstat`, kept open (re-read from offset 0:
/// the kernel regenerates the text on every read) and re-listed every [`TASK_RESCAN`].
#[derive(Debug, Default)]
struct AgentTasks {
    files: Vec<std::fs::File>,
    listed: Option<Instant>,
}

/// How often the agent's threads are listed again (workers come and go).
const TASK_RESCAN: Duration = Duration::from_millis(50);

impl AgentTasks {
    /// Busy time of process `pid` in ns: its CPU time (the process CPU-time clock, which keeps
    /// the time of threads that have exited) plus the run-queue wait of its live threads
    /// (`schedstat`'s second field: runnable, but the host ran something else). Both are brought
    /// up to date at context switches and scheduler ticks, not when read (see [`BusySampler`]).
    fn busy_ns(&mut self, pid: u64, now: Instant) -> Option<u64> {
        let cpu = process_cpu_ns(pid)?;
        if self.listed.is_none_or(|l| now.duration_since(l) >= TASK_RESCAN) {
            self.files = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.flatten().filter_map(|t| std::fs::File::open(t.path().join("schedstat")).ok()).collect())
                .unwrap_or_default();
            self.listed = Some(now);
        }
        let mut waited = 0u64;
        let mut buf = [0u8; 128];
        for f in &self.files {
            use std::os::unix::fs::FileExt;
            let Ok(n) = f.read_at(&mut buf, 0) else { continue };
            let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
            waited += text.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
        Some(cpu + waited)
    }
}

/// CPU time of all threads of process `pid` in ns: its process CPU-time clock (one
/// `clock_gettime`), else the sum of `/proc/<pid>/task/*/schedstat`. Either is exact at every
/// context switch and scheduler tick (the kernel does not bring another process's running
/// slice up to date when asked; see [`BusySampler`]).
pub fn process_cpu_ns(pid: u64) -> Option<u64> {
    let pid_t = libc::pid_t::try_from(pid).ok()?;
    // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) from the kernel's posix-timers.h: what
    // clock_getcpuclockid(3) returns, without glibc's extra existence check.
    let clock: libc::clockid_t = ((!pid_t) << 3) | 2;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; an invalid clock id only returns an error.
    if unsafe { libc::clock_gettime(clock, &mut ts) } == 0 {
        return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Some(total)
}

/// How many CPUs process `pid`'s main thread may run on (`sched_getaffinity(2)`).
fn allowed_cpus(pid: u64) -> Option<u32> {
    let pid_t = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable and of the size passed.
    let rc = unsafe { libc::sched_getaffinity(pid_t, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    // SAFETY: `set` was filled by the kernel.
    (rc == 0).then(|| unsafe { libc::CPU_COUNT(&set) } as u32)
}

/// Replaces a file's content atomically so readers never see it half-written.
fn atomic_write(path: &Path, value: &str) -> io::Result<()> {
    let tmp = path.with_extension("sim-tmp");
    std::fs::write(&tmp, format!("{value}\n"))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn governors_follow_kernel_semantics() {
        assert_eq!(governed_frequency("userspace", 600_000, 1_500_000, Some(1_000_000), 600_000, false), 1_000_000);
        // setspeed outside the limits is clamped, as cpufreq does.
        assert_eq!(governed_frequency("userspace", 600_000, 900_000, Some(1_500_000), 600_000, false), 900_000);
        assert_eq!(governed_frequency("performance", 600_000, 1_200_000, None, 600_000, false), 1_200_000);
        assert_eq!(governed_frequency("powersave", 700_000, 1_200_000, None, 900_000, true), 700_000);
        assert_eq!(governed_frequency("ondemand", 600_000, 1_500_000, None, 600_000, true), 1_500_000);
        assert_eq!(governed_frequency("ondemand", 600_000, 1_500_000, None, 1_500_000, false), 600_000);
        // min=max pinning under any governor holds the frequency.
        assert_eq!(governed_frequency("schedutil", 1_000_000, 1_000_000, None, 600_000, false), 1_000_000);
    }

    #[test]
    fn power_rises_with_frequency_voltage_and_busy_cores() {
        let p = PowerParams::default();
        assert_eq!(p.power_w(1_500_000, 0.0), 2.1);
        // One busy core at 1.5 GHz and 1.0 V: 6.2e-10 * 1.5e9 = 0.93 W.
        assert!((p.power_w(1_500_000, 1.0) - 3.03).abs() < 1e-9);
        assert!((p.power_w(1_500_000, 2.0) - 3.96).abs() < 1e-9, "two busy cores count twice");
        let low = p.power_w(600_000, 1.0) - p.static_w;
        assert!((low - 6.2e-10 * 0.8375 * 0.8375 * 6e8).abs() < 1e-12);
        assert_eq!(p.voltage_v(600_000), 0.8375);
        assert_eq!(p.voltage_v(1_500_000), 1.0);
        assert_eq!(p.voltage_v(300_000), 0.8375, "clamped below");
        assert!((p.voltage_v(1_050_000) - (0.8375 + 1.0) / 2.0).abs() < 1e-12);
        let m = p.model(&[600_000, 1_500_000]);
        assert_eq!(m.levels.len(), 2);
        assert_eq!((m.levels[1].voltage_v, m.levels[1].one_core_busy_w), (1.0, p.power_w(1_500_000, 1.0)));
        assert!(m.formula.contains("V(f)^2"));
    }

    #[test]
    fn busy_time_is_credited_as_reported_at_most_cap_cores_per_period() {
        let ms = Duration::from_millis(1);
        // A spinning agent whose time the kernel reports in 4 ms ticks: 0, 0, 0, 4 ms, ...
        let mut owed = 0u64;
        let mut credited_total = 0u64;
        let mut reads = Vec::new();
        for period in 1..=40u64 {
            if period % 4 == 0 {
                owed += 4_000_000;
            }
            let (busy, credit) = credit_period(owed, ms, 1.0);
            owed -= credit;
            credited_total += credit;
            reads.push(busy);
        }
        assert!(reads.iter().all(|b| (0.0..=1.0).contains(b)), "never above one core: {reads:?}");
        assert_eq!(credited_total + owed, 40_000_000, "every reported ns is credited once");
        assert!(owed <= 4_000_000, "at most a tick behind: {owed}");
        assert!(reads[4..].iter().all(|b| *b == 1.0), "busy from the first tick on: {reads:?}");
        // Two threads' worth on a cap of 4: both counted.
        assert_eq!(credit_period(2_000_000, ms, 4.0), (2.0, 2_000_000));
        assert_eq!(credit_period(0, Duration::ZERO, 1.0), (0.0, 0));
    }

    #[test]
    fn reported_time_beyond_the_core_is_not_carried_into_idle() {
        // Two runnable threads on one simulated core for 100 ms (200 ms reported), then idle: the
        // core reads busy for the 100 ms and at most MAX_BUSY_CARRY after, then idle.
        let ms = Duration::from_millis(1);
        let (mut reported, mut credited) = (0u64, 0u64);
        let mut reads = Vec::new();
        for period in 0..300u64 {
            if period < 100 {
                reported += 2_000_000;
            }
            let (busy, credit) = credit_period(reported - credited, ms, 1.0);
            credited = forgive_excess(reported, credited + credit, 1.0);
            reads.push(busy);
        }
        assert!(reads[..100].iter().all(|b| *b == 1.0));
        let carried = reads[100..].iter().filter(|b| **b > 0.0).count();
        assert!(carried <= MAX_BUSY_CARRY.as_millis() as usize, "busy {carried} ms after the work ended");
        assert!(reads[150..].iter().all(|b| *b == 0.0));
        // A tick's lag is still carried in full.
        assert_eq!(forgive_excess(4_000_000, 0, 1.0), 0);
    }

    #[test]
    fn each_power_sample_takes_the_busy_value_of_its_own_period() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let pts = [
            BusyPoint { at: ms(1), busy: 0.0, freq_khz: 600_000 },
            BusyPoint { at: ms(2), busy: 1.0, freq_khz: 600_000 },
            BusyPoint { at: ms(3), busy: 0.5, freq_khz: 1_500_000 },
        ];
        assert_eq!(busy_at(&pts, ms(0)), Some((0.0, 600_000)));
        assert_eq!(busy_at(&pts, ms(2)), Some((1.0, 600_000)), "the period ending at 2 ms");
        assert_eq!(busy_at(&pts, t0 + Duration::from_micros(1_500)), Some((1.0, 600_000)));
        assert_eq!(busy_at(&pts, t0 + Duration::from_micros(2_500)), Some((0.5, 1_500_000)));
        assert_eq!(busy_at(&pts, ms(9)), Some((0.5, 1_500_000)), "after the last: the last");
        assert_eq!(busy_at(&[], ms(9)), None);
    }

    #[test]
    fn a_spinning_process_reads_one_busy_core() {
        let mut child = std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
        let pid = u64::from(child.id());
        let mut sampler = BusySampler::new(1);
        let begin = Instant::now();
        let mut busy = Vec::new();
        while begin.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(BUSY_PERIOD);
            let b = sampler.sample(pid, Instant::now());
            if begin.elapsed() > Duration::from_millis(40) {
                busy.push(b);
            }
        }
        child.kill().unwrap();
        let _ = child.wait();
        let mean = busy.iter().sum::<f64>() / busy.len() as f64;
        // Always runnable: busy even while the host runs something else on its CPU. (The last
        // tick, or the last wait for a CPU on a busy host, is reported after the 0.3 s: a few %.)
        assert!(mean > 0.95 && mean <= 1.0, "mean busy {mean} over {} samples", busy.len());
        assert_eq!(sampler.sample(0, Instant::now()), 0.0, "no agent, nothing busy");
    }

    #[test]
    fn the_marker_and_the_agent_wrapper_switch_stretching_on() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulator::start(
            dir.path(),
            SimOptions { name: "unit".into(), power: PowerParams::default(), agent_threads: 1, with_monitor: false },
        )
        .unwrap();
        let marker: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(sim.marker_path()).unwrap()).unwrap();
        assert_eq!(marker["simulator"], "hil");
        assert_eq!(marker["board"], "unit");
        assert_eq!(marker["model"]["static_w"], 2.1);
        assert_eq!(marker["model"]["levels"].as_array().unwrap().len(), 10);
        assert_eq!(marker["model"]["levels"][0]["voltage_v"], 0.8375);
        assert_eq!(SIM_MARKER, crate::probe::SIM_MARKER, "the probe reads the file the simulator writes");
        assert_eq!(sim.marker_path().parent().unwrap(), Path::new(&sim.sysfs_root()));
        // The agent accepts the tree the wrapper points it at.
        let tree = device_agent::sim_stretch::SimCpufreq::open(Path::new(&sim.sysfs_root()), 0).unwrap();
        assert!(tree.factor().unwrap() >= 1.0);
        let mut argv = sim.agent_exec_prefix();
        argv.extend(["sh".into(), "-c".into(), format!("echo ${SIM_SYSFS_ENV}")]);
        let out = std::process::Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sim.sysfs_root());
        let script = std::process::Command::new(sim.run_agent_script())
            .args(["sh", "-c", &format!("echo ${SIM_SYSFS_ENV}")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&script.stdout).trim(), sim.sysfs_root());
        assert!(sim.describe().contains("stretched"), "{}", sim.describe());
        sim.shutdown();
    }
}
