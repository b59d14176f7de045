//! Bench supplies and meters polled with SCPI queries over a serial port.
//!
//! Each poll sends the current query (default `MEAS:CURR?`) and, unless a fixed voltage is given, the
//! voltage query (default `MEAS:VOLT?`), each followed by the termination (default `\n`), and reads one
//! answer line per query. These instruments have no sample clock the host can see, so a sample is
//! stamped with the host's monotonic time when the current query reached the meter (sent, plus its
//! bytes' time on the wire): a meter measures on receipt, and a slow meter's reply delay is not the
//! time of its reading. An instrument that does not
//! answer within the reply timeout gives a [`MonitorErrorKind::Timeout`] naming the port and the query.
//! The SCPI overload / not-a-number value (`9.9E37`, SCPI-99 vol. 1 §7.2.1.5) is not a reading: such
//! polls are counted as lost samples. An answer is at most [`SCPI_REPLY_LIMIT`]: a device that streams
//! without the line end (a wrong termination or baud rate, a meter in a streaming mode) is refused with
//! an error naming the limit, the port and the query.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::board::ReadLimit;

use super::{
    host_monotonic_ns, LostRun, MonitorError, MonitorErrorKind, MonitorInfo, NamedPort, PowerMonitor, ReadOutcome,
    Sample, SampleClock,
};

/// The longest answer a query may get.
pub const SCPI_REPLY_LIMIT: ReadLimit = ReadLimit::new(
    "SCPI_REPLY_LIMIT",
    64 << 10,
    "answers here are one number or an *IDN? string (tens of bytes); room is left for a meter set to \
     return a list of buffered readings",
);

/// Options for [`ScpiMonitor`].
#[derive(Clone, Debug, PartialEq)]
pub struct ScpiOptions {
    pub current_query: String,
    /// `None` with [`ScpiOptions::fixed_voltage_v`] for meters that measure current only.
    pub voltage_query: Option<String>,
    pub fixed_voltage_v: Option<f64>,
    /// Sent by [`PowerMonitor::identify`]; `None` for instruments without `*IDN?`.
    pub identify_query: Option<String>,
    /// Appended to every query; answers end with `\n` (a `\r` before it is dropped).
    pub termination: String,
    pub baud: u32,
    /// Polls per second.
    pub poll_hz: f64,
    /// How long to wait for one answer.
    pub reply_timeout: Duration,
}

impl Default for ScpiOptions {
    fn default() -> Self {
        Self {
            current_query: "MEAS:CURR?".to_string(),
            voltage_query: Some("MEAS:VOLT?".to_string()),
            fixed_voltage_v: None,
            identify_query: Some("*IDN?".to_string()),
            termination: "\n".to_string(),
            baud: 9600,
            poll_hz: 10.0,
            reply_timeout: Duration::from_secs(1),
        }
    }
}

/// The SCPI "not a number / overload" value (9.91E37); anything this large is not a measurement.
const SCPI_OVERLOAD: f64 = 9.9e37;

/// Parses one numeric SCPI answer (`+3.12340E-01`, ` 0.5 `, `1.2,OK` takes the first field).
pub fn parse_scpi_number(answer: &str) -> Result<f64, String> {
    let first = answer.trim().split([',', ';']).next().unwrap_or("").trim();
    let value: f64 = first.parse().map_err(|_| format!("answer {answer:?} is not a number"))?;
    if !value.is_finite() || value.abs() >= SCPI_OVERLOAD {
        return Err(format!("answer {answer:?} is the SCPI overload/not-a-number value"));
    }
    Ok(value)
}

/// `*IDN?` answer `manufacturer,model,serial,firmware` split into its fields.
pub fn parse_idn(answer: &str) -> Vec<String> {
    answer.trim().split(',').map(|f| f.trim().to_string()).collect()
}

/// A SCPI instrument on a byte stream.
#[derive(Debug)]
pub struct ScpiMonitor<P> {
    port: NamedPort<P>,
    options: ScpiOptions,
    pending: Vec<u8>,
    buf: Vec<u8>,
    next_poll: Option<Instant>,
    /// Set after a timeout: a late answer may still arrive and must not be taken for the next one.
    resync: bool,
    lost: u64,
    lost_reported: u64,
    lost_runs: Vec<LostRun>,
    identity: Option<MonitorInfo>,
}

