//! Dense weights: synthetic from a seed, or read from a safetensors file
//! (BERT, DistilBERT and the word-language-model state_dicts), checked
//! against the config; and the word language model's token embedding.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::config::*;
use crate::matrix::{Matrix, SeededUniform};

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
    pub(crate) config: EncoderConfig,
    pub(crate) layers: Vec<EncoderLayerWeights>,
    /// Shared with every encoder built from these weights (never copied).
    pub(crate) embedding: Option<Arc<TokenEmbedding>>,
    pub(crate) final_norm: Option<LayerNormWeights>,
    pub(crate) lm_head: Option<LinearWeights>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
