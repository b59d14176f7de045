#!/usr/bin/env bash
# Static throughput estimates of the NEON kernels' inner loops, for a before
# and after on every change to them without an ARM board: builds the kernels
# crate for aarch64 as assembly, extracts the innermost loops (the FMA
# bodies) of the pattern, block and masked-strip kernels, and runs llvm-mca
# (Debian's `llvm` package) on each for Cortex-A72 and Cortex-A76.
#
# usage: kernels/scripts/neon-mca.sh [loops per kernel, default 2]
# (32-bit ARM, Cortex-A15/A7/A72: kernels/scripts/neon32-mca.sh)
#
# Prints, per loop: instructions, FMAs (fmla), llvm-mca's block reciprocal
# throughput (cycles per iteration) and FMAs per cycle (peak: 2 on both cores,
# 128-bit). A static model: no cache misses, no branch mispredictions.
set -euo pipefail
top=${1:-2}
cd "$(dirname "$0")/../.."
target=aarch64-unknown-linux-musl
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
rustup target list --installed | grep -qx "$target" || { echo "neon-mca: rustup target add $target" >&2; exit 2; }
command -v llvm-mca >/dev/null || { echo "neon-mca: llvm-mca not found (apt-get install llvm)" >&2; exit 2; }
cargo rustc --quiet --release -p kernels --lib --target "$target" -- --emit asm -C codegen-units=1
asm=$(ls -t "$CARGO_TARGET_DIR/$target/release/deps"/kernels-*.s | head -1)
python3 - "$asm" "$top" <<'PY'
import re, subprocess, sys
asm, top = sys.argv[1], int(sys.argv[2])
lines = open(asm).read().split("\n")
# Kernel bodies, by module: the NEON entry points get inlined into whichever
# function of the module calls them (run_panel, StripJob::run, the closure of
# forward_feature_major_with), so match the module path and let the function
# with the most FMAs be the kernel body.
kernels = {
    "pattern (tile groups)": r"6linear7pattern",
    "block (BP strips)": r"6linear5block",
    "masked strips (PP on BP)": r"6linear6masked",
}
def functions():
    name, body = None, []
    for l in lines:
        m = re.match(r"^(_ZN\S+):$", l)
        if m:
            if name:
                yield name, body
            name, body = m.group(1), []
        elif name is not None:
            body.append(l)
            if l.startswith(".Lfunc_end"):
                yield name, body
                name, body = None, []
def loops(body):
    labels = {}
    for i, l in enumerate(body):
        m = re.match(r"^(\.LBB\S+):", l)
        if m:
            labels[m.group(1)] = i
    out = []
    for i, l in enumerate(body):
        m = re.match(r"^\s+(b|b\.\w+|cbn?z|tbn?z)\s+(?:.*,\s*)?(\.LBB\S+)\s*$", l)
        if m and m.group(2) in labels and labels[m.group(2)] < i:
            out.append((labels[m.group(2)], i))
    # Innermost: no other loop strictly inside.
    inner = [a for a in out if not any(b != a and a[0] <= b[0] and b[1] <= a[1] for b in out)]
    def insns(a):
        return [l.strip() for l in body[a[0] + 1:a[1] + 1] if l.startswith("\t") and not l.strip().startswith(".")]
    scored = [(sum("fmla" in x for x in insns(a)), a, insns(a)) for a in inner]
    return sorted([s for s in scored if s[0] > 0], key=lambda s: -s[0])
def mca(code, cpu):
    r = subprocess.run(["llvm-mca", "-mtriple=aarch64", f"-mcpu={cpu}", "-iterations=200"],
                       input="\n".join(code) + "\n", capture_output=True, text=True)
    m = re.search(r"Block RThroughput:\s*([\d.]+)", r.stdout)
    return float(m.group(1)) if m else float("nan")
funcs = list(functions())
version = [l.strip() for l in subprocess.run(["llvm-mca", "--version"], capture_output=True, text=True).stdout.split("\n") if "version" in l]
print(f"# llvm-mca: {version[0] if version else '?'}; {asm.split('/')[-1]}")
print("# note: LLVM 14 schedules cortex-a72 and cortex-a76 with the same Cortex-A57 model; a newer llvm-mca separates them")
print(f"{'kernel':<26} {'loop':>4} {'insns':>5} {'fmla':>4} {'A72 cyc':>8} {'A72 fma/c':>9} {'A76 cyc':>8} {'A76 fma/c':>9}")
for label, pat in kernels.items():
    # Among matching functions, the one with the most FMAs is the kernel body.
    found = sorted([(n, b) for n, b in funcs if re.search(pat, n)], key=lambda f: -sum("fmla" in l for l in f[1]))
    if not found:
        print(f"{label:<26} (function matching {pat} not found)")
        continue
    for k, (fmla, _, code) in enumerate(loops(found[0][1])[:top]):
        a72, a76 = mca(code, "cortex-a72"), mca(code, "cortex-a76")
        print(f"{label:<26} {k:>4} {len(code):>5} {fmla:>4} {a72:>8.2f} {fmla / a72:>9.2f} {a76:>8.2f} {fmla / a76:>9.2f}")
PY
