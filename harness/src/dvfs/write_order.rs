//! Which cpufreq writes pin a frequency or restore saved settings, and in
//! what order (pure).
//!
//! The order matters for `scaling_min_freq`/`scaling_max_freq`: kernels
//! before the frequency-QoS rework (v5.3) reject with `EINVAL` a write that
//! would leave min above max, and even newer ones silently clamp the request.
//! So every intermediate state must keep `min <= max`: going up (the new
//! minimum is above the current maximum) raise max first, then min; in every
//! other case (in particular going down) write min first, then max.
//! [`limit_write_order`] encodes that rule; its tests check every
//! combination on a grid of levels.

use serde::{Deserialize, Serialize};

use super::policy::{CpufreqPolicy, PolicySettings};

/// The name of the governor that lets user space set the frequency through
/// `scaling_setspeed`.
pub const USERSPACE_GOVERNOR: &str = "userspace";

/// One write to one attribute of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpufreqWrite {
    Governor(String),
    MinKhz(u64),
    MaxKhz(u64),
    SetspeedKhz(u64),
}

impl CpufreqWrite {
    /// The attribute in the policy directory this write goes to.
    pub fn file_name(&self) -> &'static str {
        match self {
            CpufreqWrite::Governor(_) => "scaling_governor",
            CpufreqWrite::MinKhz(_) => "scaling_min_freq",
            CpufreqWrite::MaxKhz(_) => "scaling_max_freq",
            CpufreqWrite::SetspeedKhz(_) => "scaling_setspeed",
        }
    }

    /// The text written.
    pub fn value(&self) -> String {
        match self {
            CpufreqWrite::Governor(g) => g.clone(),
            CpufreqWrite::MinKhz(k) | CpufreqWrite::MaxKhz(k) | CpufreqWrite::SetspeedKhz(k) => k.to_string(),
        }
    }
}

/// A policy's frequency limits, `scaling_min_freq..=scaling_max_freq`, in kHz.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreqRange {
    pub min_khz: u64,
    pub max_khz: u64,
}

impl FreqRange {
    pub fn new(min_khz: u64, max_khz: u64) -> Self {
        Self { min_khz, max_khz }
    }

    /// Both limits at one frequency: the min=max pin.
    pub fn pinned(khz: u64) -> Self {
        Self { min_khz: khz, max_khz: khz }
    }

    pub fn contains(&self, khz: u64) -> bool {
        (self.min_khz..=self.max_khz).contains(&khz)
    }
}

/// The writes that take the limits from `current` to `target` with
/// `min <= max` after every write, skipping limits that already have their
/// value.
///
/// `target` must satisfy `min <= max` (a target that does not can never be
/// reached safely); `current` is whatever the board reported.
pub fn limit_write_order(current: FreqRange, target: FreqRange) -> Vec<CpufreqWrite> {
    debug_assert!(target.min_khz <= target.max_khz, "inverted target range {target:?}");
    let mut writes = Vec::with_capacity(2);
    if target.min_khz > current.max_khz {
        // Going up: the new min is above the current max, so min-first would
        // pass through min > max. Raise max first.
        writes.push(CpufreqWrite::MaxKhz(target.max_khz));
        writes.push(CpufreqWrite::MinKhz(target.min_khz));
    } else {
        // Going down, or overlapping: the new min fits under the current max,
        // and after it the new max is >= the new min.
        if target.min_khz != current.min_khz {
            writes.push(CpufreqWrite::MinKhz(target.min_khz));
        }
        if target.max_khz != current.max_khz {
            writes.push(CpufreqWrite::MaxKhz(target.max_khz));
        }
    }
    writes
}

/// How the harness pins a frequency, as the scenario asks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinStrategy {
    /// The userspace governor where the policy offers it, else min=max.
    #[default]
    Auto,
    /// The userspace governor and `scaling_setspeed`; an error if absent.
    Userspace,
    /// `scaling_min_freq = scaling_max_freq`, leaving the governor alone
    /// (every governor must respect the limits).
    MinMax,
    /// Switch to this governor (e.g. `performance`), then min=max. The saved
    /// governor comes back with the rest of the settings at restore.
    MinMaxUnder(String),
}

