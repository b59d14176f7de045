//! Pattern-sparse linear layer: tiles grouped by pattern, one shared index
//! list per group, a register-blocked kernel vectorised over tokens.
//!
//! # Why this layout
//! The kernel computes `yᵀ = w · xᵀ` feature-major: `xᵀ` is `in x tokens`, so
//! one weight `w[o][i]` times the row `xᵀ[i]` (a few SIMD vectors of tokens)
//! accumulates into `yᵀ[o]`. A plain sparse row loop (per non-zero: broadcast
//! the weight, load an `xᵀ` chunk, one FMA) needs a load per FMA and runs at
//! half the FMA rate or worse. Pattern pruning gives the structure to do
//! better: tiles in the same column band that took the same pattern have
//! their non-zeros at the same in-tile positions, so they read the same `xᵀ`
//! rows in the same order. A [`TileGroup`] is up to [`GROUP_TILES`] such
//! tiles; for each in-tile row of the pattern the kernel keeps
//! `tiles x token-vectors` accumulators in registers, loads each `xᵀ` vector
//! once and feeds it to one FMA per tile, and reads the tiles' weights as one
//! contiguous interleaved run (`[entry][tile]`), so every broadcast is a plain
//! (embedded) broadcast load. With 4 tiles and 4 vectors (64 tokens) that is
//! 8 loads per 16 FMAs instead of 32.
//!
//! Each run (one in-tile row of a group) starts its accumulators from `yᵀ`
//! and stores them back: `tiles x vectors` loads and stores wrapped around
//! the row's entries. With short rows (2 entries per row of a 16x16 tile at
//! 87.5 % sparsity) that read-modify-write costs as much as the FMAs, so when
//! rows are short two adjacent column bands form one virtual `tile x 2*tile`
//! tile ([`band_span`]): a group is then up to 4 tile rows whose patterns
//! agree in both bands, and each run covers both bands' entries of its row.
//!
//! Blocking: tokens go in panels of `4 x lanes` (64 on AVX-512); groups run
//! column band (pair) by band (pair), so the band's `xᵀ` rows (`2 x 16 x 64`
//! floats, 8 KiB for paired 16x16 tiles) stay in L1 while the whole `yᵀ`
//! panel (`out x 64`, at most 768 KiB for DistilBERT's 3072 outputs) stays in
//! L2. (Blocking the output too, so a block of tile rows' `yᵀ` stays in L1
//! across all bands, measured no better: the groups, formed per block, got
//! too small.)
//!
//! This kernel is plain PP: the base keeps every weight. A pattern set on a
//! BP base runs on [`super::masked::MaskedStripLinear`] over the compacted
//! BP blocks ([`crate::prune::pattern::BlockCompaction`]); here, tiles whose
//! kept positions differ (a BP base cuts a different column set out of each
//! tile) would share an index list only as a union, storing and multiplying
//! the zeros BP removed, so [`PatternSparseLinear::from_assignment`] refuses
//! an assignment made on a BP base. Tiles with the same pattern still differ
//! where a weight is exactly zero (it is not stored): such a group's list is
//! the union and the slot holds an explicit zero (counted in `multiplied`,
//! not in `nnz`); the last tile row, when it reaches past the matrix, groups
//! alone, since a union would name rows it does not have.
//!
//! Transposes of `x` in and `y` out happen inside `forward` (per panel, while
//! the panel is hot in cache) and are part of every measured time.

use std::cell::RefCell;
use std::collections::HashMap;

use super::{LayerStats, LinearKernel, RowEpilogue, Threads};
use crate::matrix::{Activations, Mask, Matrix};
use crate::prune::pattern::{assign_patterns, PatternAssignment, PatternSet};
use crate::simd::{Backend, F32Vector, ScalarLanes, GROUP};

/// Tiles per group in the packed format: AVX-512 and NEON run a whole group
/// in one pass (`4 x 4` accumulators + 4 `xᵀ` vectors: 8 loads per 16 FMAs);
/// AVX2, 32-bit NEON and the scalar path, with 16 registers, split it into passes of 2.
/// Groups of 6 (24 accumulators) measured slower on AVX-512 (register
/// pressure), so 4 it is; the dispatch supports up to 6.
pub const GROUP_TILES: usize = 4;

// The dispatch in `group_passes` has passes of 1 to 6 tiles.
const _: () = assert!(GROUP_TILES >= 1 && GROUP_TILES <= 6);

/// Token vectors per panel: with 4 tiles, 4 vectors balance loads (4 `xᵀ`
/// vectors and 4 weight broadcasts) against 16 FMAs. Panels of 2 x 4
/// vectors, each group running both halves back to back so its weights come
/// from L1 the second time, measured 5-15 % slower: the doubled `xᵀ` and
/// `yᵀ` panels no longer fit L2 next to the streamed weights.
const PANEL_VECTORS: usize = 4;

/// One run of a group's index list: in-tile output row `row` takes the
/// entries `start..start + len` of the column list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RowRun {
    row: u32,
    start: u32,
    len: u32,
}

/// Up to [`GROUP_TILES`] (virtual) tiles of one column band (or band pair) sharing an index list.
#[derive(Clone, Copy, Debug)]
struct TileGroup {
    /// First input feature of the band (`band * tile`); index-list columns count from it.
    x_row: u32,
    /// The shared index list: `runs[runs_start..runs_end]`.
    runs_start: u32,
    runs_end: u32,
    /// Number of index-list entries (weights per tile).
    entries: u32,
    /// Tiles in the group (weights are interleaved with this stride).
    tiles: u32,
    /// Offset of the group's `entries x tiles` weights.
    weights: u32,
    /// First output feature of each tile (`tile_row * tile`).
    y_rows: [u32; GROUP_TILES],
    /// Bit `k` set: this is the first group (in run order) to write tile `k`'s
    /// tile row, so the kernel zeroes those `yᵀ` rows first (see [`PatternSparseLinear::idle_tile_rows`]).
    fresh: u8,
}

