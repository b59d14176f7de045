//! What the board is: CPU model, memory, kernel, online cores.
//!
//! The parsers are pure functions over the text of `/proc/cpuinfo` and
//! `/proc/meminfo`, tested against captured files; the `read_*` functions are
//! the thin I/O edge.

use crate::protocol::KernelInfo;
use std::collections::BTreeMap;
use std::ffi::CStr;

/// What `/proc/cpuinfo` says about the CPU and the board.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// A readable CPU model; see [`parse_cpuinfo`].
    pub model: Option<String>,
    /// The board (`Model` or `Hardware` line on ARM).
    pub board: Option<String>,
    /// Number of `processor` entries.
    pub processors: usize,
}

/// Parses `/proc/cpuinfo`.
///
/// x86 (and some ARM kernels) give `model name` per processor. Most arm64
/// kernels do not: they give `CPU implementer` and `CPU part` per core, which
/// are decoded with [`arm_core_name`]. Distinct models are listed in order of
/// first appearance, with counts when a board mixes cores (big.LITTLE):
/// `4x Cortex-A55 + 4x Cortex-A76`.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    // Per processor: (model name, implementer, part).
    let mut cores: Vec<(Option<String>, Option<u64>, Option<u64>)> = Vec::new();
    let mut board_model = None;
    let mut hardware = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => cores.push((None, None, None)),
            "model name" | "cpu model" => {
                if let Some(core) = cores.last_mut() {
                    core.0 = Some(value.to_owned());
                } else {
                    cores.push((Some(value.to_owned()), None, None));
                }
            }
            "CPU implementer" => {
                if let Some(core) = cores.last_mut() {
                    core.1 = parse_hex(value);
                }
            }
            "CPU part" => {
                if let Some(core) = cores.last_mut() {
                    core.2 = parse_hex(value);
                }
            }
            "Model" if !value.is_empty() => board_model = Some(value.to_owned()),
            "Hardware" if !value.is_empty() => hardware = Some(value.to_owned()),
            _ => {}
        }
    }
    let processors = cores.len();
    let names: Vec<String> = cores
        .into_iter()
        .filter_map(|(model_name, implementer, part)| {
            model_name.filter(|m| !m.is_empty()).or_else(|| match (implementer, part) {
                (Some(i), Some(p)) => Some(arm_core_name(i, p)),
                _ => None,
            })
        })
        .collect();
    // Count in order of first appearance.
    let mut counts: Vec<(String, usize)> = Vec::new();
    for name in names {
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    let model = match counts.len() {
        0 => None,
        1 => Some(counts.remove(0).0),
        _ => Some(counts.iter().map(|(n, c)| format!("{c}x {n}")).collect::<Vec<_>>().join(" + ")),
    };
    CpuInfo { model, board: board_model.or(hardware), processors }
}

