//! Requests: the envelope and every command's parameters.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;

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
