//! Pattern pruning (PP): pattern sets over square tiles, applied on top of a
//! block-pruned (BP) base mask.
//!
//! A weight matrix (`out x in`) is cut into `tile x tile` squares, zero-padded
//! at the bottom and right edges when the shape is not a multiple of the tile
//! (RT3 padded to multiples of 100). A [`Pattern`] is a keep-mask over one
//! tile; a [`PatternSet`] holds a few of them (RT3: 4 per layer). Every tile
//! takes the pattern of the set that keeps the most of its weight magnitude
//! (squared L2 over the positions the BP base still keeps, which is the same as
//! being closest in Euclidean distance to the original tile), and the final
//! mask is `base AND pattern`: BP zeros stay zero ([`assign_patterns`]).
//!
//! Set generation ([`generate_pattern_set`]) has three steps:
//! 1. Candidates, by [`CandidateMethod`]: RT3's sums of randomly chosen tiles
//!    whose smallest-magnitude positions are zeroed, or PatDNN's most frequent
//!    per-tile top-k masks. Every candidate keeps the same number `k` of tile
//!    positions.
//! 2. The set: `patterns_per_set` candidates picked greedily, each time the
//!    one that raises the layer's total kept magnitude the most (every tile
//!    counted with its best pattern so far).
//! 3. `k` itself: [`PatternConfig::sparsity`] is the target for the *layer*
//!    (BP and PP zeros together, as RT3 reports it), so `k` is searched until
//!    the assigned mask's sparsity is as close to the target as whole tile
//!    positions allow. With a dense base and no padding that is simply
//!    `round((1 - sparsity) * tile²)`.
//!
//! Everything is deterministic from [`PatternConfig::seed`]: ties are broken by
//! position or index, never by hash order, so a set is identical on every
//! architecture.

use std::collections::HashMap;

use crate::matrix::{Mask, Matrix, SeededUniform};

/// RT3's code: candidate patterns come from sums of this many random tiles.
pub const RT3_TILES_PER_SUM: usize = 10;
/// RT3's code keeps 10 tile sums as candidates per layer and sparsity level.
pub const RT3_CANDIDATES: usize = 10;
/// PatDNN-style candidates: at most this many of the most frequent masks.
pub const FREQUENT_CANDIDATES: usize = 16;

/// How candidate patterns are derived from the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CandidateMethod {
    /// RT3: sum the magnitudes of [`RT3_TILES_PER_SUM`] randomly chosen (seeded)
    /// tiles, [`RT3_CANDIDATES`] times; each sum keeps its `k` largest positions.
    Rt3TileSums,
    /// PatDNN: every tile's own top-`k` mask; the most frequent distinct masks
    /// (ties: larger kept magnitude first) are the candidates.
    FrequentTopK,
}

/// What [`generate_pattern_set`] builds.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PatternConfig {
    /// Side of the square tile (RT3: 100; small tiles such as 8, 16, 32 suit SIMD).
    pub tile: usize,
    /// How many patterns the set holds (RT3: 4). Fewer when fewer distinct candidates exist.
    pub patterns_per_set: usize,
    /// Target sparsity of the whole layer after PP, BP zeros included, in `[0, 1]`.
    pub sparsity: f64,
    pub method: CandidateMethod,
    /// Seeds the random tile choice of [`CandidateMethod::Rt3TileSums`].
    pub seed: u64,
}

impl PatternConfig {
    /// RT3's defaults: 4 patterns per set, tile sums, seed 0.
    pub fn new(tile: usize, sparsity: f64) -> Self {
        Self { tile, patterns_per_set: 4, sparsity, method: CandidateMethod::Rt3TileSums, seed: 0 }
    }

    /// Checks the fields; the error names the field and its value.
    pub fn validate(&self) -> Result<(), PatternConfigError> {
        if self.tile == 0 || self.tile > u16::MAX as usize {
            return Err(PatternConfigError::Tile(self.tile));
        }
        if self.patterns_per_set == 0 || self.patterns_per_set > u16::MAX as usize {
            return Err(PatternConfigError::PatternsPerSet(self.patterns_per_set));
        }
        if !(0.0..=1.0).contains(&self.sparsity) {
            return Err(PatternConfigError::Sparsity(self.sparsity));
        }
        Ok(())
    }
}