fn parse_hex(v: &str) -> Option<u64> {
    let v = v.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Names an ARM core from its MIDR implementer and part number, as printed in
/// `/proc/cpuinfo`. Values from Arm's Technical Reference Manuals (MIDR_EL1
/// "Primary part number") and the table in util-linux `lscpu-arm.c`.
/// Unknown combinations keep the raw numbers, so nothing is lost.
pub fn known_arm_core(implementer: u64, part: u64) -> Option<&'static str> {
    Some(match (implementer, part) {
        (0x41, 0xc05) => "Cortex-A5",
        (0x41, 0xd01) => "Cortex-A32",
        (0x41, 0xd0e) => "Cortex-A76AE",
        (0x41, 0xd42) => "Cortex-A78AE",
        (0x41, 0xd4a) => "Neoverse-E1",
        (0x41, 0xc07) => "Cortex-A7",
        (0x41, 0xc08) => "Cortex-A8",
        (0x41, 0xc09) => "Cortex-A9",
        (0x41, 0xc0d | 0xc0e) => "Cortex-A17",
        (0x41, 0xc0f) => "Cortex-A15",
        (0x41, 0xd02) => "Cortex-A34",
        (0x41, 0xd03) => "Cortex-A53",
        (0x41, 0xd04) => "Cortex-A35",
        (0x41, 0xd05) => "Cortex-A55",
        (0x41, 0xd06) => "Cortex-A65",
        (0x41, 0xd07) => "Cortex-A57",
        (0x41, 0xd08) => "Cortex-A72",
        (0x41, 0xd09) => "Cortex-A73",
        (0x41, 0xd0a) => "Cortex-A75",
        (0x41, 0xd0b) => "Cortex-A76",
        (0x41, 0xd0c) => "Neoverse-N1",
        (0x41, 0xd0d) => "Cortex-A77",
        (0x41, 0xd40) => "Neoverse-V1",
        (0x41, 0xd41) => "Cortex-A78",
        (0x41, 0xd44) => "Cortex-X1",
        (0x41, 0xd46) => "Cortex-A510",
        (0x41, 0xd47) => "Cortex-A710",
        (0x41, 0xd48) => "Cortex-X2",
        (0x41, 0xd49) => "Neoverse-N2",
        (0x41, 0xd4b) => "Cortex-A78C",
        (0x41, 0xd4d) => "Cortex-A715",
        (0x41, 0xd4e) => "Cortex-X3",
        (0x41, 0xd4f) => "Neoverse-V2",
        (0x41, 0xd80) => "Cortex-A520",
        (0x41, 0xd81) => "Cortex-A720",
        (0x41, 0xd82) => "Cortex-X4",
        (0x51, 0x800) => "Kryo 2xx Gold",
        (0x51, 0x801) => "Kryo 2xx Silver",
        (0x51, 0x802) => "Kryo 3xx Gold",
        (0x51, 0x803) => "Kryo 3xx Silver",
        (0x51, 0x804) => "Kryo 4xx Gold",
        (0x51, 0x805) => "Kryo 4xx Silver",
        (0x61, 0x022 | 0x023) => "Apple M1",
        (0x61, 0x032 | 0x033) => "Apple M2",
        _ => return None,
    })
}

/// Names an ARM core from its MIDR implementer and part number; unknown combinations keep
/// the raw numbers, so nothing is lost.
pub fn arm_core_name(implementer: u64, part: u64) -> String {
    match known_arm_core(implementer, part) {
        Some(name) => name.to_string(),
        None => format!("ARM implementer 0x{implementer:02x} part 0x{part:03x}"),
    }
}

/// Memory figures from `/proc/meminfo`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: Option<u64>,
    /// `MemAvailable` (kernels since 3.14); older kernels get
    /// `MemFree + Buffers + Cached`, the estimate `free` used before it.
    pub available: Option<u64>,
}

/// Parses `/proc/meminfo` (`Key:   1234 kB` lines).
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut fields: BTreeMap<&str, u64> = BTreeMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else { continue };
        let mut parts = rest.split_whitespace();
        let Some(Ok(n)) = parts.next().map(str::parse::<u64>) else { continue };
        let bytes = match parts.next() {
            Some("kB") => n.saturating_mul(1024),
            None => n,
            Some(_) => continue,
        };
        fields.insert(key.trim(), bytes);
    }
    let available = fields.get("MemAvailable").copied().or_else(|| {
        let free = fields.get("MemFree")?;
        Some(free + fields.get("Buffers").unwrap_or(&0) + fields.get("Cached").unwrap_or(&0))
    });
    MemInfo { total: fields.get("MemTotal").copied(), available }
}

pub fn read_cpuinfo() -> CpuInfo {
    std::fs::read_to_string("/proc/cpuinfo").map(|t| parse_cpuinfo(&t)).unwrap_or_default()
}

pub fn read_meminfo() -> MemInfo {
    std::fs::read_to_string("/proc/meminfo").map(|t| parse_meminfo(&t)).unwrap_or_default()
}

