#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The quality sweep behind bench/results/smollm2_quality_<date>.md: every preset (plus the bench-only
# kvmerger_unscaled variant) at budgets 10/20/30/35/50 % and WindowKV at 12 %, on SmolLM2-135M-Instruct:
# perplexity (1024-token prefix, 64 tokens) with the attention error per layer, and cued pass-key
# retrieval at 2048, 4096 and 8000 tokens, depths 10/50/90 %. Six kv_quality processes run in
# parallel, one thread each; single-threaded runs are deterministic and the pass key depends only on
# the context and the depth, so how the prompts are grouped into processes changes no result. The
# 8000-token runs are the slowest (each prefill is quadratic; one depth alone took 885 s in the
# 2026-11-23 sweep, bench/quality/results/smollm2_2026-11-23.md). Writes
# OUT_DIR/<run>.{csv,md,err} and OUT_DIR/times.txt.
#
# Usage: bench/quality/run_sweep.sh OUT_DIR [KV_QUALITY]   (KV_QUALITY: build/bench/quality/kv_quality)
# Then:  python3 bench/quality/plot_results.py --tables --png PLOT.png OUT_DIR/*.csv
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: run_sweep.sh OUT_DIR [KV_QUALITY]}
quality=${2:-build/bench/quality/kv_quality}
mkdir -p "$out"
KVCOMPACT_SMOLLM2_GGUF=$(bash examples/smollm2/fetch_model.sh)
export KVCOMPACT_SMOLLM2_GGUF
essays=$(bash bench/quality/fetch_essays.sh)
export OMP_WAIT_POLICY=passive
presets=streaming_llm,h2o,tova,snapkv,pyramidkv,adakv,knorm,corm,corm_budgeted,windowkv,kvmerger,cam,kvmerger_unscaled

run() {  # name, kv_quality arguments...
  local name=$1 t0 rc=0
  shift
  t0=$(date +%s)
  echo "$name start $(date -u +%FT%TZ)" >> "$out/times.txt"
  "$quality" --essays "$essays" --presets "$presets" --extra windowkv:0.12 --threads 1 --csv "$out/$name.csv" "$@" \
    > "$out/$name.md" 2> "$out/$name.err" || rc=$?
  echo "$name rc $rc end $(date -u +%FT%TZ) wall $(( $(date +%s) - t0 )) s" >> "$out/times.txt"
  return "$rc"
}

pids=()
run ppl_1024 --tasks ppl --ppl-context 1024 --continuation 64 --max-window-rows 1024 & pids+=($!)
needle=(--tasks needle --max-window-rows 512)
run needle_2k "${needle[@]}" --needle-contexts 2048 --depths 0.1,0.5,0.9 & pids+=($!)
run needle_4k "${needle[@]}" --needle-contexts 4096 --depths 0.1,0.5 & pids+=($!)
run needle_4k_d90 "${needle[@]}" --needle-contexts 4096 --depths 0.9 & pids+=($!)
run needle_8k "${needle[@]}" --needle-contexts 8000 --depths 0.1,0.5 & pids+=($!)
run needle_8k_d90 "${needle[@]}" --needle-contexts 8000 --depths 0.9 & pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
cat "$out/times.txt"
exit "$status"
