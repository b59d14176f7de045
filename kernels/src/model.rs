//! Run-time reconfiguration: one encoder, several prepacked variants, and an
//! O(1) switch between them while the model is live.
//!
//! RT3 keeps a block-pruned (BP) model and several pattern sets of different
//! sparsity on top of it, one per DVFS level, and swaps the active set as the
//! battery drains ("within 45 ms" in the paper). Here every variant is built
//! and packed when it is added ([`ReconfigurableModel::add_variant`], timed,
//! including building each pattern set from the BP weights), and switching
//! ([`ReconfigurableModel::switch`]) only changes which prepacked encoder
//! runs: a hash lookup and an index store, measured with [`Instant`].
//!
//! Variants:
//! - [`VariantSpec::Dense`]: the baseline, every linear layer a GEMM;
//! - [`VariantSpec::Block`]: BP on every linear layer (biases and layer norms
//!   are never pruned);
//! - [`VariantSpec::Pattern`]: a pattern set on top of a named block variant
//!   (its BP zeros stay zero); the sparsity is that of the layer after PP, BP
//!   zeros included, as RT3 reports it.
//!
//! All variants share one [`SharedParams`] (biases, norms) through an `Arc`.
//! The model also keeps the dense source weights, so variants can be added
//! later; [`estimate_bytes`] tells an agent before building whether the whole
//! thing fits in a board's memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::encoder::{mix_seed, Encoder, EncoderConfig, EncoderWeights, LinearId, SharedParams};
use crate::linear::block::BlockSparseLinear;
use crate::linear::dense::DenseLinear;
use crate::linear::pattern::PatternSparseLinear;
use crate::linear::{LayerStats, LinearKernel, Threads};
use crate::matrix::{Mask, Matrix};
use crate::prune::block::{block_mask, block_masks_global, BlockShape};
use crate::prune::pattern::{generate_pattern_set, CandidateMethod, PatternConfig};
use crate::reference;

/// How to build one variant of the model. Serialised with a `kind` tag, e.g.
/// `{"kind":"block","sparsity":0.64,"block_rows":16,"block_cols":1}`.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields))]
pub enum VariantSpec {
    /// Every linear layer dense.
    Dense,
    /// Block-structured pruning of every linear layer: strips of `block_rows`
    /// rows, column segments `block_cols` wide (see [`crate::prune::block`]).
    Block {
        /// Target fraction of zeros, in `[0, 1)`.
        sparsity: f64,
        block_rows: usize,
        block_cols: usize,
        /// One ratio per linear layer in canonical order (`layer * 6 + slot`,
        /// see [`LinearId::index`]); overrides `sparsity` and `global`.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        per_layer: Option<Vec<f64>>,
        /// `false` (default): every layer pruned to `sparsity`. `true`: one
        /// threshold over all layers' segments together, so `sparsity` holds
        /// overall and layers differ (RT3's BP model: 0 to 99.8 % per layer).
        #[cfg_attr(feature = "serde", serde(default))]
        global: bool,
    },
    /// A pattern set on top of the block variant named `base`.
    Pattern {
        base: String,
        /// Side of the square tile (8, 16, 32, or RT3's 100).
        tile: usize,
        /// Patterns per set (RT3: 4).
        patterns_per_set: usize,
        /// Target fraction of zeros per layer, BP zeros included, in `[0, 1)`.
        sparsity: f64,
        method: CandidateMethod,
        /// Seeds the random tile choice of RT3's candidate generation.
        #[cfg_attr(feature = "serde", serde(default))]
        seed: u64,
    },
}

impl VariantSpec {
    pub fn kind(&self) -> VariantKind {
        match self {
            VariantSpec::Dense => VariantKind::Dense,
            VariantSpec::Block { .. } => VariantKind::Block,
            VariantSpec::Pattern { .. } => VariantKind::Pattern,
        }
    }
}

/// The storage format family of a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum VariantKind {
    Dense,
    Block,
    Pattern,
}

