//! `run.json`: the run's provenance, one typed document shared by the writer and every reader,
//! and creating or reopening a run directory.
//!
//! A run directory is filled by one or more *sessions*: the `hil run` that created it and each
//! `hil run --resume` that completed it. Every session records when it ran, on which host, with
//! which build of `hil` (version, git commit and whether the tree was dirty, taken when the binary
//! was built: see `build.rs`), and what it found on each board it touched (probe, agent, model,
//! self-test, monitor, outcome). A resume appends a session and never rewrites an earlier one, so
//! the provenance of every finished cell survives. Readers ask [`RunMeta::board`] for the latest
//! facts of a board (from the last session that ran its agent) and [`RunMeta::board_sessions`]
//! for all of them.
//!
//! The document is versioned ([`RUN_JSON_SCHEMA`]); [`RunMeta::read`] also reads the unversioned
//! layout of hil 0.1 (one session, its boards at the top level).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use device_agent::protocol::{FidelityReply, HelloReply, LoadReply, SelftestReply};
use serde::{Deserialize, Serialize};

use crate::deploy::{sha256_bytes, Deployed};
use crate::power::MonitorInfo;
use crate::probe::ProbeReport;
use crate::results::write_atomic;
use crate::runner::{BoardOutcome, RunOptions};
use crate::scenario::Scenario;

pub const RUN_JSON: &str = "run.json";
pub const SCENARIO_COPY: &str = "scenario.yaml";
/// The layout of `run.json` this build writes and reads.
pub const RUN_JSON_SCHEMA: u32 = 2;
/// `run.json` is small (kilobytes per board); anything far larger is not one of ours.
pub const MAX_RUN_JSON_BYTES: u64 = 64 << 20;

/// What `run.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub schema_version: u32,
    /// The scenario's name and where it was read from.
    pub scenario: String,
    pub scenario_source: String,
    /// SHA-256 of the scenario text; a resume refuses a changed scenario.
    pub scenario_sha256: String,
    /// The first session, then each resume, oldest first (never empty).
    pub sessions: Vec<SessionMeta>,
}

/// One `hil run` (or `--resume`) in this directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Stopped by Ctrl-C / SIGTERM before every cell was measured.
    #[serde(default)]
    pub interrupted: bool,
    pub host: String,
    pub build: BuildInfo,
    /// Where the agent this session deployed came from: built by `hil` from the workspace (its
    /// commit and whether it had uncommitted changes then, which may differ from `build`'s) or
    /// given with `--agent-bin`. `None` before an agent was needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_source: Option<String>,
    /// Advice this session printed when it started (see [`crate::scenario::host_sharing_notes`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What this session found on each board it touched.
    #[serde(default)]
    pub boards: BTreeMap<String, BoardMeta>,
}

/// The `hil` binary that ran a session, as it was built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub harness_version: String,
    /// The commit the binary was built from (`None`: not built from a git checkout).
    #[serde(default)]
    pub git_commit: Option<String>,
    /// Whether the checkout had uncommitted changes when the binary was built.
    #[serde(default)]
    pub git_dirty: Option<bool>,
}

impl BuildInfo {
    /// This binary's build, from what `build.rs` recorded.
    pub fn this_binary() -> Self {
        Self {
            harness_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: option_env!("HIL_GIT_COMMIT").filter(|c| !c.is_empty()).map(str::to_string),
            git_dirty: match option_env!("HIL_GIT_DIRTY") {
                Some("1") => Some(true),
                Some("0") => Some(false),
                _ => None,
            },
        }
    }

    /// `0.1.0 (abc1234, dirty)` for reports.
    pub fn describe(&self) -> String {
        match (&self.git_commit, self.git_dirty) {
            (Some(c), Some(true)) => format!("{} ({c}, uncommitted changes)", self.harness_version),
            (Some(c), _) => format!("{} ({c})", self.harness_version),
            (None, _) => format!("{} (commit unknown)", self.harness_version),
        }
    }
}

/// Per-board facts of one session. Every field defaults, so a board a session only began to set
/// up (or an older `run.json`) still reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BoardMeta {
    pub transport: String,
    pub simulated: bool,
    /// What was simulated and how (simulated boards).
    pub simulation: Option<String>,
    pub monitor: Option<MonitorInfo>,
    pub probe: Option<ProbeReport>,
    pub restored_from_previous_crash: bool,
    pub policies: Vec<String>,
    pub levels_khz: Vec<u64>,
    pub saved_dvfs: Option<crate::dvfs::restore::DvfsRestoreFile>,
    pub agent: Option<Deployed>,
    pub agent_hello: Option<HelloReply>,
    pub model: Option<LoadReply>,
    /// Median time to switch the live model to each variant (pattern-set switching), ns.
    pub switch_ns: BTreeMap<String, u64>,
    /// Every variant's kernels against the scalar reference on this board's CPU.
    pub selftest: Option<SelftestReply>,
    /// Every variant's output against the dense model's, on this board.
    pub fidelity: Option<FidelityReply>,
    pub outcome: Option<BoardOutcome>,
    /// For a board from a labgrid lab: the scenario entry it came from and the place it ran on
    /// (coordinator, reservation, exporter host, every resource `env` showed).
    pub labgrid: Option<LabgridMeta>,
}

