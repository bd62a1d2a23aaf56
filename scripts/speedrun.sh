#!/usr/bin/env bash
# Set up .venv and run the whole R1 recipe on the CPU preset; writes runs/<name>/report.md.
#   bash scripts/speedrun.sh              # runs/speedrun
#   bash scripts/speedrun.sh runs/mine    # another run folder
set -euo pipefail
cd "$(dirname "$0")/.."
R1LAB_EXTRAS="${R1LAB_EXTRAS-structured}" source scripts/setup.sh  # the recipe needs no test tools
OUT="${1:-runs/speedrun}"
exec .venv/bin/r1lab speedrun --preset cpu --out "$OUT"
