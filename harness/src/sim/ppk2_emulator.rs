//! A PPK2 emulator on a pseudo-terminal: the simulated board's power monitor.
//!
//! It answers the real protocol ([`crate::power::ppk2`]) on the device side of a pty pair, so the real
//! driver, or any other PPK2 client (Nordic's app, IRNAS `ppk2-api`), is what reads it. Commands, with
//! the argument bytes each takes ([N] `src/constants.ts` and `src/device/*.ts` of
//! `NordicSemiconductor/pc-nrfconnect-ppk`; [I] `src/ppk2_api/ppk2_api.py` of `IRNAS/ppk2-api-python`):
//!
//! | opcode | command | args | what the emulator does |
//! |---|---|---|---|
//! | `0x19` | `GET_META_DATA` | 0 | prints the metadata block (calibration, `VDD`, `mode`, `UG*`, marked `SIMULATED: 1`, so [`crate::power::PowerMonitor::identify`] reports `PPK2 (simulated)`) ending in `END` |
//! | `0x06` | `AVERAGE_START` | 0 | starts (or restarts, counter from 0) the 100 kS/s stream |
//! | `0x07` | `AVERAGE_STOP` | 0 | stops it; stream words the host has not taken yet are thrown away (whole words; [`EmulatorStats::samples_flushed`]), so the next client gets no stale stream |
//! | `0x0D` | `REGULATOR_SET` | 2 | regulator to `mV` big-endian (= [I]'s `(3 + d/256, d%256)`, `d = mV-800+32`), clamped to 800..5000 |
//! | `0x11` | `SET_POWER_MODE` | 1 | `1` ampere meter, `2` source meter (other values ignored) |
//! | `0x0C` | `DEVICE_RUNNING_SET` | 1 | DUT power on (non-zero) / off: the model's current, or 0 A |
//! | `0x25` | `SET_USER_GAINS` | 5 | range, `f32` LE gain: stored and reported as `UG<range>` (the host applies it) |
//! | `0x15`/`0x16` | `SPIKE_FILTERING_ON/OFF` | 0 | accepted, no effect (the filter is host-side in [N]) |
//! | `0x20` | `RESET` | 0 | reboots the MCU: stream stopped, unsent output lost, DUT off, ampere mode, regulator back to its power-up value (the port itself stays, as if re-enumerated at once) |
//! | other | - | 0 | skipped one byte at a time and counted ([`EmulatorStats::unknown_opcodes`]) |
//!
//! The firmware takes a command and its arguments from one USB transfer; a pty has no transfers, so a
//! command whose argument bytes have not all arrived within [`PARTIAL_COMMAND_TIMEOUT`] is discarded
//! (counted in [`EmulatorStats::bytes_ignored`]) instead of swallowing the next command as arguments.
//!
//! `AVERAGE_START` streams in real time: every 10 ms (by default) it writes the samples that fell due,
//! each encoded from a [`PowerModel`]'s current at that sample's time with the inverse of the
//! calibration formula, in the range the real device would pick, with the 6-bit counter.
//!
//! It never blocks on the pty: the device side is non-blocking and polled with a timeout, so a host that
//! stops reading, leaves, or dies mid-stream cannot wedge it, and [`Ppk2Emulator::shutdown`] returns
//! within [`SHUTDOWN_GRACE`] whatever a client did. Like a real PPK2 whose USB buffer overflows, once
//! more than [`EmulatorConfig::max_backlog`] of stream is waiting unread, new samples are dropped (never
//! generated) and the counter jumps, so the driver reports them as lost. (The kernel buffers some tens
//! of KiB in a pty before the device side is full.) [`Ppk2Emulator::inject_loss`] drops a given number
//! of samples on demand, for fault tests.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};

use crate::power::ppk2::{
    format_metadata, opcode, parse_metadata, Command, Modifiers, PowerMode, StreamWord, COUNTER_MODULUS, RANGES,
    SAMPLE_RATE_HZ, VDD_MAX_MV, VDD_MIN_MV,
};

/// `SET_USER_GAINS` ([N] `SetUserGains: 0x25`, sent as `[0x25, range, ...f32 LE]` by `ppkSetUserGains`).
pub const SET_USER_GAINS: u8 = 0x25;
/// `SPIKE_FILTERING_ON` / `_OFF` ([N] `0x15`, `0x16`; [I] the same).
pub const SPIKE_FILTERING_ON: u8 = 0x15;
pub const SPIKE_FILTERING_OFF: u8 = 0x16;

/// How long an incomplete command may wait for its argument bytes before it is discarded.
pub const PARTIAL_COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// How long [`Ppk2Emulator::shutdown`] waits for the serving thread (which polls its stop flag at least
/// every 10 ms and never blocks on the pty) before leaving it behind.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Longest poll of the pty: the stop flag is seen at least this often.
const MAX_POLL: Duration = Duration::from_millis(10);
/// Most bytes handed to one `write(2)`.
const WRITE_SLICE: usize = 64 * 1024;

