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
}

impl ErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Timeout)
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
    /// a `Timeout` error when none arrives within `timeout`, `Connection` on EOF.
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
    /// Runs `argv` on the board, returning status and output; `Timeout` when it outlives `timeout`.
    fn exec(&mut self, argv: &[String], timeout: Duration) -> Result<ExecOutput, BoardError>;
    /// Starts `argv` with piped stdin/stdout for a line-based session.
    fn spawn(&mut self, argv: &[String]) -> Result<Box<dyn InteractiveSession>, BoardError>;
    /// Copies a local file to `remote` (an absolute path on the board) with `mode`.
    fn upload(&mut self, local: &Path, remote: &str, mode: u32) -> Result<(), BoardError>;
    /// Reads a whole file on the board.
    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, BoardError>;
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
