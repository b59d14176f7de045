//! Pure parsers for what `labgrid-client` (pinned: labgrid 26.0.1) prints, tested on fixtures captured
//! from it (`harness/tests/fixtures/labgrid/`).
//!
//! Formats, from labgrid's `remote/client.py` and `remote/common.py`:
//! - `reserve --shell` prints `export LG_TOKEN=<token>` (before waiting, when `--wait` is given);
//! - `acquire` prints `acquired place <name>`;
//! - `env` prints YAML `targets: {<place>: {resources: [{<Class>: {<param>: <value>, name: <rename>}}]}}`;
//! - `who [-e]` prints a table `User Host Place Changed [Exporters]`, `Changed` being
//!   `YYYY-MM-DD HH:MM:SS.ffffff` (two words) and `Exporters` a `, `-joined list;
//! - `-v places` prints per place `Place '<name>':` and indented `tags: k=v, k=v`,
//!   `acquired: <host/user>|None`, `reservation: <token>`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::power::net::{NetAddress, NetProtocol};

/// The token in `reserve --shell` output.
pub fn parse_reserve_token(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let line = line.trim();
        let token = line.strip_prefix("export LG_TOKEN=").or_else(|| line.strip_prefix("LG_TOKEN="))?;
        let token = token.trim().trim_matches(|c| c == '\'' || c == '"');
        (!token.is_empty() && token.chars().all(|c| c.is_ascii_alphanumeric())).then(|| token.to_string())
    })
}

/// The place name in `acquire` output.
pub fn parse_acquired_place(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let name = line.trim().strip_prefix("acquired place ")?.trim();
        (!name.is_empty()).then(|| name.to_string())
    })
}

/// One row of `labgrid-client who`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WhoEntry {
    pub user: String,
    pub host: String,
    pub place: String,
    /// When the place last changed (acquired), as labgrid prints it (local time).
    pub changed: String,
    /// Exporter names (`who -e` only).
    pub exporters: Vec<String>,
}

impl WhoEntry {
    /// `host/user`, labgrid's name for who holds a place.
    pub fn holder(&self) -> String {
        format!("{}/{}", self.host, self.user)
    }
}

/// Parses `who` / `who -e`. Rows that do not have the four columns are an error naming the row.
pub fn parse_who(stdout: &str) -> Result<Vec<WhoEntry>, String> {
    let mut lines = stdout.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else { return Ok(Vec::new()) };
    let columns: Vec<&str> = header.split_whitespace().collect();
    if columns.get(..4) != Some(&["User", "Host", "Place", "Changed"][..]) {
        return Err(format!("unexpected header {header:?} (expected User Host Place Changed)"));
    }
    let with_exporters = columns.get(4) == Some(&"Exporters");
    lines
        .map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            if f.len() < 5 {
                return Err(format!("row {row:?} has fewer than the 4 columns of the header"));
            }
            let exporters = if with_exporters {
                f[5..].join(" ").split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect()
            } else {
                Vec::new()
            };
            Ok(WhoEntry {
                user: f[0].to_string(),
                host: f[1].to_string(),
                place: f[2].to_string(),
                changed: format!("{} {}", f[3], f[4]),
                exporters,
            })
        })
        .collect()
}

/// A place as `labgrid-client -v places` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlaceInfo {
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub matches: Vec<String>,
    /// `host/user` holding it.
    pub acquired: Option<String>,
    /// The reservation it is allocated to.
    pub reservation: Option<String>,
}

impl PlaceInfo {
    /// Whether every tag in `want` is on the place (labgrid's reservation filter: a subset match; the
    /// place's name matches the pseudo-tag `name`).
    pub fn matches_tags(&self, want: &BTreeMap<String, String>) -> bool {
        want.iter().all(|(k, v)| self.tags.get(k) == Some(v) || (k == "name" && *v == self.name))
    }

    /// Neither acquired nor allocated to a reservation.
    pub fn is_free(&self) -> bool {
        self.acquired.is_none() && self.reservation.is_none()
    }
}

