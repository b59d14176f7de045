//! Boards from a labgrid lab: places reserved and locked on a labgrid coordinator, resolved to an SSH
//! endpoint and (optionally) a power monitor's serial port served over the network.
//!
//! How the pieces fit:
//! - [`LabgridSpec`] says which places a scenario wants: one by name or `count` by tags, on which
//!   coordinator, and what to do when they are busy ([`BusyPolicy`]: wait, bounded, or refuse).
//! - [`LabgridClient`] drives the `labgrid-client` CLI (labgrid's stable interface; pinned and tested
//!   against labgrid 26.0.1): `reserve --wait --shell`, `acquire`, `env`, `release`,
//!   `cancel-reservation`, `who`, `-v places`. Every failure names the command line and its stderr.
//! - [`parse`] holds the pure parsers of its outputs ([`parse::parse_env`] turns `env`'s YAML into
//!   [`parse::SshEndpoint`] and [`parse::NetworkSerial`], everything else kept raw for provenance).
//! - [`acquire`] (or [`resolve_boards`]) reserves, acquires and resolves the places into
//!   [`LabgridBoard`]s, each held by a [`PlaceLock`]: a guard that releases the place and cancels its
//!   reservation when dropped (success, error, panic, and Ctrl-C handled by the caller's unwinding),
//!   and says, when that fails, the exact command that frees the place.
//! - [`preflight`] checks a spec against the coordinator without touching anything (the binary runs,
//!   the coordinator answers, enough places exist), for `hil validate`.

pub mod client;
pub mod parse;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use client::{LabgridClient, PendingReservation, ReservationState};
pub use parse::{NetworkSerial, PlaceEnv, PlaceInfo, SshEndpoint, WhoEntry};

/// What went wrong talking to labgrid.
#[derive(Debug, thiserror::Error)]
pub enum LabgridError {
    /// The binary is not there.
    #[error(
        "labgrid-client not found (`{command}`: no such program {program:?}); install labgrid \
         (e.g. `pip install labgrid==26.0.1` in a venv) and put labgrid-client on PATH or set HIL_LABGRID_CLIENT"
    )]
    ClientMissing { program: String, command: String },
    /// A command failed or timed out.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    /// A command's output was not what labgrid 26 prints.
    #[error("`{command}`: unexpected output: {detail}")]
    Parse { command: String, detail: String },
    /// The places are held by others (refused, or still busy when the wait ran out).
    #[error("{0}")]
    Busy(String),
    /// The spec cannot be met by this lab (no such place, too few places with the tags).
    #[error("{0}")]
    Unsatisfiable(String),
    /// An acquired place lacks what a board needs (no `NetworkService`, an unusable serial port).
    #[error("labgrid place {place}: {detail}")]
    Resource { place: String, detail: String },
    /// Stopped on request (Ctrl-C) while waiting for places; everything held was given back.
    #[error("stopped on request while waiting for labgrid places ({0}); nothing is held")]
    Interrupted(String),
}

impl LabgridError {
    /// Waiting and trying again may help (the places are busy, or labgrid timed out).
    pub fn is_busy(&self) -> bool {
        matches!(self, LabgridError::Busy(_))
    }
}

/// Which places a scenario board entry wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlaceSelector {
    /// One place by its exact name.
    Place(String),
    /// `count` places carrying every tag.
    Tags { tags: BTreeMap<String, String>, count: usize },
}

impl PlaceSelector {
    /// The reservation filter for one place: tags, or `name=PLACE` (labgrid matches a place's name
    /// as the pseudo-tag `name`).
    pub fn filter(&self) -> BTreeMap<String, String> {
        match self {
            PlaceSelector::Place(name) => [("name".to_string(), name.clone())].into(),
            PlaceSelector::Tags { tags, .. } => tags.clone(),
        }
    }

    pub fn count(&self) -> usize {
        match self {
            PlaceSelector::Place(_) => 1,
            PlaceSelector::Tags { count, .. } => *count,
        }
    }

