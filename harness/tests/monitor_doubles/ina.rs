//! An INA219/INA226 Arduino sketch double: text lines on a serial port.
//!
//! What real sketches do, reproduced here:
//! - Formats: CSV with the header `millis,BusV[V],ShuntV[mV],LoadV[V],Current[mA]` (or the same
//!   rows without the header), tab-separated `BUS SHUNT CURRENT POWER` (V, mV, mA, mW; no time
//!   column), and the key-value blocks of Adafruit's INA219 `getcurrent` example
//!   (`Bus Voltage:   5.01 V`, ..., `Power:         1565.00 mW`, then an empty line). Lines end
//!   in `\r\n` (`Serial.println`); numbers are printed as `Serial.print(float, digits)` does
//!   (2 decimals by default; bus voltage with 3 in the CSV and TSV sketches).
//! - Pacing by `millis()`: reading `j` is taken the moment `millis()` reaches
//!   `m0 + j x period_ms` and printed with that value (CSV); `millis()` runs fast or slow by
//!   `millis_ppm` (a ceramic resonator is off by thousands of ppm) and starts at a random value.
//! - Auto-reset on open (an Uno's DTR): when the host opens the port the sketch boots after
//!   `boot_ms`, prints its banner and header, then streams; closing the port stops it.
//! - Burst delivery (USB CDC or an FTDI latency timer): everything printed in the last
//!   `burst_ms` is written at once.
//!
//! Ground truth: every reading's true host time, its printed values, and the continuous load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{lock, now_ns, PtyMaster, SmoothLoad, Worker};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InaFormat {
    CsvHeader,
    CsvHeaderless,
    Tsv,
    KeyValue,
}

impl InaFormat {
    /// Whether readings carry the device's `millis()`.
    pub fn has_device_time(self) -> bool {
        matches!(self, InaFormat::CsvHeader | InaFormat::CsvHeaderless)
    }
}

#[derive(Clone, Debug)]
pub struct InaConfig {
    pub format: InaFormat,
    /// Readings per second of the device's own clock.
    pub rate_hz: f64,
    pub burst_ms: f64,
    pub burst_jitter_ms: f64,
    /// `millis()` error: positive = fast (advances more than 1 ms per true ms).
    pub millis_ppm: f64,
    pub boot_ms: u64,
    pub load: SmoothLoad,
    pub seed: u64,
}

impl Default for InaConfig {
    fn default() -> Self {
        Self {
            format: InaFormat::CsvHeader,
            rate_hz: 10.0,
            burst_ms: 250.0,
            burst_jitter_ms: 10.0,
            millis_ppm: 0.0,
            boot_ms: 80,
            load: SmoothLoad::default(),
            seed: 219,
        }
    }
}

/// One printed reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InaLine {
    /// True host time of the measurement, ns.
    pub t_ns: f64,
    pub millis: u64,
    /// The values as printed (parsed back from the text).
    pub current_a: f64,
    pub bus_v: f64,
    /// The load's true power at `t_ns`.
    pub power_w: f64,
    pub boot: u32,
}

#[derive(Clone, Debug, Default)]
pub struct InaTruth {
    pub load: Option<SmoothLoad>,
    pub lines: Vec<InaLine>,
    /// `(true host ns, millis())` at each boot.
    pub boots: Vec<(u64, u64)>,
    pub bursts: u64,
    pub max_burst_lines: usize,
    /// `(host ns the burst was written, true time of its newest reading)` per burst with readings.
    pub burst_times: Vec<(u64, f64)>,
}

impl InaTruth {
    /// Exact energy of the load over `[a, b]` (ns).
    pub fn energy_j(&self, a_ns: f64, b_ns: f64) -> f64 {
        self.load.expect("load").energy_j(a_ns, b_ns)
    }

    /// How well arrivals can pin the sketch's clock by host time `until_ns`: the smallest delay
    /// from a reading to the write of the burst carrying it, over the bursts written by then (the
    /// host cannot know a reading's time better than that from arrivals alone).
    pub fn offset_bound_ns(&self, until_ns: f64) -> f64 {
        self.burst_times
            .iter()
            .filter(|(w, _)| (*w as f64) <= until_ns)
            .map(|(w, t)| *w as f64 - t)
            .fold(f64::INFINITY, f64::min)
    }

