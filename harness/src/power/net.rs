//! Serial ports over the network: a monitor `port:` of `tcp://HOST:PORT` (a ser2net raw accepter) or
//! `rfc2217://HOST:PORT` (Telnet with the COM-PORT-OPTION, what a labgrid exporter's ser2net offers).
//!
//! How the pieces fit:
//! - [`NetAddress::parse`] recognises the two URL forms (anything else is a local device path).
//! - [`TelnetDecoder`] is the pure receive-side state machine: it splits a byte stream into data
//!   (with `IAC IAC` turned back into `0xFF`) and Telnet [`TelnetEvent`]s (option negotiation and
//!   subnegotiations), keeping its state between calls so a command split across two reads is still
//!   recognised. [`escape_iac`] is the send side (`0xFF` doubled).
//! - [`TelnetPort`] runs RFC 2217 over any byte stream (`S: Read + Write`): it negotiates binary
//!   mode and the COM-PORT-OPTION, sets baud rate, 8 data bits, no parity, 1 stop bit and no flow
//!   control, answers the server's option requests, and reads and writes plain data. Unit tests run
//!   it over a scripted in-memory stream; [`NetPort`] runs it over a `TcpStream`.
//! - [`NetPort`] is the `Read + Write` byte stream the power-monitor drivers run on (a raw TCP
//!   stream or a [`TelnetPort`]), with the read timeout the drivers poll with: a read that finds
//!   nothing within it fails with `WouldBlock`, exactly like a serial port's timeout.
//!
//! Protocol numbers: Telnet RFC 854 (IAC 255, DONT 254, DO 253, WONT 252, WILL 251, SB 250, SE 240,
//! NOP 241 ... ), binary transmission RFC 856 (option 0), suppress go-ahead RFC 858 (option 3),
//! COM-PORT-OPTION RFC 2217 (option 44; client commands SET-BAUDRATE 1, SET-DATASIZE 2,
//! SET-PARITY 3, SET-STOPSIZE 4, SET-CONTROL 5; the server answers each with the command + 100).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

// Telnet (RFC 854).
pub const IAC: u8 = 255;
pub const DONT: u8 = 254;
pub const DO: u8 = 253;
pub const WONT: u8 = 252;
pub const WILL: u8 = 251;
pub const SB: u8 = 250;
pub const SE: u8 = 240;
// Options.
pub const OPT_BINARY: u8 = 0; // RFC 856
pub const OPT_SGA: u8 = 3; // RFC 858
pub const OPT_COM_PORT: u8 = 44; // RFC 2217
                                 // COM-PORT-OPTION client commands (RFC 2217 section 3); server replies add SERVER_OFFSET.
pub const CPO_SET_BAUDRATE: u8 = 1;
pub const CPO_SET_DATASIZE: u8 = 2;
pub const CPO_SET_PARITY: u8 = 3;
pub const CPO_SET_STOPSIZE: u8 = 4;
pub const CPO_SET_CONTROL: u8 = 5;
pub const CPO_SERVER_OFFSET: u8 = 100;
/// SET-PARITY value for no parity (RFC 2217: 1 NONE, 2 ODD, 3 EVEN, 4 MARK, 5 SPACE).
pub const PARITY_NONE: u8 = 1;
/// SET-STOPSIZE value for one stop bit (1 = 1, 2 = 2, 3 = 1.5).
pub const STOPSIZE_1: u8 = 1;
/// SET-CONTROL value for no flow control.
pub const CONTROL_NO_FLOW: u8 = 1;

/// How long [`TelnetPort::negotiate`] waits for the server's COM-PORT answers.
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting to a network port may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a connection the server accepted and then dropped at once is tried, and the pause
/// before the first retry (doubled each time). ser2net drops a connection that arrives while it is
/// still closing the port for the previous client: it writes "Port closing" or "port is shutting
/// down" and frees it (ser2net 4.x `port.c`, `port_new_con` and `accept_read_disabled_nolock`), which
/// reaches us as a reset or an end of stream during negotiation.
pub const DROPPED_CONNECTION_ATTEMPTS: u32 = 4;
pub const DROPPED_CONNECTION_PAUSE: Duration = Duration::from_millis(200);

/// The two ways a serial port is served over TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetProtocol {
    /// Bytes as they are (ser2net `tcp,PORT` accepter; labgrid `protocol: raw`).
    Raw,
    /// Telnet with the COM-PORT-OPTION (ser2net `telnet(rfc2217)`; labgrid's default).
    Rfc2217,
}

