//! The scenario against what a board really has, once it has been probed.
//!
//! Kept apart from the probe itself: [`BoardFacts`] is the small plain set of
//! facts these checks need (the probe module converts its report into it), so
//! the checks are pure and testable with hand-written facts.

use super::units::format_khz;
use super::*;

/// What a probe found on a board, as far as the scenario checks need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoardFacts {
    /// Number of CPUs present (CPU numbers are `0..cpu_count`).
    pub cpu_count: usize,
    pub policies: Vec<PolicyFacts>,
    pub thermal_zones: Vec<ThermalZoneFacts>,
}

/// One cpufreq policy (`/sys/devices/system/cpu/cpufreq/policyN`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyFacts {
    /// Directory name, e.g. `policy4`.
    pub name: String,
    /// `related_cpus`: every CPU this policy's frequency applies to.
    pub related_cpus: Vec<usize>,
    /// Offered frequencies in kHz (`scaling_available_frequencies`, else `stats/time_in_state`).
    pub available_khz: Vec<u64>,
    /// `scaling_available_governors`.
    pub governors: Vec<String>,
}

/// One thermal zone (`/sys/class/thermal/thermal_zoneN`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThermalZoneFacts {
    /// Directory name, e.g. `thermal_zone0`.
    pub name: String,
    /// Its `type`, e.g. `cpu-thermal`.
    pub kind: String,
}

/// What the scenario means on this board, with everything `auto`/`all` resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedBoard {
    pub board: String,
    /// The cpufreq policies the levels are applied to.
    pub policies: Vec<String>,
    /// The levels to measure, kHz, highest first.
    pub levels_khz: Vec<u64>,
    /// The thermal zone directory to watch (`None`: the board has none).
    pub thermal_zone: Option<String>,
}

