//! The RT3 schedule chooses among pattern sets: baselines never scheduled, fidelity before
//! accuracy before sparsity, `min_fidelity` excluding sets, incomplete levels said plainly, and
//! the best static policy beside it.

mod analysis_support;

use analysis_support::{constant_ns, record, with_fidelity};
use harness::analysis::battery::project_board;
use harness::analysis::{
    aggregate_cells, rt3_schedule, BatteryModel, CellStats, PolicyKind, Ranking, Rt3Schedule, ScheduleRule,
};
use harness::results::CellRecord;
use harness::scenario::Workload;
use harness::stats::SummaryConfig;

const MHZ: u64 = 1000;

/// (MHz, level, variant, kind, sparsity, latency ms, energy mJ, fidelity cosine) -> two repeats.
type Row = (u64, u32, &'static str, &'static str, f64, f64, f64, Option<f64>);

fn cells(table: &[Row]) -> Vec<CellRecord> {
    let mut out = Vec::new();
    for repeat in 0..2 {
        for &(mhz, level, variant, kind, sparsity, ms, mj, fidelity) in table {
            let r = record(
                "b",
                mhz * MHZ,
                level,
                variant,
                kind,
                sparsity,
                repeat,
                constant_ns(ms, 20),
                Some(mj),
                Some(1.0),
            );
            out.push(match fidelity {
                Some(f) => with_fidelity(r, f),
                None => r,
            });
        }
    }
    out
}

fn schedule(table: &[Row], rule: &ScheduleRule) -> (Vec<CellStats>, Rt3Schedule) {
    let stats = aggregate_cells(&cells(table), &SummaryConfig { resamples: 50, ..SummaryConfig::default() });
    let refs: Vec<&CellStats> = stats.iter().collect();
    let sched = rt3_schedule("b", &refs, rule);
    (stats, sched)
}

fn deadline(ms: f64) -> ScheduleRule {
    ScheduleRule { deadline_ms: Some(ms), ..ScheduleRule::default() }
}

fn picked(s: &Rt3Schedule) -> Vec<Option<&str>> {
    s.levels.iter().map(|l| l.selected.as_ref().map(|v| v.variant.as_str())).collect()
}

/// Dense and block are the fastest-meeting and least sparse; three pattern sets of rising
/// sparsity, fidelity falling with sparsity except where a test says otherwise.
const LEVELS: &[Row] = &[
    (1500, 0, "dense", "dense", 0.0, 5.0, 20.0, Some(1.0)),
    (1500, 0, "bp50", "block", 0.5, 3.0, 12.0, Some(0.95)),
    (1500, 0, "pp62", "pattern", 0.625, 4.0, 11.0, Some(0.93)),
    (1500, 0, "pp75", "pattern", 0.75, 3.0, 9.0, Some(0.91)),
    (1500, 0, "pp87", "pattern", 0.875, 2.0, 7.0, Some(0.85)),
    (1000, 1, "dense", "dense", 0.0, 8.0, 18.0, Some(1.0)),
    (1000, 1, "bp50", "block", 0.5, 5.0, 11.0, Some(0.95)),
    (1000, 1, "pp62", "pattern", 0.625, 11.0, 10.0, Some(0.93)),
    (1000, 1, "pp75", "pattern", 0.75, 9.0, 8.0, Some(0.91)),
    (1000, 1, "pp87", "pattern", 0.875, 3.0, 6.0, Some(0.85)),
    (600, 2, "dense", "dense", 0.0, 12.0, 16.0, Some(1.0)),
    (600, 2, "bp50", "block", 0.5, 8.0, 10.0, Some(0.95)),
    (600, 2, "pp62", "pattern", 0.625, 18.0, 9.0, Some(0.93)),
    (600, 2, "pp75", "pattern", 0.75, 14.0, 7.0, Some(0.91)),
    (600, 2, "pp87", "pattern", 0.875, 9.5, 5.0, Some(0.85)),
];

