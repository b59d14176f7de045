#!/usr/bin/env bash
# Runs hil inside a LAVA docker test action and reports each cell with lava-test-case.
# NOT RUN in this repository's CI (no LAVA here); see docs/LAVA.md.
# Usage: run-hil.sh SCENARIO_TEMPLATE BOARD_IP
#   SCENARIO_TEMPLATE: a scenario whose board has `host: @BOARD_IP@` and
#   `known_hosts: @KNOWN_HOSTS@` (both replaced here).
set -euo pipefail
template=$1
board_ip=$2
work=$(mktemp -d)
scenario="$work/$(basename "$template")"
# The board was just booted by LAVA from a fresh image: its host key is new, so take it now (the
# container reaches only the lab network LAVA put it on).
ssh-keyscan -T 10 "$board_ip" > "$work/known_hosts" 2>/dev/null || true
sed -e "s|@BOARD_IP@|$board_ip|g" -e "s|@KNOWN_HOSTS@|$work/known_hosts|g" "$template" > "$scenario"

status=0
hil validate "$scenario" || { lava-test-case hil-validate --result fail; exit 1; }
lava-test-case hil-validate --result pass
hil run "$scenario" --out "$work/results" --no-progress || status=$?
run_dir=$(ls -d "$work"/results/*/*/ | sort | tail -n 1)

# One test case per cell: latency (ms) and, where measured, energy per inference (mJ).
python3 - "$run_dir/cells.jsonl" <<'PY' | while read -r name value units; do
import json, sys
for line in open(sys.argv[1]):
    c = json.loads(line)
    base = f"{c['board']}-{c['freq_khz'] // 1000}MHz-{c['variant']}-r{c['repeat']}"
    print(f"{base}-latency-median {c['latency_median_ms']:.4f} ms")
    if c.get("net_energy_per_inference_mj") is not None:
        print(f"{base}-net-energy {c['net_energy_per_inference_mj']:.4f} mJ")
    if not c.get("deadline_met", True):
        print(f"{base}-deadline FAIL -")
PY
    if [ "$value" = FAIL ]; then
        lava-test-case "$name" --result fail
    else
        lava-test-case "$name" --result pass --measurement "$value" --units "$units"
    fi
done
lava-test-case hil-run --result "$([ "$status" = 0 ] && echo pass || echo fail)" --measurement "$status" --units exit
# The run directory (report.html, parquet tables) goes wherever the lab keeps artifacts; LAVA itself
# stores only the log and the test cases.
if [ -n "${HIL_ARTIFACT_DIR:-}" ]; then
    tar -C "$run_dir" -czf "$HIL_ARTIFACT_DIR/hil-run.tar.gz" .
fi
exit "$status"
