//! Speedup of the sparse linear layers (and the whole encoder) over the dense
//! GEMM baseline, measured in the same run on this machine.
//!
//! ```text
//! cargo run --release -p kernels --example speedup [-- --json] [--shapes 768->3072,800->200]
//!                                                  [--rounds 9] [--no-model] [--threads 1]
//! ```
//!
//! Method: every layer of a shape is built first; then, after a warm-up and a
//! calibration that picks per layer enough iterations for a sample of at least
//! `SAMPLE_MS` milliseconds, `rounds` rounds run every layer of the shape in
//! turn (dense included), so slow drifts of the machine (frequency, other
//! tenants) hit all variants alike. The reported time is the median over the
//! rounds of the per-iteration mean of each sample. Speedup = dense median /
//! layer median. Useful GFLOP/s counts `2 * nnz * tokens` (the work that is not
//! pruned away), so it is comparable to the dense rate times `1 - sparsity`.
//! Every `forward` includes its layout conversions (the pattern kernel's
//! transposes in and out).

use std::time::{Duration, Instant};

use kernels::encoder::Preset;
use kernels::linear::block::BlockSparseLinear;
use kernels::linear::dense::DenseLinear;
use kernels::linear::masked::MaskedStripLinear;
use kernels::linear::pattern::PatternSparseLinear;
use kernels::model::{random_input, ReconfigurableModel, VariantSpec};
use kernels::prune::block::{block_mask, BlockShape};
use kernels::prune::pattern::{
    assign_patterns, assign_patterns_on_blocks, generate_pattern_set, generate_pattern_set_on_blocks, CandidateMethod,
    PatternConfig,
};
use kernels::{LinearKernel, Mask, Matrix, Threads};

/// Minimum length of one timing sample.
const SAMPLE_MS: f64 = 2.0;
/// BP strip height for the block variants and the BP base under patterns.
const BLOCK_ROWS: usize = 16;

struct Shape {
    name: &'static str,
    inputs: usize,
    outputs: usize,
    tokens: usize,
}

const SHAPES: [Shape; 6] = [
    // DistilBERT's feed-forward pair at sequence length 128.
    Shape { name: "768->3072", inputs: 768, outputs: 3072, tokens: 128 },
    Shape { name: "3072->768", inputs: 3072, outputs: 768, tokens: 128 },
    // DistilBERT's attention projections (Q, K, V, output): 4 of the 6 linear layers per block.
    Shape { name: "768->768", inputs: 768, outputs: 768, tokens: 128 },
    // RT3's Transformer (d=800, FFN 200, sequence 35).
    Shape { name: "800->200", inputs: 800, outputs: 200, tokens: 35 },
    Shape { name: "200->800", inputs: 200, outputs: 800, tokens: 35 },
    Shape { name: "800->800", inputs: 800, outputs: 800, tokens: 35 },
];

struct Args {
    json: bool,
    shapes: Option<Vec<String>>,
    rounds: usize,
    model: bool,
    threads: Threads,
    /// Only cases whose "variant base tile" label contains this.
    filter: Option<String>,
    /// Report the minimum CPU time over the rounds instead of the median.
    cpu_min: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args =
        Args { json: false, shapes: None, rounds: 9, model: true, threads: Threads::One, filter: None, cpu_min: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--help" | "-h" => {
                println!(
                    "speedup: end-to-end layer and encoder speedups of the sparse kernels over the dense baseline\n\n\
                     usage: cargo run --release -p kernels --example speedup -- [options]\n\
                     \x20 --json          one JSON object per row (shape, variant, sparsity, tile, time_us, speedup, ...)\n\
                     \x20 --shapes LIST   e.g. '768->3072,3072->768' (quote it: > is a shell redirect)\n\
                     \x20 --filter TEXT   only rows whose \"variant base tile\" contains TEXT (dense always stays)\n\
                     \x20 --rounds N      interleaved rounds per shape (median over rounds)\n\
                     \x20 --threads N     kernel threads (default 1: DVFS experiments pin one core)\n\
                     \x20 --cpu-min       report the minimum thread CPU time over rounds, not the median\n\
                     \x20 --no-model      skip the whole-encoder rows and the switching row"
                );
                std::process::exit(0);
            }
            "--json" => args.json = true,
            "--no-model" => args.model = false,
            "--cpu-min" => args.cpu_min = true,
            "--filter" => args.filter = Some(it.next().ok_or("--filter needs a substring")?),
            "--shapes" => args.shapes = Some(it.next().ok_or("--shapes needs a list")?.split(',').map(str::to_string).collect()),
            "--rounds" => args.rounds = it.next().and_then(|v| v.parse().ok()).filter(|r| *r > 0).ok_or("--rounds needs a positive integer")?,
            "--threads" => {
                let n: usize = it.next().and_then(|v| v.parse().ok()).filter(|n| *n > 0).ok_or("--threads needs a positive integer")?;
                args.threads = if n == 1 { Threads::One } else { Threads::N(n) };
            }
            other => return Err(format!("unknown argument {other:?} (expected --json, --shapes, --rounds, --threads, --filter, --cpu-min, --no-model)")),
        }
    }
    Ok(args)
}

