//! What power monitors deliver, as plain data: samples, runs of lost samples, and a capture of both
//! around one window. Drivers ([`crate::power`]) produce these; [`crate::energy`] integrates them;
//! neither depends on the other's internals.
//!
//! Time: [`Sample::t_ns`] is on the host's `CLOCK_MONOTONIC`. Where the monitor has a clock of its own
//! (a PPK2's sample index, a sketch's `millis()` or line count), the sample also keeps its reading of
//! that clock ([`Sample::clock`]) so that a capture can be placed again, consistently, with the fit of
//! that clock to the host clock as it stands after the window ([`Capture::place`]).
//!
//! Memory: a capture too long to hold (a PPK2 delivers 100,000 samples a second, 48 bytes each) is
//! written to an anonymous file as it arrives ([`SampleSpill`]) and read back in chunks
//! ([`Capture::chunks`]); energy and the raw power parts are computed from those chunks, so a window of
//! any length is exact and costs memory of one chunk.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
///
/// Either in memory (`samples`) or, when it grew past what a capture may hold, on disk (`spilled`,
/// with `samples` empty): read it with [`Capture::chunks`] to handle both.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    /// Sorted by time. Empty when the capture is [`Capture::spilled`].
    pub samples: Vec<Sample>,
    pub lost: Vec<LostRun>,
    /// The fit of the monitor's clock used for [`Sample::t_ns`] (`None` for clockless monitors).
    pub fit: Option<ClockLine>,
    /// Every sample of a capture too long to keep in memory, in arrival order, placed with `fit` as
    /// they are read back.
    pub spilled: Option<SpilledSamples>,
}

impl Capture {
    /// Samples in the capture, in memory or on disk.
    pub fn sample_count(&self) -> u64 {
        self.spilled.as_ref().map_or(self.samples.len() as u64, |s| s.count)
    }

    /// Every sample, oldest first, in chunks: the in-memory samples as one chunk, or a spilled capture
    /// read back [`SPILL_READ_CHUNK`] samples at a time, each chunk renumbered by the losses found late
    /// (see [`LostRun::reindex_until`]), placed with [`Capture::fit`] and sorted.
    ///
    /// Sorting is per chunk: samples that a restart of the monitor's clock placed before those of an
    /// earlier chunk stay after them (a consumer that needs time order skips them, see
    /// [`crate::energy::WindowIntegrator`]).
    pub fn chunks(&self) -> SampleChunks<'_> {
        SampleChunks { capture: self, next: 0, memory_done: false }
    }

    /// Places every sample and lost slot that has a clock reading on `fit`'s epoch again with `fit`,
    /// so the whole capture follows one consistent map, and keeps the samples sorted. (A spilled
    /// capture's samples are placed as [`Capture::chunks`] reads them.)
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

/// Samples a spilled capture hands out per chunk: 48 MB of [`Sample`]s, 10 s at 100 kS/s.
pub const SPILL_READ_CHUNK: usize = 1_000_000;

/// Bytes of one spilled sample: `t_ns`, current, voltage and clock (8 each, little-endian), a flags
/// byte (bit 0: clock present, bit 1: logic present) and the logic byte.
const SPILL_RECORD_BYTES: usize = 34;

fn encode_sample(s: &Sample) -> [u8; SPILL_RECORD_BYTES] {
    let mut r = [0u8; SPILL_RECORD_BYTES];
    r[0..8].copy_from_slice(&s.t_ns.to_le_bytes());
    r[8..16].copy_from_slice(&s.current_a.to_le_bytes());
    r[16..24].copy_from_slice(&s.voltage_v.to_le_bytes());
    r[24..32].copy_from_slice(&s.clock.unwrap_or(0.0).to_le_bytes());
    r[32] = u8::from(s.clock.is_some()) | (u8::from(s.logic.is_some()) << 1);
    r[33] = s.logic.unwrap_or(0);
    r
}

