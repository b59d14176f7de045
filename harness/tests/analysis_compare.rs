//! `hil compare` and `hil battery` on synthetic run directories: a known 10 % slowdown is a
//! regression, identical data and noise alone are not; unusable input is refused; JUnit XML
//! is well-formed.

mod analysis_support;

// The CLI modules are compiled here too, against the library (their `crate::` paths resolve
// to these imports), so they are tested before they are wired into `hil`.
#[allow(unused_imports)]
use harness::{analysis, results, scenario};
#[path = "../src/cli/battery.rs"]
#[allow(dead_code)]
mod battery_cli;
#[path = "../src/cli/compare.rs"]
#[allow(dead_code)]
mod compare_cli;

use std::path::Path;
use std::process::ExitCode;

use analysis_support::{record, run_json, scenario_yaml, write_run};
use clap::{Args, Command, FromArgMatches};
use harness::analysis::compare::{CompareError, Verdict};
use harness::analysis::{compare_runs, load_run, CompareConfig};
use harness::results::CellRecord;
use harness::stats::SummaryConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VARIANTS: [(&str, &str, f64, f64); 3] =
    [("dense", "dense", 0.0, 10.0), ("bp", "block", 0.5, 6.0), ("pp", "pattern", 0.75, 4.0)];

/// Five repeats of 150 inferences per variant at 1500 MHz; latency noise ~ +-5 % (a sum of
/// three uniforms), energy noise ~ +-1 %. `scale` multiplies latency and energy.
fn synthetic_cells(seed: u64, scale: f64) -> Vec<CellRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for repeat in 0..5 {
        for (variant, kind, sparsity, ms) in VARIANTS {
            let lat: Vec<u64> = (0..150)
                .map(|_| {
                    let noise: f64 = (0..3).map(|_| rng.random::<f64>()).sum::<f64>() - 1.5;
                    (ms * scale * (1.0 + 0.05 * noise) * 1e6) as u64
                })
                .collect();
            let energy = 3.0 * ms * scale * (1.0 + 0.01 * (rng.random::<f64>() - 0.5));
            out.push(record("sim", 1_500_000, 0, variant, kind, sparsity, repeat, lat, Some(energy), Some(1.0)));
        }
    }
    out
}

fn scenario() -> String {
    scenario_yaml("1500MHz", Some("12ms"), "")
}

fn config() -> CompareConfig {
    CompareConfig { summary: SummaryConfig { resamples: 300, ..SummaryConfig::default() }, ..CompareConfig::default() }
}

fn make_run(dir: &Path, cells: &[CellRecord]) {
    write_run(dir, &scenario(), &run_json(7), cells);
}

fn compare_cmd(args: &[&str]) -> compare_cli::CompareCmd {
    let cmd = compare_cli::CompareCmd::augment_args(Command::new("compare"));
    let m = cmd.try_get_matches_from(std::iter::once("compare").chain(args.iter().copied())).unwrap();
    compare_cli::CompareCmd::from_arg_matches(&m).unwrap()
}

#[test]
fn a_ten_percent_slowdown_is_a_regression() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, cand) = (tmp.path().join("base"), tmp.path().join("cand"));
    make_run(&base, &synthetic_cells(1, 1.0));
    make_run(&cand, &synthetic_cells(2, 1.10));
    let cmp = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap();
    assert_eq!(cmp.cells.len(), 3);
    for c in &cmp.cells {
        assert_eq!(c.latency.verdict, Verdict::Regressed, "{}: {:?}", c.key, c.latency);
        assert!((c.latency.change_pct.point - 10.0).abs() < 2.0, "{:?}", c.latency.change_pct);
        assert!(c.latency.change_pct.lower > 3.0, "{:?}", c.latency.change_pct);
        assert!(c.latency.p_value < 1e-6);
        // Energy: 5 repeats a side, all candidate repeats above all base ones: p = 0.012.
        assert_eq!(c.energy.verdict, Verdict::Regressed, "{}: {:?}", c.key, c.energy);
        assert!(!c.checksum.regressed());
    }
    assert!(cmp.regressed());
    let md = cmp.to_markdown();
    assert!(md.contains("REGRESSED") && md.contains("6 regression(s)"), "{md}");
    // The command: exit code 1, JUnit with failures.
    let junit = tmp.path().join("junit.xml");
    let code = compare_cmd(&[base.to_str().unwrap(), cand.to_str().unwrap(), "--junit", junit.to_str().unwrap()])
        .run()
        .unwrap();
    assert_eq!(code, ExitCode::from(1));
    let xml = std::fs::read_to_string(&junit).unwrap();
    check_well_formed(&xml);
    assert!(xml.contains("failures=\"6\""), "{xml}");
    // A threshold above the change turns the verdict off.
    let code = compare_cmd(&[base.to_str().unwrap(), cand.to_str().unwrap(), "--threshold", "15"]).run().unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
}

