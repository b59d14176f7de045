//! The simulated board: a product feature, labelled simulated in every output.

pub mod ppk2_emulator;
