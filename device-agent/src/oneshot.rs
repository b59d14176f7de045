//! `hil-agent selftest` and `hil-agent bench`: the agent's own commands,
//! driven by hand at the board's shell, with human-readable output.
//!
//! Both go through the same [`Agent`] requests the harness sends (`load`,
//! `selftest`, `run`, `switch`), so what a person checks by hand is what the
//! harness measures.

use crate::agent::{Agent, AgentOptions};
use crate::platform::current_affinity;
use crate::protocol::{
    Command, ErrorReply, LoadReply, LoadRequest, ModelSpec, Reply, RunReply, RunRequest, SelftestReply,
    SelftestRequest, SwitchRequest, VariantSpecWire,
};
use crate::serve::Session;
use std::fmt::Write as _;

/// Variants checked and timed when none are named: dense, BP at 64 % (RT3's
/// BP model's overall sparsity) and two pattern sets on it.
pub const DEFAULT_VARIANTS: [&str; 4] = ["dense", "block:0.64", "pattern:0.75:16", "pattern:0.875:8"];

/// What to load for a one-shot command.
#[derive(Clone, Debug)]
pub struct ModelChoice {
    pub preset: String,
    pub seq: Option<usize>,
    pub seed: u64,
    pub safetensors: Option<String>,
    /// Run the output projection onto the vocabulary too (`rt3-transformer`).
    pub lm_head: bool,
    pub variants: Vec<VariantSpecWire>,
}

/// A one-shot command that could not complete: the request it was on and the agent's refusal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OneShotError(pub ErrorReply);

fn ask(agent: &mut Agent, command: Command) -> Result<Reply, OneShotError> {
    agent.handle(command).map_err(OneShotError)
}

fn load(agent: &mut Agent, choice: &ModelChoice) -> Result<LoadReply, OneShotError> {
    let req = LoadRequest {
        model: ModelSpec {
            preset: choice.preset.clone(),
            seed: choice.seed,
            seq: choice.seq,
            safetensors: choice.safetensors.clone(),
            lm_head: choice.lm_head,
        },
        variants: choice.variants.clone(),
        residency: Default::default(),
    };
    match ask(agent, Command::Load(req))? {
        Reply::Load(r) => Ok(r),
        other => unreachable!("load answered with {}", other.name()),
    }
}

/// The header both commands print: build, CPU, SIMD and the kernels' backend, threads, affinity.
pub fn describe_board(agent: &Agent) -> String {
    let h = agent.hello();
    let mut s = format!(
        "{} {} on {} ({}, {} cores, SIMD: {}, kernels: {}), Linux {}\n",
        h.agent,
        h.agent_version,
        h.arch,
        h.cpu_model,
        h.cores,
        if h.simd.is_empty() { "none".into() } else { h.simd.join(" ") },
        kernels::simd::Backend::best().name(),
        h.kernel.release
    );
    let _ = writeln!(s, "threads {}, cpus {}", h.threads, current_affinity());
    s
}

fn describe_model(load: &LoadReply) -> String {
    let m = &load.model;
    let source = match &m.path {
        Some(p) => format!("weights from {p}"),
        None => format!("synthetic weights, seed {}", m.seed),
    };
    format!(
        "model {}: {} layers, d_model {}, {} heads, FFN {}, {} tokens, {}; loaded in {:.1} ms\n",
        m.preset,
        m.layers,
        m.d_model,
        m.heads,
        m.ffn,
        m.seq,
        source,
        load.load_ns as f64 / 1e6
    )
}

/// `hil-agent selftest`: loads the model, checks every variant against the
/// scalar reference, returns the report and whether all passed.
pub fn selftest(options: AgentOptions, choice: &ModelChoice, tokens: usize) -> Result<(String, bool), OneShotError> {
    let mut agent = Agent::new(options);
    let mut out = describe_board(&agent);
    let loaded = load(&mut agent, choice)?;
    out += &describe_model(&loaded);
    let Reply::Selftest(report) = ask(&mut agent, Command::Selftest(SelftestRequest { tokens, ..Default::default() }))?
    else {
        unreachable!("selftest answers with a selftest reply")
    };
    out += &format_selftest(&report);
    Ok((out, report.passed))
}

/// The self-test table.
pub fn format_selftest(report: &SelftestReply) -> String {
    let mut s = format!(
        "self-test on {} tokens against the f64 scalar reference\n{:<24} {:>12} {:>12} {:>7}  {:<20} result\n",
        report.tokens, "variant", "max abs err", "max rel err", "checks", "worst at"
    );
    for r in &report.results {
        let _ = writeln!(
            s,
            "{:<24} {:>12.3e} {:>12.3e} {:>7}  {:<20} {}",
            r.variant,
            r.max_abs_err,
            r.max_rel_err,
            r.checks,
            r.worst,
            if r.passed { "ok" } else { "FAILED" }
        );
    }
    let _ = writeln!(s, "{}", if report.passed { "all variants passed" } else { "SELF-TEST FAILED" });
    s
}

/// How long `bench` measures each variant.
#[derive(Clone, Copy, Debug)]
pub struct BenchPlan {
    pub warmup: u32,
    pub min_iters: u32,
    pub min_ms: u64,
    /// Switches timed for the switching figure.
    pub switches: usize,
}

/// One variant's row in the bench table.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    pub name: String,
    pub kind: String,
    pub sparsity: f64,
    pub nnz: u64,
    pub bytes: u64,
    pub prepare_ms: f64,
    pub iterations: u64,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub checksum: String,
}

