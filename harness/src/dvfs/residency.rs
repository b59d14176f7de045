//! `stats/time_in_state`: how long a policy spent at each frequency, and
//! whether a cell stayed at the pinned one.
//!
//! The kernel keeps one cumulative counter per frequency of the table, in
//! units of 10 ms (USER_HZ clock ticks; Documentation/cpu-freq/cpufreq-stats
//! in the kernel tree). Comparing a snapshot taken before a cell with one
//! taken after tells whether the frequency ever left the pinned level
//! (thermal throttling, a firmware cap such as the Raspberry Pi's
//! under-voltage limit, another process changing the governor) and for how
//! long, at the counters' 10 ms resolution.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DvfsError, Sysfs};
use crate::board::Board;

/// One tick of `time_in_state`.
pub const TIME_IN_STATE_TICK: Duration = Duration::from_millis(10);

/// A snapshot of `stats/time_in_state`: ticks per frequency (kHz).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeInState {
    pub ticks_by_khz: BTreeMap<u64, u64>,
}

impl TimeInState {
    /// Parses the kernel's `"<kHz> <ticks>"` lines; blank lines are ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ticks_by_khz = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(khz), Some(ticks), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(format!("line {}: expected \"<kHz> <ticks>\", found {line:?}", n + 1));
            };
            let khz: u64 = khz.parse().map_err(|_| format!("line {}: bad frequency {khz:?}", n + 1))?;
            let ticks: u64 = ticks.parse().map_err(|_| format!("line {}: bad tick count {ticks:?}", n + 1))?;
            ticks_by_khz.insert(khz, ticks);
        }
        Ok(Self { ticks_by_khz })
    }

    /// The frequencies listed, ascending (the driver's table).
    pub fn frequencies_khz(&self) -> Vec<u64> {
        self.ticks_by_khz.keys().copied().collect()
    }
}

/// Where a policy's time went between two snapshots, relative to the pinned
/// frequency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrequencyResidency {
    pub pinned_khz: u64,
    /// Time counted at the pinned frequency.
    pub at_pinned: Duration,
    /// Time counted at every other frequency.
    pub elsewhere: Duration,
    /// The other frequencies with time counted, ascending.
    pub elsewhere_by_khz: Vec<(u64, Duration)>,
    /// A counter went backwards (stats reset, CPU hotplug re-created the
    /// policy): the comparison cannot be trusted, so treat as changed.
    pub counters_reset: bool,
}

impl FrequencyResidency {
    /// Whether the frequency left the pinned level (or the counters cannot
    /// tell): the cell's `throttled` flag.
    pub fn left_pinned_frequency(&self) -> bool {
        !self.elsewhere.is_zero() || self.counters_reset
    }

    /// The share of counted time spent away from the pinned frequency (0 when
    /// no time was counted at all).
    pub fn fraction_elsewhere(&self) -> f64 {
        let total = self.at_pinned + self.elsewhere;
        if total.is_zero() {
            0.0
        } else {
            self.elsewhere.as_secs_f64() / total.as_secs_f64()
        }
    }
}

/// Compares two snapshots of one policy: how long was spent at
/// `pinned_khz` and at anything else between them.
pub fn residency_between(before: &TimeInState, after: &TimeInState, pinned_khz: u64) -> FrequencyResidency {
    let mut counters_reset = false;
    let mut at_pinned = 0u64;
    let mut elsewhere = 0u64;
    let mut elsewhere_by_khz = Vec::new();
    for (&khz, &ticks_after) in &after.ticks_by_khz {
        let ticks_before = before.ticks_by_khz.get(&khz).copied().unwrap_or(0);
        if ticks_after < ticks_before {
            counters_reset = true;
        }
        let delta = ticks_after.saturating_sub(ticks_before);
        if khz == pinned_khz {
            at_pinned += delta;
        } else if delta > 0 {
            elsewhere += delta;
            elsewhere_by_khz.push((khz, ticks_to_duration(delta)));
        }
    }
    // A frequency that disappeared means the table was re-created.
    if before.ticks_by_khz.keys().any(|khz| !after.ticks_by_khz.contains_key(khz)) {
        counters_reset = true;
    }
    FrequencyResidency {
        pinned_khz,
        at_pinned: ticks_to_duration(at_pinned),
        elsewhere: ticks_to_duration(elsewhere),
        elsewhere_by_khz,
        counters_reset,
    }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks.saturating_mul(TIME_IN_STATE_TICK.as_millis() as u64))
}