#[test]
fn only_pattern_sets_are_scheduled_even_when_baselines_meet_the_deadline() {
    // 10 ms: dense and bp50 meet it at every level but are baselines; among pattern sets,
    // 1500 MHz: all three (pp62 has the best fidelity); 1000 MHz: pp75 (9) and pp87 (3);
    // 600 MHz: only pp87 (9.5).
    let (_, s) = schedule(LEVELS, &deadline(10.0));
    assert_eq!(picked(&s), vec![Some("pp62"), Some("pp75"), Some("pp87")]);
    assert!(s.is_complete() && s.incomplete_note().is_none());
    assert_eq!(s.levels[1].meeting, vec!["pp75".to_string(), "pp87".to_string()]);
    assert!(s.levels.iter().all(|l| l.pattern_sets == 3));
    assert!(s.levels.iter().all(|l| l.ranking == Some(Ranking::Fidelity)));
    assert!(s.levels[0].note.contains("pp62 has the best fidelity (cosine 0.9300)"), "{}", s.levels[0].note);
    let sel = s.levels[2].selected.as_ref().unwrap();
    assert_eq!((sel.kind.as_str(), sel.fidelity_cosine), ("pattern", Some(0.85)));
    assert!(s.rule.describe().contains("dense and block are baselines, never scheduled"));
    // No deadline: every pattern set qualifies; still never dense.
    let (_, s) = schedule(LEVELS, &ScheduleRule::default());
    assert_eq!(picked(&s), vec![Some("pp62"); 3]);
    assert!(s.rule.describe().contains("no latency deadline"));
}

#[test]
fn accuracy_ranks_before_fidelity_before_sparsity() {
    // The scenario gives every candidate an accuracy: it decides, even against measured
    // fidelity (pp87 is the most faithful here, pp75 the most accurate).
    let mut table = LEVELS.to_vec();
    for r in table.iter_mut().filter(|r| r.2 == "pp87") {
        r.7 = Some(0.99);
    }
    let mut rule = deadline(10.0);
    rule.accuracy = [("pp62".to_string(), 0.90), ("pp75".to_string(), 0.95), ("pp87".to_string(), 0.80)].into();
    let (_, s) = schedule(&table, &rule);
    // 1500 MHz: all three meet 10 ms, pp75 is the most accurate; 1000 MHz: pp75 and pp87, pp75;
    // 600 MHz: only pp87.
    assert_eq!(picked(&s), vec![Some("pp75"), Some("pp75"), Some("pp87")]);
    assert_eq!(s.levels[0].ranking, Some(Ranking::Accuracy));
    assert!(s.levels[0].note.contains("pp75 is the most accurate (0.9500)"), "{}", s.levels[0].note);
    assert!(s.rule.describe().contains("the most accurate when the scenario gives every one an accuracy, else"));

    // Accuracy missing for one candidate: measured fidelity (known for all) decides: pp87.
    rule.accuracy.remove("pp75");
    let (_, s) = schedule(&table, &rule);
    assert_eq!(picked(&s), vec![Some("pp87"); 3]);
    assert_eq!(s.levels[0].ranking, Some(Ranking::Fidelity));
    assert!(s.levels[0].note.contains("pp87 has the best fidelity (cosine 0.9900)"), "{}", s.levels[0].note);

    // Neither accuracy nor fidelity for every one: the least sparse.
    for r in table.iter_mut().filter(|r| r.2 == "pp62") {
        r.7 = None;
    }
    let (_, s) = schedule(&table, &rule);
    assert_eq!(picked(&s)[0], Some("pp62"));
    assert_eq!(s.levels[0].ranking, Some(Ranking::LeastSparse));
    assert!(s.levels[0].note.contains("least sparse"), "{}", s.levels[0].note);
}

#[test]
fn min_fidelity_excludes_a_pattern_set_and_can_empty_a_level() {
    let mut rule = deadline(10.0);
    rule.min_fidelity = [("pp62".to_string(), 0.95)].into();
    let (_, s) = schedule(LEVELS, &rule);
    // pp62 (0.93) is below its floor: 1500 MHz falls back to pp75.
    assert_eq!(picked(&s), vec![Some("pp75"), Some("pp75"), Some("pp87")]);
    assert_eq!(s.levels[0].excluded.len(), 1);
    assert!(s.levels[0].excluded[0].contains("pp62: fidelity (cosine) 0.9300 below its min_fidelity 0.95"));
    assert!(s.levels[0].note.contains("left out by min_fidelity"), "{}", s.levels[0].note);
    assert!(s.rule.describe().contains("min_fidelity (pp62 0.95)"));

    // A floor on the only set meeting the deadline at 600 MHz empties that level.
    rule.min_fidelity.insert("pp87".into(), 0.9);
    let (_, s) = schedule(LEVELS, &rule);
    assert_eq!(picked(&s), vec![Some("pp75"), Some("pp75"), None]);
    assert!(!s.is_complete());
    assert!(s.levels[2].note.contains("none reaches its min_fidelity"), "{}", s.levels[2].note);

    // A floor that cannot be checked (fidelity not measured) excludes the set too.
    let mut table = LEVELS.to_vec();
    for r in table.iter_mut() {
        r.7 = None;
    }
    let rule = ScheduleRule { min_fidelity: [("pp62".to_string(), 0.5)].into(), ..deadline(10.0) };
    let (_, s) = schedule(&table, &rule);
    assert_eq!(picked(&s)[0], Some("pp75"));
    assert!(s.levels[0].excluded[0].contains("fidelity not measured"), "{:?}", s.levels[0].excluded);
}

