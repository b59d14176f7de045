//! Block-sparse (BP) linear layer: per strip of rows, the kept input columns
//! and a dense strip of weights over them.
//!
//! # Format
//! The `out x in` weights are cut into strips of `strip_rows` rows (the last
//! may be shorter), as block-structured pruning ([`crate::prune::block`])
//! leaves them: inside a strip, whole input columns are either kept or zero.
//! Each strip stores the indices of its kept columns and a dense
//! `rows x kept` block of weights, so a strip is a small dense GEMM on the
//! gathered inputs. A mask that is not column-structured is still exact: a
//! column is kept when any row of the strip keeps it, and dropped weights
//! inside a kept column are stored as zeros.
//!
//! Within a strip the rows are split into *panels* of `panel_rows` rows (the
//! micro-kernel's register block), and each panel's weights are stored
//! kept-column-major: for every kept column, the panel's weights for it are
//! contiguous, so the kernel reads them as one short stream.
//!
//! # Kernel
//! `forward` transposes the activations to feature-major `xᵀ` (`in x tokens`,
//! tokens padded to a whole vector), so a kept column is one contiguous row of
//! tokens. For each panel and block of tokens the micro-kernel keeps a
//! `panel_rows x (token_vectors * lanes)` block of outputs in registers; for
//! each kept column it loads the `xᵀ` chunk once and multiplies it by the
//! panel's broadcast weights: a GEMM micro-kernel whose B operand is gathered
//! by index instead of packed. Results go to a per-strip `rows x tokens` tile
//! (L1-sized), transposed into `y`'s columns when the strip is done. Both
//! transposes are inside `forward`, so they count in every measured time.
//! Scratch buffers are thread-local and reused: no allocation once warm.

use super::CACHE_LINE_BYTES;
use super::{LayerStats, LinearKernel, Threads};
use super::{RowEpilogue, SharedOut};
use crate::matrix::{Activations, Mask, Matrix};
use crate::simd::{Backend, F32Vector, ScalarLanes};

/// Largest panel height the micro-kernel dispatch is instantiated for.
const MAX_PANEL_ROWS: usize = 8;

/// The tallest panel any backend of this architecture packs: every backend
/// must run a layer packed for another (tests run them all), but no taller
/// loop is instantiated. On ARM that leaves out 8-row loops, which no
/// layer there uses and which would spill (32 accumulators) and mislead the
/// static analysis of `neon-mca.sh`.
const PANEL_ROWS_HERE: usize = {
    let (mut rows, mut i) = (blocking(Backend::Scalar).0, 0);
    #[cfg(target_arch = "x86_64")]
    let here = [Backend::Avx512, Backend::Avx2Fma];
    #[cfg(simd_neon)]
    let here = [Backend::Neon];
    #[cfg(not(any(target_arch = "x86_64", simd_neon)))]
    let here: [Backend; 0] = [];
    while i < here.len() {
        if blocking(here[i]).0 > rows {
            rows = blocking(here[i]).0;
        }
        i += 1;
    }
    rows
};
const _: () = assert!(PANEL_ROWS_HERE <= MAX_PANEL_ROWS);

/// Register blocking per backend: (panel rows, token vectors per block).
///
/// The accumulators (`rows * vectors`) plus the `vectors` loaded `xᵀ` values
/// and one broadcast weight must fit in the register file without spills:
/// 32 registers for AVX-512 and aarch64 NEON, 16 for AVX2, SSE and 32-bit
/// NEON (16 `q`, or 32 `d` registers two per vector: 12 + 2 + 1 vectors at
/// 6 x 2). Per kept column the kernel issues `vectors + rows` loads for
/// `rows * vectors` FMAs, which leaves the load ports idle enough for the
/// gathered `xᵀ` rows to stream from L2.
pub(super) const fn blocking(backend: Backend) -> (usize, usize) {
    match backend {
        Backend::Avx512 => (8, 3),
        Backend::Avx2Fma => (6, 2),
        Backend::Neon if cfg!(target_arch = "arm") => (6, 2),
        Backend::Neon => (6, 4),
        Backend::Scalar => (4, 2),
    }
}

