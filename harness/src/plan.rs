//! The cells a scenario asks for, in the order they run, and how long that takes.
//!
//! A cell is one measurement: (board, frequency level, variant, repeat). Boards
//! run in parallel, each working through its own list.
//!
//! # Order within a board: repeat-major, variants rotated
//!
//! ```text
//! repeat 0: level 1500 MHz: v0 v1 v2 | level 1000 MHz: v0 v1 v2 | level 600 MHz: v0 v1 v2
//! repeat 1: level 1500 MHz: v1 v2 v0 | level 1000 MHz: v1 v2 v0 | ...
//! ```
//!
//! Repeats are the outer loop so that the repeats of one (level, variant) are
//! spread over the whole run: slow drift (battery or supply sag, ambient
//! temperature, background daemons waking) then shows up as spread between
//! repeats, which the statistics see, instead of as a bias between variants
//! measured early and late. Within a repeat the levels are the middle loop,
//! highest first, so the frequency changes (and idle power is measured) once
//! per level per repeat, not once per cell. The variant order is rotated by one
//! each repeat, so no variant always follows the same neighbour (a dense run
//! heats the core more than a sparse one, and that heat carries into the next
//! cell).
//!
//! Cells are identified by a [`CellKey`] that does not depend on the order, so
//! `--resume` can skip what a results directory already holds.
//!
//! Levels given as `all` are known only after probing the board: such a board
//! has [`BoardLevels::AfterProbe`] and no cells until [`Plan::resolve_levels`].

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::scenario::units::{format_duration, format_khz};
use crate::scenario::{
    BoardSpec, GovernorChoice, LevelsSpec, MeasureSpec, ModelSource, Scenario, TransportSpec, VariantKind, VariantSpec,
};

/// Inference latency assumed for estimates when the scenario has no deadline (the deadline,
/// when given, is used instead: variants are meant to meet it, so it bounds them from above).
pub const ASSUMED_INFERENCE: Duration = Duration::from_millis(20);
/// Per cell: clock exchanges before and after the window, cpufreq read-backs, time_in_state
/// reads and the result write.
pub const CELL_OVERHEAD: Duration = Duration::from_secs(1);
/// Per cell with a cool-down temperature: a guess at the wait; real waits depend on the board.
pub const COOLDOWN_MARGIN: Duration = Duration::from_secs(5);
/// Per board: connect, probe, deploy the agent (when its hash differs), load the model.
pub const BOARD_SETUP: Duration = Duration::from_secs(15);

/// Identifies a cell independently of its position in the plan (for resume and for
/// matching cells between runs). Shown as `board@1500000kHz/variant/r0`; names never
/// contain `@` or `/`, so the text form parses back unambiguously.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellKey {
    pub board: String,
    pub freq_khz: u64,
    pub variant: String,
    pub repeat: u32,
}

impl fmt::Display for CellKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}kHz/{}/r{}", self.board, self.freq_khz, self.variant, self.repeat)
    }
}

impl FromStr for CellKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a cell key (board@FREQkHz/variant/rN)");
        let (board, rest) = s.split_once('@').ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(freq), Some(variant), Some(repeat), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let freq_khz = freq.strip_suffix("kHz").and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        let repeat = repeat.strip_prefix('r').and_then(|r| r.parse().ok()).ok_or_else(bad)?;
        if board.is_empty() || variant.is_empty() {
            return Err(bad());
        }
        Ok(CellKey { board: board.to_string(), freq_khz, variant: variant.to_string(), repeat })
    }
}

/// One measurement to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub key: CellKey,
    /// Index into the board's levels (0 = highest).
    pub level_index: usize,
    /// Index into the scenario's variants.
    pub variant_index: usize,
    /// The first cell of a visit to its level: the runner pins the frequency, settles and
    /// measures idle power before it.
    pub starts_level_visit: bool,
}

/// The levels of one board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoardLevels {
    /// kHz, highest first.
    Resolved(Vec<u64>),
    /// `levels: all`: known once the board has been probed.
    AfterProbe,
}

/// What one board will do.
#[derive(Clone, Debug, PartialEq)]
pub struct BoardPlan {
    pub board: String,
    /// `"simulated, local"`, `"ssh pi@rpi4.local:22"`, ... for display.
    pub reached_by: String,
    pub levels: BoardLevels,
    /// In run order; empty while the levels are not known.
    pub cells: Vec<Cell>,
    /// Estimated wall time for this board (setup included); per level when levels are pending.
    pub estimate: Duration,
}