impl VariantKind {
    pub fn name(self) -> &'static str {
        match self {
            VariantKind::Dense => "dense",
            VariantKind::Block => "block",
            VariantKind::Pattern => "pattern",
        }
    }
}

impl fmt::Display for VariantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What was built for a variant: the agent's `load` reply and report rows.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VariantInfo {
    pub name: String,
    pub kind: VariantKind,
    /// The block variant a pattern variant was built on.
    pub base: Option<String>,
    /// Fraction of the linear layers' weights not computed (BP and PP zeros
    /// together): `1 - nnz / dense weights`.
    pub sparsity: f64,
    /// Weights stored and multiplied, over all linear layers.
    pub nnz: usize,
    /// Packed linear weights plus index data, over all linear layers.
    pub bytes: usize,
    /// Weights of the dense linear layers (the denominator of `sparsity`).
    pub dense_weights: usize,
    /// Wall time of `add_variant`: pruning, pattern-set generation and packing.
    pub prepare: Duration,
    /// Part of `prepare` spent generating pattern sets from the BP weights
    /// (all layers); `None` for dense and block variants.
    pub pattern_generation: Option<Duration>,
    /// Per linear layer, canonical order.
    pub layers: Vec<LayerStats>,
}

/// One variant's self-test against the scalar reference.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SelftestReport {
    pub variant: String,
    /// Largest absolute error over every check.
    pub max_abs_err: f64,
    /// Largest relative error (denominator floored at 1e-3, see [`reference::errors`]).
    pub max_rel_err: f64,
    /// Where the largest error relative to its tolerance was: a linear layer
    /// (`layer.3.ffn_in`) or `forward`.
    pub worst: String,
    /// Linear layers checked plus the full forward.
    pub checks: usize,
    pub passed: bool,
}

/// A variant that cannot be added, run or switched to. Every message names
/// the variant and the offending field or value.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("unknown variant `{name}` (loaded: {loaded})")]
    UnknownVariant { name: String, loaded: String },
    #[error("variant `{0}` already exists")]
    DuplicateVariant(String),
    #[error("a variant name must not be empty")]
    EmptyName,
    #[error("variant `{variant}`: `{field}` = {value} is outside [0, 1)")]
    SparsityOutOfRange { variant: String, field: String, value: f64 },
    #[error("variant `{variant}`: `{field}` must be at least 1, got {value}")]
    TooSmall { variant: String, field: &'static str, value: usize },
    #[error("variant `{variant}`: `{field}` = {value} is larger than {limit}")]
    TooLarge { variant: String, field: &'static str, value: usize, limit: usize },
    #[error("variant `{variant}`: `per_layer` has {got} ratios, the model has {expected} linear layers (6 per layer)")]
    PerLayerLength { variant: String, expected: usize, got: usize },
    #[error("variant `{variant}`: unknown base `{base}` (block variants loaded: {loaded})")]
    UnknownBase { variant: String, base: String, loaded: String },
    #[error(
        "variant `{variant}`: base `{base}` is a {kind} variant; a pattern variant needs a block variant as its base"
    )]
    BaseNotBlock { variant: String, base: String, kind: VariantKind },
    #[error("no variant loaded: add one before running")]
    NoVariants,
    #[error("input is {rows}x{cols}; the model needs tokens x {d_model} with at least one token")]
    InputShape { rows: usize, cols: usize, d_model: usize },
}

#[derive(Debug)]
struct Variant {
    info: VariantInfo,
    spec: VariantSpec,
    encoder: Encoder,
}

/// An encoder with several prepacked variants and one active at a time.
#[derive(Debug)]
pub struct ReconfigurableModel {
    weights: EncoderWeights,
    shared: Arc<SharedParams>,
    variants: Vec<Variant>,
    by_name: HashMap<String, usize>,
    active: Option<usize>,
}

/// Largest tile a pattern variant accepts: RT3's 100 is the biggest in use;
/// the packed format stores in-tile positions in 16 bits.
pub const MAX_TILE: usize = 1024;

