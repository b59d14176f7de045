//! Planning (cells, order, keys, estimates) and checks against what a probed board offers.

use std::collections::HashSet;
use std::path::PathBuf;

use harness::plan::{plan, BoardLevels, CellKey};
use harness::scenario::{
    load_scenario, parse_scenario, validate_against_probe, BoardFacts, PolicyFacts, ThermalZoneFacts,
};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("scenarios").join(name)
}

fn mhz(list: &[u64]) -> Vec<u64> {
    list.iter().map(|m| m * 1000).collect()
}

fn rpi4_facts() -> BoardFacts {
    BoardFacts {
        cpu_count: 4,
        policies: vec![PolicyFacts {
            name: "policy0".into(),
            related_cpus: vec![0, 1, 2, 3],
            available_khz: mhz(&[600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 1500]),
            governors: vec!["conservative".into(), "ondemand".into(), "userspace".into(), "performance".into()],
        }],
        thermal_zones: vec![ThermalZoneFacts { name: "thermal_zone0".into(), kind: "cpu-thermal".into() }],
    }
}

fn xu4_facts() -> BoardFacts {
    BoardFacts {
        cpu_count: 8,
        policies: vec![
            PolicyFacts {
                name: "policy0".into(),
                related_cpus: vec![0, 1, 2, 3],
                available_khz: (2..=14).map(|x| x * 100_000).collect(),
                governors: vec!["userspace".into(), "performance".into()],
            },
            PolicyFacts {
                name: "policy4".into(),
                related_cpus: vec![4, 5, 6, 7],
                available_khz: (2..=20).map(|x| x * 100_000).collect(),
                governors: vec!["userspace".into(), "performance".into()],
            },
        ],
        thermal_zones: (0..4)
            .map(|i| ThermalZoneFacts { name: format!("thermal_zone{i}"), kind: "cpu-thermal".into() })
            .collect(),
    }
}

#[test]
fn sim_rt3_plan_is_repeat_major_and_complete() {
    let s = load_scenario(example("sim-rt3.yaml")).unwrap();
    let p = plan(&s);
    let board = &p.boards[0];
    assert_eq!(board.cells.len(), 30);

    // Repeat 0 first: every level x variant, highest level first, before any repeat 1.
    let repeats: Vec<u32> = board.cells.iter().map(|c| c.key.repeat).collect();
    assert!(repeats[..15].iter().all(|&r| r == 0) && repeats[15..].iter().all(|&r| r == 1));
    let first_level: Vec<u64> = board.cells[..5].iter().map(|c| c.key.freq_khz).collect();
    assert_eq!(first_level, vec![1_500_000; 5]);
    assert_eq!(board.cells[5].key.freq_khz, 1_000_000);
    assert_eq!(board.cells[10].key.freq_khz, 600_000);
    // Variants rotate between repeats.
    assert_eq!(board.cells[0].key.variant, "dense");
    assert_eq!(board.cells[15].key.variant, "bp50");
    assert_eq!(board.cells[19].key.variant, "dense");

    // Each (level, variant, repeat) exactly once.
    let keys: HashSet<&CellKey> = board.cells.iter().map(|c| &c.key).collect();
    assert_eq!(keys.len(), 30);
    // The level is pinned (and idle measured) once per level per repeat.
    assert_eq!(board.cells.iter().filter(|c| c.starts_level_visit).count(), 6);

    let shown = p.to_string();
    for needle in
        ["scenario sim-rt3", "board sim (simulated, local)", "1500 MHz, 1000 MHz, 600 MHz", "= 30", "total: 30 cells"]
    {
        assert!(shown.contains(needle), "{needle:?} missing from:\n{shown}");
    }
}

#[test]
fn resume_skips_done_cells_and_repins() {
    let s = load_scenario(example("sim-rt3.yaml")).unwrap();
    let board = plan(&s).boards.remove(0);
    // The first three cells of the first level visit are done.
    let done: HashSet<CellKey> = board.cells[..3].iter().map(|c| c.key.clone()).collect();
    let pending = board.pending_cells(&done);
    assert_eq!(pending.len(), 27);
    assert_eq!(pending[0].key, board.cells[3].key);
    assert!(pending[0].starts_level_visit, "a resumed run must pin and measure idle again");
    assert_eq!(pending.iter().filter(|c| c.starts_level_visit).count(), 6);
    // Keys survive a round trip through text (as stored in results).
    for c in &pending {
        assert_eq!(c.key.to_string().parse::<CellKey>().unwrap(), c.key);
    }
}

