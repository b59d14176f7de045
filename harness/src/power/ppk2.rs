//! Nordic Power Profiler Kit II (PPK2): the real USB CDC protocol.
//!
//! Sources of every constant below (cited as [N] and [I]):
//! - [N] Nordic's own app, `NordicSemiconductor/pc-nrfconnect-ppk`: `src/constants.ts` (command
//!   opcodes) and `src/device/serialDevice.ts` (bit masks, calibration formula, modifier defaults,
//!   metadata parsing, spike filter, counter handling, 10 us sampling, 115200 baud, 800..5000 mV).
//! - [I] the community driver `IRNAS/ppk2-api-python`, `src/ppk2_api/ppk2_api.py` (the same opcodes and
//!   defaults, the command order used to bring a PPK2 up, and the regulator byte encoding).
//!
//! Protocol in one paragraph: the host writes single-byte commands, some followed by argument bytes.
//! Nothing is acknowledged. `GET_META_DATA` makes the device print `Key: value` lines ending in `END`
//! (calibration per measurement range). `AVERAGE_START` starts a stream of little-endian `u32` words at
//! 100 kS/s, with no framing: USB delivers them in arbitrary chunks, so a word can be split across two
//! reads. Each word packs the 14-bit ADC value, the range the device auto-selected, a 6-bit counter that
//! increments per word (so the host can count words lost on the way) and the 8 logic inputs.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    host_monotonic_ns, LostRun, MonitorError, MonitorErrorKind, MonitorInfo, NamedPort, PowerMonitor, ReadOutcome,
    Sample, SampleClock, SourceMeter,
};
use crate::board::ReadLimit;
use crate::clock_fit::{ClockFit, ClockLine};

/// Command opcodes ([N] `src/constants.ts`, [I] `PPK2_Command`).
pub mod opcode {
    /// Start the 100 kS/s stream.
    pub const AVERAGE_START: u8 = 0x06;
    /// Stop the stream.
    pub const AVERAGE_STOP: u8 = 0x07;
    /// Switch the board's supply (source meter) / pass-through (ampere meter): `0x0C, 1|0`.
    pub const DEVICE_RUNNING_SET: u8 = 0x0C;
    /// Regulator output in millivolts, big-endian: `0x0D, mV >> 8, mV & 0xFF`.
    pub const REGULATOR_SET: u8 = 0x0D;
    /// `0x11, 1` = ampere meter, `0x11, 2` = source meter ([N] `ppkSetPowerMode(isSmuMode ? 2 : 1)`).
    pub const SET_POWER_MODE: u8 = 0x11;
    /// Print the metadata block.
    pub const GET_META_DATA: u8 = 0x19;
    /// Hard reset of the PPK2's MCU; the USB device re-enumerates, so the port must be reopened.
    pub const RESET: u8 = 0x20;
}

/// Regulator limits in millivolts ([N] `vddRange = { min: 800, max: 5000 }`, [I] `vdd_low`/`vdd_high`).
pub const VDD_MIN_MV: u32 = 800;
pub const VDD_MAX_MV: u32 = 5000;
/// The PPK2 samples every 10 us ([N] `adcSamplingTimeUs = 10`): 100 kS/s, fixed in the firmware.
pub const SAMPLE_PERIOD_NS: u64 = 10_000;
pub const SAMPLE_RATE_HZ: f64 = 100_000.0;
/// The app opens the CDC port at 115200 baud ([N]); USB CDC ignores the value.
pub const BAUD: u32 = 115_200;
/// Volts per ADC count after the `raw * 4` scaling ([N] `adcMult = 1.8 / 163840`).
pub const ADC_MULT: f64 = 1.8 / 163_840.0;
/// The counter in bits 18..23 wraps at 64 ([N] `MAX_PAYLOAD_COUNTER = 0b111111`).
pub const COUNTER_MODULUS: u8 = 64;
/// Number of measurement ranges (shunt resistors R0..R4).
pub const RANGES: usize = 5;

/// Power mode byte sent with [`opcode::SET_POWER_MODE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerMode {
    /// The PPK2 sits in series with an external supply and only measures.
    Ampere = 1,
    /// The PPK2 powers the board from its regulator and measures.
    Source = 2,
}

/// A host-to-device command, encoded exactly as the firmware expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    GetMetadata,
    AverageStart,
    AverageStop,
    /// Millivolts, 800..=5000.
    RegulatorSet(u16),
    SetPowerMode(PowerMode),
    DeviceRunning(bool),
    Reset,
    /// An opcode this code does not know (the emulator skips it).
    Unknown(u8),
}

impl Command {
    /// The bytes on the wire.
    pub fn encode(self) -> Vec<u8> {
        match self {
            Command::GetMetadata => vec![opcode::GET_META_DATA],
            Command::AverageStart => vec![opcode::AVERAGE_START],
            Command::AverageStop => vec![opcode::AVERAGE_STOP],
            // [I] writes (3 + (mV-800+32)/256, (mV-800+32)%256), which is the same as mV big-endian.
            Command::RegulatorSet(mv) => vec![opcode::REGULATOR_SET, (mv >> 8) as u8, (mv & 0xFF) as u8],
            Command::SetPowerMode(mode) => vec![opcode::SET_POWER_MODE, mode as u8],
            Command::DeviceRunning(on) => vec![opcode::DEVICE_RUNNING_SET, u8::from(on)],
            Command::Reset => vec![opcode::RESET],
            Command::Unknown(op) => vec![op],
        }
    }

    /// Decodes as many whole commands as `bytes` holds; returns them and the bytes consumed (a command
    /// whose argument bytes have not all arrived yet is left for the next call). Used by the emulator.
    pub fn decode_all(bytes: &[u8]) -> (Vec<Command>, usize) {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let op = bytes[at];
            let args = match op {
                opcode::REGULATOR_SET => 2,
                opcode::SET_POWER_MODE | opcode::DEVICE_RUNNING_SET => 1,
                _ => 0,
            };
            if at + 1 + args > bytes.len() {
                break;
            }
            let a = &bytes[at + 1..at + 1 + args];
            out.push(match op {
                opcode::GET_META_DATA => Command::GetMetadata,
                opcode::AVERAGE_START => Command::AverageStart,
                opcode::AVERAGE_STOP => Command::AverageStop,
                opcode::REGULATOR_SET => Command::RegulatorSet(u16::from(a[0]) << 8 | u16::from(a[1])),
                opcode::SET_POWER_MODE if a[0] == 2 => Command::SetPowerMode(PowerMode::Source),
                opcode::SET_POWER_MODE => Command::SetPowerMode(PowerMode::Ampere),
                opcode::DEVICE_RUNNING_SET => Command::DeviceRunning(a[0] != 0),
                opcode::RESET => Command::Reset,
                other => Command::Unknown(other),
            });
            at += 1 + args;
        }
        (out, at)
    }
}

// ---------------------------------------------------------------------------------------------------
// Stream words
// ---------------------------------------------------------------------------------------------------

/// One stream word split into its fields ([N] `MEAS_ADC = generateMask(14, 0)`,
/// `MEAS_RANGE = generateMask(3, 14)`, `MEAS_COUNTER = generateMask(6, 18)`,
/// `MEAS_LOGIC = generateMask(8, 24)`).
///
/// Bit 17 is covered by no mask in Nordic's app nor in [I]; it is not part of the range (ranges are
/// 0..4 and fit bits 14..16) and is ignored here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamWord {
    /// Bits 0..13: ADC reading (multiply by 4 before calibration).
    pub adc: u16,
    /// Bits 14..16: measurement range 0..4 (5..7 never occur in a well-framed stream).
    pub range: u8,
    /// Bits 18..23: increments by one per word, modulo 64.
    pub counter: u8,
    /// Bits 24..31: digital inputs D0..D7.
    pub logic: u8,
}

impl StreamWord {
    pub fn from_u32(word: u32) -> Self {
        Self {
            adc: (word & 0x3FFF) as u16,
            range: ((word >> 14) & 0x7) as u8,
            counter: ((word >> 18) & 0x3F) as u8,
            logic: (word >> 24) as u8,
        }
    }

    pub fn to_u32(self) -> u32 {
        u32::from(self.adc & 0x3FFF)
            | u32::from(self.range & 0x7) << 14
            | u32::from(self.counter & 0x3F) << 18
            | u32::from(self.logic) << 24
    }
}

// ---------------------------------------------------------------------------------------------------
// Calibration
// ---------------------------------------------------------------------------------------------------

