//! Criterion benches: every linear layer kind at the DistilBERT feed-forward
//! shapes (128 tokens) and the RT3 Transformer shapes (35 tokens), one thread,
//! token-major (`forward`, conversions included).
//! The `speedup` example prints the same comparison as a table; these give
//! criterion's statistics and history.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

use kernels::linear::block::BlockSparseLinear;
use kernels::linear::dense::DenseLinear;
use kernels::linear::masked::MaskedStripLinear;
use kernels::linear::pattern::PatternSparseLinear;
use kernels::prune::block::{block_mask, BlockShape};
use kernels::prune::pattern::{
    assign_patterns_on_blocks, generate_pattern_set, generate_pattern_set_on_blocks, PatternConfig,
};
use kernels::{LinearKernel, Mask, Matrix, Threads};

/// (name, in, out, tokens).
const SHAPES: [(&str, usize, usize, usize); 5] = [
    ("distilbert-ffn1-768x3072", 768, 3072, 128),
    ("distilbert-ffn2-3072x768", 3072, 768, 128),
    ("rt3-800x200", 800, 200, 35),
    ("rt3-200x800", 200, 800, 35),
    ("rt3-800x800", 800, 800, 35),
];

/// BP strip height of the block layers.
const BLOCK_ROWS: usize = 16;

fn layers_for(inputs: usize, outputs: usize) -> Vec<(String, Box<dyn LinearKernel>)> {
    let w = Matrix::random(outputs, inputs, 42, 0.05);
    let dense_mask = Mask::dense(outputs, inputs);
    let mut layers: Vec<(String, Box<dyn LinearKernel>)> =
        vec![("dense".into(), Box::new(DenseLinear::new(w.clone())))];
    let bp = block_mask(&w, BlockShape::strip(BLOCK_ROWS), 0.64);
    layers.push(("block-64".into(), Box::new(BlockSparseLinear::from_masked(&w, &bp, BLOCK_ROWS))));
    for (tile, s) in [(16, 0.5), (16, 0.75), (16, 0.875), (100, 0.75)] {
        let set = generate_pattern_set(&w, &dense_mask, &PatternConfig::new(tile, s));
        layers.push((format!("pattern-{}-t{tile}", s * 100.0), Box::new(PatternSparseLinear::new(&w, &set))));
    }
    // RT3's BP+PP combination as the model builds it: a 64 % BP base of 16x1 strips, a 16x16
    // pattern set laid over the compacted BP blocks down to 75 % in total, on masked strips
    // (kept weights only).
    let cfg = PatternConfig::new(16, 0.75);
    let set = generate_pattern_set_on_blocks(&w, &bp, BLOCK_ROWS, &cfg);
    let mask = assign_patterns_on_blocks(&w, &bp, BLOCK_ROWS, &set).mask;
    layers.push((
        "bp64s-pattern-75-t16".into(),
        Box::new(MaskedStripLinear::from_masked(&w, &mask, BLOCK_ROWS, "pattern")),
    ));
    layers
}

fn bench_layers(c: &mut Criterion) {
    for (name, inputs, outputs, tokens) in SHAPES {
        let mut group = c.benchmark_group(name);
        group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
        // Dense work, so the reported rate is "dense-equivalent" FLOP/s for every kind.
        group.throughput(Throughput::Elements((2 * inputs * outputs * tokens) as u64));
        let x = Matrix::random(tokens, inputs, 7, 1.0);
        for (label, layer) in layers_for(inputs, outputs) {
            let mut y = Matrix::zeros(0, 0);
            group.bench_function(BenchmarkId::from_parameter(label), |b| {
                b.iter(|| layer.forward(&x, &mut y, Threads::One))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_layers);
criterion_main!(benches);
