//! The agent's wire protocol: one JSON object per line, each way.
//!
//! The harness writes a [`Request`] line to the agent's stdin and reads one
//! [`Response`] line from its stdout, in order; the agent never writes
//! anything else to stdout. On the wire:
//!
//! ```text
//! -> {"id":7,"proto":1,"cmd":"run","variant":"pp75","warmup":3,"min_iters":50,"min_ms":2000}
//! <- {"ok":true,"id":7,"proto":1,"cmd":"run","variant":"pp75","iterations":61,...}
//! -> {"id":8,"cmd":"swtich","variant":"pp87"}
//! <- {"ok":false,"id":8,"proto":1,"kind":"unknown_command","error":"unknown command `swtich` ..."}
//! ```
//!
//! - Every request names its command in `"cmd"`; its parameters sit beside it
//!   in the same object. Requests are decoded strictly: an unknown parameter
//!   is an error (a typo in the harness must not silently fall back to a
//!   default), so the agent answers `bad_params` naming the field.
//! - `"id"` (optional, any JSON value, normally a counter) is echoed verbatim
//!   in the reply, so a reader that lost its place can tell replies apart.
//! - `"proto"` (optional) must equal [`PROTO_VERSION`] when present; a
//!   mismatch is refused with a message naming both versions. Every reply
//!   carries the agent's `"proto"`, which is how `hello` reports it.
//! - Every reply carries `"ok"`. Successful replies repeat `"cmd"` and add
//!   that command's fields ([`Reply`]); failures carry `"error"` (a readable
//!   message) and `"kind"` (an [`ErrorKind`] a program can branch on).
//!   Replies are decoded leniently (unknown fields ignored), so a harness keeps
//!   working with an agent that added fields within the same protocol version.
//! - Non-finite floats (a self-test error that is NaN) travel as `null`, since
//!   JSON has no NaN; readers turn `null` back into NaN.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;
use std::io::{self, BufRead};

/// Version of this protocol. Bump it on any change an older peer would
/// misread; adding an optional reply field does not need a bump.
pub const PROTO_VERSION: u32 = 1;

/// A `run` window ends after this many iterations even if `min_ms` has not
/// passed, bounding the reply (8-20 bytes per latency) and the agent's memory.
pub const MAX_WINDOW_ITERATIONS: u64 = 1_000_000;

/// Longest request line the agent accepts (1 MiB). Requests are small; the
/// bound keeps a runaway writer from growing the agent's memory without end.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// The command names, in the order `hello` lists them in errors.
pub const COMMANDS: [&str; 8] = ["hello", "load", "clock", "run", "switch", "selftest", "fidelity", "quit"];

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// One request line: the envelope (`id`, `proto`) and the command.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Echoed verbatim in the reply.
    pub id: Option<Value>,
    /// The protocol version the sender speaks; `None` skips the check.
    pub proto: Option<u32>,
    pub command: Command,
}

impl Request {
    /// A request for `command` that states [`PROTO_VERSION`] and carries no id.
    pub fn new(command: Command) -> Self {
        Self { id: None, proto: Some(PROTO_VERSION), command }
    }

    /// The same request with `id` attached.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<Value>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// What the agent is asked to do; serialised with its name in `"cmd"`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Identify the agent and the board.
    Hello,
    /// Build a model and its variants, replacing any loaded one.
    Load(LoadRequest),
    /// Read CLOCK_MONOTONIC; answered without any other work, for clock-offset estimation.
    Clock,
    /// Time a window of inferences.
    Run(RunRequest),
    /// Make another prepared variant the active one.
    Switch(SwitchRequest),
    /// Check the loaded variants against the scalar reference.
    Selftest(SelftestRequest),
    /// Compare every resident variant's output with the dense model's.
    Fidelity(FidelityRequest),
    /// Reply, then exit.
    Quit,
}

impl Command {
    /// The `"cmd"` string of this command.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Hello => "hello",
            Command::Load(_) => "load",
            Command::Clock => "clock",
            Command::Run(_) => "run",
            Command::Switch(_) => "switch",
            Command::Selftest(_) => "selftest",
            Command::Fidelity(_) => "fidelity",
            Command::Quit => "quit",
        }
    }
}

/// `load`: which model to build and which variants to prepare from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    pub model: ModelSpec,
    /// At least one; names must be unique. The first becomes the active variant.
    pub variants: Vec<VariantSpecWire>,
    /// How pattern sets are held: every one packed at load (`all_prepacked`, the default: a
    /// switch is a hot swap), or one at a time (`one_set`, as on a device that cannot hold them
    /// all: the others are kept as their pattern definitions and a switch packs the new one).
    #[serde(default, skip_serializing_if = "is_default_residency")]
    pub residency: ResidencyWire,
}

