//! A PPK2 emulator on a pseudo-terminal: the simulated board's power monitor.
//!
//! It answers the real protocol ([`crate::power::ppk2`]) on the device side of a pty pair, so the real
//! driver is what reads it: `GET_META_DATA` gets a metadata block with calibration values (marked
//! `SIMULATED: 1`, so [`crate::power::PowerMonitor::identify`] reports the model as
//! `PPK2 (simulated)`), `REGULATOR_SET`, `SET_POWER_MODE`, `DEVICE_RUNNING_SET` and `RESET` change its
//! state, and `AVERAGE_START` starts a stream of 100 kS/s in real time: every 10 ms (by default) it
//! writes the samples that fell due, each encoded from a [`PowerModel`]'s current at that sample's time
//! with the inverse of the calibration formula, in the range the real device would pick, with the 6-bit
//! counter.
//!
//! Like a real PPK2 whose USB buffer overflows, it does not block when the host stops reading: once more
//! than [`EmulatorConfig::max_backlog`] of stream is waiting unread, new samples are dropped (never
//! generated) and the counter jumps, so the driver reports them as lost. (The kernel buffers several
//! hundred KiB in a pty before a write blocks, so that takes a second or more of not reading.)
//! [`Ppk2Emulator::inject_loss`] drops a given number of samples on demand, for fault tests.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use serialport::{SerialPort, TTYPort};

