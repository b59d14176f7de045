//! Scenarios: what to measure, on which boards, at which frequencies.
//!
//! A scenario file is YAML, read in three stages so that nothing reaches a
//! board before every value has been checked:
//!
//! 1. [`raw`]: strict `serde` structs (`deny_unknown_fields`): a typo in a key
//!    is an error with its line and column, never a silently ignored setting.
//!    Before this stage the text is bounded in size and its alias expansion is
//!    measured, so a "billion laughs" document is refused unexpanded.
//! 2. [`validate`]: raw values become the runner's types ([`Scenario`],
//!    [`BoardSpec`], ...): units parsed, bounds checked, names restricted to a
//!    safe character set, cross-references resolved. Every problem found is
//!    reported at once, each naming its field path (`boards[1].host`), the bad
//!    value and its line and column (found by [`locate::SourceMap`]).
//! 3. [`probe_check`]: once a board has been probed, [`validate_against_probe`]
//!    checks the scenario against what the board really offers (frequencies,
//!    CPUs, thermal zones, governors) and resolves `levels: all`.
//!
//! [`crate::plan`] turns a validated scenario into the ordered list of cells.
//!
//! Host-side paths (SSH identity, known_hosts, regression baseline, serial
//! port) that are relative are resolved against the scenario file's directory.
//! Board-side paths (workdir, sysfs root, a safetensors model) must be absolute.

pub mod locate;
pub mod probe_check;
pub mod raw;
pub mod units;
mod validate;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use locate::{SourceMap, TextPos};
pub use probe_check::{validate_against_probe, BoardFacts, PolicyFacts, ResolvedBoard, ThermalZoneFacts};

/// Scenario files larger than this are refused unread: real ones are a few kilobytes.
pub const MAX_SCENARIO_BYTES: usize = 256 * 1024;
/// A document that expands (aliases followed) to more nodes than this is refused before
/// `serde_yaml` sees it. Real scenarios have a few hundred nodes.
pub const MAX_EXPANDED_NODES: u64 = 20_000;