#[test]
fn a_level_without_a_qualifying_pattern_set_is_said_plainly_and_marks_the_schedule_incomplete() {
    // 5 ms: all sets meet at 1500 MHz, only pp87 (3 ms) at 1000 MHz; at 600 MHz the fastest set
    // takes 9.5 ms (the baselines miss too, and would not count anyway).
    let (stats, s) = schedule(LEVELS, &deadline(5.0));
    assert_eq!(picked(&s), vec![Some("pp62"), Some("pp87"), None]);
    assert!(!s.is_complete());
    let note = &s.levels[2].note;
    assert!(note.contains("no pattern set meets the 5 ms deadline (p99) at 600 MHz"), "{note}");
    assert!(note.contains("the fastest, pp87, has p99 9.50 ms"), "{note}");
    let incomplete = s.incomplete_note().unwrap();
    assert!(incomplete.starts_with("INCOMPLETE schedule on board b"), "{incomplete}");
    assert!(s.to_markdown().contains("| 2 | 600 MHz | none |"));

    // The projection leaves the 600 MHz share out and says so.
    let refs: Vec<&CellStats> = stats.iter().collect();
    let t = project_board("b", &refs, &s, &[0.5, 0.3, 0.2], &BatteryModel::rt3_default(), Workload::BackToBack);
    let rt3 = t.row(PolicyKind::Rt3Schedule).unwrap();
    assert!(!rt3.complete);
    assert!(rt3.note.contains("INCOMPLETE: no pattern set qualifies at 600 MHz (20 %)"), "{}", rt3.note);
    // 0.5 x 37800 / 0.011 + 0.3 x 37800 / 0.006 = 1,718,181.8 + 1,890,000.
    let expected = 0.5 * 37_800.0 / 0.011 + 0.3 * 37_800.0 / 0.006;
    assert!((rt3.outcome.as_ref().unwrap().inferences - expected).abs() < 1e-6 * expected);

    // A run with no pattern set at all has nothing to schedule anywhere.
    let baselines: Vec<Row> = LEVELS.iter().copied().filter(|r| r.3 != "pattern").collect();
    let (_, s) = schedule(&baselines, &deadline(100.0));
    assert_eq!(picked(&s), vec![None, None, None]);
    assert!(s.levels[0].note.contains("no pattern set measured at 1500 MHz"), "{}", s.levels[0].note);
    assert!(!s.is_complete());
}

