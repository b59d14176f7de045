//! INA219/INA226 current sensors read through the Arduino/ESP sketches labs actually use.
//!
//! The sensor sits in the board's supply line; a microcontroller reads it over I2C and prints text on
//! its USB serial port. There is no standard format, so this driver reads the common ones:
//! - CSV with a header, e.g. `millis,BusV[V],ShuntV[mV],LoadV[V],Current[mA]`, or without one (give the
//!   column mapping, or rely on the default, which is that same 5-column layout);
//! - tab-separated with a header, e.g. `BUS\tSHUNT\tCURRENT\tPOWER`;
//! - key-value blocks as printed by the Adafruit INA219 example (`Bus Voltage:   5.01 V`,
//!   `Current:       312.40 mA`, `Power:         1565 mW`, a blank line between blocks).
//!
//! `\r\n` line ends, banners (`INA219 ready`), and blank lines are tolerated. Units are read from the
//! text (`[mA]`, `(V)`, `_mW`, or after a key-value number); where a header gives none, the Arduino
//! libraries' conventions apply (Adafruit_INA219 `getBusVoltage_V`, `getShuntVoltage_mV`,
//! `getCurrent_mA`, `getPower_mW`; the INA226 libraries use the same units; time columns are `millis()`).
//!
//! Which voltage a sample carries: the bus voltage (INA219/226 measure it on the load side of the
//! shunt, i.e. what the board gets), else the load column, else power / current.
//!
//! Parsing is pure ([`InaParser::push_line`], [`parse_text`]); [`InaMonitor`] adds the port and the
//! clock: the device time column when present, else the line count, fitted to the host clock.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::{
    host_monotonic_ns, MonitorError, MonitorErrorKind, MonitorInfo, NamedPort, PowerMonitor, ReadOutcome, Sample,
    SampleClock,
};
use crate::clock_fit::{ClockFit, ClockLine};

/// The baud rate of most of these sketches (`Serial.begin(115200)`).
pub const DEFAULT_BAUD: u32 = 115_200;

/// The layout assumed for headerless CSV when no mapping is given (the Adafruit-style sketch columns).
pub const DEFAULT_HEADERLESS_COLUMNS: &str = "millis,BusV[V],ShuntV[mV],LoadV[V],Current[mA]";

/// What a column or key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    Time,
    BusVoltage,
    ShuntVoltage,
    LoadVoltage,
    Current,
    Power,
    /// A column to skip.
    Ignore,
}

/// One column: what it holds and the factor to SI (seconds, volts, amperes, watts).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Column {
    pub quantity: Quantity,
    pub scale: f64,
}

/// Which voltage to attach to samples.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum VoltagePick {
    /// Bus voltage, else load voltage, else power / current.
    #[default]
    Auto,
    Bus,
    Load,
    /// A known rail voltage (sketches that print current only).
    Fixed(f64),
}

/// Options for the INA text driver.
#[derive(Clone, Debug, PartialEq)]
pub struct InaOptions {
    /// A header to assume for headerless lines, in the header syntax, e.g. `t[ms],I[A],V[V]` or
    /// `-,Current[mA],BusV[V]` (`-` skips a column). Separator: comma, tab or semicolon.
    pub columns: Option<String>,
    /// Explicit meanings for header fields or keys the built-in names do not cover (or cover
    /// wrongly): the field text as printed (case-insensitive), e.g. `("Strom[mA]", Current)`.
    /// A unit in the field is still read from it.
    pub names: Vec<(String, Quantity)>,
    pub voltage: VoltagePick,
    /// The format the sketch prints; `None`: detect it. A given format is enforced: lines of another
    /// format are skipped (and counted), never guessed at.
    pub format: Option<InaFormat>,
    /// Read timeout of the serial port.
    pub read_timeout: Duration,
}

impl Default for InaOptions {
    fn default() -> Self {
        Self {
            columns: None,
            names: Vec::new(),
            voltage: VoltagePick::Auto,
            format: None,
            read_timeout: Duration::from_millis(20),
        }
    }
}

/// The formats this driver recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InaFormat {
    CsvHeader,
    CsvHeaderless,
    TsvHeader,
    KeyValue,
}

impl InaFormat {
    /// Whether a stream detected as `self` satisfies an expected `format` (CSV with or without header
    /// both satisfy "CSV"; a TSV stream satisfies a headerless "CSV" whose separator is a tab).
    fn satisfies(self, expected: InaFormat) -> bool {
        use InaFormat::*;
        match expected {
            CsvHeader | CsvHeaderless => matches!(self, CsvHeader | CsvHeaderless),
            TsvHeader => matches!(self, TsvHeader) || self == CsvHeaderless,
            KeyValue => self == KeyValue,
        }
    }
}