/// [`LoadRequest::residency`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidencyWire {
    #[default]
    AllPrepacked,
    OneSet,
}

fn is_default_residency(r: &ResidencyWire) -> bool {
    *r == ResidencyWire::AllPrepacked
}

/// Where the model's weights come from.
///
/// Synthetic weights: `{"preset":"distilbert","seed":1,"seq":128}`.
/// Real weights: `{"preset":"distilbert","safetensors":"/opt/hil/model.safetensors","seq":128}`,
/// where the preset names the architecture the file is read as.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `distilbert`, `minilm` or `rt3-transformer`.
    pub preset: String,
    /// Seed of the synthetic weights (ignored with `safetensors`).
    #[serde(default)]
    pub seed: u64,
    /// Sequence length (tokens per inference); the preset's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<usize>,
    /// Path on the board of a safetensors file with the preset's tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safetensors: Option<String>,
    /// Run the word language model's output projection onto its vocabulary as a linear layer,
    /// pruned like the others (`rt3-transformer`: 800 -> 33,278 words, most of the model's MACs);
    /// outputs are then logits. Only presets with a vocabulary have one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lm_head: bool,
}

/// One variant to prepare, tagged by `"kind"`.
///
/// ```text
/// {"kind":"dense","name":"dense"}
/// {"kind":"block","name":"bp64","sparsity":0.64,"block_rows":32,"block_cols":1}
/// {"kind":"pattern","name":"pp75","base":"bp64","tile":16,"patterns_per_set":4,"sparsity":0.75}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VariantSpecWire {
    /// The unpruned model.
    Dense { name: String },
    /// Block-structured pruning (BP) only.
    Block {
        name: String,
        /// Target fraction of zeros, in `[0, 1)`.
        sparsity: f64,
        /// Height of a block (a strip of rows).
        #[serde(default = "default_block_rows")]
        block_rows: usize,
        /// Width of the column segments removed inside a block.
        #[serde(default = "default_block_cols")]
        block_cols: usize,
        /// One ratio per linear layer, canonical order (`layer * 6 + slot`:
        /// query, key, value, attention output, FFN in, FFN out); overrides `sparsity`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        per_layer: Option<Vec<f64>>,
        /// `false`: every layer pruned to `sparsity`. `true`: one threshold over
        /// all layers, so `sparsity` holds overall and layers differ (RT3's BP model).
        #[serde(default, skip_serializing_if = "is_false")]
        global: bool,
    },
    /// A pattern set applied on top of a block variant's BP weights (BP zeros stay zero).
    Pattern {
        name: String,
        /// Name of a `block` variant listed earlier in the same request.
        base: String,
        /// Tile edge (square tiles): 8, 16, 32, RT3's 100 ...
        tile: usize,
        #[serde(default = "default_patterns_per_set")]
        patterns_per_set: usize,
        /// Target fraction of zeros per layer (BP and PP zeros together), in `[0, 1)`.
        sparsity: f64,
        /// How candidate patterns are derived from the weights.
        #[serde(default)]
        method: PatternMethod,
        /// Seeds the random tile choice of `rt3_tile_sums`.
        #[serde(default)]
        seed: u64,
    },
}

/// How a pattern variant's candidate patterns are derived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternMethod {
    /// RT3: sums of randomly chosen tiles, the smallest positions zeroed.
    #[default]
    Rt3TileSums,
    /// PatDNN: the most frequent per-tile top-k masks.
    FrequentTopK,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Defaults follow the BP-for-BERT setting RT3 builds on: strips of 32 rows, single columns.
fn default_block_rows() -> usize {
    32
}
fn default_block_cols() -> usize {
    1
}
/// RT3 keeps four patterns per layer per sparsity level.
fn default_patterns_per_set() -> usize {
    4
}

impl VariantSpecWire {
    pub fn name(&self) -> &str {
        match self {
            VariantSpecWire::Dense { name } => name,
            VariantSpecWire::Block { name, .. } => name,
            VariantSpecWire::Pattern { name, .. } => name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            VariantSpecWire::Dense { .. } => "dense",
            VariantSpecWire::Block { .. } => "block",
            VariantSpecWire::Pattern { .. } => "pattern",
        }
    }
}