/// Per-range calibration ("modifiers" in [N]): shunt resistance `r`, gains `gs`/`gi`, offset `o`,
/// supply-dependent `s`, constant `i`, user gain `ug`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Modifiers {
    pub r: [f64; RANGES],
    pub gs: [f64; RANGES],
    pub gi: [f64; RANGES],
    pub o: [f64; RANGES],
    pub s: [f64; RANGES],
    pub i: [f64; RANGES],
    pub ug: [f64; RANGES],
}

impl Default for Modifiers {
    /// Defaults when the device does not report a value ([N] `modifiers`, [I] `self.modifiers`).
    fn default() -> Self {
        Self {
            r: [1031.64, 101.65, 10.15, 0.94, 0.043],
            gs: [1.0; RANGES],
            gi: [1.0; RANGES],
            o: [0.0; RANGES],
            s: [0.0; RANGES],
            i: [0.0; RANGES],
            ug: [1.0; RANGES],
        }
    }
}

/// Largest raw ADC value (14 bits).
pub const ADC_RAW_MAX: u16 = 0x3FFF;

impl Modifiers {
    /// Current in amperes for a raw 14-bit ADC reading in `range`, with the regulator at `vdd_mv`
    /// ([N] `getAdcResult`): `adc = raw * 4; x = (adc - O) * ADC_MULT / R;
    /// I = UG * (x * (GS * x + GI) + S * vdd/1000 + I)`.
    pub fn current_a(&self, range: usize, adc_raw: u16, vdd_mv: f64) -> f64 {
        let adc = f64::from(adc_raw) * 4.0;
        let x = (adc - self.o[range]) * (ADC_MULT / self.r[range]);
        self.ug[range]
            * (x * (self.gs[range] * x + self.gi[range]) + (self.s[range] * (vdd_mv / 1000.0) + self.i[range]))
    }

    /// The inverse of [`Modifiers::current_a`]: the raw ADC reading that decodes closest to
    /// `current_a` in `range`, or `None` when it does not fit in 14 bits (the range would saturate).
    /// Used by the emulator to encode a power model's current the way the device would.
    pub fn raw_for_current(&self, range: usize, current_a: f64, vdd_mv: f64) -> Option<u16> {
        let (gs, gi) = (self.gs[range], self.gi[range]);
        // Solve gs*x^2 + gi*x + c = 0 for x.
        let c = self.s[range] * (vdd_mv / 1000.0) + self.i[range] - current_a / self.ug[range];
        let linear = -c / gi;
        let x = if gs.abs() * linear.abs() < 1e-12 * gi.abs() {
            linear
        } else {
            let disc = gi * gi - 4.0 * gs * c;
            if disc < 0.0 {
                return None;
            }
            // Of the two roots, the one that tends to the linear solution as gs -> 0.
            let root = (-gi + disc.sqrt()) / (2.0 * gs);
            let other = (-gi - disc.sqrt()) / (2.0 * gs);
            if (root - linear).abs() <= (other - linear).abs() {
                root
            } else {
                other
            }
        };
        let adc = x * self.r[range] / ADC_MULT + self.o[range];
        let raw = (adc / 4.0).round();
        if !(0.0..=f64::from(ADC_RAW_MAX)).contains(&raw) {
            return None;
        }
        let raw = raw as u16;
        // Rounding may land one count off the best decode when gs is large; pick the closest neighbour.
        let best = [raw.saturating_sub(1), raw, (raw + 1).min(ADC_RAW_MAX)]
            .into_iter()
            .min_by(|&a, &b| {
                let ea = (self.current_a(range, a, vdd_mv) - current_a).abs();
                let eb = (self.current_a(range, b, vdd_mv) - current_a).abs();
                ea.total_cmp(&eb)
            })
            .unwrap_or(raw);
        Some(best)
    }

    /// The range a PPK2 would measure `current_a` in, and the raw reading there.
    ///
    /// The firmware's switch points are not published; the device auto-ranges to keep the ADC out of
    /// saturation with the best resolution, so this picks the most sensitive range (highest shunt
    /// resistance) whose reading stays under 90 % of full scale, falling back to range 4.
    pub fn auto_range(&self, current_a: f64, vdd_mv: f64) -> (u8, u16) {
        let headroom = (f64::from(ADC_RAW_MAX) * 0.9) as u16;
        for range in 0..RANGES {
            if let Some(raw) = self.raw_for_current(range, current_a, vdd_mv) {
                if raw <= headroom {
                    return (range as u8, raw);
                }
            }
        }
        // Below what range 0 can show (a negative current): range 0 at zero; above everything: clip.
        if current_a <= self.current_a(0, 0, vdd_mv) {
            return (0, 0);
        }
        let top = RANGES - 1;
        (top as u8, self.raw_for_current(top, current_a, vdd_mv).unwrap_or(ADC_RAW_MAX))
    }

    /// `name -> value` pairs (R0..R4, GS0.., GI0.., O0.., S0.., I0.., UG0..) for reports.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(7 * RANGES);
        for (name, values) in [
            ("R", &self.r),
            ("GS", &self.gs),
            ("GI", &self.gi),
            ("O", &self.o),
            ("S", &self.s),
            ("I", &self.i),
            ("UG", &self.ug),
        ] {
            for (k, v) in values.iter().enumerate() {
                out.push((format!("{name}{k}"), format!("{v}")));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------------

/// The metadata block a PPK2 prints for `GET_META_DATA`, e.g.
/// `Calibrated: 0`, `R0: 1003.3506`, ..., `VDD: 3000`, `HW: 9173`, `mode: 2`, ..., `IA: 56`, `END`.
#[derive(Clone, Debug, PartialEq)]
pub struct Ppk2Metadata {
    /// Calibration in effect after defaults were applied.
    pub modifiers: Modifiers,
    pub calibrated: Option<bool>,
    /// Regulator setting in millivolts when the block was printed.
    pub vdd_mv: Option<u32>,
    pub hw: Option<String>,
    /// 1 = ampere meter, 2 = source meter.
    pub mode: Option<u8>,
    pub ia: Option<String>,
    /// Keys this code does not interpret, as printed (the emulator adds `SIMULATED: 1` here).
    pub extra: Vec<(String, String)>,
    /// Modifiers that took their default, with why: `R2 missing`, `GS0 = -nan`, `GS0 = 0`.
    pub defaulted: Vec<String>,
}

impl Ppk2Metadata {
    /// `true` when the block carries the emulator's `SIMULATED` marker (a real PPK2 never prints it).
    pub fn is_simulated(&self) -> bool {
        self.extra.iter().any(|(k, v)| k.eq_ignore_ascii_case("simulated") && v.trim() != "0")
    }
}

/// Parses a metadata block (text up to and including `END`; anything after `END` is ignored, and so is
/// anything before the first `Key: value` line, e.g. stream bytes still in flight).
///
/// Keys are case-insensitive ([N] lower-cases the whole block). A modifier that is missing, `-nan`
/// (printed for unprogrammed calibration), or zero takes its default: [N] applies
/// `meta[key] || default`, which falls back on `null` and on `0` alike, and a zero shunt resistance or
/// gain would make every current zero or infinite. A value that is present but not a number is an error
/// naming the key and the value.
pub fn parse_metadata(text: &str) -> Result<Ppk2Metadata, String> {
    let body = match text.find("END") {
        Some(end) => &text[..end],
        None => return Err("metadata block has no END line".to_string()),
    };
    let defaults = Modifiers::default();
    let mut modifiers = defaults;
    let mut seen = [[false; RANGES]; 7];
    let mut meta = Ppk2Metadata {
        modifiers: defaults,
        calibrated: None,
        vdd_mv: None,
        hw: None,
        mode: None,
        ia: None,
        extra: Vec::new(),
        defaulted: Vec::new(),
    };
    for line in body.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let key = key.trim();
        let value = value.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // stream garbage before the block
        }
        let lower = key.to_ascii_lowercase();
        let is_nan = value.eq_ignore_ascii_case("-nan") || value.eq_ignore_ascii_case("nan");
        if let Some((slot, range)) = modifier_slot(&lower) {
            seen[slot][range] = true;
            let default = modifier_array(&defaults, slot)[range];
            let parsed = if is_nan {
                meta.defaulted.push(format!("{} = {value}", key.to_ascii_uppercase()));
                default
            } else {
                let v: f64 =
                    value.parse().map_err(|_| format!("metadata key {key}: value {value:?} is not a number"))?;
                if v == 0.0 && default != 0.0 {
                    meta.defaulted.push(format!("{} = 0", key.to_ascii_uppercase()));
                    default
                } else if !v.is_finite() {
                    meta.defaulted.push(format!("{} = {value}", key.to_ascii_uppercase()));
                    default
                } else {
                    v
                }
            };
            modifier_array_mut(&mut modifiers, slot)[range] = parsed;
            continue;
        }
        match lower.as_str() {
            "calibrated" if !is_nan => meta.calibrated = Some(value != "0"),
            "vdd" if !is_nan => {
                let v: f64 = value.parse().map_err(|_| format!("metadata key VDD: value {value:?} is not a number"))?;
                meta.vdd_mv = Some(v.round() as u32);
            }
            "hw" => meta.hw = Some(value.to_string()),
            "ia" => meta.ia = Some(value.to_string()),
            "mode" if !is_nan => meta.mode = value.parse().ok(),
            "calibrated" | "vdd" | "mode" => {}
            _ => meta.extra.push((key.to_string(), value.to_string())),
        }
    }
    for (slot, name) in MODIFIER_NAMES.iter().enumerate() {
        for range in 0..RANGES {
            if !seen[slot][range] {
                meta.defaulted.push(format!("{name}{range} missing"));
            }
        }
    }
    meta.modifiers = modifiers;
    Ok(meta)
}

const MODIFIER_NAMES: [&str; 7] = ["R", "GS", "GI", "O", "S", "I", "UG"];

fn modifier_slot(lower_key: &str) -> Option<(usize, usize)> {
    let digit_at = lower_key.len().checked_sub(1)?;
    let (name, digit) = lower_key.split_at(digit_at);
    let range: usize = digit.parse().ok()?;
    if range >= RANGES {
        return None;
    }
    let slot = MODIFIER_NAMES.iter().position(|n| n.eq_ignore_ascii_case(name))?;
    Some((slot, range))
}

fn modifier_array(m: &Modifiers, slot: usize) -> &[f64; RANGES] {
    [&m.r, &m.gs, &m.gi, &m.o, &m.s, &m.i, &m.ug][slot]
}

fn modifier_array_mut(m: &mut Modifiers, slot: usize) -> &mut [f64; RANGES] {
    match slot {
        0 => &mut m.r,
        1 => &mut m.gs,
        2 => &mut m.gi,
        3 => &mut m.o,
        4 => &mut m.s,
        5 => &mut m.i,
        _ => &mut m.ug,
    }
}

/// Writes a metadata block in the device's format (the emulator's answer to `GET_META_DATA`).
pub fn format_metadata(
    m: &Modifiers,
    calibrated: bool,
    vdd_mv: u32,
    hw: &str,
    mode: PowerMode,
    ia: &str,
    extra: &[(&str, &str)],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "Calibrated: {}", u8::from(calibrated));
    let list = |s: &mut String, name: &str, v: &[f64; RANGES], digits: usize| {
        for (k, x) in v.iter().enumerate() {
            let _ = writeln!(s, "{name}{k}: {x:.digits$}");
        }
    };
    list(&mut s, "R", &m.r, 4);
    list(&mut s, "GS", &m.gs, 4);
    list(&mut s, "GI", &m.gi, 4);
    list(&mut s, "O", &m.o, 4);
    let _ = writeln!(s, "VDD: {vdd_mv}");
    let _ = writeln!(s, "HW: {hw}");
    let _ = writeln!(s, "mode: {}", mode as u8);
    list(&mut s, "S", &m.s, 9);
    list(&mut s, "I", &m.i, 9);
    list(&mut s, "UG", &m.ug, 2);
    let _ = writeln!(s, "IA: {ia}");
    for (k, v) in extra {
        let _ = writeln!(s, "{k}: {v}");
    }
    s.push_str("END\n");
    s
}