/// One parsed reading, in SI units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InaReading {
    /// From the device's time column, seconds.
    pub device_time_s: Option<f64>,
    pub current_a: f64,
    pub voltage_v: Option<f64>,
    pub power_w: Option<f64>,
}

/// Factor to SI for a unit, and the quantity family it belongs to (`'V'`, `'A'`, `'W'`, `'s'`).
pub fn parse_unit(unit: &str) -> Option<(char, f64)> {
    let u = unit.trim();
    if u.is_empty() {
        return None;
    }
    let (prefix, base) = u.split_at(u.len() - u.chars().last()?.len_utf8());
    let family = match base {
        "V" | "v" => 'V',
        "A" | "a" => 'A',
        "W" | "w" => 'W',
        "s" | "S" => 's',
        _ => return None,
    };
    let scale = match prefix {
        "" => 1.0,
        "m" => 1e-3,
        "u" | "µ" | "μ" => 1e-6,
        "n" => 1e-9,
        "k" | "K" => 1e3,
        _ => return None,
    };
    Some((family, scale))
}

/// Classifies a header field or a key: `Current[mA]`, `BusV`, `Bus Voltage`, `Current_mA`, `millis`.
pub fn classify_field(field: &str) -> Option<Column> {
    classify_field_as(field, None)
}

/// Like [`classify_field`], but a field named in `names` takes the quantity given there.
pub fn classify_field_with(field: &str, names: &[(String, Quantity)]) -> Option<Column> {
    let forced = names.iter().find(|(n, _)| n.trim().eq_ignore_ascii_case(field.trim())).map(|(_, q)| *q);
    classify_field_as(field, forced)
}

fn classify_field_as(field: &str, forced: Option<Quantity>) -> Option<Column> {
    let field = field.trim();
    if field == "-" || field == "_" || field.eq_ignore_ascii_case("ignore") {
        return Some(Column { quantity: Quantity::Ignore, scale: 1.0 });
    }
    // Split off a unit: `name[unit]`, `name(unit)`, `name_unit`, `name unit`.
    let (name, unit) = if let Some(open) = field.find(['[', '(']) {
        let close = field[open..].find([']', ')']).map(|c| open + c).unwrap_or(field.len());
        (&field[..open], Some(&field[open + 1..close]))
    } else if let Some((n, u)) = field.rsplit_once(['_', ' ']).filter(|(_, u)| parse_unit(u).is_some()) {
        (n, Some(u))
    } else {
        (field, None)
    };
    let key: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
    if key.is_empty() {
        return None;
    }
    let quantity = if let Some(q) = forced {
        q
    } else if matches!(key.as_str(), "millis" | "ms" | "time" | "t" | "timestamp" | "micros" | "us" | "uptime") {
        Quantity::Time
    } else if key.contains("shunt") {
        Quantity::ShuntVoltage
    } else if key.contains("load") {
        Quantity::LoadVoltage
    } else if key.starts_with("bus")
        || key.starts_with("vbus")
        || matches!(key.as_str(), "v" | "volt" | "voltage" | "volts")
    {
        Quantity::BusVoltage
    } else if key.starts_with("current") || matches!(key.as_str(), "i" | "curr" | "amps" | "ima") {
        Quantity::Current
    } else if key.starts_with("power") || matches!(key.as_str(), "p" | "pwr") {
        Quantity::Power
    } else {
        return None;
    };
    let default_scale = match quantity {
        Quantity::Time if key == "micros" || key == "us" => 1e-6,
        Quantity::Time if key == "time" || key == "t" || key == "timestamp" || key == "uptime" => 1e-3,
        Quantity::Time => 1e-3,
        Quantity::BusVoltage | Quantity::LoadVoltage => 1.0,
        Quantity::ShuntVoltage => 1e-3,
        Quantity::Current => 1e-3,
        Quantity::Power => 1e-3,
        Quantity::Ignore => 1.0,
    };
    let scale = match unit.map(parse_unit) {
        Some(Some((family, scale))) => {
            let expected = match quantity {
                Quantity::Time => 's',
                Quantity::BusVoltage | Quantity::LoadVoltage | Quantity::ShuntVoltage => 'V',
                Quantity::Current => 'A',
                Quantity::Power => 'W',
                Quantity::Ignore => family,
            };
            if family != expected {
                return None;
            }
            scale
        }
        // `[ms]` is read by parse_unit as milli-seconds; an unknown unit text makes the field unknown.
        Some(None) => return None,
        None => default_scale,
    };
    Some(Column { quantity, scale })
}

