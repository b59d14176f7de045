//! Masked strips: a block-sparse layout whose columns carry a row mask, so
//! any mask runs without multiplying a weight it removed. This is the kernel
//! of pattern sets on a BP base ([`crate::prune::pattern::BlockCompaction`]).
//!
//! # Format
//! As in [`super::block`], the `out x in` weights are cut into strips of
//! `strip_rows` rows (packed as strips of at most 64 rows: row masks are
//! `u64`). A strip keeps the input columns any of its rows keeps, ordered by
//! their *row mask* over the strip (the rows that keep the column); a *run*
//! is the columns with one mask and stores, column by column, exactly the
//! weights its mask keeps. Nothing else is stored but the column indices
//! (`u32` per kept strip column) and 24 bytes per run. Under a pattern set
//! laid over the compacted BP blocks a run is one in-tile column of one
//! pattern (or several with the same rows): at most `patterns x tile` runs
//! per strip and tile row.
//!
//! # Kernel
//! For each strip: clear its `rows x tokens` tile (L1-resident); for each run
//! and block of `NV` token vectors (all 128 tokens in two blocks on AVX-512),
//! the run's rows in groups of up to `G`: load the group's accumulators from
//! the tile, for every column load the `xᵀ` vectors once and issue one
//! broadcast and `NV` FMAs per row, store them back; then transpose the tile
//! into `y`'s columns. Loads per FMA are `(NV + G) / (NV·G)` (0.42 for the
//! AVX-512 blocking of 4 vectors and 6 rows).
//!
//! Why the accumulators go through the tile between runs: a first version
//! kept a panel's accumulators in registers across the runs of a chunk and
//! dispatched on each run's 8-row mask (255 instantiated loops). With 16x16
//! patterns on 768-input layers a strip has ~110 runs of ~4 columns and that
//! dispatch ran 3 times per run (token blocks of 48), costing more than the
//! FMAs between them; measured on the reference x86-64 machine (1 thread,
//! 128 tokens, BP 64 % strips + PP 87.5 %), this layout is 25 % faster
//! (1.16 vs 1.55 ms for 768->3072, 0.98 vs 1.31 ms for 3072->768), equal at
//! 75 %, and compiles in seconds instead of minutes.

use super::block::{cache_aligned, SharedOut, CACHE_LINE_BYTES, PREFETCH_AHEAD, TILE_SCRATCH, XT_SCRATCH};
use super::{LayerStats, LinearKernel, Threads};
use crate::matrix::{Mask, Matrix};
use crate::simd::{self, Backend, F32Vector, ScalarLanes};

/// Rows per packed strip at most (row masks are `u64`).
const MAX_STRIP: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Strip {
    row0: u32,
    rows: u32,
    cols_start: u32,
    kept: u32,
    runs_start: u32,
    runs_end: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    mask: u64,
    /// Column positions `start..end` in the strip's column list.
    start: u32,
    end: u32,
    weights: u32,
}

/// A linear layer in the masked-run format (see the module docs).
#[derive(Clone, Debug)]
pub struct MaskedStripLinear {
    out_features: usize,
    in_features: usize,
    strip_rows: usize,
    backend: Backend,
    strips: Vec<Strip>,
    runs: Vec<Run>,
    cols: Vec<u32>,
    weights: Vec<f32>,
    nnz: usize,
    kind: &'static str,
}

impl MaskedStripLinear {
    /// Packs the weights of `w` that `mask` keeps, in strips of `strip_rows` rows.
    pub fn from_masked(w: &Matrix, mask: &Mask, strip_rows: usize, kind: &'static str) -> Self {
        Self::from_masked_for(w, mask, strip_rows, kind, Backend::best())
    }

