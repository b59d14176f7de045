//! `hil board probe`: what a board is (architecture, CPU, memory, kernel)
//! and what it offers for DVFS (cpufreq policies, thermal zones).
//!
//! `/proc` is read at its usual place through the board transport; the sysfs
//! part (cpufreq, thermal) under the scenario's `sysfs_root`, so the
//! simulated board probes its fake tree (and the host's `/proc`). Parsing is
//! pure ([`parse_cpuinfo`], [`parse_meminfo`]); the report serialises to JSON
//! (`--json`, and `run.json`) and prints for humans through `Display`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::board::{Board, ErrorKind, PROC_FILE_LIMIT, SYSFS_ATTRIBUTE_LIMIT};
use crate::dvfs::{
    discover_policies, list_thermal_zones, read_settings, CpufreqPolicy, DvfsError, DvfsErrorKind, FrequencySource,
    Sysfs, ThermalZone,
};

/// Timeout for `uname`.
const UNAME_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything `hil board probe` reports about one board.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub board: String,
    /// `"ssh"` or `"local"`.
    pub transport: String,
    /// `uname -m`, e.g. `aarch64`.
    pub arch: String,
    /// `uname -r`.
    pub kernel: String,
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    /// Where cpufreq and thermal were read.
    pub sysfs_root: String,
    pub cpufreq: Vec<PolicyProbe>,
    pub thermal_zones: Vec<ThermalZone>,
    /// Things a user should know (no cpufreq driver, no thermal zones, ...).
    pub warnings: Vec<String>,
    /// The simulator's marker (`hil-simulated.json` at the sysfs root, left by `hil sim serve` or
    /// a `sim: true` board): its contents when present. A board with it is simulated whatever the
    /// scenario says.
    #[serde(default)]
    pub simulated: Option<serde_json::Value>,
}

/// The file the simulator leaves at the root of its fake sysfs tree.
pub const SIM_MARKER: &str = "hil-simulated.json";

/// The CPU as `/proc/cpuinfo` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// A readable model: `model name` on x86, the cores' names from
    /// `CPU implementer`/`CPU part` on ARM (`4x ARM Cortex-A72`,
    /// `4x ARM Cortex-A55 + 4x ARM Cortex-A76` on big.LITTLE).
    pub model: Option<String>,
    /// The `Hardware` line (SoC on 32-bit ARM kernels and some vendor kernels).
    pub hardware: Option<String>,
    /// The `Model` line (Raspberry Pi kernels name the board there).
    pub board_model: Option<String>,
    /// Logical CPUs listed (`processor` entries; online CPUs only).
    pub cores: u32,
    /// Cores per kind, in order of first appearance.
    pub core_kinds: Vec<CoreKind>,
}

/// A group of identical cores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreKind {
    pub name: String,
    pub count: u32,
}

/// `/proc/meminfo` in KiB.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    pub total_kib: u64,
    /// `MemAvailable` (kernels since 3.14).
    pub available_kib: Option<u64>,
}

/// A cpufreq policy with its settings at probe time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyProbe {
    #[serde(flatten)]
    pub policy: CpufreqPolicy,
    pub governor: String,
    pub min_khz: u64,
    pub max_khz: u64,
    pub setspeed_khz: Option<u64>,
    /// `scaling_cur_freq`, where readable.
    pub cur_khz: Option<u64>,
}

/// A probe failure naming the board and what was being read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("board {board}: probing {what}: {detail}")]
    Board { board: String, kind: ErrorKind, what: String, detail: String },
    #[error(transparent)]
    Dvfs(#[from] DvfsError),
}

impl ProbeError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ProbeError::Board { kind, .. } => kind.is_retryable(),
            ProbeError::Dvfs(e) => e.is_retryable(),
        }
    }
}

