//! Statistics against hand-computed values, and their invariants under proptest.
//!
//! Known values were computed by hand (and checked with a few lines of plain Python using
//! the same textbook formulas; numpy/scipy were not available): numpy's default (type 7)
//! percentiles, the sample standard deviation, Student's t quantile t(0.975, 7) =
//! 2.364624 from tables, scipy's asymptotic Mann-Whitney U (tie and continuity corrected), and
//! Welch's t on logarithms (Student's t by its regularised incomplete beta function).

use harness::stats::{
    bootstrap_relative_change, mann_whitney_min_p, mann_whitney_u, repeat_change, repeats_needed, summarize,
    t_interval_mean, tukey_outliers, OutlierSeverity, RepeatChangeError, Sample, SampleError, Statistic, SummaryConfig,
    MAX_REPEATS_NEEDED, MIN_REPEATS,
};
use proptest::prelude::*;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn summary_of_a_textbook_sample() {
    // x = [2,4,4,4,5,5,7,9]: mean 5, sd sqrt(32/7) = 2.138090; median 4.5;
    // p90: position 0.9*7 = 6.3 -> 7 + 0.3*(9-7) = 7.6; p99: 6.93 -> 8.86.
    let s = Sample::new(vec![9.0, 4.0, 2.0, 4.0, 5.0, 4.0, 7.0, 5.0]).unwrap();
    let cfg = SummaryConfig { resamples: 500, ..SummaryConfig::default() };
    let sum = summarize(&s, &cfg);
    assert_eq!(sum.n, 8);
    assert!(close(sum.mean.point, 5.0, 1e-12));
    assert!(close(sum.std_dev, 2.138_089_935, 1e-9));
    assert!(close(sum.median.point, 4.5, 1e-12));
    assert!(close(sum.p90.point, 7.6, 1e-12));
    assert!(close(sum.p99.point, 8.86, 1e-12));
    // t interval: 5 -/+ 2.364624 * 2.138090 / sqrt(8) = [3.212512, 6.787488].
    assert!(close(sum.mean.lower, 3.212_512, 1e-5), "{:?}", sum.mean);
    assert!(close(sum.mean.upper, 6.787_488, 1e-5), "{:?}", sum.mean);
    assert!(sum.method.contains("Student's t") && sum.method.contains("bootstrap") && sum.method.contains("500"));
    // Quartiles 4 and 5.5, IQR 1.5: inner fences 1.75 and 7.75 (9 is outside), outer 10 (9 is inside).
    let o = &sum.outliers;
    assert!(close(o.q1, 4.0, 1e-12) && close(o.q3, 5.5, 1e-12));
    assert!(close(o.low_fence, 1.75, 1e-12) && close(o.high_fence, 7.75, 1e-12));
    assert!(close(o.high_far_fence, 10.0, 1e-12));
    assert_eq!(o.flagged.len(), 1);
    assert_eq!(o.flagged[0].value, 9.0);
    assert!(o.flagged[0].high);
    assert_eq!(o.flagged[0].severity, OutlierSeverity::Mild);
    // Flagged, never dropped: the statistics still include 9.
    assert_eq!(sum.max, 9.0);
}

#[test]
fn far_out_points_are_extreme() {
    // [1,2,3,4,100]: q1 2, q3 4, IQR 2, outer fence 10: 100 is far out.
    let o = tukey_outliers(&Sample::new(vec![1.0, 2.0, 3.0, 4.0, 100.0]).unwrap());
    assert_eq!(o.count(), 1);
    assert_eq!(o.count_extreme(), 1);
}

#[test]
fn sample_invariant_is_checked() {
    assert_eq!(Sample::new(vec![1.0]), Err(SampleError::TooFew(1)));
    assert!(matches!(Sample::new(vec![1.0, f64::NAN]), Err(SampleError::NotFinite { index: 1, .. })));
    let s = Sample::from_ns(&[2_000_000, 1_000_000]).unwrap();
    assert_eq!(s.sorted(), &[1.0, 2.0]);
}

