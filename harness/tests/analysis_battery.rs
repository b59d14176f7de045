//! RT3 schedule, battery projections and the paper's analytic model against hand-computed cases.

mod analysis_support;

use std::time::Duration;

use analysis_support::{constant_ns, record};
use harness::analysis::battery::{battery_csv, project, work_cost, OperatingPoint, Segment};
use harness::analysis::rt3_model::{model_levels, model_projection, rt3_power_w, rt3_runs, scaled_latency_ms};
use harness::analysis::{
    aggregate_cells, rt3_schedule, BatteryModel, CellStats, PolicyKind, ProjectionSource, ScheduleRule,
};
use harness::results::CellRecord;
use harness::scenario::Workload;
use harness::stats::{Statistic, SummaryConfig};

const MHZ: u64 = 1000;

/// (freq MHz, level, variant, kind, sparsity, latency ms, energy mJ) -> two identical repeats.
fn cells(table: &[(u64, u32, &str, &str, f64, f64, f64)], idle_w: f64) -> Vec<CellRecord> {
    let mut out = Vec::new();
    for repeat in 0..2 {
        for &(mhz, level, variant, kind, sparsity, ms, mj) in table {
            out.push(record(
                "b",
                mhz * MHZ,
                level,
                variant,
                kind,
                sparsity,
                repeat,
                constant_ns(ms, 20),
                Some(mj),
                Some(idle_w),
            ));
        }
    }
    out
}

fn stats(records: &[CellRecord]) -> Vec<CellStats> {
    aggregate_cells(records, &SummaryConfig { resamples: 50, ..SummaryConfig::default() })
}

fn rule(deadline_ms: Option<f64>) -> ScheduleRule {
    ScheduleRule { deadline_ms, statistic: Statistic::P99, accuracy: Default::default() }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    ((a - b) / b).abs() <= rel
}

/// Sparse variants faster AND lower energy than dense; dense misses 12 ms below the top level.
const SPARSE_WINS: &[(u64, u32, &str, &str, f64, f64, f64)] = &[
    (1500, 0, "dense", "dense", 0.0, 8.0, 24.0),
    (1500, 0, "bp", "block", 0.5, 4.0, 12.0),
    (1500, 0, "pp", "pattern", 0.75, 3.0, 9.0),
    (1000, 1, "dense", "dense", 0.0, 12.5, 20.0),
    (1000, 1, "bp", "block", 0.5, 6.0, 10.0),
    (1000, 1, "pp", "pattern", 0.75, 4.5, 7.5),
    (600, 2, "dense", "dense", 0.0, 20.0, 18.0),
    (600, 2, "bp", "block", 0.5, 13.0, 9.5),
    (600, 2, "pp", "pattern", 0.75, 7.0, 6.0),
];

/// Sparse variants faster but MORE energy per inference (a power-hungry sparse kernel).
const SPARSE_COSTLY: &[(u64, u32, &str, &str, f64, f64, f64)] = &[
    (1500, 0, "dense", "dense", 0.0, 8.0, 24.0),
    (1500, 0, "bp", "block", 0.5, 6.0, 30.0),
    (1500, 0, "pp", "pattern", 0.75, 5.0, 36.0),
    (1000, 1, "dense", "dense", 0.0, 12.5, 24.0),
    (1000, 1, "bp", "block", 0.5, 9.0, 30.0),
    (1000, 1, "pp", "pattern", 0.75, 7.5, 36.0),
    (600, 2, "dense", "dense", 0.0, 20.0, 24.0),
    (600, 2, "bp", "block", 0.5, 15.0, 30.0),
    (600, 2, "pp", "pattern", 0.75, 11.0, 36.0),
];