impl BoardPlan {
    /// The cells not in `done`, in order, with `starts_level_visit` recomputed so a resumed
    /// run still pins and measures idle power before the first remaining cell of each visit.
    pub fn pending_cells(&self, done: &HashSet<CellKey>) -> Vec<Cell> {
        let mut out: Vec<Cell> = Vec::new();
        for cell in self.cells.iter().filter(|c| !done.contains(&c.key)) {
            let mut cell = cell.clone();
            cell.starts_level_visit = match out.last() {
                None => true,
                Some(prev) => prev.level_index != cell.level_index || prev.key.repeat != cell.key.repeat,
            };
            out.push(cell);
        }
        out
    }
}

/// Every board's cells, and the summary `hil validate` prints.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub scenario: String,
    pub boards: Vec<BoardPlan>,
    summary: Vec<(&'static str, String)>,
}

/// The (level index, variant index, repeat) triples of one board, in run order
/// (see the module documentation for why this order).
pub fn cell_order(levels: usize, variants: usize, repeats: u32) -> Vec<(usize, usize, u32)> {
    let mut order = Vec::with_capacity(levels * variants * repeats as usize);
    for repeat in 0..repeats {
        for level in 0..levels {
            for slot in 0..variants {
                order.push((level, (slot + repeat as usize) % variants, repeat));
            }
        }
    }
    order
}

/// Time for one cell: warm-up, the window (at least `min_iterations` and `min_duration`),
/// overhead and, with a cool-down temperature, a margin for waiting.
pub fn estimate_cell(scenario: &Scenario) -> Duration {
    let m = &scenario.measure;
    let per_inference = match &scenario.constraints.latency_deadline {
        Some(crate::scenario::Deadline::Fixed(d)) => *d,
        _ => ASSUMED_INFERENCE,
    };
    let by_count = per_inference.saturating_mul(u32::try_from(m.min_iterations).unwrap_or(u32::MAX));
    let warmup = per_inference.saturating_mul(m.warmup_iterations);
    let cooldown = if m.cooldown_temp_c.is_some() { COOLDOWN_MARGIN } else { Duration::ZERO };
    warmup + by_count.max(m.min_duration) + CELL_OVERHEAD + cooldown
}

/// Time for one visit to a level before its cells: settle, then idle power.
pub fn estimate_level_visit(scenario: &Scenario) -> Duration {
    scenario.dvfs.settle + scenario.measure.idle_duration
}

/// Plans every board. Boards with `levels: all` get [`BoardLevels::AfterProbe`].
pub fn plan(scenario: &Scenario) -> Plan {
    let boards = scenario
        .boards
        .iter()
        .map(|b| match &scenario.dvfs.levels {
            LevelsSpec::Khz(levels) => plan_board(scenario, b, levels),
            LevelsSpec::All => pending_board(scenario, b),
        })
        .collect();
    Plan { scenario: scenario.name.clone(), boards, summary: summary(scenario) }
}

/// Plans one board at the given levels (kHz, highest first), e.g. once `all` is resolved.
pub fn plan_board(scenario: &Scenario, board: &BoardSpec, levels_khz: &[u64]) -> BoardPlan {
    let cells: Vec<Cell> = cell_order(levels_khz.len(), scenario.variants.len(), scenario.measure.repeats)
        .into_iter()
        .enumerate()
        .map(|(i, (level_index, variant_index, repeat))| Cell {
            key: CellKey {
                board: board.name.clone(),
                freq_khz: levels_khz[level_index],
                variant: scenario.variants[variant_index].name.clone(),
                repeat,
            },
            level_index,
            variant_index,
            starts_level_visit: i % scenario.variants.len().max(1) == 0,
        })
        .collect();
    let visits = levels_khz.len() as u32 * scenario.measure.repeats;
    let estimate = BOARD_SETUP
        + estimate_level_visit(scenario).saturating_mul(visits)
        + estimate_cell(scenario).saturating_mul(cells.len() as u32);
    BoardPlan {
        board: board.name.clone(),
        reached_by: reached_by(board),
        levels: BoardLevels::Resolved(levels_khz.to_vec()),
        cells,
        estimate,
    }
}

fn pending_board(scenario: &Scenario, board: &BoardSpec) -> BoardPlan {
    let per_level = scenario.measure.repeats;
    let estimate = estimate_level_visit(scenario).saturating_mul(per_level)
        + estimate_cell(scenario).saturating_mul(per_level * scenario.variants.len() as u32);
    BoardPlan {
        board: board.name.clone(),
        reached_by: reached_by(board),
        levels: BoardLevels::AfterProbe,
        cells: Vec::new(),
        estimate,
    }
}