/// Reads and validates a scenario file. Relative host paths in it are resolved against the
/// file's directory.
pub fn load_scenario(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
    let path = path.as_ref();
    let read_error = |source| ScenarioError::Read { path: path.to_path_buf(), source };
    // Read at most one byte past the limit: the size in the metadata says nothing for a FIFO
    // or a device such as /dev/zero, which would otherwise be read forever.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SCENARIO_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() > MAX_SCENARIO_BYTES {
        return Err(ScenarioError::TooLarge {
            source_name: path.display().to_string(),
            bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(bytes.len() as u64),
            limit: MAX_SCENARIO_BYTES,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| ScenarioError::Syntax {
        source_name: path.display().to_string(),
        line: text_line_of_byte(e.as_bytes(), e.utf8_error().valid_up_to()),
        column: 1,
        near: None,
        message: "the file is not valid UTF-8".into(),
    })?;
    parse_scenario(&text, &path.display().to_string())
}

/// The CPUs this process may run on (its affinity and cgroup quota, as `taskset` or a container
/// sets them): what a board on this host shares with the harness.
pub fn cpus_for_hil() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Advice on a runnable scenario whose figures this host would blur (printed by `hil validate` and
/// `hil run` as `note:` lines and kept in `run.json`; nothing is refused): the boards that run on
/// this host (simulated or local; they run in parallel) keep all `host_cpus` CPUs hil may use busy
/// with their `measure.threads` (see [`cpus_for_hil`]; count them before the runner moves itself
/// off the agents' CPUs). The harness (and a simulated board's simulator and PPK2 emulator) then
/// shares those CPUs with the agents, so latency includes their time slices and a simulated
/// board's power model counts the waits as busy (`sim_busy_cores` above the agent's own
/// `cpu_busy_cores`). With a CPU left over, hil runs there and there is nothing to say.
pub fn host_sharing_notes(scenario: &Scenario, host_cpus: usize) -> Vec<String> {
    let threads = scenario.measure.threads as usize;
    let here: Vec<&BoardSpec> = scenario.boards.iter().filter(|b| b.runs_here()).collect();
    if here.is_empty() || threads * here.len() < host_cpus {
        return Vec::new();
    }
    let sim = here.iter().any(|b| b.sim);
    let names: Vec<String> =
        here.iter().map(|b| format!("{} ({})", b.name, if b.sim { "simulated" } else { "local" })).collect();
    vec![format!(
        "measure.threads = {threads} on {} board(s) run on this host ({}) keep all {host_cpus} CPU(s) hil may use busy: \
         the harness{} shares them with the agent(s), so latency includes its time slices{}; for clean figures leave a \
         CPU free (fewer threads, or fewer boards on this host)",
        here.len(),
        names.join(", "),
        if sim { ", with the simulator and its PPK2 emulator," } else { "" },
        if sim { " and the simulated power counts the waits as busy (sim_busy_cores)" } else { "" }
    )]
}

fn text_line_of_byte(bytes: &[u8], index: usize) -> usize {
    1 + bytes[..index.min(bytes.len())].iter().filter(|b| **b == b'\n').count()
}

/// What a valid scenario must also satisfy to be run now (checked by `hil run` and
/// `hil validate`, not when a stored run's scenario is read back for a report, so runs made
/// before a check existed still load): no more inference threads than the CPUs a board pins
/// the agent to, and no two local or simulated boards that are one board (one workdir, or one
/// sysfs root: see [`crate::board_lock::board_key`]; SSH boards, which test rigs put behind one
/// server, are told apart by the lock when they are reached), and a simulated board's CPUs,
/// levels and policies exist in the tree its simulator will lay out on this host.
/// Returns every problem, one per line, naming the field and value.
pub fn check_runnable(scenario: &Scenario) -> Result<(), String> {
    let mut problems = Vec::new();
    let threads = scenario.measure.threads as usize;
    for (i, b) in scenario.boards.iter().enumerate() {
        if let Some(cpus) = b.cpus.as_ref().filter(|cpus| threads > cpus.len()) {
            problems.push(format!(
                "measure.threads = {threads}: is more than the {} CPU(s) boards[{i}] ({}) pins the agent to (cpus \
                 {cpus:?}); the threads would time-slice, and latency would measure the scheduler: give it at \
                 least as many CPUs or fewer threads",
                cpus.len(),
                b.name
            ));
        }
    }
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let local = |b: &&BoardSpec| b.labgrid.is_none() && b.runs_here();
    for (i, b) in scenario.boards.iter().enumerate().filter(|(_, b)| local(b)) {
        let key = crate::board_lock::board_key(b);
        if let Some(first) = seen.insert(key.clone(), i) {
            problems.push(format!(
                "boards[{i}] ({}): is the same board as boards[{first}] ({key}); give each board its own \
                 workdir (simulated) or sysfs root (local)",
                b.name
            ));
        }
    }
    // A simulated board's facts are known without starting it: levels it does not offer, CPUs
    // this host lacks or a policy it has not are refused here, not once its simulator runs.
    if scenario.boards.iter().any(|b| b.sim) {
        let facts = crate::sim::simulator::simulated_board_facts();
        for b in scenario.boards.iter().filter(|b| b.sim) {
            if let Err(e) = validate_against_probe(scenario, &b.name, &facts) {
                problems.extend(e.problems().iter().map(|p| format!("{p} (simulated board)")));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Parses and validates scenario text. `source_name` is where the text came from (a path,
/// or a label such as `<embedded sim-rt3>`): it is used in every message, its file stem is the
/// default scenario name, and, when it has a directory part, relative host paths are resolved
/// against that directory.
pub fn parse_scenario(text: &str, source_name: &str) -> Result<Scenario, ScenarioError> {
    if text.len() > MAX_SCENARIO_BYTES {
        return Err(ScenarioError::TooLarge {
            source_name: source_name.to_string(),
            bytes: text.len() as u64,
            limit: MAX_SCENARIO_BYTES,
        });
    }
    let map = Arc::new(SourceMap::parse(text));
    let expansion = map.alias_expansion();
    if expansion.expanded_nodes > MAX_EXPANDED_NODES {
        let (path, value, pos) = match expansion.largest {
            Some((path, alias, pos, _)) => (path, alias, pos),
            None => (String::new(), String::new(), TextPos { line: 1, column: 1 }),
        };
        return Err(ScenarioError::Invalid {
            source_name: source_name.to_string(),
            problems: vec![FieldError {
                path: if path.is_empty() { "(document)".into() } else { path },
                value,
                message: format!(
                    "with aliases expanded the document has {} nodes, over the limit of {MAX_EXPANDED_NODES}: \
                     refusing what looks like a YAML alias bomb",
                    expansion.expanded_nodes
                ),
                line: pos.line,
                column: pos.column,
            }],
        });
    }
    let raw: raw::RawScenario = serde_yaml::from_str(text).map_err(|e| syntax_error(&e, source_name, &map))?;
    let base_dir = Path::new(source_name).parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf);
    validate::validate(raw, source_name, base_dir.as_deref(), map)
}

fn syntax_error(error: &serde_yaml::Error, source_name: &str, map: &SourceMap) -> ScenarioError {
    let (line, column) = error.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
    // serde_yaml puts " at line L column C" in the text; the position is reported separately.
    let message = error.to_string().replacen(&format!(" at line {line} column {column}"), "", 1);
    // serde errors start with the field path ("boards[0]: unknown field ..."); libyaml's do not.
    let has_path = message.split_once(": ").is_some_and(|(head, _)| {
        !head.is_empty() && head.chars().all(|c| c.is_ascii_alphanumeric() || "_.[]?-".contains(c))
    });
    let near = if has_path { None } else { Some(map.path_at_line(line)).filter(|p| !p.is_empty()) };
    ScenarioError::Syntax { source_name: source_name.to_string(), line, column, near, message }
}

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name}: line 1: the scenario is {bytes} bytes, over the limit of {limit} bytes")]
    TooLarge { source_name: String, bytes: u64, limit: usize },
    /// YAML that does not parse, or that does not fit the schema (unknown key, wrong type).
    #[error("{source_name}: line {line}, column {column}{}: {message}", near.as_ref().map(|p| format!(" (near {p})")).unwrap_or_default())]
    Syntax { source_name: String, line: usize, column: usize, near: Option<String>, message: String },
    /// Values that parse but are not acceptable; every problem found is listed.
    #[error("{}", format_problems(source_name, problems))]
    Invalid { source_name: String, problems: Vec<FieldError> },
}

impl ScenarioError {
    /// The individual field problems (empty for read and syntax errors).
    pub fn problems(&self) -> &[FieldError] {
        match self {
            ScenarioError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn format_problems(source_name: &str, problems: &[FieldError]) -> String {
    match problems {
        [one] => format!("{source_name}: {one}"),
        many => {
            let mut out = format!("{source_name}: {} problems:", many.len());
            for p in many {
                out.push_str("\n  - ");
                out.push_str(&p.to_string());
            }
            out
        }
    }
}

/// One bad value: where it is, what it was and why it is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Field path, e.g. `boards[1].host`.
    pub path: String,
    /// The offending value as written (strings quoted and escaped), or `(missing)`.
    pub value: String,
    pub message: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {} = {}: {}", self.line, self.column, self.path, self.value, self.message)
    }
}

/// A validated scenario: the runner's input.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Used for the results directory (`results/<name>/<stamp>`): the `name` key, else the
    /// file stem. Restricted to `[A-Za-z0-9._-]`.
    pub name: String,
    pub description: Option<String>,
    pub boards: Vec<BoardSpec>,
    pub model: ModelSpec,
    /// In the order written; names are unique.
    pub variants: Vec<VariantSpec>,
    pub dvfs: DvfsSpec,
    pub measure: MeasureSpec,
    pub constraints: Constraints,
    pub policy: PolicySpec,
    pub regression: Option<RegressionSpec>,
    /// Where the text came from, and its position map for later (probe-time) errors.
    pub(crate) source_name: String,
    pub(crate) source_map: Arc<SourceMap>,
}

impl Scenario {
    pub fn board(&self, name: &str) -> Option<&BoardSpec> {
        self.boards.iter().find(|b| b.name == name)
    }
    pub fn variant(&self, name: &str) -> Option<&VariantSpec> {
        self.variants.iter().find(|v| v.name == name)
    }
    /// The path or label the scenario was read from.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }
    /// A located error about a field of this scenario (for checks made after validation).
    pub fn field_error(&self, path: &str, value: impl Into<String>, message: impl Into<String>) -> FieldError {
        let (pos, _) = self.source_map.locate(path);
        FieldError {
            path: path.into(),
            value: value.into(),
            message: message.into(),
            line: pos.line,
            column: pos.column,
        }
    }
}

/// One board under test.
#[derive(Clone, Debug, PartialEq)]
pub struct BoardSpec {
    /// Unique, `[A-Za-z0-9._-]`, used in results and messages.
    pub name: String,
    /// A simulated board on this host (fake sysfs, local agent, PPK2 emulator). Always local.
    pub sim: bool,
    pub transport: TransportSpec,
    /// Program (and arguments) the agent is started through, e.g. `["qemu-aarch64-static"]`
    /// to run an aarch64 agent on an x86-64 CI "board". Every element is passed as a quoted
    /// argument, never through a shell unquoted.
    pub exec_prefix: Option<Vec<String>>,
    /// Write sysfs files through `sudo -n` (non-interactive: a password prompt fails fast).
    pub sudo: bool,
    pub target: TargetSpec,
    /// Absolute directory on the board for the agent binary and the DVFS restore file.
    pub workdir: String,
    /// CPUs the agent is pinned to; `None` leaves placement to the scheduler.
    pub cpus: Option<Vec<usize>>,
    pub cpufreq_policies: PolicySelection,
    /// Absolute sysfs mount point on the board (`/sys`; a fake tree in tests).
    pub sysfs_root: String,
    /// `thermal_zoneN` or a zone type such as `cpu-thermal`; `None`: the first zone, if any.
    pub thermal_zone: Option<String>,
    /// Power monitor on the host wired to the board's supply; `None` for latency-only runs
    /// (a simulated board brings its own emulated PPK2).
    pub monitor: Option<MonitorSpec>,
    pub battery: Option<BatterySpec>,
    /// The board comes from a labgrid lab: this entry stands for the place(s) it selects, each a
    /// board named after its place, reached at the place's `NetworkService` (the SSH transport's
    /// host, port and user are filled in then), `{place}` in `workdir`, `sysfs_root` and
    /// `exec_prefix` replaced by the place's name.
    pub labgrid: Option<crate::labgrid::LabgridSpec>,
}

impl BoardSpec {
    /// Whether the agent runs on this host (a simulated or local board), beside hil itself.
    pub fn runs_here(&self) -> bool {
        self.transport == TransportSpec::Local
    }
}

/// What `{place}` stands for in a labgrid board entry's paths.
pub const PLACE_PLACEHOLDER: &str = "{place}";

/// How the harness reaches a board.
#[derive(Clone, Debug, PartialEq)]
pub enum TransportSpec {
    Ssh(SshSpec),
    /// Commands run on this host (the simulated board, tests).
    Local,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SshSpec {
    /// Host name or IP address (never starting with `-`, so it cannot pose as an option).
    pub host: String,
    pub port: u16,
    /// `[a-z_][a-z0-9_-]*`, at most 32 characters.
    pub user: String,
    /// Private key file on the host; `None`: use ssh-agent.
    pub identity: Option<PathBuf>,
    /// known_hosts file on the host; `None`: `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    pub host_key_checking: HostKeyChecking,
    pub connect_timeout: Duration,
    /// Default timeout for one remote command.
    pub command_timeout: Duration,
    /// SSH keepalive interval.
    pub keepalive: Duration,
}

/// What to do with the board's host key. Strict unless the scenario says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKeyChecking {
    /// The key must already be in known_hosts and match.
    Strict,
    /// An unknown host's key is added; a changed key is still refused (OpenSSH `accept-new`).
    AcceptNew,
    /// No checking at all: only for throw-away lab networks.
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// From the board's `uname -m`.
    Auto,
    /// A Rust target triple, e.g. `aarch64-unknown-linux-musl`.
    Triple(String),
}

/// Which cpufreq policies the DVFS levels are applied to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySelection {
    /// The policies that govern the pinned CPUs (every policy when nothing is pinned);
    /// resolved from the probe.
    FromCpus,
    /// Named policies (`policy0`, `policy4`, ...).
    Named(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct MonitorSpec {
    pub kind: MonitorKind,
    pub port: MonitorPort,
    /// Serial baud rate (the PPK2 is USB CDC and ignores it).
    pub baud: u32,
    pub settings: MonitorSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitorKind {
    Ppk2,
    Ina,
    Scpi,
}

impl MonitorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorKind::Ppk2 => "ppk2",
            MonitorKind::Ina => "ina",
            MonitorKind::Scpi => "scpi",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorPort {
    /// Found by USB VID:PID (PPK2 only).
    Auto,
    /// A serial device (or pseudo-terminal) on the host.
    Path(PathBuf),
    /// A serial port served over the network: `tcp://HOST:PORT` (ser2net raw) or
    /// `rfc2217://HOST:PORT` (Telnet COM-PORT-OPTION, what labgrid exporters offer).
    Network(String),
    /// The place's `NetworkSerialPort` (labgrid boards only), resolved when the place is acquired.
    Labgrid,
}

/// Per-instrument settings.
#[derive(Clone, Debug, PartialEq)]
pub enum MonitorSettings {
    Ppk2(Ppk2Settings),
    Ina(InaSettings),
    Scpi(ScpiSettings),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ppk2Settings {
    /// The PPK2 powers the board at this voltage (800-5000 mV, REGULATOR_SET's range).
    SourceMeter { source_mv: u32 },
    /// The PPK2 sits in series with the board's own supply, whose rail is at `rail_mv` (the PPK2 only
    /// measures current in this mode: power and energy need the rail's voltage).
    AmpereMeter { rail_mv: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InaSettings {
    pub format: InaFormat,
    /// Column names overriding the auto-detected mapping (`None`: detect from the header).
    pub columns: InaColumns,
    /// The fields of a headerless line, in order, in header syntax (`millis`, `Current[mA]`, `-` to
    /// skip); `None`: the sketch prints a header (or the default Adafruit-style layout applies).
    pub layout: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InaFormat {
    Auto,
    Csv,
    Tsv,
    KeyValue,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InaColumns {
    pub time: Option<String>,
    pub current: Option<String>,
    pub voltage: Option<String>,
    pub power: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScpiSettings {
    pub current_query: String,
    pub voltage_query: String,
    pub termination: LineTermination,
    pub poll_interval: Duration,
    pub reply_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTermination {
    Lf,
    CrLf,
    Cr,
}

impl LineTermination {
    pub fn as_str(self) -> &'static str {
        match self {
            LineTermination::Lf => "\n",
            LineTermination::CrLf => "\r\n",
            LineTermination::Cr => "\r",
        }
    }
}

/// The battery a projection assumes for this board.
#[derive(Clone, Debug, PartialEq)]
pub struct BatterySpec {
    pub capacity: BatteryCapacity,
    /// Peukert exponent (1.0 = ideal battery); `None` means 1.0.
    pub peukert_exponent: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatteryCapacity {
    MilliampHours { mah: f64, nominal_voltage_v: f64 },
    WattHours(f64),
}

impl BatterySpec {
    /// Nominal energy in joules (mAh x V x 3.6, or Wh x 3600).
    pub fn energy_joules(&self) -> f64 {
        match self.capacity {
            BatteryCapacity::MilliampHours { mah, nominal_voltage_v } => mah * nominal_voltage_v * 3.6,
            BatteryCapacity::WattHours(wh) => wh * 3600.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub source: ModelSource,
    /// Sequence length; `None`: the preset's own (128 for BERT-like presets, 35 for `rt3-transformer`).
    pub seq: Option<u32>,
    /// Seed for synthetic weights and inputs.
    pub seed: u64,
    /// `rt3-transformer` only: also run the output projection onto its 33,278-word vocabulary
    /// (most of the model's MACs) as a linear layer, pruned like the others (`lm_head: true`).
    pub lm_head: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Preset(ModelPreset),
    /// A safetensors file already on the board (absolute path), read as `preset`'s architecture.
    Safetensors {
        path: String,
        preset: ModelPreset,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelPreset {
    /// 6 layers, d=768, 12 heads, FFN 3072, seq 128.
    Distilbert,
    /// 6 layers, d=384, 12 heads, FFN 1536.
    Minilm,
    /// RT3's own model, the PyTorch word-language-model Transformer: 2 layers, d=800, 4 heads,
    /// FFN 200, seq 35, ReLU, causal attention, a 33,278-word vocabulary.
    Rt3Transformer,
}

impl ModelPreset {
    /// The name used in YAML and in the agent protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelPreset::Distilbert => "distilbert",
            ModelPreset::Minilm => "minilm",
            ModelPreset::Rt3Transformer => "rt3-transformer",
        }
    }

    /// Whether the model has a vocabulary, so `lm_head` applies.
    pub fn has_vocabulary(self) -> bool {
        matches!(self, ModelPreset::Rt3Transformer)
    }
}

/// One way of running the model.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantSpec {
    /// Unique, `[A-Za-z0-9._-]`.
    pub name: String,
    pub kind: VariantKind,
    /// Task accuracy of this variant (fraction in [0, 1]) when known from training; when every
    /// pattern set meeting the deadline at a level has one, the RT3 schedule runs the most
    /// accurate there (before measured fidelity, see `analysis::schedule`).
    pub accuracy: Option<f64>,
    /// For a pattern set: the least cosine similarity of its output to the dense model's (measured
    /// on the board, `fidelity_cosine`) for the RT3 schedule to choose it.
    pub min_fidelity: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum VariantKind {
    Dense,
    /// Block-structured pruning: strips of `block_rows` rows; inside each strip whole column
    /// segments `block_cols` wide with the smallest L2 norm are removed down to `sparsity`.
    Block {
        sparsity: f64,
        block_rows: u32,
        block_cols: u32,
        /// `false`: every layer pruned to `sparsity`. `true`: one threshold over all layers,
        /// so `sparsity` holds overall and layers differ (how RT3's BP model was pruned).
        global: bool,
    },
    /// A pattern set on top of the block variant `base` (listed earlier): `patterns_per_set`
    /// masks over `tile` x `tile` tiles. `sparsity` is the target fraction of zeros per layer
    /// with BP and PP zeros together (the agent's meaning), so it exceeds the base's.
    Pattern {
        base: String,
        tile: u32,
        patterns_per_set: u32,
        sparsity: f64,
        method: PatternMethod,
        /// Seeds the random tile choice of [`PatternMethod::Rt3TileSums`]; default: the model seed.
        seed: u64,
    },
}

/// How candidate patterns are derived from the weights (mirrors the agent protocol's
/// `PatternMethod`; YAML `rt3_tile_sums` | `frequent_top_k`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PatternMethod {
    /// RT3: sums of randomly chosen tiles, the smallest positions zeroed.
    #[default]
    Rt3TileSums,
    /// PatDNN: the most frequent per-tile top-k masks.
    FrequentTopK,
}

impl VariantKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            VariantKind::Dense => "dense",
            VariantKind::Block { .. } => "block",
            VariantKind::Pattern { .. } => "pattern",
        }
    }
    /// The nominal sparsity (0 for dense).
    pub fn sparsity(&self) -> f64 {
        match self {
            VariantKind::Dense => 0.0,
            VariantKind::Block { sparsity, .. } | VariantKind::Pattern { sparsity, .. } => *sparsity,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DvfsSpec {
    pub levels: LevelsSpec,
    pub governor: GovernorChoice,
    /// Wait after pinning a frequency before reading it back and measuring.
    pub settle: Duration,
    /// For each entry of `levels` (sorted), its index in the YAML list, so later errors
    /// (a level the board does not offer) point at the right line. Empty for `all`.
    pub level_yaml_index: Vec<usize>,
}

/// Frequency levels to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LevelsSpec {
    /// Every frequency the board offers; known only after probing
    /// (see [`validate_against_probe`]).
    All,
    /// Frequencies in kHz, highest first, no duplicates.
    Khz(Vec<u64>),
}

/// How a frequency is pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GovernorChoice {
    /// `userspace` + `scaling_setspeed` where offered, else min=max under the current governor.
    Auto,
    /// Require the `userspace` governor (the probe fails without it).
    Userspace,
    /// Switch to this governor (e.g. `performance`) and pin with min=max.
    MinMaxUnder(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct MeasureSpec {
    /// Untimed inferences before each window.
    pub warmup_iterations: u32,
    /// A window lasts at least this many inferences ...
    pub min_iterations: u64,
    /// ... and at least this long (seconds, not milliseconds: the monitor needs samples).
    pub min_duration: Duration,
    /// Repeats of every (level, variant) cell, interleaved (see [`crate::plan`]).
    pub repeats: u32,
    /// Idle power measured at each level before its variants (zero: skip).
    pub idle_duration: Duration,
    /// Wait for the thermal zone to drop below this before each cell (`None`: no wait).
    pub cooldown_temp_c: Option<f64>,
    /// Give up waiting for the cool-down after this long (the cell is flagged, not skipped).
    pub cooldown_timeout: Duration,
    /// Attempts per cell (reconnect and retry after an SSH drop or agent crash).
    pub max_attempts: u32,
    /// Keep every power sample (`power.parquet`), not just per-window aggregates.
    pub raw_power: bool,
    /// A window losing more than this fraction of monitor samples is flagged and retried.
    pub max_lost_fraction: f64,
    /// Agent threads (1: the single pinned core DVFS experiments want).
    pub threads: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Constraints {
    /// Latency an inference must meet (RT3's timing constraint); `None`: no deadline.
    pub latency_deadline: Option<Deadline>,
}

/// RT3's timing constraint, as the scenario gives it.
///
/// A fixed duration is what a real deployment has. A deadline relative to a variant measured in
/// the same run (`"1.3x dense"`: 1.3 times dense's latency at the highest level measured) keeps an
/// experiment's shape independent of how fast the board is: the simulated default runs on
/// whatever host the user has, and only ratios between levels and variants are the simulator's;
/// the absolute speed is the host's.
#[derive(Clone, Debug, PartialEq)]
pub enum Deadline {
    Fixed(Duration),
    /// `factor` times `reference`'s latency (the schedule's statistic, p99 over every timed
    /// inference of every repeat) at the highest frequency measured on the same board.
    Relative {
        factor: f64,
        reference: String,
    },
}

impl Deadline {
    /// The deadline in ms when it does not depend on measurements.
    pub fn fixed_ms(&self) -> Option<f64> {
        match self {
            Deadline::Fixed(d) => Some(d.as_secs_f64() * 1e3),
            Deadline::Relative { .. } => None,
        }
    }

    /// The deadline given the reference's latency statistic at the highest level measured (ms).
    pub fn resolve_ms(&self, reference_ms: Option<f64>) -> Option<f64> {
        match self {
            Deadline::Fixed(d) => Some(d.as_secs_f64() * 1e3),
            Deadline::Relative { factor, .. } => reference_ms.filter(|r| r.is_finite()).map(|r| factor * r),
        }
    }

    /// As the scenario writes it: `20ms`, `1.3x dense`.
    pub fn describe(&self) -> String {
        match self {
            Deadline::Fixed(d) => units::format_duration(*d),
            Deadline::Relative { factor, reference } => format!("{factor}x {reference}"),
        }
    }

    /// In words, for reports: `20 ms`, `1.3 x dense's p99 at the highest level measured`.
    pub fn explain(&self) -> String {
        match self {
            Deadline::Fixed(d) => units::format_duration(*d),
            Deadline::Relative { factor, reference } => {
                format!("{factor} x {reference}'s p99 latency at the highest level the run measures on the board, in the same run")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PolicySpec {
    /// Shares of the battery's energy spent at each level, highest level first; `None`:
    /// RT3's 50/30/20 % for three levels, equal shares otherwise (see [`PolicySpec::shares_for`]).
    pub battery_shares: Option<Vec<f64>>,
    pub workload: Workload,
}

impl PolicySpec {
    /// The shares to use with `levels` levels.
    pub fn shares_for(&self, levels: usize) -> Vec<f64> {
        match &self.battery_shares {
            Some(shares) => shares.clone(),
            None if levels == 3 => vec![0.5, 0.3, 0.2],
            None => vec![1.0 / levels.max(1) as f64; levels],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Workload {
    /// Inferences run back to back until the battery is empty.
    BackToBack,
    /// One inference per period, idling at measured idle power in between.
    Periodic { period: Duration },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RegressionSpec {
    /// A previous run directory to compare against at the end of `hil run`.
    pub baseline: Option<PathBuf>,
    /// A change smaller than this (percent) is noise, whatever the test says.
    pub threshold_pct: f64,
    /// Significance level of the test.
    pub alpha: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_that_keep_every_cpu_of_this_host_busy_get_a_note() {
        let text = |threads: u32, boards: &str| {
            format!(
                "boards:\n{boards}model: {{preset: minilm}}\nvariants: [{{name: dense, kind: dense}}]\n\
                 dvfs: {{levels: all}}\nmeasure: {{threads: {threads}}}\n"
            )
        };
        let sim = "  - {name: s, sim: true, cpus: [0, 1], workdir: /tmp/w1}\n";
        let local = "  - {name: l, transport: local, sysfs_root: /tmp/fake}\n";
        let ssh = "  - {name: r, host: 10.0.0.2, user: pi, cpus: [0, 1]}\n";
        let notes = |threads, boards: &str, cpus| {
            host_sharing_notes(&parse_scenario(&text(threads, boards), "s.yaml").unwrap(), cpus)
        };
        // Two threads on a simulated board fill a 2-CPU host; an SSH board runs elsewhere.
        let two = notes(2, &format!("{sim}{ssh}"), 2);
        assert_eq!(two.len(), 1, "{two:?}");
        assert!(
            two[0].starts_with("measure.threads = 2 on 1 board(s) run on this host (s (simulated)) keep all 2 CPU(s)"),
            "{two:?}"
        );
        assert!(two[0].contains("PPK2 emulator") && two[0].contains("sim_busy_cores"), "{two:?}");
        // Boards run in parallel: one thread on each of two boards fills two CPUs too.
        let both = notes(1, &format!("{sim}{local}"), 2);
        assert!(
            both.len() == 1 && both[0].contains("on 2 board(s) run on this host (s (simulated), l (local))"),
            "{both:?}"
        );
        let local_only = notes(2, local, 2);
        assert!(local_only.len() == 1 && !local_only[0].contains("sim_busy"), "{local_only:?}");
        // A CPU left for hil, or only remote boards: nothing to say.
        assert!(notes(2, sim, 4).is_empty());
        assert!(notes(1, sim, 2).is_empty());
        assert!(notes(2, ssh, 2).is_empty());
        assert_eq!(notes(1, sim, 1).len(), 1);
    }

    #[test]
    fn a_scenario_that_parses_may_still_not_be_runnable() {
        let text = |threads: u32, second_workdir: &str| {
            format!(
                "boards:\n  - {{name: a, sim: true, cpus: [0], workdir: /tmp/w1}}\n  \
                 - {{name: b, sim: true, workdir: {second_workdir}}}\nmodel: {{preset: minilm}}\n\
                 variants: [{{name: dense, kind: dense}}]\ndvfs: {{levels: all}}\nmeasure: {{threads: {threads}}}\n"
            )
        };
        let ok = parse_scenario(&text(1, "/tmp/w2"), "s.yaml").unwrap();
        assert_eq!(check_runnable(&ok), Ok(()));
        let both = parse_scenario(&text(2, "/tmp/w1"), "s.yaml").unwrap();
        let problems = check_runnable(&both).unwrap_err();
        assert!(problems.contains("measure.threads = 2") && problems.contains("boards[0] (a)"), "{problems}");
        assert!(problems.contains("boards[1] (b): is the same board as boards[0]"), "{problems}");
        assert_eq!(problems.lines().count(), 2, "{problems}");

        // A simulated board's CPUs and levels are known before it starts.
        let text = "boards: [{name: s, sim: true, cpus: [4000], workdir: /tmp/w1}]\nmodel: {preset: minilm}\n\
                    variants: [{name: dense, kind: dense}]\ndvfs: {levels: [1500MHz, 650MHz]}\n";
        let problems = check_runnable(&parse_scenario(text, "s.yaml").unwrap()).unwrap_err();
        assert!(problems.contains("boards[0].cpus = 4000: board s: CPU 4000 does not exist"), "{problems}");
        assert!(problems.ends_with("(simulated board)"), "{problems}");
        let text = text.replace("4000", "0");
        let problems = check_runnable(&parse_scenario(&text, "s.yaml").unwrap()).unwrap_err();
        assert!(problems.contains("dvfs.levels[1] = 650 MHz: board s: policy0 does not offer 650 MHz"), "{problems}");
        let fits = text.replace("650MHz", "600MHz");
        assert_eq!(check_runnable(&parse_scenario(&fits, "s.yaml").unwrap()), Ok(()));
    }

    #[test]
    fn battery_energy() {
        let b = BatterySpec {
            capacity: BatteryCapacity::MilliampHours { mah: 1000.0, nominal_voltage_v: 3.7 },
            peukert_exponent: None,
        };
        assert!((b.energy_joules() - 13_320.0).abs() < 1e-9);
        let rt3 = BatterySpec { capacity: BatteryCapacity::WattHours(10.5), peukert_exponent: None };
        assert!((rt3.energy_joules() - 37_800.0).abs() < 1e-9);
    }

    #[test]
    fn default_shares_follow_rt3_for_three_levels() {
        let p = PolicySpec { battery_shares: None, workload: Workload::BackToBack };
        assert_eq!(p.shares_for(3), vec![0.5, 0.3, 0.2]);
        assert_eq!(p.shares_for(4), vec![0.25; 4]);
    }
}
