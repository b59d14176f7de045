//! [`LabgridClient`]: runs `labgrid-client` (labgrid's stable interface; its gRPC API is internal)
//! with a bounded time per command, and turns failures into [`LabgridError`]s that name the command
//! line and its stderr.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::parse::{self, PlaceEnv, PlaceInfo, WhoEntry};
use super::LabgridError;

/// The environment variable naming the `labgrid-client` binary.
pub const CLIENT_ENV: &str = "HIL_LABGRID_CLIENT";
/// labgrid's own variable for the coordinator address.
pub const COORDINATOR_ENV: &str = "LG_COORDINATOR";
/// labgrid's default coordinator address.
pub const DEFAULT_COORDINATOR: &str = "127.0.0.1:20408";
/// How long one ordinary `labgrid-client` command may take (connect, sync with the coordinator, act).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Variables that change what `labgrid-client` acts on behind our back: `LG_ENV` makes `acquire` and
/// `release` act on the places of an environment file, `LG_PLACE`/`LG_TOKEN` supply defaults.
const CLEARED_ENV: &[&str] = &["LG_ENV", "LG_PLACE", "PLACE", "LG_TOKEN", "LG_STATE", "STATE", "LG_INITIAL_STATE"];

/// Runs `labgrid-client` against one coordinator.
#[derive(Clone, Debug)]
pub struct LabgridClient {
    program: PathBuf,
    coordinator: String,
    timeout: Duration,
}

/// What one finished command printed.
#[derive(Clone, Debug)]
pub struct CommandOutput {
    pub stdout: String,
    pub stderr: String,
}

impl LabgridClient {
    /// A client running `program` against `coordinator` (`HOST:PORT`).
    pub fn new(program: impl Into<PathBuf>, coordinator: impl Into<String>) -> Self {
        Self { program: program.into(), coordinator: coordinator.into(), timeout: COMMAND_TIMEOUT }
    }

    /// The binary from `HIL_LABGRID_CLIENT` (else `labgrid-client` on `PATH`); the coordinator from
    /// `coordinator` (the scenario's), else `LG_COORDINATOR`, else `127.0.0.1:20408`.
    pub fn from_env(coordinator: Option<&str>) -> Self {
        let program = std::env::var_os(CLIENT_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("labgrid-client"));
        let coordinator = coordinator
            .map(str::to_string)
            .or_else(|| std::env::var(COORDINATOR_ENV).ok().filter(|c| !c.is_empty()))
            .unwrap_or_else(|| DEFAULT_COORDINATOR.to_string());
        Self::new(program, coordinator)
    }

    /// Bounds every ordinary command (not the wait of a reservation) to `timeout`.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    pub fn coordinator(&self) -> &str {
        &self.coordinator
    }

    /// The full argument list for `args` (the coordinator first).
    fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec!["-x".to_string(), self.coordinator.clone()];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    }

    /// The command line a person can paste, e.g. `labgrid-client -x 127.0.0.1:20408 -p ci-a release`.
    pub fn command_line(&self, args: &[&str]) -> String {
        let mut words = vec![parse::shell_quote(&self.program.to_string_lossy())];
        words.extend(self.argv(args).iter().map(|a| parse::shell_quote(a)));
        words.join(" ")
    }

    /// The command that frees `place` when this process no longer can.
    pub fn release_command(&self, place: &str) -> String {
        self.command_line(&["-p", place, "release"])
    }

    /// The command that cancels reservation `token`.
    pub fn cancel_command(&self, token: &str) -> String {
        self.command_line(&["cancel-reservation", token])
    }

    /// A `Command` for `args`: its own process group (a Ctrl-C at the terminal reaches `hil`, which
    /// then releases what it holds, not a half-finished `labgrid-client`), no stdin, cleared `LG_*`
    /// defaults, unbuffered Python output (a reservation's token is read before the command ends).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.argv(args)).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for var in CLEARED_ENV {
            cmd.env_remove(var);
        }
        cmd.env("PYTHONUNBUFFERED", "1");
        cmd.process_group(0);
        cmd
    }

    fn spawn(&self, args: &[&str]) -> Result<Child, LabgridError> {
        self.command(args).spawn().map_err(|e| self.spawn_error(args, &e))
    }

    fn spawn_error(&self, args: &[&str], e: &io::Error) -> LabgridError {
        if e.kind() == io::ErrorKind::NotFound {
            LabgridError::ClientMissing {
                program: self.program.to_string_lossy().into_owned(),
                command: self.command_line(args),
            }
        } else {
            LabgridError::Command {
                command: self.command_line(args),
                status: "could not be started".into(),
                stderr: e.to_string(),
            }
        }
    }

    /// Runs `args` to completion within the client's timeout; a non-zero exit is an error naming the
    /// command line and its stderr.
    pub fn run(&self, args: &[&str]) -> Result<CommandOutput, LabgridError> {
        let child = self.spawn(args)?;
        let (status, out) = wait_bounded(child, self.timeout);
        match status {
            Some(s) if s.success() => Ok(out),
            Some(s) => Err(LabgridError::Command {
                command: self.command_line(args),
                status: describe_status(s),
                stderr: error_text(&out),
            }),
            None => Err(LabgridError::Command {
                command: self.command_line(args),
                status: format!("did not finish within {} s and was stopped", self.timeout.as_secs()),
                stderr: error_text(&out),
            }),
        }
    }

    /// `-v places`: every place with its tags, holder and reservation. Also the check that the binary
    /// runs and the coordinator answers, made before anything is touched.
    pub fn places(&self) -> Result<Vec<PlaceInfo>, LabgridError> {
        let args = ["-v", "places"];
        let out = self.run(&args)?;
        parse::parse_places_verbose(&out.stdout).map_err(|detail| self.parse_error(&args, detail))
    }

    /// `who -e`: the places held right now, by whom, with their exporters.
    pub fn who(&self) -> Result<Vec<WhoEntry>, LabgridError> {
        let args = ["who", "-e"];
        let out = self.run(&args)?;
        parse::parse_who(&out.stdout).map_err(|detail| self.parse_error(&args, detail))
    }

    /// `-p PLACE acquire` (`PLACE` may be `+TOKEN`, the place a reservation was allocated); returns the
    /// name of the place acquired.
    pub fn acquire(&self, place: &str) -> Result<String, LabgridError> {
        let args = ["-p", place, "acquire"];
        let out = self.run(&args)?;
        parse::parse_acquired_place(&out.stdout)
            .ok_or_else(|| self.parse_error(&args, format!("no \"acquired place\" line in {:?}", out.stdout)))
    }

    /// `-p PLACE env`, parsed.
    pub fn env(&self, place: &str) -> Result<PlaceEnv, LabgridError> {
        let args = ["-p", place, "env"];
        let out = self.run(&args)?;
        parse::parse_env(&out.stdout, place).map_err(|detail| self.parse_error(&args, detail))
    }

    /// `-p PLACE release`.
    pub fn release(&self, place: &str) -> Result<(), LabgridError> {
        self.run(&["-p", place, "release"]).map(|_| ())
    }

    /// `cancel-reservation TOKEN`.
    pub fn cancel_reservation(&self, token: &str) -> Result<(), LabgridError> {
        self.run(&["cancel-reservation", token]).map(|_| ())
    }

    /// Starts `reserve --wait --shell K=V...`: the coordinator allocates a place matching every tag
    /// (the pseudo-tag `name` matches a place's name) when one is free. The child prints the token
    /// first and exits once the reservation is allocated.
    pub fn start_reservation(&self, tags: &BTreeMap<String, String>) -> Result<PendingReservation, LabgridError> {
        let filters: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args: Vec<&str> = vec!["reserve", "--wait", "--shell"];
        args.extend(filters.iter().map(String::as_str));
        let mut child = self.spawn(&args)?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(PendingReservation { child: Some(child), lines: rx, command: self.command_line(&args), token: None })
    }

    fn parse_error(&self, args: &[&str], detail: String) -> LabgridError {
        LabgridError::Parse { command: self.command_line(args), detail }
    }
}

