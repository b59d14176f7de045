//! `hil`, the host controller: scenarios, boards, DVFS, power monitors, results and reports.

pub mod board;
