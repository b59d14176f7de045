//! The SSH transport against a real `sshd` on 127.0.0.1 (see `common::Sshd`).
//!
//! Each test starts its own daemon with fresh keys. Without `/usr/sbin/sshd`
//! the tests print a skip reason and pass, unless `HIL_REQUIRE_SSHD=1`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Sshd;
use harness::board::ssh::{HostKeyChecking, ReconnectPolicy, SshAuth, SshBoard, SshConfig};
use harness::board::{Board, ErrorKind};

macro_rules! sshd_or_skip {
    () => {
        match Sshd::start() {
            Some(sshd) => sshd,
            None => return,
        }
    };
}

fn config(sshd: &Sshd, known_hosts: &Path, checking: HostKeyChecking) -> SshConfig {
    SshConfig {
        port: sshd.port,
        known_hosts: Some(known_hosts.to_path_buf()),
        host_key_checking: checking,
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(30),
        keepalive_secs: 5,
        reconnect: ReconnectPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            max_attempts: 5,
            max_total_wait: Duration::from_secs(2),
        },
        ..SshConfig::new("sshd-test", "127.0.0.1", sshd.user.clone(), SshAuth::KeyFile(sshd.client_key.clone()))
    }
}

fn connect(sshd: &Sshd) -> SshBoard {
    SshBoard::connect(config(sshd, &sshd.known_hosts, HostKeyChecking::Strict))
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log_text()))
}

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const T: Duration = Duration::from_secs(20);

#[test]
fn exec_returns_status_output_and_hostile_arguments_verbatim() {
    let sshd = sshd_or_skip!();
    let mut board = connect(&sshd);
    assert_eq!(board.transport(), "ssh");

    let marker = sshd.dir.path().join("pwned");
    let nasty = vec![
        String::new(),
        " ".into(),
        "'".into(),
        "\"".into(),
        "\\".into(),
        "$HOME".into(),
        format!("$(touch {})", marker.display()),
        format!("`touch {}`", marker.display()),
        format!("; touch {}", marker.display()),
        "a && b || c | d > e < f".into(),
        "*".into(),
        "~".into(),
        "A=b".into(),
        "multi\nline\n".into(),
        "tab\there".into(),
        "héllo ✓ 日本".into(),
        "-n".into(),
    ];
    // printf '%s\0' prints each argument followed by a NUL byte.
    let mut cmd = argv(&["printf", "%s\\0"]);
    cmd.extend(nasty.iter().cloned());
    let out = board.exec(&cmd, T).unwrap();
    assert!(out.success(), "status {} stderr {}", out.status, out.stderr_str());
    let mut words: Vec<String> = out.stdout_str().split('\0').map(String::from).collect();
    assert_eq!(words.pop().as_deref(), Some(""));
    assert_eq!(words, nasty);
    assert!(!marker.exists(), "a quoted argument was executed");

    let out = board.exec(&argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]), T).unwrap();
    assert_eq!((out.status, out.stdout_str().as_str(), out.stderr_str().as_str()), (3, "out\n", "err\n"));

    let out = board.exec(&argv(&["sh", "-c", "kill -KILL $$"]), T).unwrap();
    assert_eq!(out.status, 137, "killed by SIGKILL -> 128 + 9");

    let out = board.exec(&argv(&["hil-no-such-command-xyz"]), T).unwrap();
    assert_eq!(out.status, 127);

    // Large outputs on both streams at once: neither stream may stall the other.
    let out = board.exec(&argv(&["sh", "-c", "head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2"]), T).unwrap();
    // Count the zeros: the login shell's rc files may add their own stderr lines
    // (this host's ~/.bashrc runs `pyenv init`, which complains under concurrency).
    let zeros = |b: &[u8]| b.iter().filter(|&&x| x == 0).count();
    assert_eq!(out.stdout.len(), 3_000_000);
    assert_eq!(zeros(&out.stderr), 3_000_000);
}