impl ReconfigurableModel {
    /// A model over `weights` with no variants yet (add at least one).
    pub fn new(weights: EncoderWeights) -> Self {
        let shared = Arc::new(SharedParams::from_weights(&weights));
        Self { weights, shared, variants: Vec::new(), by_name: HashMap::new(), active: None }
    }

    pub fn config(&self) -> &EncoderConfig {
        self.weights.config()
    }

    pub fn weights(&self) -> &EncoderWeights {
        &self.weights
    }

    /// Builds, packs and times a variant. The first variant added becomes active.
    pub fn add_variant(&mut self, name: &str, spec: &VariantSpec) -> Result<VariantInfo, ModelError> {
        if name.is_empty() {
            return Err(ModelError::EmptyName);
        }
        if self.by_name.contains_key(name) {
            return Err(ModelError::DuplicateVariant(name.to_string()));
        }
        validate_spec(name, spec, self.config())?;
        let base = match spec {
            VariantSpec::Pattern { base, .. } => Some(self.block_base(name, base)?),
            _ => None,
        };

        let start = Instant::now();
        let mut pattern_generation = None;
        let linears = match spec {
            VariantSpec::Dense => self.dense_kernels(),
            VariantSpec::Block { sparsity, block_rows, block_cols, per_layer, global } => self.block_kernels(
                *sparsity,
                BlockShape { rows: *block_rows, cols: *block_cols },
                per_layer.as_deref(),
                *global,
            ),
            VariantSpec::Pattern { tile, patterns_per_set, sparsity, method, seed, .. } => {
                let base = &self.variants[base.expect("pattern variants resolve their base above")].encoder;
                let cfg = PatternConfig {
                    tile: *tile,
                    patterns_per_set: *patterns_per_set,
                    sparsity: *sparsity,
                    method: *method,
                    seed: *seed,
                };
                let (linears, generation) = self.pattern_kernels(base, &cfg);
                pattern_generation = Some(generation);
                linears
            }
        };
        let encoder = Encoder::new(Arc::clone(&self.shared), linears)
            .expect("kernels built from the model's own weights have the config's shapes");
        let prepare = start.elapsed();

        let layers: Vec<LayerStats> = encoder.linears().iter().map(|k| k.stats()).collect();
        let nnz = layers.iter().map(|s| s.nnz).sum();
        let dense_weights = self.config().linear_weight_count();
        let info = VariantInfo {
            name: name.to_string(),
            kind: spec.kind(),
            base: match spec {
                VariantSpec::Pattern { base, .. } => Some(base.clone()),
                _ => None,
            },
            sparsity: if dense_weights == 0 { 0.0 } else { 1.0 - nnz as f64 / dense_weights as f64 },
            nnz,
            bytes: layers.iter().map(|s| s.bytes).sum(),
            dense_weights,
            prepare,
            pattern_generation,
            layers,
        };
        self.by_name.insert(name.to_string(), self.variants.len());
        self.variants.push(Variant { info: info.clone(), spec: spec.clone(), encoder });
        if self.active.is_none() {
            self.active = Some(self.variants.len() - 1);
        }
        Ok(info)
    }

    fn block_base(&self, variant: &str, base: &str) -> Result<usize, ModelError> {
        let Some(&index) = self.by_name.get(base) else {
            return Err(ModelError::UnknownBase {
                variant: variant.to_string(),
                base: base.to_string(),
                loaded: self.names_of_kind(Some(VariantKind::Block)),
            });
        };
        match self.variants[index].spec.kind() {
            VariantKind::Block => Ok(index),
            kind => Err(ModelError::BaseNotBlock { variant: variant.to_string(), base: base.to_string(), kind }),
        }
    }

    fn names_of_kind(&self, kind: Option<VariantKind>) -> String {
        let names: Vec<&str> = self
            .variants
            .iter()
            .filter(|v| kind.is_none_or(|k| v.info.kind == k))
            .map(|v| v.info.name.as_str())
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }

