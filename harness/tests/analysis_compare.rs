//! `hil compare` and `hil battery` on synthetic run directories: a known 10 % slowdown is a
//! regression, identical data and noise alone are not; unusable input is refused; JUnit XML
//! is well-formed. The repeat-level method on synthetic runs with a known variation between
//! repeats: false positives at most alpha over many seeded trials (where pooling inferences
//! flags far more), a large change detected, too few repeats said inconclusive.

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

use std::collections::BTreeSet;

use analysis_support::{record, run_json, scenario_yaml, write_run};
use clap::{Args, Command, FromArgMatches};
use harness::analysis::compare::{compare_cells, compare_metric, decide, repeat_values, CompareError, Verdict};
use harness::analysis::{compare_runs, load_run, CompareConfig};
use harness::results::CellRecord;
use harness::stats::{mann_whitney_u, Estimate, Sample, Statistic};
use proptest::prelude::*;
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
    CompareConfig::default()
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
fn two_repeats_per_side_are_inconclusive_and_say_how_many_are_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, cand) = (tmp.path().join("base"), tmp.path().join("cand"));
    let two = |cells: Vec<CellRecord>| cells.into_iter().filter(|c| c.repeat < 2).collect::<Vec<_>>();
    make_run(&base, &two(synthetic_cells(1, 1.0)));
    make_run(&cand, &two(synthetic_cells(2, 1.10)));
    let cmp = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap();
    for c in &cmp.cells {
        // 150 inferences per repeat do not make 2 repeats into 300 measurements: latency too.
        for m in [&c.latency, &c.energy] {
            let Verdict::Inconclusive(why) = &m.verdict else { panic!("{:?}", m) };
            assert!(why.contains("need >= 3 repeats per side") && why.contains("(base 2, candidate 2)"), "{why}");
            assert_eq!(m.repeats_needed, Some(3));
            assert!(m.change_pct.lower.is_nan() && m.change_pct.upper.is_nan(), "{:?}", m.change_pct);
            // The change itself is still reported.
            assert!((m.change_pct.point - 10.0).abs() < 1.0, "{:?}", m.change_pct);
        }
    }
    assert!(!cmp.regressed());
    let md = cmp.to_markdown();
    assert!(md.contains("6 inconclusive (not counted as regressions; measure more repeats)"), "{md}");
    assert!(md.contains("(repeats 2/2: no interval)"), "{md}");
    let junit = cmp.to_junit();
    assert!(junit.contains("<skipped message=\"inconclusive: need &gt;= 3 repeats per side"), "{junit}");
    check_well_formed(&junit);
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
    json["sessions"][0]["boards"]["sim"]["selftest"] = serde_json::json!({
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
    // A bad option is named before the directories are read (the candidate is missing here).
    let err =
        compare_cmd(&[base.to_str().unwrap(), missing.to_str().unwrap(), "--threshold", "NaN"]).run().unwrap_err();
    assert!(err.to_string().contains("--threshold NaN"), "{err}");
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
    // A what-if goes beside the run's own battery.csv, which stays what the report shows.
    let csv = std::fs::read_to_string(dir.join("battery-whatif.csv")).unwrap();
    assert!(csv.contains(",13320,"), "{csv}");
    assert!(csv.contains(",rt3_model,"), "{csv}");
    let own = std::fs::read_to_string(dir.join("battery.csv")).unwrap();
    assert!(!own.contains(",13320,") && !own.contains(",rt3_model,"), "{own}");
    // One voltage per level of the board, or a clear refusal naming the board.
    let err = parse(&[d, "--voltages", "1.1,1.0"]).run().unwrap_err();
    assert!(format!("{err:#}").contains("2 voltage(s) given, board sim has 1 level(s) (1500 MHz)"), "{err:#}");
    // --capacity-mah without --voltage is refused by clap.
    let cmd = battery_cli::BatteryCmd::augment_args(Command::new("battery"));
    assert!(cmd.try_get_matches_from(["battery", d, "--capacity-mah", "1000"]).is_err());
    // A period shorter than every latency: nothing can be projected, a clear error.
    let err = parse(&[d, "--period-ms", "1"]).run().unwrap_err();
    assert!(format!("{err:#}").contains("shorter than the time one inference"), "{err:#}");
    let ok = parse(&[d, "--period-ms", "50"]).run().unwrap();
    assert_eq!(ok, ExitCode::SUCCESS);
    let csv = std::fs::read_to_string(dir.join("battery-whatif.csv")).unwrap();
    assert!(csv.contains(",periodic,50,"), "{csv}");
}

/// A standard normal draw (Box-Muller; rand's core crate has no normal distribution).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// One cell (`sim@1500 MHz/bp`) of `repeats` repeats of `iters` inferences. Each repeat has its
/// own level, `exp(between_sd x N(0,1))` times the nominal 6 ms x `scale` (the variation between
/// repeats: placement, temperature, background load); inferences vary around it by +-5 % (a
/// sum of three uniforms). Energy per inference follows the repeat's level, with 1 % of its
/// own noise.
fn cell_with_repeats(rng: &mut ChaCha8Rng, repeats: u32, iters: usize, scale: f64, between_sd: f64) -> Vec<CellRecord> {
    (0..repeats)
        .map(|repeat| {
            let level = 6.0 * scale * (between_sd * normal(rng)).exp();
            let lat: Vec<u64> = (0..iters)
                .map(|_| {
                    let noise: f64 = (0..3).map(|_| rng.random::<f64>()).sum::<f64>() - 1.5;
                    (level * (1.0 + 0.05 * noise) * 1e6) as u64
                })
                .collect();
            let energy = 3.0 * level * (0.01 * normal(rng)).exp();
            record("sim", 1_500_000, 0, "bp", "block", 0.5, repeat, lat, Some(energy), Some(1.0))
        })
        .collect()
}

/// Per-trial outcome counts of many seeded base/candidate pairs.
#[derive(Debug, Default)]
struct Trials {
    n: usize,
    latency_regressed: usize,
    latency_significant: usize,
    energy_regressed: usize,
    energy_significant: usize,
    /// What pooling every inference (the old method: Mann-Whitney on all inferences, the pooled
    /// median's change beyond the threshold) would have called REGRESSED.
    pooled_regressed: usize,
}

/// `trials` seeded base/candidate pairs (candidate `scale` times slower), each judged under
/// every configuration in `configs` (one [`Trials`] per configuration).
fn run_trials(
    trials: usize,
    seed: u64,
    repeats: u32,
    scale: f64,
    between_sd: f64,
    configs: &[CompareConfig],
) -> Vec<Trials> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out: Vec<Trials> = configs.iter().map(|_| Trials { n: trials, ..Trials::default() }).collect();
    for _ in 0..trials {
        let base = cell_with_repeats(&mut rng, repeats, 200, 1.0, between_sd);
        let cand = cell_with_repeats(&mut rng, repeats, 200, scale, between_sd);
        let (vb, vc) = (repeat_values(&base), repeat_values(&cand));
        let pooled = |cells: &[CellRecord]| {
            Sample::from_ns(&cells.iter().flat_map(|c| c.latencies_ns.iter().copied()).collect::<Vec<_>>()).unwrap()
        };
        let (pb, pc) = (pooled(&base), pooled(&cand));
        let pooled_change = (pc.median() / pb.median() - 1.0) * 100.0;
        let pooled_p = mann_whitney_u(&pc, &pb).p_value;
        for (config, t) in configs.iter().zip(out.iter_mut()) {
            let (cells, _, _) = compare_cells(&vb, &vc, &BTreeSet::new(), config);
            let c = &cells[0];
            let significant =
                |m: &harness::analysis::compare::MetricComparison| m.change_pct.lower > 0.0 || m.change_pct.upper < 0.0;
            t.latency_regressed += usize::from(c.latency.verdict == Verdict::Regressed);
            t.latency_significant += usize::from(significant(&c.latency));
            t.energy_regressed += usize::from(c.energy.verdict == Verdict::Regressed);
            t.energy_significant += usize::from(significant(&c.energy));
            t.pooled_regressed += usize::from(pooled_p < config.alpha && pooled_change > config.threshold_pct);
        }
    }
    out
}

