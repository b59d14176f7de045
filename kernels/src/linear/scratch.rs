//! Per-thread scratch buffers of the sparse kernels, and the one helper that
//! hands out cache-line-aligned slices of them.
//!
//! Every buffer is a thread-local `Vec` that grows to the largest size asked
//! for and is then reused, so a warm `forward` allocates nothing. Rayon's
//! pool threads live for the process, so each worker allocates its scratch
//! once.

use std::cell::RefCell;

pub(crate) const CACHE_LINE_BYTES: usize = 64;

thread_local! {
    /// Feature-major activations `xᵀ` of the current `forward` call.
    pub(crate) static XT_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One strip's (or panel's) outputs before they go to `y`.
    pub(crate) static TILE_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `len` floats of `buf` starting on a cache line, growing `buf` if needed.
///
/// The micro-kernels load whole vectors from `xᵀ` rows and output tiles:
/// with the 16-byte alignment a large `Vec` gets from the allocator, a
/// 64-byte AVX-512 load would straddle two cache lines every time.
pub(crate) fn cache_aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    let slack = CACHE_LINE_BYTES / std::mem::size_of::<f32>();
    if buf.len() < len + slack {
        buf.resize(len + slack, 0.0);
    }
    let offset = buf.as_ptr().align_offset(CACHE_LINE_BYTES).min(slack);
    &mut buf[offset..offset + len]
}

/// Row stride (in floats) of a feature-major `xᵀ` buffer of `tokens`
/// columns for vectors of `lanes`: whole cache lines, and an odd number of
/// them.
///
/// Kernels read one block of tokens from many `xᵀ` rows. With 128 tokens a
/// plain stride is 512 bytes, so the same block of every row maps to the
/// same 8 of the 64 sets of a 32 KiB 8-way L1d: only 64 rows of a chunk fit,
/// whatever the chunk size. An odd number of lines spreads the rows over
/// every set (and whole lines keep vector loads from straddling two).
pub(crate) fn token_stride(tokens: usize, lanes: usize) -> usize {
    let floats_per_line = CACHE_LINE_BYTES / std::mem::size_of::<f32>();
    let stride = tokens.next_multiple_of(lanes);
    if stride < floats_per_line {
        return stride;
    }
    let lines = stride.div_ceil(floats_per_line);
    (lines | 1) * floats_per_line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_start_on_a_cache_line_and_have_the_length_asked_for() {
        let mut buf = Vec::new();
        for len in [0, 1, 17, 1000, 3] {
            let s = cache_aligned(&mut buf, len);
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % CACHE_LINE_BYTES, 0);
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
                assert!(s >= tokens && s % lanes == 0);
                if s >= 16 {
                    assert_eq!(s % 16, 0);
                    assert_eq!((s / 16) % 2, 1);
                }
            }
        }
    }
}
