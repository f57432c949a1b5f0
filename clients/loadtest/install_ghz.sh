#!/usr/bin/env bash
# Install ghz (github.com/bojand/ghz), pinned, into clients/loadtest/bin/ (gitignored).
#   bash clients/loadtest/install_ghz.sh        # needs Go and the Go module proxy
set -euo pipefail
GHZ_VERSION="${GHZ_VERSION:-v0.121.0}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$HERE/bin"
if ! command -v go >/dev/null 2>&1; then
  echo "install_ghz: go is not installed (https://go.dev/dl/)" >&2
  exit 1
fi
mkdir -p "$BIN"
echo "install_ghz: go install github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION -> $BIN" >&2
GOBIN="$BIN" GOFLAGS=-mod=mod go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
echo "$GHZ_VERSION" > "$BIN/ghz.version"
"$BIN/ghz" --help >/dev/null
echo "install_ghz: $BIN/ghz ($GHZ_VERSION)" >&2
