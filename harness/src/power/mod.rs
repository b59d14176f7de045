//! Power monitors: one trait, one driver per instrument, all over a serial byte stream.
//!
//! How the pieces fit:
//! - [`PowerMonitor`] is the boundary the runner and `hil monitor` talk to: [`PowerMonitor::identify`],
//!   [`PowerMonitor::start`], [`PowerMonitor::read`] (timestamped [`Sample`]s plus lost-sample counts),
//!   [`PowerMonitor::stop`]. Optional capabilities (a source meter that can set its output voltage) are
//!   default methods that answer "absent", as probe-rs does for its probes.
//! - Drivers are generic over their byte stream (`P: Read + Write`), so the same code runs on a USB
//!   serial port, a pseudo-terminal (the PPK2 emulator in [`crate::sim::ppk2_emulator`]) and a byte
//!   buffer in a unit test: [`ppk2::Ppk2`] (Nordic Power Profiler Kit II, binary protocol at 100 kS/s),
//!   [`ina::InaMonitor`] (INA219/INA226 Arduino sketches printing text), [`scpi::ScpiMonitor`] (bench
//!   meters and supplies polled with SCPI queries).
//! - [`detect`] finds a PPK2 through `/sys` (no libudev); [`open_monitor`] turns a kind, a port and
//!   options into a boxed driver (a port of `tcp://HOST:PORT` or `rfc2217://HOST:PORT` is a serial port
//!   served over the network, see [`net`]); [`summarize`] reduces a recording to the figures `hil monitor` prints.
//!
//! Time: every [`Sample::t_ns`] is on the host's `CLOCK_MONOTONIC` (the clock [`host_monotonic_ns`]
//! reads, the same the agent uses on a local board), but *placed by the monitor's own clock* where the
//! monitor has one: a streaming instrument's sample `k` sits at `origin + k x period`, where `origin` is
//! when the stream was started, never at the time its bytes happened to arrive (USB and the OS deliver
//! them in bursts). Polled instruments without a clock use the host receive time; a device timestamp
//! column is used when the sketch prints one.

pub mod detect;
pub mod ina;
pub mod net;
pub mod ppk2;
pub mod scpi;

use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What kind of failure a monitor hit, so generic code can decide retry-or-abort without downcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorErrorKind {
    /// The instrument did not answer in time (a query, the metadata, the first samples).
    Timeout,
    /// The instrument answered something this driver cannot understand.
    Protocol,
    /// The port went away: unplugged USB, a closed pseudo-terminal, end of stream.
    Disconnected,
    /// Any other I/O problem (permission denied, no such port, ...).
    Io,
    /// The options asked for something the driver cannot do (a voltage out of range, a bad mapping).
    Config,
}

impl MonitorErrorKind {
    /// Whether reopening the port and trying again may help.
    pub fn is_retryable(self) -> bool {
        matches!(self, MonitorErrorKind::Timeout | MonitorErrorKind::Disconnected)
    }
}

/// A monitor failure naming the port and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("power monitor on {port}: {what}: {detail}")]
pub struct MonitorError {
    pub kind: MonitorErrorKind,
    /// The serial port path (or a description of the byte stream).
    pub port: String,
    /// What was being attempted, e.g. `reading metadata (GET_META_DATA 0x19)` or `query "MEAS:CURR?"`.
    pub what: String,
    pub detail: String,
}

impl MonitorError {
    pub fn new(
        kind: MonitorErrorKind,
        port: impl Into<String>,
        what: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self { kind, port: port.into(), what: what.into(), detail: detail.into() }
    }

    /// Classifies an I/O error from a serial port or pseudo-terminal.
    ///
    /// A closed pseudo-terminal shows up as `POLLHUP` (serialport reports `BrokenPipe`), as `EIO` on the
    /// read itself, or as a zero-length read; an unplugged USB CDC device as `EIO`/`ENXIO`/`ENODEV`.
    /// All of these are [`MonitorErrorKind::Disconnected`].
    pub fn from_io(port: &str, what: &str, err: &io::Error) -> Self {
        Self::new(classify_io_error(err), port, what, err.to_string())
    }

