#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# kvcompact's CPU backend against torch / kvpress on the CPU, same machine, same run: ROUNDS rounds,
# each running bench/cpu_bench (build/bench/cpu_bench) and then bench/peer_torch_cpu.py, both with
# REPS interleaved repetitions per case; the table gives, per case, the median over the rounds of each
# round's median, in ms and as a multiple of the bytes floor measured in that round, with the median
# CPU time of the process during the call (all threads), which a shared machine inflates less.
#
# Usage: [ROUNDS=3] [REPS=5] [TOKENS=4096,16384] [THREADS=1,2] [CASES=word,...] [PYTHON=python3] bench/cpu_compare.sh OUT_DIR [CPU_BENCH]
# (CASES: only the cases whose name contains one of the words, e.g. CASES=decode; default all)
# Writes OUT_DIR/round<i>_{kvcompact,peer}.csv and prints the markdown table (also OUT_DIR/table.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: cpu_compare.sh OUT_DIR [CPU_BENCH]}
bench=${2:-build/bench/cpu_bench}
python=${PYTHON:-python3}
rounds=${ROUNDS:-3}
reps=${REPS:-5}
tokens=${TOKENS:-4096,16384}
threads=${THREADS:-1,2}
cases=()
[ -n "${CASES:-}" ] && cases=(--cases "$CASES")
mkdir -p "$out"
export OMP_WAIT_POLICY=passive
for round in $(seq 1 "$rounds"); do
  echo "round $round: kvcompact $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/log.txt"
  "$bench" --tokens "$tokens" --threads "$threads" --reps "$reps" "${cases[@]}" --csv "$out/round${round}_kvcompact.csv" >> "$out/log.txt"
  echo "round $round: peer $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/log.txt"
  "$python" bench/peer_torch_cpu.py --tokens "$tokens" --threads "$threads" --reps "$reps" "${cases[@]}" --csv "$out/round${round}_peer.csv" >> "$out/log.txt"
done
"$python" - "$out" <<'EOF' | tee "$out/table.md"
import csv, glob, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for path in sorted(glob.glob(f"{sys.argv[1]}/round*_*.csv")):
    for row in csv.DictReader(open(path)):
        runs[(row["case"], int(row["tokens"]), int(row["threads"]), row["implementation"])].append(
            (float(row["median_ms"]), float(row["floor_ms"]), float(row["median_cpu_ms"])))
def cell(key):
    if key not in runs:
        return "-"
    ms = statistics.median(m for m, _, _ in runs[key])
    floor = statistics.median(f for _, f, _ in runs[key])
    cpu = statistics.median(c for _, _, c in runs[key])
    return f"{ms:.1f} ({ms / floor:.1f}x; CPU {cpu:.0f})"
cases = ["SnapKV prefill, window 32", "StreamingLLM prefill", "KNorm prefill", "TOVA prefill", "decode attention + H2O update", "decode attention (SDPA)"]
keys = sorted({(c, n, t) for c, n, t, _ in runs}, key=lambda k: (k[1], cases.index(k[0]) if k[0] in cases else 99, k[2]))
print("| case | N | threads | kvcompact ms (x floor; CPU ms) | kvpress ms (x floor; CPU ms) | plain torch ms (x floor; CPU ms) | bytes floor ms |")
print("|---|---|---|---|---|---|---|")
for c, n, t in keys:
    floors = [f for impl in ("kvcompact", "kvpress", "torch") for _, f, _ in runs.get((c, n, t, impl), [])]
    print(f"| {c} | {n} | {t} | {cell((c, n, t, 'kvcompact'))} | {cell((c, n, t, 'kvpress'))} | {cell((c, n, t, 'torch'))} | {statistics.median(floors):.2f} |")
EOF