/// A labgrid board's provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabgridMeta {
    /// The scenario board entry (its `labgrid:` section selected the place).
    pub entry: String,
    pub place: crate::labgrid::LabgridBoard,
}

impl RunMeta {
    /// A new run's document with its first session (no boards yet).
    pub fn new(scenario: &Scenario, scenario_sha256: String) -> Self {
        Self {
            schema_version: RUN_JSON_SCHEMA,
            scenario: scenario.name.clone(),
            scenario_source: scenario.source_name().to_string(),
            scenario_sha256,
            sessions: vec![SessionMeta::starting_now()],
        }
    }

    /// Reads `dir/run.json` (this layout or hil 0.1's), refusing one written by a newer hil.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(RUN_JSON);
        let text = crate::results::read_capped(&path, MAX_RUN_JSON_BYTES)?;
        Self::parse(&text).with_context(|| format!("{} is not a hil run.json", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let raw: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        match raw.get("schema_version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(RUN_JSON_SCHEMA) => Ok(serde_json::from_value(raw)?),
            Some(v) => bail!(
                "schema_version {v}: written by another version of hil (this one reads {RUN_JSON_SCHEMA} and the \
                 unversioned layout of hil 0.1)"
            ),
            None => Ok(serde_json::from_value::<LegacyRunJson>(raw)?.upgrade()),
        }
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).context("serialising run.json")?;
        write_atomic(&dir.join(RUN_JSON), text.as_bytes())
    }

    /// The session being recorded (the last one).
    pub fn current_mut(&mut self) -> &mut SessionMeta {
        if self.sessions.is_empty() {
            self.sessions.push(SessionMeta::starting_now());
        }
        self.sessions.last_mut().expect("just ensured")
    }

    /// Ends the current session.
    pub fn finish(&mut self, interrupted: bool) {
        let s = self.current_mut();
        s.finished_at = Some(now());
        s.interrupted = interrupted;
    }

    /// When the run began (its first session).
    pub fn started_at(&self) -> Option<&str> {
        self.sessions.first().map(|s| s.started_at.as_str())
    }

    /// When its latest session ended (`None`: still running, or killed).
    pub fn finished_at(&self) -> Option<&str> {
        self.sessions.last().and_then(|s| s.finished_at.as_deref())
    }

    /// Whether the latest session was interrupted (the run is then incomplete).
    pub fn interrupted(&self) -> bool {
        self.sessions.last().is_some_and(|s| s.interrupted)
    }

    /// The board names any session recorded.
    pub fn board_names(&self) -> BTreeSet<&str> {
        self.sessions.iter().flat_map(|s| s.boards.keys().map(String::as_str)).collect()
    }

    /// The latest facts of `board`: from the last session that ran its agent (loaded the
    /// model), else the last that reached it (probed it), else the last that names it. A session
    /// that stopped before connecting, or probed the board and found nothing left to do, does not
    /// hide what an earlier one found (its agent, monitor, model and switch costs).
    pub fn board(&self, board: &str) -> Option<&BoardMeta> {
        let named = || self.sessions.iter().rev().filter_map(|s| s.boards.get(board));
        named().find(|b| b.model.is_some()).or_else(|| named().find(|b| b.probe.is_some())).or_else(|| named().next())
    }

    /// Every session's facts of `board`, oldest first, with the session's index.
    pub fn board_sessions<'a>(&'a self, board: &'a str) -> impl Iterator<Item = (usize, &'a BoardMeta)> + 'a {
        self.sessions.iter().enumerate().filter_map(move |(i, s)| s.boards.get(board).map(|b| (i, b)))
    }

    /// Whether any session labelled `board` simulated.
    pub fn board_simulated(&self, board: &str) -> bool {
        self.board_sessions(board).any(|(_, b)| b.simulated)
    }
}

impl SessionMeta {
    fn starting_now() -> Self {
        Self {
            started_at: now(),
            finished_at: None,
            interrupted: false,
            host: hostname(),
            build: BuildInfo::this_binary(),
            agent_source: None,
            notes: Vec::new(),
            boards: BTreeMap::new(),
        }
    }
}

/// hil 0.1's `run.json`: one session's fields at the top level, earlier starts in `resumed_from`
/// (their board facts were not kept).
#[derive(Deserialize)]
struct LegacyRunJson {
    harness_version: String,
    #[serde(default)]
    git_commit: Option<String>,
    scenario: String,
    scenario_source: String,
    scenario_sha256: String,
    host: String,
    started_at: String,
    #[serde(default)]
    resumed_from: Vec<String>,
    #[serde(default)]
    finished_at: Option<String>,
    #[serde(default)]
    interrupted: bool,
    #[serde(default)]
    boards: BTreeMap<String, BoardMeta>,
}