    /// Like [`Self::from_masked`], for `backend`.
    pub fn from_masked_for(w: &Matrix, mask: &Mask, strip_rows: usize, kind: &'static str, backend: Backend) -> Self {
        assert_eq!(w.shape(), mask.shape(), "MaskedStripLinear: weights and mask shapes differ");
        assert!(strip_rows > 0, "MaskedStripLinear: strip_rows must be at least 1");
        let (out_features, in_features) = w.shape();
        assert!(u32::try_from(in_features).is_ok() && u32::try_from(out_features).is_ok());
        let (mut strips, mut runs, mut cols, mut weights) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut nnz = 0;
        for row0 in (0..out_features).step_by(strip_rows) {
            let strip_end = (row0 + strip_rows).min(out_features);
            for sub0 in (row0..strip_end).step_by(MAX_STRIP) {
                let rows = MAX_STRIP.min(strip_end - sub0);
                let mut keyed: Vec<(u64, u32)> = (0..in_features)
                    .filter_map(|c| {
                        let m = (0..rows).filter(|&r| mask.get(sub0 + r, c)).fold(0u64, |m, r| m | 1 << r);
                        (m != 0).then_some((m, c as u32))
                    })
                    .collect();
                keyed.sort_unstable();
                let (cols_start, runs_start) = (cols.len(), runs.len());
                cols.extend(keyed.iter().map(|(_, c)| *c));
                for group in keyed.chunk_by(|a, b| a.0 == b.0) {
                    let start = (group.as_ptr() as usize - keyed.as_ptr() as usize) / std::mem::size_of::<(u64, u32)>();
                    let offset = u32::try_from(weights.len()).expect("MaskedStripLinear: over 2^32 weights");
                    let m = group[0].0;
                    for (_, c) in group {
                        for r in (0..rows).filter(|r| m >> r & 1 == 1) {
                            let v = w.get(sub0 + r, *c as usize);
                            nnz += usize::from(v != 0.0);
                            weights.push(v);
                        }
                    }
                    runs.push(Run { mask: m, start: start as u32, end: (start + group.len()) as u32, weights: offset });
                }
                strips.push(Strip {
                    row0: sub0 as u32,
                    rows: rows as u32,
                    cols_start: cols_start as u32,
                    kept: keyed.len() as u32,
                    runs_start: runs_start as u32,
                    runs_end: runs.len() as u32,
                });
            }
        }
        Self { out_features, in_features, strip_rows, backend, strips, runs, cols, weights, nnz, kind }
    }

    /// Rows per BP strip this layer was packed for.
    pub fn strip_rows(&self) -> usize {
        self.strip_rows
    }

    /// The backend `forward` uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Weights stored and multiplied (explicit zeros of `w` included).
    pub fn stored_weights(&self) -> usize {
        self.weights.len()
    }

    /// Runs over all strips.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// `forward` on a chosen backend.
    pub fn forward_with(&self, x: &Matrix, y: &mut Matrix, threads: Threads, backend: Backend) {
        assert!(backend.is_available(), "MaskedStripLinear: backend {} is not supported by this CPU", backend.name());
        let (tokens, inputs) = x.shape();
        assert_eq!(inputs, self.in_features, "MaskedStripLinear::forward: x has {inputs} features");
        y.reshape_uninit(tokens, self.out_features);
        if tokens == 0 || self.out_features == 0 {
            return;
        }
        let token_stride = tokens.next_multiple_of(backend.lanes());
        XT_SCRATCH.with_borrow_mut(|xt| {
            let xt = cache_aligned(xt, inputs * token_stride);
            if token_stride > tokens {
                for row in xt.chunks_exact_mut(token_stride) {
                    row[tokens..].fill(0.0);
                }
            }
            simd::transpose_strided(x.as_slice(), tokens, inputs, inputs, xt, token_stride);
            let job = Job {
                layer: self,
                xt: xt.as_ptr(),
                tokens,
                token_stride,
                y: SharedOut(y.as_mut_slice().as_mut_ptr()),
                backend,
            };
            super::split_range(self.strips.len(), threads, &|range| job.run(range));
        });
    }
}

#[derive(Debug)]
struct Job<'a> {
    layer: &'a MaskedStripLinear,
    xt: *const f32,
    tokens: usize,
    token_stride: usize,
    y: SharedOut,
    backend: Backend,
}

// SAFETY: `xt` is only read; threads write disjoint strips (columns of `y`).
unsafe impl Sync for Job<'_> {}