/// `run`: one timed window.
///
/// The window holds at least `min_iters` inferences and lasts at least
/// `min_ms`; `warmup` inferences run before it and are not part of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Variant to run; the active one when absent. Naming a variant does not change the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default = "default_warmup")]
    pub warmup: u32,
    #[serde(default = "default_min_iters")]
    pub min_iters: u32,
    #[serde(default)]
    pub min_ms: u64,
    /// Seed of the random input (never zeros: zero inputs run faster on some ARM cores).
    #[serde(default = "default_input_seed")]
    pub input_seed: u64,
    /// Wall-time cap of the whole run (warm-up and window), in ms: the run
    /// stops at the first inference that ends past it, even before
    /// `min_iters` or `min_ms` are met, and says so in the reply
    /// (`time_capped`). The window always holds at least one inference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
}

fn default_warmup() -> u32 {
    3
}
fn default_min_iters() -> u32 {
    10
}
/// Input seed when the request names none: fixed, so checksums compare across runs.
pub const DEFAULT_INPUT_SEED: u64 = 0x5eed;
fn default_input_seed() -> u64 {
    DEFAULT_INPUT_SEED
}

impl Default for RunRequest {
    fn default() -> Self {
        Self {
            variant: None,
            warmup: default_warmup(),
            min_iters: default_min_iters(),
            min_ms: 0,
            input_seed: DEFAULT_INPUT_SEED,
            max_ms: None,
        }
    }
}

/// `switch`: make `variant` the active one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    pub variant: String,
    /// `hot` (default): make a resident variant active. `cold`: put a pattern set into effect from
    /// its definitions (assignment and packing), as a device holding one set at a time must.
    #[serde(default, skip_serializing_if = "is_hot")]
    pub mode: SwitchMode,
    /// After the switch, time this many inferences of the new variant (the first shows the
    /// switch's penalty: cold caches, pages touched for the first time); 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub probe: u32,
    #[serde(default = "default_input_seed", skip_serializing_if = "is_default_seed")]
    pub input_seed: u64,
}

impl SwitchRequest {
    /// A hot switch to `variant` with no probe.
    pub fn hot(variant: impl Into<String>) -> Self {
        Self { variant: variant.into(), mode: SwitchMode::Hot, probe: 0, input_seed: DEFAULT_INPUT_SEED }
    }
}

/// [`SwitchRequest::mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchMode {
    #[default]
    Hot,
    Cold,
}

fn is_hot(m: &SwitchMode) -> bool {
    *m == SwitchMode::Hot
}

fn is_default_seed(seed: &u64) -> bool {
    *seed == DEFAULT_INPUT_SEED
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Most inferences a switch probe may time.
pub const MAX_SWITCH_PROBE: u32 = 1000;

/// `fidelity`: every resident variant's final hidden states against the dense model's, over
/// `inputs` seeded inputs (seeds `input_seed`, `input_seed + 1`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidelityRequest {
    #[serde(default = "default_fidelity_inputs")]
    pub inputs: u32,
    #[serde(default = "default_input_seed")]
    pub input_seed: u64,
}

/// Inputs a fidelity check uses when the request names no count.
pub const DEFAULT_FIDELITY_INPUTS: u32 = 4;
/// Most inputs a fidelity check may use.
pub const MAX_FIDELITY_INPUTS: u32 = 256;
fn default_fidelity_inputs() -> u32 {
    DEFAULT_FIDELITY_INPUTS
}

impl Default for FidelityRequest {
    fn default() -> Self {
        Self { inputs: DEFAULT_FIDELITY_INPUTS, input_seed: DEFAULT_INPUT_SEED }
    }
}

/// `selftest`: every loaded variant against the scalar reference.
///
/// The `f64` reference is slow on a small board, so the check runs on a few
/// tokens of a seeded random input, not the full sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelftestRequest {
    #[serde(default = "default_selftest_tokens")]
    pub tokens: usize,
    #[serde(default = "default_input_seed")]
    pub input_seed: u64,
}

/// Tokens a self-test checks when the request names no count.
pub const DEFAULT_SELFTEST_TOKENS: usize = 4;
fn default_selftest_tokens() -> usize {
    DEFAULT_SELFTEST_TOKENS
}

impl Default for SelftestRequest {
    fn default() -> Self {
        Self { tokens: DEFAULT_SELFTEST_TOKENS, input_seed: DEFAULT_INPUT_SEED }
    }
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// One reply line: the echoed id, the agent's protocol version, and either a
/// reply or an error.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub id: Option<Value>,
    /// The protocol version the agent speaks.
    pub proto: u32,
    pub outcome: Result<Reply, ErrorReply>,
}

impl Response {
    pub fn ok(id: Option<Value>, reply: Reply) -> Self {
        Self { id, proto: PROTO_VERSION, outcome: Ok(reply) }
    }