#[test]
fn schedule_picks_the_least_sparse_variant_meeting_the_deadline() {
    let s = stats(&cells(SPARSE_WINS, 1.0));
    let refs: Vec<&CellStats> = s.iter().collect();
    let sched = rt3_schedule("b", &refs, &rule(Some(12.0)));
    let picked: Vec<(u64, Option<&str>)> =
        sched.levels.iter().map(|l| (l.freq_khz / MHZ, l.selected.as_ref().map(|v| v.variant.as_str()))).collect();
    assert_eq!(picked, vec![(1500, Some("dense")), (1000, Some("bp")), (600, Some("pp"))]);
    assert!(sched.is_complete());
    assert_eq!(sched.levels[1].meeting, vec!["bp".to_string(), "pp".to_string()]);
    let md = sched.to_markdown();
    assert!(md.contains("| 2 | 600 MHz | pp | 0.750 | 7.00 |"), "{md}");
    assert!(md.contains("p99"), "{md}");

    // A deadline nothing meets at 600 MHz is said plainly.
    let sched = rt3_schedule("b", &refs, &rule(Some(6.5)));
    assert_eq!(sched.levels[0].selected.as_ref().unwrap().variant, "bp");
    assert!(sched.levels[2].selected.is_none());
    assert!(sched.levels[2].note.contains("no variant meets the 6.5 ms deadline"), "{}", sched.levels[2].note);
    assert!(sched.levels[2].note.contains("pp"), "names the fastest: {}", sched.levels[2].note);
    assert!(!sched.is_complete());
    assert!(sched.to_markdown().contains("| none |"));
}

#[test]
fn accuracy_overrides_sparsity_when_every_candidate_has_one() {
    let s = stats(&cells(SPARSE_WINS, 1.0));
    let refs: Vec<&CellStats> = s.iter().collect();
    let mut r = rule(Some(12.0));
    r.accuracy = [("dense".to_string(), 0.90), ("bp".to_string(), 0.88), ("pp".to_string(), 0.89)].into();
    let sched = rt3_schedule("b", &refs, &r);
    // 1000 MHz: bp (0.88) and pp (0.89) meet; pp is more accurate although sparser.
    assert_eq!(sched.levels[1].selected.as_ref().unwrap().variant, "pp");
    assert_eq!(sched.levels[1].selected.as_ref().unwrap().accuracy, Some(0.89));
}

#[test]
fn no_deadline_means_every_variant_qualifies() {
    let s = stats(&cells(SPARSE_WINS, 1.0));
    let refs: Vec<&CellStats> = s.iter().collect();
    let sched = rt3_schedule("b", &refs, &rule(None));
    assert!(sched.levels.iter().all(|l| l.selected.as_ref().unwrap().variant == "dense"));
    assert!(sched.rule.describe().contains("no latency deadline"));
}

#[test]
fn rt3_schedule_beats_dense_when_sparse_variants_are_faster_and_lower_power() {
    let s = stats(&cells(SPARSE_WINS, 1.0));
    let refs: Vec<&CellStats> = s.iter().collect();
    let sched = rt3_schedule("b", &refs, &rule(Some(12.0)));
    let table = harness::analysis::battery::project_board(
        "b",
        &refs,
        &sched,
        &[0.5, 0.3, 0.2],
        &BatteryModel::rt3_default(),
        Workload::BackToBack,
    );
    assert_eq!(table.source, ProjectionSource::Measured);
    let dense = table.row(PolicyKind::DenseAtTop).unwrap().outcome.clone().unwrap();
    let block = table.row(PolicyKind::BlockAtTop).unwrap().outcome.clone().unwrap();
    let rt3 = table.row(PolicyKind::Rt3Schedule).unwrap();
    let p = rt3.outcome.clone().unwrap();
    // Dense@1500: 37,800 J / 24 mJ = 1,575,000 inferences, x 8 ms = 3.5 h.
    assert!(close(dense.inferences, 1_575_000.0, 1e-9), "{dense:?}");
    assert!(close(dense.hours, 3.5, 1e-9));
    // Block@1500: 37,800 / 0.012 = 3,150,000.
    assert!(close(block.inferences, 3_150_000.0, 1e-9));
    // RT3: 0.5*37800/0.024 + 0.3*37800/0.010 + 0.2*37800/0.006 = 787,500 + 1,134,000 + 1,260,000
    // = 3,181,500 inferences; hours (787,500*8 + 1,134,000*6 + 1,260,000*7) ms / 3.6e6 = 6.09 h.
    assert!(close(p.inferences, 3_181_500.0, 1e-9), "{p:?}");
    assert!(close(p.hours, 6.09, 1e-9), "{p:?}");
    assert!(close(rt3.gain_vs_dense_top.unwrap(), 3_181_500.0 / 1_575_000.0, 1e-9));
    assert!(close(rt3.gain_vs_block_top.unwrap(), 3_181_500.0 / 3_150_000.0, 1e-9));
    assert!(rt3.gain_vs_dense_top.unwrap() > 2.0);
    assert!(rt3.complete);
    assert!(rt3.note.contains("50 % dense@1500 MHz"), "{}", rt3.note);
    // Every static pair is there too (9) besides dense@top, block@top and the schedule.
    assert_eq!(table.rows.iter().filter(|r| r.kind == PolicyKind::Static).count(), 9);
    let md = table.to_markdown();
    assert!(md.contains("RT3 schedule") && md.contains("2.02"), "{md}");
}

