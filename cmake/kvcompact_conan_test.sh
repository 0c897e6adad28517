#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ctest driver: the README's Conan commands, verbatim, on a copy of the recipe's sources (so nothing
# is written into the source tree), in a private CONAN_HOME without remotes (CI has no network):
#   conan profile detect --exist-ok            (a detected profile, cppstd as Conan guesses it)
#   conan create conan/ --build=missing        (also runs conan/test_package)
# test_package consumes kvcompact::kvcompact and, when nvcc is found, COMPONENTS cuda with the
# kvcompact_target_cuda_cxx20 build module for nvcc's default architecture; this script checks that
# the CUDA consumer was built and run when nvcc exists, and that a package without a CUDA toolkit
# refuses COMPONENTS cuda.
# Usage: kvcompact_conan_test.sh <source dir> <work dir> <version>. Exit 77 (ctest: skipped) without conan.
set -euo pipefail
src="$1"; work="$2"; version="$3"
if ! command -v conan >/dev/null 2>&1; then
  echo "conan is not on PATH: skipping (pip install conan)"
  exit 77
fi
export CONAN_HOME="$work/home"
export PYTHONDONTWRITEBYTECODE=1
rm -rf "$work/tree"
mkdir -p "$CONAN_HOME" "$work/tree"
# What the recipe exports (export_sources) plus the recipe and its test_package.
(cd "$src" && cp -r --parents CMakeLists.txt LICENSE cmake include conan "$work/tree/")
rm -rf "$work/tree/conan/test_package/build" "$work/tree/conan/test_package/CMakeUserPresets.json"
nvcc_bin=$(command -v nvcc || true)
[ -n "$nvcc_bin" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc_bin=/usr/local/cuda/bin/nvcc; } || true
if [ -n "$nvcc_bin" ]; then export CUDACXX="$nvcc_bin"; fi
cd "$work/tree"
conan --version
echo "==== conan profile detect --exist-ok"
conan profile detect --exist-ok
# CI has no network: the private home gets no remotes (kvcompact has no requirements to fetch).
conan remote list --format=json | python3 -c 'import json,sys; print("\n".join(r["name"] for r in json.load(sys.stdin)))' \
  | while read -r remote; do conan remote disable "$remote" >/dev/null; done
echo "==== conan create conan/ --build=missing"
conan create conan/ --build=missing 2>&1 | tee "$work/create.log"
grep -q "kvcompact $version: knorm kept" "$work/create.log" \
  || { echo "conan test: the host test_package did not run"; exit 1; }
if [ -n "$nvcc_bin" ]; then
  grep -q "test_package: CUDA consumer for architectures" "$work/create.log" \
    || { echo "conan test: nvcc exists ($nvcc_bin) but the CUDA test_package was not configured"; exit 1; }
  grep -q "kvcompact $version: Conan CUDA consumer" "$work/create.log" \
    || { echo "conan test: the CUDA test_package did not run"; exit 1; }
  echo "==== COMPONENTS cuda must be refused when find_package(CUDAToolkit) fails"
  if conan test conan/test_package "kvcompact/$version" \
      -c tools.cmake.cmaketoolchain:extra_variables="{'CMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit': 'ON'}" >"$work/refused.log" 2>&1; then
    cat "$work/refused.log"
    echo "conan test: find_package(kvcompact COMPONENTS cuda) succeeded although CUDAToolkit could not be found"; exit 1
  fi
  grep -q "the cuda component needs the CUDA toolkit" "$work/refused.log" \
    || { cat "$work/refused.log"; echo "conan test: refused, but not by kvcompact's component check"; exit 1; }
  echo "refused as it must be"
fi
echo "conan test: OK"