impl LegacyRunJson {
    fn upgrade(self) -> RunMeta {
        let build = BuildInfo { harness_version: self.harness_version, git_commit: self.git_commit, git_dirty: None };
        let mut sessions: Vec<SessionMeta> = self
            .resumed_from
            .into_iter()
            .map(|started_at| SessionMeta {
                started_at,
                finished_at: None,
                interrupted: false,
                host: self.host.clone(),
                build: build.clone(),
                agent_source: None,
                notes: Vec::new(),
                boards: BTreeMap::new(),
            })
            .collect();
        sessions.push(SessionMeta {
            started_at: self.started_at,
            finished_at: self.finished_at,
            interrupted: self.interrupted,
            host: self.host,
            build,
            agent_source: None,
            notes: Vec::new(),
            boards: self.boards,
        });
        RunMeta {
            schema_version: RUN_JSON_SCHEMA,
            scenario: self.scenario,
            scenario_source: self.scenario_source,
            scenario_sha256: self.scenario_sha256,
            sessions,
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Creates `out_root/<scenario>/<UTC stamp>/` (or reopens `--resume DIR` after checking the
/// scenario is the same, adding a session to its `run.json`), copies the scenario there and
/// writes `run.json`.
pub fn open_run_dir(scenario: &Scenario, scenario_text: &str, opts: &RunOptions) -> Result<(PathBuf, RunMeta)> {
    let sha = sha256_bytes(scenario_text.as_bytes());
    let (dir, meta) = match &opts.resume {
        Some(dir) => {
            let mut meta = RunMeta::read(dir).with_context(|| format!("--resume {}", dir.display()))?;
            if meta.scenario_sha256 != sha {
                bail!(
                    "--resume {}: the scenario has changed since that run (SHA-256 {} then, {} now); \
                     resume with the scenario copy in that directory ({}) or start a new run",
                    dir.display(),
                    meta.scenario_sha256,
                    sha,
                    dir.join(SCENARIO_COPY).display()
                );
            }
            meta.sessions.push(SessionMeta::starting_now());
            (dir.clone(), meta)
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
            (dir, RunMeta::new(scenario, sha))
        }
    };
    meta.write(&dir)?;
    Ok((dir, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_run_json_reads_as_one_session_per_start() {
        let legacy = r#"{
            "harness_version": "0.1.0", "git_commit": "abc", "scenario": "s", "scenario_source": "s.yaml",
            "scenario_sha256": "ff", "host": "h", "started_at": "2026-01-02T00:00:00Z",
            "resumed_from": ["2026-01-01T00:00:00Z"], "finished_at": "2026-01-02T01:00:00Z",
            "interrupted": false,
            "boards": {"b": {"transport": "local", "simulated": true, "switch_ns": {"pp": 5}, "unknown_later_field": 1}}
        }"#;
        let m = RunMeta::parse(legacy).unwrap();
        assert_eq!(m.sessions.len(), 2);
        assert_eq!(m.started_at(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(m.finished_at(), Some("2026-01-02T01:00:00Z"));
        assert!(m.board_simulated("b"));
        assert_eq!(m.board("b").unwrap().switch_ns["pp"], 5);
        assert_eq!(m.sessions[1].build.git_commit.as_deref(), Some("abc"));
    }

    #[test]
    fn round_trips_and_refuses_a_newer_schema() {
        let mut m = RunMeta::parse(
            r#"{"harness_version": "0.1.0", "scenario": "s", "scenario_source": "s.yaml",
            "scenario_sha256": "ff", "host": "h", "started_at": "t0"}"#,
        )
        .unwrap();
        m.current_mut().boards.insert("b".into(), BoardMeta { transport: "ssh".into(), ..BoardMeta::default() });
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(RunMeta::parse(&text).unwrap(), m);
        let newer = text.replace("\"schema_version\":2", "\"schema_version\":99");
        let err = RunMeta::parse(&newer).unwrap_err().to_string();
        assert!(err.contains("schema_version 99"), "{err}");
    }

    #[test]
    fn the_latest_session_that_touched_a_board_wins_and_earlier_ones_stay() {
        let mut m = RunMeta::parse(
            r#"{"harness_version": "0.1.0", "scenario": "s", "scenario_source": "s.yaml",
            "scenario_sha256": "ff", "host": "h", "started_at": "t0",
            "boards": {"a": {"transport": "ssh"}, "b": {"transport": "ssh"}}}"#,
        )
        .unwrap();
        m.sessions.push(SessionMeta::starting_now());
        m.current_mut().boards.insert("a".into(), BoardMeta { transport: "local".into(), ..BoardMeta::default() });
        assert_eq!(m.board("a").unwrap().transport, "local");
        assert_eq!(m.board("b").unwrap().transport, "ssh", "b was not touched again: its facts stay");
        assert_eq!(m.board_sessions("a").map(|(i, _)| i).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(m.board_names().into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn this_binary_knows_its_build() {
        let b = BuildInfo::this_binary();
        assert_eq!(b.harness_version, env!("CARGO_PKG_VERSION"));
        // Built from this checkout (a git repository), the commit is recorded.
        if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.git")).exists() {
            assert!(b.git_commit.as_ref().is_some_and(|c| c.len() == 40), "{b:?}");
            assert!(b.git_dirty.is_some());
        }
    }
}
