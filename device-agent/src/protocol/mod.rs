//! The agent's wire protocol: one JSON object per line, each way.
//!
//! The harness writes a [`Request`] line to the agent's stdin and reads one
//! [`Response`] line from its stdout, in order; the agent never writes
//! anything else to stdout. On the wire:
//!
//! ```text
//! -> {"id":7,"proto":1,"cmd":"run","variant":"pp75","warmup":3,"min_iters":50,"min_ms":2000}
//! <- {"ok":true,"id":7,"proto":1,"cmd":"run","variant":"pp75","iterations":61,...}
//! -> {"id":8,"cmd":"swtich","variant":"pp87"}
//! <- {"ok":false,"id":8,"proto":1,"kind":"unknown_command","error":"unknown command `swtich` ..."}
//! ```
//!
//! - Every request names its command in `"cmd"`; its parameters sit beside it
//!   in the same object. Requests are decoded strictly: an unknown parameter
//!   is an error (a typo in the harness must not silently fall back to a
//!   default), so the agent answers `bad_params` naming the field.
//! - `"id"` (optional, any JSON value, normally a counter) is echoed verbatim
//!   in the reply, so a reader that lost its place can tell replies apart.
//! - `"proto"` (optional) must equal [`PROTO_VERSION`] when present; a
//!   mismatch is refused with a message naming both versions. Every reply
//!   carries the agent's `"proto"`, which is how `hello` reports it.
//! - Every reply carries `"ok"`. Successful replies repeat `"cmd"` and add
//!   that command's fields ([`Reply`]); failures carry `"error"` (a readable
//!   message) and `"kind"` (an [`ErrorKind`] a program can branch on).
//!   Replies are decoded leniently (unknown fields ignored), so a harness keeps
//!   working with an agent that added fields within the same protocol version.
//! - Non-finite floats (a self-test error that is NaN) travel as `null`, since
//!   JSON has no NaN; readers turn `null` back into NaN.
//!
//! The module's parts: [`requests`] (what the harness sends), [`replies`]
//! (what the agent answers) and [`codec`] (the envelopes' JSON forms, strict
//! request decoding, bounded line reading).

pub mod codec;
pub mod replies;
pub mod requests;

pub use codec::*;
pub use replies::*;
pub use requests::*;

/// Version of this protocol. Bump it on any change an older peer would
/// misread; adding an optional reply field does not need a bump.
pub const PROTO_VERSION: u32 = 1;

/// A `run` window ends after this many iterations even if `min_ms` has not
/// passed, bounding the reply (8-20 bytes per latency) and the agent's memory.
pub const MAX_WINDOW_ITERATIONS: u64 = 1_000_000;

/// Longest request line the agent accepts (1 MiB). Requests are small; the
/// bound keeps a runaway writer from growing the agent's memory without end.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// The command names, in the order `hello` lists them in errors.
pub const COMMANDS: [&str; 8] = ["hello", "load", "clock", "run", "switch", "selftest", "fidelity", "quit"];
