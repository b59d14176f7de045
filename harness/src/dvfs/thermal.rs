//! Thermal zones: find the one the scenario names, read it, wait for it to
//! cool before a cell.
//!
//! `class/thermal/thermal_zone<N>/temp` is in millidegrees Celsius (signed);
//! `type` names the sensor (`cpu-thermal` on a Raspberry Pi 4, `soc_thermal`,
//! `x86_pkg_temp`, ...). Zone numbers follow registration order, so a
//! scenario is better off naming the type.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Clock, DvfsError, DvfsErrorKind, Sysfs};
use crate::board::Board;

/// Zones are numbered from 0 without gaps in practice; this bounds the scan.
pub const MAX_THERMAL_ZONES: u32 = 64;

/// A thermal zone and, where readable, its temperature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThermalZone {
    pub index: u32,
    #[serde(rename = "type")]
    pub zone_type: String,
    /// Millidegrees Celsius; `None` when the sensor refused the read (some
    /// disabled zones return `EINVAL`/`ENODATA`).
    pub temp_millicelsius: Option<i64>,
}

/// How a scenario names a thermal zone: `thermal_zone2` or `2` by index,
/// anything else by type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThermalZoneSelector {
    Index(u32),
    Type(String),
}

impl FromStr for ThermalZoneSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty thermal zone name".to_string());
        }
        let digits = s.strip_prefix("thermal_zone").unwrap_or(s);
        match digits.parse::<u32>() {
            Ok(index) => Ok(ThermalZoneSelector::Index(index)),
            Err(_) if digits.len() != s.len() => Err(format!("bad thermal zone {s:?}: expected thermal_zone<N>")),
            Err(_) => Ok(ThermalZoneSelector::Type(s.to_string())),
        }
    }
}

impl fmt::Display for ThermalZoneSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThermalZoneSelector::Index(i) => write!(f, "thermal_zone{i}"),
            ThermalZoneSelector::Type(t) => write!(f, "type {t:?}"),
        }
    }
}

fn parse_millicelsius(text: &str) -> Result<i64, String> {
    text.trim().parse().map_err(|_| format!("expected millidegrees Celsius, found {:?}", text.trim()))
}

/// Lists the zones `thermal_zone0`, `thermal_zone1`, ... up to the first
/// missing one (at most [`MAX_THERMAL_ZONES`]). A board without thermal
/// zones gives an empty list.
pub fn list_thermal_zones(board: &mut dyn Board, sysfs: &Sysfs) -> Result<Vec<ThermalZone>, DvfsError> {
    let mut zones = Vec::new();
    for index in 0..MAX_THERMAL_ZONES {
        let type_path = sysfs.thermal_zone_path(index, "type");
        let Some(zone_type) = sysfs.read_optional(board, None, &type_path)? else { break };
        let temp_path = sysfs.thermal_zone_path(index, "temp");
        let temp_millicelsius = match sysfs.read_optional(board, None, &temp_path)? {
            Some(text) => {
                Some(parse_millicelsius(&text).map_err(|e| DvfsError::parse(board.name(), None, &temp_path, e))?)
            }
            None => None,
        };
        zones.push(ThermalZone { index, zone_type, temp_millicelsius });
    }
    Ok(zones)
}

/// Finds the zone a scenario names; the error lists the zones present.
pub fn resolve_thermal_zone(
    board: &mut dyn Board,
    sysfs: &Sysfs,
    selector: &ThermalZoneSelector,
) -> Result<ThermalZone, DvfsError> {
    let zones = list_thermal_zones(board, sysfs)?;
    let found = zones.iter().find(|z| match selector {
        ThermalZoneSelector::Index(i) => z.index == *i,
        ThermalZoneSelector::Type(t) => &z.zone_type == t,
    });
    match found {
        Some(z) => Ok(z.clone()),
        None => {
            let present = if zones.is_empty() {
                "none".to_string()
            } else {
                zones
                    .iter()
                    .map(|z| format!("thermal_zone{} ({})", z.index, z.zone_type))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Err(DvfsError::new(
                board.name(),
                None,
                Some(&sysfs.thermal_dir()),
                DvfsErrorKind::NoThermalZone,
                format!("no thermal zone {selector}; present: {present}"),
            ))
        }
    }
}

/// Reads one zone's temperature in millidegrees Celsius.
pub fn read_zone_temp(board: &mut dyn Board, sysfs: &Sysfs, index: u32) -> Result<i64, DvfsError> {
    let path = sysfs.thermal_zone_path(index, "temp");
    let text = sysfs.read_text(board, None, &path)?;
    parse_millicelsius(&text).map_err(|e| DvfsError::parse(board.name(), None, &path, e))
}

/// One step of the cool-down wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoolDownStep {
    /// Below the threshold: start the cell.
    Cool,
    /// Still too warm, time left: poll again.
    Wait,
    /// Still too warm and the timeout has passed.
    TimedOut,
}

