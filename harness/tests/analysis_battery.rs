//! RT3 schedule, battery projections and the paper's analytic model against hand-computed cases.

mod analysis_support;

use std::time::Duration;

use analysis_support::{constant_ns, record, run_json, scenario_yaml, write_run};
use harness::analysis::battery::{
    battery_csv, project, window_ms_per_inference, work_cost, OperatingPoint, Segment, PEUKERT_RATED_HOURS,
};
use harness::analysis::rt3_model::{model_levels, model_projection, rt3_power_w, rt3_runs, scaled_latency_ms};
use harness::analysis::{
    aggregate_cells, analyze_run, battery_model, load_run, rt3_schedule, AnalysisOptions, BatteryModel, CellStats,
    PolicyKind, ProjectionSource, ScheduleRule,
};
use harness::results::CellRecord;
use harness::scenario::Workload;
use harness::stats::SummaryConfig;
use proptest::prelude::*;

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
    ScheduleRule { deadline_ms, ..ScheduleRule::default() }
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
    // RT3 runs the only pattern set, pp, at every level: 0.5*37800/0.009 + 0.3*37800/0.0075
    // + 0.2*37800/0.006 = 2,100,000 + 1,512,000 + 1,260,000 = 4,872,000 inferences; hours
    // (2,100,000*3 + 1,512,000*4.5 + 1,260,000*7) ms / 3.6e6 = 6.09 h.
    assert!(close(p.inferences, 4_872_000.0, 1e-9), "{p:?}");
    assert!(close(p.hours, 6.09, 1e-9), "{p:?}");
    assert!(close(rt3.gain_vs_dense_top.unwrap(), 4_872_000.0 / 1_575_000.0, 1e-9));
    assert!(close(rt3.gain_vs_block_top.unwrap(), 4_872_000.0 / 3_150_000.0, 1e-9));
    assert!(rt3.complete);
    assert!(rt3.note.contains("50 % pp@1500 MHz"), "{}", rt3.note);
    // Each level's share adds up to the policy's figures.
    assert_eq!(rt3.levels.len(), 3);
    let sum: f64 = rt3.levels.iter().map(|l| l.outcome.as_ref().unwrap().inferences).sum();
    assert!(close(sum, 4_872_000.0, 1e-12));
    assert!(close(rt3.levels[2].outcome.as_ref().unwrap().inferences, 1_260_000.0, 1e-12));
    // Every static pair is there too (9) besides dense@top, block@top, best static and the schedule.
    assert_eq!(table.rows.iter().filter(|r| r.kind == PolicyKind::Static).count(), 9);
    // Best static: of the 6 pairs meeting 12 ms (dense misses at 1000 and 600 MHz, bp at 600), pp@600 MHz
    // at 6 mJ: 37,800 / 0.006 = 6,300,000 inferences, x4 dense at top; it beats the schedule.
    let best = table.row(PolicyKind::BestStatic).unwrap();
    assert_eq!((best.variant.as_deref(), best.freq_khz), (Some("pp"), Some(600_000)));
    assert!(close(best.outcome.as_ref().unwrap().inferences, 6_300_000.0, 1e-9));
    assert!(close(best.gain_vs_dense_top.unwrap(), 4.0, 1e-9));
    assert!(best.note.contains("of the 6 static"), "{}", best.note);
    let md = table.to_markdown();
    assert!(md.contains("RT3 schedule") && md.contains("3.09"), "{md}");
    assert!(md.contains("best static (pp@600 MHz)"), "{md}");
}

