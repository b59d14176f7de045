//! Pinning a policy: read its settings, plan the writes, write them.

use super::policy::{read_settings, CpufreqPolicy};
use super::write_order::{plan_pin, CpufreqWrite, PinPlan, PinPlanError, PinStrategy};
use super::{DvfsError, DvfsErrorKind, Sysfs};
use crate::board::Board;

/// Writes `writes` to `policy<id>` in order, stopping at the first failure
/// (a later write may depend on an earlier one: see
/// [`super::write_order`]).
pub fn apply_writes(board: &mut dyn Board, sysfs: &Sysfs, id: u32, writes: &[CpufreqWrite]) -> Result<(), DvfsError> {
    for write in writes {
        let path = sysfs.policy_path(id, write.file_name());
        sysfs.write_text(board, Some(id), &path, &write.value())?;
    }
    Ok(())
}

/// Pins `policy` at `target_khz`: reads its current settings, plans the
/// writes ([`plan_pin`]) and applies them. Returns the plan that was applied
/// (its method says whether userspace or min=max was used).
///
/// The caller must have saved the settings first ([`super::DvfsGuard`]
/// does); verifying that the frequency took is [`super::read_back`]'s job,
/// after the settle time.
pub fn pin_policy(
    board: &mut dyn Board,
    sysfs: &Sysfs,
    policy: &CpufreqPolicy,
    target_khz: u64,
    strategy: PinStrategy,
) -> Result<PinPlan, DvfsError> {
    let current = read_settings(board, sysfs, policy.id)?;
    let plan =
        plan_pin(policy, &current, target_khz, &strategy).map_err(|e| plan_error(board.name(), sysfs, policy, e))?;
    apply_writes(board, sysfs, policy.id, &plan.writes)?;
    Ok(plan)
}

fn plan_error(board: &str, sysfs: &Sysfs, policy: &CpufreqPolicy, e: PinPlanError) -> DvfsError {
    let (file, extra) = match &e {
        PinPlanError::UnavailableFrequency { .. } if policy.available_khz.is_empty() => (
            "scaling_available_frequencies",
            "; the policy lists no frequencies at all (neither scaling_available_frequencies nor \
             stats/time_in_state exists), so it cannot be pinned at discrete levels",
        ),
        PinPlanError::UnavailableFrequency { .. } => ("scaling_available_frequencies", ""),
        PinPlanError::NoUserspaceGovernor { .. } | PinPlanError::NoSuchGovernor { .. } => {
            ("scaling_available_governors", "")
        }
    };
    DvfsError::new(
        board,
        Some(policy.id),
        Some(&sysfs.policy_path(policy.id, file)),
        DvfsErrorKind::Unsupported,
        format!("{e}{extra}"),
    )
}
