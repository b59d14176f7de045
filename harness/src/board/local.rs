//! The local transport: the "board" is this host.
//!
//! The simulated board and the tests run every code path above the transport
//! (probe, deployment, DVFS against a fake sysfs tree, the agent session)
//! through this implementation, so it keeps the same semantics as
//! [`super::ssh`]:
//!
//! - commands are argument vectors run without a shell (no quoting needed:
//!   nothing is ever parsed);
//! - a command that cannot be found reports status 127 with a message on
//!   stderr, as a remote shell would, instead of a transport error;
//! - a command is finished when it has exited *and* closed its stdout and
//!   stderr (as with SSH, a background child that keeps the pipes open keeps
//!   the command running until the timeout);
//! - every child runs in its own process group, so a timeout or `close` kills
//!   the whole tree (a `sh -c 'sleep 100'` leaves no orphaned `sleep`), and a
//!   Ctrl-C at the terminal reaches `hil` only, which then shuts the agent down
//!   in order instead of having it die mid-reply;
//! - reads are bounded ([`super::ReadLimit`]): a command's output by
//!   [`EXEC_OUTPUT_LIMIT`] (the process group is killed as soon as a stream
//!   passes it), a session's line by [`AGENT_LINE_LIMIT`], a file by the limit
//!   the caller gives.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{
    Board, BoardError, ErrorKind, ExecOutput, InteractiveSession, ReadLimit, AGENT_LINE_LIMIT, EXEC_OUTPUT_LIMIT,
    FILE_READ_LIMIT,
};

/// How much of a process's stderr is kept for error messages.
///
/// The agent logs on stderr for the whole run; only the end matters when it
/// dies, and an unbounded buffer would grow for hours.
pub const STDERR_TAIL_BYTES: usize = 16 * 1024;

/// How long `close` waits for a process to exit after its stdin is closed
/// before killing it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Timeout for `sudo -n tee` in [`LocalBoard::write_file`]: a sysfs write
/// takes microseconds; seconds mean sudo is waiting on something.
pub const SUDO_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The last [`STDERR_TAIL_BYTES`] bytes written to a stream, shared between the
/// thread that drains the pipe and the session that reports errors.
#[derive(Debug, Default)]
pub(crate) struct OutputTail {
    bytes: VecDeque<u8>,
    capacity: usize,
}

impl OutputTail {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self { bytes: VecDeque::with_capacity(capacity.min(4096)), capacity }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.capacity { &data[data.len() - self.capacity..] } else { data };
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(data);
    }

    pub(crate) fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut all = Vec::with_capacity(a.len() + b.len());
        all.extend_from_slice(a);
        all.extend_from_slice(b);
        String::from_utf8_lossy(&all).into_owned()
    }
}

/// Splits a byte stream into lines (the agent's stdout), refusing a line longer than its limit.
///
/// Both transports feed it whatever they read. It never holds more than the limit of an unfinished
/// line; complete lines wait in a queue whose size a reader watches ([`LineBuffer::should_read`]) to
/// stop reading while a consumer is behind, so memory stays within about twice the limit and the
/// writer is held back by the pipe or the SSH window instead.
#[derive(Debug)]
pub(crate) struct LineBuffer {
    limit: ReadLimit,
    partial: Vec<u8>,
    lines: VecDeque<String>,
    /// Bytes in `lines`.
    queued: usize,
}

impl LineBuffer {
    pub(crate) fn new(limit: ReadLimit) -> Self {
        Self { limit, partial: Vec::new(), lines: VecDeque::new(), queued: 0 }
    }