#[test]
fn with_no_true_change_the_false_positive_rate_is_at_most_alpha() {
    // 300 seeded pairs of runs with no true difference, 5 repeats of 200 inferences a side and
    // a 4 % standard deviation between repeats; judged with the default 3 % threshold and
    // with none at all (the test alone).
    let alpha = 0.05;
    let configs = [
        CompareConfig { threshold_pct: 3.0, alpha, ..CompareConfig::default() },
        CompareConfig { threshold_pct: 0.0, alpha, ..CompareConfig::default() },
    ];
    for (config, t) in configs.iter().zip(run_trials(300, 13, 5, 1.0, 0.04, &configs)) {
        let rate = |k: usize| k as f64 / t.n as f64;
        eprintln!("threshold {} %: {t:?}", config.threshold_pct);
        assert!(rate(t.latency_regressed) <= alpha, "latency false positives {t:?}");
        assert!(rate(t.energy_regressed) <= alpha, "energy false positives {t:?}");
        // Two-sided, the interval excludes zero about alpha of the time: at most alpha plus
        // three binomial standard errors of 300 trials.
        let slack = alpha + 3.0 * (alpha * (1.0 - alpha) / t.n as f64).sqrt();
        assert!(rate(t.latency_significant) <= slack, "{t:?}");
        assert!(rate(t.energy_significant) <= slack, "{t:?}");
        // The data does vary between repeats enough to matter: pooling inferences (the old
        // method) calls many of these identical configurations regressed.
        assert!(rate(t.pooled_regressed) > 2.0 * alpha, "{t:?}");
    }
}

