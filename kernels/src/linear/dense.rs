//! The dense baseline: `y = x · wᵀ` through the `gemm` crate.
//!
//! Every sparse speedup in this project is measured against this layer, so it
//! must be as fast as a maintained GEMM gets: `gemm` with its hand-tuned
//! AVX-512 (the `x86-v4` feature, enabled for x86-64 in `Cargo.toml`), AVX2
//! and NEON micro-kernels, dispatched at run time.
//!
//! The weights are stored transposed (`in x out`, row-major), once, at
//! construction. `gemm` works on a column-major destination and `out x in`
//! left operand; with `w` row-major it must repack all of `w` on every call
//! (measured on the reference x86-64 machine, 1 thread, 128 tokens: 100 vs
//! 131 GFLOP/s for 768->3072, 76 vs 112 for 3072->768), while `wᵀ` row-major
//! is already unit-stride along `out` and is used in place. `forward` passes
//! everything by strides and copies no activations.

use super::{LayerStats, LinearKernel, Threads};
use crate::matrix::Matrix;

/// A dense linear layer over an `out x in` weight matrix.
#[derive(Clone, Debug)]
pub struct DenseLinear {
    /// `wᵀ`: `in x out`, row-major (see the module docs for why).
    wt: Matrix,
}

impl DenseLinear {
    /// Takes the `out x in` weights (row `o` holds the weights of output `o`).
    pub fn new(w: Matrix) -> Self {
        Self { wt: w.transposed() }
    }

    /// The stored transposed weights, `in x out`.
    pub fn weights_transposed(&self) -> &Matrix {
        &self.wt
    }
}

/// `gemm`'s parallelism for a thread count: its Rayon mode spends time on
/// synchronisation even with one thread, so one thread means `None`.
fn parallelism(threads: Threads) -> gemm::Parallelism {
    match threads.count() {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

impl LinearKernel for DenseLinear {
    fn in_features(&self) -> usize {
        self.wt.rows()
    }

    fn out_features(&self) -> usize {
        self.wt.cols()
    }

    fn forward(&self, x: &Matrix, y: &mut Matrix, threads: Threads) {
        let (tokens, inputs) = x.shape();
        let outputs = self.out_features();
        assert_eq!(
            inputs,
            self.in_features(),
            "DenseLinear::forward: x has {inputs} features, the layer expects {}",
            self.in_features()
        );
        y.reshape_uninit(tokens, outputs);
        if tokens == 0 || outputs == 0 {
            return;
        }
        if inputs == 0 {
            y.as_mut_slice().fill(0.0);
            return;
        }
        // dst (tokens x out, row-major) = lhs (x: tokens x in, row-major) · rhs (wᵀ: in x out, row-major).
        // `read_dst = false` overwrites y, so alpha is ignored and beta scales the product.
        // SAFETY: every pointer covers the extents implied by (m, n, k) and the strides: x has
        // tokens*in values, wᵀ has in*out and y was just resized to tokens*out.
        unsafe {
            gemm::gemm(
                tokens,
                outputs,
                inputs,
                y.as_mut_slice().as_mut_ptr(),
                1,
                outputs as isize,
                false,
                x.as_slice().as_ptr(),
                1,
                inputs as isize,
                self.wt.as_slice().as_ptr(),
                1,
                outputs as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism(threads),
            );
        }
    }

    fn stats(&self) -> LayerStats {
        let (in_features, out_features) = self.wt.shape();
        let nnz = out_features * in_features;
        LayerStats { out_features, in_features, nnz, bytes: nnz * std::mem::size_of::<f32>(), multiplied: nnz }
    }

    fn effective_weights(&self) -> Matrix {
        self.wt.transposed()
    }

    fn kind(&self) -> &'static str {
        "dense"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_matches_hand_computed() {
        // w rows are outputs: y0 = 1*x0 + 2*x1 + 3*x2, y1 = -x0 + 0.5*x2.
        let layer = DenseLinear::new(Matrix::from_vec(2, 3, vec![1.0, 2.0, 3.0, -1.0, 0.0, 0.5]));
        let x = Matrix::from_vec(2, 3, vec![1.0, 1.0, 1.0, 2.0, -1.0, 4.0]);
        let mut y = Matrix::zeros(0, 0);
        layer.forward(&x, &mut y, Threads::One);
        assert_eq!(y.shape(), (2, 2));
        assert_eq!(y.as_slice(), &[6.0, -0.5, 12.0, 0.0]);
    }

    #[test]
    fn forward_overwrites_stale_output_and_threads_agree() {
        let w = Matrix::random(37, 29, 1, 1.0);
        let x = Matrix::random(5, 29, 2, 1.0);
        let layer = DenseLinear::new(w.clone());
        let mut y1 = Matrix::from_vec(5, 37, vec![f32::NAN; 5 * 37]);
        layer.forward(&x, &mut y1, Threads::One);
        let mut y2 = Matrix::zeros(1, 1);
        layer.forward(&x, &mut y2, Threads::N(2));
        let expected = crate::reference::linear(&x, &w);
        assert!(y1.max_abs_diff(&expected) < 1e-4);
        assert!(y2.max_abs_diff(&expected) < 1e-4);
    }

    #[test]
    fn stats_and_kind() {
        let layer = DenseLinear::new(Matrix::zeros(4, 6));
        let s = layer.stats();
        assert_eq!((s.out_features, s.in_features, s.nnz, s.bytes), (4, 6, 24, 96));
        assert_eq!(s.sparsity(), 0.0);
        assert_eq!(layer.kind(), "dense");
        assert_eq!((layer.in_features(), layer.out_features()), (6, 4));
    }

    #[test]
    fn zero_inputs_give_zero_outputs() {
        let layer = DenseLinear::new(Matrix::zeros(3, 0));
        let mut y = Matrix::from_vec(1, 1, vec![7.0]);
        layer.forward(&Matrix::zeros(2, 0), &mut y, Threads::One);
        assert_eq!(y.as_slice(), &[0.0; 6]);
    }
}
