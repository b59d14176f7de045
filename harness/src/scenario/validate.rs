//! Raw scenario -> the runner's types, refusing anything unsafe or out of range.
//!
//! Every problem is collected (not just the first) and located in the text, so
//! one `hil validate` shows everything to fix. The character sets are
//! deliberately narrow: names, hosts, users and board paths end up in remote
//! command lines and file names, and although every command is quoted by the
//! transport, a value that could only be an attack or a typo (`;`, `$(`,
//! newlines, a host starting with `-` that ssh would read as an option) is
//! refused here, before any board is touched.
//!
//! Numeric bounds are generous for real use and exist to catch typos and
//! hostile input (a billion repeats, a year-long window).

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::raw::*;
use super::units::{format_duration, format_khz, parse_duration, parse_frequency_khz};
use super::*;

const MAX_NAME_LEN: usize = 64;
const MAX_BOARDS: usize = 64;
const MAX_VARIANTS: usize = 64;
const MAX_LEVELS: usize = 64;
const MAX_CPUS: u64 = 4096;
/// Upper bound on cells in one run: at several seconds each, more would take weeks.
const MAX_CELLS: u64 = 100_000;
/// Frequencies outside 1 MHz ..= 10 GHz are typos (wrong unit), not CPUs.
const MIN_LEVEL_KHZ: u64 = 1_000;
const MAX_LEVEL_KHZ: u64 = 10_000_000;
/// PPK2 REGULATOR_SET accepts 800-5000 mV (Nordic's ppk2 firmware / pc-nrfconnect-ppk).
const PPK2_MIN_MV: u64 = 800;
const PPK2_MAX_MV: u64 = 5000;

const HOUR: Duration = Duration::from_secs(3600);

pub(super) fn validate(
    raw: RawScenario,
    source_name: &str,
    base_dir: Option<&Path>,
    map: Arc<SourceMap>,
) -> Result<Scenario, ScenarioError> {
    let home = std::env::var_os("HOME");
    let mut c = Checker { map: &map, base_dir, home, problems: Vec::new() };

    let name = scenario_name(&mut c, raw.name.as_deref(), source_name);
    if let Some(d) = &raw.description {
        if d.chars().any(|ch| ch.is_control() && ch != '\n' && ch != '\t') || d.len() > 4096 {
            c.fail("description", shown_str(d), "must be at most 4096 characters without control characters");
        }
    }

    let model = model(&mut c, &raw.model);
    let variants = variants(&mut c, &raw.variants, model.as_ref().map_or(0, |m| m.seed));
    let dvfs = dvfs(&mut c, &raw.dvfs);
    let measure = measure(&mut c, raw.measure.as_ref());
    let constraints = constraints(&mut c, raw.constraints.as_ref(), &variants);
    let policy = policy(&mut c, raw.policy.as_ref(), &dvfs.levels);
    let regression = raw.regression.as_ref().map(|r| regression(&mut c, r));

    if raw.boards.is_empty() {
        c.fail("boards", "[]", "at least one board is needed");
    } else if raw.boards.len() > MAX_BOARDS {
        c.fail("boards", format!("{} boards", raw.boards.len()), format!("at most {MAX_BOARDS} boards"));
    }
    let mut boards = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, rb) in raw.boards.iter().enumerate().take(MAX_BOARDS) {
        if let Some(first) = seen.insert(rb.name.clone(), i) {
            c.fail(
                &format!("boards[{i}].name"),
                shown_str(&rb.name),
                format!("duplicate board name (also boards[{first}])"),
            );
        }
        if let Some(b) = board(&mut c, i, rb) {
            boards.push(b);
        }
    }

    // A bound on the whole run, checked once the parts are known.
    if let LevelsSpec::Khz(levels) = &dvfs.levels {
        let cells =
            (boards.len() as u64) * (levels.len() as u64) * (variants.len() as u64) * u64::from(measure.repeats);
        if cells > MAX_CELLS {
            c.fail(
                "measure.repeats",
                measure.repeats.to_string(),
                format!("the plan would have {cells} cells, over the limit of {MAX_CELLS}"),
            );
        }
    }

    if !c.problems.is_empty() {
        let mut problems = c.problems;
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(ScenarioError::Invalid { source_name: source_name.to_string(), problems });
    }
    Ok(Scenario {
        name,
        description: raw.description,
        boards,
        model: model.expect("no problems means a model"),
        variants,
        dvfs,
        measure,
        constraints,
        policy,
        regression,
        source_name: source_name.to_string(),
        source_map: map.clone(),
    })
}

fn shown_str(s: &str) -> String {
    format!("{s:?}")
}

struct Checker<'a> {
    map: &'a SourceMap,
    base_dir: Option<&'a Path>,
    home: Option<OsString>,
    problems: Vec<FieldError>,
}