    /// Appends bytes from the stream and queues the lines they complete. `Err(n)` when the
    /// unfinished line has passed the limit (`n` bytes without a newline); nothing past the limit
    /// is kept.
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<(), usize> {
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.len() + i > self.limit.bytes {
                return Err(self.partial.len() + i);
            }
            self.partial.extend_from_slice(&rest[..=i]);
            let line = trim_line_end(std::mem::take(&mut self.partial));
            self.queued += line.len();
            self.lines.push_back(line);
            rest = &rest[i + 1..];
        }
        if self.partial.len() + rest.len() > self.limit.bytes {
            return Err(self.partial.len() + rest.len());
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// The oldest complete line.
    pub(crate) fn pop(&mut self) -> Option<String> {
        let line = self.lines.pop_front()?;
        self.queued -= line.len();
        Some(line)
    }

    /// Whether a reader should take more from the stream: not while the queued lines and the
    /// unfinished one already hold the limit.
    pub(crate) fn should_read(&self) -> bool {
        self.queued + self.partial.len() <= self.limit.bytes
    }

    /// The unfinished last line, at end of stream.
    pub(crate) fn take_partial(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| trim_line_end(std::mem::take(&mut self.partial)))
    }

    /// The error detail for a line that passed the limit after `n` bytes.
    pub(crate) fn overflow_detail(&self, n: usize) -> String {
        format!(
            "{}; the session reads no further",
            self.limit.exceeded(format!("a line ({n} bytes so far, no newline)"))
        )
    }
}

/// Reads `r` to its end, or stops one byte past `limit`: `Ok(None)` means it had more than `limit`.
pub(crate) fn read_capped(r: &mut impl Read, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    r.take(limit as u64 + 1).read_to_end(&mut data)?;
    Ok((data.len() <= limit).then_some(data))
}

/// Strips the line terminator (`\n`, and a `\r` before it) from a line read
/// with `read_until(b'\n')`.
pub(crate) fn trim_line_end(mut line: Vec<u8>) -> String {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Describes a command for error messages: `exec "<shell-quoted argv>"`.
pub(crate) fn describe_exec(argv: &[String]) -> String {
    format!("exec \"{}\"", super::quote::shell_join(argv))
}

/// The shell convention for an exit status: the code, or 128 + signal number.
fn status_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    }
}

/// Kills the child's whole process group (it leads one: see `process_group(0)`).
fn kill_group(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    // The group id is the child's pid, which we have not reaped yet, so it cannot have
    // been reused by an unrelated group.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = child.kill();
}

/// Drains a pipe to its end on a thread, at most [`EXEC_OUTPUT_LIMIT`]; the result arrives on the
/// returned channel (`Ok(None)`: the stream passed the limit). `over` is set the moment it does, so
/// the waiting side can stop the command at once instead of at its timeout; the pipe is closed then,
/// and a writer that goes on gets `EPIPE`.
fn drain_capped(mut pipe: impl Read + Send + 'static, over: Arc<AtomicBool>) -> Receiver<io::Result<Option<Vec<u8>>>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let result = read_capped(&mut pipe, EXEC_OUTPUT_LIMIT.bytes);
        if matches!(result, Ok(None)) {
            over.store(true, Ordering::SeqCst);
        }
        drop(pipe);
        let _ = tx.send(result);
    });
    rx
}

/// Commands on this host, behind the [`Board`] trait.
#[derive(Debug, Clone)]
pub struct LocalBoard {
    name: String,
}