#[test]
fn command_timeout_is_reported_and_the_board_recovers() {
    let sshd = sshd_or_skip!();
    let mut board = connect(&sshd);
    let started = Instant::now();
    let err = board.exec(&argv(&["sleep", "30"]), Duration::from_millis(500)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(err.board, "sshd-test");
    assert!(err.what.contains("sleep 30"), "what names the command: {}", err.what);
    // The next call reconnects by itself.
    let out = board.exec(&argv(&["echo", "alive"]), T).unwrap();
    assert_eq!(out.stdout_str(), "alive\n");
}

#[test]
fn upload_is_atomic_sets_the_mode_and_replaces_an_existing_file() {
    let sshd = sshd_or_skip!();
    let mut board = connect(&sshd);
    let work = tempfile::tempdir().unwrap();
    let remote = work.path().join("hil-agent");
    let remote_str = remote.to_str().unwrap();

    let local = work.path().join("local-agent");
    let payload: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    fs::write(&local, &payload).unwrap();
    board.upload(&local, remote_str, 0o750).unwrap();
    assert_eq!(fs::read(&remote).unwrap(), payload);
    assert_eq!(fs::metadata(&remote).unwrap().permissions().mode() & 0o777, 0o750);

    // Second upload over the first: SFTP v3 rename refuses, the mv fallback replaces.
    fs::write(&local, b"version 2").unwrap();
    let mut old = fs::File::open(&remote).unwrap();
    board.upload(&local, remote_str, 0o700).unwrap();
    assert_eq!(fs::read(&remote).unwrap(), b"version 2");
    assert_eq!(fs::metadata(&remote).unwrap().permissions().mode() & 0o777, 0o700);
    let mut seen = Vec::new();
    std::io::Read::read_to_end(&mut old, &mut seen).unwrap();
    assert_eq!(seen, payload, "the old file was replaced, not rewritten in place");

    let leftovers: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let err = board.upload(&work.path().join("missing"), remote_str, 0o755).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Local);
    let err = board.upload(&local, "/nonexistent-hil-dir/agent", 0o755).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Remote, "{err}");
    assert!(err.what.contains("/nonexistent-hil-dir/agent"));
}

#[test]
fn read_and_write_files_over_sftp() {
    let sshd = sshd_or_skip!();
    let mut board = connect(&sshd);
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("scaling_setspeed");
    let path_str = path.to_str().unwrap();
    fs::write(&path, b"600000\n").unwrap();
    assert_eq!(board.read_file(path_str).unwrap(), b"600000\n");
    board.write_file(path_str, b"1500000\n", false).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"1500000\n", "shorter old content truncated");
    board.write_file(path_str, b"7\n", false).unwrap();
    assert_eq!(board.read_file(path_str).unwrap(), b"7\n");

    let missing = format!("{path_str}.missing");
    let err = board.read_file(&missing).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Remote, "{err}");
    assert!(err.what.contains(&missing));

    // sudo goes only to the cpufreq attributes of the kernel's sysfs: anything else is refused
    // before a command is built, and nothing is written.
    let err = board.write_file(path_str, b"userspace\n", true).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Local, "{err}");
    assert!(err.detail.contains("refused") && err.detail.contains(path_str), "{}", err.detail);
    assert_eq!(fs::read(&path).unwrap(), b"7\n");
}

#[test]
fn interactive_session_echoes_lines_alongside_exec() {
    let sshd = sshd_or_skip!();
    let mut board = connect(&sshd);
    let mut session = board
        .spawn(&argv(&["sh", "-c", "while IFS= read -r l; do printf 'got:%s\\n' \"$l\"; echo seen >&2; done"]))
        .unwrap();
    for line in ["hello", "{\"cmd\":\"run\",\"variant\":\"it's\"}", "héllo ✓", "  spaced  "] {
        session.send_line(line).unwrap();
        assert_eq!(session.read_line(T).unwrap(), format!("got:{line}"));
        // The board's own connection stays usable while the agent's is busy.
        assert_eq!(board.exec(&argv(&["echo", "side"]), T).unwrap().stdout_str(), "side\n");
    }
    let err = session.read_line(Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert!(session.stderr_tail().contains("seen"));
    assert_eq!(session.close().unwrap(), Some(0));
}

#[test]
fn interactive_session_exit_is_a_connection_error_with_stderr() {
    let sshd = sshd_or_skip!();
    let mut board = connect(&sshd);
    let mut session =
        board.spawn(&argv(&["sh", "-c", "read l; echo \"ok $l\"; echo 'agent died' >&2; exit 3"])).unwrap();
    session.send_line("x").unwrap();
    assert_eq!(session.read_line(T).unwrap(), "ok x");
    let err = session.read_line(T).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Connection, "{err}");
    assert!(err.detail.contains("agent died"), "{}", err.detail);
    assert!(err.detail.contains("status 3"), "{}", err.detail);
}

