//! Saving cpufreq settings before a run and putting them back afterwards,
//! even after a crash.
//!
//! Three layers of protection, from the common case to the worst:
//!
//! 1. [`DvfsGuard::restore`], called by the runner when a board's cells end
//!    (success, error or Ctrl-C noticed by the runner);
//! 2. [`DvfsGuard`]'s `Drop`, for early returns and panics that skip (1);
//! 3. the restore file: the saved settings are written to the board
//!    *before* the first sysfs write and removed only after a successful
//!    restore, so when `hil` is killed (SIGKILL, power loss on the host, a
//!    dropped SSH connection that never came back) the next connect finds it
//!    and [`recover_from_restore_file`] puts the board back first.
//!
//! Because the file is complete before anything is touched, a restore file
//! always describes the board's state before the harness changed it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pin::{apply_writes, pin_policy};
use super::policy::{read_policy, read_settings, CpufreqPolicy, PolicySettings};
use super::readback::{read_back, FrequencyReadback};
use super::residency::{read_time_in_state, TimeInState};
use super::write_order::{plan_restore, CpufreqWrite, PinPlan, PinStrategy};
use super::{Clock, DvfsError, DvfsErrorKind, Sysfs};
use crate::board::{Board, ErrorKind, RESTORE_FILE_LIMIT};

/// Version of the restore file's JSON layout; a file with another version is
/// refused rather than misread.
pub const RESTORE_FILE_FORMAT: u32 = 1;

/// The restore file's name in the board's workdir.
pub const RESTORE_FILE_NAME: &str = "hil-dvfs-restore.json";

/// `<workdir>/hil-dvfs-restore.json`: where a board's restore file lives.
pub fn restore_file_path(workdir: &str) -> String {
    format!("{}/{RESTORE_FILE_NAME}", workdir.trim_end_matches('/'))
}

/// Timeout for the small commands (`test -e`, `rm -f`) around the restore file.
const FILE_COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// One policy's settings as found before the harness touched it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPolicyState {
    pub policy: u32,
    #[serde(flatten)]
    pub settings: PolicySettings,
}

/// The restore file's contents (JSON), also recorded in `run.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DvfsRestoreFile {
    pub format: u32,
    pub board: String,
    /// The tree the settings were read from; recovery writes them back there.
    pub sysfs_root: String,
    /// UTC, RFC 3339.
    pub saved_at: String,
    pub policies: Vec<SavedPolicyState>,
}

impl DvfsRestoreFile {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("restore file is plain data")
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.format != RESTORE_FILE_FORMAT {
            return Err(format!(
                "format {} (this hil reads format {RESTORE_FILE_FORMAT}); restore the settings by hand",
                file.format
            ));
        }
        Ok(file)
    }
}

/// Reads the settings of `policy_ids` and writes them to `restore_path` on
/// the board, before anything else is written.
///
/// Refuses when a restore file already exists: it holds the state from
/// before an earlier run that did not finish, which overwriting would lose.
/// Call [`recover_from_restore_file`] first.
pub fn save_policies(
    board: &mut dyn Board,
    sysfs: &Sysfs,
    policy_ids: &[u32],
    restore_path: &str,
) -> Result<DvfsRestoreFile, DvfsError> {
    // Too large to read is there all the same: refuse as for a readable one.
    let existing = board.read_file_limited(restore_path, RESTORE_FILE_LIMIT);
    if existing.is_ok() || existing.is_err_and(|e| e.kind == ErrorKind::Limit) {
        return Err(DvfsError::new(
            board.name(),
            None,
            Some(restore_path),
            DvfsErrorKind::RestoreFile,
            "a restore file from an earlier, unfinished run exists: recover from it first (`hil run` does this on \
             connect) so the original settings are not overwritten",
        ));
    }
    let mut policies = Vec::with_capacity(policy_ids.len());
    for &id in policy_ids {
        policies.push(SavedPolicyState { policy: id, settings: read_settings(board, sysfs, id)? });
    }
    let file = DvfsRestoreFile {
        format: RESTORE_FILE_FORMAT,
        board: board.name().to_string(),
        sysfs_root: sysfs.root().to_string(),
        saved_at: chrono::Utc::now().to_rfc3339(),
        policies,
    };
    // The workdir belongs to the harness user: no sudo, so the file stays
    // removable without it.
    board.write_file(restore_path, file.to_json().as_bytes(), false).map_err(|e| {
        DvfsError::new(
            board.name(),
            None,
            Some(restore_path),
            DvfsErrorKind::RestoreFile,
            format!("cannot write the restore file (nothing was changed on the board): {}", e.detail),
        )
    })?;
    Ok(file)
}

