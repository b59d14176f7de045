//! The encoder and the reconfigurable model: every variant against the scalar
//! reference, switching, errors, presets, deterministic weights and
//! safetensors loading. Small configs keep debug and qemu runs short.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kernels::encoder::{
    Encoder, EncoderConfig, EncoderWeights, LinearId, LinearSlot, Preset, WeightsError, LINEARS_PER_LAYER,
};
use kernels::matrix::Matrix;
use kernels::model::{
    checksum, estimate_bytes, random_input, ModelError, ReconfigurableModel, VariantKind, VariantSpec,
    FORWARD_TOLERANCE,
};
use kernels::prune::pattern::CandidateMethod;
use kernels::Threads;
use safetensors::Dtype;

/// Two layers, 4 heads of 8, FFN 64, 10 tokens: every path, a few ms per forward.
fn small_config() -> EncoderConfig {
    EncoderConfig { layers: 2, d_model: 32, heads: 4, ffn: 64, seq_len: 10, ..Preset::MiniLm.config() }
}

fn block(sparsity: f64) -> VariantSpec {
    VariantSpec::Block { sparsity, block_rows: 4, block_cols: 1, per_layer: None, global: false }
}

fn pattern(base: &str, tile: usize, sparsity: f64, method: CandidateMethod) -> VariantSpec {
    VariantSpec::Pattern { base: base.into(), tile, patterns_per_set: 4, sparsity, method, seed: 7 }
}

/// dense, bp (64 %), bp-global, bp-layers (per-layer ratios), and pattern sets
/// on bp at 75 % (8x8 tiles, RT3 sums), 87.5 % (PatDNN top-k) and 75 % with
/// tiles that do not divide the 32x64 shapes.
fn model_with_all_kinds() -> ReconfigurableModel {
    let cfg = small_config();
    let mut model = ReconfigurableModel::new(EncoderWeights::random(cfg, 11).unwrap());
    model.add_variant("dense", &VariantSpec::Dense).unwrap();
    model.add_variant("bp", &block(0.64)).unwrap();
    model
        .add_variant(
            "bp-global",
            &VariantSpec::Block { sparsity: 0.5, block_rows: 8, block_cols: 2, per_layer: None, global: true },
        )
        .unwrap();
    let ratios: Vec<f64> = (0..cfg.linear_count()).map(|i| [0.0, 0.3, 0.9][i % 3]).collect();
    model
        .add_variant(
            "bp-layers",
            &VariantSpec::Block { sparsity: 0.0, block_rows: 2, block_cols: 1, per_layer: Some(ratios), global: false },
        )
        .unwrap();
    model.add_variant("pp75", &pattern("bp", 8, 0.75, CandidateMethod::Rt3TileSums)).unwrap();
    model.add_variant("pp875", &pattern("bp", 8, 0.875, CandidateMethod::FrequentTopK)).unwrap();
    model.add_variant("pp75-odd", &pattern("bp-layers", 12, 0.75, CandidateMethod::Rt3TileSums)).unwrap();
    model
}

fn assert_close(got: &Matrix, want: &Matrix, tolerance: f64, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let scale = want.as_slice().iter().fold(1.0f64, |m, v| m.max((*v as f64).abs()));
    for (i, (g, w)) in got.as_slice().iter().zip(want.as_slice()).enumerate() {
        let d = (*g as f64 - *w as f64).abs();
        assert!(d <= tolerance * scale, "{what}: element {i}: {g} vs reference {w} (|d| = {d:e})");
    }
}

#[test]
fn every_variant_matches_the_full_reference_forward() {
    let model = model_with_all_kinds();
    let input = random_input(model.config(), 3);
    for info in model.variants() {
        let got = model.forward_variant(&info.name, &input, Threads::One).unwrap();
        let want = model.encoder(&info.name).unwrap().reference_forward(&input);
        assert_close(&got, &want, FORWARD_TOLERANCE, &info.name);
        assert!(got.as_slice().iter().all(|v| v.is_finite()), "{}", info.name);
    }
}