    /// `true` when reopening and retrying may help.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

/// Maps an I/O error to the kind the runner acts on (see [`MonitorError::from_io`]).
pub fn classify_io_error(err: &io::Error) -> MonitorErrorKind {
    use io::ErrorKind as K;
    match err.kind() {
        K::TimedOut | K::WouldBlock => return MonitorErrorKind::Timeout,
        K::BrokenPipe | K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::NotConnected => {
            return MonitorErrorKind::Disconnected
        }
        _ => {}
    }
    if let Some(code) = err.raw_os_error() {
        if code == libc::EIO || code == libc::ENXIO || code == libc::ENODEV {
            return MonitorErrorKind::Disconnected;
        }
    }
    // serialport turns errno values it has no mapping for into `Other` with the errno's description and
    // no raw code, so EIO from a read on a hung-up tty arrives as text.
    let text = err.to_string();
    if text.contains("Input/output error") || text.contains("No such device") {
        return MonitorErrorKind::Disconnected;
    }
    MonitorErrorKind::Io
}

pub use crate::samples::{LostRun, Sample};

/// Where a monitor's timestamps come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleClock {
    /// Sample index x period from the stream start (the monitor's own crystal).
    StreamIndex,
    /// A time column printed by the device, anchored to the host clock at the first reading.
    DeviceColumn,
    /// Lines counted by the host, their times reconstructed from the fitted print rate (a sketch that
    /// prints no time column).
    LineCount,
    /// The host's monotonic clock halfway between a query and its answer (polled instruments without
    /// a clock).
    HostReceive,
}

/// What an instrument says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorInfo {
    /// e.g. `Nordic PPK2`, `PPK2 (simulated)`, `INA219/INA226 text`, or the SCPI `*IDN?` model.
    pub model: String,
    /// Serial number where the instrument reports one.
    pub serial: Option<String>,
    /// Other identification (hardware revision, firmware, `*IDN?` fields, the detected text format).
    pub metadata: Vec<(String, String)>,
    /// Calibration values in effect (PPK2: the per-range modifiers actually used for decoding).
    pub calibration: Vec<(String, String)>,
    /// Nominal sample rate; `None` for polled instruments whose rate is set by the sketch.
    pub sample_rate_hz: Option<f64>,
    pub clock: SampleClock,
    /// `true` for the PPK2 emulator of the simulated board: every report must say so.
    pub simulated: bool,
    /// The port it was opened on.
    pub port: String,
}

/// What one [`PowerMonitor::read`] call produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    /// Samples appended to the caller's vector.
    pub samples: usize,
    /// Samples the instrument produced that never reached us (detected from its sequence counter).
    pub lost: u64,
}

/// Optional capability: an instrument that also powers the board (PPK2 in source-meter mode).
pub trait SourceMeter {
    /// Sets the output voltage in millivolts.
    fn set_supply_mv(&mut self, mv: u32) -> Result<(), MonitorError>;
    /// Switches the board's supply on or off.
    fn set_board_power(&mut self, on: bool) -> Result<(), MonitorError>;
}

/// A power monitor driver. See the module docs for the time base of samples.
pub trait PowerMonitor: Send {
    /// Identity, metadata, calibration and sample rate. Cheap after the first call.
    fn identify(&mut self) -> Result<MonitorInfo, MonitorError>;

    /// Starts a measurement stream; resets the time origin, lost-sample counters and filters.
    fn start(&mut self) -> Result<(), MonitorError>;

    /// Appends the samples that arrived to `out`, waiting up to `max_wait` when none have yet.
    /// Returns how many were appended and how many were lost since the previous call.
    fn read(&mut self, out: &mut Vec<Sample>, max_wait: Duration) -> Result<ReadOutcome, MonitorError>;

    /// Stops the stream (samples still in flight are discarded).
    fn stop(&mut self) -> Result<(), MonitorError>;

    /// Samples lost since [`PowerMonitor::start`].
    fn lost_samples(&self) -> u64 {
        0
    }

