//! A Nordic Power Profiler Kit II double, written from the host code Nordic and IRNAS publish
//! (the device firmware is not public), not from this crate's driver or emulator:
//!
//! - [N] `NordicSemiconductor/pc-nrfconnect-ppk` (read at commit 8da7626):
//!   `src/constants.ts` (opcodes `AverageStart: 0x06`, `AverageStop: 0x07`,
//!   `DeviceRunningSet: 0x0c`, `RegulatorSet: 0x0d`, `SetPowerMode: 0x11`, `GetMetadata: 0x19`,
//!   `Reset: 0x20`, `SetUserGains: 0x25`); `src/device/serialDevice.ts` (the stream word masks
//!   `MEAS_ADC = generateMask(14, 0)`, `MEAS_RANGE = generateMask(3, 14)`,
//!   `MEAS_COUNTER = generateMask(6, 18)`, `MEAS_LOGIC = generateMask(8, 24)`, read as a 4-byte
//!   little-endian word by `parseMeasurementData`; `adcSamplingTimeUs = 10`;
//!   `adcMult = 1.8 / 163840`; `getAdcResult`, the calibration formula, applied to the ADC field
//!   times 4; the modifier defaults and `meta[key] || default`; `getMetadata`, which reads text
//!   until `END` and parses `key: value` lines; `ppkSetPowerMode(isSmuMode ? 2 : 1)`) and
//!   `src/device/abstractDevice.ts` (`ppkUpdateRegulator`: `[RegulatorSet, vdd >> 8,
//!   vdd & 0xff]`, which also sets the `currentVdd` the formula's `S * vdd / 1000` term uses).
//! - [I] `IRNAS/ppk2-api-python`, `src/ppk2_api/ppk2_api.py` (the same opcodes; `use_ampere_meter`
//!   sends `(0x11, 1)`, `use_source_meter` `(0x11, 2)`, `toggle_DUT_power` `(0x0C, 1|0)`;
//!   `_convert_source_voltage` encodes the regulator as `(3 + (mV - 800 + 32) / 256,
//!   (mV - 800 + 32) % 256)`, which is the same as big-endian mV; 800..5000 mV).
//!
//! Quirks it reproduces, each a parameter of [`Ppk2Config`]: a sample crystal off by `clock_ppm`
//! (sample `k` of a stream is truly taken at `t0 + k x 10 us x (1 + ppm 1e-6)`, `t0` being the
//! host time `AVERAGE_START` arrived); USB-like delivery in 64-byte multiples at irregular
//! intervals (1..16 ms, now and then a 20..40 ms stall), some deliveries written in two parts cut
//! inside a word; counter gaps (runs of words dropped at known times, the 6-bit counter skipping
//! them, as when the device's buffer overflows) and real overflow drops when the host does not
//! read; logic inputs D0..D7 carrying a binary counter of 50 ms periods of true time (D0 toggles
//! every 50 ms), a placement marker.
//!
//! Ranges: the real firmware auto-ranges at switch points it does not publish. This double keeps
//! the whole load in one range (range 3 by default, 0.18..0.65 A), so the host's spike filter,
//! which averages the samples after a range change ([N] `getAdcResult`), never alters a sample,
//! and every emitted current is the exact decode of the raw value sent (the truth levels are
//! those decodes, computed with the VDD the host last set, as the host decodes with it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{lock, now_ns, PtyMaster, Worker};

/// Opcodes ([N] `src/constants.ts`, [I] `PPK2_Command`).
pub mod op {
    pub const AVERAGE_START: u8 = 0x06;
    pub const AVERAGE_STOP: u8 = 0x07;
    pub const DEVICE_RUNNING_SET: u8 = 0x0C;
    pub const REGULATOR_SET: u8 = 0x0D;
    pub const SET_POWER_MODE: u8 = 0x11;
    pub const GET_META_DATA: u8 = 0x19;
    pub const RESET: u8 = 0x20;
    pub const SET_USER_GAINS: u8 = 0x25;
}