#[test]
fn forward_with_threads_and_one_token_agree_with_the_reference() {
    let model = model_with_all_kinds();
    let input = random_input(model.config(), 5);
    let one = model.forward_variant("pp75", &input, Threads::One).unwrap();
    let two = model.forward_variant("pp75", &input, Threads::N(2)).unwrap();
    assert_close(&two, &one, 1e-4, "2 threads vs 1");

    let token = Matrix::from_vec(1, 32, input.row(0).to_vec());
    for name in ["dense", "bp", "pp875"] {
        let got = model.forward_variant(name, &token, Threads::One).unwrap();
        let want = model.encoder(name).unwrap().reference_forward(&token);
        assert_close(&got, &want, FORWARD_TOLERANCE, name);
    }
}

#[test]
fn selftest_passes_for_every_variant() {
    let model = model_with_all_kinds();
    let input = random_input(&model.config().with_seq_len(4), 9);
    let reports = model.selftest(&input).unwrap();
    assert_eq!(reports.len(), 7);
    for r in &reports {
        assert!(r.passed, "{r:?}");
        assert_eq!(r.checks, 2 * LINEARS_PER_LAYER + 1);
        assert!(r.max_abs_err < 1e-3, "{r:?}");
    }
}

#[test]
fn reference_forward_sees_a_pruned_kernel() {
    // The oracle must depend on the kernels: a block encoder's reference
    // differs from the dense one's.
    let model = model_with_all_kinds();
    let input = random_input(model.config(), 1);
    let dense = model.encoder("dense").unwrap().reference_forward(&input);
    let bp = model.encoder("bp").unwrap().reference_forward(&input);
    assert!(dense.max_abs_diff(&bp) > 1e-2);
}

#[test]
fn switching_changes_the_output_and_back() {
    let mut model = model_with_all_kinds();
    assert_eq!(model.active().unwrap().name, "dense", "the first variant added is active");
    let input = random_input(model.config(), 2);
    let dense = model.forward(&input, Threads::One).unwrap();

    let took = model.switch("pp75").unwrap();
    assert!(took.as_millis() < 1000);
    assert_eq!(model.active().unwrap().name, "pp75");
    let pp = model.forward(&input, Threads::One).unwrap();
    assert!(dense.max_abs_diff(&pp) > 1e-2, "switching to pp75 must change the output");
    assert_eq!(pp, model.forward_variant("pp75", &input, Threads::One).unwrap());

    model.switch("dense").unwrap();
    let again = model.forward(&input, Threads::One).unwrap();
    assert_eq!(checksum(&again), checksum(&dense), "back on dense, the same bits");
}

#[test]
fn unknown_variant_and_bad_bases_are_errors_naming_them() {
    let mut model = model_with_all_kinds();
    let input = random_input(model.config(), 2);
    let e = model.switch("pp99").unwrap_err();
    assert!(matches!(e, ModelError::UnknownVariant { .. }));
    let msg = e.to_string();
    assert!(msg.contains("`pp99`") && msg.contains("dense, bp, bp-global"), "{msg}");
    assert_eq!(model.active().unwrap().name, "dense", "a failed switch keeps the active variant");
    assert!(model.forward_variant("nope", &input, Threads::One).is_err());

    let e = model.add_variant("pp", &pattern("missing", 8, 0.5, CandidateMethod::Rt3TileSums)).unwrap_err();
    assert_eq!(e.to_string(), "variant `pp`: unknown base `missing` (block variants loaded: bp, bp-global, bp-layers)");
    let e = model.add_variant("pp", &pattern("pp75", 8, 0.5, CandidateMethod::Rt3TileSums)).unwrap_err();
    assert!(matches!(e, ModelError::BaseNotBlock { kind: VariantKind::Pattern, .. }), "{e}");
    let e = model.add_variant("pp", &pattern("dense", 8, 0.5, CandidateMethod::Rt3TileSums)).unwrap_err();
    assert!(e.to_string().contains("base `dense` is a dense variant"), "{e}");
    assert!(matches!(model.add_variant("bp", &block(0.5)), Err(ModelError::DuplicateVariant(_))));
    assert!(matches!(model.add_variant("", &block(0.5)), Err(ModelError::EmptyName)));
    let e = model.add_variant("pp", &pattern("bp", 8, 1.0, CandidateMethod::Rt3TileSums)).unwrap_err();
    assert!(e.to_string().contains("`sparsity` = 1 is outside [0, 1)"), "{e}");
    assert_eq!(model.variants().len(), 7, "failed adds leave nothing behind");

    let wide = Matrix::zeros(3, 33);
    assert!(matches!(model.forward(&wide, Threads::One), Err(ModelError::InputShape { cols: 33, d_model: 32, .. })));
    assert!(model.forward(&Matrix::zeros(0, 32), Threads::One).is_err());

    let empty = ReconfigurableModel::new(EncoderWeights::random(small_config(), 1).unwrap());
    assert_eq!(empty.forward(&input, Threads::One), Err(ModelError::NoVariants));
    assert!(empty.active().is_none());
}

