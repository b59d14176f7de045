//! A power monitor streaming in the background during a run, with captures
//! taken around idle periods and agent windows.
//!
//! The reader thread drains the instrument continuously (a PPK2 must be read
//! at 100 kS/s or its USB buffer overflows and samples are lost) and keeps
//! samples only while a capture is open, plus the last few samples before it:
//! a capture opened just before a window already holds a sample at or before
//! the window's start even from a 1 Hz sketch.
//!
//! # Memory
//! A capture holds at most [`CaptureLimits::memory_samples`] samples in memory
//! ([`CAPTURE_MEMORY_SAMPLES`]: 30 s of a PPK2). A longer one is not cut and
//! not decimated: its samples go, as they arrive, to an anonymous file
//! ([`SampleSpill`], in [`CaptureLimits::spill_dir`]), in batches small enough
//! that the reader never stalls the stream, and the closed capture is read back
//! from there chunk by chunk ([`Capture::chunks`]). Energy
//! ([`crate::energy::cell_power`]) and the raw power part
//! ([`crate::results::write_capture_power_part`]) are computed over those
//! chunks with the same arithmetic as in memory, so a window of an hour is as
//! exact as one of a second and costs one chunk of memory; the price is disk,
//! 34 bytes a sample (3.4 MB/s at 100 kS/s), freed when the capture is dropped.
//! Losses are kept in memory, at most [`CAPTURE_LOST_RUNS_LIMIT`] separate runs:
//! a monitor losing samples that often fails the capture with an error naming
//! the limit (the window is measured again).
//!
//! Closing a capture ([`PowerSession::finish`]) waits, bounded, until a sample
//! at or after the window's end has arrived (slow and bursty monitors deliver
//! late), then places every sample again with the fit of the monitor's clock as
//! it stands then ([`crate::clock_fit`]), so the window's samples follow one
//! consistent map that has seen arrivals from after the window too.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock_fit::ClockLine;
use crate::power::{MonitorError, MonitorErrorKind, MonitorInfo, PowerMonitor, Sample};
use crate::samples::{Capture, SampleSpill};

/// Samples a capture holds in memory before it spills to disk: 30 s of a PPK2 at 100 kS/s (144 MB
/// of 48-byte samples), several times a default window (5 s) with its warm-up and coverage wait, so
/// ordinary windows never touch the disk.
pub const CAPTURE_MEMORY_SAMPLES: usize = 3_000_000;

/// Separate runs of lost samples one capture may record (56 bytes each). A healthy monitor loses
/// none; a congested USB link, a few bursts a window. This many means the monitor loses samples all
/// the time: the capture fails, naming the limit.
pub const CAPTURE_LOST_RUNS_LIMIT: usize = 100_000;

/// Once a capture spills, samples go to disk in batches of this many: 0.65 s at 100 kS/s, 2.2 MB a
/// write, short enough that the reader thread never keeps the instrument waiting.
const SPILL_BATCH_SAMPLES: usize = 65_536;

/// Samples kept from before a capture opens.
const TAIL_SAMPLES: usize = 4;
/// How far back delivery gaps are remembered for the coverage wait.
const GAP_MEMORY: Duration = Duration::from_secs(30);

/// What a capture may hold in memory, and where it spills beyond that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureLimits {
    /// Samples held in memory before the capture spills to disk.
    pub memory_samples: usize,
    /// Runs of lost samples before the capture fails.
    pub lost_runs: usize,
    /// Where spill files go (anonymous: nothing is left behind). The results directory is a good
    /// choice: the system's temporary directory may be a RAM-backed tmpfs.
    pub spill_dir: PathBuf,
}

impl Default for CaptureLimits {
    fn default() -> Self {
        Self {
            memory_samples: CAPTURE_MEMORY_SAMPLES,
            lost_runs: CAPTURE_LOST_RUNS_LIMIT,
            spill_dir: std::env::temp_dir(),
        }
    }
}

impl CaptureLimits {
    /// The default limits, spilling into `dir`.
    pub fn spilling_to(dir: &Path) -> Self {
        Self { spill_dir: dir.to_path_buf(), ..Self::default() }
    }
}

