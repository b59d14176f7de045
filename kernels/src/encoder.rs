//! A post-LN Transformer encoder, built on any [`LinearKernel`], in the two
//! layouts of the experiments: BERT / DistilBERT, and the PyTorch
//! word-language-model Transformer that RT3 trained.
//!
//! One layer, for activations `x` (`tokens x d_model`):
//!
//! ```text
//! q, k, v = x·Wqᵀ + bq, x·Wkᵀ + bk, x·Wvᵀ + bv
//! ctx     = concat over heads of softmax(q_h·k_hᵀ / sqrt(d_head) + M) · v_h
//! x       = LayerNorm(x + ctx·Woᵀ + bo)                 (post-LN)
//! x       = LayerNorm(x + act(x·W1ᵀ + b1)·W2ᵀ + b2)
//! ```
//!
//! What differs between the presets is in [`EncoderConfig`]:
//! - BERT, DistilBERT, MiniLM: `act` = GELU (exact erf form), LayerNorm eps
//!   1e-12, no mask (`M` = 0: every token attends to every token); the input
//!   is already a `tokens x d_model` activation.
//! - `rt3-transformer`, `TransformerModel` of pytorch/examples
//!   `word_language_model/model.py` (the layout up to 2023-08, e.g. commit
//!   3d63fe1; RT3 is from 2021), whose layers are `nn.TransformerEncoderLayer`
//!   with its defaults (pytorch/pytorch `torch/nn/modules/transformer.py`:
//!   `activation=F.relu`, `layer_norm_eps=1e-5`, `norm_first=False`, i.e.
//!   post-LN; dropout is the identity at inference): `act` = ReLU, eps 1e-5,
//!   and the square subsequent mask (`M[i][j]` = -inf for `j > i`, token `i`
//!   attends to tokens `0..=i`). Around the layers: a token lookup
//!   `nn.Embedding(ntoken, d)` scaled by `sqrt(d)` plus the sinusoidal
//!   `PositionalEncoding` ([`TokenEmbedding`], [`Encoder::embed`]) in front,
//!   and the `nn.Linear(d, ntoken)` decoder to the 33,278-word WikiText-2
//!   vocabulary behind ([`LinearSlot::LmHead`], optional: it holds most of the
//!   model's MACs). The example ends in `log_softmax` over the logits
//!   ([`log_softmax_rows`]); the forward stops at the logits, since
//!   `log_softmax` is a per-row shift that is not part of any prunable layer.
//!   The nn.Transformer-based layout of the example since 2023-08 adds a final
//!   LayerNorm after the stack (`final_norm`); checkpoints in either layout
//!   load.
//!
//! How the types fit:
//! - [`EncoderConfig`] (dimensions and the per-preset choices above) and
//!   [`Preset`] (the named models).
//! - [`EncoderWeights`]: dense weights, synthetic from a seed
//!   ([`EncoderWeights::random`]) or read from a safetensors file
//!   ([`EncoderWeights::from_safetensors`], BERT, DistilBERT and the
//!   word-language-model state_dicts).
//! - [`SharedParams`]: biases, layer norms and the token embedding. Every
//!   variant of a model runs with the same ones, so they are built once and
//!   shared through an `Arc`.
//! - [`Encoder`]: shared params plus one packed kernel per linear layer (six
//!   per encoder layer, in [`LinearSlot`] order, then the `lm_head` when the
//!   config has one); [`Encoder::forward`] runs it on activations,
//!   [`Encoder::forward_tokens`] on token ids, [`Encoder::reference_forward`]
//!   is the scalar `f64` oracle.
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

/// Layer-norm epsilon of PyTorch's `nn.TransformerEncoderLayer` (its
/// `layer_norm_eps=1e-5` default), which RT3's model keeps.
pub const TORCH_LAYER_NORM_EPS: f32 = 1e-5;

/// Words in the WikiText-2 vocabulary as pytorch/examples' `data.py` builds
/// it (every word of the training, validation and test files plus `<eos>`):
/// the `ntoken` of RT3's model.
pub const WIKITEXT2_VOCAB: usize = 33_278;

/// Linear layers per encoder layer: Q, K, V, attention output, FFN in, FFN out.
pub const LINEARS_PER_LAYER: usize = 6;

// ---------------------------------------------------------------------------
// Configuration and presets
// ---------------------------------------------------------------------------

/// The feed-forward nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Activation {
    /// `0.5·x·(1 + erf(x/√2))`: BERT, DistilBERT, MiniLM.
    #[default]
    Gelu,
    /// `max(x, 0)`: `nn.TransformerEncoderLayer`'s default, RT3's model.
    Relu,
}

/// Which tokens a token attends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum AttentionMask {
    /// Every token (BERT-style encoders).
    #[default]
    Bidirectional,
    /// Token `i` attends to tokens `0..=i`: the additive square subsequent
    /// mask (0 on and below the diagonal, -inf above) of the word language
    /// model, so no output depends on a later token.
    Causal,
}

/// Dimensions and per-preset choices of an encoder. `seq_len` is the default
/// number of tokens of an input (benchmarks use it); [`Encoder::forward`]
/// accepts any token count.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct EncoderConfig {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub ffn: usize,
    pub seq_len: usize,
    #[cfg_attr(feature = "serde", serde(default))]
    pub activation: Activation,
    #[cfg_attr(feature = "serde", serde(default = "default_layer_norm_eps"))]
    pub layer_norm_eps: f32,
    #[cfg_attr(feature = "serde", serde(default))]
    pub attention: AttentionMask,
    /// Words of the vocabulary when the model starts with a token embedding
    /// (lookup scaled by `sqrt(d_model)`, plus sinusoidal positions); `None`
    /// for encoders fed activations.
    #[cfg_attr(feature = "serde", serde(default))]
    pub vocab: Option<usize>,
    /// Whether the output projection onto the vocabulary (`d_model -> vocab`,
    /// with bias) runs as the last linear layer, prunable like the others.
    /// Needs `vocab`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub lm_head: bool,
    /// A LayerNorm after the last layer (nn.Transformer's `encoder.norm`,
    /// in the word-language-model layout since 2023-08; not in RT3's).
    #[cfg_attr(feature = "serde", serde(default))]
    pub final_norm: bool,
}

#[cfg(feature = "serde")]
fn default_layer_norm_eps() -> f32 {
    LAYER_NORM_EPS
}

/// An encoder configuration that cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("encoder config: `{field}` must be at least 1, got 0")]
    Zero { field: &'static str },
    #[error("encoder config: d_model {d_model} is not divisible by heads {heads}")]
    HeadsDoNotDivide { d_model: usize, heads: usize },
    #[error("encoder config: layer_norm_eps {0} must be positive and finite")]
    Eps(String),
    #[error("encoder config: lm_head needs a vocabulary (`vocab`); this model has none")]
    LmHeadWithoutVocab,
}

