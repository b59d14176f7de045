//! TEMPORARY (encoder/model helper): distilbert forward timings; removed after measuring.
use std::time::Instant;

use kernels::encoder::{EncoderWeights, Preset};
use kernels::model::{random_input, ReconfigurableModel, VariantSpec};
use kernels::prune::pattern::CandidateMethod;
use kernels::Threads;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let preset: Preset = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(Preset::DistilBert);
    let iters: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(30);
    let cfg = preset.config();
    let mut model = ReconfigurableModel::new(EncoderWeights::random(cfg, 1).unwrap());
    let block = |cols| VariantSpec::Block { sparsity: 0.64, block_rows: 16, block_cols: cols, per_layer: None, global: false };
    let pattern = |base: &str| VariantSpec::Pattern {
        base: base.into(),
        tile: 16,
        patterns_per_set: 4,
        sparsity: 0.75,
        method: CandidateMethod::Rt3TileSums,
        seed: 0,
    };
    let specs: Vec<(&str, VariantSpec)> = vec![
        ("dense", VariantSpec::Dense),
        ("bp64-16x1", block(1)),
        ("pp75-on-16x1", pattern("bp64-16x1")),
        ("bp64-16x16", block(16)),
        ("pp75-on-16x16", pattern("bp64-16x16")),
    ];
    for (name, spec) in &specs {
        let info = model.add_variant(name, spec).unwrap();
        println!(
            "{name}: sparsity {:.4} nnz {} bytes {} prepare {:.3} s pattern generation {:?}",
            info.sparsity,
            info.nnz,
            info.bytes,
            info.prepare.as_secs_f64(),
            info.pattern_generation.map(|d| d.as_secs_f64())
        );
    }
    let input = random_input(&cfg, 7);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); specs.len()];
    for it in 0..iters + 2 {
        for (i, (name, _)) in specs.iter().enumerate() {
            model.switch(name).unwrap();
            let t = Instant::now();
            std::hint::black_box(model.forward(&input, Threads::One).unwrap());
            if it >= 2 {
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[0], v[v.len() / 2])
    };
    let (dense_min, dense_med) = stat(&mut times[0].clone());
    for (i, (name, _)) in specs.iter().enumerate() {
        let (min, med) = stat(&mut times[i]);
        println!("{name}: min {min:.2} ms median {med:.2} ms  speedup (min) {:.2}x (median) {:.2}x", dense_min / min, dense_med / med);
    }
    let mut sw = Vec::new();
    for i in 0..100_000 {
        let name = if i % 2 == 0 { "pp75-on-16x16" } else { "bp64-16x16" };
        sw.push(model.switch(name).unwrap().as_nanos());
    }
    sw.sort();
    println!("switch: median {} ns p99 {} ns max {} ns", sw[sw.len() / 2], sw[sw.len() * 99 / 100], sw[sw.len() - 1]);
}