/// How a frequency was actually pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinMethod {
    Userspace,
    MinMax,
}

/// The writes that pin one policy, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinPlan {
    pub method: PinMethod,
    pub target_khz: u64,
    pub writes: Vec<CpufreqWrite>,
}

/// Why a pin cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PinPlanError {
    #[error("{requested_khz} kHz is not a frequency this policy offers (available: {available:?} kHz)")]
    UnavailableFrequency { requested_khz: u64, available: Vec<u64> },
    #[error("the userspace governor is not available (available governors: {available:?}); use the min-max strategy")]
    NoUserspaceGovernor { available: Vec<String> },
    #[error("the {requested:?} governor is not available (available governors: {available:?})")]
    NoSuchGovernor { requested: String, available: Vec<String> },
}

/// Plans the writes that pin `policy` at `target_khz`, starting from its
/// `current` settings.
///
/// With the userspace governor: switch to it (if not already), widen the
/// limits just enough to contain the target if they exclude it (the kernel
/// clamps `scaling_setspeed` into them), then write `scaling_setspeed`.
/// Otherwise min=max at the target, in the safe order.
pub fn plan_pin(
    policy: &CpufreqPolicy,
    current: &PolicySettings,
    target_khz: u64,
    strategy: &PinStrategy,
) -> Result<PinPlan, PinPlanError> {
    if !policy.available_khz.contains(&target_khz) {
        return Err(PinPlanError::UnavailableFrequency {
            requested_khz: target_khz,
            available: policy.available_khz.clone(),
        });
    }
    let has_userspace = policy.available_governors.iter().any(|g| g == USERSPACE_GOVERNOR);
    let mut writes = Vec::new();
    let method = match strategy {
        PinStrategy::Auto if has_userspace => PinMethod::Userspace,
        PinStrategy::Auto | PinStrategy::MinMax => PinMethod::MinMax,
        PinStrategy::MinMaxUnder(governor) => {
            if !policy.available_governors.iter().any(|g| g == governor) {
                return Err(PinPlanError::NoSuchGovernor {
                    requested: governor.clone(),
                    available: policy.available_governors.clone(),
                });
            }
            if &current.governor != governor {
                writes.push(CpufreqWrite::Governor(governor.clone()));
            }
            PinMethod::MinMax
        }
        PinStrategy::Userspace if has_userspace => PinMethod::Userspace,
        PinStrategy::Userspace => {
            return Err(PinPlanError::NoUserspaceGovernor { available: policy.available_governors.clone() })
        }
    };
    let current_range = current.range();
    match method {
        PinMethod::Userspace => {
            if current.governor != USERSPACE_GOVERNOR {
                writes.push(CpufreqWrite::Governor(USERSPACE_GOVERNOR.to_string()));
            }
            if !current_range.contains(target_khz) {
                let widened =
                    FreqRange::new(current_range.min_khz.min(target_khz), current_range.max_khz.max(target_khz));
                writes.extend(limit_write_order(current_range, widened));
            }
            writes.push(CpufreqWrite::SetspeedKhz(target_khz));
        }
        PinMethod::MinMax => writes.extend(limit_write_order(current_range, FreqRange::pinned(target_khz))),
    }
    Ok(PinPlan { method, target_khz, writes })
}

