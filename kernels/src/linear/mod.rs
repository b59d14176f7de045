//! Linear layers `y = x · wᵀ` in three storage formats, behind one trait.
//!
//! Activations are token-major (`tokens x features`, row-major) at every
//! layer boundary. A kernel that prefers another layout (the pattern kernel
//! works feature-major, vectorised over tokens) converts inside `forward`, so
//! the conversion is part of every measured time. Bias and activation
//! functions belong to the encoder, not here.

pub mod block;
pub mod dense;
pub mod masked;
pub mod pattern;
pub(crate) mod scratch;

use crate::matrix::Matrix;
use std::ops::Range;

/// The one thread-splitting scheme of the sparse kernels: `work` runs over
/// `0..n` (strips of output rows, or token panels) cut into at most
/// `threads` contiguous ranges, on rayon's global pool, the pool `gemm`'s
/// dense path uses too. The pool's threads are created once and live for the
/// process, so their thread-local scratch (transposed tiles, panels) is
/// allocated once per thread; one thread runs `work` inline, with no pool.
///
/// `work` must not call back into a kernel that borrows the calling thread's
/// scratch (the calling thread may execute parts while it waits).
pub(crate) fn split_range(n: usize, threads: Threads, work: &(dyn Fn(Range<usize>) + Sync)) {
    let parts = threads.count().min(n).max(1);
    if parts == 1 {
        work(0..n);
        return;
    }
    let per = n.div_ceil(parts);
    rayon::scope(|s| {
        for first in (0..n).step_by(per) {
            let last = (first + per).min(n);
            s.spawn(move |_| work(first..last));
        }
    });
}

/// What a layer stores: for reports and the agent's `load` reply.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LayerStats {
    pub out_features: usize,
    pub in_features: usize,
    /// Non-zero weights the layer stores (explicit zeros excluded).
    pub nnz: usize,
    /// Bytes of the packed weights plus any index data.
    pub bytes: usize,
    /// Weights multiplied per token, explicit zeros included (padding and
    /// union slots of the pattern kernel, BP zeros under a partially kept
    /// column of the block kernel): the honest work count, `>= nnz`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub multiplied: usize,
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