/// One layer to time, with what the table says about it.
struct Case {
    variant: String,
    /// What the sparsity is made of, e.g. `PP`, `BP64%+PP`.
    base: String,
    tile: Option<usize>,
    /// Sparsity of the BP base under a pattern set (0 for PP on dense and for non-pattern rows).
    base_sparsity: f64,
    /// BP block of the base (`16x1`, `16x16`), `None` without one.
    base_block: Option<String>,
    /// Index of the case timing the BP base alone (pattern rows on a BP base).
    base_case: Option<usize>,
    layer: Box<dyn LinearKernel>,
}

fn cases_for(shape: &Shape) -> Vec<Case> {
    let w =
        Matrix::random(shape.outputs, shape.inputs, 0x5eed ^ shape.outputs as u64 ^ (shape.inputs as u64) << 20, 0.05);
    let dense = Mask::dense(shape.outputs, shape.inputs);
    let mut cases = vec![Case {
        variant: "dense".into(),
        base: "-".into(),
        tile: None,
        base_sparsity: 0.0,
        base_block: None,
        base_case: None,
        layer: Box::new(DenseLinear::new(w.clone())),
    }];
    for s in [0.5, 0.64, 0.75] {
        let mask = block_mask(&w, BlockShape::strip(BLOCK_ROWS), s);
        cases.push(Case {
            variant: "block".into(),
            base: format!("BP strip {BLOCK_ROWS}"),
            tile: None,
            base_sparsity: 0.0,
            base_block: Some(format!("{BLOCK_ROWS}x1")),
            base_case: None,
            layer: Box::new(BlockSparseLinear::from_masked(&w, &mask, BLOCK_ROWS)),
        });
    }
    for tile in [8, 16, 32, 100] {
        for s in [0.5, 0.75, 0.875] {
            let cfg =
                PatternConfig { tile, patterns_per_set: 4, sparsity: s, method: CandidateMethod::Rt3TileSums, seed: 1 };
            let set = generate_pattern_set(&w, &dense, &cfg);
            let a = assign_patterns(&w, &dense, &set);
            cases.push(Case {
                variant: "pattern".into(),
                base: "PP only".into(),
                tile: Some(tile),
                base_sparsity: 0.0,
                base_block: None,
                base_case: None,
                layer: Box::new(PatternSparseLinear::from_assignment(&w, &a, set.len())),
            });
            if tile == 16 {
                // The same mask through the masked-strip kernel (one strip per tile row).
                cases.push(Case {
                    variant: "pattern".into(),
                    base: "PP strips".into(),
                    tile: Some(tile),
                    base_sparsity: 0.0,
                    base_block: None,
                    base_case: None,
                    layer: Box::new(MaskedStripLinear::from_masked(&w, a.mask(), tile, "pattern")),
                });
            }
        }
    }
    // RT3's combination: a BP base at 64 %, then patterns down to the total target. Two bases:
    // 16x1 strips (`s`, as the block rows above) and blocks as wide as they are tall (`t`), which
    // are tile-aligned under tiles of that size (whole tiles pruned, the rest keep exactly their
    // pattern) and otherwise leave each tile its own BP columns like the strips do.
    let bases = [("s", BlockShape::strip(BLOCK_ROWS)), ("t", BlockShape { rows: BLOCK_ROWS, cols: BLOCK_ROWS })];
    for (label, shape) in bases {
        let bp = block_mask(&w, shape, 0.64);
        let base_block = Some(format!("{}x{}", shape.rows, shape.cols));
        let base_sparsity = bp.sparsity();
        let base_case = Some(cases.len());
        cases.push(Case {
            variant: "block".into(),
            base: format!("BP64%{label}"),
            tile: None,
            base_sparsity: 0.0,
            base_block: base_block.clone(),
            base_case: None,
            layer: Box::new(BlockSparseLinear::from_masked(&w, &bp, shape.rows)),
        });
        for tile in [16, 32] {
            for s in [0.75, 0.875] {
                let cfg = PatternConfig {
                    tile,
                    patterns_per_set: 4,
                    sparsity: s,
                    method: CandidateMethod::Rt3TileSums,
                    seed: 1,
                };
                // Patterns laid over the compacted BP blocks: only kept weights are stored.
                let set = generate_pattern_set_on_blocks(&w, &bp, shape.rows, &cfg);
                let a = assign_patterns_on_blocks(&w, &bp, shape.rows, &set);
                cases.push(Case {
                    variant: "pattern".into(),
                    base: format!("BP64%{label}+PP"),
                    tile: Some(tile),
                    base_sparsity,
                    base_block: base_block.clone(),
                    base_case,
                    layer: Box::new(MaskedStripLinear::from_masked(&w, &a.mask, shape.rows, "pattern")),
                });
            }
        }
    }
    cases
}