use crate::power::ppk2::{
    format_metadata, parse_metadata, Command, Modifiers, PowerMode, StreamWord, COUNTER_MODULUS, SAMPLE_RATE_HZ,
    VDD_MAX_MV, VDD_MIN_MV,
};

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
    /// Samples written to the pty.
    pub samples_sent: u64,
    /// Samples dropped because the host was not reading.
    pub samples_dropped: u64,
    pub commands: u64,
    pub streams_started: u64,
    pub unknown_opcodes: u64,
    /// Regulator setting, millivolts.
    pub vdd_mv: u32,
    /// Board power (`DEVICE_RUNNING_SET`).
    pub board_powered: bool,
    pub source_mode: bool,
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
        let (mut device, host_side) = TTYPort::pair().map_err(io::Error::from)?;
        // Neither end may leak into child processes (e.g. a simulated board's agent): a child
        // holding the master open would hide the hang-up that tells the driver it was unplugged.
        for fd in [device.as_raw_fd(), host_side.as_raw_fd()] {
            // SAFETY: fcntl on descriptors we own; F_SETFD with FD_CLOEXEC has no other effect.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        let path = PathBuf::from(host_side.name().ok_or_else(|| io::Error::other("pty pair has no slave name"))?);
        device.set_timeout(Duration::from_millis(1)).map_err(io::Error::from)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(EmulatorStats { vdd_mv: config.initial_vdd_mv, ..EmulatorStats::default() }));
        let drop_pending = Arc::new(AtomicU64::new(0));
        let mut device_state = Device::new(model, config);
        device_state.drop_pending = drop_pending.clone();
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new().name("ppk2-emulator".into()).spawn(move || {
            // The host side stays open here so the pty lives while no driver has it open (a slave with
            // no opener makes reads on the device side fail with EIO).
            let _keep_open = host_side;
            device_state.serve(&mut device, &stop2, &stats2);
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

    /// Stops serving and closes the device side; returns the final counters.
    pub fn shutdown(mut self) -> EmulatorStats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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

/// The emulated device's state.
struct Device<M> {
    model: M,
    config: EmulatorConfig,
    /// Calibration as the driver will apply it (defaults for zero/missing values included).
    effective: Modifiers,
    vdd_mv: u32,
    mode: PowerMode,
    powered: bool,
    stream: Option<Stream>,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    out_pos: usize,
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
            config,
            effective,
            mode: PowerMode::Ampere,
            powered: false,
            stream: None,
            inbox: Vec::new(),
            outbox: Vec::new(),
            out_pos: 0,
            last: None,
            drop_pending: Arc::new(AtomicU64::new(0)),
        }
    }

    fn serve(&mut self, port: &mut TTYPort, stop: &AtomicBool, stats: &Mutex<EmulatorStats>) {
        let mut buf = [0u8; 256];
        let mut local = EmulatorStats::default();
        let mut next_tick = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            // Poll for commands every millisecond while streaming (the stream is paced by the chunk
            // clock), every 10 ms when idle.
            let poll = if self.stream.is_some() { Duration::from_millis(1) } else { Duration::from_millis(10) };
            let _ = port.set_timeout(poll);
            match port.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    self.inbox.extend_from_slice(&buf[..n]);
                    self.handle_commands(&mut local);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + self.config.chunk;
                self.produce(now, &mut local);
            }
            if self.flush(port).is_err() {
                // The host side hung up for good; keep state but stop trying to write.
                self.outbox.clear();
                self.out_pos = 0;
            }
            local.vdd_mv = self.vdd_mv;
            local.board_powered = self.powered;
            local.source_mode = self.mode == PowerMode::Source;
            if let Ok(mut s) = stats.lock() {
                *s = local.clone();
            }
        }
    }

    fn handle_commands(&mut self, stats: &mut EmulatorStats) {
        let (commands, used) = Command::decode_all(&self.inbox);
        self.inbox.drain(..used);
        for cmd in commands {
            stats.commands += 1;
            match cmd {
                Command::GetMetadata => {
                    let text = format_metadata(
                        &self.config.modifiers,
                        true,
                        self.vdd_mv,
                        &self.config.hw,
                        self.mode,
                        "0",
                        &[("SIMULATED", "1")],
                    );
                    self.outbox.extend_from_slice(text.as_bytes());
                }
                Command::AverageStart => {
                    stats.streams_started += 1;
                    self.stream = Some(Stream { started: Instant::now(), next_index: 0 });
                }
                Command::AverageStop => self.stream = None,
                Command::RegulatorSet(mv) => self.vdd_mv = u32::from(mv).clamp(VDD_MIN_MV, VDD_MAX_MV),
                Command::SetPowerMode(mode) => self.mode = mode,
                Command::DeviceRunning(on) => self.powered = on,
                Command::Reset => {
                    self.stream = None;
                    self.powered = false;
                    self.vdd_mv = self.config.initial_vdd_mv;
                    self.mode = PowerMode::Ampere;
                }
                Command::Unknown(_) => stats.unknown_opcodes += 1,
            }
        }
    }

    /// Appends the samples due by `now` to the outbox (or drops them when the host is not reading).
    fn produce(&mut self, now: Instant, stats: &mut EmulatorStats) {
        let Some(stream) = &mut self.stream else { return };
        let due = (now.duration_since(stream.started).as_secs_f64() * SAMPLE_RATE_HZ) as u64;
        if due <= stream.next_index {
            return;
        }
        let pending = self.outbox.len() - self.out_pos;
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

    /// Writes what the pty takes without blocking for long.
    fn flush(&mut self, port: &mut TTYPort) -> io::Result<()> {
        while self.out_pos < self.outbox.len() {
            match port.write(&self.outbox[self.out_pos..]) {
                Ok(0) => break,
                Ok(n) => self.out_pos += n,
                Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.outbox.len() {
            self.outbox.clear();
            self.out_pos = 0;
        } else if self.out_pos > 1 << 20 {
            self.outbox.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        dev.inbox.extend([0x11, 2, 0x0D, 0x13, 0x88, 0x0C, 1, 0x19, 0x42]);
        dev.handle_commands(&mut stats);
        assert_eq!((dev.mode, dev.vdd_mv, dev.powered), (PowerMode::Source, 5000, true));
        assert_eq!((stats.commands, stats.unknown_opcodes), (5, 1));
        let text = String::from_utf8(dev.outbox.clone()).unwrap();
        let meta = parse_metadata(&text).unwrap();
        assert!(meta.is_simulated());
        assert_eq!(meta.vdd_mv, Some(5000));
        assert_eq!(meta.mode, Some(2));
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
}
