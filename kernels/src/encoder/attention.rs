//! Multi-head scaled dot-product attention on feature-major `q`, `k`, `v`,
//! through the `gemm` crate with strided views (no copies).

use super::ops::softmax_rows;
use crate::linear::{split_range, SharedOut, Threads};
use crate::matrix::{Activations, Matrix};

pub(crate) fn parallelism(threads: Threads) -> gemm::Parallelism {
    match threads.count() {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// A row-major view into a slice: element `(r, c)` at `offset + r * row_stride + c * col_stride`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided {
    pub(crate) offset: usize,
    pub(crate) row_stride: usize,
    pub(crate) col_stride: usize,
}

impl Strided {
    fn last_index(self, rows: usize, cols: usize) -> usize {
        self.offset + (rows - 1) * self.row_stride + (cols - 1) * self.col_stride
    }
}

/// `dst (m x n) = scale · lhs (m x k) · rhs (k x n)` through the `gemm` crate,
/// with every view bounds-checked before the unsafe call.
#[allow(clippy::too_many_arguments)]
pub(crate) fn strided_gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_view: Strided,
    lhs: &[f32],
    lhs_view: Strided,
    rhs: &[f32],
    rhs_view: Strided,
    scale: f32,
    threads: Threads,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(dst_view.last_index(m, n) < dst.len(), "strided_gemm: dst view out of bounds");
    assert!(lhs_view.last_index(m, k) < lhs.len(), "strided_gemm: lhs view out of bounds");
    assert!(rhs_view.last_index(k, n) < rhs.len(), "strided_gemm: rhs view out of bounds");
    // SAFETY: the three views were checked to lie inside their slices; `dst`
    // is borrowed mutably, so it does not alias `lhs` or `rhs`. With
    // `read_dst = false` the destination is only written (alpha unused).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_view.offset),
            dst_view.col_stride as isize,
            dst_view.row_stride as isize,
            false,
            lhs.as_ptr().add(lhs_view.offset),
            lhs_view.col_stride as isize,
            lhs_view.row_stride as isize,
            rhs.as_ptr().add(rhs_view.offset),
            rhs_view.col_stride as isize,
            rhs_view.row_stride as isize,
            0.0,
            scale,
            false,
            false,
            false,
            parallelism(threads),
        );
    }
}

/// Multi-head scaled dot-product attention: `ctx` (feature-major, `d x
/// tokens`) from feature-major `q`, `k`, `v`. Per head, two GEMM calls:
/// `scores = q_h·k_hᵀ / sqrt(d_head)` (`tokens x tokens`, token-major; `q_h`
/// and `k_h` read through their strides, no copy) and
/// `ctxᵀ_h = v_hᵀ·scoresᵀ` written straight into the head's rows of `ctx`.
/// `causal`: the square subsequent mask, applied in the softmax (row `i`
/// over columns `0..=i`, exact zeros after: what adding -inf before `exp`
/// gives, without `exp_f32`'s clamp leaving 1e-38s).
///
/// Threads split the heads (each head's GEMMs are small: 128 x 128 x 64 for
/// DistilBERT, 35 x 35 x 200 for RT3's model, too small to split inside);
/// every thread but the caller uses its own scores buffer. `scores` holds the
/// last head's probabilities when one thread ran them all.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: &Activations,
    k: &Activations,
    v: &Activations,
    heads: usize,
    causal: bool,
    scores: &mut Matrix,
    ctx: &mut Activations,
    threads: Threads,
) {
    let (d, tokens) = (q.features(), q.tokens());
    ctx.reshape(d, tokens);
    let cs = ctx.stride();
    let ctx_len = ctx.as_padded().len();
    let out = SharedOut(ctx.as_padded_mut().as_mut_ptr());
    if threads.count() == 1 {
        // SAFETY: one part owns all of `ctx`.
        let ctx = unsafe { std::slice::from_raw_parts_mut(out.ptr(), ctx_len) };
        for h in 0..heads {
            head(q, k, v, heads, h, causal, scores, ctx, cs);
        }
        return;
    }
    split_range(heads, threads, &|range| {
        SCORES.with_borrow_mut(|scores| {
            // SAFETY: heads write disjoint rows of `ctx` (`dh` rows each), borrowed mutably
            // until every part is done; each head reads only its own rows.
            let ctx = unsafe { std::slice::from_raw_parts_mut(out.ptr(), ctx_len) };
            for h in range {
                head(q, k, v, heads, h, causal, scores, ctx, cs);
            }
        })
    });
}

