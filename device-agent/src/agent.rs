//! The real [`Session`]: a model built with `kernels`, timed windows, run-time
//! switching and self-tests.
//!
//! Decisions (request validation, the memory check, the window's stopping
//! rule) are plain functions over plain data and tested here; [`Agent`] only
//! wires them to the model, the clock and `/proc`.

use crate::platform::{current_affinity, monotonic_ns, process_cpu_ns};
use crate::protocol::{
    ClockReply, Command, ErrorKind, ErrorReply, FidelityReply, FidelityRequest, FidelityResult, HelloReply, LoadReply,
    LoadRequest, ModelInfo, PatternMethod, Reply, ResidencyWire, RunReply, RunRequest, SelftestReply, SelftestRequest,
    SelftestResult, SimStretchWire, SwitchMode, SwitchReply, SwitchRequest, VariantReport, VariantSpecWire,
    MAX_FIDELITY_INPUTS, MAX_SWITCH_PROBE, MAX_WINDOW_ITERATIONS,
};
use crate::serve::Session;
use crate::sim_stretch::{SimCpufreq, Stretcher};
use crate::sysinfo;
use kernels::encoder::Encoder;
use kernels::encoder::{EncoderConfig, EncoderWeights, Preset};
use kernels::model::{self, ReconfigurableModel, Residency, VariantInfo, VariantKind, VariantSpec};
use kernels::prune::pattern::CandidateMethod;
use kernels::{Matrix, Threads};
use std::hint::black_box;
use std::path::Path;

/// Limits on request parameters. Generous for any real experiment; they
/// exist so a typo (`min_ms: 36000000`) is refused instead of hanging a board.
pub mod limits {
    /// Most tokens per inference a `load` accepts (the memory check still applies below it).
    pub const MAX_SEQ: usize = 1 << 20;
    pub const MAX_VARIANTS: usize = 64;
    pub const MAX_NAME_LEN: usize = 64;
    pub const MAX_WARMUP: u32 = 100_000;
    pub const MAX_MIN_ITERS: u32 = super::MAX_WINDOW_ITERATIONS as u32;
    /// One hour.
    pub const MAX_MIN_MS: u64 = 3_600_000;
    /// The `f64` reference is slow: more tokens than this would stall a board for minutes.
    pub const MAX_SELFTEST_TOKENS: usize = 128;
}

/// Share of `MemAvailable` a model may take: the rest is headroom for the
/// kernel's page cache, the SSH daemon and estimate error.
pub const MEMORY_HEADROOM: f64 = 0.9;

/// How the agent was started.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Threads per inference (`--threads`).
    pub threads: Threads,
    /// A budget below `MemAvailable` (`--max-memory`), e.g. to emulate a smaller board.
    pub memory_limit: Option<u64>,
    /// Set only on a board simulated by hil (`--sim-sysfs-root`, checked by [`SimCpufreq::open`]):
    /// timed inferences (warm-up, windows, switch probes) and switches are stretched by its factor
    /// ([`crate::sim_stretch`]).
    pub sim_stretch: Option<SimCpufreq>,
}

/// The agent's state between requests.
#[derive(Debug)]
pub struct Agent {
    options: AgentOptions,
    loaded: Option<LoadedModel>,
}

#[derive(Debug)]
struct LoadedModel {
    model: ReconfigurableModel,
    info: ModelInfo,
}

impl Session for Agent {
    fn handle(&mut self, command: Command) -> Result<Reply, ErrorReply> {
        let name = command.name();
        // A panic inside a kernel must not take the agent down with the model
        // half-built: answer `internal`, drop the model, keep serving.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.dispatch(command)));
        match outcome {
            Ok(result) => result.map_err(|e| e.for_command(name)),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                self.loaded = None;
                Err(Refusal::new(ErrorKind::Internal, format!("agent panicked ({what}); the model was unloaded"))
                    .for_command(name))
            }
        }
    }
}

/// Why the agent will not do something, before it is attached to its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub fn for_command(self, cmd: &str) -> ErrorReply {
        ErrorReply { cmd: Some(cmd.to_owned()), kind: self.kind, error: self.message }
    }
}

fn bad_params(message: impl Into<String>) -> Refusal {
    Refusal::new(ErrorKind::BadParams, message)
}

impl Agent {
    pub fn new(options: AgentOptions) -> Self {
        Self { options, loaded: None }
    }

    fn dispatch(&mut self, command: Command) -> Result<Reply, Refusal> {
        Ok(match command {
            Command::Hello => Reply::Hello(self.hello()),
            Command::Clock => Reply::Clock(ClockReply { mono_ns: monotonic_ns() }),
            Command::Load(req) => Reply::Load(self.load(req)?),
            Command::Run(req) => Reply::Run(self.run(&req)?),
            Command::Switch(req) => Reply::Switch(self.switch(&req)?),
            Command::Selftest(req) => Reply::Selftest(self.selftest(&req)?),
            Command::Fidelity(req) => Reply::Fidelity(self.fidelity(&req)?),
            Command::Quit => Reply::Quit,
        })
    }

    /// The `hello` reply: this build and this board.
    pub fn hello(&self) -> HelloReply {
        let cpu = sysinfo::read_cpuinfo();
        let mem = sysinfo::read_meminfo();
        HelloReply {
            agent: crate::AGENT_NAME.into(),
            agent_version: crate::AGENT_VERSION.into(),
            arch: std::env::consts::ARCH.into(),
            simd: kernels::simd::detected_features().into_iter().map(str::to_owned).collect(),
            cpu_model: cpu.model.clone().unwrap_or_else(|| "unknown".into()),
            board_model: cpu.board.clone(),
            cores: sysinfo::online_cpus(&cpu),
            allowed_cpus: current_affinity().cpus().to_vec(),
            threads: self.options.threads.count(),
            kernel: sysinfo::uname(),
            mem_total_bytes: mem.total,
            mem_available_bytes: mem.available,
            sim_stretch: self.options.sim_stretch.as_ref().map(|t| {
                let s = t.status();
                SimStretchWire {
                    sysfs_root: s.sysfs_root,
                    policy: s.policy,
                    cpu: s.cpu,
                    max_khz: s.max_khz,
                    cur_khz: s.cur_khz,
                    factor_now: s.factor_now,
                }
            }),
        }
    }