#[test]
fn pattern_variants_keep_bp_zeros_and_reach_their_sparsity() {
    let model = model_with_all_kinds();
    let cfg = *model.config();
    for (pp, base, target) in [("pp75", "bp", 0.75f64), ("pp875", "bp", 0.875), ("pp75-odd", "bp-layers", 0.75)] {
        let info = model.variant(pp).unwrap();
        assert_eq!(info.kind, VariantKind::Pattern);
        assert_eq!(info.base.as_deref(), Some(base));
        assert!(info.pattern_generation.unwrap() <= info.prepare);
        let pp_enc = model.encoder(pp).unwrap();
        let bp_enc = model.encoder(base).unwrap();
        for id in cfg.linear_ids() {
            let wp = pp_enc.linear(id).effective_weights();
            let wb = bp_enc.linear(id).effective_weights();
            let dense = &model.weights().linear(id).weight;
            for (i, ((p, b), d)) in wp.as_slice().iter().zip(wb.as_slice()).zip(dense.as_slice()).enumerate() {
                assert!(*b != 0.0 || *p == 0.0, "{pp} {id}: element {i} pruned by BP but kept by PP");
                assert!(*p == 0.0 || p == d, "{pp} {id}: element {i} is not the dense weight");
            }
            let s = 1.0 - wp.as_slice().iter().filter(|v| **v != 0.0).count() as f64 / wp.as_slice().len() as f64;
            let base_s = 1.0 - wb.as_slice().iter().filter(|v| **v != 0.0).count() as f64 / wb.as_slice().len() as f64;
            assert!(s >= base_s - 1e-12, "{pp} {id}: sparsity {s} below its BP base {base_s}");
            assert!(s >= target.max(base_s) - 0.1, "{pp} {id}: sparsity {s} far below {target}");
        }
    }
    let pp = model.variant("pp75").unwrap();
    assert!((pp.sparsity - 0.75).abs() < 0.05, "pp75 sparsity {}", pp.sparsity);
    assert!(model.variant("pp875").unwrap().sparsity > 0.85);
}

#[test]
fn variant_info_adds_up_over_the_linear_layers() {
    let model = model_with_all_kinds();
    let cfg = small_config();
    let dense = model.variant("dense").unwrap();
    assert_eq!(dense.dense_weights, cfg.linear_weight_count());
    assert_eq!(dense.nnz, cfg.linear_weight_count());
    assert_eq!(dense.sparsity, 0.0);
    assert_eq!(dense.layers.len(), cfg.linear_count());
    let bp = model.variant("bp").unwrap();
    assert!((bp.sparsity - 0.64).abs() < 0.02, "bp sparsity {}", bp.sparsity);
    assert_eq!(bp.nnz, bp.layers.iter().map(|l| l.nnz).sum::<usize>());
    assert!(bp.bytes < dense.bytes);
    // Per-layer ratios: layer ratios 0, 0.3, 0.9 repeat over the canonical order.
    let layers = &model.variant("bp-layers").unwrap().layers;
    assert_eq!(layers[0].sparsity(), 0.0);
    assert!((layers[2].sparsity() - 0.9).abs() < 0.05, "{}", layers[2].sparsity());
    // Global BP holds the target overall.
    assert!((model.variant("bp-global").unwrap().sparsity - 0.5).abs() < 0.03);
}