impl LocalBoard {
    /// A local board called `name` (the scenario's board name, used in errors).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    fn err(&self, kind: ErrorKind, what: impl Into<String>, detail: impl Into<String>) -> BoardError {
        BoardError::new(&self.name, kind, what, detail)
    }

    fn command(argv: &[String]) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).process_group(0);
        cmd
    }

    /// Runs `argv` with `input` on its stdin (or `/dev/null`), collecting its
    /// output, killing its process group when `timeout` passes.
    fn run(&self, argv: &[String], input: Option<Vec<u8>>, timeout: Duration) -> Result<ExecOutput, BoardError> {
        let what = describe_exec(argv);
        if argv.is_empty() {
            return Err(self.err(ErrorKind::Local, what, "empty argument vector"));
        }
        let mut cmd = Self::command(argv);
        cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(ExecOutput {
                    status: 127,
                    stdout: Vec::new(),
                    stderr: format!("{}: command not found\n", argv[0]).into_bytes(),
                });
            }
            Err(e) => return Err(self.err(ErrorKind::Remote, what, format!("cannot start: {e}"))),
        };
        if let (Some(mut stdin), Some(data)) = (child.stdin.take(), input) {
            // A separate writer: a child that writes a lot before reading would
            // otherwise deadlock against us writing a lot before reading.
            thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
        let (stdout_over, stderr_over) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let stdout_rx = drain_capped(child.stdout.take().expect("stdout piped"), stdout_over.clone());
        let stderr_rx = drain_capped(child.stderr.take().expect("stderr piped"), stderr_over.clone());
        let deadline = Instant::now() + timeout;
        let over_limit = |stream: &str| {
            self.err(
                ErrorKind::Limit,
                what.clone(),
                format!("{}; the command's process group was killed", EXEC_OUTPUT_LIMIT.exceeded(stream)),
            )
        };

        let overflowed = || stdout_over.load(Ordering::SeqCst) || stderr_over.load(Ordering::SeqCst);
        let status = match wait_for_exit(&mut child, deadline, overflowed) {
            Ok(Wait::Exited(status)) => status,
            Ok(Wait::Stopped) => {
                kill_group(&mut child);
                let _ = child.wait();
                return Err(over_limit(if stdout_over.load(Ordering::SeqCst) { "stdout" } else { "stderr" }));
            }
            Ok(Wait::TimedOut) => {
                kill_group(&mut child);
                let _ = child.wait();
                let stderr = stderr_rx.recv_timeout(Duration::from_secs(1)).ok().and_then(Result::ok).flatten();
                let tail = stderr.map(|e| String::from_utf8_lossy(&e).into_owned()).unwrap_or_default();
                return Err(self.err(
                    ErrorKind::Timeout,
                    what,
                    format!("no exit within {timeout:?}, killed; stderr: {}", tail.trim_end()),
                ));
            }
            Err(e) => return Err(self.err(ErrorKind::Remote, what, format!("waiting for exit: {e}"))),
        };
        let mut collect = |rx: Receiver<io::Result<Option<Vec<u8>>>>, stream: &str| -> Result<Vec<u8>, BoardError> {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(Some(bytes))) => Ok(bytes),
                Ok(Ok(None)) => Err(over_limit(stream)),
                Ok(Err(e)) => Err(self.err(ErrorKind::Remote, what.clone(), format!("reading {stream}: {e}"))),
                Err(_) => {
                    kill_group(&mut child);
                    Err(self.err(
                        ErrorKind::Timeout,
                        what.clone(),
                        format!(
                            "exited with status {} but its {stream} stayed open past {timeout:?} \
                             (a background process holding it?); process group killed",
                            status_code(status)
                        ),
                    ))
                }
            }
        };
        let stdout = collect(stdout_rx, "stdout")?;
        let stderr = collect(stderr_rx, "stderr")?;
        Ok(ExecOutput { status: status_code(status), stdout, stderr })
    }
}

/// How a wait for a child ended.
enum Wait {
    Exited(ExitStatus),
    /// The deadline passed first.
    TimedOut,
    /// The caller's stop condition became true first.
    Stopped,
}

/// Polls `child` until it exits or `deadline` passes (`Ok(None)`).
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    Ok(match wait_for_exit(child, deadline, || false)? {
        Wait::Exited(status) => Some(status),
        Wait::TimedOut | Wait::Stopped => None,
    })
}

/// Polls `child` until it exits, `deadline` passes or `stop()` says so.
///
/// Polling with a short, growing sleep keeps this free of signal handling
/// (SIGCHLD belongs to the whole process, and other threads run commands too).
fn wait_for_exit(child: &mut Child, deadline: Instant, stop: impl Fn() -> bool) -> io::Result<Wait> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Wait::Exited(status));
        }
        if stop() {
            return Ok(Wait::Stopped);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Wait::TimedOut);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

impl Board for LocalBoard {
    fn name(&self) -> &str {
        &self.name
    }

    fn exec(&mut self, argv: &[String], timeout: Duration) -> Result<ExecOutput, BoardError> {
        self.run(argv, None, timeout)
    }