    /// Builds the model and every variant. Validation happens first and a
    /// request that fails it leaves any loaded model in place; past
    /// validation the old model is dropped (its memory is needed for the
    /// new one), so a load that fails later leaves no model loaded.
    fn load(&mut self, req: LoadRequest) -> Result<LoadReply, Refusal> {
        let plan = plan_load(&req)?;
        if let Some(old) = self.loaded.take() {
            crate::log(format_args!("unloading {} to load {}", old.info.preset, plan.preset.name()));
        }
        let started = monotonic_ns();
        let mem_before = sysinfo::read_meminfo().available;
        let specs: Vec<(&str, &VariantSpec)> = plan.variants.iter().map(|(n, s)| (n.as_str(), s)).collect();

        let weights = match &req.model.safetensors {
            None => {
                let estimate = model::estimate_bytes(&plan.config, &specs).total() as u64;
                check_memory(estimate, mem_before, self.options.memory_limit)?;
                EncoderWeights::random(plan.config, req.model.seed).map_err(|e| bad_params(format!("model: {e}")))?
            }
            Some(path) => {
                // The file is read whole and then converted to f32: check that
                // much before reading, the full estimate once the shapes are known.
                let size = std::fs::metadata(path)
                    .map_err(|e| Refusal::new(ErrorKind::Model, format!("model.safetensors `{path}`: {e}")))?
                    .len();
                check_memory(size.saturating_mul(2), mem_before, self.options.memory_limit)?;
                let weights = EncoderWeights::from_safetensors_as(Path::new(path), &plan.config)
                    .map_err(|e| Refusal::new(ErrorKind::Model, format!("model.safetensors: {e}")))?;
                let estimate = model::estimate_bytes(weights.config(), &specs);
                let still_needed = (estimate.total() - estimate.source_weights) as u64;
                check_memory(still_needed, sysinfo::read_meminfo().available, self.options.memory_limit)?;
                weights
            }
        };
        let config = *weights.config();
        let estimated_bytes = model::estimate_bytes(&config, &specs).total() as u64;

        let mut model = ReconfigurableModel::new(weights);
        let mut variants = Vec::with_capacity(plan.variants.len());
        for (name, spec) in &plan.variants {
            let info = model.add_variant(name, spec).map_err(|e| bad_params(format!("variants: {e}")))?;
            crate::log(format_args!(
                "prepared {} ({}): sparsity {:.4}, {} nnz, {} bytes, {:.1} ms",
                info.name,
                info.kind,
                info.sparsity,
                info.nnz,
                info.bytes,
                info.prepare.as_secs_f64() * 1e3
            ));
            variants.push(variant_report(&info));
        }
        let strategies = model.residency_bytes();
        if req.residency == ResidencyWire::OneSet {
            let freed = model.set_residency(Residency::OneSet);
            crate::log(format_args!("holding one pattern set at a time: {freed} bytes freed"));
        }
        let active = model.active().map(|v| v.name.clone()).unwrap_or_default();
        let resident_bytes = Some(model.resident_bytes() as u64);
        let info = ModelInfo {
            preset: plan.preset.name().into(),
            source: if req.model.safetensors.is_some() { "safetensors" } else { "synthetic" }.into(),
            path: req.model.safetensors.clone(),
            seed: req.model.seed,
            seq: config.seq_len,
            layers: config.layers,
            d_model: config.d_model,
            heads: config.heads,
            ffn: config.ffn,
            vocab: config.vocab,
            lm_head: config.lm_head,
            parameters: config.parameter_count() as u64,
            macs: config.macs(config.seq_len),
        };
        self.loaded = Some(LoadedModel { model, info: info.clone() });
        Ok(LoadReply {
            model: info,
            residency: req.residency,
            resident_bytes,
            resident_bytes_all_prepacked: Some(strategies.all_prepacked as u64),
            resident_bytes_one_set: Some(strategies.one_set as u64),
            variants,
            active,
            estimated_bytes,
            mem_available_bytes: mem_before,
            load_ns: monotonic_ns().saturating_sub(started),
        })
    }

    fn loaded(&self) -> Result<&LoadedModel, Refusal> {
        self.loaded.as_ref().ok_or_else(|| Refusal::new(ErrorKind::NotLoaded, "no model loaded: send `load` first"))
    }

    /// Warm-up, then one timed window (see [`measure_window`]).
    fn run(&self, req: &RunRequest) -> Result<RunReply, Refusal> {
        let run_start = monotonic_ns();
        let mut plan = plan_window(req)?;
        plan.deadline_ns = req.max_ms.map(|ms| run_start.saturating_add(ms * 1_000_000));
        let loaded = self.loaded()?;
        let model = &loaded.model;
        let variant = match &req.variant {
            Some(name) => {
                model.variant(name).map_err(|e| Refusal::new(ErrorKind::UnknownVariant, e.to_string()))?;
                name.clone()
            }
            None => model
                .active()
                .map(|v| v.name.clone())
                .ok_or_else(|| Refusal::new(ErrorKind::NotLoaded, "the loaded model has no variants"))?,
        };
        let input = model.seeded_input(model.config().seq_len, req.input_seed);
        let threads = self.options.threads;
        // On a simulated board each inference is stretched to the simulated clock's speed.
        let stretch = self.options.sim_stretch.as_ref().map(|t| Stretcher::new(t, threads.count()));
        let infer = || -> Matrix {
            let forward = || {
                model.forward_variant(&variant, black_box(&input), threads).expect("variant and input checked above")
            };
            match &stretch {
                Some(s) => s.run(&monotonic_ns, forward),
                None => forward(),
            }
        };
        let mut warmed = 0;
        while warmed < req.warmup && plan.deadline_ns.is_none_or(|d| monotonic_ns() < d) {
            black_box(infer());
            warmed += 1;
        }
        if let Some(s) = &stretch {
            s.reset();
        }
        let cpu_before = process_cpu_ns();
        let window = measure_window(infer, model::checksum, monotonic_ns, &plan);
        let cpu_time_ns = cpu_before.zip(process_cpu_ns()).map(|(a, b)| b.saturating_sub(a));
        let sim_stretch_factor = stretch.as_ref().and_then(Stretcher::mean_factor);
        let time_capped = window.time_capped || warmed < req.warmup;
        let note = time_capped.then(|| {
            format!(
                "stopped at the {} ms wall-time cap after {warmed} of {} warm-up and {} of at least {} timed \
                 iterations ({:.1} ms of the {} ms asked for)",
                req.max_ms.unwrap_or(0),
                req.warmup,
                window.latencies_ns.len(),
                req.min_iters,
                window.end_ns.saturating_sub(window.start_ns) as f64 / 1e6,
                req.min_ms
            )
        });
        Ok(RunReply {
            variant,
            warmup: warmed,
            iterations: window.latencies_ns.len() as u64,
            window_start_ns: window.start_ns,
            window_end_ns: window.end_ns,
            latencies_ns: window.latencies_ns,
            checksum: format!("{:016x}", window.checksum),
            outputs_consistent: window.consistent,
            capped: window.capped,
            time_capped,
            note,
            input_seed: req.input_seed,
            threads: threads.count(),
            sim_stretch_factor,
            cpu_time_ns,
        })
    }