#[test]
fn levels_all_resolve_after_probing() {
    let text = std::fs::read_to_string(example("rpi4.yaml"))
        .unwrap()
        .replace("levels: [1500MHz, 1.0GHz, 600000kHz]", "levels: all");
    let text = text.replace("battery_shares: [0.5, 0.3, 0.2]", "battery_shares: [0.5, 0.5]");
    let s = parse_scenario(&text, "rpi4-all.yaml").unwrap_or_else(|e| panic!("{e}"));
    let mut p = plan(&s);
    assert_eq!(p.boards[0].levels, BoardLevels::AfterProbe);
    assert_eq!(p.total_cells(), None);
    assert!(p.to_string().contains("known after probing"));

    // Ten offered levels but two shares: refused at probe time, pointing at the shares.
    let err = validate_against_probe(&s, "rpi4", &rpi4_facts()).unwrap_err().to_string();
    assert!(err.contains("policy.battery_shares") && err.contains("10 levels"), "{err}");

    let s = parse_scenario(&text.replace("battery_shares: [0.5, 0.5]", "# default shares"), "rpi4-all.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    let resolved = validate_against_probe(&s, "rpi4", &rpi4_facts()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resolved.levels_khz.len(), 10);
    assert_eq!(resolved.levels_khz[0], 1_500_000);
    assert_eq!(resolved.thermal_zone.as_deref(), Some("thermal_zone0"));
    assert!(p.resolve_levels(&s, "rpi4", &resolved.levels_khz));
    assert_eq!(p.total_cells(), Some(10 * 5 * 3));
    assert!(p.estimated_duration().is_some());
}

#[test]
fn probe_mismatches_are_named_with_their_line() {
    let s = load_scenario(example("rpi4.yaml")).unwrap();
    let text = std::fs::read_to_string(example("rpi4.yaml")).unwrap();
    let line_of = |needle: &str| format!("line {},", 1 + text.lines().position(|l| l.contains(needle)).unwrap());
    assert!(validate_against_probe(&s, "rpi4", &rpi4_facts()).is_ok());

    // A frequency the board does not offer: the error points at the level as written.
    let mut facts = rpi4_facts();
    facts.policies[0].available_khz.retain(|&f| f != 1_000_000);
    let err = validate_against_probe(&s, "rpi4", &facts).unwrap_err().to_string();
    assert!(err.contains("dvfs.levels[1]") && err.contains("1000 MHz") && err.contains(&line_of("levels: [")), "{err}");

    // A CPU the board does not have.
    let mut facts = rpi4_facts();
    facts.cpu_count = 2;
    facts.policies[0].related_cpus = vec![0, 1];
    let err = validate_against_probe(&s, "rpi4", &facts).unwrap_err().to_string();
    assert!(err.contains("boards[0].cpus") && err.contains("CPU 3") && err.contains(&line_of("cpus:")), "{err}");

    // A missing thermal zone.
    let mut facts = rpi4_facts();
    facts.thermal_zones[0].kind = "soc-thermal".into();
    let err = validate_against_probe(&s, "rpi4", &facts).unwrap_err().to_string();
    assert!(
        err.contains("boards[0].thermal_zone") && err.contains("cpu-thermal") && err.contains("soc-thermal"),
        "{err}"
    );

    // No such board.
    assert!(validate_against_probe(&s, "nope", &rpi4_facts()).is_err());
}

#[test]
fn big_little_policies_must_govern_the_pinned_core() {
    let s = load_scenario(example("odroid-xu4.yaml")).unwrap();
    let resolved = validate_against_probe(&s, "xu4", &xu4_facts()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resolved.policies, vec!["policy4".to_string()]);
    assert_eq!(resolved.levels_khz, mhz(&[2000, 1400, 800]));

    // Pointing the levels at the LITTLE cluster while pinned to a big core is refused:
    // policy0 does not govern CPU 4, and it does not offer 2 GHz.
    let text = std::fs::read_to_string(example("odroid-xu4.yaml")).unwrap().replace("[policy4]", "[policy0]");
    let s = parse_scenario(&text, "odroid.yaml").unwrap();
    let err = validate_against_probe(&s, "xu4", &xu4_facts()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("none of the selected policies (policy0) governs it"), "{msg}");
    assert!(msg.contains("policy0 does not offer 2000 MHz"), "{msg}");

    // The userspace governor is required by this scenario.
    let mut facts = xu4_facts();
    facts.policies[1].governors = vec!["performance".into()];
    let msg = validate_against_probe(&load_scenario(example("odroid-xu4.yaml")).unwrap(), "xu4", &facts)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("dvfs.governor") && msg.contains("userspace"), "{msg}");
}

#[test]
fn policies_follow_the_pinned_cpus_when_not_named() {
    let text = std::fs::read_to_string(example("odroid-xu4.yaml")).unwrap().replace("cpufreq_policies: [policy4]", "");
    let s = parse_scenario(&text, "odroid.yaml").unwrap();
    let resolved = validate_against_probe(&s, "xu4", &xu4_facts()).unwrap();
    assert_eq!(resolved.policies, vec!["policy4".to_string()]);
}