    /// Readings truly taken in `[a, b)`.
    /// The energy a perfect integrator gets from the printed readings at their true times: the
    /// trapezoid between readings, interpolated at the window's edges. What a monitor this slow can
    /// give at best; the rest of the error against [`InaTruth::energy_j`] is sampling, not placement.
    pub fn sampled_energy_j(&self, a_ns: f64, b_ns: f64) -> Option<f64> {
        let pts: Vec<(f64, f64)> = self.lines.iter().map(|l| (l.t_ns, l.current_a * l.bus_v)).collect();
        let at = |t: f64| -> Option<f64> {
            let i = pts.partition_point(|p| p.0 <= t);
            let (p0, p1) = (pts.get(i.checked_sub(1)?)?, pts.get(i)?);
            Some(p0.1 + (p1.1 - p0.1) * (t - p0.0) / (p1.0 - p0.0))
        };
        let mut knots = vec![(a_ns, at(a_ns)?)];
        knots.extend(pts.iter().copied().filter(|p| p.0 > a_ns && p.0 < b_ns));
        knots.push((b_ns, at(b_ns)?));
        Some(knots.windows(2).map(|w| (w[1].0 - w[0].0) * 1e-9 * (w[0].1 + w[1].1) / 2.0).sum())
    }

    pub fn lines_in(&self, a_ns: f64, b_ns: f64) -> Vec<InaLine> {
        self.lines.iter().filter(|l| l.t_ns >= a_ns && l.t_ns < b_ns).copied().collect()
    }

    /// The reading whose true time is nearest `t_ns`.
    pub fn nearest_line(&self, t_ns: f64) -> Option<InaLine> {
        let i = self.lines.partition_point(|l| l.t_ns < t_ns);
        [i.checked_sub(1), Some(i)]
            .into_iter()
            .flatten()
            .filter_map(|i| self.lines.get(i))
            .min_by(|a, b| (a.t_ns - t_ns).abs().total_cmp(&(b.t_ns - t_ns).abs()))
            .copied()
    }
}

#[derive(Debug)]
pub struct InaDouble {
    path: PathBuf,
    truth: Arc<Mutex<InaTruth>>,
    worker: Worker,
}

impl InaDouble {
    pub fn spawn(config: InaConfig) -> Self {
        let pty = PtyMaster::open().expect("opening a pty for the INA double");
        let path = pty.path().to_path_buf();
        let truth = Arc::new(Mutex::new(InaTruth { load: Some(config.load), ..InaTruth::default() }));
        let shared = truth.clone();
        let worker = Worker::spawn("ina-double", move |stop| sketch(config, pty, shared, stop));
        Self { path, truth, worker }
    }

    pub fn port(&self) -> &Path {
        &self.path
    }

    pub fn truth(&self) -> InaTruth {
        lock(&self.truth).clone()
    }

    pub fn shutdown(mut self) -> InaTruth {
        self.worker.finish();
        lock(&self.truth).clone()
    }
}

fn round_to(v: f64, digits: usize) -> f64 {
    format!("{v:.digits$}").parse().expect("a printed number parses")
}

/// The text of one reading and the printed current and bus voltage.
fn reading_text(format: InaFormat, load: &SmoothLoad, t_ns: f64, millis: u64) -> (String, f64, f64) {
    let bus = load.voltage_v(t_ns);
    let current = load.current_a(t_ns);
    let shunt_mv = current * load.shunt_ohm * 1e3;
    let load_v = bus + shunt_mv * 1e-3;
    let (ma, mw) = (current * 1e3, bus * current * 1e3);
    match format {
        InaFormat::CsvHeader | InaFormat::CsvHeaderless => (
            format!("{millis},{bus:.3},{shunt_mv:.2},{load_v:.3},{ma:.2}\r\n"),
            round_to(ma, 2) * 1e-3,
            round_to(bus, 3),
        ),
        InaFormat::Tsv => {
            (format!("{bus:.3}\t{shunt_mv:.2}\t{ma:.2}\t{mw:.2}\r\n"), round_to(ma, 2) * 1e-3, round_to(bus, 3))
        }
        InaFormat::KeyValue => (
            format!(
                "Bus Voltage:   {bus:.2} V\r\nShunt Voltage: {shunt_mv:.2} mV\r\nLoad Voltage:  {load_v:.2} V\r\n\
                 Current:       {ma:.2} mA\r\nPower:         {mw:.2} mW\r\n\r\n"
            ),
            round_to(ma, 2) * 1e-3,
            round_to(bus, 2),
        ),
    }
}

