//! Test doubles shared by the `dvfs_*` integration tests.
//!
//! [`KernelLikeBoard`] is a [`LocalBoard`] over a fake sysfs tree in a
//! temporary directory, with the cpufreq semantics the static tree lacks,
//! written like an old (pre-5.3) kernel so that a wrong write order fails:
//!
//! - a `scaling_min_freq` above the current max, or a `scaling_max_freq`
//!   below the current min, is refused with `EINVAL`;
//! - `scaling_setspeed` is refused with `EINVAL` unless the governor is
//!   `userspace`; a governor the policy does not offer is refused too;
//! - after each accepted write, `scaling_cur_freq`/`cpuinfo_cur_freq` follow
//!   the governor (userspace: the set speed; performance: max; powersave:
//!   min; others: the old frequency clamped into the limits).
//!
//! It also logs every write (for order assertions) and can refuse writes to
//! chosen files with `EACCES`. That is how the tests simulate a read-only
//! attribute: they run as root here, and root ignores file modes, so a
//! `chmod 0444` file would still be written.

#![allow(dead_code)]

pub use harness::sim::sysfs;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::board::local::LocalBoard;
use harness::board::{Board, BoardError, ErrorKind, ExecOutput, InteractiveSession};
use harness::dvfs::Clock;

pub const LEVELS: [u64; 5] = [600_000, 750_000, 1_000_000, 1_200_000, 1_500_000];

pub struct KernelLikeBoard {
    inner: LocalBoard,
    name: String,
    /// Apply cpufreq semantics after writes (off: a driver that ignores requests).
    pub frequency_follows: bool,
    /// `(path, value)` of every accepted sysfs write, in order.
    pub writes: Vec<(String, String)>,
    /// File names (e.g. `scaling_setspeed`) whose writes fail with `EACCES`.
    pub refuse_writes_to: HashSet<String>,
    /// Fail every write after this many accepted ones (a board that breaks mid-run).
    pub fail_after_writes: Option<usize>,
    /// Paths last read, for asserting what was read.
    pub reads: Vec<String>,
    /// While set, every sysfs write fails with `EIO` (shared, so a test can
    /// flip it while a guard borrows the board).
    pub writes_blocked: Arc<AtomicBool>,
    /// Sysfs writes attempted, accepted or not.
    pub write_attempts: Arc<AtomicUsize>,
}