/// The panels of a strip of `rows` rows: `(first row, height)`, as few as
/// `max_height` allows and of near-equal heights (a 32-row strip with 6-row
/// panels becomes 6+6+5+5+5+5, not 6+6+6+6+6+2: a 2-row panel would run at a
/// fraction of the micro-kernel's peak).
pub(super) fn panels(rows: usize, max_height: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = rows.div_ceil(max_height);
    let base = rows.checked_div(count).unwrap_or(0);
    let taller = rows.checked_rem(count).unwrap_or(0);
    (0..count).map(move |i| (i * base + i.min(taller), base + usize::from(i < taller)))
}

/// Where one strip lives in the packed arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Strip {
    /// First output row of the strip.
    row0: usize,
    /// Rows in the strip (`strip_rows`, or fewer for the last strip).
    rows: usize,
    /// Range of this strip's kept input columns in `BlockSparseLinear::cols`.
    cols_start: usize,
    kept: usize,
    /// Offset of the strip's first panel in `BlockSparseLinear::weights`.
    weights_start: usize,
}

/// A linear layer in the packed block-sparse format (see the module docs).
#[derive(Clone, Debug)]
pub struct BlockSparseLinear {
    out_features: usize,
    in_features: usize,
    strip_rows: usize,
    panel_rows: usize,
    backend: Backend,
    strips: Vec<Strip>,
    /// Kept input columns of every strip, concatenated, ascending within a strip.
    cols: Vec<u32>,
    /// Per strip, per panel: `kept x panel_height` weights (kept-column-major).
    weights: Vec<f32>,
}

impl BlockSparseLinear {
    /// Packs the weights `w` (`out x in`) that `mask` keeps, in strips of
    /// `strip_rows` rows, for the best SIMD backend of this CPU.
    ///
    /// # Panics
    /// When shapes differ, `strip_rows` is 0, or `in` does not fit in `u32`.
    pub fn from_masked(w: &Matrix, mask: &Mask, strip_rows: usize) -> Self {
        Self::from_masked_for(w, mask, strip_rows, Backend::best())
    }

    /// Like [`Self::from_masked`], with the register blocking (and default
    /// `forward` backend) of `backend`.
    pub fn from_masked_for(w: &Matrix, mask: &Mask, strip_rows: usize, backend: Backend) -> Self {
        assert_eq!(w.shape(), mask.shape(), "BlockSparseLinear::from_masked: weights and mask shapes differ");
        assert!(strip_rows > 0, "BlockSparseLinear::from_masked: strip_rows must be at least 1");
        assert!(
            u32::try_from(w.cols()).is_ok(),
            "BlockSparseLinear::from_masked: {} input features overflow u32",
            w.cols()
        );
        let (out_features, in_features) = w.shape();
        let panel_rows = blocking(backend).0;
        let mut strips = Vec::with_capacity(out_features.div_ceil(strip_rows));
        let mut cols = Vec::new();
        let mut weights = Vec::new();
        for row0 in (0..out_features).step_by(strip_rows) {
            let rows = strip_rows.min(out_features - row0);
            let cols_start = cols.len();
            cols.extend((0..in_features).filter(|&c| (row0..row0 + rows).any(|r| mask.get(r, c))).map(|c| c as u32));
            let kept_cols = &cols[cols_start..];
            let weights_start = weights.len();
            for (panel0, height) in panels(rows, panel_rows) {
                for &c in kept_cols {
                    for r in row0 + panel0..row0 + panel0 + height {
                        let c = c as usize;
                        weights.push(if mask.get(r, c) { w.get(r, c) } else { 0.0 });
                    }
                }
            }
            strips.push(Strip { row0, rows, cols_start, kept: kept_cols.len(), weights_start });
        }
        Self { out_features, in_features, strip_rows, panel_rows, backend, strips, cols, weights }
    }

    /// Rows per strip (the BP block height).
    pub fn strip_rows(&self) -> usize {
        self.strip_rows
    }