/// Parses a number with an optional unit suffix (`5.01`, `312.40mA`, `-0.5 mV`); the unit's scale
/// replaces `default_scale`.
fn parse_value(text: &str, default_scale: f64) -> Option<f64> {
    let t = text.trim();
    let end = t
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || ((c == 'e' || c == 'E') && i > 0)))
        .map(|(i, _)| i)
        .unwrap_or(t.len());
    // A trailing `e`/`E` that is not an exponent belongs to no number; let the parse fail.
    let number: f64 = t[..end].parse().ok()?;
    let rest = t[end..].trim();
    if rest.is_empty() {
        return Some(number * default_scale);
    }
    let (_, scale) = parse_unit(rest)?;
    Some(number * scale)
}

fn split_fields(line: &str, sep: char) -> Vec<&str> {
    line.split(sep).map(str::trim).collect()
}

fn guess_separator(line: &str) -> char {
    if line.contains('\t') {
        '\t'
    } else if line.contains(',') {
        ','
    } else if line.contains(';') {
        ';'
    } else {
        ' '
    }
}

/// A table layout: separator and columns.
#[derive(Clone, Debug, PartialEq)]
struct Layout {
    sep: char,
    columns: Vec<Column>,
    format: InaFormat,
}

fn parse_header(
    line: &str,
    names: &[(String, Quantity)],
    format_if_header: impl Fn(char) -> InaFormat,
) -> Option<Layout> {
    let sep = guess_separator(line);
    let fields: Vec<&str> = if sep == ' ' { line.split_whitespace().collect() } else { split_fields(line, sep) };
    if fields.len() < 2 || fields.iter().any(|f| parse_value(f, 1.0).is_some()) {
        return None;
    }
    let columns: Option<Vec<Column>> = fields.iter().map(|f| classify_field_with(f, names)).collect();
    let columns = columns?;
    let has = |q| columns.iter().any(|c| c.quantity == q);
    if !has(Quantity::Current) && !has(Quantity::Power) {
        return None;
    }
    Some(Layout { sep, columns, format: format_if_header(sep) })
}

/// The values gathered for one reading.
#[derive(Clone, Copy, Debug, Default)]
struct Partial {
    time_s: Option<f64>,
    bus_v: Option<f64>,
    shunt_v: Option<f64>,
    load_v: Option<f64>,
    current_a: Option<f64>,
    power_w: Option<f64>,
}

impl Partial {
    fn is_empty(&self) -> bool {
        self.time_s.is_none()
            && self.bus_v.is_none()
            && self.shunt_v.is_none()
            && self.load_v.is_none()
            && self.current_a.is_none()
            && self.power_w.is_none()
    }

    fn slot(&mut self, q: Quantity) -> Option<&mut Option<f64>> {
        match q {
            Quantity::Time => Some(&mut self.time_s),
            Quantity::BusVoltage => Some(&mut self.bus_v),
            Quantity::ShuntVoltage => Some(&mut self.shunt_v),
            Quantity::LoadVoltage => Some(&mut self.load_v),
            Quantity::Current => Some(&mut self.current_a),
            Quantity::Power => Some(&mut self.power_w),
            Quantity::Ignore => None,
        }
    }

    fn finish(self, pick: VoltagePick) -> Option<InaReading> {
        let voltage_v = match pick {
            VoltagePick::Auto => self.bus_v.or(self.load_v),
            VoltagePick::Bus => self.bus_v,
            VoltagePick::Load => self.load_v,
            VoltagePick::Fixed(v) => Some(v),
        };
        let (current_a, voltage_v) = match (self.current_a, voltage_v, self.power_w) {
            (Some(i), v, p) => (i, v.or_else(|| p.filter(|_| i.abs() > 1e-12).map(|p| p / i))),
            // Power and voltage only: derive the current.
            (None, Some(v), Some(p)) if v.abs() > 1e-12 => (p / v, Some(v)),
            _ => return None,
        };
        Some(InaReading { device_time_s: self.time_s, current_a, voltage_v, power_w: self.power_w })
    }
}

/// Line-by-line parser; keeps the layout across lines (a sketch prints its header once, at boot).
#[derive(Clone, Debug)]
pub struct InaParser {
    options: InaOptions,
    layout: Option<Layout>,
    block: Partial,
    /// Lines that were neither data, header nor key-value (banners, fragments).
    pub skipped_lines: u64,
    /// Why the last line was skipped, for error messages.
    pub last_problem: Option<String>,
    kv_seen: bool,
}