impl Checker<'_> {
    /// Whether a problem was already found at `path` (a value that did not parse stands in as a
    /// default, which must not be judged again).
    fn failed_at(&self, path: &str) -> bool {
        self.problems.iter().any(|p| p.path == path)
    }

    fn fail(&mut self, path: &str, value: impl Into<String>, message: impl Into<String>) {
        let (pos, _) = self.map.locate(path);
        self.problems.push(FieldError {
            path: path.to_string(),
            value: value.into(),
            message: message.into(),
            line: pos.line,
            column: pos.column,
        });
    }

    fn missing(&mut self, path: &str, message: impl Into<String>) {
        self.fail(path, "(missing)", message);
    }

    /// A field that does not apply in this context (e.g. `host` on a local board).
    fn not_applicable<T>(&mut self, path: &str, value: &Option<T>, shown: impl Fn(&T) -> String, why: &str) {
        if let Some(v) = value {
            self.fail(path, shown(v), why.to_string());
        }
    }

    fn uint(&mut self, path: &str, raw: &RawScalar, min: u64, max: u64) -> Option<u64> {
        let text = raw.text.trim();
        let problem = if text.starts_with('-') {
            "must not be negative".to_string()
        } else if !text.is_empty() && text.trim_start_matches('+').bytes().all(|b| b.is_ascii_digit()) {
            match text.trim_start_matches('+').parse::<u64>() {
                Ok(v) if v < min => format!("must be at least {min}"),
                Ok(v) if v > max => format!("must be at most {max}"),
                Ok(v) => return Some(v),
                Err(_) => format!("is too large (at most {max})"),
            }
        } else if text.parse::<f64>().is_ok() {
            if text.parse::<f64>().is_ok_and(|v| v > max as f64) {
                format!("is too large (at most {max})")
            } else {
                "must be a whole number".to_string()
            }
        } else {
            "must be a whole number".to_string()
        };
        self.fail(path, raw.shown(), problem);
        None
    }

    /// A real number in `[min, max]` (`max_exclusive`: `[min, max)`); a `%` suffix divides by 100.
    fn real(&mut self, path: &str, raw: &RawScalar, min: f64, max: f64, max_exclusive: bool) -> Option<f64> {
        let text = raw.text.trim();
        let parsed = match text.strip_suffix('%') {
            Some(pct) => pct.trim().parse::<f64>().map(|v| v / 100.0),
            None => text.parse::<f64>(),
        };
        let value = match parsed {
            Ok(v) if v.is_finite() => v,
            _ => {
                self.fail(path, raw.shown(), "must be a number");
                return None;
            }
        };
        let above = if max_exclusive { value >= max } else { value > max };
        if value < min || above {
            let upper = if max_exclusive { ")" } else { "]" };
            // The smallest positive float stands for "above zero" and is said so.
            let range = if min == f64::MIN_POSITIVE {
                format!("must be above 0 and {} {max}", if max_exclusive { "below" } else { "at most" })
            } else {
                format!("must be in [{min}, {max}{upper}")
            };
            self.fail(path, raw.shown(), range);
            return None;
        }
        Some(value)
    }

    fn duration(&mut self, path: &str, raw: &RawScalar, min: Duration, max: Duration) -> Option<Duration> {
        match parse_duration(&raw.text) {
            Err(why) => {
                self.fail(path, raw.shown(), why);
                None
            }
            Ok(d) if d < min => {
                let why = if d.is_zero() {
                    "must be longer than zero".to_string()
                } else {
                    format!("must be at least {}", format_duration(min))
                };
                self.fail(path, raw.shown(), why);
                None
            }
            Ok(d) if d > max => {
                self.fail(path, raw.shown(), format!("must be at most {}", format_duration(max)));
                None
            }
            Ok(d) => Some(d),
        }
    }

    fn opt_duration(
        &mut self,
        path: &str,
        raw: &Option<RawScalar>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        match raw {
            Some(r) => self.duration(path, r, min, max).unwrap_or(default),
            None => default,
        }
    }

    fn opt_uint(&mut self, path: &str, raw: &Option<RawScalar>, default: u64, min: u64, max: u64) -> u64 {
        match raw {
            Some(r) => self.uint(path, r, min, max).unwrap_or(default),
            None => default,
        }
    }

    /// Names of boards, variants and the scenario: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
    fn name(&mut self, path: &str, name: &str) -> bool {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            self.fail(
                path,
                shown_str(name),
                format!(
                    "names may use letters, digits, '.', '_' and '-', start with a letter or digit, \
                     and be at most {MAX_NAME_LEN} characters"
                ),
            );
        }
        ok
    }

    /// A path on the board: absolute, a conservative character set, no `.`/`..` or empty components.
    fn board_path(&mut self, path: &str, value: &str) -> Option<String> {
        let problem = if !value.starts_with('/') {
            Some("must be an absolute path on the board (starting with '/')".to_string())
        } else if value.len() > 1024 {
            Some("is longer than 1024 characters".to_string())
        } else if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || "/._+@%=,:~-".contains(*c))) {
            Some(format!(
                "contains {bad:?}; board paths may use letters, digits and / . _ + @ % = , : ~ - only \
                 (no spaces or shell characters)"
            ))
        } else {
            let trimmed = if value.len() > 1 { value.trim_end_matches('/') } else { value };
            let components: Vec<&str> = trimmed.split('/').skip(1).collect();
            if components.contains(&"..") {
                Some("must not contain '..' components".to_string())
            } else if components.contains(&".") {
                Some("must not contain '.' components".to_string())
            } else if trimmed != "/" && components.iter().any(|c| c.is_empty()) {
                Some("must not contain empty components ('//')".to_string())
            } else {
                return Some(if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() });
            }
        };
        self.fail(path, shown_str(value), problem.unwrap_or_default());
        None
    }

    /// A path on this host (key file, serial port, baseline run): no control characters, no
    /// `..`; `~/` expands to $HOME; relative paths are taken from the scenario file's directory.
    fn host_path(&mut self, path: &str, value: &str) -> Option<PathBuf> {
        let problem = if value.is_empty() {
            "must not be empty"
        } else if value.len() > 4096 {
            "is longer than 4096 characters"
        } else if value.chars().any(char::is_control) {
            "must not contain control characters"
        } else if value.split('/').any(|c| c == "..") {
            "must not contain '..' components (give a path without them)"
        } else {
            return Some(self.resolve_host_path(value));
        };
        self.fail(path, shown_str(value), problem);
        None
    }

    fn resolve_host_path(&self, value: &str) -> PathBuf {
        if let (Some(rest), Some(home)) = (value.strip_prefix("~/"), self.home.as_ref()) {
            return Path::new(home).join(rest);
        }
        let p = Path::new(value);
        match self.base_dir {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        }
    }
}

fn scenario_name(c: &mut Checker, name: Option<&str>, source_name: &str) -> String {
    match name {
        Some(n) => {
            c.name("name", n);
            n.to_string()
        }
        None => {
            let stem = Path::new(source_name).file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
            let ok = !stem.is_empty()
                && stem.len() <= MAX_NAME_LEN
                && stem.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                && stem.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch));
            if !ok {
                c.fail(
                    "name",
                    shown_str(&stem),
                    "the file name is not usable as a scenario name; set `name:` ([A-Za-z0-9._-])",
                );
            }
            stem
        }
    }
}

fn is_valid_hostname(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        })
}

fn check_host(c: &mut Checker, path: &str, host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if bare.parse::<IpAddr>().is_ok() || is_valid_hostname(host) {
        return true;
    }
    let why = if host.starts_with('-') {
        "must not start with '-' (ssh would read it as an option)"
    } else {
        "is not a host name or IP address (host names use letters, digits, '-' and '.', labels of at most \
         63 characters, not starting or ending with '-')"
    };
    c.fail(path, shown_str(host), why);
    false
}

fn check_user(c: &mut Checker, path: &str, user: &str) -> bool {
    let ok = !user.is_empty()
        && user.len() <= 32
        && user.starts_with(|ch: char| ch.is_ascii_lowercase() || ch == '_')
        && user.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-');
    if !ok {
        c.fail(path, shown_str(user), "user names must match [a-z_][a-z0-9_-]* and be at most 32 characters");
    }
    ok
}

/// A Linux cpulist (`0-3,6`) into sorted CPU numbers; `Err` with a reason.
fn parse_cpulist(text: &str) -> Result<Vec<u64>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{part:?} is not a CPU number or range (e.g. \"4-7\" or \"0,2\")"));
            }
            s.parse::<u64>().map_err(|_| format!("{part:?} is too large"))
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            return Err(format!("range {part:?} runs backwards"));
        }
        if hi >= MAX_CPUS {
            return Err(format!("CPU {hi} is beyond {}", MAX_CPUS - 1));
        }
        cpus.extend(lo..=hi);
    }
    Ok(cpus)
}

fn cpus(c: &mut Checker, path: &str, raw: &RawCpus) -> Option<Vec<usize>> {
    let (list, shown) = match raw {
        RawCpus::Text(t) => match parse_cpulist(t) {
            Ok(list) => (list, shown_str(t)),
            Err(why) => {
                c.fail(path, shown_str(t), why);
                return None;
            }
        },
        RawCpus::List(list) => (list.clone(), format!("{list:?}")),
    };
    if list.is_empty() {
        c.fail(path, shown, "is empty; leave `cpus` out to not pin the agent");
        return None;
    }
    if let Some(big) = list.iter().find(|&&cpu| cpu >= MAX_CPUS) {
        c.fail(path, shown, format!("CPU {big} is beyond {}", MAX_CPUS - 1));
        return None;
    }
    let mut sorted = list.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        c.fail(path, shown, format!("CPU {} is listed twice", w[0]));
        return None;
    }
    Some(sorted.into_iter().map(|cpu| cpu as usize).collect())
}

