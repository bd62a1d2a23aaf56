#!/usr/bin/env bash
# What r1lab does on one CUDA GPU, as one markdown table (bench/gpu_check.py: the GPU tests, a bf16 training
# step of gpu-small with MFU, decode tokens/s against transformers, GRPO under a 1-process torchrun, vLLM
# rollouts where vLLM is installed); about 5-8 minutes. Without a GPU it says so and exits 0.
#   bash scripts/gpu_check.sh            # uses .venv if there is one (set PYTHON to choose another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to check"
  exit 0
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PY" bench/gpu_check.py "$@"