/// Where the simulated board's current comes from.
pub trait PowerModel: Send + 'static {
    /// Current in amperes drawn `t_s` seconds after the stream started, with the rail at `supply_v`.
    fn current_a(&mut self, t_s: f64, supply_v: f64) -> f64;
}

impl<F: FnMut(f64, f64) -> f64 + Send + 'static> PowerModel for F {
    fn current_a(&mut self, t_s: f64, supply_v: f64) -> f64 {
        self(t_s, supply_v)
    }
}

/// How the emulator behaves.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Calibration printed in the metadata (and used, after the same defaults the driver applies, to
    /// encode currents).
    pub modifiers: Modifiers,
    /// `HW` value in the metadata.
    pub hw: String,
    /// Regulator setting at power-up, millivolts.
    pub initial_vdd_mv: u32,
    /// How often samples are written.
    pub chunk: Duration,
    /// How much unread stream may wait before new samples are dropped.
    pub max_backlog: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            // Factory-style calibration of a real unit (values as quoted in the community ppk2-rs crate).
            modifiers: Modifiers {
                r: [1003.3506, 101.5865, 10.3027, 0.9636, 0.0564],
                gs: [0.0, 112.7890, 18.0115, 2.4217, 0.0729],
                gi: [1.0, 0.9695, 0.9609, 0.9519, 0.9582],
                o: [112.9420, 75.4627, 64.6020, 50.4983, 87.2177],
                s: [0.000000048, 0.000000596, 0.000005281, 0.000062577, 0.002940743],
                i: [-0.000000104, -0.000001443, 0.000036439, -0.000374119, -0.009388455],
                ug: [1.0; 5],
            },
            hw: "9173-sim".to_string(),
            initial_vdd_mv: 3000,
            chunk: Duration::from_millis(10),
            max_backlog: Duration::from_millis(250),
        }
    }
}

/// What the emulator did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmulatorStats {
    /// Samples generated for the host (written to the pty, or queued for it).
    pub samples_sent: u64,
    /// Samples dropped because the host was not reading (never generated: the counter jumps).
    pub samples_dropped: u64,
    /// Queued samples the host had not taken yet when the stream stopped or restarted, thrown away.
    pub samples_flushed: u64,
    /// Commands decoded (unknown opcodes included).
    pub commands: u64,
    pub streams_started: u64,
    /// Bytes that were not a known opcode (each skipped on its own).
    pub unknown_opcodes: u64,
    /// Bytes ignored: unknown opcodes, bad arguments, and incomplete commands that timed out.
    pub bytes_ignored: u64,
    /// `RESET` commands obeyed.
    pub resets: u64,
    /// Regulator setting, millivolts.
    pub vdd_mv: u32,
    /// Board power (`DEVICE_RUNNING_SET`).
    pub board_powered: bool,
    pub source_mode: bool,
    /// Stream running.
    pub streaming: bool,
}

/// A running emulator. Dropping it (or [`Ppk2Emulator::shutdown`]) closes the device side: the host's
/// driver then sees a hang-up, as when a PPK2 is unplugged.
#[derive(Debug)]
pub struct Ppk2Emulator {
    path: PathBuf,
    links: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<EmulatorStats>>,
    /// Samples still to drop as they fall due (fault injection).
    drop_pending: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Ppk2Emulator {
    /// Creates the pty pair and starts serving on a thread of its own.
    pub fn spawn(model: impl PowerModel, config: EmulatorConfig) -> io::Result<Self> {
        let (device, host_side) = TTYPort::pair().map_err(io::Error::from)?;
        // Neither end may leak into child processes (e.g. a simulated board's agent): a child
        // holding the master open would hide the hang-up that tells the driver it was unplugged.
        // The device side is non-blocking: a write must never wait for a host that may never read.
        for fd in [device.as_raw_fd(), host_side.as_raw_fd()] {
            // SAFETY: fcntl on descriptors we own; F_SETFD with FD_CLOEXEC has no other effect.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        set_nonblocking(device.as_raw_fd())?;
        let path = PathBuf::from(host_side.name().ok_or_else(|| io::Error::other("pty pair has no slave name"))?);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(EmulatorStats { vdd_mv: config.initial_vdd_mv, ..EmulatorStats::default() }));
        let drop_pending = Arc::new(AtomicU64::new(0));
        let mut device_state = Device::new(model, config);
        device_state.drop_pending = drop_pending.clone();
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new().name("ppk2-emulator".into()).spawn(move || {
            // The host side stays open here so the pty lives (and keeps its raw termios) while no
            // driver has it open (a slave with no opener makes reads on the device side fail with EIO).
            let _keep_open = host_side;
            device_state.serve(device.as_raw_fd(), &stop2, &stats2);
            drop(device);
        })?;
        Ok(Self { path, links: Vec::new(), stop, stats, drop_pending, thread: Some(thread) })
    }

    /// The path the driver opens (`/dev/pts/N`).
    pub fn port_path(&self) -> &Path {
        &self.path
    }

    /// Adds a symlink at `link` to the pty (a stable path for `hil sim serve`); removed on shutdown.
    pub fn link_at(&mut self, link: &Path) -> io::Result<()> {
        if link.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(link)?;
        }
        std::os::unix::fs::symlink(&self.path, link)?;
        self.links.push(link.to_path_buf());
        Ok(())
    }