fn board(c: &mut Checker, i: usize, rb: &RawBoard) -> Option<BoardSpec> {
    let p = |field: &str| format!("boards[{i}].{field}");
    let problems_before = c.problems.len();
    c.name(&p("name"), &rb.name);
    let sim = rb.sim.unwrap_or(false);
    let labgrid = rb.labgrid.as_ref().and_then(|l| labgrid(c, &p("labgrid"), l));
    if rb.labgrid.is_some() {
        if sim {
            c.fail(
                &p("labgrid"),
                "(a labgrid section)",
                "a simulated board runs on this host: remove `labgrid` or `sim`",
            );
        }
        if rb.transport == Some(RawTransport::Local) {
            c.fail(
                &p("transport"),
                "\"local\"",
                "a labgrid board is reached over SSH: use transport: ssh or leave it out",
            );
        }
        let why = "comes from the labgrid place's NetworkService";
        c.not_applicable(&p("host"), &rb.host, |v| shown_str(v), why);
        c.not_applicable(&p("port"), &rb.port, RawScalar::shown, why);
    }
    // `{place}` stands for the place's name in a labgrid entry's paths; it is checked as a name.
    let with_place = |v: &str| if rb.labgrid.is_some() { v.replace(PLACE_PLACEHOLDER, "place") } else { v.to_string() };

    let kind = match (rb.transport, sim) {
        (Some(RawTransport::Ssh), true) => {
            c.fail(
                &p("transport"),
                "\"ssh\"",
                "a simulated board (sim: true) runs on this host: use transport: local or leave it out",
            );
            RawTransport::Local
        }
        (Some(t), _) => t,
        (None, true) => RawTransport::Local,
        (None, false) => RawTransport::Ssh,
    };
    let transport = match kind {
        RawTransport::Local => {
            let why = "only applies to transport: ssh";
            c.not_applicable(&p("host"), &rb.host, |v| shown_str(v), why);
            c.not_applicable(&p("port"), &rb.port, RawScalar::shown, why);
            c.not_applicable(&p("user"), &rb.user, |v| shown_str(v), why);
            c.not_applicable(&p("identity"), &rb.identity, |v| shown_str(v), why);
            c.not_applicable(&p("known_hosts"), &rb.known_hosts, |v| shown_str(v), why);
            c.not_applicable(&p("host_key_checking"), &rb.host_key_checking, |v| format!("{v:?}"), why);
            c.not_applicable(&p("connect_timeout"), &rb.connect_timeout, RawScalar::shown, why);
            c.not_applicable(&p("command_timeout"), &rb.command_timeout, RawScalar::shown, why);
            c.not_applicable(&p("keepalive"), &rb.keepalive, RawScalar::shown, why);
            TransportSpec::Local
        }
        RawTransport::Ssh => {
            let host = match &rb.host {
                Some(h) => {
                    check_host(c, &p("host"), h);
                    h.clone()
                }
                // Filled in from the place's NetworkService when it is acquired.
                None if rb.labgrid.is_some() => String::new(),
                None => {
                    c.missing(&p("host"), "an SSH board needs `host`");
                    String::new()
                }
            };
            let user = match &rb.user {
                Some(u) => {
                    check_user(c, &p("user"), u);
                    u.clone()
                }
                // The NetworkService's username, unless the entry overrides it.
                None if rb.labgrid.is_some() => String::new(),
                None => {
                    c.missing(&p("user"), "an SSH board needs `user`");
                    String::new()
                }
            };
            let port = c.opt_uint(&p("port"), &rb.port, 22, 1, 65535) as u16;
            let identity = rb.identity.as_ref().and_then(|v| c.host_path(&p("identity"), v));
            let known_hosts = rb.known_hosts.as_ref().and_then(|v| c.host_path(&p("known_hosts"), v));
            let host_key_checking = match rb.host_key_checking {
                None | Some(RawHostKeyChecking::Strict) => HostKeyChecking::Strict,
                Some(RawHostKeyChecking::AcceptNew) => HostKeyChecking::AcceptNew,
                Some(RawHostKeyChecking::Off) => HostKeyChecking::Off,
            };
            let sec = Duration::from_secs(1);
            TransportSpec::Ssh(SshSpec {
                host,
                port,
                user,
                identity,
                known_hosts,
                host_key_checking,
                connect_timeout: c.opt_duration(&p("connect_timeout"), &rb.connect_timeout, 10 * sec, sec, 600 * sec),
                command_timeout: c.opt_duration(&p("command_timeout"), &rb.command_timeout, 60 * sec, sec, HOUR),
                keepalive: c.opt_duration(&p("keepalive"), &rb.keepalive, 15 * sec, sec, 600 * sec),
            })
        }
    };

    let exec_prefix = rb.exec_prefix.as_ref().and_then(|StringList(list)| {
        let path = p("exec_prefix");
        if list.is_empty() || list.len() > 16 {
            c.fail(&path, format!("{list:?}"), "must hold 1 to 16 elements (leave it out for none)");
            return None;
        }
        let mut ok = true;
        for (j, arg) in list.iter().enumerate() {
            let arg = &with_place(arg);
            let safe = !arg.is_empty() && arg.chars().all(|ch| ch.is_ascii_alphanumeric() || "._/+=:,@%-".contains(ch));
            if !safe {
                c.fail(
                    &format!("{path}[{j}]"),
                    shown_str(arg),
                    "may use letters, digits and . _ / + = : , @ % - only (each element is one argument)",
                );
                ok = false;
            } else if j == 0 && arg.starts_with('-') {
                c.fail(
                    &format!("{path}[0]"),
                    shown_str(arg),
                    "the first element is a program and must not start with '-'",
                );
                ok = false;
            }
        }
        ok.then(|| list.clone())
    });

    let target = match rb.target.as_deref() {
        None | Some("auto") => TargetSpec::Auto,
        Some(t) => {
            let parts: Vec<&str> = t.split('-').collect();
            let ok = t.len() <= 64
                && (2..=5).contains(&parts.len())
                && parts.iter().all(|part| {
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '.')
                });
            if !ok {
                c.fail(
                    &p("target"),
                    shown_str(t),
                    "must be `auto` or a Rust target triple such as aarch64-unknown-linux-musl",
                );
            }
            TargetSpec::Triple(t.to_string())
        }
    };

    // A labgrid entry's paths may hold `{place}`: checked with a name in its stead, kept with it.
    let keep_placeholder = |checked: Option<String>, original: &str| match checked {
        Some(_) if original.contains(PLACE_PLACEHOLDER) => {
            Some(if original.len() > 1 { original.trim_end_matches('/').to_string() } else { original.to_string() })
        }
        other => other,
    };
    let workdir = match &rb.workdir {
        Some(w) => {
            let checked = c.board_path(&p("workdir"), &with_place(w));
            let checked = keep_placeholder(checked, w);
            if checked.as_deref() == Some("/") {
                c.fail(&p("workdir"), shown_str(w), "must not be the root directory");
            }
            checked.unwrap_or_default()
        }
        None => "/tmp/hil".to_string(),
    };

    let cpus = rb.cpus.as_ref().and_then(|raw| cpus(c, &p("cpus"), raw));

    let cpufreq_policies = match &rb.cpufreq_policies {
        None => PolicySelection::FromCpus,
        Some(StringList(list)) => {
            if list.is_empty() {
                c.fail(&p("cpufreq_policies"), "[]", "is empty; leave it out to use the policies of the pinned CPUs");
            }
            let mut seen = Vec::new();
            for (j, name) in list.iter().enumerate() {
                let path = format!("{}[{j}]", p("cpufreq_policies"));
                let digits = name.strip_prefix("policy").unwrap_or("");
                if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    c.fail(
                        &path,
                        shown_str(name),
                        "must be a cpufreq policy directory name such as policy0 or policy4",
                    );
                } else if seen.contains(name) {
                    c.fail(&path, shown_str(name), "is listed twice");
                }
                seen.push(name.clone());
            }
            PolicySelection::Named(list.clone())
        }
    };

    let sysfs_root = match &rb.sysfs_root {
        Some(root) if sim => {
            c.fail(
                &p("sysfs_root"),
                shown_str(root),
                "a simulated board uses the simulator's own sysfs tree; remove it",
            );
            String::new()
        }
        Some(root) => {
            let checked = c.board_path(&p("sysfs_root"), &with_place(root));
            keep_placeholder(checked, root).unwrap_or_default()
        }
        None => "/sys".to_string(),
    };
    if rb.sudo == Some(true) && sysfs_root != "/sys" && !sysfs_root.is_empty() {
        c.fail(
            &p("sysfs_root"),
            shown_str(&sysfs_root),
            "with `sudo: true` the cpufreq writes must go to the kernel's /sys (sudo is lent to nothing else); \
             a fake sysfs tree needs no sudo",
        );
    }

    let thermal_zone = rb.thermal_zone.as_ref().map(|z| {
        let ok = !z.is_empty() && z.len() <= 64 && z.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch));
        if !ok {
            c.fail(
                &p("thermal_zone"),
                shown_str(z),
                "must be a zone directory (thermal_zone0) or a zone type (cpu-thermal)",
            );
        }
        z.clone()
    });

    let monitor = match &rb.monitor {
        Some(_) if sim => {
            c.fail(&p("monitor"), "(a monitor)", "a simulated board brings its own emulated PPK2; remove `monitor`");
            None
        }
        Some(m) => monitor(c, &p("monitor"), m, rb.labgrid.is_some()),
        None => None,
    };
    let battery = rb.battery.as_ref().and_then(|b| battery(c, &p("battery"), b));

    if c.problems.len() > problems_before {
        return None;
    }
    Some(BoardSpec {
        name: rb.name.clone(),
        sim,
        transport,
        exec_prefix,
        sudo: rb.sudo.unwrap_or(false),
        target,
        workdir,
        cpus,
        cpufreq_policies,
        sysfs_root,
        thermal_zone,
        monitor,
        battery,
        labgrid,
    })
}