/// A [`PatternConfig`] field out of range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PatternConfigError {
    #[error("pattern tile {0} must be between 1 and 65535")]
    Tile(usize),
    #[error("patterns_per_set {0} must be between 1 and 65535")]
    PatternsPerSet(usize),
    #[error("pattern sparsity {0} is outside [0, 1]")]
    Sparsity(f64),
}

/// A keep-mask over a `tile x tile` square, row-major (`true` = kept).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    tile: usize,
    keep: Vec<bool>,
}

impl Pattern {
    /// Wraps a row-major keep-mask of `tile * tile` entries.
    ///
    /// # Panics
    /// When `keep` does not have `tile * tile` entries.
    pub fn from_keep(tile: usize, keep: Vec<bool>) -> Self {
        assert_eq!(
            keep.len(),
            tile * tile,
            "Pattern::from_keep: a {tile}x{tile} pattern needs {} entries, got {}",
            tile * tile,
            keep.len()
        );
        Self { tile, keep }
    }

    /// Keeps the listed positions (`row * tile + col`) of a `tile x tile` square.
    fn from_positions(tile: usize, positions: &[u32]) -> Self {
        let mut keep = vec![false; tile * tile];
        for &p in positions {
            keep[p as usize] = true;
        }
        Self { tile, keep }
    }

    pub fn tile(&self) -> usize {
        self.tile
    }

    /// Whether the pattern keeps in-tile position `(row, col)`.
    #[inline]
    pub fn keeps(&self, row: usize, col: usize) -> bool {
        self.keep[row * self.tile + col]
    }

    /// Row-major keep flags.
    pub fn as_slice(&self) -> &[bool] {
        &self.keep
    }

    /// Number of kept positions.
    pub fn kept(&self) -> usize {
        self.keep.iter().filter(|k| **k).count()
    }

    /// Fraction of the tile the pattern zeroes.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.kept() as f64 / self.keep.len().max(1) as f64
    }
}

/// A few patterns over the same tile size; every tile of a layer takes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternSet {
    tile: usize,
    patterns: Vec<Pattern>,
}

impl PatternSet {
    /// # Panics
    /// When `patterns` is empty, has more than 65535 entries, or a pattern's tile differs from `tile`.
    pub fn new(tile: usize, patterns: Vec<Pattern>) -> Self {
        assert!(!patterns.is_empty(), "PatternSet::new: a set needs at least one pattern");
        assert!(patterns.len() <= u16::MAX as usize, "PatternSet::new: {} patterns, at most 65535", patterns.len());
        for (i, p) in patterns.iter().enumerate() {
            assert_eq!(p.tile, tile, "PatternSet::new: pattern {i} is {}x{}, the set's tile is {tile}", p.tile, p.tile);
        }
        Self { tile, patterns }
    }

    pub fn tile(&self) -> usize {
        self.tile
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// The outcome of [`assign_patterns`]: which pattern every tile took, and the
/// final mask (`base AND pattern`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternAssignment {
    tile: usize,
    tiles_down: usize,
    tiles_across: usize,
    /// Pattern index per tile, row-major over the tile grid.
    chosen: Vec<u16>,
    mask: Mask,
    /// Whether the base mask kept every weight (plain PP, no BP zeros).
    dense_base: bool,
}

impl PatternAssignment {
    pub fn tile(&self) -> usize {
        self.tile
    }

    /// Tile grid as (tile rows, tile columns), padding included.
    pub fn tile_grid(&self) -> (usize, usize) {
        (self.tiles_down, self.tiles_across)
    }

    /// Index (into the set) of the pattern tile `(tile_row, tile_col)` took.
    pub fn pattern_of(&self, tile_row: usize, tile_col: usize) -> usize {
        self.chosen[tile_row * self.tiles_across + tile_col] as usize
    }

    /// The final mask: kept where both the BP base and the tile's pattern keep.
    pub fn mask(&self) -> &Mask {
        &self.mask
    }

    pub fn into_mask(self) -> Mask {
        self.mask
    }

    /// Achieved sparsity of the layer, BP and PP zeros together.
    pub fn sparsity(&self) -> f64 {
        self.mask.sparsity()
    }

