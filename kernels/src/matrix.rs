//! Plain row-major `f32` matrices, pruning masks, and the deterministic
//! random numbers every model and test input is built from.
//!
//! Random values are made from integers only (ChaCha8 words scaled by a power
//! of two), never through `sin`/`ln`, so a seed gives bit-identical weights on
//! x86-64 glibc and aarch64 musl alike.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A dense row-major matrix of `f32`: element `(r, c)` is `data[r * cols + c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    /// A `rows x cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// Wraps `data` (row-major). Panics when the length is not `rows * cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "Matrix::from_vec: {rows}x{cols} needs {} values, got {}",
            rows * cols,
            data.len()
        );
        Self { rows, cols, data }
    }

    /// Builds a matrix from a function of `(row, col)`.
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f32) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                data.push(f(r, c));
            }
        }
        Self { rows, cols, data }
    }

    /// Uniform values in `[-scale, scale)` from `seed`; identical on every architecture.
    pub fn random(rows: usize, cols: usize, seed: u64, scale: f32) -> Self {
        let mut rng = SeededUniform::new(seed);
        let data = (0..rows * cols).map(|_| rng.next_symmetric() * scale).collect();
        Self { rows, cols, data }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    #[inline]
    pub fn get(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.cols + c]
    }

    #[inline]
    pub fn set(&mut self, r: usize, c: usize, v: f32) {
        self.data[r * self.cols + c] = v;
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// The transpose, as a new matrix.
    pub fn transposed(&self) -> Matrix {
        let mut out = Matrix::zeros(self.cols, self.rows);
        transpose_into(&self.data, self.rows, self.cols, &mut out.data);
        out
    }

    /// Resizes in place to `rows x cols` (contents unspecified afterwards);
    /// reuses the allocation when it is large enough.
    pub fn reshape_uninit(&mut self, rows: usize, cols: usize) {
        self.rows = rows;
        self.cols = cols;
        self.data.resize(rows * cols, 0.0);
    }

    /// Fraction of exact zeros.
    pub fn zero_fraction(&self) -> f64 {
        if self.data.is_empty() {
            return 0.0;
        }
        self.data.iter().filter(|v| **v == 0.0).count() as f64 / self.data.len() as f64
    }

    /// Largest absolute element-wise difference (NaN if shapes differ or a value is NaN).
    pub fn max_abs_diff(&self, other: &Matrix) -> f32 {
        if self.shape() != other.shape() {
            return f32::NAN;
        }
        self.data.iter().zip(&other.data).map(|(a, b)| (a - b).abs()).fold(0.0, |m, d| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
    }

    /// Sets every element where `mask` drops the weight to zero.
    pub fn apply_mask(&mut self, mask: &Mask) {
        assert_eq!(self.shape(), mask.shape(), "apply_mask: shape mismatch");
        for (v, keep) in self.data.iter_mut().zip(&mask.keep) {
            if !*keep {
                *v = 0.0;
            }
        }
    }
}

/// Cache-blocked transpose of a `rows x cols` row-major slice into `out` (`cols x rows`).
pub fn transpose_into(src: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    assert_eq!(src.len(), rows * cols);
    assert_eq!(out.len(), rows * cols);
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

/// Feature-major activations: row `f` holds feature `f` of every token, the
/// layout the sparse kernels compute in (`yᵀ = w · xᵀ`, vectorised over
/// tokens) and the encoder keeps between its layers, so no layer transposes.
///
/// Rows are [`Activations::stride`] floats apart: the token count rounded up
/// to whole cache lines, an odd number of them (see
/// [`token_stride`]), and the first row starts on a cache line. The
/// padding after each row's `tokens` values is part of the buffer: kernels
/// read and write whole vectors there. It always holds finite values (zero
/// when allocated, kernel outputs after), and nothing ever mixes a padding
/// column into a real token's values.
#[derive(Clone, Debug, Default)]
pub struct Activations {
    features: usize,
    tokens: usize,
    stride: usize,
    /// Floats before the first row, so it starts on a cache line.
    offset: usize,
    data: Vec<f32>,
}

/// Floats per cache line.
const LINE_FLOATS: usize = 16;

/// Row stride (in floats) of a feature-major buffer of `tokens` columns read
/// in vectors of `lanes`: whole vectors, and from one cache line on, whole
/// cache lines and an odd number of them.
///
/// Kernels read one block of tokens from many rows. With 128 tokens a plain
/// stride is 512 bytes, so the same block of every row maps to the same 8 of
/// the 64 sets of a 32 KiB 8-way L1d: only 64 rows fit, however few the
/// kernel meant to keep there. An odd number of lines spreads the rows over
/// every set (and whole lines keep vector loads from straddling two).
pub fn token_stride(tokens: usize, lanes: usize) -> usize {
    let stride = tokens.next_multiple_of(lanes);
    if stride < LINE_FLOATS {
        return stride;
    }
    (stride.div_ceil(LINE_FLOATS) | 1) * LINE_FLOATS
}

impl Activations {
    /// Zeros, `features x tokens`.
    pub fn zeros(features: usize, tokens: usize) -> Self {
        let mut a = Self::default();
        a.reshape(features, tokens);
        a
    }

    /// The transpose of token-major `x` (`tokens x features`).
    pub fn from_token_major(x: &Matrix) -> Self {
        let mut a = Self::default();
        a.set_from_token_major(x);
        a
    }

    /// Resizes to `features x tokens`, reusing the allocation. Values are
    /// unspecified afterwards but finite.
    pub fn reshape(&mut self, features: usize, tokens: usize) {
        // Every backend's lanes divide a cache line, so whole lines are whole vectors for all.
        self.stride = if tokens == 0 { 0 } else { token_stride(tokens, LINE_FLOATS) };
        self.features = features;
        self.tokens = tokens;
        let len = features * self.stride;
        if self.data.len() < len + LINE_FLOATS {
            self.data.resize(len + LINE_FLOATS, 0.0);
        }
        self.offset = self.data.as_ptr().align_offset(LINE_FLOATS * 4).min(LINE_FLOATS);
    }

    /// Overwrites `self` with the transpose of token-major `x` (`tokens x features`).
    pub fn set_from_token_major(&mut self, x: &Matrix) {
        let (tokens, features) = x.shape();
        self.reshape(features, tokens);
        let stride = self.stride;
        crate::simd::transpose_strided(x.as_slice(), tokens, features, features, self.as_padded_mut(), stride);
    }

    /// Writes the token-major transpose (`tokens x features`) into `out`.
    pub fn write_token_major(&self, out: &mut Matrix) {
        out.reshape_uninit(self.tokens, self.features);
        let stride = self.stride;
        crate::simd::transpose_strided(
            self.as_padded(),
            self.features,
            self.tokens,
            stride,
            out.as_mut_slice(),
            self.features,
        );
    }

    /// The token-major transpose, `tokens x features`.
    pub fn to_token_major(&self) -> Matrix {
        let mut out = Matrix::zeros(0, 0);
        self.write_token_major(&mut out);
        out
    }

    pub fn features(&self) -> usize {
        self.features
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Floats from one row to the next (`>= tokens`).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Feature `f` of every token.
    pub fn row(&self, f: usize) -> &[f32] {
        &self.as_padded()[f * self.stride..f * self.stride + self.tokens]
    }

    pub fn row_mut(&mut self, f: usize) -> &mut [f32] {
        let (stride, tokens) = (self.stride, self.tokens);
        &mut self.as_padded_mut()[f * stride..f * stride + tokens]
    }

    /// All rows with their padding: `features * stride` floats.
    pub fn as_padded(&self) -> &[f32] {
        &self.data[self.offset..self.offset + self.features * self.stride]
    }

    pub fn as_padded_mut(&mut self) -> &mut [f32] {
        let len = self.features * self.stride;
        &mut self.data[self.offset..self.offset + len]
    }

    /// Value of feature `f` at token `t`.
    pub fn get(&self, f: usize, t: usize) -> f32 {
        assert!(t < self.tokens, "Activations::get: token {t} of {}", self.tokens);
        self.as_padded()[f * self.stride + t]
    }
}

impl PartialEq for Activations {
    /// Same shape and the same values in every real (non-padding) position.
    fn eq(&self, other: &Self) -> bool {
        (self.features, self.tokens) == (other.features, other.tokens)
            && (0..self.features).all(|f| self.row(f) == other.row(f))
    }
}

/// Which weights of a matrix survive pruning (`true` = kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    rows: usize,
    cols: usize,
    keep: Vec<bool>,
}

impl Mask {
    /// Keeps everything.
    pub fn dense(rows: usize, cols: usize) -> Self {
        Self { rows, cols, keep: vec![true; rows * cols] }
    }

    /// Keeps exactly the non-zero elements of `w`.
    pub fn nonzeros_of(w: &Matrix) -> Self {
        Self { rows: w.rows, cols: w.cols, keep: w.data.iter().map(|v| *v != 0.0).collect() }
    }

    pub fn from_vec(rows: usize, cols: usize, keep: Vec<bool>) -> Self {
        assert_eq!(keep.len(), rows * cols);
        Self { rows, cols, keep }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    #[inline]
    pub fn get(&self, r: usize, c: usize) -> bool {
        self.keep[r * self.cols + c]
    }

    #[inline]
    pub fn set(&mut self, r: usize, c: usize, keep: bool) {
        self.keep[r * self.cols + c] = keep;
    }

    pub fn as_slice(&self) -> &[bool] {
        &self.keep
    }

    pub fn kept(&self) -> usize {
        self.keep.iter().filter(|k| **k).count()
    }

    /// The columns any of `rows` keeps, ascending (the rows OR-ed a row at a time: a BP
    /// strip's kept columns, read at every cold switch).
    pub fn columns_kept_by(&self, rows: std::ops::Range<usize>) -> Vec<usize> {
        let mut any = vec![false; self.cols];
        for row in self.keep[rows.start * self.cols..rows.end * self.cols].chunks_exact(self.cols.max(1)) {
            any.iter_mut().zip(row).for_each(|(a, &k)| *a |= k);
        }
        (0..self.cols).filter(|&c| any[c]).collect()
    }

    /// Fraction of dropped positions.
    pub fn sparsity(&self) -> f64 {
        if self.keep.is_empty() {
            return 0.0;
        }
        1.0 - self.kept() as f64 / self.keep.len() as f64
    }

    /// Element-wise AND: kept only where both keep.
    pub fn and(&self, other: &Mask) -> Mask {
        assert_eq!(self.shape(), other.shape(), "Mask::and: shape mismatch");
        Mask {
            rows: self.rows,
            cols: self.cols,
            keep: self.keep.iter().zip(&other.keep).map(|(a, b)| *a && *b).collect(),
        }
    }
}

/// A [`Mask`] stored one bit a position: what a model keeps of every
/// variant's mask, so self-tests can check kernels against the dense weights
/// without trusting the packing (DistilBERT's 42.5 M linear weights: 5.3 MB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitMask {
    rows: usize,
    cols: usize,
    bits: Vec<u64>,
}

impl BitMask {
    pub fn from_mask(mask: &Mask) -> Self {
        // 64 flags to a word, bit i of word j for flag 64j + i (branch-free: a cold switch
        // builds one per layer).
        let bits = mask
            .keep
            .chunks(64)
            .map(|flags| flags.iter().enumerate().fold(0u64, |word, (i, &k)| word | u64::from(k) << i))
            .collect();
        Self { rows: mask.rows, cols: mask.cols, bits }
    }

    pub fn to_mask(&self) -> Mask {
        Mask { rows: self.rows, cols: self.cols, keep: (0..self.rows * self.cols).map(|i| self.bit(i)).collect() }
    }

    fn bit(&self, i: usize) -> bool {
        self.bits[i / 64] >> (i % 64) & 1 == 1
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn get(&self, r: usize, c: usize) -> bool {
        assert!(r < self.rows && c < self.cols, "BitMask::get: ({r}, {c}) outside {}x{}", self.rows, self.cols);
        self.bit(r * self.cols + c)
    }

    pub fn kept(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(self.bits.as_slice())
    }

    /// `w` with every position this mask drops set to zero.
    pub fn masked(&self, w: &Matrix) -> Matrix {
        assert_eq!(w.shape(), self.shape(), "BitMask::masked: weights and mask shapes differ");
        Matrix {
            rows: w.rows,
            cols: w.cols,
            data: w.data.iter().enumerate().map(|(i, v)| if self.bit(i) { *v } else { 0.0 }).collect(),
        }
    }
}

/// Deterministic uniform random numbers from a seed (ChaCha8), identical on every platform.
#[derive(Debug, Clone)]
pub struct SeededUniform {
    rng: ChaCha8Rng,
}

impl SeededUniform {
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// Uniform in `[0, 1)` with 24 random bits (exact in `f32`).
    pub fn next_unit(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in `[-1, 1)`.
    pub fn next_symmetric(&mut self) -> f32 {
        self.next_unit() * 2.0 - 1.0
    }

    /// Uniform integer in `0..n` (n > 0), by rejection so it is unbiased.
    pub fn next_below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        let n64 = n as u64;
        let zone = u64::MAX - (u64::MAX % n64);
        loop {
            let v = self.rng.next_u64();
            if v < zone {
                return (v % n64) as usize;
            }
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_round_trips_odd_shapes() {
        let m = Matrix::random(37, 70, 3, 1.0);
        let t = m.transposed();
        assert_eq!(t.shape(), (70, 37));
        assert_eq!(t.get(5, 11), m.get(11, 5));
        assert_eq!(t.transposed(), m);
    }

    #[test]
    fn random_is_deterministic_and_bounded() {
        let a = Matrix::random(8, 9, 42, 0.5);
        let b = Matrix::random(8, 9, 42, 0.5);
        let c = Matrix::random(8, 9, 43, 0.5);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.as_slice().iter().all(|v| (-0.5..0.5).contains(v)));
    }

    #[test]
    fn random_values_are_pinned_across_platforms() {
        const PINNED_BITS: [u32; 3] = [3208139130, 3207542106, 3206728110];
        // These exact bits must be the same on x86-64 and aarch64 (checked under qemu in CI).
        let m = Matrix::random(1, 3, 7, 1.0);
        let bits: Vec<u32> = m.as_slice().iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, PINNED_BITS.to_vec(), "values {:?}", m.as_slice());
    }

    #[test]
    fn mask_sparsity_and_apply() {
        let mut w = Matrix::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]);
        let mask = Mask::from_vec(2, 2, vec![true, false, false, true]);
        assert_eq!(mask.sparsity(), 0.5);
        w.apply_mask(&mask);
        assert_eq!(w.as_slice(), &[1.0, 0.0, 0.0, 4.0]);
        assert_eq!(Mask::nonzeros_of(&w), mask);
    }

    #[test]
    fn activations_round_trip_with_aligned_padded_rows() {
        for (tokens, features) in [(1, 3), (35, 20), (128, 7), (0, 4)] {
            let x = Matrix::random(tokens, features, 9, 1.0);
            let a = Activations::from_token_major(&x);
            assert_eq!((a.features(), a.tokens()), (features, tokens));
            assert!(a.stride() >= tokens && a.stride().is_multiple_of(16));
            if tokens > 0 {
                assert_eq!(a.as_padded().as_ptr() as usize % 64, 0);
                assert_eq!(a.get(features - 1, tokens - 1), x.get(tokens - 1, features - 1));
            }
            assert_eq!(a.to_token_major(), x);
        }
    }

    #[test]
    fn token_strides_are_whole_vectors_and_an_odd_number_of_lines() {
        assert_eq!(token_stride(128, 8), 144, "512 bytes would alias in L1: 9 lines");
        assert_eq!(token_stride(35, 8), 48);
        assert_eq!(token_stride(5, 8), 8, "shorter than a line: just whole vectors");
        assert_eq!(token_stride(1, 4), 4);
        for tokens in 1..300 {
            for lanes in [4, 8, 16] {
                let s = token_stride(tokens, lanes);
                assert!(s >= tokens && s.is_multiple_of(lanes));
                if s >= 16 {
                    assert_eq!(s % 16, 0);
                    assert_eq!((s / 16) % 2, 1);
                }
            }
        }
    }

    #[test]
    fn next_below_stays_in_range() {
        let mut u = SeededUniform::new(1);
        for n in 1..50 {
            assert!(u.next_below(n) < n);
        }
    }

    #[test]
    fn bit_mask_keeps_every_flag_across_word_boundaries() {
        // 7 x 19 = 133 flags: two whole words and a partial third.
        let keep: Vec<bool> = (0..7 * 19).map(|i| (i * 7 + i / 5) % 3 == 0).collect();
        let mask = Mask::from_vec(7, 19, keep.clone());
        let bits = BitMask::from_mask(&mask);
        assert_eq!(bits.to_mask(), mask);
        assert_eq!(bits.kept(), keep.iter().filter(|&&k| k).count());
        for (i, &k) in keep.iter().enumerate() {
            assert_eq!(bits.get(i / 19, i % 19), k, "flag {i}");
        }
    }
}