/// `uname(2)`; empty strings if it fails (it does not on Linux).
pub fn uname() -> KernelInfo {
    // SAFETY: `utsname` is plain old data; zeroed is a valid value, and uname
    // fills it with NUL-terminated strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    let rc = unsafe { libc::uname(&mut u) };
    let field = |f: &[libc::c_char]| -> String {
        if rc != 0 {
            return String::new();
        }
        // SAFETY: after a successful uname every field is NUL-terminated within its array.
        unsafe { CStr::from_ptr(f.as_ptr()) }.to_string_lossy().into_owned()
    };
    KernelInfo {
        sysname: field(&u.sysname),
        release: field(&u.release),
        version: field(&u.version),
        machine: field(&u.machine),
        nodename: field(&u.nodename),
    }
}

/// Online CPUs (`sysconf(_SC_NPROCESSORS_ONLN)`), falling back to the
/// `processor` count of `/proc/cpuinfo`, then 1.
pub fn online_cpus(cpuinfo: &CpuInfo) -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        cpuinfo.processors.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RPI4: &str = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n\
CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n\
processor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n\
processor\t: 2\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n\
processor\t: 3\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n\
Hardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000abcdef01\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";

    #[test]
    fn aarch64_without_model_name_uses_cpu_part() {
        let info = parse_cpuinfo(RPI4);
        assert_eq!(info.model.as_deref(), Some("Cortex-A72"));
        assert_eq!(info.board.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
        assert_eq!(info.processors, 4);
    }

    #[test]
    fn big_little_lists_both_clusters_with_counts() {
        let mut text = String::new();
        for (i, part) in ["0xd05", "0xd05", "0xd05", "0xd05", "0xd0b", "0xd0b"].iter().enumerate() {
            text += &format!("processor\t: {i}\nCPU implementer\t: 0x41\nCPU part\t: {part}\n\n");
        }
        text += "Hardware\t: Hardkernel ODROID-N2\n";
        let info = parse_cpuinfo(&text);
        assert_eq!(info.model.as_deref(), Some("4x Cortex-A55 + 2x Cortex-A76"));
        assert_eq!(info.board.as_deref(), Some("Hardkernel ODROID-N2"));
        assert_eq!(info.processors, 6);
    }

    #[test]
    fn x86_model_name_wins() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\n\
processor\t: 1\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        let info = parse_cpuinfo(text);
        assert_eq!(info.model.as_deref(), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
        assert_eq!(info.board, None);
        assert_eq!(info.processors, 2);
    }

    #[test]
    fn unknown_arm_part_keeps_the_numbers() {
        let info = parse_cpuinfo("processor : 0\nCPU implementer : 0x48\nCPU part : 0xd01\n");
        assert_eq!(info.model.as_deref(), Some("ARM implementer 0x48 part 0xd01"));
    }

    #[test]
    fn empty_cpuinfo_has_no_model() {
        assert_eq!(parse_cpuinfo(""), CpuInfo::default());
    }

    #[test]
    fn meminfo_prefers_mem_available() {
        let m = parse_meminfo(
            "MemTotal:        3884096 kB\nMemFree:          123456 kB\nMemAvailable:    2000000 kB\nCached: 10 kB\n",
        );
        assert_eq!(m.total, Some(3_884_096 * 1024));
        assert_eq!(m.available, Some(2_000_000 * 1024));
    }

    #[test]
    fn meminfo_before_3_14_sums_free_buffers_cached() {
        let m =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\nHugePages_Total: 0\n");
        assert_eq!(m.available, Some(420 * 1024));
    }

    #[test]
    fn meminfo_garbage_gives_nothing() {
        assert_eq!(parse_meminfo("nonsense\nMemAvailable: lots kB\n"), MemInfo::default());
    }

    #[test]
    fn uname_reports_linux() {
        let k = uname();
        assert_eq!(k.sysname, "Linux");
        assert!(!k.release.is_empty());
    }
}
