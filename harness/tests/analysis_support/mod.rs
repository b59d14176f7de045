//! Synthetic cells and run directories for the analysis tests.
#![allow(dead_code)]

use std::path::Path;

use harness::results::{CellRecord, SwitchRecord};

/// A finished cell with the given per-iteration latencies and (optional) power figures.
pub fn record(
    board: &str,
    freq_khz: u64,
    level: u32,
    variant: &str,
    kind: &str,
    sparsity: f64,
    repeat: u32,
    latencies_ns: Vec<u64>,
    energy_mj: Option<f64>,
    idle_w: Option<f64>,
) -> CellRecord {
    let s = harness::stats::LatencySummary::from_ns(&latencies_ns).expect("latencies");
    let n = latencies_ns.len() as u64;
    let window_ns: u64 = latencies_ns.iter().sum();
    CellRecord {
        board: board.into(),
        freq_khz,
        variant: variant.into(),
        repeat,
        level,
        variant_kind: kind.into(),
        sparsity,
        simulated: true,
        started_at: "2026-11-28T10:00:00Z".into(),
        attempts: 1,
        iterations: n,
        window_ns,
        latency_median_ms: s.median_ms,
        latency_mean_ms: s.mean_ms,
        latency_p90_ms: s.p90_ms,
        latency_p99_ms: s.p99_ms,
        latency_min_ms: s.min_ms,
        latency_max_ms: s.max_ms,
        deadline_ms: None,
        deadline_met: None,
        cur_freq_khz: Some(freq_khz),
        freq_verified: true,
        off_target_ms: Some(0.0),
        throttled: false,
        temp_before_c: None,
        temp_after_c: None,
        cooldown_timed_out: false,
        checksum: format!("{variant}-sum"),
        mean_power_w: energy_mj.map(|e| e / s.mean_ms),
        idle_power_w: idle_w,
        energy_per_inference_mj: energy_mj,
        net_energy_per_inference_mj: energy_mj.zip(idle_w).map(|(e, i)| e - i * s.mean_ms),
        power_samples: energy_mj.map(|_| 1000),
        lost_samples: energy_mj.map(|_| 0),
        clock_offset_uncertainty_us: None,
        power_flagged: energy_mj.map(|_| false),
        power_rate_hz: None,
        power_few_samples: None,
        energy_missing_reason: None,
        monitor_clock_ppm: None,
        monitor_clock_points: None,
        monitor_clock_spread_us: None,
        monitor_clock_bound_us: None,
        fidelity_cosine: None,
        fidelity_rel_l2: None,
        fidelity_kind: None,
        time_capped: false,
        agent_note: None,
        sim_stretch_factor: None,
        window_host_start_ns: None,
        window_host_end_ns: None,
        window_energy_j: energy_mj.map(|e| e * n as f64 / 1e3),
        latencies_ns,
    }
}

/// `n` identical latencies of `ms` milliseconds.
pub fn constant_ns(ms: f64, n: usize) -> Vec<u64> {
    vec![(ms * 1e6).round() as u64; n]
}

/// A valid scenario on a simulated board with three variants (dense, bp, pp).
pub fn scenario_yaml(levels: &str, deadline: Option<&str>, policy: &str) -> String {
    let deadline = deadline.map(|d| format!("constraints:\n  latency_deadline: {d}\n")).unwrap_or_default();
    format!(
        "name: synth
boards:
  - name: sim
    sim: true
    cpus: [0]
    workdir: /tmp/hil-synth
model:
  preset: rt3-transformer
  seed: 7
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
  levels: [{levels}]
measure:
  min_duration: 1s
  repeats: 5
{deadline}{policy}"
    )
}

/// Writes a run directory: the scenario copy, a minimal `run.json` and the journal.
pub fn write_run(dir: &Path, scenario: &str, run_json: &serde_json::Value, cells: &[CellRecord]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("scenario.yaml"), scenario).unwrap();
    std::fs::write(dir.join("run.json"), serde_json::to_string_pretty(run_json).unwrap()).unwrap();
    let mut journal = String::new();
    for c in cells {
        journal.push_str(&serde_json::to_string(c).unwrap());
        journal.push('\n');
    }
    std::fs::write(dir.join("cells.jsonl"), journal).unwrap();
}

/// A `run.json` like the runner's, with the model the agent loaded.
pub fn run_json(model_seed: u64) -> serde_json::Value {
    serde_json::json!({
        "harness_version": "0.1.0",
        "git_commit": null,
        "scenario": "synth",
        "scenario_sha256": "00",
        "host": "test",
        "started_at": "2026-11-28T10:00:00Z",
        "finished_at": "2026-11-28T10:05:00Z",
        "interrupted": false,
        "boards": {
            "sim": {
                "transport": "local",
                "simulated": true,
                "simulation": "SIMULATED board (test)",
                "monitor": {"model": "PPK2 (simulated)"},
                "agent_hello": {"agent_version": "0.1.0", "cpu_model": "test cpu", "kernel": {"release": "6.0"}},
                "model": {"model": {"preset": "rt3-transformer", "seed": model_seed, "seq": 35}}
            }
        }
    })
}

/// `rec` with a measured output fidelity (cosine; relative L2 derived for a unit-norm output).
pub fn with_fidelity(mut rec: CellRecord, cosine: f64) -> CellRecord {
    rec.fidelity_cosine = Some(cosine);
    rec.fidelity_rel_l2 = Some((2.0 - 2.0 * cosine).max(0.0).sqrt());
    rec.fidelity_kind = Some("perturbation (synthetic weights)".into());
    rec
}

/// A `switch.parquet` row as the runner writes it.
pub fn switch_record(board: &str, variant: &str, hot_us: f64, cold_ms: f64, cold_penalty_ms: f64) -> SwitchRecord {
    SwitchRecord {
        board: board.into(),
        variant: variant.into(),
        freq_khz: 600_000,
        simulated: true,
        rounds: 5,
        hot_switch_us: hot_us,
        cold_switch_ms: cold_ms,
        hot_first_inference_penalty_ms: -0.1,
        cold_first_inference_penalty_ms: cold_penalty_ms,
        first_inference_penalty_ms: cold_penalty_ms,
        resident_bytes: 4_000_000,
        resident_bytes_all_prepacked: Some(80_000_000),
        resident_bytes_one_set: Some(60_000_000),
        within_45_ms: cold_ms + cold_penalty_ms.max(0.0) <= 45.0,
    }
}

/// Writes `dir/switch.parquet` from `rows` (what `ResultsStore::append_switches` leaves behind).
pub fn write_switch_parquet(dir: &Path, rows: &[SwitchRecord]) {
    let mut df = harness::results::switch_frame(rows).unwrap();
    harness::results::write_parquet_atomic(&dir.join(harness::results::SWITCH_PARQUET), &mut df).unwrap();
}
