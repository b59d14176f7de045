//! Masked strips: a sparse layout for any mask that stores and multiplies
//! exactly the kept weights, fast enough for the masks pattern sets leave
//! on a BP base ([`crate::prune::pattern::BlockCompaction`]).
//!
//! # Format
//! The `out x in` weights are cut into strips of `strip_rows` rows (the BP
//! block height: a strip's rows share their kept input columns). A strip's
//! kept columns (those any of its rows keeps) are cut into *chunks* of
//! consecutive kept columns: few enough that one block of tokens of their
//! `xᵀ` rows stays in L1, and within 256 columns of the chunk's first. Per
//! chunk and row, a *span* lists the row's kept weights in that chunk,
//! ascending by column, each with its column's `u8` offset from the chunk's
//! first. Besides the weights (5 bytes each with the offset), a strip
//! stores its kept columns (`u32` each, like the BP kernel, for prefetching),
//! a 12-byte header per chunk and a `u32` per span: at BP 64 % + PP 75 % on
//! DistilBERT's layers, fewer bytes than the BP base alone.
//!
//! # Kernel
//! Per strip and block of `NV` token vectors (8 on AVX2: 64 tokens), chunk
//! by chunk, row by row: `NV` accumulators in registers (from zero in the
//! first chunk, from the strip's rows of `yᵀ` after it) take, per kept
//! weight, one broadcast and `NV` FMAs whose `xᵀ` operand comes straight
//! from L1. When the strip is done its rows get the epilogue.
//!
//! Why one row at a time, with wide token blocks: a pattern on a BP strip
//! keeps each column for a varying subset of the strip's rows, so register
//! blocks over several rows either multiply zeros or dispatch on the row
//! subset. A first version blocked 4 rows x 2 vectors and dispatched on the
//! 4-bit mask of each run of columns (15 loops): at BP 64 % + PP 87.5 % a
//! quad keeps ~1.7 rows per column, so each column's index load, address,
//! `xᵀ` loads and loop control fed 3.4 FMAs, and the kernel ran at 0.7 FMAs
//! per cycle on Zen 3. One row with 8 token vectors feeds 8 FMAs per kept
//! weight from one offset and one broadcast; the `xᵀ` loads it repeats per
//! row are L1 hits, and x86-64 folds them into the FMAs (Zen 3 issues 3
//! loads per cycle, 2 FMAs). 8 accumulators also give 8 independent FMA
//! chains, enough to cover the FMA latency. On NEON the weights of 4
//! consecutive entries come in one vector load and feed lane-indexed FMAs.
//! The cost of having no `xᵀ` reuse across rows: the inner loop alone runs
//! at ~1.55 FMAs per cycle on Zen 3 (the BP kernel, which reuses each `xᵀ`
//! vector for 6 rows, at ~1.6), and short spans (a 16 KiB chunk is 64
//! columns, ~22 kept weights per row at 87.5 %) and first touches of each
//! chunk's `xᵀ` rows take it to ~1.0 in a whole layer.
//!
//! On AVX2 (16 `ymm` registers) there is no room to reuse an `xᵀ` vector
//! across rows: two rows' accumulators at 8 vectors fill the register file,
//! and narrower token blocks cost more than reuse saves. Measured on Zen 3
//! without AVX-512 (BP 64 % strips, 128 tokens, 1 thread, 2026-12): 6 vectors
//! (three token blocks of 48, 48 and 32, 2 accumulator copies) ran 25-40 %
//! slower than 8; dropping the prefetch of the next chunk made 768->3072 3-5 %
//! faster and 3072->768 4-8 % slower, so it stays. The BP kernel runs at
//! 75-93 GFLOP/s there and this one at 45-61, so PP 75 % on that base is
//! 0.92-1.22x its base and PP 87.5 % 1.55-1.90x.

use super::CACHE_LINE_BYTES;
use super::{LayerStats, LinearKernel, Threads};
use super::{RowEpilogue, SharedOut};
use crate::matrix::{Activations, Mask, Matrix};
use crate::simd::{Backend, F32Vector, ScalarLanes, GROUP};

/// Bytes of `xᵀ` one chunk of kept columns spans for one token block: the
/// chunk is read by every row of the strip in turn, so it must stay in L1d
/// (32 KiB per core on the Zen 3 reference machine, 32-64 KiB on Cortex-A
/// cores) next to the weights streaming past and the output rows. Measured
/// on Zen 3 (BP 64 % strips + PP 75 % / 87.5 %, 1 thread, 128 tokens):
/// 16 KiB is 3-5 % faster than 8 KiB (shorter spans) and 10-15 % faster
/// than 24 KiB (L1 misses); 48 KiB runs at two thirds of the speed.
const CHUNK_BYTES: usize = 16 * 1024;