    fn dense_kernels(&self) -> Vec<Box<dyn LinearKernel>> {
        self.weights
            .linear_weight_matrices()
            .into_iter()
            .map(|w| Box::new(DenseLinear::new(w.clone())) as Box<dyn LinearKernel>)
            .collect()
    }

    fn block_kernels(
        &self,
        sparsity: f64,
        shape: BlockShape,
        per_layer: Option<&[f64]>,
        global: bool,
    ) -> Vec<Box<dyn LinearKernel>> {
        let ws = self.weights.linear_weight_matrices();
        let masks: Vec<Mask> = match per_layer {
            Some(ratios) => ws.iter().zip(ratios).map(|(w, s)| block_mask(w, shape, *s)).collect(),
            None if global => block_masks_global(&ws, shape, sparsity),
            None => ws.iter().map(|w| block_mask(w, shape, sparsity)).collect(),
        };
        ws.iter()
            .zip(&masks)
            .map(|(w, m)| Box::new(BlockSparseLinear::from_masked(w, m, shape.rows)) as Box<dyn LinearKernel>)
            .collect()
    }

    /// One pattern set per linear layer, generated on the dense weights under
    /// the base's BP mask (recovered from the packed base's effective weights,
    /// so block variants need not keep their masks). Returns the kernels and
    /// the time spent generating sets.
    fn pattern_kernels(&self, base: &Encoder, cfg: &PatternConfig) -> (Vec<Box<dyn LinearKernel>>, Duration) {
        let mut generation = Duration::ZERO;
        let kernels = self
            .config()
            .linear_ids()
            .map(|id| {
                let w = &self.weights.linear(id).weight;
                let base_mask = Mask::nonzeros_of(&base.linear(id).effective_weights());
                let layer_cfg = PatternConfig { seed: mix_seed(cfg.seed, id.index() as u64), ..cfg.clone() };
                let t = Instant::now();
                let set = generate_pattern_set(w, &base_mask, &layer_cfg);
                generation += t.elapsed();
                Box::new(PatternSparseLinear::new(w, &base_mask, &set)) as Box<dyn LinearKernel>
            })
            .collect();
        (kernels, generation)
    }

    /// Makes `name` the active variant. O(1): every variant is prepacked, so
    /// this is a hash lookup and an index store. Returns the time it took.
    pub fn switch(&mut self, name: &str) -> Result<Duration, ModelError> {
        let start = Instant::now();
        let index = self.index_of(name)?;
        self.active = Some(index);
        Ok(start.elapsed())
    }

