//! Hostile scenarios through the real `hil` binary: each is refused with a clear error (exit
//! code 2, the field named) before anything runs: no results directory is created and no
//! board is contacted (the SSH hosts below would not answer; a connection attempt would show
//! up as a connect error instead of a validation error).

use std::process::Command;

fn hil_run(yaml: &str) -> (i32, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out_dir = dir.path().join("results");
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["run", path.to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "--no-progress"])
        .output()
        .expect("running hil");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr, out_dir.exists())
}

const TAIL: &str =
    "model:\n  preset: rt3-transformer\nvariants:\n  - name: dense\n    kind: dense\ndvfs:\n  levels: [600MHz]\n";

fn board(fields: &str) -> String {
    format!("name: hostile\nboards:\n  - name: b1\n    host: 127.0.0.1\n    user: pi\n    workdir: /tmp/hil\n{fields}{TAIL}")
}

#[test]
fn hostile_scenarios_are_refused_before_anything_runs() {
    let cases: Vec<(String, &str)> = vec![
        (board("    port: 22\n").replace("host: 127.0.0.1", "host: \"127.0.0.1; touch /tmp/pwned\""), "boards[0].host"),
        (board("").replace("user: pi", "user: \"pi$(reboot)\""), "boards[0].user"),
        (board("").replace("workdir: /tmp/hil", "workdir: \"/tmp/../etc\""), "boards[0].workdir"),
        (board("").replace("workdir: /tmp/hil", "workdir: \"/tmp/hil`id`\""), "boards[0].workdir"),
        (board("").replace("name: b1", "name: \"b1 && rm -rf /\""), "boards[0].name"),
        (board("").replace("  - name: dense\n", "  - name: \"dense|sh\"\n"), "variants[0].name"),
        (board("").replace("levels: [600MHz]", "levels: [99999999999999999999GHz]"), "dvfs.levels"),
        (
            board("measure:\n  min_duration: -5s\n").replace("measure:\n  min_duration: -5s\n", "")
                + "measure:\n  min_duration: -5s\n",
            "measure.min_duration",
        ),
        (board("").replace("levels: [600MHz]", "levels: [600MHz, 600MHz]"), "dvfs.levels"),
        (board("    exec_prefix: [\"sh -c 'id'\"]\n"), "boards[0].exec_prefix"),
    ];
    for (yaml, field) in cases {
        let (code, stderr, created) = hil_run(&yaml);
        assert_eq!(code, 2, "expected a refusal for {field}:\n{yaml}\nstderr: {stderr}");
        assert!(stderr.contains(field), "error should name {field}: {stderr}");
        assert!(stderr.contains("line "), "error should give the line: {stderr}");
        assert!(!created, "no results directory may be created for {field}");
        assert!(!stderr.contains("connect"), "nothing may be contacted for {field}: {stderr}");
    }
}

#[test]
fn yaml_bomb_is_refused() {
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let prev = i - 1;
        yaml.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
    }
    yaml.push_str(&board(""));
    let (code, stderr, created) = hil_run(&yaml);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.to_lowercase().contains("alias"), "{stderr}");
    assert!(!created);
}

#[test]
fn a_missing_regression_baseline_is_refused_before_any_board_is_touched() {
    let yaml = format!("{}regression:\n  baseline: /nonexistent/hil-baseline-run\n", board(""));
    let (code, stderr, created) = hil_run(&yaml);
    assert_eq!(code, 2, "a CI gate must not pass on a typo: {stderr}");
    assert!(stderr.contains("regression.baseline") && stderr.contains("/nonexistent/hil-baseline-run"), "{stderr}");
    assert!(!created, "no results directory may be created");
    assert!(!stderr.contains("connect"), "nothing may be contacted: {stderr}");
}
