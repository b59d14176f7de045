//! Bad and hostile scenarios: each is refused before anything runs, with an error naming
//! the field path, the bad value and its line.

use harness::scenario::{load_scenario, parse_scenario, ScenarioError, MAX_SCENARIO_BYTES};

/// A valid scenario; the cases below break one thing each. Line numbers matter.
const BASE: &str = "\
name: t
boards:
  - name: b1
    host: board.example
    user: pi
    workdir: /tmp/hil
model:
  preset: rt3-transformer
variants:
  - name: dense
    kind: dense
  - name: bp
    kind: block
    sparsity: 0.5
  - name: pp
    kind: pattern
    base: bp
    sparsity: 0.75
dvfs:
  levels: [1500MHz, 600MHz]
measure:
  min_duration: 1s
  repeats: 2
";

fn with(old: &str, new: &str) -> String {
    assert!(BASE.contains(old), "{old:?} not in the base scenario");
    BASE.replacen(old, new, 1)
}

fn refused(text: &str) -> String {
    match parse_scenario(text, "scenarios/t.yaml") {
        Ok(s) => panic!("accepted: {s:?}\n---\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn expect(text: &str, path: &str, value: &str, line: usize) {
    let msg = refused(text);
    let line_text = format!("line {line},");
    assert!(
        msg.contains(path) && msg.contains(value) && msg.contains(&line_text),
        "expected path {path:?}, value {value:?} and {line_text:?} in:\n{msg}"
    );
}

#[test]
fn the_base_scenario_is_valid() {
    parse_scenario(BASE, "scenarios/t.yaml").unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn hostile_hosts_and_users() {
    expect(&with("host: board.example", "host: \"board;reboot\""), "boards[0].host", "\"board;reboot\"", 4);
    expect(&with("host: board.example", "host: -oProxyCommand=touch_x"), "boards[0].host", "-oProxyCommand", 4);
    expect(&with("host: board.example", "host: \"$(reboot)\""), "boards[0].host", "$(reboot)", 4);
    expect(&with("host: board.example", "host: \"a\\nb\""), "boards[0].host", "\"a\\nb\"", 4);
    expect(&with("host: board.example", "host: \"a b\""), "boards[0].host", "\"a b\"", 4);
    expect(&with("user: pi", "user: \"pi;id\""), "boards[0].user", "\"pi;id\"", 5);
    expect(&with("user: pi", "user: \"`id`\""), "boards[0].user", "`id`", 5);
    expect(&with("user: pi", "user: Root"), "boards[0].user", "\"Root\"", 5);
    expect(&with("user: pi", "user: -lroot"), "boards[0].user", "\"-lroot\"", 5);
}

#[test]
fn hostile_paths() {
    expect(&with("workdir: /tmp/hil", "workdir: \"/tmp/hil;reboot\""), "boards[0].workdir", "/tmp/hil;reboot", 6);
    expect(&with("workdir: /tmp/hil", "workdir: /tmp/../etc"), "boards[0].workdir", "/tmp/../etc", 6);
    expect(&with("workdir: /tmp/hil", "workdir: tmp/hil"), "boards[0].workdir", "\"tmp/hil\"", 6);
    expect(&with("workdir: /tmp/hil", "workdir: \"/tmp/my dir\""), "boards[0].workdir", "/tmp/my dir", 6);
    expect(&with("workdir: /tmp/hil", "workdir: \"/tmp/$HOME\""), "boards[0].workdir", "$HOME", 6);
    expect(&with("workdir: /tmp/hil", "workdir: /"), "boards[0].workdir", "\"/\"", 6);
    expect(
        &with("workdir: /tmp/hil", "workdir: /tmp/hil\n    identity: ../../etc/shadow"),
        "boards[0].identity",
        "../../etc/shadow",
        7,
    );
    expect(
        &with("workdir: /tmp/hil", "workdir: /tmp/hil\n    sysfs_root: /sys/../proc"),
        "boards[0].sysfs_root",
        "/sys/../proc",
        7,
    );
    expect(
        &with("preset: rt3-transformer", "safetensors: model.safetensors"),
        "model.safetensors",
        "model.safetensors",
        8,
    );
}

#[test]
fn hostile_names() {
    expect(&with("- name: b1", "- name: \"b1 && reboot\""), "boards[0].name", "b1 && reboot", 3);
    expect(&with("- name: b1", "- name: ../b1"), "boards[0].name", "\"../b1\"", 3);
    expect(&with("- name: dense", "- name: \"dense|sh\""), "variants[0].name", "dense|sh", 10);
    expect(&with("name: t\n", "name: \"t/../../x\"\n"), "name", "t/../../x", 1);
    expect(
        &with("workdir: /tmp/hil", "workdir: /tmp/hil\n    exec_prefix: [\"qemu; reboot\"]"),
        "boards[0].exec_prefix[0]",
        "qemu; reboot",
        7,
    );
    expect(
        &with("workdir: /tmp/hil", "workdir: /tmp/hil\n    target: \"x86_64;rm\""),
        "boards[0].target",
        "x86_64;rm",
        7,
    );
    expect(
        &with("workdir: /tmp/hil", "workdir: /tmp/hil\n    cpufreq_policies: [\"policy0 x\"]"),
        "boards[0].cpufreq_policies[0]",
        "policy0 x",
        7,
    );
    expect(
        &with("workdir: /tmp/hil", "workdir: /tmp/hil\n    thermal_zone: ../../x"),
        "boards[0].thermal_zone",
        "../../x",
        7,
    );
    expect(&with("workdir: /tmp/hil", "workdir: /tmp/hil\n    cpus: \"0;reboot\""), "boards[0].cpus", "0;reboot", 7);
}

#[test]
fn huge_and_negative_numbers() {
    expect(&with("repeats: 2", "repeats: 99999999999999999999999"), "measure.repeats", "99999999999999999999999", 23);
    expect(&with("repeats: 2", "repeats: 1000000"), "measure.repeats", "1000000", 23);
    expect(&with("repeats: 2", "repeats: -1"), "measure.repeats", "-1", 23);
    expect(&with("repeats: 2", "repeats: 2.5"), "measure.repeats", "2.5", 23);
    expect(&with("min_duration: 1s", "min_duration: -5s"), "measure.min_duration", "-5s", 22);
    expect(&with("min_duration: 1s", "min_duration: 0s"), "measure.min_duration", "0s", 22);
    expect(&with("min_duration: 1s", "min_duration: 100000h"), "measure.min_duration", "100000h", 22);
    expect(&with("min_duration: 1s", "min_duration: 5"), "measure.min_duration", "5", 22);
    expect(
        &with("repeats: 2", "repeats: 2\n  min_iterations: 18446744073709551616"),
        "measure.min_iterations",
        "18446744073709551616",
        24,
    );
    expect(&with("workdir: /tmp/hil", "workdir: /tmp/hil\n    port: 70000"), "boards[0].port", "70000", 7);
    expect(&with("workdir: /tmp/hil", "workdir: /tmp/hil\n    port: 0"), "boards[0].port", "0", 7);
    expect(&with("levels: [1500MHz, 600MHz]", "levels: [1500000GHz]"), "dvfs.levels[0]", "1500000GHz", 20);
    expect(&with("sparsity: 0.75", "sparsity: 1.0"), "variants[2].sparsity", "1.0", 18);
    expect(&with("sparsity: 0.75", "sparsity: -0.1"), "variants[2].sparsity", "-0.1", 18);
    expect(&with("sparsity: 0.5", "sparsity: 150%"), "variants[1].sparsity", "150%", 14);
}

#[test]
fn bad_levels() {
    expect(&with("levels: [1500MHz, 600MHz]", "levels: []"), "dvfs.levels", "[]", 20);
    expect(&with("levels: [1500MHz, 600MHz]", "levels: [1500, 600MHz]"), "dvfs.levels[0]", "1500", 20);
    expect(&with("levels: [1500MHz, 600MHz]", "levels: [1500MHz, 1.5GHz]"), "dvfs.levels[1]", "1.5GHz", 20);
    expect(&with("levels: [1500MHz, 600MHz]", "levels: some"), "dvfs.levels", "some", 20);
    expect(
        &with("levels: [1500MHz, 600MHz]", "levels:\n  - 1500MHz\n  - 600 furlongs"),
        "dvfs.levels[1]",
        "600 furlongs",
        22,
    );
}

#[test]
fn duplicates_and_references() {
    expect(
        &with("workdir: /tmp/hil\n", "workdir: /tmp/hil\n  - name: b1\n    host: other.example\n    user: pi\n"),
        "boards[1].name",
        "\"b1\"",
        7,
    );
    expect(&with("- name: pp", "- name: dense"), "variants[2].name", "\"dense\"", 15);
    expect(&with("base: bp", "base: nosuch"), "variants[2].base", "\"nosuch\"", 17);
    expect(&with("base: bp", "base: dense"), "variants[2].base", "\"dense\"", 17);
    expect(&with("    base: bp\n", ""), "variants[2].base", "(missing)", 15);
    expect(&with("kind: dense", "kind: dense\n    sparsity: 0.5"), "variants[0].sparsity", "0.5", 12);
    // A pattern set's sparsity counts the base's BP zeros, so it must exceed the base's.
    expect(&with("sparsity: 0.75", "sparsity: 0.4"), "variants[2].sparsity", "0.4", 18);
    // A sparsity that does not parse is said once, not judged again as its stand-in 0.
    let msg = refused(&with("sparsity: 0.75", "sparsity: 170%"));
    assert!(msg.contains("variants[2].sparsity = \"170%\": must be in [0, 1)"), "{msg}");
    assert!(!msg.contains("must exceed the base's sparsity"), "{msg}");
    // The agent prepares variants in order: the base comes first.
    let reordered = BASE.replace(
        "  - name: bp\n    kind: block\n    sparsity: 0.5\n  - name: pp\n    kind: pattern\n    base: bp\n    sparsity: 0.75\n",
        "  - name: pp\n    kind: pattern\n    base: bp\n    sparsity: 0.75\n  - name: bp\n    kind: block\n    sparsity: 0.5\n",
    );
    assert_ne!(reordered, BASE);
    expect(&reordered, "variants[1].base", "\"bp\"", 14);
    expect(&with("kind: dense", "kind: dense\n    method: rt3_tile_sums"), "variants[0].method", "Rt3TileSums", 12);
    // min_fidelity: a cosine in [0, 1], and only on pattern sets (the baselines are never scheduled).
    expect(
        &with("    sparsity: 0.5\n", "    sparsity: 0.5\n    min_fidelity: 0.9\n"),
        "variants[1].min_fidelity",
        "0.9",
        15,
    );
    expect(
        &with("    sparsity: 0.75\n", "    sparsity: 0.75\n    min_fidelity: 1.5\n"),
        "variants[2].min_fidelity",
        "1.5",
        19,
    );
    parse_scenario(&with("    sparsity: 0.75\n", "    sparsity: 0.75\n    min_fidelity: 0.98\n"), "t.yaml").unwrap();
}

#[test]
fn policy_shares() {
    let policy = |shares: &str| format!("{BASE}policy:\n  battery_shares: {shares}\n");
    expect(&policy("[0.5, 0.6]"), "policy.battery_shares", "[0.5, 0.6]", 25);
    expect(&policy("[0.5, 0.3, 0.2]"), "policy.battery_shares", "[0.5, 0.3, 0.2]", 25);
    expect(&policy("[1.0, 0]"), "policy.battery_shares[1]", "0", 25);
    expect(&format!("{BASE}policy:\n  workload: periodic\n"), "policy.period", "(missing)", 24);
}

#[test]
fn transports_and_monitors() {
    let sim = with("host: board.example\n    user: pi\n", "sim: true\n    transport: ssh\n");
    expect(&sim, "boards[0].transport", "ssh", 5);
    let local_with_host = with("user: pi\n", "user: pi\n    transport: local\n");
    expect(&local_with_host, "boards[0].host", "board.example", 4);
    expect(&with("    user: pi\n", ""), "boards[0].user", "(missing)", 3);
    let monitor = |body: &str| with("workdir: /tmp/hil", &format!("workdir: /tmp/hil\n    monitor:\n{body}"));
    expect(&monitor("      kind: ppk2\n"), "boards[0].monitor.mode", "(missing)", 7);
    expect(&monitor("      kind: ppk2\n      mode: source\n"), "boards[0].monitor.source_voltage_mv", "(missing)", 7);
    expect(
        &monitor("      kind: ppk2\n      mode: source\n      source_voltage_mv: 6000\n"),
        "boards[0].monitor.source_voltage_mv",
        "6000",
        10,
    );
    expect(&monitor("      kind: ina\n"), "boards[0].monitor.port", "(missing)", 7);
    expect(
        &monitor("      kind: ina\n      port: /dev/ttyUSB0\n      mode: source\n"),
        "boards[0].monitor.mode",
        "Source",
        10,
    );
    expect(
        &monitor("      kind: scpi\n      port: /dev/ttyUSB0\n      current_query: \"MEAS:CURR?\\n*RST\"\n"),
        "boards[0].monitor.current_query",
        "MEAS:CURR?",
        10,
    );
}

#[test]
fn unknown_keys_and_words_are_errors_with_their_line() {
    // serde_yaml's own messages: path of the enclosing struct, the offending key, the line.
    expect(&with("user: pi", "user: pi\n    hots: x"), "boards[0]", "hots", 6);
    expect(&format!("{BASE}extra: 1\n"), "unknown field", "extra", 24);
    expect(&with("kind: dense", "kind: sparse"), "variants[0].kind", "sparse", 11);
    expect(&with("preset: rt3-transformer", "preset: gpt5"), "model.preset", "gpt5", 8);
    expect(
        &with("workdir: /tmp/hil", "workdir: /tmp/hil\n    host_key_checking: never"),
        "boards[0].host_key_checking",
        "never",
        7,
    );
    expect(&with("workdir: /tmp/hil", "workdir: /tmp/hil\n    sudo: yes"), "boards[0].sudo", "yes", 7);
    // sudo is lent only to the kernel's cpufreq sysfs.
    expect(
        &with("workdir: /tmp/hil", "workdir: /tmp/hil\n    sudo: true\n    sysfs_root: /etc"),
        "boards[0].sysfs_root",
        "/etc",
        8,
    );
}

#[test]
fn syntax_errors_have_a_line() {
    let msg = refused(&with("levels: [1500MHz, 600MHz]", "levels: [1500MHz, 600MHz"));
    assert!(msg.contains("line ") && msg.contains("scenarios/t.yaml"), "{msg}");
    let msg = refused(&with("    user: pi", "   user: pi"));
    assert!(msg.contains("line 5,"), "{msg}");
    let msg = refused("");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn billion_laughs_is_refused_before_expansion() {
    let mut bomb = String::from(BASE);
    bomb.push_str("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
    }
    // The largest alias is the first `*l8`, on the line of `l9`.
    expect(&bomb, "l9[0]", "*l8", 33);
    assert!(refused(&bomb).contains("alias bomb"));

    // Aliases that stay small are fine.
    let shared = with(
        "workdir: /tmp/hil\n",
        "workdir: &wd /tmp/hil\n  - name: b2\n    host: b2.example\n    user: pi\n    workdir: *wd\n",
    );
    let s = parse_scenario(&shared, "scenarios/t.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.boards[1].workdir, "/tmp/hil");
}

#[test]
fn deep_nesting_is_refused_not_crashed() {
    let deep = format!("{BASE}description: {}{}\n", "[".repeat(5000), "]".repeat(5000));
    let msg = refused(&deep);
    assert!(msg.contains("line 24,"), "{msg}");
}

#[test]
fn oversized_files_are_refused_unread() {
    let big = format!("{BASE}description: \"{}\"\n", "x".repeat(MAX_SCENARIO_BYTES));
    let err = parse_scenario(&big, "scenarios/t.yaml").unwrap_err();
    assert!(matches!(err, ScenarioError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("line 1"));
}

#[test]
fn devices_and_missing_files_are_handled() {
    // /dev/zero reports size 0 and never ends: the read is bounded anyway.
    let err = load_scenario("/dev/zero").unwrap_err();
    assert!(matches!(err, ScenarioError::TooLarge { .. }), "{err}");
    let err = load_scenario("/nonexistent/dir/s.yaml").unwrap_err();
    assert!(matches!(err, ScenarioError::Read { .. }) && err.to_string().contains("/nonexistent/dir/s.yaml"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = with("host: board.example", "host: \"a;b\"").replace("user: pi", "user: \"x y\"");
    let err = parse_scenario(&text, "scenarios/t.yaml").unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 2, "{err}");
    assert_eq!((problems[0].path.as_str(), problems[0].line), ("boards[0].host", 4));
    assert_eq!((problems[1].path.as_str(), problems[1].line), ("boards[0].user", 5));
    assert!(err.to_string().contains("2 problems"));
}

#[test]
fn relative_deadlines_name_a_variant_and_a_sane_factor() {
    use harness::scenario::Deadline;
    let with_deadline = |d: &str| format!("{BASE}constraints:\n  latency_deadline: {d}\n");
    let s = parse_scenario(&with_deadline("1.3x dense"), "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.constraints.latency_deadline, Some(Deadline::Relative { factor: 1.3, reference: "dense".into() }));
    let s = parse_scenario(&with_deadline("20ms"), "t.yaml").unwrap();
    assert_eq!(s.constraints.latency_deadline, Some(Deadline::Fixed(std::time::Duration::from_millis(20))));
    expect(&with_deadline("1.3x nosuch"), "constraints.latency_deadline", "nosuch", 25);
    expect(&with_deadline("0x dense"), "constraints.latency_deadline", "0x dense", 25);
    expect(&with_deadline("NaNx dense"), "constraints.latency_deadline", "NaNx dense", 25);
    expect(&with_deadline("1e9x dense"), "constraints.latency_deadline", "1e9x dense", 25);
    expect(&with_deadline("fast dense"), "constraints.latency_deadline", "fast dense", 25);
}

mod numeric_fields {
    //! Every numeric field of a scenario, fed any number-like text: the scenario is either accepted
    //! or refused with an error naming that field; nothing panics.
    use super::*;
    use proptest::prelude::*;

    /// (path as errors name it, the base text's line to replace, its template with `{}`).
    const FIELDS: &[(&str, &str, &str)] = &[
        ("measure.min_duration", "  min_duration: 1s\n", "  min_duration: {}\n"),
        ("measure.repeats", "  repeats: 2\n", "  repeats: {}\n"),
        ("variants[1].sparsity", "    sparsity: 0.5\n", "    sparsity: {}\n"),
        ("variants[2].sparsity", "    sparsity: 0.75\n", "    sparsity: {}\n"),
        ("dvfs.levels", "  levels: [1500MHz, 600MHz]\n", "  levels: [{}, 600MHz]\n"),
    ];

    /// Fields not in the base scenario, appended to a section.
    const EXTRA: &[(&str, &str, &str)] = &[
        ("measure.warmup_iterations", "measure:\n", "measure:\n  warmup_iterations: {}\n"),
        ("measure.min_iterations", "measure:\n", "measure:\n  min_iterations: {}\n"),
        ("measure.idle_duration", "measure:\n", "measure:\n  idle_duration: {}\n"),
        ("measure.max_attempts", "measure:\n", "measure:\n  max_attempts: {}\n"),
        ("measure.max_lost_fraction", "measure:\n", "measure:\n  max_lost_fraction: {}\n"),
        ("measure.threads", "measure:\n", "measure:\n  threads: {}\n"),
        ("measure.cooldown_temp_c", "measure:\n", "measure:\n  cooldown_temp_c: {}\n"),
        ("measure.cooldown_timeout", "measure:\n", "measure:\n  cooldown_timeout: {}\n"),
        ("dvfs.settle", "dvfs:\n", "dvfs:\n  settle: {}\n"),
        ("model.seq", "model:\n", "model:\n  seq: {}\n"),
        ("model.seed", "model:\n", "model:\n  seed: {}\n"),
        ("variants[1].block_rows", "    kind: block\n", "    kind: block\n    block_rows: {}\n"),
        ("variants[2].tile", "    kind: pattern\n", "    kind: pattern\n    tile: {}\n"),
        ("variants[2].patterns", "    kind: pattern\n", "    kind: pattern\n    patterns: {}\n"),
        ("boards[0].port", "    user: pi\n", "    user: pi\n    port: {}\n"),
        ("boards[0].connect_timeout", "    user: pi\n", "    user: pi\n    connect_timeout: {}\n"),
        ("boards[0].battery.capacity_wh", "    user: pi\n", "    user: pi\n    battery:\n      capacity_wh: {}\n"),
    ];

    fn number_like() -> impl Strategy<Value = String> {
        let specials = prop::sample::select(vec![
            "NaN",
            ".nan",
            "inf",
            "-inf",
            ".inf",
            "-.inf",
            "1e308",
            "1e309",
            "-1e308",
            "1e-320",
            "0",
            "-0",
            "-1",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "0x10",
            "1_000",
            "",
            "~",
        ]);
        let units = prop::sample::select(vec!["", "", "ms", "s", "h", "MHz", "GHz", "kHz", "%", "x dense", " ns"]);
        prop_oneof![
            specials.prop_map(str::to_string),
            (any::<f64>(), units.clone()).prop_map(|(v, u)| format!("{v}{u}")),
            (any::<i64>(), units).prop_map(|(v, u)| format!("{v}{u}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_number_is_accepted_or_refused_naming_its_field(field in 0..FIELDS.len() + EXTRA.len(), value in number_like()) {
            let (path, old, template) =
                if field < FIELDS.len() { FIELDS[field] } else { EXTRA[field - FIELDS.len()] };
            let text = BASE.replacen(old, &template.replace("{}", &value), 1);
            prop_assert_ne!(&text, BASE);
            match std::panic::catch_unwind(|| parse_scenario(&text, "t.yaml")) {
                Err(_) => prop_assert!(false, "parsing panicked on {path} = {value:?}"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    // An empty value is YAML's null: the field is missing, which may be said of the
                    // key it stands in for (capacity_wh missing: capacity_mah or capacity_wh needed).
                    let null = value.is_empty() || value == "~";
                    prop_assert!(
                        msg.contains(path) || (null && msg.contains("(missing)")),
                        "{path} = {value:?}: the error does not name the field: {msg}"
                    );
                }
            }
        }
    }
}
