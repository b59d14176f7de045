//! A power monitor streaming in the background during a run, with captures
//! taken around idle periods and agent windows.
//!
//! The reader thread drains the instrument continuously (a PPK2 must be read
//! at 100 kS/s or its USB buffer overflows and samples are lost) and keeps
//! samples only while a capture is open, so memory is bounded by the longest
//! window. Sample times come from the driver: the monitor's own sample clock
//! where it has one, anchored to the host's CLOCK_MONOTONIC.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::power::{MonitorError, MonitorInfo, PowerMonitor, Sample};

/// Samples and losses of one capture.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    pub samples: Vec<Sample>,
    /// Samples the instrument reported lost (sequence-counter gaps) during the capture.
    pub lost: u64,
}

#[derive(Debug, Default)]
struct Shared {
    capturing: bool,
    capture: Capture,
    /// Set when the reader stopped on an error (e.g. the monitor was unplugged).
    failed: Option<MonitorError>,
}

/// A monitor being read on a thread of its own.
pub struct PowerSession {
    info: MonitorInfo,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Box<dyn PowerMonitor>>>,
}

/// How long a stream may stay silent before the monitor counts as gone: 2 s for streaming
/// instruments, ten sample periods (at least 5 s) for slow polled ones.
fn stall_limit(sample_rate_hz: Option<f64>) -> Duration {
    match sample_rate_hz {
        Some(r) if r >= 10.0 => Duration::from_secs(2),
        Some(r) if r > 0.0 => Duration::from_secs_f64((10.0 / r).max(5.0)),
        _ => Duration::from_secs(5),
    }
}

fn copy_error(e: &MonitorError) -> MonitorError {
    MonitorError::new(e.kind, e.port.clone(), e.what.clone(), e.detail.clone())
}

impl std::fmt::Debug for PowerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerSession").field("info", &self.info).finish()
    }
}

impl PowerSession {
    /// Identifies and starts `monitor` and begins draining it.
    pub fn start(mut monitor: Box<dyn PowerMonitor>) -> Result<Self, MonitorError> {
        let info = monitor.identify()?;
        monitor.start()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        let stall_limit = stall_limit(info.sample_rate_hz);
        let port = info.port.clone();
        let reader = std::thread::Builder::new()
            .name("power-reader".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(1 << 16);
                let mut last_sample = std::time::Instant::now();
                while !st.load(Ordering::SeqCst) {
                    buf.clear();
                    match monitor.read(&mut buf, Duration::from_millis(50)) {
                        Ok(outcome) => {
                            if !buf.is_empty() {
                                last_sample = std::time::Instant::now();
                            } else if last_sample.elapsed() > stall_limit {
                                // A monitor that stops streaming without hanging up (stalled
                                // firmware, a sketch that crashed) is as good as unplugged.
                                sh.lock().unwrap_or_else(|p| p.into_inner()).failed = Some(MonitorError::new(
                                    crate::power::MonitorErrorKind::Disconnected,
                                    port.clone(),
                                    "reading the sample stream",
                                    format!("no samples for {stall_limit:?}: the monitor stopped streaming"),
                                ));
                                break;
                            }
                            let mut s = sh.lock().unwrap_or_else(|p| p.into_inner());
                            if s.capturing {
                                s.capture.samples.extend_from_slice(&buf);
                                s.capture.lost += outcome.lost;
                            }
                        }
                        Err(e) => {
                            sh.lock().unwrap_or_else(|p| p.into_inner()).failed = Some(e);
                            break;
                        }
                    }
                }
                let _ = monitor.stop();
                monitor
            })
            .map_err(|e| MonitorError::from_io(&info.port, "starting the reader thread", &e))?;
        Ok(Self { info, shared, stop, reader: Some(reader) })
    }

    pub fn info(&self) -> &MonitorInfo {
        &self.info
    }

    /// The error that stopped the reader, if any.
    pub fn failure(&self) -> Option<MonitorError> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).failed.as_ref().map(copy_error)
    }

    /// Opens a capture (discarding anything captured before).
    pub fn begin(&self) -> Result<(), MonitorError> {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &s.failed {
            return Err(copy_error(e));
        }
        s.capture = Capture::default();
        s.capturing = true;
        Ok(())
    }

    /// Closes the capture, after waiting `drain` for samples still in the USB/pty pipeline.
    pub fn end(&self, drain: Duration) -> Result<Capture, MonitorError> {
        std::thread::sleep(drain);
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.capturing = false;
        if let Some(e) = &s.failed {
            return Err(copy_error(e));
        }
        Ok(std::mem::take(&mut s.capture))
    }

    /// Stops the reader and the stream.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for PowerSession {
    fn drop(&mut self) {
        self.halt();
    }
}
