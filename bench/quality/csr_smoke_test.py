#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Smoke test of csr_quality's sweep rows (ctest csr_quality_smoke) on the real model and text.

Usage: csr_smoke_test.py CSR_QUALITY PLOT_RESULTS

Needs the model (KVCOMPACT_SMOLLM2_GGUF) and the essays (KVCOMPACT_ESSAYS); exits 77 (skipped) when
either is not set. Fits tiny dictionaries (16 atoms, one update on 64 tokens), then writes the CSV for
code sizes of 2 and 4 terms (perplexity on a 64-token prefix + 4 tokens, a 256-token pass key) and checks
it: one full and one csr row per code size and task, the csr budget and kv_kept equal to the codes'
share of an fp16 cache (terms * 32 bits / head_dim 64, over 16 bits), positive finite attention errors
for csr and none for the full cache, finite perplexities; and that plot_results.py tabulates the file
with the csr budgets.
"""

import csv
import math
import os
import subprocess
import sys
import tempfile

TERMS = [2, 4]


def fail(message):
    sys.exit(f"csr_quality_smoke: FAIL: {message}")


def main():
    csr_quality, plot_results = sys.argv[1], sys.argv[2]
    model, essays = os.environ.get("KVCOMPACT_SMOLLM2_GGUF"), os.environ.get("KVCOMPACT_ESSAYS")
    if not model or not essays:
        print("csr_quality_smoke: skipped: set KVCOMPACT_SMOLLM2_GGUF and KVCOMPACT_ESSAYS (.ci/test does)")
        sys.exit(77)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "csr.csv")
        run = subprocess.run([csr_quality, "--model", model, "--essays", essays, "--prompts", "1", "--tokens", "64", "--atoms", "16",
                              "--terms", "2", "--iterations", "1", "--code-terms", ",".join(map(str, TERMS)), "--presets", "",
                              "--tasks", "ppl,needle", "--ppl-context", "64", "--continuation", "4", "--needle-contexts", "256",
                              "--depths", "0.5", "--csv", path], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        print(run.stdout)
        if run.returncode != 0:
            fail(f"exit code {run.returncode}: {run.stderr}")
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        tables = subprocess.run([sys.executable, plot_results, "--tables", path], capture_output=True, text=True)
    ppl = [r for r in rows if r[0] == "ppl"]
    needle = [r for r in rows if r[0] == "needle"]
    expected = ["full"] + ["csr"] * len(TERMS)
    if [r[1] for r in ppl] != expected or [r[1] for r in needle] != expected or len(rows) != 2 * len(expected):
        fail(f"expected full then csr per code size, for ppl and needle, got {[r[:2] for r in rows]}")
    shares = [1.0] + [t * 32 / 64 / 16 for t in TERMS]
    for r, share in zip(ppl, shares):
        budget, value, kept, errors = float(r[2]), float(r[3]), float(r[4]), [float(x) for x in r[5:]]
        if abs(budget - share) > 1e-4 or abs(kept - share) > 1e-4:
            fail(f"{r[1]}: budget {budget} and kv_kept {kept}, expected {share}")
        if not (math.isfinite(value) and value > 1):
            fail(f"{r[1]}: perplexity {value}")
        if len(errors) != 30 or not all(math.isfinite(e) and e >= 0 for e in errors):
            fail(f"{r[1]}: attention errors {errors}")
        if (r[1] == "full") == (max(errors) > 0):
            fail(f"{r[1]}: largest attention error {max(errors)}")
    for r, share in zip(needle, shares):
        if abs(float(r[2]) - share) > 1e-4 or abs(float(r[6]) - share) > 1e-4 or r[3] != "256" or r[5] not in ("0", "1"):
            fail(f"needle row {r}")
    if tables.returncode != 0 or "| csr | 6.25% |" not in tables.stdout or "| csr | 12.5% |" not in tables.stdout:
        fail(f"plot_results.py --tables: exit code {tables.returncode}: {tables.stdout} {tables.stderr}")
    print("csr_quality_smoke: PASS")


if __name__ == "__main__":
    main()
