//! Issue 16: the simulated board's PPK2 against real clients, and `hil sim serve`'s shutdown after them.
//!
//! Each test starts `hil sim serve --root DIR` (the emulated PPK2 is at DIR/ppk2), drives it with a
//! client, checks the mean current against the simulator's power model (no agent runs, so the board
//! draws `PowerParams::default()`'s static power: I = P / V at the regulator voltage the client set),
//! then stops the server with SIGTERM, SIGINT or its `--seconds` limit and asserts it exits, cleanly,
//! within 2 s.
//!
//! Clients: IRNAS `ppk2-api` (pinned, in a venv whose python is `HIL_PPK2_API_PYTHON`; the session
//! script is `.ci/ppk2_api_session.py`) and `hil monitor --kind ppk2`. Without the venv the `ppk2-api`
//! parts are skipped with a printed reason, unless `HIL_REQUIRE_PPK2_API=1` (CI), which makes them
//! mandatory. The `hil monitor` parts always run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use harness::sim::simulator::PowerParams;

/// The version `.ci/requirements-ppk2.txt` pins.
const PPK2_API_VERSION: &str = "0.9.2";
/// Issue 16, point 1.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(2);

/// One simulator at a time: each streams 100 kS/s in real time and the clients are CPU-heavy.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulator's model current at `vdd_v`, in mA (no agent: utilisation 0, any frequency).
fn model_ma(vdd_v: f64) -> f64 {
    PowerParams::default().power_w(1_500_000, 0.0) / vdd_v * 1000.0
}

fn assert_close(what: &str, got_ma: f64, want_ma: f64) {
    // The encoding is exact to an ADC step; 1 % covers the calibration's rounding by any client.
    assert!((got_ma - want_ma).abs() <= want_ma * 0.01, "{what}: mean {got_ma:.3} mA, model says {want_ma:.3} mA");
}

/// A running `hil sim serve`.
struct Serve {
    child: Child,
    root: tempfile::TempDir,
    stderr: PathBuf,
    /// When DIR/ppk2 appeared (after the simulator started, before its `--seconds` clock began).
    ready: Instant,
}