// ---------------------------------------------------------------------------------------------------
// Spike filter
// ---------------------------------------------------------------------------------------------------

/// Nordic's rolling-average spike filter ([N] `getAdcResult`, constants from the `spikeFilter` object:
/// `alpha: 0.18, alpha5: 0.06, samples: 3`).
///
/// When the device switches range, the first readings in the new range carry a switching transient.
/// Two exponential averages run on every sample (alpha 0.18, and alpha5 0.06 for the least sensitive
/// range 4); for the 3 samples after a range change the averaged value is reported instead of the raw
/// one, and in range 4 the first two samples after the change do not even update the averages.
/// The state is reset at every `AVERAGE_START` ([N] `sendCommand`).
#[derive(Clone, Debug, Default)]
pub struct SpikeFilter {
    rolling_avg: Option<f64>,
    rolling_avg4: Option<f64>,
    prev_range: Option<u8>,
    after_spike: i32,
    consecutive_range_samples: u32,
}

impl SpikeFilter {
    pub const ALPHA: f64 = 0.18;
    pub const ALPHA5: f64 = 0.06;
    pub const SAMPLES: i32 = 3;

    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Filters one calibrated current `value` measured in `range`.
    pub fn apply(&mut self, range: u8, value: f64) -> f64 {
        let prev_avg = self.rolling_avg;
        let prev_avg4 = self.rolling_avg4;
        let avg = match self.rolling_avg {
            None => value,
            Some(a) => Self::ALPHA * value + (1.0 - Self::ALPHA) * a,
        };
        let avg4 = match self.rolling_avg4 {
            None => value,
            Some(a) => Self::ALPHA5 * value + (1.0 - Self::ALPHA5) * a,
        };
        self.rolling_avg = Some(avg);
        self.rolling_avg4 = Some(avg4);
        let prev_range = *self.prev_range.get_or_insert(range);
        let mut out = value;
        if prev_range != range || self.after_spike > 0 {
            if prev_range != range {
                self.consecutive_range_samples = 0;
                self.after_spike = Self::SAMPLES;
            } else {
                self.consecutive_range_samples += 1;
            }
            if range == 4 {
                if self.consecutive_range_samples < 2 {
                    self.rolling_avg = prev_avg;
                    self.rolling_avg4 = prev_avg4;
                }
                out = self.rolling_avg4.unwrap_or(value);
            } else {
                out = self.rolling_avg.unwrap_or(value);
            }
            self.after_spike -= 1;
        }
        self.prev_range = Some(range);
        out
    }
}

// ---------------------------------------------------------------------------------------------------
// Stream decoder
// ---------------------------------------------------------------------------------------------------

/// One decoded stream word.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodedSample {
    /// Position in the stream since `AVERAGE_START`, counting lost words: time = index x 10 us.
    pub index: u64,
    pub current_a: f64,
    pub range: u8,
    pub logic: u8,
}

/// Turns stream bytes into calibrated, filtered samples, keeping the sample index on the device's clock.
///
/// Lost words are detected from the 6-bit counter: when a word's counter is not the expected one, the
/// difference modulo 64 is the number of words that never arrived; the index skips them so later samples
/// keep their true time. A loss of an exact multiple of 64 words is invisible to any counter-based
/// decoder. Words with an impossible range (5..7) are dropped and counted as lost too (their time slot is
/// kept).
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    modifiers: Modifiers,
    vdd_mv: f64,
    filter: SpikeFilter,
    pending: [u8; 4],
    pending_len: usize,
    expected_counter: Option<u8>,
    next_index: u64,
    lost: u64,
    invalid_words: u64,
}

impl StreamDecoder {
    pub fn new(modifiers: Modifiers, vdd_mv: f64) -> Self {
        Self {
            modifiers,
            vdd_mv,
            filter: SpikeFilter::default(),
            pending: [0; 4],
            pending_len: 0,
            expected_counter: None,
            next_index: 0,
            lost: 0,
            invalid_words: 0,
        }
    }

    /// Forgets everything about the previous stream (call at `AVERAGE_START`).
    pub fn reset(&mut self) {
        *self = Self::new(self.modifiers, self.vdd_mv);
    }

    pub fn set_vdd_mv(&mut self, vdd_mv: f64) {
        self.vdd_mv = vdd_mv;
    }

    /// Words lost since the last reset (counter gaps plus invalid words).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Words with an impossible range field since the last reset (included in [`StreamDecoder::lost`]).
    pub fn invalid_words(&self) -> u64 {
        self.invalid_words
    }

    /// Index the next decoded word will get if none is lost.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Records `whole_cycles x 64` words lost that the counter could not show (found by the driver from
    /// the host clock, see [`Ppk2`]); the counter's expectation is unchanged by whole cycles.
    pub fn skip_cycles(&mut self, whole_cycles: u64) {
        let words = whole_cycles * u64::from(COUNTER_MODULUS);
        self.next_index += words;
        self.lost += words;
    }

