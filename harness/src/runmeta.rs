//! `run.json`: the run's provenance, and creating or reopening a run directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::deploy::{sha256_bytes, workspace_root};
use crate::results::write_atomic;
use crate::runner::{BoardMeta, RunOptions};
use crate::scenario::Scenario;

pub const RUN_JSON: &str = "run.json";
pub const SCENARIO_COPY: &str = "scenario.yaml";

/// What `run.json` holds.
#[derive(Debug, Serialize)]
pub struct RunMeta {
    pub harness_version: String,
    pub git_commit: Option<String>,
    pub scenario: String,
    pub scenario_source: String,
    pub scenario_sha256: String,
    pub host: String,
    pub started_at: String,
    /// Earlier starts of this run directory (a resumed run keeps them).
    pub resumed_from: Vec<String>,
    pub finished_at: Option<String>,
    pub interrupted: bool,
    pub boards: BTreeMap<String, BoardMeta>,
}

/// The few fields a resume needs from an existing `run.json`.
#[derive(Debug, Deserialize)]
struct RunJsonHead {
    scenario_sha256: String,
    started_at: String,
    #[serde(default)]
    resumed_from: Vec<String>,
}

impl RunMeta {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).context("serialising run.json")?;
        write_atomic(&dir.join(RUN_JSON), text.as_bytes())
    }

    pub fn finish(&mut self, interrupted: bool) {
        self.finished_at = Some(now());
        self.interrupted = interrupted;
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Creates `out_root/<scenario>/<UTC stamp>/` (or reopens `--resume DIR` after checking the
/// scenario is the same), copies the scenario there and writes the initial `run.json`.
pub fn open_run_dir(scenario: &Scenario, scenario_text: &str, opts: &RunOptions) -> Result<(PathBuf, RunMeta)> {
    let sha = sha256_bytes(scenario_text.as_bytes());
    let mut meta = RunMeta {
        harness_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: git_commit(),
        scenario: scenario.name.clone(),
        scenario_source: scenario.source_name().to_string(),
        scenario_sha256: sha.clone(),
        host: hostname(),
        started_at: now(),
        resumed_from: Vec::new(),
        finished_at: None,
        interrupted: false,
        boards: BTreeMap::new(),
    };
    let dir = match &opts.resume {
        Some(dir) => {
            let path = dir.join(RUN_JSON);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--resume {}: cannot read {}", dir.display(), path.display()))?;
            let head: RunJsonHead = serde_json::from_str(&text)
                .with_context(|| format!("--resume: {} is not a hil run.json", path.display()))?;
            if head.scenario_sha256 != sha {
                bail!(
                    "--resume {}: the scenario has changed since that run (SHA-256 {} then, {} now); \
                     resume with the scenario copy in that directory ({}) or start a new run",
                    dir.display(),
                    head.scenario_sha256,
                    sha,
                    dir.join(SCENARIO_COPY).display()
                );
            }
            meta.resumed_from = head.resumed_from;
            meta.resumed_from.push(head.started_at);
            dir.clone()
        }
        None => {
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
            let mut dir = opts.out_root.join(&scenario.name).join(&stamp);
            let mut n = 1;
            while dir.exists() {
                n += 1;
                dir = opts.out_root.join(&scenario.name).join(format!("{stamp}-{n}"));
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_atomic(&dir.join(SCENARIO_COPY), scenario_text.as_bytes())?;
            dir
        }
    };
    meta.write(&dir)?;
    Ok((dir, meta))
}
