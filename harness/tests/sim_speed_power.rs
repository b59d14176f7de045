//! The simulated board follows its own model, checked end to end the way `hil run` drives it:
//! latency at level `f` is `f_max / f` times the top level's (the agent stretches each inference
//! by the fake cpufreq tree's factor), the spread at the lowest level is the top level's, and a
//! back-to-back window's mean power, read through the emulated PPK2 and the real driver, is
//! `P_static + C V(f)^2 f` with the numbers the simulator recorded in its marker (`run.json`).
//!
//! Latencies are compared as ratios of medians over all repeats (interleaved in time), so the
//! host's own speed and its drift cancel; power against the model's own numbers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use harness::results::{read_parquet, CELLS_PARQUET, LATENCY_PARQUET};
use harness::runner::{run_scenario, RunOptions};
use harness::scenario::parse_scenario;

/// Builds the debug agent once (kernels are optimised in dev builds, see Cargo.toml).
fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
            let status = Command::new(env!("CARGO"))
                .current_dir(&root)
                .args(["build", "-q", "-p", "device-agent", "--bin", "hil-agent"])
                .status()
                .expect("running cargo");
            assert!(status.success(), "building hil-agent failed");
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            let bin = target.join("debug").join("hil-agent");
            assert!(bin.is_file(), "{} missing", bin.display());
            bin
        })
        .clone()
}

const LEVELS_KHZ: [u64; 3] = [1_500_000, 1_000_000, 600_000];

fn scenario(workdir: &Path) -> String {
    format!(
        r#"
name: sim-speed-power
boards:
  - name: sim
    sim: true
    cpus: [0]
    workdir: {}
model:
  preset: rt3-transformer
  seq: 64                     # CPU-bound: at 8 tokens the weights' trips to memory dominate
  seed: 5
variants:
  - name: dense
    kind: dense
  - name: bp50
    kind: block
    sparsity: 0.5
    block_rows: 16
dvfs:
  levels: [1500MHz, 1000MHz, 600MHz]
  settle: 30ms
measure:
  warmup_iterations: 5
  min_iterations: 8
  min_duration: 600ms
  repeats: 3                  # interleaved, so the host's drift over seconds averages out
  idle_duration: 0s
  max_attempts: 2
constraints:
  latency_deadline: 1s
"#,
        workdir.display()
    )
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[test]
fn simulated_latency_follows_the_frequency_and_power_follows_the_model() {
    let work = tempfile::tempdir().unwrap();
    let text = scenario(&work.path().join("wd"));
    let parsed = parse_scenario(&text, "sim-speed-power.yaml").expect("valid scenario");
    let opts = RunOptions {
        out_root: work.path().join("results"),
        resume: None,
        progress: false,
        agent_binary: Some(agent_binary()),
    };
    let outcome = run_scenario(&parsed, &text, &opts, Arc::new(AtomicBool::new(false))).expect("run completes");
    assert!(outcome.all_ok(), "{:?}", outcome.boards);

    // The model's numbers as the simulator recorded them (its marker, read by the probe).
    let meta = harness::runmeta::RunMeta::read(&outcome.dir).unwrap();
    let board = serde_json::to_value(meta.board("sim").expect("board sim in run.json")).unwrap();
    let model = &board["probe"]["simulated"]["model"];
    let model_w: BTreeMap<u64, f64> = model["levels"]
        .as_array()
        .unwrap_or_else(|| panic!("run.json has the simulated model's levels: {board}"))
        .iter()
        .map(|l| (l["freq_khz"].as_u64().unwrap(), l["one_core_busy_w"].as_f64().unwrap()))
        .collect();
    for &f in &LEVELS_KHZ {
        let l = model["levels"].as_array().unwrap().iter().find(|l| l["freq_khz"] == f).unwrap();
        let num = |v: &serde_json::Value| v.as_f64().unwrap();
        let (v, c, s) = (num(&l["voltage_v"]), num(&model["dyn_coeff"]), num(&model["static_w"]));
        assert!((s + c * v * v * f as f64 * 1e3 - model_w[&f]).abs() < 1e-9, "P = static + C V^2 f: {l}");
    }
    let stretch = &board["agent_hello"]["sim_stretch"];
    assert_eq!(stretch["max_khz"], 1_500_000, "hello reports the stretch: {}", board["agent_hello"]);

    // Per-iteration latencies by (variant, level).
    let lat = read_parquet(&outcome.dir.join(LATENCY_PARQUET)).unwrap();
    let variant = lat.column("variant").unwrap().str().unwrap();
    let freq = lat.column("freq_khz").unwrap().u64().unwrap();
    let ns = lat.column("latency_ns").unwrap().u64().unwrap();
    let mut by_cell: BTreeMap<(String, u64), Vec<f64>> = BTreeMap::new();
    for ((v, f), n) in variant.into_iter().zip(freq).zip(ns) {
        by_cell.entry((v.unwrap().to_string(), f.unwrap())).or_default().push(n.unwrap() as f64);
    }
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for name in ["dense", "bp50"] {
        let stats = |f: u64| {
            let mut v = by_cell[&(name.to_string(), f)].clone();
            v.sort_by(f64::total_cmp);
            (quantile(&v, 0.5), quantile(&v, 0.9) / quantile(&v, 0.1))
        };
        let (top_median, top_spread) = stats(1_500_000);
        report.push(format!("{name}@1500000: median {:.3} ms, p90/p10 {top_spread:.3}", top_median / 1e6));
        for &f in &LEVELS_KHZ[1..] {
            let (median, spread) = stats(f);
            let ratio = median / top_median;
            let want = 1_500_000.0 / f as f64;
            report.push(format!(
                "{name}@{f}: median {:.3} ms, ratio {ratio:.4} (want {want:.4}), p90/p10 {spread:.3}",
                median / 1e6
            ));
            if (ratio / want - 1.0).abs() > 0.05 {
                failures.push(format!("{name} at {f} kHz: median ratio {ratio:.4}, want {want:.4} within 5 %"));
            }
            if f == 600_000 && spread > 1.3 * top_spread {
                failures.push(format!("{name}: p90/p10 {spread:.3} at 600 MHz, above 1.3 x {top_spread:.3}"));
            }
        }
    }

    // Mean power of each back-to-back window against the model with one busy core.
    let cells = read_parquet(&outcome.dir.join(CELLS_PARQUET)).unwrap();
    let freq = cells.column("freq_khz").unwrap().u64().unwrap();
    let cur = cells.column("cur_freq_khz").unwrap().u64().unwrap();
    let power = cells.column("mean_power_w").unwrap().f64().unwrap();
    let variants = cells.column("variant").unwrap().str().unwrap();
    for (((f, c), p), v) in freq.into_iter().zip(cur).zip(power).zip(variants) {
        let (f, p, v) = (f.unwrap(), p.expect("every window has energy"), v.unwrap());
        let want = model_w[&f];
        report.push(format!("{v}@{f} (read back {c:?}): {p:.4} W, model {want:.4} W"));
        if (p / want - 1.0).abs() > 0.01 {
            failures.push(format!("{v} at {f} kHz: mean power {p:.4} W, model {want:.4} W, beyond 1 %"));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{failures:#?}\n{}", report.join("\n"));
}
