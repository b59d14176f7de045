//! The example scenarios under `scenarios/` parse and mean what their comments say.

use std::path::PathBuf;
use std::time::Duration;

use harness::plan::{plan, BoardLevels};
use harness::scenario::{
    load_scenario, parse_scenario, GovernorChoice, HostKeyChecking, InaFormat, LevelsSpec, MonitorKind, MonitorPort,
    MonitorSettings, PatternMethod, PolicySelection, Ppk2Settings, TargetSpec, TransportSpec, VariantKind, Workload,
};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("scenarios").join(name)
}

#[test]
fn sim_rt3_is_the_rt3_experiment_on_a_simulated_board() {
    let s = load_scenario(example("sim-rt3.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.name, "sim-rt3");
    assert_eq!(s.boards.len(), 1);
    let board = &s.boards[0];
    assert!(board.sim);
    assert_eq!(board.transport, TransportSpec::Local);
    assert!(board.monitor.is_none(), "the simulator brings its own PPK2");
    assert_eq!(s.dvfs.levels, LevelsSpec::Khz(vec![1_500_000, 1_000_000, 600_000]));

    let kinds: Vec<&str> = s.variants.iter().map(|v| v.kind.as_str()).collect();
    assert!(kinds.contains(&"dense") && kinds.contains(&"block"));
    let pattern_sparsities: Vec<f64> = s
        .variants
        .iter()
        .filter_map(|v| match &v.kind {
            VariantKind::Pattern { sparsity, .. } => Some(*sparsity),
            _ => None,
        })
        .collect();
    assert!(pattern_sparsities.len() >= 3);
    assert!(pattern_sparsities.windows(2).all(|w| w[0] < w[1]), "rising sparsity: {pattern_sparsities:?}");
    assert!(s.constraints.latency_deadline.is_some());
    assert_eq!(s.policy.shares_for(3), vec![0.5, 0.3, 0.2]);

    // "A few minutes on 2 cores."
    let p = plan(&s);
    assert_eq!(p.total_cells(), Some(3 * 5 * 2));
    let estimate = p.estimated_duration().unwrap();
    assert!(estimate < Duration::from_secs(5 * 60), "{estimate:?}");
}

#[test]
fn rpi4_is_a_single_cluster_a72_board_over_ssh() {
    let s = load_scenario(example("rpi4.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let board = &s.boards[0];
    let TransportSpec::Ssh(ssh) = &board.transport else { panic!("ssh expected") };
    assert_eq!((ssh.host.as_str(), ssh.port, ssh.user.as_str()), ("rpi4.local", 22, "pi"));
    assert_eq!(ssh.host_key_checking, HostKeyChecking::Strict);
    assert_eq!(ssh.connect_timeout, Duration::from_secs(10));
    assert!(board.sudo);
    assert_eq!(board.target, TargetSpec::Auto);
    assert_eq!(board.cpus, Some(vec![3]));
    assert_eq!(board.cpufreq_policies, PolicySelection::Named(vec!["policy0".into()]));
    assert_eq!(board.sysfs_root, "/sys");
    // A Pi 4 draws up to 3 A: more than a PPK2 carries, so the example measures its 5 V input with
    // an INA226 sketch.
    let monitor = board.monitor.as_ref().unwrap();
    assert_eq!(monitor.kind, MonitorKind::Ina);
    assert_eq!(monitor.port, MonitorPort::Path("/dev/ttyACM0".into()));
    let MonitorSettings::Ina(ina) = &monitor.settings else { panic!("ina expected") };
    assert_eq!((ina.format, ina.layout.clone()), (InaFormat::Csv, None));
    let battery = board.battery.as_ref().unwrap();
    assert!((battery.energy_joules() - 10_000.0 * 3.7 * 3.6).abs() < 1e-6);
    // 1500MHz, 1.0GHz and 600000kHz are the same unit underneath.
    assert_eq!(s.dvfs.levels, LevelsSpec::Khz(vec![1_500_000, 1_000_000, 600_000]));
    assert_eq!(s.measure.cooldown_temp_c, Some(60.0));
    assert_eq!(s.measure.cooldown_timeout, Duration::from_secs(300));
    assert_eq!(s.policy.workload, Workload::Periodic { period: Duration::from_secs(5) });
    assert_eq!(s.variant("pp87").unwrap().accuracy, Some(0.905));
    assert!(matches!(s.variant("bp64").unwrap().kind, VariantKind::Block { global: true, .. }));
    let regression = s.regression.as_ref().unwrap();
    assert_eq!((regression.threshold_pct, regression.alpha, regression.baseline.clone()), (3.0, 0.05, None));
}

#[test]
fn odroid_pins_a_big_core_and_scales_the_big_cluster() {
    let s = load_scenario(example("odroid-xu4.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let board = &s.boards[0];
    assert_eq!(board.cpus, Some(vec![4]));
    assert_eq!(board.cpufreq_policies, PolicySelection::Named(vec!["policy4".into()]));
    assert_eq!(board.target, TargetSpec::Triple("thumbv7neon-unknown-linux-gnueabihf".into()));
    let TransportSpec::Ssh(ssh) = &board.transport else { panic!("ssh expected") };
    assert_eq!(ssh.host_key_checking, HostKeyChecking::AcceptNew);
    assert_eq!(ssh.identity.as_deref(), Some(std::path::Path::new("/home/lab/.ssh/odroid_ed25519")));
    let monitor = board.monitor.as_ref().unwrap();
    assert_eq!(monitor.port, MonitorPort::Path("/dev/ttyUSB0".into()));
    let MonitorSettings::Ina(ina) = &monitor.settings else { panic!("ina expected") };
    assert_eq!(ina.format, InaFormat::Csv);
    assert_eq!(ina.columns.current.as_deref(), Some("Current[mA]"));
    assert_eq!(s.dvfs.governor, GovernorChoice::Userspace);
    assert_eq!(s.dvfs.levels, LevelsSpec::Khz(vec![2_000_000, 1_400_000, 800_000]));
    // "60%" is the fraction 0.6; defaults fill the block shape and pattern count.
    assert_eq!(
        s.variant("bp60").unwrap().kind,
        VariantKind::Block { sparsity: 0.6, block_rows: 32, block_cols: 1, global: false }
    );
    // The pattern seed defaults to the model's.
    assert_eq!(
        s.variant("pp62").unwrap().kind,
        VariantKind::Pattern {
            base: "bp60".into(),
            tile: 8,
            patterns_per_set: 4,
            sparsity: 0.625,
            method: PatternMethod::FrequentTopK,
            seed: 3
        }
    );
    assert_eq!(s.policy.battery_shares, None);
}

#[test]
fn relative_host_paths_follow_the_scenario_file() {
    let text = "\
boards:
  - name: b
    host: 10.0.0.2
    user: lab
    identity: keys/id_ed25519
model: {preset: minilm}
variants: [{name: dense, kind: dense}]
dvfs: {levels: all}
";
    let s = parse_scenario(text, "/labs/scenarios/x.yaml").unwrap_or_else(|e| panic!("{e}"));
    let TransportSpec::Ssh(ssh) = &s.boards[0].transport else { panic!() };
    assert_eq!(ssh.identity.as_deref(), Some(std::path::Path::new("/labs/scenarios/keys/id_ed25519")));
    assert_eq!(s.name, "x");
    assert_eq!(plan(&s).boards[0].levels, BoardLevels::AfterProbe);
}

#[test]
fn ipv6_hosts_and_flow_style_are_accepted() {
    let text = "\
boards: [{name: v6, host: \"::1\", user: ci, port: 2222, exec_prefix: qemu-aarch64-static,
          cpus: \"0-1\", cpufreq_policies: policy0, sysfs_root: /tmp/fake/sys/}]
model: {preset: rt3-transformer, seq: 35}
variants:
- {name: dense, kind: dense}
dvfs: {levels: [1GHz], settle: 0s}
";
    let s = parse_scenario(text, "inline").unwrap_or_else(|e| panic!("{e}"));
    let b = &s.boards[0];
    assert_eq!(b.exec_prefix, Some(vec!["qemu-aarch64-static".to_string()]));
    assert_eq!(b.cpus, Some(vec![0, 1]));
    assert_eq!(b.sysfs_root, "/tmp/fake/sys");
    assert_eq!(s.dvfs.settle, Duration::ZERO);
}

fn with_monitor(monitor: &str) -> String {
    format!(
        "boards:\n  - name: b\n    host: 10.0.0.2\n    user: lab\n    monitor: {monitor}\n\
         model: {{preset: minilm}}\nvariants: [{{name: dense, kind: dense}}]\ndvfs: {{levels: all}}\n"
    )
}

#[test]
fn ppk2_ampere_mode_needs_the_rail_voltage() {
    let s = parse_scenario(&with_monitor("{kind: ppk2, mode: ampere, rail_voltage_mv: 5000}"), "x.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    let m = s.boards[0].monitor.as_ref().unwrap();
    assert_eq!(m.settings, MonitorSettings::Ppk2(Ppk2Settings::AmpereMeter { rail_mv: 5000 }));
    let err = parse_scenario(&with_monitor("{kind: ppk2, mode: ampere}"), "x.yaml").unwrap_err().to_string();
    assert!(err.contains("boards[0].monitor.rail_voltage_mv") && err.contains("current only"), "{err}");
    let err = parse_scenario(&with_monitor("{kind: ppk2, mode: ampere, rail_voltage_mv: 12000}"), "x.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("rail_voltage_mv") && err.contains("12000"), "{err}");
    let err = parse_scenario(
        &with_monitor("{kind: ppk2, mode: source, source_voltage_mv: 3300, rail_voltage_mv: 3300}"),
        "x.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("rail_voltage_mv") && err.contains("ampere only"), "{err}");
    let err = parse_scenario(&with_monitor("{kind: ina, port: /dev/ttyUSB0, rail_voltage_mv: 5000}"), "x.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("rail_voltage_mv"), "{err}");
}

#[test]
fn ina_columns_describe_a_headerless_sketch_and_reach_the_driver() {
    let s = parse_scenario(
        &with_monitor(
            "{kind: ina, port: /dev/ttyUSB0, format: csv, columns: [millis, \"Current[mA]\", -, \"BusV[V]\"]}",
        ),
        "x.yaml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let MonitorSettings::Ina(ina) = &s.boards[0].monitor.as_ref().unwrap().settings else { panic!("ina") };
    assert_eq!(
        ina.layout.as_deref(),
        Some(&["millis".to_string(), "Current[mA]".into(), "-".into(), "BusV[V]".into()][..])
    );
    for (bad, what) in [
        ("{kind: ina, port: /dev/ttyUSB0, format: key_value, columns: [millis, \"Current[mA]\"]}", "key-value"),
        ("{kind: ina, port: /dev/ttyUSB0, columns: [millis, \"Strom[mA]\"]}", "Strom"),
        ("{kind: ina, port: /dev/ttyUSB0, columns: [millis, \"BusV[V]\"]}", "current or a power"),
    ] {
        let err = parse_scenario(&with_monitor(bad), "x.yaml").unwrap_err().to_string();
        assert!(err.contains("boards[0].monitor.columns") && err.contains(what), "{bad}: {err}");
    }
}
