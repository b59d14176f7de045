//! What power monitors deliver, as plain data: samples, runs of lost samples, and a capture of both
//! around one window. Drivers ([`crate::power`]) produce these; [`crate::energy`] integrates them;
//! neither depends on the other's internals.
//!
//! Time: [`Sample::t_ns`] is on the host's `CLOCK_MONOTONIC`. Where the monitor has a clock of its own
//! (a PPK2's sample index, a sketch's `millis()` or line count), the sample also keeps its reading of
//! that clock ([`Sample::clock`]) so that a capture can be placed again, consistently, with the fit of
//! that clock to the host clock as it stands after the window ([`Capture::place`]).

use serde::Serialize;

use crate::clock_fit::ClockLine;

/// One measurement of the supply rail.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Host `CLOCK_MONOTONIC` nanoseconds: placed by the monitor's own clock where it has one.
    pub t_ns: u64,
    /// Current drawn by the board, amperes.
    pub current_a: f64,
    /// Rail voltage, volts. For a PPK2 the regulator set point (source meter) or the rail voltage the
    /// scenario gives (ampere meter); `NaN` when nobody knows it.
    pub voltage_v: f64,
    /// Digital inputs D0..D7 for instruments that have them (PPK2), bit i = Di.
    pub logic: Option<u8>,
    /// The monitor's own clock reading for this sample, in the units of its [`ClockLine`]
    /// (`None` for instruments without a clock, such as polled SCPI meters).
    pub clock: Option<f64>,
}

impl Sample {
    /// A sample with no clock reading and no logic inputs.
    pub fn at(t_ns: u64, current_a: f64, voltage_v: f64) -> Self {
        Self { t_ns, current_a, voltage_v, logic: None, clock: None }
    }

    /// Instantaneous power in watts (`NaN` when the voltage is unknown).
    pub fn power_w(&self) -> f64 {
        self.current_a * self.voltage_v
    }
}

/// Consecutive sample slots the monitor produced that never reached the host (a PPK2's counter
/// skipped them, a meter answered "overload"). Kept with their place in time so that a loss is
/// charged only to the window it falls in.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LostRun {
    /// Host time of the first lost slot, ns.
    pub t_ns: u64,
    /// Host time between slots, ns (0 for a single slot).
    pub period_ns: f64,
    pub count: u64,
    /// The first slot's reading of the monitor's clock and the clock units between slots.
    pub clock: Option<f64>,
    pub clock_step: f64,
    /// Found only after samples that follow it were delivered (a PPK2 loss longer than its counter
    /// shows): `Some(u)` says the samples already delivered with clock readings in `[clock, u)` are
    /// `count` slots too early, and whoever holds them adds `count` ([`LostRun::reindex`]).
    #[serde(default)]
    pub reindex_until: Option<f64>,
}

impl LostRun {
    /// Renumbers a clock reading delivered before this run was found (see [`LostRun::reindex_until`]).
    pub fn reindex(&self, clock: &mut f64) {
        if let (Some(from), Some(until)) = (self.clock, self.reindex_until) {
            if *clock >= from && *clock < until {
                *clock += self.count as f64;
            }
        }
    }

    /// Host time of slot `i` (0-based).
    pub fn slot_ns(&self, i: u64) -> f64 {
        self.t_ns as f64 + self.period_ns * i as f64
    }
}

/// Places every sample that has a clock reading on `fit`'s epoch with `fit`, and keeps them sorted.
pub fn place_samples(samples: &mut [Sample], fit: &ClockLine) {
    for s in samples.iter_mut() {
        if let Some(x) = s.clock.filter(|x| fit.covers(*x)) {
            s.t_ns = fit.to_host_ns(x).max(0.0).round() as u64;
        }
    }
    // A line with positive slope keeps the order of one epoch; across a restart of the monitor's
    // clock the older epoch keeps its earlier placement. Sorting makes both hold.
    if !samples.windows(2).all(|w| w[0].t_ns <= w[1].t_ns) {
        samples.sort_by_key(|s| s.t_ns);
    }
}

/// Samples and losses gathered around one window, and the clock fit they were placed with.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    /// Sorted by time.
    pub samples: Vec<Sample>,
    pub lost: Vec<LostRun>,
    /// The fit of the monitor's clock used for [`Sample::t_ns`] (`None` for clockless monitors).
    pub fit: Option<ClockLine>,
}

impl Capture {
    /// Places every sample and lost slot that has a clock reading on `fit`'s epoch again with `fit`,
    /// so the whole capture follows one consistent map, and keeps the samples sorted.
    pub fn place(&mut self, fit: ClockLine) {
        place_samples(&mut self.samples, &fit);
        let host = |x: f64| fit.to_host_ns(x).max(0.0).round() as u64;
        for r in &mut self.lost {
            if let Some(x) = r.clock.filter(|x| fit.covers(*x)) {
                r.t_ns = host(x);
                r.period_ns = fit.slope * r.clock_step;
            }
        }
        self.fit = Some(fit);
    }

    /// Total slots lost in the capture.
    pub fn lost_total(&self) -> u64 {
        self.lost.iter().map(|r| r.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placing_again_follows_the_fit_and_keeps_order() {
        let mut cap = Capture {
            samples: (0..5).map(|k| Sample { clock: Some(k as f64), ..Sample::at(1000 * k, 0.1, 5.0) }).collect(),
            lost: vec![LostRun {
                t_ns: 0,
                period_ns: 1000.0,
                count: 3,
                clock: Some(10.0),
                clock_step: 1.0,
                reindex_until: None,
            }],
            fit: None,
        };
        cap.samples.push(Sample::at(2500, 0.1, 5.0)); // clockless: stays where it is
        let fit = ClockLine {
            x_ref: 0.0,
            host_ref_ns: 1e6,
            slope: 1001.0,
            nominal_slope: Some(1000.0),
            valid_from_x: 0.0,
            points: 3,
            span_s: 1.0,
            spread_ns: 0.0,
            bound_ns: None,
        };
        cap.place(fit);
        assert!(cap.samples.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
        assert_eq!(cap.samples[0].t_ns, 2500, "the clockless sample sorts first now");
        assert_eq!(cap.samples[1].t_ns, 1_000_000);
        assert_eq!(cap.samples[5].t_ns, 1_004_004);
        assert_eq!(cap.lost[0].t_ns, 1_010_010);
        assert_eq!(cap.lost[0].period_ns, 1001.0);
        assert_eq!(cap.lost_total(), 3);
        assert_eq!(cap.lost[0].slot_ns(2), 1_012_012.0);
    }
}
