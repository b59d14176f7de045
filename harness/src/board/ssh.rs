//! The SSH transport: a real board over `ssh2` (libssh2).
//!
//! # Connections
//! An [`SshBoard`] holds one SSH connection (one libssh2 `Session`, one TCP
//! stream) for `exec`, `upload` and file access; those calls take `&mut self`,
//! so they never overlap on it. Every [`Board::spawn`] opens a **separate**
//! connection owned by the returned [`SshSession`]: a libssh2 session is a
//! single state machine over one socket, and the agent's long-lived channel,
//! waited on for seconds at a time, must not share it with `exec` calls the
//! runner makes meanwhile (reading cpufreq while the agent runs). Separate
//! connections also fail separately: a dropped agent connection is seen by
//! the session, and the board's next `exec` reconnects on its own.
//!
//! # Security
//! The host key is checked before authenticating, so nothing (no key
//! signature, no command) reaches a server that fails the check. Strict by
//! default; `accept-new` appends unknown hosts to known_hosts and still refuses
//! a changed key; `off` only when asked, with a warning. Authentication is by
//! key file or ssh-agent, never by password.
//!
//! # Commands
//! SSH carries a command string, not an argument vector: the server runs it
//! with the remote user's login shell. Every argument is quoted with
//! [`shell_join`], which assumes a POSIX shell (sh, bash, dash, busybox ash)
//! on the board, as every embedded Linux image has.
//!
//! Commands run with the session in non-blocking mode and a `poll(2)` on the
//! socket, so stdout and stderr are drained together (a command filling
//! stderr cannot stall one whose stdout is being read) and the timeout is
//! exact. On a timeout the connection is dropped (libssh2's state after an
//! abandoned channel is not worth trusting) and the next call reconnects.
//! Without a pty, sshd cannot kill the remote process: a command that outlives
//! its timeout may keep running on the board until it next writes.
//!
//! Output is bounded: a command's stdout and stderr by [`EXEC_OUTPUT_LIMIT`]
//! each, the agent's lines by [`AGENT_LINE_LIMIT`], a file read over SFTP by
//! the caller's limit. Passing one is an [`ErrorKind::Limit`] error naming the
//! limit, the board and the command or path; the connection is dropped as on a
//! timeout (the channel was left mid-stream) and the next call reconnects.
//!
//! # Keepalive
//! libssh2 sends keepalives only when asked; they are sent before each
//! operation and while an interactive session waits for a line. TCP
//! keepalive is set on the socket too, so a board that vanished is noticed
//! even on an idle connection.

mod host_keys;

pub use host_keys::{HostKeyChecking, HostKeyVerdict, KnownHostsMatch, ServerHostKey};

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use ssh2::{BlockDirections, Channel, CheckResult, ErrorCode, KnownHostFileKind, OpenFlags, OpenType, Session, Sftp};

use super::local::{
    describe_exec, read_capped, sudo_tee_argv, temp_sibling, LineBuffer, OutputTail, STDERR_TAIL_BYTES,
};
use super::quote::{find_nul, shell_join};
use super::{
    Board, BoardError, ErrorKind, ExecOutput, InteractiveSession, ReadLimit, AGENT_LINE_LIMIT, EXEC_OUTPUT_LIMIT,
    FILE_READ_LIMIT,
};

/// How the harness proves who it is. Passwords are deliberately absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SshAuth {
    /// A private key file (OpenSSH or PEM format, unencrypted: use the agent
    /// for keys with a passphrase). `<path>.pub` is used when present.
    KeyFile(PathBuf),
    /// The identities of the running ssh-agent (`SSH_AUTH_SOCK`), tried in order.
    Agent,
}

/// Reconnect schedule: exponential backoff, bounded in attempts and total waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Wait before the second attempt (the first is immediate).
    pub first_delay: Duration,
    /// Upper bound of one wait.
    pub max_delay: Duration,
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Upper bound of all waits together.
    pub max_total_wait: Duration,
}

impl Default for ReconnectPolicy {
    /// 0.5 s, 1 s, 2 s, 4 s, 8 s: about 15 s of waiting, enough for sshd to
    /// come back after a restart or a board to finish a short network hiccup,
    /// short enough that a dead board fails its cells promptly.
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_attempts: 6,
            max_total_wait: Duration::from_secs(30),
        }
    }
}

impl ReconnectPolicy {
    /// The waits before attempts 2, 3, ...: doubling from `first_delay`, each
    /// capped at `max_delay`, stopping at `max_attempts` or when the total
    /// would pass `max_total_wait` (the last wait is shortened to fit).
    pub fn delays(&self) -> Vec<Duration> {
        let mut delays = Vec::new();
        let mut next = self.first_delay;
        let mut total = Duration::ZERO;
        for _ in 1..self.max_attempts {
            let left = self.max_total_wait.saturating_sub(total);
            if left.is_zero() {
                break;
            }
            let wait = next.min(self.max_delay).min(left);
            delays.push(wait);
            total += wait;
            next = next.saturating_mul(2);
        }
        delays
    }
}

/// Everything needed to reach one board over SSH.
#[derive(Clone, Debug)]
pub struct SshConfig {
    /// The scenario's board name (used in every error).
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub auth: SshAuth,
    /// known_hosts file; `None` means `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    pub host_key_checking: HostKeyChecking,
    /// TCP connect, handshake and authentication, each.
    pub connect_timeout: Duration,
    /// Blocking SFTP calls and the interactive session's writes.
    pub command_timeout: Duration,
    /// Seconds between keepalives on an idle connection; 0 disables them.
    pub keepalive_secs: u32,
    /// The board's `sudo: true`: its cpufreq writes go through `sudo -n tee` (the caller asks per
    /// write, and only cpufreq attributes are allowed, see [`super::check_privileged_write`]); other
    /// writes, such as the restore file in the workdir, run as the SSH user.
    pub sudo: bool,
    pub reconnect: ReconnectPolicy,
}

impl SshConfig {
    /// A configuration with the defaults: port 22, strict host-key checking
    /// against `~/.ssh/known_hosts`, 10 s to connect, 60 s per blocking call,
    /// keepalive every 15 s, no sudo.
    pub fn new(name: impl Into<String>, host: impl Into<String>, user: impl Into<String>, auth: SshAuth) -> Self {
        Self {
            name: name.into(),
            host: host.into(),
            port: 22,
            user: user.into(),
            auth,
            known_hosts: None,
            host_key_checking: HostKeyChecking::Strict,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
            keepalive_secs: 15,
            sudo: false,
            reconnect: ReconnectPolicy::default(),
        }
    }

