//! Deploying `hil-agent`: build it for the board's target, upload it only when
//! its SHA-256 differs from what the board has, upload atomically, and verify
//! the SHA-256 on the board before anything runs it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::board::Board;

/// A target the agent is built for: a static binary that runs on the board as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentTarget {
    pub triple: &'static str,
    /// `uname -m` values that select it (`target: auto`); empty: only by name.
    pub machines: &'static [&'static str],
    /// What the boards are, for `hil agent targets`.
    pub boards: &'static str,
    /// How the static binary is linked, and what this host must install for it.
    pub linked: &'static str,
    pub install: &'static str,
    /// The user-mode emulator that runs it on an x86-64 host (tests, CI).
    pub emulator: Option<&'static str>,
}

/// Every target `hil` builds the agent for, `target: auto`'s choice per machine first.
pub const AGENT_TARGETS: &[AgentTarget] = &[
    AgentTarget {
        triple: "aarch64-unknown-linux-musl",
        machines: &["aarch64", "arm64"],
        boards: "64-bit ARM: Raspberry Pi 3/4/5 on a 64-bit OS, Jetson, RK3588, most current boards",
        linked: "musl, static, by the Rust-shipped rust-lld",
        install: "rustup target add aarch64-unknown-linux-musl",
        emulator: Some("qemu-aarch64-static (Debian: qemu-user-static)"),
    },
    AgentTarget {
        triple: "thumbv7neon-unknown-linux-gnueabihf",
        // armv8l: a 32-bit userland reporting an ARMv8 core; the 32-bit build runs there whether
        // the kernel is 32- or 64-bit.
        machines: &["armv7l", "armv7", "armhf", "armv7hl", "armv8l"],
        boards: "32-bit ARMv7 with NEON: Odroid-XU4 (Cortex-A15/A7), Raspberry Pi 2/3/4 on 32-bit Raspberry Pi OS, \
                 BeagleBone (Cortex-A8)",
        linked: "glibc, static (+crt-static), by Debian's arm-linux-gnueabihf-gcc; NEON on by default",
        install: "rustup target add thumbv7neon-unknown-linux-gnueabihf && apt-get install gcc-arm-linux-gnueabihf \
                  libc6-dev-armhf-cross",
        emulator: Some("qemu-arm-static (Debian: qemu-user-static)"),
    },
    AgentTarget {
        triple: "armv7-unknown-linux-gnueabihf",
        machines: &[],
        boards: "32-bit ARMv7 without NEON (rare: e.g. Tegra 2); name it with `target:` (auto picks the NEON build)",
        linked: "glibc, static (+crt-static), by Debian's arm-linux-gnueabihf-gcc; scalar kernels",
        install: "rustup target add armv7-unknown-linux-gnueabihf && apt-get install gcc-arm-linux-gnueabihf \
                  libc6-dev-armhf-cross",
        emulator: Some("qemu-arm-static (Debian: qemu-user-static)"),
    },
    AgentTarget {
        triple: "x86_64-unknown-linux-musl",
        machines: &["x86_64", "amd64"],
        boards: "x86-64 boards and hosts (an SSH board on a PC, CI)",
        linked: "musl, static",
        install: "rustup target add x86_64-unknown-linux-musl",
        emulator: None,
    },
];

/// The target named `triple`, if `hil` knows it.
pub fn agent_target(triple: &str) -> Option<&'static AgentTarget> {
    AGENT_TARGETS.iter().find(|t| t.triple == triple)
}

