#!/usr/bin/env bash
# Static throughput estimates of the 32-bit ARM NEON kernels' inner loops (the
# sibling of neon-mca.sh, which covers aarch64): builds the kernels crate for
# thumbv7neon-unknown-linux-gnueabihf as assembly, extracts the innermost loops
# with the most NEON multiply-accumulate lanes of the pattern, block and
# masked-strip kernels (and the dense layer, which runs the block kernel on
# 32-bit ARM), and runs llvm-mca (Debian's `llvm` package) on each.
#
# usage: kernels/scripts/neon32-mca.sh [loops per kernel, default 2] [target, default thumbv7neon-unknown-linux-gnueabihf]
#
# Per loop: instructions, FP multiply-accumulates (`vmla.f32`) and their f32
# lanes (q: 4, d: 2, s: 1), then cycles per iteration and lanes per cycle:
# - A15: llvm-mca -mcpu=cortex-a15. LLVM 14 has no Cortex-A15 model: it
#   schedules cortex-a15 (and a9, a12, a17) with its Cortex-A9 machine model
#   (resources A9Unit*), one FP/NEON unit that takes a vmla.f32 per cycle,
#   D-form or Q-form alike. That model cannot resolve vldm/vstm, so those are
#   fed to it as the equivalent vldr/vstr sequences (same loads and stores).
# - A7: LLVM 14 has only instruction itineraries for cortex-a7 (and a5, a8,
#   a53...), which llvm-mca cannot use, so there is no estimate from it. The
#   "A7 bound" column is a count, not a model: cycles if the loop were bound
#   only by NEON data-processing issue, at one 64-bit NEON operation per
#   cycle (A7's NEON datapath is 64 bits: a D-form op is one issue, a Q-form
#   op two, a scalar VFP op one); loads, stores and integer work are ignored.
# - A72: llvm-mca -mcpu=cortex-a72 (LLVM's Cortex-A57 model for AArch32): the
#   Raspberry Pi 4 on a 32-bit OS.
# A static model: no cache misses, no branch mispredictions.
set -euo pipefail
top=${1:-2}
target=${2:-thumbv7neon-unknown-linux-gnueabihf}
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
rustup target list --installed | grep -qx "$target" || { echo "neon32-mca: rustup target add $target" >&2; exit 2; }
command -v llvm-mca >/dev/null || { echo "neon32-mca: llvm-mca not found (apt-get install llvm)" >&2; exit 2; }
cargo rustc --quiet --release -p kernels --lib --target "$target" -- --emit asm -C codegen-units=1
asm=$(ls -t "$CARGO_TARGET_DIR/$target/release/deps"/kernels-*.s | head -1)
python3 - "$asm" "$top" <<'PY'
import re, subprocess, sys
asm, top = sys.argv[1], int(sys.argv[2])
lines = open(asm).read().split("\n")
# Kernel bodies, by module path (plain or inside a trait impl's name: on 32-bit ARM the NEON
# entry points have no target_feature attribute and get inlined into their callers, e.g. the
# closure of `<PatternSparseLinear as LinearKernel>::forward_feature_major`); the function with
# the most NEON lanes (then scalar VFP lanes, for a build without NEON) is the kernel body.
kernels = {
    "pattern (tile groups)": r"linear(7|\.\.)pattern",
    "block (BP strips)": r"linear(5|\.\.)block",
    "masked strips (PP on BP)": r"linear(6|\.\.)masked",
}
def functions():
    name, body = None, []
    for l in lines:
        m = re.match(r"^(_ZN\S+):", l)
        if m:
            if name:
                yield name, body
            name, body = m.group(1), []
        elif name is not None:
            body.append(l)
            if l.startswith(".Lfunc_end"):
                yield name, body
                name, body = None, []
BRANCH = re.compile(r"^\s+(?:b(?:eq|ne|hs|lo|hi|ls|ge|lt|gt|le|mi|pl|cs|cc|vs|vc)?(?:\.[wn])?|cbn?z)\s+(?:r\d+,\s*)?(\.LBB\S+)\s*$")
def insns(body, a, b):
    out = []
    for l in body[a + 1:b + 1]:
        s = l.split("@")[0].strip()
        if l.startswith("\t") and s and not s.startswith("."):
            out.append(s)
    return out
def mla_lanes(code, kinds="qds"):
    lanes = 0
    for x in code:
        m = re.match(r"vml[as]\.f32\s+([qds])\d+", x)
        if m and m.group(1) in kinds:
            lanes += {"q": 4, "d": 2, "s": 1}[m.group(1)]
    return lanes
