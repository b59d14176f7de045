//! Independent test doubles of real power monitors, with their real quirks, each serving the
//! device side of a pseudo-terminal on a real-time thread of its own and recording its own
//! ground truth:
//!
//! - [`ppk2::Ppk2Double`]: a Nordic Power Profiler Kit II written from Nordic's and IRNAS's
//!   published host code (not from this crate's driver or emulator): metadata block with
//!   calibration, power modes, regulator, the 100 kS/s stream of 32-bit words, a sample crystal
//!   off by a configurable ppm, USB-like chunked delivery with stalls and words split across
//!   reads, counter gaps (runs of dropped words) at known times, logic inputs as a time code.
//! - [`ina::InaDouble`]: an Arduino INA219/INA226 sketch printing CSV (with or without a
//!   header), TSV or Adafruit key-value blocks at 1..20 Hz, delivered in bursts, with a `millis()`
//!   that runs fast or slow by thousands of ppm from a random start value.
//! - [`scpi::ScpiDouble`]: a bench meter answering `*IDN?`, `MEAS:CURR?` and `MEAS:VOLT?` after
//!   slow, jittered delays, measuring when the query arrives, ignoring unknown queries (with an
//!   error queue) without wedging.
//!
//! Time: every double reads the host's `CLOCK_MONOTONIC` ([`now_ns`]), the clock a local board's
//! agent (and therefore the journal's `window_host_*_ns`) uses. The ground truth is kept in the
//! doubles' own terms (true measurement times and a known load function); tests compare the
//! harness's results against it, never against the harness's own decoding.
//!
//! Every thread stops when its double is dropped; every wait is bounded.
#![allow(dead_code)]

pub mod ina;
pub mod ppk2;
pub mod scpi;

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The host's `CLOCK_MONOTONIC` in nanoseconds (read directly, not through the harness).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until the host monotonic time `t_ns` (returns at once when it has passed), at most `cap`.
pub fn sleep_until_ns(t_ns: u64, cap: Duration) {
    let now = now_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now).min(cap));
    }
}

fn last_os_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The device (master) side of a pseudo-terminal; the host opens [`PtyMaster::path`].
///
/// The master is non-blocking and close-on-exec (a child process holding it would hide the
/// hang-up of a closed port). The slave is left closed, so [`PtyMaster::host_open`] tells whether
/// the host has the port open (the master polls `POLLHUP` while no one has the slave open).
#[derive(Debug)]
pub struct PtyMaster {
    fd: OwnedFd,
    path: PathBuf,
}

impl PtyMaster {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain libc calls on a descriptor we own; ptsname_r writes into our buffer.
        unsafe {
            let raw = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            if raw < 0 {
                return Err(last_os_error("posix_openpt"));
            }
            let fd = OwnedFd::from_raw_fd(raw);
            if libc::grantpt(raw) != 0 || libc::unlockpt(raw) != 0 {
                return Err(last_os_error("grantpt/unlockpt"));
            }
            let mut name = [0 as libc::c_char; 256];
            if libc::ptsname_r(raw, name.as_mut_ptr(), name.len()) != 0 {
                return Err(last_os_error("ptsname_r"));
            }
            let path = PathBuf::from(CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned());
            let flags = libc::fcntl(raw, libc::F_GETFL);
            libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK);
            // Raw mode from the start (no echo of what the device writes, no line editing): the
            // terminal settings belong to the pty and outlive this first open of the slave.
            let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("pty path");
            let slave = libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK);
            if slave < 0 {
                return Err(last_os_error("opening the pty slave"));
            }
            let mut tio: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(slave, &mut tio) == 0 {
                libc::cfmakeraw(&mut tio);
                libc::tcsetattr(slave, libc::TCSANOW, &tio);
            }
            libc::close(slave);
            Ok(Self { fd, path })
        }
    }

    /// The path the host opens (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn poll(&self, events: libc::c_short, timeout: Duration) -> libc::c_short {
        let mut p = libc::pollfd { fd: self.fd.as_raw_fd(), events, revents: 0 };
        let ms = timeout.as_millis().min(1000) as libc::c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc <= 0 {
            0
        } else {
            p.revents
        }
    }

    /// Whether the host has the slave side open now.
    pub fn host_open(&self) -> bool {
        self.poll(libc::POLLOUT, Duration::ZERO) & libc::POLLHUP == 0
    }

    /// Reads what the host wrote, waiting up to `timeout` (0 when nothing came or nobody has the
    /// port open; a closed port sleeps the timeout rather than spinning on `POLLHUP`).
    pub fn read(&self, buf: &mut [u8], timeout: Duration) -> usize {
        let rev = self.poll(libc::POLLIN, timeout);
        if rev & libc::POLLIN == 0 {
            if rev & libc::POLLHUP != 0 {
                std::thread::sleep(timeout);
            }
            return 0;
        }
        // SAFETY: reading into a buffer we own, at most its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            std::thread::sleep(timeout.min(Duration::from_millis(2)));
            0
        } else {
            n as usize
        }
    }

    /// Writes as much of `bytes` as the pty takes now (non-blocking); returns how much.
    /// Nothing is taken (0) while the pty's buffer is full.
    pub fn write_some(&self, bytes: &[u8]) -> usize {
        if bytes.is_empty() {
            return 0;
        }
        // SAFETY: writing from a buffer we own, at most its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        n.max(0) as usize
    }

    /// Writes all of `bytes`, waiting for room at most `limit`; returns how much was written.
    pub fn write_all(&self, mut bytes: &[u8], limit: Duration) -> usize {
        let deadline = std::time::Instant::now() + limit;
        let total = bytes.len();
        while !bytes.is_empty() && std::time::Instant::now() < deadline {
            let n = self.write_some(bytes);
            bytes = &bytes[n..];
            if n == 0 {
                self.poll(libc::POLLOUT, Duration::from_millis(1));
            }
        }
        total - bytes.len()
    }
}