/// `boards[].labgrid`: exactly one of `place` or `tags` (with `count`, default 1), a coordinator
/// `HOST:PORT`, and what to do when the places are busy (`refuse`, the default, or `wait` for at
/// most `wait_timeout`, default 10 min).
fn labgrid(c: &mut Checker, path: &str, raw: &RawLabgrid) -> Option<crate::labgrid::LabgridSpec> {
    use crate::labgrid::{BusyPolicy, LabgridSpec, PlaceSelector};
    let before = c.problems.len();
    let p = |field: &str| format!("{path}.{field}");
    let word = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
    };
    let selector = match (&raw.place, &raw.tags) {
        (Some(place), None) => {
            if !word(place) {
                c.fail(&p("place"), shown_str(place), "must be a labgrid place name ([A-Za-z0-9._-], at most 64)");
            }
            c.not_applicable(
                &p("count"),
                &raw.count,
                RawScalar::shown,
                "applies to `tags` only (a place is one board)",
            );
            PlaceSelector::Place(place.clone())
        }
        (None, Some(tags)) => {
            if tags.is_empty() {
                c.fail(&p("tags"), "{}", "needs at least one tag, e.g. {board: rpi4}");
            }
            for (k, v) in tags {
                if !word(k) || !word(v) {
                    c.fail(
                        &format!("{}.{k}", p("tags")),
                        shown_str(v),
                        "tag names and values may use letters, digits and . _ - only",
                    );
                }
            }
            let count = c.opt_uint(&p("count"), &raw.count, 1, 1, 64) as usize;
            PlaceSelector::Tags { tags: tags.clone(), count }
        }
        (Some(_), Some(_)) => {
            c.fail(&p("place"), "(place and tags)", "give either `place` or `tags`, not both");
            return None;
        }
        (None, None) => {
            c.missing(&p("place"), "a labgrid board needs `place: NAME` or `tags: {...}` (with `count`)");
            return None;
        }
    };
    let coordinator = raw.coordinator.as_ref().map(|co| {
        let ok = co.rsplit_once(':').is_some_and(|(h, port)| {
            !h.is_empty()
                && !h.starts_with('-')
                && h.chars().all(|ch| ch.is_ascii_alphanumeric() || ".-[]:".contains(ch))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            c.fail(&p("coordinator"), shown_str(co), "must be HOST:PORT, e.g. 127.0.0.1:20408");
        }
        co.clone()
    });
    let busy = match raw.busy {
        None | Some(RawBusy::Refuse) => {
            c.not_applicable(&p("wait_timeout"), &raw.wait_timeout, RawScalar::shown, "applies to `busy: wait` only");
            BusyPolicy::Refuse
        }
        Some(RawBusy::Wait) => {
            let sec = Duration::from_secs(1);
            BusyPolicy::Wait {
                timeout: c.opt_duration(&p("wait_timeout"), &raw.wait_timeout, 600 * sec, sec, 24 * HOUR),
            }
        }
    };
    (c.problems.len() == before).then_some(LabgridSpec { coordinator, selector, busy })
}

fn printable_ascii(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(|ch| (' '..='~').contains(&ch))
}