impl ScpiMonitor<serialport::TTYPort> {
    pub fn open(path: &str, options: ScpiOptions) -> Result<Self, MonitorError> {
        let port = super::open_serial(path, options.baud, Duration::from_millis(20))?;
        Ok(Self::new(port, path, options))
    }
}

impl<P: Read + Write + Send> ScpiMonitor<P> {
    pub fn new(port: P, name: impl Into<String>, options: ScpiOptions) -> Self {
        Self {
            port: NamedPort::new(port, name),
            options,
            pending: Vec::new(),
            buf: vec![0; 1024],
            next_poll: None,
            resync: false,
            lost: 0,
            lost_reported: 0,
            lost_runs: Vec::new(),
            identity: None,
        }
    }

    /// Sends `query` and returns the answer line (without its line end).
    pub fn query(&mut self, query: &str) -> Result<String, MonitorError> {
        let what = format!("query {query:?}");
        if self.resync {
            // Throw away whatever a timed-out query left behind.
            let until = Instant::now() + Duration::from_millis(30);
            while Instant::now() < until && self.port.read_some(&mut self.buf, &what)? > 0 {}
            self.pending.clear();
            self.resync = false;
        }
        let mut bytes = query.as_bytes().to_vec();
        bytes.extend_from_slice(self.options.termination.as_bytes());
        self.port.send(&bytes, &what)?;
        let deadline = Instant::now() + self.options.reply_timeout;
        loop {
            let end = self.pending.iter().position(|&b| b == b'\n');
            let length = end.unwrap_or(self.pending.len());
            if length > SCPI_REPLY_LIMIT.bytes {
                // Whatever follows belongs to the same runaway answer: throw it away before the next query.
                self.pending.clear();
                self.resync = true;
                return Err(MonitorError::new(
                    MonitorErrorKind::Protocol,
                    &self.port.name,
                    &what,
                    format!(
                        "{} (check the termination {:?} and the baud rate {})",
                        SCPI_REPLY_LIMIT.exceeded(format!(
                            "the answer ({length} bytes{})",
                            if end.is_none() { ", no line end yet" } else { "" }
                        )),
                        self.options.termination,
                        self.options.baud
                    ),
                ));
            }
            if let Some(end) = end {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string();
                if text.trim().is_empty() {
                    continue;
                }
                return Ok(text);
            }
            if Instant::now() >= deadline {
                self.resync = true;
                return Err(MonitorError::new(
                    MonitorErrorKind::Timeout,
                    &self.port.name,
                    &what,
                    format!(
                        "no answer within {} ms (check that the instrument is on, in remote mode, at {} baud, \
                         and expects the termination {:?})",
                        self.options.reply_timeout.as_millis(),
                        self.options.baud,
                        self.options.termination
                    ),
                ));
            }
            let n = self.port.read_some(&mut self.buf, &what)?;
            self.pending.extend_from_slice(&self.buf[..n]);
        }
    }

    /// One poll: current (and voltage) now.
    fn poll(&mut self) -> Result<Option<Sample>, MonitorError> {
        let current_query = self.options.current_query.clone();
        let sent_ns = host_monotonic_ns();
        let answer = self.query(&current_query)?;
        // The meter measures when the query has reached it: the send time plus the query's time on the
        // wire (10 bits a byte at the baud rate). Its reply delay is not the time of the reading.
        let wire_bits = 10 * (current_query.len() + self.options.termination.len()) as u64;
        let t_ns = sent_ns + wire_bits * 1_000_000_000 / u64::from(self.options.baud.max(1));
        let current_a = match parse_scpi_number(&answer) {
            Ok(v) => v,
            Err(e) if e.contains("overload") => {
                self.lost += 1;
                self.lost_runs.push(LostRun {
                    t_ns,
                    period_ns: 0.0,
                    count: 1,
                    clock: None,
                    clock_step: 0.0,
                    reindex_until: None,
                });
                return Ok(None);
            }
            Err(e) => {
                return Err(MonitorError::new(
                    MonitorErrorKind::Protocol,
                    &self.port.name,
                    format!("query {current_query:?}"),
                    e,
                ))
            }
        };
        let voltage_v = match (&self.options.voltage_query, self.options.fixed_voltage_v) {
            (_, Some(v)) => v,
            (Some(q), None) => {
                let q = q.clone();
                let answer = self.query(&q)?;
                match parse_scpi_number(&answer) {
                    Ok(v) => v,
                    Err(e) if e.contains("overload") => f64::NAN,
                    Err(e) => {
                        return Err(MonitorError::new(
                            MonitorErrorKind::Protocol,
                            &self.port.name,
                            format!("query {q:?}"),
                            e,
                        ))
                    }
                }
            }
            (None, None) => f64::NAN,
        };
        Ok(Some(Sample::at(t_ns, current_a, voltage_v)))
    }

    fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.options.poll_hz.max(0.001))
    }
}

impl<P: Read + Write + Send> PowerMonitor for ScpiMonitor<P> {
    fn identify(&mut self) -> Result<MonitorInfo, MonitorError> {
        if let Some(info) = &self.identity {
            return Ok(info.clone());
        }
        let mut model = "SCPI instrument".to_string();
        let mut serial = None;
        let mut metadata = vec![
            ("current_query".to_string(), self.options.current_query.clone()),
            ("voltage_query".to_string(), self.options.voltage_query.clone().unwrap_or_else(|| "-".to_string())),
            ("poll_hz".to_string(), self.options.poll_hz.to_string()),
        ];
        if let Some(q) = self.options.identify_query.clone() {
            let answer = self.query(&q)?;
            let fields = parse_idn(&answer);
            if fields.len() >= 2 {
                model = format!("{} {}", fields[0], fields[1]);
            } else {
                model = answer.trim().to_string();
            }
            serial = fields.get(2).filter(|s| !s.is_empty() && *s != "0").cloned();
            if let Some(fw) = fields.get(3) {
                metadata.push(("firmware".to_string(), fw.clone()));
            }
            metadata.push(("idn".to_string(), answer));
        }
        let info = MonitorInfo {
            model,
            serial,
            metadata,
            calibration: Vec::new(),
            sample_rate_hz: Some(self.options.poll_hz),
            clock: SampleClock::HostReceive,
            simulated: false,
            port: self.port.name.clone(),
        };
        self.identity = Some(info.clone());
        Ok(info)
    }

    fn start(&mut self) -> Result<(), MonitorError> {
        self.next_poll = Some(Instant::now());
        self.lost = 0;
        self.lost_reported = 0;
        self.lost_runs.clear();
        Ok(())
    }

    fn read(&mut self, out: &mut Vec<Sample>, max_wait: Duration) -> Result<ReadOutcome, MonitorError> {
        let deadline = Instant::now() + max_wait;
        let period = self.period();
        let before = out.len();
        loop {
            let now = Instant::now();
            let next = *self.next_poll.get_or_insert(now);
            if now >= next {
                if let Some(s) = self.poll()? {
                    out.push(s);
                }
                // Keep the rate; after a slow answer do not burst to catch up.
                let after = Instant::now();
                self.next_poll = Some(if next + period < after { after + period } else { next + period });
                continue;
            }
            if out.len() > before || now >= deadline {
                break;
            }
            std::thread::sleep((next - now).min(deadline - now));
        }
        let lost = self.lost - self.lost_reported;
        self.lost_reported = self.lost;
        Ok(ReadOutcome { samples: out.len() - before, lost })
    }

    fn stop(&mut self) -> Result<(), MonitorError> {
        self.next_poll = None;
        Ok(())
    }

    fn lost_samples(&self) -> u64 {
        self.lost
    }

    fn take_lost_runs(&mut self) -> Vec<LostRun> {
        std::mem::take(&mut self.lost_runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_overload() {
        assert_eq!(parse_scpi_number("+3.12340E-01\r"), Ok(0.31234));
        assert_eq!(parse_scpi_number(" 5.0,OK"), Ok(5.0));
        assert!(parse_scpi_number("9.91E+37").unwrap_err().contains("overload"));
        assert!(parse_scpi_number("ERR").unwrap_err().contains("ERR"));
    }

    #[test]
    fn idn_fields() {
        assert_eq!(parse_idn("RIGOL TECHNOLOGIES,DP832,DP8C0000001,00.01.14\n")[1], "DP832");
    }
}