    fn index_of(&self, name: &str) -> Result<usize, ModelError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| ModelError::UnknownVariant { name: name.to_string(), loaded: self.names_of_kind(None) })
    }

    /// The active variant's info, if any variant was added.
    pub fn active(&self) -> Option<&VariantInfo> {
        self.active.map(|i| &self.variants[i].info)
    }

    /// Every variant's info, in the order added.
    pub fn variants(&self) -> Vec<&VariantInfo> {
        self.variants.iter().map(|v| &v.info).collect()
    }

    pub fn variant(&self, name: &str) -> Result<&VariantInfo, ModelError> {
        Ok(&self.variants[self.index_of(name)?].info)
    }

    pub fn spec(&self, name: &str) -> Result<&VariantSpec, ModelError> {
        Ok(&self.variants[self.index_of(name)?].spec)
    }

    /// The packed encoder of a variant (for benchmarks and tests).
    pub fn encoder(&self, name: &str) -> Result<&Encoder, ModelError> {
        Ok(&self.variants[self.index_of(name)?].encoder)
    }

    /// Bytes held now: dense source weights, shared params and every variant's packed layers.
    pub fn resident_bytes(&self) -> usize {
        self.config().parameter_count() * 4
            + self.shared.bytes()
            + self.variants.iter().map(|v| v.info.bytes).sum::<usize>()
    }

    fn check_input(&self, input: &Matrix) -> Result<(), ModelError> {
        let d_model = self.config().d_model;
        if input.cols() != d_model || input.rows() == 0 {
            return Err(ModelError::InputShape { rows: input.rows(), cols: input.cols(), d_model });
        }
        Ok(())
    }

    /// Runs the active variant on `input` (`tokens x d_model`).
    pub fn forward(&self, input: &Matrix, threads: Threads) -> Result<Matrix, ModelError> {
        let index = self.active.ok_or(ModelError::NoVariants)?;
        self.check_input(input)?;
        Ok(self.variants[index].encoder.forward(input, threads))
    }

    /// Runs the named variant, whichever is active.
    pub fn forward_variant(&self, name: &str, input: &Matrix, threads: Threads) -> Result<Matrix, ModelError> {
        let index = self.index_of(name)?;
        self.check_input(input)?;
        Ok(self.variants[index].encoder.forward(input, threads))
    }

    /// Checks every variant's optimised kernels against the scalar reference
    /// on this CPU: each linear layer on a seeded random input with as many
    /// tokens as `input` (against [`reference::linear`] on the layer's
    /// effective weights), then the full forward on `input` against
    /// [`Encoder::reference_forward`]. The reference is slow: give a board a
    /// few tokens, not the full sequence.
    ///
    /// Tolerances scale with the output's magnitude (`tol * max(1, max|ref|)`):
    /// [`LINEAR_TOLERANCE`] for a linear layer, [`FORWARD_TOLERANCE`] for the
    /// forward, where `f32` rounding of softmax, GELU and layer norm compounds
    /// over the layers. A wrong index or dropped weight moves outputs by
    /// O(|w|) ~ 1/sqrt(in), far above both.
    pub fn selftest(&self, input: &Matrix) -> Result<Vec<SelftestReport>, ModelError> {
        self.check_input(input)?;
        let tokens = input.rows();
        Ok(self
            .variants
            .iter()
            .map(|variant| {
                let mut acc = SelftestAccumulator::default();
                for (index, kernel) in variant.encoder.linears().iter().enumerate() {
                    let x = Matrix::random(tokens, kernel.in_features(), mix_seed(0x5e1f_7e57, index as u64), 1.0);
                    let mut y = Matrix::zeros(tokens, kernel.out_features());
                    kernel.forward(&x, &mut y, Threads::One);
                    let want = reference::linear(&x, &kernel.effective_weights());
                    acc.add(&LinearId::from_index(index).to_string(), &y, &want, LINEAR_TOLERANCE);
                }
                let got = variant.encoder.forward(input, Threads::One);
                let want = variant.encoder.reference_forward(input);
                acc.add("forward", &got, &want, FORWARD_TOLERANCE);
                acc.report(&variant.info.name)
            })
            .collect())
    }
}

/// Self-test tolerance of one linear layer, relative to `max(1, max|reference|)`.
pub const LINEAR_TOLERANCE: f64 = 1e-4;
/// Self-test tolerance of a full forward, relative to `max(1, max|reference|)`.
pub const FORWARD_TOLERANCE: f64 = 2e-3;

#[derive(Default)]
struct SelftestAccumulator {
    max_abs: f64,
    max_rel: f64,
    /// Worst error as a fraction of its tolerance, and where.
    worst: Option<(f64, String)>,
    checks: usize,
}

impl SelftestAccumulator {
    fn add(&mut self, what: &str, got: &Matrix, want: &Matrix, tolerance: f64) {
        let (abs, rel) = reference::errors(got, want);
        let scale = want.as_slice().iter().fold(1.0f64, |m, v| m.max((*v as f64).abs()));
        // NaN compares false everywhere, so it is mapped to infinity to fail.
        let ratio = if abs.is_nan() { f64::INFINITY } else { abs / (tolerance * scale) };
        self.max_abs = if abs.is_nan() { f64::INFINITY } else { self.max_abs.max(abs) };
        self.max_rel = if rel.is_nan() { f64::INFINITY } else { self.max_rel.max(rel) };
        if self.worst.as_ref().is_none_or(|(r, _)| ratio > *r) {
            self.worst = Some((ratio, what.to_string()));
        }
        self.checks += 1;
    }