    /// Runs of lost samples found since the last call, with their place in time (see [`LostRun`]).
    /// Their count is also in [`ReadOutcome::lost`].
    fn take_lost_runs(&mut self) -> Vec<LostRun> {
        Vec::new()
    }

    /// The current fit of the monitor's own clock to the host clock, for monitors that have one
    /// ([`crate::clock_fit`]): samples carry their clock reading and can be placed again with it.
    fn clock_fit(&self) -> Option<crate::clock_fit::ClockLine> {
        None
    }

    /// The source-meter capability, when the instrument has one.
    fn as_source_meter(&mut self) -> Option<&mut dyn SourceMeter> {
        None
    }
}

/// Everything read during [`record`].
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub samples: Vec<Sample>,
    pub lost: u64,
    /// Wall time spent reading.
    pub elapsed: Duration,
}

/// Starts `monitor`, reads for `duration`, stops it. The monitor must already be identified/opened.
pub fn record(monitor: &mut dyn PowerMonitor, duration: Duration) -> Result<Recording, MonitorError> {
    monitor.start()?;
    let begin = Instant::now();
    let mut rec = Recording::default();
    let result = (|| {
        while begin.elapsed() < duration {
            let left = duration.saturating_sub(begin.elapsed());
            let outcome = monitor.read(&mut rec.samples, left.min(Duration::from_millis(100)))?;
            rec.lost += outcome.lost;
        }
        Ok(())
    })();
    rec.elapsed = begin.elapsed();
    // One consistent placement for the whole recording: the clock fit as it stands at the end.
    if let Some(fit) = monitor.clock_fit() {
        crate::samples::place_samples(&mut rec.samples, &fit);
    }
    let stopped = monitor.stop();
    result?;
    stopped?;
    Ok(rec)
}

/// The host's `CLOCK_MONOTONIC` in nanoseconds: the time base of every [`Sample`] and of the agent's
/// windows on a local (simulated) board.
/// The same clock the agent reads, so a local board's windows need no offset.
pub fn host_monotonic_ns() -> u64 {
    device_agent::platform::monotonic_ns()
}

// ---------------------------------------------------------------------------------------------------
// Opening monitors
// ---------------------------------------------------------------------------------------------------

/// Which driver to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorKind {
    Ppk2,
    Ina,
    Scpi,
}

impl std::str::FromStr for MonitorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ppk2" => Ok(MonitorKind::Ppk2),
            "ina" | "ina219" | "ina226" => Ok(MonitorKind::Ina),
            "scpi" => Ok(MonitorKind::Scpi),
            other => Err(format!("unknown monitor kind {other:?} (expected ppk2, ina or scpi)")),
        }
    }
}

impl fmt::Display for MonitorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MonitorKind::Ppk2 => "ppk2",
            MonitorKind::Ina => "ina",
            MonitorKind::Scpi => "scpi",
        })
    }
}

/// Options for [`open_monitor`]; each driver reads its own part.
#[derive(Clone, Debug, Default)]
pub struct MonitorOptions {
    /// Overrides the driver's default baud rate (PPK2 ignores it: USB CDC has no real baud rate).
    pub baud: Option<u32>,
    pub ppk2: ppk2::Ppk2Options,
    pub ina: ina::InaOptions,
    pub scpi: scpi::ScpiOptions,
}

/// The port name that asks [`open_monitor`] to find a PPK2 by USB ID (see [`detect`]).
pub const AUTO_PORT: &str = "auto";

