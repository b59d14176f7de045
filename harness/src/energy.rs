//! Energy on the agent's clock, as pure functions (no I/O).
//!
//! The agent reports its timed window `[start, end]` in the *board's* `CLOCK_MONOTONIC`; power samples
//! are on the *host's* `CLOCK_MONOTONIC` (placed by the monitor's own sample clock, see
//! [`crate::power`]). To put both on one timeline:
//!
//! 1. [`estimate_offset`]: several `clock` request/reply exchanges; the one with the smallest round
//!    trip is kept, assuming the board read its clock halfway through it, so
//!    `offset = (host_send + host_recv) / 2 - board` with an uncertainty of `rtt / 2`.
//! 2. [`ClockMap`]: offsets measured before and after the window; board times in between are mapped
//!    with the offset interpolated linearly in board time, which absorbs a constant drift between the
//!    two crystals (tens of ppm: ~0.3 ms over a 10 s window).
//! 3. [`window_energy`]: the power curve is the piecewise-linear interpolation of the samples; energy is
//!    its exact integral over the window (trapezoid rule between samples, with the curve interpolated at
//!    the window's edges, so a window that starts between two samples gets the right fraction of that
//!    interval). Samples *counted* in the window follow half-open `[start, end)` semantics: a sample
//!    exactly on `start` is in, one exactly on `end` is out, so back-to-back windows never count a
//!    sample twice.
//! 4. [`energy_per_inference`]: gross (the window's energy / inferences) and net of idle power
//!    (`(E - P_idle x T) / n`), idle power being measured at the same frequency before the variants.
//! 5. [`cell_power`]: everything a cell records about power, from one [`Capture`]: the window's
//!    energy, the samples in it and their effective rate, the lost slots that fall *inside* it (each
//!    counted once, from the monitor's [`LostRun`]s: a loss during warm-up or between windows is not the
//!    window's), the clock fit the samples were placed with, and the flags: too many lost samples (the
//!    window is worth measuring again) or too few samples for the scenario's accuracy (recorded, not
//!    retried: a slow monitor will not get faster).
//!
//! Every failure is an [`EnergyError`] naming the window and what was missing.
//!
//! The integral is computed by a [`WindowIntegrator`] fed samples in time order, one chunk at a
//! time: [`window_energy`] feeds it one slice, [`capture_window_energy`] the chunks of a
//! [`Capture`], which may be on disk (a window longer than a capture holds in memory, see
//! [`crate::power_session`]). Both give the same figures.

use std::ops::Range;

use crate::clock_fit::ClockLine;
use crate::samples::{Capture, LostRun, Sample};

/// Why an energy figure cannot be computed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EnergyError {
    #[error("no clock exchanges to estimate the board-to-host offset from")]
    NoExchanges,
    #[error("clock exchange {index} has host receive time {recv_ns} ns before its send time {send_ns} ns")]
    BadExchange { index: usize, send_ns: u64, recv_ns: u64 },
    #[error("window [{start_ns}, {end_ns}] ns does not have a positive duration")]
    InvalidWindow { start_ns: i64, end_ns: i64 },
    #[error("window [{start_ns}, {end_ns}) ns contains no power samples")]
    EmptyWindow { start_ns: i64, end_ns: i64 },
    #[error(
        "window [{start_ns}, {end_ns}] ns is not covered by the power samples (first at {first_ns:?} ns, last at \
         {last_ns:?} ns): the monitor must stream from before the window to after it"
    )]
    NotCovered { start_ns: i64, end_ns: i64, first_ns: Option<i64>, last_ns: Option<i64> },
    #[error("sample at {t_ns} ns has no known voltage (NaN): give the rail voltage for this monitor")]
    UnknownVoltage { t_ns: u64 },
    #[error("energy per inference needs at least one inference in the window")]
    NoInferences,
    #[error("the capture's samples spilled to disk cannot be read back: {detail}")]
    SpillUnreadable { detail: String },
}

/// One `clock` request/reply with the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockExchange {
    /// Host monotonic time just before the request was written.
    pub host_send_ns: u64,
    /// Host monotonic time just after the reply was read.
    pub host_recv_ns: u64,
    /// The board's monotonic time in the reply.
    pub board_ns: u64,
}

/// A board-to-host clock offset at one point in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClockOffset {
    /// `host - board`: add to a board time to get the host time.
    pub offset_ns: i64,
    /// The true offset lies within `offset_ns ± uncertainty_ns` (half the round trip used).
    pub uncertainty_ns: u64,
    pub rtt_ns: u64,
    /// Board time of the exchange used (reference point for drift interpolation).
    pub board_ref_ns: u64,
    /// How many exchanges were offered.
    pub exchanges: usize,
}