    fn switch(&mut self, req: &SwitchRequest) -> Result<SwitchReply, Refusal> {
        let loaded = self
            .loaded
            .as_mut()
            .ok_or_else(|| Refusal::new(ErrorKind::NotLoaded, "no model loaded: send `load` first"))?;
        if req.probe > MAX_SWITCH_PROBE {
            return Err(bad_params(format!("probe = {} is larger than {MAX_SWITCH_PROBE}", req.probe)));
        }
        let previous = loaded.model.active().map(|v| v.name.clone()).unwrap_or_default();
        // A switch is CPU work too: on a simulated board it runs at the simulated clock's speed.
        let stretch = self.options.sim_stretch.as_ref().map(|t| Stretcher::new(t, 1));
        let start = monotonic_ns();
        let mut switch = || match req.mode {
            SwitchMode::Hot => loaded.model.switch(&req.variant),
            SwitchMode::Cold => loaded.model.cold_switch(&req.variant),
        };
        let switched = match &stretch {
            Some(s) => s.run(&monotonic_ns, switch),
            None => switch(),
        };
        let switch_ns = monotonic_ns().saturating_sub(start);
        switched.map_err(|e| {
            let kind = match e {
                model::ModelError::UnknownVariant { .. } => ErrorKind::UnknownVariant,
                _ => ErrorKind::BadParams,
            };
            Refusal::new(kind, e.to_string())
        })?;
        // The first inferences after the switch: what a switch costs beyond itself (caches and
        // pages holding the previous set, a set packed a moment ago).
        let model = &loaded.model;
        let input = model.seeded_input(model.config().seq_len, req.input_seed);
        let threads = self.options.threads;
        let stretch = self.options.sim_stretch.as_ref().map(|t| Stretcher::new(t, threads.count()));
        let probe_ns = (0..req.probe)
            .map(|_| {
                let t = monotonic_ns();
                let forward =
                    || model.forward(black_box(&input), threads).expect("the switched-to variant is resident");
                black_box(match &stretch {
                    Some(s) => s.run(&monotonic_ns, forward),
                    None => forward(),
                });
                monotonic_ns().saturating_sub(t)
            })
            .collect();
        Ok(SwitchReply {
            variant: req.variant.clone(),
            previous,
            switch_ns,
            mode: req.mode,
            probe_ns,
            resident_bytes: Some(model.resident_bytes() as u64),
        })
    }

    /// Every resident variant's final hidden states against the dense model's, over seeded
    /// inputs. The reference is the loaded dense variant when there is one, else a dense encoder
    /// built for the check and dropped after it.
    fn fidelity(&self, req: &FidelityRequest) -> Result<FidelityReply, Refusal> {
        if req.inputs == 0 || req.inputs > MAX_FIDELITY_INPUTS {
            return Err(bad_params(format!("inputs = {} is outside 1..={MAX_FIDELITY_INPUTS}", req.inputs)));
        }
        let loaded = self.loaded()?;
        let model = &loaded.model;
        let threads = self.options.threads;
        let dense_name = model.variants().into_iter().find(|v| v.kind == VariantKind::Dense).map(|v| v.name.clone());
        let built;
        let reference: &dyn Fn(&Matrix) -> Matrix = match &dense_name {
            Some(name) => &move |x: &Matrix| model.forward_variant(name, x, threads).expect("dense is resident"),
            None => {
                built = Encoder::dense(model.weights());
                &|x: &Matrix| built.forward(x, threads)
            }
        };
        let names: Vec<String> = model
            .variants()
            .into_iter()
            .filter(|v| model.is_resident(&v.name).unwrap_or(false))
            .map(|v| v.name.clone())
            .collect();
        let mut acc: Vec<FidelityAccumulator> = names.iter().map(|_| FidelityAccumulator::default()).collect();
        for k in 0..req.inputs {
            let input = model.seeded_input(model.config().seq_len, req.input_seed.wrapping_add(u64::from(k)));
            let want = reference(&input);
            for (name, a) in names.iter().zip(&mut acc) {
                let got = model.forward_variant(name, &input, threads).expect("resident variants run");
                a.add(got.as_slice(), want.as_slice());
            }
        }
        let kind = if loaded.info.source == "synthetic" { "perturbation (synthetic weights)" } else { "checkpoint" };
        Ok(FidelityReply {
            kind: kind.into(),
            inputs: req.inputs,
            input_seed: req.input_seed,
            results: names
                .into_iter()
                .zip(acc)
                .map(|(variant, a)| FidelityResult { variant, cosine: a.cosine(), rel_l2: a.rel_l2() })
                .collect(),
        })
    }