#[test]
fn rt3_schedule_does_not_beat_dense_when_sparse_variants_cost_more_energy() {
    let s = stats(&cells(SPARSE_COSTLY, 1.0));
    let refs: Vec<&CellStats> = s.iter().collect();
    let sched = rt3_schedule("b", &refs, &rule(Some(12.0)));
    let picked: Vec<&str> = sched.levels.iter().map(|l| l.selected.as_ref().unwrap().variant.as_str()).collect();
    assert_eq!(picked, vec!["dense", "bp", "pp"]);
    let table = harness::analysis::battery::project_board(
        "b",
        &refs,
        &sched,
        &[0.5, 0.3, 0.2],
        &BatteryModel::rt3_default(),
        Workload::BackToBack,
    );
    let rt3 = table.row(PolicyKind::Rt3Schedule).unwrap();
    // 0.5*37800/0.024 + 0.3*37800/0.030 + 0.2*37800/0.036 = 787,500 + 378,000 + 210,000 = 1,375,500
    // against dense@top's 1,575,000: a gain of 0.873, i.e. a loss.
    assert!(close(rt3.outcome.as_ref().unwrap().inferences, 1_375_500.0, 1e-9));
    assert!(rt3.gain_vs_dense_top.unwrap() < 1.0);
    assert!(close(rt3.gain_vs_dense_top.unwrap(), 1_375_500.0 / 1_575_000.0, 1e-9));
}

#[test]
fn incomplete_schedule_is_projected_without_the_missing_share_and_says_so() {
    let s = stats(&cells(SPARSE_WINS, 1.0));
    let refs: Vec<&CellStats> = s.iter().collect();
    let sched = rt3_schedule("b", &refs, &rule(Some(6.5)));
    let table = harness::analysis::battery::project_board(
        "b",
        &refs,
        &sched,
        &[0.5, 0.3, 0.2],
        &BatteryModel::rt3_default(),
        Workload::BackToBack,
    );
    let rt3 = table.row(PolicyKind::Rt3Schedule).unwrap();
    assert!(!rt3.complete);
    assert!(rt3.note.contains("INCOMPLETE") && rt3.note.contains("600 MHz"), "{}", rt3.note);
    // 6.5 ms: bp at 1500 MHz (4 ms) and at 1000 MHz (6 ms), nothing at 600 MHz (pp takes 7 ms):
    // 0.5*37800/0.012 + 0.3*37800/0.010 = 1,575,000 + 1,134,000 = 2,709,000; the 20 % is not counted.
    assert!(close(rt3.outcome.as_ref().unwrap().inferences, 2_709_000.0, 1e-9));
    // Shares that do not fit the levels are an error on that row.
    let table = harness::analysis::battery::project_board(
        "b",
        &refs,
        &sched,
        &[0.5, 0.5],
        &BatteryModel::rt3_default(),
        Workload::BackToBack,
    );
    let err = table.row(PolicyKind::Rt3Schedule).unwrap().outcome.clone().unwrap_err();
    assert!(err.contains("battery_shares has 2 entries") && err.contains("3 measured levels"), "{err}");
}

fn op(ms: f64, mj: f64, idle: Option<f64>) -> OperatingPoint {
    OperatingPoint {
        freq_khz: 1_500_000,
        variant: "dense".into(),
        latency_mean_ms: ms,
        energy_per_inference_mj: mj,
        idle_power_w: idle,
    }
}