std::thread_local! {
    /// A pool thread's scores for the heads it runs.
    static SCORES: std::cell::RefCell<Matrix> = std::cell::RefCell::new(Matrix::zeros(0, 0));
}

/// Head `h` of [`attention`] into its rows of `ctx` (row stride `cs`).
#[allow(clippy::too_many_arguments)]
fn head(
    q: &Activations,
    k: &Activations,
    v: &Activations,
    heads: usize,
    h: usize,
    causal: bool,
    scores: &mut Matrix,
    ctx: &mut [f32],
    cs: usize,
) {
    let (d, tokens) = (q.features(), q.tokens());
    let dh = d / heads;
    scores.reshape_uninit(tokens, tokens);
    let scale = 1.0 / (dh as f32).sqrt();
    let (qs, ks, vs) = (q.stride(), k.stride(), v.stride());
    let row0 = h * dh;
    strided_gemm(
        tokens,
        tokens,
        dh,
        scores.as_mut_slice(),
        Strided { offset: 0, row_stride: tokens, col_stride: 1 },
        q.as_padded(),
        // lhs(i, f) = q[row0 + f][i]
        Strided { offset: row0 * qs, row_stride: 1, col_stride: qs },
        k.as_padded(),
        // rhs(f, j) = k[row0 + f][j]
        Strided { offset: row0 * ks, row_stride: ks, col_stride: 1 },
        scale,
        Threads::One,
    );
    softmax_rows(scores.as_mut_slice(), tokens, causal);
    strided_gemm(
        dh,
        tokens,
        tokens,
        ctx,
        Strided { offset: row0 * cs, row_stride: cs, col_stride: 1 },
        v.as_padded(),
        // lhs(f, j) = v[row0 + f][j]
        Strided { offset: row0 * vs, row_stride: vs, col_stride: 1 },
        scores.as_slice(),
        // rhs(j, i) = scores[i][j]
        Strided { offset: 0, row_stride: 1, col_stride: tokens },
        1.0,
        Threads::One,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::reference_attention;

    #[test]
    fn attention_matches_the_f64_loops() {
        let (tokens, d, heads) = (7, 12, 3);
        let q = Matrix::random(tokens, d, 1, 1.0);
        let k = Matrix::random(tokens, d, 2, 1.0);
        let v = Matrix::random(tokens, d, 3, 1.0);
        let fm = Activations::from_token_major;
        let mut scores = Matrix::zeros(0, 0);
        let mut ctx = Activations::default();
        let f = |m: &Matrix| m.as_slice().iter().map(|v| *v as f64).collect::<Vec<_>>();
        for causal in [false, true] {
            attention(&fm(&q), &fm(&k), &fm(&v), heads, causal, &mut scores, &mut ctx, Threads::One);
            let want = reference_attention(&f(&q), &f(&k), &f(&v), tokens, d, heads, causal);
            for (g, w) in ctx.to_token_major().as_slice().iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "causal {causal}: {g} vs {w}");
            }
        }
        // Heads split over threads: the same context.
        let mut split = Activations::default();
        attention(&fm(&q), &fm(&k), &fm(&v), heads, false, &mut scores, &mut split, Threads::N(2));
        attention(&fm(&q), &fm(&k), &fm(&v), heads, false, &mut scores, &mut ctx, Threads::One);
        assert_eq!(split, ctx);
        // Causal: the first token attends only to itself, so its context is its own value.
        attention(&fm(&q), &fm(&k), &fm(&v), heads, true, &mut scores, &mut ctx, Threads::One);
        assert_eq!(ctx.to_token_major().row(0), v.row(0));
        assert!(scores.row(0)[1..].iter().all(|s| *s == 0.0));
    }
}