    pub fn error(id: Option<Value>, error: ErrorReply) -> Self {
        Self { id, proto: PROTO_VERSION, outcome: Err(error) }
    }

    /// The reply body of type `T`, or why there is none: the agent refused
    /// (its message and kind), or it answered a different command.
    pub fn expect<T: ReplyBody>(self) -> Result<T, ReplyError> {
        let reply = self.outcome.map_err(ReplyError::Refused)?;
        let got = reply.name();
        T::from_reply(reply).ok_or(ReplyError::Unexpected { expected: T::CMD, got })
    }
}

/// Why [`Response::expect`] found no reply of the expected type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplyError {
    #[error("agent refused: {0}")]
    Refused(ErrorReply),
    #[error("expected a `{expected}` reply, got `{got}`")]
    Unexpected { expected: &'static str, got: &'static str },
}

/// A successful reply, serialised with its command in `"cmd"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Reply {
    Hello(HelloReply),
    Load(LoadReply),
    Clock(ClockReply),
    Run(RunReply),
    Switch(SwitchReply),
    Selftest(SelftestReply),
    Fidelity(FidelityReply),
    Quit,
}

impl Reply {
    pub fn name(&self) -> &'static str {
        match self {
            Reply::Hello(_) => "hello",
            Reply::Load(_) => "load",
            Reply::Clock(_) => "clock",
            Reply::Run(_) => "run",
            Reply::Switch(_) => "switch",
            Reply::Selftest(_) => "selftest",
            Reply::Fidelity(_) => "fidelity",
            Reply::Quit => "quit",
        }
    }
}

/// A reply body type, for [`Response::expect`].
pub trait ReplyBody: Sized {
    /// The command this body answers.
    const CMD: &'static str;
    fn from_reply(reply: Reply) -> Option<Self>;
}

macro_rules! reply_body {
    ($ty:ty, $variant:ident, $cmd:literal) => {
        impl ReplyBody for $ty {
            const CMD: &'static str = $cmd;
            fn from_reply(reply: Reply) -> Option<Self> {
                match reply {
                    Reply::$variant(body) => Some(body),
                    _ => None,
                }
            }
        }
    };
}
reply_body!(HelloReply, Hello, "hello");
reply_body!(LoadReply, Load, "load");
reply_body!(ClockReply, Clock, "clock");
reply_body!(RunReply, Run, "run");
reply_body!(SwitchReply, Switch, "switch");
reply_body!(SelftestReply, Selftest, "selftest");
reply_body!(FidelityReply, Fidelity, "fidelity");

/// `quit` has no body; `expect::<QuitReply>()` checks the agent acknowledged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuitReply;

impl ReplyBody for QuitReply {
    const CMD: &'static str = "quit";
    fn from_reply(reply: Reply) -> Option<Self> {
        matches!(reply, Reply::Quit).then_some(QuitReply)
    }
}

/// `hello`: who the agent is and what it runs on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    /// Always `hil-agent`.
    pub agent: String,
    pub agent_version: String,
    /// `std::env::consts::ARCH` of the build: `aarch64`, `x86_64` ...
    pub arch: String,
    /// Instruction-set extensions detected at run time (`neon`, `avx2`, `fma`, `avx512f` ...).
    pub simd: Vec<String>,
    /// From `/proc/cpuinfo`: `model name`, or on ARM the cores decoded from
    /// `CPU implementer`/`CPU part` (e.g. `4x Cortex-A55 + 4x Cortex-A76`).
    pub cpu_model: String,
    /// The board's `Model`/`Hardware` line from `/proc/cpuinfo` (ARM boards), if any.
    #[serde(default)]
    pub board_model: Option<String>,
    /// Online CPUs.
    pub cores: usize,
    /// CPUs this agent may run on (its affinity mask).
    pub allowed_cpus: Vec<usize>,
    /// Threads each inference may use (`--threads`).
    pub threads: usize,
    pub kernel: KernelInfo,
    #[serde(default)]
    pub mem_total_bytes: Option<u64>,
    #[serde(default)]
    pub mem_available_bytes: Option<u64>,
    /// Present only on a board simulated by hil: every timed inference is stretched by
    /// `max_khz / cur_khz` of the simulator's fake cpufreq tree (see `hil-agent --sim-sysfs-root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim_stretch: Option<SimStretchWire>,
}

/// `hello`'s account of the simulated speed: where the factor comes from and what it is now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimStretchWire {
    /// The simulator's fake sysfs root (holds its marker `hil-simulated.json`).
    pub sysfs_root: String,
    /// The cpufreq policy directory read.
    pub policy: String,
    /// The CPU the policy was chosen for (the agent's first allowed CPU).
    pub cpu: usize,
    pub max_khz: u64,
    pub cur_khz: u64,
    /// `max_khz / cur_khz` at the time of the reply.
    pub factor_now: f64,
}