def score(code):
    """NEON lanes first, then scalar VFP lanes."""
    return (mla_lanes(code, "qd"), mla_lanes(code))
def loops(body):
    labels = {}
    for i, l in enumerate(body):
        m = re.match(r"^(\.LBB\S+):", l)
        if m:
            labels[m.group(1)] = i
    out = []
    for i, l in enumerate(body):
        m = BRANCH.match(l)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            out.append((labels[m.group(1)], i))
    # A region with an unconditional branch inside is not one loop body (block layout put
    # other code between the label and the back edge).
    jumps = lambda a: any(re.match(r"^\s+b(?:\.w)?\s+\.LBB", l) for l in body[a[0]:a[1]])
    out = [a for a in out if not jumps(a)]
    inner = [a for a in out if not any(b != a and a[0] <= b[0] and b[1] <= a[1] for b in out)]
    scored = [(score(insns(body, *a)), a, insns(body, *a)) for a in inner]
    return sorted([s for s in scored if s[0][1] > 0], key=lambda s: (-s[0][0], -s[0][1]))
def unfold_multiple(code):
    """vldm/vstm (and the ia forms) as vldr/vstr sequences, for models that cannot schedule them."""
    out = []
    for x in code:
        m = re.match(r"v(ld|st)m(?:ia)?(?:\.\w+)?\s+(r\d+|sp|lr|r1[0-2])(!?),\s*\{([^}]*)\}", x)
        if not m:
            out.append(x)
            continue
        op, base, wb, regs = m.groups()
        regs = [r.strip() for r in regs.split(",")]
        size = 8 if regs[0].startswith("d") else 4
        for k, r in enumerate(regs):
            out.append(f"v{op}r\t{r}, [{base}, #{k * size}]")
        if wb:
            out.append(f"add\t{base}, {base}, #{len(regs) * size}")
    return out
def neon_issue(code):
    """A7 count: one issue per 64-bit NEON/VFP data-processing op (Q-form: two)."""
    n = 0
    for x in code:
        m = re.match(r"v(mla|mls|mul|add|sub|trn|zip|dup|mov)\.?\S*\s+([qds])\d+", x)
        if m:
            n += 2 if m.group(2) == "q" else 1
    return n
def mca(code, cpu):
    r = subprocess.run(["llvm-mca", "-mtriple=thumbv7-linux-gnueabihf", f"-mcpu={cpu}", "-mattr=+neon", "-iterations=200"],
                       input="\n".join(code) + "\n", capture_output=True, text=True)
    m = re.search(r"Block RThroughput:\s*([\d.]+)", r.stdout)
    return float(m.group(1)) if m else float("nan")
funcs = list(functions())
version = [l.strip() for l in subprocess.run(["llvm-mca", "--version"], capture_output=True, text=True).stdout.split("\n") if "version" in l]
print(f"# llvm-mca: {version[0] if version else '?'}; {asm.split('/')[-1]}")
print("# A15 = llvm-mca cortex-a15 (LLVM 14: Cortex-A9 model, vldm/vstm as vldr/vstr); A7 bound = NEON issue count (no LLVM model);")
print("# A72 = llvm-mca cortex-a72 (Cortex-A57 model, AArch32). lanes = f32 multiply-accumulate lanes per iteration")
print(f"{'kernel':<26} {'loop':>4} {'insns':>5} {'vmla':>4} {'lanes':>5} {'A15 cyc':>8} {'A15 l/c':>7} {'A7 bound':>8} {'A7 l/c':>6} {'A72 cyc':>8} {'A72 l/c':>7}")
for label, pat in kernels.items():
    found = sorted([(n, b) for n, b in funcs if re.search(pat, n)], key=lambda f: tuple(-x for x in score(insns(f[1], -1, len(f[1]) - 1))))
    if not found:
        print(f"{label:<26} (function matching {pat} not found)")
        continue
    for k, ((_, lanes), _, code) in enumerate(loops(found[0][1])[:top]):
        vmla = sum(1 for x in code if re.match(r"vml[as]\.f32", x))
        unfolded = unfold_multiple(code)
        a15, a72, a7 = mca(unfolded, "cortex-a15"), mca(code, "cortex-a72"), neon_issue(code)
        print(f"{label:<26} {k:>4} {len(code):>5} {vmla:>4} {lanes:>5} {a15:>8.2f} {lanes / a15:>7.2f} {a7:>8} {lanes / max(a7, 1):>6.2f} {a72:>8.2f} {lanes / a72:>7.2f}")
PY
