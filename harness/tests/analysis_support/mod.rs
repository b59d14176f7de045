//! Synthetic cells and run directories for the analysis tests.
#![allow(dead_code)]

use std::path::Path;

use device_agent::protocol::{HelloReply, KernelInfo, LoadReply, ModelInfo, VariantReport};
use harness::power::{MonitorInfo, SampleClock};
use harness::results::{CellRecord, SwitchRecord};
use harness::runmeta::{BoardMeta, BuildInfo, RunMeta, SessionMeta, RUN_JSON_SCHEMA};

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
        cpu_busy_cores: None,
        sim_busy_cores: None,
        place: None,
        exporter_host: None,
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

/// The agent's `hello` as a board of `arch` with `simd` would answer it.
pub fn hello(arch: &str, simd: &[&str], cpu_model: &str) -> HelloReply {
    HelloReply {
        agent: "hil-agent".into(),
        agent_version: "0.1.0".into(),
        arch: arch.into(),
        simd: simd.iter().map(|s| s.to_string()).collect(),
        cpu_model: cpu_model.into(),
        board_model: None,
        cores: 4,
        allowed_cpus: vec![0],
        threads: 1,
        kernel: KernelInfo {
            sysname: "Linux".into(),
            release: "6.6.31-v8+".into(),
            version: "#1 SMP PREEMPT".into(),
            machine: arch.into(),
            nodename: "board".into(),
        },
        mem_total_bytes: Some(4 << 30),
        mem_available_bytes: Some(3 << 30),
        sim_stretch: None,
    }
}

/// One variant of a `load` reply.
pub fn variant_report(name: &str, kind: &str, base: Option<&str>, sparsity: f64) -> VariantReport {
    let dense_weights = 5_760_000u64;
    let nnz = ((1.0 - sparsity) * dense_weights as f64) as u64;
    VariantReport {
        name: name.into(),
        kind: kind.into(),
        base: base.map(str::to_string),
        sparsity,
        nnz,
        multiplied: nnz,
        bytes: nnz * 4,
        dense_weights,
        prepare_ns: 100_000_000,
        pattern_generation_ns: (kind == "pattern").then_some(50_000_000),
    }
}

/// The agent's `load` reply for `preset` with `seed`, `seq` and `variants`.
pub fn load_reply(preset: &str, seed: u64, seq: usize, variants: Vec<VariantReport>) -> LoadReply {
    LoadReply {
        model: ModelInfo {
            preset: preset.into(),
            source: "synthetic".into(),
            path: None,
            seed,
            seq,
            layers: 2,
            d_model: 800,
            heads: 4,
            ffn: 200,
            vocab: Some(33_278),
            lm_head: false,
            parameters: 30_000_000,
            macs: 200_000_000,
        },
        residency: Default::default(),
        resident_bytes: None,
        resident_bytes_all_prepacked: None,
        resident_bytes_one_set: None,
        active: variants.first().map(|v| v.name.clone()).unwrap_or_default(),
        variants,
        estimated_bytes: 1 << 26,
        mem_available_bytes: Some(3 << 30),
        load_ns: 1_000_000_000,
    }
}

/// A monitor's identity.
pub fn monitor(model: &str, simulated: bool) -> MonitorInfo {
    MonitorInfo {
        model: model.into(),
        serial: Some("C1A2B3".into()),
        metadata: vec![],
        calibration: vec![("R0".into(), "1003.35".into()), ("GS1".into(), "112.789".into())],
        sample_rate_hz: Some(100_000.0),
        clock: SampleClock::StreamIndex,
        simulated,
        port: "/dev/ttyACM0".into(),
    }
}

/// A one-session `run.json` (this hil's typed layout) holding `boards`.
pub fn run_meta(boards: Vec<(&str, BoardMeta)>) -> RunMeta {
    RunMeta {
        schema_version: RUN_JSON_SCHEMA,
        scenario: "synth".into(),
        scenario_source: "synth.yaml".into(),
        scenario_sha256: "cd".repeat(32),
        sessions: vec![SessionMeta {
            started_at: "2026-11-28T10:00:00Z".into(),
            finished_at: Some("2026-11-28T10:05:00Z".into()),
            interrupted: false,
            host: "lab-host".into(),
            build: BuildInfo {
                harness_version: "0.1.0".into(),
                git_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
                git_dirty: Some(false),
            },
            agent_source: None,
            notes: Vec::new(),
            boards: boards.into_iter().map(|(n, b)| (n.to_string(), b)).collect(),
        }],
    }
}

/// A `run.json` like the runner's for the simulated board `sim`, with the model the agent loaded.
pub fn run_json(model_seed: u64) -> serde_json::Value {
    let board = BoardMeta {
        transport: "local".into(),
        simulated: true,
        simulation: Some("SIMULATED board (test)".into()),
        monitor: Some(monitor("PPK2 (simulated)", true)),
        agent_hello: Some(hello("x86_64", &["avx2", "fma"], "test cpu")),
        model: Some(load_reply(
            "rt3-transformer",
            model_seed,
            35,
            vec![
                variant_report("dense", "dense", None, 0.0),
                variant_report("bp", "block", None, 0.5),
                variant_report("pp", "pattern", Some("bp"), 0.75),
            ],
        )),
        ..BoardMeta::default()
    };
    serde_json::to_value(run_meta(vec![("sim", board)])).unwrap()
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
        place: None,
        exporter_host: None,
    }
}

/// Writes `dir/switch.parquet` from `rows` (what `ResultsStore::append_switches` leaves behind).
pub fn write_switch_parquet(dir: &Path, rows: &[SwitchRecord]) {
    let mut df = harness::results::switch_frame(rows).unwrap();
    harness::results::write_parquet_atomic(&dir.join(harness::results::SWITCH_PARQUET), &mut df).unwrap();
}
