//! The dense baseline: `y = x · wᵀ` through the `gemm` crate.
//!
//! Every sparse speedup in this project is measured against this layer, so it
//! must be as fast as a maintained GEMM gets: `gemm` with its hand-tuned
//! AVX-512 (the `x86-v4` feature, enabled for x86-64 in `Cargo.toml`), AVX2
//! and NEON micro-kernels, dispatched at run time.
//!
//! The weights are stored as given (`out x in`, row-major): feature-major,
//! `yᵀ = w · xᵀ` is then a GEMM whose left operand is `w` in place, and
//! `gemm` packs only `xᵀ`. Measured on the Zen 3 reference machine (1
//! thread, 128 tokens, DistilBERT's feed-forward shapes): 5-15 % faster than
//! the same product with `w` read through a transposed view. The
//! token-major [`LinearKernel::forward`] reads `w` transposed through its
//! strides (it is not the encoder's path).
//!
//! On 32-bit ARM with NEON (`cfg(simd_neon)`, see [`crate::simd`]) the layer
//! runs the block-sparse strip kernel instead, with every column kept (a
//! dense GEMM micro-kernel whose `xᵀ` rows are read through an index list
//! that names them all): `gemm` has no micro-kernel for 32-bit ARM, and its
//! portable one compiles to scalar VFP there (LLVM does not vectorise `f32`
//! arithmetic for ARMv7 NEON), so it would run several times slower than the
//! NEON sparse kernels and inflate every speedup measured against it. The
//! weights are then stored only in the strip format, not twice.

use super::{LayerStats, LinearKernel, RowEpilogue, Threads};
use crate::matrix::{Activations, Matrix};

/// Rows per strip when the dense layer runs the strip kernel (32-bit ARM):
/// only the granularity of the output tile, the epilogue and the thread split.
#[cfg(all(target_arch = "arm", simd_neon))]
const STRIP_ROWS: usize = 32;

/// A dense linear layer over an `out x in` weight matrix.
#[derive(Clone, Debug)]
pub struct DenseLinear {
    /// `out x in`, row-major.
    #[cfg(not(all(target_arch = "arm", simd_neon)))]
    w: Matrix,
    /// The same weights in strips, every column kept (see the module docs).
    #[cfg(all(target_arch = "arm", simd_neon))]
    strips: super::block::BlockSparseLinear,
}

impl DenseLinear {
    /// Takes the `out x in` weights (row `o` holds the weights of output `o`).
    pub fn new(w: Matrix) -> Self {
        #[cfg(all(target_arch = "arm", simd_neon))]
        {
            let all = crate::matrix::Mask::dense(w.rows(), w.cols());
            Self { strips: super::block::BlockSparseLinear::from_masked(&w, &all, STRIP_ROWS) }
        }
        #[cfg(not(all(target_arch = "arm", simd_neon)))]
        Self { w }
    }

    /// `(out, in)`.
    fn shape(&self) -> (usize, usize) {
        #[cfg(all(target_arch = "arm", simd_neon))]
        return (self.strips.out_features(), self.strips.in_features());
        #[cfg(not(all(target_arch = "arm", simd_neon)))]
        self.w.shape()
    }
}

