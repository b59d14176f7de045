//! Dimensions and per-preset choices of an encoder, the named presets, and
//! how its linear layers are numbered.

use std::fmt;
use std::str::FromStr;

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
/// number of tokens of an input (benchmarks use it); [`Encoder::forward`](super::Encoder::forward)
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
    /// [`LinearId::index`], per-layer sparsity lists and [`Encoder::linears`](super::Encoder::linears).
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
    pub(crate) fn position(self) -> usize {
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
    /// the `lm_head`. Per-layer sparsity lists and [`Encoder::linears`](super::Encoder::linears) are
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