    /// Whether the base mask kept every weight, so the final mask is the
    /// pattern mask alone (plain PP): what the tile-grouped kernel packs.
    pub fn has_dense_base(&self) -> bool {
        self.dense_base
    }

    /// How many tiles took each pattern of a set of `patterns` patterns.
    pub fn usage(&self, patterns: usize) -> Vec<usize> {
        let mut counts = vec![0; patterns];
        for &p in &self.chosen {
            counts[p as usize] += 1;
        }
        counts
    }
}

/// The tiles of a matrix, with per-tile copies of what pruning decisions read.
///
/// Values are stored tile-major (`tile * tile` per tile, zero in the padding)
/// so scoring a pattern against a tile walks contiguous memory.
struct TiledLayer {
    tile: usize,
    tiles_down: usize,
    tiles_across: usize,
    /// `w²` where the base keeps, else 0 (the L2 score of a kept position).
    energy: Vec<f32>,
    /// `|w|` where the base keeps, else 0 (what RT3's tile sums add up).
    magnitude: Vec<f32>,
    /// 1 where the base keeps and the position is inside the matrix.
    keepable: Vec<u8>,
}

impl TiledLayer {
    fn new(w: &Matrix, base: &Mask, tile: usize) -> Self {
        assert_eq!(
            w.shape(),
            base.shape(),
            "pattern pruning: weights are {:?} but the base mask is {:?}",
            w.shape(),
            base.shape()
        );
        let tiles_down = w.rows().div_ceil(tile);
        let tiles_across = w.cols().div_ceil(tile);
        let area = tile * tile;
        let n = tiles_down * tiles_across * area;
        let (mut energy, mut magnitude, mut keepable) = (vec![0.0f32; n], vec![0.0f32; n], vec![0u8; n]);
        let cols = w.cols();
        for r in 0..w.rows() {
            let (tr, lr) = (r / tile, r % tile);
            let (values, keeps) = (w.row(r), &base.as_slice()[r * cols..][..cols]);
            // Tile `tc`'s part of the row: `tile` values from column `tc * tile`.
            for (tc, (values, keeps)) in values.chunks(tile).zip(keeps.chunks(tile)).enumerate() {
                let i = (tr * tiles_across + tc) * area + lr * tile;
                for (lc, (&v, _)) in values.iter().zip(keeps).enumerate().filter(|(_, (_, &k))| k) {
                    energy[i + lc] = v * v;
                    magnitude[i + lc] = v.abs();
                    keepable[i + lc] = 1;
                }
            }
        }
        Self { tile, tiles_down, tiles_across, energy, magnitude, keepable }
    }

    fn tiles(&self) -> usize {
        self.tiles_down * self.tiles_across
    }

    fn area(&self) -> usize {
        self.tile * self.tile
    }

    fn energy_of(&self, t: usize) -> &[f32] {
        &self.energy[t * self.area()..(t + 1) * self.area()]
    }

    fn magnitude_of(&self, t: usize) -> &[f32] {
        &self.magnitude[t * self.area()..(t + 1) * self.area()]
    }

    fn keepable_of(&self, t: usize) -> &[u8] {
        &self.keepable[t * self.area()..(t + 1) * self.area()]
    }