    /// `place ci-a` or `2 places tagged board=ci`.
    pub fn describe(&self) -> String {
        match self {
            PlaceSelector::Place(name) => format!("place {name}"),
            PlaceSelector::Tags { tags, count } => {
                let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{count} place{} tagged {}", if *count == 1 { "" } else { "s" }, tags.join(","))
            }
        }
    }
}

/// What to do when the wanted places are held by someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BusyPolicy {
    /// Queue on the coordinator (a reservation) for at most this long, then fail.
    Wait { timeout: Duration },
    /// Fail at once (after [`REFUSE_GRACE`] for the coordinator to allocate free places), naming who
    /// holds them.
    Refuse,
}

/// With [`BusyPolicy::Refuse`], how long free places may take to be allocated: `reserve --wait` polls
/// once a second.
pub const REFUSE_GRACE: Duration = Duration::from_secs(5);

/// How long `env` may keep showing a serial port without its TCP port (the exporter starts ser2net
/// when the place is acquired) before that is an error.
pub const SERIAL_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A scenario board entry's `labgrid:` section, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LabgridSpec {
    /// `HOST:PORT`; `None`: `LG_COORDINATOR`, else `127.0.0.1:20408`.
    pub coordinator: Option<String>,
    pub selector: PlaceSelector,
    pub busy: BusyPolicy,
}

/// One board resolved from an acquired place.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct LabgridBoard {
    /// The place; also the board's name in results.
    pub place: String,
    /// The host of the exporter serving the place: the `NetworkSerialPort`'s host when there is one
    /// (an exporter publishes its own host name there), else the exporter names from `who -e`, else
    /// the SSH address.
    pub exporter_host: String,
    /// Exporter names from `who -e`.
    pub exporters: Vec<String>,
    pub ssh: SshEndpoint,
    pub serial: Option<NetworkSerial>,
    /// Every resource of the place as `env` showed it (secrets redacted), for `run.json`.
    pub raw_resources: serde_json::Value,
    /// The reservation the place was allocated to.
    pub reservation: Option<String>,
    pub coordinator: String,
}

impl LabgridBoard {
    /// The monitor `port:` for the place's serial port (`rfc2217://HOST:PORT` or `tcp://HOST:PORT`).
    pub fn monitor_port(&self) -> Option<String> {
        self.serial.as_ref().map(|s| s.address().to_string())
    }

    /// Builds the board from `env` output and `who -e` rows (pure).
    pub fn from_env(
        env: &PlaceEnv,
        who: &[WhoEntry],
        coordinator: &str,
        reservation: Option<String>,
    ) -> Result<Self, LabgridError> {
        let fail = |detail: String| LabgridError::Resource { place: env.place.clone(), detail };
        let ssh = env.ssh().map_err(fail)?;
        let serial = env.serial().map_err(fail)?;
        let exporters = who.iter().find(|w| w.place == env.place).map(|w| w.exporters.clone()).unwrap_or_default();
        let exporter_host = match (&serial, exporters.is_empty()) {
            (Some(s), _) => s.host.clone(),
            (None, false) => exporters.join(","),
            (None, true) => ssh.address.clone(),
        };
        Ok(LabgridBoard {
            place: env.place.clone(),
            exporter_host,
            exporters,
            ssh,
            serial,
            raw_resources: env.raw_resources(),
            reservation,
            coordinator: coordinator.to_string(),
        })
    }
}

/// A place (and its reservation) this process holds. Dropping it releases the place, then cancels the
/// reservation; failures are printed with the command that frees the place. Call
/// [`PlaceLock::release`] to get the failure as a value instead.
#[derive(Debug)]
pub struct PlaceLock {
    client: LabgridClient,
    /// Acquired place, if it got that far.
    place: Option<String>,
    token: Option<String>,
    board: Option<LabgridBoard>,
}

/// Why a [`PlaceLock`] could not give its place back, with the commands that would.
#[derive(Debug, thiserror::Error)]
#[error("{}; free it with: {}", .errors.join("; "), .commands.join(" && "))]
pub struct ReleaseError {
    pub errors: Vec<String>,
    /// The exact commands that free what was held.
    pub commands: Vec<String>,
}

impl PlaceLock {
    fn reserved(client: LabgridClient, token: String) -> Self {
        Self { client, place: None, token: Some(token), board: None }
    }

