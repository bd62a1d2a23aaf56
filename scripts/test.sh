#!/usr/bin/env bash
# Set up .venv and run the test suite (what CI runs). Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m slow        # the long end-to-end tests
#   bash scripts/test.sh tests/test_model.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# the chat page is tested in a real headless browser (Debian's chromium)
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing chromium for the browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "[test] could not install chromium; the browser test will say so"
fi
# lint first (config in pyproject.toml: unused imports and names, line length 130), over the whole repository
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
