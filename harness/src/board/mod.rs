//! Board transports: how the harness reaches a board.
//!
//! One trait, [`Board`], with two implementations: [`ssh`] (a real board over
//! `ssh2`) and [`local`] (commands on this host; the simulated board and the
//! tests use it). Everything above this module (probe, deployment, DVFS,
//! the runner) is written against the trait only.
//!
//! Commands are always argument vectors. A transport that needs a shell
//! string (SSH runs commands through the remote user's shell) builds it with
//! [`quote::shell_join`], so no scenario value ever reaches a shell unquoted.
//!
//! Every read from a board is bounded by a named [`ReadLimit`]: command output
//! ([`EXEC_OUTPUT_LIMIT`]), a line from the agent ([`AGENT_LINE_LIMIT`]), a
//! file ([`FILE_READ_LIMIT`] by default, tighter ones such as
//! [`SYSFS_ATTRIBUTE_LIMIT`] where the caller knows the size). A source that
//! passes its limit (a runaway command, a line that never ends, a path that
//! leads to `/dev/zero`) is stopped with [`ErrorKind::Limit`], naming the
//! limit, why it has that size, the board and the command or path.

pub mod local;
pub mod quote;
pub mod ssh;

use std::path::Path;
use std::time::Duration;

/// Whether a failure is worth a reconnect-and-retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection dropped or could not be made: reconnect and retry.
    Connection,
    /// The board did not answer in time.
    Timeout,
    /// Host key mismatch or unknown host under strict checking: never retry.
    HostKey,
    /// Authentication refused: never retry.
    Auth,
    /// The command ran and failed, or a file was missing/unwritable.
    Remote,
    /// A local I/O problem (reading the file to upload, ...).
    Local,
    /// The user asked to stop (Ctrl-C) while this waited: never retry.
    Interrupted,
    /// A read passed its [`ReadLimit`] (a command that prints without end, a line that never ends,
    /// a file far larger than what is read there): the source was stopped. Not retried by the
    /// transport: the same command or file would do it again.
    Limit,
}

impl ErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Timeout)
    }
}

/// A named bound on how much one read from a board or a monitor may take.
///
/// The name is the constant's, so an error can be traced to the reason the bound has its size
/// (`why`), which the error repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimit {
    pub name: &'static str,
    pub bytes: usize,
    /// Why this size: what the largest legitimate read there is.
    pub why: &'static str,
}

impl ReadLimit {
    pub const fn new(name: &'static str, bytes: usize, why: &'static str) -> Self {
        Self { name, bytes, why }
    }

    /// `"<source> passed NAME (16 MiB: why)"`, the detail of every error for this limit.
    pub fn exceeded(&self, source: impl std::fmt::Display) -> String {
        format!("{source} passed {self}")
    }
}

impl std::fmt::Display for ReadLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}: {})", self.name, human_bytes(self.bytes as u64), self.why)
    }
}

