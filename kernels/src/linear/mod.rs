//! Linear layers `y = x · wᵀ` in three storage formats, behind one trait.
//!
//! Every kernel computes feature-major, `yᵀ = w · xᵀ` on [`Activations`]
//! (`features x tokens`, vectorised over tokens), which is how the encoder
//! keeps its activations between layers: no layer transposes.
//! [`LinearKernel::forward_feature_major`] also takes a [`RowEpilogue`]
//! that the kernel applies to each output row as soon as it is final, while
//! it is still in L1 (the encoder's bias and activation). The token-major
//! [`LinearKernel::forward`] (`tokens x features`) converts in and out around
//! it, for callers outside the encoder.

pub mod block;
pub mod dense;
pub mod masked;
pub mod pattern;

use crate::matrix::{Activations, Matrix};
use std::cell::RefCell;
use std::ops::Range;

/// The one thread-splitting scheme of every kernel: `work` runs over `0..n`
/// (output rows of the dense GEMM, strips of output rows of the block and
/// masked kernels, row parts then token panels of the pattern kernel, heads
/// of attention)
/// cut into at most `threads` contiguous ranges, on rayon's global pool
/// (the one pool: `gemm`'s own parallel mode runs on it too). Its threads
/// are created once and live for the process, so their thread-local scratch
/// (attention scores, conversion buffers) is allocated once per thread; one
/// thread runs `work` inline, with no pool.
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

thread_local! {
    /// The token-major `forward`'s feature-major copies of `x` and `y`, reused.
    static CONVERSION: RefCell<(Activations, Activations)> = RefCell::new(Default::default());
}

/// Bytes per cache line on every CPU the kernels target (x86-64, Cortex-A).
pub(crate) const CACHE_LINE_BYTES: usize = 64;

/// An output pointer shared by threads that write disjoint parts of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SharedOut(pub(crate) *mut f32);

impl SharedOut {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the field).
    pub(crate) fn ptr(&self) -> *mut f32 {
        self.0
    }
}
// SAFETY: threads write disjoint parts through it; the owner of the buffer holds
// its unique borrow until every thread has joined.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

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

/// Element-wise work a kernel does on its outputs once they are final (add
/// the bias, apply GELU): called with an output feature and its values for a
/// run of tokens, all of them or one token panel at a time, so it must treat
/// every value on its own. Called from the thread that computed them.
pub type RowEpilogue<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);

/// A linear layer `y = x · wᵀ` (token-major `x`: tokens x in, `y`: tokens x out;
/// feature-major: `yᵀ = w · xᵀ`).
pub trait LinearKernel: Send + Sync + std::fmt::Debug {
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    /// Overwrites `y` (reshaped to `out x tokens`) with `w · x`, then runs
    /// `epilogue` on every output row.
    fn forward_feature_major(
        &self,
        x: &Activations,
        y: &mut Activations,
        epilogue: Option<RowEpilogue>,
        threads: Threads,
    );
    /// Overwrites `y` (resized to `tokens x out`) with `x · wᵀ`: by default,
    /// [`LinearKernel::forward_feature_major`] between two transposes.
    fn forward(&self, x: &Matrix, y: &mut Matrix, threads: Threads) {
        CONVERSION.with(|cell| {
            // A kernel running inside another's conversion (none does) would get fresh buffers.
            let mut bufs = cell.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)).unwrap_or_default();
            bufs.0.set_from_token_major(x);
            self.forward_feature_major(&bufs.0, &mut bufs.1, None, threads);
            bufs.1.write_token_major(y);
            if let Ok(mut b) = cell.try_borrow_mut() {
                *b = bufs;
            }
        });
    }
    fn stats(&self) -> LayerStats;
    /// The weights this layer multiplies by, as a dense `out x in` matrix
    /// with zeros where pruned: what the scalar reference uses.
    fn effective_weights(&self) -> Matrix;
    /// Short name of the format, e.g. `dense`, `block`, `pattern`.
    fn kind(&self) -> &'static str;
}