/// Probes `board`: `/proc` and `uname` as they are, cpufreq and thermal under
/// `sysfs_root`. A board without cpufreq or thermal zones still probes (with
/// a warning); a transport failure or an unparseable file is an error.
pub fn probe(board: &mut dyn Board, sysfs_root: &str) -> Result<ProbeReport, ProbeError> {
    let arch = uname(board, "-m")?;
    let kernel = uname(board, "-r")?;
    let cpuinfo = read_proc(board, "/proc/cpuinfo")?;
    let cpu = parse_cpuinfo(&cpuinfo);
    let meminfo = read_proc(board, "/proc/meminfo")?;
    let memory = parse_meminfo(&meminfo).map_err(|detail| ProbeError::Board {
        board: board.name().to_string(),
        kind: ErrorKind::Remote,
        what: "/proc/meminfo".into(),
        detail,
    })?;

    let sysfs = Sysfs::new(sysfs_root, false);
    let mut warnings = Vec::new();
    let policies = match discover_policies(board, &sysfs) {
        Ok(p) => p,
        Err(e) if e.kind == DvfsErrorKind::NoPolicy => {
            warnings.push(format!("no cpufreq policies under {}: frequencies cannot be pinned", sysfs.cpufreq_dir()));
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    let mut cpufreq = Vec::with_capacity(policies.len());
    for policy in policies {
        let settings = read_settings(board, &sysfs, policy.id)?;
        let cur_path = sysfs.policy_path(policy.id, "scaling_cur_freq");
        let cur_khz = match board.read_file_limited(&cur_path, SYSFS_ATTRIBUTE_LIMIT) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).trim().parse().ok(),
            Err(_) => None,
        };
        if policy.frequencies_from == FrequencySource::Unknown {
            warnings.push(format!(
                "policy{}: no frequency table (neither scaling_available_frequencies nor stats/time_in_state)",
                policy.id
            ));
        }
        cpufreq.push(PolicyProbe {
            policy,
            governor: settings.governor,
            min_khz: settings.min_khz,
            max_khz: settings.max_khz,
            setspeed_khz: settings.setspeed_khz,
            cur_khz,
        });
    }
    let thermal_zones = list_thermal_zones(board, &sysfs)?;
    let marker = format!("{}/{SIM_MARKER}", sysfs.root().trim_end_matches('/'));
    // The marker is a few hundred bytes of JSON in the fake sysfs tree: the same bound as its neighbours.
    let simulated = match board.read_file_limited(&marker, SYSFS_ATTRIBUTE_LIMIT) {
        // Unreadable JSON still marks the board simulated: the file exists only where hil put it.
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        ),
        // So does one too large to read.
        Err(e) if e.kind == ErrorKind::Limit => Some(serde_json::Value::String(e.detail)),
        Err(_) => None,
    };
    if thermal_zones.is_empty() {
        warnings.push(format!("no thermal zones under {}: cool-down waits are impossible", sysfs.thermal_dir()));
    }
    Ok(ProbeReport {
        board: board.name().to_string(),
        transport: board.transport().to_string(),
        arch,
        kernel,
        cpu,
        memory,
        sysfs_root: sysfs.root().to_string(),
        cpufreq,
        thermal_zones,
        warnings,
        simulated,
    })
}

fn uname(board: &mut dyn Board, flag: &str) -> Result<String, ProbeError> {
    let argv = vec!["uname".to_string(), flag.to_string()];
    let what = format!("`uname {flag}`");
    let name = board.name().to_string();
    let err = |kind, detail: String| ProbeError::Board { board: name.clone(), kind, what: what.clone(), detail };
    let out = match board.exec(&argv, UNAME_TIMEOUT) {
        Ok(out) => out,
        Err(e) => return Err(err(e.kind, e.detail)),
    };
    let text = out.stdout_str().trim().to_string();
    if !out.success() || text.is_empty() {
        return Err(err(ErrorKind::Remote, format!("exited with {}: {}", out.status, out.stderr_str().trim())));
    }
    Ok(text)
}

fn read_proc(board: &mut dyn Board, path: &str) -> Result<String, ProbeError> {
    match board.read_file_limited(path, PROC_FILE_LIMIT) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) => Err(ProbeError::Board {
            board: board.name().to_string(),
            kind: e.kind,
            what: path.into(),
            detail: e.detail,
        }),
    }
}

/// Names of ARM cores by `CPU implementer` and `CPU part`, from the Linux
/// kernel's `arch/arm64/include/asm/cputype.h` and util-linux's
/// `sys-utils/lscpu-arm.c`.
fn arm_core_name(implementer: u32, part: u32) -> Option<&'static str> {
    // One table for the agent's `hello` and the probe: the agent's.
    device_agent::sysinfo::known_arm_core(implementer as u64, part as u64)
}

