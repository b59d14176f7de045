//! Records the git commit this `hil` is built from, and whether the checkout had uncommitted
//! changes, so `run.json` names the code that measured rather than whatever the source tree
//! holds when the binary runs (`HIL_GIT_COMMIT`, `HIL_GIT_DIRTY`; empty outside a git checkout).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).parent().expect("harness/ sits in the workspace root").to_path_buf();
    let commit = git(&["rev-parse", "HEAD"], &root).map(|s| s.trim().to_string()).unwrap_or_default();
    // Untracked files count as changes too: a new source file changes what is built.
    let dirty = match git(&["status", "--porcelain", "--untracked-files=normal"], &root) {
        Some(s) if s.trim().is_empty() => "0",
        Some(_) => "1",
        None => "",
    };
    println!("cargo:rustc-env=HIL_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=HIL_GIT_DIRTY={dirty}");
    // Rebuild when the commit moves or any source the binaries are built from changes.
    let git_dir = root.join(".git");
    for p in [git_dir.join("HEAD"), git_dir.join("index"), git_dir.join("refs")] {
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    for crate_dir in ["harness", "kernels", "device-agent"] {
        for sub in ["src", "Cargo.toml"] {
            println!("cargo:rerun-if-changed={}", root.join(crate_dir).join(sub).display());
        }
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
}