/// Median of per-iteration times over interleaved rounds (see the module docs).
fn measure(layers: &[&dyn LinearKernel], x: &Matrix, args: &Args) -> Vec<Timing> {
    let (rounds, threads) = (args.rounds, args.threads);
    let mut y = Matrix::zeros(0, 0);
    let iters: Vec<usize> = layers
        .iter()
        .map(|layer| {
            layer.forward(x, &mut y, threads);
            let start = Instant::now();
            let mut n = 0usize;
            while start.elapsed().as_secs_f64() * 1e3 < SAMPLE_MS / 2.0 {
                layer.forward(x, &mut y, threads);
                n += 1;
            }
            let per = start.elapsed().as_secs_f64() / n as f64;
            ((SAMPLE_MS / 1e3 / per).ceil() as usize).max(1)
        })
        .collect();
    let mut wall = vec![Vec::with_capacity(rounds); layers.len()];
    let mut cpu = vec![Vec::with_capacity(rounds); layers.len()];
    for _ in 0..rounds {
        for (i, layer) in layers.iter().enumerate() {
            let (start, cpu_start) = (Instant::now(), thread_cpu_time());
            for _ in 0..iters[i] {
                layer.forward(x, &mut y, threads);
            }
            cpu[i].push((thread_cpu_time() - cpu_start) / iters[i] as f64);
            wall[i].push(start.elapsed().as_secs_f64() / iters[i] as f64);
        }
    }
    wall.into_iter().zip(cpu).map(|(w, c)| Timing::from_samples(w, c, args.cpu_min)).collect()
}

/// A layer's per-iteration time, medians over the rounds: wall clock, and the
/// calling thread's CPU time (which leaves out time spent descheduled while
/// other processes share the cores; with one thread it is the kernel's own time).
#[derive(Clone, Copy, Debug)]
struct Timing {
    median: Duration,
    cpu: Duration,
}

impl Timing {
    fn from_samples(wall: Vec<f64>, cpu: Vec<f64>, cpu_min: bool) -> Self {
        let cpu = if cpu_min { cpu.iter().copied().fold(f64::INFINITY, f64::min) } else { median(cpu) };
        Timing { median: Duration::from_secs_f64(median(wall)), cpu: Duration::from_secs_f64(cpu) }
    }
}