/// Keeps the exchange with the smallest round trip (least room for asymmetric delays).
pub fn estimate_offset(exchanges: &[ClockExchange]) -> Result<ClockOffset, EnergyError> {
    let mut best: Option<(u64, &ClockExchange)> = None;
    for (index, x) in exchanges.iter().enumerate() {
        if x.host_recv_ns < x.host_send_ns {
            return Err(EnergyError::BadExchange { index, send_ns: x.host_send_ns, recv_ns: x.host_recv_ns });
        }
        let rtt = x.host_recv_ns - x.host_send_ns;
        if best.is_none_or(|(b, _)| rtt < b) {
            best = Some((rtt, x));
        }
    }
    let (rtt, x) = best.ok_or(EnergyError::NoExchanges)?;
    // Midpoint without overflow: send + rtt/2 (rounded half up).
    let host_mid = i128::from(x.host_send_ns) + i128::from(rtt).div_euclid(2) + i128::from(rtt % 2);
    Ok(ClockOffset {
        offset_ns: (host_mid - i128::from(x.board_ns)) as i64,
        uncertainty_ns: rtt.div_ceil(2),
        rtt_ns: rtt,
        board_ref_ns: x.board_ns,
        exchanges: exchanges.len(),
    })
}

/// Maps board times to host times from offsets measured before and (optionally) after a window.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ClockMap {
    pub before: ClockOffset,
    pub after: Option<ClockOffset>,
}

impl ClockMap {
    pub fn new(before: ClockOffset, after: Option<ClockOffset>) -> Self {
        Self { before, after }
    }

    /// The offset at board time `board_ns`: interpolated (or extrapolated) linearly between the two
    /// measurements, constant with only one.
    pub fn offset_at(&self, board_ns: u64) -> f64 {
        let b = &self.before;
        match &self.after {
            Some(a) if a.board_ref_ns != b.board_ref_ns => {
                let slope = (a.offset_ns - b.offset_ns) as f64 / (a.board_ref_ns as f64 - b.board_ref_ns as f64);
                b.offset_ns as f64 + slope * (board_ns as f64 - b.board_ref_ns as f64)
            }
            Some(a) => (a.offset_ns as f64 + b.offset_ns as f64) / 2.0,
            None => b.offset_ns as f64,
        }
    }

    /// Host monotonic nanoseconds for a board time.
    pub fn to_host_ns(&self, board_ns: u64) -> i64 {
        (board_ns as f64 + self.offset_at(board_ns)).round() as i64
    }

    /// The larger of the two measurements' uncertainties.
    pub fn uncertainty_ns(&self) -> u64 {
        self.after.map_or(self.before.uncertainty_ns, |a| a.uncertainty_ns.max(self.before.uncertainty_ns))
    }

    /// Relative rate difference of the two clocks in parts per million (`None` with one measurement).
    pub fn drift_ppm(&self) -> Option<f64> {
        let a = self.after?;
        let span = a.board_ref_ns as f64 - self.before.board_ref_ns as f64;
        (span != 0.0).then(|| (a.offset_ns - self.before.offset_ns) as f64 / span * 1e6)
    }
}

/// A window on the host timeline, nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostWindow {
    pub start_ns: i64,
    pub end_ns: i64,
}

impl HostWindow {
    pub fn duration_s(&self) -> f64 {
        (self.end_ns - self.start_ns) as f64 * 1e-9
    }
}

/// Places the agent's window `[board_start_ns, board_end_ns]` on the host timeline.
pub fn board_window_to_host(map: &ClockMap, board_start_ns: u64, board_end_ns: u64) -> Result<HostWindow, EnergyError> {
    let w = HostWindow { start_ns: map.to_host_ns(board_start_ns), end_ns: map.to_host_ns(board_end_ns) };
    if w.end_ns <= w.start_ns {
        return Err(EnergyError::InvalidWindow { start_ns: w.start_ns, end_ns: w.end_ns });
    }
    Ok(w)
}

/// Indices of the samples inside `[start, end)` (half-open: on `start` in, on `end` out).
/// `samples` must be sorted by time, as every monitor produces them.
pub fn samples_in_window(samples: &[Sample], window: HostWindow) -> Range<usize> {
    debug_assert!(samples.windows(2).all(|w| w[0].t_ns <= w[1].t_ns), "samples must be sorted by time");
    let t = |s: &Sample| s.t_ns as i128;
    let lo = samples.partition_point(|s| t(s) < i128::from(window.start_ns));
    let hi = samples.partition_point(|s| t(s) < i128::from(window.end_ns));
    lo..hi.max(lo)
}

/// Trapezoid integral of power over consecutive samples, joules (the whole recording).
pub fn trapezoid_energy_j(samples: &[Sample]) -> f64 {
    samples
        .windows(2)
        .map(|w| (w[0].power_w() + w[1].power_w()) * 0.5 * (w[1].t_ns as f64 - w[0].t_ns as f64) * 1e-9)
        .sum()
}

/// What [`window_energy`] found.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct WindowEnergy {
    pub window: HostWindow,
    /// Integral of the interpolated power curve over the window, joules.
    pub energy_j: f64,
    /// `energy_j / duration`, watts.
    pub mean_power_w: f64,
    pub duration_s: f64,
    /// Samples in `[start, end)`.
    pub samples_in_window: usize,
    /// Largest interval between consecutive samples that overlaps the window (lost samples show here).
    pub max_gap_s: f64,
}