impl NetProtocol {
    /// The URL scheme for this protocol.
    pub fn scheme(self) -> &'static str {
        match self {
            NetProtocol::Raw => "tcp",
            NetProtocol::Rfc2217 => "rfc2217",
        }
    }
}

/// A serial port on the network: `tcp://HOST:PORT` or `rfc2217://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NetAddress {
    pub protocol: NetProtocol,
    pub host: String,
    pub port: u16,
}

impl NetAddress {
    /// `Ok(None)` for anything that is not a network URL (a device path); `Err` names what is wrong
    /// with a URL that has one of the two schemes.
    pub fn parse(text: &str) -> Result<Option<NetAddress>, String> {
        let (protocol, rest) = if let Some(rest) = text.strip_prefix("tcp://") {
            (NetProtocol::Raw, rest)
        } else if let Some(rest) = text.strip_prefix("rfc2217://") {
            (NetProtocol::Rfc2217, rest)
        } else {
            return Ok(None);
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            // [IPv6]:PORT
            let (host, after) =
                bracketed.split_once(']').ok_or_else(|| format!("{text:?}: unclosed '[' in the host"))?;
            let port = after.strip_prefix(':').ok_or_else(|| format!("{text:?}: no :PORT after the host"))?;
            (host, port)
        } else {
            rest.rsplit_once(':').ok_or_else(|| format!("{text:?}: expected {}://HOST:PORT", protocol.scheme()))?
        };
        if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
            return Err(format!("{text:?}: {host:?} is not a host name or address"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: port {port:?} is not a number from 1 to 65535"))?;
        Ok(Some(NetAddress { protocol, host: host.to_string(), port }))
    }

    pub fn new(protocol: NetProtocol, host: impl Into<String>, port: u16) -> Self {
        Self { protocol, host: host.into(), port }
    }
}

impl fmt::Display for NetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.protocol.scheme(), self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.protocol.scheme(), self.host, self.port)
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Telnet: the pure part
// ---------------------------------------------------------------------------------------------------

/// Something other than data that came in on a Telnet stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TelnetEvent {
    /// `IAC WILL|WONT|DO|DONT option`.
    Negotiation { verb: u8, option: u8 },
    /// `IAC SB option payload IAC SE`, with `IAC IAC` inside the payload already turned into `0xFF`.
    Subnegotiation { option: u8, payload: Vec<u8> },
    /// Any other two-byte command (`IAC NOP`, `IAC GA`, `IAC BRK`, ...): stripped from the data.
    Command(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxState {
    Data,
    /// After IAC.
    Iac,
    /// After IAC WILL/WONT/DO/DONT: the option byte comes next.
    Verb(u8),
    /// After IAC SB: the option byte comes next.
    SbOption,
    /// Inside a subnegotiation.
    Sb,
    /// After IAC inside a subnegotiation.
    SbIac,
}

/// The receive side of Telnet: data and commands separated, state kept across calls.
#[derive(Clone, Debug)]
pub struct TelnetDecoder {
    state: RxState,
    sb_option: u8,
    sb_payload: Vec<u8>,
}

/// A subnegotiation longer than this is not something RFC 2217 sends; it is cut (the stream goes on).
const MAX_SB_LEN: usize = 512;

impl Default for TelnetDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl TelnetDecoder {
    pub fn new() -> Self {
        Self { state: RxState::Data, sb_option: 0, sb_payload: Vec::new() }
    }

    /// Whether the decoder is between commands (nothing half-received).
    pub fn is_idle(&self) -> bool {
        self.state == RxState::Data
    }

    /// Splits `input` into data (appended to `data`) and events (appended to `events`).
    pub fn feed(&mut self, mut input: &[u8], data: &mut Vec<u8>, events: &mut Vec<TelnetEvent>) {
        while !input.is_empty() {
            if self.state == RxState::Data {
                // Fast path: plain data up to the next IAC goes through in one copy.
                match input.iter().position(|&b| b == IAC) {
                    None => {
                        data.extend_from_slice(input);
                        return;
                    }
                    Some(i) => {
                        data.extend_from_slice(&input[..i]);
                        self.state = RxState::Iac;
                        input = &input[i + 1..];
                        continue;
                    }
                }
            }
            let b = input[0];
            input = &input[1..];
            self.state = match self.state {
                RxState::Data => unreachable!("handled above"),
                RxState::Iac => match b {
                    IAC => {
                        data.push(IAC);
                        RxState::Data
                    }
                    WILL | WONT | DO | DONT => RxState::Verb(b),
                    SB => RxState::SbOption,
                    other => {
                        events.push(TelnetEvent::Command(other));
                        RxState::Data
                    }
                },
                RxState::Verb(verb) => {
                    events.push(TelnetEvent::Negotiation { verb, option: b });
                    RxState::Data
                }
                RxState::SbOption => {
                    self.sb_option = b;
                    self.sb_payload.clear();
                    RxState::Sb
                }
                RxState::Sb => {
                    if b == IAC {
                        RxState::SbIac
                    } else {
                        if self.sb_payload.len() < MAX_SB_LEN {
                            self.sb_payload.push(b);
                        }
                        RxState::Sb
                    }
                }
                RxState::SbIac => match b {
                    IAC => {
                        if self.sb_payload.len() < MAX_SB_LEN {
                            self.sb_payload.push(IAC);
                        }
                        RxState::Sb
                    }
                    SE => {
                        events.push(TelnetEvent::Subnegotiation {
                            option: self.sb_option,
                            payload: std::mem::take(&mut self.sb_payload),
                        });
                        RxState::Data
                    }
                    // RFC 854 leaves IAC + anything else inside SB undefined; treat it as the end of
                    // the subnegotiation and the start of that command, so the stream resynchronises.
                    other => {
                        events.push(TelnetEvent::Subnegotiation {
                            option: self.sb_option,
                            payload: std::mem::take(&mut self.sb_payload),
                        });
                        let mut rest = vec![IAC, other];
                        rest.extend_from_slice(input);
                        self.state = RxState::Data;
                        self.feed(&rest, data, events);
                        return;
                    }
                },
            };
        }
    }
}

/// Appends `data` to `out` with every `0xFF` doubled (Telnet data must not contain a bare IAC).
pub fn escape_iac(data: &[u8], out: &mut Vec<u8>) {
    let mut rest = data;
    while let Some(i) = rest.iter().position(|&b| b == IAC) {
        out.extend_from_slice(&rest[..=i]);
        out.push(IAC);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

/// `IAC SB COM-PORT-OPTION command value... IAC SE`, the value IAC-escaped.
pub fn com_port_command(command: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![IAC, SB, OPT_COM_PORT, command];
    escape_iac(value, &mut out);
    out.extend_from_slice(&[IAC, SE]);
    out
}

/// The serial line settings asked of an RFC 2217 server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LineSettings {
    pub baud: u32,
    /// Always 8, no parity, 1 stop bit, no flow control here: every monitor this harness drives uses
    /// 8N1 without flow control.
    pub data_bits: u8,
    pub parity: u8,
    pub stop_bits: u8,
}

impl LineSettings {
    /// 8N1 at `baud`.
    pub fn n81(baud: u32) -> Self {
        Self { baud, data_bits: 8, parity: PARITY_NONE, stop_bits: STOPSIZE_1 }
    }

    /// The subnegotiations that ask for these settings, in RFC 2217 order.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        vec![
            com_port_command(CPO_SET_BAUDRATE, &self.baud.to_be_bytes()),
            com_port_command(CPO_SET_DATASIZE, &[self.data_bits]),
            com_port_command(CPO_SET_PARITY, &[self.parity]),
            com_port_command(CPO_SET_STOPSIZE, &[self.stop_bits]),
            com_port_command(CPO_SET_CONTROL, &[CONTROL_NO_FLOW]),
        ]
    }
}

/// What an RFC 2217 server answered to the settings (each `None` until its answer came).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ComPortState {
    pub baud: Option<u32>,
    pub data_bits: Option<u8>,
    pub parity: Option<u8>,
    pub stop_bits: Option<u8>,
    pub control: Option<u8>,
}

