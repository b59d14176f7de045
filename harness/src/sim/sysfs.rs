//! A fake sysfs tree laid out like the kernel's cpufreq and thermal
//! interfaces, for the simulated board and for tests.
//!
//! [`FakeCpufreqTree`] writes *static* files in the kernel's formats under a
//! root directory (`<root>/devices/system/cpu/cpufreq/policy<N>/...`,
//! `<root>/class/thermal/thermal_zone<N>/...`); keeping them consistent
//! while the harness writes to them (the governor's effect on
//! `scaling_cur_freq`, clamping to the limits) is the simulator's job.
//!
//! ```no_run
//! use harness::sim::sysfs::FakeCpufreqTree;
//! let tree = FakeCpufreqTree::builder()
//!     .policy(&[0, 1, 2, 3], &[600_000, 1_000_000, 1_500_000], &["ondemand", "userspace"])
//!     .thermal_zone("cpu-thermal", 45_000)
//!     .write("/tmp/fake-sys".as_ref())
//!     .unwrap();
//! assert_eq!(tree.policy_ids(), &[0]);
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::scenario::{BoardFacts, PolicyFacts, ThermalZoneFacts};

/// Governors preferred as the initial one, in order (what distributions
/// default to); `userspace` is never the default.
const DEFAULT_GOVERNOR_PREFERENCE: [&str; 4] = ["schedutil", "ondemand", "conservative", "performance"];

/// One cpufreq policy of the fake tree. Built with [`FakePolicy::new`] and
/// its `#[must_use]` setters; defaults describe an idle board just booted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakePolicy {
    /// The policy's CPUs; the policy is named after the lowest.
    pub cpus: Vec<u32>,
    /// Frequency table in kHz, ascending.
    pub frequencies_khz: Vec<u64>,
    pub governors: Vec<String>,
    pub governor: String,
    pub min_khz: u64,
    pub max_khz: u64,
    pub cur_khz: u64,
    /// Write `scaling_available_frequencies` (some drivers do not).
    pub list_available_frequencies: bool,
    /// Write `stats/time_in_state` (kernels without `CONFIG_CPU_FREQ_STAT` do not).
    pub time_in_state: bool,
    /// Ticks (10 ms) per frequency for `stats/time_in_state`, zeros by default.
    pub time_in_state_ticks: Vec<u64>,
    /// Write `cpuinfo_cur_freq` (absent under some drivers).
    pub cpuinfo_cur_freq: bool,
}

impl FakePolicy {
    /// A policy over `cpus` with the frequency table `frequencies_khz` and
    /// the governors offered; limits span the table, the current frequency is
    /// the lowest (idle), the governor is the first of schedutil, ondemand,
    /// conservative, performance offered (else the first listed).
    pub fn new(cpus: &[u32], frequencies_khz: &[u64], governors: &[&str]) -> Self {
        let mut cpus = cpus.to_vec();
        cpus.sort_unstable();
        cpus.dedup();
        let mut freqs = frequencies_khz.to_vec();
        freqs.sort_unstable();
        freqs.dedup();
        let governor = DEFAULT_GOVERNOR_PREFERENCE
            .iter()
            .find(|g| governors.contains(*g))
            .or(governors.first())
            .map(|g| g.to_string())
            .unwrap_or_default();
        let min_khz = freqs.first().copied().unwrap_or(0);
        let max_khz = freqs.last().copied().unwrap_or(0);
        Self {
            cpus,
            time_in_state_ticks: vec![0; freqs.len()],
            frequencies_khz: freqs,
            governors: governors.iter().map(|g| g.to_string()).collect(),
            governor,
            min_khz,
            max_khz,
            cur_khz: min_khz,
            list_available_frequencies: true,
            time_in_state: true,
            cpuinfo_cur_freq: true,
        }
    }

    #[must_use]
    pub fn governor(mut self, governor: &str) -> Self {
        self.governor = governor.to_string();
        self
    }

    #[must_use]
    pub fn limits(mut self, min_khz: u64, max_khz: u64) -> Self {
        self.min_khz = min_khz;
        self.max_khz = max_khz;
        self
    }

