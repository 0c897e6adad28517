#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Smoke test of kv_quality (ctest kv_quality_smoke): a small grid on the real model and text.

Usage: smoke_test.py KV_QUALITY

Needs the model (KVCOMPACT_SMOLLM2_GGUF) and the essays (KVCOMPACT_ESSAYS, the directory that
bench/quality/fetch_essays.sh prints); exits 77 (skipped) when either is not set. Runs perplexity
(128-token prefix, 8 tokens) and a 512-token pass key with snapkv, the calibrated presets (prefixkv,
xkv with the budget files of bench/quality/budgets/), the bounded memory, the MixAttention-style caches,
ThinK after SnapKV (think_snapkv)
and the bench-only variants at a 50 % budget, single-threaded, and checks the CSV: one row per
configuration and task, the full cache with no attention error, every compressed cache below 70 % of
the full one with a positive, finite error, finite perplexities, and the full cache finding the key.
Also checks that an unknown preset name is refused before the model is read, and that a budget file
for another model (the PrefixKV file with another fingerprint) is refused naming the file.
"""

import csv
import math
import os
import subprocess
import sys
import tempfile

PRESETS = ["snapkv", "prefixkv", "xkv", "bounded_memory", "sliding_window", "mixattention", "windowkv_layerwise", "kvmerger_unscaled",
           "knorm_skip2", "think_snapkv"]
BUDGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "budgets")
TABLES = f"prefixkv={BUDGETS}/smollm2_prefixkv.txt,xkv={BUDGETS}/smollm2_xkv.txt"


def fail(message):
    sys.exit(f"kv_quality_smoke: FAIL: {message}")


def main():
    kv_quality = sys.argv[1]
    model, essays = os.environ.get("KVCOMPACT_SMOLLM2_GGUF"), os.environ.get("KVCOMPACT_ESSAYS")
    if not model or not essays:
        print("kv_quality_smoke: skipped: set KVCOMPACT_SMOLLM2_GGUF and KVCOMPACT_ESSAYS (.ci/test does)")
        sys.exit(77)
    base = [kv_quality, "--model", model, "--essays", essays, "--threads", "1"]
    refused = subprocess.run(base + ["--presets", "no_such_preset"], capture_output=True, text=True)
    if refused.returncode != 2 or "no_such_preset" not in refused.stderr:
        fail(f"an unknown preset gave exit code {refused.returncode} and stderr {refused.stderr!r}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "smoke.csv")
        run = subprocess.run(base + ["--presets", ",".join(PRESETS), "--budgets", "0.5", "--tasks", "ppl,needle",
                                     "--ppl-context", "128", "--continuation", "8", "--max-window-rows", "128",
                                     "--needle-contexts", "512", "--depths", "0.5", "--budget-tables", TABLES, "--csv", path],
                             capture_output=True, text=True)
        foreign = os.path.join(tmp, "other_model.txt")
        with open(os.path.join(BUDGETS, "smollm2_prefixkv.txt")) as src, open(foreign, "w") as dst:
            dst.write("".join("fingerprint fnv1a64:0000000000000000\n" if line.startswith("fingerprint ") else line for line in src))
        other = subprocess.run(base + ["--presets", "prefixkv", "--budgets", "0.5", "--tasks", "ppl", "--ppl-context", "128",
                                       "--continuation", "8", "--budget-tables", f"prefixkv={foreign}"], capture_output=True, text=True)
        if "load_layer_budgets: model: " + foreign not in other.stdout:
            fail(f"a budget file for another model was not refused naming it: {other.stdout}")
        print(run.stdout)
        if run.returncode != 0:
            fail(f"exit code {run.returncode}: {run.stderr}")
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    ppl = {r[1]: r for r in rows if r[0] == "ppl"}
    needle = {r[1]: r for r in rows if r[0] == "needle"}
    expected = ["full"] + PRESETS
    if sorted(ppl) != sorted(expected) or sorted(needle) != sorted(expected) or len(rows) != 2 * len(expected):
        fail(f"expected one ppl and one needle row for each of {expected}, got {[r[:2] for r in rows]}")
    for name, r in ppl.items():
        value, kept, errors = float(r[3]), float(r[4]), [float(x) for x in r[5:]]
        if not (math.isfinite(value) and value > 1):
            fail(f"{name}: perplexity {value}")
        if len(errors) != 30 or not all(math.isfinite(e) and e >= 0 for e in errors):
            fail(f"{name}: attention errors {errors}")
        if name == "full" and (kept != 1 or any(errors)):
            fail(f"full cache: kept {kept}, errors {errors}")
        if name != "full" and not (0 < kept < 0.7 and max(errors) > 0):
            fail(f"{name}: kept {kept} of the full cache, largest error {max(errors)}")
    if needle["full"][5] != "1":
        fail("the full cache did not find the 512-token pass key")
    print("kv_quality_smoke: PASS")


if __name__ == "__main__":
    main()