impl ComPortState {
    /// Records one server answer (`payload` = command + 100 and its value). Returns `false` for a
    /// payload that is not an answer to a setting (notifications, flow control).
    pub fn apply(&mut self, payload: &[u8]) -> bool {
        let Some((&cmd, value)) = payload.split_first() else { return false };
        match (cmd.checked_sub(CPO_SERVER_OFFSET), value) {
            (Some(CPO_SET_BAUDRATE), [a, b, c, d]) => self.baud = Some(u32::from_be_bytes([*a, *b, *c, *d])),
            (Some(CPO_SET_DATASIZE), [v]) => self.data_bits = Some(*v),
            (Some(CPO_SET_PARITY), [v]) => self.parity = Some(*v),
            (Some(CPO_SET_STOPSIZE), [v]) => self.stop_bits = Some(*v),
            (Some(CPO_SET_CONTROL), [v]) => self.control = Some(*v),
            _ => return false,
        }
        true
    }

    /// Whether every setting of `want` has been answered.
    pub fn complete(&self) -> bool {
        self.baud.is_some()
            && self.data_bits.is_some()
            && self.parity.is_some()
            && self.stop_bits.is_some()
            && self.control.is_some()
    }

    /// The settings the server answered differently from `want` (`name: asked X, got Y`).
    pub fn mismatches(&self, want: &LineSettings) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, asked: u32, got: Option<u32>| {
            if let Some(got) = got.filter(|g| *g != asked) {
                out.push(format!("{name}: asked {asked}, server set {got}"));
            }
        };
        check("baud rate", want.baud, self.baud);
        check("data bits", want.data_bits.into(), self.data_bits.map(u32::from));
        check("parity", want.parity.into(), self.parity.map(u32::from));
        check("stop bits", want.stop_bits.into(), self.stop_bits.map(u32::from));
        out
    }
}