/// Parses `labgrid-client -v places`.
pub fn parse_places_verbose(stdout: &str) -> Result<Vec<PlaceInfo>, String> {
    let mut places: Vec<PlaceInfo> = Vec::new();
    let mut in_matches = false;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("Place '") {
            let name = rest.strip_suffix("':").ok_or_else(|| format!("unexpected line {line:?}"))?;
            places.push(PlaceInfo { name: name.to_string(), ..PlaceInfo::default() });
            in_matches = false;
            continue;
        }
        let Some(place) = places.last_mut() else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("line {line:?} before any \"Place '...':\""));
        };
        let trimmed = line.trim();
        let depth = line.len() - line.trim_start().len();
        if depth == 2 {
            in_matches = false;
            if let Some(tags) = trimmed.strip_prefix("tags: ") {
                for pair in tags.split(", ") {
                    let (k, v) = pair.split_once('=').ok_or_else(|| format!("tag {pair:?} is not KEY=VALUE"))?;
                    place.tags.insert(k.to_string(), v.to_string());
                }
            } else if let Some(who) = trimmed.strip_prefix("acquired: ") {
                place.acquired = (who != "None").then(|| who.to_string());
            } else if let Some(token) = trimmed.strip_prefix("reservation: ") {
                place.reservation = Some(token.to_string());
            } else if trimmed == "matches:" {
                in_matches = true;
            }
        } else if depth == 4 && in_matches {
            place.matches.push(trimmed.to_string());
        }
    }
    Ok(places)
}

/// How a board is reached over SSH (a labgrid `NetworkService`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SshEndpoint {
    pub address: String,
    pub port: u16,
    pub username: String,
}

/// A serial port an exporter serves over the network (a labgrid `NetworkSerialPort`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NetworkSerial {
    pub host: String,
    pub port: u16,
    pub protocol: NetProtocol,
    /// The line speed the exporter configured (its ser2net opened the device at this rate).
    pub speed: u32,
    /// The resource's name in the place (labgrid renames an exported `RawSerialPort` so).
    pub name: Option<String>,
}

impl NetworkSerial {
    /// The address a monitor `port:` takes: `rfc2217://HOST:PORT` or `tcp://HOST:PORT`.
    pub fn address(&self) -> NetAddress {
        NetAddress::new(self.protocol, self.host.clone(), self.port)
    }
}

/// One resource of an acquired place, as `env` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnvResource {
    pub class: String,
    /// The resource name (`name:` in env, present when it differs from the class).
    pub name: Option<String>,
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// Parameters never copied into provenance.
const SECRET_PARAMS: &[&str] = &["password"];

/// The resources of one acquired place (`labgrid-client -p PLACE env`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlaceEnv {
    pub place: String,
    pub resources: Vec<EnvResource>,
}

