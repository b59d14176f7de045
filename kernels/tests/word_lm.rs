//! The `rt3-transformer` preset is RT3's model, the PyTorch word-language-model
//! Transformer: checked against what PyTorch itself computes
//! (`tests/fixtures/word_lm/`, made by `make_fixtures.py` there with torch
//! 2.15.0: tiny models in both state_dict layouts of pytorch/examples, their
//! token ids and outputs), plus the per-preset choices (ReLU, eps 1e-5,
//! causal mask) and the optional, prunable `lm_head`.

use std::collections::BTreeMap;

use kernels::encoder::{
    Activation, AttentionMask, Encoder, EncoderConfig, EncoderWeights, LinearSlot, Preset, WeightsError,
    TORCH_LAYER_NORM_EPS, WIKITEXT2_VOCAB,
};
use kernels::matrix::Matrix;
use kernels::model::{estimate_bytes, random_tokens, ReconfigurableModel, VariantSpec, FORWARD_TOLERANCE};
use kernels::prune::pattern::CandidateMethod;
use kernels::Threads;
use safetensors::{Dtype, SafeTensors};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/word_lm");

fn read(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}/{name}");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What PyTorch computed for one fixture.
struct Io {
    tokens: Vec<u32>,
    /// `[layers, d_model, heads, ffn, vocab, seq]`.
    config: Vec<usize>,
    /// name -> (float32 model's output, float64 model's output), `[S, width]`.
    outputs: BTreeMap<&'static str, (Matrix, Matrix)>,
}