    fn spawn(&mut self, argv: &[String]) -> Result<Box<dyn InteractiveSession>, BoardError> {
        let what = format!("spawn \"{}\"", super::quote::shell_join(argv));
        if argv.is_empty() {
            return Err(self.err(ErrorKind::Local, what, "empty argument vector"));
        }
        let mut child = Self::command(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.err(ErrorKind::Remote, what.clone(), format!("cannot start: {e}")))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");

        // A bounded queue: when the session is not reading, the thread blocks on it and the agent
        // on its full pipe, instead of lines piling up here.
        let (line_tx, lines) = mpsc::sync_channel(SESSION_QUEUED_LINES);
        thread::spawn(move || {
            let mut stdout = stdout;
            let mut buffer = LineBuffer::new(AGENT_LINE_LIMIT);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match stdout.read(&mut chunk) {
                    Ok(0) => {
                        if let Some(last) = buffer.take_partial() {
                            if line_tx.send(LineEvent::Line(last)).is_err() {
                                return;
                            }
                        }
                        let _ = line_tx.send(LineEvent::Eof);
                        return;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = line_tx.send(LineEvent::Failed(e.to_string()));
                        return;
                    }
                };
                if let Err(n) = buffer.push(&chunk[..n]) {
                    // Stop reading: the pipe closes with this thread, and the process's next
                    // write fails instead of growing our memory.
                    let _ = line_tx.send(LineEvent::TooLong(buffer.overflow_detail(n)));
                    return;
                }
                while let Some(line) = buffer.pop() {
                    if line_tx.send(LineEvent::Line(line)).is_err() {
                        return;
                    }
                }
            }
        });
        let tail = Arc::new(Mutex::new(OutputTail::with_capacity(STDERR_TAIL_BYTES)));
        let tail_writer = Arc::clone(&tail);
        let (stderr_done_tx, stderr_done) = mpsc::channel();
        thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail_writer.lock().unwrap_or_else(|p| p.into_inner()).push(&buf[..n]);
            }
            let _ = stderr_done_tx.send(());
        });
        Ok(Box::new(LocalSession {
            board: self.name.clone(),
            what,
            child,
            stdin,
            lines,
            tail,
            stderr_done,
            finished: false,
            overflowed: None,
        }))
    }

    fn upload(&mut self, local: &Path, remote: &str, mode: u32) -> Result<(), BoardError> {
        let what = format!("upload {} -> {remote}", local.display());
        let mut source = fs::File::open(local)
            .map_err(|e| self.err(ErrorKind::Local, what.clone(), format!("opening {}: {e}", local.display())))?;
        let target = Path::new(remote);
        let tmp = temp_sibling(remote);
        let result = (|| -> io::Result<()> {
            let mut dest = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            io::copy(&mut source, &mut dest)?;
            dest.set_permissions(fs::Permissions::from_mode(mode))?;
            // The bytes must be on disk before the rename makes them visible
            // under the final name, or a crash leaves a truncated binary.
            dest.sync_all()?;
            fs::rename(&tmp, target)
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.err(ErrorKind::Remote, what, format!("writing {tmp} then renaming to {remote}: {e}"))
        })
    }

    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, BoardError> {
        self.read_file_limited(path, FILE_READ_LIMIT)
    }

    fn read_file_limited(&mut self, path: &str, limit: ReadLimit) -> Result<Vec<u8>, BoardError> {
        let what = format!("read {path}");
        let mut file = fs::File::open(path).map_err(|e| self.err(ErrorKind::Remote, what.clone(), e.to_string()))?;
        match read_capped(&mut file, limit.bytes) {
            Ok(Some(data)) => Ok(data),
            Ok(None) => Err(self.err(ErrorKind::Limit, what, limit.exceeded("the file"))),
            Err(e) => Err(self.err(ErrorKind::Remote, what, e.to_string())),
        }
    }

    fn write_file(&mut self, path: &str, data: &[u8], sudo: bool) -> Result<(), BoardError> {
        let what = format!("write {path}{}", if sudo { " (sudo)" } else { "" });
        if !sudo {
            // In place, no temp-and-rename: sysfs attributes cannot be renamed
            // over, and the kernel wants the value in one write.
            return fs::write(path, data).map_err(|e| self.err(ErrorKind::Remote, what, e.to_string()));
        }
        super::check_privileged_write(path).map_err(|e| self.err(ErrorKind::Local, what.clone(), e))?;
        let argv = sudo_tee_argv(path);
        let out = self.run(&argv, Some(data.to_vec()), SUDO_WRITE_TIMEOUT)?;
        if out.success() {
            Ok(())
        } else {
            Err(self.err(
                ErrorKind::Remote,
                what,
                format!(
                    "`{}` exited with {}: {}",
                    super::quote::shell_join(&argv),
                    out.status,
                    out.stderr_str().trim_end()
                ),
            ))
        }
    }

    fn reconnect(&mut self) -> Result<(), BoardError> {
        Ok(())
    }

    fn transport(&self) -> &'static str {
        "local"
    }
}

