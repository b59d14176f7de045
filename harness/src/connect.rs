//! From a scenario's board entry to a live [`Board`].

use anyhow::Result;

use crate::board::local::LocalBoard;
use crate::board::Board;
use crate::power::ppk2::Ppk2Mode;
use crate::power::{open_monitor, MonitorKind, MonitorOptions, PowerMonitor, AUTO_PORT};
use crate::scenario::{
    BoardSpec, MonitorKind as ScenarioMonitorKind, MonitorPort, MonitorSettings, MonitorSpec, Ppk2Settings,
    TransportSpec,
};

/// Connects to the board a scenario entry describes.
pub fn open_board(spec: &BoardSpec) -> Result<Box<dyn Board>> {
    match &spec.transport {
        TransportSpec::Local => Ok(Box::new(LocalBoard::new(spec.name.clone()))),
        TransportSpec::Ssh(ssh) => crate::board::ssh::connect_from_spec(&spec.name, ssh, spec.sudo),
    }
}

/// Opens the power monitor a scenario entry names (or the simulated board's emulated PPK2).
pub fn open_scenario_monitor(spec: &MonitorSpec) -> Result<Box<dyn PowerMonitor>> {
    let mut options = MonitorOptions { baud: Some(spec.baud), ..MonitorOptions::default() };
    match &spec.settings {
        MonitorSettings::Ppk2(Ppk2Settings::SourceMeter { source_mv }) => {
            options.ppk2.mode = Ppk2Mode::Source { supply_mv: *source_mv };
        }
        MonitorSettings::Ppk2(Ppk2Settings::AmpereMeter { rail_mv }) => {
            options.ppk2.mode = Ppk2Mode::Ampere { voltage_v: Some(f64::from(*rail_mv) / 1000.0) };
        }
        MonitorSettings::Ina(ina) => {
            use crate::power::ina::{InaFormat as Driver, Quantity};
            use crate::scenario::InaFormat;
            options.ina.format = match ina.format {
                InaFormat::Auto => None,
                InaFormat::Csv => Some(Driver::CsvHeader),
                InaFormat::Tsv => Some(Driver::TsvHeader),
                InaFormat::KeyValue => Some(Driver::KeyValue),
            };
            if let Some(fields) = &ina.layout {
                let sep = if ina.format == InaFormat::Tsv { "\t" } else { "," };
                options.ina.columns = Some(fields.join(sep));
            }
            let cols = &ina.columns;
            options.ina.names = [
                (&cols.time, Quantity::Time),
                (&cols.current, Quantity::Current),
                (&cols.voltage, Quantity::BusVoltage),
                (&cols.power, Quantity::Power),
            ]
            .into_iter()
            .filter_map(|(name, q)| name.clone().map(|n| (n, q)))
            .collect();
        }
        MonitorSettings::Scpi(s) => {
            options.scpi.current_query = s.current_query.clone();
            options.scpi.voltage_query = Some(s.voltage_query.clone());
            options.scpi.termination = s.termination.as_str().to_string();
            options.scpi.poll_hz = 1.0 / s.poll_interval.as_secs_f64().max(1e-3);
            options.scpi.reply_timeout = s.reply_timeout;
        }
    }
    let kind = match spec.kind {
        ScenarioMonitorKind::Ppk2 => MonitorKind::Ppk2,
        ScenarioMonitorKind::Ina => MonitorKind::Ina,
        ScenarioMonitorKind::Scpi => MonitorKind::Scpi,
    };
    let port = match &spec.port {
        MonitorPort::Auto => AUTO_PORT.to_string(),
        MonitorPort::Path(p) => p.to_string_lossy().into_owned(),
        MonitorPort::Network(address) => address.clone(),
        MonitorPort::Labgrid => {
            anyhow::bail!("the monitor's port comes from a labgrid place that has not been acquired yet (a bug in hil)")
        }
    };
    Ok(open_monitor(kind, &port, &options)?)
}
