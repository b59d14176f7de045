//! `harness::labgrid` against what labgrid 26.0.1 really prints and does:
//! - the parsers on outputs captured from the pinned version (`fixtures/labgrid/`, see its README);
//! - the acquisition flow and its guard against a scripted stand-in for `labgrid-client` (a shell
//!   script logging every call): release and cancel on drop, on panic, the freeing command when a
//!   release fails, busy places refused with the holders named, failing commands with their stderr;
//! - the real lab of `.ci/labgrid-lab.sh` when it is up (`HIL_LABGRID_CLIENT` and the coordinator on
//!   127.0.0.1:20408; mandatory with `HIL_REQUIRE_LABGRID=1`): two places by tag, SSH endpoints and
//!   RFC 2217 serial ports resolved, the PPK2 read through the exporter's ser2net, a second
//!   acquisition refused while the places are held, nothing left locked afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::labgrid::parse::{self, parse_env, parse_places_verbose, parse_who};
use harness::labgrid::{acquire, preflight, BusyPolicy, LabgridClient, LabgridError, LabgridSpec, PlaceSelector};
use harness::power::net::NetProtocol;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/labgrid").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------------
// Fixtures captured from labgrid 26.0.1
// ---------------------------------------------------------------------------------------------------

#[test]
fn fixture_reserve_and_acquire() {
    assert_eq!(parse::parse_reserve_token(&fixture("reserve-shell.txt")).as_deref(), Some("BJZ3MY9L5Z"));
    // While waiting, the token is printed first: a killed wait still leaves a token to cancel.
    assert_eq!(parse::parse_reserve_token(&fixture("reserve-waiting-killed.txt")).as_deref(), Some("6R70ZMH5QF"));
    assert_eq!(parse::parse_acquired_place(&fixture("acquire.txt")).as_deref(), Some("ci-a"));
    assert_eq!(parse::parse_acquired_place(&fixture("release.txt")), None);
}

#[test]
fn fixture_env_of_a_ci_place() {
    let env = parse_env(&fixture("env-ci.yaml"), "ci-a").unwrap();
    let ssh = env.ssh().unwrap();
    assert_eq!((ssh.address.as_str(), ssh.port, ssh.username.as_str()), ("127.0.0.1", 2201, "root"));
    let serial = env.serial().unwrap().expect("a NetworkSerialPort");
    // An exported RawSerialPort: no `protocol:` printed, so labgrid's default rfc2217.
    assert_eq!(serial.protocol, NetProtocol::Rfc2217);
    assert_eq!((serial.host.as_str(), serial.port, serial.speed), ("127.0.0.1", 40949, 115_200));
    assert_eq!(serial.name.as_deref(), Some("RawSerialPort"));
    assert_eq!(serial.address().to_string(), "rfc2217://127.0.0.1:40949");
    let raw = env.raw_resources();
    assert_eq!(raw.as_array().unwrap().len(), 2);
    assert_eq!(raw[1]["class"], "NetworkSerialPort");
}

#[test]
fn fixture_env_with_raw_serial_and_other_resources() {
    let env = parse_env(&fixture("env-raw-and-other.yaml"), "fx").unwrap();
    let ssh = env.ssh().unwrap();
    assert_eq!((ssh.username.as_str(), ssh.port), ("pi", 2222));
    let serial = env.serial().unwrap().unwrap();
    assert_eq!((serial.protocol, serial.port, serial.speed), (NetProtocol::Raw, 3001, 921_600));
    assert_eq!(serial.address().to_string(), "tcp://127.0.0.1:3001");
    // The power port is not used, but kept for provenance.
    let raw = env.raw_resources();
    let power = raw.as_array().unwrap().iter().find(|r| r["class"] == "NetworkPowerPort").expect("kept");
    assert_eq!(power["params"]["model"], "simplerest");
    assert_eq!(power["params"]["index"], 3);
}