#[test]
fn a_large_true_change_is_detected_with_enough_repeats() {
    // +15 %, 5 repeats a side, 4 % between repeats: every metric of (nearly) every pair.
    let t = &run_trials(100, 14, 5, 1.15, 0.04, &[CompareConfig::default()])[0];
    assert!(t.latency_regressed >= 95, "{t:?}");
    assert!(t.energy_regressed >= 95, "{t:?}");
}

/// The false-positive and detection rates over many trials, for the record:
/// `cargo test -p harness --test analysis_compare calibration -- --ignored --nocapture`.
#[test]
#[ignore = "slow (minutes in debug): prints the calibration table"]
fn calibration_over_many_trials() {
    let config = CompareConfig { threshold_pct: 0.0, alpha: 0.05, ..CompareConfig::default() };
    for repeats in [3, 5, 10] {
        for (scale, label) in [(1.0, "no change"), (1.10, "+10 %")] {
            let t = &run_trials(2000, 100 + u64::from(repeats), repeats, scale, 0.04, &[config])[0];
            let r = |k: usize| k as f64 / t.n as f64;
            eprintln!(
                "{repeats} repeats, {label}: latency REGRESSED {:.4}, significant {:.4}; energy REGRESSED {:.4}, \
                 significant {:.4}; pooled-inference test REGRESSED {:.4} ({} trials)",
                r(t.latency_regressed),
                r(t.latency_significant),
                r(t.energy_regressed),
                r(t.energy_significant),
                r(t.pooled_regressed),
                t.n
            );
        }
    }
}

