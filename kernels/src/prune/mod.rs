//! Pruning: from dense weights to masks.

pub mod block;
pub mod pattern;