    #[must_use]
    pub fn cur_khz(mut self, khz: u64) -> Self {
        self.cur_khz = khz;
        self
    }

    /// No `scaling_available_frequencies`: readers must fall back to
    /// `stats/time_in_state`.
    #[must_use]
    pub fn without_available_frequencies(mut self) -> Self {
        self.list_available_frequencies = false;
        self
    }

    #[must_use]
    pub fn without_time_in_state(mut self) -> Self {
        self.time_in_state = false;
        self
    }

    #[must_use]
    pub fn without_cpuinfo_cur_freq(mut self) -> Self {
        self.cpuinfo_cur_freq = false;
        self
    }

    /// Ticks per frequency (same order as the table).
    #[must_use]
    pub fn time_in_state_ticks(mut self, ticks: &[u64]) -> Self {
        self.time_in_state_ticks = ticks.to_vec();
        self
    }

    /// `policy<N>`'s `N`: its lowest CPU.
    pub fn id(&self) -> u32 {
        self.cpus.first().copied().unwrap_or(0)
    }

    fn validate(&self) -> Result<(), String> {
        let id = self.id();
        if self.cpus.is_empty() {
            return Err("a policy needs at least one CPU".into());
        }
        if self.frequencies_khz.is_empty() {
            return Err(format!("policy{id}: empty frequency table"));
        }
        if self.governors.is_empty() || self.governor.is_empty() {
            return Err(format!("policy{id}: no governors"));
        }
        if self.min_khz > self.max_khz {
            return Err(format!("policy{id}: min {} kHz above max {} kHz", self.min_khz, self.max_khz));
        }
        if self.time_in_state_ticks.len() != self.frequencies_khz.len() {
            return Err(format!(
                "policy{id}: {} time_in_state entries for {} frequencies",
                self.time_in_state_ticks.len(),
                self.frequencies_khz.len()
            ));
        }
        Ok(())
    }
}

/// One thermal zone of the fake tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeThermalZone {
    pub zone_type: String,
    pub temp_millicelsius: i64,
}

/// A fake cpufreq + thermal tree, ready to be written under a root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeCpufreqTree {
    pub policies: Vec<FakePolicy>,
    pub thermal_zones: Vec<FakeThermalZone>,
}

/// Builds a [`FakeCpufreqTree`].
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct FakeCpufreqTreeBuilder {
    tree: FakeCpufreqTree,
}

impl FakeCpufreqTreeBuilder {
    /// Adds a policy with defaults (see [`FakePolicy::new`]).
    pub fn policy(self, cpus: &[u32], frequencies_khz: &[u64], governors: &[&str]) -> Self {
        self.policy_with(FakePolicy::new(cpus, frequencies_khz, governors))
    }

    /// Adds a policy configured by the caller.
    pub fn policy_with(mut self, policy: FakePolicy) -> Self {
        self.tree.policies.push(policy);
        self
    }

    /// Adds `thermal_zone<N>` (numbered in the order added).
    pub fn thermal_zone(mut self, zone_type: &str, temp_millicelsius: i64) -> Self {
        self.tree.thermal_zones.push(FakeThermalZone { zone_type: zone_type.to_string(), temp_millicelsius });
        self
    }

    pub fn build(self) -> FakeCpufreqTree {
        self.tree
    }

    /// Builds and writes the tree under `root` (see [`FakeCpufreqTree::write`]).
    pub fn write(self, root: &Path) -> io::Result<FakeSysfs> {
        self.tree.write(root)
    }
}

/// Raspberry Pi 4's cpufreq table: 600 to 1500 MHz in 100 MHz steps (the
/// `raspberrypi-cpufreq` driver's levels on a stock 1.5 GHz BCM2711).
pub const RPI4_FREQUENCIES_KHZ: [u64; 10] =
    [600_000, 700_000, 800_000, 900_000, 1_000_000, 1_100_000, 1_200_000, 1_300_000, 1_400_000, 1_500_000];

