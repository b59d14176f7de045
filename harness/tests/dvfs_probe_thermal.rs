//! `probe` and the thermal cool-down wait on the local transport over fake
//! sysfs trees (with this host's `/proc` and `uname`, as the simulated board).

mod dvfs_support;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use dvfs_support::sysfs::{FakeCpufreqTree, FakePolicy};
use dvfs_support::{FakeClock, LEVELS};
use harness::board::local::LocalBoard;
use harness::dvfs::{
    list_thermal_zones, resolve_thermal_zone, wait_for_cool_down, DvfsErrorKind, FrequencySource, Sysfs,
    ThermalZoneSelector,
};
use harness::probe::{probe, ProbeReport};

#[test]
fn probe_reports_host_basics_and_the_fake_tree() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FakeCpufreqTree::builder()
        .policy(&[0, 1], &LEVELS, &["ondemand", "userspace", "performance"])
        .policy_with(FakePolicy::new(&[2, 3], &[500_000, 2_000_000], &["schedutil"]).without_available_frequencies())
        .thermal_zone("cpu-thermal", 47_500)
        .thermal_zone("gpu-thermal", -1_000)
        .write(dir.path())
        .unwrap();
    let mut board = LocalBoard::new("sim");
    let report = probe(&mut board, &tree.root_str()).unwrap();

    assert_eq!(report.board, "sim");
    assert_eq!(report.transport, "local");
    assert_eq!(report.arch, std::env::consts::ARCH);
    assert!(!report.kernel.is_empty());
    assert!(report.cpu.cores >= 1, "{:?}", report.cpu);
    assert!(report.cpu.model.is_some(), "{:?}", report.cpu);
    assert!(report.memory.total_kib > 0);

    assert_eq!(report.cpufreq.len(), 2);
    let p0 = &report.cpufreq[0];
    assert_eq!(p0.policy.related_cpus, vec![0, 1]);
    assert_eq!(p0.policy.available_khz, LEVELS.to_vec());
    assert_eq!(p0.governor, "ondemand");
    assert_eq!((p0.min_khz, p0.max_khz, p0.cur_khz), (600_000, 1_500_000, Some(600_000)));
    assert_eq!(report.cpufreq[1].policy.frequencies_from, FrequencySource::TimeInState);
    assert_eq!(report.thermal_zones.len(), 2);
    assert_eq!(report.thermal_zones[1].zone_type, "gpu-thermal");
    assert_eq!(report.thermal_zones[1].temp_millicelsius, Some(-1_000));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    // JSON round trip for `--json` and run.json.
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"available_khz\":[600000,750000,1000000,1200000,1500000]"), "{json}");
    let back: ProbeReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);

    let text = report.to_string();
    assert!(text.contains("policy0   cpus 0-1  governor ondemand  min 600 MHz  max 1500 MHz  cur 600 MHz"), "{text}");
    assert!(text.contains("levels (MHz, from stats/time_in_state): 500 2000"), "{text}");
    assert!(text.contains("thermal_zone0   cpu-thermal          47.5 °C"), "{text}");
}

#[test]
fn probe_of_a_board_without_cpufreq_warns_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let mut board = LocalBoard::new("bare");
    let report = probe(&mut board, &dir.path().to_string_lossy()).unwrap();
    assert!(report.cpufreq.is_empty());
    assert!(report.thermal_zones.is_empty());
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("no cpufreq policies"), "{:?}", report.warnings);
    assert!(report.to_string().contains("warning: no thermal zones"));
}