#[test]
fn too_few_repeats_for_the_energy_test_are_said_not_tested() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, cand) = (tmp.path().join("base"), tmp.path().join("cand"));
    let two = |cells: Vec<CellRecord>| cells.into_iter().filter(|c| c.repeat < 2).collect::<Vec<_>>();
    make_run(&base, &two(synthetic_cells(1, 1.0)));
    make_run(&cand, &two(synthetic_cells(2, 1.10)));
    let cmp = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap();
    for c in &cmp.cells {
        assert_eq!(c.latency.verdict, Verdict::Regressed);
        let Verdict::NotTested(why) = &c.energy.verdict else { panic!("{:?}", c.energy) };
        assert!(why.contains("2 against 2 values cannot reach p < 0.05"), "{why}");
        // The change itself is still reported.
        assert!((c.energy.change_pct.point - 10.0).abs() < 1.0, "{:?}", c.energy.change_pct);
    }
    assert!(cmp.to_junit().contains("<skipped message=\"2 against 2 values"));
}

#[test]
fn identical_runs_are_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, cand) = (tmp.path().join("base"), tmp.path().join("cand"));
    let cells = synthetic_cells(1, 1.0);
    make_run(&base, &cells);
    make_run(&cand, &cells);
    let cmp = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap();
    for c in &cmp.cells {
        assert_eq!(c.latency.verdict, Verdict::Unchanged);
        assert_eq!(c.energy.verdict, Verdict::Unchanged);
        assert_eq!(c.latency.change_pct.point, 0.0);
        assert!(c.latency.p_value > 0.9);
    }
    assert!(!cmp.regressed());
    assert!(cmp.to_markdown().contains("No regressions."));
    let code = compare_cmd(&[base.to_str().unwrap(), cand.to_str().unwrap()]).run().unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
}

#[test]
fn noise_alone_is_not_a_regression() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, cand) = (tmp.path().join("base"), tmp.path().join("cand"));
    make_run(&base, &synthetic_cells(1, 1.0));
    make_run(&cand, &synthetic_cells(99, 1.0));
    let cmp = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap();
    for c in &cmp.cells {
        assert_ne!(c.latency.verdict, Verdict::Regressed, "{:?}", c.latency);
        assert_ne!(c.energy.verdict, Verdict::Regressed, "{:?}", c.energy);
        assert!(c.latency.change_pct.point.abs() < 3.0, "{:?}", c.latency.change_pct);
    }
    assert!(!cmp.regressed(), "{}", cmp.to_markdown());
}

#[test]
fn changed_checksums_and_failed_selftests_are_correctness_regressions() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, cand) = (tmp.path().join("base"), tmp.path().join("cand"));
    let cells = synthetic_cells(1, 1.0);
    make_run(&base, &cells);
    let mut changed = cells.clone();
    for c in changed.iter_mut().filter(|c| c.variant == "pp") {
        c.checksum = "deadbeef".into();
    }
    make_run(&cand, &changed);
    let cmp = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap();
    let pp = cmp.cells.iter().find(|c| c.key.variant == "pp").unwrap();
    assert!(pp.checksum.regressed());
    assert!(cmp.regressed());
    assert!(cmp.regressions().iter().any(|r| r.contains("output checksum changed") && r.contains("deadbeef")));

    let mut json = run_json(7);
    json["boards"]["sim"]["selftest"] = serde_json::json!({
        "passed": false, "tokens": 4,
        "results": [{"variant": "bp", "max_abs_err": 0.5, "max_rel_err": 0.1, "worst": "layer.0.ffn_in", "checks": 9, "passed": false}]
    });
    write_run(&cand, &scenario(), &json, &cells);
    let cmp = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap();
    assert!(cmp.regressed());
    assert!(cmp.regressions().iter().any(|r| r.contains("selftest of bp failed") && r.contains("layer.0.ffn_in")));
    check_well_formed(&cmp.to_junit());
}