impl EncoderConfig {
    /// Checks every dimension is positive, the heads split `d_model` evenly,
    /// eps is usable and an `lm_head` has a vocabulary to project onto.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("layers", self.layers),
            ("d_model", self.d_model),
            ("heads", self.heads),
            ("ffn", self.ffn),
            ("seq_len", self.seq_len),
            ("vocab", self.vocab.unwrap_or(1)),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(ConfigError::HeadsDoNotDivide { d_model: self.d_model, heads: self.heads });
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(ConfigError::Eps(self.layer_norm_eps.to_string()));
        }
        if self.lm_head && self.vocab.is_none() {
            return Err(ConfigError::LmHeadWithoutVocab);
        }
        Ok(())
    }

    /// The same model with inputs of `seq_len` tokens.
    #[must_use]
    pub fn with_seq_len(mut self, seq_len: usize) -> Self {
        self.seq_len = seq_len;
        self
    }

    /// The same model with or without its output projection as a linear layer
    /// (checked by [`EncoderConfig::validate`]: it needs a vocabulary).
    #[must_use]
    pub fn with_lm_head(mut self, lm_head: bool) -> Self {
        self.lm_head = lm_head;
        self
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads.max(1)
    }

    /// Width of the forward's output: the vocabulary with an `lm_head`, else `d_model`.
    pub fn output_width(&self) -> usize {
        match (self.lm_head, self.vocab) {
            (true, Some(vocab)) => vocab,
            _ => self.d_model,
        }
    }

    /// The `lm_head`'s id, when the config runs one.
    pub fn lm_head_id(&self) -> Option<LinearId> {
        self.lm_head.then_some(LinearId { layer: self.layers, slot: LinearSlot::LmHead })
    }

    /// Number of linear layers: six per encoder layer, plus the `lm_head`.
    pub fn linear_count(&self) -> usize {
        self.layers * LINEARS_PER_LAYER + usize::from(self.lm_head)
    }

    /// `(out_features, in_features)` of a linear layer.
    pub fn linear_shape(&self, slot: LinearSlot) -> (usize, usize) {
        match slot {
            LinearSlot::Query | LinearSlot::Key | LinearSlot::Value | LinearSlot::AttentionOutput => {
                (self.d_model, self.d_model)
            }
            LinearSlot::FfnIn => (self.ffn, self.d_model),
            LinearSlot::FfnOut => (self.d_model, self.ffn),
            LinearSlot::LmHead => (self.vocab.unwrap_or(0), self.d_model),
        }
    }

    /// Every linear layer in canonical order (layer-major, then
    /// [`LinearSlot::ALL`], then the `lm_head`): the order of
    /// [`LinearId::index`], per-layer sparsity lists and [`Encoder::linears`].
    pub fn linear_ids(&self) -> impl Iterator<Item = LinearId> {
        (0..self.layers)
            .flat_map(|layer| LinearSlot::ALL.into_iter().map(move |slot| LinearId { layer, slot }))
            .chain(self.lm_head_id())
    }

    /// The linear layer at `index` in canonical order (the inverse of
    /// [`LinearId::index`] for this config), `None` past the last.
    pub fn linear_id(&self, index: usize) -> Option<LinearId> {
        if index < self.layers * LINEARS_PER_LAYER {
            Some(LinearId::from_index(index))
        } else if index == self.layers * LINEARS_PER_LAYER {
            self.lm_head_id()
        } else {
            None
        }
    }

    /// Weights in all linear layers (what pruning acts on), the `lm_head` included.
    pub fn linear_weight_count(&self) -> usize {
        self.linear_ids().map(|id| self.linear_shape(id.slot)).map(|(o, i)| o * i).sum()
    }

    /// Biases and layer norms: what every variant shares (one copy held
    /// beside the dense source weights).
    pub fn shared_parameter_count(&self) -> usize {
        let biases: usize = self.linear_ids().map(|id| self.linear_shape(id.slot).0).sum();
        biases + (2 * self.layers + if self.final_norm { 1 } else { 0 }) * 2 * self.d_model
    }

    /// Weights of the token embedding table (`vocab x d_model`), 0 without one.
    /// The positional encoding is a fixed function, not a parameter.
    pub fn embedding_parameter_count(&self) -> usize {
        self.vocab.map_or(0, |v| v * self.d_model)
    }

    /// Every parameter: linear weights, biases, layer norms and the token embedding.
    pub fn parameter_count(&self) -> usize {
        self.linear_weight_count() + self.shared_parameter_count() + self.embedding_parameter_count()
    }

    /// Multiply-accumulates of one dense forward over `tokens` tokens: the
    /// linear layers (`tokens` per weight) plus attention's two products per
    /// layer (`q·kᵀ` and `softmax·v`, `tokens² · d_model` each, computed in
    /// full also under the causal mask, as PyTorch does). Embedding lookup,
    /// softmax, activation and norms are not MACs.
    pub fn macs(&self, tokens: usize) -> u64 {
        let linear = self.linear_weight_count() as u64 * tokens as u64;
        let attention = 2 * self.layers as u64 * (tokens * tokens * self.d_model) as u64;
        linear + attention
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
    /// The model in RT3's code, the PyTorch word-language-model Transformer on
    /// WikiText-2: 2 layers, d=800, 4 heads, FFN 200, sequence 35 (RT3-NOTES),
    /// ReLU, LayerNorm eps 1e-5, causal mask, token embedding over 33,278
    /// words; the output projection onto them is off unless asked for
    /// ([`EncoderConfig::with_lm_head`]).
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
        let bert = |layers, d_model, heads, ffn| EncoderConfig {
            layers,
            d_model,
            heads,
            ffn,
            seq_len: 128,
            activation: Activation::Gelu,
            layer_norm_eps: LAYER_NORM_EPS,
            attention: AttentionMask::Bidirectional,
            vocab: None,
            lm_head: false,
            final_norm: false,
        };
        match self {
            Preset::DistilBert => bert(6, 768, 12, 3072),
            Preset::MiniLm => bert(6, 384, 12, 1536),
            Preset::Rt3Transformer => EncoderConfig {
                layers: 2,
                d_model: 800,
                heads: 4,
                ffn: 200,
                seq_len: 35,
                activation: Activation::Relu,
                layer_norm_eps: TORCH_LAYER_NORM_EPS,
                attention: AttentionMask::Causal,
                vocab: Some(WIKITEXT2_VOCAB),
                lm_head: false,
                final_norm: false,
            },
        }
    }

    /// Whether the preset has a vocabulary, so `lm_head` can be switched on.
    pub fn has_vocabulary(self) -> bool {
        self.config().vocab.is_some()
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

/// Which linear layer: one of the six of an encoder layer, or the output
/// projection onto the vocabulary after the last layer.
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
    /// The word language model's `decoder`: `d_model -> vocab`, once per model.
    LmHead,
}

impl LinearSlot {
    /// Canonical order inside an encoder layer (the `lm_head` is not in a layer).
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
            LinearSlot::LmHead => "lm_head",
        }
    }

    /// Position inside an encoder layer; the `lm_head` comes after all six.
    fn position(self) -> usize {
        self as usize
    }
}

/// One linear layer of the model: which encoder layer and which slot. The
/// `lm_head` has `layer` = the number of encoder layers
/// ([`EncoderConfig::lm_head_id`]), so it sorts and indexes after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LinearId {
    pub layer: usize,
    pub slot: LinearSlot,
}

impl LinearId {
    /// Position in canonical order: `layer * 6 + slot`, and `layers * 6` for
    /// the `lm_head`. Per-layer sparsity lists and [`Encoder::linears`] are
    /// indexed by it.
    pub fn index(self) -> usize {
        match self.slot {
            LinearSlot::LmHead => self.layer * LINEARS_PER_LAYER,
            slot => self.layer * LINEARS_PER_LAYER + slot.position(),
        }
    }