fn reached_by(board: &BoardSpec) -> String {
    let mut s = match &board.transport {
        TransportSpec::Local if board.sim => "simulated, local".to_string(),
        TransportSpec::Local => "local".to_string(),
        TransportSpec::Ssh(ssh) => format!("ssh {}@{}:{}", ssh.user, ssh.host, ssh.port),
    };
    if let Some(prefix) = &board.exec_prefix {
        s.push_str(&format!(", agent run through {}", prefix.join(" ")));
    }
    s
}

impl Plan {
    /// Plans every board (the same as [`plan`]).
    pub fn new(scenario: &Scenario) -> Plan {
        plan(scenario)
    }

    /// Replaces a board's plan once its levels are known (after probing).
    /// Returns false when the scenario has no such board.
    pub fn resolve_levels(&mut self, scenario: &Scenario, board: &str, levels_khz: &[u64]) -> bool {
        let (Some(spec), Some(slot)) = (scenario.board(board), self.boards.iter_mut().find(|b| b.board == board))
        else {
            return false;
        };
        *slot = plan_board(scenario, spec, levels_khz);
        true
    }

    /// Total cells, or `None` while some board's levels await probing.
    pub fn total_cells(&self) -> Option<usize> {
        self.boards.iter().try_fold(0, |acc, b| match b.levels {
            BoardLevels::Resolved(_) => Some(acc + b.cells.len()),
            BoardLevels::AfterProbe => None,
        })
    }

    /// Wall time with boards in parallel (the slowest board), or `None` while levels are pending.
    pub fn estimated_duration(&self) -> Option<Duration> {
        self.boards.iter().try_fold(Duration::ZERO, |acc, b| match b.levels {
            BoardLevels::Resolved(_) => Some(acc.max(b.estimate)),
            BoardLevels::AfterProbe => None,
        })
    }
}

/// One line for a variant, e.g. `pp75 (pattern 75 % on bp50, 16x16 tiles, 4 patterns)`.
pub fn describe_variant(v: &VariantSpec) -> String {
    let pct = |s: f64| format!("{} %", (s * 1000.0).round() / 10.0);
    let mut s = match &v.kind {
        VariantKind::Dense => format!("{} (dense)", v.name),
        VariantKind::Block { sparsity, block_rows, block_cols, global } => format!(
            "{} (block {}{}, {block_rows}x{block_cols} blocks)",
            v.name,
            pct(*sparsity),
            if *global { " overall" } else { "" }
        ),
        VariantKind::Pattern { base, tile, patterns_per_set, sparsity, .. } => format!(
            "{} (pattern {} on {base}, {tile}x{tile} tiles, {patterns_per_set} patterns)",
            v.name,
            pct(*sparsity)
        ),
    };
    if let Some(a) = v.accuracy {
        s.push_str(&format!(" accuracy {}", pct(a)));
    }
    s
}

fn describe_governor(g: &GovernorChoice) -> String {
    match g {
        GovernorChoice::Auto => "userspace governor where offered, else min=max".to_string(),
        GovernorChoice::Userspace => "userspace governor (required)".to_string(),
        GovernorChoice::MinMaxUnder(name) => format!("min=max under the {name} governor"),
    }
}

fn describe_measure(m: &MeasureSpec) -> String {
    let mut s = format!(
        "warm-up {} inferences, window >= {} inferences and >= {}, {} repeat{}, idle {} per level visit",
        m.warmup_iterations,
        m.min_iterations,
        format_duration(m.min_duration),
        m.repeats,
        if m.repeats == 1 { "" } else { "s" },
        format_duration(m.idle_duration),
    );
    if let Some(t) = m.cooldown_temp_c {
        s.push_str(&format!(", cool below {t} °C first"));
    }
    if m.threads != 1 {
        s.push_str(&format!(", {} threads", m.threads));
    }
    s
}