#[test]
fn closing_a_session_whose_process_ignores_eof_does_not_hang() {
    let sshd = sshd_or_skip!();
    let mut board = connect(&sshd);
    let started = Instant::now();
    let mut session = board.spawn(&argv(&["sleep", "60"])).unwrap();
    assert_eq!(session.close().unwrap(), None, "no exit status from a process still running");
    drop(session);
    // Dropped without close, mid-command.
    let session = board.spawn(&argv(&["sleep", "60"])).unwrap();
    drop(session);
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert!(board.exec(&argv(&["true"]), T).unwrap().success());
}

#[test]
fn reconnect_after_the_serving_sshd_process_is_killed() {
    let sshd = sshd_or_skip!();
    let mut board = connect(&sshd);
    assert_eq!(board.exec(&argv(&["echo", "before"]), T).unwrap().stdout_str(), "before\n");
    let mut session = board.spawn(&argv(&["cat"])).unwrap();
    session.send_line("ping").unwrap();
    assert_eq!(session.read_line(T).unwrap(), "ping");

    let killed = sshd.kill_connections();
    assert!(killed >= 2, "expected one sshd per connection, killed {killed}");

    let err = board.exec(&argv(&["echo", "during"]), T).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Connection, "{err}");
    assert!(err.kind.is_retryable());
    let err = session.read_line(T).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Connection, "{err}");

    board.reconnect().unwrap();
    assert_eq!(board.exec(&argv(&["echo", "after"]), T).unwrap().stdout_str(), "after\n");
}

#[test]
fn reconnect_gives_up_with_a_clear_error_when_the_board_stays_down() {
    let mut sshd = sshd_or_skip!();
    let mut board = connect(&sshd);
    sshd.stop();
    let started = Instant::now();
    let err = board.reconnect().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Connection, "{err}");
    assert!(err.detail.contains("gave up after 5 attempts"), "{}", err.detail);
    assert!(err.what.contains(&format!("127.0.0.1:{}", sshd.port)), "{}", err.what);
    // The configured backoff (0.1 + 0.2 + 0.4 + 0.4 s) was waited, not skipped.
    assert!(started.elapsed() >= Duration::from_millis(1100), "{:?}", started.elapsed());
    assert!(!board.is_connected());
}

#[test]
fn wrong_host_key_is_refused_and_nothing_runs() {
    let sshd = sshd_or_skip!();
    let impostor = format!("{}\n", sshd.wrong_key_line());
    let known_hosts = sshd.write_known_hosts("impostor_known_hosts", &impostor);
    let marker = sshd.dir.path().join("must-not-exist");
    for checking in [HostKeyChecking::Strict, HostKeyChecking::AcceptNew] {
        let logins_before = sshd.accepted_logins();
        let result = SshBoard::connect(config(&sshd, &known_hosts, checking))
            .and_then(|mut board| board.exec(&argv(&["touch", marker.to_str().unwrap()]), T));
        let err = result.unwrap_err();
        assert_eq!(err.kind, ErrorKind::HostKey, "{checking:?}: {err}");
        assert!(!err.kind.is_retryable());
        assert!(err.detail.contains("CHANGED"), "{}", err.detail);
        assert!(err.to_string().contains("sshd-test"), "the error names the board: {err}");
        assert!(!marker.exists(), "{checking:?}: a command ran despite the wrong host key");
        assert_eq!(sshd.accepted_logins(), logins_before, "{checking:?}: authenticated despite the wrong key");
    }
    // accept-new must not have "fixed" the file.
    assert_eq!(fs::read_to_string(&known_hosts).unwrap(), impostor);
}

