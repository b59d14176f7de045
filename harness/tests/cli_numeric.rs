//! Every numeric argument of `hil compare`, `hil battery` and `hil sim serve`, under hostile
//! values (NaN, infinities, negatives, zero, subnormals, huge): never a panic; a value out of
//! range is an error naming the argument and the value; a value in range is taken as given.
//!
//! The clap parsers and validation functions are property-tested in-process (fast, many
//! cases); the real `hil` binary is run on a smaller sample of the same values and on the
//! cases the issue reported (`--seconds NaN` panicked, `--period-ms 1e300` panicked).

// The CLI modules are compiled here against the library (their `crate::` paths resolve to
// these imports), as in analysis_compare.rs.
#[allow(unused_imports)]
use harness::{analysis, results, scenario, sim};
#[path = "../src/cli/battery.rs"]
#[allow(dead_code)]
mod battery_cli;
#[path = "../src/cli/compare.rs"]
#[allow(dead_code)]
mod compare_cli;
#[path = "../src/cli/sim.rs"]
#[allow(dead_code)]
mod sim_cli;

use std::process::Command;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use harness::analysis::CompareConfig;
use harness::scenario::Workload;
use proptest::prelude::*;

/// Values as a user could type them: specials, the extremes of f64, and ordinary numbers.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            "-0",
            "0",
            "1e308",
            "1e400",
            "-1e400",
            "1e-320",
            "5e-324",
            "1e300",
            "-1",
            "0.5",
            "1",
            "2",
            "100",
            "100.0000001",
            "86400000",
            "31536000000",
            "31536000001",
        ])
        .prop_map(str::to_string),
        any::<f64>().prop_map(|v| format!("{v}")),
        any::<f64>().prop_map(|v| format!("{v:e}")),
        (-1e4f64..1e4).prop_map(|v| format!("{v}")),
        (0.0f64..3.0).prop_map(|v| format!("{v}")),
    ]
}

fn parse<T: Args + FromArgMatches>(name: &'static str, args: &[String]) -> Result<T, clap::Error> {
    let cmd = T::augment_args(clap::Command::new(name));
    let m = cmd.try_get_matches_from(std::iter::once(name.to_string()).chain(args.iter().cloned()))?;
    T::from_arg_matches(&m)
}

fn in_range(v: f64, lo: f64, lo_inclusive: bool, hi: f64) -> bool {
    v.is_finite() && (if lo_inclusive { v >= lo } else { v > lo }) && v <= hi
}

/// What `hil battery RUN --ARG=VALUE` (with valid companions) makes of the value.
fn battery_options(arg: &str, value: &str) -> Result<analysis::AnalysisOptions, String> {
    let mut args = vec!["run-dir".to_string(), format!("--{arg}={value}")];
    match arg {
        "capacity-mah" => args.push("--voltage=3.7".into()),
        "voltage" => args.push("--capacity-mah=1000".into()),
        _ => {}
    }
    let cmd: battery_cli::BatteryCmd = parse("battery", &args).map_err(|e| e.to_string())?;
    cmd.options().map_err(|e| format!("{e:#}"))
}

/// Asserts an error names the argument and the value as given (or as f64 prints it).
fn names_arg_and_value(err: &str, arg: &str, value: f64) -> Result<(), TestCaseError> {
    prop_assert!(err.contains(arg), "error does not name {}: {}", arg, err);
    prop_assert!(err.contains(&format!("{value:?}")), "error does not name the value {:?}: {}", value, err);
    prop_assert!(!err.contains("panicked"), "{}", err);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compare_threshold_and_alpha(value in hostile_value()) {
        let v: f64 = value.parse().unwrap();
        for (arg, lo, hi) in [("--threshold", 0.0, 100.0), ("--alpha", 0.0, 0.5)] {
            let args = vec!["base".to_string(), "cand".to_string(), format!("{arg}={value}")];
            let cmd: compare_cli::CompareCmd = parse("compare", &args).unwrap();
            match cmd.apply_overrides(CompareConfig::default()) {
                Ok(c) => {
                    prop_assert!(in_range(v, lo, false, hi), "{} {} accepted", arg, value);
                    let got = if arg == "--alpha" { c.alpha } else { c.threshold_pct };
                    prop_assert_eq!(got, v);
                }
                Err(e) => {
                    prop_assert!(!in_range(v, lo, false, hi), "{} {} refused: {}", arg, value, e);
                    names_arg_and_value(&e.to_string(), arg, v)?;
                }
            }
        }
    }

    #[test]
    fn battery_numbers(value in hostile_value()) {
        let v: f64 = value.parse().unwrap();
        // (argument, lower bound, inclusive, upper bound) as documented in `hil battery --help`.
        let year_ms = 365.0 * 86_400.0 * 1e3;
        for (arg, lo, inclusive, hi) in [
            ("capacity-mah", 0.0, false, 1e7),
            ("voltage", 0.0, false, 100.0),
            ("period-ms", 0.0, false, year_ms),
            ("peukert", 1.0, true, 2.0),
            ("voltages", 0.0, false, 5.0),
        ] {
            match battery_options(arg, &value) {
                Ok(o) => {
                    // Periods below a nanosecond are refused as well (they round to zero).
                    prop_assert!(in_range(v, lo, inclusive, hi), "--{} {} accepted", arg, value);
                    match arg {
                        "capacity-mah" => prop_assert!((o.battery_override.unwrap().energy_j - v * 3.7 * 3.6).abs() <= 1e-9 * v * 13.32),
                        "voltage" => prop_assert!((o.battery_override.unwrap().energy_j - 1000.0 * v * 3.6).abs() <= 1e-9 * 3600.0 * v),
                        "period-ms" => {
                            let Some(Workload::Periodic { period }) = o.workload_override else { panic!("no period") };
                            prop_assert!(period > Duration::ZERO && period <= Duration::from_secs(365 * 86_400));
                        }
                        "peukert" => prop_assert_eq!(o.peukert_override, Some(v)),
                        _ => prop_assert_eq!(o.voltages_v, Some(vec![v])),
                    }
                }
                Err(e) => {
                    let tiny_period = arg == "period-ms" && v > 0.0 && v < 1e-5;
                    prop_assert!(!in_range(v, lo, inclusive, hi) || tiny_period, "--{} {} refused: {}", arg, value, e);
                    names_arg_and_value(&e, &format!("--{arg}"), v)?;
                }
            }
        }
        // One bad voltage among good ones is named.
        if !in_range(v, 0.0, false, 5.0) {
            let err = battery_options("voltages", &format!("1.2,1.0,{value}")).unwrap_err();
            names_arg_and_value(&err, "--voltages", v)?;
            prop_assert!(err.contains("core voltage 3"), "{}", err);
        }
    }

    #[test]
    fn sim_serve_seconds(value in hostile_value()) {
        let v: f64 = value.parse().unwrap();
        match sim_cli::serve_limit(v) {
            Ok(d) => {
                prop_assert!(in_range(v, 0.0, true, sim_cli::MAX_SERVE_SECONDS), "--seconds {} accepted", value);
                prop_assert!((d.as_secs_f64() - v).abs() <= 1e-9 * v.max(1.0));
            }
            Err(e) => {
                prop_assert!(!in_range(v, 0.0, true, sim_cli::MAX_SERVE_SECONDS), "--seconds {} refused: {}", value, e);
                names_arg_and_value(&e.to_string(), "--seconds", v)?;
            }
        }
    }
}