#[test]
fn a_change_whose_interval_spans_zero_is_inconclusive_with_the_repeats_needed() {
    // Like the sim@1000 MHz/bp50: +20 % with repeats scattered by tens of percent.
    let base = [8.0, 10.5, 13.0];
    let cand = [9.0, 13.5, 15.5];
    let m = compare_metric("latency", "ms", Statistic::Median, &base, &cand, &CompareConfig::default());
    assert!(m.change_pct.point > 15.0 && m.change_pct.lower < 0.0, "{:?}", m.change_pct);
    let Verdict::Inconclusive(why) = &m.verdict else { panic!("{m:?}") };
    assert!(why.contains("exceeds the 3 % threshold but its 95 % interval"), "{why}");
    let needed = m.repeats_needed.unwrap();
    assert!(needed > 3 && why.contains(&format!("need >= {needed} repeats per side")), "{why}");
    // More of the same repeats would decide it: the advice is not empty talk.
    let more = |v: &[f64]| v.iter().copied().cycle().take(3 * needed.div_ceil(3)).collect::<Vec<f64>>();
    let m = compare_metric("latency", "ms", Statistic::Median, &more(&base), &more(&cand), &CompareConfig::default());
    assert_eq!(m.verdict, Verdict::Regressed, "{m:?}");
}

