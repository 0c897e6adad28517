#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One-command GPU validation of the CUDA backend, for a machine with a GPU (no network needed):
#   1. configure and build only what the checks need: Release, sm_90 (GPU_CHECK_ARCH), the native
#      CUDA tests (test/cuda/*_test.cu) and bench/kernel_bench;
#   2. the native CUDA tests (ctest -L cuda), and compute-sanitizer memcheck, racecheck and
#      synccheck on a small test (the first case of cuda_decode_test and of cuda_prefill_test),
#      run side by side (correctness only, nothing is timed in this phase);
#   3. bench/kernel_bench, then bench/peer_torch.py (torch SDPA; kvpress and FlashInfer when they
#      import), one after the other on an otherwise idle GPU;
#   4. writes bench/results/<date>_<gpu>.md (date, device from nvidia-smi, every command with its
#      status and duration, the benchmark tables) and <date>_<gpu>_{kernel_bench,peer_torch}.csv,
#      copies them and a tarball of the logs to $OUT when that is set, and prints a summary table last.
# Every step runs under a time limit taken from one overall budget (GPU_CHECK_BUDGET, default 480 s);
# a failing or timed-out step is recorded and the others still run. Exit status: 0 when every step
# passed, 1 otherwise.
#
#   bash bench/gpu_check.sh [--dry-run | --build-only | --no-build] [--quick]
#     --dry-run     print the plan (every command and its time limit) and write the results file with
#                   every step "not run", without building or touching a GPU (tests the script anywhere)
#     --build-only  configure and build only (no GPU needed: prepares $GPU_CHECK_BUILD_DIR on a machine
#                   with nvcc, to be carried to the GPU machine), results file in a temporary folder
#     --no-build    skip configure and build: run the checks on the executables already in the build dir
#     --quick       kernel_bench and peer_torch at N = 8k only
# Environment: GPU_CHECK_BUDGET (s), GPU_CHECK_ARCH (90), GPU_CHECK_JOBS (nproc), GPU_CHECK_BUILD_DIR
# (build-gpu), GPU_CHECK_REPS (10), GPU_CHECK_CMAKE_ARGS (extra configure arguments, e.g. where a
# carried Boost lives; without Boost.Test the tests are recorded as skipped and the benchmarks still
# run), GPU_CHECK_NCU=1 adds Nsight Compute's speed-of-light section for
# the decode and window-scoring kernels of kernel_bench --quick (when ncu exists).
# shellcheck disable=SC2317  # first_case and sanitize_small run in `bash -c` under timeout
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

dry_run=0 build_only=0 no_build=0
quick=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    --build-only) build_only=1 ;;
    --no-build) no_build=1 ;;
    --quick) quick=(--quick) ;;
    -h | --help) sed -n '2,/^# shellcheck/{/^# shellcheck/!p}' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ $((dry_run + build_only + no_build)) -gt 1 ]; then
  echo "gpu_check.sh: --dry-run, --build-only and --no-build exclude each other" >&2
  exit 2
fi

start=$(date +%s)
invocation="bash bench/gpu_check.sh${*:+ $*}"
budget=${GPU_CHECK_BUDGET:-480}
[ "$build_only" = 1 ] && budget=${GPU_CHECK_BUDGET:-3600}  # a build on few cores, no GPU time spent
arch=${GPU_CHECK_ARCH:-90}
jobs=${GPU_CHECK_JOBS:-$(nproc)}
build=${GPU_CHECK_BUILD_DIR:-build-gpu}
reps=${GPU_CHECK_REPS:-10}
day=$(date -u +%F)

gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
gpu_name=${gpu_name:-no GPU found}
gpu_slug=$(printf '%s' "$gpu_name" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '_' | sed 's/^_*//; s/_*$//')
results=bench/results
logs=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
stem="$results/${day}_${gpu_slug}"
# a dry run or a build-only run leaves the repository alone
[ "$dry_run" = 1 ] && stem="$logs/${day}_${gpu_slug}_dry_run"
[ "$build_only" = 1 ] && stem="$logs/${day}_${gpu_slug}_build_only"
mkdir -p "$results"

names=() statuses=() seconds=() commands=()

remaining() { echo $((budget - ($(date +%s) - start))); }

