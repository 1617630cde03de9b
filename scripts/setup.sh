#!/usr/bin/env bash
# Create .venv and install CLIP-ITA with its dev tools. Idempotent: a second run installs nothing new.
# torch: a machine without an NVIDIA GPU gets the pinned CPU-capable release first (TORCH_SPEC overrides);
# a GPU machine keeps or gets a CUDA build through the plain `torch>=` range in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv 2>/dev/null || [ -x .venv/bin/python ]
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    python -m pip install -q "${TORCH_SPEC:-torch>=2.4}"
  else
    python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  fi
fi
python -m pip install -q -e ".[dev]"
