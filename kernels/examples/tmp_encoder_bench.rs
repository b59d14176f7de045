//! TEMPORARY (encoder/model helper): distilbert forward timings; removed after measuring.
use std::time::Instant;

use kernels::encoder::{EncoderWeights, Preset};
use kernels::model::{estimate_bytes, random_input, ReconfigurableModel, VariantSpec};
use kernels::prune::pattern::CandidateMethod;
use kernels::Threads;

#[derive(Debug)]
struct Nop(usize, usize);
impl kernels::LinearKernel for Nop {
    fn in_features(&self) -> usize { self.1 }
    fn out_features(&self) -> usize { self.0 }
    fn forward(&self, x: &kernels::Matrix, y: &mut kernels::Matrix, _t: Threads) {
        y.reshape_uninit(x.rows(), self.0);
        let v = x.as_slice()[0];
        y.as_mut_slice().iter_mut().enumerate().for_each(|(i, o)| *o = v + (i % 7) as f32 * 0.1);
    }
    fn stats(&self) -> kernels::LayerStats { unimplemented!() }
    fn effective_weights(&self) -> kernels::Matrix { unimplemented!() }
    fn kind(&self) -> &'static str { "nop" }
}

fn main() {
    if std::env::var("NOP_ONLY").is_ok() {
        let cfg = Preset::DistilBert.config();
        let w = EncoderWeights::random(kernels::encoder::EncoderConfig { layers: 1, ..cfg }, 1).unwrap();
        let shared = std::sync::Arc::new(kernels::encoder::SharedParams::from_weights(&w));
        let linears: Vec<Box<dyn kernels::LinearKernel>> = w.config().linear_ids().map(|id| { let (o, i) = cfg.linear_shape(id.slot); Box::new(Nop(o, i)) as Box<dyn kernels::LinearKernel> }).collect();
        let nop = kernels::encoder::Encoder::new(shared, linears).unwrap();
        let input = random_input(&cfg, 7);
        let t = Instant::now();
        for _ in 0..200 { std::hint::black_box(nop.forward(&input, Threads::One)); }
        println!("nop layer: {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 200.0);
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let preset: Preset = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(Preset::DistilBert);
    let block_rows: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(16);
    let block_cols: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(1);
    let cfg = preset.config();
    let t = Instant::now();
    let weights = EncoderWeights::random(cfg, 1).unwrap();
    println!("weights: {:?}", t.elapsed());
    let mut model = ReconfigurableModel::new(weights);
    let specs: Vec<(&str, VariantSpec)> = vec![
        ("dense", VariantSpec::Dense),
        ("bp64", VariantSpec::Block { sparsity: 0.64, block_rows, block_cols, per_layer: None, global: false }),
        (
            "pp75",
            VariantSpec::Pattern {
                base: "bp64".into(),
                tile: 16,
                patterns_per_set: 4,
                sparsity: 0.75,
                method: CandidateMethod::Rt3TileSums,
                seed: 0,
            },
        ),
    ];
    let est = estimate_bytes(&cfg, &specs.iter().map(|(n, s)| (*n, s)).collect::<Vec<_>>());
    for (name, spec) in &specs {
        let info = model.add_variant(name, spec).unwrap();
        println!(
            "{name}: sparsity {:.4} nnz {} bytes {} (est {}) prepare {:?} patterngen {:?}",
            info.sparsity,
            info.nnz,
            info.bytes,
            est.variants[specs.iter().position(|(n, _)| n == name).unwrap()],
            info.prepare,
            info.pattern_generation
        );
    }
    let input = random_input(&cfg, 7);
    for (name, _) in &specs {
        model.switch(name).unwrap();
        for _ in 0..3 {
            model.forward(&input, Threads::One).unwrap();
        }
        let n = 20;
        let mut times = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            std::hint::black_box(model.forward(&input, Threads::One).unwrap());
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{name}: median {:.2} ms min {:.2} ms", times[n / 2], times[0]);
        let enc = model.encoder(name).unwrap();
        let xs: Vec<kernels::Matrix> = enc.linears().iter().map(|k| kernels::Matrix::random(cfg.seq_len, k.in_features(), 3, 1.0)).collect();
        let mut ys: Vec<kernels::Matrix> = enc.linears().iter().map(|k| kernels::Matrix::zeros(cfg.seq_len, k.out_features())).collect();
        let mut lt = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            for ((k, x), y) in enc.linears().iter().zip(&xs).zip(ys.iter_mut()) {
                k.forward(x, y, Threads::One);
            }
            lt.push(t.elapsed().as_secs_f64() * 1e3);
        }
        lt.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{name}: linears only median {:.2} ms min {:.2} ms", lt[n / 2], lt[0]);
    }
    {
        let enc = model.encoder("dense").unwrap();
        let linears: Vec<Box<dyn kernels::LinearKernel>> = enc.linears().iter().map(|k| Box::new(Nop(k.out_features(), k.in_features())) as Box<dyn kernels::LinearKernel>).collect();
        let nop = kernels::encoder::Encoder::new(enc.shared().clone(), linears).unwrap();
        let mut lt = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            std::hint::black_box(nop.forward(&input, Threads::One));
            lt.push(t.elapsed().as_secs_f64() * 1e3);
        }
        lt.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("non-linear parts only: median {:.2} ms min {:.2} ms", lt[10], lt[0]);
    }
    let mut sw = Vec::new();
    for i in 0..10000 {
        let name = if i % 2 == 0 { "pp75" } else { "bp64" };
        sw.push(model.switch(name).unwrap().as_nanos());
    }
    sw.sort();
    println!("switch: median {} ns max {} ns", sw[sw.len() / 2], sw[sw.len() - 1]);
}
