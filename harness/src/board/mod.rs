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
}

impl ErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Timeout)
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
}
