//! A throw-away `sshd` on 127.0.0.1 for integration tests.
//!
//! [`Sshd::start`] generates a host key and a client key in a temporary
//! directory, writes an `sshd_config` that allows only public-key login with
//! that client key, starts `/usr/sbin/sshd -D -e` on a free port as the current
//! user, and waits until the port answers. Dropping the value kills the daemon.
//!
//! When `sshd` is not installed, `start` prints why and returns `None` so the
//! test can return early, unless `HIL_REQUIRE_SSHD=1` (set by `.ci/run`), in
//! which case a missing daemon is a failure.
//!
//! Use from a test crate with `mod common;`.
#![allow(dead_code)]

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where Debian/Ubuntu's openssh-server installs the daemon.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd and the keys to talk to it.
#[derive(Debug)]
pub struct Sshd {
    pub dir: TempDir,
    pub port: u16,
    /// The login user (the user running the tests).
    pub user: String,
    /// Unencrypted ed25519 private key authorised for `user` (`<path>.pub` next to it).
    pub client_key: PathBuf,
    /// The server's public host key, `ssh-ed25519 AAAA...`.
    pub host_public_key: String,
    /// A known_hosts file holding exactly this server's key.
    pub known_hosts: PathBuf,
    /// sshd's own log (`-e`: everything it would send to syslog).
    pub log: PathBuf,
    child: Child,
}

/// Whether the daemon is required (CI) rather than optional (a developer's laptop).
pub fn sshd_required() -> bool {
    std::env::var("HIL_REQUIRE_SSHD").is_ok_and(|v| v == "1")
}

/// Generates an unencrypted ed25519 key pair at `path` and `path.pub`; returns the public line.
pub fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "hil-test", "-f"])
        .arg(path)
        .output()
        .expect("running ssh-keygen (package openssh-client)");
    assert!(out.status.success(), "ssh-keygen -f {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let public = fs::read_to_string(path.with_extension("pub")).expect("reading the generated .pub");
    // `type base64 comment` -> `type base64`
    public.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// The name of the effective user, from the password database.
pub fn current_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy the name
    // out immediately and the tests do not call getpw* concurrently with a mutation.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        assert!(!pw.is_null(), "current uid has no passwd entry");
        std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}

/// Waits until `port` accepts connections; false when sshd exited or `limit` passed.
fn wait_until_listening(child: &mut Child, port: u16, limit: Duration) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

impl Sshd {
    /// Starts a daemon, or returns `None` (with the reason printed) when sshd is not installed.
    pub fn start() -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            let reason = format!("{SSHD} not found (install openssh-server)");
            if sshd_required() {
                panic!("HIL_REQUIRE_SSHD=1 but {reason}");
            }
            eprintln!("skipping SSH integration test: {reason}");
            return None;
        }
        // sshd's privilege-separation directory; packages create it at boot, containers often lack it.
        if !Path::new("/run/sshd").exists() {
            let _ = fs::create_dir_all("/run/sshd");
        }
        let dir = tempfile::Builder::new().prefix("hil-sshd-").tempdir().expect("tempdir");
        let host_key = dir.path().join("ssh_host_ed25519_key");
        let host_public_key = keygen(&host_key);
        let client_key = dir.path().join("client_ed25519");
        let client_public = keygen(&client_key);
        fs::write(dir.path().join("authorized_keys"), format!("{client_public}\n")).unwrap();

        // A port chosen by binding :0 can be taken by someone else before sshd
        // binds it; retry with a fresh one when the daemon exits at start.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log = dir.path().join(format!("sshd-{port}.log"));
            let config = dir.path().join("sshd_config");
            fs::write(&config, sshd_config(dir.path(), port, &host_key)).unwrap();
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {SSHD}: {e}"));
            if !wait_until_listening(&mut child, port, Duration::from_secs(10)) {
                let _ = child.kill();
                let _ = child.wait();
                last_log = fs::read_to_string(&log).unwrap_or_default();
                continue;
            }
            let known_hosts = dir.path().join("known_hosts");
            fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_public_key}\n")).unwrap();
            return Some(Sshd {
                dir,
                port,
                user: current_user(),
                client_key,
                host_public_key,
                known_hosts,
                log,
                child,
            });
        }
        panic!("sshd did not start on any of 5 ports; last log:\n{last_log}");
    }

    /// The listener's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Pids of the per-connection sshd processes (children of the listener).
    pub fn connection_pids(&self) -> Vec<i32> {
        children_of(self.pid() as i32)
    }

    /// Kills every process serving a connection, as a dropped network link
    /// would end them; the listener stays up so a reconnect succeeds.
    pub fn kill_connections(&self) -> usize {
        let pids = self.connection_pids();
        for &pid in &pids {
            // SAFETY: kill(2) on a pid we just read as a child of our own sshd.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        pids.len()
    }

    /// Kills the listener and every connection: the board is gone.
    pub fn stop(&mut self) {
        self.kill_connections();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A known_hosts file in the fixture directory with `content`.
    pub fn write_known_hosts(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, content).unwrap();
        path
    }

    /// A known_hosts line for this server's address but a different (freshly generated) key.
    pub fn wrong_key_line(&self) -> String {
        let other = self.dir.path().join(format!("impostor_{}", rand_suffix()));
        format!("[127.0.0.1]:{} {}", self.port, keygen(&other))
    }

    /// A key pair the server does not accept.
    pub fn unauthorised_key(&self) -> PathBuf {
        let path = self.dir.path().join(format!("stranger_{}", rand_suffix()));
        keygen(&path);
        path
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many logins sshd accepted so far (its `Accepted publickey` log lines).
    pub fn accepted_logins(&self) -> usize {
        self.log_text().lines().filter(|l| l.contains("Accepted publickey")).count()
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl Drop for Sshd {
    fn drop(&mut self) {
        for pid in self.connection_pids() {
            // SAFETY: as in kill_connections.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd_config(dir: &Path, port: u16, host_key: &Path) -> String {
    format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {host_key}\n\
         PidFile {dir}/sshd.pid\n\
         AuthorizedKeysFile {dir}/authorized_keys\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         UsePAM no\n\
         StrictModes no\n\
         Subsystem sftp internal-sftp\n\
         MaxStartups 50\n\
         MaxSessions 20\n\
         LogLevel INFO\n",
        host_key = host_key.display(),
        dir = dir.display(),
    )
}

/// Pids whose parent is `parent`, from /proc.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // Fields after the parenthesised command name: state, ppid, ...
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                .is_some_and(|ppid| ppid == parent)
        })
        .collect()
}