/// Opens a monitor of `kind` on `port` (a device path, [`AUTO_PORT`] for a PPK2, or a network port
/// `tcp://HOST:PORT` / `rfc2217://HOST:PORT`) and identifies it.
pub fn open_monitor(
    kind: MonitorKind,
    port: &str,
    options: &MonitorOptions,
) -> Result<Box<dyn PowerMonitor>, MonitorError> {
    if let Some(address) = net::NetAddress::parse(port)
        .map_err(|e| MonitorError::new(MonitorErrorKind::Config, port, "parsing the port", e))?
    {
        return open_network_monitor(kind, &address, options);
    }
    match kind {
        MonitorKind::Ppk2 => {
            let mut monitor = if port == AUTO_PORT {
                ppk2::Ppk2::open_auto(std::path::Path::new(detect::SYSFS_ROOT), &options.ppk2)?
            } else {
                ppk2::Ppk2::open(port, &options.ppk2)?
            };
            monitor.identify()?;
            Ok(Box::new(monitor))
        }
        MonitorKind::Ina => {
            let baud = options.baud.unwrap_or(ina::DEFAULT_BAUD);
            let mut monitor = ina::InaMonitor::open(port, baud, options.ina.clone())?;
            monitor.identify()?;
            Ok(Box::new(monitor))
        }
        MonitorKind::Scpi => {
            let mut scpi = options.scpi.clone();
            if let Some(baud) = options.baud {
                scpi.baud = baud;
            }
            let mut monitor = scpi::ScpiMonitor::open(port, scpi)?;
            monitor.identify()?;
            Ok(Box::new(monitor))
        }
    }
}

/// [`open_monitor`] for a serial port served over the network: the same drivers over a [`net::NetPort`].
fn open_network_monitor(
    kind: MonitorKind,
    address: &net::NetAddress,
    options: &MonitorOptions,
) -> Result<Box<dyn PowerMonitor>, MonitorError> {
    let name = address.to_string();
    // The line settings an RFC 2217 server applies to the real port: each driver's own baud rate.
    let (baud, read_timeout) = match kind {
        MonitorKind::Ppk2 => (ppk2::BAUD, options.ppk2.read_timeout),
        MonitorKind::Ina => (options.baud.unwrap_or(ina::DEFAULT_BAUD), options.ina.read_timeout),
        MonitorKind::Scpi => (options.baud.unwrap_or(options.scpi.baud), Duration::from_millis(20)),
    };
    // A server may also drop a raw TCP connection (which has no negotiation) once the driver
    // starts talking: a connection lost before the instrument answered is another dropped one.
    let identified = |stream| -> Result<Box<dyn PowerMonitor>, MonitorError> {
        match kind {
            MonitorKind::Ppk2 => {
                let mut monitor = ppk2::Ppk2::new(stream, name.clone(), options.ppk2.clone());
                monitor.connect()?;
                monitor.identify()?;
                Ok(Box::new(monitor))
            }
            MonitorKind::Ina => {
                let mut monitor = ina::InaMonitor::new(stream, name.clone(), options.ina.clone());
                monitor.identify()?;
                Ok(Box::new(monitor))
            }
            MonitorKind::Scpi => {
                let mut scpi = options.scpi.clone();
                scpi.baud = baud;
                let mut monitor = scpi::ScpiMonitor::new(stream, name.clone(), scpi);
                monitor.identify()?;
                Ok(Box::new(monitor))
            }
        }
    };
    with_dropped_retries(|| {
        let stream = open_net_port_once(address, baud, read_timeout)?;
        identified(stream).map_err(|e| match e.kind {
            MonitorErrorKind::Disconnected => Attempt::Dropped(e),
            _ => Attempt::Final(e),
        })
    })
}

/// Connects to a network serial port (for RFC 2217: 8N1 at `baud`), classifying failures like a
/// serial port's: refused/reset/unreachable are `Disconnected` (an exporter restarting), so the runner
/// retries them.
///
/// A connection the server accepts and then drops at once (reset, or closed during negotiation) is
/// tried again, up to [`net::DROPPED_CONNECTION_ATTEMPTS`] times (see [`with_dropped_retries`]).
pub fn open_net_port(
    address: &net::NetAddress,
    baud: u32,
    read_timeout: Duration,
) -> Result<net::NetPort, MonitorError> {
    with_dropped_retries(|| open_net_port_once(address, baud, read_timeout))
}

/// Why one attempt at a network monitor failed: `Dropped` when the server accepted the connection
/// and then dropped it (worth another attempt), `Final` otherwise.
enum Attempt {
    Dropped(MonitorError),
    Final(MonitorError),
}