#[test]
fn unmatched_cells_are_listed_and_skipped_in_junit() {
    let tmp = tempfile::tempdir().unwrap();
    // Characters XML must escape, in the directory names that end up in the report.
    let (base, cand) = (tmp.path().join("base&<'\">"), tmp.path().join("cand"));
    let cells = synthetic_cells(1, 1.0);
    make_run(&base, &cells);
    make_run(&cand, &cells.iter().filter(|c| c.variant != "bp").cloned().collect::<Vec<_>>());
    let cmp = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap();
    assert_eq!(cmp.only_in_base.len(), 1);
    assert_eq!(cmp.only_in_base[0].variant, "bp");
    assert!(cmp.to_markdown().contains("Unmatched cells (base only): sim@1500 MHz/bp"));
    let xml = cmp.to_junit();
    check_well_formed(&xml);
    assert!(xml.contains("base&amp;&lt;&apos;&quot;&gt;"), "{xml}");
    assert!(xml.contains("<skipped message=\"sim@1500 MHz/bp is in only one of the runs\"/>"), "{xml}");
}

#[test]
fn unusable_input_is_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, cand, empty) = (tmp.path().join("base"), tmp.path().join("cand"), tmp.path().join("empty"));
    make_run(&base, &synthetic_cells(1, 1.0));
    // A different model seed: different weights, incomparable.
    write_run(&cand, &scenario().replace("seed: 7", "seed: 8"), &run_json(8), &synthetic_cells(1, 1.0));
    let err = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap_err();
    assert!(matches!(err, CompareError::DifferentModels { .. }), "{err}");
    assert!(err.to_string().contains("different models"));
    assert!(
        err.to_string().contains("preset rt3-transformer, sequence length the preset's, seed 7; candidate: "),
        "{err}"
    );
    let err = compare_cmd(&[base.to_str().unwrap(), cand.to_str().unwrap()]).run().unwrap_err();
    assert!(format!("{err:#}").contains("different models"), "{err:#}");
    // Same scenario, but the agent reported a different model.
    write_run(&cand, &scenario(), &run_json(9), &synthetic_cells(1, 1.0));
    let err = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap_err();
    assert!(err.to_string().contains("board sim loaded"), "{err}");
    // No cells.
    make_run(&empty, &[]);
    let err = compare_runs(&load_run(&base).unwrap(), &load_run(&empty).unwrap(), &config()).unwrap_err();
    assert!(err.to_string().contains("candidate run") && err.to_string().contains("has no cells"), "{err}");
    // A missing directory.
    let missing = tmp.path().join("nope");
    let err = compare_cmd(&[base.to_str().unwrap(), missing.to_str().unwrap()]).run().unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    let err = compare_cmd(&[base.to_str().unwrap(), cand.to_str().unwrap(), "--alpha", "1.5"]).run().unwrap_err();
    assert!(err.to_string().contains("--alpha 1.5"), "{err}");
}