/// The running kernel, from `uname(2)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// `Linux`.
    pub sysname: String,
    /// E.g. `6.1.0-21-arm64`.
    pub release: String,
    /// Build string, e.g. `#1 SMP PREEMPT Debian 6.1.90-1 (2024-05-03)`.
    pub version: String,
    /// The kernel's machine name (`aarch64`, `x86_64`); can differ from `arch` under emulation.
    pub machine: String,
    pub nodename: String,
}

/// `load`: what was built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadReply {
    pub model: ModelInfo,
    /// How pattern sets are held, and what each strategy costs for these variants.
    #[serde(default)]
    pub residency: ResidencyWire,
    #[serde(default)]
    pub resident_bytes: Option<u64>,
    #[serde(default)]
    pub resident_bytes_all_prepacked: Option<u64>,
    #[serde(default)]
    pub resident_bytes_one_set: Option<u64>,
    /// In request order.
    pub variants: Vec<VariantReport>,
    /// The active variant after loading (the first listed).
    pub active: String,
    /// The estimate checked against available memory before building.
    pub estimated_bytes: u64,
    /// `MemAvailable` before building, when the board reports it.
    #[serde(default)]
    pub mem_available_bytes: Option<u64>,
    /// Wall time of the whole load, weights and every variant.
    pub load_ns: u64,
}

/// The model's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub preset: String,
    /// `synthetic` or `safetensors`.
    pub source: String,
    #[serde(default)]
    pub path: Option<String>,
    pub seed: u64,
    pub seq: usize,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub ffn: usize,
    /// Words of the token embedding (`rt3-transformer`: 33,278), `None` for a model fed activations.
    #[serde(default)]
    pub vocab: Option<usize>,
    /// Whether the output projection onto the vocabulary runs as a (prunable) linear layer.
    #[serde(default)]
    pub lm_head: bool,
    /// Every parameter (linear weights, biases, norms, the token embedding).
    #[serde(default)]
    pub parameters: u64,
    /// Multiply-accumulates of one dense inference of `seq` tokens (linear layers and attention).
    #[serde(default)]
    pub macs: u64,
}

/// One prepared variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantReport {
    pub name: String,
    /// `dense`, `block` or `pattern`.
    pub kind: String,
    /// The block variant a pattern variant was built on.
    #[serde(default)]
    pub base: Option<String>,
    /// Achieved fraction of the linear layers' weights not computed (BP and
    /// PP zeros together): `1 - nnz / dense_weights`.
    pub sparsity: f64,
    /// Non-zero weights stored.
    pub nnz: u64,
    /// Weights multiplied per token, explicit zeros included (absent from
    /// older agents: read as 0). A pattern set on a BP base multiplies
    /// exactly its kept weights, so this equals `nnz` there.
    #[serde(default)]
    pub multiplied: u64,
    /// Bytes of packed weights and index data.
    pub bytes: u64,
    /// Weights of the dense linear layers.
    pub dense_weights: u64,
    /// Time to build this variant from the loaded weights: pruning, pattern-set generation, packing.
    pub prepare_ns: u64,
    /// Part of `prepare_ns` spent generating pattern sets from the BP weights (pattern variants).
    #[serde(default)]
    pub pattern_generation_ns: Option<u64>,
}

/// `clock`: the board's CLOCK_MONOTONIC when the request was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReply {
    pub mono_ns: u64,
}

/// `run`: one timed window, timestamps on the board's CLOCK_MONOTONIC.
///
/// `window_start_ns` is taken after the warm-up, immediately before the first
/// timed inference; `window_end_ns` immediately after the last one. Each
/// latency covers one forward pass only; computing the checksum of its
/// output happens between passes, inside the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReply {
    pub variant: String,
    pub warmup: u32,
    pub iterations: u64,
    pub window_start_ns: u64,
    pub window_end_ns: u64,
    pub latencies_ns: Vec<u64>,
    /// Checksum of the output (the same input every iteration): 64-bit
    /// FNV-1a over the output's shape and `f32` bits, as 16 hex digits (a
    /// string, because JSON readers often hold numbers as doubles and would
    /// round a u64).
    pub checksum: String,
    /// Whether every timed iteration produced the same checksum.
    pub outputs_consistent: bool,
    /// True when the window ended at [`MAX_WINDOW_ITERATIONS`] or at the
    /// request's `max_ms` before `min_ms` had passed.
    #[serde(default)]
    pub capped: bool,
    /// True when the run stopped at the request's `max_ms` wall-time cap
    /// (possibly before `min_iters`); `note` then says where.
    #[serde(default)]
    pub time_capped: bool,
    /// Why a run stopped early, in words, e.g. `stopped at the 500 ms
    /// wall-time cap after 3 of 10 iterations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub input_seed: u64,
    pub threads: usize,
    /// On a board simulated by hil: the mean factor the window's inferences were stretched by
    /// (`f_max / f` of the simulated clock); `None` on real hardware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim_stretch_factor: Option<f64>,
}

