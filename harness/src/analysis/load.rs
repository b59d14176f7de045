//! Reading a results directory into plain data: the only file input of the analysis.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::results::{read_journal, CellRecord, JOURNAL};
use crate::runmeta::{RUN_JSON, SCENARIO_COPY};
use crate::scenario::{parse_scenario, Scenario};

use super::switch::{load_switch_costs, SwitchData};

/// One run directory, as read.
#[derive(Clone, Debug)]
pub struct RunData {
    pub dir: PathBuf,
    /// The scenario copy the run was made from (`scenario.yaml`).
    pub scenario: Scenario,
    /// The journal's cells (`cells.jsonl`), in the order they finished.
    pub cells: Vec<CellRecord>,
    pub info: RunInfo,
    /// Reconfiguration costs per pattern set (`switch.parquet`); empty when not measured.
    pub switches: SwitchData,
}

/// What the analysis and reports need from `run.json`. Fields are read leniently (a missing
/// or differently shaped field becomes `None`), so an older or newer `run.json` still loads.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    pub harness_version: Option<String>,
    pub git_commit: Option<String>,
    pub scenario_sha256: Option<String>,
    pub host: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub interrupted: bool,
    pub boards: BTreeMap<String, BoardInfo>,
    /// The whole document, for provenance sections that want more.
    pub raw: Value,
}

/// Provenance of one board from `run.json`'s `boards.<name>`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BoardInfo {
    pub simulated: bool,
    /// What was simulated and how (`boards.<name>.simulation`).
    pub simulation: Option<String>,
    /// `boards.<name>.monitor.model`.
    pub monitor_model: Option<String>,
    /// `boards.<name>.agent_hello.agent_version`.
    pub agent_version: Option<String>,
    /// `boards.<name>.agent_hello.cpu_model`.
    pub cpu_model: Option<String>,
    /// `boards.<name>.agent_hello.kernel.release`.
    pub kernel_release: Option<String>,
    /// `boards.<name>.model.model`: the model the agent loaded (preset, seed, seq, shapes).
    pub model: Option<Value>,
    /// `boards.<name>.selftest` (the agent's selftest reply), when the run recorded one.
    pub selftest: Option<SelftestSummary>,
}

/// The outcome of the agent's kernel selftest on a board.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelftestSummary {
    pub passed: bool,
    pub failures: Vec<SelftestFailure>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SelftestFailure {
    pub variant: String,
    /// Where the largest error relative to its tolerance was.
    pub worst: String,
    pub max_abs_err: Option<f64>,
    pub max_rel_err: Option<f64>,
}

/// Reads `dir/cells.jsonl`, `dir/scenario.yaml`, `dir/run.json` and (when there)
/// `dir/switch.parquet`. A missing directory, scenario copy or `run.json` is an error naming
/// the path; an empty journal is not (callers decide whether no cells is usable), nor is a
/// missing `switch.parquet` (switching not measured).
pub fn load_run(dir: &Path) -> Result<RunData> {
    if !dir.is_dir() {
        bail!("results directory {} does not exist (or is not a directory)", dir.display());
    }
    let scenario_path = dir.join(SCENARIO_COPY);
    let text = std::fs::read_to_string(&scenario_path)
        .with_context(|| format!("reading the scenario copy {}", scenario_path.display()))?;
    let scenario = parse_scenario(&text, &scenario_path.display().to_string())
        .with_context(|| format!("parsing the scenario copy {}", scenario_path.display()))?;
    let mut cells = read_journal(dir).with_context(|| format!("reading {}", dir.join(JOURNAL).display()))?;
    if let Some(d) = &scenario.constraints.latency_deadline {
        crate::results::fill_relative_deadlines(&mut cells, d);
    }
    let run_json = dir.join(RUN_JSON);
    let text = std::fs::read_to_string(&run_json).with_context(|| format!("reading {}", run_json.display()))?;
    let raw: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", run_json.display()))?;
    if !raw.is_object() {
        bail!("{} is not a JSON object", run_json.display());
    }
    let switches = load_switch_costs(dir);
    Ok(RunData { dir: dir.to_path_buf(), scenario, cells, info: run_info(raw), switches })
}

fn str_at(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer).and_then(Value::as_str).map(str::to_string)
}

/// Picks the fields of [`RunInfo`] out of `run.json`.
pub fn run_info(raw: Value) -> RunInfo {
    let boards = raw
        .get("boards")
        .and_then(Value::as_object)
        .map(|boards| boards.iter().map(|(name, b)| (name.clone(), board_info(b))).collect())
        .unwrap_or_default();
    RunInfo {
        harness_version: str_at(&raw, "/harness_version"),
        git_commit: str_at(&raw, "/git_commit"),
        scenario_sha256: str_at(&raw, "/scenario_sha256"),
        host: str_at(&raw, "/host"),
        started_at: str_at(&raw, "/started_at"),
        finished_at: str_at(&raw, "/finished_at"),
        interrupted: raw.get("interrupted").and_then(Value::as_bool).unwrap_or(false),
        boards,
        raw,
    }
}

fn board_info(b: &Value) -> BoardInfo {
    BoardInfo {
        simulated: b.get("simulated").and_then(Value::as_bool).unwrap_or(false),
        simulation: str_at(b, "/simulation"),
        monitor_model: str_at(b, "/monitor/model"),
        agent_version: str_at(b, "/agent_hello/agent_version"),
        cpu_model: str_at(b, "/agent_hello/cpu_model"),
        kernel_release: str_at(b, "/agent_hello/kernel/release"),
        model: b.pointer("/model/model").filter(|m| !m.is_null()).cloned(),
        selftest: b.get("selftest").filter(|s| s.is_object()).map(selftest_summary),
    }
}

/// Reads an agent selftest reply (`{"passed": bool, "results": [{"variant", "passed", ...}]}`).
fn selftest_summary(s: &Value) -> SelftestSummary {
    let failures: Vec<SelftestFailure> = s
        .get("results")
        .and_then(Value::as_array)
        .map(|results| {
            results
                .iter()
                .filter(|r| r.get("passed").and_then(Value::as_bool) == Some(false))
                .map(|r| SelftestFailure {
                    variant: str_at(r, "/variant").unwrap_or_else(|| "?".into()),
                    worst: str_at(r, "/worst").unwrap_or_default(),
                    max_abs_err: r.get("max_abs_err").and_then(Value::as_f64),
                    max_rel_err: r.get("max_rel_err").and_then(Value::as_f64),
                })
                .collect()
        })
        .unwrap_or_default();
    let passed = s.get("passed").and_then(Value::as_bool).unwrap_or(failures.is_empty()) && failures.is_empty();
    SelftestSummary { passed, failures }
}
