//! Reading back the frequency after a pin: did it take?

use serde::{Deserialize, Serialize};

use super::policy::{read_khz, read_optional_khz};
use super::{DvfsError, DvfsErrorKind, Sysfs};
use crate::board::Board;

/// Default tolerance between the requested and the reported frequency.
///
/// Drivers report the rate the clock framework actually produced, which can
/// differ from the table entry by a PLL or divider rounding step (a few MHz at
/// most); 5 MHz accepts that while staying far below the spacing between
/// DVFS levels (50-100 MHz and more), so a wrong level never passes.
pub const DEFAULT_FREQ_TOLERANCE_KHZ: u64 = 5_000;

/// The frequencies read back after pinning one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrequencyReadback {
    pub policy: u32,
    pub requested_khz: u64,
    /// `scaling_cur_freq`: what the governor/driver last set.
    pub scaling_cur_khz: u64,
    /// `cpuinfo_cur_freq`: what the hardware reports, where readable (it is
    /// mode 0400 on most kernels, and absent under some drivers).
    pub cpuinfo_cur_khz: Option<u64>,
    pub tolerance_khz: u64,
    pub holds: bool,
}

impl FrequencyReadback {
    /// An error naming requested and read-back values when the frequency did
    /// not take.
    pub fn ensure_held(&self, board: &str, sysfs: &Sysfs) -> Result<(), DvfsError> {
        if self.holds {
            return Ok(());
        }
        let (file, read) = match self.cpuinfo_cur_khz {
            Some(hw) if !within(self.requested_khz, hw, self.tolerance_khz) => ("cpuinfo_cur_freq", hw),
            _ => ("scaling_cur_freq", self.scaling_cur_khz),
        };
        Err(DvfsError::new(
            board,
            Some(self.policy),
            Some(&sysfs.policy_path(self.policy, file)),
            DvfsErrorKind::FrequencyNotHeld,
            format!(
                "frequency did not take: requested {} kHz, read back {} kHz (tolerance {} kHz); scaling_cur_freq \
                 {} kHz, cpuinfo_cur_freq {}. A firmware or thermal cap, another governor or a driver that ignores \
                 the request can cause this",
                self.requested_khz,
                read,
                self.tolerance_khz,
                self.scaling_cur_khz,
                self.cpuinfo_cur_khz.map_or("unreadable".to_string(), |k| format!("{k} kHz")),
            ),
        ))
    }
}

fn within(requested: u64, read: u64, tolerance: u64) -> bool {
    requested.abs_diff(read) <= tolerance
}

/// Whether the frequency holds: `scaling_cur_freq` within `tolerance_khz` of
/// the request, and `cpuinfo_cur_freq` too when it could be read.
pub fn frequency_holds(
    requested_khz: u64,
    scaling_cur_khz: u64,
    cpuinfo_cur_khz: Option<u64>,
    tolerance_khz: u64,
) -> bool {
    within(requested_khz, scaling_cur_khz, tolerance_khz)
        && cpuinfo_cur_khz.is_none_or(|hw| within(requested_khz, hw, tolerance_khz))
}

/// Reads `scaling_cur_freq` (required) and `cpuinfo_cur_freq` (optional) of
/// `policy<id>` and compares them with `requested_khz`. Call it after the
/// settle time.
pub fn read_back(
    board: &mut dyn Board,
    sysfs: &Sysfs,
    id: u32,
    requested_khz: u64,
    tolerance_khz: u64,
) -> Result<FrequencyReadback, DvfsError> {
    let scaling_cur_khz = read_khz(board, sysfs, id, "scaling_cur_freq")?;
    let cpuinfo_cur_khz = read_optional_khz(board, sysfs, id, "cpuinfo_cur_freq")?;
    Ok(FrequencyReadback {
        policy: id,
        requested_khz,
        scaling_cur_khz,
        cpuinfo_cur_khz,
        tolerance_khz,
        holds: frequency_holds(requested_khz, scaling_cur_khz, cpuinfo_cur_khz, tolerance_khz),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_within_tolerance_on_both_readings() {
        assert!(frequency_holds(1_500_000, 1_500_000, None, 0));
        assert!(frequency_holds(1_500_000, 1_497_000, Some(1_503_000), 5_000));
        assert!(!frequency_holds(1_500_000, 1_000_000, None, 5_000));
        // scaling_cur_freq says yes, the hardware says no.
        assert!(!frequency_holds(1_500_000, 1_500_000, Some(600_000), 5_000));
    }

    #[test]
    fn error_names_requested_and_read_back() {
        let rb = FrequencyReadback {
            policy: 4,
            requested_khz: 1_800_000,
            scaling_cur_khz: 1_800_000,
            cpuinfo_cur_khz: Some(1_400_000),
            tolerance_khz: 5_000,
            holds: false,
        };
        let err = rb.ensure_held("odroid", &Sysfs::system(true)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("board odroid: cpufreq policy4: /sys/devices/system/cpu/cpufreq/policy4/cpuinfo_cur_freq"),
            "{text}"
        );
        assert!(text.contains("requested 1800000 kHz, read back 1400000 kHz"), "{text}");
        assert_eq!(err.kind, DvfsErrorKind::FrequencyNotHeld);
    }
}