fn decode_sample(r: &[u8]) -> Sample {
    let f64_at = |i: usize| f64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
    Sample {
        t_ns: u64::from_le_bytes(r[0..8].try_into().expect("8 bytes")),
        current_a: f64_at(8),
        voltage_v: f64_at(16),
        clock: (r[32] & 1 != 0).then(|| f64_at(24)),
        logic: (r[32] & 2 != 0).then_some(r[33]),
    }
}

/// The part of a long capture written to disk as it arrives.
///
/// The file is anonymous: created in `dir` and unlinked at once, so it is gone when the last handle
/// closes, also after a crash or a kill. It holds samples as delivered (placed at read time);
/// renumbering by losses found later is recorded and applied on reading back.
#[derive(Debug)]
pub struct SampleSpill {
    file: BufWriter<File>,
    count: u64,
    reindex: Vec<(u64, LostRun)>,
    dir: PathBuf,
}

impl SampleSpill {
    /// An empty spill file in `dir` (the system's temporary directory unless the caller says).
    pub fn create(dir: &Path) -> io::Result<Self> {
        let name = format!(".hil-capture-{}-{:016x}", std::process::id(), rand::random::<u64>());
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(Self {
            file: BufWriter::with_capacity(1 << 20, file),
            count: 0,
            reindex: Vec::new(),
            dir: dir.to_path_buf(),
        })
    }

    /// Where the file is (for error messages).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Samples written so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn append(&mut self, samples: &[Sample]) -> io::Result<()> {
        for s in samples {
            self.file.write_all(&encode_sample(s))?;
        }
        self.count += samples.len() as u64;
        Ok(())
    }

    /// A loss found late ([`LostRun::reindex_until`]): it renumbers the samples written so far when
    /// they are read back (those still in memory are renumbered by the caller).
    pub fn note_reindex(&mut self, run: LostRun) {
        self.reindex.push((self.count, run));
    }

    /// Flushes and hands the samples over for reading.
    pub fn finish(self) -> io::Result<SpilledSamples> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        Ok(SpilledSamples { file: Arc::new(file), count: self.count, reindex: self.reindex })
    }
}

/// A spilled capture's samples, read back with [`Capture::chunks`].
#[derive(Clone, Debug)]
pub struct SpilledSamples {
    file: Arc<File>,
    count: u64,
    /// Losses found late, with how many samples had been written when each was found: a run applies
    /// to samples before that position (later ones were renumbered in memory before being written).
    reindex: Vec<(u64, LostRun)>,
}

impl SpilledSamples {
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Samples `first..first + n`, renumbered by late losses and placed with `fit`.
    fn read(&self, first: u64, n: usize, fit: Option<&ClockLine>) -> io::Result<Vec<Sample>> {
        let mut bytes = vec![0u8; n * SPILL_RECORD_BYTES];
        self.file.read_exact_at(&mut bytes, first * SPILL_RECORD_BYTES as u64)?;
        let mut samples: Vec<Sample> = bytes.chunks_exact(SPILL_RECORD_BYTES).map(decode_sample).collect();
        for (k, s) in samples.iter_mut().enumerate() {
            let index = first + k as u64;
            if let Some(clock) = s.clock.as_mut() {
                for (found_at, run) in &self.reindex {
                    if index < *found_at {
                        run.reindex(clock);
                    }
                }
            }
        }
        match fit {
            Some(fit) => place_samples(&mut samples, fit),
            None if !samples.windows(2).all(|w| w[0].t_ns <= w[1].t_ns) => samples.sort_by_key(|s| s.t_ns),
            None => {}
        }
        Ok(samples)
    }
}

/// The chunks of [`Capture::chunks`].
#[derive(Debug)]
pub struct SampleChunks<'a> {
    capture: &'a Capture,
    next: u64,
    memory_done: bool,
}

impl<'a> Iterator for SampleChunks<'a> {
    type Item = io::Result<Cow<'a, [Sample]>>;