fn arm_implementer_name(implementer: u32) -> Option<&'static str> {
    Some(match implementer {
        0x41 => "ARM",
        0x42 => "Broadcom",
        0x43 => "Cavium",
        0x46 => "Fujitsu",
        0x48 => "HiSilicon",
        0x4e => "NVIDIA",
        0x50 => "APM",
        0x51 => "Qualcomm",
        0x53 => "Samsung",
        0x61 => "Apple",
        0xc0 => "Ampere",
        _ => return None,
    })
}

fn parse_hex_or_dec(text: &str) -> Option<u32> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// A core's name from its `CPU implementer` and `CPU part` fields.
fn arm_core_label(implementer: &str, part: &str) -> String {
    match (parse_hex_or_dec(implementer), parse_hex_or_dec(part)) {
        (Some(i), Some(p)) => match (arm_implementer_name(i), arm_core_name(i, p)) {
            (Some(vendor), Some(core)) => format!("{vendor} {core}"),
            (Some(vendor), None) => format!("{vendor} part {p:#x}"),
            (None, _) => format!("implementer {i:#x} part {p:#x}"),
        },
        _ => format!("implementer {} part {}", implementer.trim(), part.trim()),
    }
}

/// Parses `/proc/cpuinfo` of x86, 32-bit ARM and aarch64 kernels.
///
/// aarch64 kernels print no model name, only per-core `CPU implementer` and
/// `CPU part` numbers, which are mapped to names; 32-bit ARM kernels print a
/// generic `model name` (`ARMv7 Processor rev 3 (v7l)`) or, older ones,
/// `Processor`, so the part numbers win there too when present.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut model_name: Option<String> = None;
    let mut legacy_processor: Option<String> = None;
    // (implementer, part) of the block being read, and the label per core.
    let mut implementer: Option<String> = None;
    let mut labels: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" if value.parse::<u32>().is_ok() => info.cores += 1,
            "Processor" => legacy_processor = legacy_processor.or(Some(value.to_string())),
            "model name" => model_name = model_name.or(Some(value.to_string())),
            "Hardware" => info.hardware = info.hardware.take().or(Some(value.to_string())),
            "Model" => info.board_model = info.board_model.take().or(Some(value.to_string())),
            "CPU implementer" => implementer = Some(value.to_string()),
            "CPU part" => {
                let label = arm_core_label(implementer.as_deref().unwrap_or("?"), value);
                labels.push(label);
            }
            _ => {}
        }
    }
    for label in labels {
        match info.core_kinds.iter_mut().find(|k| k.name == label) {
            Some(kind) => kind.count += 1,
            None => info.core_kinds.push(CoreKind { name: label, count: 1 }),
        }
    }
    info.model = if !info.core_kinds.is_empty() {
        Some(info.core_kinds.iter().map(|k| format!("{}x {}", k.count, k.name)).collect::<Vec<_>>().join(" + "))
    } else {
        model_name.or(legacy_processor)
    };
    if info.cores == 0 {
        // Old 32-bit ARM kernels list one "Processor" line and no per-core blocks.
        info.cores = info.core_kinds.iter().map(|k| k.count).sum::<u32>().max(u32::from(info.model.is_some()));
    }
    info
}

/// Parses `MemTotal` and `MemAvailable` from `/proc/meminfo` (values in kB,
/// which the kernel means as KiB).
pub fn parse_meminfo(text: &str) -> Result<MemoryInfo, String> {
    let field = |name: &str| -> Result<Option<u64>, String> {
        let Some(line) = text.lines().find(|l| l.split(':').next().map(str::trim) == Some(name)) else {
            return Ok(None);
        };
        let value = line.split_once(':').map(|(_, v)| v.trim()).unwrap_or("");
        let number = value.trim_end_matches("kB").trim();
        number.parse().map(Some).map_err(|_| format!("{name}: expected \"<n> kB\", found {value:?}"))
    };
    let total_kib = field("MemTotal")?.ok_or_else(|| "no MemTotal line".to_string())?;
    Ok(MemoryInfo { total_kib, available_kib: field("MemAvailable")? })
}

/// `0 1 2 3 6` -> `0-3,6`.
fn format_cpu_list(cpus: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(",")
}