fn ints(st: &SafeTensors<'_>, name: &str) -> Vec<i64> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

fn matrix(st: &SafeTensors<'_>, name: &str) -> Matrix {
    let t = st.tensor(name).unwrap();
    let (rows, cols) = (t.shape()[0], t.shape()[1]);
    let values: Vec<f32> = match t.dtype() {
        Dtype::F32 => t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        Dtype::F64 => t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        other => panic!("{name}: {other:?}"),
    };
    Matrix::from_vec(rows, cols, values)
}

fn io(layout: &str) -> Io {
    let bytes = read(&format!("{layout}.io.safetensors"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut outputs = BTreeMap::new();
    for name in ["embedded", "hidden", "logits", "log_probs"] {
        outputs.insert(name, (matrix(&st, name), matrix(&st, &format!("{name}_f64"))));
    }
    Io {
        tokens: ints(&st, "tokens").into_iter().map(|t| t as u32).collect(),
        config: ints(&st, "config").into_iter().map(|v| v as usize).collect(),
        outputs,
    }
}

/// The preset, at the fixture's head count and length, with or without the lm_head.
fn template(io: &Io, lm_head: bool) -> EncoderConfig {
    EncoderConfig { heads: io.config[2], seq_len: io.config[5], ..Preset::Rt3Transformer.config() }
        .with_lm_head(lm_head)
}

fn load(layout: &str, lm_head: bool) -> (EncoderWeights, Io) {
    let io = io(layout);
    let bytes = read(&format!("{layout}.model.safetensors"));
    let weights = EncoderWeights::from_safetensors_bytes_as(&bytes, layout, &template(&io, lm_head)).unwrap();
    (weights, io)
}

/// Largest `|got - want|` over `max |want|`.
fn rel_err(got: &Matrix, want: &Matrix) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let scale = want.as_slice().iter().fold(0.0f64, |m, v| m.max((*v as f64).abs()));
    let worst =
        got.as_slice().iter().zip(want.as_slice()).fold(0.0f64, |m, (g, w)| m.max((*g as f64 - *w as f64).abs()));
    worst / scale
}

/// Against PyTorch's float32 forward and its float64 one, relative to the output's magnitude.
const TOLERANCE: f64 = 1e-5;

fn check(what: &str, got: &Matrix, io: &Io, name: &str) {
    let (f32_out, f64_out) = &io.outputs[name];
    let (e32, e64) = (rel_err(got, f32_out), rel_err(got, f64_out));
    eprintln!("{what} {name}: relative error {e32:.2e} vs torch float32, {e64:.2e} vs float64");
    assert!(e32 <= TOLERANCE && e64 <= TOLERANCE, "{what} {name}: {e32:e} / {e64:e} > {TOLERANCE:e}");
}

fn reproduces_pytorch(layout: &str, final_norm: bool) {
    let (weights, io) = load(layout, true);
    let cfg = *weights.config();
    let [layers, d_model, heads, ffn, vocab, seq] = io.config[..] else { panic!("config") };
    assert_eq!(
        (cfg.layers, cfg.d_model, cfg.heads, cfg.ffn, cfg.vocab, cfg.seq_len),
        (layers, d_model, heads, ffn, Some(vocab), seq)
    );
    assert_eq!(
        (cfg.activation, cfg.attention, cfg.layer_norm_eps),
        (Activation::Relu, AttentionMask::Causal, TORCH_LAYER_NORM_EPS)
    );
    assert!(cfg.lm_head);
    assert_eq!(cfg.final_norm, final_norm, "{layout}: final norm detected from the names");

    let dense = Encoder::dense(&weights);
    check(layout, &dense.embed(&io.tokens).unwrap(), &io, "embedded");
    let logits = dense.forward_tokens(&io.tokens, Threads::One).unwrap();
    check(layout, &logits, &io, "logits");
    check(layout, &kernels::encoder::log_softmax_rows(&logits), &io, "log_probs");
    check(layout, &dense.forward_tokens(&io.tokens, Threads::N(2)).unwrap(), &io, "logits");
    // The f64 oracle computes the same model.
    let embedded = dense.embed(&io.tokens).unwrap();
    check(&format!("{layout} reference"), &dense.reference_forward(&embedded), &io, "logits");

    // Without the lm_head the forward ends at the last hidden states.
    let (no_head, _) = load(layout, false);
    assert!(!no_head.config().lm_head);
    check(layout, &Encoder::dense(&no_head).forward_tokens(&io.tokens, Threads::One).unwrap(), &io, "hidden");
    // Loading without a preset finds the same model (ReLU, 1e-5, causal), without the head.
    let bytes = read(&format!("{layout}.model.safetensors"));
    let guessed = EncoderWeights::from_safetensors_bytes(&bytes, layout, heads, seq).unwrap();
    assert_eq!(guessed, no_head);
}

#[test]
fn rt3_layout_checkpoint_reproduces_pytorch() {
    // transformer_encoder.layers.N, encoder.weight, decoder, pos_encoder.pe (checked against our table).
    reproduces_pytorch("rt3_2021", false);
}

#[test]
fn nn_transformer_layout_checkpoint_reproduces_pytorch() {
    // encoder.layers.N, encoder.norm, input_emb.weight, decoder; no pe saved.
    reproduces_pytorch("examples_2023", true);
}

#[test]
fn pruned_variants_of_a_checkpoint_prune_the_lm_head_and_pass_selftest() {
    let (weights, io) = load("rt3_2021", true);
    let mut model = ReconfigurableModel::new(weights);
    model.add_variant("dense", &VariantSpec::Dense).unwrap();
    let bp = VariantSpec::Block { sparsity: 0.5, block_rows: 4, block_cols: 1, per_layer: None, global: false };
    let info = model.add_variant("bp50", &bp).unwrap();
    let pp = VariantSpec::Pattern {
        base: "bp50".into(),
        tile: 4,
        patterns_per_set: 4,
        sparsity: 0.75,
        method: CandidateMethod::Rt3TileSums,
        seed: 1,
    };
    let pp_info = model.add_variant("pp75", &pp).unwrap();
    // 12 encoder linears + the lm_head, pruned like the rest.
    for i in [&info, &pp_info] {
        assert_eq!(i.layers.len(), 13);
        let head = i.layers.last().unwrap();
        assert_eq!((head.out_features, head.in_features), (50, 16));
        assert!(head.sparsity() > 0.4, "{}: lm_head sparsity {}", i.name, head.sparsity());
    }
    assert_eq!(info.dense_weights, 2 * (4 * 16 * 16 + 2 * 16 * 8) + 50 * 16);
    assert!(pp_info.layers.last().unwrap().sparsity() >= 0.74);

    let input = model.embed(&io.tokens).unwrap();
    let reports = model.selftest(&input).unwrap();
    assert_eq!(reports.len(), 3);
    for r in &reports {
        assert!(r.passed, "{r:?}");
        assert_eq!(r.checks, 14, "13 linear layers and the forward");
    }
    let dense = model.forward_variant("dense", &input, Threads::One).unwrap();
    check("model dense", &dense, &io, "logits");
    let pruned = model.forward_variant("pp75", &input, Threads::One).unwrap();
    assert_eq!(pruned.shape(), dense.shape());
    assert!(rel_err(&pruned, &dense) > 1e-3, "pruning the model changes its logits");
}

#[test]
fn a_checkpoint_of_the_wrong_family_or_without_its_decoder_is_refused() {
    let bytes = read("rt3_2021.model.safetensors");
    let e = EncoderWeights::from_safetensors_bytes_as(&bytes, "m.st", &Preset::DistilBert.config()).unwrap_err();
    assert!(matches!(e, WeightsError::WrongFamily { .. }), "{e}");
    assert!(e.to_string().contains("word-language-model") && e.to_string().contains("m.st"), "{e}");

    let st = SafeTensors::deserialize(&bytes).unwrap();
    let rewrite = |edit: &dyn Fn(&str, &mut Vec<u8>) -> bool| -> Vec<u8> {
        let mut kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, view) in st.tensors() {
            let mut data = view.data().to_vec();
            if edit(&name, &mut data) {
                kept.push((name, view.dtype(), view.shape().to_vec(), data));
            }
        }
        let views = kept
            .iter()
            .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()));
        safetensors::serialize(views, None).unwrap()
    };
    let io = io("rt3_2021");
    let no_decoder = rewrite(&|name, _| !name.starts_with("decoder."));
    let e = EncoderWeights::from_safetensors_bytes_as(&no_decoder, "m.st", &template(&io, true)).unwrap_err();
    assert!(e.to_string().contains("`decoder.weight`"), "{e}");
    // Without the lm_head the decoder is not needed.
    EncoderWeights::from_safetensors_bytes_as(&no_decoder, "m.st", &template(&io, false)).unwrap();

    // A positional table that is not the sinusoid is refused (the forward recomputes it).
    let shifted = rewrite(&|name, data| {
        if name == "pos_encoder.pe" {
            let v = f32::from_le_bytes(data[64..68].try_into().unwrap()) + 0.01;
            data[64..68].copy_from_slice(&v.to_le_bytes());
        }
        true
    });
    let e = EncoderWeights::from_safetensors_bytes_as(&shifted, "m.st", &template(&io, false)).unwrap_err();
    assert!(matches!(e, WeightsError::Positions { position: 1, column: 0, .. }), "{e}");
}