    /// The place's name once acquired.
    pub fn place(&self) -> Option<&str> {
        self.place.as_deref()
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The resolved board (after [`acquire`] returned it).
    pub fn board(&self) -> &LabgridBoard {
        self.board.as_ref().expect("a PlaceLock handed out by acquire() has its board")
    }

    /// The commands that free what this lock holds (for a crash message or a log line).
    pub fn free_commands(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(place) = &self.place {
            out.push(self.client.release_command(place));
        }
        if let Some(token) = &self.token {
            out.push(self.client.cancel_command(token));
        }
        out
    }

    /// Releases the place and cancels the reservation now.
    pub fn release(mut self) -> Result<(), ReleaseError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), ReleaseError> {
        let commands = self.free_commands();
        let mut errors = Vec::new();
        if let Some(place) = self.place.take() {
            if let Err(e) = self.client.release(&place) {
                errors.push(e.to_string());
            }
        }
        if let Some(token) = self.token.take() {
            // Releasing the place leaves its reservation allocated (until it expires 60 s later):
            // cancel it so the place is free for the next reservation at once.
            if let Err(e) = self.client.cancel_reservation(&token) {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ReleaseError { errors, commands })
        }
    }
}

impl Drop for PlaceLock {
    fn drop(&mut self) {
        if self.place.is_none() && self.token.is_none() {
            return;
        }
        if let Err(e) = self.release_inner() {
            eprintln!("warning: labgrid: could not give back what this run held: {e}");
        }
    }
}

/// A place left acquired by this user on this host (a crashed run, or another terminal).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaleLock {
    pub place: String,
    pub holder: String,
    pub since: String,
    /// The command that frees it.
    pub free_command: String,
}

/// What [`preflight`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Preflight {
    /// Places the spec could get.
    pub candidates: Vec<PlaceInfo>,
    /// Of those, the ones free right now.
    pub free: usize,
    /// Of those, the ones this user on this host holds already.
    pub stale: Vec<StaleLock>,
}

/// Checks `spec` against the coordinator without reserving anything: `labgrid-client` runs, the
/// coordinator answers, the place exists / enough places carry the tags. `holder` is this process's
/// labgrid identity (`host/user`, see [`labgrid_identity`]) to recognise its own stale locks.
pub fn preflight(client: &LabgridClient, spec: &LabgridSpec, holder: &str) -> Result<Preflight, LabgridError> {
    let places = client.places()?;
    plan_preflight(client, spec, &places, holder)
}

/// The pure part of [`preflight`].
pub fn plan_preflight(
    client: &LabgridClient,
    spec: &LabgridSpec,
    places: &[PlaceInfo],
    holder: &str,
) -> Result<Preflight, LabgridError> {
    let filter = spec.selector.filter();
    let candidates: Vec<PlaceInfo> = places.iter().filter(|p| p.matches_tags(&filter)).cloned().collect();
    let wanted = spec.selector.count();
    if candidates.len() < wanted {
        let known: Vec<&str> = places.iter().map(|p| p.name.as_str()).collect();
        return Err(LabgridError::Unsatisfiable(format!(
            "labgrid coordinator {}: {} wanted, {} exist{} (places: {})",
            client.coordinator(),
            spec.selector.describe(),
            candidates.len(),
            if candidates.len() == 1 { "s" } else { "" },
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )));
    }
    let stale = candidates
        .iter()
        .filter(|p| p.acquired.as_deref() == Some(holder))
        .map(|p| StaleLock {
            place: p.name.clone(),
            holder: holder.to_string(),
            since: String::new(),
            free_command: client.release_command(&p.name),
        })
        .collect();
    let free = candidates.iter().filter(|p| p.is_free()).count();
    Ok(Preflight { candidates, free, stale })
}

/// This process's identity on a coordinator, as labgrid-client forms it: `LG_HOSTNAME` (else the host
/// name) `/` `LG_USERNAME` (else the login name).
pub fn labgrid_identity() -> String {
    let host = std::env::var("LG_HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
    });
    let user = std::env::var("LG_USERNAME")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // SAFETY: geteuid has no preconditions; getpwuid returns a static record or null.
            unsafe {
                let pw = libc::getpwuid(libc::geteuid());
                if pw.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
                }
            }
        });
    format!("{host}/{user}")
}