/// The governors a Raspberry Pi OS kernel offers.
pub const RPI4_GOVERNORS: [&str; 6] =
    ["conservative", "ondemand", "userspace", "powersave", "performance", "schedutil"];

impl FakeCpufreqTree {
    pub fn builder() -> FakeCpufreqTreeBuilder {
        FakeCpufreqTreeBuilder::default()
    }

    /// What a probe of this tree finds, on a host with `cpu_count` CPUs (the CPUs are the
    /// host's: a simulated board's agent runs here), so a scenario can be checked against a
    /// simulated board before anything is started.
    pub fn facts(&self, cpu_count: usize) -> BoardFacts {
        BoardFacts {
            cpu_count,
            policies: self
                .policies
                .iter()
                .map(|p| PolicyFacts {
                    name: format!("policy{}", p.id()),
                    related_cpus: p.cpus.iter().map(|&c| c as usize).collect(),
                    available_khz: p.frequencies_khz.clone(),
                    governors: p.governors.clone(),
                })
                .collect(),
            thermal_zones: self
                .thermal_zones
                .iter()
                .enumerate()
                .map(|(i, z)| ThermalZoneFacts { name: format!("thermal_zone{i}"), kind: z.zone_type.clone() })
                .collect(),
        }
    }

    /// A Raspberry Pi 4 class board: one policy over CPUs 0-3 with the RPi 4
    /// table and governors (`ondemand`, as Raspberry Pi OS boots), and a
    /// `cpu-thermal` zone at 45 °C.
    pub fn raspberry_pi_4() -> FakeCpufreqTreeBuilder {
        Self::raspberry_pi_4_on(4)
    }

    /// [`Self::raspberry_pi_4`] with its one policy over CPUs `0..cpus` (a simulated board
    /// runs its agent on this host's CPUs, so its tree names those).
    pub fn raspberry_pi_4_on(cpus: u32) -> FakeCpufreqTreeBuilder {
        let cpus: Vec<u32> = (0..cpus.max(1)).collect();
        Self::builder()
            .policy_with(FakePolicy::new(&cpus, &RPI4_FREQUENCIES_KHZ, &RPI4_GOVERNORS).governor("ondemand"))
            .thermal_zone("cpu-thermal", 45_000)
    }