    /// The known_hosts file in effect.
    pub fn known_hosts_path(&self) -> Option<PathBuf> {
        self.known_hosts.clone().or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/known_hosts")))
    }

    fn endpoint(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

impl From<crate::scenario::HostKeyChecking> for HostKeyChecking {
    fn from(policy: crate::scenario::HostKeyChecking) -> Self {
        match policy {
            crate::scenario::HostKeyChecking::Strict => HostKeyChecking::Strict,
            crate::scenario::HostKeyChecking::AcceptNew => HostKeyChecking::AcceptNew,
            crate::scenario::HostKeyChecking::Off => HostKeyChecking::Off,
        }
    }
}

impl SshConfig {
    /// The configuration a validated scenario board entry describes
    /// (no identity file means ssh-agent).
    pub fn from_spec(name: &str, spec: &crate::scenario::SshSpec, sudo: bool) -> Self {
        let auth = match &spec.identity {
            Some(path) => SshAuth::KeyFile(path.clone()),
            None => SshAuth::Agent,
        };
        Self {
            port: spec.port,
            known_hosts: spec.known_hosts.clone(),
            host_key_checking: spec.host_key_checking.into(),
            connect_timeout: spec.connect_timeout,
            command_timeout: spec.command_timeout,
            keepalive_secs: spec.keepalive.as_secs().min(u64::from(u32::MAX)) as u32,
            sudo,
            ..Self::new(name, spec.host.clone(), spec.user.clone(), auth)
        }
    }
}

/// Connects to a scenario's SSH board (used by `connect::open_board`).
pub fn connect_from_spec(name: &str, spec: &crate::scenario::SshSpec, sudo: bool) -> anyhow::Result<Box<dyn Board>> {
    Ok(Box::new(SshBoard::connect(SshConfig::from_spec(name, spec, sudo))?))
}

/// libssh2 error codes (`LIBSSH2_ERROR_*` in libssh2.h; `ssh2` does not re-export them).
mod code {
    pub const BANNER_RECV: i32 = -2;
    pub const BANNER_SEND: i32 = -3;
    pub const KEX_FAILURE: i32 = -5;
    pub const SOCKET_SEND: i32 = -7;
    pub const KEY_EXCHANGE_FAILURE: i32 = -8;
    pub const TIMEOUT: i32 = -9;
    pub const SOCKET_DISCONNECT: i32 = -13;
    pub const PROTO: i32 = -14;
    pub const PASSWORD_EXPIRED: i32 = -15;
    pub const FILE: i32 = -16;
    pub const AUTHENTICATION_FAILED: i32 = -18;
    pub const PUBLICKEY_UNVERIFIED: i32 = -19;
    pub const CHANNEL_CLOSED: i32 = -26;
    pub const CHANNEL_EOF_SENT: i32 = -27;
    pub const SOCKET_TIMEOUT: i32 = -30;
    pub const EAGAIN: i32 = -37;
    pub const AGENT_PROTOCOL: i32 = -42;
    pub const SOCKET_RECV: i32 = -43;
    pub const BAD_SOCKET: i32 = -45;
    pub const KEYFILE_AUTH_FAILED: i32 = -48;
    /// SFTP status codes (`LIBSSH2_FX_*`): the link itself failed.
    pub const FX_NO_CONNECTION: i32 = 6;
    pub const FX_CONNECTION_LOST: i32 = 7;
}

/// Maps a libssh2 error to the retry decision.
///
/// Socket, banner, key-exchange and channel-closed errors mean the connection
/// is gone ([`ErrorKind::Connection`]); timeouts are [`ErrorKind::Timeout`];
/// key and password refusals are [`ErrorKind::Auth`]; SFTP statuses (no such
/// file, permission denied, ...) are about the file, so [`ErrorKind::Remote`],
/// except the two that report a lost link. Anything else from libssh2 leaves
/// the session in an unknown state: treat it as a connection problem, which
/// the runner answers with a reconnect.
pub fn classify(err: &ssh2::Error) -> ErrorKind {
    match err.code() {
        ErrorCode::Session(code::TIMEOUT | code::SOCKET_TIMEOUT) => ErrorKind::Timeout,
        ErrorCode::Session(
            code::AUTHENTICATION_FAILED
            | code::PUBLICKEY_UNVERIFIED
            | code::KEYFILE_AUTH_FAILED
            | code::PASSWORD_EXPIRED
            | code::AGENT_PROTOCOL,
        ) => ErrorKind::Auth,
        ErrorCode::Session(code::FILE) => ErrorKind::Local,
        ErrorCode::Session(
            code::BANNER_RECV
            | code::BANNER_SEND
            | code::KEX_FAILURE
            | code::KEY_EXCHANGE_FAILURE
            | code::SOCKET_SEND
            | code::SOCKET_RECV
            | code::SOCKET_DISCONNECT
            | code::BAD_SOCKET
            | code::PROTO
            | code::CHANNEL_CLOSED
            | code::CHANNEL_EOF_SENT,
        ) => ErrorKind::Connection,
        ErrorCode::SFTP(code::FX_NO_CONNECTION | code::FX_CONNECTION_LOST) => ErrorKind::Connection,
        ErrorCode::SFTP(_) => ErrorKind::Remote,
        ErrorCode::Session(_) => ErrorKind::Connection,
    }
}

/// Maps an I/O error from a channel read or write (ssh2 converts libssh2
/// errors into `io::Error`, keeping only timeouts distinguishable).
fn classify_io(err: &io::Error) -> ErrorKind {
    match err.kind() {
        io::ErrorKind::TimedOut => ErrorKind::Timeout,
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::AlreadyExists => ErrorKind::Remote,
        _ => ErrorKind::Connection,
    }
}

fn is_eagain(err: &ssh2::Error) -> bool {
    err.code() == ErrorCode::Session(code::EAGAIN)
}

/// The exit code a shell would report for a process killed by `signal`
/// (128 + its Linux number), from the name sshd sends without the `SIG` prefix.
pub fn signal_exit_code(signal: &str) -> i32 {
    let number = match signal {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => 0,
    };
    128 + number
}

/// One authenticated SSH connection.
struct Connection {
    session: Session,
    /// The socket libssh2 reads and writes; owned by `session`, valid while it lives.
    socket: RawFd,
    sftp: Option<Sftp>,
}

/// Waits until the socket is ready in the direction libssh2 is blocked on, or `max` passes.
fn wait_socket(session: &Session, socket: RawFd, max: Duration) {
    let events = match session.block_directions() {
        BlockDirections::Outbound => libc::POLLOUT,
        BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
        BlockDirections::Inbound | BlockDirections::None => libc::POLLIN,
    };
    let mut fd = libc::pollfd { fd: socket, events, revents: 0 };
    let ms = max.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd on the stack; the fd belongs to a live session.
    unsafe {
        libc::poll(&mut fd, 1, ms);
    }
}

/// Sets SO_KEEPALIVE so the kernel notices a peer that vanished from an idle connection.
fn enable_tcp_keepalive(stream: &TcpStream) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on an open socket with a pointer to a live c_int of the stated size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().clamp(1, u32::MAX as u128) as u32
}

/// Opens, verifies and authenticates one connection.
fn open_connection(cfg: &SshConfig) -> Result<Connection, BoardError> {
    let what = format!("connect {}", cfg.endpoint());
    let fail = |kind, detail: String| BoardError::new(&cfg.name, kind, what.clone(), detail);

    let addrs: Vec<_> = (cfg.host.as_str(), cfg.port)
        .to_socket_addrs()
        .map_err(|e| fail(ErrorKind::Connection, format!("resolving {}: {e}", cfg.host)))?
        .collect();
    let mut last_error = format!("{} resolved to no address", cfg.host);
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, cfg.connect_timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("TCP connect to {addr}: {e}"),
        }
    }
    let Some(stream) = stream else {
        return Err(fail(ErrorKind::Connection, last_error));
    };
    // Agent requests and replies are single small lines: Nagle would hold them back.
    let _ = stream.set_nodelay(true);
    enable_tcp_keepalive(&stream);
    let socket = stream.as_raw_fd();

    let mut session = Session::new().map_err(|e| fail(ErrorKind::Local, format!("libssh2 session: {e}")))?;
    session.set_tcp_stream(stream);
    session.set_timeout(millis(cfg.connect_timeout));
    session.handshake().map_err(|e| fail(classify(&e), format!("SSH handshake: {e}")))?;

    verify_host_key(cfg, &session).map_err(|detail| fail(ErrorKind::HostKey, detail))?;
    authenticate(cfg, &session).map_err(|(kind, detail)| fail(kind, detail))?;

    session.set_keepalive(true, cfg.keepalive_secs);
    session.set_timeout(millis(cfg.command_timeout));
    Ok(Connection { session, socket, sftp: None })
}

