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
//! Every linear layer is pruned alike, the word language model's `lm_head`
//! (its output projection onto the vocabulary, when the config runs one)
//! included: it is the last layer in canonical order.
//!
//! All variants share one [`SharedParams`] (biases, norms, the token
//! embedding) through an `Arc`.
//! The model also keeps the dense source weights, so variants can be added
//! later; [`estimate_bytes`] tells an agent before building whether the whole
//! thing fits in a board's memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::encoder::{
    mix_seed, Encoder, EncoderConfig, EncoderWeights, InputError, LinearId, LinearSlot, SharedParams,
};
use crate::linear::block::BlockSparseLinear;
use crate::linear::dense::DenseLinear;
use crate::linear::masked::MaskedStripLinear;
use crate::linear::pattern::PatternSparseLinear;
use crate::linear::{LayerStats, LinearKernel, Threads};
use crate::matrix::{BitMask, Mask, Matrix};
use crate::prune::block::{block_mask, block_masks_global, BlockShape};
use crate::prune::pattern::{
    assign_patterns, assign_patterns_on_blocks, generate_pattern_set, generate_pattern_set_on_blocks, CandidateMethod,
    PatternConfig, PatternSet,
};
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
        /// then the `lm_head` if any, see [`LinearId::index`]); overrides
        /// `sparsity` and `global`.
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
    /// Non-zero weights stored, over all linear layers.
    pub nnz: usize,
    /// Weights multiplied per token, explicit zeros included, over all
    /// linear layers (equal to the mask's kept weights for every kernel that
    /// stores no zeros, which includes pattern sets on a BP base).
    #[cfg_attr(feature = "serde", serde(default))]
    pub multiplied: usize,
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
    #[error(
        "variant `{variant}`: `per_layer` has {got} ratios, the model has {expected} linear layers (6 per layer, \
         plus the lm_head if it has one)"
    )]
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
    #[error(
        "variant `{0}` is not resident (the model holds one pattern set at a time): put it into effect with a cold \
         switch first"
    )]
    NotResident(String),
    #[error("variant `{name}` is a {kind} variant: only pattern sets are put into effect from their definitions")]
    NotAPatternSet { name: String, kind: VariantKind },
    #[error(transparent)]
    Input(#[from] InputError),
}

/// How a model holds its pattern sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Residency {
    /// Every variant packed at load; a switch is an index store (a hot switch).
    #[default]
    AllPrepacked,
    /// As on a device that holds one packed pattern set at a time: the others are kept as their
    /// pattern definitions only, and a switch assigns and packs the new set from the resident weights
    /// (a cold switch). Dense and block variants (the baselines) stay packed.
    OneSet,
}

/// Bytes a model holds under each residency, for the same variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResidencyBytes {
    /// Source weights, shared parameters and every variant packed.
    pub all_prepacked: usize,
    /// Source weights, shared parameters, the baselines packed, the largest pattern set packed and
    /// every set's definitions.
    pub one_set: usize,
}

#[derive(Debug)]
struct Variant {
    info: VariantInfo,
    spec: VariantSpec,
    /// `None`: a pattern set not resident ([`Residency::OneSet`]).
    encoder: Option<Encoder>,
    /// Per linear layer, the variant's own mask (`None`: dense, or not
    /// resident), kept while resident so self-tests compare against the
    /// dense weights masked by it, independently of how the kernels packed
    /// them, and so pattern sets can be built on a block variant's exact BP
    /// mask.
    masks: Option<Vec<BitMask>>,
    /// A pattern variant's definitions: the pattern set of each linear layer
    /// (what a device stores to put the set into effect again).
    sets: Option<Vec<PatternSet>>,
}

/// Rows per packed strip of a pattern set on BP strips of `strip_rows`:
/// one tile row where the tiles nest in the strips (a 32-row strip under
/// 16x16 tiles has two tile rows with independent patterns, and packing them
/// together would square the number of distinct row masks, so runs would be
/// a column or two long), else the largest height that divides both.
/// A packing choice only: the kernel is exact for any height.
pub fn pack_rows(strip_rows: usize, tile: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if tile >= strip_rows {
        strip_rows
    } else {
        gcd(strip_rows, tile)
    }
}

