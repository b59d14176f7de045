//! Advanced SIMD (NEON) on 32-bit ARM (ARMv7-A: Cortex-A7/A9/A15/A17, and
//! ARMv8 cores running 32-bit code), on stable Rust, through inline assembly.
//!
//! Why assembly and not portable code LLVM vectorises: LLVM does not turn
//! `f32` arithmetic into ARMv7 NEON on its own, because NEON flushes
//! denormals to zero and so is not IEEE 754: the loop vectoriser has refused
//! for years and the SLP vectoriser too since LLVM 20
//! (llvm/llvm-project#106909), unless fast-math flags allow it, which stable
//! Rust cannot set. Per-lane loops over `[f32; 4]` therefore compile to
//! scalar VFP (`vmla.f32 s1, s2, s3`, one lane at a time); integer loops do
//! vectorise. And the `core::arch::arm` NEON intrinsics and vector types are
//! unstable (rust-lang/rust#111800).
//!
//! What stable inline assembly offers: `d` registers (`dreg`, 64 bits) with
//! `f64` operands, but no `q` registers (`qreg` operands need a NEON vector
//! type, which cannot be named on stable). So a 4-lane [`Neon`] vector is two
//! `d` registers, each holding two lanes in an `f64` bit container (never
//! used as a number), and each vector operation is two D-form NEON
//! instructions (`vmla.f32 d16, d18, d0[1]`). The assembly is one
//! instruction per block, `pure` and `nomem`, so LLVM allocates the
//! registers, schedules, and keeps the accumulators of a micro-kernel in
//! registers (32 `d` registers: the capacity of 16 `q` registers). Loads and
//! stores are plain Rust (`f64` reads at `f32` alignment), which LLVM merges
//! into `vldmia`/`vstmia` runs.
//!
//! Cost against Q-form instructions: on the Cortex-A7 the NEON datapath is
//! 64 bits wide and a Q-form `vmla.f32` issues over two cycles, so D-forms
//! lose nothing there; on wider cores (Cortex-A15) they take twice the issue
//! slots for the same lanes. When NEON vector types become stable, this
//! module can switch to `q` registers without touching the kernels.
//!
//! Arithmetic: `vmla.f32` rounds the product before accumulating (not fused,
//! like the portable backend's `a * b + c`; VFPv4's `vfma` is not part of
//! the `thumbv7neon` baseline) and NEON flushes denormal inputs and results
//! to zero, which the kernels' weights and activations (magnitudes far above
//! 1e-38) never meet.

use super::F32Vector;
use std::arch::asm;

/// 4 lanes in two NEON `d` registers: lanes 0-1 in `lo`, 2-3 in `hi` (bit containers, see the module docs).
#[derive(Clone, Copy)]
pub struct Neon {
    lo: f64,
    hi: f64,
}

impl std::fmt::Debug for Neon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Neon").field(&self.lanes()).finish()
    }
}

impl Neon {
    /// The four lanes.
    pub fn lanes(self) -> [f32; 4] {
        let (lo, hi) = (self.lo.to_bits(), self.hi.to_bits());
        [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32].map(f32::from_bits)
    }
}

/// Two lanes (an `f64` bit container) read at `f32` alignment, so LLVM may use `vldr`/`vldmia`
/// (which need 4-byte alignment; an unaligned read would become byte-wise `vld1.8`).
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct TwoLanes(f64);

/// # Safety
/// `p` is valid for 2 reads of `f32` and 4-byte aligned (as every `*const f32` into a slice is).
#[inline(always)]
unsafe fn load_d(p: *const f32) -> f64 {
    // SAFETY: forwarded from the caller; `TwoLanes` has alignment 4.
    unsafe { std::ptr::read(p.cast::<TwoLanes>()).0 }
}

/// # Safety
/// `p` is valid for 2 writes of `f32` and 4-byte aligned.
#[inline(always)]
unsafe fn store_d(p: *mut f32, v: f64) {
    // SAFETY: forwarded from the caller; `TwoLanes` has alignment 4.
    unsafe { std::ptr::write(p.cast::<TwoLanes>(), TwoLanes(v)) }
}

/// One D-form NEON instruction `insn dst, a, b` on 2 lanes: `inout` for
/// multiply-accumulates (`dst` is also the addend), `out` otherwise.
macro_rules! d_op {
    ($insn:literal, inout $acc:expr, $a:expr, $b:expr) => {{
        let mut acc: f64 = $acc;
        // SAFETY: NEON register arithmetic only (the module is compiled only for NEON targets).
        unsafe {
            asm!(concat!($insn, " {acc}, {a}, {b}"), acc = inout(dreg) acc, a = in(dreg) $a, b = in(dreg) $b,
                 options(pure, nomem, nostack, preserves_flags))
        };
        acc
    }};
    ($insn:literal, $a:expr, $b:expr) => {{
        let out: f64;
        // SAFETY: as above.
        unsafe {
            asm!(concat!($insn, " {out}, {a}, {b}"), out = lateout(dreg) out, a = in(dreg) $a, b = in(dreg) $b,
                 options(pure, nomem, nostack, preserves_flags))
        };
        out
    }};
}