    fn selftest(&self, req: &SelftestRequest) -> Result<SelftestReply, Refusal> {
        if req.tokens == 0 || req.tokens > limits::MAX_SELFTEST_TOKENS {
            return Err(bad_params(format!("tokens = {} is outside 1..={}", req.tokens, limits::MAX_SELFTEST_TOKENS)));
        }
        let model = &self.loaded()?.model;
        let input = model.seeded_input(req.tokens, req.input_seed);
        let reports = model.selftest(&input).map_err(|e| Refusal::new(ErrorKind::Internal, e.to_string()))?;
        let results: Vec<SelftestResult> = reports
            .into_iter()
            .map(|r| SelftestResult {
                variant: r.variant,
                max_abs_err: r.max_abs_err,
                max_rel_err: r.max_rel_err,
                worst: r.worst,
                checks: r.checks,
                passed: r.passed,
            })
            .collect();
        Ok(SelftestReply { passed: results.iter().all(|r| r.passed), tokens: req.tokens, results })
    }
}

/// Sums for the cosine similarity and relative L2 error of outputs against references, in `f64`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FidelityAccumulator {
    dot: f64,
    got_sq: f64,
    want_sq: f64,
    diff_sq: f64,
}

impl FidelityAccumulator {
    pub fn add(&mut self, got: &[f32], want: &[f32]) {
        for (&g, &w) in got.iter().zip(want) {
            let (g, w) = (f64::from(g), f64::from(w));
            self.dot += g * w;
            self.got_sq += g * g;
            self.want_sq += w * w;
            self.diff_sq += (g - w) * (g - w);
        }
    }

    /// NaN when either side is all zeros.
    pub fn cosine(&self) -> f64 {
        let norms = (self.got_sq * self.want_sq).sqrt();
        if norms > 0.0 {
            (self.dot / norms).clamp(-1.0, 1.0)
        } else {
            f64::NAN
        }
    }

    /// NaN when the reference is all zeros.
    pub fn rel_l2(&self) -> f64 {
        if self.want_sq > 0.0 {
            (self.diff_sq / self.want_sq).sqrt()
        } else {
            f64::NAN
        }
    }
}

fn variant_report(info: &VariantInfo) -> VariantReport {
    VariantReport {
        name: info.name.clone(),
        kind: info.kind.name().into(),
        base: info.base.clone(),
        sparsity: info.sparsity,
        nnz: info.nnz as u64,
        multiplied: info.multiplied as u64,
        bytes: info.bytes as u64,
        dense_weights: info.dense_weights as u64,
        prepare_ns: info.prepare.as_nanos() as u64,
        pattern_generation_ns: info.pattern_generation.map(|d| d.as_nanos() as u64),
    }
}

/// A validated `load`: the preset, the model's dimensions and the variants in kernels' terms.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadPlan {
    pub preset: Preset,
    pub config: EncoderConfig,
    pub variants: Vec<(String, VariantSpec)>,
}

/// Checks a `load` request without touching memory: preset, sequence length,
/// variant count and names. Names go into the harness's file names and
/// tables, so they are restricted to `[A-Za-z0-9._+-]`.
pub fn plan_load(req: &LoadRequest) -> Result<LoadPlan, Refusal> {
    let preset: Preset = req.model.preset.parse().map_err(|e| bad_params(format!("model.preset: {e}")))?;
    let mut config = preset.config();
    if req.model.lm_head {
        if !preset.has_vocabulary() {
            return Err(bad_params(format!(
                "model.lm_head: preset {} has no vocabulary to project onto (rt3-transformer has one)",
                preset.name()
            )));
        }
        config = config.with_lm_head(true);
    }
    if let Some(seq) = req.model.seq {
        if seq == 0 || seq > limits::MAX_SEQ {
            return Err(bad_params(format!("model.seq = {seq} is outside 1..={}", limits::MAX_SEQ)));
        }
        config = config.with_seq_len(seq);
    }
    if req.variants.is_empty() {
        return Err(bad_params(
            "variants: the list is empty; give at least one (e.g. {\"kind\":\"dense\",\"name\":\"dense\"})",
        ));
    }
    if req.variants.len() > limits::MAX_VARIANTS {
        return Err(bad_params(format!("variants: {} given, at most {}", req.variants.len(), limits::MAX_VARIANTS)));
    }
    let mut variants: Vec<(String, VariantSpec)> = Vec::with_capacity(req.variants.len());
    for (i, v) in req.variants.iter().enumerate() {
        let name = v.name();
        check_variant_name(name).map_err(|why| bad_params(format!("variants[{i}].name: {why}")))?;
        if variants.iter().any(|(n, _)| n == name) {
            return Err(bad_params(format!("variants[{i}].name: `{name}` is used twice")));
        }
        variants.push((name.to_owned(), to_kernel_spec(v)));
    }
    Ok(LoadPlan { preset, config, variants })
}

fn check_variant_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > limits::MAX_NAME_LEN {
        return Err(format!("`{name}` is longer than {} characters", limits::MAX_NAME_LEN));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._+-".contains(*c))) {
        return Err(format!("`{name}` contains {c:?}; use letters, digits and . _ + -"));
    }
    Ok(())
}

/// The protocol's variant description in kernels' terms (the name travels separately).
pub fn to_kernel_spec(v: &VariantSpecWire) -> VariantSpec {
    match v {
        VariantSpecWire::Dense { .. } => VariantSpec::Dense,
        VariantSpecWire::Block { sparsity, block_rows, block_cols, per_layer, global, .. } => VariantSpec::Block {
            sparsity: *sparsity,
            block_rows: *block_rows,
            block_cols: *block_cols,
            per_layer: per_layer.clone(),
            global: *global,
        },
        VariantSpecWire::Pattern { base, tile, patterns_per_set, sparsity, method, seed, .. } => VariantSpec::Pattern {
            base: base.clone(),
            tile: *tile,
            patterns_per_set: *patterns_per_set,
            sparsity: *sparsity,
            method: match method {
                PatternMethod::Rt3TileSums => CandidateMethod::Rt3TileSums,
                PatternMethod::FrequentTopK => CandidateMethod::FrequentTopK,
            },
            seed: *seed,
        },
    }
}