/// CPU time consumed by the calling thread (Linux `CLOCK_THREAD_CPUTIME_ID`),
/// declared directly so the example needs no extra dependency.
#[cfg(target_os = "linux")]
fn thread_cpu_time() -> f64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec (two 64-bit fields on 64-bit Linux, glibc and musl).
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Elsewhere, fall back to wall time.
#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Row {
    shape: String,
    variant: String,
    base: String,
    sparsity: f64,
    tile: Option<usize>,
    nnz: usize,
    bytes: usize,
    /// Weights multiplied per token, explicit zeros included.
    multiplied: usize,
    base_sparsity: f64,
    base_block: Option<String>,
    /// Base median / layer median, for pattern rows on a timed BP base.
    vs_base: Option<f64>,
    time: Timing,
    /// Useful GFLOP/s at the median time.
    gflops: f64,
    /// Dense median / layer median.
    speedup: f64,
    /// Dense CPU time / layer CPU time.
    speedup_cpu: f64,
    ideal: f64,
}

fn print_header(args: &Args) {
    if args.json {
        return;
    }
    println!(
        "# speedup: {} rounds interleaved per shape, median of per-iteration means, samples >= {SAMPLE_MS} ms,",
        args.rounds
    );
    println!("# {:?}, x86/arm features: {}", args.threads, kernels::simd::describe());
    println!(
        "# sparsity = achieved (BP and PP zeros together); GFLOP/s counts useful work 2*nnz*tokens; ideal = 1/(1-s)"
    );
    println!(
        "# BP64%s+PP / BP64%t+PP: patterns on a 64 % BP base of {BLOCK_ROWS}x1 strips / {BLOCK_ROWS}x{BLOCK_ROWS} blocks"
    );
    println!(
        "{:<10} {:<16} {:<14} {:>8} {:>5} {:>10} {:>8} {:>9} {:>8} {:>8} {:>6} {:>7} {:>8}",
        "shape",
        "variant",
        "made of",
        "sparsity",
        "tile",
        "time_us",
        "GFLOP/s",
        "speedup",
        "cpu_us",
        "cpu_spd",
        "ideal",
        "mult/nz",
        "vs_base"
    );
}

fn print_row(args: &Args, r: &Row) {
    if args.json {
        let tile = r.tile.map_or("null".to_string(), |t| t.to_string());
        let base_block = r.base_block.as_ref().map_or("null".to_string(), |b| format!("\"{b}\""));
        let vs_base = r.vs_base.map_or("null".to_string(), |v| format!("{v:.3}"));
        println!(
            "{{\"shape\":\"{}\",\"variant\":\"{}\",\"base\":\"{}\",\"sparsity\":{:.4},\"tile\":{tile},\"base_sparsity\":{:.4},\"base_block\":{base_block},\"multiplied\":{},\"vs_base\":{vs_base},\"nnz\":{},\"bytes\":{},\"time_us\":{:.2},\"gflops\":{:.2},\"speedup\":{:.3},\"cpu_time_us\":{:.2},\"cpu_speedup\":{:.3},\"ideal\":{:.3}}}",
            r.shape,
            r.variant,
            r.base,
            r.sparsity,
            r.base_sparsity,
            r.multiplied,
            r.nnz,
            r.bytes,
            r.time.median.as_secs_f64() * 1e6,
            r.gflops,
            r.speedup,
            r.time.cpu.as_secs_f64() * 1e6,
            r.speedup_cpu,
            r.ideal
        );
    } else {
        let tile = r.tile.map_or("-".to_string(), |t| t.to_string());
        println!(
            "{:<10} {:<16} {:<14} {:>7.1}% {:>5} {:>10.1} {:>8.1} {:>8.2}x {:>8.1} {:>7.2}x {:>5.2}x {:>6.1}% {:>8}",
            r.shape,
            r.variant,
            r.base,
            r.sparsity * 100.0,
            tile,
            r.time.median.as_secs_f64() * 1e6,
            r.gflops,
            r.speedup,
            r.time.cpu.as_secs_f64() * 1e6,
            r.speedup_cpu,
            r.ideal,
            100.0 * r.multiplied as f64 / r.nnz.max(1) as f64,
            r.vs_base.map_or("-".to_string(), |v| format!("{v:.2}x"))
        );
    }
}