#[cfg(not(all(target_arch = "arm", simd_neon)))]
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
        self.shape().1
    }

    fn out_features(&self) -> usize {
        self.shape().0
    }

    #[cfg(all(target_arch = "arm", simd_neon))]
    fn forward_feature_major(
        &self,
        x: &Activations,
        y: &mut Activations,
        epilogue: Option<RowEpilogue>,
        threads: Threads,
    ) {
        self.strips.forward_feature_major(x, y, epilogue, threads);
    }

    #[cfg(not(all(target_arch = "arm", simd_neon)))]
    fn forward_feature_major(
        &self,
        x: &Activations,
        y: &mut Activations,
        epilogue: Option<RowEpilogue>,
        threads: Threads,
    ) {
        let (outputs, inputs) = self.w.shape();
        let tokens = x.tokens();
        assert_eq!(
            x.features(),
            inputs,
            "DenseLinear::forward_feature_major: x has {} features, the layer expects {inputs}",
            x.features()
        );
        y.reshape(outputs, tokens);
        if tokens == 0 || outputs == 0 {
            return;
        }
        let (xs, ys) = (x.stride(), y.stride());
        let rows = super::SharedOut(y.as_padded_mut().as_mut_ptr());
        // Threads split the output rows (rows of `w`, rows of `yᵀ`), as the sparse kernels
        // do, each running the GEMM of its block single-threaded; each block's epilogue runs
        // on its thread while the block is in cache.
        super::split_range(outputs, threads, &|range| {
            let block = range.len();
            // SAFETY: ranges are disjoint, so each part owns rows `range` of `yᵀ` (`ys` floats
            // apart), which `y` keeps borrowed until every part is done.
            let y_block = unsafe { std::slice::from_raw_parts_mut(rows.ptr().add(range.start * ys), block * ys) };
            if inputs == 0 {
                y_block.fill(0.0);
            } else {
                // dst (yᵀ rows: block x tokens) = lhs (w rows: block x in) · rhs (xᵀ: in x tokens).
                // SAFETY: every pointer covers the extents implied by (m, n, k) and the strides:
                // the block's rows of w, all `in` rows of x (`xs` floats apart), the block of y.
                unsafe {
                    gemm::gemm(
                        block,
                        tokens,
                        inputs,
                        y_block.as_mut_ptr(),
                        1,
                        ys as isize,
                        false,
                        self.w.as_slice().as_ptr().add(range.start * inputs),
                        1,
                        inputs as isize,
                        x.as_padded().as_ptr(),
                        1,
                        xs as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            if let Some(epilogue) = epilogue {
                for (i, f) in range.enumerate() {
                    epilogue(f, &mut y_block[i * ys..i * ys + tokens]);
                }
            }
        });
    }

    #[cfg(not(all(target_arch = "arm", simd_neon)))]
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
        // dst (tokens x out, row-major) = lhs (x: tokens x in, row-major) · rhs (wᵀ, read through w's strides).
        // SAFETY: every pointer covers the extents implied by (m, n, k) and the strides: x has
        // tokens*in values, w has out*in and y was just resized to tokens*out.
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
                self.w.as_slice().as_ptr(),
                inputs as isize,
                1,
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
        let (out_features, in_features) = self.shape();
        let nnz = out_features * in_features;
        LayerStats { out_features, in_features, nnz, bytes: nnz * std::mem::size_of::<f32>(), multiplied: nnz }
    }

    fn effective_weights(&self) -> Matrix {
        #[cfg(all(target_arch = "arm", simd_neon))]
        return self.strips.effective_weights();
        #[cfg(not(all(target_arch = "arm", simd_neon)))]
        self.w.clone()
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
    fn feature_major_forward_runs_the_epilogue_on_every_row() {
        let w = Matrix::random(37, 29, 1, 1.0);
        let x = Matrix::random(5, 29, 2, 1.0);
        let layer = DenseLinear::new(w.clone());
        let mut y = Activations::default();
        let add_row_index = |f: usize, row: &mut [f32]| row.iter_mut().for_each(|v| *v += f as f32);
        for threads in [Threads::One, Threads::N(2)] {
            layer.forward_feature_major(&Activations::from_token_major(&x), &mut y, Some(&add_row_index), threads);
            let plain = crate::reference::linear(&x, &w);
            let expected = Matrix::from_fn(5, 37, |t, o| plain.get(t, o) + o as f32);
            assert!(y.to_token_major().max_abs_diff(&expected) < 1e-4);
        }
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
    fn effective_weights_are_the_weights() {
        let w = Matrix::random(13, 7, 3, 1.0);
        assert_eq!(DenseLinear::new(w.clone()).effective_weights(), w);
    }

    #[test]
    fn zero_inputs_give_zero_outputs() {
        let layer = DenseLinear::new(Matrix::zeros(3, 0));
        let mut y = Matrix::from_vec(1, 1, vec![7.0]);
        layer.forward(&Matrix::zeros(2, 0), &mut y, Threads::One);
        assert_eq!(y.as_slice(), &[0.0; 6]);
    }
}