    /// The encoder-layer linear at `index` (`layer * 6 + slot`). It cannot
    /// tell the `lm_head` from the next layer's query: use
    /// [`EncoderConfig::linear_id`] where a model may have one.
    pub fn from_index(index: usize) -> Self {
        LinearId { layer: index / LINEARS_PER_LAYER, slot: LinearSlot::ALL[index % LINEARS_PER_LAYER] }
    }
}

impl fmt::Display for LinearId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.slot {
            LinearSlot::LmHead => f.write_str("lm_head"),
            slot => write!(f, "layer.{}.{}", self.layer, slot.name()),
        }
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
    /// After attention (DistilBERT `sa_layer_norm`, BERT `attention.output.LayerNorm`,
    /// `nn.TransformerEncoderLayer` `norm1`).
    pub attention_norm: LayerNormWeights,
    /// After the feed-forward (DistilBERT `output_layer_norm`, BERT `output.LayerNorm`,
    /// `nn.TransformerEncoderLayer` `norm2`).
    pub output_norm: LayerNormWeights,
}

impl EncoderLayerWeights {
    /// One of the six linear layers of the layer (the `lm_head` is not in a layer).
    pub fn linear(&self, slot: LinearSlot) -> &LinearWeights {
        assert!(slot != LinearSlot::LmHead, "the lm_head is not in an encoder layer: use EncoderWeights::linear");
        &self.linears[slot.position()]
    }
}

/// The word language model's token lookup (`nn.Embedding(ntoken, d_model)`,
/// `vocab x d_model`) and what the example does with it before the first
/// layer: `emb(token) · sqrt(d_model) + pe[position]`, with the fixed
/// sinusoidal table of its `PositionalEncoding` ([`sinusoidal_position`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEmbedding {
    table: Matrix,
}

/// Token ids that cannot be embedded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("this model takes activations, not token ids (it has no token embedding)")]
    NoEmbedding,
    #[error("no tokens given: an input needs at least one")]
    NoTokens,
    #[error("token {token} at position {position} is outside the vocabulary of {vocab} words")]
    TokenOutOfRange { token: u32, position: usize, vocab: usize },
}

impl TokenEmbedding {
    /// A lookup table of `vocab x d_model` (PyTorch's `nn.Embedding.weight`).
    pub fn new(table: Matrix) -> Self {
        Self { table }
    }

    pub fn table(&self) -> &Matrix {
        &self.table
    }

    pub fn vocab(&self) -> usize {
        self.table.rows()
    }

    pub fn d_model(&self) -> usize {
        self.table.cols()
    }

    /// `tokens x d_model`: row `t` is `table[tokens[t]] · sqrt(d_model) + pe[t]`,
    /// rounded as PyTorch does in `f32` (the scale is `math.sqrt(ninp)`
    /// rounded to `f32`; product and sum each rounded, no FMA).
    pub fn embed(&self, tokens: &[u32]) -> Result<Matrix, InputError> {
        if tokens.is_empty() {
            return Err(InputError::NoTokens);
        }
        let d = self.d_model();
        let scale = (d as f64).sqrt() as f32;
        let mut out = Matrix::zeros(tokens.len(), d);
        let mut pe = vec![0.0f32; d];
        for (position, &token) in tokens.iter().enumerate() {
            if token as usize >= self.vocab() {
                return Err(InputError::TokenOutOfRange { token, position, vocab: self.vocab() });
            }
            sinusoidal_position(position, &mut pe);
            let row = self.table.row(token as usize);
            for (c, (e, p)) in row.iter().zip(&pe).enumerate() {
                out.set(position, c, e * scale + p);
            }
        }
        Ok(out)
    }
}

/// Row `position` of the word language model's `PositionalEncoding` table,
/// `out.len()` = `d_model` wide: `pe[2i] = sin(position · w_i)`,
/// `pe[2i+1] = cos(position · w_i)`, `w_i = exp(2i · -ln(10000) / d_model)`
/// (pytorch/examples `word_language_model/model.py`). Computed as the
/// example computes it in `f32` (the rate as an `f32` product, its `exp`, the
/// angle as an `f32` product), with `exp`, `sin` and `cos` correctly rounded
/// here where PyTorch's vectorised ones are within an ulp: the table agrees
/// with a saved `pos_encoder.pe` to about `1e-7 · position`.
pub fn sinusoidal_position(position: usize, out: &mut [f32]) {
    let d = out.len();
    let rate = (-(10000.0f64.ln()) / d as f64) as f32;
    for i in (0..d).step_by(2) {
        let w = (((i as f32) * rate) as f64).exp() as f32;
        let angle = (position as f32 * w) as f64;
        out[i] = angle.sin() as f32;
        if i + 1 < d {
            out[i + 1] = angle.cos() as f32;
        }
    }
}

/// The parts of a model outside its encoder layers: the token embedding in
/// front, a final LayerNorm and the output projection behind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OuterWeights {
    /// Needed when the config has a `vocab`.
    pub embedding: Option<TokenEmbedding>,
    /// Needed when the config has `final_norm`.
    pub final_norm: Option<LayerNormWeights>,
    /// `vocab x d_model` and its bias; needed when the config has `lm_head`.
    pub lm_head: Option<LinearWeights>,
}

/// Dense weights of a whole model, shape-checked against its config.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderWeights {
    config: EncoderConfig,
    layers: Vec<EncoderLayerWeights>,
    /// Shared with every encoder built from these weights (never copied).
    embedding: Option<Arc<TokenEmbedding>>,
    final_norm: Option<LayerNormWeights>,
    lm_head: Option<LinearWeights>,
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
         `distilbert.transformer.layer.0.attention.q_lin.weight` (DistilBERT), \
         `bert.encoder.layer.0.attention.self.query.weight` (BERT) or \
         `transformer_encoder.layers.0.self_attn.in_proj_weight` (the PyTorch word language model; \
         `encoder.layers.0...` in its nn.Transformer-based layout), with or without a model prefix"
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
    #[error("{file}: holds a {found} checkpoint; the model asked for reads {expected} checkpoints")]
    WrongFamily { file: String, found: &'static str, expected: &'static str },
    #[error(
        "{file}: `{name}` is not the sinusoidal positional encoding of the word language model \
         (position {position}, column {column}: {got} vs {want})"
    )]
    Positions { file: String, name: String, position: usize, column: usize, got: f32, want: f32 },
    #[error("{file}: {message}")]
    Missing { file: String, message: String },
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

/// A `rows x cols` matrix uniform in `±scale`, row `r` from its own stream
/// `(seed, r)`, generated in parallel: the vocabulary-sized tables (33,278 x
/// 800) would otherwise take a noticeable part of a second to load.
fn random_rows(rows: usize, cols: usize, seed: u64, scale: f32) -> Matrix {
    use rayon::prelude::*;
    let mut m = Matrix::zeros(rows, cols);
    if cols > 0 {
        m.as_mut_slice().par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            let mut rng = SeededUniform::new(mix_seed(seed, r as u64));
            for v in row {
                *v = rng.next_symmetric() * scale;
            }
        });
    }
    m
}

/// Tags of the synthetic tensors outside the layers (layer tags are `layer << 8 | k`
/// with `layer` small, so these never collide with them).
const TAG_EMBEDDING: u64 = 0xE3B0_0000;
const TAG_LM_HEAD: u64 = 0xE3B0_0001;
const TAG_FINAL_NORM: u64 = 0xE3B0_0010;

/// `init_weights` of the word language model: embedding and decoder weights
/// uniform in `±0.1` (its `initrange`).
const WORD_LM_INIT_RANGE: f32 = 0.1;

