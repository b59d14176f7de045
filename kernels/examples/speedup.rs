//! Speedup of the sparse linear layers (and the whole encoder) over the dense
//! GEMM baseline, measured in the same run on this machine, and the issue's
//! speed goals marked held / not held.
//!
//! ```text
//! cargo run --release -p kernels --example speedup [-- --json] [--shapes 768->3072,800->200]
//!     [--rounds 9] [--no-model] [--threads 1,2] [--tokens 35] [--filter TEXT] [--cpu-min]
//! ```
//!
//! Method: the layers of a shape are built first (only those the filter
//! keeps); then, after a warm-up and a calibration that picks per layer
//! enough iterations for a sample of at least `SAMPLE_MS` milliseconds,
//! `rounds` rounds run every layer of the shape at every thread count in
//! turn (dense included), so slow drifts of the machine (frequency, other
//! tenants) hit all variants alike. The reported time is the median over the
//! rounds of the per-iteration mean of each sample. Speedup = dense median /
//! layer median at the same thread count; `x/1t` = the layer's median at one
//! thread / at this count. Useful GFLOP/s counts `2 * nnz * tokens` (the work
//! that is not pruned away). Layers are timed as the encoder runs them:
//! feature-major in and out (`forward_feature_major`, no transposes, for
//! dense as for sparse); `--token-major` times `forward` on token-major
//! activations instead, conversions included.
//!
//! Goals at one thread are judged on CPU time (the calling thread's, which
//! is the kernel's own time: it leaves out time the thread spent
//! descheduled while other processes shared the core, which on a shared
//! build machine can double the wall clock); `--judge wall` judges on the
//! wall clock instead. Both ratios are printed. Thread scaling is judged on
//! the wall clock (CPU time of one thread says nothing about two).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use kernels::encoder::Preset;
use kernels::linear::block::BlockSparseLinear;
use kernels::linear::dense::DenseLinear;
use kernels::linear::masked::MaskedStripLinear;
use kernels::linear::pattern::PatternSparseLinear;
use kernels::model::{random_input, ReconfigurableModel, VariantKind, VariantSpec};
use kernels::prune::block::{block_mask, BlockShape};
use kernels::prune::pattern::{
    assign_patterns, assign_patterns_on_blocks, generate_pattern_set, generate_pattern_set_on_blocks, CandidateMethod,
    PatternConfig,
};
use kernels::{Activations, LinearKernel, Mask, Matrix, Threads};

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

/// The shapes the per-layer goals are judged on.
const GOAL_SHAPES: [&str; 2] = ["768->3072", "3072->768"];

struct Args {
    json: bool,
    shapes: Option<Vec<String>>,
    rounds: usize,
    model: bool,
    /// Thread counts, each measured in the same rounds.
    threads: Vec<usize>,
    /// Overrides every shape's token count.
    tokens: Option<usize>,
    /// Only cases whose "variant base tile" label contains this.
    filter: Option<String>,
    /// Report the minimum CPU time over the rounds instead of the median.
    cpu_min: bool,
    /// Time the token-major `forward` (transposes in and out) instead of the feature-major one.
    token_major: bool,
    /// Judge the one-thread goals on the wall clock instead of CPU time.
    judge_wall: bool,
}