/// A tiny model of the preset's kind (ReLU, 1e-5, causal, a vocabulary), synthetic.
fn tiny(lm_head: bool) -> EncoderConfig {
    EncoderConfig {
        layers: 2,
        d_model: 16,
        heads: 2,
        ffn: 8,
        seq_len: 6,
        vocab: Some(40),
        ..Preset::Rt3Transformer.config()
    }
    .with_lm_head(lm_head)
}

#[test]
fn causal_mask_keeps_earlier_outputs_blind_to_later_tokens() {
    for lm_head in [false, true] {
        let model = Encoder::dense(&EncoderWeights::random(tiny(lm_head), 3).unwrap());
        let tokens = random_tokens(40, 6, 9);
        let mut changed = tokens.clone();
        changed[4] = (changed[4] + 1) % 40;
        let a = model.forward_tokens(&tokens, Threads::One).unwrap();
        let b = model.forward_tokens(&changed, Threads::One).unwrap();
        for t in 0..4 {
            assert_eq!(a.row(t), b.row(t), "lm_head {lm_head}: token {t} saw a later token");
        }
        assert_ne!(a.row(4), b.row(4));
        assert_ne!(a.row(5), b.row(5), "a later token sees the change");
        assert_eq!(a.cols(), if lm_head { 40 } else { 16 });
    }
    // Without the mask (BERT-style attention) every token sees every token.
    let cfg = EncoderConfig { attention: AttentionMask::Bidirectional, ..tiny(false) };
    let model = Encoder::dense(&EncoderWeights::random(cfg, 3).unwrap());
    let tokens = random_tokens(40, 6, 9);
    let mut changed = tokens.clone();
    changed[4] = (changed[4] + 1) % 40;
    let a = model.forward_tokens(&tokens, Threads::One).unwrap();
    let b = model.forward_tokens(&changed, Threads::One).unwrap();
    assert_ne!(a.row(0), b.row(0));
}