#[test]
fn best_static_is_the_most_inferences_among_pairs_meeting_the_deadline_of_any_kind() {
    // 10 ms. Static pairs meeting it, with energy: the cheapest is pp87@600 (5 mJ, 9.5 ms).
    let (stats, s) = schedule(LEVELS, &deadline(10.0));
    let refs: Vec<&CellStats> = stats.iter().collect();
    let t = project_board("b", &refs, &s, &[0.5, 0.3, 0.2], &BatteryModel::rt3_default(), Workload::BackToBack);
    let best = t.row(PolicyKind::BestStatic).unwrap();
    assert_eq!((best.variant.as_deref(), best.freq_khz), (Some("pp87"), Some(600_000)));
    assert_eq!(best.name, "best static (pp87@600 MHz)");
    assert!((best.outcome.as_ref().unwrap().inferences - 37_800.0 / 0.005).abs() < 1e-3);
    // Gain against dense@top (20 mJ): x4.
    assert!((best.gain_vs_dense_top.unwrap() - 4.0).abs() < 1e-9);
    // Its row follows the schedule's; static rows carry their deadline verdict.
    let at = t.rows.iter().position(|r| r.kind == PolicyKind::Rt3Schedule).unwrap();
    assert_eq!(t.rows[at + 1].kind, PolicyKind::BestStatic);
    let pp62_600 = t.rows.iter().find(|r| r.name == "pp62@600 MHz").unwrap();
    assert_eq!(pp62_600.meets_deadline, Some(false));

    // 8 ms: pp87@600 (9.5 ms) misses although cheapest; the best static is pp87@1000 (6 mJ).
    let (stats, s) = schedule(LEVELS, &deadline(8.0));
    let refs: Vec<&CellStats> = stats.iter().collect();
    let t = project_board("b", &refs, &s, &[0.5, 0.3, 0.2], &BatteryModel::rt3_default(), Workload::BackToBack);
    let best = t.row(PolicyKind::BestStatic).unwrap();
    assert_eq!((best.variant.as_deref(), best.freq_khz), (Some("pp87"), Some(1_000_000)));

    // min_fidelity applies to the best static as well (the same quality bar as the schedule):
    // without pp87 (0.85 < 0.9) the cheapest pair meeting 8 ms is pp75@1500 (9 mJ; bp50@600 takes 10).
    let rule = ScheduleRule { min_fidelity: [("pp87".to_string(), 0.9)].into(), ..deadline(8.0) };
    let (stats, s) = schedule(LEVELS, &rule);
    let refs: Vec<&CellStats> = stats.iter().collect();
    let t = project_board("b", &refs, &s, &[0.5, 0.3, 0.2], &BatteryModel::rt3_default(), Workload::BackToBack);
    let best = t.row(PolicyKind::BestStatic).unwrap();
    assert_eq!((best.variant.as_deref(), best.freq_khz), (Some("pp75"), Some(1_500_000)), "{}", best.name);

    // Nothing meets the deadline: the row says so rather than picking a pair that misses.
    let (stats, s) = schedule(LEVELS, &deadline(1.0));
    let refs: Vec<&CellStats> = stats.iter().collect();
    let t = project_board("b", &refs, &s, &[0.5, 0.3, 0.2], &BatteryModel::rt3_default(), Workload::BackToBack);
    let best = t.row(PolicyKind::BestStatic).unwrap();
    let err = best.outcome.clone().unwrap_err();
    assert!(err.contains("no static (frequency, variant) pair meeting the 1 ms deadline"), "{err}");
    assert!(t.row(PolicyKind::Rt3Schedule).unwrap().outcome.is_err());
}

#[test]
fn scenario_accuracy_and_min_fidelity_reach_the_rule() {
    let yaml = analysis_support::scenario_yaml("1500MHz, 600MHz", Some("10ms"), "")
        .replace("    sparsity: 0.75\n", "    sparsity: 0.75\n    accuracy: 0.9\n    min_fidelity: 0.8\n");
    let scenario = harness::scenario::parse_scenario(&yaml, "synth.yaml").unwrap();
    let rule = ScheduleRule::from_scenario(&scenario);
    assert_eq!(rule.deadline_ms, Some(10.0));
    assert_eq!(rule.accuracy.get("pp"), Some(&0.9));
    assert_eq!(rule.min_fidelity.get("pp"), Some(&0.8));
}

#[test]
fn a_relative_deadline_is_resolved_per_board_against_the_reference_at_the_top_level() {
    use harness::scenario::Deadline;
    // 1.5 x dense's p99 at 1500 MHz (5 ms) = 7.5 ms: at 1000 MHz only pp87 (3 ms) meets it
    // among the pattern sets; at 600 MHz none does (the fastest, pp87, takes 9.5 ms).
    let rule = ScheduleRule {
        deadline: Some(Deadline::Relative { factor: 1.5, reference: "dense".into() }),
        ..ScheduleRule::default()
    };
    let stats = aggregate_cells(&cells(LEVELS), &SummaryConfig { resamples: 50, ..SummaryConfig::default() });
    let refs: Vec<&CellStats> = stats.iter().collect();
    let resolved = rule.for_board(&refs);
    assert!((resolved.deadline_ms.unwrap() - 7.5).abs() < 1e-9, "{:?}", resolved.deadline_ms);
    assert!(resolved.deadline_basis().unwrap().contains("1.5 x dense"), "{:?}", resolved.deadline_basis());
    let sched = rt3_schedule("b", &refs, &resolved);
    assert_eq!(picked(&sched), vec![Some("pp62"), Some("pp87"), None]);
    assert!(!sched.is_complete());

    // Unresolvable (no dense measured): nothing meets it, and the schedule says why.
    let without_dense: Vec<&CellStats> = stats.iter().filter(|c| c.key.variant != "dense").collect();
    let unresolved = rule.for_board(&without_dense);
    assert_eq!(unresolved.deadline_ms, None);
    assert!(!unresolved.meets_deadline(0.001));
    let sched = rt3_schedule("b", &without_dense, &unresolved);
    assert_eq!(picked(&sched), vec![None, None, None]);
    assert!(sched.levels[0].note.contains("unresolved"), "{}", sched.levels[0].note);

    // The journal's cells get the same deadline in the tables.
    let mut records = cells(LEVELS);
    harness::results::fill_relative_deadlines(&mut records, rule.deadline.as_ref().unwrap());
    for r in &records {
        assert!((r.deadline_ms.unwrap() - 7.5).abs() < 1e-9);
        assert_eq!(r.deadline_met, Some(r.latency_p99_ms <= 7.5), "{} {}", r.variant, r.freq_khz);
    }
}

