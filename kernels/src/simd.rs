//! SIMD selection and the narrow vector abstraction the sparse kernels are
//! written over.
//!
//! Kernels are written once, generic over [`F32Vector`], and instantiated per
//! backend inside a function compiled with that backend's target features
//! (the memchr pattern): the generic body is `#[inline(always)]`, so the
//! intrinsics end up inlined into an `avx512f` / `avx2,fma` / NEON function.
//! [`Backend::best`] picks the widest backend the CPU supports, the one every
//! kernel packs for by default:
//! - x86-64: at run time, so one binary runs on AVX2-only and AVX-512
//!   machines alike;
//! - aarch64: NEON ([`neon`], intrinsics), part of every aarch64 CPU;
//! - 32-bit ARM: NEON ([`neon`], stable inline assembly over `d` registers,
//!   see its docs for why) when the build targets NEON, which is decided at
//!   compile time: `cfg(simd_neon)`, set by `build.rs` for the
//!   `thumbv7neon-*` targets (or `-C target-feature=+neon`); stable Rust has
//!   neither run-time feature detection nor a `target_feature` cfg for 32-bit
//!   ARM. A build without it (`armv7-unknown-linux-gnueabihf`) runs the
//!   portable backend, as scalar VFP code.
//!
//! [`ScalarLanes`], the portable backend, is always available; the `f64`
//! oracles in [`crate::reference`] check every backend in the tests.
//!
//! Also here: a strided `f32` transpose (8x8 AVX blocks on x86-64, 4x4 NEON
//! blocks on ARM, cache-blocked scalar otherwise), used by kernels that
//! work feature-major internally and must convert activations in `forward`.

/// The SIMD instruction-set features this process can use, most basic first,
/// e.g. `["sse4.2", "avx", "avx2", "fma", "avx512f", ...]` or `["neon", ...]`:
/// detected at run time on x86-64 and aarch64; on 32-bit ARM, where stable
/// Rust cannot detect them, those the build was compiled for (`["neon"]` for
/// a NEON build, whose kernels then run NEON; `[]` otherwise, even on a CPU
/// that has NEON, since this build cannot use it). Always contains
/// [`Backend::features`] of [`Backend::best`].
// The pushes are in per-architecture `cfg` blocks.
#[allow(clippy::vec_init_then_push)]
pub fn detected_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($name) {
                    found.push($name);
                }
            )*};
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "avx512f",
            "avx512vl",
            "avx512bw",
            "avx512dq",
            "avx512bf16",
            "avx512fp16"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($name) {
                    found.push($name);
                }
            )*};
        }
        probe!("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2");
    }
    #[cfg(all(target_arch = "arm", simd_neon))]
    found.push("neon");
    found
}

/// One line for reports: architecture, the backend the sparse kernels use,
/// and the usable features ([`detected_features`]).
pub fn describe() -> String {
    let features = detected_features();
    let list = if features.is_empty() { "none".to_string() } else { features.join(",") };
    format!("{} kernels={} features={}", std::env::consts::ARCH, Backend::best().name(), list)
}

/// A SIMD instruction set the hand-written kernels can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// 512-bit vectors, 16 `f32` lanes (x86-64 with AVX-512F).
    Avx512,
    /// 256-bit vectors with fused multiply-add, 8 lanes (x86-64 with AVX2 and FMA).
    Avx2Fma,
    /// 128-bit Advanced SIMD, 4 lanes: every aarch64 CPU, and 32-bit ARM
    /// builds for a NEON target (`cfg(simd_neon)`, see the module docs).
    Neon,
    /// Portable code over fixed-size arrays; the compiler vectorises it for
    /// the baseline target (SSE2 on x86-64, NEON on aarch64; on 32-bit ARM
    /// it stays scalar VFP, see [`neon`]'s docs).
    Scalar,
}

impl Backend {
    /// The widest backend this CPU supports (detected at run time; on 32-bit
    /// ARM, chosen at compile time): the one the kernels pack for by default.
    pub fn best() -> Backend {
        Backend::available()[0]
    }