fn monitor(c: &mut Checker, path: &str, m: &RawMonitor, labgrid: bool) -> Option<MonitorSpec> {
    let before = c.problems.len();
    let kind = match m.kind {
        RawMonitorKind::Ppk2 => MonitorKind::Ppk2,
        RawMonitorKind::Ina => MonitorKind::Ina,
        RawMonitorKind::Scpi => MonitorKind::Scpi,
    };
    let p = |field: &str| format!("{path}.{field}");
    let only = |k: &str| format!("applies to kind: {k} only");
    if kind != MonitorKind::Ppk2 {
        c.not_applicable(&p("mode"), &m.mode, |v| format!("{v:?}"), &only("ppk2"));
        c.not_applicable(&p("source_voltage_mv"), &m.source_voltage_mv, RawScalar::shown, &only("ppk2"));
        c.not_applicable(&p("rail_voltage_mv"), &m.rail_voltage_mv, RawScalar::shown, &only("ppk2"));
    }
    if kind != MonitorKind::Ina {
        c.not_applicable(&p("format"), &m.format, |v| format!("{v:?}"), &only("ina"));
        c.not_applicable(&p("columns"), &m.columns, |_| "(columns)".into(), &only("ina"));
    }
    if kind != MonitorKind::Scpi {
        c.not_applicable(&p("current_query"), &m.current_query, |v| shown_str(v), &only("scpi"));
        c.not_applicable(&p("voltage_query"), &m.voltage_query, |v| shown_str(v), &only("scpi"));
        c.not_applicable(&p("termination"), &m.termination, |v| format!("{v:?}"), &only("scpi"));
        c.not_applicable(&p("poll_interval"), &m.poll_interval, RawScalar::shown, &only("scpi"));
        c.not_applicable(&p("reply_timeout"), &m.reply_timeout, RawScalar::shown, &only("scpi"));
    }

    let port = match m.port.as_deref() {
        None | Some("auto") if kind == MonitorKind::Ppk2 => MonitorPort::Auto,
        None => {
            c.missing(&p("port"), "give the serial device of the monitor (only a PPK2 can be found automatically)");
            MonitorPort::Auto
        }
        Some("auto") => {
            c.fail(&p("port"), "\"auto\"", "only a PPK2 can be found automatically; give the serial device");
            MonitorPort::Auto
        }
        Some("labgrid") if labgrid => MonitorPort::Labgrid,
        Some("labgrid") => {
            c.fail(
                &p("port"),
                "\"labgrid\"",
                "only a board with a `labgrid` section has a place to take the port from",
            );
            MonitorPort::Auto
        }
        Some(port) => match crate::power::net::NetAddress::parse(port) {
            Ok(Some(addr)) => MonitorPort::Network(addr.to_string()),
            Err(why) => {
                c.fail(&p("port"), shown_str(port), why);
                MonitorPort::Auto
            }
            Ok(None) => MonitorPort::Path(c.host_path(&p("port"), port).unwrap_or_default()),
        },
    };
    let baud = match (&m.baud, kind) {
        (Some(b), MonitorKind::Ppk2) => {
            c.fail(&p("baud"), b.shown(), "the PPK2 is a USB CDC device and has no baud rate");
            0
        }
        (b, _) => c.opt_uint(&p("baud"), b, 115_200, 300, 4_000_000) as u32,
    };

    let settings = match kind {
        MonitorKind::Ppk2 => match m.mode {
            None => {
                c.missing(
                    &p("mode"),
                    "say `source` (the PPK2 powers the board at source_voltage_mv) or `ampere` (in series with the \
                     board's supply); there is no default because the wrong one can damage a board",
                );
                MonitorSettings::Ppk2(Ppk2Settings::AmpereMeter { rail_mv: 0 })
            }
            Some(RawPpk2Mode::Ampere) => {
                c.not_applicable(
                    &p("source_voltage_mv"),
                    &m.source_voltage_mv,
                    RawScalar::shown,
                    "applies to mode: source only; in ampere mode give the board's rail as rail_voltage_mv",
                );
                // In series with the board's own supply the PPK2 measures current only; the rail it
                // sits in is whatever that supply gives (1 V to 20 V is what labs wire a PPK2 into;
                // the PPK2 itself is specified for 0.8-5 V in ampere mode).
                let mv = match &m.rail_voltage_mv {
                    Some(v) => c.uint(&p("rail_voltage_mv"), v, PPK2_MIN_MV, PPK2_MAX_MV).unwrap_or(0),
                    None => {
                        c.missing(
                            &p("rail_voltage_mv"),
                            "ampere mode measures current only: give the voltage of the rail the PPK2 sits in \
                             series with, in mV (800-5000), so power and energy can be computed",
                        );
                        0
                    }
                };
                MonitorSettings::Ppk2(Ppk2Settings::AmpereMeter { rail_mv: mv as u32 })
            }
            Some(RawPpk2Mode::Source) => {
                c.not_applicable(
                    &p("rail_voltage_mv"),
                    &m.rail_voltage_mv,
                    RawScalar::shown,
                    "applies to mode: ampere only; in source mode the PPK2 sets the rail (source_voltage_mv)",
                );
                let mv = match &m.source_voltage_mv {
                    Some(v) => c.uint(&p("source_voltage_mv"), v, PPK2_MIN_MV, PPK2_MAX_MV).unwrap_or(0),
                    None => {
                        c.missing(&p("source_voltage_mv"), "source mode needs the supply voltage in mV (800-5000)");
                        0
                    }
                };
                MonitorSettings::Ppk2(Ppk2Settings::SourceMeter { source_mv: mv as u32 })
            }
        },
        MonitorKind::Ina => {
            let mut columns = InaColumns::default();
            let mut layout = None;
            let format = match m.format {
                None | Some(RawInaFormat::Auto) => InaFormat::Auto,
                Some(RawInaFormat::Csv) => InaFormat::Csv,
                Some(RawInaFormat::Tsv) => InaFormat::Tsv,
                Some(RawInaFormat::KeyValue) => InaFormat::KeyValue,
            };
            if let Some(RawInaColumnsSpec::Layout(fields)) = &m.columns {
                if format == InaFormat::KeyValue {
                    c.fail(
                        &p("columns"),
                        format!("{fields:?}"),
                        "a list of fields describes headerless CSV/TSV lines; key-value blocks name their own fields",
                    );
                }
                if fields.is_empty() || fields.len() > 32 {
                    c.fail(
                        &p("columns"),
                        format!("{fields:?}"),
                        "list 1-32 fields, in the order the sketch prints them",
                    );
                } else if let Some(bad) = fields.iter().find(|f| !printable_ascii(f, 64) || f.contains([',', '\t'])) {
                    c.fail(
                        &p("columns"),
                        shown_str(bad),
                        "each field must be 1-64 printable ASCII characters, no separators",
                    );
                } else if let Some(bad) = fields.iter().find(|f| crate::power::ina::classify_field(f).is_none()) {
                    c.fail(
                        &p("columns"),
                        shown_str(bad),
                        "not a field this driver knows: use e.g. millis, BusV[V], ShuntV[mV], Current[mA], Power[mW], or - to skip",
                    );
                } else if !fields.iter().any(|f| {
                    matches!(
                        crate::power::ina::classify_field(f).map(|c| c.quantity),
                        Some(crate::power::ina::Quantity::Current | crate::power::ina::Quantity::Power)
                    )
                }) {
                    c.fail(&p("columns"), format!("{fields:?}"), "the fields must include a current or a power");
                }
                layout = Some(fields.clone());
            }
            if let Some(RawInaColumnsSpec::Named(cols)) = &m.columns {
                let mut col = |field: &str, v: &Option<String>| {
                    v.as_ref().map(|name| {
                        if !printable_ascii(name, 64) {
                            c.fail(
                                &format!("{path}.columns.{field}"),
                                shown_str(name),
                                "must be 1-64 printable ASCII characters",
                            );
                        }
                        name.clone()
                    })
                };
                columns.time = col("time", &cols.time);
                columns.current = col("current", &cols.current);
                columns.voltage = col("voltage", &cols.voltage);
                columns.power = col("power", &cols.power);
            }
            MonitorSettings::Ina(InaSettings { format, columns, layout })
        }
        MonitorKind::Scpi => {
            let mut query = |field: &str, v: &Option<String>, default: &str| match v {
                Some(q) => {
                    if !printable_ascii(q, 64) {
                        c.fail(&p(field), shown_str(q), "must be 1-64 printable ASCII characters");
                    }
                    q.clone()
                }
                None => default.to_string(),
            };
            let current_query = query("current_query", &m.current_query, "MEAS:CURR?");
            let voltage_query = query("voltage_query", &m.voltage_query, "MEAS:VOLT?");
            let ms = Duration::from_millis(1);
            MonitorSettings::Scpi(ScpiSettings {
                current_query,
                voltage_query,
                termination: match m.termination {
                    None | Some(RawTermination::Lf) => LineTermination::Lf,
                    Some(RawTermination::Crlf) => LineTermination::CrLf,
                    Some(RawTermination::Cr) => LineTermination::Cr,
                },
                poll_interval: c.opt_duration(&p("poll_interval"), &m.poll_interval, 100 * ms, ms, 60_000 * ms),
                reply_timeout: c.opt_duration(&p("reply_timeout"), &m.reply_timeout, 1000 * ms, ms, 60_000 * ms),
            })
        }
    };
    (c.problems.len() == before).then_some(MonitorSpec { kind, port, baud, settings })
}