/// Volts per count of the ADC field times 4 ([N] `adcMult`).
pub const ADC_MULT: f64 = 1.8 / 163_840.0;
/// Nominal sample period ([N] `adcSamplingTimeUs = 10`).
pub const NOMINAL_PERIOD_NS: f64 = 10_000.0;
const ADC_MAX: u16 = (1 << 14) - 1;

/// Per-range calibration, the "modifiers" of [N]: `I = UG (x (GS x + GI) + S vdd/1000 + I)` with
/// `x = (4 adc - O) adcMult / R`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    pub r: [f64; 5],
    pub gs: [f64; 5],
    pub gi: [f64; 5],
    pub o: [f64; 5],
    pub s: [f64; 5],
    pub i: [f64; 5],
    pub ug: [f64; 5],
}

impl Calibration {
    /// An imagined, factory-calibrated unit: realistic magnitudes, none equal to [N]'s defaults,
    /// every value exactly representable at the precision the metadata prints (4 decimals for R,
    /// GS, GI, O; 9 for S, I; 2 for UG), so the host parses what this double decodes with.
    /// UG3 is 0.98 (a user gain set in the app), to make the UG term count.
    pub fn unit_9327() -> Self {
        Self {
            r: [1011.2291, 99.8372, 10.0911, 0.9874, 0.0457],
            gs: [1.0213, 108.3127, 17.6549, 2.3061, 0.0712],
            gi: [1.0021, 0.9712, 0.9637, 0.9548, 0.9601],
            o: [108.3311, 72.1048, 61.9915, 48.7732, 83.9054],
            s: [0.000000051, 0.000000612, 0.000005113, 0.000060815, 0.002876532],
            i: [-0.000000098, -0.000001512, 0.000035871, -0.000361042, -0.009122618],
            ug: [1.0, 1.0, 1.0, 0.98, 1.0],
        }
    }

    /// Current in amperes for the 14-bit ADC field `raw` in `range` with the regulator at
    /// `vdd_mv` ([N] `handleRawDataSet` multiplies the field by 4, then `getAdcResult`).
    pub fn decode(&self, range: usize, raw: u16, vdd_mv: f64) -> f64 {
        let adc = f64::from(raw) * 4.0;
        let x = (adc - self.o[range]) * (ADC_MULT / self.r[range]);
        self.ug[range]
            * (x * (self.gs[range] * x + self.gi[range]) + (self.s[range] * (vdd_mv / 1000.0) + self.i[range]))
    }

    /// The raw value whose decode is closest to `current_a` (bisection: the decode rises with
    /// `raw` above the offset); panics when the range cannot show the current.
    pub fn raw_for(&self, range: usize, current_a: f64, vdd_mv: f64) -> u16 {
        let mut lo = ((self.o[range] / 4.0).ceil() as u16).min(ADC_MAX);
        let mut hi = ADC_MAX;
        let (dlo, dhi) = (self.decode(range, lo, vdd_mv), self.decode(range, hi, vdd_mv));
        assert!(
            (dlo..=dhi).contains(&current_a),
            "range {range} shows {dlo}..{dhi} A at {vdd_mv} mV, not {current_a} A: pick another range"
        );
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.decode(range, mid, vdd_mv) < current_a {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let err = |r: u16| (self.decode(range, r, vdd_mv) - current_a).abs();
        if err(lo) <= err(hi) {
            lo
        } else {
            hi
        }
    }

    /// The `GET_META_DATA` answer: `Key: value` lines ending in `END`, in the order a real unit
    /// prints them (HW and mode amid the modifiers).
    pub fn metadata_text(&self, vdd_mv: u32, mode: u8, hw: &str, ia: &str) -> String {
        let mut s = String::from("Calibrated: 1\n");
        let mut list = |name: &str, values: &[f64; 5], digits: usize| {
            for (k, v) in values.iter().enumerate() {
                s.push_str(&format!("{name}{k}: {v:.digits$}\n"));
            }
        };
        list("R", &self.r, 4);
        list("GS", &self.gs, 4);
        list("GI", &self.gi, 4);
        list("O", &self.o, 4);
        let mut s2 = format!("VDD: {vdd_mv}\nHW: {hw}\nmode: {mode}\n");
        let mut list2 = |name: &str, values: &[f64; 5], digits: usize| {
            for (k, v) in values.iter().enumerate() {
                s2.push_str(&format!("{name}{k}: {v:.digits$}\n"));
            }
        };
        list2("S", &self.s, 9);
        list2("I", &self.i, 9);
        list2("UG", &self.ug, 2);
        s2.push_str(&format!("IA: {ia}\nEND\n"));
        s + &s2
    }
}

/// A repeating piecewise-constant current in absolute host time: within each `period_ns`
/// (phase 0 at multiples of the period on `CLOCK_MONOTONIC`), `steps[i].1` amperes from offset
/// `steps[i].0` to the next step's offset. Edges are sharp (one sample).
#[derive(Clone, Debug, PartialEq)]
pub struct StepLoad {
    pub period_ns: u64,
    pub steps: Vec<(u64, f64)>,
}

impl StepLoad {
    /// 230 ms: 180 mA, at 40 ms 420 mA, at 95 ms 650 mA, at 110 ms 260 mA; all in range 3.
    pub fn range3() -> Self {
        Self {
            period_ns: 230_000_000,
            steps: vec![(0, 0.18), (40_000_000, 0.42), (95_000_000, 0.65), (110_000_000, 0.26)],
        }
    }