fn run_shape(args: &Args, shape: &Shape) {
    let mut cases = cases_for(shape);
    if let Some(f) = &args.filter {
        // Dense stays (every speedup is against it), and so does the BP base of a kept pattern row.
        let label = |c: &Case| format!("{} {} {}", c.variant, c.base, c.tile.map_or(String::new(), |t| t.to_string()));
        let mut keep: Vec<bool> =
            cases.iter().enumerate().map(|(i, c)| i == 0 || label(c).contains(f.as_str())).collect();
        for i in 0..cases.len() {
            if let (true, Some(b)) = (keep[i], cases[i].base_case) {
                keep[b] = true;
            }
        }
        let mut new_index = vec![None; cases.len()];
        let mut next = 0;
        for (i, k) in keep.iter().enumerate() {
            if *k {
                new_index[i] = Some(next);
                next += 1;
            }
        }
        let mut i = 0;
        cases.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        for c in &mut cases {
            c.base_case = c.base_case.and_then(|b| new_index[b]);
        }
    }
    let x = Matrix::random(shape.tokens, shape.inputs, 77, 1.0);
    let layers: Vec<&dyn LinearKernel> = cases.iter().map(|c| c.layer.as_ref()).collect();
    let times = measure(&layers, &x, args);
    let dense = times[0];
    for (case, time) in cases.iter().zip(&times) {
        let stats = case.layer.stats();
        let s = stats.sparsity();
        print_row(
            args,
            &Row {
                shape: shape.name.to_string(),
                variant: case.variant.clone(),
                base: case.base.clone(),
                sparsity: s,
                tile: case.tile,
                nnz: stats.nnz,
                bytes: stats.bytes,
                multiplied: stats.multiplied,
                base_sparsity: case.base_sparsity,
                base_block: case.base_block.clone(),
                vs_base: case.base_case.map(|b| times[b].median.as_secs_f64() / time.median.as_secs_f64()),
                time: *time,
                gflops: 2.0 * stats.nnz as f64 * shape.tokens as f64 / time.median.as_secs_f64() / 1e9,
                speedup: dense.median.as_secs_f64() / time.median.as_secs_f64(),
                speedup_cpu: dense.cpu.as_secs_f64() / time.cpu.as_secs_f64(),
                ideal: if s < 1.0 { 1.0 / (1.0 - s) } else { f64::INFINITY },
            },
        );
    }
}

