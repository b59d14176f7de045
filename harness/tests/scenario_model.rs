//! The scenario's `model:` section: a preset, optionally read from a safetensors file, and the
//! word language model's optional `lm_head`; what reaches the agent's `load`.

use harness::runner::load_request;
use harness::scenario::{parse_scenario, ModelPreset, ModelSource};

fn scenario(model: &str) -> String {
    format!(
        "\
name: t
boards:
  - name: b1
    host: board.example
    user: pi
    workdir: /tmp/hil
model:
{model}
variants:
  - name: dense
    kind: dense
dvfs:
  levels: [1500MHz]
measure:
  min_duration: 1s
"
    )
}

fn refused(model: &str) -> String {
    match parse_scenario(&scenario(model), "scenarios/t.yaml") {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn lm_head_is_off_by_default_and_reaches_the_agent() {
    let s = parse_scenario(&scenario("  preset: rt3-transformer"), "t.yaml").unwrap();
    assert!(!s.model.lm_head);
    assert!(!load_request(&s).model.lm_head);
    let s = parse_scenario(&scenario("  preset: rt3-transformer\n  lm_head: true"), "t.yaml").unwrap();
    assert!(s.model.lm_head);
    let req = load_request(&s);
    assert!(req.model.lm_head && req.model.preset == "rt3-transformer");
}

#[test]
fn lm_head_needs_a_preset_with_a_vocabulary() {
    let e = refused("  preset: distilbert\n  lm_head: true");
    assert!(e.contains("model.lm_head") && e.contains("only rt3-transformer"), "{e}");
    let e = refused("  preset: rt3-transformer\n  lm_head: 3");
    assert!(e.contains("lm_head"), "{e}");
}

#[test]
fn a_safetensors_file_is_read_as_the_preset_it_names() {
    let s = parse_scenario(
        &scenario("  preset: rt3-transformer\n  safetensors: /opt/hil/lm.safetensors\n  lm_head: true"),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(
        s.model.source,
        ModelSource::Safetensors { path: "/opt/hil/lm.safetensors".into(), preset: ModelPreset::Rt3Transformer }
    );
    let req = load_request(&s);
    assert_eq!(req.model.preset, "rt3-transformer", "the agent reads the file as this architecture");
    assert_eq!(req.model.safetensors.as_deref(), Some("/opt/hil/lm.safetensors"));
    assert!(req.model.lm_head);

    let e = refused("  safetensors: /opt/hil/lm.safetensors");
    assert!(e.contains("model.preset") && e.contains("architecture"), "{e}");
}
