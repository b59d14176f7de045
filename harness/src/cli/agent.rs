use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::deploy::{build_agent, sha256_file};

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
    /// aarch64 boards take `aarch64-unknown-linux-musl`: a static binary linked with
    /// rust-lld (`rustup target add aarch64-unknown-linux-musl` first). `hil run` builds
    /// the agent itself; this is for checking the build or copying the binary by hand.
    Build {
        /// Rust target triple, e.g. aarch64-unknown-linux-musl; omit for this host.
        #[arg(long)]
        target: Option<String>,
    },
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
        }
    }
}