/// Decides the next step: cool when strictly below the threshold (a zone
/// sitting exactly at it has not cooled), else wait until `timeout`.
pub fn cool_down_step(
    temp_millicelsius: i64,
    threshold_millicelsius: i64,
    elapsed: Duration,
    timeout: Duration,
) -> CoolDownStep {
    if temp_millicelsius < threshold_millicelsius {
        CoolDownStep::Cool
    } else if elapsed >= timeout {
        CoolDownStep::TimedOut
    } else {
        CoolDownStep::Wait
    }
}

/// What a cool-down wait saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoolDownReport {
    pub zone: u32,
    pub start_millicelsius: i64,
    pub end_millicelsius: i64,
    pub waited: Duration,
    pub polls: u32,
}

/// Polls zone `index` every `poll` until it is below `threshold_millicelsius`;
/// an error (naming the zone, the last temperature and the wait) after
/// `timeout`. `clock` is injectable so tests do not wait.
pub fn wait_for_cool_down(
    board: &mut dyn Board,
    sysfs: &Sysfs,
    index: u32,
    threshold_millicelsius: i64,
    timeout: Duration,
    poll: Duration,
    clock: &mut dyn Clock,
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> Result<CoolDownReport, DvfsError> {
    let start = clock.now();
    let start_temp = read_zone_temp(board, sysfs, index)?;
    let mut temp = start_temp;
    let mut polls = 1;
    loop {
        let waited = clock.now().saturating_sub(start);
        match cool_down_step(temp, threshold_millicelsius, waited, timeout) {
            CoolDownStep::Cool => {
                return Ok(CoolDownReport {
                    zone: index,
                    start_millicelsius: start_temp,
                    end_millicelsius: temp,
                    waited,
                    polls,
                })
            }
            CoolDownStep::TimedOut => {
                return Err(DvfsError::new(
                    board.name(),
                    None,
                    Some(&sysfs.thermal_zone_path(index, "temp")),
                    DvfsErrorKind::CoolDownTimeout,
                    format!(
                        "still {:.1} °C after waiting {:.0} s for it to fall below {:.1} °C (started at {:.1} °C); \
                         improve cooling, raise the threshold or lengthen the cool-down timeout",
                        temp as f64 / 1000.0,
                        waited.as_secs_f64(),
                        threshold_millicelsius as f64 / 1000.0,
                        start_temp as f64 / 1000.0,
                    ),
                ))
            }
            CoolDownStep::Wait if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) => {
                return Err(DvfsError::new(
                    board.name(),
                    None,
                    Some(&sysfs.thermal_zone_path(index, "temp")),
                    DvfsErrorKind::Interrupted,
                    format!(
                        "stopped on request while waiting for {:.1} °C to fall below {:.1} °C",
                        temp as f64 / 1000.0,
                        threshold_millicelsius as f64 / 1000.0
                    ),
                ))
            }
            CoolDownStep::Wait => {
                // Never sleep past the deadline by more than one poll.
                clock.sleep(poll.min(timeout.saturating_sub(waited)).max(Duration::from_millis(1)));
                temp = read_zone_temp(board, sysfs, index)?;
                polls += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_by_index_or_type() {
        assert_eq!("thermal_zone2".parse::<ThermalZoneSelector>().unwrap(), ThermalZoneSelector::Index(2));
        assert_eq!("0".parse::<ThermalZoneSelector>().unwrap(), ThermalZoneSelector::Index(0));
        assert_eq!(
            "cpu-thermal".parse::<ThermalZoneSelector>().unwrap(),
            ThermalZoneSelector::Type("cpu-thermal".into())
        );
        assert!("thermal_zoneX".parse::<ThermalZoneSelector>().is_err());
        assert!(" ".parse::<ThermalZoneSelector>().is_err());
    }

    #[test]
    fn cool_down_decisions() {
        let t = Duration::from_secs(60);
        assert_eq!(cool_down_step(44_999, 45_000, Duration::ZERO, t), CoolDownStep::Cool);
        assert_eq!(cool_down_step(45_000, 45_000, Duration::ZERO, t), CoolDownStep::Wait);
        assert_eq!(cool_down_step(45_000, 45_000, t, t), CoolDownStep::TimedOut);
        // Cool wins even past the deadline.
        assert_eq!(cool_down_step(30_000, 45_000, t * 2, t), CoolDownStep::Cool);
        assert_eq!(cool_down_step(-5_000, 0, Duration::ZERO, t), CoolDownStep::Cool);
    }
}