#[test]
fn a_level_whose_frequency_was_not_verified_is_named_in_the_schedule_and_its_table() {
    let (_, s) = schedule(LEVELS, &deadline(10.0));
    assert!(s.unverified_levels().is_empty() && s.unverified_note().is_none());
    assert!(!s.to_markdown().contains("UNVERIFIED"));
    // One repeat of pp75 at 1000 MHz ran at a frequency the board did not read back as pinned.
    let mut records = cells(LEVELS);
    let r = records.iter_mut().find(|r| r.variant == "pp75" && r.freq_khz == 1000 * MHZ && r.repeat == 1).unwrap();
    r.freq_verified = false;
    let stats = aggregate_cells(&records, &SummaryConfig { resamples: 50, ..SummaryConfig::default() });
    let s = rt3_schedule("b", &stats.iter().collect::<Vec<_>>(), &deadline(10.0));
    assert_eq!(picked(&s), vec![Some("pp62"), Some("pp75"), Some("pp87")], "the choice itself is unchanged");
    let levels: Vec<u64> = s.unverified_levels().iter().map(|l| l.freq_khz).collect();
    assert_eq!(levels, vec![1000 * MHZ]);
    assert_eq!((s.levels[1].unverified_repeats, s.levels[1].repeats), (1, 10));
    let note = s.unverified_note().unwrap();
    assert!(note.starts_with("UNVERIFIED frequency on board b at 1000 MHz"), "{note}");
    assert!(note.contains("1 of 10 repeats"), "{note}");
    assert!(s.to_markdown().contains(&note));
}

#[test]
fn a_choice_that_hangs_on_a_few_per_cent_of_the_deadline_is_called_a_close_call() {
    // 9.2 ms: at 1500 MHz every set meets it by far (no remark); at 1000 MHz the chosen pp75
    // (9.0 ms) meets it by 2 %, and pp62 (11 ms) misses by far; at 600 MHz pp87 (9.5 ms) misses
    // by 3 %, so the level is empty in this run but might not be in the next.
    let (_, s) = schedule(LEVELS, &deadline(9.2));
    assert_eq!(picked(&s), vec![Some("pp62"), Some("pp75"), None]);
    assert!(!s.levels[0].note.contains("close call"), "{}", s.levels[0].note);
    let close_1000 = "close call: pp75 p99 9.00 ms within 5 % of the 9.20 ms deadline, so another run may choose";
    assert!(s.levels[1].note.contains(close_1000), "{}", s.levels[1].note);
    assert!(!s.levels[1].note.contains("pp62 p99"), "a set missing by 20 % is no close call: {}", s.levels[1].note);
    assert!(s.levels[2].note.contains("close call: pp87 p99 9.50 ms within 5 %"), "{}", s.levels[2].note);
    // The schedule's table carries the remark.
    assert!(s.to_markdown().contains(close_1000));
    // The chosen set a few per cent under the deadline, at the top level too.
    let (_, s) = schedule(LEVELS, &deadline(4.1));
    assert_eq!(picked(&s)[0], Some("pp62"));
    assert!(s.levels[0].note.contains("close call: pp62 p99 4.00 ms"), "{}", s.levels[0].note);
    let (_, s) = schedule(LEVELS, &deadline(3.1));
    assert_eq!(picked(&s)[0], Some("pp75"));
    assert!(s.levels[0].note.contains("close call: pp75 p99 3.00 ms"), "{}", s.levels[0].note);
}
