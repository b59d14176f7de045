use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::power::ppk2::Ppk2Mode;
use crate::power::{open_monitor, record, summarize, MonitorKind, MonitorOptions, AUTO_PORT};

/// Read a power monitor on its own: the first thing to run when wiring a bench.
///
/// Opens the instrument, prints what it says about itself (model, serial, calibration),
/// streams for a while and prints the sample count, sample rate, lost samples, mean/min/max
/// current, voltage and power, and the energy over the recording. No board is involved.
///
/// Examples:
///   hil monitor --kind ppk2 --port auto --seconds 5
///   hil monitor --kind ppk2 --port /dev/ttyACM0 --source-mv 5000
///   hil monitor --kind ina --port /dev/ttyUSB0 --baud 115200
///   hil monitor --kind scpi --port /dev/ttyUSB1 --baud 9600 --json
#[derive(Debug, Args)]
pub struct MonitorCmd {
    /// Instrument: ppk2 (Nordic Power Profiler Kit II), ina (INA219/INA226 text sketch), scpi.
    #[arg(long)]
    kind: MonitorKind,
    /// Serial port (or pseudo-terminal); `auto` finds a PPK2 by its USB ID (1915:C00A).
    #[arg(long, default_value = AUTO_PORT)]
    port: String,
    /// How long to record.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Serial baud rate (ina/scpi; the PPK2 ignores it).
    #[arg(long)]
    baud: Option<u32>,
    /// PPK2 only: power the board from the PPK2 at this voltage (source meter, 800-5000 mV).
    /// Without it the PPK2 is an ampere meter and never drives a voltage.
    #[arg(long, value_name = "MV")]
    source_mv: Option<u32>,
    /// PPK2 ampere meter / SCPI current-only meters: the rail voltage, for power and energy.
    #[arg(long, value_name = "VOLTS")]
    voltage: Option<f64>,
    /// Print one JSON object (identity and summary) instead of text.
    #[arg(long)]
    json: bool,
}

impl MonitorCmd {
    pub fn run(self) -> Result<ExitCode> {
        if !(self.seconds > 0.0 && self.seconds <= 3600.0) {
            anyhow::bail!("--seconds {} is out of range (0 < seconds <= 3600)", self.seconds);
        }
        let mut options = MonitorOptions { baud: self.baud, ..MonitorOptions::default() };
        options.ppk2.mode = match self.source_mv {
            Some(mv) => Ppk2Mode::Source { supply_mv: mv },
            None => Ppk2Mode::Ampere { voltage_v: self.voltage },
        };
        if let Some(v) = self.voltage {
            options.scpi.fixed_voltage_v = Some(v);
        }
        let mut monitor = open_monitor(self.kind, &self.port, &options)?;
        let info = monitor.identify()?;
        if !self.json {
            println!("{} on {}{}", info.model, info.port, if info.simulated { " (SIMULATED)" } else { "" });
            if let Some(s) = &info.serial {
                println!("  serial       {s}");
            }
            for (k, v) in &info.metadata {
                println!("  {k:<12} {v}");
            }
            if !info.calibration.is_empty() {
                let cal: Vec<String> = info.calibration.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("  calibration  {}", cal.join(" "));
            }
            eprintln!("recording {} s ...", self.seconds);
        }
        let rec = record(monitor.as_mut(), Duration::from_secs_f64(self.seconds)).context("recording")?;
        let summary = summarize(&rec.samples, rec.lost, rec.elapsed);
        if self.json {
            println!("{}", serde_json::json!({ "monitor": info, "summary": summary }));
        } else {
            println!("{summary}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
