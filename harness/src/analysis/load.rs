//! Reading a results directory into plain data: the only file input of the analysis.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use device_agent::protocol::SelftestReply;

use crate::results::{read_capped, read_journal, CellRecord, JOURNAL};
use crate::runmeta::{RunMeta, SCENARIO_COPY};
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
    /// `run.json`, typed: every session's provenance.
    pub meta: RunMeta,
    /// Reconfiguration costs per pattern set (`switch.parquet`); empty when not measured.
    pub switches: SwitchData,
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

impl SelftestSummary {
    /// The failures of an agent's selftest reply.
    pub fn from_reply(reply: &SelftestReply) -> Self {
        let failures: Vec<SelftestFailure> = reply
            .results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| SelftestFailure {
                variant: r.variant.clone(),
                worst: r.worst.clone(),
                max_abs_err: Some(r.max_abs_err).filter(|e| e.is_finite()),
                max_rel_err: Some(r.max_rel_err).filter(|e| e.is_finite()),
            })
            .collect();
        Self { passed: reply.passed && failures.is_empty(), failures }
    }
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
    let text = read_capped(&scenario_path, crate::scenario::MAX_SCENARIO_BYTES as u64)
        .with_context(|| format!("reading the scenario copy {}", scenario_path.display()))?;
    let scenario = parse_scenario(&text, &scenario_path.display().to_string())
        .with_context(|| format!("parsing the scenario copy {}", scenario_path.display()))?;
    let mut cells = read_journal(dir).with_context(|| format!("reading {}", dir.join(JOURNAL).display()))?;
    if let Some(d) = &scenario.constraints.latency_deadline {
        crate::results::fill_relative_deadlines(&mut cells, d);
    }
    let meta = RunMeta::read(dir)?;
    let switches = load_switch_costs(dir);
    Ok(RunData { dir: dir.to_path_buf(), scenario, cells, meta, switches })
}