/// `acc + x * g[lane]` for the [`Neon`] vectors `acc` and `x` and the `d` register `g` holding
/// the scalar: `vmla.f32` by scalar on each half (the scalar's register must be `d0`-`d15`).
macro_rules! mla_by_lane {
    ($acc:expr, $x:expr, $g:expr, $lane:literal) => {{
        let (mut lo, mut hi): (f64, f64) = ($acc.lo, $acc.hi);
        // SAFETY: NEON register arithmetic only.
        unsafe {
            asm!(concat!("vmla.f32 {acc}, {x}, {g}[", $lane, "]"), acc = inout(dreg) lo, x = in(dreg) $x.lo,
                 g = in(dreg_low16) $g, options(pure, nomem, nostack, preserves_flags));
            asm!(concat!("vmla.f32 {acc}, {x}, {g}[", $lane, "]"), acc = inout(dreg) hi, x = in(dreg) $x.hi,
                 g = in(dreg_low16) $g, options(pure, nomem, nostack, preserves_flags));
        };
        Neon { lo, hi }
    }};
}

/// `vtrn.32 a, b`: `a = [a0, b0]`, `b = [a1, b1]`.
#[inline(always)]
fn trn(a: f64, b: f64) -> (f64, f64) {
    let (mut a, mut b) = (a, b);
    // SAFETY: NEON register permutation only.
    unsafe {
        asm!("vtrn.32 {a}, {b}", a = inout(dreg) a, b = inout(dreg) b, options(pure, nomem, nostack, preserves_flags))
    };
    (a, b)
}

impl F32Vector for Neon {
    const LANES: usize = 4;

    #[inline(always)]
    unsafe fn zero() -> Self {
        Neon { lo: 0.0, hi: 0.0 }
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // `vmov d, r, r` from the core register the value was loaded into.
        let bits = u64::from(v.to_bits());
        let pair = f64::from_bits(bits << 32 | bits);
        Neon { lo: pair, hi: pair }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 4 readable values at `p` (an `f32` pointer: 4-byte aligned).
        unsafe { Neon { lo: load_d(p), hi: load_d(p.add(2)) } }
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 4 writable values at `p`.
        unsafe {
            store_d(p, self.lo);
            store_d(p.add(2), self.hi);
        }
    }

    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        Neon { lo: d_op!("vmla.f32", inout self.lo, a.lo, b.lo), hi: d_op!("vmla.f32", inout self.hi, a.hi, b.hi) }
    }

    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        Neon { lo: d_op!("vadd.f32", self.lo, b.lo), hi: d_op!("vadd.f32", self.hi, b.hi) }
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        // `pld` is a hint: it never faults, whatever the address.
        unsafe { asm!("pld [{0}]", in(reg) p, options(nostack, preserves_flags, readonly)) }
    }

    /// Two `d` registers (in `d0`-`d15`, where `vmla.f32`'s scalar operand must be): one load
    /// for the group, then a by-scalar `vmla.f32` per weight instead of a broadcast each.
    type Group = Neon;

    #[inline(always)]
    unsafe fn load_group(p: *const f32) -> Self::Group {
        // SAFETY: the caller guarantees GROUP readable values at `p`.
        unsafe { Self::load(p) }
    }

    #[inline(always)]
    unsafe fn mul_add_lane(self, group: Self::Group, lane: usize, b: Self) -> Self {
        // `lane` is a constant once inlined, so only one arm survives.
        match lane {
            0 => mla_by_lane!(self, b, group.lo, "0"),
            1 => mla_by_lane!(self, b, group.lo, "1"),
            2 => mla_by_lane!(self, b, group.hi, "0"),
            _ => mla_by_lane!(self, b, group.hi, "1"),
        }
    }

    const BLOCK: usize = 4;

    #[inline(always)]
    unsafe fn transpose_block(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
        // SAFETY: the caller guarantees both 4x4 blocks are in bounds.
        unsafe {
            let (a, b) = (Self::load(src), Self::load(src.add(src_stride)));
            let (c, d) = (Self::load(src.add(2 * src_stride)), Self::load(src.add(3 * src_stride)));
            let (ab0, ab1) = trn(a.lo, b.lo); // a0 b0 | a1 b1
            let (ab2, ab3) = trn(a.hi, b.hi); // a2 b2 | a3 b3
            let (cd0, cd1) = trn(c.lo, d.lo); // c0 d0 | c1 d1
            let (cd2, cd3) = trn(c.hi, d.hi); // c2 d2 | c3 d3
            Neon { lo: ab0, hi: cd0 }.store(dst);
            Neon { lo: ab1, hi: cd1 }.store(dst.add(dst_stride));
            Neon { lo: ab2, hi: cd2 }.store(dst.add(2 * dst_stride));
            Neon { lo: ab3, hi: cd3 }.store(dst.add(3 * dst_stride));
        }
    }
}
