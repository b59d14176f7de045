//! Criterion benches for run-time reconfiguration: switching the active
//! pattern set of a live model (O(1), RT3 reports "within 45 ms"), and
//! building a pattern set plus its packed layer from BP weights.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;

use kernels::encoder::{EncoderWeights, Preset};
use kernels::linear::masked::MaskedStripLinear;
use kernels::model::{ReconfigurableModel, VariantSpec};
use kernels::prune::block::{block_mask, BlockShape};
use kernels::prune::pattern::{
    assign_patterns_on_blocks, generate_pattern_set_on_blocks, CandidateMethod, PatternConfig,
};
use kernels::Matrix;

fn pattern_variant(base: &str, sparsity: f64) -> VariantSpec {
    VariantSpec::Pattern {
        base: base.to_string(),
        tile: 16,
        patterns_per_set: 4,
        sparsity,
        method: CandidateMethod::Rt3TileSums,
        seed: 1,
    }
}

fn bench_switch(c: &mut Criterion) {
    // The switch does not depend on model size; RT3's own model keeps the setup short.
    let weights = EncoderWeights::random(Preset::Rt3Transformer.config(), 1).expect("preset config is valid");
    let mut model = ReconfigurableModel::new(weights);
    let bp = VariantSpec::Block { sparsity: 0.5, block_rows: 16, block_cols: 1, per_layer: None, global: false };
    model.add_variant("bp50", &bp).expect("block variant");
    model.add_variant("pp75", &pattern_variant("bp50", 0.75)).expect("pattern variant");
    model.add_variant("pp875", &pattern_variant("bp50", 0.875)).expect("pattern variant");
    let mut group = c.benchmark_group("reconfigure");
    group.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let mut flip = false;
    group.bench_function("switch-pattern-set", |b| {
        b.iter(|| {
            flip = !flip;
            model.switch(if flip { "pp75" } else { "pp875" }).expect("variant exists")
        })
    });
    group.finish();
}

fn bench_build(c: &mut Criterion) {
    // One DistilBERT feed-forward layer: BP base at 50 % in 16x1 strips, a 16x16 set laid over the
    // compacted BP blocks down to 75 % in total, packed as the model packs it (masked strips).
    let w = Matrix::random(3072, 768, 5, 0.05);
    let base = block_mask(&w, BlockShape::strip(16), 0.5);
    let cfg = PatternConfig::new(16, 0.75);
    let mut group = c.benchmark_group("reconfigure");
    group.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(4)).sample_size(10);
    group.bench_function("build-set-768x3072", |b| b.iter(|| generate_pattern_set_on_blocks(&w, &base, 16, &cfg)));
    let set = generate_pattern_set_on_blocks(&w, &base, 16, &cfg);
    group.bench_function("pack-layer-768x3072", |b| {
        b.iter(|| {
            let mask = assign_patterns_on_blocks(&w, &base, 16, &set).mask;
            MaskedStripLinear::from_masked(&w, &mask, 16, "pattern")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_switch, bench_build);
criterion_main!(benches);