    /// Kept energy (f64 sum in position order) and kept count of `positions` in tile `t`.
    fn score(&self, t: usize, positions: &[u32]) -> (f64, usize) {
        let (e, k) = (self.energy_of(t), self.keepable_of(t));
        let mut energy = 0.0f64;
        let mut kept = 0usize;
        for &p in positions {
            energy += e[p as usize] as f64;
            kept += k[p as usize] as usize;
        }
        (energy, kept)
    }
}

/// Positions `0..values.len()` by descending value, ties by ascending position.
fn positions_by_value_desc(values: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    order.sort_by(|a, b| values[*b as usize].total_cmp(&values[*a as usize]).then(a.cmp(b)));
    order
}

/// Candidate generators, each able to produce its candidates for any `k`.
enum Candidates {
    /// Per tile sum, its positions by descending summed magnitude: candidate = first `k`, sorted.
    Ranked(Vec<Vec<u32>>),
    /// Per tile, its positions by descending energy (the PatDNN top-k is a prefix).
    PerTile(Vec<Vec<u32>>),
}

impl Candidates {
    fn new(layer: &TiledLayer, cfg: &PatternConfig) -> Self {
        match cfg.method {
            CandidateMethod::Rt3TileSums => {
                let mut rng = SeededUniform::new(cfg.seed);
                let tiles = layer.tiles();
                let per_sum = RT3_TILES_PER_SUM.min(tiles);
                let mut pool: Vec<usize> = (0..tiles).collect();
                let sums = (0..RT3_CANDIDATES)
                    .map(|_| {
                        // Partial Fisher-Yates: the first `per_sum` entries become a random subset.
                        for i in 0..per_sum {
                            let j = i + rng.next_below(tiles - i);
                            pool.swap(i, j);
                        }
                        let mut sum = vec![0.0f32; layer.area()];
                        for &t in &pool[..per_sum] {
                            for (s, m) in sum.iter_mut().zip(layer.magnitude_of(t)) {
                                *s += *m;
                            }
                        }
                        positions_by_value_desc(&sum)
                    })
                    .collect();
                Candidates::Ranked(sums)
            }
            CandidateMethod::FrequentTopK => {
                Candidates::PerTile((0..layer.tiles()).map(|t| positions_by_value_desc(layer.energy_of(t))).collect())
            }
        }
    }

