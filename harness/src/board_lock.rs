//! One hil process per board on this host.
//!
//! Two runs on one board would corrupt each other: each pins the CPU frequency
//! the other measures at, each takes the other's saved cpufreq settings for a
//! crashed run's and "restores" them, and a simulated board's tree, agent and
//! emulated monitor are started over under the first run's feet. So a board's
//! session (a run, or the probe of a simulated board, which starts its
//! simulator) holds an exclusive lock on a file in the host's temporary
//! directory, named after what identifies the board:
//!
//! - an SSH board: its host, port and sysfs root (`/sys` on a real board: its
//!   cpufreq is the board's, whatever workdir or user a scenario names; test
//!   boards behind one SSH server differ by their fake trees);
//! - a simulated board: its workdir (the simulator's tree lives there);
//! - any other local board: its sysfs root (the host's own cpufreq, `/sys`).
//!
//! The lock is the kernel's `flock`, taken without waiting and released when
//! the [`BoardLock`] is dropped or the process ends however it ends (a
//! `kill -9` leaves no stale lock). It holds among processes on this host;
//! boards shared between hosts are reserved through labgrid, whose places are
//! exclusive ([`crate::lab`]). Keys are the scenario's own strings: one board
//! reached under two names (a host name and its address, an `~/.ssh/config`
//! alias, two paths to one fake tree) has two keys and is not protected
//! against itself.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::scenario::{BoardSpec, TransportSpec};

/// Directory of the lock files (created on first use, writable by every user so
/// that two users' runs exclude each other too).
pub fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("hil-board-locks")
}

/// What identifies `spec`'s board on this host (see the module docs).
pub fn board_key(spec: &BoardSpec) -> String {
    match &spec.transport {
        TransportSpec::Ssh(ssh) => format!("ssh {}:{} {}", ssh.host, ssh.port, spec.sysfs_root),
        TransportSpec::Local if spec.sim => format!("sim {}", spec.workdir),
        TransportSpec::Local => format!("local {}", spec.sysfs_root),
    }
}

/// Why a board could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the board is in use by another hil process on this host ({holder}; lock {path}): wait for it to \
         finish or stop it; two runs on one board pin each other's frequencies and take each other's saved \
         cpufreq settings"
    )]
    Busy { board: String, holder: String, path: PathBuf },
    #[error("board {board}: cannot use the lock file {path}: {source}")]
    Io {
        board: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive hold on one board, until dropped.
pub struct BoardLock {
    path: PathBuf,
    // Holds the lock: closing the file releases it.
    _file: File,
}

impl fmt::Debug for BoardLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoardLock").field("path", &self.path).finish()
    }
}

impl BoardLock {
    /// Locks `spec`'s board for this process, or says who holds it. `purpose` (e.g.
    /// `hil run sim-rt3.yaml`) is what another process will be told is using the board.
    pub fn acquire(spec: &BoardSpec, purpose: &str) -> Result<Self, LockError> {
        Self::acquire_in(&lock_dir(), &spec.name, &board_key(spec), purpose)
    }

    /// [`Self::acquire`] with the lock file for `key` in `dir`.
    pub fn acquire_in(dir: &Path, board: &str, key: &str, purpose: &str) -> Result<Self, LockError> {
        let path = dir.join(lock_file_name(key));
        let io = |source| LockError::Io { board: board.to_string(), path: path.clone(), source };
        create_shared_dir(dir).map_err(io)?;
        let mut file = open_lock_file(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "holder unknown".to_string()
                } else if holder.starts_with(&format!("pid {},", std::process::id())) {
                    format!(
                        "{holder}: this very process, under another board entry of the scenario naming the same board"
                    )
                } else {
                    holder.to_string()
                };
                return Err(LockError::Busy { board: board.to_string(), holder, path });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the message another process prints.
        let since = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        let note = format!("pid {}, `{purpose}`, since {since}, board {key}\n", std::process::id());
        file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(note.as_bytes())).map_err(io)?;
        Ok(Self { path, _file: file })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens the lock file, creating it readable and writable by every user (so that their
/// processes lock the same file) if it is not there. Never through a symbolic link: the
/// directory is world-writable, and a link planted there must not make this process truncate
/// or re-permission a file elsewhere.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |create_new: bool| {
        let mut options = OpenOptions::new();
        options.read(true).write(true).custom_flags(libc::O_NOFOLLOW);
        if create_new {
            options.create_new(true).mode(0o666);
        }
        options.open(path)
    };
    match open(true) {
        Ok(file) => {
            // The process umask narrowed the mode given at creation.
            let _ = set_mode(path, 0o666);
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => open(false),
        Err(e) => Err(e),
    }
}

/// A readable file name for `key`, made unique by a hash of it.
fn lock_file_name(key: &str) -> String {
    let readable: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).take(60).collect();
    let hash = crate::deploy::sha256_bytes(key.as_bytes());
    format!("{readable}-{}.lock", &hash[..12])
}

fn create_shared_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        // Sticky and world-writable, like /tmp: every user may add a lock, none remove another's.
        let _ = set_mode(dir, 0o1777);
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_note_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = BoardLock::acquire_in(dir.path(), "sim", "sim /tmp/hil-sim", "hil run a.yaml").unwrap();
        let err = BoardLock::acquire_in(dir.path(), "sim", "sim /tmp/hil-sim", "hil run b.yaml").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LockError::Busy { .. }), "{text}");
        assert!(text.contains("board is in use") && text.contains("`hil run a.yaml`"), "{text}");
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        // Another board is independent.
        let other = BoardLock::acquire_in(dir.path(), "sim2", "sim /tmp/other", "hil run b.yaml").unwrap();
        drop(first);
        let again = BoardLock::acquire_in(dir.path(), "sim", "sim /tmp/hil-sim", "hil run b.yaml").unwrap();
        assert_ne!(again.path(), other.path());
    }

    #[test]
    fn a_symbolic_link_in_place_of_the_lock_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let key = "sim /tmp/planted";
        std::os::unix::fs::symlink(&victim, dir.path().join(lock_file_name(key))).unwrap();
        let err = BoardLock::acquire_in(dir.path(), "sim", key, "hil run").unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    }

    #[test]
    fn the_key_is_what_the_board_shares() {
        let scenario = crate::scenario::parse_scenario(
            "boards:\n  - {name: a, sim: true, workdir: /tmp/w1}\n  \
             - {name: b, workdir: /other, transport: ssh, host: 10.0.0.2, user: pi}\n\
             model: {preset: minilm}\nvariants: [{name: dense, kind: dense}]\ndvfs: {levels: all}\n",
            "test.yaml",
        )
        .unwrap();
        let (sim, ssh) = (&scenario.boards[0], &scenario.boards[1]);
        assert_eq!(board_key(sim), "sim /tmp/w1");
        let local = BoardSpec { sim: false, ..sim.clone() };
        assert_eq!(board_key(&local), format!("local {}", local.sysfs_root));
        assert_eq!(board_key(ssh), "ssh 10.0.0.2:22 /sys");
        assert_ne!(lock_file_name("ssh 10.0.0.2:22"), lock_file_name("ssh 10.0.0.2:2222"));
    }
}