/// The message for places still busy when waiting stopped: who holds the candidates.
pub fn busy_message(
    client: &LabgridClient,
    spec: &LabgridSpec,
    got: usize,
    waited: Duration,
    who: &[WhoEntry],
    places: &[PlaceInfo],
) -> String {
    let filter = spec.selector.filter();
    let holders: Vec<String> = places
        .iter()
        .filter(|p| p.matches_tags(&filter) && !p.is_free())
        .map(|p| match (who.iter().find(|w| w.place == p.name), &p.reservation) {
            (Some(w), _) => format!("{} held by {} since {}", p.name, w.holder(), w.changed),
            (None, Some(token)) => format!("{} reserved ({token})", p.name),
            (None, None) => format!("{} busy", p.name),
        })
        .collect();
    let policy = match spec.busy {
        BusyPolicy::Refuse => "the scenario says busy: refuse (busy: wait queues for them instead)".to_string(),
        BusyPolicy::Wait { timeout } => format!("waited the scenario's busy wait of {} s", timeout.as_secs()),
    };
    format!(
        "labgrid coordinator {}: {} wanted, {got} allocated within {:.0} s; {}; {policy}",
        client.coordinator(),
        spec.selector.describe(),
        waited.as_secs_f64(),
        if holders.is_empty() { "no holder found".to_string() } else { holders.join("; ") }
    )
}

/// Reserves, acquires and resolves every place `spec` wants, all or nothing: on any failure what was
/// already reserved or acquired is given back before the error is returned.
///
/// All reservations are made at once and waited for together, so two runs asking for the same pool
/// are served in the coordinator's order (priority, then age) rather than each holding half of it.
pub fn acquire(client: &LabgridClient, spec: &LabgridSpec) -> Result<Vec<PlaceLock>, LabgridError> {
    acquire_unless_stopped(client, spec, &std::sync::atomic::AtomicBool::new(false))
}