#[test]
fn fixture_who_tables() {
    assert!(parse_who(&fixture("who-none.txt")).unwrap().is_empty());
    let one = parse_who(&fixture("who-one.txt")).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].place.as_str(), one[0].holder().as_str()), ("ci-a", "vm/root"));
    assert_eq!(one[0].changed, "2026-12-07 03:58:35.244972");
    let two = parse_who(&fixture("who-two.txt")).unwrap();
    assert_eq!(two.iter().map(|w| w.place.as_str()).collect::<Vec<_>>(), ["ci-a", "ci-b"]);
    let exp = parse_who(&fixture("who-exporters.txt")).unwrap();
    assert_eq!(exp[0].exporters, ["hil-ci"]);
}

#[test]
fn fixture_places_verbose() {
    let places = parse_places_verbose(&fixture("places-verbose.txt")).unwrap();
    assert_eq!(places.len(), 2);
    assert_eq!(places[0].name, "ci-a");
    assert_eq!(places[0].tags.get("board").map(String::as_str), Some("ci"));
    assert_eq!(places[0].matches, ["hil-ci/ci-a/*"]);
    assert!(places.iter().all(|p| p.is_free()));
    let held = parse_places_verbose(&fixture("places-verbose-acquired.txt")).unwrap();
    assert_eq!(held[0].acquired.as_deref(), Some("vm/root"));
    assert!(!held[0].is_free() && held[1].is_free());
}

#[test]
fn fixture_error_outputs_are_what_errors_show() {
    // These are the stderr texts a LabgridError::Command carries; check they say what happened.
    assert!(fixture("acquire-busy.stderr").contains("You have already acquired place ci-a"));
    assert!(fixture("env-exporter-gone.stderr").contains("orphaned resource (exporter hil-ci disconnected?)"));
    assert!(fixture("who-no-coordinator.stderr").contains("Could not connect to coordinator"));
    assert!(fixture("release-other-user.stderr").contains("use --kick"));
}

// ---------------------------------------------------------------------------------------------------
// A scripted labgrid-client
// ---------------------------------------------------------------------------------------------------

/// A stand-in `labgrid-client` in a temporary directory. It appends each call's arguments to
/// `calls`, and behaves per marker file: `busy` (reservations never allocate), `release-fails`,
/// `who-fails`.
struct FakeLab {
    dir: tempfile::TempDir,
}

const FAKE: &str = r#"#!/usr/bin/env bash
d=$(dirname "$0")
echo "$*" >> "$d/calls"
[ "$1" = -x ] && shift 2
case "$1 $2 $3" in
"reserve --wait --shell")
    echo "export LG_TOKEN=TOKEN$$"
    [ -e "$d/busy" ] && exec sleep 30
    exit 0 ;;
"who -e ")
    if [ -e "$d/who-fails" ]; then
        echo "Server error: Error: Could not connect to coordinator" >&2
        exit 1
    fi
    echo "User  Host  Place  Changed  Exporters"
    [ -e "$d/busy" ] && echo "alice  lab  fake-1  2026-12-07 03:58:35.244972  exp1"
    exit 0 ;;
"-v places ")
    for p in fake-1 fake-2; do
        echo "Place '$p':"
        echo "  tags: board=fake"
        echo "  matches:"
        echo "    exp1/$p/*"
        if [ -e "$d/busy" ]; then echo "  acquired: lab/alice"; else echo "  acquired: None"; fi
    done
    exit 0 ;;
"cancel-reservation "*) exit 0 ;;
esac
case "$1 $3" in
"-p acquire")
    echo "acquired place place-${2#+TOKEN}" ;;
"-p env")
    printf 'targets:\n  %s:\n    resources:\n    - NetworkService:\n        address: 127.0.0.1\n        username: root\n        port: 22\n' "$2" ;;
"-p release")
    if [ -e "$d/release-fails" ]; then
        echo "labgrid-client: Error: coordinator went away" >&2
        exit 1
    fi
    echo "released place $2" ;;
*)
    echo "fake labgrid-client: unexpected call: $*" >&2
    exit 2 ;;
esac
"#;