#[test]
fn battery_command_prints_and_writes_battery_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    make_run(&dir, &synthetic_cells(1, 1.0));
    let parse = |args: &[&str]| {
        let cmd = battery_cli::BatteryCmd::augment_args(Command::new("battery"));
        let m = cmd.try_get_matches_from(std::iter::once("battery").chain(args.iter().copied())).unwrap();
        battery_cli::BatteryCmd::from_arg_matches(&m).unwrap()
    };
    let d = dir.to_str().unwrap();
    assert_eq!(parse(&[d]).run().unwrap(), ExitCode::SUCCESS);
    let csv = std::fs::read_to_string(dir.join("battery.csv")).unwrap();
    assert!(csv.lines().any(|l| l.contains(",measured,") && l.contains("rt3_schedule")), "{csv}");
    // One level: RT3's three voltages do not apply, so the model rows are absent.
    assert!(!csv.contains(",rt3_model,"), "{csv}");
    assert_eq!(
        parse(&[d, "--capacity-mah", "1000", "--voltage", "3.7", "--voltages", "1.1"]).run().unwrap(),
        ExitCode::SUCCESS
    );
    let csv = std::fs::read_to_string(dir.join("battery.csv")).unwrap();
    assert!(csv.contains(",13320,"), "{csv}");
    assert!(csv.contains(",rt3_model,"), "{csv}");
    // --capacity-mah without --voltage is refused by clap.
    let cmd = battery_cli::BatteryCmd::augment_args(Command::new("battery"));
    assert!(cmd.try_get_matches_from(["battery", d, "--capacity-mah", "1000"]).is_err());
    // A period shorter than every latency: nothing can be projected, a clear error.
    let err = parse(&[d, "--period-ms", "1"]).run().unwrap_err();
    assert!(format!("{err:#}").contains("shorter than the mean latency"), "{err:#}");
    let ok = parse(&[d, "--period-ms", "50"]).run().unwrap();
    assert_eq!(ok, ExitCode::SUCCESS);
    let csv = std::fs::read_to_string(dir.join("battery.csv")).unwrap();
    assert!(csv.contains(",periodic,50,"), "{csv}");
}

/// A small XML well-formedness check: one root, balanced and properly nested tags, quoted
/// attributes without raw `<` or `&`, and only the five predefined or numeric entities.
fn check_well_formed(xml: &str) {
    let body = xml.strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n").expect("XML declaration");
    let check_text = |t: &str| {
        let mut rest = t;
        while let Some(i) = rest.find('&') {
            let after = &rest[i + 1..];
            let end = after.find(';').unwrap_or_else(|| panic!("unterminated entity in {t:?}"));
            let name = &after[..end];
            let ok = ["amp", "lt", "gt", "quot", "apos"].contains(&name)
                || (name.starts_with('#') && name[1..].chars().all(|c| c.is_ascii_digit()) && name.len() > 1);
            assert!(ok, "bad entity &{name}; in {t:?}");
            rest = &after[end + 1..];
        }
        assert!(!t.contains('<'), "raw < in {t:?}");
    };
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open]);
        let after = &rest[open + 1..];
        // Find the closing '>' outside quoted attribute values.
        let mut in_quote = false;
        let mut end = None;
        for (i, ch) in after.char_indices() {
            match ch {
                '"' => in_quote = !in_quote,
                '>' if !in_quote => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.expect("unterminated tag");
        let tag = &after[..end];
        rest = &after[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let name = tag.split_whitespace().next().unwrap().to_string();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "bad name {name}");
        // Attributes: name="value" pairs.
        let mut attrs = tag[name.len()..].trim();
        while !attrs.is_empty() {
            let eq = attrs.find("=\"").unwrap_or_else(|| panic!("bad attribute in <{tag}>"));
            let close = attrs[eq + 2..].find('"').expect("unterminated attribute") + eq + 2;
            check_text(&attrs[eq + 2..close]);
            attrs = attrs[close + 1..].trim_start();
        }
        if stack.is_empty() {
            roots += 1;
        }
        if !self_closing {
            stack.push(name);
        }
    }
    check_text(rest);
    assert!(rest.trim().is_empty(), "text after the root");
    assert!(stack.is_empty(), "unclosed {stack:?}");
    assert_eq!(roots, 1);
}

/// `hil battery` and `hil compare RUN RUN` on a real results directory:
/// `HIL_ANALYSIS_RUN_DIR=/path/to/run cargo test -p harness --test analysis_compare -- --ignored --nocapture`.
/// (Writes battery.csv into that directory, as `hil battery` does.)
#[test]
#[ignore = "needs a real run directory in HIL_ANALYSIS_RUN_DIR"]
fn on_a_real_run_directory() {
    let dir = std::env::var("HIL_ANALYSIS_RUN_DIR").expect("set HIL_ANALYSIS_RUN_DIR to a results directory");
    let cmd = battery_cli::BatteryCmd::augment_args(Command::new("battery"));
    let m = cmd.try_get_matches_from(["battery", dir.as_str()]).unwrap();
    let code = battery_cli::BatteryCmd::from_arg_matches(&m).unwrap().run().unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let code = compare_cmd(&[dir.as_str(), dir.as_str()]).run().unwrap();
    assert_eq!(code, ExitCode::SUCCESS, "a run compared with itself has no regressions");
}
