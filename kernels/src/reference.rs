//! Scalar reference implementations with `f64` accumulation: the oracle every
//! optimised kernel is tested against. Slow on purpose; never used for timing.

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