impl Serve {
    fn start(name: &str, seconds: Option<f64>) -> Serve {
        let root = tempfile::Builder::new().prefix("hil-ppk2api-").tempdir().unwrap();
        let stderr = root.path().join("serve.stderr");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hil"));
        cmd.args(["sim", "serve", "--root"]).arg(root.path().join("sim")).args(["--name", name]);
        if let Some(s) = seconds {
            cmd.args(["--seconds", &s.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning hil sim serve");
        let mut serve = Serve { child, root, stderr, ready: Instant::now() };
        let port = serve.port();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port.exists() {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!("hil sim serve exited early ({status}): {}", serve.log());
            }
            assert!(Instant::now() < deadline, "no {} after 20 s: {}", port.display(), serve.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        serve.ready = Instant::now();
        serve
    }

    fn port(&self) -> PathBuf {
        self.root.path().join("sim").join("ppk2")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to end; kills it (and fails) if it does not.
    fn wait_exit(&mut self, what: &str, limit: Duration) -> (ExitStatus, Duration) {
        let begin = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, begin.elapsed());
            }
            if begin.elapsed() > limit + Duration::from_secs(3) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "hil sim serve still running {:?} after {what}; killed. stderr:\n{}",
                    begin.elapsed(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` and asserts a clean exit within [`SHUTDOWN_LIMIT`].
    fn stop_with(mut self, signal: libc::c_int, name: &str) -> Duration {
        // SAFETY: signalling our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
        let (status, took) = self.wait_exit(name, SHUTDOWN_LIMIT);
        self.check_clean_exit(status, took, name);
        eprintln!("hil sim serve exited {took:?} after {name}");
        took
    }

    /// Waits for the `--seconds` limit and asserts a clean exit within [`SHUTDOWN_LIMIT`] of it.
    fn stop_at_deadline(mut self, seconds: f64) -> Duration {
        let deadline = self.ready + Duration::from_secs_f64(seconds);
        assert!(Instant::now() < deadline, "the sessions overran the --seconds limit; the test is mis-sized");
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("hil sim serve exited ({status}) before its --seconds limit: {}", self.log());
        }
        std::thread::sleep(deadline - Instant::now());
        let (status, _) = self.wait_exit("its --seconds limit", SHUTDOWN_LIMIT);
        let took = deadline.elapsed();
        self.check_clean_exit(status, took, "the --seconds limit");
        eprintln!("hil sim serve exited {took:?} after its --seconds limit");
        took
    }

    fn check_clean_exit(&self, status: ExitStatus, took: Duration, what: &str) {
        let log = self.log();
        assert!(took <= SHUTDOWN_LIMIT, "hil sim serve took {took:?} to exit after {what}:\n{log}");
        assert!(status.success(), "hil sim serve exited with {status} after {what}:\n{log}");
        assert!(log.contains("simulator stopped"), "no clean shutdown message after {what}:\n{log}");
        assert!(!self.port().exists(), "the PPK2 link was left behind after {what}");
    }
}

/// The venv's python with the pinned `ppk2-api`, or `None` (skip, with the reason printed) when it is
/// not set up. Panics instead of skipping when `HIL_REQUIRE_PPK2_API=1`.
fn ppk2_api_python() -> Option<PathBuf> {
    let required = std::env::var("HIL_REQUIRE_PPK2_API").is_ok_and(|v| v == "1");
    let reason = match std::env::var_os("HIL_PPK2_API_PYTHON").map(PathBuf::from) {
        None => "HIL_PPK2_API_PYTHON is not set".to_string(),
        Some(py) => {
            let probe = Command::new(&py)
                .args(["-c", "from importlib.metadata import version; import ppk2_api; print(version('ppk2-api'))"])
                .output();
            match probe {
                Ok(out) if out.status.success() => {
                    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    if v == PPK2_API_VERSION {
                        return Some(py);
                    }
                    format!("{} has ppk2-api {v}, not the pinned {PPK2_API_VERSION}", py.display())
                }
                Ok(out) => format!("{} cannot import ppk2_api: {}", py.display(), String::from_utf8_lossy(&out.stderr)),
                Err(e) => format!("cannot run {}: {e}", py.display()),
            }
        }
    };
    assert!(!required, "HIL_REQUIRE_PPK2_API=1 but {reason}");
    eprintln!("SKIPPING the ppk2-api client sessions: {reason} (see .ci/run for the venv)");
    None
}

fn session_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/ppk2_api_session.py")
}

/// Runs one `.ci/ppk2_api_session.py` variant against `port` (bounded: killed after 30 s) and returns
/// its JSON report.
fn ppk2_api(py: &Path, port: &Path, variant: &str) -> serde_json::Value {
    let mut child = Command::new(py)
        .arg(session_script())
        .arg(port)
        .arg(variant)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the ppk2-api session");
    let (stdout, stderr) = collect(&mut child, Duration::from_secs(30), &format!("ppk2-api {variant}"));
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("ppk2-api {variant}: no JSON report ({e}); stdout {stdout:?} stderr {stderr}"));
    assert_eq!(v["ppk2_api"], PPK2_API_VERSION);
    eprintln!("ppk2-api {variant}: {v}");
    v
}

/// Waits for `child` (killing it after `limit`), asserts success, returns stdout and stderr.
fn collect(child: &mut Child, limit: Duration, what: &str) -> (String, String) {
    let begin = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if begin.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{what} failed ({status}):\nstdout {out}\nstderr {err}");
    (out, err)
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// `hil monitor --kind ppk2` on the simulator's port: returns its JSON (identity and summary).
fn hil_monitor(port: &Path, source_mv: u32, seconds: f64) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["monitor", "--kind", "ppk2", "--port"])
        .arg(port)
        .args(["--seconds", &seconds.to_string(), "--source-mv", &source_mv.to_string(), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (stdout, _) = collect(&mut child, Duration::from_secs(30), "hil monitor");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["monitor"]["simulated"], true, "{v}");
    let mean_ma = v["summary"]["current_a"]["mean"].as_f64().unwrap() * 1000.0;
    assert_close(&format!("hil monitor at {source_mv} mV"), mean_ma, model_ma(f64::from(source_mv) / 1000.0));
    let samples = v["summary"]["samples"].as_u64().unwrap() as f64;
    assert!(samples >= 0.5 * seconds * 100_000.0, "hil monitor got {samples} samples in {seconds} s: {v}");
    eprintln!("hil monitor at {source_mv} mV: {}", v["summary"]);
    v
}

/// A slow reader that leaves, issue 16's exact sequence, then DUT power toggled off and on mid-stream
/// at 3.3 V; SIGTERM.
#[test]
fn ppk2_api_slow_reader_issue_sequence_and_dut_toggling_then_sigterm() {
    let Some(py) = ppk2_api_python() else { return };
    let _g = serial();
    let serve = Serve::start("ppk2api-issue", None);
    let port = serve.port();

    // What wedged the emulator before the fix, deterministically: a client reading slower than the
    // stream (a large write in flight), then gone. A new session must work after it.
    let v = ppk2_api(&py, &port, "slow-reader");
    assert_close("slow reader, 5000 mV", f(&v, "mean_ma"), model_ma(5.0));

    let v = ppk2_api(&py, &port, "issue");
    assert_eq!(v["modifiers_ok"], true, "metadata parsed: {v}");
    assert_eq!(f(&v, "R3"), 0.9636, "the emulator's calibration reached the client: {v}");
    assert_eq!(v["HW"], "9173-sim");
    let n = f(&v, "samples");
    // 3 s at 100 kS/s; a client slower than the stream loses some (the emulator drops, as a PPK2 does).
    assert!((30_000.0..=320_000.0).contains(&n), "{n} samples in 3 s: {v}");
    assert_close("issue sequence at 5000 mV", f(&v, "mean_ma"), model_ma(5.0));

    let v = ppk2_api(&py, &port, "toggle");
    let runs: Vec<&serde_json::Value> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        // The client's spike filter smooths a few samples at each range switch.
        .filter(|r| f(r, "samples") >= 50.0)
        .collect();
    let states: Vec<&str> = runs.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["on", "off", "on"], "DUT on, off, on at 3.3 V: {v}");
    for r in &runs {
        assert!(f(r, "samples") >= 1000.0, "a run too short: {v}");
    }
    assert_close("DUT on at 3300 mV", f(runs[0], "mean_ma"), model_ma(3.3));
    assert_close("DUT on again at 3300 mV", f(runs[2], "mean_ma"), model_ma(3.3));
    assert!(f(runs[1], "mean_ma").abs() < 0.5, "DUT off draws nothing: {v}");

    serve.stop_with(libc::SIGTERM, "SIGTERM");
}

/// Junk bytes and a dangling command, RESET mid-stream, then a client that exits while streaming
/// without closing; SIGINT.
#[test]
fn ppk2_api_garbage_reset_and_left_streaming_then_sigint() {
    let Some(py) = ppk2_api_python() else { return };
    let _g = serial();
    let serve = Serve::start("ppk2api-garbage", None);
    let port = serve.port();

    let v = ppk2_api(&py, &port, "garbage");
    assert_eq!(v["modifiers_ok"], true, "{v}");
    assert_eq!(v["meta_after_garbage"]["VDD"], "5000", "the dangling REGULATOR_SET was discarded: {v}");
    assert_eq!(v["meta_after_garbage"]["SIMULATED"], "1");
    assert!(f(&v, "samples") > 10_000.0, "{v}");
    assert_close("after garbage, 5000 mV", f(&v, "mean_ma"), model_ma(5.0));

    let v = ppk2_api(&py, &port, "reset");
    assert_close("before RESET, 3300 mV", f(&v["before_reset"], "mean_ma"), model_ma(3.3));
    assert_eq!(f(&v, "bytes_after_reset"), 0.0, "RESET stops the stream: {v}");
    assert_eq!(v["meta_after_reset"]["VDD"], "5000", "regulator back at its power-up value: {v}");
    assert_eq!(v["meta_after_reset"]["mode"], "1", "ampere meter after RESET: {v}");
    assert!(f(&v, "samples") > 10_000.0, "a new session after RESET streams: {v}");
    assert_close("after RESET, 5000 mV", f(&v, "mean_ma"), model_ma(5.0));

    let v = ppk2_api(&py, &port, "leave-streaming");
    assert_close("left streaming, 5000 mV", f(&v, "mean_ma"), model_ma(5.0));
    // The emulator streams on into a port nobody has open for a while.
    std::thread::sleep(Duration::from_millis(500));

    serve.stop_with(libc::SIGINT, "SIGINT");
}

/// A client that stops reading while streaming and one that closes the port mid-stream; the server's
/// own `--seconds` limit ends it.
#[test]
fn ppk2_api_closed_mid_stream_and_stalled_then_deadline() {
    let Some(py) = ppk2_api_python() else { return };
    let _g = serial();
    const SECONDS: f64 = 7.0;
    let serve = Serve::start("ppk2api-deadline", Some(SECONDS));
    let port = serve.port();

    ppk2_api(&py, &port, "stall");
    // Last: it leaves the device streaming, and ppk2-api (like with a real PPK2 left streaming) cannot
    // connect to a device that streams (its metadata reader decodes the stream as UTF-8).
    let v = ppk2_api(&py, &port, "close-mid-stream");
    assert_close("closed mid-stream, 5000 mV", f(&v, "mean_ma"), model_ma(5.0));

    serve.stop_at_deadline(SECONDS);
}

/// `hil monitor --kind ppk2` on the simulator, before and after a `ppk2-api` client left it streaming
/// (the latter only with the venv); SIGTERM.
#[test]
fn hil_monitor_on_the_simulator_then_sigterm() {
    let py = ppk2_api_python();
    let _g = serial();
    let serve = Serve::start("ppk2api-monitor", None);
    let port = serve.port();

    hil_monitor(&port, 5000, 2.0);
    if let Some(py) = &py {
        ppk2_api(py, &port, "leave-streaming");
    }
    hil_monitor(&port, 3300, 1.0);

    serve.stop_with(libc::SIGTERM, "SIGTERM after hil monitor");
}