#[test]
fn the_method_is_documented_where_it_is_printed() {
    let method = CompareConfig { threshold_pct: 5.0, alpha: 0.01, ..CompareConfig::default() }.method();
    for needle in
        ["Repeats are the unit", "99 % Welch t interval", "p < 0.01", "+5 %", "never a regression", "3 repeats"]
    {
        assert!(method.contains(needle), "{needle}: {method}");
    }
    let help = compare_cli::CompareCmd::augment_args(Command::new("compare")).render_long_help().to_string();
    for needle in ["repeat is the unit", "Welch", "never a regression", "inconclusive", "80 % power"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

fn per_repeat() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.5f64..50.0, 0..9)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the values: a verdict of REGRESSED or improved has an interval clear of zero
    /// and a change beyond the threshold; an interval containing zero never gives one.
    #[test]
    fn verdicts_respect_the_interval_and_the_threshold(
        base in per_repeat(),
        cand in per_repeat(),
        threshold_pct in 0.0f64..20.0,
        alpha in 0.001f64..0.5,
    ) {
        let config = CompareConfig { threshold_pct, alpha, ..CompareConfig::default() };
        let m = compare_metric("latency", "ms", Statistic::Median, &base, &cand, &config);
        let e = m.change_pct;
        match &m.verdict {
            Verdict::Regressed => prop_assert!(e.lower > 0.0 && e.point > threshold_pct, "{:?}", m),
            Verdict::Improved => prop_assert!(e.upper < 0.0 && e.point < -threshold_pct, "{:?}", m),
            Verdict::Inconclusive(why) => prop_assert!(why.contains("repeats per side"), "{}", why),
            Verdict::NotTested(_) => prop_assert!(base.is_empty() || cand.is_empty()),
            Verdict::Unchanged => prop_assert!(e.point.abs() <= threshold_pct, "{:?}", m),
        }
        if e.contains(0.0) {
            prop_assert!(!matches!(m.verdict, Verdict::Regressed | Verdict::Improved));
        }
        if base.len() >= 3 && cand.len() >= 3 {
            prop_assert!(e.lower <= e.point && e.point <= e.upper, "{:?}", e);
            prop_assert!((0.0..=1.0).contains(&m.p_value));
            // p < alpha exactly when the 1 - alpha interval excludes zero.
            prop_assert_eq!(m.p_value < alpha, !e.contains(0.0), "{:?}", m);
        } else if !base.is_empty() && !cand.is_empty() {
            prop_assert!(matches!(m.verdict, Verdict::Inconclusive(_)));
        }
        // Deterministic, and independent of the order of the repeats.
        let mut rb = base.clone();
        rb.reverse();
        let again = compare_metric("latency", "ms", Statistic::Median, &rb, &cand, &config);
        prop_assert!((again.change_pct.point - e.point).abs() < 1e-9 || e.point.is_nan());
        prop_assert_eq!(again.verdict.label(), m.verdict.label());
    }

    #[test]
    fn decide_never_regresses_an_interval_containing_zero(
        lower in -50.0f64..0.0,
        upper in 0.0f64..80.0,
        t in 0.0f64..1.0,
        threshold_pct in 0.0f64..10.0,
    ) {
        let point = lower + t * (upper - lower);
        let e = Estimate { point, lower, upper };
        let (v, _) = decide(&e, (0.1, 0.1), (3, 3), &CompareConfig { threshold_pct, alpha: 0.05, ..CompareConfig::default() });
        prop_assert!(!matches!(v, Verdict::Regressed | Verdict::Improved), "{:?} {:?}", e, v);
    }
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

#[test]
fn runs_that_measured_different_setups_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, cand) = (tmp.path().join("base"), tmp.path().join("cand"));
    make_run(&base, &synthetic_cells(1, 1.0));

    // A variant whose definition changed (pp at another sparsity) is not the same experiment.
    write_run(&cand, &scenario().replace("sparsity: 0.75", "sparsity: 0.8"), &run_json(7), &synthetic_cells(1, 1.0));
    let err = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap_err();
    assert!(matches!(&err, CompareError::DifferentSetup { field, .. } if field == "variants[pp]"), "{err}");

    // The agent ran on another platform (another SIMD extension): the numbers change with no regression.
    let mut json = run_json(7);
    json["sessions"][0]["boards"]["sim"]["agent_hello"]["simd"] = serde_json::json!(["avx512f"]);
    write_run(&cand, &scenario(), &json, &synthetic_cells(1, 1.0));
    let err = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap_err();
    assert!(matches!(&err, CompareError::DifferentSetup { field, .. } if field == "boards.sim.agent_hello"), "{err}");
    // hil compare exits 2 on it, naming the field.
    let err = compare_cmd(&[base.to_str().unwrap(), cand.to_str().unwrap()]).run().unwrap_err();
    assert!(format!("{err:#}").contains("boards.sim.agent_hello differs"), "{err:#}");

    // A resumed candidate whose two sessions deployed different agent builds mixes two codes,
    // and a resumed candidate whose second session loaded another model is refused the same way.
    let mut json = run_json(7);
    let mut session = json["sessions"][0].clone();
    json["sessions"][0]["boards"]["sim"]["agent"] =
        serde_json::json!({"remote_path": "/tmp/hil/hil-agent", "sha256": "aa", "uploaded": true});
    session["boards"]["sim"]["agent"] =
        serde_json::json!({"remote_path": "/tmp/hil/hil-agent", "sha256": "bb", "uploaded": true});
    json["sessions"].as_array_mut().unwrap().push(session.clone());
    write_run(&cand, &scenario(), &json, &synthetic_cells(1, 1.0));
    let err = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap_err();
    assert!(matches!(&err, CompareError::DifferentSetup { field, .. } if field == "boards.sim.agent.sha256"), "{err}");
    let mut json = run_json(7);
    session["boards"]["sim"]["agent"] = serde_json::Value::Null;
    session["boards"]["sim"]["model"]["model"]["seed"] = serde_json::json!(8);
    json["sessions"].as_array_mut().unwrap().push(session);
    write_run(&cand, &scenario(), &json, &synthetic_cells(1, 1.0));
    let err = compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap_err();
    assert!(matches!(err, CompareError::DifferentModels { .. }), "{err}");
    assert!(err.to_string().contains("session 1 of the candidate run"), "{err}");

    // The same run against itself, resumed or not, compares.
    let mut json = run_json(7);
    let again = json["sessions"][0].clone();
    json["sessions"].as_array_mut().unwrap().push(again);
    write_run(&cand, &scenario(), &json, &synthetic_cells(1, 1.0));
    compare_runs(&load_run(&base).unwrap(), &load_run(&cand).unwrap(), &config()).unwrap();
}
