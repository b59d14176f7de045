//! DVFS control through the Linux cpufreq and thermal sysfs interfaces.
//!
//! How the pieces fit:
//!
//! - [`Sysfs`] names the tree (`sysfs_root`, `/sys` on a real board, a fake
//!   tree for the simulated board and the tests) and whether writes go through
//!   `sudo`; every read and write goes through it and a `&mut dyn Board`, so
//!   DVFS runs the same over SSH and locally.
//! - [`policy`] discovers cpufreq policies ([`CpufreqPolicy`]: related CPUs,
//!   frequencies, governors) and reads their settings ([`PolicySettings`]).
//! - [`write_order`] is pure: which sysfs writes pin a frequency and which
//!   restore saved settings, in an order the kernel accepts.
//! - [`restore`] saves the settings before anything is touched (also to a
//!   restore file on the board), and restores them: [`DvfsGuard`] for a run,
//!   [`recover_from_restore_file`] after a crash.
//! - [`readback`] checks that a pinned frequency holds; [`residency`] compares
//!   `stats/time_in_state` snapshots to detect throttling; [`thermal`] reads
//!   thermal zones and waits for cool-down.
//!
//! All decisions (write order, restore plan, "does the frequency hold", "was
//! time spent elsewhere", "cool enough yet") are plain functions over plain
//! data; the board I/O wraps them.

pub mod pin;
pub mod policy;
pub mod readback;
pub mod residency;
pub mod restore;
pub mod thermal;
pub mod write_order;

mod parse;

use std::fmt;
use std::time::{Duration, Instant};

use crate::board::{Board, BoardError, ErrorKind, SYSFS_ATTRIBUTE_LIMIT};

pub use pin::{apply_writes, pin_policy};
pub use policy::{discover_policies, read_policy, read_settings, CpufreqPolicy, FrequencySource, PolicySettings};
pub use readback::{frequency_holds, read_back, FrequencyReadback, DEFAULT_FREQ_TOLERANCE_KHZ};
pub use residency::{read_time_in_state, residency_between, FrequencyResidency, TimeInState};
pub use restore::{
    recover_from_restore_file, restore_file_path, restore_policies, save_policies, DvfsGuard, DvfsRestoreFile,
    SavedPolicyState, RESTORE_FILE_FORMAT, RESTORE_FILE_NAME,
};
pub use thermal::{
    cool_down_step, list_thermal_zones, read_zone_temp, resolve_thermal_zone, wait_for_cool_down, CoolDownReport,
    CoolDownStep, ThermalZone, ThermalZoneSelector,
};
pub use write_order::{
    limit_write_order, plan_pin, plan_restore, CpufreqWrite, FreqRange, PinMethod, PinPlan, PinPlanError, PinStrategy,
};

/// Where the sysfs tree is on the board and how to write to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysfs {
    root: String,
    sudo: bool,
}