impl RunReply {
    /// Length of the timed window.
    pub fn window_ns(&self) -> u64 {
        self.window_end_ns.saturating_sub(self.window_start_ns)
    }
}

/// `switch`: the measured cost of changing the active variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchReply {
    pub variant: String,
    pub previous: String,
    pub switch_ns: u64,
    #[serde(default)]
    pub mode: SwitchMode,
    /// The probe's inferences after the switch, ns (the first one first).
    #[serde(default)]
    pub probe_ns: Vec<u64>,
    /// Bytes the model holds after the switch.
    #[serde(default)]
    pub resident_bytes: Option<u64>,
}

/// `fidelity`: how far each variant's output is from the dense model's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidelityReply {
    /// `perturbation (synthetic weights)` or `checkpoint`: with synthetic weights the figures
    /// measure how far pruning moves the output, not task accuracy.
    pub kind: String,
    pub inputs: u32,
    pub input_seed: u64,
    pub results: Vec<FidelityResult>,
}

/// One variant's final hidden states against the dense model's, over all the inputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidelityResult {
    pub variant: String,
    /// Cosine similarity of the flattened outputs (1: same direction).
    #[serde(with = "nan_as_null")]
    pub cosine: f64,
    /// `||y - y_dense|| / ||y_dense||`.
    #[serde(with = "nan_as_null")]
    pub rel_l2: f64,
}

/// `selftest`: each checked variant against the scalar reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelftestReply {
    /// True when every result passed.
    pub passed: bool,
    /// Tokens of the input checked.
    pub tokens: usize,
    pub results: Vec<SelftestResult>,
}

/// One variant's whole-model forward pass against the `f64` reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelftestResult {
    pub variant: String,
    #[serde(with = "nan_as_null")]
    pub max_abs_err: f64,
    #[serde(with = "nan_as_null")]
    pub max_rel_err: f64,
    /// Where the largest error relative to its tolerance was: a linear layer (`layer.1.ffn_in`) or `forward`.
    pub worst: String,
    /// Linear layers checked plus the full forward.
    pub checks: usize,
    pub passed: bool,
}

/// A refusal: why the agent did not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The command refused, when the request got far enough to name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    pub kind: ErrorKind,
    pub error: String,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cmd {
            Some(cmd) => write!(f, "{cmd}: {} ({})", self.error, self.kind.as_str()),
            None => write!(f, "{} ({})", self.error, self.kind.as_str()),
        }
    }
}

impl std::error::Error for ErrorReply {}

/// What class of failure a refusal is, so a harness can decide to retry,
/// fix its request or give up without parsing messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not a JSON object, not UTF-8, or longer than [`MAX_REQUEST_BYTES`].
    Malformed,
    /// `"cmd"` missing or not one of [`COMMANDS`].
    UnknownCommand,
    /// `"proto"` is not [`PROTO_VERSION`].
    ProtoMismatch,
    /// A parameter is missing, of the wrong type, out of range, or unknown.
    BadParams,
    /// `run`, `switch` or `selftest` before a successful `load`.
    NotLoaded,
    /// The named variant is not loaded.
    UnknownVariant,
    /// The model would not fit in the board's available memory.
    OutOfMemory,
    /// Building the model failed (unreadable file, wrong tensor shapes ...).
    Model,
    /// A self-inflicted failure of the agent.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Malformed => "malformed",
            ErrorKind::UnknownCommand => "unknown_command",
            ErrorKind::ProtoMismatch => "proto_mismatch",
            ErrorKind::BadParams => "bad_params",
            ErrorKind::NotLoaded => "not_loaded",
            ErrorKind::UnknownVariant => "unknown_variant",
            ErrorKind::OutOfMemory => "out_of_memory",
            ErrorKind::Model => "model",
            ErrorKind::Internal => "internal",
        }
    }
}

/// serde_json writes NaN and infinities as `null`; read `null` back as NaN so
/// a non-finite self-test error still decodes (and still fails).
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

// ---------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------

/// A request line the agent could not accept, with whatever it could read
/// of the envelope so the error reply still echoes the id.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestError {
    pub id: Option<Value>,
    pub error: ErrorReply,
}