/// `sudo -n tee <path>`: the privileged write used by both transports.
///
/// `-n` makes sudo fail at once instead of prompting for a password nobody
/// will type; `tee` writes its stdin to the file (its stdout copy is discarded).
pub(crate) fn sudo_tee_argv(path: &str) -> Vec<String> {
    ["sudo", "-n", "tee", path].iter().map(|s| s.to_string()).collect()
}

/// A fresh name next to `path`, on the same file system so `rename` is atomic.
pub(crate) fn temp_sibling(path: &str) -> String {
    let nonce: u64 = rand::random();
    format!("{path}.tmp-{}-{nonce:016x}", std::process::id())
}

/// Lines a local session's reader thread may hold for a session that is not reading: the agent
/// answers one request at a time, so two (a late reply and the current one) are plenty; memory is at
/// most these, one being read and one unfinished, each within [`AGENT_LINE_LIMIT`].
const SESSION_QUEUED_LINES: usize = 2;

/// What the stdout reader thread reports.
#[derive(Debug)]
enum LineEvent {
    Line(String),
    Eof,
    Failed(String),
    /// A line passed [`AGENT_LINE_LIMIT`]; the thread stopped reading (the detail says so).
    TooLong(String),
}

/// A process on this host driven line by line.
#[derive(Debug)]
pub struct LocalSession {
    board: String,
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<LineEvent>,
    tail: Arc<Mutex<OutputTail>>,
    /// Signalled when stderr reaches EOF, so an exit report includes the last words.
    stderr_done: Receiver<()>,
    finished: bool,
    /// Set once a line passed [`AGENT_LINE_LIMIT`]: the session is out of step for good.
    overflowed: Option<String>,
}

impl LocalSession {
    fn err(&self, kind: ErrorKind, detail: impl Into<String>) -> BoardError {
        BoardError::new(&self.board, kind, self.what.clone(), detail)
    }

    fn tail_text(&self) -> String {
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).text()
    }

    fn exited_detail(&mut self) -> String {
        // Give the process a moment to be reapable so the status can be reported.
        let status = wait_until(&mut self.child, Instant::now() + Duration::from_millis(200)).ok().flatten();
        // stdout and stderr are drained by different threads: stdout's EOF can
        // be seen before the last stderr bytes are in the tail. Bounded, since a
        // surviving grandchild may hold stderr open.
        let _ = self.stderr_done.recv_timeout(Duration::from_millis(500));
        let status = status.map(|s| format!("status {}", status_code(s))).unwrap_or_else(|| "still running".into());
        format!("process closed its stdout ({status}); stderr: {}", self.tail_text().trim_end())
    }
}