#[test]
fn periodic_workload_pays_idle_power_between_inferences() {
    // One inference (8 ms, 24 mJ) every 100 ms, idle at 1 W: 0.024 + 1 x 0.092 = 0.116 J per period;
    // 37,800 / 0.116 = 325,862.07 inferences, x 0.1 s = 9.0517 h.
    let w = Workload::Periodic { period: Duration::from_millis(100) };
    let p =
        project(&BatteryModel::rt3_default(), &w, &[Segment { share: 1.0, point: op(8.0, 24.0, Some(1.0)) }]).unwrap();
    assert!(close(p.inferences, 325_862.068_965_5, 1e-9), "{p:?}");
    assert!(close(p.hours, 9.051_724_137_9, 1e-9), "{p:?}");
    assert!(close(p.mean_power_w, 1.16, 1e-9));
    // A period shorter than the latency is a clear error.
    let err =
        work_cost(&op(8.0, 24.0, Some(1.0)), &Workload::Periodic { period: Duration::from_millis(5) }).unwrap_err();
    assert!(err.contains("period 5 ms is shorter than the mean latency") && err.contains("8.000 ms"), "{err}");
    // No idle power measured: said, not guessed.
    let err = work_cost(&op(8.0, 24.0, None), &w).unwrap_err();
    assert!(err.contains("no idle power measured"), "{err}");
}

#[test]
fn peukert_exponent_shrinks_capacity_at_high_current() {
    // 3 W against a 37,800 J battery rated at 20 h: I_rated/I = 37800 / (3600 x 20 x 3) = 0.175;
    // k = 1.2: usable = 37800 x 0.175^0.2 = 26,674.69 J -> 1,111,445.5 inferences of 24 mJ.
    let b = BatteryModel { peukert_exponent: 1.2, ..BatteryModel::rt3_default() };
    assert!(close(b.usable_energy_j(3.0), 26_674.691_756_8, 1e-9));
    let p = project(&b, &Workload::BackToBack, &[Segment { share: 1.0, point: op(8.0, 24.0, None) }]).unwrap();
    assert!(close(p.inferences, 1_111_445.489_9, 1e-9), "{p:?}");
    assert!(b.describe().contains("Peukert exponent 1.2"));
    // Ideal battery: exactly nominal.
    assert_eq!(BatteryModel::rt3_default().usable_energy_j(3.0), 37_800.0);
    // 1000 mAh at 3.7 V = 13,320 J.
    assert!(close(BatteryModel::from_mah(1000.0, 3.7, "cli").unwrap().energy_j, 13_320.0, 1e-12));
    assert!(BatteryModel::from_mah(-1.0, 3.7, "cli").unwrap_err().contains("-1 mAh"));
}

#[test]
fn paper_power_model_matches_rt3_numbers() {
    // RT3's code: P = f V^2 1e-10 gives 0.215, 0.114 and 0.079 W at its three levels.
    assert!((rt3_power_w(1_400_000, 1.24) - 0.215).abs() < 5e-4);
    assert!((rt3_power_w(1_000_000, 1.066) - 0.114).abs() < 5e-4);
    assert!((rt3_power_w(800_000, 0.9925) - 0.079).abs() < 5e-4);
    let (levels, source) = model_levels(&[1_400_000, 1_000_000, 800_000], None).unwrap();
    assert!(source.contains("RT3's voltages"));
    assert!((levels[0].power_w - 0.215_264).abs() < 1e-9);
    assert!((levels[1].power_w - 0.113_688_906_25).abs() < 1e-12);
    assert!((levels[2].power_w - 0.078_804_5).abs() < 1e-12);
    assert_eq!(scaled_latency_ms(100.0, 1_400_000, 800_000), 175.0);
    // 37,800 J at 0.215264 W and 100 ms per run: 1,755,983 runs.
    assert!((rt3_runs(37_800.0, 0.215_264, 100.0) - 1_755_983.4).abs() < 1.0);
    let err = model_levels(&[1, 2, 3, 4], None).unwrap_err();
    assert!(err.contains("unavailable"), "{err}");
    assert!(model_levels(&[1, 2], Some(&[1.0])).unwrap_err().contains("1 voltages given for 2 levels"));
}