impl Sysfs {
    /// `root` is the scenario's `sysfs_root` (`/sys` on a real board); `sudo`
    /// makes writes go through `sudo -n` (sysfs attributes are root-only).
    pub fn new(root: impl Into<String>, sudo: bool) -> Self {
        let root: String = root.into();
        // "/sys/" and "/sys" name the same tree; keep "/" itself intact.
        let trimmed = root.trim_end_matches('/');
        let root = if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() };
        Self { root, sudo }
    }

    /// The real tree, written as root through `sudo` or not.
    pub fn system(sudo: bool) -> Self {
        Self::new("/sys", sudo)
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn sudo(&self) -> bool {
        self.sudo
    }

    fn join(&self, rest: &str) -> String {
        if self.root == "/" {
            format!("/{rest}")
        } else {
            format!("{}/{rest}", self.root)
        }
    }

    /// `<root>/devices/system/cpu`.
    pub fn cpu_dir(&self) -> String {
        self.join("devices/system/cpu")
    }

    /// `<root>/devices/system/cpu/cpufreq`.
    pub fn cpufreq_dir(&self) -> String {
        self.join("devices/system/cpu/cpufreq")
    }

    /// `<root>/devices/system/cpu/cpufreq/policy<N>/<file>`; `file` may contain
    /// a subdirectory (`stats/time_in_state`).
    pub fn policy_path(&self, policy: u32, file: &str) -> String {
        format!("{}/policy{policy}/{file}", self.cpufreq_dir())
    }

    /// `<root>/class/thermal`.
    pub fn thermal_dir(&self) -> String {
        self.join("class/thermal")
    }

    /// `<root>/class/thermal/thermal_zone<N>/<file>`.
    pub fn thermal_zone_path(&self, zone: u32, file: &str) -> String {
        format!("{}/thermal_zone{zone}/{file}", self.thermal_dir())
    }

    /// Reads a sysfs attribute as trimmed text.
    pub(crate) fn read_text(
        &self,
        board: &mut dyn Board,
        policy: Option<u32>,
        path: &str,
    ) -> Result<String, DvfsError> {
        let bytes = board
            .read_file_limited(path, SYSFS_ATTRIBUTE_LIMIT)
            .map_err(|e| DvfsError::transport(board.name(), policy, path, "reading", e))?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    }

    /// Reads an attribute that a board may lack or refuse to a normal user
    /// (`cpuinfo_cur_freq` is mode 0400, `scaling_available_frequencies` is
    /// absent under many drivers): `None` then. A dropped connection or a
    /// timeout is still an error: the answer is unknown, not absent; so is an attribute past
    /// [`SYSFS_ATTRIBUTE_LIMIT`] (it is there, and it is not a sysfs attribute).
    pub(crate) fn read_optional(
        &self,
        board: &mut dyn Board,
        policy: Option<u32>,
        path: &str,
    ) -> Result<Option<String>, DvfsError> {
        match board.read_file_limited(path, SYSFS_ATTRIBUTE_LIMIT) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string())),
            Err(e) if e.kind.is_retryable() || e.kind == ErrorKind::Limit => {
                Err(DvfsError::transport(board.name(), policy, path, "reading", e))
            }
            Err(_) => Ok(None),
        }
    }

    /// Writes one attribute (with `sudo` when configured). A refusal that
    /// looks like missing permission becomes [`DvfsErrorKind::ReadOnly`] with
    /// advice.
    pub(crate) fn write_text(
        &self,
        board: &mut dyn Board,
        policy: Option<u32>,
        path: &str,
        value: &str,
    ) -> Result<(), DvfsError> {
        board.write_file(path, value.as_bytes(), self.sudo).map_err(|e| {
            if !e.kind.is_retryable() && looks_like_permission_denied(&e.detail) {
                DvfsError::read_only(board.name(), policy, path, value, self.sudo, &e.detail)
            } else {
                DvfsError::transport(board.name(), policy, path, &format!("writing {value:?}"), e)
            }
        })
    }
}

/// Whether a transport's error text says the file refused the write for lack
/// of permission (local `EACCES`/`EPERM`/`EROFS`, SFTP "permission denied",
/// `sudo -n` wanting a password).
pub fn looks_like_permission_denied(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    ["permission denied", "operation not permitted", "read-only file system", "a password is required"]
        .iter()
        .any(|needle| d.contains(needle))
}

/// What went wrong, for callers that decide (retry, skip the board, abort)
/// without parsing messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DvfsErrorKind {
    /// The board transport failed reading or writing an attribute.
    Transport(ErrorKind),
    /// The attribute refused a write for lack of permission.
    ReadOnly,
    /// An attribute's contents were not what the kernel documents.
    Parse,
    /// No cpufreq policy (or not the one asked for) exists.
    NoPolicy,
    /// The requested frequency or governor is not offered by the policy.
    Unsupported,
    /// The frequency read back differs from the one requested.
    FrequencyNotHeld,
    /// No thermal zone matches.
    NoThermalZone,
    /// The thermal zone stayed above the threshold for the whole timeout.
    CoolDownTimeout,
    /// The restore file could not be read, parsed, written or removed.
    RestoreFile,
    /// A wait (the cool-down) stopped because the user asked to stop.
    Interrupted,
}

