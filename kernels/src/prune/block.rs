//! Block-structured pruning (BP), after the BP-for-BERT work RT3 builds on.
//!
//! The `out x in` weight matrix is cut into strips of `shape.rows` rows (the
//! last strip may be shorter). Inside a strip, each column segment of
//! `shape.cols` columns (`rows x cols` weights; the last segment may be
//! narrower) is kept or removed as a whole, by its L2 norm: the smallest go
//! first. What survives is, per strip, a set of whole input columns, which is
//! what the block-sparse kernel ([`crate::linear::block`]) packs and runs as
//! dense sub-GEMMs on gathered inputs.
//!
//! Counting rule, shared by the per-layer and the global variant: the target
//! is `round(sparsity * weights)` zeros; segments are removed in ascending
//! norm order (ties broken by position, so the result is deterministic), and
//! the number removed is the prefix length whose removed-weight count is
//! closest to the target (ties go to removing fewer). With equal segment
//! sizes this is `round(sparsity * segments)`, so the achieved sparsity is
//! within half a segment of the target. The per-layer variant applies the
//! rule in every strip separately (equal work per strip, which the kernel
//! likes); the global variant applies it once over all segments of all
//! layers, so layers with small weights end up sparser.

use crate::matrix::{Mask, Matrix};

/// The pruning block: strips of `rows` rows, split into column segments of
/// `cols` columns (usually 1: single columns of a strip).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BlockShape {
    /// Strip height (rows per strip).
    pub rows: usize,
    /// Column-segment width.
    pub cols: usize,
}

impl BlockShape {
    /// Strips of `rows` rows, single-column segments.
    pub fn strip(rows: usize) -> Self {
        Self { rows, cols: 1 }
    }

    fn validate(self, caller: &str) {
        assert!(
            self.rows > 0 && self.cols > 0,
            "{caller}: block shape {}x{} must be at least 1x1",
            self.rows,
            self.cols
        );
    }
}

/// One prunable column segment of a strip.
#[derive(Clone, Copy, Debug)]
struct Segment {
    /// Index of the layer (matrix) it belongs to, for the global variant.
    layer: usize,
    row0: usize,
    rows: usize,
    col0: usize,
    cols: usize,
    /// Squared L2 norm (same order as the norm, no square root needed).
    norm_sq: f64,
}

impl Segment {
    fn weights(&self) -> usize {
        self.rows * self.cols
    }
}

/// The segments of one strip of `w`, left to right.
fn strip_segments(w: &Matrix, layer: usize, row0: usize, shape: BlockShape) -> Vec<Segment> {
    let rows = shape.rows.min(w.rows() - row0);
    let mut segments = Vec::with_capacity(w.cols().div_ceil(shape.cols));
    for col0 in (0..w.cols()).step_by(shape.cols) {
        let cols = shape.cols.min(w.cols() - col0);
        let mut norm_sq = 0.0f64;
        for r in row0..row0 + rows {
            for v in &w.row(r)[col0..col0 + cols] {
                norm_sq += *v as f64 * *v as f64;
            }
        }
        segments.push(Segment { layer, row0, rows, col0, cols, norm_sq });
    }
    segments
}

/// Sorts `segments` by ascending norm (stable: ties keep their position) and
/// returns how many to remove: the prefix whose weight count is closest to
/// `round(sparsity * total weights)`, preferring fewer on a tie.
fn removal_count(segments: &mut [Segment], sparsity: f64) -> usize {
    segments.sort_by(|a, b| a.norm_sq.total_cmp(&b.norm_sq));
    let total: usize = segments.iter().map(Segment::weights).sum();
    let target = (sparsity.clamp(0.0, 1.0) * total as f64).round() as usize;
    let mut removed = 0usize;
    for (i, seg) in segments.iter().enumerate() {
        let next = removed + seg.weights();
        // Stop when taking this segment would overshoot more than stopping undershoots.
        if next.abs_diff(target) >= removed.abs_diff(target) {
            return i;
        }
        removed = next;
    }
    segments.len()
}

fn clear_segment(mask: &mut Mask, seg: &Segment) {
    for r in seg.row0..seg.row0 + seg.rows {
        for c in seg.col0..seg.col0 + seg.cols {
            mask.set(r, c, false);
        }
    }
}

fn check_sparsity(caller: &str, sparsity: f64) {
    assert!((0.0..=1.0).contains(&sparsity), "{caller}: sparsity {sparsity} is outside [0, 1]");
}

/// Per-layer BP: in every strip of `w`, removes the smallest-norm column
/// segments until `sparsity` of the strip's weights are zero (counting rule
/// in the module docs). Sparsity 0 keeps everything, 1 removes everything.
///
/// # Panics
/// When `sparsity` is outside `[0, 1]` or the shape has a zero dimension.
pub fn block_mask(w: &Matrix, shape: BlockShape, sparsity: f64) -> Mask {
    shape.validate("block_mask");
    check_sparsity("block_mask", sparsity);
    let mut mask = Mask::dense(w.rows(), w.cols());
    if w.cols() == 0 {
        return mask;
    }
    for row0 in (0..w.rows()).step_by(shape.rows) {
        let mut segments = strip_segments(w, 0, row0, shape);
        let remove = removal_count(&mut segments, sparsity);
        for seg in &segments[..remove] {
            clear_segment(&mut mask, seg);
        }
    }
    mask
}