    /// Rows per micro-kernel panel.
    pub fn panel_rows(&self) -> usize {
        self.panel_rows
    }

    /// The backend `forward` uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Kept input columns of each strip.
    pub fn kept_per_strip(&self) -> Vec<usize> {
        self.strips.iter().map(|s| s.kept).collect()
    }

    /// The token-major `forward` on a chosen backend (tests run every available one).
    ///
    /// # Panics
    /// When this CPU cannot run `backend`, or `x` has the wrong width.
    pub fn forward_with(&self, x: &Matrix, y: &mut Matrix, threads: Threads, backend: Backend) {
        let mut out = Activations::default();
        self.forward_feature_major_with(&Activations::from_token_major(x), &mut out, None, threads, backend);
        out.write_token_major(y);
    }

    /// [`LinearKernel::forward_feature_major`] on a chosen backend.
    ///
    /// # Panics
    /// When this CPU cannot run `backend`, or `x` has the wrong number of features.
    pub fn forward_feature_major_with(
        &self,
        x: &Activations,
        y: &mut Activations,
        epilogue: Option<RowEpilogue>,
        threads: Threads,
        backend: Backend,
    ) {
        assert!(backend.is_available(), "BlockSparseLinear: backend {} is not supported by this CPU", backend.name());
        assert_eq!(
            x.features(),
            self.in_features,
            "BlockSparseLinear::forward: x has {} features, the layer expects {}",
            x.features(),
            self.in_features
        );
        let tokens = x.tokens();
        y.reshape(self.out_features, tokens);
        if tokens == 0 || self.out_features == 0 {
            return;
        }
        let job = StripJob {
            layer: self,
            xt: x.as_padded().as_ptr(),
            x_stride: x.stride(),
            tokens,
            y: SharedOut(y.as_padded_mut().as_mut_ptr()),
            y_stride: y.stride(),
            epilogue,
            backend,
        };
        super::split_range(self.strips.len(), threads, &|range| job.run(range));
    }
}

/// One `forward` call's inputs, shared by the threads that split its strips.
struct StripJob<'a> {
    layer: &'a BlockSparseLinear,
    /// `xᵀ`: `in` rows of `x_stride` floats, padding finite.
    xt: *const f32,
    x_stride: usize,
    tokens: usize,
    /// `yᵀ`: `out` rows of `y_stride` floats; each strip owns its rows.
    y: SharedOut,
    y_stride: usize,
    epilogue: Option<RowEpilogue<'a>>,
    backend: Backend,
}

// SAFETY: `xt` is borrowed for the whole call and only read; `y` is written in disjoint strips.
unsafe impl Sync for StripJob<'_> {}