/// A linear layer whose weights are dense weights AND one pattern per tile (plain PP).
#[derive(Clone, Debug)]
pub struct PatternSparseLinear {
    out_features: usize,
    in_features: usize,
    tile: usize,
    patterns: usize,
    runs: Vec<RowRun>,
    /// In-tile column of every index-list entry (runs point into it).
    cols: Vec<u32>,
    groups: Vec<TileGroup>,
    /// Per group `entries x tiles`, entry-major: the tiles' weights for one entry are adjacent;
    /// then [`GROUP`] zeros of padding.
    weights: Vec<f32>,
    /// Weight slots before the padding: what the kernel multiplies.
    stored: usize,
    nnz: usize,
    backend: Backend,
    /// The set's final mask sparsity (BP and PP zeros together).
    mask_sparsity: f64,
    /// Tile rows no group writes (all their weights pruned). `forward` does not
    /// clear the whole `yᵀ` panel before each panel (a separate pass over up
    /// to 768 KiB, ~4 % of the time at 87.5 % sparsity); instead each tile row
    /// is zeroed just before its first group accumulates into it, while its
    /// lines are about to be used anyway, and these rows are zeroed up front.
    idle_tile_rows: Vec<u32>,
    /// Row parts: contiguous ranges of tile rows whose groups are packed apart
    /// (`groups[part.groups]`), so threads can split the output rows.
    parts: Vec<RowPart>,
}

/// A contiguous range of tile rows and the groups that write them (see [`row_parts`]).
#[derive(Clone, Debug)]
struct RowPart {
    tile_rows: std::ops::Range<u32>,
    groups: std::ops::Range<u32>,
}

/// How many row parts a layer of `tiles_down` tile rows is packed in.
/// Threads split a layer by row parts: each thread writes only its own rows
/// of `yᵀ`, for every token panel. (Splitting token panels instead, two
/// threads write the two halves of the same `yᵀ` rows at once; measured on
/// Zen 4 with 128 tokens that made two threads 2x *slower* than one, the
/// cache lines at each row's panel boundary bouncing between the cores.)
/// Groups form within a part, so parts cost some grouping: a part keeps at
/// least [`MIN_PART_TILE_ROWS`] tile rows.
fn row_parts(tiles_down: usize) -> usize {
    (tiles_down / MIN_PART_TILE_ROWS).clamp(1, MAX_ROW_PARTS)
}

/// Most row parts a layer is packed in: two, one per thread of a 2-thread run; more threads split
/// token panels within a part.
const MAX_ROW_PARTS: usize = 2;
/// Fewest tile rows in a row part. 16x16 tiles pair their bands when rows
/// are short ([`band_span`]), and pairs group well only over many tile rows:
/// with 24 (two parts for DistilBERT's 768 outputs) one thread measured 4-8 %
/// slower at 50-87.5 % sparsity on Zen 4; with 32 those layers keep one part
/// and the 3072-output ones get two, at no measurable one-thread cost.
const MIN_PART_TILE_ROWS: usize = 32;

impl PatternSparseLinear {
    /// Assigns `set` to the tiles of `w` ([`assign_patterns`] on a base that
    /// keeps everything) and packs the result for the best SIMD backend.
    pub fn new(w: &Matrix, set: &PatternSet) -> Self {
        let assignment = assign_patterns(w, &Mask::dense(w.rows(), w.cols()), set);
        Self::from_assignment(w, &assignment, set.len())
    }

    /// Packs an assignment computed earlier (e.g. to report it as well); the
    /// assignment's mask is applied to the dense weights `w`.
    ///
    /// # Panics
    /// When the assignment was made on a BP base (see the module docs: a
    /// pattern set on BP runs on [`super::masked::MaskedStripLinear`]), or
    /// its shape is not `w`'s.
    pub fn from_assignment(w: &Matrix, assignment: &PatternAssignment, patterns: usize) -> Self {
        Self::pack(w, assignment, patterns, Backend::best(), None)
    }

    /// Like [`Self::new`] but for a given backend (tests run every available one).
    ///
    /// # Panics
    /// When the backend is not available on this CPU.
    pub fn with_backend(w: &Matrix, set: &PatternSet, backend: Backend) -> Self {
        assert!(backend.is_available(), "PatternSparseLinear: backend {} is not available on this CPU", backend.name());
        let assignment = assign_patterns(w, &Mask::dense(w.rows(), w.cols()), set);
        Self::pack(w, &assignment, set.len(), backend, None)
    }

    /// Side of the square tile.
    pub fn tile(&self) -> usize {
        self.tile
    }

    /// Patterns in the set this layer was built from.
    pub fn patterns(&self) -> usize {
        self.patterns
    }

    /// The SIMD backend `forward` runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Sparsity of the applied mask (BP and PP zeros together); `stats()`
    /// additionally excludes weights that were exactly zero.
    pub fn mask_sparsity(&self) -> f64 {
        self.mask_sparsity
    }

    /// Weight slots the kernel multiplies, padding and union zeros included
    /// (`>= stats().nnz`; equal when every group's tiles share their BP columns).
    pub fn stored_weights(&self) -> usize {
        self.stored
    }

    /// Number of tile groups (for reports on how well tiles grouped).
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// `span`: force the number of bands per virtual tile (tests); `None` lets [`band_span`] decide.
    fn pack(
        w: &Matrix,
        assignment: &PatternAssignment,
        patterns: usize,
        backend: Backend,
        span: Option<usize>,
    ) -> Self {
        let (out_features, in_features) = w.shape();
        assert!(
            assignment.has_dense_base(),
            "PatternSparseLinear: the assignment was made on a BP base; a pattern set on BP runs on MaskedStripLinear \
             over the compacted BP blocks, which stores no BP zero"
        );
        let mask = assignment.mask();
        assert_eq!(
            mask.shape(),
            w.shape(),
            "PatternSparseLinear: weights are {:?} but the assignment's mask is {:?}",
            w.shape(),
            mask.shape()
        );
        let tile = assignment.tile();
        let (tiles_down, tiles_across) = assignment.tile_grid();
        let keeps = |r: usize, c: usize| r < out_features && c < in_features && mask.get(r, c) && w.get(r, c) != 0.0;
        let nnz = (0..out_features).map(|r| (0..in_features).filter(|&c| keeps(r, c)).count()).sum();

        let mut packer = Packer {
            w,
            mask,
            tile,
            runs: Vec::new(),
            cols: Vec::new(),
            groups: Vec::new(),
            weights: Vec::new(),
            lists: HashMap::new(),
        };
        let span = span.unwrap_or_else(|| {
            band_span(tiles_down, tiles_across, patterns, packer.stored_per_row(tiles_down, tiles_across))
        });
        // Part by part; within a part band (pair) by band (pair), so its `xᵀ` rows stay in L1
        // while its groups run.
        let n_parts = row_parts(tiles_down);
        let mut parts = Vec::with_capacity(n_parts);
        for p in 0..n_parts {
            let rows = p * tiles_down / n_parts..(p + 1) * tiles_down / n_parts;
            let first_group = packer.groups.len() as u32;
            for tc0 in (0..tiles_across).step_by(span.max(1)) {
                let width = span.max(1).min(tiles_across - tc0);
                let spans = rows.clone().filter_map(|tr| packer.span_tile(assignment, tr, tc0, width)).collect();
                packer.group(spans);
            }
            parts.push(RowPart {
                tile_rows: rows.start as u32..rows.end as u32,
                groups: first_group..packer.groups.len() as u32,
            });
        }
        let Packer { runs, cols, mut groups, mut weights, .. } = packer;
        let stored = weights.len();
        // Padding, so a group load at the last entry reads inside the buffer (never multiplied).
        weights.extend([0.0; GROUP]);
        let mut touched = vec![false; tiles_down];
        for g in &mut groups {
            for k in 0..g.tiles as usize {
                let tile_row = g.y_rows[k] as usize / tile;
                if !std::mem::replace(&mut touched[tile_row], true) {
                    g.fresh |= 1 << k;
                }
            }
        }
        let idle_tile_rows = (0..tiles_down).filter(|&tr| !touched[tr]).map(|tr| tr as u32).collect();
        Self {
            out_features,
            in_features,
            tile,
            patterns,
            runs,
            cols,
            groups,
            weights,
            stored,
            nnz,
            backend,
            mask_sparsity: mask.sparsity(),
            idle_tile_rows,
            parts,
        }
    }