/// Checks `scenario` against the probed `facts` of `board`: pinned CPUs exist, named policies
/// exist and govern the pinned CPUs, every level is offered by every selected policy, the
/// governor asked for is available, the thermal zone exists. Resolves `levels: all` (the
/// frequencies every selected policy offers) and policies chosen from the CPUs.
pub fn validate_against_probe(
    scenario: &Scenario,
    board: &str,
    facts: &BoardFacts,
) -> Result<ResolvedBoard, ScenarioError> {
    let mut problems = Vec::new();
    let Some(index) = scenario.boards.iter().position(|b| b.name == board) else {
        problems.push(scenario.field_error("boards", format!("{board:?}"), "no board of this name in the scenario"));
        return Err(invalid(scenario, problems));
    };
    let spec = &scenario.boards[index];
    let path = |field: &str| format!("boards[{index}].{field}");
    let mut fail = |p: String, value: String, message: String| {
        problems.push(scenario.field_error(&p, value, format!("board {board}: {message}")));
    };

    if let Some(cpus) = &spec.cpus {
        for &cpu in cpus.iter().filter(|&&cpu| cpu >= facts.cpu_count) {
            fail(
                path("cpus"),
                cpu.to_string(),
                format!(
                    "CPU {cpu} does not exist: the board has {} CPUs (0-{})",
                    facts.cpu_count,
                    facts.cpu_count.saturating_sub(1)
                ),
            );
        }
    }

    let offered_names = || facts.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    let selected: Vec<&PolicyFacts> = if facts.policies.is_empty() {
        fail(
            path("cpufreq_policies"),
            "(none found)".into(),
            format!("no cpufreq policies under {}/devices/system/cpu/cpufreq", spec.sysfs_root),
        );
        Vec::new()
    } else {
        match &spec.cpufreq_policies {
            PolicySelection::Named(names) => names
                .iter()
                .enumerate()
                .filter_map(|(j, name)| {
                    let found = facts.policies.iter().find(|p| &p.name == name);
                    if found.is_none() {
                        fail(
                            format!("{}[{j}]", path("cpufreq_policies")),
                            format!("{name:?}"),
                            format!("no such cpufreq policy (the board has: {})", offered_names()),
                        );
                    }
                    found
                })
                .collect(),
            PolicySelection::FromCpus => match &spec.cpus {
                Some(cpus) => {
                    facts.policies.iter().filter(|p| p.related_cpus.iter().any(|c| cpus.contains(c))).collect()
                }
                None => facts.policies.iter().collect(),
            },
        }
    };

    // Every pinned CPU must run at the frequency being measured.
    if let (Some(cpus), false) = (&spec.cpus, selected.is_empty()) {
        for &cpu in cpus.iter().filter(|&&cpu| cpu < facts.cpu_count) {
            if !selected.iter().any(|p| p.related_cpus.contains(&cpu)) {
                let field = if matches!(spec.cpufreq_policies, PolicySelection::Named(_)) {
                    "cpufreq_policies"
                } else {
                    "cpus"
                };
                let chosen: Vec<&str> = selected.iter().map(|p| p.name.as_str()).collect();
                fail(
                    path(field),
                    format!("CPU {cpu}"),
                    format!("CPU {cpu} is pinned but none of the selected policies ({}) governs it", chosen.join(", ")),
                );
            }
        }
    }

    for p in &selected {
        if p.available_khz.is_empty() {
            fail(
                path("cpufreq_policies"),
                format!("{:?}", p.name),
                format!(
                    "{} lists no frequencies (neither scaling_available_frequencies nor stats/time_in_state)",
                    p.name
                ),
            );
        }
    }

    let levels_khz: Vec<u64> = match &scenario.dvfs.levels {
        LevelsSpec::Khz(levels) => {
            for (k, &level) in levels.iter().enumerate() {
                for p in selected.iter().filter(|p| !p.available_khz.is_empty()) {
                    if !p.available_khz.contains(&level) {
                        let yaml_index = scenario.dvfs.level_yaml_index.get(k).copied().unwrap_or(k);
                        fail(
                            format!("dvfs.levels[{yaml_index}]"),
                            format_khz(level),
                            format!(
                                "{} does not offer {} (it offers: {})",
                                p.name,
                                format_khz(level),
                                list_khz(&p.available_khz)
                            ),
                        );
                    }
                }
            }
            levels.clone()
        }
        LevelsSpec::All => {
            let mut common: Vec<u64> = selected.first().map(|p| p.available_khz.clone()).unwrap_or_default();
            common.retain(|f| selected.iter().all(|p| p.available_khz.contains(f)));
            common.sort_unstable_by(|a, b| b.cmp(a));
            common.dedup();
            if common.is_empty() && !selected.is_empty() {
                fail("dvfs.levels".into(), "\"all\"".into(), "the selected policies share no frequency".into());
            }
            if let Some(shares) = &scenario.policy.battery_shares {
                if !common.is_empty() && shares.len() != common.len() {
                    fail(
                        "policy.battery_shares".into(),
                        format!("{shares:?}"),
                        format!(
                            "has {} shares but `levels: all` resolves to {} levels ({})",
                            shares.len(),
                            common.len(),
                            list_khz(&common)
                        ),
                    );
                }
            }
            common
        }
    };

    let wanted_governor = match &scenario.dvfs.governor {
        GovernorChoice::Auto => None,
        GovernorChoice::Userspace => Some("userspace"),
        GovernorChoice::MinMaxUnder(g) => Some(g.as_str()),
    };
    if let Some(g) = wanted_governor {
        for p in selected.iter().filter(|p| !p.governors.iter().any(|x| x == g)) {
            fail(
                "dvfs.governor".into(),
                format!("{g:?}"),
                format!("{} does not offer it (it offers: {})", p.name, p.governors.join(", ")),
            );
        }
    }

    let thermal_zone = match &spec.thermal_zone {
        Some(z) => match facts.thermal_zones.iter().find(|t| &t.name == z || &t.kind == z) {
            Some(t) => Some(t.name.clone()),
            None => {
                let have: Vec<String> =
                    facts.thermal_zones.iter().map(|t| format!("{} ({})", t.name, t.kind)).collect();
                let have = if have.is_empty() { "none".to_string() } else { have.join(", ") };
                fail(path("thermal_zone"), format!("{z:?}"), format!("no such thermal zone (the board has: {have})"));
                None
            }
        },
        None => {
            let mut zones: Vec<&ThermalZoneFacts> = facts.thermal_zones.iter().collect();
            zones.sort_by_key(|t| (t.name.len(), t.name.clone()));
            if zones.is_empty() {
                if let Some(t) = scenario.measure.cooldown_temp_c {
                    fail(
                        "measure.cooldown_temp_c".into(),
                        t.to_string(),
                        "a cool-down temperature is set but the board has no thermal zone".into(),
                    );
                }
            }
            zones.first().map(|t| t.name.clone())
        }
    };

    if !problems.is_empty() {
        return Err(invalid(scenario, problems));
    }
    Ok(ResolvedBoard {
        board: board.to_string(),
        policies: selected.iter().map(|p| p.name.clone()).collect(),
        levels_khz,
        thermal_zone,
    })
}

fn list_khz(khz: &[u64]) -> String {
    let mut sorted = khz.to_vec();
    sorted.sort_unstable();
    if sorted.iter().all(|f| f % 1000 == 0) {
        format!("{} MHz", sorted.iter().map(|f| (f / 1000).to_string()).collect::<Vec<_>>().join(", "))
    } else {
        format!("{} kHz", sorted.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", "))
    }
}

fn invalid(scenario: &Scenario, mut problems: Vec<FieldError>) -> ScenarioError {
    problems.sort_by_key(|p| (p.line, p.column));
    ScenarioError::Invalid { source_name: scenario.source_name.clone(), problems }
}
