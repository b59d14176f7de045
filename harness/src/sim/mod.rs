//! The simulated board: a product feature, labelled simulated in every output.

pub mod ppk2_emulator;
pub mod simulator;
pub mod sysfs;
