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
//! first; with [`RowRuns::Pairs`], per chunk and pair of rows, three spans:
//! the columns both keep (the two weights adjacent, each with the offset),
//! then those only the first keeps, then those only the second keeps, and a
//! `u16` per row gives the chunk's pair order. Besides the weights (5 bytes
//! each with the offset), a strip stores its kept columns (`u32` each, like
//! the BP kernel, for prefetching), a 12-byte header per chunk and a `u32`
//! per span: at BP 64 % + PP 75 % on DistilBERT's layers, fewer bytes than
//! the BP base alone.
//!
//! # Kernel
//! Per strip and block of `NV` token vectors (8: 128 tokens on AVX-512, 64
//! on AVX2), chunk by chunk, run by run: a run's accumulators sit in
//! registers (from zero in the first chunk, from the strip's rows of `yᵀ`
//! after it) and take, per kept weight, one broadcast and `NV` FMAs whose
//! `xᵀ` operand comes from L1. When the strip is done its rows get the
//! epilogue. A run is one row ([`RowRuns::Single`]) or a pair of rows
//! ([`RowRuns::Pairs`]): the pair's columns that both rows keep load each
//! `xᵀ` vector once for two FMAs; the columns only one keeps go as single
//! rows. Rows are paired per chunk, greedily by the number of columns they
//! share (`pair_order`).
//!
//! Why not larger register blocks: a pattern on a BP strip keeps each column
//! for a varying subset of the strip's rows, so blocks over several rows
//! either multiply zeros or dispatch on the row subset. A first version
//! blocked 4 rows x 2 vectors and dispatched on the 4-bit mask of each run
//! of columns (15 loops): at BP 64 % + PP 87.5 % a quad keeps ~1.7 rows per
//! column, so each column's index load, address, `xᵀ` loads and loop control
//! fed 3.4 FMAs, and the kernel ran at 0.7 FMAs per cycle on Zen 3. A pair
//! has three cases (both, first, second), each its own span, and keeps the
//! wide token block: 8 independent FMA chains per row, enough to cover the
//! FMA latency. On NEON the weights of 4 consecutive entries come in one
//! vector load and feed lane-indexed FMAs.
//!
//! Pairs need 2 x `NV` accumulators plus a weight per row and an `xᵀ`
//! vector: 32 registers. On AVX2 (16 `ymm`) two rows' accumulators fill the
//! register file, and narrower token blocks cost more than reuse saves
//! (Zen 3 without AVX-512, BP 64 % strips, 128 tokens, 1 thread, 2026-12: 6
//! vectors in three token blocks ran 25-40 % slower than 8), so AVX2, 32-bit
//! NEON and the scalar path walk single rows. aarch64 NEON has 32 registers
//! too but cannot be timed here, so it keeps single rows until measured on a
//! core. Every walk runs (and is tested) on every backend.
//!
//! Measured on Zen 4 (AVX-512; 1 thread, `taskset -c 1`, the speedup
//! example's BP 64 % 16x1 strips + 16x16 patterns; four interleaved runs,
//! time against the same run's BP base): at 128 tokens single rows gave
//! PP 75 % 0.97-1.16x its base and PP 87.5 % 1.62-1.84x; adjacent pairs
//! 1.07-1.35x and 1.48-1.94x; pairs by shared columns 1.14-1.33x and
//! 1.69-2.01x. Where `xᵀ` comes from L3 (3072 inputs) the pairs first ran
//! slower than single rows, until each pair prefetched the next chunk in two
//! halves instead of one burst (and then faster still with no software
//! prefetch at all on AVX-512, see `prefetches`). Per chunk, pairing by
//! shared columns raises the weights in shared columns from 0.33-0.38 to
//! 0.51-0.53 of all at
//! 87.5 % and from 0.68-0.70 to 0.76 at 75 %. At RT3's 35 tokens (3 vectors,
//! 2 accumulator copies) single rows gave 0.85-1.01x / 1.37-1.71x, pairs
//! 1.05-1.23x / 1.60-1.86x. A 24 KiB chunk was 0-12 % slower than 16 KiB,
//! 12 KiB within noise. Taking one weight (or shared column) per loop
//! iteration instead of groups of 4 and a tail, where a group is only an
//! address (x86-64), then gave pairs 1.14-1.28x / 1.78-1.96x against
//! 0.97-1.22x / 1.48-1.82x in the same three runs: the spans are short and
//! the tails' branches mispredict. (The same change on the AVX2 single-row
//! walk, timed on the Zen 4 VM, measured within noise.)