    /// Every backend this CPU can run, best first; `Scalar` is always last.
    /// Tests run each kernel on all of them.
    // The pushes are in per-architecture `cfg` blocks.
    #[allow(clippy::vec_init_then_push)]
    pub fn available() -> Vec<Backend> {
        #[allow(unused_mut)]
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                out.push(Backend::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                out.push(Backend::Avx2Fma);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                out.push(Backend::Neon);
            }
        }
        #[cfg(all(target_arch = "arm", simd_neon))]
        out.push(Backend::Neon);
        out.push(Backend::Scalar);
        out
    }

    /// Whether this CPU can run the backend.
    pub fn is_available(self) -> bool {
        Backend::available().contains(&self)
    }

    /// `f32` lanes per vector.
    pub fn lanes(self) -> usize {
        match self {
            Backend::Avx512 => 16,
            Backend::Avx2Fma => 8,
            Backend::Neon => 4,
            Backend::Scalar => ScalarLanes::LANES,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Avx512 => "avx512",
            Backend::Avx2Fma => "avx2+fma",
            Backend::Neon => "neon",
            Backend::Scalar => "scalar",
        }
    }

    /// The [`detected_features`] names this backend needs.
    pub fn features(self) -> &'static [&'static str] {
        match self {
            Backend::Avx512 => &["avx512f"],
            Backend::Avx2Fma => &["avx2", "fma"],
            Backend::Neon => &["neon"],
            Backend::Scalar => &[],
        }
    }
}

/// A vector of `f32` lanes: the only operations a GEMM-like micro-kernel needs.
///
/// # Safety
/// Every method may use instructions of its backend: call them only from code
/// compiled with (or running under a run-time check for) that backend's
/// target features. Pointers must be valid for `LANES` consecutive `f32`s;
/// no alignment beyond `f32`'s own is required. (This section covers every method.)
#[allow(clippy::missing_safety_doc)]
pub trait F32Vector: Copy {
    const LANES: usize;
    /// All lanes zero.
    unsafe fn zero() -> Self;
    /// All lanes `v`.
    unsafe fn splat(v: f32) -> Self;
    /// Loads `LANES` values from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self;
    /// Stores the lanes to `p` (unaligned).
    unsafe fn store(self, p: *mut f32);
    /// `self + a * b`, fused where the hardware has it.
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    /// `self + b`.
    unsafe fn add(self, b: Self) -> Self;
    /// Hints that the cache line holding `p` will be read soon (into L1).
    /// A hint only: never faults, may do nothing.
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        let _ = p;
    }

    /// Up to [`GROUP`] consecutive weights, held the way this backend feeds
    /// them to [`F32Vector::mul_add_lane`]: on NEON one `q` register (one
    /// vector load for the whole group, then `fmla v.4s, v.4s, w.s[lane]`);
    /// on x86-64, where a broadcast from memory costs no more than a load,
    /// just the address.
    type Group: Copy;
    /// Whether a [`F32Vector::Group`] is only an address (each lane a broadcast
    /// from memory), so a loop may take one weight at a time for free.
    const GROUP_IS_ADDRESS: bool = false;
    /// The group of weights at `p`. `p` must be valid for [`GROUP`] floats,
    /// whether or not the caller uses them all.
    unsafe fn load_group(p: *const f32) -> Self::Group;
    /// `self + group[lane] * b` (`lane < GROUP`, a constant after inlining).
    unsafe fn mul_add_lane(self, group: Self::Group, lane: usize, b: Self) -> Self;

    /// Side of the square block [`F32Vector::transpose_block`] transposes.
    const BLOCK: usize;
    /// Transposes one `BLOCK x BLOCK` block: `src` rows at `src_stride` into
    /// `dst` rows at `dst_stride` (`dst[c][r] = src[r][c]`). Both blocks must
    /// be in bounds and must not overlap.
    unsafe fn transpose_block(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize);
}

/// Weights per [`F32Vector::Group`]: one 128-bit NEON register.
pub const GROUP: usize = 4;