#[test]
fn rt3_schedule_does_not_beat_dense_when_sparse_variants_cost_more_energy() {
    let s = stats(&cells(SPARSE_COSTLY, 1.0));
    let refs: Vec<&CellStats> = s.iter().collect();
    let sched = rt3_schedule("b", &refs, &rule(Some(12.0)));
    let picked: Vec<&str> = sched.levels.iter().map(|l| l.selected.as_ref().unwrap().variant.as_str()).collect();
    assert_eq!(picked, vec!["pp", "pp", "pp"], "only pattern sets are scheduled");
    let table = harness::analysis::battery::project_board(
        "b",
        &refs,
        &sched,
        &[0.5, 0.3, 0.2],
        &BatteryModel::rt3_default(),
        Workload::BackToBack,
    );
    let rt3 = table.row(PolicyKind::Rt3Schedule).unwrap();
    // pp at 36 mJ everywhere: 37,800 / 0.036 = 1,050,000 against dense@top's 1,575,000: a loss.
    assert!(close(rt3.outcome.as_ref().unwrap().inferences, 1_050_000.0, 1e-9));
    assert!(rt3.gain_vs_dense_top.unwrap() < 1.0);
    assert!(close(rt3.gain_vs_dense_top.unwrap(), 1_050_000.0 / 1_575_000.0, 1e-9));
    // The best static is a baseline here (24 mJ dense at 1500 MHz; dense misses 12 ms lower down).
    let best = table.row(PolicyKind::BestStatic).unwrap();
    assert_eq!(best.variant.as_deref(), Some("dense"));
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
    // 6.5 ms: pp at 1500 MHz (3 ms) and at 1000 MHz (4.5 ms), no pattern set at 600 MHz (pp takes
    // 7 ms): 0.5*37800/0.009 + 0.3*37800/0.0075 = 2,100,000 + 1,512,000 = 3,612,000; the 20 % is
    // not counted.
    assert!(close(rt3.outcome.as_ref().unwrap().inferences, 3_612_000.0, 1e-9));
    assert!(rt3.levels[2].variant.is_none() && rt3.levels[2].outcome.is_err());
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
    assert!(err.contains("period 5 ms is shorter than the time one inference") && err.contains("8.000 ms"), "{err}");
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
fn peukert_never_gives_more_than_nominal_capacity() {
    // RT3's 37,800 J rated at 20 h: the rated (C/20) load is 37,800 / 72,000 s = 0.525 W.
    let b = BatteryModel { peukert_exponent: 1.2, ..BatteryModel::rt3_default() };
    assert!(close(b.rated_power_w(), 0.525, 1e-12));
    // Below it (the old formula gave 37,800 x (0.525/0.1)^0.2 = 52,300 J here): nominal.
    assert_eq!(b.usable_energy_j(0.1), 37_800.0);
    assert_eq!(b.usable_energy_j(0.525), 37_800.0);
    assert!(b.usable_energy_j(0.6) < 37_800.0);
    // No power, or a non-number: nominal, not NaN.
    assert_eq!(b.usable_energy_j(0.0), 37_800.0);
    assert_eq!(b.usable_energy_j(f64::NAN), 37_800.0);
    // A projection at a light load gets exactly the ideal battery's inferences.
    let light = op(8.0, 0.8, None); // 0.1 W
    let ideal =
        project(&BatteryModel::rt3_default(), &Workload::BackToBack, &[Segment { share: 1.0, point: light.clone() }])
            .unwrap();
    let peukert = project(&b, &Workload::BackToBack, &[Segment { share: 1.0, point: light }]).unwrap();
    assert_eq!(ideal, peukert);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn peukert_capacity_is_at_most_nominal_and_falls_with_load(
        k in 1.0f64..=2.0,
        energy_j in 1.0f64..1e7,
        p1 in 1e-4f64..1e3,
        factor in 1.0f64..100.0,
    ) {
        let b = BatteryModel { energy_j, peukert_exponent: k, rated_hours: PEUKERT_RATED_HOURS, source: "test".into() };
        let (u1, u2) = (b.usable_energy_j(p1), b.usable_energy_j(p1 * factor));
        prop_assert!(u1 <= energy_j && u2 <= energy_j, "{} {} {}", u1, u2, energy_j);
        prop_assert!(u2 <= u1 * (1.0 + 1e-12), "more load, less energy: {} then {}", u1, u2);
        prop_assert!(u2 > 0.0);
        if p1 * factor <= b.rated_power_w() {
            prop_assert_eq!(u2, energy_j);
        }
    }
}

/// A scenario whose board `sim` has a 10 Wh battery with Peukert exponent 1.05.
fn scenario_with_battery() -> harness::scenario::Scenario {
    let yaml = scenario_yaml("1500MHz", None, "").replace(
        "    workdir: /tmp/hil-synth\n",
        "    workdir: /tmp/hil-synth\n    battery:\n      capacity_wh: 10\n      peukert_exponent: 1.05\n",
    );
    harness::scenario::parse_scenario(&yaml, "synth.yaml").unwrap()
}

#[test]
fn battery_precedence_is_command_line_then_scenario_then_rt3() {
    let with = scenario_with_battery();
    let without = harness::scenario::parse_scenario(&scenario_yaml("1500MHz", None, ""), "synth.yaml").unwrap();
    let none = AnalysisOptions::default();
    // 1. Nothing on the command line: the scenario board's battery, with its exponent.
    let b = battery_model(&with, "sim", &none);
    assert_eq!((b.energy_j, b.peukert_exponent), (36_000.0, 1.05));
    assert!(b.source.contains("scenario boards[sim].battery: 10 Wh"), "{}", b.source);
    // 2. No battery in the scenario: RT3's.
    assert_eq!(battery_model(&without, "sim", &none), BatteryModel::rt3_default());
    // 3. --capacity-mah/--voltage replace the scenario's battery (exponent and all).
    let cli = AnalysisOptions {
        battery_override: Some(BatteryModel::from_mah(1000.0, 3.7, "--capacity-mah/--voltage").unwrap()),
        ..AnalysisOptions::default()
    };
    let b = battery_model(&with, "sim", &cli);
    assert_eq!((b.energy_j, b.peukert_exponent), (13_320.0, 1.0));
    assert!(b.source.starts_with("--capacity-mah/--voltage"), "{}", b.source);
    assert_eq!(battery_model(&without, "sim", &cli), b);
    // 4. --peukert replaces the exponent of whichever battery is used, and says so.
    let k = AnalysisOptions { peukert_override: Some(1.1), ..AnalysisOptions::default() };
    let b = battery_model(&with, "sim", &k);
    assert_eq!((b.energy_j, b.peukert_exponent), (36_000.0, 1.1));
    assert!(b.source.contains("Peukert exponent 1.1 from --peukert (was 1.05)"), "{}", b.source);
    assert!(b.describe().contains("Peukert exponent 1.1"), "{}", b.describe());
    let b = battery_model(&without, "sim", &k);
    assert_eq!((b.energy_j, b.peukert_exponent), (37_800.0, 1.1));
    let both = AnalysisOptions { peukert_override: Some(1.2), ..cli.clone() };
    let b = battery_model(&with, "sim", &both);
    assert_eq!((b.energy_j, b.peukert_exponent), (13_320.0, 1.2));
    // The same exponent as the source's: nothing to say.
    let same = AnalysisOptions { peukert_override: Some(1.05), ..AnalysisOptions::default() };
    assert!(!battery_model(&with, "sim", &same).source.contains("--peukert"));
}

#[test]
fn analyze_run_projects_with_the_battery_the_precedence_picks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let yaml = scenario_yaml("1500MHz", None, "").replace(
        "    workdir: /tmp/hil-synth\n",
        "    workdir: /tmp/hil-synth\n    battery:\n      capacity_wh: 10\n      peukert_exponent: 1.05\n",
    );
    let recs: Vec<CellRecord> = (0..2)
        .map(|r| record("sim", 1_500_000, 0, "dense", "dense", 0.0, r, constant_ns(8.0, 10), Some(24.0), Some(1.0)))
        .collect();
    write_run(&dir, &yaml, &run_json(7), &recs);
    let run = load_run(&dir).unwrap();
    let measured = |o: &AnalysisOptions| {
        analyze_run(&run, o).battery.into_iter().find(|t| t.source == ProjectionSource::Measured).unwrap().battery
    };
    assert_eq!(measured(&AnalysisOptions::default()).energy_j, 36_000.0);
    let o = AnalysisOptions {
        battery_override: Some(BatteryModel::from_mah(1000.0, 3.7, "cli").unwrap()),
        peukert_override: Some(1.1),
        ..AnalysisOptions::default()
    };
    let b = measured(&o);
    assert_eq!((b.energy_j, b.peukert_exponent), (13_320.0, 1.1));
}