#[test]
fn memory_estimate_covers_what_is_built() {
    let cfg = EncoderConfig { layers: 1, d_model: 64, heads: 4, ffn: 128, seq_len: 16, ..Preset::MiniLm.config() };
    let specs = [
        ("dense", VariantSpec::Dense),
        ("bp", block(0.64)),
        ("pp", pattern("bp", 16, 0.75, CandidateMethod::Rt3TileSums)),
        (
            "bp-tiles",
            VariantSpec::Block { sparsity: 0.5, block_rows: 16, block_cols: 16, per_layer: None, global: false },
        ),
        ("pp-aligned", pattern("bp-tiles", 16, 0.75, CandidateMethod::Rt3TileSums)),
        (
            "pp-dense-base",
            VariantSpec::Pattern {
                base: "bp-free".into(),
                tile: 8,
                patterns_per_set: 4,
                sparsity: 0.5,
                method: CandidateMethod::FrequentTopK,
                seed: 0,
            },
        ),
    ];
    let named: Vec<(&str, &VariantSpec)> = specs.iter().map(|(n, s)| (*n, s)).collect();
    let estimate = estimate_bytes(&cfg, &named);
    let mut model = ReconfigurableModel::new(EncoderWeights::random(cfg, 4).unwrap());
    model.add_variant("bp-free", &block(0.0)).unwrap();
    for (i, (name, spec)) in specs.iter().enumerate() {
        let info = model.add_variant(name, spec).unwrap();
        let est = estimate.variants[i];
        assert!(est >= info.bytes, "{name}: estimated {est} < built {}", info.bytes);
        assert!(est < 3 * info.bytes + 8192, "{name}: estimate {est} far above {}", info.bytes);
    }
    assert!(estimate.total() >= model.resident_bytes());
}

#[test]
fn presets_have_the_papers_dimensions() {
    let expect = [
        ("distilbert", 6, 768, 12, 3072, 128),
        ("minilm", 6, 384, 12, 1536, 128),
        ("rt3-transformer", 2, 800, 4, 200, 35),
    ];
    for (name, layers, d_model, heads, ffn, seq_len) in expect {
        let preset: Preset = name.parse().unwrap();
        assert_eq!(preset.to_string(), name);
        let c = preset.config();
        assert_eq!((c.layers, c.d_model, c.heads, c.ffn, c.seq_len), (layers, d_model, heads, ffn, seq_len));
        preset.config().validate().unwrap();
    }
    let e = "bert-large".parse::<Preset>().unwrap_err().to_string();
    assert!(e.contains("`bert-large`") && e.contains("rt3-transformer"), "{e}");
    assert_eq!(Preset::DistilBert.config().with_seq_len(64).seq_len, 64);
    // DistilBERT: 42.47 M weights in the linear layers of its 6 encoder layers.
    assert_eq!(Preset::DistilBert.config().linear_weight_count(), 6 * (4 * 768 * 768 + 2 * 768 * 3072));
}

#[test]
fn synthetic_weights_are_pinned_bit_for_bit() {
    // The same bits on x86-64 and aarch64 (this test also runs under qemu).
    let w = EncoderWeights::random(Preset::MiniLm.config(), 42).unwrap();
    let layer = &w.layers()[1];
    let bits = [
        layer.linear(LinearSlot::Query).weight.get(0, 0).to_bits(),
        layer.linear(LinearSlot::FfnOut).weight.get(383, 1535).to_bits(),
        layer.linear(LinearSlot::Value).bias[7].to_bits(),
        layer.output_norm.gamma[100].to_bits(),
        w.layers()[5].attention_norm.beta[383].to_bits(),
    ];
    assert_eq!(bits, PINNED_WEIGHT_BITS, "{bits:#010x?}");
    assert_eq!(EncoderWeights::random(Preset::MiniLm.config(), 42).unwrap(), w);
    assert_ne!(
        EncoderWeights::random(small_config(), 43).unwrap(),
        EncoderWeights::random(small_config(), 42).unwrap()
    );
    let input = random_input(&Preset::MiniLm.config(), 42);
    assert_eq!(input.shape(), (128, 384));
    assert!(input.zero_fraction() < 0.01, "inputs must not be zero-filled");
    assert_eq!(checksum(&input), PINNED_INPUT_CHECKSUM, "{:#018x}", checksum(&input));
}