/// Portable backend: 8 lanes in a plain array. Loops over it auto-vectorise
/// (SSE2, aarch64 NEON), except on 32-bit ARM, where LLVM keeps `f32`
/// arithmetic scalar (see [`neon`]'s docs on NEON and IEEE 754).
#[derive(Clone, Copy, Debug)]
pub struct ScalarLanes([f32; 8]);

impl F32Vector for ScalarLanes {
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> Self {
        ScalarLanes([0.0; 8])
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        ScalarLanes([v; 8])
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable values at `p`.
        ScalarLanes(unsafe { std::ptr::read_unaligned(p as *const [f32; 8]) })
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 8 writable values at `p`.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 8], self.0) }
    }

    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        // Separate multiply and add (no `mul_add`): without hardware FMA in the
        // baseline target, `f32::mul_add` would become a slow libm call.
        let mut out = self.0;
        for i in 0..8 {
            out[i] += a.0[i] * b.0[i];
        }
        ScalarLanes(out)
    }

    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        ScalarLanes(std::array::from_fn(|i| self.0[i] + b.0[i]))
    }

    type Group = [f32; GROUP];

    #[inline(always)]
    unsafe fn load_group(p: *const f32) -> Self::Group {
        // SAFETY: the caller guarantees GROUP readable values at `p`.
        unsafe { std::ptr::read_unaligned(p as *const [f32; GROUP]) }
    }

    #[inline(always)]
    unsafe fn mul_add_lane(self, group: Self::Group, lane: usize, b: Self) -> Self {
        // SAFETY: no features needed.
        unsafe { self.mul_add(Self::splat(group[lane]), b) }
    }

    const BLOCK: usize = 8;

    #[inline(always)]
    unsafe fn transpose_block(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
        for r in 0..8 {
            for c in 0..8 {
                // SAFETY: the caller guarantees both 8x8 blocks are in bounds.
                unsafe { *dst.add(c * dst_stride + r) = *src.add(r * src_stride + c) };
            }
        }
    }
}

#[cfg(all(target_arch = "arm", simd_neon))]
#[path = "simd/neon_arm.rs"]
pub mod neon;

// AVX-512 intrinsics and `target_feature(enable = "avx512f")` are stable
// since Rust 1.89; the workspace's `rust-version` must be at least that.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)]
pub mod x86 {
    //! AVX-512F and AVX2+FMA vectors.
    use super::F32Vector;
    use std::arch::x86_64::*;

    /// 16 lanes in a `zmm` register.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx512(__m512);