fn banner(format: InaFormat) -> &'static str {
    match format {
        InaFormat::CsvHeader => "INA219 ready\r\nmillis,BusV[V],ShuntV[mV],LoadV[V],Current[mA]\r\n",
        InaFormat::CsvHeaderless => "INA219 ready\r\n",
        InaFormat::Tsv => "INA226 monitor v1.2\r\nBUS\tSHUNT\tCURRENT\tPOWER\r\n",
        InaFormat::KeyValue => "Hello!\r\nMeasuring voltage and current with INA219 ...\r\n",
    }
}

struct Running {
    boot: u32,
    t_ref_ns: u64,
    m_ref: u64,
    next_j: u64,
    next_burst_ns: f64,
}

fn sketch(cfg: InaConfig, pty: PtyMaster, truth: Arc<Mutex<InaTruth>>, stop: &AtomicBool) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let period_ms = (1000.0 / cfg.rate_hz).round().max(1.0) as u64;
    let true_ms = 1e6 / (1.0 + cfg.millis_ppm * 1e-6); // true ns per millis() tick
    let mut boot_at: Option<u64> = None;
    let mut run: Option<Running> = None;
    let mut boots = 0u32;
    let mut out = String::new();
    let mut out_lines = 0usize;
    let mut newest: Option<f64> = None;
    let mut sink = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        // The sketch ignores input; reading it is this loop's sleep.
        pty.read(&mut sink, Duration::from_millis(2));
        let now = now_ns();
        if !pty.host_open() {
            (boot_at, run) = (None, None);
            newest = None;
            out.clear();
            out_lines = 0;
            continue;
        }
        if run.is_none() && boot_at.is_none() {
            boot_at = Some(now + cfg.boot_ms * 1_000_000);
        }
        if let Some(at) = boot_at.filter(|&at| now >= at) {
            boot_at = None;
            boots += 1;
            let m_ref = rng.random_range(1_000_000..40_000_000u64);
            lock(&truth).boots.push((at, m_ref));
            out.push_str(banner(cfg.format));
            let first_burst = at as f64 + rng.random_range(0.0..cfg.burst_ms) * 1e6;
            run = Some(Running { boot: boots, t_ref_ns: at, m_ref, next_j: 1, next_burst_ns: first_burst });
        }
        let Some(r) = run.as_mut() else { continue };
        loop {
            let t = r.t_ref_ns as f64 + (r.next_j * period_ms) as f64 * true_ms;
            if t > now as f64 {
                break;
            }
            let millis = r.m_ref + r.next_j * period_ms;
            let (text, current_a, bus_v) = reading_text(cfg.format, &cfg.load, t, millis);
            out.push_str(&text);
            out_lines += 1;
            let power_w = cfg.load.power_w(t);
            lock(&truth).lines.push(InaLine { t_ns: t, millis, current_a, bus_v, power_w, boot: r.boot });
            newest = Some(t);
            r.next_j += 1;
        }
        if now as f64 >= r.next_burst_ns {
            if !out.is_empty() {
                pty.write_all(out.as_bytes(), Duration::from_millis(100));
                let written = now_ns();
                let mut t = lock(&truth);
                t.bursts += 1;
                t.max_burst_lines = t.max_burst_lines.max(out_lines);
                if let Some(newest) = newest.take() {
                    t.burst_times.push((written, newest));
                }
            }
            out.clear();
            out_lines = 0;
            let jitter = rng.random_range(-cfg.burst_jitter_ms..=cfg.burst_jitter_ms);
            r.next_burst_ns += (cfg.burst_ms + jitter).max(1.0) * 1e6;
        }
    }
}