impl InteractiveSession for LocalSession {
    fn send_line(&mut self, line: &str) -> Result<(), BoardError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(self.err(ErrorKind::Connection, "stdin already closed"));
        };
        let mut framed = Vec::with_capacity(line.len() + 1);
        framed.extend_from_slice(line.as_bytes());
        framed.push(b'\n');
        if let Err(e) = stdin.write_all(&framed).and_then(|()| stdin.flush()) {
            let detail = format!("writing to stdin: {e}; {}", self.exited_detail());
            return Err(self.err(ErrorKind::Connection, detail));
        }
        Ok(())
    }

    fn read_line(&mut self, timeout: Duration) -> Result<String, BoardError> {
        if let Some(detail) = &self.overflowed {
            return Err(self.err(ErrorKind::Limit, detail.clone()));
        }
        match self.lines.recv_timeout(timeout) {
            Ok(LineEvent::Line(line)) => Ok(line),
            Ok(LineEvent::TooLong(detail)) => {
                self.overflowed = Some(detail.clone());
                Err(self.err(ErrorKind::Limit, detail))
            }
            Ok(LineEvent::Eof) | Err(RecvTimeoutError::Disconnected) => {
                let detail = self.exited_detail();
                Err(self.err(ErrorKind::Connection, detail))
            }
            Ok(LineEvent::Failed(e)) => {
                let detail = format!("reading stdout: {e}; stderr: {}", self.tail_text().trim_end());
                Err(self.err(ErrorKind::Connection, detail))
            }
            Err(RecvTimeoutError::Timeout) => {
                Err(self.err(ErrorKind::Timeout, format!("no line within {timeout:?}; stderr: {}", self.tail_text())))
            }
        }
    }

    fn stderr_tail(&mut self) -> String {
        self.tail_text()
    }

    fn close(&mut self) -> Result<Option<i32>, BoardError> {
        drop(self.stdin.take());
        let status = match wait_until(&mut self.child, Instant::now() + CLOSE_GRACE) {
            Ok(Some(status)) => Some(status),
            Ok(None) => {
                kill_group(&mut self.child);
                self.child.wait().ok()
            }
            Err(e) => return Err(self.err(ErrorKind::Remote, format!("waiting for exit: {e}"))),
        };
        self.finished = true;
        Ok(status.map(status_code))
    }
}

impl Drop for LocalSession {
    /// A session dropped without `close` (an error path) must not leave the
    /// agent running: kill the group and reap it.
    fn drop(&mut self) {
        if !self.finished {
            drop(self.stdin.take());
            if !matches!(self.child.try_wait(), Ok(Some(_))) {
                kill_group(&mut self.child);
            }
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn board() -> LocalBoard {
        LocalBoard::new("local-test")
    }

    #[test]
    fn exec_returns_status_stdout_and_stderr() {
        let out =
            board().exec(&argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]), Duration::from_secs(10)).unwrap();
        assert_eq!(out.status, 3);
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(!out.success());
    }

    #[test]
    fn exec_passes_arguments_verbatim_without_a_shell() {
        let nasty = argv(&["printf", "%s|", "$(id)", "a b", "'\"", "\n", ""]);
        let out = board().exec(&nasty, Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout_str(), "$(id)|a b|'\"|\n||");
    }

    #[test]
    fn missing_command_is_status_127_like_a_shell() {
        let out = board().exec(&argv(&["/nonexistent/hil-no-such-tool"]), Duration::from_secs(5)).unwrap();
        assert_eq!(out.status, 127);
        assert!(out.stderr_str().contains("/nonexistent/hil-no-such-tool"));
    }

    #[test]
    fn empty_argv_is_a_local_error() {
        let err = board().exec(&[], Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Local);
        assert_eq!(err.board, "local-test");
    }

