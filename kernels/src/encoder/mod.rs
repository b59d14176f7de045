//! A post-LN Transformer encoder, built on any [`LinearKernel`], in the two
//! layouts of the experiments: BERT / DistilBERT, and the PyTorch
//! word-language-model Transformer that RT3 trained.
//!
//! One layer, for activations `x` (`tokens x d_model`; computed
//! feature-major, see [`Encoder::forward`]):
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
//! The module's parts: [`config`] (dimensions, presets, layer numbering),
//! [`weights`] (dense weights, synthetic or from safetensors), [`ops`]
//! (activations, softmax, LayerNorm) and [`attention`]; the scalar `f64`
//! oracle's pieces are in [`crate::reference`].
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

pub mod attention;
pub mod config;
pub mod ops;
pub mod weights;

use std::sync::Arc;

pub use config::*;
pub use ops::{exp_f32, gelu_in_place, log_softmax_rows, relu_in_place};
pub(crate) use weights::mix_seed;
pub use weights::*;

use crate::linear::dense::DenseLinear;
use crate::linear::{LinearKernel, Threads};
use crate::matrix::{Activations, Matrix};
use crate::reference::{self, reference_activation, reference_attention, reference_residual_norm};
use attention::attention;
use ops::{activate, residual_layer_norm};

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

    pub(crate) fn bias(&self, id: LinearId) -> &[f32] {
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
        let mut scratch = ForwardScratch::take();
        scratch.x.set_from_token_major(input);
        let out = self.forward_feature_major(&mut scratch, threads);
        let result = out.to_token_major();
        scratch.give_back();
        result
    }

    /// The layers on feature-major activations, `scratch.x` in; returns the
    /// logits (with an `lm_head`) or `scratch.x`, the last hidden states.
    ///
    /// Activations stay feature-major from the first layer to the last, so
    /// no layer transposes; Q, K and V read the same `x`. Each linear layer's
    /// bias (and the feed-forward activation) runs in the kernel's epilogue,
    /// on each output row while it is in cache; the residual add runs in
    /// the LayerNorm's first pass.
    fn forward_feature_major<'s>(&self, scratch: &'s mut ForwardScratch, threads: Threads) -> &'s Activations {
        let cfg = self.shared.config;
        let eps = cfg.layer_norm_eps;
        let causal = cfg.attention == AttentionMask::Causal;
        let ForwardScratch { x, q, k, v, ctx, scores, hidden, out } = scratch;
        for (layer, params) in self.shared.layers.iter().enumerate() {
            let kernel = |slot: LinearSlot| self.linears[LinearId { layer, slot }.index()].as_ref();
            let bias = |slot: LinearSlot| params.biases[slot.position()].as_slice();

            for (slot, dst) in [(LinearSlot::Query, &mut *q), (LinearSlot::Key, &mut *k), (LinearSlot::Value, &mut *v)]
            {
                kernel(slot).forward_feature_major(x, dst, Some(&add_bias(bias(slot))), threads);
            }
            attention(q, k, v, cfg.heads, causal, scores, ctx, threads);

            let b = bias(LinearSlot::AttentionOutput);
            kernel(LinearSlot::AttentionOutput).forward_feature_major(ctx, out, Some(&add_bias(b)), threads);
            residual_layer_norm(x, Some(out), &params.attention_norm, eps);

            let (b, activation) = (bias(LinearSlot::FfnIn), cfg.activation);
            let bias_and_activation = |f: usize, row: &mut [f32]| {
                row.iter_mut().for_each(|v| *v += b[f]);
                activate(activation, row);
            };
            kernel(LinearSlot::FfnIn).forward_feature_major(x, hidden, Some(&bias_and_activation), threads);
            let b = bias(LinearSlot::FfnOut);
            kernel(LinearSlot::FfnOut).forward_feature_major(hidden, out, Some(&add_bias(b)), threads);
            residual_layer_norm(x, Some(out), &params.output_norm, eps);
        }
        if let Some(norm) = &self.shared.final_norm {
            residual_layer_norm(x, None, norm, eps);
        }
        match cfg.lm_head_id() {
            Some(id) => {
                let b = self.shared.bias(id);
                self.linears[id.index()].forward_feature_major(x, out, Some(&add_bias(b)), threads);
                out
            }
            None => x,
        }
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

/// The epilogue that adds a linear layer's bias to its output rows.
fn add_bias(bias: &[f32]) -> impl Fn(usize, &mut [f32]) + Sync + '_ {
    move |f, row| row.iter_mut().for_each(|v| *v += bias[f])
}

/// Activation buffers of one forward, kept per thread between calls: a
/// DistilBERT forward needs ~5 MB of them, and allocating them fresh each
/// time costs page faults on every call (musl's allocator returns large
/// blocks to the kernel on free), which would be timed with the inference.
#[derive(Debug)]
struct ForwardScratch {
    x: Activations,
    q: Activations,
    k: Activations,
    v: Activations,
    ctx: Activations,
    scores: Matrix,
    hidden: Activations,
    out: Activations,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Option<ForwardScratch>> = const { std::cell::Cell::new(None) };
}

impl Default for ForwardScratch {
    fn default() -> Self {
        let empty = Activations::default;
        Self {
            x: empty(),
            q: empty(),
            k: empty(),
            v: empty(),
            ctx: empty(),
            scores: Matrix::zeros(0, 0),
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