/// Our side of Telnet option negotiation: which options we agreed to (RFC 1143's loop rule: answer
/// only a request that changes the state, never an acknowledgement).
#[derive(Clone, Debug, Default)]
pub struct OptionTable {
    /// Options we said WILL for (we perform them).
    local: OptionSet,
    /// Options we said DO for (the server performs them).
    remote: OptionSet,
    /// Options the server refused (DONT for a WILL of ours, WONT for a DO of ours).
    refused_local: OptionSet,
    refused_remote: OptionSet,
}

/// A set of Telnet option codes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct OptionSet([u64; 4]);

impl OptionSet {
    fn has(&self, option: u8) -> bool {
        self.0[usize::from(option >> 6)] & (1 << (option & 63)) != 0
    }

    fn set(&mut self, option: u8, on: bool) {
        let (word, bit) = (usize::from(option >> 6), 1u64 << (option & 63));
        if on {
            self.0[word] |= bit;
        } else {
            self.0[word] &= !bit;
        }
    }
}

impl OptionTable {
    /// What we want on our side and the server's: binary both ways, no go-ahead, and (ours) the
    /// COM-PORT-OPTION.
    fn wanted_local(option: u8) -> bool {
        matches!(option, OPT_BINARY | OPT_SGA | OPT_COM_PORT)
    }

    fn wanted_remote(option: u8) -> bool {
        matches!(option, OPT_BINARY | OPT_SGA)
    }

    /// The negotiation we open with; marks those options as asked for.
    pub fn opening(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for option in [OPT_BINARY, OPT_SGA, OPT_COM_PORT] {
            self.local.set(option, true);
            out.extend_from_slice(&[IAC, WILL, option]);
        }
        for option in [OPT_BINARY, OPT_SGA] {
            self.remote.set(option, true);
            out.extend_from_slice(&[IAC, DO, option]);
        }
        out
    }

    /// The reply to one `IAC verb option` from the server (empty when it acknowledges our state).
    pub fn answer(&mut self, verb: u8, option: u8) -> Vec<u8> {
        let o = option;
        match verb {
            DO if !self.local.has(o) => {
                if Self::wanted_local(option) {
                    self.local.set(o, true);
                    vec![IAC, WILL, option]
                } else {
                    vec![IAC, WONT, option]
                }
            }
            DONT if self.local.has(o) => {
                self.local.set(o, false);
                self.refused_local.set(o, true);
                vec![IAC, WONT, option]
            }
            DONT => {
                self.refused_local.set(o, true);
                Vec::new()
            }
            WILL if !self.remote.has(o) => {
                if Self::wanted_remote(option) {
                    self.remote.set(o, true);
                    vec![IAC, DO, option]
                } else {
                    vec![IAC, DONT, option]
                }
            }
            WONT if self.remote.has(o) => {
                self.remote.set(o, false);
                self.refused_remote.set(o, true);
                vec![IAC, DONT, option]
            }
            WONT => {
                self.refused_remote.set(o, true);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The server said DONT to our COM-PORT-OPTION: it is a plain Telnet server, not RFC 2217.
    pub fn com_port_refused(&self) -> bool {
        self.refused_local.has(OPT_COM_PORT)
    }
}

// ---------------------------------------------------------------------------------------------------
// Telnet: over a byte stream
// ---------------------------------------------------------------------------------------------------

/// RFC 2217 over any byte stream: plain data in and out, Telnet handled underneath.
#[derive(Debug)]
pub struct TelnetPort<S> {
    stream: S,
    decoder: TelnetDecoder,
    options: OptionTable,
    com_port: ComPortState,
    /// Data decoded but not yet handed to the reader: `pending[pending_at..]`.
    pending: Vec<u8>,
    pending_at: usize,
    raw: Vec<u8>,
    events: Vec<TelnetEvent>,
    tx: Vec<u8>,
}

impl<S: Read + Write> TelnetPort<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            decoder: TelnetDecoder::new(),
            options: OptionTable::default(),
            com_port: ComPortState::default(),
            pending: Vec::new(),
            pending_at: 0,
            raw: vec![0; 64 * 1024],
            events: Vec::new(),
            tx: Vec::new(),
        }
    }