/// Plans the writes that bring a policy from its `current` settings back to
/// `saved`: limits first (in the safe order), then the governor, then, if the
/// saved governor was userspace, its `scaling_setspeed` (which must come after
/// both: the governor resets it on start, and the limits clamp it).
pub fn plan_restore(current: &PolicySettings, saved: &PolicySettings) -> Vec<CpufreqWrite> {
    let mut writes = Vec::new();
    let saved_range = saved.range();
    if saved_range.min_khz <= saved_range.max_khz {
        writes.extend(limit_write_order(current.range(), saved_range));
    }
    let governor_changes = current.governor != saved.governor;
    if governor_changes {
        writes.push(CpufreqWrite::Governor(saved.governor.clone()));
    }
    if saved.governor == USERSPACE_GOVERNOR {
        if let Some(khz) = saved.setspeed_khz {
            if governor_changes || current.setspeed_khz != Some(khz) {
                writes.push(CpufreqWrite::SetspeedKhz(khz));
            }
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dvfs::policy::FrequencySource;

    const LEVELS: [u64; 5] = [600_000, 750_000, 1_000_000, 1_200_000, 1_500_000];

    /// Applies writes like a pre-5.3 kernel: a limit write that would leave
    /// min > max is refused.
    fn apply_strict(mut range: FreqRange, writes: &[CpufreqWrite]) -> Result<FreqRange, String> {
        for w in writes {
            match *w {
                CpufreqWrite::MinKhz(k) if k <= range.max_khz => range.min_khz = k,
                CpufreqWrite::MaxKhz(k) if k >= range.min_khz => range.max_khz = k,
                CpufreqWrite::MinKhz(_) | CpufreqWrite::MaxKhz(_) => return Err(format!("{w:?} refused at {range:?}")),
                _ => {}
            }
        }
        Ok(range)
    }

    fn ranges() -> Vec<FreqRange> {
        let mut out = Vec::new();
        for &lo in &LEVELS {
            for &hi in &LEVELS {
                if lo <= hi {
                    out.push(FreqRange::new(lo, hi));
                }
            }
        }
        out
    }

    #[test]
    fn every_transition_keeps_min_below_max_and_reaches_the_target() {
        for current in ranges() {
            for target in ranges() {
                let writes = limit_write_order(current, target);
                let reached = apply_strict(current, &writes).unwrap_or_else(|e| panic!("{current:?}->{target:?}: {e}"));
                assert_eq!(reached, target, "{current:?} -> {target:?} via {writes:?}");
                assert!(writes.len() <= 2);
                if current == target {
                    assert!(writes.is_empty());
                }
                // No write is redundant.
                for w in &writes {
                    match *w {
                        CpufreqWrite::MinKhz(k) => assert_ne!(k, current.min_khz),
                        CpufreqWrite::MaxKhz(k) => assert_ne!(k, current.max_khz),
                        _ => unreachable!(),
                    }
                }
            }
        }
    }

    #[test]
    fn pinned_going_up_raises_max_first_and_going_down_lowers_min_first() {
        for &from in &LEVELS {
            for &to in &LEVELS {
                let writes = limit_write_order(FreqRange::pinned(from), FreqRange::pinned(to));
                if to > from {
                    assert_eq!(writes, vec![CpufreqWrite::MaxKhz(to), CpufreqWrite::MinKhz(to)]);
                } else if to < from {
                    assert_eq!(writes, vec![CpufreqWrite::MinKhz(to), CpufreqWrite::MaxKhz(to)]);
                } else {
                    assert!(writes.is_empty());
                }
            }
        }
        // From the full range (the usual starting point) to the top: only min moves.
        assert_eq!(
            limit_write_order(FreqRange::new(600_000, 1_500_000), FreqRange::pinned(1_500_000)),
            vec![CpufreqWrite::MinKhz(1_500_000)]
        );
    }

    fn policy(governors: &[&str]) -> CpufreqPolicy {
        CpufreqPolicy {
            id: 0,
            related_cpus: vec![0, 1, 2, 3],
            available_khz: LEVELS.to_vec(),
            frequencies_from: FrequencySource::ScalingAvailableFrequencies,
            available_governors: governors.iter().map(|s| s.to_string()).collect(),
            cpuinfo_min_khz: Some(600_000),
            cpuinfo_max_khz: Some(1_500_000),
        }
    }

    fn settings(governor: &str, min: u64, max: u64, setspeed: Option<u64>) -> PolicySettings {
        PolicySettings { governor: governor.into(), min_khz: min, max_khz: max, setspeed_khz: setspeed }
    }

    #[test]
    fn pin_with_userspace_switches_governor_then_sets_speed() {
        let plan = plan_pin(
            &policy(&["ondemand", "userspace", "performance"]),
            &settings("ondemand", 600_000, 1_500_000, None),
            1_000_000,
            &PinStrategy::Auto,
        )
        .unwrap();
        assert_eq!(plan.method, PinMethod::Userspace);
        assert_eq!(plan.writes, vec![CpufreqWrite::Governor("userspace".into()), CpufreqWrite::SetspeedKhz(1_000_000)]);
        // Already userspace: only the speed.
        let plan = plan_pin(
            &policy(&["userspace"]),
            &settings("userspace", 600_000, 1_500_000, Some(1_000_000)),
            600_000,
            &PinStrategy::Userspace,
        )
        .unwrap();
        assert_eq!(plan.writes, vec![CpufreqWrite::SetspeedKhz(600_000)]);
    }

    #[test]
    fn pin_with_userspace_widens_limits_that_exclude_the_target() {
        let plan = plan_pin(
            &policy(&["userspace"]),
            &settings("ondemand", 600_000, 1_000_000, None),
            1_500_000,
            &PinStrategy::Auto,
        )
        .unwrap();
        assert_eq!(
            plan.writes,
            vec![
                CpufreqWrite::Governor("userspace".into()),
                CpufreqWrite::MaxKhz(1_500_000),
                CpufreqWrite::SetspeedKhz(1_500_000)
            ]
        );
        let plan = plan_pin(
            &policy(&["userspace"]),
            &settings("userspace", 1_200_000, 1_500_000, None),
            600_000,
            &PinStrategy::Auto,
        )
        .unwrap();
        assert_eq!(plan.writes, vec![CpufreqWrite::MinKhz(600_000), CpufreqWrite::SetspeedKhz(600_000)]);
    }

    #[test]
    fn pin_without_userspace_falls_back_to_min_max() {
        let p = policy(&["ondemand", "performance", "schedutil"]);
        let plan =
            plan_pin(&p, &settings("schedutil", 600_000, 1_500_000, None), 1_000_000, &PinStrategy::Auto).unwrap();
        assert_eq!(plan.method, PinMethod::MinMax);
        assert_eq!(plan.writes, vec![CpufreqWrite::MinKhz(1_000_000), CpufreqWrite::MaxKhz(1_000_000)]);
        let err = plan_pin(&p, &settings("schedutil", 600_000, 1_500_000, None), 1_000_000, &PinStrategy::Userspace)
            .unwrap_err();
        assert!(err.to_string().contains("schedutil"), "{err}");
        // MinMax is honoured even where userspace exists.
        let plan = plan_pin(
            &policy(&["userspace"]),
            &settings("userspace", 600_000, 1_500_000, None),
            750_000,
            &PinStrategy::MinMax,
        )
        .unwrap();
        assert_eq!(plan.method, PinMethod::MinMax);
    }

    #[test]
    fn pin_under_a_named_governor_switches_to_it_then_min_max() {
        let p = policy(&["ondemand", "performance", "userspace"]);
        let under = PinStrategy::MinMaxUnder("performance".into());
        let plan = plan_pin(&p, &settings("ondemand", 600_000, 1_500_000, None), 1_000_000, &under).unwrap();
        assert_eq!(plan.method, PinMethod::MinMax);
        assert_eq!(
            plan.writes,
            vec![
                CpufreqWrite::Governor("performance".into()),
                CpufreqWrite::MinKhz(1_000_000),
                CpufreqWrite::MaxKhz(1_000_000)
            ]
        );
        // Already under it: limits only; restoring brings the saved governor back.
        let plan = plan_pin(&p, &settings("performance", 1_000_000, 1_000_000, None), 600_000, &under).unwrap();
        assert_eq!(plan.writes, vec![CpufreqWrite::MinKhz(600_000), CpufreqWrite::MaxKhz(600_000)]);
        let saved = settings("ondemand", 600_000, 1_500_000, None);
        assert!(plan_restore(&settings("performance", 600_000, 600_000, None), &saved)
            .contains(&CpufreqWrite::Governor("ondemand".into())));
        let err = plan_pin(&p, &saved, 600_000, &PinStrategy::MinMaxUnder("powersave".into())).unwrap_err();
        assert!(err.to_string().contains("powersave") && err.to_string().contains("performance"), "{err}");
    }

    #[test]
    fn pin_refuses_a_frequency_the_policy_lacks() {
        let err = plan_pin(
            &policy(&["userspace"]),
            &settings("ondemand", 600_000, 1_500_000, None),
            800_000,
            &PinStrategy::Auto,
        )
        .unwrap_err();
        assert_eq!(err, PinPlanError::UnavailableFrequency { requested_khz: 800_000, available: LEVELS.to_vec() });
        assert!(err.to_string().contains("800000 kHz"));
    }

    #[test]
    fn restore_undoes_a_userspace_pin() {
        let saved = settings("ondemand", 600_000, 1_500_000, None);
        let current = settings("userspace", 600_000, 1_500_000, Some(1_000_000));
        assert_eq!(plan_restore(&current, &saved), vec![CpufreqWrite::Governor("ondemand".into())]);
        assert!(plan_restore(&saved, &saved).is_empty());
    }

    #[test]
    fn restore_undoes_a_min_max_pin_in_the_safe_order() {
        let saved = settings("schedutil", 600_000, 1_500_000, None);
        // Pinned low: max must go up before... min is already below; only max moves.
        assert_eq!(
            plan_restore(&settings("schedutil", 600_000, 600_000, None), &saved),
            vec![CpufreqWrite::MaxKhz(1_500_000)]
        );
        // Restoring to a narrow high range from a low pin: max first.
        let saved_high = settings("schedutil", 1_200_000, 1_500_000, None);
        assert_eq!(
            plan_restore(&settings("schedutil", 600_000, 600_000, None), &saved_high),
            vec![CpufreqWrite::MaxKhz(1_500_000), CpufreqWrite::MinKhz(1_200_000)]
        );
        // Restoring to a low range from a high pin: min first.
        let saved_low = settings("schedutil", 600_000, 750_000, None);
        assert_eq!(
            plan_restore(&settings("schedutil", 1_500_000, 1_500_000, None), &saved_low),
            vec![CpufreqWrite::MinKhz(600_000), CpufreqWrite::MaxKhz(750_000)]
        );
    }

    #[test]
    fn restore_of_a_saved_userspace_state_sets_speed_after_governor() {
        let saved = settings("userspace", 600_000, 1_500_000, Some(750_000));
        let current = settings("performance", 1_500_000, 1_500_000, None);
        assert_eq!(
            plan_restore(&current, &saved),
            vec![
                CpufreqWrite::MinKhz(600_000),
                CpufreqWrite::Governor("userspace".into()),
                CpufreqWrite::SetspeedKhz(750_000)
            ]
        );
        let current = settings("userspace", 600_000, 1_500_000, Some(1_500_000));
        assert_eq!(plan_restore(&current, &saved), vec![CpufreqWrite::SetspeedKhz(750_000)]);
    }

    #[test]
    fn writes_name_their_files() {
        assert_eq!(CpufreqWrite::MinKhz(1).file_name(), "scaling_min_freq");
        assert_eq!(CpufreqWrite::MaxKhz(1).file_name(), "scaling_max_freq");
        assert_eq!(CpufreqWrite::SetspeedKhz(600_000).value(), "600000");
        assert_eq!(CpufreqWrite::Governor("userspace".into()).file_name(), "scaling_governor");
    }
}