use super::CACHE_LINE_BYTES;
use super::{LayerStats, LinearKernel, Threads};
use super::{RowEpilogue, SharedOut};
use crate::matrix::{Activations, Mask, Matrix};
use crate::simd::{Backend, F32Vector, ScalarLanes, GROUP};

/// Bytes of `xᵀ` one chunk of kept columns spans for one token block: the
/// chunk is read by every run of the strip in turn, so it must stay in L1d
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
/// (On AVX-512 with pairs, 4 vectors, whose 64-token blocks take 64-column
/// chunks, measured within noise of 8 on Zen 4: -4 to +4 % by shape and
/// sparsity, three interleaved runs.)
const fn token_vectors(backend: Backend) -> usize {
    match backend {
        Backend::Avx512 | Backend::Avx2Fma | Backend::Neon => 8,
        Backend::Scalar => 2,
    }
}

/// How a strip's rows are walked: one at a time, or in pairs that share each
/// `xᵀ` load for the columns both rows keep (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowRuns {
    /// Per chunk and row, one span of the row's kept weights.
    Single,
    /// Per chunk and pair of rows `(2q, 2q + 1)`, three spans: the columns both
    /// keep (their two weights adjacent), those only the first keeps, those only
    /// the second keeps. An odd last row has only its own span.
    Pairs,
}

impl RowRuns {
    /// Both walks (tests run each on every backend).
    pub const ALL: [RowRuns; 2] = [RowRuns::Single, RowRuns::Pairs];

    /// The walk measured faster on `backend`: pairs need 2 x 8 accumulators
    /// plus temporaries, which only the 32 registers of AVX-512 hold (see the module docs).
    pub fn for_backend(backend: Backend) -> Self {
        match backend {
            Backend::Avx512 => RowRuns::Pairs,
            _ => RowRuns::Single,
        }
    }

    /// Runs per strip of `rows` rows (rows or pairs).
    fn runs(self, rows: usize) -> usize {
        match self {
            RowRuns::Single => rows,
            RowRuns::Pairs => rows.div_ceil(2),
        }
    }

