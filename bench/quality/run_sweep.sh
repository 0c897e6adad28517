#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The quality sweep behind bench/results/smollm2_quality_<date>.md: every preset (plus the bench-only
# variants kvmerger_unscaled, windowkv_layerwise and knorm_skip2) at budgets 10/20/30/35/50 % and WindowKV (both
# forms) at 12 %, on SmolLM2-135M-Instruct:
# perplexity (1024-token prefix, 64 tokens) with the attention error per layer, and cued pass-key
# retrieval at 2048, 4096 and 8000 tokens, depths 10/50/90 %. The grid is split into six kv_quality
# processes, one thread each, of which at most JOBS (default: the number of CPUs) run at a time;
# single-threaded runs are deterministic and the pass key depends only on the context and the depth,
# so how the prompts are grouped into processes changes no result. Measured single-process times on
# 2 shared vCPUs with two processes running (2026-11-28/29): ppl 1853 s, needle_2k 2443 s,
# needle_4k (three depths) and each 8000-token depth are in bench/results/smollm2_quality_2026-11-29.md.
# The engine has been faster since (blocked prefill attention, one-pass perplexity continuations, the
# threaded CPU backend). The whole grid on 2026-12-01 (JOBS=1, nice 19, shared machine at load 3-5), CPU seconds:
# ppl_1024 333, needle_2k 463, needle_4k 1045, each 8000-token depth 948-949, csr 672 (5358 in all; with JOBS=2
# on two idle cores about 45-50 minutes, not measured end to end): bench/results/smollm2_quality_2026-12-01_full.md. A slice
# of it (six presets at four budgets plus five layout configurations, ppl_1024 and needle_2k) took 155 s
# and 359 s on 2026-12-01 (bench/results/smollm2_quality_2026-12-01.md). The engine's matmul and prefill
# attention kernels got faster after that run (2048-token prefill slice 36 -> 19 CPU s; no whole part re-measured):
# bench/results/smollm2_sweep_time_2026-12-01.md.
# The grid also holds the presets with calibrated per-layer budgets (prefixkv, xkv: the budget files of
# bench/quality/budgets/, written by calibrate_budgets), the bounded slot memory (bounded_memory) and
# the MixAttention-style caches of examples/smollm2/layer_map_backend.hpp at 10 and 20 %
# (sliding_window, mixattention; inference-time approximations, docs/methods.md 9.4).
# Part csr: bench/quality/csr_quality (next to KV_QUALITY) fits CSR's dictionaries (256 atoms, 4 terms, 6 updates,
# on essay text from token 16384 on, which no evaluation reads; OUT_DIR/csr.dict) and writes kv_quality's ppl and
# needle rows (ppl_1024, needle_2k protocols) for preset csr at 4, 6, 11 and 16 terms: budget = the codes' share
# of the fp16 cache, 12.5 / 18.75 / 34.4 / 50 %. Measured 2026-12-01 alone (JOBS=1, one thread, load 3-5 on
# 2 shared vCPUs): 1481 s wall, 672 s CPU (bench/results/smollm2_csr_2026-12-01.md).
# Writes OUT_DIR/<run>.{csv,md,err,cpu} and OUT_DIR/times.txt (per part: wall and CPU seconds, load average at the end).
#
# Usage: [JOBS=N] [PRESETS=a,b] [BUDGETS=0.1,0.2] [EXTRA=p:b,...] [PARTS="ppl_1024 needle_2k"]
#        bench/quality/run_sweep.sh OUT_DIR [KV_QUALITY]   (KV_QUALITY: build/bench/quality/kv_quality)
# PRESETS, BUDGETS, EXTRA and PARTS select a slice of the grid (default: all of it).
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
presets=${PRESETS:-streaming_llm,h2o,tova,snapkv,pyramidkv,adakv,knorm,corm,corm_budgeted,windowkv,kvmerger,cam,bounded_memory,elastic_cache,prefixkv,xkv,kvmerger_unscaled,windowkv_layerwise,knorm_skip2}
budgets=${BUDGETS:-0.1,0.2,0.3,0.35,0.5}
extra=${EXTRA-windowkv:0.12,windowkv_layerwise:0.12,sliding_window:0.1,sliding_window:0.2,mixattention:0.1,mixattention:0.2}
parts=${PARTS:-ppl_1024 needle_2k needle_4k needle_8k_d10 needle_8k_d50 needle_8k_d90 csr}
tables=prefixkv=bench/quality/budgets/smollm2_prefixkv.txt,xkv=bench/quality/budgets/smollm2_xkv.txt

timed() {  # name, command...: stdout, stderr and CPU time to OUT_DIR/<name>.{md,err,cpu}, its times to times.txt
  local name=$1 t0 rc=0
  shift
  t0=$(date +%s)
  echo "$name start $(date -u +%FT%TZ)" >> "$out/times.txt"
  local TIMEFORMAT='%U %S'  # the process's CPU seconds (user, system): what a shared machine inflates least
  { time "$@" > "$out/$name.md" 2> "$out/$name.err"; } 2> "$out/$name.cpu" || rc=$?
  echo "$name rc $rc end $(date -u +%FT%TZ) wall $(( $(date +%s) - t0 )) s cpu $(awk '{ printf "%.0f", $1 + $2 }' "$out/$name.cpu") s load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/times.txt"
  return "$rc"
}

run() {  # name, kv_quality arguments...
  local name=$1
  shift
  timed "$name" "$quality" --essays "$essays" --presets "$presets" --budgets "$budgets" --extra "$extra" --budget-tables "$tables" --threads 1 \
    --csv "$out/$name.csv" "$@"
}

csr() {  # name, csr_quality arguments...: fits CSR's dictionaries (OUT_DIR/<name>.dict), then its ppl and needle rows
  local name=$1
  shift
  OMP_NUM_THREADS=1 timed "$name" "$(dirname "$quality")/csr_quality" --essays "$essays" --dictionary "$out/$name.dict" --presets "" \
    --csv "$out/$name.csv" "$@"
}

max_jobs=${JOBS:-$(nproc)}
status=0
start() {  # tool (run or csr), part, arguments...: runs the part (if PARTS names it) in the background once fewer than $max_jobs are running
  case " $parts " in *" $2 "*) ;; *) return 0 ;; esac
  while [ "$(jobs -rp | wc -l)" -ge "$max_jobs" ]; do wait -n || status=1; done
  "$@" &
}
# Longest part first (needle_4k, the 8000-token depths, csr, needle_2k, ppl_1024 by their CPU seconds), so that
# with JOBS=2 the short parts fill the gaps at the end instead of a long part starting last.
needle=(--tasks needle --max-window-rows 512)
start run needle_4k "${needle[@]}" --needle-contexts 4096 --depths 0.1,0.5,0.9
start run needle_8k_d10 "${needle[@]}" --needle-contexts 8000 --depths 0.1
start run needle_8k_d50 "${needle[@]}" --needle-contexts 8000 --depths 0.5
start run needle_8k_d90 "${needle[@]}" --needle-contexts 8000 --depths 0.9
start csr csr --prompts 4 --tokens 1024 --offset 16384 --stride 2 --atoms 256 --terms 4 --iterations 6 --code-terms 4,6,11,16 \
  --tasks ppl,needle --ppl-context 1024 --continuation 64 --needle-contexts 2048 --depths 0.1,0.5,0.9
start run needle_2k "${needle[@]}" --needle-contexts 2048 --depths 0.1,0.5,0.9
start run ppl_1024 --tasks ppl --ppl-context 1024 --continuation 64 --max-window-rows 1024
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || status=1; done
cat "$out/times.txt"
exit "$status"