#[test]
fn paper_model_projection_from_measured_top_level() {
    // RT3's own levels; measured mean latency at 1.4 GHz: dense 100 ms, bp 50 ms, pp 25 ms.
    // Model: latency scales by 1.4/f; deadline 115 ms (RT3's first constraint).
    let table: &[(u64, u32, &str, &str, f64, f64, f64)] = &[
        (1400, 0, "dense", "dense", 0.0, 100.0, 1.0),
        (1400, 0, "bp", "block", 0.5, 50.0, 1.0),
        (1400, 0, "pp", "pattern", 0.75, 25.0, 1.0),
        (1000, 1, "dense", "dense", 0.0, 999.0, 1.0),
        (800, 2, "dense", "dense", 0.0, 999.0, 1.0),
    ];
    let s = stats(&cells(table, 1.0));
    let refs: Vec<&CellStats> = s.iter().collect();
    let t = model_projection("b", &refs, &rule(Some(115.0)), &[0.5, 0.3, 0.2], None);
    assert_eq!(t.source, ProjectionSource::Rt3Model);
    assert_eq!(t.battery.energy_j, 37_800.0);
    let dense = t.row(PolicyKind::DenseAtTop).unwrap().outcome.clone().unwrap();
    assert!((dense.inferences - 1_755_983.4).abs() < 1.0, "{dense:?}");
    // Schedule under the model: 1.4 GHz dense (100 ms); 1.0 GHz: dense 140 ms misses, bp 70 ms;
    // 0.8 GHz: bp 87.5 ms. Runs: 0.5 x 37800 / (0.215264 x 0.1) + 0.3 x 37800 / (0.11368890625 x 0.07)
    // + 0.2 x 37800 / (0.0788045 x 0.0875) = 877,991.7 + 1,424,991.5 + 1,096,385.1.
    let rt3 = t.row(PolicyKind::Rt3Schedule).unwrap();
    let expected = 0.5 * 37_800.0 / (0.215_264 * 0.1)
        + 0.3 * 37_800.0 / (0.113_688_906_25 * 0.07)
        + 0.2 * 37_800.0 / (0.078_804_5 * 0.0875);
    assert!(close(rt3.outcome.as_ref().unwrap().inferences, expected, 1e-9), "{rt3:?}");
    assert!(rt3.note.contains("30 % bp@1000 MHz") && rt3.note.contains("20 % bp@800 MHz"), "{}", rt3.note);
    assert!(t.notes.iter().any(|n| n.contains("P = f x V^2 x 1e-10")));
    // Four levels without voltages: the table says the model is unavailable.
    let four: Vec<CellRecord> = [1400u64, 1200, 1000, 800]
        .iter()
        .enumerate()
        .map(|(i, mhz)| {
            record("b", mhz * MHZ, i as u32, "dense", "dense", 0.0, 0, constant_ns(10.0, 5), Some(1.0), None)
        })
        .collect();
    let s = stats(&four);
    let refs: Vec<&CellStats> = s.iter().collect();
    let t = model_projection("b", &refs, &rule(None), &[0.25; 4], None);
    assert!(t.rows.is_empty());
    assert!(t.notes[0].contains("unavailable"), "{:?}", t.notes);
}

#[test]
fn battery_csv_has_a_row_per_policy_and_quotes_fields() {
    let s = stats(&cells(SPARSE_WINS, 1.0));
    let refs: Vec<&CellStats> = s.iter().collect();
    let sched = rt3_schedule("b", &refs, &rule(Some(12.0)));
    let t = harness::analysis::battery::project_board(
        "b",
        &refs,
        &sched,
        &[0.5, 0.3, 0.2],
        &BatteryModel::rt3_default(),
        Workload::BackToBack,
    );
    let csv = battery_csv(std::slice::from_ref(&t));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + t.rows.len());
    assert!(lines[0].starts_with("board,source,policy,kind,freq_khz"));
    let rt3 = lines.iter().find(|l| l.contains("rt3_schedule")).unwrap();
    // The note has commas, so it is quoted.
    assert!(rt3.contains("\"50 % dense@1500 MHz, 30 % bp@1000 MHz, 20 % pp@600 MHz\""), "{rt3}");
    assert!(rt3.contains(",3181500,"), "{rt3}");
}

#[test]
fn missing_energy_is_reported_per_policy() {
    let recs: Vec<CellRecord> =
        (0..2).map(|r| record("b", 1_500_000, 0, "dense", "dense", 0.0, r, constant_ns(8.0, 10), None, None)).collect();
    let s = stats(&recs);
    let refs: Vec<&CellStats> = s.iter().collect();
    let sched = rt3_schedule("b", &refs, &rule(None));
    let t = harness::analysis::battery::project_board(
        "b",
        &refs,
        &sched,
        &[1.0],
        &BatteryModel::rt3_default(),
        Workload::BackToBack,
    );
    let err = t.row(PolicyKind::DenseAtTop).unwrap().outcome.clone().unwrap_err();
    assert!(err.contains("no energy per inference measured"), "{err}");
    assert!(t.notes.iter().any(|n| n.contains("No policy could be projected")));
}
