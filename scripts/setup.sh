#!/usr/bin/env bash
# Create .venv (if missing) and install r1lab with what it needs. Sourced by test.sh and speedrun.sh.
# Re-installs only when pyproject.toml or requirements-cpu.txt changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
EXTRAS="${R1LAB_EXTRAS-test,dev}"  # the speedrun asks for fewer (scripts/speedrun.sh)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=".venv/.r1lab-installed"
hash="$(cat pyproject.toml requirements-cpu.txt | sha256sum | cut -c1-16)"
# the stamp holds the files' hash and the extras installed; a request for fewer extras than are there needs nothing
installed_extras=""
if [ -f "$stamp" ] && [ "$(cut -d- -f1 "$stamp")" = "$hash" ]; then installed_extras="$(cut -d- -f2- "$stamp")"; fi
missing=""
for extra in ${EXTRAS//,/ }; do
  case ",$installed_extras," in *",$extra,"*) ;; *) missing="$missing $extra" ;; esac
done
if [ ! -f "$stamp" ] || [ "$(cut -d- -f1 "$stamp")" != "$hash" ] || [ -n "$missing" ]; then
  [ "$(cut -d- -f1 "$stamp" 2>/dev/null)" = "$hash" ] && [ -n "$installed_extras" ] && EXTRAS="$installed_extras,$EXTRAS"
  spec="."; [ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
  echo "[setup] installing r1lab${EXTRAS:+[$EXTRAS]} into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  if command -v nvidia-smi >/dev/null 2>&1 && [ -z "${R1LAB_CPU_TORCH:-}" ]; then
    echo "[setup] GPU found: installing the default (CUDA) torch build"
  else
    # pinned so pip takes the CPU wheel instead of a multi-GB CUDA build
    .venv/bin/python -m pip install -q -r requirements-cpu.txt 2>&1 | grep -v "^WARNING: Location" || true
  fi
  .venv/bin/python -m pip install -q -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import r1lab, torch, transformers" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$hash-$EXTRAS" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