    /// Opens option negotiation and sets the line to `settings`, waiting (up to `timeout`, reads
    /// bounded by the stream's own read timeout) until the server has answered every setting.
    /// Returns the server's answers; fails when the server refuses the COM-PORT-OPTION, does not
    /// answer in time, or sets something other than what was asked.
    pub fn negotiate(&mut self, settings: &LineSettings, timeout: Duration) -> io::Result<ComPortState> {
        let mut hello = self.options.opening();
        for request in settings.requests() {
            hello.extend_from_slice(&request);
        }
        self.stream.write_all(&hello)?;
        self.stream.flush()?;
        let deadline = Instant::now() + timeout;
        while !self.com_port.complete() {
            if self.options.com_port_refused() {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the server refused the RFC 2217 COM-PORT-OPTION (IAC DONT 44): a Telnet server \
                     without serial control; for a raw ser2net port use tcp://",
                ));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no RFC 2217 answer to every setting within {} ms (answers so far: {:?}); is the \
                         port a raw TCP port? then use tcp://",
                        timeout.as_millis(),
                        self.com_port
                    ),
                ));
            }
            match self.fill() {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the server closed the connection during RFC 2217 negotiation{}", self.said()),
                    ))
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{e}{}", self.said()))),
            }
        }
        let wrong = self.com_port.mismatches(settings);
        if !wrong.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the RFC 2217 server did not take the line settings: {}", wrong.join("; ")),
            ));
        }
        Ok(self.com_port)
    }

    /// What the server wrote as data before it dropped the connection, for the error: ser2net
    /// writes a line ("Port closing", "Port already in use", "port is shutting down") before it
    /// frees a connection it will not serve. At most 80 printable ASCII characters; empty when
    /// nothing printable came.
    fn said(&self) -> String {
        let text: String = self.pending[self.pending_at..]
            .iter()
            .map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { ' ' })
            .take(80)
            .collect();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            String::new()
        } else {
            format!(" (it said: {text:?})")
        }
    }

    /// What the server answered to the line settings.
    pub fn com_port(&self) -> ComPortState {
        self.com_port
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// One read from the stream, decoded: data to `pending`, events handled. Returns the raw byte
    /// count (0 = end of stream).
    fn fill(&mut self) -> io::Result<usize> {
        let n = self.stream.read(&mut self.raw)?;
        if n == 0 {
            return Ok(0);
        }
        if self.pending_at == self.pending.len() {
            self.pending.clear();
            self.pending_at = 0;
        }
        self.events.clear();
        self.decoder.feed(&self.raw[..n], &mut self.pending, &mut self.events);
        let mut reply = Vec::new();
        for event in self.events.drain(..) {
            match event {
                TelnetEvent::Negotiation { verb, option } => reply.extend(self.options.answer(verb, option)),
                TelnetEvent::Subnegotiation { option: OPT_COM_PORT, payload } => {
                    // Answers to our settings; NOTIFY-LINESTATE/MODEMSTATE and flow-control notices
                    // carry nothing the monitors need.
                    self.com_port.apply(&payload);
                }
                TelnetEvent::Subnegotiation { .. } | TelnetEvent::Command(_) => {}
            }
        }
        if !reply.is_empty() {
            self.stream.write_all(&reply)?;
            self.stream.flush()?;
        }
        Ok(n)
    }
}

impl<S: Read + Write> Read for TelnetPort<S> {
    /// Data only. A read that brought only Telnet commands reads again; the stream's read timeout
    /// bounds each underlying read (its `WouldBlock`/`TimedOut` is passed on).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pending_at == self.pending.len() {
            if self.fill()? == 0 {
                return Ok(0);
            }
        }
        let available = &self.pending[self.pending_at..];
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.pending_at += n;
        Ok(n)
    }
}

impl<S: Read + Write> Write for TelnetPort<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx.clear();
        escape_iac(buf, &mut self.tx);
        self.stream.write_all(&self.tx)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

// ---------------------------------------------------------------------------------------------------
// The byte stream the monitor drivers use
// ---------------------------------------------------------------------------------------------------

/// A serial port on the network, as a `Read + Write` byte stream with a read timeout.
#[derive(Debug)]
pub enum NetPort {
    Raw(TcpStream),
    Rfc2217(Box<TelnetPort<TcpStream>>),
}