    /// Writes the tree under `root` (created if needed; existing files are
    /// overwritten): per policy its attributes and `stats/`, the
    /// `cpu<N>/cpufreq` links, `possible`/`present`/`online`, and the thermal
    /// zones. Refuses an inconsistent tree (overlapping CPUs, empty tables).
    pub fn write(&self, root: &Path) -> io::Result<FakeSysfs> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        let mut all_cpus: Vec<u32> = Vec::new();
        for p in &self.policies {
            p.validate().map_err(invalid)?;
            if let Some(cpu) = p.cpus.iter().find(|c| all_cpus.contains(c)) {
                return Err(invalid(format!("CPU {cpu} is in two policies")));
            }
            all_cpus.extend(&p.cpus);
        }
        let cpu_dir = root.join("devices/system/cpu");
        let cpufreq_dir = cpu_dir.join("cpufreq");
        fs::create_dir_all(&cpufreq_dir)?;
        let max_cpu = all_cpus.iter().copied().max();
        if let Some(max_cpu) = max_cpu {
            let range = if max_cpu == 0 { "0".to_string() } else { format!("0-{max_cpu}") };
            for name in ["possible", "present", "online"] {
                write_attr(&cpu_dir.join(name), &range)?;
            }
        }
        let mut policy_ids = Vec::new();
        for p in &self.policies {
            let id = p.id();
            policy_ids.push(id);
            let dir = cpufreq_dir.join(format!("policy{id}"));
            fs::create_dir_all(dir.join("stats"))?;
            let cpus = p.cpus.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
            write_attr(&dir.join("related_cpus"), &cpus)?;
            write_attr(&dir.join("affected_cpus"), &cpus)?;
            write_attr(&dir.join("cpuinfo_min_freq"), &p.frequencies_khz[0].to_string())?;
            write_attr(&dir.join("cpuinfo_max_freq"), &p.frequencies_khz[p.frequencies_khz.len() - 1].to_string())?;
            // 355 us, the transition latency the RPi 4 reports; irrelevant to the harness.
            write_attr(&dir.join("cpuinfo_transition_latency"), "355000")?;
            write_attr(&dir.join("scaling_driver"), "hil-sim")?;
            // The kernel ends both lists with a space before the newline.
            let freqs: String = p.frequencies_khz.iter().map(|k| format!("{k} ")).collect();
            if p.list_available_frequencies {
                write_attr(&dir.join("scaling_available_frequencies"), &freqs)?;
            } else {
                remove_if_present(&dir.join("scaling_available_frequencies"))?;
            }
            let govs: String = p.governors.iter().map(|g| format!("{g} ")).collect();
            write_attr(&dir.join("scaling_available_governors"), &govs)?;
            write_attr(&dir.join("scaling_governor"), &p.governor)?;
            write_attr(&dir.join("scaling_min_freq"), &p.min_khz.to_string())?;
            write_attr(&dir.join("scaling_max_freq"), &p.max_khz.to_string())?;
            write_attr(&dir.join("scaling_cur_freq"), &p.cur_khz.to_string())?;
            let setspeed = if p.governor == "userspace" { p.cur_khz.to_string() } else { "<unsupported>".into() };
            write_attr(&dir.join("scaling_setspeed"), &setspeed)?;
            if p.cpuinfo_cur_freq {
                write_attr(&dir.join("cpuinfo_cur_freq"), &p.cur_khz.to_string())?;
            } else {
                remove_if_present(&dir.join("cpuinfo_cur_freq"))?;
            }
            if p.time_in_state {
                let rows: String =
                    p.frequencies_khz.iter().zip(&p.time_in_state_ticks).map(|(k, t)| format!("{k} {t}\n")).collect();
                fs::write(dir.join("stats/time_in_state"), rows)?;
                write_attr(&dir.join("stats/total_trans"), "0")?;
            } else {
                remove_if_present(&dir.join("stats/time_in_state"))?;
            }
            for cpu in &p.cpus {
                let cpu_cpufreq = cpu_dir.join(format!("cpu{cpu}"));
                fs::create_dir_all(&cpu_cpufreq)?;
                let link = cpu_cpufreq.join("cpufreq");
                remove_if_present(&link)?;
                std::os::unix::fs::symlink(format!("../cpufreq/policy{id}"), &link)?;
            }
        }
        let thermal_dir = root.join("class/thermal");
        for (index, zone) in self.thermal_zones.iter().enumerate() {
            let dir = thermal_dir.join(format!("thermal_zone{index}"));
            fs::create_dir_all(&dir)?;
            write_attr(&dir.join("type"), &zone.zone_type)?;
            write_attr(&dir.join("temp"), &zone.temp_millicelsius.to_string())?;
        }
        Ok(FakeSysfs { root: root.to_path_buf(), policy_ids, thermal_zones: self.thermal_zones.len() as u32 })
    }
}

fn write_attr(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, format!("{value}\n"))
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A written fake tree: where its files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeSysfs {
    root: PathBuf,
    policy_ids: Vec<u32>,
    thermal_zones: u32,
}

impl FakeSysfs {
    /// The directory to use as the board's `sysfs_root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root` as the string a scenario's `sysfs_root` takes.
    pub fn root_str(&self) -> String {
        self.root.to_string_lossy().into_owned()
    }

    pub fn policy_ids(&self) -> &[u32] {
        &self.policy_ids
    }

    pub fn thermal_zone_count(&self) -> u32 {
        self.thermal_zones
    }

    /// `<root>/devices/system/cpu/cpufreq/policy<id>/<file>`.
    pub fn policy_file(&self, id: u32, file: &str) -> PathBuf {
        self.root.join(format!("devices/system/cpu/cpufreq/policy{id}/{file}"))
    }

