//! Holding one pattern set at a time: a cold switch puts a set into effect
//! from its stored definitions and computes exactly what the prepacked set
//! computes; a set that is not resident cannot be run or hot-switched to; the
//! memory saving is what the packed sets cost.

use kernels::encoder::{EncoderConfig, EncoderWeights, Preset};
use kernels::model::{random_input, ModelError, ReconfigurableModel, Residency, VariantSpec};
use kernels::prune::pattern::CandidateMethod;
use kernels::Threads;

/// A small model (built from a preset so fields added to the config keep their preset values).
fn small_config() -> EncoderConfig {
    let mut cfg = Preset::MiniLm.config();
    cfg.layers = 2;
    cfg.d_model = 32;
    cfg.heads = 4;
    cfg.ffn = 64;
    cfg.seq_len = 8;
    cfg
}

fn model() -> ReconfigurableModel {
    let mut model = ReconfigurableModel::new(EncoderWeights::random(small_config(), 5).unwrap());
    model.add_variant("dense", &VariantSpec::Dense).unwrap();
    let bp = VariantSpec::Block { sparsity: 0.5, block_rows: 8, block_cols: 1, per_layer: None, global: false };
    model.add_variant("bp50", &bp).unwrap();
    for (name, sparsity) in [("pp62", 0.625), ("pp75", 0.75), ("pp87", 0.875)] {
        let spec = VariantSpec::Pattern {
            base: "bp50".into(),
            tile: 8,
            patterns_per_set: 4,
            sparsity,
            method: CandidateMethod::Rt3TileSums,
            seed: 3,
        };
        model.add_variant(name, &spec).unwrap();
    }
    model
}

#[test]
fn a_cold_switch_computes_exactly_what_the_prepacked_set_computes() {
    let prepacked = model();
    let mut one_set = model();
    one_set.switch("pp62").unwrap();
    let freed = one_set.set_residency(Residency::OneSet);
    assert!(freed > 0, "dropping two of three packed sets frees memory");
    let input = random_input(one_set.config(), 9);
    for name in ["pp75", "pp87", "pp62"] {
        assert!(!one_set.is_resident(name).unwrap() || name == "pp62");
        one_set.cold_switch(name).unwrap();
        assert_eq!(one_set.active().unwrap().name, name);
        let got = one_set.forward(&input, Threads::One).unwrap();
        let want = prepacked.forward_variant(name, &input, Threads::One).unwrap();
        assert_eq!(got.as_slice(), want.as_slice(), "{name}: the same assignment and packing, bit for bit");
        // Exactly one pattern set is resident after each cold switch.
        let resident: Vec<&str> =
            ["pp62", "pp75", "pp87"].into_iter().filter(|n| one_set.is_resident(n).unwrap()).collect();
        assert_eq!(resident, vec![name]);
    }
}

#[test]
fn a_set_that_is_not_resident_is_refused_by_name() {
    let mut m = model();
    m.switch("pp75").unwrap();
    m.set_residency(Residency::OneSet);
    let input = random_input(m.config(), 1);
    assert_eq!(m.switch("pp87").unwrap_err(), ModelError::NotResident("pp87".into()));
    assert!(matches!(m.forward_variant("pp87", &input, Threads::One), Err(ModelError::NotResident(n)) if n == "pp87"));
    // Baselines stay packed; hot switching among them and the resident set works.
    m.switch("dense").unwrap();
    m.switch("bp50").unwrap();
    m.switch("pp75").unwrap();
    assert!(matches!(m.cold_switch("bp50"), Err(ModelError::NotAPatternSet { .. })));
    // The self-test covers what is resident.
    let names: Vec<String> = m.selftest(&random_input(m.config(), 2)).unwrap().into_iter().map(|r| r.variant).collect();
    assert_eq!(names, vec!["dense", "bp50", "pp75"]);
}

#[test]
fn one_set_residency_costs_the_largest_set_not_all_of_them() {
    let mut m = model();
    let bytes = m.residency_bytes();
    let sets: Vec<usize> = ["pp62", "pp75", "pp87"].iter().map(|n| m.variant(n).unwrap().bytes).collect();
    let largest = *sets.iter().max().unwrap();
    let others: usize = sets.iter().sum::<usize>() - largest;
    // The two strategies differ by the packed sets (and their masks) that one-set does not hold.
    assert!(bytes.all_prepacked - bytes.one_set >= others, "{bytes:?} vs sets {sets:?}");
    let all = m.resident_bytes();
    m.switch("pp62").unwrap();
    m.set_residency(Residency::OneSet);
    assert!(m.resident_bytes() < all);
    assert!(m.resident_bytes() <= bytes.one_set, "{} > {}", m.resident_bytes(), bytes.one_set);
}