impl NetPort {
    /// Connects to `address` (trying each address the name resolves to, within `connect_timeout`),
    /// sets `read_timeout` on the socket, and for RFC 2217 negotiates `settings`.
    pub fn open(
        address: &NetAddress,
        settings: &LineSettings,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> io::Result<NetPort> {
        let addrs: Vec<_> = (address.host.as_str(), address.port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{} resolves to no address", address.host));
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, connect_timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or(last)?;
        // Commands to the instrument are a few bytes each and must go out at once.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(read_timeout.max(Duration::from_millis(1))))?;
        match address.protocol {
            NetProtocol::Raw => Ok(NetPort::Raw(stream)),
            NetProtocol::Rfc2217 => {
                let mut port = Box::new(TelnetPort::new(stream));
                port.negotiate(settings, NEGOTIATION_TIMEOUT)?;
                Ok(NetPort::Rfc2217(port))
            }
        }
    }

    /// The RFC 2217 server's answers (`None` for a raw port).
    pub fn com_port(&self) -> Option<ComPortState> {
        match self {
            NetPort::Raw(_) => None,
            NetPort::Rfc2217(t) => Some(t.com_port()),
        }
    }
}

impl Read for NetPort {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            NetPort::Raw(s) => s.read(buf),
            NetPort::Rfc2217(t) => t.read(buf),
        }
    }
}