impl PlaceEnv {
    /// All resources of class `class`.
    pub fn of_class<'a>(&'a self, class: &'a str) -> impl Iterator<Item = &'a EnvResource> + 'a {
        self.resources.iter().filter(move |r| r.class == class)
    }

    /// The place's `NetworkService` (the first, when there are several: named in the error otherwise).
    pub fn ssh(&self) -> Result<SshEndpoint, String> {
        let services: Vec<&EnvResource> = self.of_class("NetworkService").collect();
        let r = match services.as_slice() {
            [] => {
                return Err(format!(
                    "place {} has no NetworkService resource (the exporter must export the board's SSH address)",
                    self.place
                ))
            }
            [one] => *one,
            many => {
                return Err(format!(
                    "place {} has {} NetworkService resources ({}); hil needs exactly one",
                    self.place,
                    many.len(),
                    many.iter()
                        .map(|r| r.name.clone().unwrap_or_else(|| r.class.clone()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        };
        let address = str_param(r, "address").ok_or_else(|| self.missing(r, "address"))?;
        let username = str_param(r, "username").ok_or_else(|| self.missing(r, "username"))?;
        // labgrid's default port for a NetworkService.
        let port = match r.params.get("port") {
            None | Some(serde_json::Value::Null) => 22,
            Some(v) => {
                port_value(v).ok_or_else(|| format!("place {}: NetworkService port {v} is not a port", self.place))?
            }
        };
        Ok(SshEndpoint { address, port, username })
    }

    /// The place's `NetworkSerialPort`, if it has one. `Err` when it has one that is not usable yet
    /// (no port: the exporter has not started its ser2net) or several.
    pub fn serial(&self) -> Result<Option<NetworkSerial>, String> {
        let ports: Vec<&EnvResource> = self.of_class("NetworkSerialPort").collect();
        let r = match ports.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            many => {
                return Err(format!(
                    "place {} has {} NetworkSerialPort resources; hil takes the monitor from exactly one",
                    self.place,
                    many.len()
                ))
            }
        };
        let host = str_param(r, "host").ok_or_else(|| self.missing(r, "host"))?;
        let port = match r.params.get("port") {
            None | Some(serde_json::Value::Null) => {
                return Err(format!(
                    "place {}: the NetworkSerialPort has no port yet (the exporter has not started ser2net for it)",
                    self.place
                ))
            }
            Some(v) => port_value(v)
                .ok_or_else(|| format!("place {}: NetworkSerialPort port {v} is not a port", self.place))?,
        };
        // labgrid's defaults (resource/serialport.py): rfc2217 at 115200.
        let protocol = match r.params.get("protocol").and_then(|v| v.as_str()) {
            None | Some("rfc2217") => NetProtocol::Rfc2217,
            Some("raw") => NetProtocol::Raw,
            Some(other) => {
                return Err(format!(
                    "place {}: NetworkSerialPort protocol {other:?} is neither raw nor rfc2217",
                    self.place
                ))
            }
        };
        let speed = match r.params.get("speed") {
            None | Some(serde_json::Value::Null) => 115_200,
            Some(v) => v
                .as_u64()
                .and_then(|s| u32::try_from(s).ok())
                .filter(|s| *s > 0)
                .ok_or_else(|| format!("place {}: NetworkSerialPort speed {v} is not a baud rate", self.place))?,
        };
        Ok(Some(NetworkSerial { host, port, protocol, speed, name: r.name.clone() }))
    }

    /// Every resource as JSON for provenance (`run.json`), secrets (a `password`) replaced.
    pub fn raw_resources(&self) -> serde_json::Value {
        let list: Vec<serde_json::Value> = self
            .resources
            .iter()
            .map(|r| {
                let mut params = r.params.clone();
                for key in SECRET_PARAMS {
                    if params.contains_key(*key) {
                        params.insert((*key).to_string(), serde_json::Value::String("<redacted>".into()));
                    }
                }
                serde_json::json!({ "class": r.class, "name": r.name, "params": params })
            })
            .collect();
        serde_json::Value::Array(list)
    }

    fn missing(&self, r: &EnvResource, param: &str) -> String {
        format!("place {}: its {} has no {param}", self.place, r.class)
    }
}

fn str_param(r: &EnvResource, key: &str) -> Option<String> {
    match r.params.get(key)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn port_value(v: &serde_json::Value) -> Option<u16> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// Parses `labgrid-client -p PLACE env` for `place` (the YAML has one target, named after the place).
pub fn parse_env(yaml: &str, place: &str) -> Result<PlaceEnv, String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
    let targets = doc.get("targets").and_then(|t| t.as_mapping()).ok_or("no `targets:` mapping")?;
    let target = targets
        .get(place)
        .ok_or_else(|| {
            let names: Vec<String> = targets.keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
            format!("no target {place:?} (targets: {})", names.join(", "))
        })?
        .clone();
    let list = match target.get("resources") {
        None | Some(serde_yaml::Value::Null) => Vec::new(),
        Some(serde_yaml::Value::Sequence(list)) => list.clone(),
        Some(other) => return Err(format!("`resources` of {place} is not a list: {other:?}")),
    };
    let mut resources = Vec::new();
    for entry in list {
        let map = entry.as_mapping().ok_or_else(|| format!("resource {entry:?} is not a mapping"))?;
        if map.len() != 1 {
            return Err(format!("resource entry with {} keys (expected one class name)", map.len()));
        }
        let (class, params) = map.iter().next().expect("one entry");
        let class = class.as_str().ok_or_else(|| format!("resource class {class:?} is not a string"))?;
        let mut params: serde_json::Map<String, serde_json::Value> = match params {
            serde_yaml::Value::Null => serde_json::Map::new(),
            other => serde_json::to_value(other)
                .map_err(|e| format!("{class}: {e}"))?
                .as_object()
                .cloned()
                .ok_or_else(|| format!("{class}: parameters are not a mapping"))?,
        };
        let name = match params.remove("name") {
            Some(serde_json::Value::String(n)) => Some(n),
            _ => None,
        };
        resources.push(EnvResource { class: class.to_string(), name, params });
    }
    Ok(PlaceEnv { place: place.to_string(), resources })
}

/// Shell-quotes one word for a command line shown to a person (`'...'` when needed).
pub fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=+@,%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r#"'\''"#))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_reserve_shell() {
        assert_eq!(parse_reserve_token("export LG_TOKEN=BJZ3MY9L5Z\n").as_deref(), Some("BJZ3MY9L5Z"));
        assert_eq!(parse_reserve_token("LG_TOKEN='ABC123'\n").as_deref(), Some("ABC123"));
        assert_eq!(parse_reserve_token("Reservation 'X':\n  token: X\n"), None);
        assert_eq!(parse_reserve_token("export LG_TOKEN=\n"), None);
        assert_eq!(parse_reserve_token("export LG_TOKEN=a;rm\n"), None);
    }

    #[test]
    fn place_from_acquire() {
        assert_eq!(parse_acquired_place("acquired place ci-a\n").as_deref(), Some("ci-a"));
        assert_eq!(parse_acquired_place("Selected role x\nacquired place rpi4-3\n").as_deref(), Some("rpi4-3"));
        assert_eq!(parse_acquired_place("released place ci-a\n"), None);
    }

    #[test]
    fn who_rows_and_bad_header() {
        let who = "User  Host  Place  Changed                     Exporters\n\
                   root  vm    ci-a   2026-12-07 03:58:35.244972  hil-ci, lab-2\n";
        let rows = parse_who(who).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].holder(), "vm/root");
        assert_eq!(rows[0].changed, "2026-12-07 03:58:35.244972");
        assert_eq!(rows[0].exporters, ["hil-ci", "lab-2"]);
        assert!(parse_who("").unwrap().is_empty());
        assert!(parse_who("Name Something\n").unwrap_err().contains("unexpected header"));
        assert!(parse_who("User Host Place Changed\nroot vm\n").unwrap_err().contains("fewer"));
    }

    #[test]
    fn tags_match_like_the_coordinator() {
        let p = PlaceInfo {
            name: "ci-a".into(),
            tags: [("board".to_string(), "ci".to_string()), ("soc".to_string(), "bcm2711".to_string())].into(),
            ..PlaceInfo::default()
        };
        let want = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(p.matches_tags(&want(&[("board", "ci")])));
        assert!(p.matches_tags(&want(&[("board", "ci"), ("name", "ci-a")])));
        assert!(!p.matches_tags(&want(&[("board", "rpi4")])));
        assert!(!p.matches_tags(&want(&[("board", "ci"), ("extra", "x")])));
        assert!(p.is_free());
    }

    #[test]
    fn env_defaults_and_errors() {
        let yaml = "targets:\n  p:\n    resources:\n    - NetworkService:\n        address: 10.0.0.5\n        username: pi\n    - NetworkSerialPort:\n        host: lab1\n        port: null\n";
        let env = parse_env(yaml, "p").unwrap();
        assert_eq!(env.ssh().unwrap(), SshEndpoint { address: "10.0.0.5".into(), port: 22, username: "pi".into() });
        assert!(env.serial().unwrap_err().contains("no port yet"));
        assert!(parse_env(yaml, "q").unwrap_err().contains("no target \"q\" (targets: p)"));
        let none = parse_env("targets:\n  p:\n    resources: []\n", "p").unwrap();
        assert!(none.ssh().unwrap_err().contains("no NetworkService"));
        assert_eq!(none.serial().unwrap(), None);
        let bad = "targets:\n  p:\n    resources:\n    - NetworkSerialPort: {host: h, port: 1, protocol: ssh}\n";
        assert!(parse_env(bad, "p").unwrap().serial().unwrap_err().contains("\"ssh\""));
    }

    #[test]
    fn secrets_are_not_kept() {
        let yaml =
            "targets:\n  p:\n    resources:\n    - NetworkService: {address: a, username: u, password: hunter2}\n";
        let raw = parse_env(yaml, "p").unwrap().raw_resources().to_string();
        assert!(!raw.contains("hunter2") && raw.contains("<redacted>"), "{raw}");
    }

    #[test]
    fn quoting_for_people() {
        assert_eq!(shell_quote("ci-a"), "ci-a");
        assert_eq!(shell_quote("+TOKEN1"), "+TOKEN1");
        assert_eq!(shell_quote("my place"), "'my place'");
        assert_eq!(shell_quote("it's"), r#"'it'\''s'"#);
    }
}