    /// Distinct candidate patterns keeping `k` positions each, as sorted position lists.
    fn with_kept(&self, layer: &TiledLayer, k: usize) -> Vec<Vec<u32>> {
        let mut out: Vec<Vec<u32>> = Vec::new();
        match self {
            Candidates::Ranked(orders) => {
                for order in orders {
                    let mut c = order[..k].to_vec();
                    c.sort_unstable();
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
            }
            Candidates::PerTile(orders) => {
                // Count identical top-k masks; remember each mask's total kept energy for ties.
                let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
                let mut stats: Vec<(usize, f64, usize)> = Vec::new(); // (count, energy, first tile)
                let mut masks: Vec<Vec<u32>> = Vec::new();
                for (t, order) in orders.iter().enumerate() {
                    let mut c = order[..k].to_vec();
                    c.sort_unstable();
                    let energy = layer.score(t, &c).0;
                    match index.get(&c) {
                        Some(&i) => {
                            stats[i].0 += 1;
                            stats[i].1 += energy;
                        }
                        None => {
                            index.insert(c.clone(), masks.len());
                            stats.push((1, energy, t));
                            masks.push(c);
                        }
                    }
                }
                let mut ranked: Vec<usize> = (0..masks.len()).collect();
                ranked.sort_by(|a, b| {
                    stats[*b]
                        .0
                        .cmp(&stats[*a].0)
                        .then(stats[*b].1.total_cmp(&stats[*a].1))
                        .then(stats[*a].2.cmp(&stats[*b].2))
                });
                out = ranked.into_iter().take(FREQUENT_CANDIDATES).map(|i| masks[i].clone()).collect();
            }
        }
        out
    }
}

/// A chosen set (as position lists) and the number of weights it keeps in the layer.
struct SetChoice {
    patterns: Vec<Vec<u32>>,
    kept: usize,
}

/// Greedy set selection among `candidates` (all keeping the same count), then
/// the kept-weight count of the resulting assignment.
fn choose_set(layer: &TiledLayer, candidates: &[Vec<u32>], patterns_per_set: usize) -> SetChoice {
    let tiles = layer.tiles();
    let scores: Vec<Vec<(f64, usize)>> =
        candidates.iter().map(|c| (0..tiles).map(|t| layer.score(t, c)).collect()).collect();
    let mut chosen: Vec<usize> = Vec::new();
    // Best (energy, kept) per tile among the chosen; energy -1 before the first pick.
    let mut best: Vec<(f64, usize)> = vec![(-1.0, 0); tiles];
    while chosen.len() < patterns_per_set.min(candidates.len()) {
        let mut pick: Option<(usize, f64)> = None;
        for (ci, s) in scores.iter().enumerate() {
            if chosen.contains(&ci) {
                continue;
            }
            let total: f64 = s.iter().zip(&best).map(|(a, b)| a.0.max(b.0)).sum();
            if pick.is_none_or(|(_, t)| total > t) {
                pick = Some((ci, total));
            }
        }
        let Some((ci, _)) = pick else { break };
        chosen.push(ci);
        for (b, s) in best.iter_mut().zip(&scores[ci]) {
            // Strictly greater, like `assign_patterns`: the earlier pattern wins a tie.
            if s.0 > b.0 {
                *b = *s;
            }
        }
    }
    let kept = best.iter().map(|b| b.1).sum();
    SetChoice { patterns: chosen.into_iter().map(|ci| candidates[ci].clone()).collect(), kept }
}

/// Builds a pattern set for `w` on top of the BP `base` mask (see the module
/// docs for the three steps).
///
/// # Panics
/// When the config is invalid ([`PatternConfig::validate`]) or `base` does not
/// have the shape of `w`.
pub fn generate_pattern_set(w: &Matrix, base: &Mask, cfg: &PatternConfig) -> PatternSet {
    generate_for_total(w, base, cfg, w.rows() * w.cols())
}

/// [`generate_pattern_set`] with the sparsity target counted over `total`
/// weights instead of `w`'s own (the compacted matrix of a BP base stands for
/// a larger layer).
fn generate_for_total(w: &Matrix, base: &Mask, cfg: &PatternConfig, total: usize) -> PatternSet {
    if let Err(e) = cfg.validate() {
        panic!("generate_pattern_set: {e}");
    }
    let tile = cfg.tile;
    let layer = TiledLayer::new(w, base, tile);
    let area = layer.area();
    if layer.tiles() == 0 {
        // An empty matrix: any pattern gives the same (empty) result.
        return PatternSet::new(tile, vec![Pattern::from_keep(tile, vec![true; area])]);
    }
    let candidates = Candidates::new(&layer, cfg);
    let target_kept = ((1.0 - cfg.sparsity) * total as f64).round() as usize;
    let evaluate = |k: usize| choose_set(&layer, &candidates.with_kept(&layer, k), cfg.patterns_per_set);

    let no_padding = w.rows().is_multiple_of(tile) && w.cols().is_multiple_of(tile);
    let choice = if no_padding && total == w.rows() * w.cols() && base.kept() == total {
        // Every tile keeps exactly k weights whichever pattern it takes.
        let k = ((1.0 - cfg.sparsity) * area as f64).round() as usize;
        evaluate(k.min(area))
    } else {
        // Kept weights grow (almost) monotonically with k: find the smallest k reaching the
        // target, then take it or k-1, whichever lands closer.
        let (mut lo, mut hi) = (0usize, area);
        let mut at_hi = evaluate(hi);
        if at_hi.kept <= target_kept {
            at_hi
        } else {
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                let at_mid = evaluate(mid);
                if at_mid.kept >= target_kept {
                    hi = mid;
                    at_hi = at_mid;
                } else {
                    lo = mid;
                }
            }
            let at_lo = evaluate(lo);
            if at_lo.kept.abs_diff(target_kept) <= at_hi.kept.abs_diff(target_kept) {
                at_lo
            } else {
                at_hi
            }
        }
    };
    let patterns = choice.patterns.iter().map(|p| Pattern::from_positions(tile, p)).collect();
    PatternSet::new(tile, patterns)
}

/// Gives every tile of `w` the pattern of `set` that keeps the most weight
/// magnitude (sum of `w²` over positions both the pattern and `base` keep;
/// the first pattern wins a tie), and returns the choices with the final mask
/// `base AND pattern`. BP zeros stay zero.
///
/// # Panics
/// When `base` does not have the shape of `w`.
pub fn assign_patterns(w: &Matrix, base: &Mask, set: &PatternSet) -> PatternAssignment {
    let tile = set.tile();
    let layer = TiledLayer::new(w, base, tile);
    let lists: Vec<Vec<u32>> = set
        .patterns()
        .iter()
        .map(|p| p.as_slice().iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i as u32).collect())
        .collect();
    let chosen: Vec<u16> = (0..layer.tiles())
        .map(|t| {
            let mut best = (0usize, f64::NEG_INFINITY);
            for (pi, list) in lists.iter().enumerate() {
                let energy = layer.score(t, list).0;
                if energy > best.1 {
                    best = (pi, energy);
                }
            }
            best.0 as u16
        })
        .collect();
    // The base AND each tile's pattern, a row at a time: row `lr` of the pattern over the tile's
    // part of the row.
    let mut keep = base.as_slice().to_vec();
    if w.cols() > 0 {
        for (r, row) in keep.chunks_exact_mut(w.cols()).enumerate() {
            let (tr, lr) = (r / tile, r % tile);
            for (tc, part) in row.chunks_mut(tile).enumerate() {
                let p = &set.patterns()[chosen[tr * layer.tiles_across + tc] as usize];
                part.iter_mut().zip(&p.as_slice()[lr * tile..]).for_each(|(k, &p)| *k &= p);
            }
        }
    }
    let mask = Mask::from_vec(w.rows(), w.cols(), keep);
    let dense_base = base.kept() == w.rows() * w.cols();
    PatternAssignment { tile, tiles_down: layer.tiles_down, tiles_across: layer.tiles_across, chosen, mask, dense_base }
}