/// Energy in `window` from the piecewise-linear power curve through `samples` (sorted by time).
///
/// Errors: a window without positive duration, no sample inside it, samples that do not reach from the
/// window's start to its end, a sample with unknown voltage.
pub fn window_energy(samples: &[Sample], window: HostWindow) -> Result<WindowEnergy, EnergyError> {
    let mut integrator = WindowIntegrator::new(window);
    integrator.feed(samples);
    integrator.finish()
}

/// Energy in `window` from every sample of `capture`, in memory or spilled to disk (read back one
/// chunk at a time): the same figures as [`window_energy`] over all the samples at once.
pub fn capture_window_energy(capture: &Capture, window: HostWindow) -> Result<WindowEnergy, EnergyError> {
    let mut integrator = WindowIntegrator::new(window);
    for chunk in capture.chunks() {
        let chunk = chunk.map_err(|e| EnergyError::SpillUnreadable { detail: e.to_string() })?;
        integrator.feed(&chunk);
    }
    integrator.finish()
}

/// [`window_energy`] one sample at a time, so that samples can come in chunks (from disk) and never
/// all be in memory.
///
/// The curve between consecutive samples is a straight line; each interval adds the exact integral
/// of its part inside `[start, end]`. Samples are expected in time order: one earlier than the
/// previous (a monitor's clock restarted mid-window, across two chunks of a spilled capture) is left
/// out and counted ([`WindowIntegrator::out_of_order`]). Over a sorted slice this gives exactly what
/// the bracketing formulation in the module docs does (same terms, same order of summation).
#[derive(Clone, Debug)]
pub struct WindowIntegrator {
    window: HostWindow,
    prev: Option<Sample>,
    first_ns: Option<i64>,
    last_ns: Option<i64>,
    inside: usize,
    energy_j: f64,
    max_gap_ns: f64,
    /// The first sample of the span (the last one before start, those inside, the first at or after
    /// end) with unknown power.
    unknown_voltage: Option<u64>,
    /// Whether a sample at or after end has been seen (the first such closes the span).
    seen_end: bool,
    out_of_order: u64,
}

impl WindowIntegrator {
    pub fn new(window: HostWindow) -> Self {
        Self {
            window,
            prev: None,
            first_ns: None,
            last_ns: None,
            inside: 0,
            energy_j: 0.0,
            max_gap_ns: 0.0,
            unknown_voltage: None,
            seen_end: false,
            out_of_order: 0,
        }
    }

    /// Samples earlier than the one before them, left out.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    pub fn feed(&mut self, samples: &[Sample]) {
        for s in samples {
            self.push(s);
        }
    }

    fn push(&mut self, s: &Sample) {
        let (start, end) = (i128::from(self.window.start_ns), i128::from(self.window.end_ns));
        let t = s.t_ns as i128;
        let mut unknown = |s: &Sample| {
            if !s.power_w().is_finite() && self.unknown_voltage.is_none() {
                self.unknown_voltage = Some(s.t_ns);
            }
        };
        if let Some(p) = self.prev {
            if s.t_ns < p.t_ns {
                self.out_of_order += 1;
                return;
            }
            // `p` is the last sample before start when this one is past it.
            if (p.t_ns as i128) < start && t > start {
                unknown(&p);
            }
        }
        if t >= start && t < end {
            self.inside += 1;
            unknown(s);
        } else if t >= end && !self.seen_end {
            self.seen_end = true;
            unknown(s);
        }
        if let Some(p) = self.prev {
            self.integrate(&p, s);
        }
        self.first_ns.get_or_insert(s.t_ns as i64);
        self.last_ns = Some(s.t_ns as i64);
        self.prev = Some(*s);
    }

    /// The exact integral of the line from `s0` to `s1` over its part inside the window.
    fn integrate(&mut self, s0: &Sample, s1: &Sample) {
        let (a, b) = (self.window.start_ns as f64, self.window.end_ns as f64);
        let (t0, t1) = (s0.t_ns as f64, s1.t_ns as f64);
        if t1 <= t0 {
            return; // duplicate timestamp: no width
        }
        let (lo, hi) = (t0.max(a), t1.min(b));
        if hi <= lo {
            return;
        }
        self.max_gap_ns = self.max_gap_ns.max(t1 - t0);
        let (p0, p1) = (s0.power_w(), s1.power_w());
        let at = |t: f64| p0 + (p1 - p0) * (t - t0) / (t1 - t0);
        self.energy_j += (at(lo) + at(hi)) * 0.5 * (hi - lo) * 1e-9;
    }

    /// The window's energy, or why there is none (checked in this order: window, samples inside,
    /// coverage, voltage).
    pub fn finish(self) -> Result<WindowEnergy, EnergyError> {
        let window = self.window;
        if window.end_ns <= window.start_ns {
            return Err(EnergyError::InvalidWindow { start_ns: window.start_ns, end_ns: window.end_ns });
        }
        if self.inside == 0 {
            return Err(EnergyError::EmptyWindow { start_ns: window.start_ns, end_ns: window.end_ns });
        }
        let (first, last) = (self.first_ns, self.last_ns);
        if first.is_none_or(|f| f > window.start_ns) || last.is_none_or(|l| l < window.end_ns) {
            return Err(EnergyError::NotCovered {
                start_ns: window.start_ns,
                end_ns: window.end_ns,
                first_ns: first,
                last_ns: last,
            });
        }
        if let Some(t_ns) = self.unknown_voltage {
            return Err(EnergyError::UnknownVoltage { t_ns });
        }
        let duration_s = window.duration_s();
        Ok(WindowEnergy {
            window,
            energy_j: self.energy_j,
            mean_power_w: self.energy_j / duration_s,
            duration_s,
            samples_in_window: self.inside,
            max_gap_s: self.max_gap_ns * 1e-9,
        })
    }
}