fn battery(c: &mut Checker, path: &str, b: &RawBattery) -> Option<BatterySpec> {
    let before = c.problems.len();
    let p = |field: &str| format!("{path}.{field}");
    let capacity = match (&b.capacity_mah, &b.capacity_wh) {
        (Some(mah), None) => {
            let mah = c.real(&p("capacity_mah"), mah, f64::MIN_POSITIVE, 10_000_000.0, false);
            let volts = match &b.nominal_voltage_v {
                Some(v) => c.real(&p("nominal_voltage_v"), v, f64::MIN_POSITIVE, 100.0, false),
                None => {
                    c.missing(&p("nominal_voltage_v"), "capacity_mah needs the battery's nominal voltage (e.g. 3.7)");
                    None
                }
            };
            BatteryCapacity::MilliampHours { mah: mah.unwrap_or(0.0), nominal_voltage_v: volts.unwrap_or(0.0) }
        }
        (None, Some(wh)) => {
            c.not_applicable(
                &p("nominal_voltage_v"),
                &b.nominal_voltage_v,
                RawScalar::shown,
                "only goes with capacity_mah",
            );
            BatteryCapacity::WattHours(
                c.real(&p("capacity_wh"), wh, f64::MIN_POSITIVE, 100_000.0, false).unwrap_or(0.0),
            )
        }
        (Some(_), Some(wh)) => {
            c.fail(
                &p("capacity_wh"),
                wh.shown(),
                "give capacity_mah (with nominal_voltage_v) or capacity_wh, not both",
            );
            BatteryCapacity::WattHours(0.0)
        }
        (None, None) => {
            c.missing(&p("capacity_mah"), "a battery needs capacity_mah (with nominal_voltage_v) or capacity_wh");
            BatteryCapacity::WattHours(0.0)
        }
    };
    let peukert_exponent = b.peukert_exponent.as_ref().and_then(|v| c.real(&p("peukert_exponent"), v, 1.0, 2.0, false));
    (c.problems.len() == before).then_some(BatterySpec { capacity, peukert_exponent })
}

fn model(c: &mut Checker, m: &RawModel) -> Option<ModelSpec> {
    let preset = m.preset.map(|preset| match preset {
        RawPreset::Distilbert => ModelPreset::Distilbert,
        RawPreset::Minilm => ModelPreset::Minilm,
        RawPreset::Rt3Transformer => ModelPreset::Rt3Transformer,
    });
    // With a safetensors file the preset names the architecture it is read as.
    let source = match (preset, &m.safetensors) {
        (Some(preset), None) => ModelSource::Preset(preset),
        (Some(preset), Some(path)) => {
            ModelSource::Safetensors { path: c.board_path("model.safetensors", path).unwrap_or_default(), preset }
        }
        (None, Some(path)) => {
            c.board_path("model.safetensors", path);
            c.missing(
                "model.preset",
                "a safetensors file needs `preset` to name the architecture it holds (distilbert, minilm, \
                 rt3-transformer)",
            );
            return None;
        }
        (None, None) => {
            c.missing(
                "model.preset",
                "give `preset` (distilbert, minilm, rt3-transformer), optionally with `safetensors`",
            );
            return None;
        }
    };
    let preset = preset.expect("a source was found, so a preset was given");
    let lm_head = m.lm_head.unwrap_or(false);
    if lm_head && !preset.has_vocabulary() {
        c.fail(
            "model.lm_head",
            "true",
            format!("{} has no vocabulary to project onto; only rt3-transformer has an lm_head", preset.as_str()),
        );
    }
    let seq = m.seq.as_ref().and_then(|s| c.uint("model.seq", s, 1, 4096)).map(|v| v as u32);
    let seed = c.opt_uint("model.seed", &m.seed, 0, 0, u64::MAX);
    Some(ModelSpec { source, seq, seed, lm_head })
}

