//! Every read from a board, a monitor or a file it wrote is bounded (issue 13, point 5): each test
//! feeds a reader an endless stream (a command printing forever, an agent line that never ends, a
//! meter that never sends its terminator, a PPK2 whose metadata never ends, an endless power stream)
//! and asserts a clear error naming the limit and the source, within a bounded time and memory.
//!
//! SSH tests need `/usr/sbin/sshd` (skipped without it unless `HIL_REQUIRE_SSHD=1`, see
//! `common::Sshd`). Pseudo-terminal tests take [`PTY_LOCK`] so they run one at a time.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::Sshd;
use harness::agent_client::{AgentClient, AgentError};
use harness::board::local::LocalBoard;
use harness::board::ssh::{HostKeyChecking, SshAuth, SshBoard, SshConfig};
use harness::board::{Board, ErrorKind, AGENT_LINE_LIMIT, FILE_READ_LIMIT, SYSFS_ATTRIBUTE_LIMIT};
use harness::dvfs::{read_zone_temp, Sysfs};
use harness::energy::{capture_window_energy, HostWindow};
use harness::power::ina::{InaMonitor, InaOptions};
use harness::power::ppk2::{Ppk2, Ppk2Options};
use harness::power::scpi::{ScpiMonitor, ScpiOptions};
use harness::power::{
    LostRun, MonitorError, MonitorErrorKind, MonitorInfo, PowerMonitor, ReadOutcome, Sample, SampleClock,
};
use harness::power_session::{CaptureLimits, PowerSession};
use harness::results::{
    merge_power_parts, read_parquet, write_capture_power_part, BoardLabels, CellKey, POWER_PARQUET,
    RAW_POWER_BATCH_ROWS,
};
use serialport::{SerialPort, TTYPort};

/// How long a bounded reader may take to give up on an endless stream. Every source here would run
/// until its (much longer) timeout without the bound.
const PROMPT: Duration = Duration::from_secs(30);
/// Timeouts given to the readers: long, so that only the limit can stop them in time.
const PATIENT: Duration = Duration::from_secs(120);

static PTY_LOCK: Mutex<()> = Mutex::new(());

fn pty_lock() -> MutexGuard<'static, ()> {
    PTY_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Peak resident memory of this test process, bytes (`VmHWM`).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

/// Asserts the process's peak memory grew by less than `budget` since `before`: the readers hold at
/// most their limit (tens of MiB); an unbounded one would take gigabytes before its timeout. Tests of
/// this file run in parallel, so the budget covers all of them at once.
fn assert_memory_bounded(before: u64, what: &str) {
    const BUDGET: u64 = 1 << 30;
    let grew = peak_rss().saturating_sub(before);
    assert!(grew < BUDGET, "{what}: peak memory grew by {} MiB", grew >> 20);
}

// ---------------------------------------------------------------------------------------------------
// Boards over SSH
// ---------------------------------------------------------------------------------------------------

macro_rules! sshd_or_skip {
    () => {
        match Sshd::start() {
            Some(sshd) => sshd,
            None => return,
        }
    };
}

fn ssh_board(sshd: &Sshd) -> SshBoard {
    let cfg = SshConfig {
        port: sshd.port,
        known_hosts: Some(sshd.known_hosts.clone()),
        host_key_checking: HostKeyChecking::Strict,
        command_timeout: PATIENT,
        ..SshConfig::new("sshd-bounded", "127.0.0.1", sshd.user.clone(), SshAuth::KeyFile(sshd.client_key.clone()))
    };
    SshBoard::connect(cfg).unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log_text()))
}

#[test]
fn an_endless_ssh_stdout_is_stopped_at_the_output_limit_and_the_board_stays_usable() {
    let sshd = sshd_or_skip!();
    let mut board = ssh_board(&sshd);
    let before = peak_rss();
    let started = Instant::now();
    let err = board.exec(&argv(&["yes"]), PATIENT).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Limit, "{err}");
    let text = err.to_string();
    assert!(text.contains("board sshd-bounded") && text.contains("exec \"yes\""), "{text}");
    assert!(text.contains("stdout passed EXEC_OUTPUT_LIMIT (16 MiB"), "{text}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    // stderr is bounded the same way.
    let err = board.exec(&argv(&["sh", "-c", "yes >&2"]), PATIENT).unwrap_err();
    assert!(err.to_string().contains("stderr passed EXEC_OUTPUT_LIMIT"), "{err}");
    assert_memory_bounded(before, "endless SSH stdout");
    // The abandoned connection was dropped; the next command reconnects.
    assert_eq!(board.exec(&argv(&["echo", "after"]), PATIENT).unwrap().stdout_str(), "after\n");
}

