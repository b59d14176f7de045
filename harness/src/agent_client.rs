//! The harness side of the agent protocol: typed requests over a board's
//! [`InteractiveSession`], each reply matched to its request by `id`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use device_agent::protocol::{
    self, ClockReply, Command, FidelityReply, FidelityRequest, HelloReply, LoadReply, LoadRequest, QuitReply,
    ReplyBody, Request, RunReply, RunRequest, SelftestReply, SelftestRequest, SwitchMode, SwitchReply, SwitchRequest,
    DEFAULT_INPUT_SEED, PROTO_VERSION,
};

use crate::board::{BoardError, ErrorKind, InteractiveSession};
use crate::energy::ClockExchange;
use crate::power::host_monotonic_ns;

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The transport failed (connection dropped, timeout): the cell may be retried.
    #[error("{0}")]
    Transport(#[from] BoardError),
    /// The agent answered with an error or with something unexpected.
    #[error("agent on {board}: `{cmd}`: {detail}")]
    Protocol { board: String, cmd: &'static str, detail: String },
    /// The user asked to stop (Ctrl-C) while the agent was working on `cmd`; the session is no
    /// longer in step with the agent and is dropped.
    #[error("agent on {board}: `{cmd}` abandoned: stopping on request")]
    Interrupted { board: String, cmd: &'static str },
}

impl AgentError {
    /// Whether reconnecting and retrying could help.
    pub fn is_retryable(&self) -> bool {
        match self {
            // A reply that passed AGENT_LINE_LIMIT leaves the session out of step with the agent for
            // good: a fresh session (the runner reconnects) is the way back, and the scenario's
            // max_attempts bounds how often a misbehaving agent is given that chance.
            AgentError::Transport(e) => {
                e.kind.is_retryable() || e.kind == ErrorKind::Remote || e.kind == ErrorKind::Limit
            }
            AgentError::Protocol { .. } | AgentError::Interrupted { .. } => false,
        }
    }
}

/// How much of an undecodable reply an error shows: enough to recognise it, never a whole
/// (up to [`crate::board::AGENT_LINE_LIMIT`]) line.
const REPLY_PREVIEW_CHARS: usize = 200;

/// A reply quoted for an error message: the first [`REPLY_PREVIEW_CHARS`] characters and its length.
fn preview(line: &str) -> String {
    match line.char_indices().nth(REPLY_PREVIEW_CHARS) {
        None => format!("{line:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &line[..cut], line.len()),
    }
}

/// A live agent process on a board.
pub struct AgentClient {
    board: String,
    session: Box<dyn InteractiveSession>,
    next_id: u64,
    /// How long to wait for a reply beyond what the request itself takes.
    pub reply_timeout: Duration,
    /// Set on Ctrl-C: a wait for a reply (a model load of half an hour, a long window) gives up
    /// within [`INTERRUPT_POLL`].
    interrupt: Option<Arc<AtomicBool>>,
}

/// How often a wait for the agent looks at the interrupt flag.
pub const INTERRUPT_POLL: Duration = Duration::from_millis(200);

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient").field("board", &self.board).field("next_id", &self.next_id).finish()
    }
}

impl AgentClient {
    pub fn new(board: &str, session: Box<dyn InteractiveSession>) -> Self {
        Self { board: board.to_string(), session, next_id: 1, reply_timeout: Duration::from_secs(60), interrupt: None }
    }

    /// Makes every wait for a reply give up (with [`AgentError::Interrupted`]) once `flag` is set.
    #[must_use]
    pub fn with_interrupt(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
        self
    }

    fn interrupted(&self) -> bool {
        self.interrupt.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Sends `command` and waits up to `timeout` for the reply carrying the same id.
    fn call<T: ReplyBody>(&mut self, command: Command, timeout: Duration) -> Result<T, AgentError> {
        let cmd = command.name();
        let id = self.next_id;
        self.next_id += 1;
        let request = Request::new(command).with_id(id);
        let line = String::from_utf8(protocol::encode_line(&request)).expect("JSON is UTF-8");
        self.session.send_line(line.trim_end())?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BoardError::new(
                    &self.board,
                    ErrorKind::Timeout,
                    format!("agent `{cmd}`"),
                    format!("no reply within {timeout:?}; agent stderr: {}", self.session.stderr_tail()),
                )
                .into());
            }
            if self.interrupted() {
                return Err(AgentError::Interrupted { board: self.board.clone(), cmd });
            }
            let slice = if self.interrupt.is_some() { left.min(INTERRUPT_POLL) } else { left };
            let line = match self.session.read_line(slice) {
                Ok(l) => l,
                // A slice passed without a reply: look at the flag and the deadline again.
                Err(e) if e.kind == ErrorKind::Timeout && slice < left => continue,
                Err(mut e) => {
                    let tail = self.session.stderr_tail();
                    if !tail.is_empty() {
                        e.detail = format!("{}; agent stderr: {}", e.detail, tail.trim());
                    }
                    return Err(e.into());
                }
            };
            let response = protocol::decode_response(line.as_bytes()).map_err(|e| AgentError::Protocol {
                board: self.board.clone(),
                cmd,
                detail: format!("undecodable reply {}: {e}", preview(&line)),
            })?;
            if response.id.as_ref().and_then(|v| v.as_u64()) != Some(id) {
                // A late reply to an earlier, timed-out request: skip it.
                continue;
            }
            if response.proto != PROTO_VERSION {
                return Err(AgentError::Protocol {
                    board: self.board.clone(),
                    cmd,
                    detail: format!("agent speaks protocol {}, harness speaks {PROTO_VERSION}", response.proto),
                });
            }
            return response.expect::<T>().map_err(|e| AgentError::Protocol {
                board: self.board.clone(),
                cmd,
                detail: e.to_string(),
            });
        }
    }

    pub fn hello(&mut self) -> Result<HelloReply, AgentError> {
        self.call(Command::Hello, self.reply_timeout)
    }

    /// Loading builds every variant (pattern generation included), which takes a while on a slow board.
    pub fn load(&mut self, req: LoadRequest, timeout: Duration) -> Result<LoadReply, AgentError> {
        self.call(Command::Load(req), timeout)
    }

    /// One `clock` exchange, timed on the host's monotonic clock.
    pub fn clock(&mut self) -> Result<ClockExchange, AgentError> {
        let host_send_ns = host_monotonic_ns();
        let reply: ClockReply = self.call(Command::Clock, Duration::from_secs(10))?;
        let host_recv_ns = host_monotonic_ns();
        Ok(ClockExchange { host_send_ns, board_ns: reply.mono_ns, host_recv_ns })
    }

    /// Several `clock` exchanges back to back (the caller keeps the smallest round trip).
    pub fn clock_exchanges(&mut self, n: usize) -> Result<Vec<ClockExchange>, AgentError> {
        (0..n).map(|_| self.clock()).collect()
    }

    pub fn run(&mut self, req: RunRequest) -> Result<RunReply, AgentError> {
        // The window takes at least min_ms and at most max_ms (the agent stops there and says so);
        // without a cap, allow generously for slow iterations and warm-up.
        let budget = req.max_ms.unwrap_or(req.min_ms.saturating_mul(4));
        let timeout = self.reply_timeout + Duration::from_millis(budget);
        self.call(Command::Run(req), timeout)
    }

    pub fn switch(&mut self, variant: &str) -> Result<SwitchReply, AgentError> {
        self.call(Command::Switch(SwitchRequest::hot(variant)), self.reply_timeout)
    }

    /// A switch of the given mode, timing `probe` inferences after it.
    pub fn switch_with(&mut self, variant: &str, mode: SwitchMode, probe: u32) -> Result<SwitchReply, AgentError> {
        let req = SwitchRequest { variant: variant.to_string(), mode, probe, input_seed: DEFAULT_INPUT_SEED };
        self.call(Command::Switch(req), self.reply_timeout)
    }

    /// Every resident variant's output against the dense model's.
    pub fn fidelity(&mut self) -> Result<FidelityReply, AgentError> {
        self.call(Command::Fidelity(FidelityRequest::default()), self.reply_timeout)
    }

    pub fn selftest(&mut self) -> Result<SelftestReply, AgentError> {
        self.call(Command::Selftest(SelftestRequest::default()), self.reply_timeout)
    }

    /// Asks the agent to quit and closes the session. After an interruption the agent may still
    /// be busy with the abandoned request: the session is dropped without waiting (a local agent
    /// is killed; a remote one sees its stdin close).
    pub fn quit(mut self) -> Result<(), AgentError> {
        if self.interrupted() {
            return Ok(());
        }
        let r = self.call::<QuitReply>(Command::Quit, Duration::from_secs(10));
        let _ = self.session.close();
        r.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_reply_is_quoted_short() {
        assert_eq!(preview("oops"), "\"oops\"");
        let long = "é".repeat(1000);
        let shown = preview(&long);
        assert!(shown.ends_with("... (2000 bytes)"), "{shown}");
        assert_eq!(shown.matches('é').count(), REPLY_PREVIEW_CHARS);
    }

    #[test]
    fn a_reply_past_the_line_limit_is_worth_a_fresh_session() {
        let e = |kind| AgentError::Transport(BoardError::new("b", kind, "agent `run`", "x"));
        assert!(e(ErrorKind::Limit).is_retryable());
        assert!(e(ErrorKind::Timeout).is_retryable());
        assert!(!e(ErrorKind::Auth).is_retryable());
    }
}
