//! Dense, block-pruned (BP) and pattern-pruned (PP) Transformer inference.
//!
//! How the pieces fit:
//! - [`matrix`]: row-major `f32` [`Matrix`], feature-major [`Activations`]
//!   (what the kernels and the encoder compute on), pruning [`Mask`], and
//!   seeded random numbers that are identical on every architecture.
//! - [`prune`]: turns dense weights into masks: block-structured pruning
//!   ([`prune::block`]) and pattern sets over tiles ([`prune::pattern`]),
//!   on a BP base laid over its compacted blocks, so BP zeros stay zero.
//! - [`linear`]: the [`LinearKernel`] trait and its packed formats: dense (a
//!   maintained GEMM; on 32-bit ARM the block-sparse kernel with every column
//!   kept), block-sparse (dense sub-GEMMs on gathered inputs),
//!   pattern-sparse (plain PP: tiles grouped by pattern, shared index lists)
//!   and masked strips (any mask, kept weights only: PP on a BP base). All
//!   compute `yᵀ = w · xᵀ` vectorised over tokens, with a row epilogue, and
//!   split their work over threads the same way.
//! - [`encoder`]: a Transformer encoder built on any of them (config and
//!   presets, weights and safetensors, ops, attention), feature-major from
//!   its first layer to its last; [`model`] holds the BP base plus several
//!   prepacked pattern sets and switches between them in O(1).
//! - [`reference`](mod@reference): scalar `f64`-accumulating oracles for tests and self-tests.
//! - [`simd`]: SIMD selection (at run time on x86-64 and aarch64, at compile
//!   time on 32-bit ARM) and the vector trait the kernels and transposes are
//!   written over once, with its backends: AVX-512, AVX2+FMA, NEON (aarch64
//!   intrinsics; 32-bit ARM inline assembly) and a portable one.
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
