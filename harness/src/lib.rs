//! `hil`, the host controller: scenarios, boards, DVFS, power monitors, results and reports.
//!
//! - [`scenario`]: strict YAML, deserialised raw then validated; [`plan`]: the cells to run.
//! - [`board`]: the transport trait (SSH or local); [`probe`] and [`dvfs`] work through it.
//! - [`power`]: power-monitor drivers (PPK2, INA2xx text, SCPI); [`energy`]: clock alignment
//!   and energy integration as pure functions.
//! - [`labgrid`]: boards reserved and locked from a labgrid lab (`labgrid-client`).
//! - [`sim`]: the simulated board.

pub mod agent_client;
pub mod analysis;
pub mod board;
pub mod board_lock;
pub mod cli;
pub mod clock_fit;
pub mod connect;
pub mod deploy;
pub mod dvfs;
pub mod energy;
pub mod lab;
pub mod labgrid;
pub mod plan;
pub mod power;
pub mod power_session;
pub mod probe;
pub mod report;
pub mod results;
pub mod runmeta;
pub mod runner;
pub mod samples;
pub mod scenario;
pub mod sim;
pub mod stats;