impl FakeLab {
    fn new() -> FakeLab {
        let dir = tempfile::Builder::new().prefix("hil-fake-labgrid-").tempdir().unwrap();
        let bin = dir.path().join("labgrid-client");
        std::fs::write(&bin, FAKE).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeLab { dir }
    }

    fn client(&self) -> LabgridClient {
        LabgridClient::new(self.dir.path().join("labgrid-client"), "127.0.0.1:20999")
    }

    fn mark(&self, marker: &str) {
        std::fs::write(self.dir.path().join(marker), "").unwrap();
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.strip_prefix("-x 127.0.0.1:20999 ").unwrap_or(l).to_string())
            .collect()
    }
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn fake_spec(count: usize, busy: BusyPolicy) -> LabgridSpec {
    LabgridSpec { coordinator: None, selector: PlaceSelector::Tags { tags: tags(&[("board", "fake")]), count }, busy }
}

#[test]
fn two_places_acquired_resolved_and_given_back_on_drop() {
    let lab = FakeLab::new();
    let locks = acquire(&lab.client(), &fake_spec(2, BusyPolicy::Refuse)).expect("acquire");
    assert_eq!(locks.len(), 2);
    let places: Vec<String> = locks.iter().map(|l| l.place().unwrap().to_string()).collect();
    assert_ne!(places[0], places[1]);
    for lock in &locks {
        let b = lock.board();
        assert_eq!((b.ssh.address.as_str(), b.ssh.port), ("127.0.0.1", 22));
        assert_eq!(b.reservation.as_deref(), lock.token());
        assert_eq!(b.coordinator, "127.0.0.1:20999");
    }
    let calls = lab.calls();
    assert_eq!(calls.iter().filter(|c| c.starts_with("reserve --wait --shell board=fake")).count(), 2, "{calls:?}");
    assert!(!calls.iter().any(|c| c.ends_with("release")), "nothing released while held: {calls:?}");
    drop(locks);
    let calls = lab.calls();
    for place in &places {
        let token = place.replace("place-", "TOKEN");
        let released = calls.iter().position(|c| *c == format!("-p {place} release"));
        let cancelled = calls.iter().position(|c| *c == format!("cancel-reservation {token}"));
        assert!(released.is_some() && cancelled.is_some(), "{place}: {calls:?}");
        assert!(released < cancelled, "release before cancelling the reservation: {calls:?}");
    }
}

#[test]
fn a_panic_still_gives_the_places_back() {
    let lab = FakeLab::new();
    let client = lab.client();
    let result = std::panic::catch_unwind(|| {
        let _locks = acquire(&client, &fake_spec(1, BusyPolicy::Refuse)).unwrap();
        panic!("a cell blew up");
    });
    assert!(result.is_err());
    let calls = lab.calls();
    assert!(calls.iter().any(|c| c.starts_with("-p place-") && c.ends_with(" release")), "{calls:?}");
    assert!(calls.iter().any(|c| c.starts_with("cancel-reservation TOKEN")), "{calls:?}");
}

#[test]
fn a_failed_release_names_the_command_that_frees_the_place() {
    let lab = FakeLab::new();
    let mut locks = acquire(&lab.client(), &fake_spec(1, BusyPolicy::Refuse)).unwrap();
    let lock = locks.pop().unwrap();
    let place = lock.place().unwrap().to_string();
    lab.mark("release-fails");
    let err = lock.release().unwrap_err();
    let text = err.to_string();
    let program = lab.dir.path().join("labgrid-client");
    let free = format!("{} -x 127.0.0.1:20999 -p {place} release", program.display());
    assert!(text.contains(&free), "{text}");
    assert!(text.contains("coordinator went away"), "stderr shown: {text}");
    assert_eq!(err.commands[0], free);
}