impl Job<'_> {
    fn run(&self, range: std::ops::Range<usize>) {
        let rows = self.layer.strip_rows.min(MAX_STRIP).min(self.layer.out_features);
        TILE_SCRATCH.with_borrow_mut(|tile| {
            let tile = cache_aligned(tile, rows * self.token_stride);
            // SAFETY: each arm runs only when its backend's features were detected.
            unsafe {
                match self.backend {
                    #[cfg(target_arch = "x86_64")]
                    Backend::Avx512 => strips_avx512(self, range, tile),
                    #[cfg(target_arch = "x86_64")]
                    Backend::Avx2Fma => strips_avx2(self, range, tile),
                    #[cfg(target_arch = "aarch64")]
                    Backend::Neon => strips_neon(self, range, tile),
                    Backend::Scalar => strips::<ScalarLanes, 2, 5>(self, range, tile),
                    #[allow(unreachable_patterns)]
                    other => unreachable!("backend {} passed is_available on the wrong architecture", other.name()),
                }
            }
        });
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn strips_avx512(job: &Job, range: std::ops::Range<usize>, tile: &mut [f32]) {
    // SAFETY: forwarded from `Job::run`.
    unsafe { strips::<simd::x86::Avx512, 4, 6>(job, range, tile) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn strips_avx2(job: &Job, range: std::ops::Range<usize>, tile: &mut [f32]) {
    // SAFETY: forwarded from `Job::run`.
    unsafe { strips::<simd::x86::Avx2Fma, 2, 5>(job, range, tile) }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn strips_neon(job: &Job, range: std::ops::Range<usize>, tile: &mut [f32]) {
    // SAFETY: forwarded from `Job::run`.
    unsafe { strips::<simd::neon::Neon, 4, 6>(job, range, tile) }
}

/// Strips with token blocks of `NV` vectors (then 2 and 1) and row groups of up to `G`.
#[inline(always)]
unsafe fn strips<V: F32Vector, const NV: usize, const G: usize>(
    job: &Job,
    range: std::ops::Range<usize>,
    tile: &mut [f32],
) {
    let layer = job.layer;
    let stride = job.token_stride;
    for strip in &layer.strips[range] {
        let cols = &layer.cols[strip.cols_start as usize..(strip.cols_start + strip.kept) as usize];
        tile[..strip.rows as usize * stride].fill(0.0);
        let out = tile.as_mut_ptr();
        for run in &layer.runs[strip.runs_start as usize..strip.runs_end as usize] {
            let run_cols = &cols[run.start as usize..run.end as usize];
            let per_col = run.mask.count_ones() as usize;
            let mut t0 = 0;
            while t0 < job.tokens {
                let left = (job.tokens - t0).div_ceil(V::LANES);
                let nv = if left >= NV {
                    NV
                } else if left >= 2 {
                    2
                } else {
                    1
                };
                let mut mask = run.mask;
                let mut k = 0;
                while mask != 0 {
                    // SAFETY: rows of the mask are inside the strip tile; weights of the run
                    // hold `per_col` per column; t0 + nv * LANES <= token_stride.
                    unsafe {
                        let g = match nv {
                            n if n == NV => {
                                group::<V, NV, G>(mask, run_cols, cols, run, layer, k, per_col, job, out, t0)
                            }
                            2 => group::<V, 2, 8>(mask, run_cols, cols, run, layer, k, per_col, job, out, t0),
                            _ => group::<V, 1, 8>(mask, run_cols, cols, run, layer, k, per_col, job, out, t0),
                        };
                        for _ in 0..g {
                            mask &= mask - 1;
                        }
                        k += g;
                    }
                }
                t0 += nv * V::LANES;
            }
        }
        // SAFETY: `tile` holds `strip.rows x token_stride`; this strip owns its columns of `y`.
        unsafe {
            simd::transpose_strided_raw(
                tile.as_ptr(),
                strip.rows as usize,
                job.tokens,
                stride,
                job.y.0.add(strip.row0 as usize),
                layer.out_features,
            )
        };
    }
}

/// One row group of a run on one token block: up to `GM` of the lowest set
/// rows of `mask`, whose weights start at entry `k` of each column. Returns
/// how many rows it took.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group<V: F32Vector, const NV: usize, const GM: usize>(
    mask: u64,
    run_cols: &[u32],
    cols: &[u32],
    run: &Run,
    layer: &MaskedStripLinear,
    k: usize,
    per_col: usize,
    job: &Job,
    out: *mut f32,
    t0: usize,
) -> usize {
    let g = (mask.count_ones() as usize).min(GM);
    // SAFETY: forwarded from `strips`.
    unsafe {
        let w = layer.weights.as_ptr().add(run.weights as usize + k);
        let mut rows = [0usize; GM];
        let mut m = mask;
        for r in rows.iter_mut().take(g) {
            *r = m.trailing_zeros() as usize;
            m &= m - 1;
        }
        let ahead = &cols[run.start as usize..];
        macro_rules! arms {
            ($($n:literal)*) => {
                match g {
                    $($n if $n <= GM => rows_loop::<V, NV, $n>(&rows[..$n], run_cols, ahead, w, per_col, job, out, t0),)*
                    _ => unreachable!("row group of {g}"),
                }
            };
        }
        arms!(1 2 3 4 5 6 7 8);
        g
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_loop<V: F32Vector, const NV: usize, const R: usize>(
    rows: &[usize],
    run_cols: &[u32],
    ahead: &[u32],
    w: *const f32,
    per_col: usize,
    job: &Job,
    out: *mut f32,
    t0: usize,
) {
    let stride = job.token_stride;
    let lines = (NV * V::LANES * std::mem::size_of::<f32>()).div_ceil(CACHE_LINE_BYTES);
    // SAFETY: forwarded from `group`.
    unsafe {
        let mut acc = [[V::zero(); NV]; R];
        for (i, row) in acc.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                *a = V::load(out.add(rows[i] * stride + t0 + v * V::LANES));
            }
        }
        let mut wp = w;
        for (j, &c) in run_cols.iter().enumerate() {
            if let Some(&next) = ahead.get(j + PREFETCH_AHEAD) {
                let row = job.xt.add(next as usize * stride + t0);
                for line in 0..lines {
                    V::prefetch(row.wrapping_add(line * CACHE_LINE_BYTES / std::mem::size_of::<f32>()));
                }
            }
            let x_row = job.xt.add(c as usize * stride + t0);
            let mut xv = [V::zero(); NV];
            for (v, x) in xv.iter_mut().enumerate() {
                *x = V::load(x_row.add(v * V::LANES));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let b = V::splat(*wp.add(i));
                for (a, x) in row.iter_mut().zip(&xv) {
                    *a = a.mul_add(b, *x);
                }
            }
            wp = wp.add(per_col);
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, a) in row.iter().enumerate() {
                a.store(out.add(rows[i] * stride + t0 + v * V::LANES));
            }
        }
    }
}

impl LinearKernel for MaskedStripLinear {
    fn in_features(&self) -> usize {
        self.in_features
    }

    fn out_features(&self) -> usize {
        self.out_features
    }

    fn forward(&self, x: &Matrix, y: &mut Matrix, threads: Threads) {
        self.forward_with(x, y, threads, self.backend);
    }

    fn stats(&self) -> LayerStats {
        let bytes = std::mem::size_of_val(self.weights.as_slice())
            + std::mem::size_of_val(self.cols.as_slice())
            + std::mem::size_of_val(self.runs.as_slice())
            + std::mem::size_of_val(self.strips.as_slice());
        LayerStats {
            out_features: self.out_features,
            in_features: self.in_features,
            nnz: self.nnz,
            bytes,
            multiplied: self.weights.len(),
        }
    }

    fn effective_weights(&self) -> Matrix {
        let mut w = Matrix::zeros(self.out_features, self.in_features);
        for strip in &self.strips {
            let cols = &self.cols[strip.cols_start as usize..(strip.cols_start + strip.kept) as usize];
            for run in &self.runs[strip.runs_start as usize..strip.runs_end as usize] {
                let mut k = run.weights as usize;
                for &c in &cols[run.start as usize..run.end as usize] {
                    for r in (0..strip.rows).filter(|r| run.mask >> r & 1 == 1) {
                        w.set((strip.row0 + r) as usize, c as usize, self.weights[k]);
                        k += 1;
                    }
                }
            }
        }
        w
    }

    fn kind(&self) -> &'static str {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    #[test]
    fn stores_exactly_the_kept_weights_and_matches_reference() {
        for (rows, cols, strip, keep) in [(70, 45, 16, 0.4), (33, 900, 7, 0.3), (150, 20, 100, 0.5), (9, 5, 3, 0.0)] {
            let w = Matrix::random(rows, cols, 3, 1.0);
            let mut rng = crate::matrix::SeededUniform::new(5);
            let mask = Mask::from_vec(rows, cols, (0..rows * cols).map(|_| (rng.next_unit() as f64) < keep).collect());
            let mut expected_w = w.clone();
            expected_w.apply_mask(&mask);
            for backend in Backend::available() {
                let layer = MaskedStripLinear::from_masked_for(&w, &mask, strip, "pattern", backend);
                assert_eq!(layer.stats().multiplied, mask.kept());
                assert_eq!(layer.effective_weights(), expected_w);
                for tokens in [1, 13, 67, 128] {
                    let x = Matrix::random(tokens, cols, 8, 1.0);
                    let expected = reference::linear(&x, &expected_w);
                    for threads in [Threads::One, Threads::N(3)] {
                        let mut y = Matrix::from_vec(1, 1, vec![f32::NAN]);
                        layer.forward_with(&x, &mut y, threads, backend);
                        let (abs, _) = reference::errors(&y, &expected);
                        assert!(abs < 1e-3, "{rows}x{cols} tokens {tokens} {}: max error {abs}", backend.name());
                    }
                }
            }
        }
    }
}
