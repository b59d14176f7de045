//! cpufreq policies: discovery and their current settings.
//!
//! A policy (`cpufreq/policy<N>`, named after its first CPU) is the unit of
//! frequency control: all its `related_cpus` share one clock. A
//! big.LITTLE board has one per cluster (e.g. `policy0` for CPUs 0-3 and
//! `policy4` for 4-7), so policy numbers are not contiguous.

use serde::{Deserialize, Serialize};

use super::parse::{parse_cpu_list, parse_frequency_list, parse_khz, parse_setspeed, parse_word_list};
use super::residency::TimeInState;
use super::write_order::FreqRange;
use super::{DvfsError, DvfsErrorKind, Sysfs};
use crate::board::Board;
use std::time::Duration;

/// Where a policy's list of frequencies came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrequencySource {
    /// `scaling_available_frequencies` (drivers with a frequency table).
    ScalingAvailableFrequencies,
    /// The rows of `stats/time_in_state`, for drivers that do not export
    /// the table (the stats still list every frequency of it).
    TimeInState,
    /// Neither exists (e.g. `intel_pstate`): no discrete levels to pin.
    Unknown,
}

/// What a policy is: its CPUs and what it offers. Does not change at run time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpufreqPolicy {
    /// `N` of `policy<N>`.
    pub id: u32,
    pub related_cpus: Vec<u32>,
    /// Available frequencies in kHz, ascending.
    pub available_khz: Vec<u64>,
    pub frequencies_from: FrequencySource,
    pub available_governors: Vec<String>,
    /// Hardware limits (`cpuinfo_min_freq`/`cpuinfo_max_freq`), where readable.
    pub cpuinfo_min_khz: Option<u64>,
    pub cpuinfo_max_khz: Option<u64>,
}

/// The settings the harness changes and restores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySettings {
    pub governor: String,
    pub min_khz: u64,
    pub max_khz: u64,
    /// `scaling_setspeed`: a frequency under the userspace governor, `None`
    /// (`<unsupported>`) under any other.
    pub setspeed_khz: Option<u64>,
}

impl PolicySettings {
    pub fn range(&self) -> FreqRange {
        FreqRange::new(self.min_khz, self.max_khz)
    }
}

/// Timeout for the directory listing used when `devices/system/cpu/possible`
/// is missing.
const LIST_TIMEOUT: Duration = Duration::from_secs(15);

/// Finds every cpufreq policy under `sysfs`, sorted by id.
///
/// Reads `devices/system/cpu/possible` and looks for `policy<N>` for each
/// CPU not already covered by a found policy (no directory listing needed,
/// which the board transport does not offer). Only when `possible` is
/// missing (some stripped-down fake trees) does it list the cpufreq directory
/// with `ls`.
pub fn discover_policies(board: &mut dyn Board, sysfs: &Sysfs) -> Result<Vec<CpufreqPolicy>, DvfsError> {
    let possible_path = format!("{}/possible", sysfs.cpu_dir());
    let candidates: Vec<u32> = match sysfs.read_optional(board, None, &possible_path)? {
        Some(text) => parse_cpu_list(&text).map_err(|e| DvfsError::parse(board.name(), None, &possible_path, e))?,
        None => list_policy_dirs(board, sysfs)?,
    };
    let mut policies: Vec<CpufreqPolicy> = Vec::new();
    for cpu in candidates {
        if policies.iter().any(|p| p.related_cpus.contains(&cpu)) {
            continue;
        }
        let related_path = sysfs.policy_path(cpu, "related_cpus");
        if sysfs.read_optional(board, Some(cpu), &related_path)?.is_none() {
            continue;
        }
        policies.push(read_policy(board, sysfs, cpu)?);
    }
    if policies.is_empty() {
        return Err(DvfsError::new(
            board.name(),
            None,
            Some(&sysfs.cpufreq_dir()),
            DvfsErrorKind::NoPolicy,
            "no cpufreq policies found: the kernel has no cpufreq driver for this CPU, or sysfs_root is wrong",
        ));
    }
    policies.sort_by_key(|p| p.id);
    Ok(policies)
}

fn list_policy_dirs(board: &mut dyn Board, sysfs: &Sysfs) -> Result<Vec<u32>, DvfsError> {
    let dir = sysfs.cpufreq_dir();
    let argv = vec!["ls".to_string(), "-1".to_string(), dir.clone()];
    let out =
        board.exec(&argv, LIST_TIMEOUT).map_err(|e| DvfsError::transport(board.name(), None, &dir, "listing", e))?;
    if !out.success() {
        return Err(DvfsError::new(
            board.name(),
            None,
            Some(&dir),
            DvfsErrorKind::NoPolicy,
            format!(
                "no cpufreq policies found (listing the directory: `ls` exited with {}: {}): the kernel has no \
                 cpufreq driver for this CPU, or sysfs_root is wrong",
                out.status,
                out.stderr_str().trim()
            ),
        ));
    }
    Ok(policy_ids_from_listing(&out.stdout_str()))
}