/// Global BP: one threshold over the column segments of all layers together,
/// so `sparsity` holds for all weights combined while individual layers may
/// end up sparser or denser (RT3's BP model: 0 to 99.8 % per layer, 64 %
/// overall). Returns one mask per matrix, in order.
///
/// # Panics
/// When `sparsity` is outside `[0, 1]` or the shape has a zero dimension.
pub fn block_masks_global(ws: &[&Matrix], shape: BlockShape, sparsity: f64) -> Vec<Mask> {
    shape.validate("block_masks_global");
    check_sparsity("block_masks_global", sparsity);
    let mut segments = Vec::new();
    for (layer, w) in ws.iter().enumerate() {
        if w.cols() == 0 {
            continue;
        }
        for row0 in (0..w.rows()).step_by(shape.rows) {
            segments.extend(strip_segments(w, layer, row0, shape));
        }
    }
    let remove = removal_count(&mut segments, sparsity);
    let mut masks: Vec<Mask> = ws.iter().map(|w| Mask::dense(w.rows(), w.cols())).collect();
    for seg in &segments[..remove] {
        clear_segment(&mut masks[seg.layer], seg);
    }
    masks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2x4 matrix whose column norms inside the single 2-row strip are 1, 4, 2, 3 (col 0..3).
    fn two_row_strip() -> Matrix {
        Matrix::from_vec(2, 4, vec![1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 0.0, 0.0])
    }

    #[test]
    fn removes_smallest_columns_of_a_strip() {
        let mask = block_mask(&two_row_strip(), BlockShape::strip(2), 0.5);
        // Columns with norms 1 (col 0) and 2 (col 2) go.
        let keep: Vec<bool> = (0..4).map(|c| mask.get(0, c)).collect();
        assert_eq!(keep, vec![false, true, false, true]);
        assert_eq!((0..4).map(|c| mask.get(1, c)).collect::<Vec<_>>(), keep, "whole segments");
        assert_eq!(mask.sparsity(), 0.5);
    }

    #[test]
    fn rounding_is_to_the_nearest_segment() {
        let w = two_row_strip();
        // 0.3 * 8 weights = 2.4 -> 2 zeros = one 2-row column.
        assert_eq!(block_mask(&w, BlockShape::strip(2), 0.3).sparsity(), 0.25);
        // 0.4 * 8 = 3.2 -> 3 zeros; 1 column (2) and 2 columns (4) are both 1 away: fewer wins.
        assert_eq!(block_mask(&w, BlockShape::strip(2), 0.4).sparsity(), 0.25);
        assert_eq!(block_mask(&w, BlockShape::strip(2), 0.45).sparsity(), 0.5);
    }

    #[test]
    fn strips_are_pruned_independently_and_ragged_strip_is_fine() {
        // 3 rows, strips of 2: rows 0-1 are one strip, row 2 alone.
        let w = Matrix::from_vec(3, 2, vec![1.0, 0.0, 1.0, 0.0, 0.0, 5.0]);
        let mask = block_mask(&w, BlockShape::strip(2), 0.5);
        assert_eq!(mask.as_slice(), &[true, false, true, false, false, true]);
    }

    #[test]
    fn wide_segments_and_ragged_last_segment() {
        // One strip of 1 row, segments of 2 columns: [1, 1] [0.1, 0.1] [9].
        let w = Matrix::from_vec(1, 5, vec![1.0, 1.0, 0.1, 0.1, 9.0]);
        let mask = block_mask(&w, BlockShape { rows: 1, cols: 2 }, 0.4);
        assert_eq!(mask.as_slice(), &[true, true, false, false, true]);
        let mask = block_mask(&w, BlockShape { rows: 1, cols: 2 }, 0.8);
        assert_eq!(mask.as_slice(), &[false, false, false, false, true]);
    }

    #[test]
    fn extremes_keep_all_or_nothing() {
        let w = Matrix::random(10, 7, 3, 1.0);
        assert_eq!(block_mask(&w, BlockShape::strip(4), 0.0), Mask::dense(10, 7));
        assert_eq!(block_mask(&w, BlockShape::strip(4), 1.0).kept(), 0);
    }

    #[test]
    fn global_threshold_prunes_the_small_layer_first() {
        let small = Matrix::from_fn(4, 4, |_, _| 0.01);
        let large = Matrix::from_fn(4, 4, |_, _| 1.0);
        let masks = block_masks_global(&[&small, &large], BlockShape::strip(2), 0.5);
        assert_eq!(masks[0].kept(), 0);
        assert_eq!(masks[1].kept(), 16);
        // Per layer, each gets half.
        assert_eq!(block_mask(&small, BlockShape::strip(2), 0.5).sparsity(), 0.5);
    }

    #[test]
    #[should_panic(expected = "sparsity 1.5")]
    fn rejects_out_of_range_sparsity() {
        block_mask(&Matrix::zeros(2, 2), BlockShape::strip(1), 1.5);
    }
}