/// Puts every saved policy back: reads its current settings and writes only
/// what differs, limits in the safe order ([`plan_restore`]). Keeps going
/// after a policy fails, so one bad policy does not leave the others pinned;
/// returns the writes made per policy, or the first error (mentioning how
/// many policies failed).
pub fn restore_policies(
    board: &mut dyn Board,
    sysfs: &Sysfs,
    saved: &[SavedPolicyState],
) -> Result<Vec<(u32, Vec<CpufreqWrite>)>, DvfsError> {
    let mut done = Vec::with_capacity(saved.len());
    let mut errors: Vec<DvfsError> = Vec::new();
    for state in saved {
        let result = read_settings(board, sysfs, state.policy).and_then(|current| {
            let writes = plan_restore(&current, &state.settings);
            apply_writes(board, sysfs, state.policy, &writes).map(|()| writes)
        });
        match result {
            Ok(writes) => done.push((state.policy, writes)),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(done),
        1 => Err(errors.remove(0)),
        n => {
            let mut first = errors.remove(0);
            first.detail = format!("{} (and {} more policies failed to restore)", first.detail, n - 1);
            Err(first)
        }
    }
}

fn remove_restore_file(board: &mut dyn Board, path: &str) -> Result<(), DvfsError> {
    let argv = ["rm", "-f", "--", path].map(str::to_string);
    let out = board.exec(&argv, FILE_COMMAND_TIMEOUT).map_err(|e| {
        DvfsError::new(
            board.name(),
            None,
            Some(path),
            DvfsErrorKind::RestoreFile,
            format!("cannot remove: {}", e.detail),
        )
    })?;
    if out.success() {
        Ok(())
    } else {
        Err(DvfsError::new(
            board.name(),
            None,
            Some(path),
            DvfsErrorKind::RestoreFile,
            format!("cannot remove the restore file: `rm` exited with {}: {}", out.status, out.stderr_str().trim()),
        ))
    }
}

/// After a crash: when `restore_path` exists on the board, restores the
/// settings it holds and removes it. `Ok(None)` when there is no file (the
/// previous run ended cleanly). The runner calls this first on every
/// connect, before probing or saving.
///
/// Writes go through `sudo` as `sysfs` says (the scenario's current
/// setting), but under the `sysfs_root` recorded in the file: that is where
/// the settings were read, even if the scenario has changed since.
pub fn recover_from_restore_file(
    board: &mut dyn Board,
    sysfs: &Sysfs,
    restore_path: &str,
) -> Result<Option<DvfsRestoreFile>, DvfsError> {
    let bytes = match board.read_file_limited(restore_path, RESTORE_FILE_LIMIT) {
        Ok(bytes) => bytes,
        Err(e) if e.kind.is_retryable() => {
            return Err(DvfsError::transport(board.name(), None, restore_path, "reading the restore file", e))
        }
        Err(read_error) => {
            // Absent (the normal case) or unreadable? The transport's error
            // text differs between SFTP and local files; `test -e` does not.
            let argv = ["test", "-e", restore_path].map(str::to_string);
            let out = board
                .exec(&argv, FILE_COMMAND_TIMEOUT)
                .map_err(|e| DvfsError::transport(board.name(), None, restore_path, "checking for", e))?;
            return match out.status {
                1 => Ok(None),
                _ => Err(DvfsError::new(
                    board.name(),
                    None,
                    Some(restore_path),
                    DvfsErrorKind::RestoreFile,
                    format!("the restore file exists but cannot be read: {}", read_error.detail),
                )),
            };
        }
    };
    let file = DvfsRestoreFile::from_json(&String::from_utf8_lossy(&bytes)).map_err(|e| {
        DvfsError::new(
            board.name(),
            None,
            Some(restore_path),
            DvfsErrorKind::RestoreFile,
            format!(
                "unreadable restore file ({e}). hil writes it completely before changing any setting, so an \
                 incomplete file means the earlier run stopped before changing anything: check the board's cpufreq \
                 settings and delete the file"
            ),
        )
    })?;
    let recorded = Sysfs::new(file.sysfs_root.clone(), sysfs.sudo());
    restore_policies(board, &recorded, &file.policies)?;
    remove_restore_file(board, restore_path)?;
    Ok(Some(file))
}

/// Holds a board's saved cpufreq settings for the duration of a run and puts
/// them back: explicitly with [`DvfsGuard::restore`] (which reports errors),
/// or on drop (which can only print them).
///
/// The guard borrows the board for its lifetime; the runner reaches the
/// board through [`DvfsGuard::board`] (agent sessions from `spawn` are
/// independent objects and outlive the borrow). Ctrl-C handling stays with
/// the runner: its handler sets a flag, the board's thread notices, and
/// either calls `restore()` or returns and lets the drop do it.
pub struct DvfsGuard<'b> {
    board: &'b mut dyn Board,
    sysfs: Sysfs,
    restore_path: String,
    saved: DvfsRestoreFile,
    policies: Vec<CpufreqPolicy>,
    restored: bool,
    /// Whether `restore()` was called since the last pin: the drop then
    /// leaves a failure to whoever called it (and the restore file).
    restore_attempted: bool,
}