    /// Fault injection: the next `samples` samples to fall due are dropped (the stream goes quiet for
    /// that long, then resumes with the counter jumped), as when a PPK2's buffer overflows.
    pub fn inject_loss(&self, samples: u64) {
        self.drop_pending.fetch_add(samples, Ordering::SeqCst);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EmulatorStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops serving and closes the device side; returns the final counters. Returns within
    /// [`SHUTDOWN_GRACE`] whatever state a host left the device in.
    pub fn shutdown(mut self) -> EmulatorStats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if join_within(t, SHUTDOWN_GRACE).is_err() {
                eprintln!(
                    "warning: the PPK2 emulator's thread did not stop within {} ms; left to end with the process",
                    SHUTDOWN_GRACE.as_millis()
                );
            }
        }
        for link in self.links.drain(..) {
            if std::fs::read_link(&link).is_ok_and(|target| target == self.path) {
                let _ = std::fs::remove_file(&link);
            }
        }
    }
}

impl Drop for Ppk2Emulator {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Joins `thread` if it finishes within `grace`; otherwise leaves it running (detached) and returns it
/// as an error. Never blocks longer than `grace` (plus a poll interval).
pub fn join_within(thread: JoinHandle<()>, grace: Duration) -> Result<(), JoinHandle<()>> {
    let deadline = Instant::now() + grace;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return Err(thread);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = thread.join();
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `poll(2)` on one descriptor; returns its `revents` (0 on timeout or EINTR).
fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> libc::c_short {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n > 0 {
        pfd.revents
    } else {
        0
    }
}

/// One command as decoded by the emulator.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Request {
    /// A command the driver also speaks.
    Known(Command),
    /// `SET_USER_GAINS`: range and gain.
    UserGain(u8, f32),
    /// A public opcode with no effect on what the emulator sends (spike filter on/off).
    NoEffect(u8),
    /// A byte that is no PPK2 command, or a command with an invalid argument: ignored.
    Ignored { bytes: usize },
}

/// Argument bytes that follow `op` on the wire.
fn arg_len(op: u8) -> usize {
    match op {
        opcode::REGULATOR_SET => 2,
        opcode::SET_POWER_MODE | opcode::DEVICE_RUNNING_SET => 1,
        SET_USER_GAINS => 5,
        _ => 0,
    }
}

/// Decodes as many whole commands as `bytes` holds; returns them and the bytes consumed (a command whose
/// argument bytes have not all arrived yet is left for later).
fn decode(bytes: &[u8]) -> (Vec<Request>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let op = bytes[at];
        let n = arg_len(op);
        if at + 1 + n > bytes.len() {
            break;
        }
        let a = &bytes[at + 1..at + 1 + n];
        out.push(match op {
            opcode::GET_META_DATA => Request::Known(Command::GetMetadata),
            opcode::AVERAGE_START => Request::Known(Command::AverageStart),
            opcode::AVERAGE_STOP => Request::Known(Command::AverageStop),
            opcode::RESET => Request::Known(Command::Reset),
            opcode::REGULATOR_SET => Request::Known(Command::RegulatorSet(u16::from_be_bytes([a[0], a[1]]))),
            opcode::SET_POWER_MODE => match a[0] {
                1 => Request::Known(Command::SetPowerMode(PowerMode::Ampere)),
                2 => Request::Known(Command::SetPowerMode(PowerMode::Source)),
                _ => Request::Ignored { bytes: 2 },
            },
            opcode::DEVICE_RUNNING_SET => Request::Known(Command::DeviceRunning(a[0] != 0)),
            SET_USER_GAINS => {
                let gain = f32::from_le_bytes([a[1], a[2], a[3], a[4]]);
                if usize::from(a[0]) < RANGES && gain.is_finite() && gain > 0.0 {
                    Request::UserGain(a[0], gain)
                } else {
                    Request::Ignored { bytes: 6 }
                }
            }
            SPIKE_FILTERING_ON | SPIKE_FILTERING_OFF => Request::NoEffect(op),
            _ => Request::Known(Command::Unknown(op)),
        });
        at += 1 + n;
    }
    (out, at)
}

