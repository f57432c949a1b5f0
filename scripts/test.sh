#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] buf lint (proto/, STANDARD rules)"
.venv/bin/buf lint
echo "[test] buf lint ok"
exec .venv/bin/python -m pytest -q "$@"