    impl F32Vector for Avx512 {
        const LANES: usize = 16;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(unsafe { _mm512_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx512(unsafe { _mm512_set1_ps(v) })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }

        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(a.0, b.0, self.0) })
        }

        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Avx512(unsafe { _mm512_add_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn prefetch(p: *const f32) {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
        }

        /// The address: `vbroadcastss` from memory is a plain load on x86-64.
        type Group = *const f32;
        const GROUP_IS_ADDRESS: bool = true;

        #[inline(always)]
        unsafe fn load_group(p: *const f32) -> Self::Group {
            p
        }

        #[inline(always)]
        unsafe fn mul_add_lane(self, group: Self::Group, lane: usize, b: Self) -> Self {
            unsafe { self.mul_add(Self::splat(*group.add(lane)), b) }
        }

        const BLOCK: usize = 8;

        #[inline(always)]
        unsafe fn transpose_block(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
            unsafe { transpose8x8(src, src_stride, dst, dst_stride) }
        }
    }

    /// 8 lanes in a `ymm` register, with FMA.
    #[derive(Clone, Copy, Debug)]
    pub struct Avx2Fma(__m256);

    impl F32Vector for Avx2Fma {
        const LANES: usize = 8;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2Fma(unsafe { _mm256_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx2Fma(unsafe { _mm256_set1_ps(v) })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2Fma(unsafe { _mm256_loadu_ps(p) })
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }

        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            Avx2Fma(unsafe { _mm256_fmadd_ps(a.0, b.0, self.0) })
        }

        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Avx2Fma(unsafe { _mm256_add_ps(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn prefetch(p: *const f32) {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
        }

        /// The address: `vbroadcastss` from memory is a plain load on x86-64.
        type Group = *const f32;
        const GROUP_IS_ADDRESS: bool = true;

        #[inline(always)]
        unsafe fn load_group(p: *const f32) -> Self::Group {
            p
        }

        #[inline(always)]
        unsafe fn mul_add_lane(self, group: Self::Group, lane: usize, b: Self) -> Self {
            unsafe { self.mul_add(Self::splat(*group.add(lane)), b) }
        }

        const BLOCK: usize = 8;

        #[inline(always)]
        unsafe fn transpose_block(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
            unsafe { transpose8x8(src, src_stride, dst, dst_stride) }
        }
    }

    /// Transposes one 8x8 block: `src` rows at `src_stride`, into `dst` rows at `dst_stride`.
    /// Inlined into callers compiled with AVX2 or AVX-512 (both imply AVX).
    ///
    /// # Safety
    /// AVX must be available; both blocks must be in bounds.
    #[inline(always)]
    unsafe fn transpose8x8(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
        // SAFETY: the caller guarantees 8 rows of 8 readable / writable values.
        unsafe {
            let r0 = _mm256_loadu_ps(src);
            let r1 = _mm256_loadu_ps(src.add(src_stride));
            let r2 = _mm256_loadu_ps(src.add(2 * src_stride));
            let r3 = _mm256_loadu_ps(src.add(3 * src_stride));
            let r4 = _mm256_loadu_ps(src.add(4 * src_stride));
            let r5 = _mm256_loadu_ps(src.add(5 * src_stride));
            let r6 = _mm256_loadu_ps(src.add(6 * src_stride));
            let r7 = _mm256_loadu_ps(src.add(7 * src_stride));
            // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
            let t0 = _mm256_unpacklo_ps(r0, r1);
            let t1 = _mm256_unpackhi_ps(r0, r1);
            let t2 = _mm256_unpacklo_ps(r2, r3);
            let t3 = _mm256_unpackhi_ps(r2, r3);
            let t4 = _mm256_unpacklo_ps(r4, r5);
            let t5 = _mm256_unpackhi_ps(r4, r5);
            let t6 = _mm256_unpacklo_ps(r6, r7);
            let t7 = _mm256_unpackhi_ps(r6, r7);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            _mm256_storeu_ps(dst, _mm256_permute2f128_ps::<0x20>(u0, u4));
            _mm256_storeu_ps(dst.add(dst_stride), _mm256_permute2f128_ps::<0x20>(u1, u5));
            _mm256_storeu_ps(dst.add(2 * dst_stride), _mm256_permute2f128_ps::<0x20>(u2, u6));
            _mm256_storeu_ps(dst.add(3 * dst_stride), _mm256_permute2f128_ps::<0x20>(u3, u7));
            _mm256_storeu_ps(dst.add(4 * dst_stride), _mm256_permute2f128_ps::<0x31>(u0, u4));
            _mm256_storeu_ps(dst.add(5 * dst_stride), _mm256_permute2f128_ps::<0x31>(u1, u5));
            _mm256_storeu_ps(dst.add(6 * dst_stride), _mm256_permute2f128_ps::<0x31>(u2, u6));
            _mm256_storeu_ps(dst.add(7 * dst_stride), _mm256_permute2f128_ps::<0x31>(u3, u7));
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub mod neon {
    //! Advanced SIMD (NEON) vectors.
    use super::F32Vector;
    use std::arch::aarch64::*;

    /// 4 lanes in a `q` register.
    #[derive(Clone, Copy, Debug)]
    pub struct Neon(float32x4_t);

    impl F32Vector for Neon {
        const LANES: usize = 4;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Neon(unsafe { vdupq_n_f32(0.0) })
        }

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Neon(unsafe { vdupq_n_f32(v) })
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Neon(unsafe { vld1q_f32(p) })
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { vst1q_f32(p, self.0) }
        }

        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            Neon(unsafe { vfmaq_f32(self.0, a.0, b.0) })
        }

        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Neon(unsafe { vaddq_f32(self.0, b.0) })
        }

        #[inline(always)]
        unsafe fn prefetch(p: *const f32) {
            // `prfm` is a hint: it never faults, whatever the address.
            unsafe { std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, preserves_flags, readonly)) }
        }

        /// One `q` register: the group costs one `ldr q` and each weight an
        /// indexed `fmla` instead of a broadcast load each.
        type Group = float32x4_t;

        #[inline(always)]
        unsafe fn load_group(p: *const f32) -> Self::Group {
            unsafe { vld1q_f32(p) }
        }

        #[inline(always)]
        unsafe fn mul_add_lane(self, group: Self::Group, lane: usize, b: Self) -> Self {
            // `lane` is a constant once inlined, so only one arm survives.
            unsafe {
                Neon(match lane {
                    0 => vfmaq_laneq_f32::<0>(self.0, b.0, group),
                    1 => vfmaq_laneq_f32::<1>(self.0, b.0, group),
                    2 => vfmaq_laneq_f32::<2>(self.0, b.0, group),
                    _ => vfmaq_laneq_f32::<3>(self.0, b.0, group),
                })
            }
        }

        const BLOCK: usize = 4;

        #[inline(always)]
        unsafe fn transpose_block(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
            unsafe { transpose4x4(src, src_stride, dst, dst_stride) }
        }
    }

    /// Transposes one 4x4 block: `src` rows at `src_stride`, into `dst` rows at `dst_stride`.
    ///
    /// # Safety
    /// Both blocks must be in bounds (NEON is part of every aarch64 CPU).
    #[inline(always)]
    unsafe fn transpose4x4(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
        // SAFETY: the caller guarantees 4 rows of 4 readable / writable values.
        unsafe {
            let a = vld1q_f32(src);
            let b = vld1q_f32(src.add(src_stride));
            let c = vld1q_f32(src.add(2 * src_stride));
            let d = vld1q_f32(src.add(3 * src_stride));
            let ac_lo = vzip1q_f32(a, c); // a0 c0 a1 c1
            let ac_hi = vzip2q_f32(a, c); // a2 c2 a3 c3
            let bd_lo = vzip1q_f32(b, d); // b0 d0 b1 d1
            let bd_hi = vzip2q_f32(b, d); // b2 d2 b3 d3
            vst1q_f32(dst, vzip1q_f32(ac_lo, bd_lo));
            vst1q_f32(dst.add(dst_stride), vzip2q_f32(ac_lo, bd_lo));
            vst1q_f32(dst.add(2 * dst_stride), vzip1q_f32(ac_hi, bd_hi));
            vst1q_f32(dst.add(3 * dst_stride), vzip2q_f32(ac_hi, bd_hi));
        }
    }
}