#[test]
fn back_to_back_takes_energy_and_time_from_the_same_window() {
    // Each inference takes 8 ms, but the window also holds 2 ms between inferences (the agent's
    // bookkeeping): 10 inferences in a 100 ms window using 0.24 J, 24 mJ per inference at a
    // window mean power of 2.4 W. Time per inference is 10 ms, not the 8 ms mean latency.
    let recs: Vec<CellRecord> = (0..3)
        .map(|r| {
            let mut rec = record("b", 1_500_000, 0, "dense", "dense", 0.0, r, constant_ns(8.0, 10), Some(24.0), None);
            rec.window_ns = 100_000_000;
            rec.window_energy_j = Some(0.24);
            rec.mean_power_w = Some(0.24 / 0.1);
            rec
        })
        .collect();
    let s = stats(&recs);
    assert!(close(window_ms_per_inference(&s[0]).unwrap(), 10.0, 1e-12));
    let point = OperatingPoint::from_cell(&s[0]).unwrap();
    assert!(close(point.latency_mean_ms, 10.0, 1e-12), "{point:?}");
    assert!(close(s[0].latency_mean_ms, 8.0, 1e-12));
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
    let p = t.row(PolicyKind::DenseAtTop).unwrap().outcome.clone().unwrap();
    // 37,800 J / 24 mJ = 1,575,000 inferences x 10 ms = 4.375 h, at the window's 2.4 W.
    assert!(close(p.inferences, 1_575_000.0, 1e-9), "{p:?}");
    assert!(close(p.hours, 4.375, 1e-9), "{p:?}");
    assert!(close(p.mean_power_w, 2.4, 1e-9), "{p:?}");
    // Energy without the window's power cannot be timed: said, not guessed from the latency.
    let mut odd = recs.clone();
    odd[0].mean_power_w = None;
    let err = OperatingPoint::from_cell(&stats(&odd)[0]).unwrap_err();
    assert!(err.contains("3 repeats have an energy per inference but 2 a window mean power"), "{err}");
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
    // Model: latency scales by 1.4/f; deadline 115 ms (RT3's first constraint). Only pp is
    // scheduled: 25, 35 and 43.75 ms at the three levels.
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
    let rt3 = t.row(PolicyKind::Rt3Schedule).unwrap();
    let expected = 0.5 * 37_800.0 / (0.215_264 * 0.025)
        + 0.3 * 37_800.0 / (0.113_688_906_25 * 0.035)
        + 0.2 * 37_800.0 / (0.078_804_5 * 0.043_75);
    assert!(close(rt3.outcome.as_ref().unwrap().inferences, expected, 1e-9), "{rt3:?}");
    assert!(rt3.note.contains("30 % pp@1000 MHz") && rt3.note.contains("20 % pp@800 MHz"), "{}", rt3.note);
    // The model's best static: pp at 0.8 GHz, whose energy P x latency = 0.0788045 x 0.04375 J is
    // the smallest of the pairs (the model's energy falls with V^2).
    let best = t.row(PolicyKind::BestStatic).unwrap();
    assert_eq!((best.variant.as_deref(), best.freq_khz), (Some("pp"), Some(800_000)), "{best:?}");
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
    assert!(lines[0].starts_with("board,simulated,source,policy,kind,freq_khz"));
    assert!(lines[1].starts_with("b,true,measured,"), "the synthetic cells are simulated: {}", lines[1]);
    let rt3 = lines.iter().find(|l| l.contains("rt3_schedule")).unwrap();
    // The note has commas, so it is quoted.
    assert!(rt3.contains("\"50 % pp@1500 MHz, 30 % pp@1000 MHz, 20 % pp@600 MHz\""), "{rt3}");
    assert!(rt3.contains(",4872000,"), "{rt3}");
    assert!(lines.iter().any(|l| l.contains(",best_static,600000,pp,")), "{csv}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("b,true,measured,dense@600 MHz,static,") && l.ends_with(",true,false,,")));
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