    /// Spans per chunk of a strip of `rows` rows.
    fn spans(self, rows: usize) -> usize {
        match self {
            RowRuns::Single => rows,
            RowRuns::Pairs => 3 * rows.div_ceil(2),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Strip {
    row0: u32,
    rows: u32,
    chunks_start: u32,
    chunks_end: u32,
    /// Index of the strip's first span in `starts` (spans are chunk-major, then row or pair).
    first_span: u32,
    /// [`RowRuns::Pairs`]: index of the strip's first chunk's row order in `row_order`
    /// (each chunk lists the strip's rows, `rows` entries, as pairs).
    first_order: u32,
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
    row_runs: RowRuns,
    strips: Vec<Strip>,
    chunks: Vec<Chunk>,
    /// Kept columns of every chunk.
    kept: Vec<u32>,
    /// Start of every span in `offsets` / `weights`, then the end of the last.
    starts: Vec<u32>,
    /// [`RowRuns::Pairs`]: per chunk, the strip's rows (from the strip's first) in pair order.
    row_order: Vec<u16>,
    /// Per stored weight, its column minus its chunk's `base` (a shared pair's two weights both carry it).
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
        Self::from_masked_with(w, mask, strip_rows, kind, backend, RowRuns::for_backend(backend))
    }

    /// Like [`Self::from_masked_for`], with the rows walked as `row_runs` says
    /// (every walk runs on every backend; tests cover both).
    pub fn from_masked_with(
        w: &Matrix,
        mask: &Mask,
        strip_rows: usize,
        kind: &'static str,
        backend: Backend,
        row_runs: RowRuns,
    ) -> Self {
        assert_eq!(w.shape(), mask.shape(), "MaskedStripLinear: weights and mask shapes differ");
        assert!(strip_rows > 0, "MaskedStripLinear: strip_rows must be at least 1");
        assert!(strip_rows <= 1 << 16, "MaskedStripLinear: strips of at most 65536 rows");
        let (out_features, in_features) = w.shape();
        assert!(u32::try_from(in_features).is_ok() && u32::try_from(out_features).is_ok());
        let chunk_cols = (CHUNK_BYTES / (token_vectors(backend) * backend.lanes() * 4)).max(1);
        let mut layer = Self {
            out_features,
            in_features,
            strip_rows,
            backend,
            row_runs,
            strips: Vec::new(),
            chunks: Vec::new(),
            kept: Vec::new(),
            starts: Vec::new(),
            row_order: Vec::new(),
            offsets: Vec::new(),
            weights: Vec::new(),
            nnz: 0,
            kind,
        };
        for row0 in (0..out_features).step_by(strip_rows) {
            let rows = strip_rows.min(out_features - row0);
            let kept = mask.columns_kept_by(row0..row0 + rows);
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
            let first_order = layer.row_order.len() as u32;
            for part in bounds.windows(2) {
                let chunk = &kept[part[0]..part[1]];
                let base = chunk.first().copied().unwrap_or(0);
                let kept_start = layer.kept.len() as u32;
                layer.kept.extend(chunk.iter().map(|&c| c as u32));
                layer.chunks.push(Chunk { base: base as u32, kept_start, kept_end: layer.kept.len() as u32 });
                // Per row of the strip, the chunk's columns it keeps (bit `c - base`).
                let bits = chunk_bits(mask, row0..row0 + rows, chunk);
                // One span: the weights of `rows_of` (one row, or a pair interleaved) at the columns
                // whose bits are set in `columns`, ascending.
                let mut span = |rows_of: &[usize], columns: ChunkBits| {
                    let start = u32::try_from(layer.weights.len()).expect("MaskedStripLinear: over 2^32 weights");
                    layer.starts.push(start);
                    for offset in set_bits(&columns) {
                        for &r in rows_of {
                            let v = w.get(r, base + offset);
                            layer.nnz += usize::from(v != 0.0);
                            layer.offsets.push(offset as u8);
                            layer.weights.push(v);
                        }
                    }
                };
                match row_runs {
                    RowRuns::Single => {
                        for (r, row_bits) in bits.iter().enumerate() {
                            span(&[row0 + r], *row_bits);
                        }
                    }
                    RowRuns::Pairs => {
                        // The strip's rows (from row0) in pair order, for this chunk.
                        let order = pair_order(rows, |a, b| {
                            bits[a].iter().zip(&bits[b]).map(|(x, y)| (x & y).count_ones() as usize).sum()
                        });
                        layer.row_order.extend(order.iter().map(|&r| r as u16));
                        for pair in order.chunks(2) {
                            let (a, b) = (pair[0], pair.get(1).copied());
                            let (bits_a, bits_b) = (bits[a], b.map_or([0; WORDS], |b| bits[b]));
                            let both: Vec<usize> = [a].into_iter().chain(b).map(|r| row0 + r).collect();
                            span(&both, std::array::from_fn(|k| bits_a[k] & bits_b[k]));
                            span(&[row0 + a], std::array::from_fn(|k| bits_a[k] & !bits_b[k]));
                            span(&[row0 + b.unwrap_or(a)], std::array::from_fn(|k| bits_b[k] & !bits_a[k]));
                        }
                    }
                }
            }
            layer.strips.push(Strip {
                row0: row0 as u32,
                rows: rows as u32,
                chunks_start,
                chunks_end: layer.chunks.len() as u32,
                first_span,
                first_order,
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

    /// How the kernel walks a strip's rows.
    pub fn row_runs(&self) -> RowRuns {
        self.row_runs
    }

    /// The rows, weight range and weight stride of every span of chunk `i` of `strip`,
    /// as `(row, range, stride)`: a shared pair span is two of these, offset by one, stride 2.
    fn spans_of(&self, strip: &Strip, i: usize) -> Vec<(usize, std::ops::Range<usize>, usize)> {
        let rows = strip.rows as usize;
        let first = strip.first_span as usize + i * self.row_runs.spans(rows);
        let span = |k: usize| self.starts[first + k] as usize..self.starts[first + k + 1] as usize;
        let row0 = strip.row0 as usize;
        match self.row_runs {
            RowRuns::Single => (0..rows).map(|r| (row0 + r, span(r), 1)).collect(),
            RowRuns::Pairs => {
                let order = &self.row_order[strip.first_order as usize + i * rows..][..rows];
                (0..rows.div_ceil(2))
                    .flat_map(|q| {
                        // An odd last row's shared and second spans are empty.
                        let (a, b) =
                            (row0 + order[2 * q] as usize, row0 + *order.get(2 * q + 1).unwrap_or(&0) as usize);
                        let shared = span(3 * q);
                        [
                            (a, shared.clone(), 2),
                            (b, shared.start + 1..shared.end, 2),
                            (a, span(3 * q + 1), 1),
                            (b, span(3 * q + 2), 1),
                        ]
                    })
                    .collect()
            }
        }
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

/// The rows `0..rows` of a strip ordered as pairs `(order[0], order[1])`, ...
/// (an odd last row alone at the end) that share many kept columns:
/// greedily, the pair with the most shared columns (`shared(a, b)`, `a < b`)
/// first, ties to the lowest rows. Adjacent rows would do as well for a
/// random mask; on pattern sets over BP strips this raises the share of
/// weights in shared columns from 0.33-0.38 to 0.51-0.53 at 87.5 %
/// and from 0.68-0.70 to 0.76 at 75 % (DistilBERT's layers, 16-row strips).
fn pair_order(rows: usize, shared: impl Fn(usize, usize) -> usize) -> Vec<usize> {
    // One sortable key per pair: most shared first, then the lowest rows (rows < 2^16 and a
    // chunk's count <= MAX_CHUNK, so each part fits its 16 bits).
    let mut pairs: Vec<u64> = (0..rows)
        .flat_map(|a| (a + 1..rows).map(move |b| (a, b)))
        .map(|(a, b)| (u64::from(u16::MAX) - shared(a, b) as u64) << 32 | (a as u64) << 16 | b as u64)
        .collect();
    pairs.sort_unstable();
    let mut taken = vec![false; rows];
    let mut order = Vec::with_capacity(rows);
    for key in pairs {
        let (a, b) = ((key >> 16 & 0xffff) as usize, (key & 0xffff) as usize);
        if !taken[a] && !taken[b] {
            (taken[a], taken[b]) = (true, true);
            order.extend([a, b]);
        }
    }
    order.extend((0..rows).filter(|&r| !taken[r]));
    order
}

/// Words of a chunk's bitset: a chunk spans at most [`MAX_CHUNK`] columns.
const WORDS: usize = MAX_CHUNK / 64;

/// A set of a chunk's columns, bit `c - base` for column `c`.
type ChunkBits = [u64; WORDS];

/// Per row of a strip, the chunk's columns it keeps as a bitset, so [`pair_order`]'s
/// counts are popcounts and spans are set operations.
fn chunk_bits(mask: &Mask, rows: std::ops::Range<usize>, chunk: &[usize]) -> Vec<ChunkBits> {
    let base = chunk.first().copied().unwrap_or(0);
    rows.map(|r| {
        let mut bits = [0u64; WORDS];
        for &c in chunk.iter().filter(|&&c| mask.get(r, c)) {
            bits[(c - base) / 64] |= 1 << ((c - base) % 64);
        }
        bits
    })
    .collect()
}

/// The members of `bits`, ascending.
fn set_bits(bits: &ChunkBits) -> impl Iterator<Item = usize> + '_ {
    bits.iter().enumerate().flat_map(|(k, &word)| {
        let mut word = word;
        std::iter::from_fn(move || {
            (word != 0).then(|| {
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                k * 64 + bit
            })
        })
    })
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

/// Every chunk and row of `strip` on the token block `t0..t0 + NV * LANES`.
///
/// # Safety
/// As [`strips`]; `t0 + NV * LANES <= token_stride`.
#[inline(always)]
unsafe fn strip_block<V: F32Vector, const NV: usize>(job: &Job, strip: &Strip, out: *mut f32, t0: usize) {
    let layer = job.layer;
    let (stride, y_stride, rows) = (job.x_stride, job.y_stride, strip.rows as usize);
    let (runs, spans_per_chunk) = (layer.row_runs.runs(rows), layer.row_runs.spans(rows));
    let lines = (NV * V::LANES * std::mem::size_of::<f32>()).div_ceil(CACHE_LINE_BYTES);
    let chunks = &layer.chunks[strip.chunks_start as usize..strip.chunks_end as usize];
    for (i, chunk) in chunks.iter().enumerate() {
        let spans = strip.first_span as usize + i * spans_per_chunk;
        // The `xᵀ` rows the next chunk (or this block's successor's first) will read, where the
        // backend prefetches: in one share per row of the strip, so they arrive from L2 while this
        // chunk computes; a pair takes two, one before each half of its work (a burst of both
        // measured slower where `xᵀ` comes from L3).
        let (next, next_t0) = match chunks.get(i + 1) {
            Some(next) => (next, t0),
            None => (&chunks[0], t0 + NV * V::LANES),
        };
        let next = &layer.kept[next.kept_start as usize..next.kept_end as usize];
        let per_row = next.len().div_ceil(rows);
        let prefetch = |share: usize| {
            if prefetches(job.backend) && next_t0 < job.tokens {
                for &c in next.iter().skip(share * per_row).take(per_row) {
                    let row = job.xt.wrapping_add(c as usize * stride + next_t0);
                    for line in 0..lines {
                        // SAFETY: a hint only; it never faults.
                        unsafe { V::prefetch(row.wrapping_add(line * CACHE_LINE_BYTES / std::mem::size_of::<f32>())) };
                    }
                }
            }
        };
        let x_chunk = job.xt.wrapping_add(chunk.base as usize * stride + t0);
        let span = |k: usize| {
            // SAFETY: `spans + k + 1` is a span boundary of this chunk (from `from_masked_with`).
            unsafe {
                Span {
                    x: x_chunk,
                    stride,
                    start: *layer.starts.get_unchecked(spans + k) as usize,
                    end: *layer.starts.get_unchecked(spans + k + 1) as usize,
                }
            }
        };
        for q in 0..runs {
            // SAFETY (whole body): spans, offsets and weights come from `from_masked_with`; rows
            // of `yᵀ` have `y_stride >= t0 + NV * LANES` floats; every column's `xᵀ` row is in bounds.
            unsafe {
                match layer.row_runs {
                    RowRuns::Single => {
                        prefetch(q);
                        let row = out.add(q * y_stride + t0);
                        let mut acc = Accumulators::<V, NV>::start(row, i == 0);
                        acc.single(layer, span(q));
                        acc.finish(row);
                    }
                    RowRuns::Pairs => {
                        let order = layer.row_order.as_ptr().add(strip.first_order as usize + i * rows + 2 * q);
                        let a = out.add(*order as usize * y_stride + t0);
                        prefetch(2 * q);
                        let mut acc_a = Accumulators::<V, NV>::start(a, i == 0);
                        if 2 * q + 1 < rows {
                            let b = out.add(*order.add(1) as usize * y_stride + t0);
                            let mut acc_b = Accumulators::<V, NV>::start(b, i == 0);
                            Accumulators::shared(&mut acc_a, &mut acc_b, layer, span(3 * q));
                            prefetch(2 * q + 1);
                            acc_b.single(layer, span(3 * q + 2));
                            acc_b.finish(b);
                        }
                        acc_a.single(layer, span(3 * q + 1));
                        acc_a.finish(a);
                    }
                }
            }
        }
    }
}

/// Whether the kernel prefetches the next chunk's `xᵀ` rows on `backend`.
/// Measured (BP 64 % strips + PP 75 % / 87.5 %, 16x16, 128 and 35 tokens, 1
/// thread, interleaved runs, time against the same run's BP base): on Zen 4
/// with AVX-512 and pairs, without the prefetch 3072->768 ran 1.27-1.43x /
/// 1.80-2.55x its base against 0.90-1.15x / 1.08-1.71x with it, and
/// 768->3072 1.15-1.40x / 1.67-2.20x against 0.97-1.35x / 1.41-2.03x: the
/// core's own prefetchers keep up, and the hints only take load slots. On
/// Zen 3 with AVX2 (single rows) dropping it made 768->3072 3-5 % faster and
/// 3072->768 4-8 % slower, so AVX2 keeps it, as does NEON (not timed here).
fn prefetches(backend: Backend) -> bool {
    backend != Backend::Avx512
}

/// The weights `start..end` of one span and where their chunk's `xᵀ` rows begin (at the token block).
#[derive(Clone, Copy)]
struct Span {
    x: *const f32,
    stride: usize,
    start: usize,
    end: usize,
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

/// One row's `NV` accumulators on a token block, in [`accumulator_copies`] copies.
struct Accumulators<V: F32Vector, const NV: usize>([[V; NV]; 4]);

impl<V: F32Vector, const NV: usize> Accumulators<V, NV> {
    const COPIES: usize = accumulator_copies(NV);

    /// From zero (`fresh`, the strip's first chunk) or from the row's partial sums in `yᵀ`.
    ///
    /// # Safety
    /// `row` has `NV * LANES` floats; `V`'s features are enabled.
    #[inline(always)]
    unsafe fn start(row: *const f32, fresh: bool) -> Self {
        // SAFETY: as documented.
        unsafe {
            let mut acc = [[V::zero(); NV]; 4];
            if !fresh {
                for (v, a) in acc[0].iter_mut().enumerate() {
                    *a = V::load(row.add(v * V::LANES));
                }
            }
            Self(acc)
        }
    }

    /// Sums the copies into `row`.
    ///
    /// # Safety
    /// As [`Self::start`].
    #[inline(always)]
    unsafe fn finish(mut self, row: *mut f32) {
        // SAFETY: as documented.
        unsafe {
            for c in 1..Self::COPIES {
                for v in 0..NV {
                    self.0[0][v] = self.0[0][v].add(self.0[c][v]);
                }
            }
            for (v, a) in self.0[0].iter().enumerate() {
                a.store(row.add(v * V::LANES));
            }
        }
    }

    /// Entry `e` of a single-row span: its `xᵀ` row times weight `lane` of `group`, into copy `lane % COPIES`.
    ///
    /// # Safety
    /// `e + lane` is a stored weight whose offset names an in-bounds `xᵀ` row.
    #[inline(always)]
    unsafe fn entry(&mut self, layer: &MaskedStripLinear, span: Span, e: usize, group: V::Group, lane: usize) {
        // SAFETY: as documented.
        unsafe {
            let xp = span.x.add(*layer.offsets.as_ptr().add(e + lane) as usize * span.stride);
            for (v, a) in self.0[lane % Self::COPIES].iter_mut().enumerate() {
                *a = a.mul_add_lane(group, lane, V::load(xp.add(v * V::LANES)));
            }
        }
    }

    /// A single row's span: per kept weight one broadcast and `NV` FMAs.
    ///
    /// # Safety
    /// `span` is a single-row span of `layer`; see [`Self::entry`].
    #[inline(always)]
    unsafe fn single(&mut self, layer: &MaskedStripLinear, span: Span) {
        // SAFETY: as documented; a group load may read the padding after the last weight.
        unsafe {
            let w = layer.weights.as_ptr();
            let mut e = span.start;
            if V::GROUP_IS_ADDRESS && Self::COPIES == 1 {
                // One weight per iteration, where a group is only an address: spans are short
                // (~11 weights per row and chunk at BP 64 % + PP 87.5 %), and a group loop's exit
                // plus up to three tail branches mispredict more than one loop exit.
                while e < span.end {
                    self.entry(layer, span, e, V::load_group(w.add(e)), 0);
                    e += 1;
                }
                return;
            }
            // Groups of GROUP weights: one group load (a vector on NEON) feeds GROUP entries,
            // unrolled by hand, each lane a constant: over the 32-bit ARM backend's assembly
            // blocks, LLVM keeps a `for lane in 0..GROUP` loop and switches on the lane inside it.
            const _: () = assert!(GROUP == 4);
            while e + GROUP <= span.end {
                let group = V::load_group(w.add(e));
                self.entry(layer, span, e, group, 0);
                self.entry(layer, span, e, group, 1);
                self.entry(layer, span, e, group, 2);
                self.entry(layer, span, e, group, 3);
                e += GROUP;
            }
            // The last 0 to 3 entries, each lane a constant: with a loop over them the copy index
            // `lane % COPIES` is not, and with 2 or 4 copies (short token blocks) LLVM kept the
            // accumulators on the stack (RT3's 35 tokens ran at a third of the BP kernel's rate).
            let (group, left) = (V::load_group(w.add(e)), span.end - e);
            if left > 0 {
                self.entry(layer, span, e, group, 0);
            }
            if left > 1 {
                self.entry(layer, span, e, group, 1);
            }
            if left > 2 {
                self.entry(layer, span, e, group, 2);
            }
        }
    }

    /// A pair's shared span (weights `a, b` adjacent per column): each `xᵀ`
    /// vector is loaded once for the two rows' FMAs.
    ///
    /// # Safety
    /// `span` is a shared span of `layer` (even length).
    #[inline(always)]
    unsafe fn shared(a: &mut Self, b: &mut Self, layer: &MaskedStripLinear, span: Span) {
        // SAFETY: as documented; a group load may read the padding after the last weight.
        unsafe {
            let (w, offsets) = (layer.weights.as_ptr(), layer.offsets.as_ptr());
            // Column `k` of the group (lanes 2k, 2k + 1), into copy `k % COPIES`.
            macro_rules! column {
                ($e:expr, $group:expr, $k:literal) => {{
                    let xp = span.x.add(*offsets.add($e + 2 * $k) as usize * span.stride);
                    for v in 0..NV {
                        let x = V::load(xp.add(v * V::LANES));
                        let (ra, rb) = (&mut a.0[$k % Self::COPIES][v], &mut b.0[$k % Self::COPIES][v]);
                        *ra = ra.mul_add_lane($group, 2 * $k, x);
                        *rb = rb.mul_add_lane($group, 2 * $k + 1, x);
                    }
                }};
            }
            const _: () = assert!(GROUP == 4);
            let mut e = span.start;
            if V::GROUP_IS_ADDRESS && Self::COPIES == 1 {
                // One column per iteration (see `single`).
                while e < span.end {
                    column!(e, V::load_group(w.add(e)), 0);
                    e += 2;
                }
                return;
            }
            while e + GROUP <= span.end {
                let group = V::load_group(w.add(e));
                column!(e, group, 0);
                column!(e, group, 1);
                e += GROUP;
            }
            if e < span.end {
                let group = V::load_group(w.add(e));
                column!(e, group, 0);
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
            + std::mem::size_of_val(self.row_order.as_slice())
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
                for (row, range, step) in self.spans_of(strip, i) {
                    for e in range.step_by(step) {
                        let col = chunk.base as usize + self.offsets[e] as usize;
                        w.set(row, col, self.weights[e]);
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
    fn a_layer_with_no_inputs_packs_and_writes_zeros() {
        let (w, mask) = (Matrix::zeros(5, 0), Mask::dense(5, 0));
        for runs in RowRuns::ALL {
            let layer = MaskedStripLinear::from_masked_with(&w, &mask, 2, "pattern", Backend::Scalar, runs);
            assert_eq!(layer.stored_weights(), 0);
            let mut y = Matrix::zeros(3, 5);
            y.as_mut_slice().fill(7.0);
            layer.forward_with(&Matrix::zeros(3, 0), &mut y, Threads::One, Backend::Scalar);
            assert!(y.as_slice().iter().all(|&v| v == 0.0), "{runs:?}");
        }
        let compaction = crate::prune::pattern::BlockCompaction::new(&mask, 2, 4);
        // Three strips (2, 2 and 1 rows), each padded to a tile of 4 rows.
        assert_eq!(compaction.stack_shape(), (12, 0));
    }

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
            for (backend, runs) in Backend::available().into_iter().flat_map(|b| RowRuns::ALL.map(|r| (b, r))) {
                let layer = MaskedStripLinear::from_masked_with(&w, &mask, strip, "pattern", backend, runs);
                assert_eq!(layer.stats().multiplied, mask.kept());
                assert_eq!(layer.effective_weights(), expected_w);
                for tokens in [1, 13, 67, 128] {
                    let x = Matrix::random(tokens, cols, 8, 1.0);
                    let expected = reference::linear(&x, &expected_w);
                    for threads in [Threads::One, Threads::N(3)] {
                        let mut y = Matrix::from_vec(1, 1, vec![f32::NAN]);
                        layer.forward_with(&x, &mut y, threads, backend);
                        let (abs, _) = reference::errors(&y, &expected);
                        assert!(
                            abs < 1e-3,
                            "{rows}x{cols} tokens {tokens} {} {runs:?}: max error {abs}",
                            backend.name()
                        );
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
        let layer = MaskedStripLinear::from_masked_with(&w, &mask, 4, "pattern", Backend::best(), RowRuns::Single);
        assert_eq!(layer.starts, vec![0, 4, 5, 9, 11]);
        assert_eq!(layer.kept, vec![0, 1, 2, 4, 5]);
        assert_eq!(layer.offsets, vec![0, 2, 4, 5, 4, 0, 2, 4, 5, 1, 4]);
        assert_eq!(layer.stored_weights(), mask.kept());
        assert_eq!(&layer.weights[..4], &[1.0, 3.0, 5.0, 6.0]);
        assert_eq!(&layer.weights[layer.stored_weights()..], &[0.0; GROUP], "padding for the last group load");

        // Pairs: rows 0 and 2 share four columns (the most of any pair), then rows 1 and 3 share
        // column 4. Per pair: shared (weights interleaved, each carrying the column), first only,
        // second only; row 0 keeps nothing row 2 does not, row 3 alone keeps column 1.
        let layer = MaskedStripLinear::from_masked_with(&w, &mask, 4, "pattern", Backend::best(), RowRuns::Pairs);
        assert_eq!(layer.row_order, vec![0, 2, 1, 3]);
        assert_eq!(layer.starts, vec![0, 8, 8, 8, 10, 10, 11]);
        assert_eq!(layer.offsets, vec![0, 0, 2, 2, 4, 4, 5, 5, 4, 4, 1]);
        assert_eq!(&layer.weights[..11], &[1.0, 13.0, 3.0, 15.0, 5.0, 17.0, 6.0, 18.0, 11.0, 23.0, 20.0]);
        assert_eq!(layer.stored_weights(), mask.kept());
        let mut expected = w.clone();
        expected.apply_mask(&mask);
        assert_eq!(layer.effective_weights(), expected);
    }

    #[test]
    fn pair_order_takes_the_pairs_that_share_most_first() {
        // Shared counts: (1, 3) 9, (0, 2) 5, everything else 1; an odd last row goes alone at the end.
        let shared = |a: usize, b: usize| match (a, b) {
            (1, 3) => 9,
            (0, 2) => 5,
            _ => 1,
        };
        assert_eq!(pair_order(4, shared), vec![1, 3, 0, 2]);
        assert_eq!(pair_order(5, shared), vec![1, 3, 0, 2, 4]);
        assert_eq!(pair_order(1, shared), vec![0]);
        assert_eq!(pair_order(0, shared), Vec::<usize>::new());
        // All equal: adjacent pairs in order.
        assert_eq!(pair_order(4, |_, _| 0), vec![0, 1, 2, 3]);
    }
}