fn summary(scenario: &Scenario) -> Vec<(&'static str, String)> {
    let model = match &scenario.model.source {
        ModelSource::Preset(p) => format!("preset {}", p.as_str()),
        ModelSource::Safetensors { path, preset } => {
            format!("{} from safetensors {path} (on the board)", preset.as_str())
        }
    };
    let model = if scenario.model.lm_head { format!("{model} with its lm_head") } else { model };
    let seq = scenario.model.seq.map(|s| format!("seq {s}")).unwrap_or_else(|| "seq from the model".into());
    let variants: Vec<String> = scenario.variants.iter().map(describe_variant).collect();
    let mut lines = vec![
        ("source", scenario.source_name().to_string()),
        ("model", format!("{model}, {seq}, seed {}", scenario.model.seed)),
        ("variants", format!("{}: {}", scenario.variants.len(), variants.join("; "))),
        ("measure", describe_measure(&scenario.measure)),
        (
            "dvfs",
            format!("{}, settle {}", describe_governor(&scenario.dvfs.governor), format_duration(scenario.dvfs.settle)),
        ),
        (
            "deadline",
            scenario.constraints.latency_deadline.as_ref().map(|d| d.explain()).unwrap_or_else(|| "none".into()),
        ),
        ("order", "repeat-major (each level x variant once per repeat), variants rotated each repeat".to_string()),
    ];
    if let Some(r) = &scenario.regression {
        let base = r.baseline.as_ref().map(|b| b.display().to_string()).unwrap_or_else(|| "none".into());
        lines.push(("regression", format!("baseline {base}, threshold {} %, alpha {}", r.threshold_pct, r.alpha)));
    }
    lines
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "scenario {}", self.scenario)?;
        for (label, text) in &self.summary {
            writeln!(f, "  {label:<10} {text}")?;
        }
        for b in &self.boards {
            writeln!(f, "board {} ({})", b.board, b.reached_by)?;
            match &b.levels {
                BoardLevels::Resolved(levels) => {
                    let shown: Vec<String> = levels.iter().map(|&k| format_khz(k)).collect();
                    writeln!(f, "  {:<10} {}: {}", "levels", levels.len(), shown.join(", "))?;
                    let variants = b.cells.iter().map(|c| c.variant_index).collect::<HashSet<_>>().len();
                    let repeats = b.cells.iter().map(|c| c.key.repeat).max().map_or(0, |r| r + 1);
                    writeln!(
                        f,
                        "  {:<10} {} levels x {variants} variants x {repeats} repeats = {}",
                        "cells",
                        levels.len(),
                        b.cells.len()
                    )?;
                    writeln!(f, "  {:<10} about {}", "estimate", format_duration(b.estimate))?;
                }
                BoardLevels::AfterProbe => {
                    writeln!(f, "  {:<10} all the board offers (known after probing)", "levels")?;
                    writeln!(f, "  {:<10} about {} per level", "estimate", format_duration(b.estimate))?;
                }
            }
        }
        match (self.total_cells(), self.estimated_duration()) {
            (Some(cells), Some(time)) => writeln!(
                f,
                "total: {cells} cells on {} board{}, about {} (boards run in parallel)",
                self.boards.len(),
                if self.boards.len() == 1 { "" } else { "s" },
                format_duration(time)
            ),
            _ => writeln!(f, "total: known after probing (`levels: all`)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_repeat_major_with_rotation() {
        let order = cell_order(2, 3, 2);
        assert_eq!(
            order,
            vec![
                (0, 0, 0),
                (0, 1, 0),
                (0, 2, 0),
                (1, 0, 0),
                (1, 1, 0),
                (1, 2, 0),
                (0, 1, 1),
                (0, 2, 1),
                (0, 0, 1),
                (1, 1, 1),
                (1, 2, 1),
                (1, 0, 1),
            ]
        );
    }

    #[test]
    fn order_covers_every_cell_once() {
        for (levels, variants, repeats) in [(1, 1, 1), (3, 5, 4), (7, 2, 3), (4, 4, 9)] {
            let order = cell_order(levels, variants, repeats);
            let unique: HashSet<_> = order.iter().collect();
            assert_eq!(order.len(), levels * variants * repeats as usize);
            assert_eq!(unique.len(), order.len());
        }
    }

    #[test]
    fn cell_keys_round_trip() {
        let key = CellKey { board: "rpi4-a".into(), freq_khz: 1_500_000, variant: "pp75.t16".into(), repeat: 2 };
        assert_eq!(key.to_string(), "rpi4-a@1500000kHz/pp75.t16/r2");
        assert_eq!(key.to_string().parse::<CellKey>(), Ok(key));
        for bad in ["", "a", "a@1/b/r0", "a@1kHz/b", "a@1kHz/b/0", "a@xkHz/b/r0", "@1kHz/b/r0", "a@1kHz/b/r0/x"] {
            assert!(bad.parse::<CellKey>().is_err(), "{bad}");
        }
    }
}