fn variants(c: &mut Checker, raw: &[RawVariant], model_seed: u64) -> Vec<VariantSpec> {
    if raw.is_empty() {
        c.fail("variants", "[]", "at least one variant is needed");
    } else if raw.len() > MAX_VARIANTS {
        c.fail("variants", format!("{} variants", raw.len()), format!("at most {MAX_VARIANTS} variants"));
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, v) in raw.iter().enumerate() {
        let p = |field: &str| format!("variants[{i}].{field}");
        c.name(&p("name"), &v.name);
        if let Some(first) = seen.insert(&v.name, i) {
            c.fail(&p("name"), shown_str(&v.name), format!("duplicate variant name (also variants[{first}])"));
        }
        let kind_name = match v.kind {
            RawVariantKind::Dense => "dense",
            RawVariantKind::Block => "block",
            RawVariantKind::Pattern => "pattern",
        };
        let not_for = format!("does not apply to kind: {kind_name}");
        let sparsity = |c: &mut Checker| match &v.sparsity {
            Some(s) => c.real(&p("sparsity"), s, 0.0, 1.0, true).unwrap_or(0.0),
            None => {
                c.missing(&p("sparsity"), "a pruned variant needs its sparsity, a fraction in [0, 1)");
                0.0
            }
        };
        let kind = match v.kind {
            RawVariantKind::Dense => {
                c.not_applicable(&p("sparsity"), &v.sparsity, RawScalar::shown, &not_for);
                c.not_applicable(&p("block_rows"), &v.block_rows, RawScalar::shown, &not_for);
                c.not_applicable(&p("block_cols"), &v.block_cols, RawScalar::shown, &not_for);
                c.not_applicable(&p("base"), &v.base, |b| shown_str(b), &not_for);
                c.not_applicable(&p("tile"), &v.tile, RawScalar::shown, &not_for);
                c.not_applicable(&p("patterns"), &v.patterns, RawScalar::shown, &not_for);
                c.not_applicable(&p("global"), &v.global, bool::to_string, &not_for);
                c.not_applicable(&p("method"), &v.method, |m| format!("{m:?}"), &not_for);
                c.not_applicable(&p("seed"), &v.seed, RawScalar::shown, &not_for);
                VariantKind::Dense
            }
            RawVariantKind::Block => {
                c.not_applicable(&p("base"), &v.base, |b| shown_str(b), &not_for);
                c.not_applicable(&p("tile"), &v.tile, RawScalar::shown, &not_for);
                c.not_applicable(&p("patterns"), &v.patterns, RawScalar::shown, &not_for);
                c.not_applicable(&p("method"), &v.method, |m| format!("{m:?}"), &not_for);
                c.not_applicable(&p("seed"), &v.seed, RawScalar::shown, &not_for);
                VariantKind::Block {
                    sparsity: sparsity(c),
                    block_rows: c.opt_uint(&p("block_rows"), &v.block_rows, 32, 1, 4096) as u32,
                    block_cols: c.opt_uint(&p("block_cols"), &v.block_cols, 1, 1, 4096) as u32,
                    global: v.global.unwrap_or(false),
                }
            }
            RawVariantKind::Pattern => {
                c.not_applicable(&p("block_rows"), &v.block_rows, RawScalar::shown, &not_for);
                c.not_applicable(&p("block_cols"), &v.block_cols, RawScalar::shown, &not_for);
                c.not_applicable(&p("global"), &v.global, bool::to_string, &not_for);
                let base = match &v.base {
                    Some(b) => b.clone(),
                    None => {
                        c.missing(&p("base"), "a pattern set needs `base`: the name of a block variant");
                        String::new()
                    }
                };
                VariantKind::Pattern {
                    base,
                    tile: c.opt_uint(&p("tile"), &v.tile, 16, 2, 256) as u32,
                    patterns_per_set: c.opt_uint(&p("patterns"), &v.patterns, 4, 1, 64) as u32,
                    sparsity: sparsity(c),
                    method: match v.method {
                        None | Some(RawPatternMethod::Rt3TileSums) => PatternMethod::Rt3TileSums,
                        Some(RawPatternMethod::FrequentTopK) => PatternMethod::FrequentTopK,
                    },
                    seed: c.opt_uint(&p("seed"), &v.seed, model_seed, 0, u64::MAX),
                }
            }
        };
        let accuracy = v.accuracy.as_ref().and_then(|a| c.real(&p("accuracy"), a, 0.0, 1.0, false));
        let min_fidelity = v.min_fidelity.as_ref().and_then(|f| c.real(&p("min_fidelity"), f, 0.0, 1.0, false));
        if min_fidelity.is_some() && !matches!(kind, VariantKind::Pattern { .. }) {
            c.fail(
                &p("min_fidelity"),
                format!("{:?}", min_fidelity.unwrap_or_default()),
                "only pattern sets are scheduled (dense and block variants are the baselines): remove it here",
            );
        }
        out.push(VariantSpec { name: v.name.clone(), kind, accuracy, min_fidelity });
    }
    // Pattern bases, once every name is known. The agent prepares variants in order, so the
    // base comes first; and a set's sparsity counts the base's BP zeros, so it exceeds it.
    for (i, v) in out.iter().enumerate() {
        if let VariantKind::Pattern { base, sparsity, .. } = &v.kind {
            if base.is_empty() {
                continue;
            }
            let base_at = out.iter().position(|o| &o.name == base);
            match base_at.map(|j| (j, &out[j])) {
                Some((j, o)) if matches!(o.kind, VariantKind::Block { .. }) && j > i => c.fail(
                    &format!("variants[{i}].base"),
                    shown_str(base),
                    format!("is listed after this pattern set (variants[{j}]); list the block variant first"),
                ),
                Some((_, o))
                    if matches!(o.kind, VariantKind::Block { .. })
                        && *sparsity <= o.kind.sparsity()
                        && !c.failed_at(&format!("variants[{i}].sparsity")) =>
                {
                    c.fail(
                    &format!("variants[{i}].sparsity"),
                    sparsity.to_string(),
                    format!(
                        "must exceed the base's sparsity ({}): a pattern set's sparsity counts BP and PP zeros together",
                        o.kind.sparsity()
                    ),
                    )
                }
                None => {
                    let known: Vec<&str> = out.iter().map(|o| o.name.as_str()).collect();
                    c.fail(
                        &format!("variants[{i}].base"),
                        shown_str(base),
                        format!("no variant has this name (variants: {})", known.join(", ")),
                    );
                }
                Some((_, o)) if !matches!(o.kind, VariantKind::Block { .. }) => c.fail(
                    &format!("variants[{i}].base"),
                    shown_str(base),
                    format!("is a {} variant; a pattern set sits on a block variant", o.kind.as_str()),
                ),
                Some(_) => {}
            }
        }
    }
    out
}

fn dvfs(c: &mut Checker, d: &RawDvfs) -> DvfsSpec {
    let mut level_yaml_index = Vec::new();
    let levels = match &d.levels {
        RawLevels::Word(w) if w.text == "all" => LevelsSpec::All,
        RawLevels::Word(w) => {
            c.fail("dvfs.levels", w.shown(), "must be `all` or a list of frequencies such as [600MHz, 1GHz, 1500MHz]");
            LevelsSpec::Khz(Vec::new())
        }
        RawLevels::List(list) => {
            if list.is_empty() {
                c.fail("dvfs.levels", "[]", "needs at least one frequency (or `all`)");
            } else if list.len() > MAX_LEVELS {
                c.fail("dvfs.levels", format!("{} levels", list.len()), format!("at most {MAX_LEVELS} levels"));
            }
            let mut khz: Vec<(u64, usize)> = Vec::new();
            for (i, raw) in list.iter().enumerate().take(MAX_LEVELS) {
                let path = format!("dvfs.levels[{i}]");
                match parse_frequency_khz(&raw.text) {
                    Err(why) => c.fail(&path, raw.shown(), why),
                    Ok(f) if !(MIN_LEVEL_KHZ..=MAX_LEVEL_KHZ).contains(&f) => {
                        c.fail(&path, raw.shown(), "must be between 1 MHz and 10 GHz")
                    }
                    Ok(f) if khz.iter().any(|(k, _)| *k == f) => {
                        c.fail(&path, raw.shown(), format!("{} is listed twice", format_khz(f)))
                    }
                    Ok(f) => khz.push((f, i)),
                }
            }
            // Highest first: RT3's shares (50/30/20 %) run from the top level down.
            khz.sort_unstable_by_key(|&(f, _)| std::cmp::Reverse(f));
            level_yaml_index = khz.iter().map(|(_, i)| *i).collect();
            LevelsSpec::Khz(khz.into_iter().map(|(f, _)| f).collect())
        }
    };
    let governor = match d.governor.as_deref() {
        None | Some("auto") => GovernorChoice::Auto,
        Some("userspace") => GovernorChoice::Userspace,
        Some(g) => {
            let ok = !g.is_empty()
                && g.len() <= 32
                && g.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
            if !ok {
                c.fail("dvfs.governor", shown_str(g), "must be auto, userspace or a governor name such as performance");
            }
            GovernorChoice::MinMaxUnder(g.to_string())
        }
    };
    let settle =
        c.opt_duration("dvfs.settle", &d.settle, Duration::from_millis(250), Duration::ZERO, Duration::from_secs(60));
    DvfsSpec { levels, governor, settle, level_yaml_index }
}