/// Columns a chunk may span: a weight's column is stored as a `u8` offset
/// from its chunk's first column. (A `u8` index into the chunk's list of kept
/// columns would pack as tightly but costs a dependent load per weight, 15 %
/// slower on Zen 3; a `u32` column takes 3 more bytes per weight, so the
/// layer would outweigh its BP base at 75 % sparsity.)
const MAX_CHUNK: usize = 256;

/// Token vectors per block, per backend: the accumulators (plus a weight,
/// and on NEON the `xᵀ` vectors, which `fmla` cannot take from memory) must
/// fit the register file without spills: 16 on AVX2 and 32-bit NEON (as 32
/// `d` registers), 32 on AVX-512 and aarch64 NEON. 8 vectors make 64 tokens
/// on AVX2 (DistilBERT's 128 in two blocks), 128 on AVX-512, 32 on NEON.
const fn token_vectors(backend: Backend) -> usize {
    match backend {
        Backend::Avx512 | Backend::Avx2Fma | Backend::Neon => 8,
        Backend::Scalar => 2,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Strip {
    row0: u32,
    rows: u32,
    chunks_start: u32,
    chunks_end: u32,
    /// Index of the strip's first span in `starts` (spans are chunk-major, then row).
    first_span: u32,
}

/// Consecutive kept columns of a strip, at most [`MAX_CHUNK`] apart from its first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    /// The first column: a weight's column is `base + offset`.
    base: u32,
    /// The chunk's kept columns: `kept[kept_start..kept_end]` (for prefetching).
    kept_start: u32,
    kept_end: u32,
}

/// A linear layer in the masked-strip format (see the module docs).
#[derive(Clone, Debug)]
pub struct MaskedStripLinear {
    out_features: usize,
    in_features: usize,
    strip_rows: usize,
    backend: Backend,
    strips: Vec<Strip>,
    chunks: Vec<Chunk>,
    /// Kept columns of every chunk.
    kept: Vec<u32>,
    /// Start of every span in `offsets` / `weights`, then the end of the last.
    starts: Vec<u32>,
    /// Per stored weight, its column minus its chunk's `base`.
    offsets: Vec<u8>,
    /// The kept weights, then [`GROUP`] zeros so a group load at the last weight stays in bounds.
    weights: Vec<f32>,
    nnz: usize,
    kind: &'static str,
}

impl MaskedStripLinear {
    /// Packs the weights of `w` that `mask` keeps, in strips of `strip_rows` rows.
    pub fn from_masked(w: &Matrix, mask: &Mask, strip_rows: usize, kind: &'static str) -> Self {
        Self::from_masked_for(w, mask, strip_rows, kind, Backend::best())
    }

    /// Like [`Self::from_masked`], with the chunking (and default `forward` backend) of `backend`.
    pub fn from_masked_for(w: &Matrix, mask: &Mask, strip_rows: usize, kind: &'static str, backend: Backend) -> Self {
        assert_eq!(w.shape(), mask.shape(), "MaskedStripLinear: weights and mask shapes differ");
        assert!(strip_rows > 0, "MaskedStripLinear: strip_rows must be at least 1");
        let (out_features, in_features) = w.shape();
        assert!(u32::try_from(in_features).is_ok() && u32::try_from(out_features).is_ok());
        let chunk_cols = (CHUNK_BYTES / (token_vectors(backend) * backend.lanes() * 4)).max(1);
        let mut layer = Self {
            out_features,
            in_features,
            strip_rows,
            backend,
            strips: Vec::new(),
            chunks: Vec::new(),
            kept: Vec::new(),
            starts: Vec::new(),
            offsets: Vec::new(),
            weights: Vec::new(),
            nnz: 0,
            kind,
        };
        for row0 in (0..out_features).step_by(strip_rows) {
            let rows = strip_rows.min(out_features - row0);
            let kept: Vec<usize> = (0..in_features).filter(|&c| (row0..row0 + rows).any(|r| mask.get(r, c))).collect();
            // Chunks: up to `chunk_cols` kept columns within MAX_CHUNK columns of the first; at
            // least one (empty) chunk, so a strip that keeps nothing still writes its zeros.
            let mut bounds = vec![0];
            for (i, &c) in kept.iter().enumerate() {
                let first = kept[*bounds.last().expect("starts with 0")];
                if i - bounds.last().expect("starts with 0") == chunk_cols || c - first >= MAX_CHUNK {
                    bounds.push(i);
                }
            }
            bounds.push(kept.len());
            let (chunks_start, first_span) = (layer.chunks.len() as u32, layer.starts.len() as u32);
            for part in bounds.windows(2) {
                let chunk = &kept[part[0]..part[1]];
                let base = chunk.first().copied().unwrap_or(0);
                let kept_start = layer.kept.len() as u32;
                layer.kept.extend(chunk.iter().map(|&c| c as u32));
                layer.chunks.push(Chunk { base: base as u32, kept_start, kept_end: layer.kept.len() as u32 });
                for r in row0..row0 + rows {
                    let start = u32::try_from(layer.weights.len()).expect("MaskedStripLinear: over 2^32 weights");
                    layer.starts.push(start);
                    for &c in chunk.iter().filter(|&&c| mask.get(r, c)) {
                        let v = w.get(r, c);
                        layer.nnz += usize::from(v != 0.0);
                        layer.offsets.push((c - base) as u8);
                        layer.weights.push(v);
                    }
                }
            }
            layer.strips.push(Strip {
                row0: row0 as u32,
                rows: rows as u32,
                chunks_start,
                chunks_end: layer.chunks.len() as u32,
                first_span,
            });
        }
        layer.starts.push(layer.weights.len() as u32);
        layer.weights.extend([0.0; GROUP]);
        layer
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
        self.offsets.len()
    }

    /// The token-major `forward` on a chosen backend (tests run every available one).
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
        assert!(backend.is_available(), "MaskedStripLinear: backend {} is not supported by this CPU", backend.name());
        assert_eq!(x.features(), self.in_features, "MaskedStripLinear::forward: x has {} features", x.features());
        let tokens = x.tokens();
        y.reshape(self.out_features, tokens);
        if tokens == 0 || self.out_features == 0 {
            return;
        }
        let job = Job {
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

struct Job<'a> {
    layer: &'a MaskedStripLinear,
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

// SAFETY: `xt` is only read; threads write disjoint strips (rows of `yᵀ`).
unsafe impl Sync for Job<'_> {}

impl Job<'_> {
    fn run(&self, range: std::ops::Range<usize>) {
        // SAFETY: each arm runs only when its backend's features were detected.
        unsafe {
            match self.backend {
                #[cfg(target_arch = "x86_64")]
                Backend::Avx512 => strips_avx512(self, range),
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2Fma => strips_avx2(self, range),
                #[cfg(simd_neon)]
                Backend::Neon => strips_neon(self, range),
                Backend::Scalar => strips::<ScalarLanes, { token_vectors(Backend::Scalar) }>(self, range),
                #[allow(unreachable_patterns)]
                other => unreachable!("backend {} passed is_available on the wrong architecture", other.name()),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn strips_avx512(job: &Job, range: std::ops::Range<usize>) {
    // SAFETY: forwarded from `Job::run`.
    unsafe { strips::<crate::simd::x86::Avx512, { token_vectors(Backend::Avx512) }>(job, range) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn strips_avx2(job: &Job, range: std::ops::Range<usize>) {
    // SAFETY: forwarded from `Job::run`.
    unsafe { strips::<crate::simd::x86::Avx2Fma, { token_vectors(Backend::Avx2Fma) }>(job, range) }
}

// On 32-bit ARM NEON is enabled for the whole build (see `crate::simd`).
#[cfg(simd_neon)]
#[cfg_attr(target_arch = "aarch64", target_feature(enable = "neon"))]
unsafe fn strips_neon(job: &Job, range: std::ops::Range<usize>) {
    // SAFETY: forwarded from `Job::run`.
    unsafe { strips::<crate::simd::neon::Neon, { token_vectors(Backend::Neon) }>(job, range) }
}

/// Strips in token blocks of `NV` vectors; the last block takes what is
/// left (1 to `NV` vectors, each count its own instantiation). A strip's
/// rows of `yᵀ` hold its partial sums between chunks and get the epilogue
/// when the strip is done, while they are still in L1.
///
/// # Safety
/// `V`'s features are enabled; the job's pointers cover the extents it documents.
#[inline(always)]
unsafe fn strips<V: F32Vector, const NV: usize>(job: &Job, range: std::ops::Range<usize>) {
    let layer = job.layer;
    for strip in &layer.strips[range] {
        // SAFETY: the strip's rows of `yᵀ` are inside `y` and owned by this strip.
        let out = unsafe { job.y.ptr().add(strip.row0 as usize * job.y_stride) };
        let mut t0 = 0;
        while t0 < job.tokens {
            let vectors = (job.tokens - t0).div_ceil(V::LANES).min(NV);
            macro_rules! block {
                ($($n:literal)*) => {
                    match vectors {
                        // SAFETY: t0 + n * LANES <= both strides (whole cache lines); spans index the layer's arrays.
                        $($n if $n <= NV => unsafe { strip_block::<V, $n>(job, strip, out, t0) },)*
                        _ => unreachable!("token block of {vectors} vectors"),
                    }
                };
            }
            block!(1 2 3 4 5 6 7 8);
            t0 += vectors * V::LANES;
        }
        if let Some(epilogue) = job.epilogue {
            for r in 0..strip.rows as usize {
                // SAFETY: row r of the strip is final and owned by this strip; `tokens <= stride`.
                let row = unsafe { std::slice::from_raw_parts_mut(out.add(r * job.y_stride), job.tokens) };
                epilogue(strip.row0 as usize + r, row);
            }
        }
    }
}

/// Independent copies of a row's accumulators, so enough FMAs are in flight:
/// every kept weight of a row updates the same `NV` accumulators, a chain of
/// dependent FMAs (4 cycles each on Zen 3 and Cortex-A76, 2 issued per
/// cycle), so with fewer than 8 vectors (a short last token block, e.g. 35
/// tokens) consecutive weights go round-robin to 2 or 4 copies, summed at
/// the end of the span.
const fn accumulator_copies(vectors: usize) -> usize {
    const IN_FLIGHT: usize = 8;
    let copies = IN_FLIGHT.div_ceil(vectors);
    if copies >= 4 {
        4
    } else if copies >= 2 {
        2
    } else {
        1
    }
}

/// Every chunk and row of `strip` on the token block `t0..t0 + NV * LANES`.
///
/// # Safety
/// As [`strips`]; `t0 + NV * LANES <= token_stride`.
#[inline(always)]
unsafe fn strip_block<V: F32Vector, const NV: usize>(job: &Job, strip: &Strip, out: *mut f32, t0: usize) {
    let layer = job.layer;
    let (stride, y_stride, rows) = (job.x_stride, job.y_stride, strip.rows as usize);
    let copies = accumulator_copies(NV);
    let lines = (NV * V::LANES * std::mem::size_of::<f32>()).div_ceil(CACHE_LINE_BYTES);
    let chunks = &layer.chunks[strip.chunks_start as usize..strip.chunks_end as usize];
    for (i, chunk) in chunks.iter().enumerate() {
        let spans = strip.first_span as usize + i * rows;
        // The `xᵀ` rows the next chunk (or this block's successor's first) will read: each row
        // of this chunk prefetches its share, so they arrive from L2 while this chunk computes.
        let (next, next_t0) = match chunks.get(i + 1) {
            Some(next) => (next, t0),
            None => (&chunks[0], t0 + NV * V::LANES),
        };
        let next = &layer.kept[next.kept_start as usize..next.kept_end as usize];
        let per_row = next.len().div_ceil(rows);
        let x_chunk = job.xt.wrapping_add(chunk.base as usize * stride + t0);
        for r in 0..rows {
            if next_t0 < job.tokens {
                for &c in next.iter().skip(r * per_row).take(per_row) {
                    let row = job.xt.wrapping_add(c as usize * stride + next_t0);
                    for line in 0..lines {
                        // SAFETY: a hint only; it never faults.
                        unsafe { V::prefetch(row.wrapping_add(line * CACHE_LINE_BYTES / std::mem::size_of::<f32>())) };
                    }
                }
            }
            // SAFETY (whole body): spans, offsets and weights come from `from_masked_for`; row r
            // of the tile has `token_stride` floats; every column's `xᵀ` row is in bounds.
            unsafe {
                let start = *layer.starts.get_unchecked(spans + r) as usize;
                let end = *layer.starts.get_unchecked(spans + r + 1) as usize;
                let acc_row = out.add(r * y_stride + t0);
                // Column `e` of the span goes to copy `e % copies`; copies after the first start at zero.
                let mut acc = [[V::zero(); NV]; 4];
                if i > 0 {
                    for (v, a) in acc[0].iter_mut().enumerate() {
                        *a = V::load(acc_row.add(v * V::LANES));
                    }
                }
                let (offsets, w) = (layer.offsets.as_ptr(), layer.weights.as_ptr());
                let mut e = start;
                // Groups of GROUP weights: one group load (a vector on NEON) feeds GROUP entries.
                // One entry: its `xᵀ` row times weight `lane` of the group, into copy `lane % copies`.
                macro_rules! entry {
                    ($group:expr, $lane:expr) => {{
                        let xp = x_chunk.add(*offsets.add(e + $lane) as usize * stride);
                        for (v, a) in acc[$lane % copies].iter_mut().enumerate() {
                            *a = a.mul_add_lane($group, $lane, V::load(xp.add(v * V::LANES)));
                        }
                    }};
                }
                while e + GROUP <= end {
                    let group = V::load_group(w.add(e));
                    // Unrolled by hand, each lane a constant: over the 32-bit ARM backend's
                    // assembly blocks, LLVM keeps a `for lane in 0..GROUP` loop and switches on
                    // the lane inside it.
                    const _: () = assert!(GROUP == 4);
                    entry!(group, 0);
                    entry!(group, 1);
                    entry!(group, 2);
                    entry!(group, 3);
                    e += GROUP;
                }
                // The last 0 to 3 entries: the group load may read the padding after the last weight.
                let group = V::load_group(w.add(e));
                for lane in 0..end - e {
                    entry!(group, lane);
                }
                for c in 1..copies {
                    for v in 0..NV {
                        acc[0][v] = acc[0][v].add(acc[c][v]);
                    }
                }
                for (v, a) in acc[0].iter().enumerate() {
                    a.store(acc_row.add(v * V::LANES));
                }
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

    fn forward_feature_major(
        &self,
        x: &Activations,
        y: &mut Activations,
        epilogue: Option<RowEpilogue>,
        threads: Threads,
    ) {
        self.forward_feature_major_with(x, y, epilogue, threads, self.backend);
    }

    fn stats(&self) -> LayerStats {
        let bytes = std::mem::size_of_val(self.weights.as_slice())
            + std::mem::size_of_val(self.offsets.as_slice())
            + std::mem::size_of_val(self.kept.as_slice())
            + std::mem::size_of_val(self.chunks.as_slice())
            + std::mem::size_of_val(self.starts.as_slice())
            + std::mem::size_of_val(self.strips.as_slice());
        LayerStats {
            out_features: self.out_features,
            in_features: self.in_features,
            nnz: self.nnz,
            bytes,
            multiplied: self.offsets.len(),
        }
    }

    fn effective_weights(&self) -> Matrix {
        let mut w = Matrix::zeros(self.out_features, self.in_features);
        for strip in &self.strips {
            for (i, chunk) in self.chunks[strip.chunks_start as usize..strip.chunks_end as usize].iter().enumerate() {
                for r in 0..strip.rows {
                    let span = strip.first_span as usize + i * strip.rows as usize + r as usize;
                    for e in self.starts[span] as usize..self.starts[span + 1] as usize {
                        let col = chunk.base as usize + self.offsets[e] as usize;
                        w.set((strip.row0 + r) as usize, col, self.weights[e]);
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
        // Ragged strips (7, 3 rows: partial quads), strips taller than a quad, a chunked
        // 900-column strip, and an all-pruned mask.
        for (rows, cols, strip, keep) in
            [(70, 45, 16, 0.4), (33, 900, 7, 0.3), (150, 20, 100, 0.5), (9, 5, 3, 0.0), (40, 2000, 16, 0.9)]
        {
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

    #[test]
    fn spans_list_each_rows_kept_columns_per_chunk() {
        // One 4-row strip; columns 0, 2, 5 keep rows {0, 2}, column 1 keeps row 3, column 4 all rows.
        let keep = |r: usize, c: usize| match c {
            0 | 2 | 5 => r == 0 || r == 2,
            1 => r == 3,
            4 => true,
            _ => false,
        };
        let mask = Mask::from_vec(4, 6, (0..24).map(|i| keep(i / 6, i % 6)).collect());
        let w = Matrix::from_fn(4, 6, |r, c| (r * 6 + c) as f32 + 1.0);
        let layer = MaskedStripLinear::from_masked(&w, &mask, 4, "pattern");
        assert_eq!(layer.starts, vec![0, 4, 5, 9, 11]);
        assert_eq!(layer.kept, vec![0, 1, 2, 4, 5]);
        assert_eq!(layer.offsets, vec![0, 2, 4, 5, 4, 0, 2, 4, 5, 1, 4]);
        assert_eq!(layer.stored_weights(), mask.kept());
        assert_eq!(&layer.weights[..4], &[1.0, 3.0, 5.0, 6.0]);
        assert_eq!(&layer.weights[layer.stored_weights()..], &[0.0; GROUP], "padding for the last group load");
    }
}