# step NAME LIMIT_S COMMAND...: runs COMMAND under `timeout` with at most LIMIT_S (and what is left of
# the budget), logging to $logs/NAME.log; records status and duration, never stops the script.
step() {
  local name=$1 limit=$2
  shift 2
  local left
  left=$(remaining)
  [ "$limit" -gt "$left" ] && limit=$left
  [ "$limit" -lt 0 ] && limit=0
  local text="$*"
  names+=("$name") commands+=("$text")
  printf '\n==== %s (limit %ss): %s\n' "$name" "$limit" "$text"
  if [ "$dry_run" = 1 ]; then
    statuses+=("not run (dry run)") seconds+=(0)
    return 0
  fi
  if [ "$limit" -le 5 ]; then
    statuses+=("skipped: time budget spent") seconds+=(0)
    return 1
  fi
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  seconds+=($(($(date +%s) - t0)))
  tail -n 15 "$logs/$name.log"
  case $rc in
    0) statuses+=("passed") ;;
    77) statuses+=("skipped (status 77: no GPU or tool missing)") ;;
    124 | 137) statuses+=("TIMED OUT after ${limit} s") ;;
    *) statuses+=("FAILED (status $rc)") ;;
  esac
  return "$rc"
}

# The same for steps that run in the background (DESCRIPTION is what the results file shows);
# `finish_parallel` waits for them and records them.
parallel_pids=() parallel_names=() parallel_starts=() parallel_limits=() commands_parallel=()
step_parallel() {
  local name=$1 limit=$2 description=$3
  shift 3
  local left
  left=$(remaining)
  [ "$limit" -gt "$left" ] && limit=$left
  [ "$limit" -lt 0 ] && limit=0
  printf '\n==== %s (limit %ss, in parallel): %s\n' "$name" "$limit" "$description"
  if [ "$dry_run" = 1 ] || [ "$limit" -le 5 ]; then
    names+=("$name") commands+=("$description") seconds+=(0)
    if [ "$dry_run" = 1 ]; then statuses+=("not run (dry run)"); else statuses+=("skipped: time budget spent"); fi
    return 0
  fi
  timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1 &
  parallel_pids+=($!) parallel_names+=("$name") parallel_starts+=("$(date +%s)") parallel_limits+=("$limit")
  commands_parallel+=("$description")
}
finish_parallel() {
  local i rc
  for i in "${!parallel_pids[@]}"; do
    wait "${parallel_pids[$i]}"
    rc=$?
    names+=("${parallel_names[$i]}") commands+=("${commands_parallel[$i]}")
    seconds+=($(($(date +%s) - parallel_starts[i])))
    case $rc in
      0) statuses+=("passed") ;;
      77) statuses+=("skipped (status 77: no GPU or tool missing)") ;;
      124 | 137) statuses+=("TIMED OUT after ${parallel_limits[$i]} s") ;;
      *) statuses+=("FAILED (status $rc)") ;;
    esac
    printf '\n---- %s: %s\n' "${parallel_names[$i]}" "${statuses[-1]}"
    tail -n 15 "$logs/${parallel_names[$i]}.log"
  done
  parallel_pids=() parallel_names=() parallel_starts=() parallel_limits=() commands_parallel=()
}

# ---- environment ------------------------------------------------------------------------------
CMAKE=cmake
if [ -f .ci/cmake-path ]; then CMAKE=$(bash .ci/cmake-path 2>/dev/null || echo cmake); fi
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
NCU=$(command -v ncu || true)
PYTHON=$(command -v python3 || echo python3)
{
  echo "date (UTC): $(date -u '+%F %T')"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo 'nvidia-smi: no GPU found')"
  echo "nvcc: $("$NVCC" --version 2>/dev/null | grep -i release || echo 'not found')"
  echo "cmake: $("$CMAKE" --version 2>/dev/null | head -n1)"
  echo "compute-sanitizer: ${SANITIZER:-not found}; ncu: ${NCU:-not found}"
  echo "python: $("$PYTHON" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo 'torch not importable')"
  echo "cpus: $(nproc)"
} >"$logs/environment.txt"
cat "$logs/environment.txt"