    /// Tokens per panel for this layer's backend.
    fn panel_width(&self) -> usize {
        PANEL_VECTORS * self.backend.lanes()
    }

    /// Tokens per panel for `tokens` on `threads`: [`PANEL_VECTORS`]
    /// vectors, or narrower when that leaves a thread without a panel.
    /// Threads split row parts first; threads beyond the row parts split
    /// token panels (disjoint columns of `yᵀ`, no reduction), and with few
    /// tokens (RT3's 35 are 5 AVX2 vectors: panels of 4 and 1) the panels are
    /// cut evenly instead (3 and 2 vectors on 2 threads), at some cost per
    /// vector, since a group's weights then feed fewer FMAs per load.
    fn panel_width_for(&self, tokens: usize, threads: Threads) -> usize {
        let lanes = self.backend.lanes();
        let vectors = tokens.div_ceil(lanes);
        let parts = threads.count().div_ceil(self.parts.len());
        if vectors.div_ceil(PANEL_VECTORS) >= parts {
            self.panel_width()
        } else {
            vectors.div_ceil(parts).clamp(1, PANEL_VECTORS) * lanes
        }
    }

    /// The output features of a range of tile rows.
    fn output_rows(&self, tile_rows: &std::ops::Range<u32>) -> std::ops::Range<usize> {
        tile_rows.start as usize * self.tile..(tile_rows.end as usize * self.tile).min(self.out_features)
    }

    /// Computes the rows of the row parts `parts` in the token panel starting
    /// at token `p0` (`vectors` token vectors wide) of `yᵀ` from `xᵀ`, then
    /// runs the epilogue on them.
    ///
    /// # Safety
    /// `x` holds `in_features` rows and `y` `out_features` rows of their
    /// strides; `p0 + vectors * lanes` is within both strides; no other thread
    /// writes these rows' panel columns of `y`.
    unsafe fn run_panel(
        &self,
        panel: &Panel,
        parts: std::ops::Range<usize>,
        p0: usize,
        width: usize,
        epilogue: Option<RowEpilogue>,
    ) {
        let vectors = width.div_ceil(self.backend.lanes());
        assert!((1..=PANEL_VECTORS).contains(&vectors));
        let (first, last) = (&self.parts[parts.start], &self.parts[parts.end - 1]);
        let tile_rows = first.tile_rows.start..last.tile_rows.end;
        let rows = self.output_rows(&tile_rows);
        let groups = &self.groups[first.groups.start as usize..last.groups.end as usize];
        // SAFETY: the caller's extents; the idle rows are below `out_features`.
        let panel = unsafe {
            for &tile_row in self.idle_tile_rows.iter().filter(|tr| tile_rows.contains(tr)) {
                let first = tile_row as usize * self.tile;
                for r in first..(first + self.tile).min(self.out_features) {
                    std::ptr::write_bytes(panel.y.add(r * panel.y_stride + p0), 0, vectors * self.backend.lanes());
                }
            }
            Panel { x: panel.x.add(p0), y: panel.y.add(p0), ..*panel }
        };
        // SAFETY: `pack` only produces row offsets inside the matrix (index lists hold kept
        // positions only) and weight offsets inside `weights`; each backend function runs only
        // when `Backend::is_available` held at construction.
        unsafe {
            match self.backend {
                #[cfg(target_arch = "x86_64")]
                Backend::Avx512 => x86_panels::avx512(self, groups, &panel, vectors),
                #[cfg(target_arch = "x86_64")]
                Backend::Avx2Fma => x86_panels::avx2(self, groups, &panel, vectors),
                #[cfg(simd_neon)]
                Backend::Neon => neon_panels::neon(self, groups, &panel, vectors),
                _ => panel_for_vectors::<ScalarLanes, 2>(self, groups, &panel, vectors),
            }
        }
        if let Some(epilogue) = epilogue {
            for r in rows {
                // SAFETY: the panel's columns of row r are final and this call's alone.
                epilogue(r, unsafe { std::slice::from_raw_parts_mut(panel.y.add(r * panel.y_stride), width) });
            }
        }
    }
}

thread_local! {
    /// A thread's own `yᵀ` panel when threads split token panels (see `forward_feature_major`).
    static PANEL_SCRATCH: RefCell<Activations> = RefCell::new(Activations::default());
}

/// Where a panel's `xᵀ` and `yᵀ` rows are: row `r` at `x + r * x_stride`.
#[derive(Clone, Copy, Debug)]
struct Panel {
    x: *const f32,
    x_stride: usize,
    y: *mut f32,
    y_stride: usize,
}

// SAFETY: threads read `x` and write disjoint token panels (columns) of `y`.
unsafe impl Sync for Panel {}