impl InaParser {
    pub fn new(options: InaOptions) -> Self {
        Self { options, layout: None, block: Partial::default(), skipped_lines: 0, last_problem: None, kv_seen: false }
    }

    /// The format seen so far.
    pub fn format(&self) -> Option<InaFormat> {
        if self.kv_seen {
            Some(InaFormat::KeyValue)
        } else {
            self.layout.as_ref().map(|l| l.format)
        }
    }

    /// Whether readings carry a device time column.
    pub fn has_device_time(&self) -> bool {
        self.layout.as_ref().is_some_and(|l| l.columns.iter().any(|c| c.quantity == Quantity::Time))
    }

    /// Drops a half-received key-value block (at stream start).
    /// Whether a key-value block is under way (some of its lines seen, not its end).
    pub fn in_reading(&self) -> bool {
        !self.block.is_empty()
    }

    pub fn clear_partial(&mut self) {
        self.block = Partial::default();
    }

    /// Parses one line (with or without its `\r\n`); returns a reading when one is complete.
    pub fn push_line(&mut self, raw: &str) -> Option<InaReading> {
        let line = raw.trim_matches(|c: char| c == '\r' || c == '\n' || c.is_whitespace());
        if line.is_empty() {
            return self.flush_block();
        }
        let expected = self.options.format;
        // Key-value: `Bus Voltage:   5.01 V`.
        if let Some((key, value)) = line.split_once(':').filter(|_| expected.is_none_or(|f| f == InaFormat::KeyValue)) {
            if let Some(col) = classify_field_with(key, &self.options.names) {
                if let Some(v) = parse_value(value, col.scale) {
                    self.kv_seen = true;
                    let mut done = None;
                    if self.block.slot(col.quantity).is_some_and(|s| s.is_some()) {
                        // The same key again without a blank line: a new block started.
                        done = self.flush_block();
                    }
                    if let Some(slot) = self.block.slot(col.quantity) {
                        *slot = Some(v);
                    }
                    return done;
                }
            }
        }
        if expected == Some(InaFormat::KeyValue) {
            return self.skip(format!("not a key-value line (the scenario says format: key_value): {line:?}"));
        }
        // A (new) header.
        if let Some(layout) = parse_header(line, &self.options.names, |sep| {
            if sep == '\t' {
                InaFormat::TsvHeader
            } else {
                InaFormat::CsvHeader
            }
        }) {
            if let Some(f) = expected.filter(|f| !layout.format.satisfies(*f)) {
                return self.skip(format!("a {:?} header where the scenario says {f:?}: {line:?}", layout.format));
            }
            self.layout = Some(layout);
            return None;
        }
        // A data row.
        if self.layout.is_none() && line.chars().next().is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '.') {
            let mapping = self.options.columns.clone().unwrap_or_else(|| DEFAULT_HEADERLESS_COLUMNS.to_string());
            match parse_header(&mapping, &self.options.names, |_| InaFormat::CsvHeaderless) {
                Some(layout) => {
                    let fields = split_row(line, guess_separator(line));
                    if fields.len() == layout.columns.len() {
                        self.layout = Some(Layout { sep: guess_separator(line), ..layout });
                    } else {
                        return self.skip(format!(
                            "headerless line with {} fields does not fit the column mapping {mapping:?} ({} columns): \
                             configure the columns",
                            fields.len(),
                            layout.columns.len()
                        ));
                    }
                }
                None => return self.skip(format!("column mapping {mapping:?} names no current or power column")),
            }
        }
        let Some(layout) = &self.layout else {
            return self.skip(format!("not data: {line:?}"));
        };
        let fields = split_row(line, layout.sep);
        if fields.len() != layout.columns.len() {
            let n = layout.columns.len();
            return self.skip(format!("{} fields where the layout has {n}: {line:?}", fields.len()));
        }
        let mut p = Partial::default();
        for (field, col) in fields.iter().zip(&layout.columns) {
            if col.quantity == Quantity::Ignore {
                continue;
            }
            let Some(v) = parse_value(field, col.scale) else {
                return self.skip(format!("field {field:?} is not a number: {line:?}"));
            };
            if let Some(slot) = p.slot(col.quantity) {
                *slot = Some(v);
            }
        }
        match p.finish(self.options.voltage) {
            Some(r) => Some(r),
            None => self.skip(format!("no current in {line:?}")),
        }
    }

    /// Completes a pending key-value block (end of input).
    pub fn finish(&mut self) -> Option<InaReading> {
        self.flush_block()
    }

    fn flush_block(&mut self) -> Option<InaReading> {
        let block = std::mem::take(&mut self.block);
        if block.is_empty() {
            return None;
        }
        block.finish(self.options.voltage)
    }

    fn skip(&mut self, why: String) -> Option<InaReading> {
        self.skipped_lines += 1;
        self.last_problem = Some(why);
        None
    }
}

