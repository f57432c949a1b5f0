#!/usr/bin/env bash
# Set up (scripts/setup.sh --dev: with the test, bench and ray extras) and run every test CI runs:
#   1. buf lint of proto/ (STANDARD rules),
#   2. the Python test suite (pytest; extra arguments go to pytest),
#   3. scripts/clients_test.sh: buf breaking, the Go, Java and Node clients, the HTTP/JSON gateway and the generic
#      tools (grpcurl, grpc_health_probe) against a live server, and the load-test smoke run.
# SEGSRV_SKIP_CLIENTS=1 skips step 3 (e.g. for a quick Python-only run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# the report's browser test (tests/report/test_browser.py) needs Debian's chromium and its chromedriver
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "[test] installing chromium and chromium-driver (apt-get)"
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "[test] buf lint (proto/, STANDARD rules)"
.venv/bin/buf lint
echo "[test] buf lint ok"
.venv/bin/python -m pytest -q --durations=20 "$@"  # the slowest 20: where the suite's time goes
if [ "${SEGSRV_SKIP_CLIENTS:-0}" = "1" ]; then
    echo "[test] SEGSRV_SKIP_CLIENTS=1: client checks skipped"
else
    bash scripts/clients_test.sh
fi