impl Write for NetPort {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            NetPort::Raw(s) => s.write(buf),
            NetPort::Rfc2217(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            NetPort::Raw(s) => s.flush(),
            NetPort::Rfc2217(t) => t.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<TelnetEvent>) {
        let mut d = TelnetDecoder::new();
        let (mut data, mut events) = (Vec::new(), Vec::new());
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            d.feed(&input[start..cut], &mut data, &mut events);
            start = cut;
        }
        (data, events)
    }

    /// A stream mixing data, an escaped 0xFF, a negotiation, a subnegotiation with an escaped 0xFF
    /// inside, and a NOP.
    fn mixed() -> (Vec<u8>, Vec<u8>, Vec<TelnetEvent>) {
        let mut wire = vec![b'a', IAC, IAC, b'b', IAC, WILL, OPT_BINARY, 0x0d, 0x00];
        wire.extend_from_slice(&[IAC, SB, OPT_COM_PORT, 101, 0, 0x01, IAC, IAC, 0x00, IAC, SE]);
        wire.extend_from_slice(&[b'c', IAC, 241, IAC, IAC]);
        let data = vec![b'a', 0xff, b'b', 0x0d, 0x00, b'c', 0xff];
        let events = vec![
            TelnetEvent::Negotiation { verb: WILL, option: OPT_BINARY },
            TelnetEvent::Subnegotiation { option: OPT_COM_PORT, payload: vec![101, 0, 0x01, 0xff, 0x00] },
            TelnetEvent::Command(241),
        ];
        (wire, data, events)
    }

    #[test]
    fn decoder_separates_data_and_commands_at_every_split() {
        let (wire, want_data, want_events) = mixed();
        // Every single cut point and every pair of cut points: a command split across reads anywhere.
        for i in 0..=wire.len() {
            for j in i..=wire.len() {
                let (data, events) = decode_in_pieces(&wire, &[i, j]);
                assert_eq!(data, want_data, "cuts at {i},{j}");
                assert_eq!(events, want_events, "cuts at {i},{j}");
            }
        }
        // One byte at a time.
        let cuts: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(decode_in_pieces(&wire, &cuts), (want_data, want_events));
    }

    #[test]
    fn decoder_keeps_state_on_a_trailing_iac() {
        let mut d = TelnetDecoder::new();
        let (mut data, mut events) = (Vec::new(), Vec::new());
        d.feed(&[1, 2, IAC], &mut data, &mut events);
        assert_eq!(data, [1, 2]);
        assert!(!d.is_idle());
        d.feed(&[IAC, 3], &mut data, &mut events);
        assert_eq!(data, [1, 2, 0xff, 3]);
        assert!(events.is_empty() && d.is_idle());
    }

    #[test]
    fn decoder_resynchronises_after_an_unterminated_subnegotiation() {
        // IAC SB 44 ... then IAC WILL 0 without IAC SE: the SB ends, the WILL is still seen.
        let wire = [IAC, SB, OPT_COM_PORT, 106, 0x10, IAC, WILL, OPT_BINARY, b'x'];
        let (data, events) = decode_in_pieces(&wire, &[6]);
        assert_eq!(data, b"x");
        assert_eq!(
            events,
            vec![
                TelnetEvent::Subnegotiation { option: OPT_COM_PORT, payload: vec![106, 0x10] },
                TelnetEvent::Negotiation { verb: WILL, option: OPT_BINARY },
            ]
        );
    }

    #[test]
    fn escape_doubles_only_iac() {
        let mut out = Vec::new();
        escape_iac(&[0xff, 0, 0xff, 0xff, 0xfe, 0xff], &mut out);
        assert_eq!(out, [0xff, 0xff, 0, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xff, 0xff]);
        // Round trip through the decoder gives the data back with no events.
        let all: Vec<u8> = (0..=255u8).chain([0xff, 0xff]).collect();
        let mut wire = Vec::new();
        escape_iac(&all, &mut wire);
        let (data, events) = decode_in_pieces(&wire, &[3, 100, 256]);
        assert_eq!(data, all);
        assert!(events.is_empty());
    }

    #[test]
    fn com_port_requests_are_rfc2217_bytes() {
        let r = LineSettings::n81(115_200).requests();
        // 115200 = 0x0001C200, big-endian.
        assert_eq!(r[0], [IAC, SB, 44, 1, 0x00, 0x01, 0xc2, 0x00, IAC, SE]);
        assert_eq!(r[1], [IAC, SB, 44, 2, 8, IAC, SE]);
        assert_eq!(r[2], [IAC, SB, 44, 3, 1, IAC, SE]);
        assert_eq!(r[3], [IAC, SB, 44, 4, 1, IAC, SE]);
        assert_eq!(r[4], [IAC, SB, 44, 5, 1, IAC, SE]);
        // A baud rate with a 0xFF byte is escaped inside the subnegotiation.
        assert_eq!(
            com_port_command(CPO_SET_BAUDRATE, &0x0000_ffffu32.to_be_bytes()),
            [IAC, SB, 44, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, IAC, SE]
        );
    }

    #[test]
    fn com_port_answers_tracked_and_checked() {
        let mut s = ComPortState::default();
        assert!(s.apply(&[101, 0x00, 0x01, 0xc2, 0x00]));
        assert!(s.apply(&[102, 8]));
        assert!(s.apply(&[103, 1]));
        assert!(!s.complete());
        assert!(s.apply(&[104, 1]));
        assert!(s.apply(&[105, 1]));
        assert!(s.complete());
        // NOTIFY-MODEMSTATE (107) and a malformed baud answer are not answers to settings.
        assert!(!s.apply(&[107, 0x30]));
        assert!(!s.apply(&[101, 1, 2]));
        assert_eq!(s.baud, Some(115_200));
        assert!(s.mismatches(&LineSettings::n81(115_200)).is_empty());
        let wrong = s.mismatches(&LineSettings::n81(9600));
        assert_eq!(wrong, ["baud rate: asked 9600, server set 115200"]);
    }

    #[test]
    fn option_answers_follow_the_loop_rule() {
        let mut t = OptionTable::default();
        let hello = t.opening();
        assert_eq!(
            hello,
            [IAC, WILL, 0, IAC, WILL, 3, IAC, WILL, 44, IAC, DO, 0, IAC, DO, 3],
            "binary, SGA and COM-PORT ours; binary and SGA the server's"
        );
        // Acknowledgements of what we asked for: no answer (no negotiation loop).
        assert!(t.answer(DO, OPT_BINARY).is_empty());
        assert!(t.answer(DO, OPT_COM_PORT).is_empty());
        assert!(t.answer(WILL, OPT_SGA).is_empty());
        // Something we do not do: refused once.
        assert_eq!(t.answer(DO, 1), [IAC, WONT, 1], "echo");
        assert_eq!(t.answer(WILL, 1), [IAC, DONT, 1]);
        // The server withdraws binary: acknowledged, and again only once.
        assert_eq!(t.answer(WONT, OPT_BINARY), [IAC, DONT, OPT_BINARY]);
        assert!(t.answer(WONT, OPT_BINARY).is_empty());
        assert!(!t.com_port_refused());
        assert_eq!(t.answer(DONT, OPT_COM_PORT), [IAC, WONT, OPT_COM_PORT]);
        assert!(t.com_port_refused());
    }

    #[test]
    fn addresses_parse() {
        let a = NetAddress::parse("rfc2217://127.0.0.1:40949").unwrap().unwrap();
        assert_eq!(a, NetAddress::new(NetProtocol::Rfc2217, "127.0.0.1", 40949));
        assert_eq!(a.to_string(), "rfc2217://127.0.0.1:40949");
        let b = NetAddress::parse("tcp://[::1]:3001/").unwrap().unwrap();
        assert_eq!((b.protocol, b.host.as_str(), b.port), (NetProtocol::Raw, "::1", 3001));
        assert_eq!(b.to_string(), "tcp://[::1]:3001");
        assert_eq!(NetAddress::parse("/dev/ttyACM0").unwrap(), None);
        assert_eq!(NetAddress::parse("auto").unwrap(), None);
        for bad in ["tcp://host", "tcp://:3001", "rfc2217://h:0", "rfc2217://h:70000", "tcp://[::1:3", "tcp://a b:1"] {
            let err = NetAddress::parse(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    /// A scripted duplex stream: reads hand out `chunks` one per call (then time out), writes are
    /// recorded.
    struct Script {
        chunks: VecDeque<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.chunks.pop_front() {
                Some(c) => {
                    assert!(c.len() <= buf.len());
                    buf[..c.len()].copy_from_slice(&c);
                    Ok(c.len())
                }
                None => Err(io::Error::new(io::ErrorKind::WouldBlock, "timeout")),
            }
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What ser2net answers: DO/WILL acknowledgements, its own DO for an option we refuse, then
    /// one answer per setting, all split at awkward places.
    fn server_answers(baud: u32) -> Vec<Vec<u8>> {
        let mut all = vec![IAC, DO, OPT_BINARY, IAC, WILL, OPT_BINARY, IAC, DO, 1];
        let mut baud_answer = vec![IAC, SB, OPT_COM_PORT, 101];
        escape_iac(&baud.to_be_bytes(), &mut baud_answer);
        baud_answer.extend_from_slice(&[IAC, SE]);
        all.extend(baud_answer);
        for (cmd, v) in [(102, 8), (103, 1), (104, 1), (105, 1)] {
            all.extend_from_slice(&[IAC, SB, OPT_COM_PORT, cmd, v, IAC, SE]);
        }
        all.extend_from_slice(&[b'h', IAC, IAC, b'i']);
        all.chunks(5).map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn telnet_port_negotiates_then_carries_data_both_ways() {
        let script = Script { chunks: server_answers(115_200).into(), written: Vec::new() };
        let mut port = TelnetPort::new(script);
        let state = port.negotiate(&LineSettings::n81(115_200), Duration::from_secs(1)).unwrap();
        assert_eq!(state.baud, Some(115_200));
        assert_eq!(state.data_bits, Some(8));
        // Data that arrived with (and after) the answers is kept, 0xFF unescaped, until the stream's
        // timeout comes through as WouldBlock.
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        let err = loop {
            match port.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(got, b"h\xffi");
        let written_before = port.get_ref().written.len();
        port.write_all(&[0x01, 0xff, 0x02]).unwrap();
        let written = &port.get_ref().written;
        assert_eq!(&written[written_before..], [0x01, 0xff, 0xff, 0x02]);
        // Our only unsolicited answer was refusing the server's DO ECHO.
        let opening_len = OptionTable::default().opening().len();
        let requests: usize = LineSettings::n81(115_200).requests().iter().map(Vec::len).sum();
        assert_eq!(&written[opening_len + requests..written_before], [IAC, WONT, 1]);
    }

    #[test]
    fn telnet_port_refuses_a_changed_baud_rate() {
        let script = Script { chunks: server_answers(9600).into(), written: Vec::new() };
        let mut port = TelnetPort::new(script);
        let err = port.negotiate(&LineSettings::n81(115_200), Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("asked 115200, server set 9600"), "{err}");
    }

    #[test]
    fn telnet_port_names_a_server_without_com_port() {
        let script = Script { chunks: vec![vec![IAC, DONT, OPT_COM_PORT]].into(), written: Vec::new() };
        let mut port = TelnetPort::new(script);
        let err = port.negotiate(&LineSettings::n81(115_200), Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("tcp://"), "{err}");
        // And a silent one (a raw port) times out with the same hint.
        let script = Script { chunks: VecDeque::new(), written: Vec::new() };
        let mut port = TelnetPort::new(script);
        let err = port.negotiate(&LineSettings::n81(115_200), Duration::from_millis(20)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("tcp://"), "{err}");
    }

    #[test]
    fn telnet_port_reads_through_command_only_chunks() {
        let chunks = vec![vec![IAC, 241], vec![IAC, SB, OPT_COM_PORT, 107, 0x30, IAC, SE], vec![7, 8]];
        let mut port = TelnetPort::new(Script { chunks: chunks.into(), written: Vec::new() });
        let mut buf = [0u8; 4];
        assert_eq!(port.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], [7, 8]);
    }
}