/// A DVFS error naming the board, the policy, the path and what happened.
#[derive(Clone, Debug)]
pub struct DvfsError {
    pub board: String,
    pub policy: Option<u32>,
    pub path: Option<String>,
    pub kind: DvfsErrorKind,
    pub detail: String,
}

impl fmt::Display for DvfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "board {}", self.board)?;
        if let Some(policy) = self.policy {
            write!(f, ": cpufreq policy{policy}")?;
        }
        if let Some(path) = &self.path {
            write!(f, ": {path}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

impl std::error::Error for DvfsError {}

impl DvfsError {
    pub fn new(
        board: &str,
        policy: Option<u32>,
        path: Option<&str>,
        kind: DvfsErrorKind,
        detail: impl Into<String>,
    ) -> Self {
        Self { board: board.to_string(), policy, path: path.map(str::to_string), kind, detail: detail.into() }
    }

    /// Worth a reconnect-and-retry (the connection dropped or timed out).
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, DvfsErrorKind::Transport(k) if k.is_retryable())
    }

    pub(crate) fn transport(board: &str, policy: Option<u32>, path: &str, doing: &str, e: BoardError) -> Self {
        Self::new(board, policy, Some(path), DvfsErrorKind::Transport(e.kind), format!("{doing} failed: {}", e.detail))
    }

    pub(crate) fn read_only(board: &str, policy: Option<u32>, path: &str, value: &str, sudo: bool, why: &str) -> Self {
        let advice = if sudo {
            "even through `sudo -n`: check that the board's sudoers allows the harness user to run `tee` without a \
             password, and that the file is writable by root (not a read-only mount)"
        } else {
            "cpufreq attributes are writable by root only: set `sudo: true` for this board in the scenario (and allow \
             passwordless `sudo tee` for the harness user), or connect as root"
        };
        Self::new(
            board,
            policy,
            Some(path),
            DvfsErrorKind::ReadOnly,
            format!("not writable (writing {value:?}: {why}); {advice}"),
        )
    }

    pub(crate) fn parse(board: &str, policy: Option<u32>, path: &str, what: impl fmt::Display) -> Self {
        Self::new(board, policy, Some(path), DvfsErrorKind::Parse, what.to_string())
    }
}

/// A monotonic clock that can sleep, injectable so waits are tested without
/// waiting.
pub trait Clock {
    /// Time since an arbitrary fixed origin.
    fn now(&self) -> Duration;
    fn sleep(&mut self, duration: Duration);
}

/// The real clock.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_a_custom_root() {
        let s = Sysfs::new("/tmp/fake/", false);
        assert_eq!(s.root(), "/tmp/fake");
        assert_eq!(
            s.policy_path(4, "stats/time_in_state"),
            "/tmp/fake/devices/system/cpu/cpufreq/policy4/stats/time_in_state"
        );
        assert_eq!(s.thermal_zone_path(1, "temp"), "/tmp/fake/class/thermal/thermal_zone1/temp");
        assert_eq!(Sysfs::new("/", false).cpufreq_dir(), "/devices/system/cpu/cpufreq");
        assert_eq!(Sysfs::system(true).cpufreq_dir(), "/sys/devices/system/cpu/cpufreq");
    }

    #[test]
    fn permission_texts_are_recognised() {
        assert!(looks_like_permission_denied("Permission denied (os error 13)"));
        assert!(looks_like_permission_denied("sudo: a password is required"));
        assert!(looks_like_permission_denied("Read-only file system (os error 30)"));
        assert!(!looks_like_permission_denied("Invalid argument (os error 22)"));
        assert!(!looks_like_permission_denied("Is a directory (os error 21)"));
    }

    #[test]
    fn error_display_names_board_policy_and_path() {
        let e = DvfsError::read_only("rpi4", Some(0), "/sys/x/scaling_max_freq", "600000", false, "Permission denied");
        let text = e.to_string();
        assert!(text.starts_with("board rpi4: cpufreq policy0: /sys/x/scaling_max_freq: not writable"), "{text}");
        assert!(text.contains("sudo: true"), "{text}");
        assert!(!e.is_retryable());
    }
}