/// The strip height of a block variant (a pattern set's base).
fn base_strip_rows(base: &Variant) -> usize {
    match base.spec {
        VariantSpec::Block { block_rows, .. } => block_rows,
        _ => unreachable!("pattern bases are block variants (checked by block_base)"),
    }
}

impl Variant {
    fn mask_bytes(&self) -> usize {
        self.masks.as_ref().map_or(0, |m| m.iter().map(BitMask::bytes).sum())
    }

    /// Bytes of the pattern definitions (one bool per tile position per pattern, stored as bits).
    fn definition_bytes(&self) -> usize {
        self.sets.as_ref().map_or(0, |sets| sets.iter().map(|s| s.len() * (s.tile() * s.tile()).div_ceil(8)).sum())
    }

    fn is_pattern(&self) -> bool {
        self.info.kind == VariantKind::Pattern
    }

    /// The weights this variant must compute with: the dense weights masked
    /// by its own mask (the self-test's reference, independent of packing).
    fn masked_weights(&self, weights: &EncoderWeights, id: LinearId) -> Matrix {
        let w = &weights.linear(id).weight;
        match &self.masks {
            Some(masks) => masks[id.index()].masked(w),
            None => w.clone(),
        }
    }
}

/// An encoder with several prepacked variants and one active at a time.
#[derive(Debug)]
pub struct ReconfigurableModel {
    weights: EncoderWeights,
    shared: Arc<SharedParams>,
    variants: Vec<Variant>,
    by_name: HashMap<String, usize>,
    active: Option<usize>,
    residency: Residency,
}

/// Largest tile a pattern variant accepts: RT3's 100 is the biggest in use;
/// the packed format stores in-tile positions in 16 bits.
pub const MAX_TILE: usize = 1024;