#[test]
fn activation_eps_and_mask_are_per_preset_and_the_forward_follows_them() {
    let rt3 = Preset::Rt3Transformer.config();
    assert_eq!((rt3.activation, rt3.layer_norm_eps, rt3.attention), (Activation::Relu, 1e-5, AttentionMask::Causal));
    for p in [Preset::DistilBert, Preset::MiniLm] {
        let c = p.config();
        assert_eq!(
            (c.activation, c.layer_norm_eps, c.attention),
            (Activation::Gelu, 1e-12, AttentionMask::Bidirectional)
        );
        assert_eq!((c.vocab, c.lm_head, c.final_norm), (None, false, false));
        assert!(!p.has_vocabulary());
    }
    assert!(Preset::Rt3Transformer.has_vocabulary());
    // Each combination runs as its own f64 oracle says, and the choices change the output.
    let input = Matrix::random(6, 16, 4, 1.7);
    let mut outputs = Vec::new();
    for (activation, eps) in [(Activation::Relu, 1e-5), (Activation::Gelu, 1e-5), (Activation::Relu, 1e-12)] {
        let cfg = EncoderConfig { activation, layer_norm_eps: eps, ..tiny(true) };
        let enc = Encoder::dense(&EncoderWeights::random(cfg, 8).unwrap());
        let got = enc.forward(&input, Threads::One);
        let want = enc.reference_forward(&input);
        assert!(rel_err(&got, &want) < FORWARD_TOLERANCE, "{activation:?} {eps}: {}", rel_err(&got, &want));
        outputs.push(got);
    }
    assert!(rel_err(&outputs[0], &outputs[1]) > 1e-3, "ReLU and GELU differ");
    assert_ne!(outputs[0], outputs[2], "eps reaches the layer norms");
}