#[derive(Debug, Default)]
struct Shared {
    capturing: bool,
    capture: Capture,
    /// The open capture's samples on disk, once it passed the memory limit.
    spill: Option<SampleSpill>,
    /// Why the open capture cannot be completed (a spill write failed, too many losses).
    capture_failed: Option<MonitorError>,
    /// The most samples the open (or last) capture held in memory at once.
    peak_in_memory: usize,
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

/// Adds one delivery to the open capture: spills to disk past the memory limit, fails the capture
/// past the limit of lost runs.
fn keep_in_capture(
    s: &mut Shared,
    delivered: &[Sample],
    lost: Vec<crate::samples::LostRun>,
    limits: &CaptureLimits,
    port: &str,
) {
    s.capture.samples.extend_from_slice(delivered);
    s.capture.lost.extend(lost);
    s.peak_in_memory = s.peak_in_memory.max(s.capture.samples.len());
    if s.capture.lost.len() > limits.lost_runs {
        s.capture_failed = Some(MonitorError::new(
            MonitorErrorKind::Protocol,
            port,
            "capturing the window's samples",
            format!(
                "{} separate runs of lost samples passed CAPTURE_LOST_RUNS_LIMIT ({}): the monitor is losing \
                 samples all the time",
                s.capture.lost.len(),
                limits.lost_runs
            ),
        ));
        s.capture = Capture::default();
        s.spill = None;
        return;
    }
    let threshold =
        if s.spill.is_some() { SPILL_BATCH_SAMPLES.min(limits.memory_samples) } else { limits.memory_samples };
    if s.capture.samples.len() < threshold {
        return;
    }
    let spilled = match s.spill.take() {
        Some(spill) => Ok(spill),
        None => SampleSpill::create(&limits.spill_dir),
    }
    .and_then(|mut spill| spill.append(&s.capture.samples).map(|()| spill));
    match spilled {
        Ok(spill) => {
            s.spill = Some(spill);
            // A fresh, small buffer: the one that reached the limit is given back.
            s.capture.samples = Vec::with_capacity(SPILL_BATCH_SAMPLES.min(limits.memory_samples));
        }
        Err(e) => {
            s.capture_failed = Some(MonitorError::from_io(
                port,
                &format!(
                    "spilling a capture past {} samples (CAPTURE_MEMORY_SAMPLES) to {}",
                    limits.memory_samples,
                    limits.spill_dir.display()
                ),
                &e,
            ));
            s.capture = Capture::default();
        }
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
    /// Identifies and starts `monitor` and begins draining it, with the default [`CaptureLimits`].
    pub fn start(monitor: Box<dyn PowerMonitor>) -> Result<Self, MonitorError> {
        Self::start_with(monitor, CaptureLimits::default())
    }

    /// [`PowerSession::start`] with the given limits on each capture.
    pub fn start_with(mut monitor: Box<dyn PowerMonitor>, limits: CaptureLimits) -> Result<Self, MonitorError> {
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
                                    if let Some(spill) = s.spill.as_mut() {
                                        spill.note_reindex(*run);
                                    }
                                }
                            }
                            if s.capturing && s.capture_failed.is_none() {
                                keep_in_capture(&mut s, &buf, lost, &limits, &port);
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
        s.spill = None;
        s.capture_failed = None;
        s.peak_in_memory = s.capture.samples.len();
        s.capturing = true;
        Ok(())
    }

    /// The most samples the open (or the last) capture held in memory at once: at most
    /// [`CaptureLimits::memory_samples`] plus one delivery of the monitor.
    pub fn peak_capture_samples(&self) -> usize {
        self.lock().peak_in_memory
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
        let spill = s.spill.take();
        let failed = s.capture_failed.take();
        let fit = s.fit;
        drop(s);
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(mut spill) = spill {
            // A spilled capture is wholly on disk: the samples still in memory join the others.
            let dir = spill.dir().display().to_string();
            let spilled = spill
                .append(&capture.samples)
                .and_then(|()| spill.finish())
                .map_err(|e| MonitorError::from_io(&self.info.port, &format!("spilling the capture to {dir}"), &e))?;
            capture.samples = Vec::new();
            capture.spilled = Some(spilled);
        }
        if let Some(fit) = fit {
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