/// Lost slots of `runs` whose time falls in `[start, end)`, the same half-open rule as for samples.
pub fn lost_in_window(runs: &[LostRun], window: HostWindow) -> u64 {
    let (a, b) = (window.start_ns as f64, window.end_ns as f64);
    runs.iter()
        .map(|r| {
            if r.count == 0 {
                return 0;
            }
            if r.period_ns <= 0.0 {
                let t = r.t_ns as f64;
                return if t >= a && t < b { r.count } else { 0 };
            }
            // Slot i sits at t + i*p: those with a <= t + i*p < b.
            let t = r.t_ns as f64;
            let first = ((a - t) / r.period_ns).ceil().max(0.0);
            let past = ((b - t) / r.period_ns).ceil().clamp(0.0, r.count as f64);
            (past - first).max(0.0) as u64
        })
        .sum()
}

/// Energy per inference for one cell.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct InferenceEnergy {
    /// Window energy / inferences, joules.
    pub gross_j: f64,
    /// (Window energy - idle power x duration) / inferences, joules. May be slightly negative when the
    /// workload costs less than the noise in the idle measurement.
    pub net_j: f64,
    pub mean_power_w: f64,
    pub idle_power_w: f64,
    pub inferences: u64,
}

pub fn energy_per_inference(
    energy: &WindowEnergy,
    idle_power_w: f64,
    inferences: u64,
) -> Result<InferenceEnergy, EnergyError> {
    if inferences == 0 {
        return Err(EnergyError::NoInferences);
    }
    let n = inferences as f64;
    Ok(InferenceEnergy {
        gross_j: energy.energy_j / n,
        net_j: (energy.energy_j - idle_power_w * energy.duration_s) / n,
        mean_power_w: energy.mean_power_w,
        idle_power_w,
        inferences,
    })
}

/// Mean power over a window (idle measurement), watts.
pub fn mean_power_w(samples: &[Sample], window: HostWindow) -> Result<f64, EnergyError> {
    window_energy(samples, window).map(|e| e.mean_power_w)
}

/// [`mean_power_w`] over a whole capture, in memory or spilled to disk (an idle period longer than
/// a capture holds in memory).
pub fn capture_mean_power_w(capture: &Capture, window: HostWindow) -> Result<f64, EnergyError> {
    capture_window_energy(capture, window).map(|e| e.mean_power_w)
}

/// What the scenario asks of a window's power measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PowerPolicy {
    /// A window losing more than this fraction of its sample slots is flagged (and measured again).
    pub max_lost_fraction: f64,
    /// A window with fewer samples than this is flagged as too coarse for the energy figure to be
    /// trusted to the scenario's accuracy (recorded as measured, not retried).
    pub min_samples: usize,
}

/// Below this many samples a window's energy is a coarse estimate: at 10 samples the trapezoid rule is
/// within a few per cent for signals that change on the window's own time scale.
pub const MIN_WINDOW_SAMPLES: usize = 10;

/// Everything a cell records about its power.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CellPower {
    pub energy: WindowEnergy,
    pub per_inference: InferenceEnergy,
    /// Lost slots inside the window.
    pub lost: u64,
    /// `lost / (samples + lost)`.
    pub lost_fraction: f64,
    /// Samples per second of window.
    pub effective_rate_hz: f64,
    /// More lost than [`PowerPolicy::max_lost_fraction`] allows: worth measuring again.
    pub lost_flagged: bool,
    /// Fewer samples than [`PowerPolicy::min_samples`].
    pub few_samples: bool,
    /// The fit of the monitor's clock the samples were placed with.
    pub fit: Option<ClockLine>,
}