# ---- 1. build ---------------------------------------------------------------------------------
cuda_tests=()
for source in test/cuda/*_test.cu; do
  stem_name=$(basename "$source" .cu)
  cuda_tests+=("cuda_${stem_name}")
done
read -r -a extra_cmake <<<"${GPU_CHECK_CMAKE_ARGS:-}"
configure=("$CMAKE" -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVCOMPACT_ENABLE_CUDA=ON
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DKVCOMPACT_BUILD_BENCHMARKS=ON -DKVCOMPACT_BUILD_EXAMPLES=OFF
  -DKVCOMPACT_BUILD_DOCS=OFF -DKVCOMPACT_INSTALL=OFF "${extra_cmake[@]}")
tests=1
if [ "$no_build" = 1 ]; then
  # Executables built earlier (bash bench/gpu_check.sh --build-only, here or on a machine with nvcc).
  [ -x "$build/test/${cuda_tests[0]}" ] || tests=0
  names+=(build) commands+=("--no-build: executables from $build") seconds+=(0)
  if [ -x "$build/bench/kernel_bench" ]; then statuses+=("passed"); else statuses+=("FAILED: $build/bench/kernel_bench missing"); fi
else
  if ! step configure 60 "${configure[@]}" -DKVCOMPACT_BUILD_TESTS=ON; then
    # The tests need Boost.Test; without it (no network to install it) the benchmarks still run.
    tests=0
    step configure_benchmarks_only 60 "${configure[@]}" -DKVCOMPACT_BUILD_TESTS=OFF
  fi
  targets=(bench_kernel_bench)
  [ "$tests" = 1 ] && targets=("${cuda_tests[@]}" bench_kernel_bench)
  build_limit=240
  [ "$build_only" = 1 ] && build_limit=$budget  # no GPU time is spent: the whole budget may build
  step build "$build_limit" "$CMAKE" --build "$build" -j "$jobs" --target "${targets[@]}"
fi

# ---- 2. correctness: native tests and compute-sanitizer, side by side -------------------------
if [ "$build_only" = 1 ]; then
  echo
  if [ "${statuses[-1]}" = passed ]; then
    echo "==== gpu_check --build-only: $build is ready ($(($(date +%s) - start)) s); on the GPU machine: bash bench/gpu_check.sh --no-build"
    exit 0
  fi
  echo "==== gpu_check --build-only: build ${statuses[-1]} ($(($(date +%s) - start)) s; logs: $logs)"
  exit 1
fi
first_case() {  # first test case of a Boost.Test executable (for a short sanitizer run)
  "$1" --list_content 2>&1 | sed -n 's/^ *\([A-Za-z_][A-Za-z0-9_]*\)\*\{0,1\}$/\1/p' | head -n1
}
sanitize_small() {  # TOOL: compute-sanitizer on the first case of the decode and prefill tests
  local tool=$1 exe case rc=0
  if [ -z "$SANITIZER" ]; then echo "compute-sanitizer not found"; return 77; fi
  for exe in "$build/test/cuda_decode_test" "$build/test/cuda_prefill_test"; do
    case=$(first_case "$exe")
    echo "+ compute-sanitizer --tool $tool --error-exitcode 1 $exe --run_test=$case"
    "$SANITIZER" --tool "$tool" --error-exitcode 1 --print-limit 20 "$exe" --color_output=no "--run_test=$case" || rc=1
  done
  return "$rc"
}
export -f first_case sanitize_small
export SANITIZER build
run_cuda_tests() {  # every native CUDA test executable (directly, not through ctest, whose files name
  local exe rc all=0 ran=0  # the build machine's paths: a build dir may come from elsewhere)
  for exe in "$build"/test/cuda_*_test; do
    echo "+ $exe"
    "$exe" --color_output=no
    rc=$?
    case $rc in 0) ran=1 ;; 77) echo "(skipped: status 77)" ;; *) echo "FAILED: status $rc"; all=1 ;; esac
  done
  [ "$all" = 0 ] && [ "$ran" = 0 ] && return 77
  return "$all"
}
export -f run_cuda_tests
if [ "$tests" = 1 ]; then
  step_parallel cuda_tests 150 "every $build/test/cuda_*_test" bash -c run_cuda_tests
else
  names+=(cuda_tests) commands+=("ctest -L cuda") statuses+=("skipped: configure with tests failed (Boost.Test missing?)") seconds+=(0)
fi
for tool in memcheck racecheck synccheck; do
  [ "$tests" = 1 ] || { names+=("sanitizer_$tool") commands+=("compute-sanitizer --tool $tool") statuses+=("skipped: no test executables") seconds+=(0); continue; }
  # shellcheck disable=SC2016  # $1 is expanded by the inner bash
  step_parallel "sanitizer_$tool" 150 \
    "compute-sanitizer --tool $tool --error-exitcode 1 on the first case of cuda_decode_test and cuda_prefill_test" \
    bash -c 'sanitize_small "$1"' _ "$tool"
done
[ "$dry_run" = 1 ] || finish_parallel

# ---- 3. benchmarks, one at a time ---------------------------------------------------------------
step kernel_bench 120 "$build/bench/kernel_bench" "${quick[@]}" --reps "$reps" --csv "${stem}_kernel_bench.csv"
step peer_torch 120 env PYTHONUNBUFFERED=1 "$PYTHON" bench/peer_torch.py "${quick[@]}" --reps "$reps" --csv "${stem}_peer_torch.csv"
if [ "${GPU_CHECK_NCU:-0}" = 1 ]; then
  if [ -n "$NCU" ]; then
    step ncu 90 "$NCU" --section SpeedOfLight --clock-control none --kernel-name "regex:decode_partial|window_scores|compact" \
      --launch-skip 3 --launch-count 6 "$build/bench/kernel_bench" --quick --reps 1
  else
    names+=(ncu) commands+=("ncu (GPU_CHECK_NCU=1)") statuses+=("skipped: ncu not found") seconds+=(0)
  fi
fi

# ---- 4. results ---------------------------------------------------------------------------------
table_of() {  # the markdown table lines of a log
  [ -f "$logs/$1.log" ] && grep -E '^\|' "$logs/$1.log"
}
fenced_section() {  # LOG TITLE PATTERN MAX: the first MAX lines of a log that match PATTERN, as a code block
  [ -f "$logs/$1.log" ] || return 0
  printf '\n%s\n\n```\n' "$2"
  grep -E "$3" "$logs/$1.log" | head -n "$4"
  echo '```'
}
bench_section() {  # LOG TITLE HEADER: a benchmark's header lines (matching HEADER) and its tables
  [ -f "$logs/$1.log" ] || return 0
  printf '\n## %s\n\n' "$2"
  grep -E "$3" "$logs/$1.log"
  echo
  table_of "$1"
}
failed=0
{
  echo "# GPU check: $gpu_name, $day"
  echo
  echo "Written by \`$invocation\` in $(($(date +%s) - start)) s (budget ${budget} s)."
  echo
  echo '```'
  cat "$logs/environment.txt"
  echo '```'
  echo
  echo "## Steps"
  echo
  echo "| step | status | seconds | command |"
  echo "|---|---|---:|---|"
  for i in "${!names[@]}"; do
    echo "| ${names[$i]} | ${statuses[$i]} | ${seconds[$i]} | \`${commands[$i]//|/\\|}\` |"
  done
  for tool in memcheck racecheck synccheck; do
    fenced_section "sanitizer_$tool" "### compute-sanitizer $tool" 'ERROR SUMMARY|RACECHECK SUMMARY|hazard|Invalid|Barrier|error' 20
  done
  bench_section kernel_bench "kvcompact: bench/kernel_bench" '^device:'
  bench_section peer_torch "Peers: bench/peer_torch.py" '^(device|peer):'
  fenced_section ncu "## Nsight Compute (speed of light)" '^  [a-z_]|Memory Throughput|DRAM Throughput|Duration|Compute \(SM\) Throughput' 60
} >"$stem.md"
for i in "${!names[@]}"; do
  case "${statuses[$i]}" in passed | "not run (dry run)") ;; *) failed=1 ;; esac
done

tar -czf "$logs.tar.gz" -C "$logs" . 2>/dev/null
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$stem.md" "$OUT/"
  for f in "${stem}_kernel_bench.csv" "${stem}_peer_torch.csv"; do [ -f "$f" ] && cp "$f" "$OUT/"; done
  cp "$logs.tar.gz" "$OUT/gpu_check_logs.tar.gz"
fi

echo
echo "==== gpu_check summary: $gpu_name, $(($(date +%s) - start)) s; results in $stem.md (logs: $logs)"
printf '%-20s %-44s %8s\n' step status seconds
for i in "${!names[@]}"; do printf '%-20s %-44s %8s\n' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}"; done
exit $failed
