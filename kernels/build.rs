//! Sets `cfg(simd_neon)` when the kernels' NEON backend is compiled in:
//! always on aarch64 (NEON is part of every aarch64 CPU; the backend is still
//! picked at run time), and on 32-bit ARM when the target enables NEON.
//!
//! Why not `cfg(target_feature = "neon")` on 32-bit ARM: the ARM target
//! features are unstable, so stable rustc sets no `target_feature` cfg for
//! them at all, even on `thumbv7neon-unknown-linux-gnueabihf`, whose NEON is
//! on by default. What the build can see is the target's name (the
//! `thumbv7neon-*` targets enable NEON), the feature cfg (should it become
//! visible) and explicit `-C target-feature=+neon` rustflags.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(simd_neon)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let neon = match var("CARGO_CFG_TARGET_ARCH").as_str() {
        "aarch64" => true,
        "arm" => {
            var("TARGET").starts_with("thumbv7neon-")
                || var("CARGO_CFG_TARGET_FEATURE").split(',').any(|f| f == "neon")
                || enables_neon(&var("CARGO_ENCODED_RUSTFLAGS"))
        }
        _ => false,
    };
    if neon {
        println!("cargo::rustc-cfg=simd_neon");
    }
}

/// Whether rustflags (`\x1f`-separated) enable NEON with `-C target-feature=...+neon...`.
fn enables_neon(encoded: &str) -> bool {
    let flags: Vec<&str> = encoded.split('\x1f').collect();
    let mut neon = false;
    for (i, flag) in flags.iter().enumerate() {
        let value = match flag.strip_prefix("-C").map(str::trim_start) {
            Some("") => flags.get(i + 1).copied().unwrap_or(""),
            Some(v) => v,
            None => continue,
        };
        if let Some(features) = value.strip_prefix("target-feature=") {
            for f in features.split(',') {
                match f {
                    "+neon" => neon = true,
                    "-neon" => neon = false,
                    _ => {}
                }
            }
        }
    }
    neon
}