/// The compacted blocks of a BP base, on which pattern tiles are laid.
///
/// # Semantics of PP on a BP base
/// The base is read as strips of `strip_rows` rows (the BP block height; the
/// last strip may be shorter). Strip `s` keeps the input columns
/// `K_s` that any of its rows keeps (ascending); for a BP mask made of whole
/// column segments, those are exactly the kept segments' columns, whatever
/// their width. Its *compacted block* is `w[rows of s][K_s]`, a dense
/// `rows x |K_s|` matrix holding every weight BP kept and nothing it removed.
/// The compacted blocks are stacked, each strip starting on a tile boundary
/// (padded down to a whole number of tiles), and left-aligned; pattern tiles
/// are laid over that stack exactly as over a plain matrix
/// ([`generate_pattern_set`], [`assign_patterns`]; edge tiles zero-padded).
/// Weight `(r, K_s[j])` of strip `s` is then kept iff the base keeps it AND
/// the pattern of its compacted tile (`(strip offset + r - s·strip_rows) / tile`,
/// `j / tile`) keeps its in-tile position. The final mask is therefore the
/// base mask intersected with a pattern mask; the pattern mask is a union of
/// whole patterns in compacted coordinates, so a kernel that runs on the
/// compacted blocks multiplies kept weights only.
///
/// With a dense base (or any base whose strips keep every column) and
/// `strip_rows` a multiple of the tile, compaction is the identity and this
/// is plain PP.
#[derive(Clone, Debug)]
pub struct BlockCompaction {
    rows: usize,
    cols: usize,
    strip_rows: usize,
    /// Per strip: first row in the compacted stack, kept input columns.
    strips: Vec<(usize, Vec<u32>)>,
    /// Rows and columns of the compacted stack.
    stack_rows: usize,
    stack_cols: usize,
}

impl BlockCompaction {
    /// Reads the strips of `base` (`strip_rows` rows each) for tiles of `tile`.
    ///
    /// # Panics
    /// When `strip_rows` or `tile` is 0.
    pub fn new(base: &Mask, strip_rows: usize, tile: usize) -> Self {
        assert!(strip_rows > 0 && tile > 0, "BlockCompaction: strip_rows and tile must be at least 1");
        let (rows, cols) = base.shape();
        let mut strips = Vec::with_capacity(rows.div_ceil(strip_rows));
        let mut offset = 0;
        for row0 in (0..rows).step_by(strip_rows) {
            let h = strip_rows.min(rows - row0);
            let kept: Vec<u32> = base.columns_kept_by(row0..row0 + h).into_iter().map(|c| c as u32).collect();
            strips.push((offset, kept));
            offset += h.next_multiple_of(tile);
        }
        let stack_cols = strips.iter().map(|(_, k)| k.len()).max().unwrap_or(0);
        Self { rows, cols, strip_rows, strips, stack_rows: offset, stack_cols }
    }

    /// Shape of the compacted stack.
    pub fn stack_shape(&self) -> (usize, usize) {
        (self.stack_rows, self.stack_cols)
    }

    /// Kept input columns of each strip.
    pub fn kept_columns(&self) -> impl Iterator<Item = &[u32]> {
        self.strips.iter().map(|(_, k)| k.as_slice())
    }

