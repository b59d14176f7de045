//! Linear layers `y = x · wᵀ` in three storage formats, behind one trait.
//!
//! Activations are token-major (`tokens x features`, row-major) at every
//! layer boundary. A kernel that prefers another layout (the pattern kernel
//! works feature-major, vectorised over tokens) converts inside `forward`, so
//! the conversion is part of every measured time. Bias and activation
//! functions belong to the encoder, not here.

pub mod block;
pub mod dense;
pub mod pattern;

use crate::matrix::Matrix;

/// What a layer stores: for reports and the agent's `load` reply.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LayerStats {
    pub out_features: usize,
    pub in_features: usize,
    /// Weights actually stored and multiplied (explicit zeros excluded).
    pub nnz: usize,
    /// Bytes of the packed weights plus any index data.
    pub bytes: usize,
}

impl LayerStats {
    /// Fraction of the dense `out x in` weights that are not computed.
    pub fn sparsity(&self) -> f64 {
        let total = self.out_features * self.in_features;
        if total == 0 {
            0.0
        } else {
            1.0 - self.nnz as f64 / total as f64
        }
    }
}

/// How many threads a kernel may use. Single-threaded by default: DVFS
/// experiments pin the agent to one core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Threads {
    #[default]
    One,
    N(usize),
}

impl Threads {
    pub fn count(self) -> usize {
        match self {
            Threads::One => 1,
            Threads::N(n) => n.max(1),
        }
    }
}

/// A linear layer `y = x · wᵀ` (`x`: tokens x in, `y`: tokens x out).
pub trait LinearKernel: Send + Sync + std::fmt::Debug {
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    /// Overwrites `y` (resized to `tokens x out`) with `x · wᵀ`.
    fn forward(&self, x: &Matrix, y: &mut Matrix, threads: Threads);
    fn stats(&self) -> LayerStats;
    /// The weights this layer multiplies by, as a dense `out x in` matrix
    /// with zeros where pruned: what the scalar reference uses.
    fn effective_weights(&self) -> Matrix;
    /// Short name of the format, e.g. `dense`, `block`, `pattern`.
    fn kind(&self) -> &'static str;
}