impl KernelLikeBoard {
    pub fn new(name: &str) -> Self {
        Self {
            inner: LocalBoard::new(name),
            name: name.to_string(),
            frequency_follows: true,
            writes: Vec::new(),
            refuse_writes_to: HashSet::new(),
            fail_after_writes: None,
            reads: Vec::new(),
            writes_blocked: Arc::new(AtomicBool::new(false)),
            write_attempts: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Sysfs writes (restore-file writes excluded) as `(file name, value)`.
    pub fn sysfs_writes(&self) -> Vec<(String, String)> {
        self.writes
            .iter()
            .filter(|(p, _)| !p.ends_with(".json"))
            .map(|(p, v)| (Path::new(p).file_name().unwrap().to_string_lossy().into_owned(), v.clone()))
            .collect()
    }

    fn einval(&self, path: &str, why: &str) -> BoardError {
        BoardError::new(
            &self.name,
            ErrorKind::Remote,
            format!("write {path}"),
            format!("Invalid argument (os error 22): {why}"),
        )
    }

    /// Checks a write like the kernel would, before it lands.
    fn check(&self, path: &Path, value: &str) -> Result<(), BoardError> {
        let p = path.to_string_lossy();
        let Some(dir) = path.parent() else { return Ok(()) };
        let file = path.file_name().unwrap().to_string_lossy();
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default().trim().to_string();
        let num = |name: &str| read(name).parse::<u64>().unwrap_or(0);
        match file.as_ref() {
            "scaling_min_freq" => {
                let v: u64 = value.trim().parse().map_err(|_| self.einval(&p, "not a number"))?;
                if v > num("scaling_max_freq") {
                    return Err(self.einval(&p, "min above max"));
                }
            }
            "scaling_max_freq" => {
                let v: u64 = value.trim().parse().map_err(|_| self.einval(&p, "not a number"))?;
                if v < num("scaling_min_freq") {
                    return Err(self.einval(&p, "max below min"));
                }
            }
            "scaling_setspeed" if read("scaling_governor") != "userspace" => {
                return Err(self.einval(&p, "governor is not userspace"))
            }
            "scaling_governor"
                if !read("scaling_available_governors").split_whitespace().any(|g| g == value.trim()) =>
            {
                return Err(self.einval(&p, "unknown governor"))
            }
            _ => {}
        }
        Ok(())
    }

    /// Recomputes the current frequency of the policy in `dir`.
    fn settle(dir: &Path, changed: &str) {
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default().trim().to_string();
        let num = |name: &str| read(name).parse::<u64>().unwrap_or(0);
        let governor = read("scaling_governor");
        let (min, max) = (num("scaling_min_freq"), num("scaling_max_freq"));
        if changed == "scaling_governor" {
            let setspeed = if governor == "userspace" { read("scaling_cur_freq") } else { "<unsupported>".into() };
            fs::write(dir.join("scaling_setspeed"), format!("{setspeed}\n")).unwrap();
        }
        let cur = match governor.as_str() {
            "userspace" => num("scaling_setspeed"),
            "performance" => max,
            "powersave" => min,
            _ => num("scaling_cur_freq"),
        }
        .clamp(min, max.max(min));
        fs::write(dir.join("scaling_cur_freq"), format!("{cur}\n")).unwrap();
        if dir.join("cpuinfo_cur_freq").exists() {
            fs::write(dir.join("cpuinfo_cur_freq"), format!("{cur}\n")).unwrap();
        }
    }
}

impl Board for KernelLikeBoard {
    fn name(&self) -> &str {
        &self.name
    }

    fn exec(&mut self, argv: &[String], timeout: Duration) -> Result<ExecOutput, BoardError> {
        self.inner.exec(argv, timeout)
    }

    fn spawn(&mut self, argv: &[String]) -> Result<Box<dyn InteractiveSession>, BoardError> {
        self.inner.spawn(argv)
    }

    fn upload(&mut self, local: &Path, remote: &str, mode: u32) -> Result<(), BoardError> {
        self.inner.upload(local, remote, mode)
    }

    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, BoardError> {
        self.reads.push(path.to_string());
        self.inner.read_file(path)
    }

    fn write_file(&mut self, path: &str, data: &[u8], sudo: bool) -> Result<(), BoardError> {
        let value = String::from_utf8_lossy(data).into_owned();
        let p = Path::new(path);
        let file = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        if self.refuse_writes_to.contains(&file) {
            return Err(BoardError::new(
                &self.name,
                ErrorKind::Remote,
                format!("write {path}"),
                "Permission denied (os error 13)",
            ));
        }
        let is_restore_file = path.ends_with(".json");
        if !is_restore_file {
            self.write_attempts.fetch_add(1, Ordering::SeqCst);
            if self.writes_blocked.load(Ordering::SeqCst) {
                return Err(BoardError::new(
                    &self.name,
                    ErrorKind::Remote,
                    format!("write {path}"),
                    "Input/output error (os error 5)",
                ));
            }
        }
        if let Some(limit) = self.fail_after_writes {
            if self.writes.len() >= limit && !path.ends_with(".json") {
                return Err(BoardError::new(
                    &self.name,
                    ErrorKind::Remote,
                    format!("write {path}"),
                    "Input/output error (os error 5)",
                ));
            }
        }
        let is_cpufreq = path.contains("/cpufreq/policy");
        if is_cpufreq {
            self.check(p, &value)?;
        }
        self.inner.write_file(path, data, sudo)?;
        self.writes.push((path.to_string(), value));
        if is_cpufreq && self.frequency_follows {
            Self::settle(p.parent().unwrap(), &file);
        }
        Ok(())
    }

    fn reconnect(&mut self) -> Result<(), BoardError> {
        self.inner.reconnect()
    }

    fn transport(&self) -> &'static str {
        "local"
    }
}

/// A clock that advances only when slept on, calling `on_sleep` each time
/// (to change the fake tree as time passes).
pub struct FakeClock<F: FnMut(Duration)> {
    pub now: Duration,
    pub sleeps: Vec<Duration>,
    pub on_sleep: F,
}

impl<F: FnMut(Duration)> FakeClock<F> {
    pub fn new(on_sleep: F) -> Self {
        Self { now: Duration::ZERO, sleeps: Vec::new(), on_sleep }
    }
}

impl<F: FnMut(Duration)> Clock for FakeClock<F> {
    fn now(&self) -> Duration {
        self.now
    }

    fn sleep(&mut self, duration: Duration) {
        self.now += duration;
        self.sleeps.push(duration);
        (self.on_sleep)(self.now);
    }
}

/// A snapshot of every regular file under `root` (path -> contents) except
/// the current-frequency readings (which a governor moves on its own), to
/// check a tree's settings are restored exactly. Values are compared without
/// the trailing newline, which sysfs adds on read whatever was written.
pub fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let ty = entry.file_type().unwrap();
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() && !entry.file_name().to_string_lossy().ends_with("cur_freq") {
                let text = fs::read_to_string(entry.path()).unwrap();
                out.push((entry.path().to_string_lossy().into_owned(), text.trim_end().to_string()));
            }
        }
    }
    out.sort();
    out
}