const HELP: &str =
    "speedup: layer and encoder speedups of the sparse kernels over the dense baseline, and the speed goals\n\n\
usage: cargo run --release -p kernels --example speedup -- [options]\n\
\x20 --json          one JSON object per row (shape, variant, sparsity, tile, base_sparsity, base_block, multiplied,\n\
\x20                 vs_base, time_us, speedup, threads, ...), then one per goal\n\
\x20 --shapes LIST   e.g. '768->3072,3072->768' (quote it: > is a shell redirect)\n\
\x20 --filter TEXT   only rows whose \"variant base tile\" contains TEXT (dense and the BP bases of kept rows stay)\n\
\x20 --rounds N      interleaved rounds per shape (median over rounds)\n\
\x20 --threads LIST  kernel thread counts, e.g. 1,2 (default 1: DVFS experiments pin one core); each row is\n\
\x20                 measured at every count in the same rounds, x/1t compares with the first count\n\
\x20 --tokens N      tokens per inference for every shape (default: 128 DistilBERT, 35 RT3) and the encoder\n\
\x20 --cpu-min       report the minimum thread CPU time over rounds, not the median\n\
\x20 --token-major   time the layers' token-major forward (transposes in and out included) instead of the\n\
\x20                 feature-major one the encoder runs\n\
\x20 --no-model      skip the whole-encoder rows and the switching row\n\
\x20 --judge cpu|wall  what the one-thread goals are judged on (default cpu: the thread's CPU time,\n\
\x20                 immune to other processes on a shared machine)\n\n\
pin it: taskset -c 1 ... for one thread, taskset -c 0,1 ... --threads 1,2 for two";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        json: false,
        shapes: None,
        rounds: 9,
        model: true,
        threads: vec![1],
        tokens: None,
        filter: None,
        cpu_min: false,
        token_major: false,
        judge_wall: false,
    };
    let positive = |v: Option<String>, what: &str| -> Result<usize, String> {
        v.and_then(|v| v.parse().ok()).filter(|n: &usize| *n > 0).ok_or(format!("{what} needs a positive integer"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--help" | "-h" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            "--json" => args.json = true,
            "--no-model" => args.model = false,
            "--cpu-min" => args.cpu_min = true,
            "--token-major" => args.token_major = true,
            "--judge" => {
                args.judge_wall = match it.next().as_deref() {
                    Some("wall") => true,
                    Some("cpu") => false,
                    _ => return Err("--judge needs cpu or wall".into()),
                }
            }
            "--filter" => args.filter = Some(it.next().ok_or("--filter needs a substring")?),
            "--shapes" => {
                args.shapes = Some(it.next().ok_or("--shapes needs a list")?.split(',').map(str::to_string).collect())
            }
            "--rounds" => args.rounds = positive(it.next(), "--rounds")?,
            "--tokens" => args.tokens = Some(positive(it.next(), "--tokens")?),
            "--threads" => {
                let list = it.next().ok_or("--threads needs a list, e.g. 1 or 1,2")?;
                args.threads = list
                    .split(',')
                    .map(|n| positive(Some(n.to_string()), "--threads"))
                    .collect::<Result<Vec<_>, _>>()?;
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(args)
}

fn threads_of(n: usize) -> Threads {
    if n == 1 {
        Threads::One
    } else {
        Threads::N(n)
    }
}

/// One layer to time, with what the table says about it. Built lazily, so a
/// filtered run only pays for the layers it keeps (pattern generation for
/// 100x100 tiles takes seconds).
struct Case {
    variant: String,
    /// What the sparsity is made of, e.g. `PP only`, `BP64%s+PP`.
    base: String,
    tile: Option<usize>,
    /// Target sparsity in percent, for goal lookups (`None` for dense).
    target: Option<f64>,
    /// BP block of the base (`16x1`, `16x16`), or of a block row itself; `None` without one.
    base_block: Option<String>,
    /// Index of the case timing the BP base alone (pattern rows on a BP base).
    base_case: Option<usize>,
    build: Box<dyn FnOnce() -> Built>,
}

/// A built case: the layer and the sparsity of the BP base under it (0 without one).
struct Built {
    layer: Box<dyn LinearKernel>,
    base_sparsity: f64,
}

impl Case {
    fn label(&self) -> String {
        format!("{} {} {}", self.variant, self.base, self.tile.map_or(String::new(), |t| t.to_string()))
    }

    /// The key goals name rows by: e.g. `PP only 75/16`, `BP64%s+PP 87.5/16`, `BP64%s`.
    fn key(&self) -> String {
        match (self.target, self.tile) {
            (Some(t), Some(tile)) => format!("{} {t}/{tile}", self.base),
            _ => self.base.clone(),
        }
    }
}

fn cases_for(shape: &Shape) -> Vec<Case> {
    let w =
        Matrix::random(shape.outputs, shape.inputs, 0x5eed ^ shape.outputs as u64 ^ (shape.inputs as u64) << 20, 0.05);
    let plain = |layer: Box<dyn LinearKernel>| Built { layer, base_sparsity: 0.0 };
    let mut cases = Vec::new();
    let wd = w.clone();
    cases.push(Case {
        variant: "dense".into(),
        base: "-".into(),
        tile: None,
        target: None,
        base_block: None,
        base_case: None,
        build: Box::new(move || plain(Box::new(DenseLinear::new(wd)))),
    });
    for s in [0.5, 0.64, 0.75] {
        let w = w.clone();
        cases.push(Case {
            variant: "block".into(),
            base: format!("BP strip {BLOCK_ROWS}"),
            tile: None,
            target: Some(s * 100.0),
            base_block: Some(format!("{BLOCK_ROWS}x1")),
            base_case: None,
            build: Box::new(move || {
                let mask = block_mask(&w, BlockShape::strip(BLOCK_ROWS), s);
                plain(Box::new(BlockSparseLinear::from_masked(&w, &mask, BLOCK_ROWS)))
            }),
        });
    }
    for tile in [8, 16, 32, 100] {
        for s in [0.5, 0.75, 0.875] {
            let cfg =
                PatternConfig { tile, patterns_per_set: 4, sparsity: s, method: CandidateMethod::Rt3TileSums, seed: 1 };
            let (w1, cfg1) = (w.clone(), cfg.clone());
            cases.push(Case {
                variant: "pattern".into(),
                base: "PP only".into(),
                tile: Some(tile),
                target: Some(s * 100.0),
                base_block: None,
                base_case: None,
                build: Box::new(move || {
                    let dense = Mask::dense(w1.rows(), w1.cols());
                    let set = generate_pattern_set(&w1, &dense, &cfg1);
                    let a = assign_patterns(&w1, &dense, &set);
                    plain(Box::new(PatternSparseLinear::from_assignment(&w1, &a, set.len())))
                }),
            });
            if tile == 16 {
                // The same mask through the masked-strip kernel (one strip per tile row).
                let w2 = w.clone();
                cases.push(Case {
                    variant: "pattern".into(),
                    base: "PP strips".into(),
                    tile: Some(tile),
                    target: Some(s * 100.0),
                    base_block: None,
                    base_case: None,
                    build: Box::new(move || {
                        let dense = Mask::dense(w2.rows(), w2.cols());
                        let set = generate_pattern_set(&w2, &dense, &cfg);
                        let a = assign_patterns(&w2, &dense, &set);
                        plain(Box::new(MaskedStripLinear::from_masked(&w2, a.mask(), tile, "pattern")))
                    }),
                });
            }
        }
    }
    // RT3's combination: a BP base at 64 %, then patterns down to the total target. Two bases:
    // 16x1 strips (`s`, as the block rows above) and blocks as wide as they are tall (`t`), which
    // are tile-aligned under tiles of that size (whole tiles pruned, the rest keep exactly their
    // pattern) and otherwise leave each tile its own BP columns like the strips do.
    let bases = [("s", BlockShape::strip(BLOCK_ROWS)), ("t", BlockShape { rows: BLOCK_ROWS, cols: BLOCK_ROWS })];
    for (label, block) in bases {
        let base_block = Some(format!("{}x{}", block.rows, block.cols));
        let base_case = Some(cases.len());
        let wb = w.clone();
        cases.push(Case {
            variant: "block".into(),
            base: format!("BP64%{label}"),
            tile: None,
            target: Some(64.0),
            base_block: base_block.clone(),
            base_case: None,
            build: Box::new(move || {
                let bp = block_mask(&wb, block, 0.64);
                plain(Box::new(BlockSparseLinear::from_masked(&wb, &bp, block.rows)))
            }),
        });
        for tile in [16, 32] {
            for s in [0.75, 0.875] {
                let w = w.clone();
                cases.push(Case {
                    variant: "pattern".into(),
                    base: format!("BP64%{label}+PP"),
                    tile: Some(tile),
                    target: Some(s * 100.0),
                    base_block: base_block.clone(),
                    base_case,
                    build: Box::new(move || {
                        let bp = block_mask(&w, block, 0.64);
                        let cfg = PatternConfig {
                            tile,
                            patterns_per_set: 4,
                            sparsity: s,
                            method: CandidateMethod::Rt3TileSums,
                            seed: 1,
                        };
                        // Patterns laid over the compacted BP blocks: only kept weights are stored.
                        let set = generate_pattern_set_on_blocks(&w, &bp, block.rows, &cfg);
                        let a = assign_patterns_on_blocks(&w, &bp, block.rows, &set);
                        Built {
                            layer: Box::new(MaskedStripLinear::from_masked(&w, &a.mask, block.rows, "pattern")),
                            base_sparsity: bp.sparsity(),
                        }
                    }),
                });
            }
        }
    }
    cases
}

/// Keeps dense, the cases whose label contains `filter`, and the BP bases of kept pattern rows.
fn filter_cases(cases: Vec<Case>, filter: &str) -> Vec<Case> {
    let mut keep: Vec<bool> = cases.iter().enumerate().map(|(i, c)| i == 0 || c.label().contains(filter)).collect();
    for (i, c) in cases.iter().enumerate() {
        if let (true, Some(b)) = (keep[i], c.base_case) {
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
    cases
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(mut c, _)| {
            c.base_case = c.base_case.and_then(|b| new_index[b]);
            c
        })
        .collect()
}

/// Times `run(item, threads)` for every item at every thread count:
/// calibration, then interleaved rounds (see the module docs). Returns
/// `[item][thread count]`.
fn measure<T>(items: &[T], args: &Args, run: &dyn Fn(&T, Threads)) -> Vec<Vec<Timing>> {
    let calibrate = |item: &T, threads: Threads| {
        run(item, threads);
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed().as_secs_f64() * 1e3 < SAMPLE_MS / 2.0 {
            run(item, threads);
            n += 1;
        }
        let per = start.elapsed().as_secs_f64() / n as f64;
        ((SAMPLE_MS / 1e3 / per).ceil() as usize).max(1)
    };
    let counts = &args.threads;
    let iters: Vec<Vec<usize>> =
        items.iter().map(|item| counts.iter().map(|&n| calibrate(item, threads_of(n))).collect()).collect();
    let mut wall = vec![vec![Vec::with_capacity(args.rounds); counts.len()]; items.len()];
    let mut cpu = wall.clone();
    for _ in 0..args.rounds {
        for (i, item) in items.iter().enumerate() {
            for (j, &n) in counts.iter().enumerate() {
                let (start, cpu_start) = (Instant::now(), thread_cpu_time());
                for _ in 0..iters[i][j] {
                    run(item, threads_of(n));
                }
                cpu[i][j].push((thread_cpu_time() - cpu_start) / iters[i][j] as f64);
                wall[i][j].push(start.elapsed().as_secs_f64() / iters[i][j] as f64);
            }
        }
    }
    wall.into_iter()
        .zip(cpu)
        .map(|(w, c)| w.into_iter().zip(c).map(|(w, c)| Timing::from_samples(w, c, args.cpu_min)).collect())
        .collect()
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

/// One printed row (and what the goals are judged on).
struct Row {
    shape: String,
    tokens: usize,
    threads: usize,
    variant: String,
    base: String,
    /// Goal key (see [`Case::key`]).
    key: String,
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
    /// The same in CPU time (one thread only).
    vs_base_cpu: Option<f64>,
    time: Timing,
    /// Useful GFLOP/s at the median time.
    gflops: f64,
    /// Dense median / layer median, at the same thread count.
    speedup: f64,
    /// Dense CPU time / layer CPU time (one thread only: CPU time is the calling thread's).
    speedup_cpu: Option<f64>,
    /// Median at the first thread count / median at this one.
    scaling: Option<f64>,
    ideal: f64,
}

fn print_header(args: &Args) {
    if args.json {
        return;
    }
    println!(
        "# speedup: {} rounds interleaved per shape, median of per-iteration means, samples >= {SAMPLE_MS} ms",
        args.rounds
    );
    println!(
        "# threads {:?}; layers timed {}; {}",
        args.threads,
        if args.token_major { "token-major (transposes included)" } else { "feature-major, as the encoder runs them" },
        kernels::simd::describe()
    );
    println!(
        "# sparsity = achieved (BP and PP zeros together); GFLOP/s counts useful work 2*nnz*tokens; ideal = 1/(1-s)"
    );
    println!(
        "# BP64%s+PP / BP64%t+PP: patterns on a 64 % BP base of {BLOCK_ROWS}x1 strips / {BLOCK_ROWS}x{BLOCK_ROWS} \
         blocks; vs_base = BP base time / row time; x/1t = time at {} thread(s) / row time",
        args.threads[0]
    );
    println!(
        "{:<10} {:>3} {:<18} {:<14} {:>8} {:>5} {:>10} {:>8} {:>9} {:>8} {:>7} {:>6} {:>7} {:>8} {:>6}",
        "shape",
        "thr",
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
        "vs_base",
        "x/1t"
    );
}

fn json_opt(v: Option<f64>) -> String {
    v.map_or("null".to_string(), |v| format!("{v:.3}"))
}

fn print_row(args: &Args, r: &Row) {
    if args.json {
        let tile = r.tile.map_or("null".to_string(), |t| t.to_string());
        let base_block = r.base_block.as_ref().map_or("null".to_string(), |b| format!("\"{b}\""));
        println!(
            "{{\"shape\":\"{}\",\"tokens\":{},\"threads\":{},\"variant\":\"{}\",\"base\":\"{}\",\"sparsity\":{:.4},\
             \"tile\":{tile},\"base_sparsity\":{:.4},\"base_block\":{base_block},\"multiplied\":{},\"vs_base\":{},\
             \"nnz\":{},\"bytes\":{},\"time_us\":{:.2},\"gflops\":{:.2},\"speedup\":{:.3},\"cpu_time_us\":{:.2},\
             \"cpu_speedup\":{},\"scaling\":{},\"ideal\":{:.3}}}",
            r.shape,
            r.tokens,
            r.threads,
            r.variant,
            r.base,
            r.sparsity,
            r.base_sparsity,
            r.multiplied,
            json_opt(r.vs_base),
            r.nnz,
            r.bytes,
            r.time.median.as_secs_f64() * 1e6,
            r.gflops,
            r.speedup,
            r.time.cpu.as_secs_f64() * 1e6,
            json_opt(r.speedup_cpu),
            json_opt(r.scaling),
            r.ideal
        );
    } else {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
        println!(
            "{:<10} {:>3} {:<18} {:<14} {:>7.1}% {:>5} {:>10.1} {:>8.1} {:>8.2}x {:>8.1} {:>7} {:>5.2}x {:>6.1}% {:>8} {:>6}",
            r.shape,
            r.threads,
            r.variant,
            r.base,
            r.sparsity * 100.0,
            r.tile.map_or("-".to_string(), |t| t.to_string()),
            r.time.median.as_secs_f64() * 1e6,
            r.gflops,
            r.speedup,
            r.time.cpu.as_secs_f64() * 1e6,
            opt(r.speedup_cpu),
            r.ideal,
            100.0 * r.multiplied as f64 / r.nnz.max(1) as f64,
            opt(r.vs_base),
            opt(r.scaling)
        );
    }
}

/// Rows for the cases (or encoder variants) `names` timed at every thread count.
/// `base_of[i]`: index of the item timing row `i`'s BP base.
fn rows_from(
    args: &Args,
    times: &[Vec<Timing>],
    base_of: &[Option<usize>],
    mut row: impl FnMut(usize, usize, Timing) -> Row,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (j, &threads) in args.threads.iter().enumerate() {
        let dense = times[0][j];
        for (i, t) in times.iter().enumerate() {
            let mut r = row(i, threads, t[j]);
            r.speedup = dense.median.as_secs_f64() / t[j].median.as_secs_f64();
            r.speedup_cpu = (threads == 1).then(|| dense.cpu.as_secs_f64() / t[j].cpu.as_secs_f64());
            r.vs_base = base_of[i].map(|b| times[b][j].median.as_secs_f64() / t[j].median.as_secs_f64());
            r.vs_base_cpu =
                base_of[i].filter(|_| threads == 1).map(|b| times[b][j].cpu.as_secs_f64() / t[j].cpu.as_secs_f64());
            r.scaling = (j > 0).then(|| t[0].median.as_secs_f64() / t[j].median.as_secs_f64());
            rows.push(r);
        }
    }
    rows
}

fn run_shape(args: &Args, shape: &Shape) -> Vec<Row> {
    let tokens = args.tokens.unwrap_or(shape.tokens);
    let mut cases = cases_for(shape);
    if let Some(f) = &args.filter {
        cases = filter_cases(cases, f);
    }
    // What the rows say about each case, kept once the builders are consumed.
    struct Meta {
        variant: String,
        base: String,
        key: String,
        tile: Option<usize>,
        base_block: Option<String>,
        base_case: Option<usize>,
    }
    let meta: Vec<Meta> = cases
        .iter()
        .map(|c| Meta {
            variant: c.variant.clone(),
            base: c.base.clone(),
            key: c.key(),
            tile: c.tile,
            base_block: c.base_block.clone(),
            base_case: c.base_case,
        })
        .collect();
    let built: Vec<Built> = cases.into_iter().map(|c| (c.build)()).collect();
    let x = Matrix::random(tokens, shape.inputs, 77, 1.0);
    let xt = Activations::from_token_major(&x);
    // One output buffer for every layer, as an encoder reuses its activations.
    let (y, yt) = (RefCell::new(Matrix::zeros(0, 0)), RefCell::new(Activations::default()));
    let times = measure(&built, args, &|b: &Built, threads| {
        if args.token_major {
            b.layer.forward(&x, &mut y.borrow_mut(), threads)
        } else {
            b.layer.forward_feature_major(&xt, &mut yt.borrow_mut(), None, threads)
        }
    });
    let base_of: Vec<Option<usize>> = meta.iter().map(|m| m.base_case).collect();
    rows_from(args, &times, &base_of, |i, threads, time| {
        let Meta { variant, base, key, tile, base_block, .. } = &meta[i];
        let stats = built[i].layer.stats();
        let s = stats.sparsity();
        Row {
            shape: shape.name.to_string(),
            tokens,
            threads,
            variant: variant.clone(),
            base: base.clone(),
            key: key.clone(),
            sparsity: s,
            tile: *tile,
            nnz: stats.nnz,
            bytes: stats.bytes,
            multiplied: stats.multiplied,
            base_sparsity: built[i].base_sparsity,
            base_block: base_block.clone(),
            vs_base: None,
            vs_base_cpu: None,
            time,
            gflops: 2.0 * stats.nnz as f64 * tokens as f64 / time.median.as_secs_f64() / 1e9,
            speedup: 0.0,
            speedup_cpu: None,
            scaling: None,
            ideal: if s < 1.0 { 1.0 / (1.0 - s) } else { f64::INFINITY },
        }
    })
}

/// The whole `distilbert` encoder: dense vs BP and BP+PP on every linear
/// layer, and the time to switch the active pattern set.
///
/// Two BP bases, labelled by their block shape: `bp64s` prunes column
/// segments of 16x1 strips (the block rows of the per-layer table), `bp64t`
/// whole 16x16 blocks. Pattern sets on either are laid over the compacted BP
/// blocks and run on the masked-strip kernel, which multiplies kept weights
/// only; `bp0+ppN` is plain PP on the tile-grouped pattern kernel.
fn run_model(args: &Args) -> Result<Vec<Row>, String> {
    let preset = Preset::DistilBert;
    let mut config = preset.config();
    if let Some(t) = args.tokens {
        config = config.with_seq_len(t);
    }
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
    let run = |name: &&str, threads| {
        model.forward_variant(name, &input, threads).expect("variants were added above");
    };
    let times = measure(&timed, args, &run);
    let info_of = |name: &str| infos.iter().find(|v| v.name == name).expect("added above");
    let base_of: Vec<Option<usize>> = timed
        .iter()
        .map(|name| {
            let base = info_of(name).base.as_deref()?;
            timed.iter().position(|t| *t == base)
        })
        .collect();
    let dense_flops = 2.0 * infos[0].nnz as f64 * config.seq_len as f64;
    let rows = rows_from(args, &times, &base_of, |i, threads, time| {
        let info = info_of(timed[i]);
        let base = info.base.as_deref().map(info_of);
        let block_of = |name: &str| match model.spec(name) {
            Ok(VariantSpec::Block { block_rows, block_cols, sparsity, .. }) if *sparsity > 0.0 => {
                Some(format!("{block_rows}x{block_cols}"))
            }
            _ => None,
        };
        Row {
            shape: "distilbert".into(),
            tokens: config.seq_len,
            threads,
            variant: format!("encoder:{}", timed[i]),
            base: format!("prep {:.1}s", info.prepare.as_secs_f64()),
            key: format!("encoder:{}", timed[i]),
            sparsity: info.sparsity,
            tile: (info.kind == VariantKind::Pattern).then_some(16),
            nnz: info.nnz,
            bytes: info.bytes,
            multiplied: info.multiplied,
            base_sparsity: base.map_or(0.0, |b| b.sparsity),
            base_block: match &info.base {
                Some(b) => block_of(b),
                None => block_of(timed[i]),
            },
            vs_base: None,
            vs_base_cpu: None,
            time,
            gflops: dense_flops * (1.0 - info.sparsity) / time.median.as_secs_f64() / 1e9,
            speedup: 0.0,
            speedup_cpu: None,
            scaling: None,
            ideal: 1.0 / (1.0 - info.sparsity),
        }
    });
    for r in &rows {
        print_row(args, r);
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
        println!(
            "{{\"shape\":\"distilbert\",\"variant\":\"switch\",\"sparsity\":null,\"tile\":16,\"time_us\":{:.3},\
             \"max_us\":{:.3},\"speedup\":null}}",
            med * 1e6,
            max * 1e6
        );
    } else {
        println!(
            "distilbert switch   pattern set 75%<->87.5%: median {:.3} us, max {:.3} us over 1000 switches (goal < 1 ms)",
            med * 1e6,
            max * 1e6
        );
    }
    Ok(rows)
}

/// One speed goal of issue 12, judged on rows at one thread.
struct Goal {
    /// Row key (see [`Case::key`]); on each of [`GOAL_SHAPES`] unless `shape` names one.
    key: &'static str,
    shape: Option<&'static str>,
    min_speedup: f64,
    /// Minimum speedup over the row's own BP base.
    min_vs_base: Option<f64>,
}

const GOALS: [Goal; 8] = [
    Goal { key: "BP64%s+PP 75/16", shape: None, min_speedup: 2.8, min_vs_base: Some(1.15) },
    Goal { key: "BP64%s+PP 87.5/16", shape: None, min_speedup: 5.0, min_vs_base: Some(2.3) },
    Goal { key: "PP only 75/16", shape: None, min_speedup: 3.0, min_vs_base: None },
    Goal { key: "PP only 87.5/16", shape: None, min_speedup: 5.0, min_vs_base: None },
    Goal { key: "PP only 50/16", shape: None, min_speedup: 1.7, min_vs_base: None },
    Goal { key: "BP64%s", shape: None, min_speedup: 2.3, min_vs_base: None },
    Goal { key: "encoder:bp64s+pp75", shape: Some("distilbert"), min_speedup: 2.5, min_vs_base: None },
    Goal { key: "encoder:bp64s+pp87.5", shape: Some("distilbert"), min_speedup: 4.0, min_vs_base: None },
];

/// Prints every goal whose rows were measured, held or not held; then, with
/// more than one thread count, the thread-scaling goal per kind of row.
fn print_goals(args: &Args, rows: &[Row]) {
    let mut lines = Vec::new();
    let verdict = |held: bool| if held { "held" } else { "NOT HELD" };
    let at_one = |r: &&Row| r.threads == 1 && r.tokens == 128;
    for goal in &GOALS {
        let shapes: Vec<&str> = goal.shape.map_or(GOAL_SHAPES.to_vec(), |s| vec![s]);
        for shape in shapes {
            let Some(r) = rows.iter().filter(at_one).find(|r| r.shape == shape && r.key == goal.key) else { continue };
            let cpu = !args.judge_wall && r.speedup_cpu.is_some();
            let (speedup, vs_base) =
                if cpu { (r.speedup_cpu.unwrap_or(0.0), r.vs_base_cpu) } else { (r.speedup, r.vs_base) };
            let mut held = speedup >= goal.min_speedup;
            let mut text = format!(
                "{speedup:.2}x dense (goal >= {}x; {} {:.2}x)",
                goal.min_speedup,
                if cpu { "wall" } else { "CPU time" },
                if cpu { r.speedup } else { r.speedup_cpu.unwrap_or(f64::NAN) }
            );
            if let Some(min) = goal.min_vs_base {
                let vs = vs_base.unwrap_or(0.0);
                held &= vs >= min;
                text += &format!(", {vs:.2}x its base (goal >= {min}x)");
            }
            lines.push((format!("{shape} {}", goal.key), held, text));
        }
    }
    // Threads: every kind of row, at each count above the first, against the first.
    for r in rows.iter().filter(|r| r.scaling.is_some()) {
        let min = if r.tokens >= 128 { 1.7 } else { 1.5 };
        let scaling = r.scaling.unwrap_or(0.0);
        lines.push((
            format!("{} {} x{} threads, {} tokens", r.shape, r.key, r.threads, r.tokens),
            scaling >= min,
            format!("{scaling:.2}x over {} thread(s) (goal >= {min}x)", args.threads[0]),
        ));
    }
    if !args.json && !lines.is_empty() {
        let judged = if args.judge_wall { "the wall clock" } else { "CPU time at one thread, wall clock for threads" };
        println!("# goals judged on {judged}");
        let backend = kernels::simd::Backend::best();
        if backend != kernels::simd::Backend::Avx512 {
            println!(
                "# the goals were set, and measured, on AVX-512 (Zen 4); this CPU runs the {} kernels, where \
                 fewer hold (on Zen 3 with AVX2, PP on dense ran 10-25 % short of them)",
                backend.name()
            );
        }
    }
    for (what, held, text) in lines {
        if args.json {
            println!("{{\"goal\":\"{what}\",\"held\":{held},\"detail\":\"{text}\"}}");
        } else {
            println!("goal {:<52} {:<8} {text}", what, verdict(held));
        }
    }
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
    let mut all = Vec::new();
    for shape in &SHAPES {
        if args.shapes.as_ref().is_some_and(|wanted| !wanted.iter().any(|w| w == shape.name)) {
            continue;
        }
        let rows = run_shape(&args, shape);
        for r in &rows {
            print_row(&args, r);
        }
        all.extend(rows);
    }
    if args.model {
        match run_model(&args) {
            Ok(rows) => all.extend(rows),
            Err(e) => {
                eprintln!("speedup: model rows failed: {e}");
                std::process::exit(1);
            }
        }
    }
    print_goals(&args, &all);
}