    #[test]
    fn signal_death_reports_128_plus_signal() {
        let out = board().exec(&argv(&["sh", "-c", "kill -TERM $$"]), Duration::from_secs(5)).unwrap();
        assert_eq!(out.status, 128 + libc::SIGTERM);
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        // The shell starts a grandchild (sleep) and records its pid; the timeout
        // must kill both, not just the shell.
        let script = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
        let started = Instant::now();
        let err = board().exec(&argv(&["sh", "-c", &script]), Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
        assert!(err.what.contains("sleep 30"), "what names the command: {}", err.what);
        assert!(started.elapsed() < Duration::from_secs(20), "returned at the timeout, not at sleep's end");
        let grandchild: libc::pid_t = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // Poll briefly: SIGKILL delivery and reaping by init are asynchronous.
        let gone = (0..100).any(|_| {
            // SAFETY: signal 0 only checks for existence.
            let alive = unsafe { libc::kill(grandchild, 0) } == 0 && !is_zombie(grandchild);
            if alive {
                thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "grandchild {grandchild} survived the timeout");
    }

    fn is_zombie(pid: libc::pid_t) -> bool {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
            .unwrap_or(true)
    }

    #[test]
    fn background_child_holding_stdout_times_out_with_an_explanation() {
        let err =
            board().exec(&argv(&["sh", "-c", "sleep 30 & echo started"]), Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert!(err.detail.contains("stayed open"), "{}", err.detail);
    }

    #[test]
    fn spawn_echoes_lines_and_read_line_times_out() {
        let mut session = board().spawn(&argv(&["cat"])).unwrap();
        session.send_line("hello agent").unwrap();
        assert_eq!(session.read_line(Duration::from_secs(10)).unwrap(), "hello agent");
        session.send_line("{\"cmd\":\"it's\"}").unwrap();
        assert_eq!(session.read_line(Duration::from_secs(10)).unwrap(), "{\"cmd\":\"it's\"}");
        let err = session.read_line(Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert_eq!(session.close().unwrap(), Some(0));
    }

    #[test]
    fn session_eof_is_a_connection_error_with_the_stderr_tail() {
        let mut session =
            board().spawn(&argv(&["sh", "-c", "read l; echo \"got $l\"; echo 'agent panicked' >&2; exit 7"])).unwrap();
        session.send_line("x").unwrap();
        assert_eq!(session.read_line(Duration::from_secs(10)).unwrap(), "got x");
        let err = session.read_line(Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Connection);
        assert!(err.detail.contains("agent panicked"), "{}", err.detail);
        assert!(err.detail.contains("status 7"), "{}", err.detail);
        assert!(session.stderr_tail().contains("agent panicked"));
        assert_eq!(session.close().unwrap(), Some(7));
    }

    #[test]
    fn close_kills_a_process_that_ignores_stdin_eof() {
        let mut session = board().spawn(&argv(&["sh", "-c", "trap '' TERM; sleep 60"])).unwrap();
        let status = session.close().unwrap();
        assert_eq!(status, Some(128 + libc::SIGKILL));
    }

    #[test]
    fn stderr_tail_is_bounded_and_keeps_the_end() {
        let mut tail = OutputTail::with_capacity(8);
        tail.push(b"0123");
        tail.push(b"456789");
        assert_eq!(tail.text(), "23456789");
        tail.push(b"abcdefghijkl");
        assert_eq!(tail.text(), "efghijkl");
    }

    #[test]
    fn upload_is_atomic_and_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("agent");
        fs::write(&src, b"new binary").unwrap();
        let dest = dir.path().join("hil-agent");
        fs::write(&dest, b"old binary").unwrap();
        let dest_str = dest.to_str().unwrap();

        // A reader holding the old file keeps seeing the old bytes: the upload
        // replaced the directory entry instead of rewriting the file in place.
        let mut old_handle = fs::File::open(&dest).unwrap();
        board().upload(&src, dest_str, 0o750).unwrap();
        let mut seen = String::new();
        old_handle.read_to_string(&mut seen).unwrap();
        assert_eq!(seen, "old binary");

        assert_eq!(fs::read(&dest).unwrap(), b"new binary");
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o750);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn upload_errors_name_the_side_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let err = board().upload(&dir.path().join("missing"), "/tmp/x", 0o644).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Local);
        assert!(err.detail.contains("missing"));
        let src = dir.path().join("src");
        fs::write(&src, b"x").unwrap();
        let err = board().upload(&src, "/nonexistent-dir/agent", 0o644).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Remote);
        assert!(err.what.contains("/nonexistent-dir/agent"));
    }

    #[test]
    fn read_and_write_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scaling_setspeed");
        let path = path.to_str().unwrap();
        let mut b = board();
        b.write_file(path, b"1500000\n", false).unwrap();
        assert_eq!(b.read_file(path).unwrap(), b"1500000\n");
        let err = b.read_file(&format!("{path}.missing")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Remote);
        assert!(err.what.contains("scaling_setspeed.missing"));
    }

    const TINY: ReadLimit = ReadLimit::new("TINY_LIMIT", 8, "a test limit");

