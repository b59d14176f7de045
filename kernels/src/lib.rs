//! Dense, block-pruned (BP) and pattern-pruned (PP) Transformer inference.
//!
//! How the pieces fit:
//! - [`matrix`]: row-major `f32` [`Matrix`], pruning [`Mask`], and seeded
//!   random numbers that are identical on every architecture.
//! - [`prune`]: turns dense weights into masks: block-structured pruning
//!   ([`prune::block`]) and pattern sets over tiles ([`prune::pattern`]),
//!   applied on top of BP so BP zeros stay zero.
//! - [`linear`]: the [`LinearKernel`] trait and its three packed formats:
//!   dense (a maintained GEMM), block-sparse (dense sub-GEMMs on gathered
//!   inputs) and pattern-sparse (tiles grouped by pattern, shared index lists,
//!   vectorised over tokens).
//! - [`encoder`]: a Transformer encoder built on any of them, with presets
//!   and synthetic or safetensors weights; [`model`] holds the BP base plus
//!   several prepacked pattern sets and switches between them in O(1).
//! - [`reference`]: scalar `f64`-accumulating oracles for tests and self-tests.
//! - [`simd`]: which instruction sets were detected at run time.
//!
//! No I/O happens here except reading a safetensors file the caller names.

pub mod encoder;
pub mod linear;
pub mod matrix;
pub mod model;
pub mod prune;
pub mod reference;
pub mod simd;

pub use linear::{LayerStats, LinearKernel, Threads};
pub use matrix::{Activations, Mask, Matrix};