/// Runs `attempt` until it succeeds, fails with [`Attempt::Final`], or has been dropped
/// [`net::DROPPED_CONNECTION_ATTEMPTS`] times, pausing [`net::DROPPED_CONNECTION_PAUSE`] (doubled
/// each time) in between (why a server drops a connection: see those constants). In a lab the
/// previous client is often our own (`hil monitor` then `hil run`, or a monitor reopened after an
/// error). A refused connection is final here: nobody
/// is listening, and the runner's reconnection loop waits for an exporter to come back.
fn with_dropped_retries<T>(mut attempt: impl FnMut() -> Result<T, Attempt>) -> Result<T, MonitorError> {
    let mut pause = net::DROPPED_CONNECTION_PAUSE;
    let mut n = 1;
    loop {
        let error = match attempt() {
            Ok(value) => return Ok(value),
            Err(Attempt::Dropped(_)) if n < net::DROPPED_CONNECTION_ATTEMPTS => {
                std::thread::sleep(pause);
                pause *= 2;
                n += 1;
                continue;
            }
            Err(Attempt::Dropped(e) | Attempt::Final(e)) => e,
        };
        return Err(match n {
            1 => error,
            n => MonitorError {
                detail: format!(
                    "{} (attempt {n} of at most {}; the server accepted and at once dropped each of the {} before)",
                    error.detail,
                    net::DROPPED_CONNECTION_ATTEMPTS,
                    n - 1
                ),
                ..error
            },
        });
    }
}

/// One attempt at [`open_net_port`].
fn open_net_port_once(address: &net::NetAddress, baud: u32, read_timeout: Duration) -> Result<net::NetPort, Attempt> {
    let what = match address.protocol {
        net::NetProtocol::Raw => "connecting (raw TCP)".to_string(),
        net::NetProtocol::Rfc2217 => format!("connecting and setting {baud} 8N1 (RFC 2217)"),
    };
    net::NetPort::open(address, &net::LineSettings::n81(baud), net::CONNECT_TIMEOUT, read_timeout).map_err(|e| {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                MonitorErrorKind::Disconnected
            }
            io::ErrorKind::Unsupported | io::ErrorKind::InvalidData => MonitorErrorKind::Protocol,
            _ => classify_io_error(&e),
        };
        let error = MonitorError::new(kind, address.to_string(), what, e.to_string());
        let dropped = matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
        );
        if dropped {
            Attempt::Dropped(error)
        } else {
            Attempt::Final(error)
        }
    })
}

/// Opens a serial port for a driver, with a short read timeout so reads poll.
///
/// Pseudo-terminals (`/dev/pts/N`, the PPK2 emulator and test responders) are opened non-exclusively:
/// their other end keeps the slave open, so the `TIOCEXCL` flag serialport sets would outlive our close
/// and make a reconnect fail with `EBUSY`. Real USB ports are opened exclusively.
pub fn open_serial(path: &str, baud: u32, read_timeout: Duration) -> Result<serialport::TTYPort, MonitorError> {
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| std::path::PathBuf::from(path));
    let is_pty = resolved.starts_with("/dev/pts");
    serialport::new(path, baud).timeout(read_timeout).exclusive(!is_pty).open_native().map_err(|e| {
        let kind = match e.kind() {
            serialport::ErrorKind::NoDevice => MonitorErrorKind::Disconnected,
            serialport::ErrorKind::Io(io::ErrorKind::NotFound) => MonitorErrorKind::Disconnected,
            _ => MonitorErrorKind::Io,
        };
        MonitorError::new(kind, path, format!("opening serial port at {baud} baud"), e.to_string())
    })
}

/// A `Read + Write` byte stream with the name of the port it is on, for error messages.
#[derive(Debug)]
pub(crate) struct NamedPort<P> {
    pub(crate) port: P,
    pub(crate) name: String,
}

impl<P: Read + Write> NamedPort<P> {
    pub(crate) fn new(port: P, name: impl Into<String>) -> Self {
        Self { port, name: name.into() }
    }

    /// Writes all of `bytes`, naming `what` in the error.
    pub(crate) fn send(&mut self, bytes: &[u8], what: &str) -> Result<(), MonitorError> {
        self.port
            .write_all(bytes)
            .and_then(|_| self.port.flush())
            .map_err(|e| MonitorError::from_io(&self.name, what, &e))
    }

