#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ctest driver: 'conan create' of conan/ plus its test_package, in a private CONAN_HOME, without
# writing into the source tree (the test_package is copied next to CONAN_HOME and run with 'conan test').
# Usage: kvcompact_conan_test.sh <source dir> <work dir> <version>. Exit 77 (ctest: skipped) without conan.
set -euo pipefail
src="$1"; work="$2"; version="$3"
if ! command -v conan >/dev/null 2>&1; then
  echo "conan is not on PATH: skipping (pip install conan)"
  exit 77
fi
export CONAN_HOME="$work/home"
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ in the source tree
mkdir -p "$CONAN_HOME"
conan --version
conan profile detect --exist-ok
# The detected profile says gnu17; kvcompact requires C++20 (validate() checks it).
settings=(-s compiler.cppstd=20 -s build_type=Release)
echo "==== conan create (recipe only; -nr: local cache only)"
conan create "$src/conan" --build=missing -nr -tf "" "${settings[@]}"
echo "==== conan test (test_package, copied to $work/test_package)"
rm -rf "$work/test_package"
cp -r "$src/conan/test_package" "$work/test_package"
rm -rf "$work/test_package/build" "$work/test_package/CMakeUserPresets.json"
conan test "$work/test_package" "kvcompact/$version" -nr "${settings[@]}"