/// The `N`s of the `policy<N>` entries of a directory listing.
pub(crate) fn policy_ids_from_listing(listing: &str) -> Vec<u32> {
    let mut ids: Vec<u32> =
        listing.split_whitespace().filter_map(|name| name.strip_prefix("policy")?.parse().ok()).collect();
    ids.sort_unstable();
    ids
}

/// Reads what `policy<id>` is and offers.
pub fn read_policy(board: &mut dyn Board, sysfs: &Sysfs, id: u32) -> Result<CpufreqPolicy, DvfsError> {
    let p = Some(id);
    let related_path = sysfs.policy_path(id, "related_cpus");
    let related = match sysfs.read_optional(board, p, &related_path)? {
        Some(text) => text,
        None => {
            return Err(DvfsError::new(
                board.name(),
                p,
                Some(&related_path),
                DvfsErrorKind::NoPolicy,
                "no such cpufreq policy (policies are named after their first CPU, e.g. policy0 and policy4 on a \
                 big.LITTLE board; `hil board probe` lists them)",
            ))
        }
    };
    let related_cpus = parse_cpu_list(&related).map_err(|e| DvfsError::parse(board.name(), p, &related_path, e))?;

    let avail_path = sysfs.policy_path(id, "scaling_available_frequencies");
    let listed = match sysfs.read_optional(board, p, &avail_path)? {
        Some(text) => parse_frequency_list(&text).map_err(|e| DvfsError::parse(board.name(), p, &avail_path, e))?,
        None => Vec::new(),
    };
    let (available_khz, frequencies_from) = if !listed.is_empty() {
        (listed, FrequencySource::ScalingAvailableFrequencies)
    } else {
        let tis_path = sysfs.policy_path(id, "stats/time_in_state");
        match sysfs.read_optional(board, p, &tis_path)? {
            Some(text) => {
                let tis = TimeInState::parse(&text).map_err(|e| DvfsError::parse(board.name(), p, &tis_path, e))?;
                let freqs = tis.frequencies_khz();
                if freqs.is_empty() {
                    (freqs, FrequencySource::Unknown)
                } else {
                    (freqs, FrequencySource::TimeInState)
                }
            }
            None => (Vec::new(), FrequencySource::Unknown),
        }
    };

    let gov_path = sysfs.policy_path(id, "scaling_available_governors");
    let available_governors =
        sysfs.read_optional(board, p, &gov_path)?.map(|t| parse_word_list(&t)).unwrap_or_default();
    let cpuinfo_min_khz = read_optional_khz(board, sysfs, id, "cpuinfo_min_freq")?;
    let cpuinfo_max_khz = read_optional_khz(board, sysfs, id, "cpuinfo_max_freq")?;
    Ok(CpufreqPolicy {
        id,
        related_cpus,
        available_khz,
        frequencies_from,
        available_governors,
        cpuinfo_min_khz,
        cpuinfo_max_khz,
    })
}

/// Reads an optional frequency attribute: absent or unreadable is `None`,
/// present but not a number is an error.
pub(crate) fn read_optional_khz(
    board: &mut dyn Board,
    sysfs: &Sysfs,
    policy: u32,
    file: &str,
) -> Result<Option<u64>, DvfsError> {
    let path = sysfs.policy_path(policy, file);
    match sysfs.read_optional(board, Some(policy), &path)? {
        Some(text) => parse_khz(&text).map(Some).map_err(|e| DvfsError::parse(board.name(), Some(policy), &path, e)),
        None => Ok(None),
    }
}

/// Reads a required frequency attribute.
pub(crate) fn read_khz(board: &mut dyn Board, sysfs: &Sysfs, policy: u32, file: &str) -> Result<u64, DvfsError> {
    let path = sysfs.policy_path(policy, file);
    let text = sysfs.read_text(board, Some(policy), &path)?;
    parse_khz(&text).map_err(|e| DvfsError::parse(board.name(), Some(policy), &path, e))
}

/// Reads the governor, limits and `scaling_setspeed` of `policy<id>`.
pub fn read_settings(board: &mut dyn Board, sysfs: &Sysfs, id: u32) -> Result<PolicySettings, DvfsError> {
    let gov_path = sysfs.policy_path(id, "scaling_governor");
    let governor = sysfs.read_text(board, Some(id), &gov_path)?;
    if governor.is_empty() {
        return Err(DvfsError::parse(board.name(), Some(id), &gov_path, "empty governor name"));
    }
    let min_khz = read_khz(board, sysfs, id, "scaling_min_freq")?;
    let max_khz = read_khz(board, sysfs, id, "scaling_max_freq")?;
    let setspeed_path = sysfs.policy_path(id, "scaling_setspeed");
    let setspeed_khz = sysfs.read_optional(board, Some(id), &setspeed_path)?.as_deref().and_then(parse_setspeed);
    Ok(PolicySettings { governor, min_khz, max_khz, setspeed_khz })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_yields_policy_numbers_only() {
        assert_eq!(policy_ids_from_listing("policy4\npolicy0\nboost\nondemand\npolicyX\n"), vec![0, 4]);
    }
}