/// Checks the server's host key against known_hosts under the configured policy.
fn verify_host_key(cfg: &SshConfig, session: &Session) -> Result<(), String> {
    let (blob, _) = session.host_key().ok_or("the server sent no host key")?;
    let key = ServerHostKey { blob: blob.to_vec() };
    let Some(path) = cfg.known_hosts_path() else {
        return Err("no known_hosts file: HOME is not set and the board names none".to_string());
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            if let Some(line) = host_keys::revoked_line(&text, &key) {
                return Err(format!(
                    "host key {} {} of {}:{} is REVOKED ({} line {line}): refused under every host_key_checking mode",
                    key.algorithm().unwrap_or("unknown"),
                    key.fingerprint(),
                    cfg.host,
                    cfg.port,
                    path.display()
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    }
    let found = if cfg.host_key_checking == HostKeyChecking::Off {
        KnownHostsMatch::NotFound
    } else {
        check_known_hosts(session, &path, &cfg.host, cfg.port, &key)?
    };
    match host_keys::verdict(cfg.host_key_checking, found, &cfg.host, cfg.port, &key, &path) {
        HostKeyVerdict::Trusted => Ok(()),
        HostKeyVerdict::Unverified => {
            eprintln!(
                "warning: board {}: host key checking is OFF: {}:{} presented {} {} and it was not verified",
                cfg.name,
                cfg.host,
                cfg.port,
                key.algorithm().unwrap_or("unknown"),
                key.fingerprint()
            );
            Ok(())
        }
        HostKeyVerdict::Append(line) => {
            host_keys::append_known_host(&path, &line)
                .map_err(|e| format!("accept-new: cannot add the host key to {}: {e}", path.display()))?;
            eprintln!(
                "board {}: added {} {} to {} (accept-new)",
                cfg.name,
                host_keys::known_hosts_pattern(&cfg.host, cfg.port),
                key.fingerprint(),
                path.display()
            );
            Ok(())
        }
        HostKeyVerdict::Refuse(reason) => Err(reason),
    }
}

/// Looks the key up with libssh2's matcher, loading known_hosts line by line.
///
/// libssh2's own file reader stops at the first line it cannot parse (a
/// `@cert-authority` marker, a security-key type it lacks); reading line by
/// line skips those lines instead of losing every entry after them.
fn check_known_hosts(
    session: &Session,
    path: &Path,
    host: &str,
    port: u16,
    key: &ServerHostKey,
) -> Result<KnownHostsMatch, String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let mut known = session.known_hosts().map_err(|e| format!("libssh2 known-hosts: {e}"))?;
    for line in host_keys::known_hosts_entries(&text) {
        let _ = known.read_str(line, KnownHostFileKind::OpenSSH);
    }
    Ok(match known.check_port(host, port, &key.blob) {
        CheckResult::Match => KnownHostsMatch::Match,
        CheckResult::Mismatch => KnownHostsMatch::Mismatch,
        CheckResult::NotFound => KnownHostsMatch::NotFound,
        CheckResult::Failure => KnownHostsMatch::Failure,
    })
}

fn authenticate(cfg: &SshConfig, session: &Session) -> Result<(), (ErrorKind, String)> {
    let refused = |e: &ssh2::Error| match classify(e) {
        ErrorKind::Connection | ErrorKind::Timeout => classify(e),
        _ => ErrorKind::Auth,
    };
    match &cfg.auth {
        SshAuth::KeyFile(path) => {
            if !path.is_file() {
                return Err((ErrorKind::Local, format!("identity file {} does not exist", path.display())));
            }
            let public = PathBuf::from(format!("{}.pub", path.display()));
            let public = public.is_file().then_some(public);
            session.userauth_pubkey_file(&cfg.user, public.as_deref(), path, None).map_err(|e| {
                (refused(&e), format!("public key {} refused for user {}: {e}", path.display(), cfg.user))
            })?;
        }
        SshAuth::Agent => {
            let no_agent = |e: ssh2::Error| {
                (
                    ErrorKind::Auth,
                    format!(
                        "ssh-agent unusable (SSH_AUTH_SOCK={}): {e}",
                        std::env::var("SSH_AUTH_SOCK").unwrap_or_else(|_| "<unset>".into())
                    ),
                )
            };
            let mut agent = session.agent().map_err(no_agent)?;
            agent.connect().map_err(no_agent)?;
            agent.list_identities().map_err(no_agent)?;
            let identities = agent.identities().map_err(no_agent)?;
            let mut tried = Vec::new();
            for identity in &identities {
                match agent.userauth(&cfg.user, identity) {
                    Ok(()) => break,
                    Err(e) if matches!(classify(&e), ErrorKind::Connection | ErrorKind::Timeout) => {
                        return Err((classify(&e), format!("agent authentication: {e}")));
                    }
                    Err(_) => tried.push(identity.comment().to_string()),
                }
            }
            if !session.authenticated() {
                return Err((
                    ErrorKind::Auth,
                    format!("no ssh-agent identity accepted for user {} (tried: {})", cfg.user, tried.join(", ")),
                ));
            }
            let _ = agent.disconnect();
        }
    }
    if session.authenticated() {
        Ok(())
    } else {
        Err((ErrorKind::Auth, format!("server did not accept authentication for user {}", cfg.user)))
    }
}

/// Restores blocking mode when an operation that switched to non-blocking ends, however it ends.
struct NonBlocking<'a>(&'a Session);

impl<'a> NonBlocking<'a> {
    fn enter(session: &'a Session) -> Self {
        session.set_blocking(false);
        Self(session)
    }
}

impl Drop for NonBlocking<'_> {
    fn drop(&mut self) {
        self.0.set_blocking(true);
    }
}