impl std::fmt::Debug for DvfsGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DvfsGuard")
            .field("board", &self.board.name())
            .field("sysfs", &self.sysfs)
            .field("restore_path", &self.restore_path)
            .field("saved", &self.saved)
            .field("restored", &self.restored)
            .field("restore_attempted", &self.restore_attempted)
            .finish()
    }
}

impl<'b> DvfsGuard<'b> {
    /// Reads what `policy_ids` are, saves their settings (restore file
    /// first) and returns the guard. Nothing is written to sysfs here.
    pub fn save(
        board: &'b mut dyn Board,
        sysfs: Sysfs,
        policy_ids: &[u32],
        restore_path: &str,
    ) -> Result<Self, DvfsError> {
        let mut policies = Vec::with_capacity(policy_ids.len());
        for &id in policy_ids {
            policies.push(read_policy(board, &sysfs, id)?);
        }
        let saved = save_policies(board, &sysfs, policy_ids, restore_path)?;
        Ok(Self {
            board,
            sysfs,
            restore_path: restore_path.to_string(),
            saved,
            policies,
            restored: false,
            restore_attempted: false,
        })
    }

    /// The board, for everything else the runner does meanwhile.
    pub fn board(&mut self) -> &mut dyn Board {
        &mut *self.board
    }

    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    /// The settings saved before the run (for `run.json`).
    pub fn saved(&self) -> &DvfsRestoreFile {
        &self.saved
    }

    /// The policies under guard.
    pub fn policies(&self) -> &[CpufreqPolicy] {
        &self.policies
    }

    pub fn is_restored(&self) -> bool {
        self.restored
    }

    fn guarded_policy(&self, id: u32) -> Result<CpufreqPolicy, DvfsError> {
        self.policies.iter().find(|p| p.id == id).cloned().ok_or_else(|| {
            DvfsError::new(
                self.board.name(),
                Some(id),
                None,
                DvfsErrorKind::NoPolicy,
                format!(
                    "policy{id} was not saved before the run (saved: {:?}); refusing to change what cannot be restored",
                    self.policies.iter().map(|p| p.id).collect::<Vec<_>>()
                ),
            )
        })
    }