/// `span` adjacent tiles of one tile row (a `tile x span*tile` virtual tile) and
/// what grouping needs to know about them.
#[derive(Clone, Debug)]
struct SpanTile {
    tile_row: usize,
    tile_col0: usize,
    width: usize,
    /// The tiles' patterns, left to right, `None` for a tile that keeps nothing
    /// (e.g. pruned whole by the BP base): tiles group only with equal patterns,
    /// so a group never pays for a band one of its tiles does not have.
    patterns: Vec<Option<usize>>,
    /// Kept positions `row * span * tile + col`, ascending (row-major over the virtual tile).
    kept: Vec<u32>,
}

/// Builds the packed arrays group by group.
struct Packer<'a> {
    w: &'a Matrix,
    mask: &'a Mask,
    tile: usize,
    runs: Vec<RowRun>,
    cols: Vec<u32>,
    groups: Vec<TileGroup>,
    weights: Vec<f32>,
    /// Index lists already emitted, by (virtual tile width, kept positions): groups share them.
    lists: HashMap<(usize, Vec<u32>), (u32, u32)>,
}

/// Stored entries per in-tile row below which adjacent column bands are
/// paired into one virtual tile (see [`band_span`]). Measured on 16x16 tiles
/// (DistilBERT shapes, AVX-512): pairs win at 87.5 % and 75 % sparsity (2 and
/// 4 entries per row) by 15-30 %, and at 50 % (8 entries) by up to 10 % on
/// 768->3072 and break even on 3072->768; 32x32 tiles at 50 % (16 entries)
/// already amortise the read-modify-write over long runs.
const SHORT_RUN_ENTRIES: f64 = 12.0;

/// How many adjacent column bands form one virtual tile. Each run's `yᵀ`
/// read-modify-write (`tiles x vectors` loads and stores) wraps the entries of
/// one in-tile row; pairing bands doubles those entries, halving the
/// read-modify-writes per FMA. A group then needs tiles whose patterns agree
/// in both bands, so groups are smaller (16 pattern pairs instead of 4
/// patterns). Partial groups of 1 to 3 virtual tiles are kept as they are:
/// they measured as fast as or faster than splitting them and regrouping
/// their tiles band by band into fuller groups (the read-modify-write stores
/// they halve cost more than the `xᵀ` loads fuller groups would share).
/// Spans of 3 and 4 measured slower than 2 (groups too fragmented). With
/// fewer tile rows than pattern pairs, nearly every paired group would be a
/// single tile with its own index list (no sharing, more index bytes), so
/// small layers keep single bands.
fn band_span(tiles_down: usize, tiles_across: usize, patterns: usize, entries_per_row: f64) -> usize {
    if entries_per_row < SHORT_RUN_ENTRIES && tiles_across >= 2 && tiles_down >= patterns * patterns {
        2
    } else {
        1
    }
}

impl Packer<'_> {
    /// Average stored entries per in-tile row of the non-empty tiles.
    fn stored_per_row(&self, tiles_down: usize, tiles_across: usize) -> f64 {
        let t = self.tile;
        let (mut kept, mut rows) = (0usize, 0usize);
        for tr in 0..tiles_down {
            for tc in 0..tiles_across {
                let n = (0..t * t).filter(|&p| self.keeps(tr * t + p / t, tc * t + p % t)).count();
                if n > 0 {
                    kept += n;
                    rows += t;
                }
            }
        }
        if rows == 0 {
            0.0
        } else {
            kept as f64 / rows as f64
        }
    }

    /// Whether weight `(r, c)` is stored: inside the matrix, kept by the mask, and non-zero.
    fn keeps(&self, r: usize, c: usize) -> bool {
        r < self.w.rows() && c < self.w.cols() && self.mask.get(r, c) && self.w.get(r, c) != 0.0
    }

    /// The virtual tile of `width` tiles starting at tile `(tile_row, tile_col0)`, or `None` when it keeps nothing.
    fn span_tile(&self, a: &PatternAssignment, tile_row: usize, tile_col0: usize, width: usize) -> Option<SpanTile> {
        let t = self.tile;
        let row_len = width * t;
        let kept: Vec<u32> = (0..t * row_len)
            .filter(|&p| self.keeps(tile_row * t + p / row_len, tile_col0 * t + p % row_len))
            .map(|p| p as u32)
            .collect();
        let patterns = (0..width)
            .map(|i| {
                let in_tile_i = kept.iter().any(|&p| (p as usize % row_len) / t == i);
                in_tile_i.then(|| a.pattern_of(tile_row, tile_col0 + i))
            })
            .collect();
        (!kept.is_empty()).then_some(SpanTile { tile_row, tile_col0, width, patterns, kept })
    }

    /// Sorts `spans` (all starting at the same tile column and of the same
    /// width) so equal patterns and equal kept positions are adjacent, and
    /// emits groups of up to [`GROUP_TILES`] with equal patterns.
    ///
    /// A tile of the last tile row, when it reaches past the matrix, groups
    /// with none of the others: a group's index list is the union of its
    /// tiles' kept positions, and a run for an in-tile row it does not have
    /// would write past the last row of `yᵀ`.
    fn group(&mut self, mut spans: Vec<SpanTile>) {
        let rows = self.w.rows();
        let partial = |s: &SpanTile| (s.tile_row + 1) * self.tile > rows;
        spans.sort_by(|a, b| (&a.patterns, &a.kept, a.tile_row).cmp(&(&b.patterns, &b.kept, b.tile_row)));
        let (ragged, whole): (Vec<SpanTile>, Vec<SpanTile>) = spans.into_iter().partition(partial);
        for chunk in ragged.chunks(1) {
            self.emit(chunk);
        }
        for same in whole.chunk_by(|a, b| a.patterns == b.patterns) {
            for chunk in same.chunks(GROUP_TILES) {
                self.emit(chunk);
            }
        }
    }

    /// One group: the union of the tiles' kept positions as its index list, weights interleaved.
    fn emit(&mut self, chunk: &[SpanTile]) {
        let t = self.tile;
        let (tile_col0, width) = (chunk[0].tile_col0, chunk[0].width);
        let row_len = (width * t) as u32;
        let mut union: Vec<u32> = chunk.iter().flat_map(|s| s.kept.iter().copied()).collect();
        union.sort_unstable();
        union.dedup();
        let (runs, cols) = (&mut self.runs, &mut self.cols);
        let (runs_start, runs_end) = *self.lists.entry((width, union.clone())).or_insert_with(|| {
            let start = runs.len() as u32;
            for row_entries in union.chunk_by(|a, b| a / row_len == b / row_len) {
                runs.push(RowRun {
                    row: row_entries[0] / row_len,
                    start: cols.len() as u32,
                    len: row_entries.len() as u32,
                });
                cols.extend(row_entries.iter().map(|p| p % row_len));
            }
            (start, runs.len() as u32)
        });
        let mut y_rows = [0u32; GROUP_TILES];
        for (k, s) in chunk.iter().enumerate() {
            y_rows[k] = (s.tile_row * t) as u32;
        }
        let offset = self.weights.len();
        for &p in &union {
            let (lr, lc) = ((p / row_len) as usize, (p % row_len) as usize);
            for s in chunk {
                let (r, c) = (s.tile_row * t + lr, tile_col0 * t + lc);
                let v = if self.keeps(r, c) { self.w.get(r, c) } else { 0.0 };
                self.weights.push(v);
            }
        }
        self.groups.push(TileGroup {
            x_row: (tile_col0 * t) as u32,
            runs_start,
            runs_end,
            entries: union.len() as u32,
            tiles: chunk.len() as u32,
            weights: u32::try_from(offset).expect("PatternSparseLinear: more than 2^32 weights"),
            y_rows,
            fresh: 0,
        });
    }
}

