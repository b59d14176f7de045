//! The line codec: the envelopes' JSON forms, strict request decoding, and
//! bounded reading of request lines.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::io::{self, BufRead};

use super::*;

/// A request line the agent could not accept, with whatever it could read
/// of the envelope so the error reply still echoes the id.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestError {
    pub id: Option<Value>,
    pub error: ErrorReply,
}

impl RequestError {
    fn new(id: Option<Value>, cmd: Option<&str>, kind: ErrorKind, message: String) -> Self {
        Self { id, error: ErrorReply { cmd: cmd.map(str::to_owned), kind, error: message } }
    }

    /// The reply the agent sends for this error.
    pub fn into_response(self) -> Response {
        Response::error(self.id, self.error)
    }
}

/// Decodes one request line (without or with its trailing newline).
///
/// Checks in this order, so each error names the first problem: JSON
/// syntax, an object, `id` (read first so every later error echoes it),
/// `proto`, `cmd`, then the command's parameters.
pub fn decode_request(line: &[u8]) -> Result<Request, RequestError> {
    let text = std::str::from_utf8(line)
        .map_err(|e| RequestError::new(None, None, ErrorKind::Malformed, format!("request is not UTF-8 ({e})")))?;
    let value: Value = serde_json::from_str(text.trim()).map_err(|e| {
        RequestError::new(
            None,
            None,
            ErrorKind::Malformed,
            format!("request is not valid JSON: {e}: {}", preview(text)),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(RequestError::new(
            None,
            None,
            ErrorKind::Malformed,
            format!("request must be a JSON object with \"cmd\", got {}", json_type(&value)),
        ));
    };
    let id = map.remove("id");
    let proto = match map.remove("proto") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|p| u32::try_from(p).ok()) {
            Some(p) => Some(p),
            None => {
                return Err(RequestError::new(
                    id,
                    None,
                    ErrorKind::BadParams,
                    format!("\"proto\" must be a non-negative integer, got {v}"),
                ))
            }
        },
    };
    let cmd = match map.remove("cmd") {
        Some(Value::String(cmd)) => cmd,
        Some(other) => {
            return Err(RequestError::new(
                id,
                None,
                ErrorKind::UnknownCommand,
                format!("\"cmd\" must be a string, got {other}"),
            ))
        }
        None => {
            return Err(RequestError::new(
                id,
                None,
                ErrorKind::UnknownCommand,
                format!("request has no \"cmd\" (one of {})", COMMANDS.join(", ")),
            ))
        }
    };
    if let Some(p) = proto {
        if p != PROTO_VERSION {
            return Err(RequestError::new(
                id,
                Some(&cmd),
                ErrorKind::ProtoMismatch,
                format!("protocol version mismatch: request speaks proto {p}, this agent speaks proto {PROTO_VERSION}"),
            ));
        }
    }
    match command_from_params(&cmd, map) {
        Ok(command) => Ok(Request { id, proto, command }),
        Err((kind, message)) => Err(RequestError::new(id, Some(&cmd), kind, message)),
    }
}

fn command_from_params(cmd: &str, params: Map<String, Value>) -> Result<Command, (ErrorKind, String)> {
    fn parse<T: DeserializeOwned>(cmd: &str, params: Map<String, Value>) -> Result<T, (ErrorKind, String)> {
        serde_json::from_value(Value::Object(params))
            .map_err(|e| (ErrorKind::BadParams, format!("bad parameters for `{cmd}`: {e}")))
    }
    fn none(cmd: &str, params: Map<String, Value>) -> Result<(), (ErrorKind, String)> {
        match params.keys().next() {
            None => Ok(()),
            Some(key) => {
                Err((ErrorKind::BadParams, format!("bad parameters for `{cmd}`: unknown field `{key}`, it takes none")))
            }
        }
    }
    Ok(match cmd {
        "hello" => none(cmd, params).map(|()| Command::Hello)?,
        "load" => Command::Load(parse(cmd, params)?),
        "clock" => none(cmd, params).map(|()| Command::Clock)?,
        "run" => Command::Run(parse(cmd, params)?),
        "switch" => Command::Switch(parse(cmd, params)?),
        "selftest" => Command::Selftest(parse(cmd, params)?),
        "fidelity" => Command::Fidelity(parse(cmd, params)?),
        "quit" => none(cmd, params).map(|()| Command::Quit)?,
        other => {
            return Err((
                ErrorKind::UnknownCommand,
                format!("unknown command `{other}` (known: {})", COMMANDS.join(", ")),
            ))
        }
    })
}

/// Decodes one reply line.
pub fn decode_response(line: &[u8]) -> Result<Response, DecodeError> {
    let value: Value = serde_json::from_slice(trim_ascii(line))
        .map_err(|e| DecodeError::Json { message: e.to_string(), line: preview(&String::from_utf8_lossy(line)) })?;
    serde_json::from_value(value).map_err(|e| DecodeError::Shape { message: e.to_string() })
}