/// [`acquire`], giving up (and giving back what it holds) within 50 ms of `stop` being set: a
/// run waiting for busy places honours Ctrl-C.
pub fn acquire_unless_stopped(
    client: &LabgridClient,
    spec: &LabgridSpec,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Vec<PlaceLock>, LabgridError> {
    let count = spec.selector.count();
    if count == 0 {
        return Err(LabgridError::Unsatisfiable("labgrid: count must be at least 1".into()));
    }
    let filter = spec.selector.filter();
    let started = Instant::now();
    let deadline = started
        + match spec.busy {
            BusyPolicy::Wait { timeout } => timeout,
            BusyPolicy::Refuse => REFUSE_GRACE,
        };
    let mut pending = Vec::with_capacity(count);
    let mut locks: Vec<PlaceLock> = Vec::with_capacity(count);
    for _ in 0..count {
        pending.push(Some(client.start_reservation(&filter)?));
    }
    // Tokens are held by locks as soon as printed, so every exit path cancels them.
    let mut token_lock: Vec<Option<usize>> = vec![None; count];
    let mut allocated = vec![false; count];
    loop {
        for (i, p) in pending.iter_mut().enumerate() {
            let Some(res) = p.as_mut() else { continue };
            if token_lock[i].is_none() {
                if let Some(token) = res.token() {
                    locks.push(PlaceLock::reserved(client.clone(), token.to_string()));
                    token_lock[i] = Some(locks.len() - 1);
                }
            }
            match res.poll() {
                ReservationState::Waiting => {}
                ReservationState::Allocated => {
                    if token_lock[i].is_none() {
                        if let Some(token) = res.token() {
                            locks.push(PlaceLock::reserved(client.clone(), token.to_string()));
                            token_lock[i] = Some(locks.len() - 1);
                        }
                    }
                    allocated[i] = true;
                    *p = None;
                }
                ReservationState::Failed { status, stderr } => {
                    let command = res.command.clone();
                    drop(pending);
                    drop(locks);
                    return Err(LabgridError::Command { command, status, stderr });
                }
            }
        }
        if allocated.iter().all(|a| *a) {
            break;
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            drop(pending);
            drop(locks);
            return Err(LabgridError::Interrupted(spec.selector.describe()));
        }
        if Instant::now() >= deadline {
            let got = allocated.iter().filter(|a| **a).count();
            drop(pending);
            drop(locks);
            let who = client.who().unwrap_or_default();
            let places = client.places().unwrap_or_default();
            return Err(LabgridError::Busy(busy_message(client, spec, got, started.elapsed(), &who, &places)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(pending);
    // Acquire each allocated place through its token, then resolve it.
    for lock in locks.iter_mut() {
        let token = lock.token.clone().expect("reserved locks have tokens");
        let place = client.acquire(&format!("+{token}"))?;
        lock.place = Some(place);
    }
    let who = client.who()?;
    for lock in locks.iter_mut() {
        let place = lock.place.clone().expect("acquired above");
        let env = wait_for_serial_port(client, &place)?;
        lock.board = Some(LabgridBoard::from_env(&env, &who, client.coordinator(), lock.token.clone())?);
    }
    Ok(locks)
}

/// `env` until its serial port (if any) has a TCP port: an exporter starts ser2net for a serial port
/// only once the place is acquired, and publishes the port a moment later.
fn wait_for_serial_port(client: &LabgridClient, place: &str) -> Result<PlaceEnv, LabgridError> {
    let deadline = Instant::now() + SERIAL_READY_TIMEOUT;
    loop {
        let env = client.env(place)?;
        match env.serial() {
            Err(detail) if detail.contains("no port yet") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(detail) => return Err(LabgridError::Resource { place: place.to_string(), detail }),
            Ok(_) => return Ok(env),
        }
    }
}

/// [`acquire`] with the client from the environment and the spec's coordinator: the entry point the
/// runner calls. The boards are `locks[i].board()`; keep each lock until that board's cpufreq
/// settings are restored, then drop it (or call [`PlaceLock::release`]).
pub fn resolve_boards(spec: &LabgridSpec) -> Result<Vec<PlaceLock>, LabgridError> {
    let client = LabgridClient::from_env(spec.coordinator.as_deref());
    acquire(&client, spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> LabgridClient {
        LabgridClient::new("/opt/lg/bin/labgrid-client", "127.0.0.1:20408")
    }

    fn place(name: &str, board: &str, acquired: Option<&str>) -> PlaceInfo {
        PlaceInfo {
            name: name.into(),
            tags: [("board".to_string(), board.to_string())].into(),
            acquired: acquired.map(str::to_string),
            ..PlaceInfo::default()
        }
    }

    fn tags_spec(count: usize, busy: BusyPolicy) -> LabgridSpec {
        LabgridSpec {
            coordinator: None,
            selector: PlaceSelector::Tags { tags: [("board".to_string(), "ci".to_string())].into(), count },
            busy,
        }
    }

    #[test]
    fn commands_people_can_paste() {
        let c = client();
        assert_eq!(c.release_command("ci-a"), "/opt/lg/bin/labgrid-client -x 127.0.0.1:20408 -p ci-a release");
        assert_eq!(
            c.cancel_command("BJZ3MY9L5Z"),
            "/opt/lg/bin/labgrid-client -x 127.0.0.1:20408 cancel-reservation BJZ3MY9L5Z"
        );
        assert_eq!(
            c.command_line(&["-p", "my place", "env"]),
            "/opt/lg/bin/labgrid-client -x 127.0.0.1:20408 -p 'my place' env"
        );
    }

    #[test]
    fn selector_filters() {
        assert_eq!(PlaceSelector::Place("rpi4-1".into()).filter(), [("name".to_string(), "rpi4-1".to_string())].into());
        let s = tags_spec(2, BusyPolicy::Refuse);
        assert_eq!(s.selector.describe(), "2 places tagged board=ci");
        assert_eq!(s.selector.count(), 2);
    }

    #[test]
    fn preflight_counts_and_names_stale_locks() {
        let places = [place("ci-a", "ci", Some("vm/root")), place("ci-b", "ci", None), place("rpi", "rpi4", None)];
        let ok = plan_preflight(&client(), &tags_spec(2, BusyPolicy::Refuse), &places, "vm/root").unwrap();
        assert_eq!(ok.candidates.len(), 2);
        assert_eq!(ok.free, 1);
        assert_eq!(ok.stale.len(), 1);
        assert_eq!(ok.stale[0].free_command, "/opt/lg/bin/labgrid-client -x 127.0.0.1:20408 -p ci-a release");
        let err = plan_preflight(&client(), &tags_spec(3, BusyPolicy::Refuse), &places, "vm/root").unwrap_err();
        assert!(matches!(err, LabgridError::Unsatisfiable(_)));
        let text = err.to_string();
        assert!(
            text.contains("3 places tagged board=ci wanted, 2 exist") && text.contains("ci-a, ci-b, rpi"),
            "{text}"
        );
        let by_name =
            LabgridSpec { selector: PlaceSelector::Place("nosuch".into()), ..tags_spec(1, BusyPolicy::Refuse) };
        let text = plan_preflight(&client(), &by_name, &places, "vm/root").unwrap_err().to_string();
        assert!(text.contains("place nosuch wanted, 0 exist"), "{text}");
    }

    #[test]
    fn busy_message_names_holders_and_the_policy() {
        let places = [place("ci-a", "ci", Some("lab/alice")), place("ci-b", "ci", None)];
        let who = parse::parse_who("User Host Place Changed\nalice lab ci-a 2026-12-07 03:58:35.244972\n").unwrap();
        let spec = tags_spec(2, BusyPolicy::Refuse);
        let text = busy_message(&client(), &spec, 1, Duration::from_secs(5), &who, &places);
        assert!(text.contains("2 places tagged board=ci wanted, 1 allocated"), "{text}");
        assert!(text.contains("ci-a held by lab/alice since 2026-12-07 03:58:35.244972"), "{text}");
        assert!(text.contains("busy: refuse"), "{text}");
        let wait = tags_spec(2, BusyPolicy::Wait { timeout: Duration::from_secs(600) });
        assert!(busy_message(&client(), &wait, 0, Duration::from_secs(600), &who, &places).contains("600 s"));
    }

    #[test]
    fn board_from_env_prefers_the_serial_host_as_exporter_host() {
        let yaml = "targets:\n  ci-a:\n    resources:\n    - NetworkService: {address: 10.1.2.3, username: root, port: 2201}\n    - NetworkSerialPort: {name: RawSerialPort, speed: 115200, port: 40949, host: exporter1}\n";
        let env = parse::parse_env(yaml, "ci-a").unwrap();
        let who =
            parse::parse_who("User Host Place Changed Exporters\nroot vm ci-a 2026-12-07 03:58:35.2 hil-ci\n").unwrap();
        let b = LabgridBoard::from_env(&env, &who, "127.0.0.1:20408", Some("TOK".into())).unwrap();
        assert_eq!(b.exporter_host, "exporter1");
        assert_eq!(b.exporters, ["hil-ci"]);
        assert_eq!(b.monitor_port().as_deref(), Some("rfc2217://exporter1:40949"));
        assert_eq!(b.ssh.port, 2201);
        let yaml = "targets:\n  ci-a:\n    resources:\n    - NetworkService: {address: 10.1.2.3, username: root}\n";
        let env = parse::parse_env(yaml, "ci-a").unwrap();
        let b = LabgridBoard::from_env(&env, &who, "c", None).unwrap();
        assert_eq!((b.exporter_host.as_str(), b.monitor_port()), ("hil-ci", None));
        let b = LabgridBoard::from_env(&env, &[], "c", None).unwrap();
        assert_eq!(b.exporter_host, "10.1.2.3");
    }

    #[test]
    fn missing_binary_is_named() {
        let c = LabgridClient::new("/nonexistent/labgrid-client", "127.0.0.1:9");
        let err = c.who().unwrap_err();
        assert!(matches!(err, LabgridError::ClientMissing { .. }));
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/labgrid-client -x 127.0.0.1:9 who -e") && text.contains("HIL_LABGRID_CLIENT"),
            "{text}"
        );
    }
}
