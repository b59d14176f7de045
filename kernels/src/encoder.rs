//! A post-LN Transformer encoder in the BERT / DistilBERT layout, built on any
//! [`LinearKernel`].
//!
//! One layer, for activations `x` (`tokens x d_model`):
//!
//! ```text
//! q, k, v = x·Wqᵀ + bq, x·Wkᵀ + bk, x·Wvᵀ + bv
//! ctx     = concat over heads of softmax(q_h·k_hᵀ / sqrt(d_head)) · v_h
//! x       = LayerNorm(x + ctx·Woᵀ + bo)                 (post-LN, as BERT)
//! x       = LayerNorm(x + GELU(x·W1ᵀ + b1)·W2ᵀ + b2)
//! ```
//!
//! How the types fit:
//! - [`EncoderConfig`] (dimensions) and [`Preset`] (the named models).
//! - [`EncoderWeights`]: dense weights, synthetic from a seed
//!   ([`EncoderWeights::random`]) or read from a BERT/DistilBERT safetensors
//!   file ([`EncoderWeights::from_safetensors`]).
//! - [`SharedParams`]: biases and layer norms. Every variant of a model runs
//!   with the same ones, so they are built once and shared through an `Arc`.
//! - [`Encoder`]: shared params plus one packed kernel per linear layer (six
//!   per encoder layer, in [`LinearSlot`] order); [`Encoder::forward`] runs it,
//!   [`Encoder::reference_forward`] is the scalar `f64` oracle.
//!
//! There are no embeddings and no attention mask: the input is already a
//! `tokens x d_model` activation (see `model::random_input`) and every token
//! attends to every other, which is what a fixed-length benchmark needs.
//!
//! Determinism: synthetic weights use integer-only random numbers and
//! correctly rounded `f32` operations, so they are bit-identical on x86-64 and
//! aarch64. Forward outputs are deterministic run to run on one machine, but
//! not bit-identical across architectures (GEMM micro-kernels sum in different
//! orders and use FMA), which is why tests compare against the reference with
//! a tolerance and pin bits only of weights.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::linear::dense::DenseLinear;
use crate::linear::{LinearKernel, Threads};
use crate::matrix::{Matrix, SeededUniform};
use crate::reference;

/// Layer-norm epsilon of BERT and DistilBERT (`layer_norm_eps` / `eps=1e-12`
/// in their Hugging Face configs).
pub const LAYER_NORM_EPS: f32 = 1e-12;

/// Linear layers per encoder layer: Q, K, V, attention output, FFN in, FFN out.
pub const LINEARS_PER_LAYER: usize = 6;

// ---------------------------------------------------------------------------
// Configuration and presets
// ---------------------------------------------------------------------------

/// Dimensions of an encoder. `seq_len` is the default number of tokens of an
/// input (benchmarks use it); [`Encoder::forward`] accepts any token count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct EncoderConfig {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub ffn: usize,
    pub seq_len: usize,
}

/// An encoder configuration that cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("encoder config: `{field}` must be at least 1, got 0")]
    Zero { field: &'static str },
    #[error("encoder config: d_model {d_model} is not divisible by heads {heads}")]
    HeadsDoNotDivide { d_model: usize, heads: usize },
}

impl EncoderConfig {
    /// Checks every dimension is positive and the heads split `d_model` evenly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("layers", self.layers),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("ffn", self.ffn),
            ("seq_len", self.seq_len),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(ConfigError::HeadsDoNotDivide { d_model: self.d_model, heads: self.heads });
        }
        Ok(())
    }

    /// The same model with inputs of `seq_len` tokens.
    #[must_use]
    pub fn with_seq_len(mut self, seq_len: usize) -> Self {
        self.seq_len = seq_len;
        self
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads.max(1)
    }

    /// Number of linear layers (six per encoder layer).
    pub fn linear_count(&self) -> usize {
        self.layers * LINEARS_PER_LAYER
    }

    /// `(out_features, in_features)` of a linear layer.
    pub fn linear_shape(&self, slot: LinearSlot) -> (usize, usize) {
        match slot {
            LinearSlot::Query | LinearSlot::Key | LinearSlot::Value | LinearSlot::AttentionOutput => {
                (self.d_model, self.d_model)
            }
            LinearSlot::FfnIn => (self.ffn, self.d_model),
            LinearSlot::FfnOut => (self.d_model, self.ffn),
        }
    }

    /// Every linear layer in canonical order (layer-major, then [`LinearSlot::ALL`]).
    pub fn linear_ids(&self) -> impl Iterator<Item = LinearId> {
        (0..self.layers).flat_map(|layer| LinearSlot::ALL.into_iter().map(move |slot| LinearId { layer, slot }))
    }

    /// Weights in all linear layers (what pruning acts on).
    pub fn linear_weight_count(&self) -> usize {
        LinearSlot::ALL.iter().map(|s| self.linear_shape(*s)).map(|(o, i)| o * i).sum::<usize>() * self.layers
    }

    /// Every parameter: linear weights, biases and layer norms.
    pub fn parameter_count(&self) -> usize {
        let biases: usize = LinearSlot::ALL.iter().map(|s| self.linear_shape(*s).0).sum();
        self.linear_weight_count() + self.layers * (biases + 4 * self.d_model)
    }
}