/// The emulated device's state.
struct Device<M> {
    model: M,
    config: EmulatorConfig,
    /// Calibration as the driver will apply it (defaults for zero/missing values included), from the
    /// factory values: what samples are encoded with.
    effective: Modifiers,
    /// Calibration the metadata reports (user gains as last set).
    reported: Modifiers,
    vdd_mv: u32,
    mode: PowerMode,
    powered: bool,
    stream: Option<Stream>,
    inbox: Vec<u8>,
    /// When the oldest incomplete command in the inbox arrived.
    partial_since: Option<Instant>,
    outbox: Vec<u8>,
    out_pos: usize,
    /// End of the last text (metadata) in the outbox: after it, the outbox holds whole stream words.
    text_end: usize,
    /// Last current encoded and its (range, raw), to skip the inverse for a steady model.
    last: Option<(f64, u32, u8, u16)>,
    drop_pending: Arc<AtomicU64>,
}

struct Stream {
    started: Instant,
    /// Index of the next sample to produce (dropped ones included).
    next_index: u64,
}

impl<M: PowerModel> Device<M> {
    fn new(model: M, config: EmulatorConfig) -> Self {
        let text =
            format_metadata(&config.modifiers, true, config.initial_vdd_mv, &config.hw, PowerMode::Ampere, "0", &[]);
        let effective = parse_metadata(&text).map(|m| m.modifiers).unwrap_or(config.modifiers);
        Self {
            model,
            vdd_mv: config.initial_vdd_mv,
            reported: config.modifiers,
            config,
            effective,
            mode: PowerMode::Ampere,
            powered: false,
            stream: None,
            inbox: Vec::new(),
            partial_since: None,
            outbox: Vec::new(),
            out_pos: 0,
            text_end: 0,
            last: None,
            drop_pending: Arc::new(AtomicU64::new(0)),
        }
    }

    fn pending(&self) -> usize {
        self.outbox.len() - self.out_pos
    }

    fn clear_outbox(&mut self) {
        self.outbox.clear();
        self.out_pos = 0;
        self.text_end = 0;
    }

    /// Throws away the stream words not yet handed to the host (whole words only, so a host that reads
    /// on stays aligned), as when a PPK2's stream stops: what the host had not taken is gone, and the
    /// next client does not receive a stale stream.
    fn discard_unsent_stream(&mut self, stats: &mut EmulatorStats) {
        let keep = if self.out_pos > self.text_end {
            self.text_end + (self.out_pos - self.text_end).div_ceil(4) * 4
        } else {
            self.text_end
        };
        if keep < self.outbox.len() {
            stats.samples_flushed += ((self.outbox.len() - keep) / 4) as u64;
            self.outbox.truncate(keep);
        }
    }

