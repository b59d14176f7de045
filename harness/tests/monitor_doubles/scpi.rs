//! A SCPI bench meter double (a Keithley 2280S-like supply/meter on a serial port).
//!
//! It reads queries terminated by `\n` (a `\r` before it is dropped) and answers each after a
//! slow, jittered delay (`reply_delay_ms`, uniformly drawn), one at a time in arrival order, as an
//! instrument that processes its input queue sequentially does. A measurement is taken the moment
//! its query arrives. Answers are SCPI NR3 numbers (`+3.123456E-01`). Unknown queries get no
//! answer and put `-113,"Undefined header"` on the error queue (read with `SYST:ERR?`), as
//! SCPI-99 instruments do; commands without `?` are accepted silently. Nothing wedges it.
//!
//! Ground truth: every query's arrival and answer time and the value measured, and the load.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{lock, now_ns, PtyMaster, SmoothLoad, Worker};

#[derive(Clone, Debug)]
pub struct ScpiConfig {
    pub idn: String,
    pub reply_delay_ms: (f64, f64),
    pub load: SmoothLoad,
    pub seed: u64,
}

impl Default for ScpiConfig {
    fn default() -> Self {
        Self {
            idn: "KEITHLEY INSTRUMENTS INC.,MODEL 2280S-32-6,4321234,1.0".into(),
            reply_delay_ms: (20.0, 150.0),
            load: SmoothLoad::default(),
            seed: 2280,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryKind {
    Identify,
    Current,
    Voltage,
    Error,
    Command,
    Unknown,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScpiQuery {
    pub text: String,
    pub kind: QueryKind,
    pub arrived_ns: u64,
    pub answered_ns: Option<u64>,
    /// The value measured (current or voltage) at `arrived_ns`.
    pub value: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct ScpiTruth {
    pub load: Option<SmoothLoad>,
    pub queries: Vec<ScpiQuery>,
}

impl ScpiTruth {
    pub fn energy_j(&self, a_ns: f64, b_ns: f64) -> f64 {
        self.load.expect("load").energy_j(a_ns, b_ns)
    }

    pub fn count(&self, kind: QueryKind) -> usize {
        self.queries.iter().filter(|q| q.kind == kind).count()
    }
}

#[derive(Debug)]
pub struct ScpiDouble {
    path: PathBuf,
    truth: Arc<Mutex<ScpiTruth>>,
    worker: Worker,
}

impl ScpiDouble {
    pub fn spawn(config: ScpiConfig) -> Self {
        let pty = PtyMaster::open().expect("opening a pty for the SCPI double");
        let path = pty.path().to_path_buf();
        let truth = Arc::new(Mutex::new(ScpiTruth { load: Some(config.load), ..ScpiTruth::default() }));
        let shared = truth.clone();
        let worker = Worker::spawn("scpi-double", move |stop| serve(config, pty, shared, stop));
        Self { path, truth, worker }
    }

    pub fn port(&self) -> &Path {
        &self.path
    }

    pub fn truth(&self) -> ScpiTruth {
        lock(&self.truth).clone()
    }

    pub fn shutdown(mut self) -> ScpiTruth {
        self.worker.finish();
        lock(&self.truth).clone()
    }
}

/// SCPI NR3: sign, one digit, six decimals, `E`, signed two-digit exponent.
pub fn nr3(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "+0.000000E+00".into();
    }
    let mut e = v.abs().log10().floor() as i32;
    let mut m = v.abs() / 10f64.powi(e);
    if format!("{m:.6}").starts_with("10") {
        e += 1;
        m /= 10.0;
    }
    let sign = if v < 0.0 { '-' } else { '+' };
    let esign = if e < 0 { '-' } else { '+' };
    format!("{sign}{m:.6}E{esign}{:02}", e.abs())
}

fn classify(query: &str) -> QueryKind {
    let q = query.trim().to_ascii_uppercase();
    if q == "*IDN?" {
        QueryKind::Identify
    } else if q.starts_with("MEAS") && q.contains("CURR") && q.ends_with('?') {
        QueryKind::Current
    } else if q.starts_with("MEAS") && q.contains("VOLT") && q.ends_with('?') {
        QueryKind::Voltage
    } else if q.starts_with("SYST") && q.contains("ERR") && q.ends_with('?') {
        QueryKind::Error
    } else if !q.ends_with('?') {
        QueryKind::Command
    } else {
        QueryKind::Unknown
    }
}

fn serve(cfg: ScpiConfig, pty: PtyMaster, truth: Arc<Mutex<ScpiTruth>>, stop: &AtomicBool) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut inbox: Vec<u8> = Vec::new();
    let mut errors: VecDeque<String> = VecDeque::new();
    // (due ns, answer, index of the query in the truth)
    let mut replies: VecDeque<(u64, String, usize)> = VecDeque::new();
    let mut last_due = 0u64;
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        let n = pty.read(&mut buf, Duration::from_millis(1));
        let arrived = now_ns();
        if n > 0 {
            inbox.extend_from_slice(&buf[..n]);
        }
        while let Some(end) = inbox.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = inbox.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).trim().to_string();
            if text.is_empty() {
                continue;
            }
            let kind = classify(&text);
            let t = arrived as f64;
            let (answer, value) = match kind {
                QueryKind::Identify => (Some(cfg.idn.clone()), None),
                QueryKind::Current => {
                    let v = cfg.load.current_a(t);
                    (Some(nr3(v)), Some(v))
                }
                QueryKind::Voltage => {
                    let v = cfg.load.voltage_v(t);
                    (Some(nr3(v)), Some(v))
                }
                QueryKind::Error => (Some(errors.pop_front().unwrap_or_else(|| "0,\"No error\"".into())), None),
                QueryKind::Command => {
                    if text.eq_ignore_ascii_case("*CLS") {
                        errors.clear();
                    }
                    (None, None)
                }
                QueryKind::Unknown => {
                    errors.push_back("-113,\"Undefined header\"".into());
                    (None, None)
                }
            };
            let index = {
                let mut tr = lock(&truth);
                tr.queries.push(ScpiQuery { text, kind, arrived_ns: arrived, answered_ns: None, value });
                tr.queries.len() - 1
            };
            if let Some(answer) = answer {
                let delay = (rng.random_range(cfg.reply_delay_ms.0..cfg.reply_delay_ms.1) * 1e6) as u64;
                let due = last_due.max(arrived) + delay;
                last_due = due;
                replies.push_back((due, answer, index));
            }
        }
        while replies.front().is_some_and(|(due, _, _)| now_ns() >= *due) {
            let (_, answer, index) = replies.pop_front().expect("a reply");
            pty.write_all(format!("{answer}\n").as_bytes(), Duration::from_millis(100));
            lock(&truth).queries[index].answered_ns = Some(now_ns());
        }
    }
}