const PINNED_WEIGHT_BITS: [u32; 5] = [0x3d9ec2d6, 0x3d1e81a4, 0x3d199c8a, 0x3f832c92, 0xbd63fdfd];
const PINNED_INPUT_CHECKSUM: u64 = 0x7fae_26a8_72b6_cb08;

#[test]
fn synthetic_activations_stay_bounded_through_the_distilbert_shape() {
    // One DistilBERT-sized layer: LayerNorm output, so O(1) values, no NaN.
    let cfg = Preset::DistilBert.config();
    let cfg = EncoderConfig { layers: 1, seq_len: 16, ..cfg };
    let weights = EncoderWeights::random(cfg, 1).unwrap();
    let out = Encoder::dense(&weights).forward(&random_input(&cfg, 1), Threads::One);
    let max = out.as_slice().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(max.is_finite() && max < 20.0, "max |activation| {max}");
}

// ---------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Layout {
    DistilBert,
    /// BERT with TF-era `gamma`/`beta` layer-norm names.
    BertOldNorms,
}

/// The checkpoint's tensors: name -> (shape, f32 values), as Hugging Face names them.
fn checkpoint_tensors(w: &EncoderWeights, layout: Layout, prefix: &str) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut out = BTreeMap::new();
    for (i, layer) in w.layers().iter().enumerate() {
        let (stem, names, norms, (g, b)) = match layout {
            Layout::DistilBert => (
                format!("{prefix}transformer.layer.{i}."),
                ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"],
                ["sa_layer_norm", "output_layer_norm"],
                ("weight", "bias"),
            ),
            Layout::BertOldNorms => (
                format!("{prefix}encoder.layer.{i}."),
                [
                    "attention.self.query",
                    "attention.self.key",
                    "attention.self.value",
                    "attention.output.dense",
                    "intermediate.dense",
                    "output.dense",
                ],
                ["attention.output.LayerNorm", "output.LayerNorm"],
                ("gamma", "beta"),
            ),
        };
        for (slot, name) in LinearSlot::ALL.iter().zip(names) {
            let lw = layer.linear(*slot);
            let (r, c) = lw.weight.shape();
            out.insert(format!("{stem}{name}.weight"), (vec![r, c], lw.weight.as_slice().to_vec()));
            out.insert(format!("{stem}{name}.bias"), (vec![r], lw.bias.clone()));
        }
        for (norm, name) in [&layer.attention_norm, &layer.output_norm].iter().zip(norms) {
            out.insert(format!("{stem}{name}.{g}"), (vec![norm.gamma.len()], norm.gamma.clone()));
            out.insert(format!("{stem}{name}.{b}"), (vec![norm.beta.len()], norm.beta.clone()));
        }
    }
    // Tensors outside the encoder, which the loader must ignore.
    out.insert(
        format!("{prefix}embeddings.word_embeddings.weight"),
        (vec![5, w.config().d_model], vec![0.5; 5 * w.config().d_model]),
    );
    out
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        // Truncation to bfloat16: the top 16 bits.
        Dtype::BF16 => values.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
        Dtype::I32 => values.iter().flat_map(|v| (*v as i32).to_le_bytes()).collect(),
        other => panic!("test encoder lacks {other:?}"),
    }
}

fn serialize(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, dtype_of: impl Fn(&str) -> Dtype) -> Vec<u8> {
    let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let dtype = dtype_of(name);
            (name.clone(), dtype, shape.clone(), encode(values, dtype))
        })
        .collect();
    let views = encoded.iter().map(|(name, dtype, shape, bytes)| {
        (name.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap())
    });
    safetensors::serialize(views, None).unwrap()
}

fn temp_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kernels-model-{}-{name}", std::process::id()))
}