    fn next(&mut self) -> Option<Self::Item> {
        match &self.capture.spilled {
            None => {
                if self.memory_done || self.capture.samples.is_empty() {
                    return None;
                }
                self.memory_done = true;
                Some(Ok(Cow::Borrowed(&self.capture.samples)))
            }
            Some(spilled) => {
                if self.next >= spilled.count {
                    return None;
                }
                let n = (spilled.count - self.next).min(SPILL_READ_CHUNK as u64) as usize;
                let chunk = spilled.read(self.next, n, self.capture.fit.as_ref());
                self.next += n as u64;
                Some(chunk.map(Cow::Owned))
            }
        }
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
            spilled: None,
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

#[cfg(test)]
mod spill_tests {
    use super::*;

    fn line(slope: f64) -> ClockLine {
        ClockLine {
            x_ref: 0.0,
            host_ref_ns: 1e9,
            slope,
            nominal_slope: Some(slope),
            valid_from_x: 0.0,
            points: 3,
            span_s: 1.0,
            spread_ns: 0.0,
            bound_ns: None,
        }
    }

    #[test]
    fn a_spilled_sample_reads_back_bit_for_bit() {
        for s in [
            Sample { t_ns: u64::MAX, current_a: -1.5e-9, voltage_v: f64::NAN, logic: Some(0xA5), clock: Some(12.5) },
            Sample::at(0, 0.25, 5.0),
            Sample { logic: Some(0), clock: Some(0.0), ..Sample::at(7, 0.0, 0.0) },
        ] {
            let back = decode_sample(&encode_sample(&s));
            assert_eq!(back.t_ns, s.t_ns);
            assert_eq!(back.current_a.to_bits(), s.current_a.to_bits());
            assert_eq!(back.voltage_v.to_bits(), s.voltage_v.to_bits());
            assert_eq!((back.logic, back.clock), (s.logic, s.clock));
        }
    }

    #[test]
    fn a_spilled_capture_reads_back_in_order_renumbered_and_placed() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = SampleSpill::create(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the spill file is anonymous");
        let n = SPILL_READ_CHUNK as u64 + 10;
        let sample = |k: u64| Sample { clock: Some(k as f64), ..Sample::at(k, k as f64, 1.0) };
        let first: Vec<Sample> = (0..500).map(sample).collect();
        spill.append(&first).unwrap();
        // A loss of 3 slots found after 500 samples were written, covering clocks 100..200 of them.
        let run = LostRun {
            t_ns: 0,
            period_ns: 1.0,
            count: 3,
            clock: Some(100.0),
            clock_step: 1.0,
            reindex_until: Some(200.0),
        };
        spill.note_reindex(run);
        let rest: Vec<Sample> = (500..n).map(sample).collect();
        spill.append(&rest).unwrap();
        assert_eq!(spill.len(), n);
        let spilled = spill.finish().unwrap();
        let capture = Capture { fit: Some(line(2.0)), spilled: Some(spilled), ..Capture::default() };
        assert_eq!(capture.sample_count(), n);

        let chunks: Vec<Vec<Sample>> = capture.chunks().map(|c| c.unwrap().into_owned()).collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].len(), SPILL_READ_CHUNK);
        let all: Vec<Sample> = chunks.concat();
        assert_eq!(all.len() as u64, n);
        // Placed on the fit: host = 1e9 + 2 x clock; clocks 100..200 moved 3 slots later; sorted.
        assert!(all.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
        let at = |current: f64| all.iter().find(|s| s.current_a == current).unwrap();
        assert_eq!(at(99.0).t_ns, 1_000_000_198);
        assert_eq!(at(100.0).clock, Some(103.0));
        assert_eq!(at(100.0).t_ns, 1_000_000_206);
        assert_eq!(at(200.0).clock, Some(200.0), "outside the run: untouched");
        assert_eq!(at(600.0).clock, Some(600.0));
    }

    #[test]
    fn an_in_memory_capture_is_one_borrowed_chunk() {
        let capture = Capture { samples: vec![Sample::at(1, 0.1, 5.0)], ..Capture::default() };
        let chunks: Vec<_> = capture.chunks().collect();
        assert_eq!(chunks.len(), 1);
        assert!(matches!(chunks[0].as_ref().unwrap(), Cow::Borrowed(_)));
        assert_eq!(Capture::default().chunks().count(), 0);
    }
}
