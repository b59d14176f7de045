//! Scalar reference implementations with `f64` accumulation: the oracle every
//! optimised kernel is tested against. Slow on purpose; never used for timing.

use crate::encoder::{Activation, LayerNormWeights};
use crate::matrix::Matrix;

/// `y = x · wᵀ` where `x` is `tokens x in` and `w` is `out x in` (zeros where pruned).
pub fn linear(x: &Matrix, w: &Matrix) -> Matrix {
    assert_eq!(x.cols(), w.cols(), "reference::linear: x has {} features, w expects {}", x.cols(), w.cols());
    Matrix::from_fn(x.rows(), w.rows(), |t, o| {
        let acc: f64 = x.row(t).iter().zip(w.row(o)).map(|(a, b)| *a as f64 * *b as f64).sum();
        acc as f32
    })
}

/// Tolerance check used by tests and self-tests: `|a - b| <= abs + rel * |b|`
/// element-wise. Returns (max absolute error, max relative error).
pub fn errors(actual: &Matrix, expected: &Matrix) -> (f64, f64) {
    assert_eq!(actual.shape(), expected.shape());
    let mut max_abs = 0.0f64;
    let mut max_rel = 0.0f64;
    for (a, e) in actual.as_slice().iter().zip(expected.as_slice()) {
        let d = (*a as f64 - *e as f64).abs();
        if d.is_nan() {
            return (f64::NAN, f64::NAN);
        }
        max_abs = max_abs.max(d);
        let denom = (*e as f64).abs().max(1e-3);
        max_rel = max_rel.max(d / denom);
    }
    (max_abs, max_rel)
}

// ---------------------------------------------------------------------------
// The encoder's pieces, in f64 (for `Encoder::reference_forward`)
// ---------------------------------------------------------------------------

pub(crate) fn gelu_f64(x: f64) -> f64 {
    let z = (x * std::f64::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + crate::encoder::ops::ERF_P * z);
    let poly = t
        * (crate::encoder::ops::ERF_A[0]
            + t * (crate::encoder::ops::ERF_A[1]
                + t * (crate::encoder::ops::ERF_A[2]
                    + t * (crate::encoder::ops::ERF_A[3] + t * crate::encoder::ops::ERF_A[4]))));
    let erf = (1.0 - poly * (-z * z).exp()).copysign(x);
    0.5 * x * (1.0 + erf)
}

pub(crate) fn reference_activation(activation: Activation, x: f64) -> f64 {
    match activation {
        Activation::Gelu => gelu_f64(x),
        Activation::Relu => x.max(0.0),
    }
}

pub(crate) fn reference_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    tokens: usize,
    d: usize,
    heads: usize,
    causal: bool,
) -> Vec<f64> {
    let dh = d / heads;
    let scale = 1.0 / (dh as f64).sqrt();
    let mut ctx = vec![0.0f64; tokens * d];
    let mut scores = vec![0.0f64; tokens];
    for h in 0..heads {
        let col = h * dh;
        for i in 0..tokens {
            // The additive mask: -inf above the diagonal, so exp gives exact zeros there.
            for j in 0..tokens {
                if causal && j > i {
                    scores[j] = f64::NEG_INFINITY;
                    continue;
                }
                scores[j] = (0..dh).map(|c| q[i * d + col + c] * k[j * d + col + c]).sum::<f64>() * scale;
            }
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores
                .iter_mut()
                .map(|s| {
                    *s = (*s - max).exp();
                    *s
                })
                .sum();
            for c in 0..dh {
                ctx[i * d + col + c] = (0..tokens).map(|j| scores[j] * v[j * d + col + c]).sum::<f64>() / sum;
            }
        }
    }
    ctx
}

pub(crate) fn reference_residual_norm(x: &Matrix, y: &[f64], norm: &LayerNormWeights, eps: f64) -> Matrix {
    let (tokens, d) = x.shape();
    let mut out = Matrix::zeros(tokens, d);
    for t in 0..tokens {
        let row: Vec<f64> = (0..d).map(|c| x.get(t, c) as f64 + y[t * d + c]).collect();
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for c in 0..d {
            out.set(t, c, ((row[c] - mean) * inv * norm.gamma[c] as f64 + norm.beta[c] as f64) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_hand_computed() {
        let x = Matrix::from_vec(1, 2, vec![1.0, 2.0]);
        let w = Matrix::from_vec(2, 2, vec![3.0, 4.0, -1.0, 0.5]);
        assert_eq!(linear(&x, &w).as_slice(), &[11.0, 0.0]);
    }
}
