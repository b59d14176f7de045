use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::deploy::{build_agent, sha256_file, AGENT_TARGETS};

/// `rustup target list --installed`, `None` without rustup.
fn installed_rust_targets() -> Option<Vec<String>> {
    let out = std::process::Command::new("rustup").args(["target", "list", "--installed"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect())
}

/// Build the on-board agent.
#[derive(Debug, Args)]
pub struct AgentCmd {
    #[command(subcommand)]
    command: AgentCommands,
}

#[derive(Debug, Subcommand)]
enum AgentCommands {
    /// Build `hil-agent` (release) for a target triple and print its path, size and SHA-256.
    ///
    /// Every target is a static binary that runs on the board as it is (`hil agent targets`
    /// lists them with what each needs installed):
    ///
    /// - aarch64-unknown-linux-musl: 64-bit ARM (uname -m aarch64), linked by rust-lld;
    ///   `rustup target add aarch64-unknown-linux-musl`.
    ///
    /// - thumbv7neon-unknown-linux-gnueabihf: 32-bit ARMv7 with NEON (uname -m armv7l: Odroid-XU4,
    ///   32-bit Raspberry Pi OS, BeagleBone), static glibc by Debian's cross gcc;
    ///   `rustup target add thumbv7neon-unknown-linux-gnueabihf` and
    ///   `apt-get install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross`.
    ///
    /// - armv7-unknown-linux-gnueabihf: ARMv7 without NEON (name it in the scenario), as above.
    ///
    /// - x86_64-unknown-linux-musl: x86-64 boards; `rustup target add x86_64-unknown-linux-musl`.
    ///
    /// `hil run` builds the agent itself (`target: auto` picks by the board's uname -m); this is
    /// for checking the build or copying the binary by hand.
    Build {
        /// Rust target triple (see above); omit for this host.
        #[arg(long)]
        target: Option<String>,
    },
    /// List the targets the agent is built for, the boards each is for, how it is linked and
    /// what to install for it; marks the ones this host can build now.
    Targets,
}

impl AgentCmd {
    pub fn run(self) -> Result<ExitCode> {
        match self.command {
            AgentCommands::Build { target } => {
                let path = build_agent(target.as_deref())?;
                let size = std::fs::metadata(&path)?.len();
                println!("{}", path.display());
                println!("  size   {size} bytes ({:.1} MiB)", size as f64 / (1024.0 * 1024.0));
                println!("  sha256 {}", sha256_file(&path)?);
                Ok(ExitCode::SUCCESS)
            }
            AgentCommands::Targets => {
                let installed = installed_rust_targets();
                for t in AGENT_TARGETS {
                    let ready = installed.as_ref().map(|i| i.iter().any(|x| x == t.triple));
                    let state = match ready {
                        Some(true) => "standard library installed",
                        Some(false) => "NOT installed",
                        None => "rustup not found",
                    };
                    println!("{} ({state})", t.triple);
                    println!("    boards:   {}", t.boards);
                    if !t.machines.is_empty() {
                        println!("    auto for: uname -m {}", t.machines.join(", "));
                    }
                    println!("    linked:   {}", t.linked);
                    println!("    install:  {}", t.install);
                    if let Some(e) = t.emulator {
                        println!("    runs here under {e}");
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