#[test]
fn mann_whitney_matches_scipy_asymptotic() {
    // scipy.stats.mannwhitneyu([1..5], [6..10], method="asymptotic"): U = 0, p = 0.0121858.
    let a = Sample::new(vec![1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let b = Sample::new(vec![6.0, 7.0, 8.0, 9.0, 10.0]).unwrap();
    let r = mann_whitney_u(&a, &b);
    assert_eq!(r.u_a, 0.0);
    assert_eq!(r.u_b, 25.0);
    assert!(close(r.p_value, 0.012_185_780, 1e-7), "{r:?}");
    assert!(r.z < 0.0);
    assert_eq!(r.prob_a_greater, 0.0);
    // With ties: [1,2,2,3] vs [2,3,4,5]. Mid-ranks 1 | 3 3 3 | 5.5 5.5 | 7 | 8, R_a = 12.5,
    // U_a = 12.5 - 10 = 2.5; tie term (27-3)+(8-2) = 30; var = 16/12 (9 - 30/56) = 11.2857;
    // z = (2.5 - 8 + 0.5)/3.3594 = -1.48835, p = 0.136658.
    let a = Sample::new(vec![1.0, 2.0, 2.0, 3.0]).unwrap();
    let b = Sample::new(vec![2.0, 3.0, 4.0, 5.0]).unwrap();
    let r = mann_whitney_u(&a, &b);
    assert_eq!(r.u_a, 2.5);
    assert!(close(r.z, -1.488_351_4, 1e-6), "{r:?}");
    assert!(close(r.p_value, 0.136_658_2, 1e-6), "{r:?}");
    // The best 5-against-5 can do is that complete separation; 3 against 3 cannot reach 0.05:
    // z = (4.5 - 0.5) / sqrt(9 x 7 / 12) = 1.7457, p = 0.0809; 4 against 4: z = 7.5 / sqrt(12), p = 0.0304.
    assert!(close(mann_whitney_min_p(5, 5), 0.012_185_780, 1e-7));
    assert!(close(mann_whitney_min_p(3, 3), 0.080_856, 1e-5), "{}", mann_whitney_min_p(3, 3));
    assert!(close(mann_whitney_min_p(4, 4), 0.030_383, 1e-5), "{}", mann_whitney_min_p(4, 4));
    // All values tied: no evidence at all.
    let t = Sample::new(vec![3.0, 3.0, 3.0]).unwrap();
    assert_eq!(mann_whitney_u(&t, &t).p_value, 1.0);
}

#[test]
fn t_interval_with_no_spread_is_the_point() {
    let e = t_interval_mean(&Sample::new(vec![4.0, 4.0, 4.0]).unwrap(), 0.95);
    assert_eq!((e.lower, e.point, e.upper), (4.0, 4.0, 4.0));
}

#[test]
fn bootstrap_change_finds_a_known_shift_and_is_seeded() {
    // Candidate = base x 1.10 exactly: the median ratio is 1.10 in every resample pair
    // drawn with the same indices, and close to it otherwise.
    let base: Vec<f64> = (0..200).map(|i| 10.0 + (i % 17) as f64 * 0.05).collect();
    let cand: Vec<f64> = base.iter().map(|x| x * 1.10).collect();
    let (b, c) = (Sample::new(base).unwrap(), Sample::new(cand).unwrap());
    let cfg = SummaryConfig { resamples: 400, ..SummaryConfig::default() };
    let ch = bootstrap_relative_change(&b, &c, Statistic::Median, &cfg);
    assert!(close(ch.change_pct.point, 10.0, 1e-9), "{ch:?}");
    assert!(ch.change_pct.lower > 5.0 && ch.change_pct.upper < 15.0, "{ch:?}");
    assert_eq!(ch, bootstrap_relative_change(&b, &c, Statistic::Median, &cfg), "same seed, same interval");
}

#[test]
fn repeat_change_is_welch_on_logarithms() {
    // ln[10, 11, 12] against ln[12, 13, 15]: sd 0.0911923 and 0.1130470, difference of log means
    // 0.190838, Welch df 3.828595, t(0.975, 3.83) = 2.826161: +21.0265 % [-4.5103 %, +53.3927 %],
    // p = 0.088161 (a few lines of plain Python with the textbook formulas).
    let ch = repeat_change(&[10.0, 11.0, 12.0], &[12.0, 13.0, 15.0], 0.95).unwrap();
    assert!(close(ch.base, 10.969_613, 1e-6) && close(ch.candidate, 13.276_144, 1e-6), "{ch:?}");
    assert!(close(ch.change_pct.point, 21.026_547, 1e-5), "{ch:?}");
    assert!(close(ch.change_pct.lower, -4.510_291, 1e-4), "{ch:?}");
    assert!(close(ch.change_pct.upper, 53.392_707, 1e-4), "{ch:?}");
    assert!(close(ch.df, 3.828_595, 1e-6), "{ch:?}");
    assert!(close(ch.p_value, 0.088_161, 1e-5), "{ch:?}");
    assert!(close(ch.sd_log_base, 0.091_192_25, 1e-8) && close(ch.sd_log_candidate, 0.113_046_99, 1e-8));
    // No spread at all: the interval is the point; p 0 when the means differ, 1 when they do not.
    let flat = repeat_change(&[2.0; 3], &[3.0; 4], 0.95).unwrap();
    assert!(close(flat.change_pct.point, 50.0, 1e-9) && flat.change_pct.lower == flat.change_pct.upper);
    assert_eq!((flat.p_value, flat.df), (0.0, f64::INFINITY));
    assert_eq!(repeat_change(&[2.0; 3], &[2.0; 3], 0.95).unwrap().p_value, 1.0);
    // Refusals name the side and the value.
    assert_eq!(
        repeat_change(&[1.0, 2.0], &[1.0, 2.0, 3.0], 0.95),
        Err(RepeatChangeError::TooFewRepeats { side: "base", n: 2, min: MIN_REPEATS })
    );
    let err = repeat_change(&[1.0, 2.0, 3.0], &[1.0, 0.0, 3.0], 0.95).unwrap_err();
    assert_eq!(err.to_string(), "candidate repeat 1 is 0: a relative change needs positive, finite values");
    assert!(repeat_change(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0], 0.95).is_err());
}

#[test]
fn repeats_needed_follows_the_usual_sample_size() {
    // sd 0.1 per side, a 10 % change, alpha 0.05, 80 % power: the smallest n with
    // (t(0.975, 2(n-1)) + 0.841621) x sqrt(0.02 / n) <= ln 1.1 is 19.
    assert_eq!(repeats_needed(0.1, 0.1, 10.0, 0.05, 0.8), Some(19));
    // More spread or a smaller change needs more; no spread needs the minimum.
    assert!(repeats_needed(0.2, 0.1, 10.0, 0.05, 0.8).unwrap() > 19);
    assert!(repeats_needed(0.1, 0.1, 5.0, 0.05, 0.8).unwrap() > 19);
    assert_eq!(repeats_needed(0.0, 0.0, 10.0, 0.05, 0.8), Some(MIN_REPEATS));
    // Nothing to detect, or hopeless: None.
    assert_eq!(repeats_needed(0.1, 0.1, 0.0, 0.05, 0.8), None);
    assert_eq!(repeats_needed(1.0, 1.0, 0.01, 0.05, 0.8), None);
    assert!(repeats_needed(0.1, 0.1, f64::NAN, 0.05, 0.8).is_none());
    // Just under the cap is still an answer: sd 1 per side and a 10 % change need ~1,700.
    assert!(repeats_needed(1.0, 1.0, 10.0, 0.05, 0.8).is_some_and(|n| n > 1000 && n < MAX_REPEATS_NEEDED));
}

fn values() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(-1e3f64..1e3, 2..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn intervals_contain_their_point_and_lie_within_the_data(v in values()) {
        let s = Sample::new(v).unwrap();
        let sum = summarize(&s, &SummaryConfig { resamples: 100, ..SummaryConfig::default() });
        for st in [Statistic::Mean, Statistic::Median, Statistic::P90, Statistic::P99] {
            let e = sum.estimate(st);
            prop_assert!(e.contains(e.point), "{:?} {:?}", st, e);
            prop_assert!((e.point - st.of(&s)).abs() < 1e-9);
            if st != Statistic::Mean {
                prop_assert!(e.lower >= s.min() && e.upper <= s.max(), "{:?} {:?}", st, e);
            }
        }
        prop_assert!(sum.median.point <= sum.p90.point && sum.p90.point <= sum.p99.point);
    }

    #[test]
    fn summaries_do_not_depend_on_input_order(v in values(), rot in 0usize..60) {
        let cfg = SummaryConfig { resamples: 100, ..SummaryConfig::default() };
        let mut w = v.clone();
        w.reverse();
        let k = rot % w.len();
        w.rotate_left(k);
        prop_assert_eq!(summarize(&Sample::new(v).unwrap(), &cfg), summarize(&Sample::new(w).unwrap(), &cfg));
    }

    #[test]
    fn fences_widen_with_k_and_far_outliers_are_a_subset(v in values(), k1 in 0.0f64..3.0, dk in 0.0f64..3.0) {
        let s = Sample::new(v).unwrap();
        let (lo1, hi1) = s.tukey_fences(k1);
        let (lo2, hi2) = s.tukey_fences(k1 + dk);
        prop_assert!(lo2 <= lo1 && hi1 <= hi2);
        let o = tukey_outliers(&s);
        prop_assert!(o.low_far_fence <= o.low_fence && o.high_fence <= o.high_far_fence);
        prop_assert!(o.count_extreme() <= o.count());
        for x in &o.flagged {
            prop_assert!(x.value < o.low_fence || x.value > o.high_fence);
        }
        let outside = s.sorted().iter().filter(|x| **x < o.low_fence || **x > o.high_fence).count();
        prop_assert_eq!(outside, o.count());
    }

    #[test]
    fn mann_whitney_is_symmetric_and_bounded(a in values(), b in values()) {
        let (sa, sb) = (Sample::new(a).unwrap(), Sample::new(b).unwrap());
        let ab = mann_whitney_u(&sa, &sb);
        let ba = mann_whitney_u(&sb, &sa);
        prop_assert!((ab.u_a + ab.u_b - (sa.len() * sb.len()) as f64).abs() < 1e-9);
        prop_assert!((ab.p_value - ba.p_value).abs() < 1e-12);
        prop_assert!((0.0..=1.0).contains(&ab.p_value));
        prop_assert!((ab.u_a - ba.u_b).abs() < 1e-9);
    }

    #[test]
    fn repeat_change_is_scale_free_and_antisymmetric(
        b in prop::collection::vec(0.1f64..100.0, 3..12),
        c in prop::collection::vec(0.1f64..100.0, 3..12),
        k in 0.01f64..100.0,
    ) {
        let ch = repeat_change(&b, &c, 0.95).unwrap();
        prop_assert!(ch.change_pct.lower <= ch.change_pct.point && ch.change_pct.point <= ch.change_pct.upper);
        prop_assert!(ch.change_pct.lower > -100.0);
        // Milliseconds or seconds: the same relative change.
        let scaled = |v: &[f64]| v.iter().map(|x| x * k).collect::<Vec<_>>();
        let s = repeat_change(&scaled(&b), &scaled(&c), 0.95).unwrap();
        prop_assert!((s.change_pct.point - ch.change_pct.point).abs() < 1e-6 * (1.0 + ch.change_pct.point.abs()));
        prop_assert!((s.p_value - ch.p_value).abs() < 1e-9);
        // Swapping the sides inverts the ratio, with the same p.
        let r = repeat_change(&c, &b, 0.95).unwrap();
        let inv = |pct: f64| (1.0 / (1.0 + pct / 100.0) - 1.0) * 100.0;
        prop_assert!((r.change_pct.point - inv(ch.change_pct.point)).abs() < 1e-6 * (1.0 + r.change_pct.point.abs()));
        prop_assert!((r.change_pct.lower - inv(ch.change_pct.upper)).abs() < 1e-6 * (1.0 + r.change_pct.lower.abs()));
        prop_assert!((r.p_value - ch.p_value).abs() < 1e-9);
    }

    #[test]
    fn shifting_a_sample_shifts_its_location(v in values(), shift in -100.0f64..100.0) {
        let s = Sample::new(v.clone()).unwrap();
        let t = Sample::new(v.iter().map(|x| x + shift).collect()).unwrap();
        prop_assert!((t.median() - s.median() - shift).abs() < 1e-9);
        prop_assert!((t.mean() - s.mean() - shift).abs() < 1e-9);
        prop_assert!((t.std_dev() - s.std_dev()).abs() < 1e-9);
    }
}