    fn step_at(&self, t_ns: f64) -> usize {
        let phase = t_ns.rem_euclid(self.period_ns as f64);
        self.steps.iter().rposition(|&(off, _)| off as f64 <= phase).unwrap_or(0)
    }

    /// Integral over `[a, b]` (ns) of the step function with `levels[i]` for step `i`, A*s.
    fn integral(&self, levels: &[f64], a: f64, b: f64) -> f64 {
        let period = self.period_ns as f64;
        let mut total = 0.0;
        let mut base = (a / period).floor() * period;
        while base < b {
            for (i, &(off, _)) in self.steps.iter().enumerate() {
                let start = base + off as f64;
                let end = base + self.steps.get(i + 1).map_or(period, |s| s.0 as f64);
                let (lo, hi) = (start.max(a), end.min(b));
                if hi > lo {
                    total += levels[i] * (hi - lo) * 1e-9;
                }
            }
            base += period;
        }
        total
    }
}

/// Runs of dropped words: `words` consecutive slots starting at the first slot at or after
/// `first_after_ms + j x every_ms` of true time into each stream, for j = 0, 1, ...
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GapPlan {
    pub first_after_ms: f64,
    pub every_ms: f64,
    pub words: u64,
}

#[derive(Clone, Debug)]
pub struct Ppk2Config {
    pub calibration: Calibration,
    /// The one measurement range every sample is sent in (0..=4).
    pub range: u8,
    pub load: StepLoad,
    /// Sample crystal error: positive = slow (period longer than 10 us).
    pub clock_ppm: f64,
    pub gaps: Option<GapPlan>,
    /// Delivery interval, uniformly drawn, ms.
    pub chunk_interval_ms: (f64, f64),
    pub stall_probability: f64,
    pub stall_ms: (f64, f64),
    /// Share of deliveries written in two parts cut inside a word (0.3 ms apart).
    pub split_probability: f64,
    /// Samples beyond this much unread stream are dropped (and recorded as overflow drops).
    pub max_backlog: Duration,
    /// Regulator setting before the host sets one (also printed as `VDD`).
    pub initial_vdd_mv: u32,
    /// D0 toggles every `logic_period_ms` of true time (the logic byte counts these periods).
    pub logic_period_ms: u64,
    pub hw: String,
    pub seed: u64,
}

impl Default for Ppk2Config {
    fn default() -> Self {
        Self {
            calibration: Calibration::unit_9327(),
            range: 3,
            load: StepLoad::range3(),
            clock_ppm: 0.0,
            gaps: None,
            chunk_interval_ms: (1.0, 16.0),
            stall_probability: 0.04,
            stall_ms: (20.0, 40.0),
            split_probability: 0.3,
            max_backlog: Duration::from_secs(2),
            initial_vdd_mv: 3000,
            logic_period_ms: 50,
            hw: "9327".into(),
            seed: 0x9327,
        }
    }
}

/// A command as it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ppk2Command {
    GetMetadata,
    AverageStart,
    AverageStop,
    RegulatorSet(u16),
    SetPowerMode(u8),
    DeviceRunning(u8),
    Reset,
    SetUserGains,
    Unknown(u8),
}