    fn report(self, variant: &str) -> SelftestReport {
        let (ratio, worst) = self.worst.unwrap_or((0.0, String::new()));
        SelftestReport {
            variant: variant.to_string(),
            max_abs_err: self.max_abs,
            max_rel_err: self.max_rel,
            worst,
            checks: self.checks,
            passed: ratio <= 1.0,
        }
    }
}

fn validate_spec(variant: &str, spec: &VariantSpec, config: &EncoderConfig) -> Result<(), ModelError> {
    let sparsity = |field: String, value: f64| {
        if (0.0..1.0).contains(&value) {
            Ok(())
        } else {
            Err(ModelError::SparsityOutOfRange { variant: variant.to_string(), field, value })
        }
    };
    let at_least_one = |field: &'static str, value: usize| {
        if value == 0 {
            Err(ModelError::TooSmall { variant: variant.to_string(), field, value })
        } else {
            Ok(())
        }
    };
    match spec {
        VariantSpec::Dense => Ok(()),
        VariantSpec::Block { sparsity: s, block_rows, block_cols, per_layer, .. } => {
            sparsity("sparsity".into(), *s)?;
            at_least_one("block_rows", *block_rows)?;
            at_least_one("block_cols", *block_cols)?;
            if let Some(ratios) = per_layer {
                if ratios.len() != config.linear_count() {
                    return Err(ModelError::PerLayerLength {
                        variant: variant.to_string(),
                        expected: config.linear_count(),
                        got: ratios.len(),
                    });
                }
                for (i, r) in ratios.iter().enumerate() {
                    sparsity(format!("per_layer[{i}] ({})", LinearId::from_index(i)), *r)?;
                }
            }
            Ok(())
        }
        VariantSpec::Pattern { tile, patterns_per_set, sparsity: s, .. } => {
            sparsity("sparsity".into(), *s)?;
            at_least_one("tile", *tile)?;
            at_least_one("patterns_per_set", *patterns_per_set)?;
            if *tile > MAX_TILE {
                return Err(ModelError::TooLarge {
                    variant: variant.to_string(),
                    field: "tile",
                    value: *tile,
                    limit: MAX_TILE,
                });
            }
            if *patterns_per_set > u16::MAX as usize {
                return Err(ModelError::TooLarge {
                    variant: variant.to_string(),
                    field: "patterns_per_set",
                    value: *patterns_per_set,
                    limit: u16::MAX as usize,
                });
            }
            Ok(())
        }
    }
}

/// Memory a model would need, estimated before building it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemoryEstimate {
    /// Dense source weights the model keeps (all parameters, `f32`) plus the
    /// copy of biases and norms every variant shares.
    pub source_weights: usize,
    /// Per variant, in the order given: packed weights plus index data.
    pub variants: Vec<usize>,
    /// Peak temporary memory while building a variant and running a forward.
    pub transient: usize,
}

impl MemoryEstimate {
    pub fn total(&self) -> usize {
        self.source_weights + self.variants.iter().sum::<usize>() + self.transient
    }
}