/// One pass over `K` tiles of a group (`k0..k0 + K` of its `kstride` tiles) for
/// `V` token vectors: for every run (in-tile output row) the `K x V`
/// accumulators start from `yᵀ`, take every entry's `xᵀ` vectors once for all
/// `K` tiles, and go back to `yᵀ`.
///
/// # Safety
/// `S`'s features must be enabled; `x_band` must be valid for the rows its
/// index list names (at `x_stride`), each `y[k]` for its runs' rows (at
/// `y_stride`), `V` vectors each, and `w` for `entries * kstride` floats.
#[inline(always)]
unsafe fn group_pass<S: F32Vector, const K: usize, const V: usize>(
    runs: &[RowRun],
    cols: &[u32],
    w: *const f32,
    kstride: usize,
    x_band: *const f32,
    y: [*mut f32; K],
    x_stride: usize,
    y_stride: usize,
) {
    let mut wp = w;
    for run in runs {
        // SAFETY (whole body): offsets come from `pack` and stay inside the buffers the caller vouched for.
        unsafe {
            let mut acc: [[S; V]; K] = [[S::zero(); V]; K];
            for k in 0..K {
                let yp = y[k].add(run.row as usize * y_stride);
                for v in 0..V {
                    acc[k][v] = S::load(yp.add(v * S::LANES));
                }
            }
            let entries = cols.get_unchecked(run.start as usize..(run.start + run.len) as usize);
            for &c in entries {
                let xp = x_band.add(c as usize * x_stride);
                let mut xv: [S; V] = [S::zero(); V];
                for v in 0..V {
                    xv[v] = S::load(xp.add(v * S::LANES));
                }
                // The K tiles' weights of this entry are adjacent: one group (a single vector load
                // and lane-indexed FMAs on NEON, broadcasts from memory on x86-64). `pack` pads
                // `weights` so a group load at the last entry stays in bounds.
                if K <= GROUP {
                    let group = S::load_group(wp);
                    for k in 0..K {
                        for v in 0..V {
                            acc[k][v] = acc[k][v].mul_add_lane(group, k, xv[v]);
                        }
                    }
                } else {
                    for k in 0..K {
                        let b = S::splat(*wp.add(k));
                        for v in 0..V {
                            acc[k][v] = acc[k][v].mul_add(b, xv[v]);
                        }
                    }
                }
                wp = wp.add(kstride);
            }
            for k in 0..K {
                let yp = y[k].add(run.row as usize * y_stride);
                for v in 0..V {
                    acc[k][v].store(yp.add(v * S::LANES));
                }
            }
        }
    }
}

/// Runs every group of `layer` on one panel with `V` live token vectors.
///
/// # Safety
/// As [`PatternSparseLinear::run_panel`] documents for its backend call.
#[inline(always)]
unsafe fn panel_groups<S: F32Vector, const V: usize, const KMAX: usize>(
    layer: &PatternSparseLinear,
    groups: &[TileGroup],
    panel: &Panel,
) {
    for g in groups {
        // SAFETY: see `run_panel`; group ranges index `runs`, `weights` and the panels in bounds.
        unsafe {
            let runs = layer.runs.get_unchecked(g.runs_start as usize..g.runs_end as usize);
            group_passes::<S, V, KMAX>(layer, g, runs, panel);
        }
    }
}

/// Dispatches on the number of live token vectors (the last panel may be narrower).
///
/// # Safety
/// As [`panel_groups`].
#[inline(always)]
unsafe fn panel_for_vectors<S: F32Vector, const KMAX: usize>(
    layer: &PatternSparseLinear,
    groups: &[TileGroup],
    panel: &Panel,
    vectors: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match vectors {
            1 => panel_groups::<S, 1, KMAX>(layer, groups, panel),
            2 => panel_groups::<S, 2, KMAX>(layer, groups, panel),
            3 => panel_groups::<S, 3, KMAX>(layer, groups, panel),
            _ => panel_groups::<S, 4, KMAX>(layer, groups, panel),
        }
    }
}