/// A piece of one stream with one regulator setting: slots `k_start..k_end`, slot `k` truly taken
/// at `t0_ns + k x period_ns`, carrying `levels_a[step]` (exact decodes of `raws[step]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub stream: u32,
    pub t0_ns: u64,
    pub period_ns: f64,
    pub k_start: u64,
    pub k_end: u64,
    pub vdd_mv: u32,
    pub raws: Vec<u16>,
    pub levels_a: Vec<f64>,
}

impl Segment {
    pub fn slot_time_ns(&self, k: u64) -> f64 {
        self.t0_ns as f64 + k as f64 * self.period_ns
    }

    fn start_ns(&self) -> f64 {
        self.slot_time_ns(self.k_start)
    }

    fn end_ns(&self) -> f64 {
        self.slot_time_ns(self.k_end)
    }
}

/// A slot that was never sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DroppedSlot {
    pub stream: u32,
    pub k: u64,
    /// True time the sample would have been taken, host monotonic ns.
    pub t_ns: f64,
    /// Dropped because the host did not read (not planned).
    pub overflow: bool,
}

/// What the double did and the physics it emulated.
#[derive(Clone, Debug, Default)]
pub struct Ppk2Truth {
    pub load: Option<StepLoad>,
    pub logic_period_ns: f64,
    pub segments: Vec<Segment>,
    pub dropped: Vec<DroppedSlot>,
    pub commands: Vec<(u64, Ppk2Command)>,
    pub vdd_mv: u32,
    pub mode: Option<u8>,
    pub running: bool,
    pub bytes_sent: u64,
    pub deliveries: u64,
    pub split_deliveries: u64,
    pub stalls: u64,
    pub max_delivery_bytes: usize,
}

impl Ppk2Truth {
    pub fn streams_started(&self) -> usize {
        self.commands.iter().filter(|(_, c)| *c == Ppk2Command::AverageStart).count()
    }

    fn segment_covering(&self, t_ns: f64) -> Option<&Segment> {
        self.segments.iter().rev().find(|s| s.start_ns() <= t_ns && t_ns < s.end_ns())
    }

    /// Whether the streams ran without a break over `[a, b]`.
    pub fn covers(&self, a_ns: f64, b_ns: f64) -> bool {
        let mut t = a_ns;
        while t < b_ns {
            match self.segment_covering(t) {
                Some(s) => t = s.end_ns(),
                None => return false,
            }
        }
        true
    }

    /// Exact energy over `[a, b]` (ns) of the current the double emitted, at `rail_v` volts, or at
    /// the regulator's voltage (source meter) when `rail_v` is `None`. `None` when not streaming
    /// over the whole interval.
    pub fn energy_j(&self, a_ns: f64, b_ns: f64, rail_v: Option<f64>) -> Option<f64> {
        if !self.covers(a_ns, b_ns) {
            return None;
        }
        let load = self.load.as_ref()?;
        let mut total = 0.0;
        for s in &self.segments {
            let (lo, hi) = (s.start_ns().max(a_ns), s.end_ns().min(b_ns));
            if hi > lo {
                let v = rail_v.unwrap_or(f64::from(s.vdd_mv) / 1000.0);
                total += v * load.integral(&s.levels_a, lo, hi);
            }
        }
        Some(total)
    }

    /// Dropped slots whose true time is in `[a, b)`.
    pub fn dropped_in(&self, a_ns: f64, b_ns: f64) -> Vec<DroppedSlot> {
        self.dropped.iter().filter(|d| d.t_ns >= a_ns && d.t_ns < b_ns).copied().collect()
    }