/// Bytes one agent process can address, where that is below what a board
/// can have: on a 32-bit build (ARMv7 boards) the user part of its 4 GiB
/// address space, 3 GiB with Linux's default split (`VMSPLIT_3G`), whatever
/// RAM the board has (a 32-bit OS on an 8 GB board); `None` on 64-bit.
pub const ADDRESS_SPACE_BYTES: Option<u64> = if usize::BITS < 64 { Some(3 << 30) } else { None };

/// Refuses a model whose estimate exceeds [`MEMORY_HEADROOM`] of
/// `MemAvailable`, the `--max-memory` budget or, on a 32-bit build, the
/// process's [`ADDRESS_SPACE_BYTES`]. With no `/proc/meminfo` and no budget
/// it cannot check the board and lets the load go ahead.
pub fn check_memory(estimate: u64, available: Option<u64>, limit: Option<u64>) -> Result<(), Refusal> {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    if let Some(space) = ADDRESS_SPACE_BYTES.filter(|&space| estimate > space) {
        return Err(Refusal::new(
            ErrorKind::OutOfMemory,
            format!(
                "model needs about {:.1} MiB, more than this {}-bit agent can address ({:.1} MiB)",
                mib(estimate),
                usize::BITS,
                mib(space)
            ),
        ));
    }
    if let Some(limit) = limit {
        if estimate > limit {
            return Err(Refusal::new(
                ErrorKind::OutOfMemory,
                format!(
                    "model needs about {:.1} MiB, more than the agent's --max-memory budget of {:.1} MiB",
                    mib(estimate),
                    mib(limit)
                ),
            ));
        }
    }
    if let Some(available) = available {
        let usable = (available as f64 * MEMORY_HEADROOM) as u64;
        if estimate > usable {
            return Err(Refusal::new(
                ErrorKind::OutOfMemory,
                format!(
                    "model needs about {:.1} MiB, but the board has {:.1} MiB available (MemAvailable) \
                     and the agent uses at most {:.0} % of it",
                    mib(estimate),
                    mib(available),
                    MEMORY_HEADROOM * 100.0
                ),
            ));
        }
    }
    Ok(())
}

/// When a window may end: at least `min_iters` iterations and `min_ns`
/// nanoseconds, at most [`MAX_WINDOW_ITERATIONS`] iterations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowPlan {
    pub min_iters: u64,
    pub min_ns: u64,
    pub max_iters: u64,
    /// Clock reading at which the window stops whatever else it still needs
    /// (the run's wall-time cap), if any.
    pub deadline_ns: Option<u64>,
}

/// Checks a `run` request's numbers.
pub fn plan_window(req: &RunRequest) -> Result<WindowPlan, Refusal> {
    if req.min_iters == 0 || req.min_iters > limits::MAX_MIN_ITERS {
        return Err(bad_params(format!("min_iters = {} is outside 1..={}", req.min_iters, limits::MAX_MIN_ITERS)));
    }
    if req.warmup > limits::MAX_WARMUP {
        return Err(bad_params(format!("warmup = {} is above {}", req.warmup, limits::MAX_WARMUP)));
    }
    if req.min_ms > limits::MAX_MIN_MS {
        return Err(bad_params(format!("min_ms = {} is above {} (one hour)", req.min_ms, limits::MAX_MIN_MS)));
    }
    if let Some(max_ms) = req.max_ms {
        if max_ms == 0 || max_ms > limits::MAX_MIN_MS {
            return Err(bad_params(format!("max_ms = {max_ms} is outside 1..={} (one hour)", limits::MAX_MIN_MS)));
        }
    }
    Ok(WindowPlan {
        min_iters: req.min_iters as u64,
        min_ns: req.min_ms * 1_000_000,
        max_iters: MAX_WINDOW_ITERATIONS,
        deadline_ns: None,
    })
}

/// What one window measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowMeasurement {
    pub start_ns: u64,
    pub end_ns: u64,
    pub latencies_ns: Vec<u64>,
    /// Digest of the first timed output.
    pub checksum: u64,
    /// Every timed output had the same digest.
    pub consistent: bool,
    /// Stopped at `max_iters` or the deadline before `min_ns` had passed.
    pub capped: bool,
    /// Stopped at the deadline before `min_iters` and `min_ns` were both met.
    pub time_capped: bool,
}