fn split_row(line: &str, sep: char) -> Vec<&str> {
    if sep == ' ' {
        line.split_whitespace().collect()
    } else {
        split_fields(line, sep)
    }
}

/// Parses a whole text (tests, files): the readings and the number of skipped lines.
pub fn parse_text(text: &str, options: InaOptions) -> (Vec<InaReading>, u64) {
    let mut parser = InaParser::new(options);
    let mut out: Vec<InaReading> = text.lines().filter_map(|l| parser.push_line(l)).collect();
    out.extend(parser.finish());
    (out, parser.skipped_lines)
}

// ---------------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------------

/// An INA219/INA226 sketch on a serial port.
///
/// Time: with a device time column (`millis()`), that clock is fitted to the host clock continuously
/// ([`ClockFit`]: offset and rate, robust to lines arriving in bursts); without one, the sketch's line
/// count is the clock and the fit finds its print interval. Either way every line gets its own host
/// time on the fitted line, never the arrival time of the burst it came in.
#[derive(Debug)]
pub struct InaMonitor<P> {
    port: NamedPort<P>,
    parser: InaParser,
    line: Vec<u8>,
    buf: Vec<u8>,
    fit: ClockFit,
    /// Whether the fit's clock is the device's time column (else the line count).
    device_clock: Option<bool>,
    /// Added to device times so the clock keeps increasing across a sketch restart / `millis()` wrap.
    epoch_shift_ns: f64,
    last_x: Option<f64>,
    last_arrival_ns: f64,
    lines: u64,
    /// The latest time handed out: read-time placement never goes backwards.
    last_placed_ns: u64,
    /// The last delivery (reads no more than [`SAME_FLUSH_NS`] apart), for the upper bound it puts on
    /// the next reading.
    delivery: Option<Delivery>,
}

/// Reads of one flush of the sketch's output.
#[derive(Clone, Copy, Debug)]
struct Delivery {
    first_arrival_ns: f64,
    last_arrival_ns: f64,
    /// The delivery ended inside a reading (a partial line, an unfinished key-value block): the
    /// reading completed next was printed before it.
    straddling: bool,
    /// Readings completed in it.
    readings: usize,
}

impl InaMonitor<serialport::TTYPort> {
    pub fn open(path: &str, baud: u32, options: InaOptions) -> Result<Self, MonitorError> {
        let port = super::open_serial(path, baud, options.read_timeout)?;
        Ok(Self::new(port, path, options))
    }
}

impl<P: Read + Write + Send> InaMonitor<P> {
    pub fn new(port: P, name: impl Into<String>, options: InaOptions) -> Self {
        Self {
            port: NamedPort::new(port, name),
            parser: InaParser::new(options),
            line: Vec::new(),
            buf: vec![0; 4096],
            fit: ClockFit::new(None),
            device_clock: None,
            epoch_shift_ns: 0.0,
            last_x: None,
            last_arrival_ns: 0.0,
            lines: 0,
            last_placed_ns: 0,
            delivery: None,
        }
    }

    /// This reading's position on the monitor's clock (device ns, or the line number).
    fn clock_of(&mut self, reading: &InaReading, arrival_ns: f64) -> f64 {
        let device = reading.device_time_s.is_some();
        if self.device_clock != Some(device) {
            // First reading, or the sketch changed between printing a time column and not.
            self.device_clock = Some(device);
            // An Arduino's millis() runs off a ceramic resonator: thousands of ppm from nominal.
            self.fit = ClockFit::new(device.then_some(1.0)).with_prior_ppm(MILLIS_PRIOR_PPM);
            self.last_x = None;
            self.epoch_shift_ns = 0.0;
        }
        let x = match reading.device_time_s {
            Some(dev_s) => {
                let raw = dev_s * 1e9;
                let mut x = raw + self.epoch_shift_ns;
                if let Some(last) = self.last_x.filter(|last| x < *last) {
                    // The sketch restarted or millis() wrapped: continue the clock from where it was
                    // (plus the host time since), and fit the new epoch afresh.
                    self.epoch_shift_ns = last + (arrival_ns - self.last_arrival_ns).max(1.0) - raw;
                    x = raw + self.epoch_shift_ns;
                    self.fit.restart(x);
                }
                x
            }
            None => {
                self.lines += 1;
                self.lines as f64
            }
        };
        self.last_x = Some(x);
        self.last_arrival_ns = arrival_ns;
        x
    }
}