    /// The serving loop on the (non-blocking) device side `fd`. Every wait is a `poll(2)` of at most
    /// [`MAX_POLL`], so `stop` is seen within that, whatever the host does.
    fn serve(&mut self, fd: RawFd, stop: &AtomicBool, stats: &Mutex<EmulatorStats>) {
        let mut buf = [0u8; 4096];
        let mut local = EmulatorStats::default();
        let mut next_tick = Instant::now();
        // After a write found the pty full, wait for the next tick (not for POLLOUT, which a nearly
        // full pty reports for every few bytes freed) before writing again.
        let mut write_blocked = false;
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let wait = if self.stream.is_some() { next_tick.saturating_duration_since(now) } else { MAX_POLL };
            let mut events = libc::POLLIN;
            if self.pending() > 0 && !write_blocked {
                events |= libc::POLLOUT;
            }
            let revents = poll_one(fd, events, wait.min(MAX_POLL));
            if revents & libc::POLLIN != 0 {
                self.read_available(fd, &mut buf);
            } else if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                // No host side open (or an error): poll would return at once; don't spin.
                std::thread::sleep(wait.clamp(Duration::from_millis(1), MAX_POLL));
            }
            let now = Instant::now();
            self.handle_commands(now, &mut local);
            if now >= next_tick {
                next_tick = now + self.config.chunk;
                write_blocked = false;
                self.produce(now, &mut local);
            }
            if !write_blocked && self.pending() > 0 {
                write_blocked = self.flush(fd);
            }
            local.vdd_mv = self.vdd_mv;
            local.board_powered = self.powered;
            local.source_mode = self.mode == PowerMode::Source;
            local.streaming = self.stream.is_some();
            if let Ok(mut s) = stats.lock() {
                *s = local.clone();
            }
        }
    }

    /// Reads what the host sent (bounded, so a flood of bytes cannot starve the stream).
    fn read_available(&mut self, fd: RawFd, buf: &mut [u8]) {
        for _ in 0..16 {
            // SAFETY: reading into a buffer we own, at most its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                self.inbox.extend_from_slice(&buf[..n as usize]);
                if (n as usize) < buf.len() {
                    break;
                }
            } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            } else {
                break; // EAGAIN, EIO (no host side), or end of file
            }
        }
    }

    fn handle_commands(&mut self, now: Instant, stats: &mut EmulatorStats) {
        if self.inbox.is_empty() {
            return;
        }
        let (requests, used) = decode(&self.inbox);
        self.inbox.drain(..used);
        for request in requests {
            self.apply(request, stats);
        }
        if self.inbox.is_empty() {
            self.partial_since = None;
        } else {
            // An incomplete command: its arguments get a moment to arrive, then it is discarded.
            let since = *self.partial_since.get_or_insert(now);
            if used > 0 {
                self.partial_since = Some(now);
            } else if now.duration_since(since) >= PARTIAL_COMMAND_TIMEOUT {
                stats.bytes_ignored += 1;
                self.inbox.remove(0);
                self.partial_since = None;
                // What follows the discarded opcode is decoded afresh.
                self.handle_commands(now, stats);
            }
        }
    }

    fn apply(&mut self, request: Request, stats: &mut EmulatorStats) {
        stats.commands += 1;
        let cmd = match request {
            Request::Known(cmd) => cmd,
            Request::UserGain(range, gain) => {
                self.reported.ug[usize::from(range)] = f64::from(gain);
                return;
            }
            Request::NoEffect(_) => return,
            Request::Ignored { bytes } => {
                stats.bytes_ignored += bytes as u64;
                return;
            }
        };
        match cmd {
            Command::GetMetadata => {
                let text = format_metadata(
                    &self.reported,
                    true,
                    self.vdd_mv,
                    &self.config.hw,
                    self.mode,
                    "0",
                    &[("SIMULATED", "1")],
                );
                self.outbox.extend_from_slice(text.as_bytes());
                self.text_end = self.outbox.len();
            }
            Command::AverageStart => {
                stats.streams_started += 1;
                self.discard_unsent_stream(stats);
                self.stream = Some(Stream { started: Instant::now(), next_index: 0 });
            }
            Command::AverageStop => {
                self.stream = None;
                self.discard_unsent_stream(stats);
            }
            Command::RegulatorSet(mv) => self.vdd_mv = u32::from(mv).clamp(VDD_MIN_MV, VDD_MAX_MV),
            Command::SetPowerMode(mode) => self.mode = mode,
            Command::DeviceRunning(on) => self.powered = on,
            Command::Reset => {
                stats.resets += 1;
                self.stream = None;
                self.powered = false;
                self.vdd_mv = self.config.initial_vdd_mv;
                self.mode = PowerMode::Ampere;
                // The rebooting MCU loses what it had not sent yet.
                self.clear_outbox();
            }
            Command::Unknown(_) => {
                stats.unknown_opcodes += 1;
                stats.bytes_ignored += 1;
            }
        }
    }

    /// Appends the samples due by `now` to the outbox (or drops them when the host is not reading).
    fn produce(&mut self, now: Instant, stats: &mut EmulatorStats) {
        let pending = self.pending();
        let Some(stream) = &mut self.stream else { return };
        let due = (now.duration_since(stream.started).as_secs_f64() * SAMPLE_RATE_HZ) as u64;
        if due <= stream.next_index {
            return;
        }
        let backlog_bytes = (self.config.max_backlog.as_secs_f64() * SAMPLE_RATE_HZ) as usize * 4;
        if pending > backlog_bytes {
            stats.samples_dropped += due - stream.next_index;
            stream.next_index = due;
            return;
        }
        let injected = self.drop_pending.load(Ordering::SeqCst).min(due - stream.next_index);
        if injected > 0 {
            self.drop_pending.fetch_sub(injected, Ordering::SeqCst);
            stats.samples_dropped += injected;
            stream.next_index += injected;
            if stream.next_index == due {
                return;
            }
        }
        let supply_v = f64::from(self.vdd_mv) / 1000.0;
        self.outbox.reserve(((due - stream.next_index) * 4) as usize);
        for k in stream.next_index..due {
            let t_s = k as f64 / SAMPLE_RATE_HZ;
            let current = if self.powered { self.model.current_a(t_s, supply_v) } else { 0.0 };
            let (range, adc) = match self.last {
                Some((c, vdd, r, a)) if c == current && vdd == self.vdd_mv => (r, a),
                _ => {
                    let (r, a) = self.effective.auto_range(current, f64::from(self.vdd_mv));
                    self.last = Some((current, self.vdd_mv, r, a));
                    (r, a)
                }
            };
            let counter = (k % u64::from(COUNTER_MODULUS)) as u8;
            let word = StreamWord { adc, range, counter, logic: 0 }.to_u32();
            self.outbox.extend_from_slice(&word.to_le_bytes());
        }
        stats.samples_sent += due - stream.next_index;
        stream.next_index = due;
    }

    /// Writes what the pty takes right now, never waiting. Returns whether the pty was full.
    fn flush(&mut self, fd: RawFd) -> bool {
        let mut full = false;
        while self.out_pos < self.outbox.len() {
            let chunk = &self.outbox[self.out_pos..self.outbox.len().min(self.out_pos + WRITE_SLICE)];
            // SAFETY: writing from a slice we own, at most its length, on a non-blocking descriptor.
            let n = unsafe { libc::write(fd, chunk.as_ptr().cast(), chunk.len()) };
            if n > 0 {
                self.out_pos += n as usize;
                continue;
            }
            if n == 0 {
                full = true;
                break;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => full = true,
                // The host side is gone for good (or broken): what is queued is lost, as on a PPK2
                // whose USB host went away.
                _ => self.clear_outbox(),
            }
            break;
        }
        if self.out_pos == self.outbox.len() {
            self.clear_outbox();
        } else if self.out_pos > 1 << 20 {
            self.outbox.drain(..self.out_pos);
            self.text_end = self.text_end.saturating_sub(self.out_pos);
            self.out_pos = 0;
        }
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(dev: &mut Device<impl PowerModel>, bytes: &[u8], at: Instant, stats: &mut EmulatorStats) {
        dev.inbox.extend_from_slice(bytes);
        dev.handle_commands(at, stats);
    }

    fn metadata_out(dev: &mut Device<impl PowerModel>) -> crate::power::ppk2::Ppk2Metadata {
        let text = String::from_utf8(dev.outbox.clone()).unwrap();
        dev.clear_outbox();
        parse_metadata(&text).unwrap()
    }

    #[test]
    fn encoding_decodes_to_the_model_in_every_range() {
        let config = EmulatorConfig::default();
        let dev = Device::new(|_: f64, _: f64| 0.0, config);
        let decoder_view = dev.effective;
        for current in [2e-6, 150e-6, 2e-3, 30e-3, 0.3, 0.9, 2.5] {
            let (range, raw) = dev.effective.auto_range(current, 5000.0);
            let back = decoder_view.current_a(usize::from(range), raw, 5000.0);
            let lsb = (decoder_view.current_a(usize::from(range), raw + 1, 5000.0) - back).abs();
            assert!((back - current).abs() <= lsb, "{current} A -> range {range} raw {raw} -> {back}");
        }
    }

    #[test]
    fn commands_change_state_and_metadata_is_marked_simulated() {
        let mut dev = Device::new(|_: f64, v: f64| 0.1 * v, EmulatorConfig::default());
        let mut stats = EmulatorStats::default();
        feed(&mut dev, &[0x11, 2, 0x0D, 0x13, 0x88, 0x0C, 1, 0x19, 0x42], Instant::now(), &mut stats);
        assert_eq!((dev.mode, dev.vdd_mv, dev.powered), (PowerMode::Source, 5000, true));
        assert_eq!((stats.commands, stats.unknown_opcodes, stats.bytes_ignored), (5, 1, 1));
        let meta = metadata_out(&mut dev);
        assert!(meta.is_simulated());
        assert_eq!(meta.vdd_mv, Some(5000));
        assert_eq!(meta.mode, Some(2));
    }

    /// The exact bytes IRNAS `ppk2-api` 0.9.2 writes ([I] `use_source_meter`, `set_source_voltage`,
    /// `toggle_DUT_power`, `start_measuring`, `stop_measuring`, `use_ampere_meter`), each as one write.
    #[test]
    fn ppk2_api_byte_sequences_are_understood() {
        let mut dev = Device::new(|_: f64, _: f64| 0.4, EmulatorConfig::default());
        let mut stats = EmulatorStats::default();
        let t = Instant::now();
        feed(&mut dev, &[0x19], t, &mut stats);
        assert!(metadata_out(&mut dev).is_simulated());
        feed(&mut dev, &[0x11, 2], t, &mut stats);
        assert_eq!(dev.mode, PowerMode::Source);
        // set_source_voltage(5000): d = 5000 - 800 + 32 = 4232 -> (3 + 16, 136).
        feed(&mut dev, &[0x0D, 19, 136], t, &mut stats);
        assert_eq!(dev.vdd_mv, 5000);
        // set_source_voltage(800) -> (3, 32); 3300 -> (3 + 9, 228).
        feed(&mut dev, &[0x0D, 3, 32], t, &mut stats);
        assert_eq!(dev.vdd_mv, 800);
        feed(&mut dev, &[0x0D, 12, 228], t, &mut stats);
        assert_eq!(dev.vdd_mv, 3300);
        feed(&mut dev, &[0x0C, 1], t, &mut stats);
        assert!(dev.powered);
        feed(&mut dev, &[0x06], t, &mut stats);
        assert!(dev.stream.is_some());
        feed(&mut dev, &[0x0C, 0], t, &mut stats);
        assert!(!dev.powered && dev.stream.is_some(), "DUT power off keeps the stream running");
        feed(&mut dev, &[0x07], t, &mut stats);
        assert!(dev.stream.is_none());
        feed(&mut dev, &[0x11, 1], t, &mut stats);
        assert_eq!(dev.mode, PowerMode::Ampere);
        assert_eq!((stats.commands, stats.streams_started, stats.bytes_ignored), (10, 1, 0));
    }

    #[test]
    fn user_gains_and_spike_filter_commands_are_taken_with_their_arguments() {
        let mut dev = Device::new(|_: f64, _: f64| 0.4, EmulatorConfig::default());
        let mut stats = EmulatorStats::default();
        let t = Instant::now();
        // [N] ppkSetUserGains(3, 1.25): [0x25, 3, ...f32 LE]. Its gain bytes include 0x20 (RESET) and
        // 0x06-ish values that must not be taken as opcodes.
        let mut cmd = vec![SET_USER_GAINS, 3];
        cmd.extend(1.25f32.to_le_bytes());
        cmd.extend([SPIKE_FILTERING_ON, SPIKE_FILTERING_OFF, 0x19]);
        feed(&mut dev, &cmd, t, &mut stats);
        assert_eq!(stats.resets, 0);
        let meta = metadata_out(&mut dev);
        assert_eq!(meta.modifiers.ug[3], 1.25);
        assert_eq!(meta.modifiers.ug[2], 1.0);
        // The encoding keeps the factory calibration: the host applies the user gain.
        assert_eq!(dev.effective.ug[3], 1.0);
        // Out-of-range gain or range: ignored whole.
        let mut bad = vec![SET_USER_GAINS, 7];
        bad.extend(1.0f32.to_le_bytes());
        feed(&mut dev, &bad, t, &mut stats);
        assert_eq!(stats.bytes_ignored, 6);
        assert_eq!(stats.commands, 5);
    }

    #[test]
    fn reset_reboots_the_device_state() {
        let config = EmulatorConfig { initial_vdd_mv: 3000, ..EmulatorConfig::default() };
        let mut dev = Device::new(|_: f64, _: f64| 0.4, config);
        let mut stats = EmulatorStats::default();
        let t = Instant::now();
        let mut gains = vec![SET_USER_GAINS, 1];
        gains.extend(0.5f32.to_le_bytes());
        feed(&mut dev, &gains, t, &mut stats);
        feed(&mut dev, &[0x11, 2, 0x0D, 19, 136, 0x0C, 1, 0x06], t, &mut stats);
        dev.produce(t + Duration::from_millis(10), &mut stats);
        assert!(dev.pending() > 0);
        feed(&mut dev, &[0x20], t, &mut stats);
        assert!(dev.stream.is_none() && !dev.powered);
        assert_eq!((dev.mode, dev.vdd_mv, dev.pending(), stats.resets), (PowerMode::Ampere, 3000, 0, 1));
        // The device answers again after the reset; user gains live in flash and survive it.
        feed(&mut dev, &[0x19], t, &mut stats);
        let meta = metadata_out(&mut dev);
        assert_eq!((meta.vdd_mv, meta.mode, meta.modifiers.ug[1]), (Some(3000), Some(1), 0.5));
    }

    #[test]
    fn garbage_and_dangling_commands_never_wedge_the_decoder() {
        let mut dev = Device::new(|_: f64, _: f64| 0.4, EmulatorConfig::default());
        let mut stats = EmulatorStats::default();
        let t0 = Instant::now();
        // Bytes that are no command, then a REGULATOR_SET whose arguments never come.
        feed(&mut dev, &[0x00, 0x42, 0xFF, 0x99, 0x0D], t0, &mut stats);
        assert_eq!(stats.unknown_opcodes, 4);
        assert_eq!(dev.inbox, [0x0D], "waits for the arguments a moment");
        dev.handle_commands(t0 + PARTIAL_COMMAND_TIMEOUT / 2, &mut stats);
        assert_eq!(dev.inbox, [0x0D]);
        dev.handle_commands(t0 + PARTIAL_COMMAND_TIMEOUT, &mut stats);
        assert!(dev.inbox.is_empty(), "discarded after the timeout");
        assert_eq!(stats.bytes_ignored, 5);
        let t1 = t0 + PARTIAL_COMMAND_TIMEOUT * 2;
        feed(&mut dev, &[0x19], t1, &mut stats);
        assert_eq!(metadata_out(&mut dev).vdd_mv, Some(3000), "the regulator was not touched");
        // Arguments that arrive in pieces, in time, still make their command.
        feed(&mut dev, &[0x0D, 0x13], t1, &mut stats);
        feed(&mut dev, &[0x88], t1 + PARTIAL_COMMAND_TIMEOUT / 2, &mut stats);
        assert_eq!(dev.vdd_mv, 5000);
        // Every byte value, each left dangling as long as it takes: the device still answers after.
        let mut t = t1 + PARTIAL_COMMAND_TIMEOUT;
        for b in 0..=255u8 {
            if b == opcode::RESET || b == opcode::AVERAGE_START {
                continue;
            }
            feed(&mut dev, &[b], t, &mut stats);
            t += PARTIAL_COMMAND_TIMEOUT;
            dev.handle_commands(t, &mut stats);
            assert!(dev.inbox.is_empty(), "byte {b:#04x} left the inbox wedged: {:?}", dev.inbox);
        }
        dev.clear_outbox();
        feed(&mut dev, &[0x19], t, &mut stats);
        assert!(metadata_out(&mut dev).is_simulated());
    }

    #[test]
    fn produce_counts_and_drops_when_not_read() {
        let config = EmulatorConfig { max_backlog: Duration::from_millis(5), ..EmulatorConfig::default() };
        let mut dev = Device::new(|_: f64, _: f64| 0.01, config);
        let mut stats = EmulatorStats::default();
        let t0 = Instant::now();
        dev.stream = Some(Stream { started: t0, next_index: 0 });
        dev.powered = true;
        dev.produce(t0 + Duration::from_millis(10), &mut stats);
        assert_eq!(stats.samples_sent, 1000);
        assert_eq!(dev.outbox.len(), 4000);
        let words: Vec<StreamWord> =
            dev.outbox.chunks(4).map(|c| StreamWord::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
        assert!(words.iter().enumerate().all(|(k, w)| usize::from(w.counter) == k % 64));
        // Nobody reads: 4000 bytes pending > 5 ms backlog (2000 bytes): the next 10 ms are dropped.
        dev.produce(t0 + Duration::from_millis(20), &mut stats);
        assert_eq!(stats.samples_dropped, 1000);
        assert_eq!(dev.stream.as_ref().unwrap().next_index, 2000);
    }

    #[test]
    fn stopping_throws_away_unsent_stream_words_but_keeps_text_and_alignment() {
        let mut dev = Device::new(|_: f64, _: f64| 0.4, EmulatorConfig::default());
        let mut stats = EmulatorStats::default();
        let t0 = Instant::now();
        feed(&mut dev, &[0x0C, 1, 0x06], t0, &mut stats);
        dev.produce(t0 + Duration::from_millis(10), &mut stats);
        feed(&mut dev, &[0x19], t0, &mut stats);
        let text_end = dev.outbox.len();
        let first_words = stats.samples_sent as usize;
        dev.produce(t0 + Duration::from_millis(20), &mut stats);
        let second_words = (dev.outbox.len() - text_end) / 4;
        assert!(second_words > 0);
        // The host took the first stream words and 2 bytes of the metadata.
        dev.out_pos = first_words * 4 + 2;
        feed(&mut dev, &[0x07], t0, &mut stats);
        assert_eq!(dev.outbox.len(), text_end, "text kept, the unsent stream after it gone");
        assert_eq!(stats.samples_flushed, second_words as u64);
        // Host mid-word in the stream after the text: the word it started is completed.
        let mut dev = Device::new(|_: f64, _: f64| 0.4, EmulatorConfig::default());
        let mut stats = EmulatorStats::default();
        feed(&mut dev, &[0x0C, 1, 0x06], t0, &mut stats);
        dev.produce(t0 + Duration::from_millis(10), &mut stats);
        let words = dev.outbox.len() as u64 / 4;
        dev.out_pos = 6;
        feed(&mut dev, &[0x06], t0, &mut stats);
        assert_eq!((dev.outbox.len(), stats.samples_flushed), (8, words - 2));
        assert!(dev.stream.is_some(), "a restart streams on");
    }

    /// The hang of issue 16: a host that reads slower than the stream (so a large write is in flight
    /// when it stops), then stops reading and closes the port while streaming. The emulator must keep
    /// serving without blocking and shut down at once.
    #[test]
    fn a_host_that_stops_reading_and_leaves_cannot_block_shutdown() {
        use std::io::{Read, Write};
        let emu = Ppk2Emulator::spawn(|_: f64, _: f64| 0.4, EmulatorConfig::default()).unwrap();
        let mut host = serialport::new(emu.port_path().to_string_lossy(), 115_200)
            .timeout(Duration::from_millis(20))
            .open_native()
            .unwrap();
        host.write_all(&[0x11, 2, 0x0D, 19, 136, 0x0C, 1, 0x06]).unwrap();
        let begin = Instant::now();
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while begin.elapsed() < Duration::from_millis(400) {
            got += host.read(&mut buf).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(got > 0);
        // Stop reading (pty fills up), leave it streaming, then close the port.
        std::thread::sleep(Duration::from_millis(400));
        drop(host);
        std::thread::sleep(Duration::from_millis(300));
        let stats = emu.stats();
        assert!(stats.streaming && stats.samples_dropped > 0, "{stats:?}");
        // A second host can still talk to it.
        let mut again = serialport::new(emu.port_path().to_string_lossy(), 115_200)
            .timeout(Duration::from_millis(50))
            .open_native()
            .unwrap();
        again.write_all(&[0x07]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while emu.stats().streaming && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!emu.stats().streaming);
        again.write_all(&[0x06]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let fin = emu.shutdown();
        let took = t.elapsed();
        assert!(took < Duration::from_millis(100), "shutdown took {took:?}");
        assert!(fin.streams_started >= 2, "{fin:?}");
        // The host now sees the device gone (hang-up), as when a PPK2 is unplugged.
        let mut hup = false;
        for _ in 0..200 {
            match again.read(&mut buf) {
                Ok(0) => hup = true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(_) => hup = true,
            }
            break;
        }
        assert!(hup, "the host side did not see the hang-up");
    }
}