    /// Every row of every strip: its row `r` in the layer, its row `sr` in the stack and the
    /// strip's kept columns (column `j` of stack row `sr` is column `kept[j]` of row `r`).
    fn rows(&self) -> impl Iterator<Item = (usize, usize, &[u32])> + '_ {
        self.strips.iter().enumerate().flat_map(move |(s, (offset, kept))| {
            let row0 = s * self.strip_rows;
            (0..self.strip_rows.min(self.rows - row0)).map(move |lr| (row0 + lr, offset + lr, kept.as_slice()))
        })
    }

    /// The compacted stack of `w` (zeros in padding).
    pub fn compact_weights(&self, w: &Matrix) -> Matrix {
        assert_eq!(w.shape(), (self.rows, self.cols), "BlockCompaction: weights have the wrong shape");
        let mut out = Matrix::zeros(self.stack_rows, self.stack_cols);
        for (r, sr, kept) in self.rows() {
            let (from, to) = (w.row(r), out.row_mut(sr));
            for (t, &c) in to.iter_mut().zip(kept) {
                *t = from[c as usize];
            }
        }
        out
    }

    /// The compacted stack of `mask` (padding not kept).
    pub fn compact_mask(&self, mask: &Mask) -> Mask {
        assert_eq!(mask.shape(), (self.rows, self.cols), "BlockCompaction: mask has the wrong shape");
        let (from, cols) = (mask.as_slice(), self.stack_cols);
        let mut out = vec![false; self.stack_rows * cols];
        for (r, sr, kept) in self.rows() {
            let (from, to) = (&from[r * self.cols..][..self.cols], &mut out[sr * cols..][..cols]);
            for (t, &c) in to.iter_mut().zip(kept) {
                *t = from[c as usize];
            }
        }
        Mask::from_vec(self.stack_rows, cols, out)
    }

    /// A mask over the stack, back in the original coordinates (dropped columns not kept).
    pub fn lift(&self, stacked: &Mask) -> Mask {
        assert_eq!(stacked.shape(), (self.stack_rows, self.stack_cols), "BlockCompaction::lift: wrong shape");
        let (from, cols) = (stacked.as_slice(), self.cols);
        let mut out = vec![false; self.rows * cols];
        for (r, sr, kept) in self.rows() {
            let (from, to) = (&from[sr * self.stack_cols..][..self.stack_cols], &mut out[r * cols..][..cols]);
            for (&f, &c) in from.iter().zip(kept) {
                to[c as usize] = f;
            }
        }
        Mask::from_vec(self.rows, cols, out)
    }
}

/// A pattern assignment on the compacted blocks of a BP base.
#[derive(Clone, Debug)]
pub struct BlockPatternAssignment {
    /// Choices per tile of the compacted stack (its mask is in stack coordinates).
    pub compacted: PatternAssignment,
    /// The final mask in the layer's coordinates: base AND pattern (see [`BlockCompaction`]).
    pub mask: Mask,
}

/// [`generate_pattern_set`] on the compacted blocks of the BP `base` read as
/// strips of `strip_rows` rows; `cfg.sparsity` is the target for the whole
/// layer, BP zeros included.
pub fn generate_pattern_set_on_blocks(w: &Matrix, base: &Mask, strip_rows: usize, cfg: &PatternConfig) -> PatternSet {
    let compaction = BlockCompaction::new(base, strip_rows, cfg.tile.max(1));
    let (wc, bc) = (compaction.compact_weights(w), compaction.compact_mask(base));
    generate_for_total(&wc, &bc, cfg, w.rows() * w.cols())
}