/// The named models of the experiments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Preset {
    /// DistilBERT-base: 6 layers, d=768, 12 heads, FFN 3072, 128 tokens.
    #[cfg_attr(feature = "serde", serde(rename = "distilbert"))]
    DistilBert,
    /// MiniLM-L6 (e.g. all-MiniLM-L6-v2): 6 layers, d=384, 12 heads, FFN 1536, 128 tokens.
    #[cfg_attr(feature = "serde", serde(rename = "minilm"))]
    MiniLm,
    /// The model in RT3's code, the PyTorch-tutorial Transformer language model
    /// on WikiText-2: 2 layers, d=800, 4 heads, FFN 200, sequence 35.
    #[cfg_attr(feature = "serde", serde(rename = "rt3-transformer"))]
    Rt3Transformer,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::DistilBert, Preset::MiniLm, Preset::Rt3Transformer];

    /// The name used in scenarios, the agent protocol and reports.
    pub fn name(self) -> &'static str {
        match self {
            Preset::DistilBert => "distilbert",
            Preset::MiniLm => "minilm",
            Preset::Rt3Transformer => "rt3-transformer",
        }
    }

    pub fn config(self) -> EncoderConfig {
        match self {
            Preset::DistilBert => EncoderConfig { layers: 6, d_model: 768, heads: 12, ffn: 3072, seq_len: 128 },
            Preset::MiniLm => EncoderConfig { layers: 6, d_model: 384, heads: 12, ffn: 1536, seq_len: 128 },
            Preset::Rt3Transformer => EncoderConfig { layers: 2, d_model: 800, heads: 4, ffn: 200, seq_len: 35 },
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A preset name that is not one of [`Preset::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown model preset `{0}` (known: distilbert, minilm, rt3-transformer)")]
pub struct UnknownPreset(pub String);

impl FromStr for Preset {
    type Err = UnknownPreset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| UnknownPreset(s.to_string()))
    }
}

/// Which of the six linear layers of an encoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum LinearSlot {
    Query,
    Key,
    Value,
    AttentionOutput,
    FfnIn,
    FfnOut,
}

impl LinearSlot {
    /// Canonical order inside a layer.
    pub const ALL: [LinearSlot; LINEARS_PER_LAYER] = [
        LinearSlot::Query,
        LinearSlot::Key,
        LinearSlot::Value,
        LinearSlot::AttentionOutput,
        LinearSlot::FfnIn,
        LinearSlot::FfnOut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LinearSlot::Query => "query",
            LinearSlot::Key => "key",
            LinearSlot::Value => "value",
            LinearSlot::AttentionOutput => "attention_output",
            LinearSlot::FfnIn => "ffn_in",
            LinearSlot::FfnOut => "ffn_out",
        }
    }

    fn position(self) -> usize {
        self as usize
    }
}

/// One linear layer of the encoder: which encoder layer and which slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LinearId {
    pub layer: usize,
    pub slot: LinearSlot,
}

impl LinearId {
    /// Position in canonical order: `layer * 6 + slot`. Per-layer sparsity
    /// lists and [`Encoder::linears`] are indexed by it.
    pub fn index(self) -> usize {
        self.layer * LINEARS_PER_LAYER + self.slot.position()
    }

    pub fn from_index(index: usize) -> Self {
        LinearId { layer: index / LINEARS_PER_LAYER, slot: LinearSlot::ALL[index % LINEARS_PER_LAYER] }
    }
}

impl fmt::Display for LinearId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layer.{}.{}", self.layer, self.slot.name())
    }
}

// ---------------------------------------------------------------------------
// Dense weights
// ---------------------------------------------------------------------------

/// A linear layer's dense weights (`out x in`, as PyTorch stores them) and bias.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearWeights {
    pub weight: Matrix,
    pub bias: Vec<f32>,
}

/// Layer-norm scale (`gamma`, PyTorch `weight`) and shift (`beta`, `bias`).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormWeights {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// The weights of one encoder layer.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderLayerWeights {
    /// In [`LinearSlot::ALL`] order.
    pub linears: [LinearWeights; LINEARS_PER_LAYER],
    /// After attention (DistilBERT `sa_layer_norm`, BERT `attention.output.LayerNorm`).
    pub attention_norm: LayerNormWeights,
    /// After the feed-forward (DistilBERT `output_layer_norm`, BERT `output.LayerNorm`).
    pub output_norm: LayerNormWeights,
}

impl EncoderLayerWeights {
    pub fn linear(&self, slot: LinearSlot) -> &LinearWeights {
        &self.linears[slot.position()]
    }
}

/// Dense weights of a whole encoder, shape-checked against its config.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderWeights {
    config: EncoderConfig,
    layers: Vec<EncoderLayerWeights>,
}

/// Weights that cannot be used: unreadable file, missing tensor, bad shape or dtype.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read safetensors file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a valid safetensors file: {message}")]
    Format { file: String, message: String },
    #[error(
        "{file}: no encoder layers found: expected a tensor named like \
         `distilbert.transformer.layer.0.attention.q_lin.weight` (DistilBERT) or \
         `bert.encoder.layer.0.attention.self.query.weight` (BERT), with or without the model prefix"
    )]
    NoEncoderLayers { file: String },
    #[error("{file}: missing tensor `{name}` ({naming} naming, {layers} layers found)")]
    MissingTensor { file: String, name: String, naming: &'static str, layers: usize },
    #[error("{file}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape { file: String, name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("{file}: tensor `{name}` has dtype {dtype}; supported: F32, F16, BF16, F64")]
    Dtype { file: String, name: String, dtype: String },
    #[error("{file}: {source}")]
    Config {
        file: String,
        #[source]
        source: ConfigError,
    },
}

/// SplitMix64 finaliser: spreads a (seed, tensor) pair into an independent seed.
pub(crate) fn mix_seed(seed: u64, tag: u64) -> u64 {
    let mut z = seed ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_vec(len: usize, seed: u64, offset: f32, scale: f32) -> Vec<f32> {
    let mut rng = SeededUniform::new(seed);
    (0..len).map(|_| offset + rng.next_symmetric() * scale).collect()
}

impl EncoderWeights {
    /// Synthetic weights from `seed`, bit-identical on every architecture.
    ///
    /// Scales keep activations bounded without training: linear weights are
    /// uniform in `±sqrt(3 / in)` (variance `1 / in`, so `x·Wᵀ` keeps the
    /// variance of `x` and attention scores stay O(1) before the softmax);
    /// biases `±0.1`; layer-norm gamma `1 ± 0.1` and beta `±0.1` (not exactly
    /// 1 and 0, so a swapped gamma/beta shows up in tests). Each tensor has its
    /// own stream derived from `(seed, layer, tensor)`, so changing one
    /// dimension does not shift the values of unrelated tensors.
    pub fn random(config: EncoderConfig, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let layers = (0..config.layers)
            .map(|layer| {
                let tag = |k: u64| mix_seed(seed, ((layer as u64) << 8) | k);
                let linears = LinearSlot::ALL.map(|slot| {
                    let (out, inp) = config.linear_shape(slot);
                    let k = slot.position() as u64 * 2;
                    // sqrt is correctly rounded in IEEE 754, so this scale is the same everywhere.
                    let scale = (3.0f32 / inp as f32).sqrt();
                    LinearWeights {
                        weight: Matrix::random(out, inp, tag(k), scale),
                        bias: random_vec(out, tag(k + 1), 0.0, 0.1),
                    }
                });
                let norm = |k: u64| LayerNormWeights {
                    gamma: random_vec(config.d_model, tag(k), 1.0, 0.1),
                    beta: random_vec(config.d_model, tag(k + 1), 0.0, 0.1),
                };
                EncoderLayerWeights { linears, attention_norm: norm(100), output_norm: norm(102) }
            })
            .collect();
        Ok(Self { config, layers })
    }

    /// Wraps weights built elsewhere, checking every shape against `config`.
    pub fn new(config: EncoderConfig, layers: Vec<EncoderLayerWeights>) -> Result<Self, WeightsError> {
        let file = "weights".to_string();
        config.validate().map_err(|source| WeightsError::Config { file: file.clone(), source })?;
        if layers.len() != config.layers {
            return Err(WeightsError::Shape {
                file,
                name: "layers".into(),
                expected: vec![config.layers],
                got: vec![layers.len()],
            });
        }
        for (i, layer) in layers.iter().enumerate() {
            let shape_err = |name: String, expected: Vec<usize>, got: Vec<usize>| WeightsError::Shape {
                file: file.clone(),
                name,
                expected,
                got,
            };
            for slot in LinearSlot::ALL {
                let (out, inp) = config.linear_shape(slot);
                let lw = layer.linear(slot);
                let id = LinearId { layer: i, slot };
                if lw.weight.shape() != (out, inp) {
                    return Err(shape_err(
                        format!("{id}.weight"),
                        vec![out, inp],
                        vec![lw.weight.rows(), lw.weight.cols()],
                    ));
                }
                if lw.bias.len() != out {
                    return Err(shape_err(format!("{id}.bias"), vec![out], vec![lw.bias.len()]));
                }
            }
            for (name, norm) in [("attention_norm", &layer.attention_norm), ("output_norm", &layer.output_norm)] {
                for (part, v) in [("gamma", &norm.gamma), ("beta", &norm.beta)] {
                    if v.len() != config.d_model {
                        return Err(shape_err(format!("layer.{i}.{name}.{part}"), vec![config.d_model], vec![v.len()]));
                    }
                }
            }
        }
        Ok(Self { config, layers })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    pub fn layers(&self) -> &[EncoderLayerWeights] {
        &self.layers
    }

    pub fn linear(&self, id: LinearId) -> &LinearWeights {
        self.layers[id.layer].linear(id.slot)
    }

    /// Every linear layer's dense weight matrix in canonical order.
    pub fn linear_weight_matrices(&self) -> Vec<&Matrix> {
        self.config.linear_ids().map(|id| &self.linear(id).weight).collect()
    }

    /// Reads a BERT or DistilBERT encoder from a safetensors file (see
    /// [`EncoderWeights::from_safetensors_bytes`]). The file is read whole.
    pub fn from_safetensors(path: &Path, heads: usize, seq_len: usize) -> Result<Self, WeightsError> {
        let bytes = std::fs::read(path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
        Self::from_safetensors_bytes(&bytes, &path.display().to_string(), heads, seq_len)
    }

    /// Reads an encoder from safetensors bytes; `file` names them in errors.
    ///
    /// Tensor names follow Hugging Face's checkpoints, with or without the
    /// model prefix (`distilbert.` / `bert.` or anything else before
    /// `transformer.layer.` / `encoder.layer.`):
    /// - DistilBERT: `transformer.layer.{i}.attention.{q_lin,k_lin,v_lin,out_lin}`,
    ///   `sa_layer_norm`, `ffn.{lin1,lin2}`, `output_layer_norm`;
    /// - BERT: `encoder.layer.{i}.attention.self.{query,key,value}`,
    ///   `attention.output.dense`, `attention.output.LayerNorm`,
    ///   `intermediate.dense`, `output.dense`, `output.LayerNorm`; layer norms
    ///   as `weight`/`bias` or the TF-converted `gamma`/`beta`.
    ///
    /// `d_model`, `ffn` and the number of layers come from the tensors; the
    /// head count is not stored in the weights, so the caller gives it. F16,
    /// BF16 and F64 tensors are converted to `f32`.
    pub fn from_safetensors_bytes(
        bytes: &[u8],
        file: &str,
        heads: usize,
        seq_len: usize,
    ) -> Result<Self, WeightsError> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| WeightsError::Format { file: file.to_string(), message: e.to_string() })?;
        let names = st.names();
        let naming = Naming::detect(&names).ok_or_else(|| WeightsError::NoEncoderLayers { file: file.to_string() })?;
        let has = |name: &str| names.contains(&name);
        let layers = (0..).take_while(|i| has(&naming.linear_name(*i, LinearSlot::Query, "weight"))).count();

        let loader = TensorLoader { st: &st, file, naming: &naming, layers };
        let q0 = loader.tensor(&naming.linear_name(0, LinearSlot::Query, "weight"))?;
        let d_model = q0.shape.first().copied().unwrap_or(0);
        let ffn_in = loader.tensor(&naming.linear_name(0, LinearSlot::FfnIn, "weight"))?;
        let ffn = ffn_in.shape.first().copied().unwrap_or(0);
        let config = EncoderConfig { layers, d_model, heads, ffn, seq_len };
        config.validate().map_err(|source| WeightsError::Config { file: file.to_string(), source })?;

        let layer_weights = (0..layers)
            .map(|i| {
                let linear = |slot: LinearSlot| -> Result<LinearWeights, WeightsError> {
                    let (out, inp) = config.linear_shape(slot);
                    let w = loader.tensor_with_shape(&naming.linear_name(i, slot, "weight"), &[out, inp])?;
                    let b = loader.tensor_with_shape(&naming.linear_name(i, slot, "bias"), &[out])?;
                    Ok(LinearWeights { weight: Matrix::from_vec(out, inp, w), bias: b })
                };
                let norm = |stem: &str| -> Result<LayerNormWeights, WeightsError> {
                    let d = [config.d_model];
                    Ok(LayerNormWeights {
                        gamma: loader.norm_tensor(&naming.layer_name(i, stem), "weight", "gamma", &d)?,
                        beta: loader.norm_tensor(&naming.layer_name(i, stem), "bias", "beta", &d)?,
                    })
                };
                Ok(EncoderLayerWeights {
                    linears: [
                        linear(LinearSlot::Query)?,
                        linear(LinearSlot::Key)?,
                        linear(LinearSlot::Value)?,
                        linear(LinearSlot::AttentionOutput)?,
                        linear(LinearSlot::FfnIn)?,
                        linear(LinearSlot::FfnOut)?,
                    ],
                    attention_norm: norm(naming.attention_norm)?,
                    output_norm: norm(naming.output_norm)?,
                })
            })
            .collect::<Result<Vec<_>, WeightsError>>()?;
        Ok(Self { config, layers: layer_weights })
    }
}

/// Which checkpoint layout a safetensors file uses, and its model prefix.
#[derive(Debug)]
struct Naming {
    family: &'static str,
    /// Everything before the layer index, e.g. `distilbert.transformer.layer.`.
    layer_stem: String,
    linears: [&'static str; LINEARS_PER_LAYER],
    attention_norm: &'static str,
    output_norm: &'static str,
}

impl Naming {
    const DISTILBERT_STEM: &'static str = "transformer.layer.";
    const BERT_STEM: &'static str = "encoder.layer.";

    fn detect(names: &[&str]) -> Option<Naming> {
        let mut sorted: Vec<&str> = names.to_vec();
        sorted.sort_unstable();
        for (stem, first) in
            [(Self::DISTILBERT_STEM, "0.attention.q_lin.weight"), (Self::BERT_STEM, "0.attention.self.query.weight")]
        {
            let suffix = format!("{stem}{first}");
            let found = sorted.iter().find_map(|n| {
                let prefix = n.strip_suffix(suffix.as_str())?;
                (prefix.is_empty() || prefix.ends_with('.')).then(|| prefix.to_string())
            });
            if let Some(prefix) = found {
                let layer_stem = format!("{prefix}{stem}");
                return Some(if stem == Self::DISTILBERT_STEM {
                    Naming {
                        family: "DistilBERT",
                        layer_stem,
                        linears: [
                            "attention.q_lin",
                            "attention.k_lin",
                            "attention.v_lin",
                            "attention.out_lin",
                            "ffn.lin1",
                            "ffn.lin2",
                        ],
                        attention_norm: "sa_layer_norm",
                        output_norm: "output_layer_norm",
                    }
                } else {
                    Naming {
                        family: "BERT",
                        layer_stem,
                        linears: [
                            "attention.self.query",
                            "attention.self.key",
                            "attention.self.value",
                            "attention.output.dense",
                            "intermediate.dense",
                            "output.dense",
                        ],
                        attention_norm: "attention.output.LayerNorm",
                        output_norm: "output.LayerNorm",
                    }
                });
            }
        }
        None
    }

    fn layer_name(&self, layer: usize, stem: &str) -> String {
        format!("{}{layer}.{stem}", self.layer_stem)
    }

    fn linear_name(&self, layer: usize, slot: LinearSlot, part: &str) -> String {
        format!("{}{layer}.{}.{part}", self.layer_stem, self.linears[slot.position()])
    }
}

struct LoadedTensor {
    shape: Vec<usize>,
    values: Vec<f32>,
}

struct TensorLoader<'a, 'data> {
    st: &'a safetensors::SafeTensors<'data>,
    file: &'a str,
    naming: &'a Naming,
    layers: usize,
}

impl TensorLoader<'_, '_> {
    fn missing(&self, name: &str) -> WeightsError {
        WeightsError::MissingTensor {
            file: self.file.to_string(),
            name: name.to_string(),
            naming: self.naming.family,
            layers: self.layers,
        }
    }

    fn tensor(&self, name: &str) -> Result<LoadedTensor, WeightsError> {
        let view = self.st.tensor(name).map_err(|_| self.missing(name))?;
        let values = decode_f32(view.dtype(), view.data()).ok_or_else(|| WeightsError::Dtype {
            file: self.file.to_string(),
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        Ok(LoadedTensor { shape: view.shape().to_vec(), values })
    }

    fn tensor_with_shape(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, WeightsError> {
        let t = self.tensor(name)?;
        if t.shape != expected {
            return Err(WeightsError::Shape {
                file: self.file.to_string(),
                name: name.to_string(),
                expected: expected.to_vec(),
                got: t.shape,
            });
        }
        Ok(t.values)
    }

    /// A layer-norm parameter under its PyTorch name or its old TF-converted one.
    fn norm_tensor(
        &self,
        stem: &str,
        part: &str,
        old_part: &str,
        expected: &[usize],
    ) -> Result<Vec<f32>, WeightsError> {
        let name = format!("{stem}.{part}");
        let old = format!("{stem}.{old_part}");
        if self.st.tensor(&name).is_err() && self.st.tensor(&old).is_ok() {
            return self.tensor_with_shape(&old, expected);
        }
        self.tensor_with_shape(&name, expected)
    }
}

/// Little-endian tensor bytes to `f32`; `None` for a dtype that is not a float.
fn decode_f32(dtype: safetensors::Dtype, data: &[u8]) -> Option<Vec<f32>> {
    use safetensors::Dtype;
    Some(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        // bfloat16 is the top half of an f32.
        Dtype::BF16 => {
            data.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect()
        }
        _ => return None,
    })
}

/// IEEE 754 binary16 to binary32 (exact: every f16 is representable).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24; normalise it.
            let shift = m.leading_zeros() - 21; // bring the top set bit to position 10
            let m = (m << shift) & 0x3ff;
            let e = 127 - 15 + 1 - shift;
            sign | (e << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

// ---------------------------------------------------------------------------
// The runnable encoder
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct SharedLayerParams {
    biases: [Vec<f32>; LINEARS_PER_LAYER],
    attention_norm: LayerNormWeights,
    output_norm: LayerNormWeights,
}

/// Biases and layer norms: the parameters every variant of a model shares
/// (pruning only touches the linear weights).
#[derive(Debug)]
pub struct SharedParams {
    config: EncoderConfig,
    layers: Vec<SharedLayerParams>,
}

impl SharedParams {
    pub fn from_weights(weights: &EncoderWeights) -> Self {
        let layers = weights
            .layers
            .iter()
            .map(|l| SharedLayerParams {
                biases: LinearSlot::ALL.map(|s| l.linear(s).bias.clone()),
                attention_norm: l.attention_norm.clone(),
                output_norm: l.output_norm.clone(),
            })
            .collect();
        Self { config: weights.config, layers }
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Bytes held (biases and norms as `f32`).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.biases.iter().map(Vec::len).sum::<usize>() + 4 * self.config.d_model)
            .sum::<usize>()
            * 4
    }
}

/// Kernels that do not fit the encoder they are given to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncoderError {
    #[error("encoder needs {expected} linear layers ({layers} layers x 6), got {got}")]
    LinearCount { expected: usize, layers: usize, got: usize },
    #[error("linear layer {id} must be {expected_out}x{expected_in} (out x in), the kernel is {got_out}x{got_in}")]
    LinearShape { id: LinearId, expected_out: usize, expected_in: usize, got_out: usize, got_in: usize },
}

/// A runnable encoder: shared biases and norms plus one packed kernel per
/// linear layer (canonical [`LinearId`] order).
#[derive(Debug)]
pub struct Encoder {
    shared: Arc<SharedParams>,
    linears: Vec<Box<dyn LinearKernel>>,
}

impl Encoder {
    /// Checks the kernels' count and shapes against the config.
    pub fn new(shared: Arc<SharedParams>, linears: Vec<Box<dyn LinearKernel>>) -> Result<Self, EncoderError> {
        let config = shared.config;
        if linears.len() != config.linear_count() {
            return Err(EncoderError::LinearCount {
                expected: config.linear_count(),
                layers: config.layers,
                got: linears.len(),
            });
        }
        for (id, kernel) in config.linear_ids().zip(&linears) {
            let (expected_out, expected_in) = config.linear_shape(id.slot);
            if (kernel.out_features(), kernel.in_features()) != (expected_out, expected_in) {
                return Err(EncoderError::LinearShape {
                    id,
                    expected_out,
                    expected_in,
                    got_out: kernel.out_features(),
                    got_in: kernel.in_features(),
                });
            }
        }
        Ok(Self { shared, linears })
    }

    /// The dense baseline: every linear layer a [`DenseLinear`].
    pub fn dense(weights: &EncoderWeights) -> Self {
        let linears = weights
            .config
            .linear_ids()
            .map(|id| Box::new(DenseLinear::new(weights.linear(id).weight.clone())) as Box<dyn LinearKernel>)
            .collect();
        Self::new(Arc::new(SharedParams::from_weights(weights)), linears)
            .expect("dense kernels built from checked weights have the config's shapes")
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.shared.config
    }

    pub fn shared(&self) -> &Arc<SharedParams> {
        &self.shared
    }

    pub fn linears(&self) -> &[Box<dyn LinearKernel>] {
        &self.linears
    }

    pub fn linear(&self, id: LinearId) -> &dyn LinearKernel {
        self.linears[id.index()].as_ref()
    }

    /// Runs the encoder on `input` (`tokens x d_model`, any token count >= 1).
    ///
    /// Panics when `input` has the wrong width; `model::ReconfigurableModel`
    /// checks it and returns an error instead.
    pub fn forward(&self, input: &Matrix, threads: Threads) -> Matrix {
        let cfg = self.shared.config;
        assert_eq!(
            input.cols(),
            cfg.d_model,
            "Encoder::forward: input has {} features, d_model is {}",
            input.cols(),
            cfg.d_model
        );
        assert!(input.rows() > 0, "Encoder::forward: input has no tokens");
        let mut scratch = ForwardScratch::take();
        let ForwardScratch { x, q, k, v, ctx, scores, hidden, out } = &mut scratch;
        x.reshape_uninit(input.rows(), cfg.d_model);
        x.as_mut_slice().copy_from_slice(input.as_slice());

        for (layer, params) in self.shared.layers.iter().enumerate() {
            let kernel = |slot: LinearSlot| self.linears[LinearId { layer, slot }.index()].as_ref();
            let bias = |slot: LinearSlot| params.biases[slot.position()].as_slice();

            for (slot, dst) in [(LinearSlot::Query, &mut *q), (LinearSlot::Key, &mut *k), (LinearSlot::Value, &mut *v)]
            {
                kernel(slot).forward(x, dst, threads);
                add_bias(dst, bias(slot));
            }
            attention(q, k, v, cfg.heads, scores, ctx, threads);

            kernel(LinearSlot::AttentionOutput).forward(ctx, out, threads);
            add_bias_residual(out, bias(LinearSlot::AttentionOutput), x);
            layer_norm(out, &params.attention_norm);
            std::mem::swap(x, out);

            kernel(LinearSlot::FfnIn).forward(x, hidden, threads);
            add_bias(hidden, bias(LinearSlot::FfnIn));
            gelu_in_place(hidden.as_mut_slice());
            kernel(LinearSlot::FfnOut).forward(hidden, out, threads);
            add_bias_residual(out, bias(LinearSlot::FfnOut), x);
            layer_norm(out, &params.output_norm);
            std::mem::swap(x, out);
        }
        let result = x.clone();
        scratch.give_back();
        result
    }

    /// The scalar oracle: the same encoder with every linear layer computed by
    /// [`reference::linear`] on the kernel's effective weights, and attention,
    /// softmax, GELU and layer norm in `f64` loops. Slow; for tests and
    /// self-tests (pass few tokens on a board).
    pub fn reference_forward(&self, input: &Matrix) -> Matrix {
        let cfg = self.shared.config;
        assert_eq!(
            input.cols(),
            cfg.d_model,
            "Encoder::reference_forward: input has {} features, d_model is {}",
            input.cols(),
            cfg.d_model
        );
        let mut x = input.clone();
        for (layer, params) in self.shared.layers.iter().enumerate() {
            let linear = |slot: LinearSlot, x: &Matrix| -> Vec<f64> {
                let w = self.linears[LinearId { layer, slot }.index()].effective_weights();
                let y = reference::linear(x, &w);
                let b = &params.biases[slot.position()];
                y.as_slice().iter().enumerate().map(|(i, v)| *v as f64 + b[i % b.len()] as f64).collect()
            };
            let q = linear(LinearSlot::Query, &x);
            let k = linear(LinearSlot::Key, &x);
            let v = linear(LinearSlot::Value, &x);
            let ctx = reference_attention(&q, &k, &v, x.rows(), cfg.d_model, cfg.heads);
            let ctx = Matrix::from_vec(x.rows(), cfg.d_model, ctx.iter().map(|v| *v as f32).collect());
            let o = linear(LinearSlot::AttentionOutput, &ctx);
            x = reference_residual_norm(&x, &o, &params.attention_norm);
            let h = linear(LinearSlot::FfnIn, &x);
            let h = Matrix::from_vec(x.rows(), cfg.ffn, h.iter().map(|v| gelu_f64(*v) as f32).collect());
            let f = linear(LinearSlot::FfnOut, &h);
            x = reference_residual_norm(&x, &f, &params.output_norm);
        }
        x
    }
}

/// Activation buffers of one forward, kept per thread between calls: a
/// DistilBERT forward needs ~5 MB of them, and allocating them fresh each
/// time costs page faults on every call (musl's allocator returns large
/// blocks to the kernel on free), which would be timed with the inference.
#[derive(Debug)]
struct ForwardScratch {
    x: Matrix,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    ctx: Matrix,
    scores: Matrix,
    hidden: Matrix,
    out: Matrix,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Option<ForwardScratch>> = const { std::cell::Cell::new(None) };
}

impl Default for ForwardScratch {
    fn default() -> Self {
        let empty = || Matrix::zeros(0, 0);
        Self {
            x: empty(),
            q: empty(),
            k: empty(),
            v: empty(),
            ctx: empty(),
            scores: empty(),
            hidden: empty(),
            out: empty(),
        }
    }
}

impl ForwardScratch {
    /// This thread's buffers, or new empty ones (also when a forward on this
    /// thread is already running, e.g. a kernel that calls back into an encoder).
    fn take() -> Self {
        SCRATCH.with(|cell| cell.take()).unwrap_or_default()
    }

    fn give_back(self) {
        SCRATCH.with(|cell| cell.set(Some(self)));
    }
}

// ---------------------------------------------------------------------------
// The pieces of a layer (optimised path)
// ---------------------------------------------------------------------------

/// Compiles `$generic` a second time with AVX2 and FMA enabled and picks
/// that copy at run time when the CPU has them (baseline x86-64 is SSE2, so
/// otherwise the loops would run 4 lanes wide). LLVM never fuses a separate
/// multiply and add into an FMA on its own, so both copies give the same
/// bits. aarch64 always has NEON and needs no second copy.
macro_rules! dispatch_isa {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) => $generic:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn with_avx2($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `with_avx2` was compiled for.
                    return unsafe { with_avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

/// Lanes of the partial sums below: enough for one AVX2 register, two NEON ones.
const LANES: usize = 8;

/// Sum in a fixed order with `LANES` partial sums, so it vectorises (a plain
/// `f32` fold cannot be reordered by the compiler) and stays deterministic.
#[inline(always)]
fn lane_sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn lane_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

fn add_bias(y: &mut Matrix, bias: &[f32]) {
    let cols = y.cols();
    for row in y.as_mut_slice().chunks_exact_mut(cols) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `y += bias + residual`, row by row.
fn add_bias_residual(y: &mut Matrix, bias: &[f32], residual: &Matrix) {
    debug_assert_eq!(y.shape(), residual.shape());
    let cols = y.cols();
    for (row, res) in y.as_mut_slice().chunks_exact_mut(cols).zip(residual.as_slice().chunks_exact(cols)) {
        for ((v, b), r) in row.iter_mut().zip(bias).zip(res) {
            *v += b + r;
        }
    }
}

fn layer_norm(x: &mut Matrix, norm: &LayerNormWeights) {
    let cols = x.cols();
    layer_norm_rows(x.as_mut_slice(), cols, &norm.gamma, &norm.beta);
}

dispatch_isa! {
    /// Row-wise layer norm in place (two-pass mean and variance, biased
    /// variance as PyTorch's `LayerNorm`).
    fn layer_norm_rows(x: &mut [f32], cols: usize, gamma: &[f32], beta: &[f32]) => layer_norm_rows_generic
}

#[inline(always)]
fn layer_norm_rows_generic(x: &mut [f32], cols: usize, gamma: &[f32], beta: &[f32]) {
    let n = cols as f32;
    let mut centred = vec![0.0f32; cols];
    for row in x.chunks_exact_mut(cols) {
        let mean = lane_sum(row) / n;
        for (c, v) in centred.iter_mut().zip(row.iter()) {
            *c = (v - mean) * (v - mean);
        }
        let var = lane_sum(&centred) / n;
        let inv = 1.0 / (var + LAYER_NORM_EPS).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

fn parallelism(threads: Threads) -> gemm::Parallelism {
    match threads.count() {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// A row-major view into a slice: element `(r, c)` at `offset + r * row_stride + c * col_stride`.
#[derive(Clone, Copy)]
struct Strided {
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

impl Strided {
    fn last_index(self, rows: usize, cols: usize) -> usize {
        self.offset + (rows - 1) * self.row_stride + (cols - 1) * self.col_stride
    }
}

/// `dst (m x n) = scale · lhs (m x k) · rhs (k x n)` through the `gemm` crate,
/// with every view bounds-checked before the unsafe call.
#[allow(clippy::too_many_arguments)]
fn strided_gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_view: Strided,
    lhs: &[f32],
    lhs_view: Strided,
    rhs: &[f32],
    rhs_view: Strided,
    scale: f32,
    threads: Threads,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(dst_view.last_index(m, n) < dst.len(), "strided_gemm: dst view out of bounds");
    assert!(lhs_view.last_index(m, k) < lhs.len(), "strided_gemm: lhs view out of bounds");
    assert!(rhs_view.last_index(k, n) < rhs.len(), "strided_gemm: rhs view out of bounds");
    // SAFETY: the three views were checked to lie inside their slices; `dst`
    // is borrowed mutably, so it does not alias `lhs` or `rhs`. With
    // `read_dst = false` the destination is only written (alpha unused).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_view.offset),
            dst_view.col_stride as isize,
            dst_view.row_stride as isize,
            false,
            lhs.as_ptr().add(lhs_view.offset),
            lhs_view.col_stride as isize,
            lhs_view.row_stride as isize,
            rhs.as_ptr().add(rhs_view.offset),
            rhs_view.col_stride as isize,
            rhs_view.row_stride as isize,
            0.0,
            scale,
            false,
            false,
            false,
            parallelism(threads),
        );
    }
}

/// Multi-head scaled dot-product attention without a mask. Per head, two GEMM
/// calls: `scores = q_h·k_hᵀ / sqrt(d_head)` (k read transposed through its
/// strides, no copy) and `ctx_h = softmax(scores)·v_h` written straight into
/// the head's columns of `ctx`.
fn attention(
    q: &Matrix,
    k: &Matrix,
    v: &Matrix,
    heads: usize,
    scores: &mut Matrix,
    ctx: &mut Matrix,
    threads: Threads,
) {
    let (tokens, d) = q.shape();
    let dh = d / heads;
    scores.reshape_uninit(tokens, tokens);
    ctx.reshape_uninit(tokens, d);
    let scale = 1.0 / (dh as f32).sqrt();
    for h in 0..heads {
        let col = h * dh;
        strided_gemm(
            tokens,
            tokens,
            dh,
            scores.as_mut_slice(),
            Strided { offset: 0, row_stride: tokens, col_stride: 1 },
            q.as_slice(),
            Strided { offset: col, row_stride: d, col_stride: 1 },
            k.as_slice(),
            // rhs(j, t) = k[t, col + j]
            Strided { offset: col, row_stride: 1, col_stride: d },
            scale,
            threads,
        );
        softmax_rows(scores.as_mut_slice(), tokens);
        strided_gemm(
            tokens,
            dh,
            tokens,
            ctx.as_mut_slice(),
            Strided { offset: col, row_stride: d, col_stride: 1 },
            scores.as_slice(),
            Strided { offset: 0, row_stride: tokens, col_stride: 1 },
            v.as_slice(),
            Strided { offset: col, row_stride: d, col_stride: 1 },
            1.0,
            threads,
        );
    }
}

dispatch_isa! {
    /// Softmax of every row (`cols` wide) in place, max-subtracted.
    fn softmax_rows(scores: &mut [f32], cols: usize) => softmax_rows_generic
}

#[inline(always)]
fn softmax_rows_generic(scores: &mut [f32], cols: usize) {
    for row in scores.chunks_exact_mut(cols) {
        let max = lane_max(row);
        for v in row.iter_mut() {
            *v = exp_f32(*v - max);
        }
        let inv = 1.0 / lane_sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// `e^x` in `f32` without libm, so softmax and GELU vectorise and give the
/// same bits with glibc and musl: Cody-Waite reduction `x = n·ln2 + r`, the
/// Cephes `expf` minimax polynomial on `|r| <= ln2/2` (about 1 ulp), and `2^n`
/// built in the exponent bits. `n` is rounded with the 1.5·2²³ trick instead
/// of `round()`, which needs SSE4.1 to vectorise on baseline x86-64. Inputs
/// are clamped to `[-87.3, 88.3]`, where the result is a normal float.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // `shifted` lies in [2^23, 2^24), where the ulp is 1: its low mantissa
    // bits are `n` itself, read without a float-to-int conversion (Rust's
    // saturating `as i32` does not vectorise).
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// Abramowitz & Stegun 7.1.26 coefficients: `erf(x) = 1 - t·P(t)·e^{-x²}`,
/// `t = 1 / (1 + p·x)` for `x >= 0`, absolute error below 1.5e-7.
const ERF_P: f64 = 0.327_591_1;
const ERF_A: [f64; 5] = [0.254_829_592, -0.284_496_736, 1.421_413_741, -1.453_152_027, 1.061_405_429];

/// GELU as BERT and DistilBERT use it (PyTorch's default, exact form):
/// `0.5·x·(1 + erf(x/√2))`, with erf from A&S 7.1.26 (|error| < 1.5e-7, below
/// `f32` resolution of the result) over [`exp_f32`], so it vectorises and is
/// deterministic. Chosen over the tanh approximation because the checkpoints
/// were trained with the exact form.
pub fn gelu_in_place(values: &mut [f32]) {
    gelu_dispatch(values)
}

dispatch_isa! {
    fn gelu_dispatch(values: &mut [f32]) => gelu_generic
}

#[inline(always)]
fn gelu_generic(values: &mut [f32]) {
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let a = ERF_A.map(|c| c as f32);
    let p = ERF_P as f32;
    for v in values.iter_mut() {
        let x = *v;
        let z = (x * FRAC_1_SQRT_2).abs();
        let t = 1.0 / (1.0 + p * z);
        let poly = t * (a[0] + t * (a[1] + t * (a[2] + t * (a[3] + t * a[4]))));
        let erf_abs = 1.0 - poly * exp_f32(-z * z);
        let erf = erf_abs.copysign(x);
        *v = 0.5 * x * (1.0 + erf);
    }
}

// ---------------------------------------------------------------------------
// Scalar f64 reference pieces
// ---------------------------------------------------------------------------

fn gelu_f64(x: f64) -> f64 {
    let z = (x * std::f64::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + ERF_P * z);
    let poly = t * (ERF_A[0] + t * (ERF_A[1] + t * (ERF_A[2] + t * (ERF_A[3] + t * ERF_A[4]))));
    let erf = (1.0 - poly * (-z * z).exp()).copysign(x);
    0.5 * x * (1.0 + erf)
}

fn reference_attention(q: &[f64], k: &[f64], v: &[f64], tokens: usize, d: usize, heads: usize) -> Vec<f64> {
    let dh = d / heads;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut ctx = vec![0.0f64; tokens * d];
    let mut scores = vec![0.0f64; tokens];
    for h in 0..heads {
        let col = h * dh;
        for i in 0..tokens {
            for j in 0..tokens {
                scores[j] = (0..dh).map(|c| q[i * d + col + c] * k[j * d + col + c]).sum::<f64>() * scale;
            }
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores
                .iter_mut()
                .map(|s| {
                    *s = (*s - max).exp();
                    *s
                })
                .sum();
            for c in 0..dh {
                ctx[i * d + col + c] = (0..tokens).map(|j| scores[j] * v[j * d + col + c]).sum::<f64>() / sum;
            }
        }
    }
    ctx
}

fn reference_residual_norm(x: &Matrix, y: &[f64], norm: &LayerNormWeights) -> Matrix {
    let (tokens, d) = x.shape();
    let mut out = Matrix::zeros(tokens, d);
    for t in 0..tokens {
        let row: Vec<f64> = (0..d).map(|c| x.get(t, c) as f64 + y[t * d + c]).collect();
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + LAYER_NORM_EPS as f64).sqrt();
        for c in 0..d {
            out.set(t, c, ((row[c] - mean) * inv * norm.gamma[c] as f64 + norm.beta[c] as f64) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_close_to_libm_over_the_softmax_range() {
        let mut worst = 0.0f64;
        for i in -8000..=800 {
            let x = i as f32 * 0.01;
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(-1000.0) < 1e-37);
    }

    #[test]
    fn gelu_matches_the_f64_form() {
        let mut xs: Vec<f32> = (-600..=600).map(|i| i as f32 * 0.01).collect();
        let want: Vec<f64> = xs.iter().map(|x| gelu_f64(*x as f64)).collect();
        gelu_in_place(&mut xs);
        for (g, w) in xs.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 2e-6, "gelu {g} vs {w}");
        }
        // Known values of the exact GELU: GELU(1) = 0.841344746, GELU(-1) = -0.158655254.
        assert!((gelu_f64(1.0) - 0.841_344_746).abs() < 1e-6);
        assert!((gelu_f64(-1.0) + 0.158_655_254).abs() < 1e-6);
    }

    #[test]
    fn f16_conversion_covers_normals_subnormals_and_specials() {
        assert_eq!(f16_bits_to_f32(0x3c00), 1.0);
        assert_eq!(f16_bits_to_f32(0xc000), -2.0);
        assert_eq!(f16_bits_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_bits_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_bits_to_f32(0x0200), 2f32.powi(-15));
        assert_eq!(f16_bits_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert!(f16_bits_to_f32(0x7c00).is_infinite());
        assert!(f16_bits_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn config_validation_names_the_field() {
        let mut c = Preset::MiniLm.config();
        c.ffn = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "ffn" }));
        let c = EncoderConfig { heads: 5, ..Preset::MiniLm.config() };
        assert!(c.validate().unwrap_err().to_string().contains("not divisible by heads 5"));
    }

    #[test]
    fn linear_ids_round_trip_through_their_index() {
        let c = Preset::Rt3Transformer.config();
        let ids: Vec<LinearId> = c.linear_ids().collect();
        assert_eq!(ids.len(), 12);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(id.index(), i);
            assert_eq!(LinearId::from_index(i), *id);
        }
        assert_eq!(ids[10].to_string(), "layer.1.ffn_in");
    }

    #[test]
    fn attention_matches_the_f64_loops() {
        let (tokens, d, heads) = (7, 12, 3);
        let q = Matrix::random(tokens, d, 1, 1.0);
        let k = Matrix::random(tokens, d, 2, 1.0);
        let v = Matrix::random(tokens, d, 3, 1.0);
        let mut scores = Matrix::zeros(0, 0);
        let mut ctx = Matrix::zeros(0, 0);
        attention(&q, &k, &v, heads, &mut scores, &mut ctx, Threads::One);
        let f = |m: &Matrix| m.as_slice().iter().map(|v| *v as f64).collect::<Vec<_>>();
        let want = reference_attention(&f(&q), &f(&k), &f(&v), tokens, d, heads);
        for (g, w) in ctx.as_slice().iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