impl RequestError {
    fn new(id: Option<Value>, cmd: Option<&str>, kind: ErrorKind, message: String) -> Self {
        Self { id, error: ErrorReply { cmd: cmd.map(str::to_owned), kind, error: message } }
    }

    /// The reply the agent sends for this error.
    pub fn into_response(self) -> Response {
        Response::error(self.id, self.error)
    }
}

/// Decodes one request line (without or with its trailing newline).
///
/// Checks in this order, so each error names the first problem: JSON
/// syntax, an object, `id` (read first so every later error echoes it),
/// `proto`, `cmd`, then the command's parameters.
pub fn decode_request(line: &[u8]) -> Result<Request, RequestError> {
    let text = std::str::from_utf8(line)
        .map_err(|e| RequestError::new(None, None, ErrorKind::Malformed, format!("request is not UTF-8 ({e})")))?;
    let value: Value = serde_json::from_str(text.trim()).map_err(|e| {
        RequestError::new(
            None,
            None,
            ErrorKind::Malformed,
            format!("request is not valid JSON: {e}: {}", preview(text)),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(RequestError::new(
            None,
            None,
            ErrorKind::Malformed,
            format!("request must be a JSON object with \"cmd\", got {}", json_type(&value)),
        ));
    };
    let id = map.remove("id");
    let proto = match map.remove("proto") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|p| u32::try_from(p).ok()) {
            Some(p) => Some(p),
            None => {
                return Err(RequestError::new(
                    id,
                    None,
                    ErrorKind::BadParams,
                    format!("\"proto\" must be a non-negative integer, got {v}"),
                ))
            }
        },
    };
    let cmd = match map.remove("cmd") {
        Some(Value::String(cmd)) => cmd,
        Some(other) => {
            return Err(RequestError::new(
                id,
                None,
                ErrorKind::UnknownCommand,
                format!("\"cmd\" must be a string, got {other}"),
            ))
        }
        None => {
            return Err(RequestError::new(
                id,
                None,
                ErrorKind::UnknownCommand,
                format!("request has no \"cmd\" (one of {})", COMMANDS.join(", ")),
            ))
        }
    };
    if let Some(p) = proto {
        if p != PROTO_VERSION {
            return Err(RequestError::new(
                id,
                Some(&cmd),
                ErrorKind::ProtoMismatch,
                format!("protocol version mismatch: request speaks proto {p}, this agent speaks proto {PROTO_VERSION}"),
            ));
        }
    }
    match command_from_params(&cmd, map) {
        Ok(command) => Ok(Request { id, proto, command }),
        Err((kind, message)) => Err(RequestError::new(id, Some(&cmd), kind, message)),
    }
}

fn command_from_params(cmd: &str, params: Map<String, Value>) -> Result<Command, (ErrorKind, String)> {
    fn parse<T: DeserializeOwned>(cmd: &str, params: Map<String, Value>) -> Result<T, (ErrorKind, String)> {
        serde_json::from_value(Value::Object(params))
            .map_err(|e| (ErrorKind::BadParams, format!("bad parameters for `{cmd}`: {e}")))
    }
    fn none(cmd: &str, params: Map<String, Value>) -> Result<(), (ErrorKind, String)> {
        match params.keys().next() {
            None => Ok(()),
            Some(key) => {
                Err((ErrorKind::BadParams, format!("bad parameters for `{cmd}`: unknown field `{key}`, it takes none")))
            }
        }
    }
    Ok(match cmd {
        "hello" => none(cmd, params).map(|()| Command::Hello)?,
        "load" => Command::Load(parse(cmd, params)?),
        "clock" => none(cmd, params).map(|()| Command::Clock)?,
        "run" => Command::Run(parse(cmd, params)?),
        "switch" => Command::Switch(parse(cmd, params)?),
        "selftest" => Command::Selftest(parse(cmd, params)?),
        "fidelity" => Command::Fidelity(parse(cmd, params)?),
        "quit" => none(cmd, params).map(|()| Command::Quit)?,
        other => {
            return Err((
                ErrorKind::UnknownCommand,
                format!("unknown command `{other}` (known: {})", COMMANDS.join(", ")),
            ))
        }
    })
}

/// Decodes one reply line.
pub fn decode_response(line: &[u8]) -> Result<Response, DecodeError> {
    let value: Value = serde_json::from_slice(trim_ascii(line))
        .map_err(|e| DecodeError::Json { message: e.to_string(), line: preview(&String::from_utf8_lossy(line)) })?;
    serde_json::from_value(value).map_err(|e| DecodeError::Shape { message: e.to_string() })
}