/// Retries a non-blocking libssh2 call until it stops saying EAGAIN or `deadline` passes
/// (`Err(None)` on the deadline).
fn until_ready<T>(
    session: &Session,
    socket: RawFd,
    deadline: Instant,
    mut call: impl FnMut() -> Result<T, ssh2::Error>,
) -> Result<T, Option<ssh2::Error>> {
    loop {
        match call() {
            Err(e) if is_eagain(&e) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(None);
                }
                wait_socket(session, socket, (deadline - now).min(Duration::from_millis(100)));
            }
            other => return other.map_err(Some),
        }
    }
}

/// Outcome of one pass over a channel's two output streams.
#[derive(Debug, Default)]
struct Pump {
    progressed: bool,
}

/// The most one [`pump_channel`] call takes from each stream, so that a call returns in bounded time
/// even from a command whose output never pauses (the caller's sinks bound memory).
const PUMP_BYTES: usize = 4 << 20;

/// Where [`pump_channel`] puts what it read; returns whether it wants more.
type Sink<'a> = &'a mut dyn FnMut(&[u8]) -> bool;

/// Reads whatever is available on stdout (unless `stdout` is `None`: the caller is holding the
/// remote back) and stderr without blocking. Each sink returns whether it wants more; at most
/// [`PUMP_BYTES`] is taken from each stream per call.
fn pump_channel(channel: &mut Channel, stdout: Option<Sink<'_>>, stderr: Sink<'_>) -> io::Result<Pump> {
    fn drain(stream: &mut impl Read, sink: &mut dyn FnMut(&[u8]) -> bool, buf: &mut [u8]) -> io::Result<bool> {
        let mut progressed = false;
        let mut taken = 0;
        while taken < PUMP_BYTES {
            match stream.read(buf) {
                Ok(0) => break,
                Ok(n) => {
                    progressed = true;
                    taken += n;
                    if !sink(&buf[..n]) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(progressed)
    }
    let mut buf = [0u8; 32 * 1024];
    let mut pump = Pump::default();
    if let Some(sink) = stdout {
        pump.progressed |= drain(channel, sink, &mut buf)?;
    }
    pump.progressed |= drain(&mut channel.stderr(), stderr, &mut buf)?;
    Ok(pump)
}

/// A command's output so far, refusing more than [`EXEC_OUTPUT_LIMIT`].
fn capped_sink(collected: &mut Vec<u8>) -> impl FnMut(&[u8]) -> bool + '_ {
    move |bytes| {
        collected.extend_from_slice(bytes);
        collected.len() <= EXEC_OUTPUT_LIMIT.bytes
    }
}

/// The status a finished channel reports: the exit code, or 128 + signal.
fn channel_status(channel: &Channel) -> Option<i32> {
    if let Ok(signal) = channel.exit_signal() {
        if let Some(name) = signal.exit_signal {
            return Some(signal_exit_code(&name));
        }
    }
    channel.exit_status().ok()
}

/// The tail of a byte buffer as text, for error messages.
fn tail_text(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim_end().to_string()
}

impl Connection {
    /// Runs `command` to completion, feeding `input` to its stdin.
    ///
    /// Errors carry their kind and detail; the caller adds board and command.
    fn run(&mut self, command: &str, input: &[u8], timeout: Duration) -> Result<ExecOutput, (ErrorKind, String)> {
        let deadline = Instant::now() + timeout;
        let _ = self.session.keepalive_send();
        let session = &self.session;
        let socket = self.socket;
        let _mode = NonBlocking::enter(session);
        let timed_out = |stage: &str, stderr: &[u8]| {
            (ErrorKind::Timeout, format!("no {stage} within {timeout:?}; stderr: {}", tail_text(stderr)))
        };
        let ssh_failed = |stage: &str, e: Option<ssh2::Error>| match e {
            Some(e) => (classify(&e), format!("{stage}: {e}")),
            None => (ErrorKind::Timeout, format!("{stage}: no answer within {timeout:?}")),
        };

        let mut channel = until_ready(session, socket, deadline, || session.channel_session())
            .map_err(|e| ssh_failed("opening a channel", e))?;
        until_ready(session, socket, deadline, || channel.exec(command))
            .map_err(|e| ssh_failed("starting the command", e))?;

        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut written = 0;
        let mut stdin_open = true;
        loop {
            let mut progressed = false;
            while stdin_open && written < input.len() {
                match channel.write(&input[written..]) {
                    Ok(n) => {
                        written += n;
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The command exited without reading all its input: not our error.
                    Err(_) if channel.eof() => {
                        stdin_open = false;
                    }
                    Err(e) => return Err((classify_io(&e), format!("writing stdin: {e}"))),
                }
            }
            if stdin_open && written >= input.len() {
                match channel.send_eof() {
                    Ok(()) => stdin_open = false,
                    Err(e) if is_eagain(&e) => {}
                    Err(_) if channel.eof() => stdin_open = false,
                    Err(e) => return Err(ssh_failed("closing stdin", Some(e))),
                }
            }
            let pumped = pump_channel(&mut channel, Some(&mut capped_sink(&mut stdout)), &mut capped_sink(&mut stderr));
            let pump = pumped
                .map_err(|e| (classify_io(&e), format!("reading output: {e}; stderr: {}", tail_text(&stderr))))?;
            for (stream, collected) in [("stdout", &stdout), ("stderr", &stderr)] {
                if collected.len() > EXEC_OUTPUT_LIMIT.bytes {
                    // The command is abandoned mid-stream: `with_conn` drops the connection, which
                    // closes the remote side's pipes.
                    return Err((
                        ErrorKind::Limit,
                        format!("{}; the command was stopped", EXEC_OUTPUT_LIMIT.exceeded(stream)),
                    ));
                }
            }
            progressed |= pump.progressed;
            if channel.eof() && !progressed {
                break;
            }
            if !progressed {
                let now = Instant::now();
                if now >= deadline {
                    return Err(timed_out("exit", &stderr));
                }
                wait_socket(session, socket, (deadline - now).min(Duration::from_millis(100)));
            }
        }
        // The exit status travels just before the channel close: wait for it.
        until_ready(session, socket, deadline, || channel.wait_close()).map_err(|e| match e {
            Some(e) => (classify(&e), format!("waiting for the exit status: {e}")),
            None => timed_out("exit status", &stderr),
        })?;
        let status = channel_status(&channel).unwrap_or(-1);
        Ok(ExecOutput { status, stdout, stderr })
    }

    /// Drops a connection that failed or timed out without a goodbye.
    ///
    /// The socket is shut down first: freeing a libssh2 session that still has
    /// an open channel (a timed-out command) otherwise waits, in blocking mode,
    /// for the server to close that channel, which a hung command never does.
    fn abandon(self) {
        // SAFETY: shutdown(2) on the socket this session owns; it stays open
        // (and ours) until the session is dropped right after.
        unsafe {
            libc::shutdown(self.socket, libc::SHUT_RDWR);
        }
        drop(self);
    }

    fn sftp(&mut self) -> Result<&Sftp, ssh2::Error> {
        if self.sftp.is_none() {
            self.sftp = Some(self.session.sftp()?);
        }
        Ok(self.sftp.as_ref().expect("just set"))
    }
}

/// A board over SSH.
pub struct SshBoard {
    config: SshConfig,
    /// `None` after a connection-level failure; the next operation reconnects once.
    conn: Option<Connection>,
    /// Set on Ctrl-C: the reconnect backoff stops waiting.
    interrupt: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl std::fmt::Debug for SshBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshBoard").field("config", &self.config).field("connected", &self.conn.is_some()).finish()
    }
}

impl SshBoard {
    /// Connects, checks the host key and authenticates; fails with
    /// [`ErrorKind::HostKey`] or [`ErrorKind::Auth`] before anything runs.
    pub fn connect(config: SshConfig) -> Result<Self, BoardError> {
        let conn = open_connection(&config)?;
        Ok(Self { config, conn: Some(conn), interrupt: None })
    }

    /// The configuration this board was connected with.
    pub fn config(&self) -> &SshConfig {
        &self.config
    }

    /// Whether a connection is currently held (false after a dropped one, until the next call).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    fn err(&self, kind: ErrorKind, what: impl Into<String>, detail: impl Into<String>) -> BoardError {
        BoardError::new(&self.config.name, kind, what, detail)
    }

    fn connection(&mut self) -> Result<&mut Connection, BoardError> {
        if self.conn.is_none() {
            self.conn = Some(open_connection(&self.config)?);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Runs `op` on the connection; a connection-level failure drops it so the
    /// next operation starts from a fresh one.
    fn with_conn<T>(
        &mut self,
        what: &str,
        op: impl FnOnce(&mut Connection) -> Result<T, (ErrorKind, String)>,
    ) -> Result<T, BoardError> {
        let conn = self.connection()?;
        match op(conn) {
            Ok(v) => Ok(v),
            Err((kind, detail)) => {
                // A read stopped at its limit left a channel mid-stream: no more trustworthy than
                // one abandoned at a timeout.
                if kind.is_retryable() || kind == ErrorKind::Limit {
                    if let Some(conn) = self.conn.take() {
                        conn.abandon();
                    }
                }
                Err(self.err(kind, what, detail))
            }
        }
    }

    fn check_argv(&self, argv: &[String], what: &str) -> Result<(), BoardError> {
        if argv.is_empty() {
            return Err(self.err(ErrorKind::Local, what, "empty argument vector"));
        }
        if let Some(i) = find_nul(argv) {
            return Err(self.err(ErrorKind::Local, what, format!("argument {i} contains a NUL byte")));
        }
        Ok(())
    }

    fn sftp_op<T>(
        &mut self,
        what: &str,
        op: impl FnOnce(&Sftp) -> Result<T, (ErrorKind, String)>,
    ) -> Result<T, BoardError> {
        self.with_conn(what, |conn| {
            let _ = conn.session.keepalive_send();
            let sftp = conn.sftp().map_err(|e| (classify(&e), format!("starting SFTP: {e}")))?;
            op(sftp)
        })
    }
}

impl Board for SshBoard {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn exec(&mut self, argv: &[String], timeout: Duration) -> Result<ExecOutput, BoardError> {
        let what = describe_exec(argv);
        self.check_argv(argv, &what)?;
        let command = shell_join(argv);
        self.with_conn(&what, |conn| conn.run(&command, &[], timeout))
    }

    fn spawn(&mut self, argv: &[String]) -> Result<Box<dyn InteractiveSession>, BoardError> {
        let what = format!("spawn \"{}\"", shell_join(argv));
        self.check_argv(argv, &what)?;
        let session = SshSession::start(&self.config, &shell_join(argv), what)?;
        Ok(Box::new(session))
    }

    fn upload(&mut self, local: &Path, remote: &str, mode: u32) -> Result<(), BoardError> {
        let what = format!("upload {} -> {remote}", local.display());
        let mut source = fs::File::open(local)
            .map_err(|e| self.err(ErrorKind::Local, &what, format!("opening {}: {e}", local.display())))?;
        let tmp = temp_sibling(remote);
        let written = self.with_conn(&what, |conn| {
            let _ = conn.session.keepalive_send();
            let sftp = conn.sftp().map_err(|e| (classify(&e), format!("starting SFTP: {e}")))?;
            let fail = |stage: &str, e: ssh2::Error| (classify(&e), format!("{stage} {tmp}: {e}"));
            let mut file = sftp
                .open_mode(Path::new(&tmp), OpenFlags::WRITE | OpenFlags::EXCLUSIVE, 0o600, OpenType::File)
                .map_err(|e| fail("creating", e))?;
            io::copy(&mut source, &mut file).map_err(|e| (classify_io(&e), format!("writing {tmp}: {e}")))?;
            // fsync@openssh.com: the bytes are on the board's disk before the
            // rename publishes them. Servers without the extension skip it.
            let _ = file.fsync();
            file.close().map_err(|e| fail("closing", e))?;
            // Set explicitly: the mode given at open passes through the server's umask.
            let stat = ssh2::FileStat { size: None, uid: None, gid: None, perm: Some(mode), atime: None, mtime: None };
            sftp.setstat(Path::new(&tmp), stat).map_err(|e| fail("chmod", e))?;
            Ok(())
        });
        if let Err(e) = written {
            self.cleanup_temp(&tmp);
            return Err(e);
        }
        // SFTP v3 rename (OpenSSH's sftp-server) refuses to replace an existing
        // file; `mv -f` within one directory is a rename(2), just as atomic.
        let renamed =
            self.sftp_op(&what, |sftp| sftp.rename(Path::new(&tmp), Path::new(remote), None).map_err(sftp_err));
        if renamed.is_ok() {
            return Ok(());
        }
        let mv = ["mv", "-f", tmp.as_str(), remote].map(String::from);
        let timeout = self.config.command_timeout;
        match self.exec(&mv, timeout) {
            Ok(out) if out.success() => Ok(()),
            Ok(out) => {
                self.cleanup_temp(&tmp);
                Err(self.err(
                    ErrorKind::Remote,
                    what,
                    format!("`{}` exited with {}: {}", shell_join(&mv), out.status, tail_text(&out.stderr)),
                ))
            }
            Err(e) => Err(BoardError { what, ..e }),
        }
    }

    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, BoardError> {
        self.read_file_limited(path, FILE_READ_LIMIT)
    }

    fn read_file_limited(&mut self, path: &str, limit: ReadLimit) -> Result<Vec<u8>, BoardError> {
        self.sftp_op(&format!("read {path}"), |sftp| {
            let mut file = sftp.open(Path::new(path)).map_err(sftp_err)?;
            match read_capped(&mut file, limit.bytes) {
                Ok(Some(data)) => Ok(data),
                Ok(None) => Err((ErrorKind::Limit, limit.exceeded("the file"))),
                Err(e) => Err((classify_io(&e), format!("reading: {e}"))),
            }
        })
    }

    fn write_file(&mut self, path: &str, data: &[u8], sudo: bool) -> Result<(), BoardError> {
        // Only writes that ask for it go through sudo: the restore file in the workdir does not.
        let what = format!("write {path}{}", if sudo { " (sudo)" } else { "" });
        if sudo {
            super::check_privileged_write(path).map_err(|e| self.err(ErrorKind::Local, what.clone(), e))?;
            let argv = sudo_tee_argv(path);
            let command = shell_join(&argv);
            let timeout = self.config.command_timeout;
            let out = self.with_conn(&what, |conn| conn.run(&command, data, timeout))?;
            if out.success() {
                return Ok(());
            }
            return Err(self.err(
                ErrorKind::Remote,
                what,
                format!("`{command}` exited with {}: {}", out.status, tail_text(&out.stderr)),
            ));
        }
        // In place (truncate and write), never temp-and-rename: sysfs
        // attributes cannot be replaced, and the kernel wants the value in one write.
        self.sftp_op(&what, |sftp| {
            let mut file = sftp
                .open_mode(Path::new(path), OpenFlags::WRITE | OpenFlags::TRUNCATE, 0o644, OpenType::File)
                .map_err(sftp_err)?;
            file.write_all(data).map_err(|e| (classify_io(&e), format!("writing: {e}")))?;
            file.close().map_err(sftp_err)
        })
    }

    fn reconnect(&mut self) -> Result<(), BoardError> {
        if let Some(conn) = self.conn.take() {
            conn.abandon();
        }
        let delays = self.config.reconnect.delays();
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match open_connection(&self.config) {
                Ok(conn) => {
                    self.conn = Some(conn);
                    return Ok(());
                }
                Err(e) if !e.kind.is_retryable() => return Err(e),
                Err(e) => match delays.get(attempt - 1) {
                    Some(wait) => {
                        if !self.sleep_unless_interrupted(*wait) {
                            return Err(self.err(
                                ErrorKind::Interrupted,
                                format!("reconnect {}", self.config.endpoint()),
                                format!("stopped on request after {attempt} attempt(s); last: {}", e.detail),
                            ));
                        }
                    }
                    None => {
                        return Err(BoardError {
                            what: format!("reconnect {}", self.config.endpoint()),
                            detail: format!(
                                "gave up after {attempt} attempts over {:.1?}; last: {}",
                                started.elapsed(),
                                e.detail
                            ),
                            ..e
                        })
                    }
                },
            }
        }
    }

    fn transport(&self) -> &'static str {
        "ssh"
    }

    fn set_interrupt(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.interrupt = Some(flag);
    }
}

impl SshBoard {
    /// Sleeps `total` in short slices; `false` as soon as the interrupt flag is set.
    fn sleep_unless_interrupted(&self, total: Duration) -> bool {
        let interrupted = || self.interrupt.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
        let end = Instant::now() + total;
        loop {
            if interrupted() {
                return false;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            thread::sleep(left.min(Duration::from_millis(100)));
        }
    }

    /// Best-effort removal of a temporary upload left by a failed attempt.
    fn cleanup_temp(&mut self, tmp: &str) {
        if let Some(conn) = self.conn.as_mut() {
            if let Ok(sftp) = conn.sftp() {
                let _ = sftp.unlink(Path::new(tmp));
            }
        }
    }
}

/// An SFTP failure as kind and detail (`[SFTP(2)] no such file`).
fn sftp_err(e: ssh2::Error) -> (ErrorKind, String) {
    (classify(&e), e.to_string())
}

/// A long-lived command on the board (the agent), on its own SSH connection.
///
/// Driven in non-blocking mode: each call pumps stdout (split into lines) and
/// stderr (kept as a bounded tail) while it waits, so the remote side never
/// stalls on a full channel window while we wait for a reply. Stdout is read
/// only while the unread lines hold less than [`AGENT_LINE_LIMIT`]: beyond
/// that the SSH window holds the agent back instead of our memory growing.
pub struct SshSession {
    board: String,
    what: String,
    conn: Connection,
    channel: Channel,
    write_timeout: Duration,
    lines: LineBuffer,
    /// Set once a line passed [`AGENT_LINE_LIMIT`]: the session reads no further.
    overflowed: Option<String>,
    tail: OutputTail,
    eof: bool,
    closed: bool,
    hung_up: bool,
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession").field("board", &self.board).field("what", &self.what).finish()
    }
}

impl SshSession {
    fn start(cfg: &SshConfig, command: &str, what: String) -> Result<Self, BoardError> {
        let conn = open_connection(cfg)?;
        let fail = |e: ssh2::Error, stage: &str| {
            BoardError::new(&cfg.name, classify(&e), what.clone(), format!("{stage}: {e}"))
        };
        let mut channel = conn.session.channel_session().map_err(|e| fail(e, "opening a channel"))?;
        channel.exec(command).map_err(|e| fail(e, "starting the command"))?;
        conn.session.set_blocking(false);
        Ok(Self {
            board: cfg.name.clone(),
            what,
            conn,
            channel,
            write_timeout: cfg.command_timeout,
            lines: LineBuffer::new(AGENT_LINE_LIMIT),
            overflowed: None,
            tail: OutputTail::with_capacity(STDERR_TAIL_BYTES),
            eof: false,
            closed: false,
            hung_up: false,
        })
    }

    fn err(&self, kind: ErrorKind, detail: impl Into<String>) -> BoardError {
        BoardError::new(&self.board, kind, self.what.clone(), detail)
    }

    /// Reads what is available; splits complete lines off. Returns whether anything arrived.
    fn pump(&mut self) -> Result<bool, BoardError> {
        if let Some(detail) = &self.overflowed {
            return Err(self.err(ErrorKind::Limit, detail.clone()));
        }
        let read_stdout = self.lines.should_read();
        let (lines, tail) = (&mut self.lines, &mut self.tail);
        let mut too_long = None;
        let mut to_lines = |bytes: &[u8]| match lines.push(bytes) {
            Ok(()) => lines.should_read(),
            Err(n) => {
                too_long = Some(n);
                false
            }
        };
        let stdout: Option<Sink<'_>> = if read_stdout { Some(&mut to_lines) } else { None };
        let result = pump_channel(&mut self.channel, stdout, &mut |b| {
            tail.push(b);
            true
        });
        if let Some(n) = too_long {
            let detail = self.lines.overflow_detail(n);
            self.overflowed = Some(detail.clone());
            return Err(self.err(ErrorKind::Limit, detail));
        }
        let pump = match result {
            Ok(p) => p,
            Err(e) => {
                let detail = format!("connection lost: {e}; stderr: {}", self.tail.text().trim_end());
                return Err(self.err(classify_io(&e), detail));
            }
        };
        // End of stream only once stdout was read dry: unread bytes may wait behind an EOF.
        if read_stdout && !pump.progressed && self.channel.eof() {
            self.eof = true;
        }
        Ok(pump.progressed)
    }

    fn keepalive(&self) -> Result<(), BoardError> {
        match self.conn.session.keepalive_send() {
            Err(e) if !is_eagain(&e) => Err(self.err(classify(&e), format!("keepalive: {e}"))),
            _ => Ok(()),
        }
    }

    fn exited_detail(&mut self) -> String {
        // The exit status arrives just before the channel close; libssh2 reports 0
        // until then, so only a closed channel's status is believed.
        let deadline = Instant::now() + Duration::from_millis(500);
        let closed = until_ready(&self.conn.session, self.conn.socket, deadline, || self.channel.wait_close()).is_ok();
        let status = match channel_status(&self.channel) {
            Some(s) if closed => format!("status {s}"),
            _ => "status unknown".to_string(),
        };
        format!("process closed its stdout ({status}); stderr: {}", self.tail.text().trim_end())
    }
}

impl InteractiveSession for SshSession {
    fn send_line(&mut self, line: &str) -> Result<(), BoardError> {
        if self.closed {
            return Err(self.err(ErrorKind::Connection, "session already closed"));
        }
        let mut framed = Vec::with_capacity(line.len() + 1);
        framed.extend_from_slice(line.as_bytes());
        framed.push(b'\n');
        let deadline = Instant::now() + self.write_timeout;
        let mut written = 0;
        while written < framed.len() {
            match self.channel.write(&framed[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Drain our side while the remote is busy, or both ends can wait on each other.
                    self.pump()?;
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(self.err(
                            ErrorKind::Timeout,
                            format!("board did not take a {}-byte line within {:?}", framed.len(), self.write_timeout),
                        ));
                    }
                    wait_socket(&self.conn.session, self.conn.socket, (deadline - now).min(Duration::from_millis(100)));
                }
                Err(e) => {
                    let detail = format!("writing to stdin: {e}; {}", self.exited_detail());
                    return Err(self.err(classify_io(&e), detail));
                }
            }
        }
        Ok(())
    }

    fn read_line(&mut self, timeout: Duration) -> Result<String, BoardError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(detail) = &self.overflowed {
                return Err(self.err(ErrorKind::Limit, detail.clone()));
            }
            if let Some(line) = self.lines.pop() {
                return Ok(line);
            }
            if self.eof {
                if let Some(last) = self.lines.take_partial() {
                    return Ok(last);
                }
                let detail = self.exited_detail();
                return Err(self.err(ErrorKind::Connection, detail));
            }
            if self.pump()? {
                continue;
            }
            if self.eof {
                continue;
            }
            self.keepalive()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(self.err(
                    ErrorKind::Timeout,
                    format!("no line within {timeout:?}; stderr: {}", self.tail.text().trim_end()),
                ));
            }
            wait_socket(&self.conn.session, self.conn.socket, (deadline - now).min(Duration::from_millis(500)));
        }
    }

    fn stderr_tail(&mut self) -> String {
        let _ = self.pump();
        self.tail.text()
    }

    /// Sends EOF on stdin and waits up to [`super::local::CLOSE_GRACE`] for the
    /// exit status. A process that keeps running is abandoned with its channel
    /// closed: sshd cannot signal a process without a pty.
    fn close(&mut self) -> Result<Option<i32>, BoardError> {
        if self.closed {
            return Ok(None);
        }
        self.closed = true;
        let deadline = Instant::now() + super::local::CLOSE_GRACE;
        let session = &self.conn.session;
        let socket = self.conn.socket;
        let _ = until_ready(session, socket, deadline, || self.channel.send_eof());
        while !self.eof && Instant::now() < deadline {
            // Unread lines no longer matter; dropping them keeps stdout flowing to its end.
            while self.lines.pop().is_some() {}
            match self.pump() {
                Ok(true) => {}
                Ok(false) if self.eof => break,
                Ok(false) => wait_socket(&self.conn.session, socket, Duration::from_millis(50)),
                Err(_) => return Ok(None),
            }
        }
        let session = &self.conn.session;
        let status = if self.eof && until_ready(session, socket, deadline, || self.channel.wait_close()).is_ok() {
            channel_status(&self.channel)
        } else {
            None
        };
        self.hang_up();
        Ok(status)
    }
}