    /// One read; `Ok(0)` means "nothing within the port's timeout". End of stream is `Disconnected`.
    pub(crate) fn read_some(&mut self, buf: &mut [u8], what: &str) -> Result<usize, MonitorError> {
        match self.port.read(buf) {
            Ok(0) => Err(MonitorError::new(
                MonitorErrorKind::Disconnected,
                &self.name,
                what,
                "end of stream (the port was closed)",
            )),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => {
                let err = MonitorError::from_io(&self.name, what, &e);
                if err.kind == MonitorErrorKind::Timeout {
                    Ok(0)
                } else {
                    Err(err)
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Summary for `hil monitor`
// ---------------------------------------------------------------------------------------------------

/// Mean, minimum and maximum of one quantity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(values: impl Iterator<Item = f64>) -> Option<Stat> {
        let (mut n, mut sum, mut min, mut max) = (0usize, 0.0, f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite()) {
            n += 1;
            sum += v;
            min = min.min(v);
            max = max.max(v);
        }
        (n > 0).then(|| Stat { mean: sum / n as f64, min, max })
    }
}

/// What `hil monitor` prints: the first thing a user runs when wiring a bench.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonitorSummary {
    pub samples: usize,
    /// Wall time of the recording, seconds.
    pub duration_s: f64,
    /// Samples per second of wall time.
    pub sample_rate_hz: f64,
    pub lost_samples: u64,
    /// Lost / (received + lost).
    pub lost_fraction: f64,
    pub current_a: Option<Stat>,
    pub voltage_v: Option<Stat>,
    pub power_w: Option<Stat>,
    /// Trapezoid integral of power over the samples' own timestamps; `None` with fewer than two samples
    /// or an unknown voltage.
    pub energy_j: Option<f64>,
}

/// Reduces a recording to counts, rates and mean/min/max current, voltage, power and energy.
pub fn summarize(samples: &[Sample], lost: u64, duration: Duration) -> MonitorSummary {
    let duration_s = duration.as_secs_f64();
    let total = samples.len() as u64 + lost;
    let energy_j = if samples.len() >= 2 && samples.iter().all(|s| s.power_w().is_finite()) {
        Some(crate::energy::trapezoid_energy_j(samples))
    } else {
        None
    };
    MonitorSummary {
        samples: samples.len(),
        duration_s,
        sample_rate_hz: if duration_s > 0.0 { samples.len() as f64 / duration_s } else { 0.0 },
        lost_samples: lost,
        lost_fraction: if total > 0 { lost as f64 / total as f64 } else { 0.0 },
        current_a: Stat::of(samples.iter().map(|s| s.current_a)),
        voltage_v: Stat::of(samples.iter().map(|s| s.voltage_v)),
        power_w: Stat::of(samples.iter().map(|s| s.power_w())),
        energy_j,
    }
}

impl fmt::Display for MonitorSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "samples      {} in {:.3} s ({:.1} S/s)", self.samples, self.duration_s, self.sample_rate_hz)?;
        writeln!(f, "lost         {} ({:.4} %)", self.lost_samples, self.lost_fraction * 100.0)?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, unit: &str, scale: f64, stat: Option<Stat>| match stat {
            Some(s) => writeln!(
                f,
                "{name:<12} mean {:>10.4} {unit}  min {:>10.4} {unit}  max {:>10.4} {unit}",
                s.mean * scale,
                s.min * scale,
                s.max * scale
            ),
            None => writeln!(f, "{name:<12} unknown"),
        };
        row(f, "current", "mA", 1e3, self.current_a)?;
        row(f, "voltage", "V", 1.0, self.voltage_v)?;
        row(f, "power", "mW", 1e3, self.power_w)?;
        match self.energy_j {
            Some(e) => write!(f, "energy       {e:.6} J"),
            None => write!(f, "energy       unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_ns: u64, current_a: f64, voltage_v: f64) -> Sample {
        Sample::at(t_ns, current_a, voltage_v)
    }

    #[test]
    fn summary_of_constant_power() {
        let samples: Vec<Sample> = (0..=1000).map(|k| s(k * 1_000_000, 0.2, 5.0)).collect();
        let sum = summarize(&samples, 10, Duration::from_secs(1));
        assert_eq!(sum.samples, 1001);
        assert_eq!(sum.lost_samples, 10);
        let p = sum.power_w.unwrap();
        assert!((p.mean - 1.0).abs() < 1e-12 && (p.min - 1.0).abs() < 1e-12);
        // 1 W for exactly 1 s of sample timeline.
        assert!((sum.energy_j.unwrap() - 1.0).abs() < 1e-9, "{:?}", sum.energy_j);
        let text = sum.to_string();
        assert!(text.contains("lost         10"), "{text}");
        let json = serde_json::to_value(&sum).unwrap();
        assert_eq!(json["samples"], 1001);
    }

    #[test]
    fn summary_with_unknown_voltage_has_no_energy() {
        let samples = vec![s(0, 0.1, f64::NAN), s(10, 0.1, f64::NAN)];
        let sum = summarize(&samples, 0, Duration::from_millis(1));
        assert!(sum.energy_j.is_none() && sum.voltage_v.is_none() && sum.power_w.is_none());
        assert!(sum.current_a.is_some());
        assert!(sum.to_string().contains("energy       unknown"));
    }

    #[test]
    fn summary_of_nothing() {
        let sum = summarize(&[], 0, Duration::ZERO);
        assert_eq!(sum.samples, 0);
        assert_eq!(sum.sample_rate_hz, 0.0);
        assert!(sum.current_a.is_none());
    }

    #[test]
    fn io_errors_classified() {
        let k = |e: io::Error| classify_io_error(&e);
        assert_eq!(k(io::Error::new(io::ErrorKind::BrokenPipe, "x")), MonitorErrorKind::Disconnected);
        assert_eq!(k(io::Error::from_raw_os_error(libc::EIO)), MonitorErrorKind::Disconnected);
        assert_eq!(k(io::Error::other("Input/output error")), MonitorErrorKind::Disconnected);
        assert_eq!(k(io::Error::new(io::ErrorKind::TimedOut, "x")), MonitorErrorKind::Timeout);
        assert_eq!(k(io::Error::new(io::ErrorKind::PermissionDenied, "x")), MonitorErrorKind::Io);
        assert!(MonitorErrorKind::Disconnected.is_retryable());
        assert!(!MonitorErrorKind::Protocol.is_retryable());
    }

    /// A stand-in for ser2net's RFC 2217 accepter that, like ser2net catching a client while it is
    /// still closing the port for the previous one, writes "port is shutting down" to the first
    /// `drop_first` connections and frees them unread (the kernel then resets them), and serves the
    /// next one properly: agrees to every option and echoes each COM-PORT setting (+100).
    fn flaky_rfc2217_server(drop_first: usize) -> (u16, std::thread::JoinHandle<usize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut accepted = 0;
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                accepted += 1;
                if accepted <= drop_first {
                    // Let the client's negotiation arrive first, so the close leaves it unread.
                    std::thread::sleep(Duration::from_millis(30));
                    let _ = stream.write_all(b"port is shutting down\r\n");
                    continue; // dropped here
                }
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut decoder = net::TelnetDecoder::new();
                let (mut data, mut events, mut answered) = (Vec::new(), Vec::new(), 0);
                let mut buf = [0u8; 1024];
                while answered < 5 {
                    let n = stream.read(&mut buf).unwrap();
                    assert!(n > 0, "the client hung up during negotiation");
                    decoder.feed(&buf[..n], &mut data, &mut events);
                    let mut reply = Vec::new();
                    for event in events.drain(..) {
                        match event {
                            net::TelnetEvent::Negotiation { verb, option } => {
                                let agree = if verb == net::WILL { net::DO } else { net::WILL };
                                if verb == net::WILL || verb == net::DO {
                                    reply.extend_from_slice(&[net::IAC, agree, option]);
                                }
                            }
                            net::TelnetEvent::Subnegotiation { option: net::OPT_COM_PORT, payload } => {
                                let mut answer = vec![payload[0] + net::CPO_SERVER_OFFSET];
                                answer.extend_from_slice(&payload[1..]);
                                reply.extend_from_slice(&[net::IAC, net::SB, net::OPT_COM_PORT]);
                                net::escape_iac(&answer, &mut reply);
                                reply.extend_from_slice(&[net::IAC, net::SE]);
                                answered += 1;
                            }
                            _ => {}
                        }
                    }
                    stream.write_all(&reply).unwrap();
                }
                // Stay open until the client goes.
                while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
                return accepted;
            }
            accepted
        });
        (port, handle)
    }

    #[test]
    fn a_connection_dropped_while_the_server_closes_the_port_is_tried_again() {
        let (port, server) = flaky_rfc2217_server(2);
        let address = net::NetAddress::new(net::NetProtocol::Rfc2217, "127.0.0.1", port);
        let net_port = open_net_port(&address, 115_200, Duration::from_millis(50)).expect("the third attempt");
        assert_eq!(net_port.com_port().unwrap().baud, Some(115_200));
        drop(net_port);
        assert_eq!(server.join().unwrap(), 3, "two dropped connections and the one that was served");
    }

    #[test]
    fn a_server_that_always_drops_the_connection_fails_as_disconnected_naming_what_it_said() {
        let attempts = net::DROPPED_CONNECTION_ATTEMPTS as usize;
        let (port, _server) = flaky_rfc2217_server(attempts);
        let address = net::NetAddress::new(net::NetProtocol::Rfc2217, "127.0.0.1", port);
        let err = open_net_port(&address, 115_200, Duration::from_millis(50)).expect_err("must fail");
        assert_eq!(err.kind, MonitorErrorKind::Disconnected, "{err}");
        let text = err.to_string();
        let tail = format!(
            "attempt {attempts} of at most {attempts}; the server accepted and at once dropped each of the {} before",
            attempts - 1
        );
        assert!(text.contains(&tail), "{text}");
        assert!(text.contains("(it said: \"port is shutting down\")"), "what the server wrote: {text}");
        assert!(text.contains(&format!("rfc2217://127.0.0.1:{port}")), "{text}");
        // Unblock the server thread's accept loop so it serves (and ends with) a last connection.
        let _ = open_net_port(&address, 115_200, Duration::from_millis(50));
    }

    #[test]
    fn a_raw_port_that_drops_the_connection_before_the_instrument_answers_is_tried_again() {
        use std::io::{BufRead, BufReader, Write};
        // A raw TCP port has no negotiation: the drop shows up when the driver first talks. The
        // first connection is closed unanswered; the second answers *IDN? as a bench meter does.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (first, _) = listener.accept().unwrap();
            drop(first);
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            (&stream).write_all(b"Keysight Technologies,34465A,MY0001,A.03\n").unwrap();
            let _ = reader.read_line(&mut String::new());
            line
        });
        let url = format!("tcp://127.0.0.1:{port}");
        let mut monitor =
            open_monitor(MonitorKind::Scpi, &url, &MonitorOptions::default()).expect("the second attempt");
        let info = monitor.identify().unwrap();
        assert_eq!(info.model, "Keysight Technologies 34465A");
        drop(monitor);
        assert_eq!(server.join().unwrap().trim(), "*IDN?");
    }

    #[test]
    fn kind_parses() {
        assert_eq!("PPK2".parse::<MonitorKind>().unwrap(), MonitorKind::Ppk2);
        assert_eq!("ina219".parse::<MonitorKind>().unwrap(), MonitorKind::Ina);
        assert!("joulescope".parse::<MonitorKind>().unwrap_err().contains("joulescope"));
    }

    #[test]
    fn named_port_eof_is_disconnected() {
        struct Eof;
        impl Read for Eof {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Ok(0)
            }
        }
        impl Write for Eof {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut p = NamedPort::new(Eof, "/dev/ttyACM9");
        let err = p.read_some(&mut [0; 4], "reading samples").unwrap_err();
        assert_eq!(err.kind, MonitorErrorKind::Disconnected);
        assert!(err.to_string().contains("/dev/ttyACM9"), "{err}");
    }
}