/// Runs `infer` until the plan is satisfied, timing each call with `clock`.
///
/// Each latency brackets exactly one `infer` call. Its output then goes
/// through `digest` (and `black_box`), so no inference can be optimised
/// away; digesting happens between the brackets, so it is in the window but
/// in no latency. The window runs from the clock reading before the first
/// call to the reading after the last.
pub fn measure_window<O>(
    mut infer: impl FnMut() -> O,
    digest: impl Fn(&O) -> u64,
    mut clock: impl FnMut() -> u64,
    plan: &WindowPlan,
) -> WindowMeasurement {
    let mut latencies_ns = Vec::with_capacity(plan.min_iters.min(plan.max_iters) as usize);
    let mut first_digest = None;
    let mut consistent = true;
    let mut time_capped = false;
    let start_ns = clock();
    let mut end_ns;
    loop {
        let before = clock();
        let output = infer();
        let after = clock();
        latencies_ns.push(after.saturating_sub(before));
        end_ns = after;
        let d = digest(black_box(&output));
        match first_digest {
            None => first_digest = Some(d),
            Some(first) => consistent &= first == d,
        }
        let n = latencies_ns.len() as u64;
        let elapsed = end_ns.saturating_sub(start_ns);
        if n >= plan.max_iters || (n >= plan.min_iters && elapsed >= plan.min_ns) {
            break;
        }
        if plan.deadline_ns.is_some_and(|d| end_ns >= d) {
            time_capped = true;
            break;
        }
    }
    let elapsed = end_ns.saturating_sub(start_ns);
    WindowMeasurement {
        start_ns,
        end_ns,
        capped: elapsed < plan.min_ns,
        time_capped,
        latencies_ns,
        checksum: first_digest.unwrap_or(0),
        consistent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ModelSpec, DEFAULT_INPUT_SEED};
    use std::cell::Cell;

    fn fake_clock(step: u64) -> impl FnMut() -> u64 {
        let mut t = 1_000;
        move || {
            t += step;
            t
        }
    }

    #[test]
    fn hello_lists_the_simd_the_kernels_run() {
        let hello = Agent::new(AgentOptions::default()).hello();
        let backend = kernels::simd::Backend::best();
        for f in backend.features() {
            assert!(hello.simd.iter().any(|s| s == f), "{} needs {f}, hello says {:?}", backend.name(), hello.simd);
        }
        // 32-bit ARM selects at compile time: NEON is listed exactly when the kernels run it.
        if hello.arch == "arm" {
            assert_eq!(hello.simd.iter().any(|s| s == "neon"), backend == kernels::simd::Backend::Neon);
        }
    }

    #[test]
    fn window_runs_min_iters_when_time_is_already_met() {
        let plan = WindowPlan { min_iters: 5, min_ns: 0, max_iters: 100, deadline_ns: None };
        let calls = Cell::new(0);
        let w = measure_window(|| calls.set(calls.get() + 1), |_| 7, fake_clock(10), &plan);
        assert_eq!(calls.get(), 5);
        assert_eq!(w.latencies_ns, vec![10; 5]);
        // start read, then (before, after) per iteration: 1010 .. 1110.
        assert_eq!((w.start_ns, w.end_ns), (1_010, 1_110));
        assert!(w.consistent && !w.capped);
        assert_eq!(w.checksum, 7);
    }

    #[test]
    fn window_runs_until_min_ns_has_passed() {
        let plan = WindowPlan { min_iters: 1, min_ns: 95, max_iters: 100, deadline_ns: None };
        let w = measure_window(|| (), |_| 0, fake_clock(10), &plan);
        // Each iteration advances the window by 20 (two clock reads of 10).
        assert_eq!(w.latencies_ns.len(), 5);
        assert!(w.end_ns - w.start_ns >= 95);
    }

    #[test]
    fn window_stops_at_the_cap_and_says_so() {
        let plan = WindowPlan { min_iters: 1, min_ns: 1_000_000, max_iters: 3, deadline_ns: None };
        let w = measure_window(|| (), |_| 0, fake_clock(1), &plan);
        assert_eq!(w.latencies_ns.len(), 3);
        assert!(w.capped);
    }

    #[test]
    fn window_stops_at_the_deadline_before_min_iters() {
        let plan = WindowPlan { min_iters: 100, min_ns: 0, max_iters: 1000, deadline_ns: Some(1_050) };
        let w = measure_window(|| (), |_| 0, fake_clock(10), &plan);
        // Iterations end at 1030, 1050: the second reaches the deadline.
        assert_eq!(w.latencies_ns.len(), 2);
        assert!(w.time_capped);
        let plan = WindowPlan { deadline_ns: Some(u64::MAX), ..plan };
        assert!(!measure_window(|| (), |_| 0, fake_clock(10), &plan).time_capped);
    }

    #[test]
    fn window_flags_outputs_that_change() {
        let plan = WindowPlan { min_iters: 3, min_ns: 0, max_iters: 10, deadline_ns: None };
        let n = Cell::new(0u64);
        let w = measure_window(
            || {
                n.set(n.get() + 1);
                n.get()
            },
            |o| *o / 3,
            fake_clock(1),
            &plan,
        );
        assert_eq!(w.checksum, 0);
        assert!(!w.consistent, "outputs 1, 2, 3 digest to 0, 0, 1");
    }

    #[test]
    fn run_parameters_are_bounded_with_the_field_named() {
        let ok = RunRequest { min_iters: 10, min_ms: 2000, ..RunRequest::default() };
        assert_eq!(
            plan_window(&ok).unwrap(),
            WindowPlan { min_iters: 10, min_ns: 2_000_000_000, max_iters: 1_000_000, deadline_ns: None }
        );
        let e = plan_window(&RunRequest { min_iters: 0, ..RunRequest::default() }).unwrap_err();
        assert!(e.message.contains("min_iters = 0"), "{}", e.message);
        let e = plan_window(&RunRequest { min_ms: 99_999_999, ..RunRequest::default() }).unwrap_err();
        assert!(e.message.contains("min_ms = 99999999"), "{}", e.message);
        assert_eq!(e.kind, ErrorKind::BadParams);
    }

    #[test]
    fn memory_check_uses_headroom_and_budget() {
        assert!(check_memory(899, Some(1000), None).is_ok());
        let e = check_memory(901, Some(1000), None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::OutOfMemory);
        assert!(e.message.contains("MemAvailable"), "{}", e.message);
        let e = check_memory(600, Some(1000), Some(500)).unwrap_err();
        assert!(e.message.contains("--max-memory"), "{}", e.message);
        let addressable = ADDRESS_SPACE_BYTES.unwrap_or(u64::MAX);
        assert!(check_memory(addressable, None, None).is_ok(), "nothing known, nothing refused");
    }

    #[test]
    fn a_32_bit_agent_refuses_what_it_cannot_address() {
        match ADDRESS_SPACE_BYTES {
            Some(space) => {
                let e = check_memory(space + 1, None, None).unwrap_err();
                assert_eq!(e.kind, ErrorKind::OutOfMemory);
                assert!(e.message.contains("32-bit agent can address"), "{}", e.message);
            }
            None => assert_eq!(usize::BITS, 64),
        }
    }

    fn load_req(variants: Vec<VariantSpecWire>) -> LoadRequest {
        LoadRequest {
            model: ModelSpec {
                preset: "rt3-transformer".into(),
                seed: 1,
                seq: Some(4),
                safetensors: None,
                lm_head: false,
            },
            variants,
            residency: Default::default(),
        }
    }

    #[test]
    fn load_plan_switches_the_lm_head_on_for_presets_with_a_vocabulary_only() {
        let mut req = load_req(vec![VariantSpecWire::Dense { name: "dense".into() }]);
        assert!(!plan_load(&req).unwrap().config.lm_head);
        req.model.lm_head = true;
        let plan = plan_load(&req).unwrap();
        assert!(plan.config.lm_head);
        assert_eq!((plan.config.linear_count(), plan.config.output_width()), (13, 33_278));
        req.model.preset = "distilbert".into();
        let e = plan_load(&req).unwrap_err();
        assert!(e.message.contains("model.lm_head") && e.message.contains("distilbert"), "{}", e.message);
    }

    /// The word-language-model checkpoint kernels' tests check against PyTorch (d_model 16, 50 words).
    fn word_lm_fixture() -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../kernels/tests/fixtures/word_lm/rt3_2021.model.safetensors").into()
    }

    #[test]
    fn agent_loads_a_word_language_model_checkpoint_with_its_lm_head() {
        let mut agent = Agent::new(AgentOptions::default());
        let mut req = load_req(vec![
            VariantSpecWire::Dense { name: "dense".into() },
            VariantSpecWire::Block {
                name: "bp".into(),
                sparsity: 0.5,
                block_rows: 4,
                block_cols: 1,
                per_layer: None,
                global: false,
            },
        ]);
        req.model.safetensors = Some(word_lm_fixture());
        req.model.lm_head = true;
        let Reply::Load(load) = agent.handle(Command::Load(req.clone())).unwrap() else { panic!() };
        let m = &load.model;
        assert_eq!((m.layers, m.d_model, m.ffn, m.vocab, m.lm_head), (2, 16, 8, Some(50), true));
        // Linear weights 2·(4·16² + 2·16·8) + the head's 16·50, the embedding 50·16, biases and norms.
        assert_eq!(m.parameters, (2 * (4 * 256 + 256) + 800) + 800 + (2 * (4 * 16 + 8 + 16) + 50) + 2 * 2 * 32);
        assert_eq!(load.variants[0].multiplied, 2 * (4 * 256 + 256) + 800);
        let Reply::Selftest(st) = agent.handle(Command::Selftest(SelftestRequest::default())).unwrap() else {
            panic!()
        };
        assert!(st.passed, "{st:?}");
        let Reply::Fidelity(f) = agent.handle(Command::Fidelity(FidelityRequest { inputs: 2, input_seed: 1 })).unwrap()
        else {
            panic!()
        };
        assert_eq!(f.kind, "checkpoint");
        assert!(f.results.iter().all(|r| r.cosine.is_finite()), "{f:?}");
        // A BERT-family preset does not read a word language model.
        req.model.preset = "minilm".into();
        req.model.lm_head = false;
        let e = agent.handle(Command::Load(req)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Model);
        assert!(e.error.contains("word-language-model"), "{}", e.error);
    }

    #[test]
    fn load_plan_converts_variants_and_applies_seq() {
        let plan = plan_load(&load_req(vec![
            VariantSpecWire::Dense { name: "dense".into() },
            VariantSpecWire::Block {
                name: "bp".into(),
                sparsity: 0.5,
                block_rows: 16,
                block_cols: 1,
                per_layer: None,
                global: true,
            },
            VariantSpecWire::Pattern {
                name: "pp".into(),
                base: "bp".into(),
                tile: 8,
                patterns_per_set: 4,
                sparsity: 0.75,
                method: PatternMethod::FrequentTopK,
                seed: 3,
            },
        ]))
        .unwrap();
        assert_eq!(plan.preset, Preset::Rt3Transformer);
        assert_eq!(plan.config.seq_len, 4);
        assert_eq!(plan.variants[0], ("dense".into(), VariantSpec::Dense));
        assert!(matches!(plan.variants[1].1, VariantSpec::Block { global: true, block_rows: 16, .. }));
        assert!(matches!(
            &plan.variants[2].1,
            VariantSpec::Pattern { method: CandidateMethod::FrequentTopK, seed: 3, tile: 8, .. }
        ));
    }

    #[test]
    fn load_plan_refuses_bad_names_presets_and_lengths() {
        let dense = |n: &str| VariantSpecWire::Dense { name: n.into() };
        let e = plan_load(&load_req(vec![dense("a b")])).unwrap_err();
        assert!(e.message.contains("variants[0].name") && e.message.contains("' '"), "{}", e.message);
        let e = plan_load(&load_req(vec![dense("a"), dense("a")])).unwrap_err();
        assert!(e.message.contains("variants[1].name: `a` is used twice"), "{}", e.message);
        let e = plan_load(&load_req(vec![])).unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let mut req = load_req(vec![dense("d")]);
        req.model.preset = "gpt2".into();
        let e = plan_load(&req).unwrap_err();
        assert!(e.message.contains("model.preset") && e.message.contains("gpt2"), "{}", e.message);
        let mut req = load_req(vec![dense("d")]);
        req.model.seq = Some(0);
        assert!(plan_load(&req).unwrap_err().message.contains("model.seq = 0"));
    }

    #[test]
    fn agent_refuses_work_before_load_and_after_a_failed_one() {
        let mut agent = Agent::new(AgentOptions::default());
        let e = agent.handle(Command::Run(RunRequest::default())).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotLoaded);
        assert_eq!(e.cmd.as_deref(), Some("run"));
        let e = agent.handle(Command::Switch(SwitchRequest::hot("x"))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotLoaded);
        let e = agent.handle(Command::Selftest(SelftestRequest::default())).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotLoaded);
        // A model far beyond any board: refused by the memory check, nothing loaded.
        let mut req = load_req(vec![VariantSpecWire::Dense { name: "d".into() }]);
        req.model.preset = "distilbert".into();
        req.model.seq = Some(limits::MAX_SEQ);
        let e = agent.handle(Command::Load(req)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::OutOfMemory, "{}", e.error);
        assert_eq!(agent.handle(Command::Run(RunRequest::default())).unwrap_err().kind, ErrorKind::NotLoaded);
    }

    /// Writes F32 tensors in the safetensors layout: an 8-byte little-endian
    /// header length, a JSON header of names, dtypes, shapes and byte ranges, then the data.
    fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, shape, values) in tensors {
            let start = data.len();
            data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let mut header = serde_json::to_vec(&header).unwrap();
        while !header.len().is_multiple_of(8) {
            header.push(b' ');
        }
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header);
        file.extend(data);
        std::fs::write(path, file).unwrap();
    }

    /// A one-layer DistilBERT-named encoder, d_model 12 (DistilBERT's 12 heads of 1), FFN 4.
    fn tiny_distilbert(path: &Path) {
        let (d, ffn) = (12usize, 4usize);
        let mut seed = 0u64;
        let mut tensor = |name: &str, shape: Vec<usize>| {
            seed += 1;
            let n = shape.iter().product();
            let values = Matrix::random(1, n, seed, 0.3).into_vec();
            (format!("distilbert.transformer.layer.0.{name}"), shape, values)
        };
        let mut tensors = Vec::new();
        for lin in ["q_lin", "k_lin", "v_lin", "out_lin"] {
            tensors.push(tensor(&format!("attention.{lin}.weight"), vec![d, d]));
            tensors.push(tensor(&format!("attention.{lin}.bias"), vec![d]));
        }
        tensors.push(tensor("ffn.lin1.weight", vec![ffn, d]));
        tensors.push(tensor("ffn.lin1.bias", vec![ffn]));
        tensors.push(tensor("ffn.lin2.weight", vec![d, ffn]));
        tensors.push(tensor("ffn.lin2.bias", vec![d]));
        for norm in ["sa_layer_norm", "output_layer_norm"] {
            tensors.push(tensor(&format!("{norm}.weight"), vec![d]));
            tensors.push(tensor(&format!("{norm}.bias"), vec![d]));
        }
        write_safetensors(path, &tensors);
    }

    #[test]
    fn agent_loads_weights_from_a_safetensors_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.safetensors");
        tiny_distilbert(&path);
        let mut agent = Agent::new(AgentOptions::default());
        let mut req = load_req(vec![
            VariantSpecWire::Dense { name: "dense".into() },
            VariantSpecWire::Block {
                name: "bp".into(),
                sparsity: 0.5,
                block_rows: 4,
                block_cols: 1,
                per_layer: None,
                global: false,
            },
        ]);
        req.model.safetensors = Some(path.display().to_string());
        req.model.preset = "distilbert".into();
        req.model.seq = Some(3);
        let Reply::Load(load) = agent.handle(Command::Load(req.clone())).unwrap() else { panic!() };
        assert_eq!(load.model.source, "safetensors");
        assert_eq!((load.model.layers, load.model.d_model, load.model.ffn, load.model.seq), (1, 12, 4, 3));
        assert_eq!(load.model.path.as_deref(), Some(path.to_str().unwrap()));
        let Reply::Run(run) = agent.handle(Command::Run(RunRequest { min_iters: 2, ..RunRequest::default() })).unwrap()
        else {
            panic!()
        };
        assert_eq!(run.iterations, 2);
        assert!(!run.time_capped && run.note.is_none());
        // A 1 ms cap on a run asking for a second: stopped early, and the reply says so.
        let capped = RunRequest { min_iters: 1_000_000, min_ms: 1_000, max_ms: Some(1), ..RunRequest::default() };
        let Reply::Run(run) = agent.handle(Command::Run(capped)).unwrap() else { panic!() };
        assert!(run.time_capped && run.capped, "{run:?}");
        assert!(run.iterations >= 1 && run.iterations < 1_000_000);
        assert!(run.note.as_deref().unwrap_or("").contains("1 ms wall-time cap"), "{:?}", run.note);
        let e = plan_window(&RunRequest { max_ms: Some(0), ..RunRequest::default() }).unwrap_err();
        assert!(e.message.contains("max_ms = 0"), "{}", e.message);
        let Reply::Selftest(st) = agent.handle(Command::Selftest(SelftestRequest::default())).unwrap() else {
            panic!()
        };
        assert!(st.passed, "{st:?}");

        req.model.safetensors = Some(dir.path().join("missing.safetensors").display().to_string());
        let e = agent.handle(Command::Load(req)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Model);
        assert!(e.error.contains("missing.safetensors"), "{}", e.error);
    }

    #[test]
    fn agent_loads_runs_switches_and_selftests_a_tiny_model() {
        let mut agent = Agent::new(AgentOptions::default());
        let reply = agent
            .handle(Command::Load(load_req(vec![
                VariantSpecWire::Dense { name: "dense".into() },
                VariantSpecWire::Block {
                    name: "bp".into(),
                    sparsity: 0.5,
                    block_rows: 16,
                    block_cols: 1,
                    per_layer: None,
                    global: false,
                },
            ])))
            .unwrap();
        let Reply::Load(load) = reply else { panic!("not a load reply") };
        assert_eq!(load.active, "dense");
        assert_eq!(load.variants.len(), 2);
        assert!(load.variants[1].sparsity > 0.45, "{:?}", load.variants[1]);

        let run = |agent: &mut Agent, variant: Option<&str>| match agent
            .handle(Command::Run(RunRequest {
                variant: variant.map(str::to_owned),
                warmup: 1,
                min_iters: 2,
                min_ms: 0,
                input_seed: DEFAULT_INPUT_SEED,
                max_ms: None,
            }))
            .unwrap()
        {
            Reply::Run(r) => r,
            other => panic!("{other:?}"),
        };
        let dense = run(&mut agent, None);
        assert_eq!((dense.variant.as_str(), dense.iterations), ("dense", 2));
        assert!(dense.outputs_consistent);
        assert!(dense.window_end_ns >= dense.window_start_ns + dense.latencies_ns.iter().sum::<u64>());

        let Reply::Switch(sw) = agent.handle(Command::Switch(SwitchRequest::hot("bp"))).unwrap() else { panic!() };
        assert_eq!((sw.previous.as_str(), sw.variant.as_str()), ("dense", "bp"));
        let bp = run(&mut agent, None);
        assert_eq!(bp.variant, "bp");
        assert_ne!(bp.checksum, dense.checksum, "pruned weights give a different output");
        assert_eq!(run(&mut agent, Some("dense")).checksum, dense.checksum, "same input, same output");

        let e = agent.handle(Command::Switch(SwitchRequest::hot("nope"))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnknownVariant);
        assert!(e.error.contains("nope"), "{}", e.error);

        let Reply::Selftest(st) =
            agent.handle(Command::Selftest(SelftestRequest { tokens: 2, input_seed: 1 })).unwrap()
        else {
            panic!()
        };
        assert!(st.passed, "{st:?}");
        assert_eq!(st.results.len(), 2);
    }
}
