//! The boards a run measures, with labgrid boards resolved: the glue between a scenario's board
//! entries and [`crate::labgrid`].
//!
//! A scenario board entry with a `labgrid:` section stands for one or more places. Before anything
//! else, [`resolve_boards`] reserves and acquires them (all or nothing, honouring Ctrl-C while it
//! waits for busy places) and turns each into a concrete [`BoardSpec`] ([`place_spec`], pure):
//! named after its place, reached at the place's `NetworkService`, `{place}` replaced in its
//! paths, its monitor port taken from the place's `NetworkSerialPort` when the entry says
//! `port: labgrid`. Each such board carries its [`PlaceLock`]; the runner drops it after the
//! board's cpufreq settings are restored, which releases the place and cancels its reservation.

use std::sync::atomic::AtomicBool;

use anyhow::{anyhow, bail, Context, Result};

use crate::labgrid::{self, LabgridBoard, LabgridClient, PlaceLock};
use crate::scenario::{BoardSpec, MonitorPort, Scenario, TransportSpec, PLACE_PLACEHOLDER};

/// One board of the run.
#[derive(Debug)]
pub struct RunBoard {
    pub spec: BoardSpec,
    /// The scenario entry it comes from (its own name, or the labgrid entry's).
    pub entry: String,
    /// The place it was resolved from, and the lock that holds it.
    pub lab: Option<(LabgridBoard, PlaceLock)>,
}

/// The board a place becomes under `entry` (pure): the place's name, its SSH endpoint (the entry's
/// `user` overrides the NetworkService's username), `{place}` replaced in `workdir`, `sysfs_root`
/// and `exec_prefix`, and `port: labgrid` replaced by the place's network serial port.
pub fn place_spec(entry: &BoardSpec, place: &LabgridBoard) -> Result<BoardSpec> {
    let sub = |s: &str| s.replace(PLACE_PLACEHOLDER, &place.place);
    let mut spec = entry.clone();
    spec.name = place.place.clone();
    spec.workdir = sub(&entry.workdir);
    spec.sysfs_root = sub(&entry.sysfs_root);
    spec.exec_prefix = entry.exec_prefix.as_ref().map(|p| p.iter().map(|a| sub(a)).collect());
    match &mut spec.transport {
        TransportSpec::Ssh(ssh) => {
            ssh.host = place.ssh.address.clone();
            ssh.port = place.ssh.port;
            if ssh.user.is_empty() {
                ssh.user = place.ssh.username.clone();
            }
        }
        TransportSpec::Local => bail!("board entry {}: a labgrid board is reached over SSH", entry.name),
    }
    if let Some(m) = spec.monitor.as_mut() {
        if m.port == MonitorPort::Labgrid {
            let address = place.monitor_port().ok_or_else(|| {
                anyhow!(
                    "board entry {}: `monitor.port: labgrid`, but place {} exports no serial port \
                     (NetworkSerialPort); export the monitor's serial device on the place or give its port",
                    entry.name,
                    place.place
                )
            })?;
            m.port = MonitorPort::Network(address);
        }
    }
    spec.labgrid = None;
    Ok(spec)
}

/// Every board of `scenario`, labgrid entries reserved, acquired and resolved. On any failure what
/// was already acquired is given back (the locks drop) and the error names the entry.
pub fn resolve_boards(scenario: &Scenario, stop: &AtomicBool) -> Result<Vec<RunBoard>> {
    let mut boards = Vec::new();
    for entry in &scenario.boards {
        let Some(lab) = &entry.labgrid else {
            boards.push(RunBoard { spec: entry.clone(), entry: entry.name.clone(), lab: None });
            continue;
        };
        let client = LabgridClient::from_env(lab.coordinator.as_deref());
        report_stale_locks(&client, lab);
        eprintln!(
            "board entry {}: reserving {} on labgrid {}",
            entry.name,
            lab.selector.describe(),
            client.coordinator()
        );
        let locks = labgrid::acquire_unless_stopped(&client, lab, stop)
            .with_context(|| format!("board entry {}: labgrid {}", entry.name, lab.selector.describe()))?;
        for lock in locks {
            let place = lock.board().clone();
            let spec = place_spec(entry, &place)?;
            eprintln!(
                "board entry {}: place {} (exporter {}) as board {} at {}:{}",
                entry.name, place.place, place.exporter_host, spec.name, place.ssh.address, place.ssh.port
            );
            boards.push(RunBoard { spec, entry: entry.name.clone(), lab: Some((place, lock)) });
        }
    }
    let mut seen = std::collections::HashSet::new();
    for b in &boards {
        if !seen.insert(b.spec.name.clone()) {
            bail!(
                "two boards are named {}: a labgrid place has the name of another board entry (rename the entry)",
                b.spec.name
            );
        }
    }
    Ok(boards)
}

/// Says which of the wanted places this user already holds on this host: another run still going,
/// or one that crashed without giving them back (labgrid cannot tell the two apart), with the
/// command that frees each.
fn report_stale_locks(client: &LabgridClient, spec: &labgrid::LabgridSpec) {
    if let Ok(pre) = labgrid::preflight(client, spec, &labgrid::labgrid_identity()) {
        for stale in pre.stale {
            eprintln!(
                "note: labgrid place {} is held by {} (you, on this host): another run of yours, or one that \
                 crashed; if none is using it, free it with: {}",
                stale.place, stale.holder, stale.free_command
            );
        }
    }
}

