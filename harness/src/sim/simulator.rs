//! The simulated board's behaviour: what a real board's kernel and power rail
//! would do, run on this host for a `sim: true` board or `hil sim serve`.
//!
//! - **cpufreq**: a fake sysfs tree (RPi-4-like policy, [`super::sysfs`]) whose
//!   governor/min/max/setspeed writes are turned into `scaling_cur_freq` and
//!   `stats/time_in_state` by a ticker thread, as the kernel would.
//! - **speed**: the agent runs on this host in a cgroup whose CPU bandwidth
//!   is `f / f_max` of its threads (v2 `cpu.max` or v1 `cpu.cfs_quota_us`,
//!   10 ms periods), so latency follows the simulated frequency. Where no
//!   cgroup is writable the agent runs unthrottled, and that is said.
//! - **power**: a PPK2 emulator on a pseudo-terminal streams the board's
//!   current at 100 kS/s from `P = P_static + C * V(f)^2 * f * u`, where `u`
//!   is the agent's measured CPU utilisation (from `/proc/<pid>/task/*/schedstat`).
//! - **thermal**: a first-order model heats the `cpu-thermal` zone with the dynamic power.
//!
//! Everything here is simulated and says so: the monitor identifies as
//! "PPK2 (simulated)", and `run.json`/reports carry [`Simulator::describe`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::ppk2_emulator::{EmulatorConfig, Ppk2Emulator};
use super::sysfs::{FakeCpufreqTree, FakeSysfs};

/// Assumed core voltage at a frequency for the simulated RPi-4-like policy: linear from
/// 0.80 V at 600 MHz to 1.00 V at 1.5 GHz. Illustrative (the BCM2711's real DVFS table is
/// firmware-internal); the shape, V rising with f, is what makes low levels efficient.
pub fn rpi4_voltage(freq_khz: u64) -> f64 {
    let f = freq_khz as f64 / 1000.0;
    (0.80 + 0.20 * (f - 600.0) / 900.0).clamp(0.80, 1.00)
}

/// The simulated board's power model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PowerParams {
    /// Board power with the CPU idle (RPi 4 class boards idle around 2 W at 5 V).
    pub static_w: f64,
    /// Dynamic power coefficient `C` in W / (V^2 Hz): 8e-10 gives +1.2 W for one busy
    /// core at 1.5 GHz and 1.0 V.
    pub dyn_coeff: f64,
    /// The rail the PPK2 sources, volts.
    pub supply_v: f64,
}

impl Default for PowerParams {
    fn default() -> Self {
        Self { static_w: 2.0, dyn_coeff: 8e-10, supply_v: 5.0 }
    }
}

impl PowerParams {
    /// Board power in watts at `freq_khz` with CPU utilisation `util` (busy cores, 0..=n).
    pub fn power_w(&self, freq_khz: u64, util: f64) -> f64 {
        let v = rpi4_voltage(freq_khz);
        self.static_w + self.dyn_coeff * v * v * (freq_khz as f64 * 1000.0) * util.max(0.0)
    }
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

/// How the agent's speed follows the simulated frequency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Throttle {
    CgroupV2 {
        dir: PathBuf,
    },
    CgroupV1 {
        dir: PathBuf,
    },
    /// No writable cgroup: the agent runs at the host's full speed whatever the level.
    Unthrottled {
        reason: String,
    },
}

/// CFS bandwidth period: short, so a few-millisecond inference sees a smooth slowdown.
const CFS_PERIOD_US: u64 = 10_000;

