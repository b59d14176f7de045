//! `hil-agent`, the on-board inference agent, as a library.
//!
//! The harness pushes the `hil-agent` binary to a board and drives it over
//! the SSH channel's stdin/stdout with JSON lines; the harness links this
//! library for the same [`protocol`] types, so both sides share one
//! definition of the wire format.
//!
//! How the pieces fit:
//! - [`protocol`]: request and reply types, their line codec, [`protocol::PROTO_VERSION`].
//! - [`serve`]: the request/reply loop over any byte streams, calling a [`serve::Session`].
//! - [`agent`]: the real session: builds the model with `kernels`, times
//!   inference windows, switches variants, self-tests.
//! - [`platform`]: CLOCK_MONOTONIC and CPU affinity; [`sysinfo`]: CPU model,
//!   memory and kernel, parsed from `/proc` and `uname`.
//! - [`sim_stretch`]: on a board simulated by hil only, stretches each timed inference by
//!   `f_max / f` of the simulator's fake cpufreq tree, so latency follows the simulated clock.
//! - [`variant_arg`]: the short `--variant` syntax of the one-shot commands;
//!   [`oneshot`]: `hil-agent selftest` and `hil-agent bench` for people at the board's shell.
//!
//! Stdout belongs to the protocol: everything else the agent says goes
//! through [`log`] to stderr.

pub mod agent;
pub mod oneshot;
pub mod platform;
pub mod protocol;
pub mod serve;
pub mod sim_stretch;
pub mod sysinfo;
pub mod variant_arg;

/// Name the agent reports in `hello`.
pub const AGENT_NAME: &str = "hil-agent";
/// Version the agent reports in `hello`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Writes one diagnostic line to stderr, never stdout (stdout carries only protocol lines).
pub fn log(message: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{AGENT_NAME}: {message}");
}