#[test]
fn safetensors_round_trip_distilbert_names_from_a_file() {
    let cfg = small_config();
    let weights = EncoderWeights::random(cfg, 21).unwrap();
    let bytes = serialize(&checkpoint_tensors(&weights, Layout::DistilBert, "distilbert."), |_| Dtype::F32);
    let path = temp_file("distilbert.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let loaded = EncoderWeights::from_safetensors(&path, cfg.heads, cfg.seq_len);
    std::fs::remove_file(&path).unwrap();
    let loaded = loaded.unwrap();
    assert_eq!(loaded.config(), &cfg, "layers, d_model and ffn inferred from the shapes");
    assert_eq!(loaded, weights);

    // Loaded weights run like the originals.
    let input = random_input(&cfg, 1);
    let a = Encoder::dense(&weights).forward(&input, Threads::One);
    let b = Encoder::dense(&loaded).forward(&input, Threads::One);
    assert_eq!(checksum(&a), checksum(&b));
}

#[test]
fn safetensors_bert_without_prefix_with_gamma_beta_and_bf16() {
    let cfg = EncoderConfig { layers: 3, d_model: 16, heads: 2, ffn: 24, seq_len: 5, ..Preset::MiniLm.config() };
    let weights = EncoderWeights::random(cfg, 8).unwrap();
    let tensors = checkpoint_tensors(&weights, Layout::BertOldNorms, "");
    let bytes = serialize(&tensors, |name| if name.ends_with(".weight") { Dtype::BF16 } else { Dtype::F32 });
    let loaded = EncoderWeights::from_safetensors_bytes(&bytes, "bert.safetensors", 2, 5).unwrap();
    assert_eq!(loaded.config(), &cfg);
    let id = LinearId { layer: 2, slot: LinearSlot::FfnIn };
    let (orig, got) = (&weights.linear(id).weight, &loaded.linear(id).weight);
    for (o, g) in orig.as_slice().iter().zip(got.as_slice()) {
        assert_eq!(g.to_bits(), o.to_bits() & 0xffff_0000, "bf16 is the truncated f32");
    }
    assert_eq!(loaded.layers()[1].output_norm, weights.layers()[1].output_norm, "gamma/beta read as weight/bias");

    // With the `bert.` prefix as well.
    let bytes = serialize(&checkpoint_tensors(&weights, Layout::BertOldNorms, "bert."), |_| Dtype::F32);
    assert_eq!(EncoderWeights::from_safetensors_bytes(&bytes, "b", 2, 5).unwrap(), weights);
}

#[test]
fn safetensors_errors_name_the_tensor_shape_and_dtype() {
    let cfg = small_config();
    let weights = EncoderWeights::random(cfg, 21).unwrap();
    let full = checkpoint_tensors(&weights, Layout::DistilBert, "distilbert.");

    let mut missing = full.clone();
    missing.remove("distilbert.transformer.layer.1.ffn.lin2.bias");
    let e = EncoderWeights::from_safetensors_bytes(&serialize(&missing, |_| Dtype::F32), "m.safetensors", 4, 10)
        .unwrap_err();
    assert!(matches!(e, WeightsError::MissingTensor { .. }));
    assert_eq!(
        e.to_string(),
        "m.safetensors: missing tensor `distilbert.transformer.layer.1.ffn.lin2.bias` (DistilBERT naming, 2 layers found)"
    );

    let mut bad_shape = full.clone();
    bad_shape
        .insert("distilbert.transformer.layer.0.attention.k_lin.weight".into(), (vec![32, 31], vec![0.0; 32 * 31]));
    let e = EncoderWeights::from_safetensors_bytes(&serialize(&bad_shape, |_| Dtype::F32), "s", 4, 10).unwrap_err();
    assert_eq!(
        e.to_string(),
        "s: tensor `distilbert.transformer.layer.0.attention.k_lin.weight` has shape [32, 31], expected [32, 32]"
    );

    let bytes = serialize(&full, |name| if name.ends_with("sa_layer_norm.bias") { Dtype::I32 } else { Dtype::F32 });
    let e = EncoderWeights::from_safetensors_bytes(&bytes, "d", 4, 10).unwrap_err();
    assert!(e.to_string().contains("sa_layer_norm.bias` has dtype I32"), "{e}");

    let e = EncoderWeights::from_safetensors_bytes(&serialize(&full, |_| Dtype::F32), "h", 5, 10).unwrap_err();
    assert!(e.to_string().contains("d_model 32 is not divisible by heads 5"), "{e}");

    let mut no_layers = BTreeMap::new();
    no_layers.insert("classifier.weight".to_string(), (vec![2, 2], vec![0.0; 4]));
    let e = EncoderWeights::from_safetensors_bytes(&serialize(&no_layers, |_| Dtype::F32), "c", 4, 10).unwrap_err();
    assert!(matches!(e, WeightsError::NoEncoderLayers { .. }), "{e}");

    let e = EncoderWeights::from_safetensors_bytes(b"not a safetensors file", "junk", 4, 10).unwrap_err();
    assert!(e.to_string().starts_with("junk: not a valid safetensors file"), "{e}");
    let e = EncoderWeights::from_safetensors(&temp_file("does-not-exist"), 4, 10).unwrap_err();
    assert!(e.to_string().contains("does-not-exist"), "{e}");
}

#[test]
fn variant_specs_and_infos_are_serde_friendly() {
    let specs = [
        VariantSpec::Dense,
        block(0.64),
        VariantSpec::Block {
            sparsity: 0.5,
            block_rows: 8,
            block_cols: 2,
            per_layer: Some(vec![0.1; 12]),
            global: true,
        },
        pattern("bp", 16, 0.75, CandidateMethod::FrequentTopK),
    ];
    for spec in &specs {
        let json = serde_json::to_string(spec).unwrap();
        assert_eq!(&serde_json::from_str::<VariantSpec>(&json).unwrap(), spec, "{json}");
    }
    assert_eq!(serde_json::from_str::<VariantSpec>(r#"{"kind":"dense"}"#).unwrap(), VariantSpec::Dense);
    let minimal: VariantSpec =
        serde_json::from_str(r#"{"kind":"block","sparsity":0.5,"block_rows":16,"block_cols":1}"#).unwrap();
    assert_eq!(
        minimal,
        VariantSpec::Block { sparsity: 0.5, block_rows: 16, block_cols: 1, per_layer: None, global: false }
    );
    let typo = serde_json::from_str::<VariantSpec>(
        r#"{"kind":"block","sparsity":0.5,"block_rows":16,"block_cols":1,"globl":true}"#,
    );
    assert!(typo.unwrap_err().to_string().contains("globl"));

    let model = model_with_all_kinds();
    let info = model.variant("pp75").unwrap();
    let json = serde_json::to_value(info).unwrap();
    assert_eq!(json["kind"], "pattern");
    assert_eq!(json["base"], "bp");
    let preset: Preset = serde_json::from_str(r#""rt3-transformer""#).unwrap();
    assert_eq!(preset, Preset::Rt3Transformer);
}

#[test]
fn pattern_variants_on_bp_multiply_exactly_their_kept_weights() {
    let model = model_with_all_kinds();
    for name in ["pp75", "pp875", "bp"] {
        let info = model.variant(name).unwrap();
        assert_eq!(info.multiplied, info.layers.iter().map(|l| l.multiplied).sum::<usize>());
        // Random weights have no exact zeros: kept weights = non-zeros, and nothing else is multiplied.
        assert_eq!(info.multiplied, info.nnz, "{name}: multiplies {} for {} kept", info.multiplied, info.nnz);
    }
    // On the per-layer base, layers whose BP ratio is 0 are plain PP on the tile-grouped kernel, which
    // multiplies the zero padding of 12x12 tiles over 32x64 matrices; layers on a real BP base do not.
    let odd = model.variant("pp75-odd").unwrap();
    let base = model.variant("bp-layers").unwrap();
    for (i, (l, b)) in odd.layers.iter().zip(&base.layers).enumerate() {
        if b.sparsity() > 0.0 {
            assert_eq!(l.multiplied, l.nnz, "pp75-odd layer {i}");
        } else {
            assert!(l.multiplied >= l.nnz, "pp75-odd layer {i}");
        }
    }
    let pp = model.variant("pp75").unwrap();
    let bp = model.variant("bp").unwrap();
    assert!(pp.bytes < bp.bytes, "pp75 on bp packs {} bytes, its base {}", pp.bytes, bp.bytes);
}