    #[test]
    fn line_buffer_splits_lines_across_pushes_and_refuses_a_line_past_the_limit() {
        let mut b = LineBuffer::new(TINY);
        b.push(b"ab").unwrap();
        b.push(b"c\r\n12345678\nxy").unwrap();
        assert_eq!(b.pop().as_deref(), Some("abc"));
        assert_eq!(b.pop().as_deref(), Some("12345678"), "exactly the limit is allowed");
        assert_eq!(b.pop(), None);
        assert_eq!(b.take_partial().as_deref(), Some("xy"));
        assert_eq!(b.take_partial(), None);

        // Nine bytes before the newline: refused whether it arrives at once or in pieces.
        assert_eq!(LineBuffer::new(TINY).push(b"123456789\n"), Err(9));
        let mut b = LineBuffer::new(TINY);
        b.push(b"12345").unwrap();
        assert_eq!(b.push(b"6789"), Err(9));
        assert!(b.overflow_detail(9).contains("TINY_LIMIT (8 bytes: a test limit)"), "{}", b.overflow_detail(9));
    }

    #[test]
    fn line_buffer_asks_the_reader_to_stop_while_lines_wait() {
        let mut b = LineBuffer::new(TINY);
        b.push(b"1234\n5678\n").unwrap();
        assert!(b.should_read(), "8 bytes held: at the limit, not past it");
        b.push(b"9").unwrap();
        assert!(!b.should_read());
        b.pop();
        assert!(b.should_read());
    }

    #[test]
    fn read_capped_stops_one_byte_past_the_limit_of_an_endless_stream() {
        assert_eq!(read_capped(&mut &b"12345678"[..], 8).unwrap(), Some(b"12345678".to_vec()));
        assert_eq!(read_capped(&mut io::repeat(b'y'), 1 << 20).unwrap(), None);
        assert_eq!(read_capped(&mut &b""[..], 0).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn a_command_printing_forever_is_stopped_at_the_output_limit() {
        let started = Instant::now();
        let err = board().exec(&argv(&["yes"]), Duration::from_secs(120)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{err}");
        let text = err.to_string();
        assert!(text.contains("local-test") && text.contains("exec \"yes\""), "{text}");
        assert!(text.contains("stdout passed EXEC_OUTPUT_LIMIT (16 MiB"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(30), "stopped at the limit, not the timeout");
        // The same for stderr, and for a command that finishes but printed too much.
        let err = board().exec(&argv(&["sh", "-c", "yes >&2"]), Duration::from_secs(120)).unwrap_err();
        assert!(err.to_string().contains("stderr passed EXEC_OUTPUT_LIMIT"), "{err}");
        let err = board().exec(&argv(&["head", "-c", "17000000", "/dev/zero"]), Duration::from_secs(120)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{err}");
    }

    #[test]
    fn a_file_past_the_callers_limit_is_refused_naming_limit_and_path() {
        let mut b = board();
        let err = b.read_file_limited("/dev/zero", TINY).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit);
        assert!(err.to_string().contains("read /dev/zero: the file passed TINY_LIMIT"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eight");
        fs::write(&path, b"12345678").unwrap();
        assert_eq!(b.read_file_limited(path.to_str().unwrap(), TINY).unwrap(), b"12345678");
    }

    #[test]
    fn a_session_line_that_never_ends_is_refused_and_the_session_stays_refused() {
        let mut session = board().spawn(&argv(&["sh", "-c", "echo first; yes | tr -d '\\n'"])).unwrap();
        assert_eq!(session.read_line(Duration::from_secs(10)).unwrap(), "first");
        let started = Instant::now();
        let err = session.read_line(Duration::from_secs(120)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit, "{err}");
        assert!(err.detail.contains("passed AGENT_LINE_LIMIT (32 MiB"), "{}", err.detail);
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
        let again = session.read_line(Duration::from_secs(1)).unwrap_err();
        assert_eq!(again.kind, ErrorKind::Limit, "{again}");
        session.close().unwrap();
    }

    #[test]
    fn a_sudo_write_outside_the_cpufreq_attributes_is_refused_before_sudo_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("governor");
        let path = path.to_str().unwrap();
        let mut b = board();
        let err = b.write_file(path, b"userspace\n", true).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Local);
        assert!(err.detail.contains("refused") && err.detail.contains(path), "{}", err.detail);
        assert!(!Path::new(path).exists(), "nothing was written");
    }
}