/// Transposes a `rows x cols` block of `src` (row stride `src_stride`) into
/// `dst` (`cols x rows`, row stride `dst_stride`): `dst[c][r] = src[r][c]`,
/// on the best backend of this CPU ([`transpose_with`]).
///
/// # Panics
/// When a slice is too short for the given shape and stride.
pub fn transpose_strided(src: &[f32], rows: usize, cols: usize, src_stride: usize, dst: &mut [f32], dst_stride: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(cols <= src_stride && rows <= dst_stride, "transpose_strided: strides shorter than rows");
    assert!(src.len() >= (rows - 1) * src_stride + cols, "transpose_strided: src too short for {rows}x{cols}");
    assert!(dst.len() >= (cols - 1) * dst_stride + rows, "transpose_strided: dst too short for {cols}x{rows}");
    // SAFETY: the asserts above bound every index the transpose touches.
    unsafe { transpose_strided_raw(src.as_ptr(), rows, cols, src_stride, dst.as_mut_ptr(), dst_stride) }
}

/// [`transpose_strided`] on raw pointers, for callers whose threads write
/// disjoint column ranges of one output.
///
/// # Safety
/// `src` must be readable for `rows` rows of `cols` values at `src_stride`,
/// `dst` writable for `cols` rows of `rows` values at `dst_stride`, and no
/// other thread may touch those destination values meanwhile.
pub unsafe fn transpose_strided_raw(
    src: *const f32,
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    // SAFETY: each backend function runs only on a CPU that has its features; the
    // extents are forwarded from the caller.
    unsafe {
        match Backend::best() {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 | Backend::Avx2Fma => transpose_avx(src, rows, cols, src_stride, dst, dst_stride),
            #[cfg(simd_neon)]
            Backend::Neon => transpose_neon(src, rows, cols, src_stride, dst, dst_stride),
            _ => transpose_with::<ScalarLanes>(src, rows, cols, src_stride, dst, dst_stride),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_avx(
    src: *const f32,
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    // SAFETY: forwarded from the caller; AVX is enabled here.
    unsafe { transpose_with::<x86::Avx2Fma>(src, rows, cols, src_stride, dst, dst_stride) }
}

// On 32-bit ARM NEON is enabled for the whole build (and `target_feature(enable = "neon")` is unstable there).
#[cfg(simd_neon)]
#[cfg_attr(target_arch = "aarch64", target_feature(enable = "neon"))]
unsafe fn transpose_neon(
    src: *const f32,
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe { transpose_with::<neon::Neon>(src, rows, cols, src_stride, dst, dst_stride) }
}

/// Source rows per panel of [`transpose_with`]: a panel fills `PANEL_ROWS`
/// floats (8 cache lines) of each destination row, column block after
/// column block, so every destination line is written whole while it is in
/// L1, and the panel's source lines (`PANEL_ROWS` of them per column block,
/// 8 KiB) are still in L1 when the next column block reads their other half.
/// Panels of 32 rows wrote each destination line in two halves, a quarter of
/// the way apart through the source: for the 3072 x 128 `xᵀ` of
/// DistilBERT's second feed-forward layer (1.7 MiB, past L2), 236 us on the
/// Zen 3 reference machine; panels of 128: see the module tests' shapes.
const PANEL_ROWS: usize = 128;

/// [`transpose_strided_raw`] written once over a vector backend: `V::BLOCK`
/// square blocks for the bulk, scalar code for the ragged edges. Inlined
/// into kernels compiled for `V`, so a kernel's transposes need no dispatch.
///
/// # Safety
/// As [`transpose_strided_raw`]; `V`'s features must be enabled.
#[inline(always)]
pub unsafe fn transpose_with<V: F32Vector>(
    src: *const f32,
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    let block = V::BLOCK;
    let (full_rows, full_cols) = (rows / block * block, cols / block * block);
    for r0 in (0..full_rows).step_by(PANEL_ROWS) {
        let r_end = (r0 + PANEL_ROWS).min(full_rows);
        for c in (0..full_cols).step_by(block) {
            for r in (r0..r_end).step_by(block) {
                // SAFETY: r + block <= rows and c + block <= cols (the caller's extents).
                unsafe {
                    V::transpose_block(src.add(r * src_stride + c), src_stride, dst.add(c * dst_stride + r), dst_stride)
                }
            }
        }
    }
    // Ragged edges: the right columns of the block part, then the bottom rows.
    // SAFETY: forwarded from the caller.
    unsafe {
        scalar_transpose(src, 0..full_rows, full_cols..cols, src_stride, dst, dst_stride);
        scalar_transpose(src, full_rows..rows, 0..cols, src_stride, dst, dst_stride);
    }
}

/// # Safety
/// As [`transpose_strided_raw`], for the given row and column ranges.
#[inline(always)]
unsafe fn scalar_transpose(
    src: *const f32,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    src_stride: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    for r in rows {
        for c in cols.clone() {
            // SAFETY: inside the caller's extents.
            unsafe { *dst.add(c * dst_stride + r) = *src.add(r * src_stride + c) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_backend_is_listed_and_scalar_always_available() {
        let all = Backend::available();
        assert_eq!(all.last(), Some(&Backend::Scalar));
        assert_eq!(Backend::best(), all[0]);
        assert!(Backend::Scalar.is_available());
        #[cfg(simd_neon)]
        assert_eq!(Backend::best(), Backend::Neon);
        #[cfg(not(any(target_arch = "x86_64", simd_neon)))]
        assert_eq!(Backend::best(), Backend::Scalar);
    }

    #[test]
    fn features_of_the_best_backend_are_reported() {
        let features = detected_features();
        for f in Backend::best().features() {
            assert!(features.contains(f), "{f} missing from {features:?}");
        }
        // On 32-bit ARM the list is what the build selected: NEON exactly when the backend is compiled in.
        #[cfg(target_arch = "arm")]
        assert_eq!(features.contains(&"neon"), cfg!(simd_neon), "{features:?}");
    }

    #[test]
    fn describe_names_arch_and_backend() {
        let line = describe();
        assert!(line.starts_with(std::env::consts::ARCH), "{line}");
        assert!(line.contains(Backend::best().name()), "{line}");
        #[cfg(simd_neon)]
        assert!(detected_features().contains(&"neon"));
    }

    #[test]
    fn transpose_matches_naive_on_ragged_shapes_and_strides() {
        for (rows, cols, dst_stride_extra) in
            [(1, 1, 5), (3, 5, 5), (8, 8, 5), (17, 9, 5), (33, 70, 5), (64, 16, 5), (21, 19, 3), (40, 24, 8)]
        {
            let src_stride = cols + 3;
            let dst_stride = rows + dst_stride_extra;
            let src: Vec<f32> = (0..rows * src_stride).map(|i| i as f32).collect();
            let mut dst = vec![-1.0; cols * dst_stride];
            transpose_strided(&src, rows, cols, src_stride, &mut dst, dst_stride);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[c * dst_stride + r], src[r * src_stride + c], "({rows}x{cols}) at ({r},{c})");
                }
            }
            // Padding columns of the destination are left alone.
            for c in 0..cols {
                for r in rows..dst_stride {
                    assert_eq!(dst[c * dst_stride + r], -1.0);
                }
            }
        }
    }

    #[test]
    fn transpose_into_unaligned_destination_offsets() {
        // Destination rows share their alignment (stride a multiple of 8), starting
        // mid-vector: the head rows go scalar, the rest vector-aligned.
        let (rows, cols, dst_stride) = (37, 20, 64);
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        for offset in 0..9 {
            let mut dst = vec![-1.0; offset + cols * dst_stride];
            transpose_strided(&src, rows, cols, cols, &mut dst[offset..], dst_stride);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[offset + c * dst_stride + r], src[r * cols + c], "offset {offset} at ({r},{c})");
                }
            }
            assert!(dst[..offset].iter().all(|v| *v == -1.0));
        }
    }

    /// Runs `a + b * c` through a backend on 16 values.
    unsafe fn fma_through<V: F32Vector>(a: &[f32; 16], b: f32, c: &[f32; 16]) -> [f32; 16] {
        let mut out = [0.0; 16];
        let mut i = 0;
        while i < 16 {
            // SAFETY: i + LANES <= 16 since LANES divides 16.
            unsafe {
                let acc = V::load(a.as_ptr().add(i)).mul_add(V::splat(b), V::load(c.as_ptr().add(i)));
                acc.store(out.as_mut_ptr().add(i));
            }
            i += V::LANES;
        }
        out
    }

    /// `acc + group[lane] * x` for every lane, and `acc + x`, through a backend on 16 values.
    unsafe fn lanes_through<V: F32Vector>(acc: &[f32; 16], group: &[f32; GROUP], x: &[f32; 16]) -> Vec<[f32; 16]> {
        let mut outs = Vec::new();
        for lane in 0..=GROUP {
            let mut out = [0.0; 16];
            let mut i = 0;
            while i < 16 {
                // SAFETY: i + LANES <= 16; the group has GROUP readable values.
                unsafe {
                    let (a, b) = (V::load(acc.as_ptr().add(i)), V::load(x.as_ptr().add(i)));
                    let r =
                        if lane < GROUP { a.mul_add_lane(V::load_group(group.as_ptr()), lane, b) } else { a.add(b) };
                    r.store(out.as_mut_ptr().add(i));
                }
                i += V::LANES;
            }
            outs.push(out);
        }
        outs
    }

    #[test]
    fn vector_backends_compute_lane_indexed_mul_add_and_add() {
        let acc: [f32; 16] = std::array::from_fn(|i| i as f32);
        let x: [f32; 16] = std::array::from_fn(|i| 1.0 - i as f32 * 0.25);
        let group = [2.0, -3.0, 0.5, 8.0];
        let mut expected: Vec<[f32; 16]> = group.iter().map(|g| std::array::from_fn(|i| acc[i] + g * x[i])).collect();
        expected.push(std::array::from_fn(|i| acc[i] + x[i]));
        // SAFETY: the scalar backend needs no features.
        assert_eq!(unsafe { lanes_through::<ScalarLanes>(&acc, &group, &x) }, expected);
        #[cfg(target_arch = "x86_64")]
        {
            if Backend::Avx512.is_available() {
                // SAFETY: AVX-512F detected.
                assert_eq!(unsafe { lanes_through::<x86::Avx512>(&acc, &group, &x) }, expected);
            }
            if Backend::Avx2Fma.is_available() {
                // SAFETY: AVX2 and FMA detected.
                assert_eq!(unsafe { lanes_through::<x86::Avx2Fma>(&acc, &group, &x) }, expected);
            }
        }
        #[cfg(simd_neon)]
        // SAFETY: NEON is baseline on aarch64 and compiled in on 32-bit ARM.
        assert_eq!(unsafe { lanes_through::<neon::Neon>(&acc, &group, &x) }, expected);
    }

    #[test]
    fn every_backend_transposes_like_the_scalar_loop() {
        let (rows, cols, src_stride, dst_stride) = (37, 29, 31, 41);
        let src: Vec<f32> = (0..rows * src_stride).map(|i| i as f32).collect();
        let run = |f: unsafe fn(*const f32, usize, usize, usize, *mut f32, usize)| {
            let mut dst = vec![-1.0f32; cols * dst_stride];
            // SAFETY: the shapes fit both buffers; callers below pass only available backends.
            unsafe { f(src.as_ptr(), rows, cols, src_stride, dst.as_mut_ptr(), dst_stride) };
            dst
        };
        let expected = run(transpose_with::<ScalarLanes>);
        for c in 0..cols {
            for r in 0..rows {
                assert_eq!(expected[c * dst_stride + r], src[r * src_stride + c]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            assert_eq!(run(transpose_avx), expected);
        }
        #[cfg(simd_neon)]
        assert_eq!(run(transpose_neon), expected);
    }

    #[test]
    fn vector_backends_compute_mul_add() {
        let a: [f32; 16] = std::array::from_fn(|i| i as f32);
        let c: [f32; 16] = std::array::from_fn(|i| 1.0 - i as f32 * 0.5);
        let expected: [f32; 16] = std::array::from_fn(|i| a[i] + 2.0 * c[i]);
        // SAFETY: the scalar backend needs no features.
        assert_eq!(unsafe { fma_through::<ScalarLanes>(&a, 2.0, &c) }, expected);
        #[cfg(target_arch = "x86_64")]
        {
            if Backend::Avx512.is_available() {
                // SAFETY: AVX-512F detected.
                assert_eq!(unsafe { fma_through::<x86::Avx512>(&a, 2.0, &c) }, expected);
            }
            if Backend::Avx2Fma.is_available() {
                // SAFETY: AVX2 and FMA detected.
                assert_eq!(unsafe { fma_through::<x86::Avx2Fma>(&a, 2.0, &c) }, expected);
            }
        }
        #[cfg(simd_neon)]
        // SAFETY: NEON is baseline on aarch64 and compiled in on 32-bit ARM.
        assert_eq!(unsafe { fma_through::<neon::Neon>(&a, 2.0, &c) }, expected);
    }
}