/// Checks every labgrid entry against its coordinator without acquiring anything (for `hil
/// validate`): the client runs, the coordinator answers, enough places carry the tags. Lines to
/// print on success; the first failure (naming the command and its stderr) otherwise.
pub fn preflight_all(scenario: &Scenario) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for entry in &scenario.boards {
        let Some(lab) = &entry.labgrid else { continue };
        let client = LabgridClient::from_env(lab.coordinator.as_deref());
        let pre = labgrid::preflight(&client, lab, &labgrid::labgrid_identity())
            .with_context(|| format!("board entry {}: labgrid {}", entry.name, lab.selector.describe()))?;
        let free = pre.candidates.iter().filter(|p| p.acquired.is_none()).count();
        lines.push(format!(
            "board entry {}: labgrid {} on {}: {} place(s) match, {} free now",
            entry.name,
            lab.selector.describe(),
            client.coordinator(),
            pre.candidates.len(),
            free
        ));
        for stale in pre.stale {
            lines.push(format!(
                "  place {} is held by {} (you: another run, or a crashed one; free it with: {})",
                stale.place, stale.holder, stale.free_command
            ));
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labgrid::{NetworkSerial, SshEndpoint};
    use crate::power::net::NetProtocol;
    use crate::scenario::parse_scenario;

    const ENTRY: &str = "\
name: lab
boards:
  - name: ci
    labgrid:
      tags: {board: ci}
      count: 2
    identity: /tmp/id
    exec_prefix: [\"/srv/{place}/run-agent\", qemu-aarch64-static]
    workdir: /srv/{place}/work
    sysfs_root: /srv/{place}/sys
    monitor:
      kind: ppk2
      port: labgrid
      mode: source
      source_voltage_mv: 5000
model:
  preset: rt3-transformer
variants:
  - name: dense
    kind: dense
dvfs:
  levels: [600MHz]
";

    fn place(serial: bool) -> LabgridBoard {
        LabgridBoard {
            place: "ci-a".into(),
            exporter_host: "lab-host-1".into(),
            exporters: vec!["hil-ci".into()],
            ssh: SshEndpoint { address: "10.0.0.7".into(), port: 2201, username: "root".into() },
            serial: serial.then(|| NetworkSerial {
                host: "lab-host-1".into(),
                port: 40123,
                protocol: NetProtocol::Rfc2217,
                speed: 115_200,
                name: None,
            }),
            raw_resources: serde_json::Value::Null,
            reservation: Some("TOKEN".into()),
            coordinator: "127.0.0.1:20408".into(),
        }
    }

    #[test]
    fn a_place_becomes_a_concrete_ssh_board() {
        let scenario = parse_scenario(ENTRY, "lab.yaml").unwrap_or_else(|e| panic!("{e}"));
        let entry = &scenario.boards[0];
        assert!(entry.labgrid.is_some());
        let spec = place_spec(entry, &place(true)).unwrap();
        assert_eq!(spec.name, "ci-a");
        assert_eq!(spec.workdir, "/srv/ci-a/work");
        assert_eq!(spec.sysfs_root, "/srv/ci-a/sys");
        assert_eq!(spec.exec_prefix.as_deref().unwrap()[0], "/srv/ci-a/run-agent");
        let TransportSpec::Ssh(ssh) = &spec.transport else { panic!("ssh") };
        assert_eq!((ssh.host.as_str(), ssh.port, ssh.user.as_str()), ("10.0.0.7", 2201, "root"));
        assert_eq!(spec.monitor.as_ref().unwrap().port, MonitorPort::Network("rfc2217://lab-host-1:40123".into()));
        assert!(spec.labgrid.is_none());
        let err = place_spec(entry, &place(false)).unwrap_err().to_string();
        assert!(err.contains("exports no serial port") && err.contains("ci-a"), "{err}");
    }

    #[test]
    fn labgrid_entries_are_validated() {
        let bad = |from: &str, to: &str, field: &str| {
            let text = ENTRY.replacen(from, to, 1);
            let err = parse_scenario(&text, "lab.yaml").unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        };
        bad("      count: 2\n", "      count: 2\n      place: x\n", "boards[0].labgrid.place");
        bad("      count: 2\n", "      count: 0\n", "boards[0].labgrid.count");
        bad("      count: 2\n", "      count: 2\n      coordinator: nowhere\n", "boards[0].labgrid.coordinator");
        bad("      count: 2\n", "      count: 2\n      wait_timeout: 5s\n", "boards[0].labgrid.wait_timeout");
        bad("    identity: /tmp/id\n", "    identity: /tmp/id\n    host: 10.0.0.1\n", "boards[0].host");
        bad("      tags: {board: ci}\n", "      tags: {board: \"c i\"}\n", "boards[0].labgrid.tags.board");
        bad("    workdir: /srv/{place}/work\n", "    workdir: /srv/{place}/../work\n", "boards[0].workdir");
        // `port: labgrid` and `{place}` are for labgrid entries only.
        let plain =
            ENTRY.replace("    labgrid:\n      tags: {board: ci}\n      count: 2\n", "    host: h\n    user: u\n");
        let err = parse_scenario(&plain, "lab.yaml").unwrap_err().to_string();
        assert!(err.contains("boards[0].monitor.port") && err.contains("boards[0].workdir"), "{err}");
        // A wait with its timeout, a named place, a network port given directly.
        let ok = ENTRY
            .replace(
                "      tags: {board: ci}\n      count: 2\n",
                "      place: rpi4-3\n      busy: wait\n      wait_timeout: 2min\n",
            )
            .replace("port: labgrid", "port: tcp://127.0.0.1:3001");
        let s = parse_scenario(&ok, "lab.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.boards[0].monitor.as_ref().unwrap().port, MonitorPort::Network("tcp://127.0.0.1:3001".into()));
    }
}