impl<P: Read + Write + Send> PowerMonitor for InaMonitor<P> {
    fn identify(&mut self) -> Result<MonitorInfo, MonitorError> {
        let format = match self.parser.format() {
            Some(f) => format!("{f:?}"),
            None => "not seen yet".to_string(),
        };
        let mut metadata =
            vec![("format".to_string(), format), ("skipped_lines".to_string(), self.parser.skipped_lines.to_string())];
        if let Some(problem) = &self.parser.last_problem {
            metadata.push(("last_skipped".to_string(), problem.clone()));
        }
        Ok(MonitorInfo {
            model: "INA219/INA226 text".to_string(),
            serial: None,
            metadata,
            calibration: Vec::new(),
            sample_rate_hz: None,
            clock: if self.parser.has_device_time() { SampleClock::DeviceColumn } else { SampleClock::LineCount },
            simulated: false,
            port: self.port.name.clone(),
        })
    }

    fn start(&mut self) -> Result<(), MonitorError> {
        // Lines buffered before the start are stale; a partial line would parse wrongly. The layout
        // (header seen at sketch boot) is kept.
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until && self.port.read_some(&mut self.buf, "discarding stale lines")? > 0 {}
        self.line.clear();
        self.parser.clear_partial();
        self.device_clock = None;
        self.last_x = None;
        self.lines = 0;
        self.delivery = None;
        Ok(())
    }

    fn read(&mut self, out: &mut Vec<Sample>, max_wait: Duration) -> Result<ReadOutcome, MonitorError> {
        let deadline = Instant::now() + max_wait;
        let before = out.len();
        loop {
            let n = self.port.read_some(&mut self.buf, "reading INA lines")?;
            let arrival_ns = host_monotonic_ns() as f64;
            let first_new = out.len();
            let mut start = 0;
            for i in 0..n {
                if self.buf[i] == b'\n' {
                    self.line.extend_from_slice(&self.buf[start..i]);
                    start = i + 1;
                    let text = String::from_utf8_lossy(&self.line).into_owned();
                    self.line.clear();
                    if let Some(r) = self.parser.push_line(&text) {
                        let x = self.clock_of(&r, arrival_ns);
                        out.push(Sample {
                            t_ns: 0,
                            current_a: r.current_a,
                            voltage_v: r.voltage_v.unwrap_or(f64::NAN),
                            logic: None,
                            clock: Some(x),
                        });
                    }
                }
            }
            self.line.extend_from_slice(&self.buf[start..n]);
            if self.line.len() > INA_LINE_LIMIT.bytes {
                let length = self.line.len();
                self.line.clear();
                return Err(MonitorError::new(
                    MonitorErrorKind::Protocol,
                    &self.port.name,
                    "reading INA lines",
                    format!(
                        "{}: not a text sketch (wrong port or baud rate?)",
                        INA_LINE_LIMIT.exceeded(format!("a line ({length} bytes, no newline)"))
                    ),
                ));
            }
            if out.len() > first_new {
                // The newest line of the delivery is the one that left the sketch last: it bounds the
                // delay from below. Older lines of the same burst only lie higher above the line.
                let x_last = out[out.len() - 1].clock.expect("set above");
                self.fit.observe(x_last, arrival_ns);
                // A sketch's output reaches the host in whole flushes (the USB-serial chip's latency
                // timer, a CDC packet): a reading that missed the last flush was taken after it. Only
                // when flushes carry several readings each is the last delivery seen the last flush:
                // a sketch slower than its flushes leaves empty flushes the host never sees, and a
                // bound from the delivery before them is loose and would pull the fit early.
                let readings_now = out.len() - first_new;
                if let Some(prev) = self
                    .delivery
                    .filter(|d| arrival_ns - d.last_arrival_ns > SAME_FLUSH_NS && d.readings >= 2 && readings_now >= 2)
                {
                    if let Some(x) = out.get(first_new + usize::from(prev.straddling)).and_then(|s| s.clock) {
                        self.fit.observe_taken_after(x, prev.first_arrival_ns - FLUSH_SLACK_NS);
                    }
                }
                let line = self.fit.line().expect("observed");
                for s in &mut out[first_new..] {
                    let x = s.clock.expect("set above");
                    let t = if line.covers(x) { line.to_host_ns(x).max(0.0).round() as u64 } else { arrival_ns as u64 };
                    s.t_ns = t.max(self.last_placed_ns);
                    self.last_placed_ns = s.t_ns;
                }
            }
            if n > 0 {
                let straddling = !self.line.is_empty() || self.parser.in_reading();
                let readings = out.len() - first_new;
                self.delivery = Some(match self.delivery {
                    Some(d) if arrival_ns - d.last_arrival_ns <= SAME_FLUSH_NS => {
                        Delivery { last_arrival_ns: arrival_ns, straddling, readings: d.readings + readings, ..d }
                    }
                    _ => Delivery { first_arrival_ns: arrival_ns, last_arrival_ns: arrival_ns, straddling, readings },
                });
            }
            if out.len() > before || Instant::now() >= deadline {
                break;
            }
        }
        Ok(ReadOutcome { samples: out.len() - before, lost: 0 })
    }

