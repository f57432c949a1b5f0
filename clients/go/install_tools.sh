#!/usr/bin/env bash
# Install the pinned Go tools of the Go client into clients/go/.bin (gitignored) with `go install`.
#
#   bash clients/go/install_tools.sh [TOOL...]     # default: every tool
#
# TOOL is one of: protoc-gen-go protoc-gen-go-grpc grpcurl grpc_health_probe protoc-gen-grpc-gateway
# protoc-gen-openapiv2 (the last two for the HTTP/JSON gateway, clients/gateway).
# A binary already there at the pinned version is kept (checked with `go version -m`), so a
# second run costs nothing. The module cache and build cache are Go's defaults (GOMODCACHE,
# GOCACHE), so a machine that installed them once rebuilds nothing.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="$HERE/.bin"

# tool name -> "module package version"; change a pin here and nowhere else.
declare -A PINS=(
    [protoc-gen-go]="google.golang.org/protobuf google.golang.org/protobuf/cmd/protoc-gen-go v1.36.12"
    [protoc-gen-go-grpc]="google.golang.org/grpc/cmd/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc v1.6.2"
    [grpcurl]="github.com/fullstorydev/grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl v1.9.4"
    [grpc_health_probe]="github.com/grpc-ecosystem/grpc-health-probe github.com/grpc-ecosystem/grpc-health-probe v0.4.61"
    # the version clients/gateway/go.mod requires of the grpc-gateway runtime: keep the two equal
    [protoc-gen-grpc-gateway]="github.com/grpc-ecosystem/grpc-gateway/v2 github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway v2.34.0"
    [protoc-gen-openapiv2]="github.com/grpc-ecosystem/grpc-gateway/v2 github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2 v2.34.0"
)
ORDER=(protoc-gen-go protoc-gen-go-grpc grpcurl grpc_health_probe protoc-gen-grpc-gateway protoc-gen-openapiv2)

if ! command -v go >/dev/null 2>&1; then
    echo "install_tools: go is not on PATH (Go 1.24 or newer is needed)" >&2
    exit 1
fi
mkdir -p "$BIN"
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=("${ORDER[@]}")
for tool in "${tools[@]}"; do
    pin="${PINS[$tool]:-}"
    if [ -z "$pin" ]; then
        echo "install_tools: unknown tool '$tool' (known: ${ORDER[*]})" >&2
        exit 2
    fi
    read -r module package version <<<"$pin"
    built="${package##*/}"          # the name go install gives the binary
    if [ -x "$BIN/$built" ] && go version -m "$BIN/$built" 2>/dev/null \
            | awk -v m="$module" -v v="$version" '$1 == "mod" && $2 == m && $3 == v {ok = 1} END {exit !ok}'; then
        :
    else
        echo "install_tools: go install $package@$version"
        GOBIN="$BIN" go install "$package@$version"
    fi
    if [ "$built" != "$tool" ]; then
        ln -sf "$built" "$BIN/$tool"   # grpc-health-probe is known as grpc_health_probe
    fi
done