    /// Pins one saved policy at `target_khz`.
    pub fn pin(&mut self, id: u32, target_khz: u64, strategy: PinStrategy) -> Result<PinPlan, DvfsError> {
        let policy = self.guarded_policy(id)?;
        // Pinning again after a restore re-arms the guard; the restore file
        // was removed by the restore, so write it again first.
        if self.restored {
            let ids = self.saved_ids();
            self.saved = save_policies(self.board, &self.sysfs, &ids, &self.restore_path)?;
            self.restored = false;
        }
        self.restore_attempted = false;
        pin_policy(self.board, &self.sysfs, &policy, target_khz, strategy)
    }

    /// Reads the frequency back (call after the settle time).
    pub fn read_back(
        &mut self,
        id: u32,
        requested_khz: u64,
        tolerance_khz: u64,
    ) -> Result<FrequencyReadback, DvfsError> {
        read_back(self.board, &self.sysfs, id, requested_khz, tolerance_khz)
    }

    /// Pins, waits `settle` on `clock`, reads back. The readback says whether
    /// the frequency holds; [`FrequencyReadback::ensure_held`] turns a miss
    /// into an error naming requested and read-back frequencies.
    pub fn pin_and_verify(
        &mut self,
        id: u32,
        target_khz: u64,
        strategy: PinStrategy,
        settle: Duration,
        tolerance_khz: u64,
        clock: &mut dyn Clock,
    ) -> Result<FrequencyReadback, DvfsError> {
        self.pin(id, target_khz, strategy)?;
        clock.sleep(settle);
        self.read_back(id, target_khz, tolerance_khz)
    }

    /// A `stats/time_in_state` snapshot of one policy (`None` without
    /// cpufreq stats in the kernel).
    pub fn time_in_state(&mut self, id: u32) -> Result<Option<TimeInState>, DvfsError> {
        read_time_in_state(self.board, &self.sysfs, id)
    }

    fn saved_ids(&self) -> Vec<u32> {
        self.saved.policies.iter().map(|s| s.policy).collect()
    }

    /// Puts the saved settings back and removes the restore file. Safe to
    /// call from any path and more than once; after a success, later calls
    /// do nothing. On failure the restore file stays on the board so the
    /// next connect can try again; calling `restore()` again (say after
    /// reconnecting) retries, while the drop no longer does.
    pub fn restore(&mut self) -> Result<(), DvfsError> {
        if self.restored {
            return Ok(());
        }
        self.restore_attempted = true;
        restore_policies(self.board, &self.sysfs, &self.saved.policies)?;
        remove_restore_file(self.board, &self.restore_path)?;
        self.restored = true;
        Ok(())
    }
}

impl Drop for DvfsGuard<'_> {
    fn drop(&mut self) {
        // A failed explicit restore was already reported by its caller; only
        // paths that never restored (early returns, panics) restore here.
        if !self.restored && !self.restore_attempted {
            if let Err(e) = self.restore() {
                // Drop cannot return the error; the restore file stays on the
                // board and the next connect retries from it.
                eprintln!(
                    "hil: restoring cpufreq settings failed: {e}; {} keeps them for the next run",
                    self.restore_path
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_file_lives_in_the_workdir() {
        assert_eq!(restore_file_path("/home/pi/hil/"), "/home/pi/hil/hil-dvfs-restore.json");
    }

    #[test]
    fn restore_file_round_trips_and_rejects_other_formats() {
        let file = DvfsRestoreFile {
            format: RESTORE_FILE_FORMAT,
            board: "rpi4".into(),
            sysfs_root: "/sys".into(),
            saved_at: "2025-01-01T00:00:00+00:00".into(),
            policies: vec![SavedPolicyState {
                policy: 0,
                settings: PolicySettings {
                    governor: "ondemand".into(),
                    min_khz: 600_000,
                    max_khz: 1_500_000,
                    setspeed_khz: None,
                },
            }],
        };
        let json = file.to_json();
        assert!(json.contains("\"governor\": \"ondemand\""), "{json}");
        assert_eq!(DvfsRestoreFile::from_json(&json).unwrap(), file);
        let other = json.replace("\"format\": 1", "\"format\": 2");
        assert!(DvfsRestoreFile::from_json(&other).unwrap_err().contains("format 2"));
        assert!(DvfsRestoreFile::from_json(&json[..json.len() / 2]).is_err());
    }
}