/// The supported targets as lines for help and errors: `triple: boards (install: ...)`.
pub fn describe_agent_targets() -> String {
    AGENT_TARGETS
        .iter()
        .map(|t| {
            format!("  {}\n      {}\n      linked: {}\n      install: {}", t.triple, t.boards, t.linked, t.install)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The Rust target triple for a board's `uname -m`.
pub fn target_for_machine(machine: &str) -> Result<&'static str> {
    let m = machine.trim();
    match AGENT_TARGETS.iter().find(|t| t.machines.contains(&m)) {
        Some(t) => Ok(t.triple),
        None => bail!(
            "no agent target known for machine `{m}`: set `target:` in the board's scenario entry to one of:\n{}",
            describe_agent_targets()
        ),
    }
}

/// The workspace root this `hil` was built from (where `cargo build -p device-agent` works).
pub fn workspace_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("HIL_WORKSPACE") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Where cargo puts the release agent for `target` (None = the host's own target).
pub fn agent_binary_path(root: &Path, target: Option<&str>) -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    match target {
        Some(t) => target_dir.join(t).join("release").join("hil-agent"),
        None => target_dir.join("release").join("hil-agent"),
    }
}

/// Builds the agent in release mode for `target` (None = host target) and returns the binary's path.
/// Cargo's output goes to stderr so the user sees progress; a failed build carries cargo's exit status.
pub fn build_agent(target: Option<&str>) -> Result<PathBuf> {
    let root = workspace_root();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root).args(["build", "--release", "-p", "device-agent", "--bin", "hil-agent"]);
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    if let Some(t) = target.filter(|t| agent_target(t).is_none()) {
        eprintln!("warning: {t} is not one of the targets hil is tested with:\n{}", describe_agent_targets());
    }
    let status = cmd.status().with_context(|| format!("running cargo in {}", root.display()))?;
    if !status.success() {
        let hint = match target.and_then(agent_target) {
            Some(t) => format!("; {} needs: {}", t.triple, t.install),
            None => format!("; the supported targets and what each needs:\n{}", describe_agent_targets()),
        };
        bail!("building hil-agent{} failed ({status}){hint}", target.map(|t| format!(" for {t}")).unwrap_or_default());
    }
    let path = agent_binary_path(&root, target);
    if !path.is_file() {
        bail!("cargo reported success but {} does not exist", path.display());
    }
    Ok(path)
}

/// Where an agent built by [`build_agent`] came from, for run.json: the workspace and its git
/// state at build time (commit, uncommitted changes), which the `hil` binary's own build info
/// does not cover (the agent is built from the source tree as it is when the run starts).
pub fn workspace_source() -> String {
    let root = workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let state = match (git(&["rev-parse", "HEAD"]), git(&["status", "--porcelain", "--untracked-files=normal"])) {
        (Some(commit), Some(status)) if status.is_empty() => format!("commit {commit}"),
        (Some(commit), Some(_)) => format!("commit {commit} with uncommitted changes"),
        _ => "not a git checkout".to_string(),
    };
    format!("built by hil from the workspace {} ({state})", root.display())
}

/// Hex SHA-256 of a local file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Hex SHA-256 of bytes.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// SHA-256 of a file on the board: `sha256sum` when the board has it, else the file is read back and hashed here.
/// `None` when the file does not exist.
pub fn remote_sha256(board: &mut dyn Board, path: &str) -> Result<Option<String>> {
    let out = board.exec(&["sha256sum".to_string(), path.to_string()], Duration::from_secs(60))?;
    if out.success() {
        let text = out.stdout_str();
        let hash = text.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
        if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Some(hash));
        }
    }
    match board.read_file(path) {
        Ok(data) => Ok(Some(sha256_bytes(&data))),
        // A file larger than any agent is not the agent: say so rather than overwrite blindly.
        Err(e) if e.kind == crate::board::ErrorKind::Limit => Err(e.into()),
        Err(_) => Ok(None),
    }
}

/// What deployment did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deployed {
    pub remote_path: String,
    pub sha256: String,
    pub uploaded: bool,
}

/// Puts `local` at `<workdir>/hil-agent` on the board unless the board already has the same bytes,
/// then verifies the board's copy. Refuses to continue on a mismatch.
pub fn deploy_agent(board: &mut dyn Board, local: &Path, workdir: &str) -> Result<Deployed> {
    let name = board.name().to_string();
    let sha256 = sha256_file(local)?;
    let out = board.exec(&["mkdir".into(), "-p".into(), "--".into(), workdir.to_string()], Duration::from_secs(30))?;
    if !out.success() {
        bail!("board {name}: cannot create workdir {workdir}: {}", out.stderr_str().trim());
    }
    let remote_path = format!("{}/hil-agent", workdir.trim_end_matches('/'));
    let existing = remote_sha256(board, &remote_path)?;
    let uploaded = existing.as_deref() != Some(sha256.as_str());
    if uploaded {
        // The transport uploads to a temporary name and renames, so a half-written agent never runs.
        board.upload(local, &remote_path, 0o755).with_context(|| format!("uploading agent to board {name}"))?;
    }
    match remote_sha256(board, &remote_path)? {
        Some(h) if h == sha256 => Ok(Deployed { remote_path, sha256, uploaded }),
        Some(h) => bail!("board {name}: agent at {remote_path} has SHA-256 {h}, expected {sha256}: refusing to run it"),
        None => bail!("board {name}: agent at {remote_path} is missing after upload"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_agent_names_the_workspace_and_its_git_state() {
        let source = workspace_source();
        let root = workspace_root().display().to_string();
        assert!(source.starts_with(&format!("built by hil from the workspace {root} (")), "{source}");
        assert!(source.contains("commit ") || source.contains("not a git checkout"), "{source}");
    }

    #[test]
    fn machine_to_target() {
        assert_eq!(target_for_machine("aarch64\n").unwrap(), "aarch64-unknown-linux-musl");
        assert_eq!(target_for_machine("x86_64").unwrap(), "x86_64-unknown-linux-musl");
        for armv7 in ["armv7l", "armv7", "armhf", "armv7l\n"] {
            assert_eq!(target_for_machine(armv7).unwrap(), "thumbv7neon-unknown-linux-gnueabihf", "{armv7}");
        }
        let err = target_for_machine("armv6l").unwrap_err().to_string();
        assert!(err.contains("armv6l") && err.contains("thumbv7neon-unknown-linux-gnueabihf"), "{err}");
        assert!(err.contains("gcc-arm-linux-gnueabihf"), "says what to install: {err}");
        let err = target_for_machine("riscv64").unwrap_err().to_string();
        assert!(err.contains("riscv64") && err.contains("target:"), "{err}");
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha256_bytes(b"abc"));
    }
}