/// The power figures of one cell from the capture around its window.
pub fn cell_power(
    capture: &Capture,
    window: HostWindow,
    idle_power_w: Option<f64>,
    inferences: u64,
    policy: &PowerPolicy,
) -> Result<CellPower, EnergyError> {
    let energy = capture_window_energy(capture, window)?;
    let per_inference = energy_per_inference(&energy, idle_power_w.unwrap_or(0.0), inferences)?;
    let lost = lost_in_window(&capture.lost, window);
    let slots = energy.samples_in_window as u64 + lost;
    let lost_fraction = if slots == 0 { 0.0 } else { lost as f64 / slots as f64 };
    Ok(CellPower {
        per_inference,
        lost,
        lost_fraction,
        effective_rate_hz: energy.samples_in_window as f64 / energy.duration_s,
        lost_flagged: lost_fraction > policy.max_lost_fraction,
        few_samples: energy.samples_in_window < policy.min_samples,
        fit: capture.fit,
        energy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(t_ns: u64, power_w: f64) -> Sample {
        Sample::at(t_ns, power_w / 5.0, 5.0)
    }

    fn regular(start: u64, period: u64, n: usize, p: impl Fn(u64) -> f64) -> Vec<Sample> {
        (0..n as u64).map(|k| s(start + k * period, p(start + k * period))).collect()
    }

    fn w(start_ns: i64, end_ns: i64) -> HostWindow {
        HostWindow { start_ns, end_ns }
    }

    #[test]
    fn offset_keeps_smallest_round_trip() {
        let x = [
            ClockExchange { host_send_ns: 1_000, host_recv_ns: 9_000, board_ns: 100 }, // rtt 8000
            ClockExchange { host_send_ns: 20_000, host_recv_ns: 21_000, board_ns: 19_400 }, // rtt 1000
            ClockExchange { host_send_ns: 30_000, host_recv_ns: 33_000, board_ns: 29_000 }, // rtt 3000
        ];
        let o = estimate_offset(&x).unwrap();
        assert_eq!(o.rtt_ns, 1_000);
        assert_eq!(o.uncertainty_ns, 500);
        assert_eq!(o.offset_ns, 20_500 - 19_400);
        assert_eq!(o.board_ref_ns, 19_400);
        assert_eq!(o.exchanges, 3);
        assert_eq!(estimate_offset(&[]), Err(EnergyError::NoExchanges));
        let bad = [ClockExchange { host_send_ns: 10, host_recv_ns: 5, board_ns: 0 }];
        assert!(matches!(estimate_offset(&bad), Err(EnergyError::BadExchange { index: 0, .. })));
    }

    #[test]
    fn offset_of_a_board_clock_behind_the_host() {
        // Board clock 5 s behind the host: board = host - 5e9; offset is +5e9.
        let x = [ClockExchange { host_send_ns: 10_000_000_000, host_recv_ns: 10_000_000_200, board_ns: 5_000_000_100 }];
        assert_eq!(estimate_offset(&x).unwrap().offset_ns, 5_000_000_000);
    }

    #[test]
    fn drift_is_interpolated_across_the_window() {
        // The board clock runs 100 ppm slow: offset grows 100 us per second of board time.
        let before =
            ClockOffset { offset_ns: 1_000_000, uncertainty_ns: 50, rtt_ns: 100, board_ref_ns: 0, exchanges: 5 };
        let after = ClockOffset {
            offset_ns: 1_000_000 + 1_000_000,
            uncertainty_ns: 80,
            rtt_ns: 160,
            board_ref_ns: 10_000_000_000,
            exchanges: 5,
        };
        let map = ClockMap::new(before, Some(after));
        assert!((map.drift_ppm().unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(map.uncertainty_ns(), 80);
        // Halfway through, the offset is halfway.
        assert_eq!(map.to_host_ns(5_000_000_000), 5_000_000_000 + 1_500_000);
        let win = board_window_to_host(&map, 2_000_000_000, 8_000_000_000).unwrap();
        assert_eq!(win, w(2_000_000_000 + 1_200_000, 8_000_000_000 + 1_800_000));
        // One measurement only: a constant offset.
        let single = ClockMap::new(before, None);
        assert_eq!(single.to_host_ns(8_000_000_000), 8_001_000_000);
        assert!(single.drift_ppm().is_none());
        assert!(matches!(board_window_to_host(&single, 5, 5), Err(EnergyError::InvalidWindow { .. })));
    }

    #[test]
    fn sample_exactly_on_window_edges() {
        let samples = regular(0, 100, 11, |_| 1.0); // t = 0, 100, ..., 1000
                                                    // Start on a sample: it is in; end on a sample: it is out.
        let r = samples_in_window(&samples, w(200, 500));
        assert_eq!(r, 2..5, "t = 200, 300, 400");
        // Adjacent windows share the edge sample exactly once.
        let a = samples_in_window(&samples, w(0, 500));
        let b = samples_in_window(&samples, w(500, 1000));
        assert_eq!(a.len() + b.len(), samples_in_window(&samples, w(0, 1000)).len());
        assert_eq!(a.end, b.start);
        // A window between two samples contains none.
        assert!(samples_in_window(&samples, w(101, 199)).is_empty());
        // Energy on exact edges: 1 W for 300 ns.
        let e = window_energy(&samples, w(200, 500)).unwrap();
        assert!((e.energy_j - 300e-9).abs() < 1e-18);
        assert_eq!(e.samples_in_window, 3);
    }

    #[test]
    fn window_between_samples_gets_its_fraction() {
        // Power ramps 0 W at t=0 to 10 W at t=1000 ns (two samples), plus one inside.
        let samples = vec![s(0, 0.0), s(500, 5.0), s(1000, 10.0)];
        let e = window_energy(&samples, w(250, 750)).unwrap();
        // Integral of P = t/100 (W, t in ns) from 250 to 750 ns = (750^2 - 250^2)/200 ns*W = 2500 W*ns.
        assert!((e.energy_j - 2500e-9).abs() < 1e-15, "{}", e.energy_j);
        assert!((e.mean_power_w - 5.0).abs() < 1e-9);
        assert!((e.max_gap_s - 500e-9).abs() < 1e-18);
    }

    #[test]
    fn empty_and_uncovered_windows_are_errors() {
        let samples = regular(1_000, 1_000, 10, |_| 2.0); // 1000 ..= 10000
        assert!(matches!(window_energy(&samples, w(1_100, 1_900)), Err(EnergyError::EmptyWindow { .. })));
        assert!(matches!(window_energy(&[], w(0, 10)), Err(EnergyError::EmptyWindow { .. })));
        assert!(matches!(window_energy(&samples, w(500, 5_000)), Err(EnergyError::NotCovered { .. })));
        assert!(matches!(window_energy(&samples, w(5_000, 10_500)), Err(EnergyError::NotCovered { .. })));
        assert!(matches!(window_energy(&samples, w(5_000, 5_000)), Err(EnergyError::InvalidWindow { .. })));
        let mut nan = samples.clone();
        nan[4].voltage_v = f64::NAN;
        assert!(matches!(window_energy(&nan, w(2_000, 8_000)), Err(EnergyError::UnknownVoltage { t_ns: 5_000 })));
        let msg = window_energy(&samples, w(1_100, 1_900)).unwrap_err().to_string();
        assert!(msg.contains("1100") && msg.contains("no power samples"), "{msg}");
    }

    #[test]
    fn gross_and_net_energy_per_inference() {
        // 3 W for 2 s with 0.5 W idle, 100 inferences: gross 60 mJ, net 50 mJ.
        let samples = regular(0, 10_000_000, 201, |_| 3.0);
        let e = window_energy(&samples, w(0, 2_000_000_000)).unwrap();
        let per = energy_per_inference(&e, 0.5, 100).unwrap();
        assert!((per.gross_j - 0.06).abs() < 1e-12);
        assert!((per.net_j - 0.05).abs() < 1e-12);
        assert_eq!(energy_per_inference(&e, 0.5, 0), Err(EnergyError::NoInferences));
        assert!((mean_power_w(&samples, w(0, 1_000_000_000)).unwrap() - 3.0).abs() < 1e-12);
        // Drop 10 samples from the middle: the gap shows.
        let mut holed = samples.clone();
        holed.drain(50..60);
        let e = window_energy(&holed, w(0, 2_000_000_000)).unwrap();
        assert_eq!(e.samples_in_window, 190, "t = 0 .. 1.99 s less the 10 dropped");
        assert!((e.max_gap_s - 0.11).abs() < 1e-12);
        assert!((e.energy_j - 6.0).abs() < 1e-9, "constant power: interpolation across the gap is exact");
    }

    fn run(t_ns: u64, period_ns: f64, count: u64) -> LostRun {
        LostRun { t_ns, period_ns, count, clock: None, clock_step: 1.0, reindex_until: None }
    }

    #[test]
    fn losses_are_charged_to_the_window_they_fall_in_once() {
        // 17 slots lost at 10 us from t = 1 ms: inside [0, 2 ms), none in a later window.
        let runs = [run(1_000_000, 10_000.0, 17)];
        assert_eq!(lost_in_window(&runs, w(0, 2_000_000)), 17);
        assert_eq!(lost_in_window(&runs, w(2_000_000, 4_000_000)), 0);
        // A window edge through the run splits it, half-open: slots at 1.00..1.08 ms | 1.09..1.16 ms.
        let a = lost_in_window(&runs, w(0, 1_090_000));
        let b = lost_in_window(&runs, w(1_090_000, 3_000_000));
        assert_eq!((a, b), (9, 8));
        // A single lost poll (period 0) counts where it is.
        let poll = [run(500, 0.0, 1)];
        assert_eq!(lost_in_window(&poll, w(0, 500)), 0);
        assert_eq!(lost_in_window(&poll, w(500, 501)), 1);
        assert_eq!(lost_in_window(&[run(0, 1.0, 0)], w(0, 10)), 0);
    }

    #[test]
    fn cell_power_counts_losses_once_and_flags() {
        // 100 kS/s for 1 s at 2 W with 17 samples missing from the stream, inside the window.
        let mut samples = regular(0, 10_000, 100_001, |_| 2.0);
        samples.drain(50_000..50_017);
        let capture = Capture { samples, lost: vec![run(500_000_000, 10_000.0, 17)], ..Capture::default() };
        let policy = PowerPolicy { max_lost_fraction: 0.01, min_samples: MIN_WINDOW_SAMPLES };
        let p = cell_power(&capture, w(100_000_000, 900_000_000), Some(0.5), 100, &policy).unwrap();
        assert_eq!(p.lost, 17, "counted once");
        assert_eq!(p.energy.samples_in_window, 80_000 - 17);
        assert!((p.energy.energy_j - 1.6).abs() < 1e-9);
        assert!((p.per_inference.net_j - (1.6 - 0.4) / 100.0).abs() < 1e-12);
        assert!(!p.lost_flagged && !p.few_samples);
        assert!((p.effective_rate_hz - 79_983.0 / 0.8).abs() < 1e-6);
        // The same loss outside the window is not the window's.
        let p = cell_power(&capture, w(600_000_000, 900_000_000), None, 1, &policy).unwrap();
        assert_eq!(p.lost, 0);
        // A 10 Hz monitor over a 0.5 s window: measured, flagged as few samples.
        let slow = Capture { samples: regular(0, 100_000_000, 20, |_| 1.0), ..Capture::default() };
        let p = cell_power(&slow, w(120_000_000, 620_000_000), None, 5, &policy).unwrap();
        assert!(p.few_samples && !p.lost_flagged);
        assert!((p.energy.energy_j - 0.5).abs() < 1e-9);
        // Heavy loss is flagged.
        let lossy = Capture { lost: vec![run(200_000_000, 10_000.0, 5_000)], ..capture };
        assert!(cell_power(&lossy, w(100_000_000, 900_000_000), None, 1, &policy).unwrap().lost_flagged);
    }

    /// The slice formulation `window_energy` had before the integrator: bracketing samples found by
    /// binary search, then the clipped trapezoids over them. The oracle for the integrator.
    fn reference_window_energy(samples: &[Sample], window: HostWindow) -> Result<WindowEnergy, EnergyError> {
        if window.end_ns <= window.start_ns {
            return Err(EnergyError::InvalidWindow { start_ns: window.start_ns, end_ns: window.end_ns });
        }
        let inside = samples_in_window(samples, window);
        if inside.is_empty() {
            return Err(EnergyError::EmptyWindow { start_ns: window.start_ns, end_ns: window.end_ns });
        }
        let first = samples.first().map(|s| s.t_ns as i64);
        let last = samples.last().map(|s| s.t_ns as i64);
        if first.is_none_or(|f| f > window.start_ns) || last.is_none_or(|l| l < window.end_ns) {
            return Err(EnergyError::NotCovered {
                start_ns: window.start_ns,
                end_ns: window.end_ns,
                first_ns: first,
                last_ns: last,
            });
        }
        let lo = if inside.start > 0 && samples[inside.start].t_ns as i64 > window.start_ns {
            inside.start - 1
        } else {
            inside.start
        };
        let hi = if inside.end < samples.len() { inside.end } else { samples.len() - 1 };
        let span = &samples[lo..=hi];
        if let Some(s) = span.iter().find(|s| !s.power_w().is_finite()) {
            return Err(EnergyError::UnknownVoltage { t_ns: s.t_ns });
        }
        let (a, b) = (window.start_ns as f64, window.end_ns as f64);
        let (mut energy_j, mut max_gap): (f64, f64) = (0.0, 0.0);
        for p in span.windows(2) {
            let (t0, t1) = (p[0].t_ns as f64, p[1].t_ns as f64);
            if t1 <= t0 {
                continue;
            }
            let (lo, hi) = (t0.max(a), t1.min(b));
            if hi <= lo {
                continue;
            }
            max_gap = max_gap.max(t1 - t0);
            let (p0, p1) = (p[0].power_w(), p[1].power_w());
            let at = |t: f64| p0 + (p1 - p0) * (t - t0) / (t1 - t0);
            energy_j += (at(lo) + at(hi)) * 0.5 * (hi - lo) * 1e-9;
        }
        let duration_s = window.duration_s();
        Ok(WindowEnergy {
            window,
            energy_j,
            mean_power_w: energy_j / duration_s,
            duration_s,
            samples_in_window: inside.len(),
            max_gap_s: max_gap * 1e-9,
        })
    }

    #[test]
    fn a_spilled_capture_gives_the_same_figures_as_one_in_memory() {
        let samples = regular(0, 10_000, 2_100_000, |t| 1.0 + ((t / 1_000_000) % 7) as f64 * 0.1);
        let window = w(3_333_333, 20_000_001_234);
        let dir = tempfile::tempdir().unwrap();
        let mut spill = crate::samples::SampleSpill::create(dir.path()).unwrap();
        spill.append(&samples).unwrap();
        let on_disk = Capture { spilled: Some(spill.finish().unwrap()), ..Capture::default() };
        let in_memory = Capture { samples, ..Capture::default() };
        assert!(on_disk.chunks().count() > 2, "read back in several chunks");
        let policy = PowerPolicy { max_lost_fraction: 0.01, min_samples: 10 };
        let a = cell_power(&in_memory, window, Some(0.5), 1000, &policy).unwrap();
        let b = cell_power(&on_disk, window, Some(0.5), 1000, &policy).unwrap();
        assert_eq!(a, b);
        assert_eq!(capture_mean_power_w(&on_disk, window), mean_power_w(&in_memory.samples, window));
    }

    #[test]
    fn samples_out_of_order_across_chunks_are_left_out_and_counted() {
        let mut i = WindowIntegrator::new(w(0, 100));
        i.feed(&regular(0, 10, 11, |_| 1.0));
        i.feed(&[s(50, 1000.0)]);
        assert_eq!(i.out_of_order(), 1);
        let e = i.finish().unwrap();
        assert_eq!(e.samples_in_window, 10);
        assert!((e.energy_j - 100e-9).abs() < 1e-18);
    }

    proptest! {
        #[test]
        fn the_integrator_matches_the_slice_formulation_however_it_is_fed(
            steps in proptest::collection::vec((0u64..2_000, 0.0f64..10.0, 0u8..20), 1..120),
            a in -500i64..150_000, len in -100i64..150_000, cuts in proptest::collection::vec(0usize..120, 0..4),
        ) {
            // Sorted times with duplicates (step 0), occasional unknown voltage.
            let mut t = 0;
            let samples: Vec<Sample> = steps.iter().map(|&(dt, p, nan)| {
                t += dt;
                if nan == 0 { Sample::at(t, p, f64::NAN) } else { s(t, p) }
            }).collect();
            let window = w(a, a + len);
            let expected = reference_window_energy(&samples, window);
            prop_assert_eq!(window_energy(&samples, window), expected.clone());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(samples.len())).collect();
            cuts.sort_unstable();
            let mut integrator = WindowIntegrator::new(window);
            let mut from = 0;
            for c in cuts.into_iter().chain([samples.len()]) {
                integrator.feed(&samples[from..c]);
                from = c;
            }
            prop_assert_eq!(integrator.finish(), expected);
        }

        #[test]
        fn lost_slots_partition_across_windows(
            t in 0u64..10_000, period in 1.0f64..1_000.0, count in 0u64..500, cut in 0i64..600_000,
        ) {
            let runs = [run(t, period, count)];
            let end = 1_000_000;
            let whole = lost_in_window(&runs, w(0, end));
            prop_assert_eq!(whole, count);
            prop_assert_eq!(lost_in_window(&runs, w(0, cut)) + lost_in_window(&runs, w(cut, end)), count);
        }

        #[test]
        fn constant_power_gives_power_times_duration(
            p in 0.0f64..20.0, period in 1u64..10_000, n in 3usize..500,
            a in 0.0f64..1.0, b in 0.0f64..1.0,
        ) {
            let samples = regular(1_000, period, n, |_| p);
            let span = (n as u64 - 1) * period;
            let (x, y) = if a < b { (a, b) } else { (b, a) };
            let start = 1_000 + (x * span as f64) as i64;
            let end = 1_000 + (y * span as f64) as i64;
            prop_assume!(end > start);
            match window_energy(&samples, w(start, end)) {
                Ok(e) => {
                    let expected = p * (end - start) as f64 * 1e-9;
                    prop_assert!((e.energy_j - expected).abs() <= 1e-9 * expected.max(1e-12));
                }
                Err(EnergyError::EmptyWindow { .. }) => prop_assert!(samples_in_window(&samples, w(start, end)).is_empty()),
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
        }

        #[test]
        fn energy_is_additive_and_counts_partition(
            powers in proptest::collection::vec(0.0f64..10.0, 5..200), period in 1u64..1_000, cut in 0.05f64..0.95,
        ) {
            let n = powers.len();
            let samples: Vec<Sample> = powers.iter().enumerate().map(|(k, &p)| s(k as u64 * period, p)).collect();
            let end = ((n - 1) as u64 * period) as i64;
            let mid = (cut * end as f64) as i64;
            prop_assume!(mid > 0 && mid < end);
            let integral = |a, b| {
                let mut i = WindowIntegrator::new(w(a, b));
                i.feed(&samples);
                i.energy_j
            };
            let (whole, left, right) = (integral(0, end), integral(0, mid), integral(mid, end));
            prop_assert!((whole - (left + right)).abs() <= 1e-9 * whole.max(1e-15));
            prop_assert!((whole - trapezoid_energy_j(&samples)).abs() <= 1e-9 * whole.max(1e-15));
            let c = |a, b| samples_in_window(&samples, w(a, b)).len();
            prop_assert_eq!(c(0, mid) + c(mid, end), c(0, end));
        }

        #[test]
        fn true_offset_lies_within_uncertainty(
            offset in -1_000_000_000i64..1_000_000_000, delays in proptest::collection::vec((0u64..50_000, 0u64..50_000), 1..10),
        ) {
            // Host time h; the request takes d1 to reach the board, the reply d2 to come back.
            let mut h = 5_000_000_000u64;
            let exchanges: Vec<ClockExchange> = delays.iter().map(|&(d1, d2)| {
                let x = ClockExchange {
                    host_send_ns: h,
                    host_recv_ns: h + d1 + d2,
                    board_ns: ((h + d1) as i64 - offset) as u64,
                };
                h += 1_000_000;
                x
            }).collect();
            let o = estimate_offset(&exchanges).unwrap();
            prop_assert!((o.offset_ns - offset).unsigned_abs() <= o.uncertainty_ns);
        }
    }
}