/// Reads `policy<id>/stats/time_in_state`; `None` when the kernel was built
/// without `CONFIG_CPU_FREQ_STAT` (throttling then goes undetected, which the
/// caller should report).
pub fn read_time_in_state(board: &mut dyn Board, sysfs: &Sysfs, id: u32) -> Result<Option<TimeInState>, DvfsError> {
    let path = sysfs.policy_path(id, "stats/time_in_state");
    match sysfs.read_optional(board, Some(id), &path)? {
        Some(text) => {
            TimeInState::parse(&text).map(Some).map_err(|e| DvfsError::parse(board.name(), Some(id), &path, e))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tis(rows: &[(u64, u64)]) -> TimeInState {
        TimeInState { ticks_by_khz: rows.iter().copied().collect() }
    }

    #[test]
    fn parses_kernel_format() {
        let t = TimeInState::parse("600000 1200\n1500000 34\n\n").unwrap();
        assert_eq!(t.frequencies_khz(), vec![600000, 1500000]);
        assert_eq!(t.ticks_by_khz[&600000], 1200);
        assert!(TimeInState::parse("600000\n").unwrap_err().contains("line 1"));
        assert!(TimeInState::parse("600000 12 7\n").is_err());
        assert!(TimeInState::parse("fast 12\n").unwrap_err().contains("fast"));
    }

    #[test]
    fn all_time_at_the_pinned_frequency_is_clean() {
        let r =
            residency_between(&tis(&[(600_000, 10), (1_500_000, 5)]), &tis(&[(600_000, 510), (1_500_000, 5)]), 600_000);
        assert_eq!(r.at_pinned, Duration::from_secs(5));
        assert!(r.elsewhere.is_zero());
        assert!(!r.left_pinned_frequency());
        assert_eq!(r.fraction_elsewhere(), 0.0);
    }

    #[test]
    fn time_at_a_lower_level_is_throttling_with_amounts() {
        let before = tis(&[(600_000, 10), (1_000_000, 0), (1_500_000, 100)]);
        let after = tis(&[(600_000, 60), (1_000_000, 25), (1_500_000, 400)]);
        let r = residency_between(&before, &after, 1_500_000);
        assert!(r.left_pinned_frequency());
        assert_eq!(r.at_pinned, Duration::from_secs(3));
        assert_eq!(r.elsewhere, Duration::from_millis(750));
        assert_eq!(
            r.elsewhere_by_khz,
            vec![(600_000, Duration::from_millis(500)), (1_000_000, Duration::from_millis(250))]
        );
        assert!((r.fraction_elsewhere() - 0.75 / 3.75).abs() < 1e-12);
    }

    #[test]
    fn counters_going_back_or_vanishing_count_as_changed() {
        let r = residency_between(&tis(&[(600_000, 100)]), &tis(&[(600_000, 50)]), 600_000);
        assert!(r.counters_reset && r.left_pinned_frequency());
        let r = residency_between(&tis(&[(600_000, 1), (700_000, 1)]), &tis(&[(600_000, 5)]), 600_000);
        assert!(r.counters_reset);
        // A frequency new in "after" counts from zero.
        let r = residency_between(&tis(&[(600_000, 1)]), &tis(&[(600_000, 5), (700_000, 3)]), 600_000);
        assert_eq!(r.elsewhere, Duration::from_millis(30));
        assert!(!r.counters_reset);
    }
}
