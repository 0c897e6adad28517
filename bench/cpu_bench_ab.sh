#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Two builds of bench/cpu_bench side by side on a shared machine: ROUNDS rounds, each running build A
# then build B (REPS interleaved repetitions per case each, the bytes floor measured in every run),
# and the load average before each run. Prints, per case, the median over the rounds of each run's
# median (wall ms and process CPU ms), the multiple of the floor, and B / A.
#
# Usage: [ROUNDS=3] [REPS=5] [TOKENS=4096,16384] [THREADS=1] [CASES=StreamingLLM,KNorm,TOVA] bench/cpu_bench_ab.sh OUT_DIR A_BENCH B_BENCH
# Writes OUT_DIR/round<i>_{a,b}.csv and OUT_DIR/log.txt, prints the markdown table (also OUT_DIR/table.md).
set -euo pipefail
out=${1:?usage: cpu_bench_ab.sh OUT_DIR A_BENCH B_BENCH}
a=${2:?A_BENCH}
b=${3:?B_BENCH}
mkdir -p "$out"
export OMP_WAIT_POLICY=passive
for round in $(seq 1 "${ROUNDS:-3}"); do
  for side in a b; do
    bench=$a
    [ "$side" = b ] && bench=$b
    echo "round $round $side $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/log.txt"
    "$bench" --tokens "${TOKENS:-4096,16384}" --threads "${THREADS:-1}" --reps "${REPS:-5}" --cases "${CASES:-StreamingLLM,KNorm,TOVA}" \
      --csv "$out/round${round}_${side}.csv" >> "$out/log.txt"
  done
done
python3 - "$out" <<'PY' | tee "$out/table.md"
import csv, glob, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for path in sorted(glob.glob(f"{sys.argv[1]}/round*_*.csv")):
    side = path.rsplit("_", 1)[1][0]
    for row in csv.DictReader(open(path)):
        runs[(row["case"], int(row["tokens"]), int(row["threads"]), side)].append((float(row["median_ms"]), float(row["floor_ms"]), float(row["median_cpu_ms"])))
med = lambda key, i: statistics.median(r[i] for r in runs[key])
print("| case | N | threads | A ms (x floor; CPU ms) | B ms (x floor; CPU ms) | B / A wall | B / A CPU | floor ms |")
print("|---|---|---|---|---|---|---|---|")
for c, n, t in sorted({k[:3] for k in runs}, key=lambda k: (k[1], k[0], k[2])):
    A, B = (c, n, t, "a"), (c, n, t, "b")
    floor = statistics.median([r[1] for r in runs[A] + runs[B]])
    cell = lambda k: f"{med(k, 0):.2f} ({med(k, 0) / floor:.1f}x; CPU {med(k, 2):.2f})"
    print(f"| {c} | {n} | {t} | {cell(A)} | {cell(B)} | {med(B, 0) / med(A, 0):.2f} | {med(B, 2) / med(A, 2):.2f} | {floor:.2f} |")
PY
