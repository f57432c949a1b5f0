#!/usr/bin/env bash
# Install (npm ci from package-lock.json), generate the TypeScript code from ../../proto
# (buf from @bufbuild/buf + ts-proto, both npm packages: no other download), build, and run the
# node:test suite against the server at $SEGSRV_ADDR (host:port), checking the fixture at
# $SEGSRV_FIXTURE (default ../fixtures/petnord_expected.json). Without SEGSRV_ADDR every test
# is skipped.
set -euo pipefail
cd "$(dirname "$0")"

command -v node >/dev/null || { echo "clients/node: node (20+) is not installed" >&2; exit 1; }
command -v npm >/dev/null || { echo "clients/node: npm is not installed" >&2; exit 1; }

if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi
npm run --silent generate
if [[ -z "${SEGSRV_ADDR:-}" ]]; then
  echo "clients/node: SEGSRV_ADDR is unset: the tests will be skipped" >&2
fi
npm test --silent