    /// For a recorded sample at host time `t_rec_ns` whose logic byte `logic` differs from the
    /// sample one slot before it: the true time of that sample, i.e. of the first slot at or after
    /// the logic edge nearest `t_rec_ns` where the time code became `logic`.
    pub fn logic_edge_sample_time(&self, t_rec_ns: f64, logic: u8) -> Option<f64> {
        let p = self.logic_period_ns;
        let approx = (t_rec_ns / p).round() as i64;
        let m = approx + (i64::from(logic) - approx.rem_euclid(256) + 384).rem_euclid(256) - 128;
        let edge = m as f64 * p;
        let s = self.segment_covering(edge)?;
        let k = ((edge - s.t0_ns as f64) / s.period_ns).ceil() as u64;
        Some(s.slot_time_ns(k))
    }
}

/// The double: a pty whose other side is a PPK2.
#[derive(Debug)]
pub struct Ppk2Double {
    path: PathBuf,
    truth: Arc<Mutex<Ppk2Truth>>,
    worker: Worker,
}

impl Ppk2Double {
    pub fn spawn(config: Ppk2Config) -> Self {
        let pty = PtyMaster::open().expect("opening a pty for the PPK2 double");
        let path = pty.path().to_path_buf();
        let truth = Arc::new(Mutex::new(Ppk2Truth {
            load: Some(config.load.clone()),
            logic_period_ns: config.logic_period_ms as f64 * 1e6,
            vdd_mv: config.initial_vdd_mv,
            ..Ppk2Truth::default()
        }));
        let shared = truth.clone();
        let worker = Worker::spawn("ppk2-double", move |stop| Device::new(config, pty, shared).serve(stop));
        Self { path, truth, worker }
    }

    pub fn port(&self) -> &Path {
        &self.path
    }

    pub fn truth(&self) -> Ppk2Truth {
        lock(&self.truth).clone()
    }

    /// Stops the device (the port hangs up) and returns the ground truth.
    pub fn shutdown(mut self) -> Ppk2Truth {
        self.worker.finish();
        lock(&self.truth).clone()
    }
}

struct Stream {
    no: u32,
    t0_ns: u64,
    period_ns: f64,
    next_k: u64,
    next_gap_rel_ns: f64,
    gap_left: u64,
}

struct Device {
    cfg: Ppk2Config,
    pty: PtyMaster,
    truth: Arc<Mutex<Ppk2Truth>>,
    rng: ChaCha8Rng,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    head: usize,
    vdd_mv: u32,
    streams: u32,
    stream: Option<Stream>,
    next_delivery_ns: u64,
}

