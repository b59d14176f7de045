// TEMPORARY timing program (helper for issue 2 BP); deleted after measuring.
use kernels::linear::block::BlockSparseLinear;
use kernels::linear::dense::DenseLinear;
use kernels::prune::block::{block_mask, BlockShape};
use kernels::simd::Backend;
use kernels::{LinearKernel, Matrix, Threads};

#[repr(C)]
struct Ts { s: i64, ns: i64 }
extern "C" { fn clock_gettime(id: i32, ts: *mut Ts) -> i32; }
/// Thread CPU time (CLOCK_THREAD_CPUTIME_ID): not inflated while other processes run.
fn cpu_now() -> f64 { let mut t = Ts { s: 0, ns: 0 }; unsafe { clock_gettime(3, &mut t) }; t.s as f64 + t.ns as f64 * 1e-9 }

/// Alternates a and b, returns the minimum time of each.
fn time2(mut a: impl FnMut(), mut b: impl FnMut(), n: usize) -> (f64, f64) {
    for _ in 0..3 { a(); b(); }
    let (mut ta, mut tb) = (f64::MAX, f64::MAX);
    for _ in 0..n {
        let t = cpu_now(); a(); ta = ta.min(cpu_now() - t);
        let t = cpu_now(); b(); tb = tb.min(cpu_now() - t);
    }
    (ta, tb)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let strips: Vec<usize> = args.get(1).map(|s| s.split(',').map(|v| v.parse().unwrap()).collect()).unwrap_or(vec![16, 32]);
    let backends: Vec<Backend> = match args.get(2).map(|s| s.as_str()) { Some("all") => Backend::available(), _ => vec![Backend::best()] };
    let sparsities: Vec<f64> = args.get(4).map(|s| s.split(',').map(|v| v.parse().unwrap()).collect()).unwrap_or(vec![0.5, 0.64, 0.75]);
    let n: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(40);
    println!("{}", kernels::simd::describe());
    let tokens = 128;
    if args.get(5).map(|s| s == "gemm").unwrap_or(false) {
        for (out, inp) in [(3072usize, 768usize), (768, 3072)] {
            let w = Matrix::random(out, inp, 1, 0.05);
            let wt = w.transposed();
            let x = Matrix::random(tokens, inp, 2, 1.0);
            let mut y = Matrix::zeros(tokens, out);
            let mut y2 = Matrix::zeros(tokens, out);
            let dense = DenseLinear::new(w.clone());
            let flops = 2.0 * (tokens * out * inp) as f64;
            let (td, tt) = time2(|| dense.forward(&x, &mut y, Threads::One), || unsafe {
                gemm::gemm(tokens, out, inp, y2.as_mut_slice().as_mut_ptr(), 1, out as isize, false,
                    x.as_slice().as_ptr(), 1, inp as isize, wt.as_slice().as_ptr(), 1, out as isize,
                    0.0f32, 1.0f32, false, false, false, gemm::Parallelism::None)
            }, 60);
            println!("{inp}->{out}: w row-major {:.1} GFLOP/s, w pre-transposed {:.1} GFLOP/s (maxdiff {})", flops / td / 1e9, flops / tt / 1e9, y.max_abs_diff(&y2));
        }
        return;
    }
    if args.get(5).map(|s| s == "ypass").unwrap_or(false) {
        for r in [16usize, 32, 64] {
            let tile = Matrix::random(r, 128, 1, 1.0);
            let mut y = Matrix::zeros(128, 3072);
            let mut y2 = Matrix::zeros(128, 3072);
            let (t1, t2) = time2(|| { for s0 in (0..3072).step_by(r) { kernels::simd::transpose_strided(tile.as_slice(), r, 128, 128, &mut y.as_mut_slice()[s0..], 3072); } },
                || { for s0 in (0..3072).step_by(r) { kernels::simd::transpose_strided(tile.as_slice(), r, 128, 128, &mut y2.as_mut_slice()[s0..], 3072); } }, 100);
            println!("y pass strips of {r}: {:.1} us / {:.1} us (align {} {})", t1 * 1e6, t2 * 1e6, y.as_slice().as_ptr() as usize % 64, y2.as_slice().as_ptr() as usize % 64);
        }
        return;
    }
    if args.get(5).map(|s| s == "tr").unwrap_or(false) {
        for (r, c) in [(128usize, 3072usize), (128, 768), (3072, 128), (768, 128), (16, 128)] {
            let a = Matrix::random(r, c, 1, 1.0);
            let mut b = vec![0.0f32; r * c];
            let mut b2 = vec![0.0f32; r * c];
            let (t1, t2) = time2(|| kernels::simd::transpose_strided(a.as_slice(), r, c, c, &mut b, r),
                || { let s = a.as_slice(); for i in 0..r { for j in 0..c { b2[j * r + i] = s[i * c + j]; } } }, 200);
            println!("transpose {r}x{c}: simd {:.1} us naive {:.1} us ({:.2} ns/elt)", t1 * 1e6, t2 * 1e6, t1 * 1e9 / (r * c) as f64);
        }
        return;
    }
    for (out, inp) in [(3072usize, 768usize), (768, 3072)] {
        let w = Matrix::random(out, inp, 1, 0.05);
        let x = Matrix::random(tokens, inp, 2, 1.0);
        let mut y = Matrix::zeros(tokens, out);
        let mut y2 = Matrix::zeros(tokens, out);
        let dense = DenseLinear::new(w.clone());
        let flops = 2.0 * (tokens * out * inp) as f64;
        for &sr in &strips {
            for s in sparsities.iter().copied() {
                let mask = block_mask(&w, BlockShape::strip(sr), s);
                for &b in &backends {
                    let layer = BlockSparseLinear::from_masked_for(&w, &mask, sr, b);
                    let solo = args.get(5).map(|s| s == "solo").unwrap_or(false);
                    let (td, tb) = if solo {
                        let mut y3 = y.clone();
                        let (a, _) = time2(|| dense.forward(&x, &mut y, Threads::One), || dense.forward(&x, &mut y3, Threads::One), n);
                        let mut y4 = y2.clone();
                        let (b, _) = time2(|| layer.forward(&x, &mut y2, Threads::One), || layer.forward(&x, &mut y4, Threads::One), n);
                        (a, b)
                    } else {
                        time2(|| dense.forward(&x, &mut y, Threads::One), || layer.forward(&x, &mut y2, Threads::One), n)
                    };
                    println!("{inp}->{out} strip {sr:>2} s {s:.2} {:>9}: dense {:7.1} us ({:5.1} GFLOP/s) block {:7.1} us (useful {:5.1} GFLOP/s) speedup {:.2}x (ideal {:.2})",
                        b.name(), td * 1e6, flops / td / 1e9, tb * 1e6, flops * (1.0 - s) / tb / 1e9, td / tb, 1.0 / (1.0 - s));
                }
            }
        }
    }
}