#[test]
fn the_lm_head_is_an_optional_linear_layer_counted_everywhere() {
    let off = Preset::Rt3Transformer.config();
    let on = off.with_lm_head(true);
    assert_eq!(off.vocab, Some(WIKITEXT2_VOCAB));
    assert_eq!((off.linear_count(), on.linear_count()), (12, 13));
    assert_eq!((off.output_width(), on.output_width()), (800, 33_278));
    assert_eq!(on.lm_head_id().unwrap().to_string(), "lm_head");
    assert_eq!(on.linear_id(12), on.lm_head_id());
    assert_eq!((off.linear_id(12), on.linear_id(13)), (None, None));
    assert_eq!(on.linear_shape(LinearSlot::LmHead), (33_278, 800));
    // Two layers of 4·800² + 2·800·200 weights; the head 800 x 33,278 (82 % of them with it).
    assert_eq!(off.linear_weight_count(), 5_760_000);
    assert_eq!(on.linear_weight_count(), 5_760_000 + 26_622_400);
    // Parameters: + biases and norms (14,800), the embedding (26,622,400), the head's bias.
    assert_eq!(off.parameter_count(), 5_760_000 + 14_800 + 26_622_400);
    assert_eq!(on.parameter_count(), 5_760_000 + 26_622_400 + 14_800 + 33_278 + 26_622_400);
    // MACs of one 35-token inference: linears + attention (2·2·35²·800).
    assert_eq!(off.macs(35), 5_760_000 * 35 + 3_920_000);
    assert_eq!(on.macs(35), (5_760_000 + 26_622_400) * 35 + 3_920_000);
    assert_eq!(
        EncoderConfig { vocab: None, ..on }.validate().unwrap_err().to_string(),
        "encoder config: lm_head needs a vocabulary (`vocab`); this model has none"
    );

    // Shapes, stats and memory of a small model with and without it.
    for lm_head in [false, true] {
        let cfg = tiny(lm_head);
        let mut model = ReconfigurableModel::new(EncoderWeights::random(cfg, 2).unwrap());
        let dense = model.add_variant("dense", &VariantSpec::Dense).unwrap();
        let bp = VariantSpec::Block { sparsity: 0.5, block_rows: 4, block_cols: 1, per_layer: None, global: false };
        model.add_variant("bp", &bp).unwrap();
        assert_eq!(dense.layers.len(), cfg.linear_count());
        assert_eq!(dense.multiplied, cfg.linear_weight_count(), "dense multiplies every weight once per token");
        assert_eq!(dense.dense_weights, cfg.linear_weight_count());
        let out = model.forward(&model.seeded_input(6, 1), Threads::One).unwrap();
        assert_eq!(out.shape(), (6, if lm_head { 40 } else { 16 }));
        let specs = [("dense", &VariantSpec::Dense), ("bp", &bp)];
        let est = estimate_bytes(&cfg, &specs);
        assert!(
            est.total() >= model.resident_bytes(),
            "lm_head {lm_head}: {} < {}",
            est.total(),
            model.resident_bytes()
        );
        assert!(est.source_weights >= cfg.parameter_count() * 4);
    }
    // Per-layer ratios cover the head too, and name it.
    let cfg = tiny(true);
    let mut model = ReconfigurableModel::new(EncoderWeights::random(cfg, 2).unwrap());
    let mut ratios = vec![0.0; 13];
    ratios[12] = 0.75;
    let spec =
        VariantSpec::Block { sparsity: 0.0, block_rows: 4, block_cols: 1, per_layer: Some(ratios), global: false };
    let info = model.add_variant("head-only", &spec).unwrap();
    assert_eq!(info.layers[0].sparsity(), 0.0);
    assert!((info.layers[12].sparsity() - 0.75).abs() < 0.05, "{}", info.layers[12].sparsity());
    let mut bad = vec![0.0; 13];
    bad[12] = 1.5;
    let spec = VariantSpec::Block { sparsity: 0.0, block_rows: 4, block_cols: 1, per_layer: Some(bad), global: false };
    let e = model.add_variant("bad", &spec).unwrap_err().to_string();
    assert!(e.contains("per_layer[12] (lm_head)"), "{e}");
}

#[test]
fn synthetic_preset_weights_have_a_token_embedding_and_seeded_inputs_use_it() {
    let cfg = EncoderConfig { layers: 1, ..Preset::Rt3Transformer.config() }.with_seq_len(4);
    let weights = EncoderWeights::random(cfg, 1).unwrap();
    let table = weights.embedding().unwrap().table();
    assert_eq!(table.shape(), (WIKITEXT2_VOCAB, 800));
    // init_weights' range.
    assert!(table.as_slice().iter().all(|v| v.abs() <= 0.1));
    let model = ReconfigurableModel::new(weights);
    let input = model.seeded_input(4, 7);
    assert_eq!(input.shape(), (4, 800));
    assert_eq!(input, model.embed(&random_tokens(WIKITEXT2_VOCAB, 4, 7)).unwrap());
    assert!(model.embed(&[WIKITEXT2_VOCAB as u32]).unwrap_err().to_string().contains("outside the vocabulary"));
    assert!(model.embed(&[]).is_err());
}