    /// Feeds bytes as they came off the port (any length, words may straddle calls); calls `emit` per
    /// sample. Returns the number of words lost in this chunk.
    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(DecodedSample)) -> u64 {
        let lost_before = self.lost;
        if self.pending_len > 0 {
            let take = (4 - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < 4 {
                return 0;
            }
            let word = u32::from_le_bytes(self.pending);
            self.pending_len = 0;
            self.word(word, &mut emit);
        }
        let mut chunks = bytes.chunks_exact(4);
        for chunk in &mut chunks {
            self.word(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]), &mut emit);
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
        self.lost - lost_before
    }

    fn word(&mut self, raw: u32, emit: &mut impl FnMut(DecodedSample)) {
        let w = StreamWord::from_u32(raw);
        if let Some(expected) = self.expected_counter {
            let gap = (w.counter + COUNTER_MODULUS - expected) % COUNTER_MODULUS;
            self.lost += u64::from(gap);
            self.next_index += u64::from(gap);
        }
        self.expected_counter = Some((w.counter + 1) % COUNTER_MODULUS);
        let index = self.next_index;
        self.next_index += 1;
        if usize::from(w.range) >= RANGES {
            self.invalid_words += 1;
            self.lost += 1;
            return;
        }
        let value = self.modifiers.current_a(usize::from(w.range), w.adc, self.vdd_mv);
        let current_a = self.filter.apply(w.range, value);
        emit(DecodedSample { index, current_a, range: w.range, logic: w.logic });
    }
}

// ---------------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------------

/// How the PPK2 is wired.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ppk2Mode {
    /// In series with the board's own supply; `voltage_v` is that supply's voltage when known (samples
    /// carry it; without it they carry `NaN` and energy cannot be computed).
    Ampere { voltage_v: Option<f64> },
    /// The PPK2 powers the board at `supply_mv` (800..=5000).
    Source { supply_mv: u32 },
}

/// The longest metadata block [`Ppk2::fetch_metadata`] reads before giving up on `END`.
pub const PPK2_METADATA_LIMIT: ReadLimit = ReadLimit::new(
    "PPK2_METADATA_LIMIT",
    64 << 10,
    "a PPK2's metadata block is about 400 bytes (some 20 `Key: value` lines); room is left for stream \
     words still in flight after the stop",
);

/// Options for [`Ppk2`].
#[derive(Clone, Debug, PartialEq)]
pub struct Ppk2Options {
    /// Default: ampere meter with unknown voltage, the mode that never drives a voltage into a board.
    pub mode: Ppk2Mode,
    /// Switch the board's supply / pass-through on when connecting (`DEVICE_RUNNING_SET 1`).
    pub power_on_board: bool,
    /// How long to wait for the metadata block.
    pub metadata_timeout: Duration,
    /// Read timeout of the serial port; bounds how long one empty read blocks.
    pub read_timeout: Duration,
}

impl Default for Ppk2Options {
    fn default() -> Self {
        Self {
            mode: Ppk2Mode::Ampere { voltage_v: None },
            power_on_board: true,
            metadata_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_millis(20),
        }
    }
}

/// A PPK2 on any byte stream.
///
/// Time: the stream's sample index is the PPK2's own clock (nominally 10 us a sample, really off by
/// the crystal's tens to hundreds of ppm). Every read feeds the index of its newest word and the host
/// time it arrived to a [`ClockFit`], and samples are placed on the fitted line: host time =
/// `a + b x index`, with `b` the device's true sample period as seen by the host. Each sample keeps its
/// index ([`Sample::clock`]) so a capture can be placed again with the fit as it stands after a window.
///
/// Loss: a counter gap is a [`LostRun`] at the slots it skipped. One limit of the counter is that a long
/// loss (the host stopped reading and the device's USB buffer overflowed) is only seen modulo 64. So at
/// *fresh* reads (reads that had to wait for data, so their last word was produced just now) the driver
/// also checks how far the arrival lies above the fitted line: after a visible counter gap, more than
/// [`LOSS_STEP_NS`] above it is the rest of the loss, added in whole counter cycles. A loss of an exact
/// multiple of 64 words with no visible gap at all stays invisible (1 overflow in 64).
#[derive(Debug)]
pub struct Ppk2<P> {
    port: NamedPort<P>,
    options: Ppk2Options,
    metadata: Option<Ppk2Metadata>,
    /// USB serial number when found through sysfs.
    usb_serial: Option<String>,
    vdd_mv: u32,
    decoder: StreamDecoder,
    streaming: bool,
    /// Host time just before `AVERAGE_START` went out: the stream cannot have started earlier.
    origin_ns: u64,
    lost_reported: u64,
    buf: Vec<u8>,
    /// The index clock fitted to the host clock.
    fit: ClockFit,
    /// The decoder's loss count at the last fresh read.
    lost_at_fresh: u64,
    /// Index of the first word after the newest counter gap.
    last_gap_end: Option<u64>,
    /// A loss longer than the counter shows, suspected but not yet certain, and where it starts.
    suspect: Option<SuspectedLoss>,
    /// Runs of lost slots not yet taken by [`PowerMonitor::take_lost_runs`].
    lost_runs: Vec<LostRun>,
    /// The latest time handed out: read-time placement never goes backwards (a better fit can move
    /// the line down a little; [`crate::samples::place_samples`] places a whole capture consistently).
    last_placed_ns: u64,
}

/// An arrival this far above the fitted index clock (with a counter gap) means more words were lost than
/// the counter shows. Well above USB/OS delivery jitter (a few ms), well below the smallest loss that
/// matters for a cell.
pub const LOSS_STEP_NS: f64 = 30e6;
/// How long every arrival must stay [`LOSS_STEP_NS`] above the fitted clock before a loss is certain:
/// longer than a USB stall that loses nothing (tens of ms: a PPK2 streams 400 kB/s into a small
/// buffer, so a stall much longer than that overflows it and loses words anyway).
pub const LOSS_CONFIRM_NS: f64 = 150e6;

/// See [`Ppk2::unseen_loss`].
#[derive(Clone, Copy, Debug)]
struct SuspectedLoss {
    since_ns: f64,
    min_above: f64,
    /// Index of the first word after the gap the loss belongs to.
    from: Option<u64>,
}
/// A read that blocked at least this long found the port empty: the data it returns is fresh.
const FRESH_READ_WAIT: Duration = Duration::from_micros(200);

impl Ppk2<serialport::TTYPort> {
    /// Opens the PPK2 on `path` and brings it up (metadata, power mode, regulator, board power).
    pub fn open(path: &str, options: &Ppk2Options) -> Result<Self, MonitorError> {
        let port = super::open_serial(path, BAUD, options.read_timeout)?;
        let mut ppk2 = Ppk2::new(port, path, options.clone());
        ppk2.connect()?;
        Ok(ppk2)
    }