/// A double's serving thread: stopped and joined on drop; [`Worker::finish`] re-raises a panic
/// of the thread naming the double.
#[derive(Debug)]
pub struct Worker {
    name: &'static str,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn spawn(name: &'static str, body: impl FnOnce(&AtomicBool) + Send + 'static) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&flag))
            .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"));
        Worker { name, stop, thread: Some(thread) }
    }

    /// Stops the thread; panics when it had panicked.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the {} double's thread panicked (see its message above)", self.name);
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Locks a truth record even when a panicking thread poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A slowly varying load for the text and SCPI monitors, as functions of host monotonic time:
/// `P(t) = p_mean + p_amp sin(2 pi t / p_period)` on a bus `V(t) = v_mean + v_amp cos(2 pi t /
/// v_period)`, so `I(t) = P(t) / V(t)`; the shunt (for printed shunt voltages) is `shunt_ohm`.
#[derive(Clone, Copy, Debug)]
pub struct SmoothLoad {
    pub p_mean_w: f64,
    pub p_amp_w: f64,
    pub p_period_s: f64,
    pub v_mean_v: f64,
    pub v_amp_v: f64,
    pub v_period_s: f64,
    pub shunt_ohm: f64,
}

impl Default for SmoothLoad {
    /// 1.5 W +- 0.4 W over 7 s on a 5 V +- 30 mV bus, 0.1 ohm shunt (the INA219 breakout's).
    fn default() -> Self {
        Self {
            p_mean_w: 1.5,
            p_amp_w: 0.4,
            p_period_s: 7.0,
            v_mean_v: 5.0,
            v_amp_v: 0.03,
            v_period_s: 11.0,
            shunt_ohm: 0.1,
        }
    }
}

impl SmoothLoad {
    fn secs(t_ns: f64) -> f64 {
        t_ns * 1e-9
    }

    pub fn power_w(&self, t_ns: f64) -> f64 {
        let w = std::f64::consts::TAU / self.p_period_s;
        self.p_mean_w + self.p_amp_w * (w * Self::secs(t_ns)).sin()
    }

    pub fn voltage_v(&self, t_ns: f64) -> f64 {
        let w = std::f64::consts::TAU / self.v_period_s;
        self.v_mean_v + self.v_amp_v * (w * Self::secs(t_ns)).cos()
    }

    pub fn current_a(&self, t_ns: f64) -> f64 {
        self.power_w(t_ns) / self.voltage_v(t_ns)
    }

    /// Exact integral of `P` over `[a_ns, b_ns]`, joules.
    pub fn energy_j(&self, a_ns: f64, b_ns: f64) -> f64 {
        let w = std::f64::consts::TAU / self.p_period_s;
        let (a, b) = (Self::secs(a_ns), Self::secs(b_ns));
        self.p_mean_w * (b - a) + self.p_amp_w / w * ((w * a).cos() - (w * b).cos())
    }
}

/// Median and maximum of absolute values (`None` for an empty list).
pub fn median_max_abs(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().map(|x| x.abs()).collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
    Some((median, v[v.len() - 1]))
}