impl EncoderWeights {
    /// Synthetic weights from `seed`, bit-identical on every architecture.
    ///
    /// Scales keep activations bounded without training: linear weights are
    /// uniform in `±sqrt(3 / in)` (variance `1 / in`, so `x·Wᵀ` keeps the
    /// variance of `x` and attention scores stay O(1) before the softmax);
    /// biases `±0.1`; layer-norm gamma `1 ± 0.1` and beta `±0.1` (not exactly
    /// 1 and 0, so a swapped gamma/beta shows up in tests). The token
    /// embedding and the `lm_head` weights are uniform in `±0.1`, the
    /// word language model's own `init_weights`. Each tensor has its own
    /// stream derived from `(seed, layer, tensor)`, so changing one dimension
    /// (or switching the `lm_head` on) does not shift the values of unrelated
    /// tensors.
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
        let tag = |t: u64| mix_seed(seed, t);
        let embedding = config.vocab.map(|vocab| {
            Arc::new(TokenEmbedding::new(random_rows(vocab, config.d_model, tag(TAG_EMBEDDING), WORD_LM_INIT_RANGE)))
        });
        let lm_head = config.lm_head_id().map(|id| {
            let (out, inp) = config.linear_shape(id.slot);
            LinearWeights {
                weight: random_rows(out, inp, tag(TAG_LM_HEAD), WORD_LM_INIT_RANGE),
                bias: random_vec(out, tag(TAG_LM_HEAD + 1), 0.0, 0.1),
            }
        });
        let final_norm = config.final_norm.then(|| LayerNormWeights {
            gamma: random_vec(config.d_model, tag(TAG_FINAL_NORM), 1.0, 0.1),
            beta: random_vec(config.d_model, tag(TAG_FINAL_NORM + 1), 0.0, 0.1),
        });
        Ok(Self { config, layers, embedding, final_norm, lm_head })
    }

    /// Wraps weights built elsewhere, checking every shape against `config`:
    /// `outer` must hold exactly the parts the config names (an embedding of
    /// `vocab` words, the final norm, the `lm_head`).
    pub fn new(
        config: EncoderConfig,
        layers: Vec<EncoderLayerWeights>,
        outer: OuterWeights,
    ) -> Result<Self, WeightsError> {
        let file = "weights".to_string();
        config.validate().map_err(|source| WeightsError::Config { file: file.clone(), source })?;
        let shape_err = |name: String, expected: Vec<usize>, got: Vec<usize>| WeightsError::Shape {
            file: file.clone(),
            name,
            expected,
            got,
        };
        if layers.len() != config.layers {
            return Err(shape_err("layers".into(), vec![config.layers], vec![layers.len()]));
        }
        let check_linear = |id: LinearId, lw: &LinearWeights| {
            let (out, inp) = config.linear_shape(id.slot);
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
            Ok(())
        };
        let check_norm = |name: String, norm: &LayerNormWeights| {
            for (part, v) in [("gamma", &norm.gamma), ("beta", &norm.beta)] {
                if v.len() != config.d_model {
                    return Err(shape_err(format!("{name}.{part}"), vec![config.d_model], vec![v.len()]));
                }
            }
            Ok(())
        };
        for (i, layer) in layers.iter().enumerate() {
            for slot in LinearSlot::ALL {
                check_linear(LinearId { layer: i, slot }, layer.linear(slot))?;
            }
            check_norm(format!("layer.{i}.attention_norm"), &layer.attention_norm)?;
            check_norm(format!("layer.{i}.output_norm"), &layer.output_norm)?;
        }
        let presence = |part: &str, wanted: bool, given: bool| {
            if wanted == given {
                Ok(())
            } else {
                let message = if wanted {
                    format!("the config needs `{part}` and none was given")
                } else {
                    format!("`{part}` was given but the config has none")
                };
                Err(WeightsError::Missing { file: file.clone(), message })
            }
        };
        presence("embedding", config.vocab.is_some(), outer.embedding.is_some())?;
        presence("final_norm", config.final_norm, outer.final_norm.is_some())?;
        presence("lm_head", config.lm_head, outer.lm_head.is_some())?;
        if let (Some(vocab), Some(e)) = (config.vocab, &outer.embedding) {
            if e.table().shape() != (vocab, config.d_model) {
                return Err(shape_err(
                    "embedding".into(),
                    vec![vocab, config.d_model],
                    vec![e.table().rows(), e.table().cols()],
                ));
            }
        }
        if let Some(norm) = &outer.final_norm {
            check_norm("final_norm".into(), norm)?;
        }
        if let (Some(id), Some(lw)) = (config.lm_head_id(), &outer.lm_head) {
            check_linear(id, lw)?;
        }
        Ok(Self {
            config,
            layers,
            embedding: outer.embedding.map(Arc::new),
            final_norm: outer.final_norm,
            lm_head: outer.lm_head,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    pub fn layers(&self) -> &[EncoderLayerWeights] {
        &self.layers
    }

    /// The token embedding, when the model has a vocabulary.
    pub fn embedding(&self) -> Option<&TokenEmbedding> {
        self.embedding.as_deref()
    }

    /// The LayerNorm after the last layer, when the config has one.
    pub fn final_norm(&self) -> Option<&LayerNormWeights> {
        self.final_norm.as_ref()
    }

    /// Any linear layer of the config, the `lm_head` included.
    pub fn linear(&self, id: LinearId) -> &LinearWeights {
        match id.slot {
            LinearSlot::LmHead => self.lm_head.as_ref().expect("weights of a config with an lm_head hold it"),
            slot => self.layers[id.layer].linear(slot),
        }
    }

    /// Every linear layer's dense weight matrix in canonical order.
    pub fn linear_weight_matrices(&self) -> Vec<&Matrix> {
        self.config.linear_ids().map(|id| &self.linear(id).weight).collect()
    }

    /// Reads an encoder from a safetensors file (see
    /// [`EncoderWeights::from_safetensors_bytes`]). The file is read whole.
    pub fn from_safetensors(path: &Path, heads: usize, seq_len: usize) -> Result<Self, WeightsError> {
        let bytes = read_file(path)?;
        Self::from_safetensors_bytes(&bytes, &path.display().to_string(), heads, seq_len)
    }

    /// Reads a safetensors file as the model `config` describes (a preset's
    /// config, e.g. with its `lm_head` switched on): see
    /// [`EncoderWeights::from_safetensors_bytes_as`].
    pub fn from_safetensors_as(path: &Path, config: &EncoderConfig) -> Result<Self, WeightsError> {
        let bytes = read_file(path)?;
        Self::from_safetensors_bytes_as(&bytes, &path.display().to_string(), config)
    }

    /// Reads an encoder from safetensors bytes; `file` names them in errors.
    ///
    /// Tensor names follow the checkpoints as their libraries save them, with
    /// or without a model prefix (anything ending in `.` before the names
    /// below):
    /// - DistilBERT (Hugging Face): `transformer.layer.{i}.attention.{q_lin,k_lin,v_lin,out_lin}`,
    ///   `sa_layer_norm`, `ffn.{lin1,lin2}`, `output_layer_norm`;
    /// - BERT (Hugging Face): `encoder.layer.{i}.attention.self.{query,key,value}`,
    ///   `attention.output.dense`, `attention.output.LayerNorm`,
    ///   `intermediate.dense`, `output.dense`, `output.LayerNorm`; layer norms
    ///   as `weight`/`bias` or the TF-converted `gamma`/`beta`;
    /// - the PyTorch word language model's `state_dict()`, RT3's layout
    ///   (before 2023-08): `encoder.weight` (the embedding),
    ///   `transformer_encoder.layers.{i}.` + `self_attn.in_proj_weight` /
    ///   `in_proj_bias` (query, key and value stacked in that order, as
    ///   `nn.MultiheadAttention` keeps them), `self_attn.out_proj`,
    ///   `linear1`, `linear2`, `norm1` (after attention), `norm2` (after the
    ///   feed-forward), `decoder` (the `lm_head`), `pos_encoder.pe`; or the
    ///   nn.Transformer-based layout (since 2023-08): `input_emb.weight`,
    ///   `encoder.layers.{i}.` with the same names, `encoder.norm` (a final
    ///   LayerNorm), `decoder`, `pos_encoder.pe`. The positional table is not
    ///   a trained parameter (a buffer): it is recomputed, and a saved one
    ///   that is not that table is an error.
    ///
    /// `d_model`, `ffn`, the number of layers and the vocabulary come from the
    /// tensors; the head count is not stored in the weights, so the caller
    /// gives it. BERT-family files get GELU, eps 1e-12 and no mask, word
    /// language models ReLU, eps 1e-5 and the causal mask, without their
    /// `lm_head` (see [`EncoderWeights::from_safetensors_bytes_as`] to load
    /// it). F16, BF16 and F64 tensors are converted to `f32`.
    pub fn from_safetensors_bytes(
        bytes: &[u8],
        file: &str,
        heads: usize,
        seq_len: usize,
    ) -> Result<Self, WeightsError> {
        load_safetensors(bytes, file, LoadAs { heads, seq_len, template: None })
    }

    /// [`EncoderWeights::from_safetensors_bytes`] for the model `config`
    /// describes: heads, sequence length, activation, eps, mask and whether
    /// to load the `lm_head` come from it, and the file must be of its family
    /// (a config with a `vocab` reads word-language-model checkpoints, one
    /// without reads BERT and DistilBERT ones). The dimensions still come
    /// from the tensors.
    pub fn from_safetensors_bytes_as(bytes: &[u8], file: &str, config: &EncoderConfig) -> Result<Self, WeightsError> {
        load_safetensors(bytes, file, LoadAs { heads: config.heads, seq_len: config.seq_len, template: Some(config) })
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, WeightsError> {
    std::fs::read(path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })
}

struct LoadAs<'a> {
    heads: usize,
    seq_len: usize,
    template: Option<&'a EncoderConfig>,
}

const BERT_FAMILY: &str = "BERT/DistilBERT";
const WORD_LM_FAMILY: &str = "word-language-model";

fn load_safetensors(bytes: &[u8], file: &str, load: LoadAs<'_>) -> Result<EncoderWeights, WeightsError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| WeightsError::Format { file: file.to_string(), message: e.to_string() })?;
    let names = st.names();
    let naming = Naming::detect(&names).ok_or_else(|| WeightsError::NoEncoderLayers { file: file.to_string() })?;
    let has = |name: &str| names.contains(&name);
    let word_lm = naming.in_proj;
    if let Some(template) = load.template {
        let (found, expected) = match (word_lm, template.vocab.is_some()) {
            (true, false) => (WORD_LM_FAMILY, BERT_FAMILY),
            (false, true) => (BERT_FAMILY, WORD_LM_FAMILY),
            _ => ("", ""),
        };
        if !found.is_empty() {
            return Err(WeightsError::WrongFamily { file: file.to_string(), found, expected });
        }
    }
    let layers = (0..).take_while(|i| has(&naming.first_linear_name(*i))).count();

    let loader = TensorLoader { st: &st, file, naming: &naming, layers };
    let first = loader.tensor(&naming.first_linear_name(0))?;
    // A fused in_proj_weight is 3·d x d; a query weight d x d: the inputs are d wide either way.
    let d_model = first.shape.get(1).copied().unwrap_or(0);
    let ffn_in = loader.tensor(&naming.linear_name(0, LinearSlot::FfnIn, "weight"))?;
    let ffn = ffn_in.shape.first().copied().unwrap_or(0);
    let embedding_table = match &naming.embedding {
        Some(name) => {
            let t = loader.tensor(name)?;
            if t.shape.len() != 2 || t.shape[1] != d_model {
                return Err(WeightsError::Shape {
                    file: file.to_string(),
                    name: name.clone(),
                    expected: vec![t.shape.first().copied().unwrap_or(0), d_model],
                    got: t.shape,
                });
            }
            Some(Matrix::from_vec(t.shape[0], d_model, t.values))
        }
        None => None,
    };
    let vocab = embedding_table.as_ref().map(Matrix::rows);
    let (activation, layer_norm_eps, attention) = match load.template {
        Some(t) => (t.activation, t.layer_norm_eps, t.attention),
        None if word_lm => (Activation::Relu, TORCH_LAYER_NORM_EPS, AttentionMask::Causal),
        None => (Activation::Gelu, LAYER_NORM_EPS, AttentionMask::Bidirectional),
    };
    let final_norm = naming.final_norm.as_ref().is_some_and(|stem| has(&format!("{stem}.weight")));
    let config = EncoderConfig {
        layers,
        d_model,
        heads: load.heads,
        ffn,
        seq_len: load.seq_len,
        activation,
        layer_norm_eps,
        attention,
        vocab,
        lm_head: load.template.is_some_and(|t| t.lm_head),
        final_norm,
    };
    config.validate().map_err(|source| WeightsError::Config { file: file.to_string(), source })?;

    let d = [config.d_model];
    let norm = |stem: &str| -> Result<LayerNormWeights, WeightsError> {
        Ok(LayerNormWeights {
            gamma: loader.norm_tensor(stem, "weight", "gamma", &d)?,
            beta: loader.norm_tensor(stem, "bias", "beta", &d)?,
        })
    };
    let plain_linear = |stem: &str, out: usize, inp: usize| -> Result<LinearWeights, WeightsError> {
        let w = loader.tensor_with_shape(&format!("{stem}.weight"), &[out, inp])?;
        let b = loader.tensor_with_shape(&format!("{stem}.bias"), &[out])?;
        Ok(LinearWeights { weight: Matrix::from_vec(out, inp, w), bias: b })
    };
    let layer_weights = (0..layers)
        .map(|i| {
            let linear = |slot: LinearSlot| -> Result<LinearWeights, WeightsError> {
                let (out, inp) = config.linear_shape(slot);
                plain_linear(&naming.linear_stem(i, slot), out, inp)
            };
            let [q, k, v] = if naming.in_proj {
                // nn.MultiheadAttention: in_proj_weight = [W_q; W_k; W_v] (3·d x d), bias likewise.
                let stem = naming.layer_name(i, "self_attn");
                let dm = config.d_model;
                let w = loader.tensor_with_shape(&format!("{stem}.in_proj_weight"), &[3 * dm, dm])?;
                let b = loader.tensor_with_shape(&format!("{stem}.in_proj_bias"), &[3 * dm])?;
                [0, 1, 2].map(|part| LinearWeights {
                    weight: Matrix::from_vec(dm, dm, w[part * dm * dm..(part + 1) * dm * dm].to_vec()),
                    bias: b[part * dm..(part + 1) * dm].to_vec(),
                })
            } else {
                [linear(LinearSlot::Query)?, linear(LinearSlot::Key)?, linear(LinearSlot::Value)?]
            };
            Ok(EncoderLayerWeights {
                linears: [
                    q,
                    k,
                    v,
                    linear(LinearSlot::AttentionOutput)?,
                    linear(LinearSlot::FfnIn)?,
                    linear(LinearSlot::FfnOut)?,
                ],
                attention_norm: norm(&naming.layer_name(i, naming.attention_norm))?,
                output_norm: norm(&naming.layer_name(i, naming.output_norm))?,
            })
        })
        .collect::<Result<Vec<_>, WeightsError>>()?;

    if let Some(name) = &naming.positions {
        if has(name) {
            check_positions(&loader, name, config.d_model)?;
        }
    }
    let final_norm = match (&naming.final_norm, config.final_norm) {
        (Some(stem), true) => Some(norm(stem)?),
        _ => None,
    };
    let lm_head = match config.lm_head_id() {
        Some(id) => {
            let stem = naming.lm_head.as_deref().expect("word-language-model namings name their decoder");
            let (out, inp) = config.linear_shape(id.slot);
            Some(plain_linear(stem, out, inp)?)
        }
        None => None,
    };
    EncoderWeights::new(
        config,
        layer_weights,
        OuterWeights { embedding: embedding_table.map(TokenEmbedding::new), final_norm, lm_head },
    )
    .map_err(|e| match e {
        WeightsError::Missing { message, .. } => WeightsError::Missing { file: file.to_string(), message },
        other => other,
    })
}

/// Positions checked of a saved `pos_encoder.pe` (the table is 5000 long by default).
const CHECKED_POSITIONS: usize = 512;

/// A saved positional table must be the sinusoid [`sinusoidal_position`]
/// computes (within `1e-6 · (1 + position)`: see there), since the forward
/// recomputes it. Shapes as the example saves it (`[max_len, 1, d]`) or
/// without the batch axis.
fn check_positions(loader: &TensorLoader<'_, '_>, name: &str, d_model: usize) -> Result<(), WeightsError> {
    let t = loader.tensor(name)?;
    let rows = t.values.len() / d_model.max(1);
    let shape_ok = t.shape.last() == Some(&d_model) && t.shape.iter().filter(|&&s| s != 1).count() <= 2;
    if !shape_ok || rows * d_model != t.values.len() {
        return Err(WeightsError::Shape {
            file: loader.file.to_string(),
            name: name.to_string(),
            expected: vec![rows, 1, d_model],
            got: t.shape,
        });
    }
    let mut want = vec![0.0f32; d_model];
    for position in 0..rows.min(CHECKED_POSITIONS) {
        sinusoidal_position(position, &mut want);
        let got = &t.values[position * d_model..(position + 1) * d_model];
        for (column, (g, w)) in got.iter().zip(&want).enumerate() {
            let within = (g - w).abs() <= 1e-6 * (1.0 + position as f32);
            if !within {
                return Err(WeightsError::Positions {
                    file: loader.file.to_string(),
                    name: name.to_string(),
                    position,
                    column,
                    got: *g,
                    want: *w,
                });
            }
        }
    }
    Ok(())
}

/// Which checkpoint layout a safetensors file uses, and its model prefix.
#[derive(Debug)]
struct Naming {
    family: &'static str,
    /// Everything before the layer index, e.g. `distilbert.transformer.layer.`.
    layer_stem: String,
    /// Per [`LinearSlot::ALL`] slot, its module inside a layer (the query,
    /// key and value are unused where `in_proj` holds them).
    linears: [&'static str; LINEARS_PER_LAYER],
    /// Query, key and value fused in `self_attn.in_proj_weight` / `in_proj_bias`.
    in_proj: bool,
    attention_norm: &'static str,
    output_norm: &'static str,
    /// Full names outside the layers (word language models only).
    embedding: Option<String>,
    final_norm: Option<String>,
    lm_head: Option<String>,
    positions: Option<String>,
}

impl Naming {
    const DISTILBERT_STEM: &'static str = "transformer.layer.";
    const BERT_STEM: &'static str = "encoder.layer.";
    /// RT3's layout (pytorch/examples before 2023-08): `self.transformer_encoder`.
    const WORD_LM_STEM: &'static str = "transformer_encoder.layers.";
    /// The nn.Transformer-based layout (since 2023-08): nn.Transformer's `self.encoder`.
    const WORD_LM_2023_STEM: &'static str = "encoder.layers.";
    const TORCH_LAYER: [&'static str; LINEARS_PER_LAYER] =
        ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.out_proj", "linear1", "linear2"];

    fn detect(names: &[&str]) -> Option<Naming> {
        let mut sorted: Vec<&str> = names.to_vec();
        sorted.sort_unstable();
        for (stem, first) in [
            (Self::WORD_LM_STEM, "0.self_attn.in_proj_weight"),
            (Self::WORD_LM_2023_STEM, "0.self_attn.in_proj_weight"),
            (Self::DISTILBERT_STEM, "0.attention.q_lin.weight"),
            (Self::BERT_STEM, "0.attention.self.query.weight"),
        ] {
            let suffix = format!("{stem}{first}");
            let found = sorted.iter().find_map(|n| {
                let prefix = n.strip_suffix(suffix.as_str())?;
                (prefix.is_empty() || prefix.ends_with('.')).then(|| prefix.to_string())
            });
            let Some(prefix) = found else { continue };
            let layer_stem = format!("{prefix}{stem}");
            let outer = |name: &str| Some(format!("{prefix}{name}"));
            return Some(match stem {
                Self::WORD_LM_STEM | Self::WORD_LM_2023_STEM => {
                    let rt3 = stem == Self::WORD_LM_STEM;
                    Naming {
                        family: if rt3 {
                            "PyTorch word-language-model (transformer_encoder)"
                        } else {
                            "PyTorch word-language-model (nn.Transformer)"
                        },
                        layer_stem,
                        linears: Self::TORCH_LAYER,
                        in_proj: true,
                        attention_norm: "norm1",
                        output_norm: "norm2",
                        embedding: outer(if rt3 { "encoder.weight" } else { "input_emb.weight" }),
                        final_norm: if rt3 { None } else { outer("encoder.norm") },
                        lm_head: outer("decoder"),
                        positions: outer("pos_encoder.pe"),
                    }
                }
                Self::DISTILBERT_STEM => Naming {
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
                    in_proj: false,
                    attention_norm: "sa_layer_norm",
                    output_norm: "output_layer_norm",
                    embedding: None,
                    final_norm: None,
                    lm_head: None,
                    positions: None,
                },
                _ => Naming {
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
                    in_proj: false,
                    attention_norm: "attention.output.LayerNorm",
                    output_norm: "output.LayerNorm",
                    embedding: None,
                    final_norm: None,
                    lm_head: None,
                    positions: None,
                },
            });
        }
        None
    }

    fn layer_name(&self, layer: usize, stem: &str) -> String {
        format!("{}{layer}.{stem}", self.layer_stem)
    }

    fn linear_stem(&self, layer: usize, slot: LinearSlot) -> String {
        self.layer_name(layer, self.linears[slot.position()])
    }

    fn linear_name(&self, layer: usize, slot: LinearSlot, part: &str) -> String {
        format!("{}.{part}", self.linear_stem(layer, slot))
    }

    /// The tensor whose presence marks a layer (and whose width is `d_model`).
    fn first_linear_name(&self, layer: usize) -> String {
        if self.in_proj {
            self.layer_name(layer, "self_attn.in_proj_weight")
        } else {
            self.linear_name(layer, LinearSlot::Query, "weight")
        }
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

/// Biases, layer norms and the token embedding: the parameters every
/// variant of a model shares (pruning only touches the linear weights).
#[derive(Debug)]
pub struct SharedParams {
    config: EncoderConfig,
    layers: Vec<SharedLayerParams>,
    final_norm: Option<LayerNormWeights>,
    lm_head_bias: Option<Vec<f32>>,
    /// The same table as the weights' (an `Arc`, not a copy).
    embedding: Option<Arc<TokenEmbedding>>,
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
        Self {
            config: weights.config,
            layers,
            final_norm: weights.final_norm.clone(),
            lm_head_bias: weights.lm_head.as_ref().map(|l| l.bias.clone()),
            embedding: weights.embedding.clone(),
        }
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    pub fn embedding(&self) -> Option<&TokenEmbedding> {
        self.embedding.as_deref()
    }

    /// Bytes this copy holds: biases and norms as `f32` (the embedding table
    /// is the weights' own, counted with them).
    pub fn bytes(&self) -> usize {
        self.config.shared_parameter_count() * 4
    }

    fn bias(&self, id: LinearId) -> &[f32] {
        match id.slot {
            LinearSlot::LmHead => self.lm_head_bias.as_deref().expect("a config with an lm_head has its bias"),
            slot => &self.layers[id.layer].biases[slot.position()],
        }
    }
}

/// Kernels that do not fit the encoder they are given to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncoderError {
    #[error("encoder needs {expected} linear layers ({layers} layers x 6, plus the lm_head if any), got {got}")]
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

    /// The first layer's input for `tokens`: the embedding lookup scaled by
    /// `sqrt(d_model)` plus the positional encoding ([`TokenEmbedding::embed`]).
    pub fn embed(&self, tokens: &[u32]) -> Result<Matrix, InputError> {
        self.shared.embedding().ok_or(InputError::NoEmbedding)?.embed(tokens)
    }

    /// [`Encoder::embed`], then [`Encoder::forward`]: the word language
    /// model from token ids to logits (or to the last hidden states without
    /// an `lm_head`).
    pub fn forward_tokens(&self, tokens: &[u32], threads: Threads) -> Result<Matrix, InputError> {
        Ok(self.forward(&self.embed(tokens)?, threads))
    }

    /// Runs the encoder on `input` (`tokens x d_model` activations, any token
    /// count >= 1): `tokens x vocab` logits with an `lm_head`, else the last
    /// hidden states (`tokens x d_model`, after the final norm if any).
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
        let eps = cfg.layer_norm_eps;
        let causal = cfg.attention == AttentionMask::Causal;
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
            attention(q, k, v, cfg.heads, causal, scores, ctx, threads);

            kernel(LinearSlot::AttentionOutput).forward(ctx, out, threads);
            add_bias_residual(out, bias(LinearSlot::AttentionOutput), x);
            layer_norm(out, &params.attention_norm, eps);
            std::mem::swap(x, out);

            kernel(LinearSlot::FfnIn).forward(x, hidden, threads);
            add_bias(hidden, bias(LinearSlot::FfnIn));
            activate(cfg.activation, hidden.as_mut_slice());
            kernel(LinearSlot::FfnOut).forward(hidden, out, threads);
            add_bias_residual(out, bias(LinearSlot::FfnOut), x);
            layer_norm(out, &params.output_norm, eps);
            std::mem::swap(x, out);
        }
        if let Some(norm) = &self.shared.final_norm {
            layer_norm(x, norm, eps);
        }
        let result = match cfg.lm_head_id() {
            Some(id) => {
                let mut logits = Matrix::zeros(0, 0);
                self.linears[id.index()].forward(x, &mut logits, threads);
                add_bias(&mut logits, self.shared.bias(id));
                logits
            }
            None => x.clone(),
        };
        scratch.give_back();
        result
    }

    /// The scalar oracle: the same encoder with every linear layer computed by
    /// [`reference::linear`] on the kernel's effective weights, and attention,
    /// softmax, activation and layer norm in `f64` loops. Slow; for tests and
    /// self-tests (pass few tokens on a board).
    pub fn reference_forward(&self, input: &Matrix) -> Matrix {
        self.reference_forward_with(input, &|id| self.linears[id.index()].effective_weights())
    }

    /// [`Self::reference_forward`] with the linear layers' `out x in`
    /// weights given by `weights` (e.g. dense weights masked by a variant's
    /// own mask, so the oracle does not depend on the packing).
    pub fn reference_forward_with(&self, input: &Matrix, weights: &dyn Fn(LinearId) -> Matrix) -> Matrix {
        let cfg = self.shared.config;
        assert_eq!(
            input.cols(),
            cfg.d_model,
            "Encoder::reference_forward: input has {} features, d_model is {}",
            input.cols(),
            cfg.d_model
        );
        let eps = cfg.layer_norm_eps as f64;
        let causal = cfg.attention == AttentionMask::Causal;
        let linear = |id: LinearId, x: &Matrix| -> Vec<f64> {
            let w = weights(id);
            let y = reference::linear(x, &w);
            let b = self.shared.bias(id);
            y.as_slice().iter().enumerate().map(|(i, v)| *v as f64 + b[i % b.len()] as f64).collect()
        };
        let mut x = input.clone();
        for (layer, params) in self.shared.layers.iter().enumerate() {
            let id = |slot: LinearSlot| LinearId { layer, slot };
            let q = linear(id(LinearSlot::Query), &x);
            let k = linear(id(LinearSlot::Key), &x);
            let v = linear(id(LinearSlot::Value), &x);
            let ctx = reference_attention(&q, &k, &v, x.rows(), cfg.d_model, cfg.heads, causal);
            let ctx = Matrix::from_vec(x.rows(), cfg.d_model, ctx.iter().map(|v| *v as f32).collect());
            let o = linear(id(LinearSlot::AttentionOutput), &ctx);
            x = reference_residual_norm(&x, &o, &params.attention_norm, eps);
            let h = linear(id(LinearSlot::FfnIn), &x);
            let h = Matrix::from_vec(
                x.rows(),
                cfg.ffn,
                h.iter().map(|v| reference_activation(cfg.activation, *v) as f32).collect(),
            );
            let f = linear(id(LinearSlot::FfnOut), &h);
            x = reference_residual_norm(&x, &f, &params.output_norm, eps);
        }
        if let Some(norm) = &self.shared.final_norm {
            x = reference_residual_norm(&x, &vec![0.0; x.rows() * x.cols()], norm, eps);
        }
        match cfg.lm_head_id() {
            Some(id) => {
                let logits = linear(id, &x);
                Matrix::from_vec(x.rows(), cfg.output_width(), logits.iter().map(|v| *v as f32).collect())
            }
            None => x,
        }
    }
}

/// `log_softmax` of every row, as the word language model's forward ends
/// (`F.log_softmax(output, dim=-1)`): `x - max - ln(sum(exp(x - max)))`,
/// accumulated in `f64`.
pub fn log_softmax_rows(logits: &Matrix) -> Matrix {
    let mut out = logits.clone();
    let cols = out.cols();
    if cols == 0 {
        return out;
    }
    for row in out.as_mut_slice().chunks_exact_mut(cols) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = row.iter().map(|v| (*v as f64 - max).exp()).sum::<f64>().ln() + max;
        for v in row.iter_mut() {
            *v = (*v as f64 - lse) as f32;
        }
    }
    out
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

fn layer_norm(x: &mut Matrix, norm: &LayerNormWeights, eps: f32) {
    let cols = x.cols();
    layer_norm_rows(x.as_mut_slice(), cols, &norm.gamma, &norm.beta, eps);
}

dispatch_isa! {
    /// Row-wise layer norm in place (two-pass mean and variance, biased
    /// variance as PyTorch's `LayerNorm`).
    fn layer_norm_rows(x: &mut [f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32) => layer_norm_rows_generic
}

#[inline(always)]
fn layer_norm_rows_generic(x: &mut [f32], cols: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    let n = cols as f32;
    let mut centred = vec![0.0f32; cols];
    for row in x.chunks_exact_mut(cols) {
        let mean = lane_sum(row) / n;
        for (c, v) in centred.iter_mut().zip(row.iter()) {
            *c = (v - mean) * (v - mean);
        }
        let var = lane_sum(&centred) / n;
        let inv = 1.0 / (var + eps).sqrt();
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

/// Multi-head scaled dot-product attention. Per head, two GEMM calls:
/// `scores = q_h·k_hᵀ / sqrt(d_head)` (k read transposed through its strides,
/// no copy) and `ctx_h = softmax(scores)·v_h` written straight into the
/// head's columns of `ctx`. `causal`: the square subsequent mask, applied in
/// the softmax (row `i` over columns `0..=i`, exact zeros after: what adding
/// -inf before `exp` gives, without `exp_f32`'s clamp leaving 1e-38s).
fn attention(
    q: &Matrix,
    k: &Matrix,
    v: &Matrix,
    heads: usize,
    causal: bool,
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
        softmax_rows(scores.as_mut_slice(), tokens, causal);
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
    /// Softmax of every row (`cols` wide) in place, max-subtracted; with
    /// `causal`, row `i` over its first `i + 1` entries and zero after them.
    fn softmax_rows(scores: &mut [f32], cols: usize, causal: bool) => softmax_rows_generic
}

#[inline(always)]
fn softmax_rows_generic(scores: &mut [f32], cols: usize, causal: bool) {
    for (i, full) in scores.chunks_exact_mut(cols).enumerate() {
        let valid = if causal { (i + 1).min(cols) } else { cols };
        let (row, masked) = full.split_at_mut(valid);
        masked.fill(0.0);
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

/// The feed-forward nonlinearity of `activation`, in place.
fn activate(activation: Activation, values: &mut [f32]) {
    match activation {
        Activation::Gelu => gelu_in_place(values),
        Activation::Relu => relu_in_place(values),
    }
}

/// `max(x, 0)` (PyTorch's `F.relu`; NaN stays NaN, -0.0 becomes 0).
pub fn relu_in_place(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = if *v > 0.0 || v.is_nan() { *v } else { 0.0 };
    }
}

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

fn reference_activation(activation: Activation, x: f64) -> f64 {
    match activation {
        Activation::Gelu => gelu_f64(x),
        Activation::Relu => x.max(0.0),
    }
}

fn reference_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    tokens: usize,
    d: usize,
    heads: usize,
    causal: bool,
) -> Vec<f64> {
    let dh = d / heads;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut ctx = vec![0.0f64; tokens * d];
    let mut scores = vec![0.0f64; tokens];
    for h in 0..heads {
        let col = h * dh;
        for i in 0..tokens {
            // The additive mask: -inf above the diagonal, so exp gives exact zeros there.
            for j in 0..tokens {
                if causal && j > i {
                    scores[j] = f64::NEG_INFINITY;
                    continue;
                }
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

fn reference_residual_norm(x: &Matrix, y: &[f64], norm: &LayerNormWeights, eps: f64) -> Matrix {
    let (tokens, d) = x.shape();
    let mut out = Matrix::zeros(tokens, d);
    for t in 0..tokens {
        let row: Vec<f64> = (0..d).map(|c| x.get(t, c) as f64 + y[t * d + c]).collect();
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
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
    fn layer_norm_uses_the_eps_it_is_given() {
        // A row of variance 1e-5: eps 1e-5 halves the variance term, eps 1e-12 does not.
        let row: Vec<f32> =
            (0..8).map(|i| if i % 2 == 0 { 1.0 + 0.003_162_277_7 } else { 1.0 - 0.003_162_277_7 }).collect();
        let norm = LayerNormWeights { gamma: vec![1.0; 8], beta: vec![0.0; 8] };
        for eps in [TORCH_LAYER_NORM_EPS, LAYER_NORM_EPS] {
            let mut x = Matrix::from_vec(1, 8, row.clone());
            layer_norm(&mut x, &norm, eps);
            let want = reference_residual_norm(&Matrix::from_vec(1, 8, row.clone()), &[0.0; 8], &norm, eps as f64);
            for (g, w) in x.as_slice().iter().zip(want.as_slice()) {
                assert!((g - w).abs() < 1e-3, "eps {eps}: {g} vs {w}");
            }
            let expected = if eps == TORCH_LAYER_NORM_EPS { std::f32::consts::FRAC_1_SQRT_2 } else { 1.0 };
            assert!((x.get(0, 0) - expected).abs() < 2e-3, "eps {eps}: {}", x.get(0, 0));
        }
    }

    #[test]
    fn relu_and_gelu_are_the_activations_of_their_presets() {
        let mut xs = vec![-2.0f32, -0.0, 0.0, 0.5, 3.0];
        activate(Activation::Relu, &mut xs);
        assert_eq!(xs, [0.0, 0.0, 0.0, 0.5, 3.0]);
        let mut ys = vec![-1.0f32, 1.0];
        activate(Activation::Gelu, &mut ys);
        assert!((ys[0] + 0.158_655_25).abs() < 1e-6 && (ys[1] - 0.841_344_7).abs() < 1e-6, "{ys:?}");
        assert_eq!(reference_activation(Activation::Relu, -3.0), 0.0);
        assert_eq!(Preset::Rt3Transformer.config().activation, Activation::Relu);
        assert_eq!(Preset::DistilBert.config().activation, Activation::Gelu);
        assert_eq!(Preset::MiniLm.config().activation, Activation::Gelu);
    }

    #[test]
    fn attention_matches_the_f64_loops() {
        let (tokens, d, heads) = (7, 12, 3);
        let q = Matrix::random(tokens, d, 1, 1.0);
        let k = Matrix::random(tokens, d, 2, 1.0);
        let v = Matrix::random(tokens, d, 3, 1.0);
        let mut scores = Matrix::zeros(0, 0);
        let mut ctx = Matrix::zeros(0, 0);
        let f = |m: &Matrix| m.as_slice().iter().map(|v| *v as f64).collect::<Vec<_>>();
        for causal in [false, true] {
            attention(&q, &k, &v, heads, causal, &mut scores, &mut ctx, Threads::One);
            let want = reference_attention(&f(&q), &f(&k), &f(&v), tokens, d, heads, causal);
            for (g, w) in ctx.as_slice().iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "causal {causal}: {g} vs {w}");
            }
        }
        // Causal: the first token attends only to itself, so its context is its own value.
        attention(&q, &k, &v, heads, true, &mut scores, &mut ctx, Threads::One);
        assert_eq!(ctx.row(0), v.row(0));
        assert!(scores.row(0)[1..].iter().all(|s| *s == 0.0));
    }
}