/// [`assign_patterns`] on the compacted blocks of the BP `base` (see
/// [`BlockCompaction`] for the exact semantics).
pub fn assign_patterns_on_blocks(
    w: &Matrix,
    base: &Mask,
    strip_rows: usize,
    set: &PatternSet,
) -> BlockPatternAssignment {
    let compaction = BlockCompaction::new(base, strip_rows, set.tile());
    let (wc, bc) = (compaction.compact_weights(w), compaction.compact_mask(base));
    let compacted = assign_patterns(&wc, &bc, set);
    let mask = compaction.lift(compacted.mask());
    BlockPatternAssignment { compacted, mask }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tile: usize, sparsity: f64) -> PatternConfig {
        PatternConfig::new(tile, sparsity)
    }

    #[test]
    fn dense_base_hits_the_target_exactly_when_the_tile_divides_the_shape() {
        let w = Matrix::random(64, 48, 1, 1.0);
        let base = Mask::dense(64, 48);
        for s in [0.0, 0.5, 0.75, 0.875, 1.0] {
            let set = generate_pattern_set(&w, &base, &cfg(16, s));
            assert!(set.len() <= 4 && !set.is_empty());
            for p in set.patterns() {
                assert_eq!(p.sparsity(), s, "every pattern keeps round((1-s) * 256)");
            }
            let a = assign_patterns(&w, &base, &set);
            assert_eq!(a.sparsity(), s);
        }
    }

    #[test]
    fn a_tile_takes_the_pattern_keeping_more_energy() {
        // 2x2 tile; pattern 0 keeps the left column, pattern 1 the right one.
        let set = PatternSet::new(
            2,
            vec![
                Pattern::from_keep(2, vec![true, false, true, false]),
                Pattern::from_keep(2, vec![false, true, false, true]),
            ],
        );
        let w = Matrix::from_vec(2, 4, vec![1.0, 0.1, 0.1, 3.0, 1.0, 0.1, 0.1, -3.0]);
        let a = assign_patterns(&w, &Mask::dense(2, 4), &set);
        assert_eq!((a.pattern_of(0, 0), a.pattern_of(0, 1)), (0, 1));
        assert_eq!(a.mask().as_slice(), &[true, false, false, true, true, false, false, true]);
        assert_eq!(a.usage(2), vec![1, 1]);
    }

    #[test]
    fn base_zeros_stay_zero_and_steer_the_choice() {
        let set = PatternSet::new(
            2,
            vec![
                Pattern::from_keep(2, vec![true, false, true, false]),
                Pattern::from_keep(2, vec![false, true, false, true]),
            ],
        );
        // The big left column is pruned by BP, so the right column wins.
        let w = Matrix::from_vec(2, 2, vec![9.0, 1.0, 9.0, 1.0]);
        let base = Mask::from_vec(2, 2, vec![false, true, false, true]);
        let a = assign_patterns(&w, &base, &set);
        assert_eq!(a.pattern_of(0, 0), 1);
        assert_eq!(a.mask(), &base);
    }

    #[test]
    fn padded_shapes_and_bp_base_land_near_the_target() {
        let w = Matrix::random(50, 70, 5, 1.0);
        let base = crate::prune::block::block_mask(&w, crate::prune::block::BlockShape::strip(16), 0.5);
        let set = generate_pattern_set(&w, &base, &cfg(16, 0.75));
        let a = assign_patterns(&w, &base, &set);
        assert!((a.sparsity() - 0.75).abs() < 0.02, "achieved {}", a.sparsity());
        assert!(a.mask().and(&base) == *a.mask());
    }

    #[test]
    fn frequent_top_k_finds_the_common_mask() {
        // Every tile has the same large diagonal: the most frequent top-2 mask is the diagonal.
        let w = Matrix::from_fn(4, 8, |r, c| if r % 2 == c % 2 { 5.0 + (r * 8 + c) as f32 * 0.01 } else { 0.1 });
        let mut c = cfg(2, 0.5);
        c.method = CandidateMethod::FrequentTopK;
        c.patterns_per_set = 1;
        let set = generate_pattern_set(&w, &Mask::dense(4, 8), &c);
        assert_eq!(set.patterns()[0].as_slice(), &[true, false, false, true]);
    }

    #[test]
    fn same_seed_same_set_other_seed_may_differ() {
        let w = Matrix::random(64, 64, 9, 1.0);
        let base = Mask::dense(64, 64);
        let mut c = cfg(8, 0.75);
        let a = generate_pattern_set(&w, &base, &c);
        assert_eq!(a, generate_pattern_set(&w, &base, &c));
        c.seed = 1;
        let b = generate_pattern_set(&w, &base, &c);
        assert_eq!(b.tile(), 8);
    }

    #[test]
    fn validate_names_the_field() {
        let mut c = cfg(0, 0.5);
        assert_eq!(c.validate(), Err(PatternConfigError::Tile(0)));
        c.tile = 8;
        c.sparsity = 1.5;
        assert!(c.validate().unwrap_err().to_string().contains("sparsity 1.5"));
        c.sparsity = 0.5;
        c.patterns_per_set = 0;
        assert!(c.validate().unwrap_err().to_string().contains("patterns_per_set 0"));
    }
}