/// A reply line that is not a valid [`Response`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("agent reply is not valid JSON ({message}): {line}")]
    Json { message: String, line: String },
    #[error("agent reply does not match protocol {PROTO_VERSION}: {message}")]
    Shape { message: String },
}

/// Serialises `message` as one protocol line, newline included. serde_json's
/// compact form never contains a raw newline (they are escaped in strings),
/// so one value is always exactly one line.
pub fn encode_line<T: Serialize + ?Sized>(message: &T) -> Vec<u8> {
    // Our types hold only string-keyed maps and plain values: serialisation cannot fail.
    let mut out = serde_json::to_vec(message).expect("protocol messages always serialise");
    out.push(b'\n');
    out
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let body = serde_json::to_value(&self.command).map_err(S::Error::custom)?;
        let Value::Object(body) = body else { return Err(S::Error::custom("command did not serialise to an object")) };
        let mut map = s.serialize_map(None)?;
        if let Some(id) = &self.id {
            map.serialize_entry("id", id)?;
        }
        if let Some(proto) = self.proto {
            map.serialize_entry("proto", &proto)?;
        }
        map.serialize_entry("cmd", self.command.name())?;
        for (k, v) in body.iter().filter(|(k, _)| k.as_str() != "cmd") {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let bytes = serde_json::to_vec(&value).map_err(serde::de::Error::custom)?;
        decode_request(&bytes).map_err(|e| serde::de::Error::custom(e.error))
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("ok", &self.outcome.is_ok())?;
        if let Some(id) = &self.id {
            map.serialize_entry("id", id)?;
        }
        map.serialize_entry("proto", &self.proto)?;
        match &self.outcome {
            Ok(reply) => {
                let Value::Object(body) = serde_json::to_value(reply).map_err(S::Error::custom)? else {
                    return Err(S::Error::custom("reply did not serialise to an object"));
                };
                map.serialize_entry("cmd", reply.name())?;
                for (k, v) in body.iter().filter(|(k, _)| k.as_str() != "cmd") {
                    map.serialize_entry(k, v)?;
                }
            }
            Err(error) => {
                if let Some(cmd) = &error.cmd {
                    map.serialize_entry("cmd", cmd)?;
                }
                map.serialize_entry("kind", &error.kind)?;
                map.serialize_entry("error", &error.error)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let Value::Object(mut map) = Value::deserialize(d)? else {
            return Err(D::Error::custom("reply must be a JSON object"));
        };
        let ok = match map.remove("ok") {
            Some(Value::Bool(ok)) => ok,
            Some(other) => return Err(D::Error::custom(format!("\"ok\" must be a boolean, got {other}"))),
            None => return Err(D::Error::custom("reply has no \"ok\"")),
        };
        let id = map.remove("id");
        let proto = match map.remove("proto") {
            Some(v) => v
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| D::Error::custom(format!("\"proto\" must be a non-negative integer, got {v}")))?,
            None => return Err(D::Error::custom("reply has no \"proto\"")),
        };
        let outcome = if ok {
            Ok(Reply::deserialize(Value::Object(map)).map_err(D::Error::custom)?)
        } else {
            Err(ErrorReply::deserialize(Value::Object(map)).map_err(D::Error::custom)?)
        };
        Ok(Response { id, proto, outcome })
    }
}

/// Outcome of [`read_request_line`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line is in the buffer (newline stripped); the last line of a stream may lack its newline.
    Line,
    /// The line was longer than the limit; it was consumed and discarded. Holds its length.
    TooLong(usize),
    /// End of input, nothing read.
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (cleared first), keeping at
/// most `max` bytes; a longer line is consumed to its end and reported as
/// [`LineRead::TooLong`], so the next read starts at the next request.
pub fn read_request_line<R: BufRead>(input: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<LineRead> {
    buf.clear();
    let mut total = 0usize;
    let mut saw_any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(match (saw_any, total > max) {
                (false, _) => LineRead::Eof,
                (true, true) => LineRead::TooLong(total),
                (true, false) => LineRead::Line,
            });
        }
        saw_any = true;
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        total += chunk.len();
        if total <= max {
            buf.extend_from_slice(chunk);
        } else {
            buf.clear();
        }
        let consumed = done.unwrap_or(chunk.len());
        input.consume(consumed);
        if done.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if total > max { LineRead::TooLong(total) } else { LineRead::Line });
        }
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

/// The start of a bad line, for error messages (never the whole of a huge line).
fn preview(text: &str) -> String {
    const MAX: usize = 80;
    let t = text.trim();
    match t.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &t[..cut]),
        None => format!("{t:?}"),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