    /// `<root>/class/thermal/thermal_zone<index>/<file>`.
    pub fn thermal_file(&self, index: u32, file: &str) -> PathBuf {
        self.root.join(format!("class/thermal/thermal_zone{index}/{file}"))
    }

    /// Reads one policy attribute, trimmed (for the simulator and tests).
    pub fn read_policy_attr(&self, id: u32, file: &str) -> io::Result<String> {
        Ok(fs::read_to_string(self.policy_file(id, file))?.trim().to_string())
    }

    /// Overwrites one policy attribute (newline added, as the kernel prints).
    pub fn write_policy_attr(&self, id: u32, file: &str, value: &str) -> io::Result<()> {
        write_attr(&self.policy_file(id, file), value)
    }

    /// Sets a thermal zone's temperature.
    pub fn set_temp(&self, index: u32, temp_millicelsius: i64) -> io::Result<()> {
        write_attr(&self.thermal_file(index, "temp"), &temp_millicelsius.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_kernel_formats() {
        let dir = tempfile::tempdir().unwrap();
        let tree = FakeCpufreqTree::builder()
            .policy(&[0, 1], &[1_000_000, 500_000], &["userspace", "ondemand"])
            .policy_with(
                FakePolicy::new(&[2, 3], &[800_000, 1_600_000], &["performance"]).without_available_frequencies(),
            )
            .thermal_zone("soc-thermal", 51_000)
            .write(dir.path())
            .unwrap();
        assert_eq!(tree.policy_ids(), &[0, 2]);
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert_eq!(read(&tree.policy_file(0, "scaling_available_frequencies")), "500000 1000000 \n");
        assert_eq!(read(&tree.policy_file(0, "related_cpus")), "0 1\n");
        assert_eq!(tree.read_policy_attr(0, "scaling_governor").unwrap(), "ondemand");
        assert_eq!(tree.read_policy_attr(0, "scaling_setspeed").unwrap(), "<unsupported>");
        assert_eq!(read(&tree.policy_file(0, "stats/time_in_state")), "500000 0\n1000000 0\n");
        assert!(!tree.policy_file(2, "scaling_available_frequencies").exists());
        assert_eq!(tree.read_policy_attr(2, "scaling_governor").unwrap(), "performance");
        assert_eq!(read(&dir.path().join("devices/system/cpu/possible")), "0-3\n");
        assert_eq!(
            fs::read_link(dir.path().join("devices/system/cpu/cpu3/cpufreq")).unwrap(),
            PathBuf::from("../cpufreq/policy2")
        );
        assert_eq!(
            read(&tree.policy_file(2, "related_cpus")),
            read(&dir.path().join("devices/system/cpu/cpu3/cpufreq/related_cpus"))
        );
        assert_eq!(read(&tree.thermal_file(0, "type")), "soc-thermal\n");
        tree.set_temp(0, 40_000).unwrap();
        assert_eq!(read(&tree.thermal_file(0, "temp")), "40000\n");
        // Rewriting over an existing tree works (links are replaced).
        FakeCpufreqTree::raspberry_pi_4().write(dir.path()).unwrap();
    }

    #[test]
    fn refuses_inconsistent_trees() {
        let dir = tempfile::tempdir().unwrap();
        let err = FakeCpufreqTree::builder()
            .policy(&[0, 1], &[600_000], &["ondemand"])
            .policy(&[1, 2], &[600_000], &["ondemand"])
            .write(dir.path())
            .unwrap_err();
        assert!(err.to_string().contains("CPU 1"), "{err}");
        let err = FakeCpufreqTree::builder().policy(&[0], &[], &["ondemand"]).write(dir.path()).unwrap_err();
        assert!(err.to_string().contains("empty frequency table"), "{err}");
        let err = FakeCpufreqTree::builder()
            .policy_with(FakePolicy::new(&[0], &[600_000, 700_000], &["ondemand"]).limits(700_000, 600_000))
            .write(dir.path())
            .unwrap_err();
        assert!(err.to_string().contains("above max"), "{err}");
    }
}