#[test]
fn an_ssh_agent_line_that_never_ends_is_refused_at_the_line_limit() {
    let sshd = sshd_or_skip!();
    let mut board = ssh_board(&sshd);
    let mut session = board.spawn(&argv(&["sh", "-c", "echo ready; yes | tr -d '\\n'"])).unwrap();
    assert_eq!(session.read_line(PATIENT).unwrap(), "ready");
    let before = peak_rss();
    let started = Instant::now();
    let err = session.read_line(PATIENT).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Limit, "{err}");
    assert!(err.to_string().contains("board sshd-bounded") && err.what.contains("spawn"), "{err}");
    assert!(err.detail.contains("passed AGENT_LINE_LIMIT (32 MiB"), "{}", err.detail);
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert_eq!(session.read_line(PATIENT).unwrap_err().kind, ErrorKind::Limit, "the session stays refused");
    assert_memory_bounded(before, "endless SSH agent line");
    let _ = session.close();
}

#[test]
fn an_ssh_agent_that_floods_short_lines_is_held_back_not_buffered() {
    let sshd = sshd_or_skip!();
    let mut board = ssh_board(&sshd);
    let mut session = board.spawn(&argv(&["yes"])).unwrap();
    let before = peak_rss();
    // Not reading for a while, then reading: every line arrives, memory stays flat.
    thread::sleep(Duration::from_secs(2));
    for _ in 0..1000 {
        assert_eq!(session.read_line(PATIENT).unwrap(), "y");
    }
    assert_memory_bounded(before, "flood of short lines");
    let _ = session.close();
}

#[test]
fn an_sftp_read_of_an_endless_file_is_refused_at_the_callers_limit() {
    let sshd = sshd_or_skip!();
    let mut board = ssh_board(&sshd);
    let before = peak_rss();
    let started = Instant::now();
    let err = board.read_file_limited("/dev/zero", SYSFS_ATTRIBUTE_LIMIT).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Limit, "{err}");
    assert!(err.to_string().contains("read /dev/zero: the file passed SYSFS_ATTRIBUTE_LIMIT (64 KiB"), "{err}");
    let err = board.read_file("/dev/zero").unwrap_err();
    assert!(err.to_string().contains(&format!("passed {}", FILE_READ_LIMIT.name)), "{err}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert_memory_bounded(before, "SFTP read of /dev/zero");
    assert_eq!(board.exec(&argv(&["echo", "after"]), PATIENT).unwrap().stdout_str(), "after\n");
}

// ---------------------------------------------------------------------------------------------------
// The agent and sysfs on a local board
// ---------------------------------------------------------------------------------------------------

#[test]
fn an_agent_reply_that_never_ends_fails_the_request_naming_the_limit_and_is_worth_a_fresh_session() {
    let mut board = LocalBoard::new("local-bounded");
    let session = board.spawn(&argv(&["sh", "-c", "read request; yes | tr -d '\\n'"])).unwrap();
    let mut agent = AgentClient::new("local-bounded", session);
    agent.reply_timeout = PATIENT;
    let before = peak_rss();
    let started = Instant::now();
    let err = agent.hello().unwrap_err();
    assert!(matches!(&err, AgentError::Transport(e) if e.kind == ErrorKind::Limit), "{err}");
    let text = err.to_string();
    assert!(text.contains("local-bounded") && text.contains(AGENT_LINE_LIMIT.name), "{text}");
    assert!(text.len() < 4096, "the error quotes no megabytes of reply: {} bytes", text.len());
    assert!(err.is_retryable(), "a fresh session is the way back in step");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert_memory_bounded(before, "endless agent reply");
}

#[test]
fn a_sysfs_attribute_that_never_ends_is_a_dvfs_error_naming_the_limit_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    symlink("/dev/zero", zone.join("temp")).unwrap();
    let sysfs = Sysfs::new(dir.path().to_str().unwrap(), false);
    let mut board = LocalBoard::new("local-bounded");
    let err = read_zone_temp(&mut board, &sysfs, 0).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("thermal_zone0/temp") && text.contains("SYSFS_ATTRIBUTE_LIMIT (64 KiB"), "{text}");
}

// ---------------------------------------------------------------------------------------------------
// Monitors on pseudo-terminals
// ---------------------------------------------------------------------------------------------------