/// kHz as MHz without trailing zeros (`1500000` -> `1500`, `1512500` -> `1512.5`).
fn format_mhz(khz: u64) -> String {
    if khz.is_multiple_of(1000) {
        (khz / 1000).to_string()
    } else {
        format!("{}", khz as f64 / 1000.0)
    }
}

fn format_celsius(millicelsius: Option<i64>) -> String {
    millicelsius.map_or("unreadable".to_string(), |m| format!("{:.1} °C", m as f64 / 1000.0))
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "board {} ({})", self.board, self.transport)?;
        if self.simulated.is_some() {
            writeln!(f, "  SIMULATED (the sysfs tree carries hil's simulator marker {SIM_MARKER})")?;
        }
        writeln!(f, "  arch      {}", self.arch)?;
        writeln!(f, "  kernel    {}", self.kernel)?;
        let mut cpu = self.cpu.model.clone().unwrap_or_else(|| "unknown".to_string());
        let extra: Vec<&str> =
            [self.cpu.hardware.as_deref(), self.cpu.board_model.as_deref()].into_iter().flatten().collect();
        if !extra.is_empty() {
            cpu = format!("{cpu} ({})", extra.join(", "));
        }
        writeln!(f, "  cpu       {cpu}")?;
        writeln!(f, "  cores     {}", self.cpu.cores)?;
        let mib = |kib: u64| kib / 1024;
        match self.memory.available_kib {
            Some(avail) => {
                writeln!(f, "  memory    {} MiB total, {} MiB available", mib(self.memory.total_kib), mib(avail))?
            }
            None => writeln!(f, "  memory    {} MiB total", mib(self.memory.total_kib))?,
        }
        writeln!(f, "  cpufreq   ({} policies under {})", self.cpufreq.len(), self.sysfs_root)?;
        for p in &self.cpufreq {
            let cur = p.cur_khz.map_or("?".to_string(), format_mhz);
            writeln!(
                f,
                "    policy{:<3} cpus {}  governor {}  min {} MHz  max {} MHz  cur {} MHz",
                p.policy.id,
                format_cpu_list(&p.policy.related_cpus),
                p.governor,
                format_mhz(p.min_khz),
                format_mhz(p.max_khz),
                cur
            )?;
            let source = match p.policy.frequencies_from {
                FrequencySource::ScalingAvailableFrequencies => "scaling_available_frequencies",
                FrequencySource::TimeInState => "stats/time_in_state",
                FrequencySource::Unknown => "none listed",
            };
            let freqs: Vec<String> = p.policy.available_khz.iter().map(|&k| format_mhz(k)).collect();
            writeln!(f, "              levels (MHz, from {source}): {}", freqs.join(" "))?;
            writeln!(f, "              governors: {}", p.policy.available_governors.join(" "))?;
        }
        writeln!(f, "  thermal   ({} zones)", self.thermal_zones.len())?;
        for z in &self.thermal_zones {
            writeln!(f, "    thermal_zone{:<3} {:<20} {}", z.index, z.zone_type, format_celsius(z.temp_millicelsius))?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RPI4_CPUINFO: &str = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n\
CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n\
processor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\nprocessor\t: 2\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n\
processor\t: 3\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n\
Hardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000abcdef\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";

    #[test]
    fn aarch64_cpuinfo_names_cores_from_part_numbers() {
        let info = parse_cpuinfo(RPI4_CPUINFO);
        assert_eq!(info.cores, 4);
        assert_eq!(info.model.as_deref(), Some("4x ARM Cortex-A72"));
        assert_eq!(info.hardware.as_deref(), Some("BCM2835"));
        assert_eq!(info.board_model.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
    }

    #[test]
    fn big_little_cpuinfo_lists_both_kinds() {
        let mut text = String::new();
        for (cpu, part) in [(0, "0xd05"), (1, "0xd05"), (2, "0xd05"), (3, "0xd05"), (4, "0xd0b"), (5, "0xd0b")] {
            text += &format!("processor\t: {cpu}\nCPU implementer\t: 0x41\nCPU part\t: {part}\n\n");
        }
        let info = parse_cpuinfo(&text);
        assert_eq!(info.cores, 6);
        assert_eq!(info.model.as_deref(), Some("4x ARM Cortex-A55 + 2x ARM Cortex-A76"));
        assert_eq!(info.core_kinds.len(), 2);
    }

    /// An Odroid-XU4's `/proc/cpuinfo` under its 32-bit kernel (uname -m armv7l): four Cortex-A7
    /// (part 0xc07) then four Cortex-A15 (0xc0f), `model name : ARMv7 Processor rev 3 (v7l)` on each.
    const XU4_CPUINFO: &str = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nBogoMIPS\t: 84.00\n\
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae\nCPU implementer\t: 0x41\n\
CPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xc07\nCPU revision\t: 3\n\n\
processor\t: 1\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nCPU implementer\t: 0x41\nCPU part\t: 0xc07\n\n\
processor\t: 2\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nCPU implementer\t: 0x41\nCPU part\t: 0xc07\n\n\
processor\t: 3\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nCPU implementer\t: 0x41\nCPU part\t: 0xc07\n\n\
processor\t: 4\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nCPU implementer\t: 0x41\nCPU part\t: 0xc0f\n\n\
processor\t: 5\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nCPU implementer\t: 0x41\nCPU part\t: 0xc0f\n\n\
processor\t: 6\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nCPU implementer\t: 0x41\nCPU part\t: 0xc0f\n\n\
processor\t: 7\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nCPU implementer\t: 0x41\nCPU part\t: 0xc0f\n\n\
Hardware\t: ODROID-XU4\nRevision\t: 0100\nSerial\t\t: 0000000000000000\n";

    #[test]
    fn armv7_big_little_names_the_a7_and_a15_clusters() {
        let info = parse_cpuinfo(XU4_CPUINFO);
        assert_eq!(info.cores, 8);
        assert_eq!(info.model.as_deref(), Some("4x ARM Cortex-A7 + 4x ARM Cortex-A15"));
        assert_eq!(info.hardware.as_deref(), Some("ODROID-XU4"));
        assert_eq!(crate::deploy::target_for_machine("armv7l").unwrap(), "thumbv7neon-unknown-linux-gnueabihf");
    }

    #[test]
    fn x86_and_unknown_parts_and_old_arm32() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\n\
processor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        let info = parse_cpuinfo(x86);
        assert_eq!((info.cores, info.model.as_deref()), (2, Some("Intel(R) Xeon(R) CPU @ 2.20GHz")));
        let kryo = "processor\t: 0\nCPU implementer\t: 0x51\nCPU part\t: 0x805\n";
        assert_eq!(parse_cpuinfo(kryo).model.as_deref(), Some("1x Qualcomm Kryo 4xx Silver"));
        let qcom = "processor\t: 0\nCPU implementer\t: 0x51\nCPU part\t: 0x8ff\n";
        assert_eq!(parse_cpuinfo(qcom).model.as_deref(), Some("1x Qualcomm part 0x8ff"));
        let old = "Processor\t: ARMv6-compatible processor rev 7 (v6l)\nBogoMIPS\t: 697.95\nHardware\t: BCM2708\n";
        let info = parse_cpuinfo(old);
        assert_eq!(info.model.as_deref(), Some("ARMv6-compatible processor rev 7 (v6l)"));
        assert_eq!(info.cores, 1);
        assert_eq!(info.hardware.as_deref(), Some("BCM2708"));
    }

    #[test]
    fn meminfo_total_and_available() {
        let m = parse_meminfo("MemTotal:        3884324 kB\nMemFree:  100 kB\nMemAvailable:    3412000 kB\n").unwrap();
        assert_eq!(m, MemoryInfo { total_kib: 3_884_324, available_kib: Some(3_412_000) });
        let old = parse_meminfo("MemTotal: 1000 kB\nMemFree: 10 kB\n").unwrap();
        assert_eq!(old.available_kib, None);
        assert!(parse_meminfo("MemFree: 10 kB\n").unwrap_err().contains("MemTotal"));
        assert!(parse_meminfo("MemTotal: lots\n").unwrap_err().contains("lots"));
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(format_cpu_list(&[4]), "4");
        assert_eq!(format_mhz(1_500_000), "1500");
        assert_eq!(format_mhz(1_512_500), "1512.5");
        assert_eq!(format_celsius(Some(47_300)), "47.3 °C");
    }
}
