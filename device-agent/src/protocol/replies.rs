//! Replies: the envelope, every command's reply and the error kinds.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

use super::*;

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
    /// The SIMD extensions the kernels can use (`neon`, `avx2`, `fma`, `avx512f` ...):
    /// detected at run time on x86-64 and aarch64; on 32-bit ARM (`arch` `arm`), those the build
    /// was compiled for, since the kernels select NEON at compile time there: `["neon"]` for a
    /// `thumbv7neon-*` build, `[]` for an `armv7-*` one even on a CPU with NEON. Always holds the
    /// features of the backend the kernels run ([`kernels::simd::Backend::best`]).
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
    /// CPU time the agent's threads used over the timed window, ns (`None`: not measured):
    /// divided by the window's length, the cores the inference kept busy on average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ns: Option<u64>,
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