impl SshSession {
    /// Ends the connection without waiting on the server: a best-effort
    /// channel close and disconnect message, then the socket is shut down so
    /// that freeing the libssh2 session cannot wait on a channel the remote
    /// process keeps open (see `Connection::abandon`).
    fn hang_up(&mut self) {
        if self.hung_up {
            return;
        }
        self.hung_up = true;
        let _ = self.channel.close();
        let _ = self.conn.session.disconnect(None, "hil: session closed", None);
        // SAFETY: shutdown(2) on the socket this session owns; it is closed when `conn` drops.
        unsafe {
            libc::shutdown(self.conn.socket, libc::SHUT_RDWR);
        }
    }
}

impl Drop for SshSession {
    fn drop(&mut self) {
        self.hang_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_backoff_doubles_and_is_bounded() {
        let d = ReconnectPolicy::default().delays();
        let ms: Vec<u128> = d.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000]);
    }

    #[test]
    fn backoff_respects_max_delay_and_total_cap() {
        let p = ReconnectPolicy {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(3),
            max_attempts: 10,
            max_total_wait: Duration::from_secs(10),
        };
        let secs: Vec<f64> = p.delays().iter().map(|d| d.as_secs_f64()).collect();
        assert_eq!(secs, [1.0, 2.0, 3.0, 3.0, 1.0]);
        let single = ReconnectPolicy { max_attempts: 1, ..p.clone() };
        assert!(single.delays().is_empty());
        let no_wait = ReconnectPolicy { max_total_wait: Duration::ZERO, ..p };
        assert!(no_wait.delays().is_empty());
    }

    #[test]
    fn libssh2_errors_map_to_retry_decisions() {
        let e = |c| ssh2::Error::new(ErrorCode::Session(c), "x");
        assert_eq!(classify(&e(code::TIMEOUT)), ErrorKind::Timeout);
        assert_eq!(classify(&e(code::SOCKET_TIMEOUT)), ErrorKind::Timeout);
        for c in [code::SOCKET_RECV, code::SOCKET_SEND, code::SOCKET_DISCONNECT, code::BANNER_RECV, code::KEX_FAILURE] {
            assert_eq!(classify(&e(c)), ErrorKind::Connection, "code {c}");
        }
        for c in [code::AUTHENTICATION_FAILED, code::PUBLICKEY_UNVERIFIED, code::KEYFILE_AUTH_FAILED] {
            assert_eq!(classify(&e(c)), ErrorKind::Auth, "code {c}");
        }
        let sftp = |c| ssh2::Error::new(ErrorCode::SFTP(c), "x");
        assert_eq!(classify(&sftp(2)), ErrorKind::Remote, "no such file");
        assert_eq!(classify(&sftp(3)), ErrorKind::Remote, "permission denied");
        assert_eq!(classify(&sftp(code::FX_CONNECTION_LOST)), ErrorKind::Connection);
    }

    #[test]
    fn io_errors_from_channels_are_connection_problems_unless_timeouts() {
        assert_eq!(classify_io(&io::Error::new(io::ErrorKind::TimedOut, "t")), ErrorKind::Timeout);
        assert_eq!(classify_io(&io::Error::other("socket disconnected")), ErrorKind::Connection);
    }

    #[test]
    fn signals_map_to_shell_exit_codes() {
        assert_eq!(signal_exit_code("KILL"), 137);
        assert_eq!(signal_exit_code("TERM"), 143);
        assert_eq!(signal_exit_code("SEGV"), 139);
        assert_eq!(signal_exit_code("WEIRD"), 128);
    }

    #[test]
    fn config_defaults_are_strict() {
        let cfg = SshConfig::new("pi4", "pi4.lab", "pi", SshAuth::Agent);
        assert_eq!(cfg.port, 22);
        assert_eq!(cfg.host_key_checking, HostKeyChecking::Strict);
        assert_eq!(cfg.endpoint(), "pi@pi4.lab:22");
        let explicit = SshConfig { known_hosts: Some("/k".into()), ..cfg };
        assert_eq!(explicit.known_hosts_path(), Some(PathBuf::from("/k")));
    }

    #[test]
    fn connection_refused_is_a_retryable_connection_error_naming_the_board() {
        // Bind then drop a listener: the port is closed, connecting is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cfg = SshConfig::new("pi-down", "127.0.0.1", "pi", SshAuth::Agent);
        cfg.port = port;
        cfg.connect_timeout = Duration::from_secs(2);
        let err = SshBoard::connect(cfg).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Connection, "{err}");
        assert_eq!(err.board, "pi-down");
        assert!(err.what.contains(&format!("pi@127.0.0.1:{port}")), "{}", err.what);
    }
}
