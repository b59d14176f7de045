//! A power monitor streaming in the background during a run, with captures
//! taken around idle periods and agent windows.
//!
//! The reader thread drains the instrument continuously (a PPK2 must be read
//! at 100 kS/s or its USB buffer overflows and samples are lost) and keeps
//! samples only while a capture is open, so memory is bounded by the longest
//! window, plus the last few samples before it: a capture opened just before a
//! window already holds a sample at or before the window's start even from a
//! 1 Hz sketch.
//!
//! Closing a capture ([`PowerSession::finish`]) waits, bounded, until a sample
//! at or after the window's end has arrived (slow and bursty monitors deliver
//! late), then places every sample again with the fit of the monitor's clock as
//! it stands then ([`crate::clock_fit`]), so the window's samples follow one
//! consistent map that has seen arrivals from after the window too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock_fit::ClockLine;
use crate::power::{MonitorError, MonitorInfo, PowerMonitor, Sample};
use crate::samples::Capture;

/// Samples kept from before a capture opens.
const TAIL_SAMPLES: usize = 4;
/// How far back delivery gaps are remembered for the coverage wait.
const GAP_MEMORY: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Shared {
    capturing: bool,
    capture: Capture,
    /// The newest samples, whether a capture is open or not.
    tail: VecDeque<Sample>,
    /// The monitor's clock fit after the newest read.
    fit: Option<ClockLine>,
    /// The newest sample delivered (its time as placed at read time).
    newest: Option<Sample>,
    /// When deliveries arrived and how long after the previous one, for the coverage wait.
    gaps: VecDeque<(Instant, Duration)>,
    last_delivery: Option<Instant>,
    /// Set when the reader stopped on an error (e.g. the monitor was unplugged).
    failed: Option<MonitorError>,
}

impl Shared {
    fn newest_host_ns(&self) -> Option<i64> {
        let s = self.newest?;
        Some(match (self.fit, s.clock) {
            (Some(fit), Some(x)) if fit.covers(x) => fit.to_host_ns(x) as i64,
            _ => s.t_ns as i64,
        })
    }

    fn longest_recent_gap(&self) -> Duration {
        self.gaps.iter().map(|(_, g)| *g).max().unwrap_or_default()
    }
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
        Some(r) if r > 0.0 => Duration::from_secs_f64((10.0 / r).clamp(5.0, 3600.0)),
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

/// A closed capture and how its end was waited for.
#[derive(Debug)]
pub struct Finished {
    pub capture: Capture,
    /// Whether a sample at or after the requested end arrived within [`Finished::limit`].
    pub covered: bool,
    /// How long the wait was allowed to take.
    pub limit: Duration,
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
                let mut last_sample = Instant::now();
                while !st.load(Ordering::SeqCst) {
                    buf.clear();
                    match monitor.read(&mut buf, Duration::from_millis(50)) {
                        Ok(_) => {
                            let now = Instant::now();
                            if !buf.is_empty() {
                                last_sample = now;
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
                            let lost = monitor.take_lost_runs();
                            let fit = monitor.clock_fit();
                            let mut s = sh.lock().unwrap_or_else(|p| p.into_inner());
                            s.fit = fit;
                            if let Some(&newest) = buf.last() {
                                s.newest = Some(newest);
                                if let Some(prev) = s.last_delivery.replace(now) {
                                    s.gaps.push_back((now, now - prev));
                                }
                                while s.gaps.front().is_some_and(|(t, _)| now - *t > GAP_MEMORY) {
                                    s.gaps.pop_front();
                                }
                            }
                            for run in lost.iter().filter(|r| r.reindex_until.is_some()) {
                                // A loss found late: samples already delivered after it are later than
                                // their clock said.
                                let shift = |c: &mut f64| run.reindex(c);
                                s.tail.iter_mut().filter_map(|x| x.clock.as_mut()).for_each(shift);
                                if s.capturing {
                                    let cap = &mut s.capture;
                                    cap.samples.iter_mut().filter_map(|x| x.clock.as_mut()).for_each(shift);
                                    cap.lost.iter_mut().filter_map(|r| r.clock.as_mut()).for_each(shift);
                                }
                            }
                            if s.capturing {
                                s.capture.samples.extend_from_slice(&buf);
                                s.capture.lost.extend(lost);
                            }
                            let keep = buf.len().min(TAIL_SAMPLES);
                            s.tail.extend(buf[buf.len() - keep..].iter().copied());
                            while s.tail.len() > TAIL_SAMPLES {
                                s.tail.pop_front();
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
        self.lock().failed.as_ref().map(copy_error)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a capture, starting with the last samples that arrived before it.
    pub fn begin(&self) -> Result<(), MonitorError> {
        let mut s = self.lock();
        if let Some(e) = &s.failed {
            return Err(copy_error(e));
        }
        s.capture = Capture { samples: s.tail.iter().copied().collect(), ..Capture::default() };
        s.capturing = true;
        Ok(())
    }

    /// How long [`PowerSession::finish`] waits for the sample after a window's end: three times the
    /// longest gap between deliveries in the last 30 s (a bursty sketch delivers every few hundred ms,
    /// a slow SCPI meter once per poll plus its reply time), plus 250 ms, at most 30 s.
    pub fn coverage_limit(&self) -> Duration {
        let gap = self.lock().longest_recent_gap();
        (gap * 3 + Duration::from_millis(250)).min(Duration::from_secs(30))
    }

    /// Closes the capture once a sample at or after `until_host_ns` has arrived (or at
    /// [`PowerSession::coverage_limit`], or when `stop` is set), and places it with the newest fit of
    /// the monitor's clock.
    pub fn finish(&self, until_host_ns: Option<i64>, stop: &AtomicBool) -> Result<Finished, MonitorError> {
        let limit = self.coverage_limit();
        let deadline = Instant::now() + limit;
        let mut covered = until_host_ns.is_none();
        loop {
            {
                let s = self.lock();
                if let Some(e) = &s.failed {
                    return Err(copy_error(e));
                }
                if let (Some(until), Some(newest)) = (until_host_ns, s.newest_host_ns()) {
                    covered = newest >= until;
                }
            }
            if covered || Instant::now() >= deadline || stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut s = self.lock();
        s.capturing = false;
        let mut capture = std::mem::take(&mut s.capture);
        if let Some(fit) = s.fit {
            capture.place(fit);
        }
        Ok(Finished { capture, covered, limit })
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