fn measure(c: &mut Checker, m: Option<&RawMeasure>) -> MeasureSpec {
    let none = RawMeasure {
        warmup_iterations: None,
        min_iterations: None,
        min_duration: None,
        repeats: None,
        idle_duration: None,
        cooldown_temp_c: None,
        cooldown_timeout: None,
        max_attempts: None,
        raw_power: None,
        max_lost_fraction: None,
        threads: None,
    };
    let m = m.unwrap_or(&none);
    let sec = Duration::from_secs(1);
    MeasureSpec {
        warmup_iterations: c.opt_uint("measure.warmup_iterations", &m.warmup_iterations, 10, 0, 100_000) as u32,
        min_iterations: c.opt_uint("measure.min_iterations", &m.min_iterations, 30, 1, 10_000_000),
        min_duration: c.opt_duration("measure.min_duration", &m.min_duration, 5 * sec, Duration::from_millis(1), HOUR),
        repeats: c.opt_uint("measure.repeats", &m.repeats, 3, 1, 1000) as u32,
        idle_duration: c.opt_duration("measure.idle_duration", &m.idle_duration, 5 * sec, Duration::ZERO, 600 * sec),
        cooldown_temp_c: m
            .cooldown_temp_c
            .as_ref()
            .and_then(|t| c.real("measure.cooldown_temp_c", t, 20.0, 110.0, false)),
        cooldown_timeout: c.opt_duration("measure.cooldown_timeout", &m.cooldown_timeout, 300 * sec, sec, HOUR),
        max_attempts: c.opt_uint("measure.max_attempts", &m.max_attempts, 3, 1, 20) as u32,
        raw_power: m.raw_power.unwrap_or(false),
        max_lost_fraction: m
            .max_lost_fraction
            .as_ref()
            .and_then(|f| c.real("measure.max_lost_fraction", f, 0.0, 1.0, true))
            .unwrap_or(0.01),
        threads: c.opt_uint("measure.threads", &m.threads, 1, 1, 256) as u32,
    }
}

/// `latency_deadline`: a duration (`20ms`), or a factor of a variant measured in the same run
/// (`1.3x dense`: 1.3 times dense's p99 at the highest level measured on the board).
fn constraints(c: &mut Checker, raw: Option<&RawConstraints>, variants: &[VariantSpec]) -> Constraints {
    const PATH: &str = "constraints.latency_deadline";
    let Some(d) = raw.and_then(|r| r.latency_deadline.as_ref()) else { return Constraints::default() };
    let relative = d.text.trim().split_once(char::is_whitespace).and_then(|(f, v)| {
        let factor = f.strip_suffix(['x', 'X'])?;
        Some((factor.trim().to_string(), v.trim().to_string()))
    });
    let latency_deadline = match relative {
        Some((factor, reference)) => {
            let factor = match factor.parse::<f64>() {
                Ok(f) if f.is_finite() && f > 0.0 && f <= 1000.0 => Some(f),
                _ => {
                    c.fail(PATH, d.shown(), "the factor before `x` must be a number in (0, 1000], e.g. `1.3x dense`");
                    None
                }
            };
            let known = variants.iter().any(|v| v.name == reference);
            if !known {
                let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
                c.fail(PATH, d.shown(), format!("names no variant of this scenario (variants: {})", names.join(", ")));
            }
            factor.filter(|_| known).map(|factor| Deadline::Relative { factor, reference })
        }
        None => c.duration(PATH, d, Duration::from_micros(1), HOUR).map(Deadline::Fixed),
    };
    Constraints { latency_deadline }
}

fn policy(c: &mut Checker, raw: Option<&RawPolicy>, levels: &LevelsSpec) -> PolicySpec {
    let Some(raw) = raw else { return PolicySpec { battery_shares: None, workload: Workload::BackToBack } };
    let battery_shares = raw.battery_shares.as_ref().and_then(|list| {
        let shown = format!("[{}]", list.iter().map(|s| s.text.clone()).collect::<Vec<_>>().join(", "));
        if list.is_empty() || list.len() > MAX_LEVELS {
            c.fail("policy.battery_shares", shown, format!("needs one share per level (1 to {MAX_LEVELS})"));
            return None;
        }
        let mut shares = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let path = format!("policy.battery_shares[{i}]");
            match c.real(&path, s, 0.0, 1.0, false) {
                Some(0.0) => c.fail(&path, s.shown(), "a share must be above zero (drop the level instead)"),
                Some(v) => shares.push(v),
                None => {}
            }
        }
        if shares.len() != list.len() {
            return None;
        }
        let sum: f64 = shares.iter().sum();
        if (sum - 1.0).abs() > 1e-6 {
            c.fail("policy.battery_shares", shown, format!("the shares sum to {sum}, not 1"));
            return None;
        }
        if let LevelsSpec::Khz(khz) = levels {
            if !khz.is_empty() && khz.len() != shares.len() {
                c.fail(
                    "policy.battery_shares",
                    shown,
                    format!("has {} shares for {} levels (one per level, highest first)", shares.len(), khz.len()),
                );
                return None;
            }
        }
        Some(shares)
    });
    let workload = match raw.workload {
        None | Some(RawWorkload::BackToBack) => {
            c.not_applicable("policy.period", &raw.period, RawScalar::shown, "only applies to workload: periodic");
            Workload::BackToBack
        }
        Some(RawWorkload::Periodic) => match &raw.period {
            Some(p) => Workload::Periodic {
                period: c.duration("policy.period", p, Duration::from_millis(1), 24 * HOUR).unwrap_or(HOUR),
            },
            None => {
                c.missing("policy.period", "a periodic workload needs `period` (one inference per period)");
                Workload::BackToBack
            }
        },
    };
    PolicySpec { battery_shares, workload }
}

fn regression(c: &mut Checker, r: &RawRegression) -> RegressionSpec {
    RegressionSpec {
        baseline: r.baseline.as_ref().and_then(|b| c.host_path("regression.baseline", b)),
        threshold_pct: r
            .threshold_pct
            .as_ref()
            .and_then(|t| match c.real("regression.threshold_pct", t, 0.0, 100.0, false) {
                Some(0.0) => {
                    c.fail("regression.threshold_pct", t.shown(), "must be above zero (noise is never zero)");
                    None
                }
                v => v,
            })
            .unwrap_or(3.0),
        alpha: r
            .alpha
            .as_ref()
            .and_then(|a| match c.real("regression.alpha", a, 0.0, 0.5, false) {
                Some(0.0) => {
                    c.fail("regression.alpha", a.shown(), "must be above zero");
                    None
                }
                v => v,
            })
            .unwrap_or(0.05),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists() {
        assert_eq!(parse_cpulist("4-7"), Ok(vec![4, 5, 6, 7]));
        assert_eq!(parse_cpulist("0, 2-3"), Ok(vec![0, 2, 3]));
        assert!(parse_cpulist("3-1").is_err());
        assert!(parse_cpulist("0;reboot").is_err());
        assert!(parse_cpulist("").is_err());
        assert!(parse_cpulist("0-99999999999999999999").is_err());
        assert!(parse_cpulist("0-5000").is_err());
    }

    #[test]
    fn hostnames() {
        for good in ["rpi4", "rpi4.local", "board-1.lab.example.org", "a.b."] {
            assert!(is_valid_hostname(good), "{good}");
        }
        for bad in ["-oProxyCommand=x", "a b", "a;b", "a..b", "", "x-.y", "$(reboot)", "a_b"] {
            assert!(!is_valid_hostname(bad), "{bad}");
        }
    }
}