impl ReconfigurableModel {
    /// A model over `weights` with no variants yet (add at least one).
    pub fn new(weights: EncoderWeights) -> Self {
        let shared = Arc::new(SharedParams::from_weights(&weights));
        Self {
            weights,
            shared,
            variants: Vec::new(),
            by_name: HashMap::new(),
            active: None,
            residency: Residency::AllPrepacked,
        }
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
        let mut sets = None;
        let (linears, masks) = match spec {
            VariantSpec::Dense => (self.dense_kernels(), None),
            VariantSpec::Block { sparsity, block_rows, block_cols, per_layer, global } => {
                let (kernels, masks) = self.block_kernels(
                    *sparsity,
                    BlockShape { rows: *block_rows, cols: *block_cols },
                    per_layer.as_deref(),
                    *global,
                );
                (kernels, Some(masks))
            }
            VariantSpec::Pattern { tile, patterns_per_set, sparsity, method, seed, .. } => {
                let base = &self.variants[base.expect("pattern variants resolve their base above")];
                let cfg = PatternConfig {
                    tile: *tile,
                    patterns_per_set: *patterns_per_set,
                    sparsity: *sparsity,
                    method: *method,
                    seed: *seed,
                };
                let (layer_sets, generation) = self.generate_pattern_sets(base, &cfg);
                let (linears, masks) = self.realize_pattern_sets(base, cfg.tile, &layer_sets);
                pattern_generation = Some(generation);
                sets = Some(layer_sets);
                (linears, Some(masks))
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
            multiplied: layers.iter().map(|s| s.multiplied).sum(),
            bytes: layers.iter().map(|s| s.bytes).sum(),
            dense_weights,
            prepare,
            pattern_generation,
            layers,
        };
        self.by_name.insert(name.to_string(), self.variants.len());
        self.variants.push(Variant { info: info.clone(), spec: spec.clone(), encoder: Some(encoder), masks, sets });
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
    ) -> (Vec<Box<dyn LinearKernel>>, Vec<BitMask>) {
        let ws = self.weights.linear_weight_matrices();
        let masks: Vec<Mask> = match per_layer {
            Some(ratios) => ws.iter().zip(ratios).map(|(w, s)| block_mask(w, shape, *s)).collect(),
            None if global => block_masks_global(&ws, shape, sparsity),
            None => ws.iter().map(|w| block_mask(w, shape, sparsity)).collect(),
        };
        let kernels = ws
            .iter()
            .zip(&masks)
            .map(|(w, m)| Box::new(BlockSparseLinear::from_masked(w, m, shape.rows)) as Box<dyn LinearKernel>)
            .collect();
        (kernels, masks.iter().map(BitMask::from_mask).collect())
    }

    /// One pattern set per linear layer, generated on the dense weights under
    /// the base's BP mask (over the compacted BP blocks on a base that removed
    /// weights, [`crate::prune::pattern::BlockCompaction`]). This is the
    /// offline step of RT3: the sets are the stored definitions. Returns the
    /// sets and the time spent generating them.
    fn generate_pattern_sets(&self, base: &Variant, cfg: &PatternConfig) -> (Vec<PatternSet>, Duration) {
        let strip_rows = base_strip_rows(base);
        let base_masks = base.masks.as_ref().expect("block variants keep their masks");
        let start = Instant::now();
        let sets = self
            .config()
            .linear_ids()
            .map(|id| {
                let w = &self.weights.linear(id).weight;
                let base_mask = base_masks[id.index()].to_mask();
                let layer_cfg = PatternConfig { seed: mix_seed(cfg.seed, id.index() as u64), ..cfg.clone() };
                if base_mask.kept() == w.rows() * w.cols() {
                    generate_pattern_set(w, &base_mask, &layer_cfg)
                } else {
                    generate_pattern_set_on_blocks(w, &base_mask, strip_rows, &layer_cfg)
                }
            })
            .collect();
        (sets, start.elapsed())
    }

    /// Puts pattern sets into effect: assigns a pattern of each layer's set to
    /// every tile (on the base's BP weights) and packs the result. On a base
    /// that removed weights the kernel is the masked-strip one, which stores
    /// and multiplies kept weights only; on a base that removed nothing it is
    /// plain PP on the tile-grouped pattern kernel. Returns the kernels and the
    /// final masks.
    fn realize_pattern_sets(
        &self,
        base: &Variant,
        tile: usize,
        sets: &[PatternSet],
    ) -> (Vec<Box<dyn LinearKernel>>, Vec<BitMask>) {
        let strip_rows = base_strip_rows(base);
        let base_masks = base.masks.as_ref().expect("block variants keep their masks");
        let mut masks = Vec::new();
        let kernels = self
            .config()
            .linear_ids()
            .zip(sets)
            .map(|(id, set)| {
                let w = &self.weights.linear(id).weight;
                let base_mask = base_masks[id.index()].to_mask();
                let kernel: Box<dyn LinearKernel> = if base_mask.kept() == w.rows() * w.cols() {
                    let a = assign_patterns(w, &base_mask, set);
                    let kernel = PatternSparseLinear::from_assignment(w, &a, set.len());
                    masks.push(BitMask::from_mask(a.mask()));
                    Box::new(kernel)
                } else {
                    let a = assign_patterns_on_blocks(w, &base_mask, strip_rows, set);
                    masks.push(BitMask::from_mask(&a.mask));
                    Box::new(MaskedStripLinear::from_masked(w, &a.mask, pack_rows(strip_rows, tile), "pattern"))
                };
                kernel
            })
            .collect();
        (kernels, masks)
    }

    /// Puts pattern set `name` into effect from its definitions (a cold
    /// switch): under [`Residency::OneSet`] the resident pattern set is
    /// dropped first, then the new one is assigned and packed; under
    /// [`Residency::AllPrepacked`] the set is packed again in place of its
    /// prepacked copy. Either way `name` becomes active. Returns the time
    /// from the request to the set being ready.
    pub fn cold_switch(&mut self, name: &str) -> Result<Duration, ModelError> {
        let start = Instant::now();
        let index = self.index_of(name)?;
        let variant = &self.variants[index];
        if !variant.is_pattern() {
            return Err(ModelError::NotAPatternSet { name: name.to_string(), kind: variant.info.kind });
        }
        if self.residency == Residency::OneSet {
            for v in self.variants.iter_mut().filter(|v| v.is_pattern()) {
                v.encoder = None;
                v.masks = None;
            }
        }
        let variant = &self.variants[index];
        let VariantSpec::Pattern { base, tile, .. } = &variant.spec else { unreachable!("checked above") };
        let base = &self.variants[self.block_base(name, base)?];
        let sets = variant.sets.as_ref().expect("pattern variants keep their definitions");
        let (linears, masks) = self.realize_pattern_sets(base, *tile, sets);
        let encoder = Encoder::new(Arc::clone(&self.shared), linears)
            .expect("kernels built from the model's own weights have the config's shapes");
        let variant = &mut self.variants[index];
        variant.encoder = Some(encoder);
        variant.masks = Some(masks);
        self.active = Some(index);
        Ok(start.elapsed())
    }

    /// Switches the model to holding one pattern set at a time: every pattern
    /// set but the active one is dropped to its definitions. Returns the bytes
    /// freed.
    pub fn set_residency(&mut self, residency: Residency) -> usize {
        self.residency = residency;
        if residency == Residency::AllPrepacked {
            return 0;
        }
        let before = self.resident_bytes();
        let active = self.active;
        for (i, v) in self.variants.iter_mut().enumerate() {
            if v.is_pattern() && Some(i) != active {
                v.encoder = None;
                v.masks = None;
            }
        }
        before - self.resident_bytes()
    }

    pub fn residency(&self) -> Residency {
        self.residency
    }

    /// Whether `name` is packed and ready to run.
    pub fn is_resident(&self, name: &str) -> Result<bool, ModelError> {
        Ok(self.variants[self.index_of(name)?].encoder.is_some())
    }

    /// What the same variants cost under each residency (see [`ResidencyBytes`]).
    pub fn residency_bytes(&self) -> ResidencyBytes {
        let fixed = self.config().parameter_count() * 4 + self.shared.bytes();
        // Packed layers plus the mask kept beside them (one bit per weight; dense keeps none).
        let packed = |v: &Variant| {
            v.info.bytes + if v.info.kind == VariantKind::Dense { 0 } else { v.info.dense_weights.div_ceil(8) }
        };
        let baselines: usize = self.variants.iter().filter(|v| !v.is_pattern()).map(packed).sum();
        let patterns: Vec<usize> = self.variants.iter().filter(|v| v.is_pattern()).map(packed).collect();
        let definitions: usize = self.variants.iter().map(Variant::definition_bytes).sum();
        ResidencyBytes {
            all_prepacked: fixed + baselines + patterns.iter().sum::<usize>() + definitions,
            one_set: fixed + baselines + patterns.iter().copied().max().unwrap_or(0) + definitions,
        }
    }

    /// Makes `name` the active variant (a hot switch). O(1): the variant is
    /// prepacked, so this is a hash lookup and an index store. Returns the
    /// time it took. A pattern set that is not resident needs
    /// [`ReconfigurableModel::cold_switch`].
    pub fn switch(&mut self, name: &str) -> Result<Duration, ModelError> {
        let start = Instant::now();
        let index = self.index_of(name)?;
        if self.variants[index].encoder.is_none() {
            return Err(ModelError::NotResident(name.to_string()));
        }
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
        self.variants[self.index_of(name)?].encoder.as_ref().ok_or_else(|| ModelError::NotResident(name.to_string()))
    }

    /// Bytes held now: dense source weights, shared params, every resident
    /// variant's packed layers and masks, and the pattern definitions.
    pub fn resident_bytes(&self) -> usize {
        self.config().parameter_count() * 4
            + self.shared.bytes()
            + self
                .variants
                .iter()
                .map(|v| {
                    let packed = if v.encoder.is_some() { v.info.bytes + v.mask_bytes() } else { 0 };
                    packed + v.definition_bytes()
                })
                .sum::<usize>()
    }

    fn check_input(&self, input: &Matrix) -> Result<(), ModelError> {
        let d_model = self.config().d_model;
        if input.cols() != d_model || input.rows() == 0 {
            return Err(ModelError::InputShape { rows: input.rows(), cols: input.cols(), d_model });
        }
        Ok(())
    }

    /// The first layer's input for token ids: the embedding lookup scaled by
    /// `sqrt(d_model)` plus the positional encoding. An error for a model
    /// without a token embedding, no tokens, or a token outside the vocabulary.
    pub fn embed(&self, tokens: &[u32]) -> Result<Matrix, ModelError> {
        Ok(self.shared.embedding().ok_or(InputError::NoEmbedding)?.embed(tokens)?)
    }

    /// A seeded input of `tokens` tokens for this model, what benchmarks and
    /// fidelity checks run on: for a model with a token embedding (the word
    /// language model), `tokens` ids drawn uniformly from its vocabulary and
    /// embedded ([`ReconfigurableModel::embed`]), so the layers see what the
    /// model's own front end makes of real token ids (with a checkpoint, its
    /// trained embedding); otherwise [`random_input`]'s activations. The
    /// lookup happens here, outside any timed forward: it is a gather of
    /// `tokens` rows, no multiply-accumulate.
    pub fn seeded_input(&self, tokens: usize, seed: u64) -> Matrix {
        let config = self.config().with_seq_len(tokens);
        match self.shared.embedding() {
            Some(e) if tokens > 0 => {
                let ids = random_tokens(e.vocab(), tokens, seed);
                e.embed(&ids).expect("ids are drawn inside the vocabulary")
            }
            Some(e) => Matrix::zeros(0, e.d_model()),
            None => random_input(&config, seed),
        }
    }

    /// Runs the active variant on `input` (`tokens x d_model`).
    pub fn forward(&self, input: &Matrix, threads: Threads) -> Result<Matrix, ModelError> {
        let index = self.active.ok_or(ModelError::NoVariants)?;
        self.check_input(input)?;
        let variant = &self.variants[index];
        let encoder = variant.encoder.as_ref().ok_or_else(|| ModelError::NotResident(variant.info.name.clone()))?;
        Ok(encoder.forward(input, threads))
    }

    /// Runs the named variant, whichever is active.
    pub fn forward_variant(&self, name: &str, input: &Matrix, threads: Threads) -> Result<Matrix, ModelError> {
        let index = self.index_of(name)?;
        self.check_input(input)?;
        let variant = &self.variants[index];
        let encoder = variant.encoder.as_ref().ok_or_else(|| ModelError::NotResident(variant.info.name.clone()))?;
        Ok(encoder.forward(input, threads))
    }

    /// Checks every variant's optimised kernels against the scalar reference
    /// on this CPU, independently of how they packed their weights: the
    /// reference multiplies the dense source weights masked by the variant's
    /// own mask (kept at load). Each linear layer runs on a seeded random
    /// input with as many tokens as `input` (against [`reference::linear`]),
    /// then the full forward on `input` against
    /// [`Encoder::reference_forward_with`] on the masked weights. The
    /// reference is slow: give a board a few tokens, not the full sequence.
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
            .filter(|variant| variant.encoder.is_some())
            .map(|variant| {
                let encoder = variant.encoder.as_ref().expect("filtered on residency");
                let mut acc = SelftestAccumulator::default();
                let masked: Vec<Matrix> =
                    self.config().linear_ids().map(|id| variant.masked_weights(&self.weights, id)).collect();
                for (index, kernel) in encoder.linears().iter().enumerate() {
                    let x = Matrix::random(tokens, kernel.in_features(), mix_seed(0x5e1f_7e57, index as u64), 1.0);
                    let mut y = Matrix::zeros(tokens, kernel.out_features());
                    kernel.forward(&x, &mut y, Threads::One);
                    let want = reference::linear(&x, &masked[index]);
                    let id = self.config().linear_id(index).expect("one kernel per linear layer of the config");
                    acc.add(&id.to_string(), &y, &want, LINEAR_TOLERANCE);
                }
                let got = encoder.forward(input, Threads::One);
                let want = encoder.reference_forward_with(input, &|id| masked[id.index()].clone());
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
                for (id, r) in config.linear_ids().zip(ratios) {
                    sparsity(format!("per_layer[{}] ({id})", id.index()), *r)?;
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

/// Memory a model would need, estimated before building it. Every figure
/// saturates at `usize::MAX` (4 GiB on a 32-bit target, where a long
/// sequence's activations alone can exceed what `usize` counts).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemoryEstimate {
    /// Dense source weights the model keeps (all parameters, `f32`, the token
    /// embedding and the `lm_head` included) plus the copy of biases and
    /// norms every variant shares.
    pub source_weights: usize,
    /// Per variant, in the order given: packed weights plus index data.
    pub variants: Vec<usize>,
    /// Peak temporary memory while building a variant and running a forward.
    pub transient: usize,
}

impl MemoryEstimate {
    pub fn total(&self) -> usize {
        let variants = self.variants.iter().fold(0usize, |a, &b| a.saturating_add(b));
        self.source_weights.saturating_add(variants).saturating_add(self.transient)
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
/// - pattern on a BP base: masked strips store kept weights only, with a
///   1-byte column offset each, `5·(1-s)·W`, plus a 4-byte index per kept
///   strip column and a small header per chunk of columns;
/// - pattern on a dense base: tile groups, `(1-s)` of the tile-padded `W`
///   at 4 bytes plus about 1 byte of shared index, group headers and runs;
/// - every sparse variant also keeps its mask, `W/8` bytes.
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
                    let base_sparsity = base_spec.map(layer_sparsity).unwrap_or_else(|| vec![0.0; weights.len()]);
                    let strip_rows = match base_spec {
                        Some(VariantSpec::Block { block_rows, .. }) => (*block_rows).max(1),
                        _ => t,
                    };
                    shapes
                        .iter()
                        .zip(base_sparsity)
                        .map(|((o, i), bs)| {
                            let w = (o * i) as f64;
                            if bs > 0.0 {
                                // Masked strips: kept weights with a 1-byte column offset, a u32
                                // per kept strip column, and per chunk (at least every 32 kept
                                // or 256 columns) a 12-byte header and a u32 per row.
                                let h = pack_rows(strip_rows, t);
                                let strips = o.div_ceil(h) as f64;
                                let kept_cols = *i as f64 * (1.0 - bs);
                                let chunks = strips * (kept_cols / 32.0 + (*i as f64) / 256.0 + 1.0);
                                5.0 * w * (1.0 - sparsity) * 1.02
                                    + 4.0 * strips * kept_cols
                                    + chunks * (12.0 + 4.0 * h as f64)
                            } else {
                                // Tile groups on a dense base: padded tiles keep their pattern,
                                // about 1 byte of shared index per slot, a header and a run per
                                // tile row for every two tiles.
                                let padded = (o.div_ceil(t) * t * i.div_ceil(t) * t) as f64;
                                let tiles = (o.div_ceil(t) * i.div_ceil(t)) as f64;
                                let per_tile = (12 * t + 48) as f64 * 2.0 / crate::linear::pattern::GROUP_TILES as f64;
                                5.0 * padded * (1.0 - sparsity) + tiles * per_tile
                            }
                        })
                        .sum::<f64>()
                }
            };
            // Every sparse variant keeps its mask, one bit a weight (for pattern bases and self-tests).
            let bytes = bytes + if matches!(spec, VariantSpec::Dense) { 0.0 } else { total_w / 8.0 };
            (bytes.ceil() as usize).saturating_add(4096)
        })
        .collect();
    let tokens = config.seq_len;
    // Building one layer, beside the packed results (counted above). An encoder layer: the
    // compacted BP stack of a pattern base (weights 4 B, base mask 1 B), the tile bookkeeping of
    // pattern generation (energy and magnitude 8 B, keepable 1 B), the assigned, lifted and final
    // masks (3 B) and the packing's sort keys (12 B per kept column at most): 29 B per weight of
    // the largest layer, counted as if the base kept everything, which also covers what the
    // allocator keeps of the scratch of earlier layers (blocks of a few MB are reused from the
    // heap rather than returned).
    let largest_encoder_layer = config
        .linear_ids()
        .filter(|id| id.slot != LinearSlot::LmHead)
        .map(|id| weights[id.index()])
        .fold(0.0, f64::max);
    let encoder_build = 29.0 * largest_encoder_layer;
    // The lm_head (26.6 M weights in rt3-transformer) at 29 B a weight would claim 0.77 GB that is
    // never used: there the stack holds the base's kept columns only (1 - s of the layer; its tile
    // padding is zero pages never written) at 18 B a position (the 15 B above that scale with it,
    // plus the sort keys and the allocator), and the base mask unpacked and the lifted mask at 2 B
    // a weight of the layer; a block variant only unpacks its mask. Measured (peak RSS less what
    // stays resident, rt3-transformer with the lm_head, BP 50 % in 32-row strips): 37 MiB for BP
    // alone (estimate 102 with the slack below), 184 / 203 / 264 MiB for a pattern set in 8 / 16 /
    // 100 tiles (estimate 280); the whole sim-rt3 variant list with the lm_head peaks at 771 MiB,
    // estimated 842 (at 29 B a weight: 1299).
    let lm_head_build = config
        .lm_head_id()
        .map(|id| {
            let w = weights[id.index()];
            specs
                .iter()
                .map(|(_, spec)| match spec {
                    VariantSpec::Pattern { base, .. } => {
                        let s = specs
                            .iter()
                            .find(|(name, _)| name == base)
                            .map_or(0.0, |(_, b)| layer_sparsity(b)[id.index()]);
                        w * (2.0 + 18.0 * (1.0 - s))
                    }
                    VariantSpec::Block { .. } => 4.0 * w,
                    VariantSpec::Dense => 0.0,
                })
                .fold(0.0, f64::max)
        })
        .unwrap_or(0.0);
    let build = encoder_build.max(lm_head_build).ceil() as usize;
    // Forward: x, q, k, v, ctx, out (tokens x d), hidden (tokens x ffn), scores (tokens x tokens), input
    // copies; with an lm_head the logits (tokens x vocab) and the caller's copy of them.
    // In f64, converted saturating: `tokens²` overflows a 32-bit usize from 65536 tokens on.
    let tokens = tokens as f64;
    let logits = if config.lm_head { 2.0 * tokens * config.output_width() as f64 } else { 0.0 };
    let forward = (4.0 * (tokens * (8.0 * config.d_model as f64 + 2.0 * config.ffn as f64 + tokens) + logits)) as usize;
    let parameters = config.parameter_count().saturating_add(config.shared_parameter_count());
    MemoryEstimate {
        source_weights: parameters.saturating_mul(4),
        variants,
        transient: build.max(forward).saturating_add(1 << 20),
    }
}

/// A seeded `tokens x d_model` input (`config.seq_len` tokens), uniform in
/// `±sqrt(3)` (unit variance, like a layer-normed embedding). Random rather
/// than zero-filled: zeros make some ARM cores skip work and skew timings.
/// A model with a token embedding takes the same shape from its embedding:
/// see [`ReconfigurableModel::seeded_input`].
pub fn random_input(config: &EncoderConfig, seed: u64) -> Matrix {
    Matrix::random(config.seq_len, config.d_model, seed, 3.0f32.sqrt())
}

/// `count` seeded token ids, uniform over a vocabulary of `vocab` words.
pub fn random_tokens(vocab: usize, count: usize, seed: u64) -> Vec<u32> {
    let mut rng = crate::matrix::SeededUniform::new(seed);
    (0..count).map(|_| rng.next_below(vocab.max(1)) as u32).collect()
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

    #[test]
    fn estimate_of_a_huge_sequence_saturates_instead_of_wrapping() {
        // 2^20 tokens: the attention scores alone are 4 TiB, past a 32-bit usize.
        let mut cfg = crate::encoder::Preset::DistilBert.config();
        cfg.seq_len = 1 << 20;
        let e = estimate_bytes(&cfg, &[("dense", &VariantSpec::Dense)]);
        assert!(e.transient as u64 >= (4u64 << 40).min(usize::MAX as u64), "{}", e.transient);
        assert!(e.total() >= e.transient);
    }
}