/// Estimates the memory of a model with `config` and its named variant specs
/// (in the order they would be added), before any weight is generated, so an
/// agent can refuse a model too large for the board.
///
/// Upper-leaning, from the packed formats, with `W` a layer's dense weights
/// and `s` its sparsity:
/// - dense: `4·W`;
/// - block: `4·(1-s)·W` plus a 4-byte column index per kept strip column,
///   5 % for whole segments rounding the target, and strip headers;
/// - pattern: the packed format stores every position of a tile's pattern
///   that any tile of its group keeps, so BP zeros under a pattern can be
///   stored as explicit zeros. Stored slots are estimated as the pattern's
///   keep fraction `(1-s) / (1-s_base)` of the tile-padded `W` (BP and PP
///   independent), or `(1-s)` of it when the base's blocks are whole tiles
///   (then no BP zero falls inside a kept tile), at 4 bytes plus about 1 byte
///   of shared index each, plus a group header and a run per tile row for
///   every two tiles.
pub fn estimate_bytes(config: &EncoderConfig, specs: &[(&str, &VariantSpec)]) -> MemoryEstimate {
    let shapes: Vec<(usize, usize)> = config.linear_ids().map(|id| config.linear_shape(id.slot)).collect();
    let weights: Vec<f64> = shapes.iter().map(|(o, i)| (o * i) as f64).collect();
    let total_w: f64 = weights.iter().sum();
    let layer_sparsity = |spec: &VariantSpec| -> Vec<f64> {
        match spec {
            VariantSpec::Block { per_layer: Some(r), .. } if r.len() == weights.len() => r.clone(),
            VariantSpec::Block { sparsity, .. } | VariantSpec::Pattern { sparsity, .. } => {
                vec![*sparsity; weights.len()]
            }
            VariantSpec::Dense => vec![0.0; weights.len()],
        }
    };
    let variants = specs
        .iter()
        .map(|(_, spec)| {
            let bytes = match spec {
                VariantSpec::Dense => 4.0 * total_w,
                VariantSpec::Block { block_rows, .. } => {
                    let rows = (*block_rows).max(1);
                    let kept: f64 = weights.iter().zip(layer_sparsity(spec)).map(|(w, s)| w * (1.0 - s)).sum();
                    let strips: usize = shapes.iter().map(|(o, _)| o.div_ceil(rows)).sum();
                    4.0 * kept * (1.0 + 1.0 / rows as f64) * 1.05 + 64.0 * strips as f64
                }
                VariantSpec::Pattern { base, tile, sparsity, .. } => {
                    let t = (*tile).max(1);
                    let base_spec = specs.iter().find(|(name, _)| name == base).map(|(_, b)| *b);
                    let base_sparsity =
                        base_spec.map(layer_sparsity).unwrap_or_else(|| vec![0.0; weights.len()]);
                    // BP blocks made of whole tiles leave no BP zero inside a kept tile.
                    let tile_aligned = matches!(base_spec,
                        Some(VariantSpec::Block { block_rows, block_cols, .. }) if block_rows % t == 0 && block_cols % t == 0);
                    let slots: f64 = shapes
                        .iter()
                        .zip(base_sparsity)
                        .map(|((o, i), bs)| {
                            let padded = (o.div_ceil(t) * t * i.div_ceil(t) * t) as f64;
                            if tile_aligned {
                                padded * (1.0 - sparsity.max(bs))
                            } else {
                                padded * ((1.0 - sparsity) / (1.0 - bs).max(1e-9)).min(1.0)
                            }
                        })
                        .sum();
                    // Per group of tiles: a header and one index run per tile row;
                    // groups are assumed half full on average.
                    let tiles: f64 = shapes.iter().map(|(o, i)| (o.div_ceil(t) * i.div_ceil(t)) as f64).sum();
                    let per_tile = (12 * t + 48) as f64 * 2.0 / crate::linear::pattern::GROUP_TILES as f64;
                    5.0 * slots + tiles * per_tile
                }
            };
            bytes.ceil() as usize + 4096
        })
        .collect();
    let largest = shapes.iter().map(|(o, i)| o * i).max().unwrap_or(0);
    let tokens = config.seq_len;
    // Building: one layer's dense effective weights, its mask and pattern bookkeeping.
    let build = largest * (4 + 1 + 4);
    // Forward: x, q, k, v, ctx, out (tokens x d), hidden (tokens x ffn), scores (tokens x tokens), input copies.
    let forward = 4 * tokens * (8 * config.d_model + 2 * config.ffn + tokens);
    MemoryEstimate {
        source_weights: (2 * config.parameter_count() - config.linear_weight_count()) * 4,
        variants,
        transient: build.max(forward) + (1 << 20),
    }
}

/// A seeded `tokens x d_model` input (`config.seq_len` tokens), uniform in
/// `±sqrt(3)` (unit variance, like a layer-normed embedding). Random rather
/// than zero-filled: zeros make some ARM cores skip work and skew timings.
pub fn random_input(config: &EncoderConfig, seed: u64) -> Matrix {
    Matrix::random(config.seq_len, config.d_model, seed, 3.0f32.sqrt())
}