impl StripJob<'_> {
    /// Computes the strips in `range` into `y`.
    fn run(&self, range: std::ops::Range<usize>) {
        // SAFETY: each arm runs only when its backend's features were detected
        // (`forward_feature_major_with` checked `is_available`); the pointers cover the
        // extents documented on `StripJob`.
        unsafe {
            match self.backend {
                #[cfg(target_arch = "x86_64")]
                Backend::Avx512 => strips_avx512(self, range),
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2Fma => strips_avx2(self, range),
                #[cfg(simd_neon)]
                Backend::Neon => strips_neon(self, range),
                Backend::Scalar => strips::<ScalarLanes, { blocking(Backend::Scalar).1 }, PANEL_ROWS_HERE>(self, range),
                #[allow(unreachable_patterns)]
                other => unreachable!("backend {} passed is_available on the wrong architecture", other.name()),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn strips_avx512(job: &StripJob, range: std::ops::Range<usize>) {
    // SAFETY: forwarded from `StripJob::run`.
    unsafe { strips::<crate::simd::x86::Avx512, { blocking(Backend::Avx512).1 }, PANEL_ROWS_HERE>(job, range) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn strips_avx2(job: &StripJob, range: std::ops::Range<usize>) {
    // SAFETY: forwarded from `StripJob::run`.
    unsafe { strips::<crate::simd::x86::Avx2Fma, { blocking(Backend::Avx2Fma).1 }, PANEL_ROWS_HERE>(job, range) }
}

// On 32-bit ARM NEON is enabled for the whole build (see `crate::simd`).
#[cfg(simd_neon)]
#[cfg_attr(target_arch = "aarch64", target_feature(enable = "neon"))]
unsafe fn strips_neon(job: &StripJob, range: std::ops::Range<usize>) {
    // SAFETY: forwarded from `StripJob::run`.
    unsafe { strips::<crate::simd::neon::Neon, { blocking(Backend::Neon).1 }, PANEL_ROWS_HERE>(job, range) }
}

/// Bytes of `xᵀ` one chunk of kept columns may span for one token block: the
/// chunk is reused by every panel of the strip, so it must stay in L1d
/// (48 KiB on the x86-64 reference machine, 32-64 KiB on Cortex-A cores),
/// next to the panel's weights and output rows.
pub(super) const XT_CHUNK_BYTES: usize = 24 * 1024;

/// How many kept columns ahead the micro-kernel prefetches `xᵀ` rows: enough
/// iterations (about 12 cycles each) to cover an L2 or L3 hit. Measured on the
/// reference x86-64 machine: about 10 % faster for 3072->768 (whose 1.5 MiB
/// `xᵀ` does not stay in L2), no change for 768->3072.
pub(super) const PREFETCH_AHEAD: usize = 8;

/// The strip loop, written once over the vector type `V` with `NV` token
/// vectors per register block; inlined into each backend's entry function.
///
/// Order, outermost first: strip, token block, chunk of kept columns, panel.
/// A chunk's `xᵀ` rows (gathered by index) are loaded from L2 by the first
/// panel and hit L1 for the others; a panel's weights for the chunk are one
/// short contiguous stream. Partial sums over chunks are kept in the tile.
#[inline(always)]
unsafe fn strips<V: F32Vector, const NV: usize, const PR: usize>(job: &StripJob, range: std::ops::Range<usize>) {
    let layer = job.layer;
    let stride = job.y_stride;
    let block_tokens = NV * V::LANES;
    let chunk_cols = (XT_CHUNK_BYTES / (block_tokens * std::mem::size_of::<f32>())).max(1);
    for strip in &layer.strips[range] {
        let cols = &layer.cols[strip.cols_start..strip.cols_start + strip.kept];
        let mut t0 = 0;
        while t0 < job.tokens {
            // Whole blocks of NV vectors, then blocks of 2 and 1 for the rest (the
            // token stride is a multiple of the lanes, so a vector never overruns).
            let remaining = job.tokens - t0;
            let vectors = if remaining >= block_tokens {
                NV
            } else if remaining >= 2 * V::LANES && NV > 2 {
                2
            } else {
                1
            };
            let mut chunk0 = 0;
            loop {
                let chunk_end = (chunk0 + chunk_cols).min(strip.kept);
                let accumulate = chunk0 > 0;
                for (panel0, height) in panels(strip.rows, layer.panel_rows) {
                    let w = layer.weights[strip.weights_start + panel0 * strip.kept + chunk0 * height..].as_ptr();
                    // SAFETY: the strip's rows of `yᵀ` are inside `y` and owned by this strip.
                    let out = unsafe { job.y.ptr().add((strip.row0 + panel0) * stride) };
                    let chunk = &cols[chunk0..chunk_end];
                    // SAFETY: t0 + vectors * LANES <= both strides (whole cache lines); the panel's
                    // weights for this chunk (`height * chunk.len()`) start at `w`; `out` has `height`
                    // rows of `stride`; `xt` rows are the layer's `in` features.
                    unsafe {
                        let (xt, xs) = (job.xt, job.x_stride);
                        if vectors == NV {
                            panel_tile_rows::<V, NV, PR>(height, chunk, w, xt, xs, t0, out, stride, accumulate)
                        } else if vectors == 2 {
                            panel_tile_rows::<V, 2, PR>(height, chunk, w, xt, xs, t0, out, stride, accumulate)
                        } else {
                            panel_tile_rows::<V, 1, PR>(height, chunk, w, xt, xs, t0, out, stride, accumulate)
                        }
                    }
                }
                chunk0 = chunk_end;
                if chunk0 >= strip.kept {
                    break;
                }
            }
            t0 += vectors * V::LANES;
        }
        if let Some(epilogue) = job.epilogue {
            for r in strip.row0..strip.row0 + strip.rows {
                // SAFETY: row r of `yᵀ` belongs to this strip and is final; `tokens <= stride`.
                epilogue(r, unsafe { std::slice::from_raw_parts_mut(job.y.ptr().add(r * stride), job.tokens) });
            }
        }
    }
}

/// Dispatches a panel of `height` rows to the micro-kernel instantiated for
/// it: heights up to `PR` ([`PANEL_ROWS_HERE`]), and no taller.
#[inline(always)]
unsafe fn panel_tile_rows<V: F32Vector, const NV: usize, const PR: usize>(
    height: usize,
    cols: &[u32],
    w: *const f32,
    xt: *const f32,
    xt_stride: usize,
    t0: usize,
    out: *mut f32,
    out_stride: usize,
    accumulate: bool,
) {
    macro_rules! dispatch {
        ($($rows:literal)*) => {
            match height {
                // SAFETY: forwarded from the caller.
                $($rows if $rows <= PR => unsafe { panel_tile::<V, $rows, NV>(cols, w, xt, xt_stride, t0, out, out_stride, accumulate) },)*
                _ => unreachable!("panel height {height} exceeds the backend's {PR} rows"),
            }
        };
    }
    const _: () = assert!(MAX_PANEL_ROWS == 8);
    dispatch!(1 2 3 4 5 6 7 8)
}

/// The micro-kernel: `out[r][t0 + i] (+)= Σ_j w[j][r] · xᵀ[cols[j]][t0 + i]`
/// for `ROWS` rows and `NV * LANES` tokens, accumulated in registers; starts
/// from the values in `out` when `accumulate`, else from zero.
///
/// # Safety
/// `w` holds `cols.len() * ROWS` weights; every `xt` row named in `cols` has
/// `t0 + NV * LANES` readable values; `out` has `ROWS` rows (stride
/// `out_stride`) with `t0 + NV * LANES` writable values; `V`'s features are on.
#[inline(always)]
unsafe fn panel_tile<V: F32Vector, const ROWS: usize, const NV: usize>(
    cols: &[u32],
    w: *const f32,
    xt: *const f32,
    xt_stride: usize,
    t0: usize,
    out: *mut f32,
    out_stride: usize,
    accumulate: bool,
) {
    // SAFETY: all pointer arithmetic stays inside the extents the caller guarantees.
    unsafe {
        let mut acc = [[V::zero(); NV]; ROWS];
        if accumulate {
            for r in 0..ROWS {
                for v in 0..NV {
                    acc[r][v] = V::load(out.add(r * out_stride + t0 + v * V::LANES));
                }
            }
        }
        let mut wp = w;
        // The gathered xᵀ rows are at random addresses, which the hardware
        // prefetchers cannot predict: ask for the row PREFETCH_AHEAD columns on.
        let lines = (NV * V::LANES * std::mem::size_of::<f32>()).div_ceil(CACHE_LINE_BYTES);
        for (j, &c) in cols.iter().enumerate() {
            if let Some(&ahead) = cols.get(j + PREFETCH_AHEAD) {
                let row = xt.add(ahead as usize * xt_stride + t0);
                for line in 0..lines {
                    V::prefetch(row.wrapping_add(line * CACHE_LINE_BYTES / std::mem::size_of::<f32>()));
                }
            }
            let x_row = xt.add(c as usize * xt_stride + t0);
            let mut xv = [V::zero(); NV];
            for v in 0..NV {
                xv[v] = V::load(x_row.add(v * V::LANES));
            }
            for r in 0..ROWS {
                let wr = V::splat(*wp.add(r));
                for v in 0..NV {
                    acc[r][v] = acc[r][v].mul_add(wr, xv[v]);
                }
            }
            wp = wp.add(ROWS);
        }
        for r in 0..ROWS {
            for v in 0..NV {
                acc[r][v].store(out.add(r * out_stride + t0 + v * V::LANES));
            }
        }
    }
}

impl LinearKernel for BlockSparseLinear {
    fn in_features(&self) -> usize {
        self.in_features
    }

    fn out_features(&self) -> usize {
        self.out_features
    }

    fn forward_feature_major(
        &self,
        x: &Activations,
        y: &mut Activations,
        epilogue: Option<RowEpilogue>,
        threads: Threads,
    ) {
        self.forward_feature_major_with(x, y, epilogue, threads, self.backend);
    }

    /// `multiplied` counts every stored weight: `rows x kept` per strip, which
    /// for a BP mask is exactly the kept weights (a partially kept column
    /// stores explicit zeros); `nnz` the non-zero ones. `bytes` adds the `u32`
    /// column indices and the per-strip bookkeeping.
    fn stats(&self) -> LayerStats {
        let multiplied = self.weights.len();
        let nnz = self.weights.iter().filter(|v| **v != 0.0).count();
        let bytes = multiplied * std::mem::size_of::<f32>()
            + self.cols.len() * std::mem::size_of::<u32>()
            + self.strips.len() * std::mem::size_of::<Strip>();
        LayerStats { out_features: self.out_features, in_features: self.in_features, nnz, bytes, multiplied }
    }

    fn effective_weights(&self) -> Matrix {
        let mut w = Matrix::zeros(self.out_features, self.in_features);
        for strip in &self.strips {
            let cols = &self.cols[strip.cols_start..strip.cols_start + strip.kept];
            for (panel0, height) in panels(strip.rows, self.panel_rows) {
                let panel = &self.weights[strip.weights_start + panel0 * strip.kept..][..height * strip.kept];
                for (j, &c) in cols.iter().enumerate() {
                    for r in 0..height {
                        w.set(strip.row0 + panel0 + r, c as usize, panel[j * height + r]);
                    }
                }
            }
        }
        w
    }

    fn kind(&self) -> &'static str {
        "block"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::block::{block_mask, BlockShape};
    use crate::reference;

    #[test]
    fn packs_kept_columns_per_strip() {
        // Strip 0 (rows 0-1) keeps columns 0 and 2; strip 1 (row 2, ragged) keeps column 1.
        let w = Matrix::from_vec(3, 3, vec![1.0, 9.0, 2.0, 3.0, 9.0, 4.0, 9.0, 5.0, 9.0]);
        let mask = Mask::from_vec(3, 3, vec![true, false, true, true, false, true, false, true, false]);
        let layer = BlockSparseLinear::from_masked(&w, &mask, 2);
        assert_eq!(layer.kept_per_strip(), vec![2, 1]);
        assert_eq!(layer.cols, vec![0, 2, 1]);
        let mut expected = w.clone();
        expected.apply_mask(&mask);
        assert_eq!(layer.effective_weights(), expected);
        let stats = layer.stats();
        assert_eq!(stats.nnz, 5);
        assert!((stats.sparsity() - 4.0 / 9.0).abs() < 1e-12);
        assert_eq!(layer.kind(), "block");
        assert_eq!(layer.strip_rows(), 2);
    }

    #[test]
    fn forward_matches_hand_computed() {
        // y0 = 1*x0 + 2*x2, y1 = 3*x0 + 4*x2, y2 = 5*x1.
        let w = Matrix::from_vec(3, 3, vec![1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 0.0, 5.0, 0.0]);
        let layer = BlockSparseLinear::from_masked(&w, &Mask::nonzeros_of(&w), 2);
        let x = Matrix::from_vec(2, 3, vec![1.0, 10.0, 100.0, -1.0, 0.5, 2.0]);
        for backend in Backend::available() {
            let mut y = Matrix::zeros(0, 0);
            layer.forward_with(&x, &mut y, Threads::One, backend);
            assert_eq!(y.as_slice(), &[201.0, 403.0, 50.0, 3.0, 5.0, 2.5], "{}", backend.name());
        }
    }

    #[test]
    fn partially_masked_column_stores_zeros() {
        let w = Matrix::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]);
        let mask = Mask::from_vec(2, 2, vec![true, true, false, true]);
        let layer = BlockSparseLinear::from_masked(&w, &mask, 2);
        assert_eq!(layer.effective_weights().as_slice(), &[1.0, 2.0, 0.0, 4.0]);
        let x = Matrix::from_vec(1, 2, vec![1.0, 1.0]);
        let mut y = Matrix::zeros(0, 0);
        layer.forward(&x, &mut y, Threads::One);
        assert_eq!(y.as_slice(), &[3.0, 4.0]);
    }

    #[test]
    fn all_backends_and_threads_match_reference_on_ragged_shapes() {
        // Tall strips (several panels, a ragged one), tokens not a multiple of any vector width.
        let w = Matrix::random(70, 45, 7, 1.0);
        let mask = block_mask(&w, BlockShape::strip(16), 0.6);
        let layer = BlockSparseLinear::from_masked(&w, &mask, 16);
        let expected_w = layer.effective_weights();
        for tokens in [1, 13, 67] {
            let x = Matrix::random(tokens, 45, 8, 1.0);
            let expected = reference::linear(&x, &expected_w);
            for backend in Backend::available() {
                for threads in [Threads::One, Threads::N(3)] {
                    let mut y = Matrix::from_vec(1, 1, vec![f32::NAN]);
                    layer.forward_with(&x, &mut y, threads, backend);
                    let (abs, _) = reference::errors(&y, &expected);
                    assert!(abs < 1e-4, "tokens {tokens} {} {threads:?}: max error {abs}", backend.name());
                }
            }
        }
    }

    #[test]
    fn long_strips_are_summed_over_column_chunks() {
        // More kept columns than any backend's L1 chunk (at most 384), so partial
        // sums are carried across chunks through the tile.
        let w = Matrix::random(20, 900, 3, 1.0);
        let mask = block_mask(&w, BlockShape::strip(7), 0.1);
        let layer = BlockSparseLinear::from_masked(&w, &mask, 7);
        assert!(layer.kept_per_strip().iter().all(|k| *k > 384));
        let x = Matrix::random(37, 900, 4, 1.0);
        let expected = reference::linear(&x, &layer.effective_weights());
        for backend in Backend::available() {
            let mut y = Matrix::zeros(0, 0);
            layer.forward_with(&x, &mut y, Threads::One, backend);
            let (abs, _) = reference::errors(&y, &expected);
            assert!(abs < 1e-3, "{}: max error {abs}", backend.name());
        }
    }

    #[test]
    fn panels_split_strips_evenly() {
        let split = |rows, max| panels(rows, max).collect::<Vec<_>>();
        assert_eq!(split(32, 6), vec![(0, 6), (6, 6), (12, 5), (17, 5), (22, 5), (27, 5)]);
        assert_eq!(split(6, 6), vec![(0, 6)]);
        assert_eq!(split(1, 6), vec![(0, 1)]);
        assert_eq!(split(0, 6), vec![]);
        for rows in 1..70 {
            let p = split(rows, 6);
            assert_eq!(p.iter().map(|(_, h)| h).sum::<usize>(), rows);
            assert!(p.iter().all(|(_, h)| (1..=6).contains(h)));
            assert!(p.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        }
    }

    #[test]
    fn fully_pruned_layer_outputs_zeros() {
        let w = Matrix::random(5, 4, 1, 1.0);
        let layer = BlockSparseLinear::from_masked(&w, &Mask::from_vec(5, 4, vec![false; 20]), 3);
        let mut y = Matrix::from_vec(1, 1, vec![f32::NAN]);
        layer.forward(&Matrix::random(3, 4, 2, 1.0), &mut y, Threads::One);
        assert_eq!(y.as_slice(), &[0.0; 15]);
        assert_eq!(layer.stats().nnz, 0);
    }
}