#[test]
fn busy_places_are_refused_naming_the_holder_and_nothing_is_left_reserved() {
    let lab = FakeLab::new();
    lab.mark("busy");
    let spec = fake_spec(2, BusyPolicy::Wait { timeout: Duration::from_millis(1500) });
    let started = Instant::now();
    let err = acquire(&lab.client(), &spec).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "the wait is bounded");
    assert!(err.is_busy(), "{err}");
    let text = err.to_string();
    assert!(text.contains("2 places tagged board=fake wanted, 0 allocated"), "{text}");
    assert!(text.contains("fake-1 held by lab/alice since 2026-12-07 03:58:35.244972"), "{text}");
    // Both reservations were cancelled, and their waiting labgrid-clients killed.
    let calls = lab.calls();
    assert_eq!(calls.iter().filter(|c| c.starts_with("cancel-reservation TOKEN")).count(), 2, "{calls:?}");
    let sleepers = std::process::Command::new("pgrep").args(["-f", &format!("{}", lab.dir.path().display())]).output();
    if let Ok(out) = sleepers {
        assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "waiting clients left running");
    }
}

#[test]
fn failing_and_missing_clients_say_which_command_and_why() {
    let lab = FakeLab::new();
    lab.mark("who-fails");
    let err = lab.client().who().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LabgridError::Command { .. }));
    assert!(text.contains("-x 127.0.0.1:20999 who -e") && text.contains("exit status 1"), "{text}");
    assert!(text.contains("Could not connect to coordinator"), "stderr shown: {text}");

    let missing = LabgridClient::new("/nonexistent/bin/labgrid-client", "127.0.0.1:20408");
    let err = preflight(&missing, &fake_spec(1, BusyPolicy::Refuse), "vm/root").unwrap_err();
    assert!(matches!(err, LabgridError::ClientMissing { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/bin/labgrid-client -x 127.0.0.1:20408 -v places"), "{err}");
}

#[test]
fn preflight_against_the_scripted_lab() {
    let lab = FakeLab::new();
    let pre = preflight(&lab.client(), &fake_spec(2, BusyPolicy::Refuse), "vm/root").unwrap();
    assert_eq!((pre.candidates.len(), pre.free), (2, 2));
    let err = preflight(&lab.client(), &fake_spec(3, BusyPolicy::Refuse), "vm/root").unwrap_err();
    assert!(err.to_string().contains("3 places tagged board=fake wanted, 2 exist"), "{err}");
    // Nothing was reserved or acquired by a preflight.
    assert!(lab.calls().iter().all(|c| c == "-v places"), "{:?}", lab.calls());
}

// ---------------------------------------------------------------------------------------------------
// The real lab of .ci/labgrid-lab.sh
// ---------------------------------------------------------------------------------------------------

/// The CI lab's client, or `None` (skipped) when it is not up.
fn ci_lab() -> Option<LabgridClient> {
    let required = std::env::var("HIL_REQUIRE_LABGRID").is_ok_and(|v| v == "1");
    let program = std::env::var_os("HIL_LABGRID_CLIENT").map(PathBuf::from).or_else(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ci-labgrid-venv/bin/labgrid-client");
        p.exists().then_some(p)
    });
    let reason = match &program {
        None => "no labgrid-client (set HIL_LABGRID_CLIENT, or run .ci/labgrid-lab.sh start)".to_string(),
        Some(p) => {
            let client = LabgridClient::new(p, "127.0.0.1:20408").with_timeout(Duration::from_secs(30));
            match client.places() {
                Ok(places)
                    if places.iter().filter(|p| p.tags.get("board").map(String::as_str) == Some("ci")).count() >= 2 =>
                {
                    return Some(client)
                }
                Ok(_) => "the coordinator has no two places tagged board=ci".to_string(),
                Err(e) => format!("the CI lab is not up: {e}"),
            }
        }
    };
    assert!(!required, "HIL_REQUIRE_LABGRID=1 but {reason}");
    eprintln!("skipped: {reason}");
    None
}

fn ci_spec(busy: BusyPolicy) -> LabgridSpec {
    LabgridSpec {
        coordinator: Some("127.0.0.1:20408".into()),
        selector: PlaceSelector::Tags { tags: tags(&[("board", "ci")]), count: 2 },
        busy,
    }
}

/// One test for the whole lab: the places are shared, so these steps must not run concurrently.
#[test]
fn ci_lab_places_boards_monitors_busy_and_release() {
    let Some(client) = ci_lab() else { return };
    // Only the board=ci places: the fault test below runs beside this one with a place of its own.
    let held = |c: &LabgridClient| -> Vec<String> {
        c.who().unwrap().into_iter().map(|w| w.place).filter(|p| p == "ci-a" || p == "ci-b").collect()
    };
    assert!(held(&client).is_empty(), "a place is already held: {:?}", client.who());

    let locks = acquire(&client, &ci_spec(BusyPolicy::Wait { timeout: Duration::from_secs(30) })).expect("acquire");
    let mut boards: Vec<_> = locks.iter().map(|l| l.board().clone()).collect();
    boards.sort_by(|a, b| a.place.cmp(&b.place));
    assert_eq!(boards.iter().map(|b| b.place.as_str()).collect::<Vec<_>>(), ["ci-a", "ci-b"]);
    for (b, port) in boards.iter().zip([2201, 2202]) {
        assert_eq!((b.ssh.address.as_str(), b.ssh.port, b.ssh.username.as_str()), ("127.0.0.1", port, "root"));
        let serial = b.serial.as_ref().expect("the simulator's PPK2 as a NetworkSerialPort");
        assert_eq!((serial.protocol, serial.host.as_str()), (NetProtocol::Rfc2217, "127.0.0.1"));
        assert_eq!(b.exporter_host, "127.0.0.1");
        assert_eq!(b.exporters, ["hil-ci"]);
    }

    // The PPK2 of ci-a, read through the exporter's ser2net by the real driver.
    let mut options = harness::power::MonitorOptions::default();
    options.ppk2.mode = harness::power::ppk2::Ppk2Mode::Source { supply_mv: 5000 };
    let url = boards[0].monitor_port().unwrap();
    let mut monitor = harness::power::open_monitor(harness::power::MonitorKind::Ppk2, &url, &options).expect(&url);
    let rec = harness::power::record(monitor.as_mut(), Duration::from_secs(1)).expect("recording");
    drop(monitor);
    assert!(rec.samples.len() > 80_000 && rec.lost == 0, "{} samples, {} lost", rec.samples.len(), rec.lost);

    // While they are held, a second run asking to refuse is refused, naming this holder.
    let err = acquire(&client, &ci_spec(BusyPolicy::Refuse)).unwrap_err();
    assert!(err.is_busy(), "{err}");
    let text = err.to_string();
    assert!(text.contains("ci-a held by") && text.contains("busy: refuse"), "{text}");
    assert_eq!(held(&client).len(), 2, "the refused attempt left the held places alone: {:?}", client.who());

    // A panic in a board thread while holding: still released.
    let client2 = client.clone();
    drop(locks);
    assert!(held(&client).is_empty(), "released: {:?}", client.who());
    let r = std::panic::catch_unwind(move || {
        let _locks = acquire(&client2, &ci_spec(BusyPolicy::Refuse)).unwrap();
        panic!("board thread panicked");
    });
    assert!(r.is_err());
    assert!(held(&client).is_empty(), "nothing locked after the panic: {:?}", client.who());
    // And the coordinator holds no reservation of ours (cancelled, not left to expire).
    let reservations = client.run(&["reservations"]).unwrap().stdout;
    assert!(!reservations.contains("main: board=ci"), "{reservations}");
}

/// A labgrid exporter this test started (its own pid), stopped with SIGTERM on drop.
struct Exporter {
    child: std::process::Child,
}

impl Exporter {
    fn start(client: &LabgridClient, name: &str, config: &Path) -> Exporter {
        let exporter = client.program().with_file_name("labgrid-exporter");
        // The CI lab's ser2net wrapper (loopback only, 16 KiB buffer) when it is there.
        let path = format!("/tmp/hil-ci-labgrid/bin:{}", std::env::var("PATH").unwrap_or_default());
        let child = std::process::Command::new(&exporter)
            .args(["-c", client.coordinator(), "-n", name, "--hostname", "127.0.0.1"])
            .arg(config)
            .env("PATH", path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", exporter.display()));
        let exporter = Exporter { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !client.run(&["resources"]).unwrap().stdout.contains(&format!("{name}/")) {
            assert!(Instant::now() < deadline, "exporter {name} did not publish its resources");
            std::thread::sleep(Duration::from_millis(200));
        }
        exporter
    }

    /// SIGTERM (the exporter stops its ser2net children), then wait.
    fn stop(&mut self) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// The exporter serving a place dies while its PPK2 is being read: the monitor fails with a retryable
/// disconnection naming the port, the place is still released, and once the exporter is back the place
/// resolves again to a working monitor (what the runner's retry does).
#[test]
fn ci_lab_exporter_dies_mid_measurement() {
    let Some(client) = ci_lab() else { return };
    let model = |_t_s: f64, supply_v: f64| 2.5 / supply_v.max(0.8);
    let emulator = harness::sim::ppk2_emulator::Ppk2Emulator::spawn(
        model,
        harness::sim::ppk2_emulator::EmulatorConfig { initial_vdd_mv: 5000, ..Default::default() },
    )
    .unwrap();
    let dir = tempfile::Builder::new().prefix("hil-lg-fault-").tempdir().unwrap();
    let config = dir.path().join("exporter.yaml");
    std::fs::write(
        &config,
        format!(
            "fault-x:\n  NetworkService:\n    address: 127.0.0.1\n    username: root\n    port: 2299\n  RawSerialPort:\n    port: {}\n    speed: 115200\n",
            emulator.port_path().display()
        ),
    )
    .unwrap();
    let mut exporter = Exporter::start(&client, "hil-fault", &config);
    // The place may be left from an earlier killed run; create it afresh.
    let _ = client.run(&["-p", "fault-x", "delete"]);
    client.run(&["-p", "fault-x", "create"]).unwrap();
    client.run(&["-p", "fault-x", "add-match", "hil-fault/fault-x/*"]).unwrap();
    let spec = LabgridSpec {
        coordinator: Some(client.coordinator().to_string()),
        selector: PlaceSelector::Place("fault-x".into()),
        busy: BusyPolicy::Refuse,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut options = harness::power::MonitorOptions::default();
        options.ppk2.mode = harness::power::ppk2::Ppk2Mode::Source { supply_mv: 5000 };
        let mut locks = acquire(&client, &spec).expect("acquire fault-x");
        let lock = locks.pop().unwrap();
        let url = lock.board().monitor_port().expect("serial port");
        let mut monitor = harness::power::open_monitor(harness::power::MonitorKind::Ppk2, &url, &options).unwrap();
        monitor.start().unwrap();
        let mut samples = Vec::new();
        monitor.read(&mut samples, Duration::from_millis(300)).unwrap();
        assert!(!samples.is_empty());
        exporter.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match monitor.read(&mut samples, Duration::from_millis(100)) {
                Err(e) => break e,
                Ok(_) => assert!(Instant::now() < deadline, "reads went on after the exporter died"),
            }
        };
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains(&url), "{err}");
        drop(monitor);
        // The lock is given back although its exporter is gone.
        lock.release().expect("release with the exporter gone");
        assert!(client.who().unwrap().iter().all(|w| w.place != "fault-x"));

        // The exporter comes back: the place resolves again (a new ser2net port) and reads.
        exporter = Exporter::start(&client, "hil-fault", &config);
        let mut locks = acquire(&client, &spec).expect("acquire fault-x again");
        let url2 = locks[0].board().monitor_port().unwrap();
        let mut monitor = harness::power::open_monitor(harness::power::MonitorKind::Ppk2, &url2, &options).unwrap();
        let rec = harness::power::record(monitor.as_mut(), Duration::from_millis(500)).unwrap();
        assert!(rec.samples.len() > 30_000, "{} samples after the exporter came back", rec.samples.len());
        drop(monitor);
        drop(locks.pop());
    }));
    let _ = client.run(&["-p", "fault-x", "delete"]);
    drop(exporter);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