/// A digest of an output, stable across runs and platforms for equal bits:
/// 64-bit FNV-1a over the shape and every value's `f32` bits (little endian).
/// The agent feeds outputs into it so no inference can be optimised away and
/// a changed kernel shows up as a changed checksum.
pub fn checksum(m: &Matrix) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= *b as u64;
            hash = hash.wrapping_mul(PRIME);
        }
    };
    feed(&(m.rows() as u64).to_le_bytes());
    feed(&(m.cols() as u64).to_le_bytes());
    for v in m.as_slice() {
        feed(&v.to_bits().to_le_bytes());
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_fnv1a_and_sees_shape_and_bits() {
        let a = Matrix::from_vec(1, 2, vec![1.0, -0.0]);
        let b = Matrix::from_vec(1, 2, vec![1.0, 0.0]);
        let c = Matrix::from_vec(2, 1, vec![1.0, -0.0]);
        assert_ne!(checksum(&a), checksum(&b));
        assert_ne!(checksum(&a), checksum(&c));
        assert_eq!(checksum(&a), checksum(&a.clone()));
        // FNV-1a of the empty input is the offset basis; a 0x0 matrix still hashes its shape.
        assert_ne!(checksum(&Matrix::zeros(0, 0)), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn spec_validation_names_variant_and_field() {
        let cfg = crate::encoder::Preset::Rt3Transformer.config();
        let bad = VariantSpec::Block { sparsity: 1.0, block_rows: 4, block_cols: 1, per_layer: None, global: false };
        let e = validate_spec("bp", &bad, &cfg).unwrap_err().to_string();
        assert!(e.contains("`bp`") && e.contains("`sparsity` = 1"), "{e}");
        let bad = VariantSpec::Block { sparsity: 0.5, block_rows: 0, block_cols: 1, per_layer: None, global: false };
        assert!(validate_spec("bp", &bad, &cfg).unwrap_err().to_string().contains("`block_rows`"));
        let bad = VariantSpec::Block {
            sparsity: 0.5,
            block_rows: 4,
            block_cols: 1,
            per_layer: Some(vec![0.5; 3]),
            global: false,
        };
        assert!(validate_spec("bp", &bad, &cfg).unwrap_err().to_string().contains("has 3 ratios"));
        let mut ratios = vec![0.5; 12];
        ratios[10] = -0.1;
        let bad =
            VariantSpec::Block { sparsity: 0.5, block_rows: 4, block_cols: 1, per_layer: Some(ratios), global: false };
        assert!(validate_spec("bp", &bad, &cfg).unwrap_err().to_string().contains("per_layer[10] (layer.1.ffn_in)"));
        let bad = VariantSpec::Pattern {
            base: "bp".into(),
            tile: 0,
            patterns_per_set: 4,
            sparsity: 0.75,
            method: CandidateMethod::Rt3TileSums,
            seed: 0,
        };
        assert!(validate_spec("pp", &bad, &cfg).unwrap_err().to_string().contains("`pp`: `tile` must be at least 1"));
    }

    #[test]
    fn estimate_grows_with_density() {
        let cfg = crate::encoder::Preset::DistilBert.config();
        let dense = estimate_bytes(&cfg, &[("dense", &VariantSpec::Dense)]);
        let sparse = estimate_bytes(
            &cfg,
            &[(
                "bp",
                &VariantSpec::Block { sparsity: 0.75, block_rows: 16, block_cols: 1, per_layer: None, global: false },
            )],
        );
        assert!(dense.variants[0] > 2 * sparse.variants[0]);
        // DistilBERT's six encoder layers hold 42.47 M linear weights: 169.9 MB dense.
        assert!((169_000_000..175_000_000).contains(&dense.variants[0]), "{}", dense.variants[0]);
        assert!(dense.total() > dense.source_weights + dense.variants[0]);
    }
}
