#!/usr/bin/env bash
# CI smoke of the load-test harness against a running PetNord server.
#
#   SEGSRV_ADDR=127.0.0.1:PORT bash clients/loadtest/ci_smoke.sh
#
# Runs a ~5 s closed-loop load test with the smoke mix (relate, count, predict; no assign)
# and fails if any request errored or the report is missing or does not follow the schema.
# Environment: SEGSRV_ADDR (required), PYTHON (default: the repo's .venv), LOADTEST_DURATION
# (default 5), LOADTEST_CONCURRENCY (default 4), LOADTEST_OUT (default: a temporary directory,
# removed when the smoke passes),
# LOADTEST_PLOT (default 1; 0 skips report.png).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
: "${SEGSRV_ADDR:?ci_smoke: set SEGSRV_ADDR to HOST:PORT of a segsrv server serving PetNord}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
DURATION="${LOADTEST_DURATION:-5}"
CONCURRENCY="${LOADTEST_CONCURRENCY:-4}"
if [ -n "${LOADTEST_OUT:-}" ]; then
  OUT="$LOADTEST_OUT"
  KEEP=1
else  # a temporary directory, removed when the smoke passes (kept for inspection when it fails)
  OUT="$(mktemp -d "${TMPDIR:-/tmp}/segsrv-loadtest-smoke.XXXXXX")"
  KEEP=0
fi
REPORT="$OUT/report.json"
PLOT_FLAG=()
[ "${LOADTEST_PLOT:-1}" = 0 ] && PLOT_FLAG=(--no-plot)
rm -f "$REPORT"

echo "ci_smoke: ${DURATION} s closed loop at concurrency ${CONCURRENCY} against ${SEGSRV_ADDR} -> ${OUT}"
status=0
"$PYTHON" "$HERE/run.py" --addr "$SEGSRV_ADDR" --scenario "$HERE/scenarios/smoke.toml" \
  --duration "$DURATION" --concurrency "$CONCURRENCY" --processes 1 --connections 2 \
  --out "$OUT" --fail-on-errors "${PLOT_FLAG[@]}" || status=$?
if [ ! -s "$REPORT" ]; then
  echo "ci_smoke: FAIL: no report at $REPORT (run.py exit $status)" >&2
  exit 1
fi
"$PYTHON" "$HERE/validate.py" "$REPORT" --max-errors 0 --methods relate,count,predict --min-requests 10 || {
  echo "ci_smoke: FAIL: report check failed" >&2
  exit 1
}
if [ "$status" -ne 0 ]; then
  echo "ci_smoke: FAIL: run.py exited $status" >&2
  exit 1
fi
[ "$KEEP" = 1 ] || rm -rf "$OUT"
echo "ci_smoke: OK"