#[test]
fn a_revoked_host_key_is_refused_under_every_checking_mode() {
    let sshd = sshd_or_skip!();
    // The server's own key, revoked; a plain entry for it too must not rescue it.
    let text = format!("@revoked * {}\n[127.0.0.1]:{} {}\n", sshd.host_public_key, sshd.port, sshd.host_public_key);
    let known_hosts = sshd.write_known_hosts("revoked_known_hosts", &text);
    for checking in [HostKeyChecking::Strict, HostKeyChecking::AcceptNew, HostKeyChecking::Off] {
        let logins_before = sshd.accepted_logins();
        let err = SshBoard::connect(config(&sshd, &known_hosts, checking)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::HostKey, "{checking:?}: {err}");
        assert!(err.detail.contains("REVOKED") && err.detail.contains("line 1"), "{}", err.detail);
        assert_eq!(sshd.accepted_logins(), logins_before, "{checking:?}: authenticated with a revoked key");
    }
    assert_eq!(fs::read_to_string(&known_hosts).unwrap(), text, "accept-new added nothing");
}

#[test]
fn unknown_host_is_refused_under_strict_with_the_keyscan_command() {
    let sshd = sshd_or_skip!();
    let known_hosts = sshd.dir.path().join("empty_known_hosts");
    let err = SshBoard::connect(config(&sshd, &known_hosts, HostKeyChecking::Strict)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::HostKey, "{err}");
    let advice = format!("ssh-keyscan -p {} -t ed25519 127.0.0.1 >> {}", sshd.port, known_hosts.display());
    assert!(err.detail.contains(&advice), "{}", err.detail);
    assert!(!known_hosts.exists(), "strict checking must not create known_hosts");
}

#[test]
fn accept_new_records_the_key_and_strict_then_trusts_it() {
    let sshd = sshd_or_skip!();
    let known_hosts: PathBuf = sshd.dir.path().join("fresh/known_hosts");
    let mut board = SshBoard::connect(config(&sshd, &known_hosts, HostKeyChecking::AcceptNew)).unwrap();
    assert_eq!(board.exec(&argv(&["echo", "hi"]), T).unwrap().stdout_str(), "hi\n");
    let recorded = fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(recorded, format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_public_key));
    SshBoard::connect(config(&sshd, &known_hosts, HostKeyChecking::Strict)).unwrap();
    // A second accept-new connection does not duplicate the entry.
    SshBoard::connect(config(&sshd, &known_hosts, HostKeyChecking::AcceptNew)).unwrap();
    assert_eq!(fs::read_to_string(&known_hosts).unwrap(), recorded);
}

#[test]
fn host_key_checking_off_connects_without_known_hosts() {
    let sshd = sshd_or_skip!();
    let known_hosts = sshd.dir.path().join("never_written");
    let mut board = SshBoard::connect(config(&sshd, &known_hosts, HostKeyChecking::Off)).unwrap();
    assert!(board.exec(&argv(&["true"]), T).unwrap().success());
    assert!(!known_hosts.exists());
}

#[test]
fn an_unauthorised_key_is_an_auth_error() {
    let sshd = sshd_or_skip!();
    let mut cfg = config(&sshd, &sshd.known_hosts, HostKeyChecking::Strict);
    cfg.auth = SshAuth::KeyFile(sshd.unauthorised_key());
    let err = SshBoard::connect(cfg).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth, "{err}");
    assert!(!err.kind.is_retryable());

    let mut cfg = config(&sshd, &sshd.known_hosts, HostKeyChecking::Strict);
    cfg.auth = SshAuth::KeyFile(sshd.dir.path().join("no-such-key"));
    let err = SshBoard::connect(cfg).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Local, "{err}");
    assert!(err.detail.contains("no-such-key"));
}
