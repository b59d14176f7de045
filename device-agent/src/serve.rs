//! The protocol loop: read a request line, answer it with one reply line, repeat.
//!
//! The loop owns the framing rules (one reply per non-blank line, flush after
//! each, oversized lines refused, EOF ends cleanly, `quit` ends after its
//! reply); what a command does is the [`Session`]'s business. The loop is
//! generic over its byte streams, so tests drive it with byte strings.

use crate::protocol::{
    decode_request, encode_line, read_request_line, Command, ErrorKind, ErrorReply, LineRead, Reply, Response,
    MAX_REQUEST_BYTES,
};
use std::io::{self, BufRead, Write};

/// Carries out decoded commands. [`crate::agent::Agent`] is the real one.
pub trait Session {
    /// Does `command` and returns its reply, or why it could not.
    fn handle(&mut self, command: Command) -> Result<Reply, ErrorReply>;
}

/// Why [`serve`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeEnd {
    /// Stdin closed.
    Eof,
    /// A `quit` request was answered.
    Quit,
}

/// Serves requests from `input` until EOF or `quit`, writing exactly one
/// reply line to `output` per non-blank request line and flushing after each
/// (the harness waits for the reply before sending the next request, so a
/// buffered reply would deadlock it).
///
/// Blank lines are skipped without a reply, so a person typing at the agent
/// can press Enter freely. Returns an error only when `input` or `output`
/// fails (e.g. the SSH channel closed mid-write).
pub fn serve<S: Session, R: BufRead, W: Write>(session: &mut S, mut input: R, mut output: W) -> io::Result<ServeEnd> {
    let mut line = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    loop {
        let read = read_request_line(&mut input, &mut line, MAX_REQUEST_BYTES)?;
        line_no += 1;
        let response = match read {
            LineRead::Eof => return Ok(ServeEnd::Eof),
            LineRead::TooLong(len) => Response::error(
                None,
                ErrorReply {
                    cmd: None,
                    kind: ErrorKind::Malformed,
                    error: format!(
                        "request line {line_no} is {len} bytes, longer than the limit of {MAX_REQUEST_BYTES}"
                    ),
                },
            ),
            LineRead::Line if line.iter().all(u8::is_ascii_whitespace) => continue,
            LineRead::Line => match decode_request(&line) {
                Ok(request) => {
                    let outcome = session.handle(request.command);
                    Response { id: request.id, proto: crate::protocol::PROTO_VERSION, outcome }
                }
                Err(refused) => refused.into_response(),
            },
        };
        if let Err(e) = &response.outcome {
            crate::log(format_args!("request line {line_no} refused: {e}"));
        }
        output.write_all(&encode_line(&response))?;
        output.flush()?;
        if matches!(response.outcome, Ok(Reply::Quit)) {
            return Ok(ServeEnd::Quit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_response, ClockReply};

    /// Answers `clock` with a counter and `quit`; refuses everything else as not loaded.
    #[derive(Default)]
    struct ScriptedSession {
        clock: u64,
        seen: Vec<&'static str>,
    }

    impl Session for ScriptedSession {
        fn handle(&mut self, command: Command) -> Result<Reply, ErrorReply> {
            self.seen.push(command.name());
            match command {
                Command::Clock => {
                    self.clock += 1;
                    Ok(Reply::Clock(ClockReply { mono_ns: self.clock }))
                }
                Command::Quit => Ok(Reply::Quit),
                other => Err(ErrorReply {
                    cmd: Some(other.name().into()),
                    kind: ErrorKind::NotLoaded,
                    error: "no model".into(),
                }),
            }
        }
    }

    fn run(input: &[u8]) -> (ServeEnd, Vec<Response>, ScriptedSession) {
        let mut session = ScriptedSession::default();
        let mut out = Vec::new();
        let end = serve(&mut session, input, &mut out).unwrap();
        let replies =
            out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| decode_response(l).unwrap()).collect();
        (end, replies, session)
    }

    #[test]
    fn one_reply_per_line_then_eof() {
        let (end, replies, session) = run(b"{\"cmd\":\"clock\",\"id\":1}\n\n  \n{\"cmd\":\"clock\",\"id\":2}\n");
        assert_eq!(end, ServeEnd::Eof);
        assert_eq!(replies.len(), 2, "blank lines get no reply");
        assert_eq!(replies[0].id, Some(1.into()));
        assert_eq!(replies[1].clone().expect::<ClockReply>().unwrap().mono_ns, 2);
        assert_eq!(session.seen, ["clock", "clock"]);
    }

    #[test]
    fn garbage_gets_an_error_and_serving_continues() {
        let (end, replies, _) = run(b"not json\n{\"cmd\":\"warp\"}\n{\"cmd\":\"run\"}\n{\"cmd\":\"clock\"}");
        assert_eq!(end, ServeEnd::Eof);
        assert_eq!(replies.len(), 4);
        assert_eq!(replies[0].outcome.as_ref().unwrap_err().kind, ErrorKind::Malformed);
        assert_eq!(replies[1].outcome.as_ref().unwrap_err().kind, ErrorKind::UnknownCommand);
        assert_eq!(replies[2].outcome.as_ref().unwrap_err().kind, ErrorKind::NotLoaded);
        assert!(replies[3].outcome.is_ok(), "last line without newline is still served");
    }

    #[test]
    fn quit_stops_reading() {
        let (end, replies, session) = run(b"{\"cmd\":\"quit\"}\n{\"cmd\":\"clock\"}\n");
        assert_eq!(end, ServeEnd::Quit);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].outcome, Ok(Reply::Quit));
        assert_eq!(session.seen, ["quit"]);
    }

    #[test]
    fn oversized_line_is_refused_and_the_next_one_served() {
        let mut input = vec![b'x'; MAX_REQUEST_BYTES + 10];
        input.extend_from_slice(b"\n{\"cmd\":\"clock\",\"id\":\"after\"}\n");
        let (_, replies, _) = run(&input);
        assert_eq!(replies.len(), 2);
        let err = replies[0].outcome.as_ref().unwrap_err();
        assert_eq!(err.kind, ErrorKind::Malformed);
        assert!(err.error.contains(&format!("{} bytes", MAX_REQUEST_BYTES + 10)), "{}", err.error);
        assert_eq!(replies[1].id, Some("after".into()));
    }

    #[test]
    fn write_failure_is_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut session = ScriptedSession::default();
        let err = serve(&mut session, &b"{\"cmd\":\"clock\"}\n"[..], Closed).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