impl Throttle {
    /// Creates a cgroup named `name` with the CPU controller, v2 first, then v1.
    pub fn setup(name: &str) -> Throttle {
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_ok = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu"));
        let mut reasons = Vec::new();
        if v2_ok {
            let dir = v2.join(name);
            match std::fs::create_dir_all(&dir).and_then(|_| std::fs::metadata(dir.join("cpu.max"))) {
                Ok(_) => return Throttle::CgroupV2 { dir },
                Err(e) => reasons.push(format!("cgroup v2 {}: {e}", dir.display())),
            }
        }
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(name);
            match std::fs::create_dir_all(&dir).and_then(|_| std::fs::metadata(dir.join("cpu.cfs_quota_us"))) {
                Ok(_) => return Throttle::CgroupV1 { dir },
                Err(e) => reasons.push(format!("cgroup v1 {}: {e}", dir.display())),
            }
        } else {
            reasons.push("no cgroup CPU controller found".into());
        }
        Throttle::Unthrottled { reason: reasons.join("; ") }
    }

    /// Limits the group to `cpus * fraction` of CPU time per period.
    pub fn set_fraction(&self, fraction: f64, cpus: u32) -> io::Result<()> {
        let quota = ((CFS_PERIOD_US as f64) * fraction.clamp(0.01, 1.0) * cpus.max(1) as f64).round() as u64;
        match self {
            Throttle::CgroupV2 { dir } => std::fs::write(dir.join("cpu.max"), format!("{quota} {CFS_PERIOD_US}\n")),
            Throttle::CgroupV1 { dir } => {
                std::fs::write(dir.join("cpu.cfs_period_us"), format!("{CFS_PERIOD_US}\n"))?;
                std::fs::write(dir.join("cpu.cfs_quota_us"), format!("{quota}\n"))
            }
            Throttle::Unthrottled { .. } => Ok(()),
        }
    }

    /// The file a process writes its pid to in order to join the group.
    pub fn procs_file(&self) -> Option<PathBuf> {
        match self {
            Throttle::CgroupV2 { dir } | Throttle::CgroupV1 { dir } => Some(dir.join("cgroup.procs")),
            Throttle::Unthrottled { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Throttle::CgroupV2 { dir } => {
                format!("agent CPU bandwidth throttled to f/f_max via cgroup v2 cpu.max ({})", dir.display())
            }
            Throttle::CgroupV1 { dir } => {
                format!("agent CPU bandwidth throttled to f/f_max via cgroup v1 cpu.cfs_quota_us ({})", dir.display())
            }
            Throttle::Unthrottled { reason } => {
                format!("agent NOT throttled (runs at host speed at every level): no writable cgroup ({reason})")
            }
        }
    }

    fn remove(&self) {
        if let Throttle::CgroupV2 { dir } | Throttle::CgroupV1 { dir } = self {
            // Fails while processes remain; they are gone once the agent has quit.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Options of a simulated board.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Used for the cgroup name.
    pub name: String,
    pub power: PowerParams,
    /// Agent threads the CPU quota is scaled for.
    pub agent_threads: u32,
    /// Start the PPK2 emulator.
    pub with_monitor: bool,
}

/// Live simulator state shared with the ticker and the power model.
#[derive(Debug, Default)]
struct SimState {
    freq_khz: AtomicU64,
    /// CPU utilisation x 1e6.
    util_micro: AtomicU64,
    agent_pid: AtomicU64,
}

/// A running simulated board.
#[derive(Debug)]
pub struct Simulator {
    root: PathBuf,
    fake: FakeSysfs,
    pidfile: PathBuf,
    throttle: Throttle,
    power: PowerParams,
    state: Arc<SimState>,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
    emulator: Option<Ppk2Emulator>,
}

/// Records the agent's pid in "$1", joins the cgroup whose procs file is "$2" (if any), then
/// runs the rest of the arguments in its place.
const RUN_AGENT_SCRIPT: &str =
    r#"echo $$ > "$1"; if [ -n "$2" ]; then echo $$ > "$2" || exit 97; fi; shift 2; exec "$@""#;

/// Ticker period: how quickly the fake kernel reacts to sysfs writes.
const TICK: Duration = Duration::from_millis(5);

impl Simulator {
    /// Lays out the fake sysfs under `root/sys`, sets up throttling, starts the ticker and
    /// (with `with_monitor`) the PPK2 emulator.
    pub fn start(root: &Path, opts: SimOptions) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let sys = root.join("sys");
        let fake = FakeCpufreqTree::raspberry_pi_4().write(&sys)?;
        let pidfile = root.join("agent.pid");
        let _ = std::fs::remove_file(&pidfile);
        let throttle = Throttle::setup(&format!("hil-sim-{}-{}", opts.name, std::process::id()));
        let state = Arc::new(SimState::default());
        let policy = fake.policy_ids()[0];
        let cur: u64 = fake.read_policy_attr(policy, "scaling_cur_freq")?.parse().unwrap_or(600_000);
        state.freq_khz.store(cur, Ordering::SeqCst);

        let emulator = if opts.with_monitor {
            let st = state.clone();
            let power = opts.power;
            let model = move |_t: f64, supply_v: f64| {
                let f = st.freq_khz.load(Ordering::Relaxed);
                let u = st.util_micro.load(Ordering::Relaxed) as f64 / 1e6;
                power.power_w(f, u) / supply_v.max(0.8)
            };
            let config =
                EmulatorConfig { initial_vdd_mv: (opts.power.supply_v * 1000.0) as u32, ..EmulatorConfig::default() };
            let mut emu = Ppk2Emulator::spawn(model, config)?;
            emu.link_at(&root.join("ppk2"))?;
            Some(emu)
        } else {
            None
        };

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (fake, state, stop, throttle, pidfile) =
                (fake.clone(), state.clone(), stop.clone(), throttle.clone(), pidfile.clone());
            let (power, threads) = (opts.power, opts.agent_threads);
            std::thread::Builder::new()
                .name("sim-kernel".into())
                .spawn(move || Ticker::new(fake, state, throttle, pidfile, power, threads).run(&stop))?
        };
        let sim = Self {
            root: root.to_path_buf(),
            fake,
            pidfile,
            throttle,
            power: opts.power,
            state,
            stop,
            ticker: Some(ticker),
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

    /// The PPK2 emulator's port (a stable symlink `root/ppk2`).
    pub fn ppk2_port(&self) -> Option<PathBuf> {
        self.emulator.as_ref().map(|_| self.root.join("ppk2"))
    }

    /// The program prefix that starts the agent inside the simulator: it records the agent's
    /// pid (for the utilisation the power model uses) and joins the throttling cgroup, then
    /// `exec`s the real command. The script is constant; paths are positional arguments.
    pub fn agent_exec_prefix(&self) -> Vec<String> {
        vec![
            "/bin/sh".into(),
            "-c".into(),
            RUN_AGENT_SCRIPT.into(),
            "hil-sim-agent".into(),
            self.pidfile.to_string_lossy().into_owned(),
            self.throttle.procs_file().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        ]
    }

    /// `root/run-agent`: the same wrapper as a script, for boards reached over SSH that use a
    /// simulator started by `hil sim serve` (`exec_prefix: [ROOT/run-agent, ...]`).
    pub fn run_agent_script(&self) -> PathBuf {
        self.root.join("run-agent")
    }

    fn write_run_agent_script(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let procs = self.throttle.procs_file().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let text = format!(
            "#!/bin/sh\n# Written by hil's simulator: runs \"$@\" as the simulated board's agent.\nset -- {} {} \"$@\"\n{}\n",
            crate::board::quote::shell_quote(&self.pidfile.to_string_lossy()),
            crate::board::quote::shell_quote(&procs),
            RUN_AGENT_SCRIPT
        );
        let path = self.run_agent_script();
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
    }

    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    pub fn power_params(&self) -> PowerParams {
        self.power
    }

    /// The simulated frequency now.
    pub fn freq_khz(&self) -> u64 {
        self.state.freq_khz.load(Ordering::SeqCst)
    }

    /// One line for run.json and reports.
    pub fn describe(&self) -> String {
        format!(
            "SIMULATED board: fake sysfs at {} (RPi-4-like policy 600-1500 MHz, V 0.80-1.00 V assumed); {}; \
             power model P = {:.2} W + {:.1e} W/(V^2 Hz) * V^2 * f * utilisation, read through an emulated PPK2 at {:.1} V",
            self.fake.root().display(),
            self.throttle.describe(),
            self.power.static_w,
            self.power.dyn_coeff,
            self.power.supply_v
        )
    }

    /// Stops the ticker and the emulator and removes the cgroup.
    pub fn shutdown(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Some(e) = self.emulator.take() {
            e.shutdown();
        }
        self.throttle.remove();
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The fake kernel's loop.
struct Ticker {
    fake: FakeSysfs,
    state: Arc<SimState>,
    throttle: Throttle,
    pidfile: PathBuf,
    power: PowerParams,
    threads: u32,
    /// Residency per available frequency, in seconds (written as 10 ms ticks).
    residency: Vec<(u64, f64)>,
    temp_c: f64,
    last_cpu_ns: Option<(u64, Instant)>,
    util: f64,
}

impl Ticker {
    fn new(
        fake: FakeSysfs,
        state: Arc<SimState>,
        throttle: Throttle,
        pidfile: PathBuf,
        power: PowerParams,
        threads: u32,
    ) -> Self {
        let policy = fake.policy_ids()[0];
        let residency = fake
            .read_policy_attr(policy, "scaling_available_frequencies")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .map(|f| (f, 0.0))
            .collect();
        Self { fake, state, throttle, pidfile, power, threads, residency, temp_c: 45.0, last_cpu_ns: None, util: 0.0 }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut last = Instant::now();
        let mut applied_fraction = -1.0;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            let now = Instant::now();
            let dt = now.duration_since(last).as_secs_f64();
            last = now;
            self.sample_utilisation(now);
            let freq = self.step_cpufreq(dt);
            let max = self.residency.iter().map(|r| r.0).max().unwrap_or(freq).max(1);
            let fraction = freq as f64 / max as f64;
            if (fraction - applied_fraction).abs() > 1e-9 && self.throttle.set_fraction(fraction, self.threads).is_ok()
            {
                applied_fraction = fraction;
            }
            self.step_thermal(freq, dt);
        }
    }

    /// Agent CPU time from every thread's schedstat (ns on CPU), as a utilisation over the tick.
    fn sample_utilisation(&mut self, now: Instant) {
        let pid = std::fs::read_to_string(&self.pidfile).ok().and_then(|p| p.trim().parse::<u64>().ok());
        let Some(pid) = pid else {
            self.util = 0.0;
            self.state.util_micro.store(0, Ordering::Relaxed);
            return;
        };
        if self.state.agent_pid.swap(pid, Ordering::Relaxed) != pid {
            self.last_cpu_ns = None;
        }
        let Some(cpu_ns) = process_cpu_ns(pid) else {
            self.util = 0.0;
            self.state.util_micro.store(0, Ordering::Relaxed);
            return;
        };
        if let Some((prev_ns, prev_t)) = self.last_cpu_ns {
            let wall = now.duration_since(prev_t).as_nanos().max(1) as f64;
            let inst = cpu_ns.saturating_sub(prev_ns) as f64 / wall;
            // Smooth over ~20 ms so the 10 ms CFS periods do not alias into the power trace.
            self.util += (inst - self.util) * 0.25;
        }
        self.last_cpu_ns = Some((cpu_ns, now));
        self.state.util_micro.store((self.util.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Applies governor semantics; returns the frequency now in force.
    fn step_cpufreq(&mut self, dt: f64) -> u64 {
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
            let want = governed_frequency(&governor, min, max, num("scaling_setspeed"), cur, self.util > 0.3);
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
        let dynamic = self.power.power_w(freq, self.util) - self.power.static_w;
        let target = 45.0 + 20.0 * dynamic;
        self.temp_c += (target - self.temp_c) * (dt / 5.0).min(1.0);
        for zone in 0..self.fake.thermal_zone_count() {
            let _ = atomic_write(&self.fake.thermal_file(zone, "temp"), &((self.temp_c * 1000.0) as i64).to_string());
        }
    }
}

/// CPU time of all threads of `pid` in ns (`/proc/<pid>/task/*/schedstat`, first field).
pub fn process_cpu_ns(pid: u64) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Some(total)
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
    fn power_rises_with_frequency_voltage_and_load() {
        let p = PowerParams::default();
        assert_eq!(p.power_w(1_500_000, 0.0), 2.0);
        assert!((p.power_w(1_500_000, 1.0) - 3.2).abs() < 1e-9);
        let low = p.power_w(600_000, 1.0) - p.static_w;
        // 0.6/1.5 of the frequency at (0.8/1.0)^2 of the voltage squared.
        assert!((low - 1.2 * 0.4 * 0.64).abs() < 1e-9);
        assert_eq!(rpi4_voltage(600_000), 0.80);
        assert_eq!(rpi4_voltage(1_500_000), 1.00);
    }
}