/// Runs the real `hil` with `args`: (exit code, stderr).
fn hil(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hil")).args(args).output().expect("running hil");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Asserts `hil` refused with exit code 2 (a panic is 101), naming `needle`.
fn refused(args: &[&str], needle: &str) {
    let (code, stderr) = hil(args);
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert_eq!(code, 2, "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?} should name {needle}: {stderr}");
}

#[test]
fn the_real_binary_refuses_out_of_range_numbers_without_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sim-root");
    let root = root.to_str().unwrap();
    // The two panics.
    refused(&["sim", "serve", "--root", root, "--seconds", "NaN"], "--seconds NaN");
    assert!(!tmp.path().join("sim-root").exists(), "a refused --seconds must not start the simulator");
    refused(&["battery", "/nonexistent-run", "--period-ms", "1e300"], "--period-ms 1e300");
    for (args, needle) in [
        (vec!["sim", "serve", "--root", root, "--seconds=-1"], "--seconds -1"),
        (vec!["sim", "serve", "--root", root, "--seconds", "inf"], "--seconds inf"),
        (vec!["sim", "serve", "--root", root, "--seconds", "1e300"], "--seconds 1e300"),
        (vec!["battery", "/nonexistent-run", "--voltages", "1.2,NaN"], "--voltages NaN"),
        (vec!["battery", "/nonexistent-run", "--voltages=-1"], "--voltages -1"),
        (vec!["battery", "/nonexistent-run", "--capacity-mah", "inf", "--voltage", "3.7"], "--capacity-mah inf"),
        (vec!["battery", "/nonexistent-run", "--capacity-mah", "1000", "--voltage", "NaN"], "--voltage NaN"),
        (vec!["battery", "/nonexistent-run", "--peukert", "NaN"], "--peukert NaN"),
        (vec!["battery", "/nonexistent-run", "--period-ms", "NaN"], "--period-ms NaN"),
        (vec!["compare", "/nonexistent-a", "/nonexistent-b", "--alpha", "NaN"], "--alpha NaN"),
        (vec!["compare", "/nonexistent-a", "/nonexistent-b", "--threshold", "inf"], "--threshold inf"),
        (vec!["compare", "/nonexistent-a", "/nonexistent-b", "--threshold=-3"], "--threshold -3"),
    ] {
        refused(&args, needle);
    }
    // A valid limit still runs and stops by itself.
    let (code, stderr) = hil(&["sim", "serve", "--root", root, "--seconds", "0"]);
    assert_eq!(code, 0, "{stderr}");
}

proptest! {
    // Each case starts processes: a smaller sample of the same values.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_real_binary_never_panics_on_a_number(value in hostile_value()) {
        let v: f64 = value.parse().unwrap();
        let arg = |name: &str| format!("--{name}={value}");
        // Directories that do not exist: an accepted number gets as far as reading them (exit 2
        // naming the directory); a refused one is named. Neither may panic.
        for args in [
            vec!["battery".to_string(), "/nonexistent-run".into(), arg("period-ms")],
            vec!["battery".to_string(), "/nonexistent-run".into(), arg("voltages")],
            vec!["compare".to_string(), "/nonexistent-a".into(), "/nonexistent-b".into(), arg("alpha")],
        ] {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, stderr) = hil(&refs);
            prop_assert!(!stderr.contains("panicked"), "{:?}: {}", args, stderr);
            prop_assert_eq!(code, 2, "{:?}: {}", args, stderr);
            let named = args.last().unwrap().split('=').next().unwrap().to_string();
            prop_assert!(stderr.contains(&named) || stderr.contains("nonexistent"), "{:?}: {}", args, stderr);
            if stderr.contains(&named) {
                prop_assert!(stderr.contains(&format!("{v:?}")), "{:?}: {}", args, stderr);
            }
        }
    }
}