/// A reply line that is not a valid [`Response`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("agent reply is not valid JSON ({message}): {line}")]
    Json { message: String, line: String },
    #[error("agent reply does not match protocol {PROTO_VERSION}: {message}")]
    Shape { message: String },
}

/// Serialises `message` as one protocol line, newline included. serde_json's
/// compact form never contains a raw newline (they are escaped in strings),
/// so one value is always exactly one line.
pub fn encode_line<T: Serialize + ?Sized>(message: &T) -> Vec<u8> {
    // Our types hold only string-keyed maps and plain values: serialisation cannot fail.
    let mut out = serde_json::to_vec(message).expect("protocol messages always serialise");
    out.push(b'\n');
    out
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let body = serde_json::to_value(&self.command).map_err(S::Error::custom)?;
        let Value::Object(body) = body else { return Err(S::Error::custom("command did not serialise to an object")) };
        let mut map = s.serialize_map(None)?;
        if let Some(id) = &self.id {
            map.serialize_entry("id", id)?;
        }
        if let Some(proto) = self.proto {
            map.serialize_entry("proto", &proto)?;
        }
        map.serialize_entry("cmd", self.command.name())?;
        for (k, v) in body.iter().filter(|(k, _)| k.as_str() != "cmd") {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let bytes = serde_json::to_vec(&value).map_err(serde::de::Error::custom)?;
        decode_request(&bytes).map_err(|e| serde::de::Error::custom(e.error))
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("ok", &self.outcome.is_ok())?;
        if let Some(id) = &self.id {
            map.serialize_entry("id", id)?;
        }
        map.serialize_entry("proto", &self.proto)?;
        match &self.outcome {
            Ok(reply) => {
                let Value::Object(body) = serde_json::to_value(reply).map_err(S::Error::custom)? else {
                    return Err(S::Error::custom("reply did not serialise to an object"));
                };
                map.serialize_entry("cmd", reply.name())?;
                for (k, v) in body.iter().filter(|(k, _)| k.as_str() != "cmd") {
                    map.serialize_entry(k, v)?;
                }
            }
            Err(error) => {
                if let Some(cmd) = &error.cmd {
                    map.serialize_entry("cmd", cmd)?;
                }
                map.serialize_entry("kind", &error.kind)?;
                map.serialize_entry("error", &error.error)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let Value::Object(mut map) = Value::deserialize(d)? else {
            return Err(D::Error::custom("reply must be a JSON object"));
        };
        let ok = match map.remove("ok") {
            Some(Value::Bool(ok)) => ok,
            Some(other) => return Err(D::Error::custom(format!("\"ok\" must be a boolean, got {other}"))),
            None => return Err(D::Error::custom("reply has no \"ok\"")),
        };
        let id = map.remove("id");
        let proto = match map.remove("proto") {
            Some(v) => v
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| D::Error::custom(format!("\"proto\" must be a non-negative integer, got {v}")))?,
            None => return Err(D::Error::custom("reply has no \"proto\"")),
        };
        let outcome = if ok {
            Ok(Reply::deserialize(Value::Object(map)).map_err(D::Error::custom)?)
        } else {
            Err(ErrorReply::deserialize(Value::Object(map)).map_err(D::Error::custom)?)
        };
        Ok(Response { id, proto, outcome })
    }
}

/// Outcome of [`read_request_line`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line is in the buffer (newline stripped); the last line of a stream may lack its newline.
    Line,
    /// The line was longer than the limit; it was consumed and discarded. Holds its length.
    TooLong(usize),
    /// End of input, nothing read.
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (cleared first), keeping at
/// most `max` bytes; a longer line is consumed to its end and reported as
/// [`LineRead::TooLong`], so the next read starts at the next request.
pub fn read_request_line<R: BufRead>(input: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<LineRead> {
    buf.clear();
    let mut total = 0usize;
    let mut saw_any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(match (saw_any, total > max) {
                (false, _) => LineRead::Eof,
                (true, true) => LineRead::TooLong(total),
                (true, false) => LineRead::Line,
            });
        }
        saw_any = true;
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        total += chunk.len();
        if total <= max {
            buf.extend_from_slice(chunk);
        } else {
            buf.clear();
        }
        let consumed = done.unwrap_or(chunk.len());
        input.consume(consumed);
        if done.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if total > max { LineRead::TooLong(total) } else { LineRead::Line });
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

/// The start of a bad line, for error messages (never the whole of a huge line).
fn preview(text: &str) -> String {
    const MAX: usize = 80;
    let t = text.trim();
    match t.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &t[..cut]),
        None => format!("{t:?}"),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