/// `16 MiB`, `64 KiB`, `1000 bytes`: exact binary multiples get their unit, anything else is bytes.
pub fn human_bytes(n: u64) -> String {
    match n {
        0 => "0 bytes".to_string(),
        n if n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Each of a command's stdout and stderr ([`Board::exec`]).
pub const EXEC_OUTPUT_LIMIT: ReadLimit = ReadLimit::new(
    "EXEC_OUTPUT_LIMIT",
    16 << 20,
    "the commands hil runs print a checksum, a directory listing or `uname` (bytes to kilobytes); \
     anything this large is a runaway command",
);

/// One line from a spawned process (the agent's reply), and the lines queued unread.
///
/// The longest reply is `run`'s: up to [`device_agent::protocol::MAX_WINDOW_ITERATIONS`] latencies
/// of at most 20 digits and a comma each (21 MB), plus a small envelope.
pub const AGENT_LINE_LIMIT: ReadLimit = ReadLimit::new(
    "AGENT_LINE_LIMIT",
    32 << 20,
    "the longest agent reply is a `run` window of 1,000,000 latencies, about 21 MB",
);
const _: () = assert!(
    AGENT_LINE_LIMIT.bytes as u64 >= device_agent::protocol::MAX_WINDOW_ITERATIONS * 21 + (1 << 20),
    "AGENT_LINE_LIMIT must hold a full run window"
);

/// A whole file read with [`Board::read_file`] when the caller gives no tighter limit.
pub const FILE_READ_LIMIT: ReadLimit = ReadLimit::new(
    "FILE_READ_LIMIT",
    64 << 20,
    "the largest file hil reads back whole is the agent binary (a few MiB) when the board lacks sha256sum",
);

/// A sysfs attribute (cpufreq, thermal, `stats/time_in_state`), or a file in a fake sysfs tree.
pub const SYSFS_ATTRIBUTE_LIMIT: ReadLimit = ReadLimit::new(
    "SYSFS_ATTRIBUTE_LIMIT",
    64 << 10,
    "the kernel fills a sysfs attribute from one page, 4 KiB (64 KiB on arm64 with 64K pages)",
);

/// `/proc/cpuinfo` and `/proc/meminfo`.
pub const PROC_FILE_LIMIT: ReadLimit = ReadLimit::new(
    "PROC_FILE_LIMIT",
    4 << 20,
    "/proc/cpuinfo takes 1-2 KiB per CPU: a few hundred KiB on the largest machines",
);

/// The DVFS restore file hil writes in the workdir.
pub const RESTORE_FILE_LIMIT: ReadLimit = ReadLimit::new(
    "RESTORE_FILE_LIMIT",
    1 << 20,
    "the restore file hil writes holds a few hundred bytes per cpufreq policy",
);

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn limits_print_their_name_size_and_reason() {
        assert_eq!(human_bytes(16 << 20), "16 MiB");
        assert_eq!(human_bytes(64 << 10), "64 KiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
        assert_eq!(human_bytes(0), "0 bytes");
        let text = EXEC_OUTPUT_LIMIT.exceeded("stdout");
        assert!(text.starts_with("stdout passed EXEC_OUTPUT_LIMIT (16 MiB: the commands hil runs"), "{text}");
    }

    #[test]
    fn a_limit_error_is_never_retried_by_the_transport() {
        assert!(!ErrorKind::Limit.is_retryable());
    }
}

/// The cpufreq attributes hil writes: what pinning a level and restoring it take. Thermal zones
/// are only read.
pub const PRIVILEGED_ATTRIBUTES: [&str; 4] =
    ["scaling_governor", "scaling_min_freq", "scaling_max_freq", "scaling_setspeed"];

/// Whether a write through `sudo` may go to `path`: only a cpufreq attribute hil pins, in the
/// kernel's real sysfs (`/sys/devices/system/cpu/cpufreq/policyN/<attr>` or
/// `/sys/devices/system/cpu/cpuN/cpufreq/<attr>`), spelled without `.`, `..` or empty components.
/// Checked before any command is built: root on the board is never lent to another path.
pub fn check_privileged_write(path: &str) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "privileged write to {path:?} refused: {why}; sudo writes go only to {} under \
             /sys/devices/system/cpu/cpufreq/policyN/ (or cpuN/cpufreq/)",
            PRIVILEGED_ATTRIBUTES.join(", ")
        ))
    };
    let Some(rest) = path.strip_prefix("/sys/devices/system/cpu/") else {
        return refuse("not in the kernel's cpufreq sysfs (a fake sysfs tree needs no sudo: set `sudo: false`)");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let numbered = |s: &str, prefix: &str| {
        s.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let attr = match parts.as_slice() {
        ["cpufreq", policy, attr] if numbered(policy, "policy") => attr,
        [cpu, "cpufreq", attr] if numbered(cpu, "cpu") => attr,
        _ => return refuse("not a cpufreq policy attribute"),
    };
    if !PRIVILEGED_ATTRIBUTES.contains(attr) {
        return refuse(&format!("`{attr}` is not an attribute hil pins"));
    }
    Ok(())
}

#[cfg(test)]
mod privileged_tests {
    use super::check_privileged_write;

    #[test]
    fn only_the_pinned_cpufreq_attributes_of_the_real_sysfs_are_writable_with_sudo() {
        for ok in [
            "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor",
            "/sys/devices/system/cpu/cpufreq/policy4/scaling_setspeed",
            "/sys/devices/system/cpu/cpu2/cpufreq/scaling_max_freq",
        ] {
            check_privileged_write(ok).unwrap();
        }
        for bad in [
            "/etc/sudoers",
            "/tmp/fake/sys/devices/system/cpu/cpufreq/policy0/scaling_governor",
            "/sys/devices/system/cpu/cpufreq/policy0/../../../../../etc/passwd",
            "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor/../x",
            "/sys/devices/system/cpu/cpufreq/policy/scaling_governor",
            "/sys/devices/system/cpu/cpufreq/policy0x/scaling_governor",
            "/sys/devices/system/cpu/cpufreq/policy0//scaling_governor",
            "/sys/devices/system/cpu/cpufreq/policy0/stats/reset",
            "/sys/devices/system/cpu/cpu0/online",
            "/sys/class/thermal/thermal_zone0/trip_point_0_temp",
            "sys/devices/system/cpu/cpufreq/policy0/scaling_governor",
        ] {
            let e = check_privileged_write(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("refused"), "{bad}: {e}");
        }
    }
}

/// A transport error, naming the board and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("board {board}: {what}: {detail}")]
pub struct BoardError {
    pub board: String,
    pub kind: ErrorKind,
    /// What was being attempted, e.g. `exec "cat /sys/..."` or `upload /tmp/hil-agent`.
    pub what: String,
    pub detail: String,
}

impl BoardError {
    pub fn new(board: &str, kind: ErrorKind, what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { board: board.to_string(), kind, what: what.into(), detail: detail.into() }
    }
}

/// What a finished command left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A long-lived process on the board (the agent) talked to by lines over its stdin/stdout.
pub trait InteractiveSession: Send {
    /// Writes one line (a newline is appended) and flushes.
    fn send_line(&mut self, line: &str) -> Result<(), BoardError>;
    /// Reads one line from the process's stdout (without the newline);
    /// a `Timeout` error when none arrives within `timeout`, `Connection` on EOF, `Limit` when a line
    /// passes [`AGENT_LINE_LIMIT`] without its newline (the session reads no further: every later
    /// call fails the same way).
    fn read_line(&mut self, timeout: Duration) -> Result<String, BoardError>;
    /// Whatever the process wrote to stderr so far (for error messages).
    fn stderr_tail(&mut self) -> String;
    /// Closes stdin, waits briefly for exit, kills it otherwise; returns its exit status if known.
    fn close(&mut self) -> Result<Option<i32>, BoardError>;
}

/// A board reachable by some transport.
pub trait Board: Send {
    /// The board's name from the scenario (used in every error).
    fn name(&self) -> &str;
    /// Runs `argv` on the board, returning status and output; `Timeout` when it outlives `timeout`,
    /// `Limit` (the command stopped) when stdout or stderr passes [`EXEC_OUTPUT_LIMIT`].
    fn exec(&mut self, argv: &[String], timeout: Duration) -> Result<ExecOutput, BoardError>;
    /// Starts `argv` with piped stdin/stdout for a line-based session.
    fn spawn(&mut self, argv: &[String]) -> Result<Box<dyn InteractiveSession>, BoardError>;
    /// Copies a local file to `remote` (an absolute path on the board) with `mode`.
    fn upload(&mut self, local: &Path, remote: &str, mode: u32) -> Result<(), BoardError>;
    /// Reads a whole file on the board, at most [`FILE_READ_LIMIT`].
    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, BoardError>;
    /// Reads a whole file of at most `limit` bytes; a larger one is an [`ErrorKind::Limit`] error
    /// naming the limit and the path.
    ///
    /// The transports stop reading at the limit. This default, for boards that only wrap another
    /// (test doubles), checks after [`Board::read_file`], which is itself bounded.
    fn read_file_limited(&mut self, path: &str, limit: ReadLimit) -> Result<Vec<u8>, BoardError> {
        let data = self.read_file(path)?;
        if data.len() > limit.bytes {
            return Err(BoardError::new(
                self.name(),
                ErrorKind::Limit,
                format!("read {path}"),
                limit.exceeded("the file"),
            ));
        }
        Ok(data)
    }
    /// Writes a whole file on the board; with `sudo`, through `sudo -n` (sysfs writes).
    fn write_file(&mut self, path: &str, data: &[u8], sudo: bool) -> Result<(), BoardError>;
    /// Drops and re-establishes the connection (with backoff where remote).
    fn reconnect(&mut self) -> Result<(), BoardError>;
    /// `"ssh"` or `"local"`, for run.json and reports.
    fn transport(&self) -> &'static str;
    /// A flag that, once set, makes waits of this transport that can last seconds (reconnect
    /// backoff) give up with [`ErrorKind::Interrupted`] within a fraction of a second.
    fn set_interrupt(&mut self, _flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {}
}