    fn stop(&mut self) -> Result<(), MonitorError> {
        Ok(())
    }

    fn clock_fit(&self) -> Option<ClockLine> {
        self.fit.line()
    }
}

/// Reads closer than this are one flush split across reads (a burst larger than the read buffer, or
/// several USB packets of one latency-timer flush).
pub const SAME_FLUSH_NS: f64 = 3e6;
/// How late the reader may see a flush (USB polling, waking the reader thread): a reading missing from
/// a flush read at `t` is taken to have been taken after `t` less this. A read later than this breaks
/// the bound; the fit drops bounds that leave no line between them and the arrivals.
pub const FLUSH_SLACK_NS: f64 = 2e6;

/// How far a sketch's `millis()` is typically from nominal (ceramic resonators: +-0.5 %).
pub const MILLIS_PRIOR_PPM: f64 = 5000.0;

/// A text line longer than this is not from a sketch.
pub const INA_LINE_LIMIT: crate::board::ReadLimit = crate::board::ReadLimit::new(
    "INA_LINE_LIMIT",
    64 << 10,
    "a sketch's line is a CSV row, a header or one `Key: value` (under 200 bytes)",
);

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn units_and_fields() {
        assert_eq!(parse_unit("mA"), Some(('A', 1e-3)));
        assert_eq!(parse_unit("µA"), Some(('A', 1e-6)));
        assert_eq!(parse_unit("V"), Some(('V', 1.0)));
        assert_eq!(parse_unit("ms"), Some(('s', 1e-3)));
        assert_eq!(parse_unit("furlong"), None);
        let c = classify_field("Current[mA]").unwrap();
        assert_eq!((c.quantity, c.scale), (Quantity::Current, 1e-3));
        let c = classify_field("ShuntV[mV]").unwrap();
        assert_eq!((c.quantity, c.scale), (Quantity::ShuntVoltage, 1e-3));
        assert_eq!(classify_field("Power_W").unwrap(), Column { quantity: Quantity::Power, scale: 1.0 });
        assert_eq!(classify_field("BUS").unwrap(), Column { quantity: Quantity::BusVoltage, scale: 1.0 });
        assert_eq!(classify_field("Bus Voltage").unwrap().quantity, Quantity::BusVoltage);
        assert_eq!(classify_field("micros").unwrap().scale, 1e-6);
        assert!(classify_field("Current[V]").is_none(), "a current in volts is not a current");
        // A sketch with its own names: mapped explicitly, units still read from the field.
        let names = vec![("Strom[mA]".to_string(), Quantity::Current), ("Spannung".to_string(), Quantity::BusVoltage)];
        assert!(classify_field("Strom[mA]").is_none());
        assert_eq!(classify_field_with("strom[mA]", &names), Some(Column { quantity: Quantity::Current, scale: 1e-3 }));
        assert_eq!(classify_field_with("Spannung", &names).unwrap().quantity, Quantity::BusVoltage);
        let mut parser = InaParser::new(InaOptions { names, ..InaOptions::default() });
        assert!(parser.push_line("Strom[mA],Spannung").is_none());
        let r = parser.push_line("250.0,5.0").expect("a reading");
        assert!((r.current_a - 0.25).abs() < 1e-12 && r.voltage_v == Some(5.0));
        assert!(classify_field("Temperature").is_none());
    }

    #[test]
    fn csv_with_header_and_banner_and_crlf() {
        let text = "INA219 monitor v1.2\r\n\r\nmillis,BusV[V],ShuntV[mV],LoadV[V],Current[mA]\r\n\
                    1000,5.01,3.12,5.01312,312.40\r\n1100,5.00,3.20,5.0032,320.00\r\n";
        let (r, skipped) = parse_text(text, InaOptions::default());
        assert_eq!(skipped, 1, "the banner");
        assert_eq!(r.len(), 2);
        assert!(close(r[0].device_time_s.unwrap(), 1.0));
        assert!(close(r[0].current_a, 0.3124));
        assert!(close(r[0].voltage_v.unwrap(), 5.01), "bus voltage preferred");
        assert!(close(r[1].device_time_s.unwrap(), 1.1));
    }

    #[test]
    fn csv_without_header_uses_default_or_given_mapping() {
        let (r, _) = parse_text("2000,4.98,1.0,4.981,100.5\n", InaOptions::default());
        assert_eq!(r.len(), 1);
        assert!(close(r[0].current_a, 0.1005) && close(r[0].voltage_v.unwrap(), 4.98));
        let opts = InaOptions { columns: Some("t[s],-,I[A],V[V]".into()), ..InaOptions::default() };
        // The separator of headerless rows is taken from the rows themselves.
        let (r, _) = parse_text("1.5;x;0.25;3.3\n", opts.clone());
        assert_eq!(r.len(), 1);
        let (r, skipped) = parse_text("1.5,junk,0.25,3.3\n1.6,junk,0.26,3.3\n", opts);
        assert_eq!((r.len(), skipped), (2, 0));
        assert!(close(r[1].device_time_s.unwrap(), 1.6) && close(r[1].current_a, 0.26));
        // Wrong number of fields for the default mapping: skipped, with a reason that says what to do.
        let mut p = InaParser::new(InaOptions::default());
        assert!(p.push_line("1,2,3").is_none());
        assert!(p.last_problem.as_deref().unwrap().contains("configure the columns"));
    }

    #[test]
    fn tsv_with_header_default_units() {
        let text = "BUS\tSHUNT\tCURRENT\tPOWER\n5.02\t2.50\t250.0\t1255\n5.01\t2.60\t260.0\t1303\n";
        let mut p = InaParser::new(InaOptions::default());
        let r: Vec<InaReading> = text.lines().filter_map(|l| p.push_line(l)).collect();
        assert_eq!(p.format(), Some(InaFormat::TsvHeader));
        assert_eq!(r.len(), 2);
        assert!(close(r[0].current_a, 0.25) && close(r[0].voltage_v.unwrap(), 5.02));
        assert!(close(r[0].power_w.unwrap(), 1.255));
        assert!(r[0].device_time_s.is_none());
        assert!(!p.has_device_time());
    }

    #[test]
    fn key_value_blocks() {
        let text = "Hello!\nMeasuring voltage and current with INA219 ...\n\
                    Bus Voltage:   5.01 V\nShunt Voltage: 3.12 mV\nLoad Voltage:  5.01 V\nCurrent:       312.40 mA\n\
                    Power:         1565 mW\n\nBus Voltage:   4.99 V\nShunt Voltage: 3.50 mV\nCurrent:       350.00 mA\n\
                    Power:         1747 mW\n";
        let mut p = InaParser::new(InaOptions::default());
        let mut r: Vec<InaReading> = text.lines().filter_map(|l| p.push_line(l)).collect();
        r.extend(p.finish());
        assert_eq!(p.format(), Some(InaFormat::KeyValue));
        assert_eq!(r.len(), 2);
        assert!(close(r[0].current_a, 0.3124) && close(r[0].voltage_v.unwrap(), 5.01));
        assert!(close(r[0].power_w.unwrap(), 1.565));
        assert!(close(r[1].current_a, 0.35) && close(r[1].voltage_v.unwrap(), 4.99));
        assert_eq!(p.skipped_lines, 2, "two banner lines");
        // Blocks without blank lines: a repeated key starts a new block.
        let (r, _) =
            parse_text("Current: 1 mA\nBus Voltage: 5 V\nCurrent: 2 mA\nBus Voltage: 5 V\n", InaOptions::default());
        assert_eq!(r.len(), 2);
        assert!(close(r[1].current_a, 0.002));
    }

    #[test]
    fn power_only_and_fixed_voltage() {
        let (r, _) = parse_text("Voltage[V],Power[mW]\n5,1000\n", InaOptions::default());
        assert!(close(r[0].current_a, 0.2), "current derived from power / voltage");
        let opts = InaOptions { voltage: VoltagePick::Fixed(3.3), ..InaOptions::default() };
        let (r, _) = parse_text("Current: 10 mA\n", opts);
        assert!(close(r[0].voltage_v.unwrap(), 3.3));
        let (r, _) = parse_text("Current: 10 mA\n", InaOptions::default());
        assert!(r[0].voltage_v.is_none(), "no voltage anywhere: unknown");
    }
}