    /// Finds a PPK2 by USB ID under `sys_root` (normally `/sys`) and opens the first port that answers
    /// with a metadata block (a PPK2 has two CDC ports; see [`super::detect`]).
    pub fn open_auto(sys_root: &Path, options: &Ppk2Options) -> Result<Self, MonitorError> {
        let candidates = super::detect::find_ppk2_ports(sys_root);
        if candidates.is_empty() {
            return Err(MonitorError::new(
                MonitorErrorKind::Disconnected,
                "auto",
                "finding a PPK2",
                format!(
                    "no USB serial device {:04x}:{:04x} under {}/class/tty",
                    super::detect::PPK2_VID,
                    super::detect::PPK2_PID,
                    sys_root.display()
                ),
            ));
        }
        let mut errors = Vec::new();
        for c in &candidates {
            let path = c.dev_path.to_string_lossy().into_owned();
            match Ppk2::open(&path, options) {
                Ok(mut p) => {
                    p.usb_serial = c.serial.clone();
                    return Ok(p);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(MonitorError::new(
            MonitorErrorKind::Timeout,
            "auto",
            "opening a detected PPK2",
            format!("no candidate answered: {}", errors.join("; ")),
        ))
    }
}

impl<P: Read + Write + Send> Ppk2<P> {
    /// Wraps a byte stream; call [`Ppk2::connect`] before measuring.
    pub fn new(port: P, name: impl Into<String>, options: Ppk2Options) -> Self {
        let vdd_mv = match options.mode {
            Ppk2Mode::Source { supply_mv } => supply_mv,
            Ppk2Mode::Ampere { voltage_v: Some(v) } => ((v * 1000.0).round() as u32).clamp(VDD_MIN_MV, VDD_MAX_MV),
            Ppk2Mode::Ampere { voltage_v: None } => 0,
        };
        Self {
            port: NamedPort::new(port, name),
            options,
            metadata: None,
            usb_serial: None,
            vdd_mv,
            decoder: StreamDecoder::new(Modifiers::default(), f64::from(vdd_mv)),
            streaming: false,
            origin_ns: 0,
            lost_reported: 0,
            buf: vec![0; 64 * 1024],
            fit: ClockFit::new(Some(SAMPLE_PERIOD_NS as f64)),
            lost_at_fresh: 0,
            last_gap_end: None,
            suspect: None,
            lost_runs: Vec::new(),
            last_placed_ns: 0,
        }
    }

    /// Brings the device up in the order [I] uses: stop any stream left running by a previous host,
    /// drain, read the metadata, set the power mode, the regulator, then board power.
    pub fn connect(&mut self) -> Result<(), MonitorError> {
        if let Ppk2Mode::Source { supply_mv } = self.options.mode {
            check_vdd(&self.port.name, supply_mv)?;
        }
        self.send(Command::AverageStop, "stopping a stream left running (AVERAGE_STOP 0x07)")?;
        self.drain(Duration::from_millis(50))?;
        let meta = self.fetch_metadata()?;
        if self.vdd_mv == 0 {
            // Ampere meter with no voltage given: the S*vdd calibration term uses the device's setting.
            self.vdd_mv = meta.vdd_mv.unwrap_or(3000).clamp(VDD_MIN_MV, VDD_MAX_MV);
        }
        self.decoder = StreamDecoder::new(meta.modifiers, f64::from(self.vdd_mv));
        self.metadata = Some(meta);
        let mode = match self.options.mode {
            Ppk2Mode::Ampere { .. } => PowerMode::Ampere,
            Ppk2Mode::Source { .. } => PowerMode::Source,
        };
        self.send(Command::SetPowerMode(mode), "setting the power mode (SET_POWER_MODE 0x11)")?;
        self.send(Command::RegulatorSet(self.vdd_mv as u16), "setting the regulator (REGULATOR_SET 0x0D)")?;
        if self.options.power_on_board {
            self.send(Command::DeviceRunning(true), "switching board power on (DEVICE_RUNNING_SET 0x0C)")?;
        }
        Ok(())
    }

    /// Sends `GET_META_DATA` and reads until `END`, at most [`PPK2_METADATA_LIMIT`].
    pub fn fetch_metadata(&mut self) -> Result<Ppk2Metadata, MonitorError> {
        const WHAT: &str = "reading metadata (GET_META_DATA 0x19)";
        self.send(Command::GetMetadata, WHAT)?;
        let deadline = Instant::now() + self.options.metadata_timeout;
        let mut text: Vec<u8> = Vec::new();
        loop {
            let n = self.port.read_some(&mut self.buf, WHAT)?;
            // Only the new bytes (and the two before them, for an `END` split across reads) can hold
            // the end: searching everything again on every read would be quadratic.
            let from = text.len().saturating_sub(2);
            text.extend_from_slice(&self.buf[..n]);
            if let Some(end) = find(&text[from..], b"END").map(|i| from + i) {
                let block = String::from_utf8_lossy(&text[..end + 3]);
                return parse_metadata(&block)
                    .map_err(|e| MonitorError::new(MonitorErrorKind::Protocol, &self.port.name, WHAT, e));
            }
            if text.len() > PPK2_METADATA_LIMIT.bytes {
                let shown = String::from_utf8_lossy(&text[..80]).into_owned();
                return Err(MonitorError::new(
                    MonitorErrorKind::Protocol,
                    &self.port.name,
                    WHAT,
                    format!(
                        "{}: not a PPK2, or not its command port (starting {shown:?})",
                        PPK2_METADATA_LIMIT.exceeded(format!("the reply ({} bytes, no END line)", text.len()))
                    ),
                ));
            }
            if Instant::now() >= deadline {
                let shown = String::from_utf8_lossy(&text[..text.len().min(80)]).into_owned();
                return Err(MonitorError::new(
                    MonitorErrorKind::Timeout,
                    &self.port.name,
                    WHAT,
                    format!(
                        "no END line within {} ms ({} bytes received{})",
                        self.options.metadata_timeout.as_millis(),
                        text.len(),
                        if text.is_empty() { String::new() } else { format!(", starting {shown:?}") }
                    ),
                ));
            }
        }
    }

    /// The metadata read by [`Ppk2::connect`].
    pub fn metadata(&self) -> Option<&Ppk2Metadata> {
        self.metadata.as_ref()
    }

    /// Hard-resets the PPK2 (`RESET 0x20`). The USB device re-enumerates: open it again afterwards.
    pub fn reset(mut self) -> Result<(), MonitorError> {
        self.send(Command::Reset, "resetting (RESET 0x20)")
    }

    /// The voltage samples carry.
    fn sample_voltage_v(&self) -> f64 {
        match self.options.mode {
            Ppk2Mode::Source { .. } => f64::from(self.vdd_mv) / 1000.0,
            Ppk2Mode::Ampere { voltage_v } => voltage_v.unwrap_or(f64::NAN),
        }
    }

    fn send(&mut self, cmd: Command, what: &str) -> Result<(), MonitorError> {
        self.port.send(&cmd.encode(), what)
    }

    /// Reads and discards until the port has been quiet for `quiet` (bounded to 1 s).
    fn drain(&mut self, quiet: Duration) -> Result<(), MonitorError> {
        let hard_stop = Instant::now() + Duration::from_secs(1);
        let mut last_data = Instant::now();
        while Instant::now() < hard_stop && last_data.elapsed() < quiet {
            if self.port.read_some(&mut self.buf, "draining stale stream bytes")? > 0 {
                last_data = Instant::now();
            }
        }
        Ok(())
    }
}

impl<P> Ppk2<P> {
    /// Words lost beyond what the counter showed, once that is certain (see [`Ppk2`]).
    ///
    /// After a counter gap, a fresh arrival more than [`LOSS_STEP_NS`] above the fitted clock is either
    /// the rest of the loss or a USB stall that delivered old words late. A loss keeps every later
    /// arrival that far above the line; a stall drains within milliseconds. So the suspicion is
    /// confirmed only when no arrival for [`LOSS_CONFIRM_NS`] came back down, and the loss is the
    /// smallest excess seen, in whole counter cycles. Returns where the loss starts (the first word after
    /// its gap) and how many words it adds.
    fn unseen_loss(&mut self, last_index: u64, arrival_ns: f64, fresh: bool) -> Option<(u64, u64)> {
        let line = self.fit.line()?;
        let above = arrival_ns - line.to_host_ns(last_index as f64);
        if let Some(s) = &mut self.suspect {
            s.min_above = s.min_above.min(above);
            if s.min_above <= LOSS_STEP_NS {
                self.suspect = None;
            } else if arrival_ns - s.since_ns >= LOSS_CONFIRM_NS {
                let cycles = (s.min_above / (line.slope * f64::from(COUNTER_MODULUS))).round() as u64;
                let from = s.from.unwrap_or(last_index);
                self.suspect = None;
                let words = cycles * u64::from(COUNTER_MODULUS);
                self.lost_at_fresh = self.decoder.lost() + words;
                return (cycles > 0).then_some((from, words));
            }
            return None;
        }
        if fresh {
            let gap_seen = self.decoder.lost() > self.lost_at_fresh;
            if gap_seen && above > LOSS_STEP_NS {
                self.suspect = Some(SuspectedLoss { since_ns: arrival_ns, min_above: above, from: self.last_gap_end });
            }
            self.lost_at_fresh = self.decoder.lost();
        }
        None
    }

    /// Host time of sample `index` on the current fit (the start of the stream before any arrival).
    fn place(&self, index: u64) -> u64 {
        match self.fit.line() {
            Some(line) => line.to_host_ns(index as f64).max(0.0).round() as u64,
            None => self.origin_ns + index * SAMPLE_PERIOD_NS,
        }
    }
}

fn check_vdd(port: &str, mv: u32) -> Result<(), MonitorError> {
    if (VDD_MIN_MV..=VDD_MAX_MV).contains(&mv) {
        Ok(())
    } else {
        Err(MonitorError::new(
            MonitorErrorKind::Config,
            port,
            "setting the regulator",
            format!("{mv} mV is outside the PPK2's {VDD_MIN_MV}..={VDD_MAX_MV} mV"),
        ))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl<P: Read + Write + Send> PowerMonitor for Ppk2<P> {
    fn identify(&mut self) -> Result<MonitorInfo, MonitorError> {
        if self.metadata.is_none() {
            self.connect()?;
        }
        let meta = self.metadata.as_ref().expect("connect() stores the metadata");
        let simulated = meta.is_simulated();
        let mut metadata = Vec::new();
        if let Some(hw) = &meta.hw {
            metadata.push(("HW".to_string(), hw.clone()));
        }
        if let Some(ia) = &meta.ia {
            metadata.push(("IA".to_string(), ia.clone()));
        }
        if let Some(c) = meta.calibrated {
            metadata.push(("Calibrated".to_string(), u8::from(c).to_string()));
        }
        let mode = match self.options.mode {
            Ppk2Mode::Ampere { voltage_v: Some(v) } => format!("ampere meter, rail {v} V (given)"),
            Ppk2Mode::Ampere { voltage_v: None } => "ampere meter, rail voltage unknown".to_string(),
            Ppk2Mode::Source { supply_mv } => format!("source meter at {supply_mv} mV"),
        };
        metadata.push(("mode".to_string(), mode));
        metadata.extend(meta.extra.iter().cloned());
        let mut calibration = meta.modifiers.to_pairs();
        calibration.push(("VDD_mV_used".to_string(), self.vdd_mv.to_string()));
        if !meta.defaulted.is_empty() {
            calibration.push(("defaulted".to_string(), meta.defaulted.join(", ")));
        }
        Ok(MonitorInfo {
            model: if simulated { "PPK2 (simulated)".to_string() } else { "Nordic PPK2".to_string() },
            serial: self.usb_serial.clone(),
            metadata,
            calibration,
            sample_rate_hz: Some(SAMPLE_RATE_HZ),
            clock: SampleClock::StreamIndex,
            simulated,
            port: self.port.name.clone(),
        })
    }

    fn start(&mut self) -> Result<(), MonitorError> {
        if self.metadata.is_none() {
            self.connect()?;
        }
        if self.streaming {
            self.stop()?;
        }
        self.decoder.reset();
        self.lost_reported = 0;
        self.fit.restart(0.0);
        self.last_placed_ns = 0;
        self.lost_at_fresh = 0;
        self.last_gap_end = None;
        self.suspect = None;
        self.lost_runs.clear();
        // The origin is taken just before the command goes out; the device starts sampling when it
        // arrives (USB latency, about a millisecond), a constant shift bounded by the write time.
        self.origin_ns = host_monotonic_ns();
        self.send(Command::AverageStart, "starting the stream (AVERAGE_START 0x06)")?;
        self.streaming = true;
        Ok(())
    }

    fn read(&mut self, out: &mut Vec<Sample>, max_wait: Duration) -> Result<ReadOutcome, MonitorError> {
        if !self.streaming {
            return Err(MonitorError::new(
                MonitorErrorKind::Config,
                &self.port.name,
                "reading samples",
                "the stream is not started (call start first)",
            ));
        }
        let deadline = Instant::now() + max_wait;
        let before = out.len();
        let voltage_v = self.sample_voltage_v();
        loop {
            let asked = Instant::now();
            let n = self.port.read_some(&mut self.buf, "reading the sample stream")?;
            let arrival_ns = host_monotonic_ns() as f64;
            let fresh = n > 0 && asked.elapsed() >= FRESH_READ_WAIT;
            let first_new = out.len();
            let runs_before = self.lost_runs.len();
            if n > 0 {
                let mut expected = self.decoder.next_index();
                let runs = &mut self.lost_runs;
                let gap_end = &mut self.last_gap_end;
                self.decoder.feed(&self.buf[..n], |d| {
                    if d.index != expected {
                        runs.push(LostRun {
                            t_ns: 0,
                            period_ns: SAMPLE_PERIOD_NS as f64,
                            count: d.index - expected,
                            clock: Some(expected as f64),
                            clock_step: 1.0,
                            reindex_until: None,
                        });
                        *gap_end = Some(d.index);
                    }
                    expected = d.index + 1;
                    out.push(Sample {
                        t_ns: 0,
                        current_a: d.current_a,
                        voltage_v,
                        logic: Some(d.logic),
                        clock: Some(d.index as f64),
                    })
                });
            }
            if out.len() > first_new {
                let mut last_index = self.decoder.next_index() - 1;
                if let Some((from, words)) = self.unseen_loss(last_index, arrival_ns, fresh) {
                    // The rest of the last gap: every word after it is later than the counter said,
                    // including those already delivered (the session shifts them: `reindex`).
                    // Samples handed out before this read are renumbered by their holder; this read's
                    // here.
                    let until = out[first_new].clock.unwrap_or(0.0);
                    self.decoder.skip_cycles(words / u64::from(COUNTER_MODULUS));
                    last_index += words;
                    for s in &mut out[first_new..] {
                        if let Some(x) = s.clock.as_mut().filter(|x| **x >= from as f64) {
                            *x += words as f64;
                        }
                    }
                    self.lost_runs.push(LostRun {
                        t_ns: 0,
                        period_ns: SAMPLE_PERIOD_NS as f64,
                        count: words,
                        clock: Some(from as f64),
                        clock_step: 1.0,
                        reindex_until: Some(until),
                    });
                }
                if self.suspect.is_none() {
                    // While a loss is suspected, the words after the gap may be numbered too low:
                    // they would bend the fit.
                    self.fit.observe(last_index as f64, arrival_ns);
                }
                for i in first_new..out.len() {
                    let t = self.place(out[i].clock.unwrap_or(0.0) as u64).max(self.last_placed_ns);
                    out[i].t_ns = t;
                    self.last_placed_ns = t;
                }
                for i in runs_before..self.lost_runs.len() {
                    let r = &mut self.lost_runs[i];
                    r.t_ns = match (self.fit.line(), r.clock) {
                        (Some(line), Some(x)) => line.to_host_ns(x).max(0.0).round() as u64,
                        _ => self.origin_ns,
                    };
                    r.period_ns = self.fit.line().map_or(SAMPLE_PERIOD_NS as f64, |l| l.slope);
                }
            }
            let got_some = out.len() > before;
            // Keep reading while the port hands over full buffers (a backlog); otherwise return what
            // arrived as soon as there is something, or at the deadline.
            if (got_some && n < self.buf.len()) || Instant::now() >= deadline {
                break;
            }
        }
        let lost = self.decoder.lost() - self.lost_reported;
        self.lost_reported = self.decoder.lost();
        Ok(ReadOutcome { samples: out.len() - before, lost })
    }

    fn stop(&mut self) -> Result<(), MonitorError> {
        self.send(Command::AverageStop, "stopping the stream (AVERAGE_STOP 0x07)")?;
        self.streaming = false;
        // Words already in flight would otherwise be read as the next metadata block or stream.
        self.drain(Duration::from_millis(30))
    }

    fn lost_samples(&self) -> u64 {
        self.decoder.lost()
    }

    fn take_lost_runs(&mut self) -> Vec<LostRun> {
        std::mem::take(&mut self.lost_runs)
    }

    fn clock_fit(&self) -> Option<ClockLine> {
        self.fit.line()
    }

    fn as_source_meter(&mut self) -> Option<&mut dyn SourceMeter> {
        match self.options.mode {
            Ppk2Mode::Source { .. } => Some(self),
            Ppk2Mode::Ampere { .. } => None,
        }
    }
}

impl<P: Read + Write + Send> SourceMeter for Ppk2<P> {
    fn set_supply_mv(&mut self, mv: u32) -> Result<(), MonitorError> {
        check_vdd(&self.port.name, mv)?;
        self.send(Command::RegulatorSet(mv as u16), "setting the regulator (REGULATOR_SET 0x0D)")?;
        self.vdd_mv = mv;
        self.options.mode = Ppk2Mode::Source { supply_mv: mv };
        self.decoder.set_vdd_mv(f64::from(mv));
        Ok(())
    }

    fn set_board_power(&mut self, on: bool) -> Result<(), MonitorError> {
        self.send(Command::DeviceRunning(on), "switching board power (DEVICE_RUNNING_SET 0x0C)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io;

    /// The metadata block of a real PPK2 (as quoted in the community `ppk2-rs` crate's docs).
    const REAL_METADATA: &str = "Calibrated: 0\nR0: 1003.3506\nR1: 101.5865\nR2: 10.3027\nR3: 0.9636\nR4: 0.0564\n\
GS0: 0.0000\nGS1: 112.7890\nGS2: 18.0115\nGS3: 2.4217\nGS4: 0.0729\nGI0: 1.0000\nGI1: 0.9695\nGI2: 0.9609\n\
GI3: 0.9519\nGI4: 0.9582\nO0: 112.9420\nO1: 75.4627\nO2: 64.6020\nO3: 50.4983\nO4: 87.2177\nVDD: 3000\nHW: 9173\n\
mode: 2\nS0: 0.000000048\nS1: 0.000000596\nS2: 0.000005281\nS3: 0.000062577\nS4: 0.002940743\nI0: -0.000000104\n\
I1: -0.000001443\nI2: 0.000036439\nI3: -0.000374119\nI4: -0.009388455\nUG0: 1.00\nUG1: 1.00\nUG2: 1.00\nUG3: 1.00\n\
UG4: 1.00\nIA: 56\nEND\n";

    fn word(adc: u16, range: u8, counter: u8, logic: u8) -> [u8; 4] {
        StreamWord { adc, range, counter, logic }.to_u32().to_le_bytes()
    }

    fn decode_all(dec: &mut StreamDecoder, bytes: &[u8]) -> Vec<DecodedSample> {
        let mut out = Vec::new();
        dec.feed(bytes, |d| out.push(d));
        out
    }

    #[test]
    fn word_fields_round_trip_and_bit17_ignored() {
        let w = StreamWord { adc: 0x2ABC, range: 3, counter: 0x2D, logic: 0xA5 };
        let raw = w.to_u32();
        assert_eq!(raw & 0x3FFF, 0x2ABC);
        assert_eq!((raw >> 14) & 7, 3);
        assert_eq!((raw >> 18) & 0x3F, 0x2D);
        assert_eq!(raw >> 24, 0xA5);
        assert_eq!(StreamWord::from_u32(raw), w);
        // Bit 17 set changes nothing decoded.
        assert_eq!(StreamWord::from_u32(raw | 1 << 17), w);
    }

    #[test]
    fn commands_encode_as_documented() {
        assert_eq!(Command::GetMetadata.encode(), [0x19]);
        assert_eq!(Command::AverageStart.encode(), [0x06]);
        assert_eq!(Command::AverageStop.encode(), [0x07]);
        assert_eq!(Command::RegulatorSet(3300).encode(), [0x0D, 0x0C, 0xE4]);
        // [I]'s encoding of 800 mV is (3, 32).
        assert_eq!(Command::RegulatorSet(800).encode(), [0x0D, 3, 32]);
        assert_eq!(Command::SetPowerMode(PowerMode::Ampere).encode(), [0x11, 1]);
        assert_eq!(Command::SetPowerMode(PowerMode::Source).encode(), [0x11, 2]);
        assert_eq!(Command::DeviceRunning(true).encode(), [0x0C, 1]);
        assert_eq!(Command::DeviceRunning(false).encode(), [0x0C, 0]);
        assert_eq!(Command::Reset.encode(), [0x20]);
        let mut bytes = Vec::new();
        for c in [Command::SetPowerMode(PowerMode::Source), Command::RegulatorSet(5000), Command::AverageStart] {
            bytes.extend(c.encode());
        }
        bytes.push(0x0D); // a REGULATOR_SET whose arguments have not arrived
        let (cmds, used) = Command::decode_all(&bytes);
        assert_eq!(
            cmds,
            [Command::SetPowerMode(PowerMode::Source), Command::RegulatorSet(5000), Command::AverageStart]
        );
        assert_eq!(used, bytes.len() - 1);
    }

    #[test]
    fn calibration_matches_hand_computed_values() {
        let m = parse_metadata(REAL_METADATA).unwrap().modifiers;
        // Range 1, raw 1000, vdd 3000 mV, by hand:
        // adc = 4000; x = (4000 - 75.4627) * 1.8/163840 / 101.5865 = 4.24420e-4
        // x * (112.7890 * x + 0.9695) = 4.24420e-4 * 1.017370 = 4.31792e-4
        // + S1 * 3 V + I1 = 1.788e-6 - 1.443e-6 = 3.45e-7  =>  I = 4.32137e-4 A (432 uA)
        let x = (4000.0 - 75.4627) * (1.8 / 163840.0) / 101.5865;
        let expected = x * (112.7890 * x + 0.9695) + 0.000000596 * 3.0 - 0.000001443;
        let got = m.current_a(1, 1000, 3000.0);
        assert!((got - expected).abs() < 1e-15, "{got} vs {expected}");
        assert!((got - 4.32137e-4).abs() < 1e-8, "432 uA: {got}");
        // Range 0, raw 108 (a reading of [N]-decoded data quoted in ppk2-rs: about 0.02 uA):
        // GS0 = 0 takes the default 1 ([N] `||`), x is tiny so it barely matters.
        let x0 = (432.0 - 112.9420) * (1.8 / 163840.0) / 1003.3506;
        let e0 = x0 * (x0 + 1.0) + 0.000000048 * 3.0 - 0.000000104;
        assert!((m.current_a(0, 108, 3000.0) - e0).abs() < 1e-18);
        // Defaults, range 4, raw 1000: x = 4000 * 1.8/163840 / 0.043 = 1.02198; GS = GI = 1 (defaults)
        // give I = x * (x + 1) = 2.06643 A.
        let d = Modifiers::default();
        let x4: f64 = 4000.0 * 1.8 / 163840.0 / 0.043;
        assert!((d.current_a(4, 1000, 5000.0) - x4 * (x4 + 1.0)).abs() < 1e-12);
        assert!((d.current_a(4, 1000, 5000.0) - 2.06643).abs() < 1e-5);
    }

    #[test]
    fn inverse_calibration_round_trips_every_range() {
        let m = parse_metadata(REAL_METADATA).unwrap().modifiers;
        for (range, current) in [(0, 200e-6), (1, 3e-3), (2, 40e-3), (3, 0.4), (4, 1.5)] {
            let raw = m.raw_for_current(range, current, 5000.0).expect("fits");
            let back = m.current_a(range, raw, 5000.0);
            let lsb = m.current_a(range, raw + 1, 5000.0) - back;
            assert!((back - current).abs() <= lsb.abs(), "range {range}: {current} -> {raw} -> {back}");
        }
        // Saturation is reported, not wrapped.
        assert_eq!(m.raw_for_current(0, 0.5, 5000.0), None);
        // Auto-ranging picks the most sensitive range that does not saturate.
        assert_eq!(m.auto_range(50e-6, 5000.0).0, 0);
        assert_eq!(m.auto_range(5e-3, 5000.0).0, 1);
        assert_eq!(m.auto_range(0.5, 5000.0).0, 3);
        // This unit's range-3 gain (GS3 = 2.42) stretches range 3 to about 1.7 A.
        assert_eq!(m.auto_range(1.2, 5000.0).0, 3);
        assert_eq!(m.auto_range(2.5, 5000.0).0, 4);
        assert_eq!(Modifiers::default().auto_range(1.2, 5000.0).0, 4);
    }

    #[test]
    fn metadata_real_block() {
        let meta = parse_metadata(REAL_METADATA).unwrap();
        assert_eq!(meta.vdd_mv, Some(3000));
        assert_eq!(meta.hw.as_deref(), Some("9173"));
        assert_eq!(meta.mode, Some(2));
        assert_eq!(meta.calibrated, Some(false));
        assert_eq!(meta.modifiers.r[2], 10.3027);
        assert_eq!(meta.modifiers.i[4], -0.009388455);
        // GS0 printed as 0.0000: default 1, recorded.
        assert_eq!(meta.modifiers.gs[0], 1.0);
        assert_eq!(meta.defaulted, vec!["GS0 = 0".to_string()]);
        assert!(!meta.is_simulated());
    }

    #[test]
    fn metadata_missing_and_nan_keys_take_defaults() {
        let text = "\u{0}\u{7f}garbage\nR0: -nan\nr1: 99.5\nGI2: nan\nO3: 12.5\nVDD: -nan\nSIMULATED: 1\nEND\nR4: 7\n";
        let meta = parse_metadata(text).unwrap();
        let d = Modifiers::default();
        assert_eq!(meta.modifiers.r[0], d.r[0]);
        assert_eq!(meta.modifiers.r[1], 99.5, "keys are case-insensitive");
        assert_eq!(meta.modifiers.gi[2], 1.0);
        assert_eq!(meta.modifiers.o[3], 12.5);
        assert_eq!(meta.modifiers.r[4], d.r[4], "values after END are ignored");
        assert_eq!(meta.modifiers.ug, [1.0; 5]);
        assert_eq!(meta.vdd_mv, None);
        assert!(meta.defaulted.contains(&"R0 = -nan".to_string()));
        assert!(meta.defaulted.contains(&"GI2 = nan".to_string()));
        assert!(meta.defaulted.contains(&"UG3 missing".to_string()));
        assert!(!meta.defaulted.iter().any(|d| d.starts_with("R1")));
        assert!(meta.is_simulated());
    }

    #[test]
    fn metadata_errors_name_the_key() {
        let err = parse_metadata("R2: ten\nEND\n").unwrap_err();
        assert!(err.contains("R2") && err.contains("ten"), "{err}");
        assert!(parse_metadata("R2: 10\n").unwrap_err().contains("END"));
    }

    #[test]
    fn format_then_parse_is_identity() {
        let m = parse_metadata(REAL_METADATA).unwrap().modifiers;
        let text = format_metadata(&m, true, 5000, "9173", PowerMode::Source, "56", &[("SIMULATED", "1")]);
        let back = parse_metadata(&text).unwrap();
        assert_eq!(back.modifiers, m);
        assert_eq!(back.vdd_mv, Some(5000));
        assert!(back.is_simulated());
    }

    #[test]
    fn decoder_handles_split_reads_every_range() {
        let m = Modifiers::default();
        let mut bytes = Vec::new();
        for (k, range) in (0..5u8).enumerate() {
            bytes.extend(word(1000 + k as u16, range, k as u8, 0x80 | k as u8));
        }
        // Feed one byte at a time, then in odd-sized pieces: same result as one feed.
        let mut whole = StreamDecoder::new(m, 3300.0);
        let expected = decode_all(&mut whole, &bytes);
        assert_eq!(expected.len(), 5);
        for piece in [1, 3, 5, 7] {
            let mut dec = StreamDecoder::new(m, 3300.0);
            let mut got = Vec::new();
            for chunk in bytes.chunks(piece) {
                dec.feed(chunk, |d| got.push(d));
            }
            assert_eq!(got, expected, "pieces of {piece}");
        }
        for (k, d) in expected.iter().enumerate() {
            assert_eq!(d.index, k as u64);
            assert_eq!(d.range, k as u8);
            assert_eq!(d.logic, 0x80 | k as u8);
        }
        // The first sample has no filter history: exactly the calibration formula.
        assert_eq!(expected[0].current_a, m.current_a(0, 1000, 3300.0));
    }

    #[test]
    fn decoder_counts_counter_wrap_and_loss() {
        let m = Modifiers::default();
        let mut dec = StreamDecoder::new(m, 3300.0);
        let mut bytes = Vec::new();
        // 62, 63, 0, 1: a clean wrap.
        for c in [62u8, 63, 0, 1] {
            bytes.extend(word(500, 2, c, 0));
        }
        let got = decode_all(&mut dec, &bytes);
        assert_eq!(got.len(), 4);
        assert_eq!(dec.lost(), 0);
        // Next expected 2; jump to 7: 5 lost, and the index keeps time.
        let lost = dec.feed(&word(500, 2, 7, 0), |d| assert_eq!(d.index, 4 + 5));
        assert_eq!(lost, 5);
        // Loss across the wrap: expected 8, got 3 => (3 + 64 - 8) = 59 lost.
        let lost = dec.feed(&word(500, 2, 3, 0), |d| assert_eq!(d.index, 10 + 59));
        assert_eq!(lost, 59);
        assert_eq!(dec.lost(), 64);
        // An impossible range is dropped, counted, and keeps its time slot.
        let mut seen = Vec::new();
        dec.feed(&[word(1, 6, 4, 0), word(1, 2, 5, 0)].concat(), |d| seen.push(d.index));
        assert_eq!(seen, [71], "the invalid word had index 70");
        assert_eq!(dec.invalid_words(), 1);
        assert_eq!(dec.lost(), 65);
        dec.reset();
        assert_eq!((dec.lost(), dec.next_index()), (0, 0));
    }

    #[test]
    fn spike_filter_follows_nordic() {
        let mut f = SpikeFilter::default();
        // Steady range: passes values through untouched.
        assert_eq!(f.apply(1, 1.0), 1.0);
        assert_eq!(f.apply(1, 1.0), 1.0);
        // Range change 1 -> 2 with value 2.0: averaged for 3 samples.
        let a1 = 0.18 * 2.0 + 0.82 * 1.0;
        assert!((f.apply(2, 2.0) - a1).abs() < 1e-12);
        let a2 = 0.18 * 2.0 + 0.82 * a1;
        assert!((f.apply(2, 2.0) - a2).abs() < 1e-12);
        let a3 = 0.18 * 2.0 + 0.82 * a2;
        assert!((f.apply(2, 2.0) - a3).abs() < 1e-12);
        // Fourth sample after the change: raw again.
        assert_eq!(f.apply(2, 2.0), 2.0);

        // Into range 4: the first two samples do not update the averages and report avg4.
        let mut f = SpikeFilter::default();
        f.apply(3, 1.0);
        let first = f.apply(4, 5.0);
        assert_eq!(first, 1.0, "avg4 rolled back to its value before the spike");
        let second = f.apply(4, 5.0);
        assert_eq!(second, 1.0, "second sample in range 4 still rolled back");
        let third = f.apply(4, 5.0);
        assert!((third - (0.06 * 5.0 + 0.94 * 1.0)).abs() < 1e-12);
        assert_eq!(f.apply(4, 5.0), 5.0);

        // reset() forgets the history: the next sample is raw.
        f.reset();
        assert_eq!(f.apply(0, 3.0), 3.0);
    }

    /// A scripted fake PPK2: answers GET_META_DATA, records commands, serves queued stream bytes.
    struct FakePort {
        written: Vec<u8>,
        to_read: VecDeque<Vec<u8>>,
    }

    impl Read for FakePort {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.to_read.pop_front() {
                Some(chunk) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.to_read.push_front(chunk[n..].to_vec());
                    }
                    Ok(n)
                }
                None => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            }
        }
    }

    impl Write for FakePort {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(b);
            if b == [opcode::GET_META_DATA] {
                // Split the block across reads, as USB does.
                let text = REAL_METADATA.as_bytes();
                self.to_read.push_back(text[..40].to_vec());
                self.to_read.push_back(text[40..].to_vec());
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn driver_brings_device_up_and_places_samples_by_index() {
        let port = FakePort { written: Vec::new(), to_read: VecDeque::new() };
        let opts = Ppk2Options {
            mode: Ppk2Mode::Source { supply_mv: 3300 },
            metadata_timeout: Duration::from_millis(200),
            ..Ppk2Options::default()
        };
        let mut ppk = Ppk2::new(port, "fake", opts);
        let info = ppk.identify().unwrap();
        assert_eq!(info.model, "Nordic PPK2");
        assert!(!info.simulated);
        assert_eq!(info.sample_rate_hz, Some(100_000.0));
        assert!(info.calibration.iter().any(|(k, v)| k == "R0" && v == "1003.3506"));
        assert_eq!(
            ppk.port.port.written,
            [vec![0x07, 0x19, 0x11, 2, 0x0D, 0x0C, 0xE4, 0x0C, 1]].concat(),
            "stop, metadata, source mode, 3300 mV, power on"
        );
        ppk.start().unwrap();
        let mut stream = Vec::new();
        for c in [0u8, 1, 2, 5] {
            stream.extend(word(2000, 3, c, 1));
        }
        ppk.port.port.to_read.push_back(stream[..6].to_vec());
        ppk.port.port.to_read.push_back(stream[6..].to_vec());
        let mut out = Vec::new();
        // The first read returns as soon as something arrived (one word and a half).
        let first = ppk.read(&mut out, Duration::from_millis(50)).unwrap();
        assert_eq!(first, ReadOutcome { samples: 1, lost: 0 });
        let second = ppk.read(&mut out, Duration::from_millis(50)).unwrap();
        assert_eq!(second, ReadOutcome { samples: 3, lost: 2 });
        // Placed by the index clock: until the fit has two seconds of arrivals, at the nominal 10 us.
        crate::samples::place_samples(&mut out, &ppk.clock_fit().unwrap());
        let t: Vec<u64> = out.iter().map(|s| s.t_ns - out[0].t_ns).collect();
        assert_eq!(t, [0, 10_000, 20_000, 50_000]);
        assert_eq!(out.iter().map(|s| s.clock.unwrap()).collect::<Vec<_>>(), [0.0, 1.0, 2.0, 5.0]);
        let runs = ppk.take_lost_runs();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!((runs[0].count, runs[0].clock), (2, Some(3.0)));
        assert_eq!(runs[0].t_ns, out[0].t_ns + 30_000, "the lost slots sit where they were due");
        assert!(out.iter().all(|s| s.voltage_v == 3.3 && s.logic == Some(1)));
        assert_eq!(ppk.lost_samples(), 2);
        assert!(ppk.as_source_meter().is_some());
        let err = ppk.as_source_meter().unwrap().set_supply_mv(6000).unwrap_err();
        assert_eq!(err.kind, MonitorErrorKind::Config);
        ppk.stop().unwrap();
        assert_eq!(*ppk.port.port.written.last().unwrap(), 0x07);
    }

    #[test]
    fn metadata_timeout_names_port_and_command() {
        struct Silent;
        impl Read for Silent {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(5));
                Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
            }
        }
        impl Write for Silent {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let opts = Ppk2Options { metadata_timeout: Duration::from_millis(50), ..Ppk2Options::default() };
        let mut ppk = Ppk2::new(Silent, "/dev/ttyACM0", opts);
        let err = ppk.identify().unwrap_err();
        assert_eq!(err.kind, MonitorErrorKind::Timeout);
        let text = err.to_string();
        assert!(text.contains("/dev/ttyACM0") && text.contains("GET_META_DATA"), "{text}");
    }
}