/// A `reserve --wait` in progress.
#[derive(Debug)]
pub struct PendingReservation {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Its command line, for messages.
    pub command: String,
    token: Option<String>,
}

/// Where a [`PendingReservation`] stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReservationState {
    /// Still waiting for a place (the token is known once printed).
    Waiting,
    /// Allocated: the place can be acquired with `+TOKEN`.
    Allocated,
    /// `labgrid-client` failed: exit status and stderr.
    Failed { status: String, stderr: String },
}

impl PendingReservation {
    /// The reservation token, once `labgrid-client` has printed it.
    pub fn token(&mut self) -> Option<&str> {
        while let Ok(line) = self.lines.try_recv() {
            if self.token.is_none() {
                self.token = parse::parse_reserve_token(&line);
            }
        }
        self.token.as_deref()
    }

    /// Checks without blocking.
    pub fn poll(&mut self) -> ReservationState {
        self.token();
        let Some(child) = self.child.as_mut() else { return ReservationState::Allocated };
        match child.try_wait() {
            Ok(None) => ReservationState::Waiting,
            Ok(Some(status)) => {
                let mut child = self.child.take().expect("checked above");
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                // Already exited (try_wait said so): this returns at once.
                let _ = child.wait();
                // The reader thread ends with the child's stdout; take the token line if it is late.
                if self.token.is_none() {
                    if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
                        self.token = parse::parse_reserve_token(&line);
                    }
                }
                if status.success() && self.token.is_some() {
                    ReservationState::Allocated
                } else if status.success() {
                    ReservationState::Failed { status: "exited without printing LG_TOKEN".into(), stderr }
                } else {
                    ReservationState::Failed { status: describe_status(status), stderr: stderr.trim().to_string() }
                }
            }
            Err(e) => ReservationState::Failed { status: "could not be waited for".into(), stderr: e.to_string() },
        }
    }

    /// Stops waiting (kills `labgrid-client`); the reservation itself stays on the coordinator until
    /// cancelled (the caller holds its token) or it expires (60 s without a poll).
    pub fn abandon(&mut self) {
        self.token();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PendingReservation {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Waits for `child` at most `timeout` (then kills it), collecting stdout and stderr on threads so a
/// full pipe never blocks it. `None` status: it was killed at the timeout.
fn wait_bounded(mut child: Child, timeout: Duration) -> (Option<ExitStatus>, CommandOutput) {
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let mut bytes = Vec::new();
                let _ = r.read_to_end(&mut bytes);
                s = String::from_utf8_lossy(&bytes).into_owned();
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break child.wait().ok(),
        }
    };
    let output = CommandOutput { stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() };
    (status, output)
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// What to show of a failed command: stderr, else stdout (labgrid prints some errors there), trimmed
/// to the last 40 lines (a Python traceback's end is the useful part).
fn error_text(out: &CommandOutput) -> String {
    let text = if out.stderr.trim().is_empty() { &out.stdout } else { &out.stderr };
    let lines: Vec<&str> = text.trim().lines().collect();
    let start = lines.len().saturating_sub(40);
    lines[start..].join("\n")
}
