//! The element-wise and per-token pieces of a layer: exp, GELU and ReLU,
//! softmax, and the residual LayerNorm, on feature-major [`Activations`].
//!
//! Each loop is written once in plain Rust and compiled three times for
//! x86-64 (`dispatch_isa!`), so it vectorises with AVX-512 or AVX2 where the
//! CPU has them and stays deterministic (fixed summation orders, no libm).

use super::config::Activation;
use super::weights::LayerNormWeights;
use crate::matrix::{Activations, Matrix};

/// Compiles `$generic` again with AVX-512 and with AVX2 and FMA enabled and
/// picks the widest copy the CPU runs (baseline x86-64 is SSE2, so otherwise
/// the loops would run 4 lanes wide). LLVM never fuses a separate multiply
/// and add into an FMA on its own, so every copy gives the same bits.
/// aarch64 always has NEON and needs no second copy.
///
/// AVX-512 doubles the lanes and, with 32 registers, keeps GELU's and exp's
/// constants in registers (with AVX2's 16 it reloads them every iteration).
/// Measured on Zen 4, 1 thread: GELU on 128-value rows in L1 (as the FFN's
/// epilogue runs it) took 1.20 ns a value with the AVX2 copy and 0.67 ns
/// with this one; in the whole `distilbert` encoder at BP 64 % strips + PP
/// 87.5 % (`perf record -e cpu-clock`) GELU's share of the time fell from
/// 9.7 % to 5.8 % and softmax's from 3.1 % to 2.0 %. (Unrolling GELU over
/// blocks of 64 values measured the same as the plain loop.)
///
/// `copies NAME` names the module holding the copies; for tests,
/// `NAME::available()` lists every copy this CPU runs, so each can be
/// compared with the baseline.
macro_rules! dispatch_isa {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) => $generic:ident, copies $copies:ident) => {
        /// The vector copies of the function of that name (see `dispatch_isa!`).
        mod $copies {
            /// Whether this CPU runs [`avx2`] (and, with AVX-512F as well, [`avx512`]).
            #[cfg(target_arch = "x86_64")]
            pub(super) fn has_avx2() -> bool {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }

            #[cfg(target_arch = "x86_64")]
            pub(super) fn has_avx512() -> bool {
                has_avx2() && std::is_x86_feature_detected!("avx512f")
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            pub(super) unsafe fn avx512($($arg: $ty),*) {
                super::$generic($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn avx2($($arg: $ty),*) {
                super::$generic($($arg),*)
            }

            /// Every copy this CPU runs, widest first, then the baseline.
            #[cfg(test)]
            #[allow(clippy::vec_init_then_push)] // the pushes are in a `cfg` block
            pub(super) fn available() -> Vec<(&'static str, unsafe fn($($ty),*))> {
                unsafe fn baseline($($arg: $ty),*) {
                    super::$generic($($arg),*)
                }
                #[allow(unused_mut)]
                let mut out: Vec<(&'static str, unsafe fn($($ty),*))> = Vec::new();
                #[cfg(target_arch = "x86_64")]
                {
                    if has_avx512() {
                        out.push(("avx512", avx512));
                    }
                    if has_avx2() {
                        out.push(("avx2", avx2));
                    }
                }
                out.push(("baseline", baseline));
                out
            }
        }

        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if $copies::has_avx512() {
                    // SAFETY: the CPU supports the features `avx512` was compiled for.
                    return unsafe { $copies::avx512($($arg),*) };
                }
                if $copies::has_avx2() {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { $copies::avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

/// Lanes of the partial sums below: enough for one AVX2 register, two NEON ones.
const LANES: usize = 8;

/// Sum in a fixed order with `LANES` partial sums, so it vectorises (a plain
/// `f32` fold cannot be reordered by the compiler) and stays deterministic.
#[inline(always)]
pub(crate) fn lane_sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
pub(crate) fn lane_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// `x = LayerNorm(x + residual)` per token (column) of feature-major `x`
/// (`residual`: `None` for a plain LayerNorm): two-pass mean and biased
/// variance over the features, as PyTorch's `LayerNorm`, vectorised over
/// tokens (each feature row adds into per-token sums).
pub fn residual_layer_norm(x: &mut Activations, residual: Option<&Activations>, norm: &LayerNormWeights, eps: f32) {
    if let Some(r) = residual {
        assert_eq!((r.features(), r.tokens()), (x.features(), x.tokens()), "residual_layer_norm: shapes differ");
    }
    let (features, tokens, stride) = (x.features(), x.tokens(), x.stride());
    let r_stride = residual.map_or(0, |r| r.stride());
    let residual = residual.map(|r| r.as_padded());
    NORM_SCRATCH.with_borrow_mut(|sums| {
        sums.clear();
        sums.resize(2 * tokens, 0.0);
        let (mean, inv) = sums.split_at_mut(tokens);
        layer_norm_columns(
            x.as_padded_mut(),
            features,
            tokens,
            stride,
            residual.unwrap_or(&[]),
            r_stride,
            &norm.gamma,
            &norm.beta,
            eps,
            mean,
            inv,
        );
    });
}

std::thread_local! {
    /// Per-token sums of [`residual_layer_norm`], reused.
    static NORM_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

dispatch_isa! {
    fn layer_norm_columns(
        x: &mut [f32],
        features: usize,
        tokens: usize,
        stride: usize,
        residual: &[f32],
        r_stride: usize,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        mean: &mut [f32],
        inv: &mut [f32]
    ) => layer_norm_columns_generic, copies layer_norm_columns_copies
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn layer_norm_columns_generic(
    x: &mut [f32],
    features: usize,
    tokens: usize,
    stride: usize,
    residual: &[f32],
    r_stride: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    mean: &mut [f32],
    inv: &mut [f32],
) {
    let n = features as f32;
    mean.fill(0.0);
    for f in 0..features {
        let row = &mut x[f * stride..f * stride + tokens];
        if !residual.is_empty() {
            for (v, r) in row.iter_mut().zip(&residual[f * r_stride..f * r_stride + tokens]) {
                *v += r;
            }
        }
        for (m, v) in mean.iter_mut().zip(row.iter()) {
            *m += v;
        }
    }
    for m in mean.iter_mut() {
        *m /= n;
    }
    inv.fill(0.0);
    for f in 0..features {
        let row = &x[f * stride..f * stride + tokens];
        for ((s, v), m) in inv.iter_mut().zip(row).zip(mean.iter()) {
            *s += (v - m) * (v - m);
        }
    }
    for s in inv.iter_mut() {
        *s = 1.0 / (*s / n + eps).sqrt();
    }
    for f in 0..features {
        let (g, b) = (gamma[f], beta[f]);
        let row = &mut x[f * stride..f * stride + tokens];
        for ((v, m), i) in row.iter_mut().zip(mean.iter()).zip(inv.iter()) {
            *v = (*v - m) * i * g + b;
        }
    }
}

dispatch_isa! {
    /// Softmax of every row (`cols` wide) in place, max-subtracted; with
    /// `causal`, row `i` over its first `i + 1` entries and zero after them.
    pub(crate) fn softmax_rows(scores: &mut [f32], cols: usize, causal: bool) => softmax_rows_generic,
        copies softmax_rows_copies
}

#[inline(always)]
fn softmax_rows_generic(scores: &mut [f32], cols: usize, causal: bool) {
    for (i, full) in scores.chunks_exact_mut(cols).enumerate() {
        let valid = if causal { (i + 1).min(cols) } else { cols };
        let (row, masked) = full.split_at_mut(valid);
        masked.fill(0.0);
        let max = lane_max(row);
        for v in row.iter_mut() {
            *v = exp_f32(*v - max);
        }
        let inv = 1.0 / lane_sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// `e^x` in `f32` without libm, so softmax and GELU vectorise and give the
/// same bits with glibc and musl: Cody-Waite reduction `x = n·ln2 + r`, the
/// Cephes `expf` minimax polynomial on `|r| <= ln2/2` (about 1 ulp), and `2^n`
/// built in the exponent bits. `n` is rounded with the 1.5·2²³ trick instead
/// of `round()`, which needs SSE4.1 to vectorise on baseline x86-64. Inputs
/// are clamped to `[-87.3, 88.3]`, where the result is a normal float.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // `shifted` lies in [2^23, 2^24), where the ulp is 1: its low mantissa
    // bits are `n` itself, read without a float-to-int conversion (Rust's
    // saturating `as i32` does not vectorise).
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// Abramowitz & Stegun 7.1.26 coefficients: `erf(x) = 1 - t·P(t)·e^{-x²}`,
/// `t = 1 / (1 + p·x)` for `x >= 0`, absolute error below 1.5e-7.
pub(crate) const ERF_P: f64 = 0.327_591_1;
pub(crate) const ERF_A: [f64; 5] = [0.254_829_592, -0.284_496_736, 1.421_413_741, -1.453_152_027, 1.061_405_429];

/// The feed-forward nonlinearity of `activation`, in place.
pub fn activate(activation: Activation, values: &mut [f32]) {
    match activation {
        Activation::Gelu => gelu_in_place(values),
        Activation::Relu => relu_in_place(values),
    }
}

/// `max(x, 0)` (PyTorch's `F.relu`; NaN stays NaN, -0.0 becomes 0).
pub fn relu_in_place(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = if *v > 0.0 || v.is_nan() { *v } else { 0.0 };
    }
}

/// GELU as BERT and DistilBERT use it (PyTorch's default, exact form):
/// `0.5·x·(1 + erf(x/√2))`, with erf from A&S 7.1.26 (|error| < 1.5e-7, below
/// `f32` resolution of the result) over [`exp_f32`], so it vectorises and is
/// deterministic. Chosen over the tanh approximation because the checkpoints
/// were trained with the exact form.
pub fn gelu_in_place(values: &mut [f32]) {
    gelu_dispatch(values)
}

dispatch_isa! {
    fn gelu_dispatch(values: &mut [f32]) => gelu_generic, copies gelu_copies
}

#[inline(always)]
fn gelu_generic(values: &mut [f32]) {
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let a = ERF_A.map(|c| c as f32);
    let p = ERF_P as f32;
    for v in values.iter_mut() {
        let x = *v;
        let z = (x * FRAC_1_SQRT_2).abs();
        let t = 1.0 / (1.0 + p * z);
        let poly = t * (a[0] + t * (a[1] + t * (a[2] + t * (a[3] + t * a[4]))));
        let erf_abs = 1.0 - poly * exp_f32(-z * z);
        let erf = erf_abs.copysign(x);
        *v = 0.5 * x * (1.0 + erf);
    }
}

/// `log_softmax` of every row, as the word language model's forward ends
/// (`F.log_softmax(output, dim=-1)`): `x - max - ln(sum(exp(x - max)))`,
/// accumulated in `f64`.
pub fn log_softmax_rows(logits: &Matrix) -> Matrix {
    let mut out = logits.clone();
    let cols = out.cols();
    if cols == 0 {
        return out;
    }
    for row in out.as_mut_slice().chunks_exact_mut(cols) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = row.iter().map(|v| (*v as f64 - max).exp()).sum::<f64>().ln() + max;
        for v in row.iter_mut() {
            *v = (*v as f64 - lse) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::{Preset, LAYER_NORM_EPS, TORCH_LAYER_NORM_EPS};
    use crate::reference::{gelu_f64, reference_activation, reference_residual_norm};

    #[test]
    fn exp_f32_is_close_to_libm_over_the_softmax_range() {
        let mut worst = 0.0f64;
        for i in -8000..=800 {
            let x = i as f32 * 0.01;
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(-1000.0) < 1e-37);
    }

    #[test]
    fn gelu_matches_the_f64_form() {
        let mut xs: Vec<f32> = (-600..=600).map(|i| i as f32 * 0.01).collect();
        let want: Vec<f64> = xs.iter().map(|x| gelu_f64(*x as f64)).collect();
        gelu_in_place(&mut xs);
        for (g, w) in xs.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 2e-6, "gelu {g} vs {w}");
        }
        // Known values of the exact GELU: GELU(1) = 0.841344746, GELU(-1) = -0.158655254.
        assert!((gelu_f64(1.0) - 0.841_344_746).abs() < 1e-6);
        assert!((gelu_f64(-1.0) + 0.158_655_254).abs() < 1e-6);
    }

    /// Every copy `dispatch_isa!` compiles that this CPU runs (AVX-512, AVX2, baseline) gives
    /// the same bits (no FMA contraction, fixed summation orders), and the dispatcher picks one
    /// of them: outputs and checksums do not depend on the ISA.
    #[test]
    fn every_dispatched_copy_gives_the_baseline_bits() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // Odd lengths: vector bodies and scalar tails.
        let xs: Vec<f32> = (0..1201).map(|i| ((i * 7919) % 2003) as f32 * 0.01 - 10.0).collect();
        let mut base = xs[..1001].to_vec();
        gelu_generic(&mut base);
        let mut dispatched = xs[..1001].to_vec();
        gelu_dispatch(&mut dispatched);
        assert_eq!(bits(&dispatched), bits(&base), "gelu, dispatched");
        for (name, copy) in gelu_copies::available() {
            let mut out = xs[..1001].to_vec();
            // SAFETY: `gelu_copies` lists only the copies this CPU supports.
            unsafe { copy(&mut out) };
            assert_eq!(bits(&out), bits(&base), "gelu, {name} copy");
        }
        for causal in [false, true] {
            let mut base = xs[..37 * 27].to_vec();
            softmax_rows_generic(&mut base, 37, causal);
            for (name, copy) in softmax_rows_copies::available() {
                let mut out = xs[..37 * 27].to_vec();
                // SAFETY: as above.
                unsafe { copy(&mut out, 37, causal) };
                assert_eq!(bits(&out), bits(&base), "softmax, causal {causal}, {name} copy");
            }
        }
        let (features, tokens, stride) = (24, 37, 48);
        let residual: Vec<f32> = xs.iter().rev().take(features * stride).copied().collect();
        let gamma: Vec<f32> = xs[..features].iter().map(|g| 1.0 + g * 0.01).collect();
        let beta: Vec<f32> = xs[features..2 * features].to_vec();
        type LayerNormCopy =
            unsafe fn(&mut [f32], usize, usize, usize, &[f32], usize, &[f32], &[f32], f32, &mut [f32], &mut [f32]);
        let run = |f: LayerNormCopy| {
            let mut x = xs[..features * stride].to_vec();
            let (mut mean, mut inv) = (vec![0.0; tokens], vec![0.0; tokens]);
            // SAFETY: as above (the baseline needs no feature).
            unsafe { f(&mut x, features, tokens, stride, &residual, stride, &gamma, &beta, 1e-5, &mut mean, &mut inv) };
            x
        };
        let copies = layer_norm_columns_copies::available();
        let (_, baseline) = *copies.last().expect("the baseline is always listed");
        for (name, copy) in &copies {
            assert_eq!(bits(&run(*copy)), bits(&run(baseline)), "layer norm, {name} copy");
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            assert_eq!(gelu_copies::available()[0].0, "avx512", "an AVX-512 CPU tests the AVX-512 copy");
        }
    }

    #[test]
    fn relu_and_gelu_are_the_activations_of_their_presets() {
        let mut xs = vec![-2.0f32, -0.0, 0.0, 0.5, 3.0];
        activate(Activation::Relu, &mut xs);
        assert_eq!(xs, [0.0, 0.0, 0.0, 0.5, 3.0]);
        let mut ys = vec![-1.0f32, 1.0];
        activate(Activation::Gelu, &mut ys);
        assert!((ys[0] + 0.158_655_25).abs() < 1e-6 && (ys[1] - 0.841_344_7).abs() < 1e-6, "{ys:?}");
        assert_eq!(reference_activation(Activation::Relu, -3.0), 0.0);
        assert_eq!(Preset::Rt3Transformer.config().activation, Activation::Relu);
        assert_eq!(Preset::DistilBert.config().activation, Activation::Gelu);
        assert_eq!(Preset::MiniLm.config().activation, Activation::Gelu);
    }

    #[test]
    fn layer_norm_uses_the_eps_it_is_given() {
        // A token of variance 1e-5 over its 8 features: eps 1e-5 halves the variance term, eps 1e-12 does not.
        let row: Vec<f32> =
            (0..8).map(|i| if i % 2 == 0 { 1.0 + 0.003_162_277_7 } else { 1.0 - 0.003_162_277_7 }).collect();
        let norm = LayerNormWeights { gamma: vec![1.0; 8], beta: vec![0.0; 8] };
        for eps in [TORCH_LAYER_NORM_EPS, LAYER_NORM_EPS] {
            let mut x = Activations::from_token_major(&Matrix::from_vec(1, 8, row.clone()));
            residual_layer_norm(&mut x, None, &norm, eps);
            let want = reference_residual_norm(&Matrix::from_vec(1, 8, row.clone()), &[0.0; 8], &norm, eps as f64);
            for (g, w) in x.to_token_major().as_slice().iter().zip(want.as_slice()) {
                assert!((g - w).abs() < 1e-3, "eps {eps}: {g} vs {w}");
            }
            let expected = if eps == TORCH_LAYER_NORM_EPS { std::f32::consts::FRAC_1_SQRT_2 } else { 1.0 };
            assert!((x.get(0, 0) - expected).abs() < 2e-3, "eps {eps}: {}", x.get(0, 0));
        }
    }

    #[test]
    fn residual_layer_norm_matches_the_f64_form_on_padded_columns() {
        let (tokens, d) = (35, 24);
        let x = Matrix::random(tokens, d, 1, 2.0);
        let r = Matrix::random(tokens, d, 2, 2.0);
        let norm = LayerNormWeights { gamma: (0..d).map(|i| 1.0 + i as f32 * 0.01).collect(), beta: vec![0.1; d] };
        let mut got = Activations::from_token_major(&x);
        residual_layer_norm(&mut got, Some(&Activations::from_token_major(&r)), &norm, 1e-5);
        let r64: Vec<f64> = r.as_slice().iter().map(|v| *v as f64).collect();
        let want = reference_residual_norm(&x, &r64, &norm, 1e-5);
        assert!(got.to_token_major().max_abs_diff(&want) < 1e-5);
    }
}