#[test]
fn thermal_zones_by_type_or_index_and_a_clear_error_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FakeCpufreqTree::raspberry_pi_4().thermal_zone("gpu-thermal", 40_000).write(dir.path()).unwrap();
    let sysfs = Sysfs::new(tree.root_str(), false);
    let mut board = LocalBoard::new("rpi4");
    let zones = list_thermal_zones(&mut board, &sysfs).unwrap();
    assert_eq!(zones.len(), 2);
    let z = resolve_thermal_zone(&mut board, &sysfs, &"gpu-thermal".parse().unwrap()).unwrap();
    assert_eq!((z.index, z.temp_millicelsius), (1, Some(40_000)));
    let z = resolve_thermal_zone(&mut board, &sysfs, &ThermalZoneSelector::Index(0)).unwrap();
    assert_eq!(z.zone_type, "cpu-thermal");
    let err = resolve_thermal_zone(&mut board, &sysfs, &"soc_thermal".parse().unwrap()).unwrap_err();
    assert_eq!(err.kind, DvfsErrorKind::NoThermalZone);
    let text = err.to_string();
    assert!(text.contains("no thermal zone type \"soc_thermal\""), "{text}");
    assert!(text.contains("thermal_zone0 (cpu-thermal), thermal_zone1 (gpu-thermal)"), "{text}");
}

#[test]
fn cool_down_waits_until_below_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FakeCpufreqTree::raspberry_pi_4().write(dir.path()).unwrap();
    tree.set_temp(0, 62_000).unwrap();
    let sysfs = Sysfs::new(tree.root_str(), false);
    let mut board = LocalBoard::new("rpi4");
    // The zone cools 4 °C per second of (fake) time.
    let tree_for_clock = tree.clone();
    let mut clock = FakeClock::new(move |now: Duration| {
        let temp = 62_000 - (now.as_secs_f64() * 4_000.0) as i64;
        tree_for_clock.set_temp(0, temp).unwrap();
    });
    let report = wait_for_cool_down(
        &mut board,
        &sysfs,
        0,
        50_000,
        Duration::from_secs(60),
        Duration::from_secs(1),
        &mut clock,
        None,
    )
    .unwrap();
    // 62 -> 58 -> 54 -> 50 (not below) -> 46.
    assert_eq!(report.start_millicelsius, 62_000);
    assert_eq!(report.end_millicelsius, 46_000);
    assert_eq!(report.waited, Duration::from_secs(4));
    assert_eq!(report.polls, 5);
    assert!(clock.sleeps.iter().all(|d| *d == Duration::from_secs(1)));

    // Already cool: no sleep at all.
    let mut idle = FakeClock::new(|_| {});
    let report = wait_for_cool_down(
        &mut board,
        &sysfs,
        0,
        50_000,
        Duration::from_secs(60),
        Duration::from_secs(1),
        &mut idle,
        None,
    )
    .unwrap();
    assert_eq!((report.polls, report.waited), (1, Duration::ZERO));
    assert!(idle.sleeps.is_empty());
}

#[test]
fn cool_down_times_out_with_the_temperatures_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let tree = FakeCpufreqTree::raspberry_pi_4().write(dir.path()).unwrap();
    tree.set_temp(0, 80_000).unwrap();
    let sysfs = Sysfs::new(tree.root_str(), false);
    let mut board = LocalBoard::new("rpi4");
    let polls = Rc::new(Cell::new(0));
    let seen = polls.clone();
    let mut clock = FakeClock::new(move |_| seen.set(seen.get() + 1));
    let err = wait_for_cool_down(
        &mut board,
        &sysfs,
        0,
        50_000,
        Duration::from_secs(10),
        Duration::from_secs(3),
        &mut clock,
        None,
    )
    .unwrap_err();
    assert_eq!(err.kind, DvfsErrorKind::CoolDownTimeout);
    let text = err.to_string();
    assert!(text.starts_with("board rpi4: "), "{text}");
    assert!(text.contains("thermal_zone0/temp"), "{text}");
    assert!(text.contains("still 80.0 °C after waiting 10 s for it to fall below 50.0 °C"), "{text}");
    // 3 + 3 + 3 + 1: the last sleep is cut to the deadline.
    assert_eq!(clock.sleeps.last(), Some(&Duration::from_secs(1)));
    assert_eq!(clock.now, Duration::from_secs(10));
    assert_eq!(polls.get(), 4);
}