/// The whole `distilbert` encoder: dense vs BP and BP+PP on every linear
/// layer, and the time to switch the active pattern set.
///
/// Two BP bases, labelled by their block shape: `bp64s` prunes column
/// segments of 16x1 strips (the block rows of the per-layer table), `bp64t`
/// whole 16x16 blocks. Pattern sets on either are laid over the compacted BP
/// blocks and run on the masked-strip kernel, which multiplies kept weights
/// only; `bp0+ppN` is plain PP on the tile-grouped pattern kernel.
fn run_model(args: &Args) -> Result<(), String> {
    let preset = Preset::DistilBert;
    let config = preset.config();
    let weights = kernels::encoder::EncoderWeights::random(config, 1).map_err(|e| e.to_string())?;
    let mut model = ReconfigurableModel::new(weights);
    let block = |s: f64, block_cols: usize| VariantSpec::Block {
        sparsity: s,
        block_rows: BLOCK_ROWS,
        block_cols,
        per_layer: None,
        global: false,
    };
    let pattern = |base: &str, s: f64| VariantSpec::Pattern {
        base: base.to_string(),
        tile: 16,
        patterns_per_set: 4,
        sparsity: s,
        method: CandidateMethod::Rt3TileSums,
        seed: 1,
    };
    let variants: [(&str, VariantSpec); 9] = [
        ("dense", VariantSpec::Dense),
        ("bp0", block(0.0, 1)),
        ("bp64s", block(0.64, 1)),
        ("bp64t", block(0.64, BLOCK_ROWS)),
        ("bp0+pp75", pattern("bp0", 0.75)),
        ("bp0+pp87.5", pattern("bp0", 0.875)),
        ("bp64t+pp75", pattern("bp64t", 0.75)),
        ("bp64s+pp75", pattern("bp64s", 0.75)),
        ("bp64s+pp87.5", pattern("bp64s", 0.875)),
    ];
    let mut infos = Vec::new();
    for (name, spec) in &variants {
        infos.push(model.add_variant(name, spec).map_err(|e| format!("add_variant {name}: {e}"))?);
    }
    let input = random_input(&config, 3);
    let timed = ["dense", "bp64s", "bp64t", "bp0+pp75", "bp0+pp87.5", "bp64t+pp75", "bp64s+pp75", "bp64s+pp87.5"];
    if !args.json {
        println!(
            "# encoder: bp64t = BP 64 % in {BLOCK_ROWS}x{BLOCK_ROWS} blocks (tile-aligned); bp64s = BP 64 % in \
             {BLOCK_ROWS}x1 strips; +ppN = 16x16 pattern tiles, 4 per set, down to N % in total"
        );
    }
    let mut wall = vec![Vec::new(); timed.len()];
    let mut cpu = vec![Vec::new(); timed.len()];
    for name in timed {
        model.forward_variant(name, &input, args.threads).map_err(|e| e.to_string())?;
    }
    for _ in 0..args.rounds {
        for (i, name) in timed.iter().enumerate() {
            let (start, cpu_start) = (Instant::now(), thread_cpu_time());
            model.forward_variant(name, &input, args.threads).map_err(|e| e.to_string())?;
            cpu[i].push(thread_cpu_time() - cpu_start);
            wall[i].push(start.elapsed().as_secs_f64());
        }
    }
    let times: Vec<Timing> = wall.into_iter().zip(cpu).map(|(w, c)| Timing::from_samples(w, c, args.cpu_min)).collect();
    let dense_flops: f64 = 2.0 * infos[0].nnz as f64 * config.seq_len as f64;
    for (i, name) in timed.iter().enumerate() {
        let info = infos.iter().find(|v| v.name == *name).expect("added above");
        let row = Row {
            shape: "distilbert".into(),
            variant: format!("encoder:{name}"),
            base: format!("prep {:.1}s", info.prepare.as_secs_f64()),
            sparsity: info.sparsity,
            tile: (info.kind == kernels::model::VariantKind::Pattern).then_some(16),
            nnz: info.nnz,
            bytes: info.bytes,
            multiplied: info.layers.iter().map(|l| l.multiplied).sum(),
            base_sparsity: 0.0,
            base_block: None,
            vs_base: None,
            time: times[i],
            gflops: dense_flops * (1.0 - info.sparsity) / times[i].median.as_secs_f64() / 1e9,
            speedup: times[0].median.as_secs_f64() / times[i].median.as_secs_f64(),
            speedup_cpu: times[0].cpu.as_secs_f64() / times[i].cpu.as_secs_f64(),
            ideal: 1.0 / (1.0 - info.sparsity),
        };
        print_row(args, &row);
    }
    // Switching between prepacked pattern sets while the model is live.
    let mut switches = Vec::new();
    for i in 0..1000 {
        let name = if i % 2 == 0 { "bp0+pp87.5" } else { "bp0+pp75" };
        switches.push(model.switch(name).map_err(|e| e.to_string())?.as_secs_f64());
    }
    let med = median(switches.clone());
    let max = switches.iter().copied().fold(0.0, f64::max);
    if args.json {
        println!("{{\"shape\":\"distilbert\",\"variant\":\"switch\",\"sparsity\":null,\"tile\":16,\"time_us\":{:.3},\"max_us\":{:.3},\"speedup\":null}}", med * 1e6, max * 1e6);
    } else {
        println!("distilbert switch   pattern set 75%<->87.5%: median {:.3} us, max {:.3} us over 1000 switches (goal < 1 ms)", med * 1e6, max * 1e6);
    }
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("speedup: {e}");
            std::process::exit(2);
        }
    };
    print_header(&args);
    for shape in &SHAPES {
        if args.shapes.as_ref().is_some_and(|wanted| !wanted.iter().any(|w| w == shape.name)) {
            continue;
        }
        run_shape(&args, shape);
    }
    if args.model {
        if let Err(e) = run_model(&args) {
            eprintln!("speedup: model rows failed: {e}");
            std::process::exit(1);
        }
    }
}