impl Device {
    fn new(cfg: Ppk2Config, pty: PtyMaster, truth: Arc<Mutex<Ppk2Truth>>) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let vdd_mv = cfg.initial_vdd_mv;
        Self {
            cfg,
            pty,
            truth,
            rng,
            inbox: Vec::new(),
            outbox: Vec::new(),
            head: 0,
            vdd_mv,
            streams: 0,
            stream: None,
            next_delivery_ns: 0,
        }
    }

    fn pending(&self) -> usize {
        self.outbox.len() - self.head
    }

    fn serve(mut self, stop: &AtomicBool) {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::SeqCst) {
            let now = now_ns();
            let wait = match &self.stream {
                Some(_) => {
                    Duration::from_nanos(self.next_delivery_ns.saturating_sub(now)).min(Duration::from_millis(1))
                }
                None => Duration::from_millis(5),
            };
            let n = self.pty.read(&mut buf, wait);
            if n > 0 {
                let arrived = now_ns();
                self.inbox.extend_from_slice(&buf[..n]);
                self.commands(arrived);
            }
            let now = now_ns();
            if self.stream.is_some() {
                if now >= self.next_delivery_ns {
                    self.produce(now);
                    self.deliver();
                    let stall = self.rng.random_bool(self.cfg.stall_probability);
                    let (lo, hi) = if stall { self.cfg.stall_ms } else { self.cfg.chunk_interval_ms };
                    if stall {
                        lock(&self.truth).stalls += 1;
                    }
                    self.next_delivery_ns = now + (self.rng.random_range(lo..hi) * 1e6) as u64;
                }
            } else if self.pending() > 0 {
                // Not streaming (metadata, words still in flight after a stop): send it all.
                let n = self.pty.write_some(&self.outbox[self.head..]);
                self.head += n;
            }
            if self.head > (1 << 20) {
                self.outbox.drain(..self.head);
                self.head = 0;
            }
        }
    }

    fn commands(&mut self, arrived_ns: u64) {
        let mut at = 0;
        while at < self.inbox.len() {
            let opcode = self.inbox[at];
            let args = match opcode {
                op::REGULATOR_SET => 2,
                op::SET_POWER_MODE | op::DEVICE_RUNNING_SET => 1,
                op::SET_USER_GAINS => 5, // range, then a 4-byte float ([N] ppkSetUserGains)
                _ => 0,
            };
            if at + 1 + args > self.inbox.len() {
                break; // the rest of this command has not arrived yet
            }
            let a = self.inbox[at + 1..at + 1 + args].to_vec();
            at += 1 + args;
            let cmd = match opcode {
                op::GET_META_DATA => Ppk2Command::GetMetadata,
                op::AVERAGE_START => Ppk2Command::AverageStart,
                op::AVERAGE_STOP => Ppk2Command::AverageStop,
                op::REGULATOR_SET => Ppk2Command::RegulatorSet(u16::from(a[0]) << 8 | u16::from(a[1])),
                op::SET_POWER_MODE => Ppk2Command::SetPowerMode(a[0]),
                op::DEVICE_RUNNING_SET => Ppk2Command::DeviceRunning(a[0]),
                op::RESET => Ppk2Command::Reset,
                op::SET_USER_GAINS => Ppk2Command::SetUserGains,
                other => Ppk2Command::Unknown(other),
            };
            lock(&self.truth).commands.push((arrived_ns, cmd));
            self.apply(cmd, arrived_ns);
        }
        self.inbox.drain(..at);
    }

    fn apply(&mut self, cmd: Ppk2Command, arrived_ns: u64) {
        match cmd {
            Ppk2Command::GetMetadata => {
                let mode = lock(&self.truth).mode.unwrap_or(1);
                let text = self.cfg.calibration.metadata_text(self.vdd_mv, mode, &self.cfg.hw, "52");
                self.outbox.extend_from_slice(text.as_bytes());
            }
            Ppk2Command::AverageStart => {
                if self.stream.is_some() {
                    self.produce(arrived_ns);
                }
                self.streams += 1;
                let gap0 = self.cfg.gaps.map_or(f64::INFINITY, |g| g.first_after_ms * 1e6);
                self.stream = Some(Stream {
                    no: self.streams,
                    t0_ns: arrived_ns,
                    period_ns: NOMINAL_PERIOD_NS * (1.0 + self.cfg.clock_ppm * 1e-6),
                    next_k: 0,
                    next_gap_rel_ns: gap0,
                    gap_left: 0,
                });
                self.new_segment();
                self.next_delivery_ns = arrived_ns + (self.rng.random_range(1.0..4.0) * 1e6) as u64;
            }
            Ppk2Command::AverageStop => {
                if self.stream.is_some() {
                    self.produce(arrived_ns);
                }
                self.stream = None;
            }
            Ppk2Command::RegulatorSet(mv) => {
                if self.stream.is_some() {
                    self.produce(arrived_ns);
                }
                self.vdd_mv = u32::from(mv).clamp(800, 5000);
                lock(&self.truth).vdd_mv = self.vdd_mv;
                if self.stream.is_some() {
                    self.new_segment();
                }
            }
            Ppk2Command::SetPowerMode(m) => lock(&self.truth).mode = Some(m),
            Ppk2Command::DeviceRunning(on) => lock(&self.truth).running = on != 0,
            Ppk2Command::Reset => {
                self.stream = None;
                self.vdd_mv = self.cfg.initial_vdd_mv;
                let mut t = lock(&self.truth);
                t.vdd_mv = self.vdd_mv;
                t.mode = None;
                t.running = false;
            }
            Ppk2Command::SetUserGains | Ppk2Command::Unknown(_) => {}
        }
    }

    /// Starts a truth segment at the stream's next slot with the current regulator setting.
    fn new_segment(&mut self) {
        let s = self.stream.as_ref().expect("streaming");
        let range = usize::from(self.cfg.range);
        let vdd = f64::from(self.vdd_mv);
        let cal = &self.cfg.calibration;
        let raws: Vec<u16> = self.cfg.load.steps.iter().map(|&(_, amps)| cal.raw_for(range, amps, vdd)).collect();
        let levels_a = raws.iter().map(|&raw| cal.decode(range, raw, vdd)).collect();
        let seg = Segment {
            stream: s.no,
            t0_ns: s.t0_ns,
            period_ns: s.period_ns,
            k_start: s.next_k,
            k_end: s.next_k,
            vdd_mv: self.vdd_mv,
            raws,
            levels_a,
        };
        lock(&self.truth).segments.push(seg);
    }

    /// Takes every sample whose true time has come by `now`.
    fn produce(&mut self, now: u64) {
        let Some(s) = self.stream.as_mut() else { return };
        let raws = lock(&self.truth).segments.last().expect("a segment per stream").raws.clone();
        let max_backlog = (self.cfg.max_backlog.as_secs_f64() * 1e5) as usize * 4;
        let logic_period = self.cfg.logic_period_ms as f64 * 1e6;
        let range = u32::from(self.cfg.range);
        let mut dropped = Vec::new();
        loop {
            let rel = s.next_k as f64 * s.period_ns;
            let t = s.t0_ns as f64 + rel;
            if t > now as f64 {
                break;
            }
            let k = s.next_k;
            s.next_k += 1;
            if s.gap_left == 0 && rel >= s.next_gap_rel_ns {
                let g = self.cfg.gaps.expect("a gap plan");
                s.gap_left = g.words;
                s.next_gap_rel_ns += g.every_ms * 1e6;
            }
            if s.gap_left > 0 {
                s.gap_left -= 1;
                dropped.push(DroppedSlot { stream: s.no, k, t_ns: t, overflow: false });
                continue;
            }
            if self.outbox.len() - self.head > max_backlog {
                dropped.push(DroppedSlot { stream: s.no, k, t_ns: t, overflow: true });
                continue;
            }
            let step = self.cfg.load.step_at(t);
            let logic = ((t / logic_period).floor() as u64 % 256) as u32;
            let word = u32::from(raws[step] & ADC_MAX) | range << 14 | ((k % 64) as u32) << 18 | logic << 24;
            self.outbox.extend_from_slice(&word.to_le_bytes());
        }
        let mut truth = lock(&self.truth);
        truth.segments.last_mut().expect("segment").k_end = s.next_k;
        truth.dropped.extend(dropped);
    }

    /// Sends what is pending in whole 64-byte USB packets, sometimes in two writes cut inside a word.
    fn deliver(&mut self) {
        let n = self.pending() / 64 * 64;
        if n == 0 {
            return;
        }
        let mut written = 0;
        let split = n >= 128 && self.rng.random_bool(self.cfg.split_probability);
        if split {
            let cut = (4 * self.rng.random_range(1..n / 4 - 1) + self.rng.random_range(1..4)).min(n - 1);
            written += self.pty.write_some(&self.outbox[self.head..self.head + cut]);
            if written == cut {
                std::thread::sleep(Duration::from_micros(300));
                written += self.pty.write_some(&self.outbox[self.head + cut..self.head + n]);
            }
        } else {
            written += self.pty.write_some(&self.outbox[self.head..self.head + n]);
        }
        self.head += written;
        let mut t = lock(&self.truth);
        t.bytes_sent += written as u64;
        t.deliveries += 1;
        t.split_deliveries += u64::from(split);
        t.max_delivery_bytes = t.max_delivery_bytes.max(written);
    }
}