/// The device side of a pty writing `chunk` over and over (after `trigger` arrives, if given) until
/// stopped or the host side is gone.
fn endless_device(
    mut device: TTYPort,
    trigger: Option<u8>,
    chunk: Vec<u8>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    device.set_timeout(Duration::from_millis(20)).unwrap();
    thread::spawn(move || {
        let mut triggered = trigger.is_none();
        let mut buf = [0u8; 256];
        while !stop.load(Ordering::SeqCst) {
            if !triggered {
                if let Ok(n) = device.read(&mut buf) {
                    triggered = buf[..n].contains(&trigger.unwrap());
                }
                continue;
            }
            match device.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    })
}

#[test]
fn a_scpi_meter_that_never_sends_its_terminator_is_refused_at_the_reply_limit() {
    let _guard = pty_lock();
    let (device, host) = TTYPort::pair().unwrap();
    let path = host.name().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = endless_device(device, Some(b'\n'), b"+1.000000E-01,".to_vec(), stop.clone());
    let options = ScpiOptions { reply_timeout: PATIENT, ..ScpiOptions::default() };
    let mut meter = ScpiMonitor::open(&path, options).unwrap();
    let started = Instant::now();
    let err = meter.identify().unwrap_err();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(err.kind, MonitorErrorKind::Protocol, "{err}");
    let text = err.to_string();
    assert!(text.contains(&path) && text.contains("*IDN?"), "names the port and the query: {text}");
    assert!(text.contains("passed SCPI_REPLY_LIMIT (64 KiB"), "{text}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    drop(meter);
    writer.join().unwrap();
}

#[test]
fn a_ppk2_whose_metadata_never_ends_is_refused_at_the_metadata_limit() {
    let _guard = pty_lock();
    let (device, host) = TTYPort::pair().unwrap();
    let path = host.name().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Answers GET_META_DATA (0x19) with calibration lines that never reach `END`.
    let writer = endless_device(device, Some(0x19), b"R0: 1003.3506\nGS0: 0\n".to_vec(), stop.clone());
    let options = Ppk2Options { metadata_timeout: PATIENT, ..Ppk2Options::default() };
    let started = Instant::now();
    let err = Ppk2::open(&path, &options).unwrap_err();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(err.kind, MonitorErrorKind::Protocol, "{err}");
    let text = err.to_string();
    assert!(text.contains(&path) && text.contains("GET_META_DATA"), "{text}");
    assert!(text.contains("passed PPK2_METADATA_LIMIT (64 KiB"), "{text}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    writer.join().unwrap();
}

#[test]
fn an_ina_sketch_line_that_never_ends_is_refused_at_the_line_limit() {
    let _guard = pty_lock();
    let (device, host) = TTYPort::pair().unwrap();
    let path = host.name().unwrap();
    let mut meter = InaMonitor::open(&path, 115_200, InaOptions::default()).unwrap();
    meter.start().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = endless_device(device, None, b"5.01,1.50,5.0015,".to_vec(), stop.clone());
    let started = Instant::now();
    let err = loop {
        match meter.read(&mut Vec::new(), Duration::from_millis(100)) {
            Ok(_) if started.elapsed() < PATIENT => continue,
            Ok(_) => panic!("no error within {PATIENT:?}"),
            Err(e) => break e,
        }
    };
    stop.store(true, Ordering::SeqCst);
    let text = err.to_string();
    assert!(text.contains(&path) && text.contains("passed INA_LINE_LIMIT (64 KiB"), "{text}");
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    drop(meter);
    writer.join().unwrap();
}

// ---------------------------------------------------------------------------------------------------
// Power captures
// ---------------------------------------------------------------------------------------------------

/// A 100 kS/s stream delivered as fast as it is read (far faster than real time), on a synthetic
/// timeline: sample `k` at `T0 + 10 us x k` with power `P(k)` known exactly, the ground truth. It
/// produces nothing until `flowing` is set (so a capture can open before sample 0) and stops at
/// `until` samples (bounding the disk the test uses); `lose` makes every read report a lost slot.
struct FloodMonitor {
    next: u64,
    per_read: usize,
    until: u64,
    flowing: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
    lose: Arc<AtomicBool>,
}

/// The handles a test keeps on its [`FloodMonitor`].
struct FloodControl {
    flowing: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
    lose: Arc<AtomicBool>,
}

impl FloodMonitor {
    fn new(per_read: usize, until: u64) -> (Self, FloodControl) {
        let control = FloodControl {
            flowing: Arc::new(AtomicBool::new(false)),
            produced: Arc::new(AtomicU64::new(0)),
            lose: Arc::new(AtomicBool::new(false)),
        };
        let monitor = Self {
            next: 0,
            per_read,
            until,
            flowing: control.flowing.clone(),
            produced: control.produced.clone(),
            lose: control.lose.clone(),
        };
        (monitor, control)
    }
}

const T0_NS: u64 = 1_000_000_000;
const PERIOD_NS: u64 = 10_000;

fn flood_power_w(k: u64) -> f64 {
    // A square wave of 1 W and 3 W with a 1 ms period: the raw samples matter.
    if (k / 50).is_multiple_of(2) {
        1.0
    } else {
        3.0
    }
}

fn flood_sample(k: u64) -> Sample {
    Sample::at(T0_NS + k * PERIOD_NS, flood_power_w(k) / 5.0, 5.0)
}

impl PowerMonitor for FloodMonitor {
    fn identify(&mut self) -> Result<MonitorInfo, MonitorError> {
        Ok(MonitorInfo {
            model: "flood".into(),
            serial: None,
            metadata: vec![],
            calibration: vec![],
            sample_rate_hz: Some(100_000.0),
            clock: SampleClock::HostReceive,
            simulated: true,
            port: "flood://test".into(),
        })
    }
    fn start(&mut self) -> Result<(), MonitorError> {
        Ok(())
    }
    fn read(&mut self, out: &mut Vec<Sample>, max_wait: Duration) -> Result<ReadOutcome, MonitorError> {
        let n = if self.flowing.load(Ordering::SeqCst) {
            (self.until.saturating_sub(self.next)).min(self.per_read as u64)
        } else {
            0
        };
        if n == 0 {
            thread::sleep(max_wait);
        }
        out.extend((self.next..self.next + n).map(flood_sample));
        self.next += n;
        self.produced.store(self.next, Ordering::SeqCst);
        Ok(ReadOutcome { samples: n as usize, lost: u64::from(self.lose.load(Ordering::SeqCst)) })
    }
    fn take_lost_runs(&mut self) -> Vec<LostRun> {
        if !self.lose.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let t_ns = T0_NS + self.next * PERIOD_NS;
        vec![LostRun { t_ns, period_ns: 0.0, count: 1, clock: None, clock_step: 0.0, reindex_until: None }]
    }
    fn stop(&mut self) -> Result<(), MonitorError> {
        Ok(())
    }
}

/// Samples of the flood in `[start, end)` and the exact energy over `[start, end]`, for a window
/// whose edges sit on sample instants (so the energy is a sum of whole trapezoids).
fn flood_truth(window: HostWindow) -> (u64, f64) {
    let first = (window.start_ns as u64 - T0_NS) / PERIOD_NS;
    let past = (window.end_ns as u64 - T0_NS) / PERIOD_NS;
    let energy = (first..past).map(|k| (flood_power_w(k) + flood_power_w(k + 1)) * 0.5 * PERIOD_NS as f64 * 1e-9).sum();
    (past - first, energy)
}

/// Waits until the flood has produced `n` samples.
fn wait_for(produced: &AtomicU64, n: u64) {
    let started = Instant::now();
    while produced.load(Ordering::SeqCst) < n {
        assert!(started.elapsed() < PROMPT, "the flood produced only {} samples", produced.load(Ordering::SeqCst));
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_capture_longer_than_memory_spills_to_disk_and_keeps_exact_energy_and_every_raw_sample() {
    let spill_dir = tempfile::tempdir().unwrap();
    let limits = CaptureLimits { memory_samples: 20_000, ..CaptureLimits::spilling_to(spill_dir.path()) };
    let per_read = 2_000;
    // 10 s of stream (1,000,000 samples, 50 x the memory limit); the window is the 8 s inside it.
    let (monitor, flood) = FloodMonitor::new(per_read, 1_000_000);
    let session = PowerSession::start_with(Box::new(monitor), limits.clone()).unwrap();
    session.begin().unwrap();
    flood.flowing.store(true, Ordering::SeqCst);
    let window = HostWindow { start_ns: (T0_NS + 1_000_000_000) as i64, end_ns: (T0_NS + 9_000_000_000) as i64 };
    wait_for(&flood.produced, 950_000);
    let finished = session.finish(Some(window.end_ns), &AtomicBool::new(false)).unwrap();
    assert!(finished.covered);
    assert!(
        session.peak_capture_samples() <= limits.memory_samples + per_read,
        "held {} samples in memory, limit {}",
        session.peak_capture_samples(),
        limits.memory_samples
    );
    let capture = finished.capture;
    assert!(capture.spilled.is_some() && capture.samples.is_empty(), "the capture is on disk");
    // Every sample from the first through the one covering the window's end (the newest delivery
    // may still be on its way into the capture).
    assert!(capture.sample_count() > 900_000, "{}", capture.sample_count());
    assert_eq!(std::fs::read_dir(spill_dir.path()).unwrap().count(), 0, "the spill file is anonymous");

    let (count, energy_j) = flood_truth(window);
    let e = capture_window_energy(&capture, window).unwrap();
    assert_eq!(e.samples_in_window as u64, count);
    assert!((e.energy_j - energy_j).abs() <= 1e-9 * energy_j, "{} J vs {energy_j} J", e.energy_j);
    assert!((e.energy_j - 16.0).abs() < 1e-3, "2 W mean over 8 s: {}", e.energy_j);

    // The raw part holds every sample of the window, in order, written in batches.
    let results = tempfile::tempdir().unwrap();
    let key = CellKey { board: "flood".into(), freq_khz: 1_000_000, variant: "dense".into(), repeat: 0 };
    let rows = write_capture_power_part(results.path(), &key, &capture, window, &BoardLabels::local(true)).unwrap();
    assert_eq!(rows, count);
    assert!(rows as usize > 5 * RAW_POWER_BATCH_ROWS);
    merge_power_parts(results.path()).unwrap();
    let merged = read_parquet(&results.path().join(POWER_PARQUET)).unwrap();
    assert_eq!(merged.height() as u64, count);
    let t: Vec<i64> = merged.column("t_host_ns").unwrap().i64().unwrap().into_no_null_iter().collect();
    assert_eq!(t.first(), Some(&window.start_ns));
    assert_eq!(t.last(), Some(&(window.end_ns - PERIOD_NS as i64)));
    assert!(t.windows(2).all(|w| w[1] - w[0] == PERIOD_NS as i64));
    session.stop();
}

#[test]
fn a_capture_losing_samples_without_end_fails_naming_the_limit() {
    let limits = CaptureLimits { lost_runs: 1_000, ..CaptureLimits::default() };
    let (monitor, flood) = FloodMonitor::new(10, u64::MAX);
    flood.lose.store(true, Ordering::SeqCst);
    let session = PowerSession::start_with(Box::new(monitor), limits).unwrap();
    session.begin().unwrap();
    flood.flowing.store(true, Ordering::SeqCst);
    wait_for(&flood.produced, 20_000);
    let err = session.finish(None, &AtomicBool::new(false)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("flood://test") && text.contains("CAPTURE_LOST_RUNS_LIMIT (1000)"), "{text}");
    // The next capture starts afresh.
    flood.lose.store(false, Ordering::SeqCst);
    session.begin().unwrap();
    assert!(session.finish(None, &AtomicBool::new(false)).is_ok());
    session.stop();
}

#[test]
fn merging_raw_parts_streams_them_in_batches_and_refuses_a_part_with_other_columns() {
    let results = tempfile::tempdir().unwrap();
    let window = |from: u64, n: u64| HostWindow {
        start_ns: (T0_NS + from * PERIOD_NS) as i64,
        end_ns: (T0_NS + (from + n) * PERIOD_NS) as i64,
    };
    let capture = harness::samples::Capture { samples: (0..300_000).map(flood_sample).collect(), ..Default::default() };
    let key = |repeat| CellKey { board: "b".into(), freq_khz: 600_000, variant: "dense".into(), repeat };
    assert_eq!(
        write_capture_power_part(results.path(), &key(0), &capture, window(0, 250_000), &BoardLabels::local(false))
            .unwrap(),
        250_000
    );
    assert_eq!(
        write_capture_power_part(results.path(), &key(1), &capture, window(10, 5), &BoardLabels::local(false)).unwrap(),
        5
    );
    merge_power_parts(results.path()).unwrap();
    let merged = read_parquet(&results.path().join(POWER_PARQUET)).unwrap();
    assert_eq!(merged.height(), 250_005);
    let repeat = merged.column("repeat").unwrap().u32().unwrap();
    assert_eq!((repeat.get(0), repeat.get(249_999), repeat.get(250_000)), (Some(0), Some(0), Some(1)));

    let mut odd = polars::prelude::df!("other" => [1i64, 2]).unwrap();
    harness::results::write_parquet_atomic(&results.path().join("power_raw/zz_odd.parquet"), &mut odd).unwrap();
    let err = merge_power_parts(results.path()).unwrap_err();
    assert!(format!("{err:#}").contains("zz_odd.parquet"), "{err:#}");
}