/// One group on `V` token vectors, in passes of at most `KMAX` tiles.
///
/// # Safety
/// As [`panel_groups`]; `x_band` points at the group's first `xᵀ` row, `ys` at the `yᵀ` panel.
#[inline(always)]
unsafe fn group_passes<S: F32Vector, const V: usize, const KMAX: usize>(
    layer: &PatternSparseLinear,
    g: &TileGroup,
    runs: &[RowRun],
    panel: &Panel,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let w = layer.weights.as_ptr().add(g.weights as usize);
        let kstride = g.tiles as usize;
        let (xs, ys) = (panel.x_stride, panel.y_stride);
        let x_band = panel.x.add(g.x_row as usize * xs);
        let yp = |k: usize| panel.y.add(g.y_rows[k] as usize * ys);
        for k in (0..kstride).filter(|k| g.fresh & (1 << k) != 0) {
            // First writer of this tile row in the panel: clear its rows (those inside the matrix) of `V` vectors.
            let y = yp(k);
            for row in 0..layer.tile.min(layer.out_features - g.y_rows[k] as usize) {
                for v in 0..V {
                    S::zero().store(y.add(row * ys + v * S::LANES));
                }
            }
        }
        let cols = &layer.cols;
        let mut k0 = 0;
        while k0 < kstride {
            let k = (kstride - k0).min(KMAX);
            let wk = w.add(k0);
            match k {
                1 => group_pass::<S, 1, V>(runs, cols, wk, kstride, x_band, [yp(k0)], xs, ys),
                2 => group_pass::<S, 2, V>(runs, cols, wk, kstride, x_band, [yp(k0), yp(k0 + 1)], xs, ys),
                3 => group_pass::<S, 3, V>(runs, cols, wk, kstride, x_band, [yp(k0), yp(k0 + 1), yp(k0 + 2)], xs, ys),
                4 => group_pass::<S, 4, V>(
                    runs,
                    cols,
                    wk,
                    kstride,
                    x_band,
                    [yp(k0), yp(k0 + 1), yp(k0 + 2), yp(k0 + 3)],
                    xs,
                    ys,
                ),
                5 => group_pass::<S, 5, V>(
                    runs,
                    cols,
                    wk,
                    kstride,
                    x_band,
                    [yp(k0), yp(k0 + 1), yp(k0 + 2), yp(k0 + 3), yp(k0 + 4)],
                    xs,
                    ys,
                ),
                6 => group_pass::<S, 6, V>(
                    runs,
                    cols,
                    wk,
                    kstride,
                    x_band,
                    [yp(k0), yp(k0 + 1), yp(k0 + 2), yp(k0 + 3), yp(k0 + 4), yp(k0 + 5)],
                    xs,
                    ys,
                ),
                // `pack` never makes groups larger than GROUP_TILES, and every backend's KMAX is <= 6.
                _ => unreachable!("pattern group pass of {k} tiles"),
            }
            k0 += k;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_panels {
    use super::{panel_for_vectors, Panel, PatternSparseLinear, TileGroup};
    use crate::simd::x86::{Avx2Fma, Avx512};

    /// 32 `zmm` registers: 4 tiles x 4 vectors of accumulators + 4 `xᵀ` vectors + broadcasts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(layer: &PatternSparseLinear, groups: &[TileGroup], panel: &Panel, vectors: usize) {
        // SAFETY: AVX-512F is enabled here; the rest is forwarded from the caller.
        unsafe { panel_for_vectors::<Avx512, 4>(layer, groups, panel, vectors) }
    }

    /// 16 `ymm` registers: 2 tiles x 4 vectors + 4 `xᵀ` + 1 broadcast.
    /// (Passes of 3 tiles over groups of 6 measured 20-65 % slower on Zen 3: the 12
    /// accumulators leave too few registers for the `xᵀ` vectors and broadcasts. Panels of 6
    /// vectors, 2 tiles x 6 accumulators with each `xᵀ` vector loaded just before its 2 FMAs,
    /// measured 5-10 % faster on 3072->768 and 3-6 % slower on 768->3072, so 4 it is.)
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(layer: &PatternSparseLinear, groups: &[TileGroup], panel: &Panel, vectors: usize) {
        // SAFETY: AVX2 and FMA are enabled here; the rest is forwarded from the caller.
        unsafe { panel_for_vectors::<Avx2Fma, 2>(layer, groups, panel, vectors) }
    }
}

#[cfg(simd_neon)]
mod neon_panels {
    use super::{panel_for_vectors, Panel, PatternSparseLinear, TileGroup};
    use crate::simd::neon::Neon;

    /// Tiles per pass: aarch64 has 32 `q` registers: 4 tiles x 4 vectors + 4 `xᵀ` vectors; 32-bit
    /// ARM has 16 (32 `d`, two per vector): 2 tiles x 4 vectors + 4 `xᵀ` + the weight group.
    const KMAX: usize = if cfg!(target_arch = "arm") { 2 } else { 4 };

    // On 32-bit ARM NEON is enabled for the whole build (see `crate::simd`).
    #[cfg_attr(target_arch = "aarch64", target_feature(enable = "neon"))]
    pub(super) unsafe fn neon(layer: &PatternSparseLinear, groups: &[TileGroup], panel: &Panel, vectors: usize) {
        // SAFETY: NEON is enabled here; the rest is forwarded from the caller.
        unsafe { panel_for_vectors::<Neon, KMAX>(layer, groups, panel, vectors) }
    }
}

impl LinearKernel for PatternSparseLinear {
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
        assert_eq!(
            x.features(),
            self.in_features,
            "PatternSparseLinear::forward: x has {} features, the layer expects {}",
            x.features(),
            self.in_features
        );
        let tokens = x.tokens();
        y.reshape(self.out_features, tokens);
        if tokens == 0 || self.out_features == 0 {
            return;
        }
        let pw = self.panel_width_for(tokens, threads);
        let panel = Panel {
            x: x.as_padded().as_ptr(),
            x_stride: x.stride(),
            y: y.as_padded_mut().as_mut_ptr(),
            y_stride: y.stride(),
        };
        let panels = tokens.div_ceil(pw);
        let n_parts = self.parts.len();
        if threads.count() == 1 {
            for p in 0..panels {
                let p0 = p * pw;
                // SAFETY: the strides are whole cache lines, so every panel's vectors fit
                // (`p0 + vectors * lanes <= stride`).
                unsafe { self.run_panel(&panel, 0..n_parts, p0, pw.min(tokens - p0), epilogue) };
            }
            return;
        }
        // Threads take contiguous runs of (row part, panel) items, part-major: with no more
        // threads than row parts, each writes whole rows of `yᵀ` (see [`row_parts`]). With more,
        // threads also split token panels, and each computes its panel in a scratch of its own
        // and copies the finished rows in once, so no two threads work in the same `yᵀ` rows.
        let own_scratch = threads.count() > n_parts;
        super::split_range(n_parts * panels, threads, &|range| {
            for item in range {
                let (part, p) = (item / panels, item % panels);
                let (p0, width) = (p * pw, pw.min(tokens - p * pw));
                if !own_scratch {
                    // SAFETY: as above; items are disjoint (rows of a part x columns of a panel).
                    unsafe { self.run_panel(&panel, part..part + 1, p0, width, epilogue) };
                    continue;
                }
                PANEL_SCRATCH.with(|cell| {
                    let mut scratch = cell.borrow_mut();
                    scratch.reshape(self.out_features, pw);
                    let local = Panel {
                        // SAFETY: `p0` is within `x`'s stride (as above).
                        x: unsafe { panel.x.add(p0) },
                        x_stride: panel.x_stride,
                        y: scratch.as_padded_mut().as_mut_ptr(),
                        y_stride: scratch.stride(),
                    };
                    // SAFETY: the scratch holds `out_features` rows of `pw` tokens; `x` as above.
                    unsafe { self.run_panel(&local, part..part + 1, 0, width, epilogue) };
                    for r in self.output_rows(&self.parts[part].tile_rows) {
                        // SAFETY: row r's columns p0..p0 + width of `y` are this item's alone.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                scratch.row(r).as_ptr(),
                                panel.y.add(r * panel.y_stride + p0),
                                width,
                            )
                        };
                    }
                });
            }
        });
    }

    fn stats(&self) -> LayerStats {
        let bytes = std::mem::size_of_val(self.weights.as_slice())
            + std::mem::size_of_val(self.cols.as_slice())
            + std::mem::size_of_val(self.runs.as_slice())
            + std::mem::size_of_val(self.groups.as_slice());
        LayerStats {
            out_features: self.out_features,
            in_features: self.in_features,
            nnz: self.nnz,
            bytes,
            multiplied: self.stored,
        }
    }

    /// Rebuilt from the packed groups, so it checks the packing as well.
    fn effective_weights(&self) -> Matrix {
        let mut w = Matrix::zeros(self.out_features, self.in_features);
        for g in &self.groups {
            let mut entry = 0usize;
            for run in &self.runs[g.runs_start as usize..g.runs_end as usize] {
                for &c in &self.cols[run.start as usize..(run.start + run.len) as usize] {
                    for k in 0..g.tiles as usize {
                        let (r, col) = ((g.y_rows[k] + run.row) as usize, (g.x_row + c) as usize);
                        let v = self.weights[g.weights as usize + entry * g.tiles as usize + k];
                        if r < self.out_features && col < self.in_features && v != 0.0 {
                            w.set(r, col, v);
                        }
                    }
                    entry += 1;
                }
            }
            debug_assert_eq!(entry, g.entries as usize);
        }
        w
    }

    fn kind(&self) -> &'static str {
        "pattern"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::pattern::{generate_pattern_set, PatternConfig};
    use crate::reference;

    #[test]
    fn matches_reference_on_every_backend() {
        let w = Matrix::random(70, 45, 1, 1.0);
        let base = Mask::dense(70, 45);
        let set = generate_pattern_set(&w, &base, &PatternConfig::new(16, 0.75));
        for backend in Backend::available() {
            let layer = PatternSparseLinear::with_backend(&w, &set, backend);
            for tokens in [1, 5, 16, 64, 70, 131] {
                let x = Matrix::random(tokens, 45, 2, 1.0);
                let mut y = Matrix::zeros(0, 0);
                layer.forward(&x, &mut y, Threads::One);
                let expected = reference::linear(&x, &layer.effective_weights());
                let (abs, _) = reference::errors(&y, &expected);
                assert!(abs < 1e-4, "{} tokens={tokens}: max error {abs}", backend.name());
            }
        }
    }

    #[test]
    fn row_parts_split_threads_by_output_rows_and_match_the_reference() {
        // 75 tile rows of 4: two row parts; tile row 40 (in the second part) keeps nothing.
        let mut w = Matrix::random(300, 24, 7, 1.0);
        for r in 160..164 {
            for c in 0..24 {
                w.set(r, c, 0.0);
            }
        }
        let base = Mask::dense(300, 24);
        let set = generate_pattern_set(&w, &base, &PatternConfig::new(4, 0.5));
        for backend in Backend::available() {
            let layer = PatternSparseLinear::with_backend(&w, &set, backend);
            assert_eq!(layer.parts.len(), 2, "{}", backend.name());
            assert_eq!(layer.idle_tile_rows, vec![40]);
            let expected_w = layer.effective_weights();
            for tokens in [1, 5, 64, 131] {
                let x = Matrix::random(tokens, 24, 8, 1.0);
                let expected = reference::linear(&x, &expected_w);
                let xt = Activations::from_token_major(&x);
                for threads in [Threads::One, Threads::N(2), Threads::N(3), Threads::N(5)] {
                    // Garbage in `y` first: every row, idle ones included, must be overwritten.
                    let mut yt = Activations::zeros(300, tokens);
                    for f in 0..300 {
                        yt.row_mut(f).fill(f32::NAN);
                    }
                    let epilogue = |r: usize, v: &mut [f32]| v.iter_mut().for_each(|v| *v += r as f32);
                    layer.forward_feature_major(&xt, &mut yt, Some(&epilogue), threads);
                    for r in 0..300 {
                        for t in 0..tokens {
                            let want = expected.get(t, r) + r as f32;
                            let got = yt.row(r)[t];
                            assert!(
                                (got - want).abs() < 1e-3,
                                "{} {threads:?} tokens={tokens} row {r} token {t}: {got} vs {want}",
                                backend.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn effective_weights_are_w_masked_and_stats_count_them() {
        let w = Matrix::random(40, 40, 3, 1.0);
        let base = Mask::dense(40, 40);
        let set = generate_pattern_set(&w, &base, &PatternConfig::new(8, 0.5));
        let a = assign_patterns(&w, &base, &set);
        let layer = PatternSparseLinear::new(&w, &set);
        let mut expected = w.clone();
        expected.apply_mask(a.mask());
        assert_eq!(layer.effective_weights(), expected);
        let s = layer.stats();
        assert_eq!(s.nnz, a.mask().kept());
        assert_eq!(s.sparsity(), 0.5);
        assert!(s.bytes >= s.nnz * 4);
        assert_eq!(layer.kind(), "pattern");
        assert_eq!((layer.tile(), layer.patterns()), (8, set.len()));
        assert_eq!(layer.stored_weights(), s.nnz, "dense base, tile divides the shape: no padding slots");
    }

    #[test]
    fn paired_bands_exact_zeros_and_a_ragged_tile_row_match_reference() {
        // Exact zeros in w are not stored, so tiles of one pattern differ in kept positions and
        // groups hold unions (explicit zeros); 200 rows leave a ragged last tile row; spans 2
        // and 3 exercise virtual tiles and leftovers.
        let w =
            Matrix::from_fn(200, 90, |r, c| if (r * 7 + c * 3) % 11 == 0 { 0.0 } else { ((r * 90 + c) as f32).sin() });
        let base = Mask::dense(200, 90);
        let set = generate_pattern_set(&w, &base, &PatternConfig::new(16, 0.8));
        let a = assign_patterns(&w, &base, &set);
        let mut expected_w = w.clone();
        expected_w.apply_mask(a.mask());
        for span in [1, 2, 3] {
            for backend in Backend::available() {
                let layer = PatternSparseLinear::pack(&w, &a, set.len(), backend, Some(span));
                assert_eq!(layer.effective_weights(), expected_w, "span {span}");
                assert!(layer.stored_weights() > layer.stats().nnz, "the exact zeros make unions");
                for tokens in [1, 33, 100] {
                    let x = Matrix::random(tokens, 90, 7, 1.0);
                    let mut y = Matrix::zeros(0, 0);
                    layer.forward(&x, &mut y, Threads::One);
                    let (abs, _) = reference::errors(&y, &reference::linear(&x, &expected_w));
                    assert!(abs < 1e-4, "span {span} {} tokens={tokens}: max error {abs}", backend.name());
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "made on a BP base")]
    fn an_assignment_on_a_bp_base_is_refused() {
        let w = Matrix::random(64, 64, 6, 1.0);
        let base = crate::prune::block::block_mask(&w, crate::prune::block::BlockShape::strip(16), 0.5);
        let set = generate_pattern_set(&w, &base, &PatternConfig::new(16, 0.75));
        PatternSparseLinear::from_assignment(&w, &assign_patterns(&w, &base, &set), set.len());
    }

    #[test]
    fn short_runs_pair_bands_long_runs_single_bands_and_few_rows_do_not() {
        assert_eq!(band_span(48, 192, 4, 2.0), 2, "87.5 % of 16x16");
        assert_eq!(band_span(192, 48, 4, 8.0), 2, "50 % of 16x16");
        assert_eq!(band_span(48, 48, 4, 16.0), 1, "50 % of 32x32");
        assert_eq!(band_span(48, 1, 4, 2.0), 1, "a single band has nothing to pair with");
        assert_eq!(band_span(13, 50, 4, 2.0), 1, "fewer tile rows than pattern pairs");
    }

    #[test]
    fn pairs_group_by_both_patterns_and_empty_halves_stay_apart() {
        // Whole 16x16 blocks of w exactly zero: virtual 16x32 tiles are often half empty, and a
        // half-empty one must not share a group (and an index list union) with a full one.
        let w = Matrix::random(256, 64, 9, 1.0);
        let blocks = crate::prune::block::block_mask(&w, crate::prune::block::BlockShape { rows: 16, cols: 16 }, 0.5);
        let mut w = w;
        w.apply_mask(&blocks);
        let base = Mask::dense(256, 64);
        let set = generate_pattern_set(&w, &base, &PatternConfig::new(16, 0.875));
        let a = assign_patterns(&w, &base, &set);
        let layer = PatternSparseLinear::pack(&w, &a, set.len(), Backend::best(), Some(2));
        assert_eq!(layer.stored_weights(), layer.stats().nnz, "no union zeros: every group shares its kept positions");
        let mut expected = w.clone();
        expected.apply_mask(a.mask());
        assert_eq!(layer.effective_weights(), expected);
        let keeps_any = |tr: usize, tc: usize| {
            (0..256).any(|p| {
                let (r, c) = (tr * 16 + p / 16, tc * 16 + p % 16);
                a.mask().get(r, c) && w.get(r, c) != 0.0
            })
        };
        let mut half_empty_groups = 0;
        for g in &layer.groups {
            let tile_rows: Vec<usize> = (0..g.tiles as usize).map(|k| g.y_rows[k] as usize / 16).collect();
            for tc in [g.x_row as usize / 16, g.x_row as usize / 16 + 1] {
                let used: Vec<Option<usize>> =
                    tile_rows.iter().map(|&tr| keeps_any(tr, tc).then(|| a.pattern_of(tr, tc))).collect();
                assert!(used.iter().all(|u| *u == used[0]), "group mixes patterns or empty halves in band {tc}");
                half_empty_groups += usize::from(used[0].is_none());
            }
        }
        assert!(half_empty_groups > 0, "the zero blocks should leave some half-empty pairs");
    }

    #[test]
    fn idle_and_fresh_tile_rows_are_cleared_in_a_dirty_output() {
        // Rows 16..32 of w exactly zero: tile row 1 is idle. Running another layer first leaves
        // non-zero `yᵀ` in the output buffer, which neither layer may pick up.
        let dense = Matrix::random(48, 40, 11, 1.0);
        let w = Matrix::from_fn(48, 40, |r, c| if (16..32).contains(&r) { 0.0 } else { dense.get(r, c) });
        let set = generate_pattern_set(&w, &Mask::dense(48, 40), &PatternConfig::new(16, 0.5));
        let x = Matrix::random(70, 40, 12, 1.0);
        for backend in Backend::available() {
            let dirtying = PatternSparseLinear::with_backend(&dense, &set, backend);
            let layer = PatternSparseLinear::with_backend(&w, &set, backend);
            assert_eq!(layer.idle_tile_rows, vec![1]);
            let mut y = Matrix::zeros(0, 0);
            for _ in 0..2 {
                dirtying.forward(&x, &mut y, Threads::One);
                layer.forward(&x, &mut y, Threads::One);
                let (abs, _) = reference::errors(&y, &reference::linear(&x, &layer.effective_weights()));
                assert!(abs < 1e-4, "{}: max error {abs}", backend.name());
            }
        }
    }

    #[test]
    fn threads_agree_with_one_thread() {
        let w = Matrix::random(96, 64, 4, 1.0);
        let set = generate_pattern_set(&w, &Mask::dense(96, 64), &PatternConfig::new(16, 0.875));
        let layer = PatternSparseLinear::new(&w, &set);
        // 200 tokens: whole panels per thread; 35: panels narrowed so each thread gets one.
        for tokens in [200, 35] {
            let x = Matrix::random(tokens, 64, 5, 1.0);
            let (mut a, mut b) = (Matrix::zeros(0, 0), Matrix::zeros(0, 0));
            layer.forward(&x, &mut a, Threads::One);
            for threads in [Threads::N(2), Threads::N(3)] {
                layer.forward(&x, &mut b, threads);
                assert_eq!(a, b, "{tokens} tokens, {threads:?}");
            }
        }
    }
}