/// `hil-agent bench`: loads the model, times every variant, times switching.
pub fn bench(options: AgentOptions, choice: &ModelChoice, plan: BenchPlan) -> Result<String, OneShotError> {
    let mut agent = Agent::new(options);
    let mut out = describe_board(&agent);
    let loaded = load(&mut agent, choice)?;
    out += &describe_model(&loaded);
    let mut rows = Vec::new();
    for v in &loaded.variants {
        let req = RunRequest {
            variant: Some(v.name.clone()),
            warmup: plan.warmup,
            min_iters: plan.min_iters,
            min_ms: plan.min_ms,
            ..RunRequest::default()
        };
        let Reply::Run(run) = ask(&mut agent, Command::Run(req))? else { unreachable!("run answers with a run reply") };
        rows.push(bench_row(v, &run));
    }
    out += &format_bench(&rows);
    if loaded.variants.len() > 1 && plan.switches > 0 {
        let mut times = Vec::with_capacity(plan.switches);
        for i in 0..plan.switches {
            let target = loaded.variants[(i + 1) % loaded.variants.len()].name.clone();
            let Reply::Switch(sw) = ask(&mut agent, Command::Switch(SwitchRequest::hot(target)))? else {
                unreachable!("switch answers with a switch reply")
            };
            times.push(sw.switch_ns);
        }
        times.sort_unstable();
        let _ = writeln!(
            out,
            "switching the active variant: median {:.2} us, max {:.2} us over {} switches (RT3 reports up to 45 ms)",
            percentile(&times, 0.5) as f64 / 1e3,
            *times.last().unwrap_or(&0) as f64 / 1e3,
            times.len()
        );
    }
    Ok(out)
}

fn bench_row(v: &crate::protocol::VariantReport, run: &RunReply) -> BenchRow {
    let mut lat = run.latencies_ns.clone();
    lat.sort_unstable();
    BenchRow {
        name: v.name.clone(),
        kind: v.kind.clone(),
        sparsity: v.sparsity,
        nnz: v.nnz,
        bytes: v.bytes,
        prepare_ms: v.prepare_ns as f64 / 1e6,
        iterations: run.iterations,
        median_ms: percentile(&lat, 0.5) as f64 / 1e6,
        p90_ms: percentile(&lat, 0.9) as f64 / 1e6,
        min_ms: lat.first().copied().unwrap_or(0) as f64 / 1e6,
        checksum: run.checksum.clone(),
    }
}

/// Nearest-rank percentile of sorted values (`q` in `[0, 1]`); 0 when empty.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The bench table; speedups are against the first row (normally `dense`).
pub fn format_bench(rows: &[BenchRow]) -> String {
    let mut s = format!(
        "{:<20} {:<8} {:>8} {:>11} {:>9} {:>9} {:>6} {:>10} {:>10} {:>10} {:>8}  checksum\n",
        "variant", "kind", "sparsity", "nnz", "MiB", "prep ms", "iters", "median ms", "p90 ms", "min ms", "speedup"
    );
    let baseline = rows.first().map(|r| r.median_ms).unwrap_or(0.0);
    for r in rows {
        let speedup = if r.median_ms > 0.0 { baseline / r.median_ms } else { 0.0 };
        let _ = writeln!(
            s,
            "{:<20} {:<8} {:>8.4} {:>11} {:>9.2} {:>9.1} {:>6} {:>10.3} {:>10.3} {:>10.3} {:>7.2}x  {}",
            r.name,
            r.kind,
            r.sparsity,
            r.nnz,
            r.bytes as f64 / (1u64 << 20) as f64,
            r.prepare_ms,
            r.iterations,
            r.median_ms,
            r.p90_ms,
            r.min_ms,
            speedup,
            r.checksum
        );
    }
    s
}

/// Parses a byte count for `--max-memory`: `1048576`, `512K`, `300M`, `2G` (binary units, `iB`/`B` optional).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let digits_end = upper.find(|c: char| !c.is_ascii_digit()).unwrap_or(upper.len());
    let (num, unit) = upper.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| format!("`{text}` is not a byte count (e.g. 512M, 2G)"))?;
    let shift = match unit.trim().trim_end_matches('B').trim_end_matches('I') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(percentile(&v, 0.5), 5);
        assert_eq!(percentile(&v, 0.9), 9);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&v, 1.0), 10);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn bench_table_shows_speedup_against_the_first_row() {
        let row = |name: &str, median_ms: f64| BenchRow {
            name: name.into(),
            kind: "dense".into(),
            sparsity: 0.0,
            nnz: 10,
            bytes: 1 << 20,
            prepare_ms: 1.0,
            iterations: 5,
            median_ms,
            p90_ms: median_ms,
            min_ms: median_ms,
            checksum: "00000000000000ff".into(),
        };
        let table = format_bench(&[row("dense", 4.0), row("pp75", 1.0)]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("variant"));
        assert!(lines[1].contains("1.00x"), "{}", lines[1]);
        assert!(lines[2].contains("4.00x") && lines[2].contains("00000000000000ff"), "{}", lines[2]);
    }

    #[test]
    fn byte_sizes_with_units() {
        assert_eq!(parse_byte_size("1024").unwrap(), 1024);
        assert_eq!(parse_byte_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_byte_size("300MiB").unwrap(), 300 << 20);
        assert_eq!(parse_byte_size("2g").unwrap(), 2 << 30);
        assert!(parse_byte_size("12X").unwrap_err().contains("unknown unit"));
        assert!(parse_byte_size("M").unwrap_err().contains("not a byte count"));
    }
}
