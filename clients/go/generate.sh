#!/usr/bin/env bash
# Generate the Go stubs (package segsrvv1) from proto/ into clients/go/segsrvv1/ (gitignored).
#
#   bash clients/go/generate.sh
#
# protoc-gen-go and protoc-gen-go-grpc are installed at pinned versions into clients/go/.bin
# (install_tools.sh). The .proto files are compiled by buf (`buf generate`, template
# buf.gen.yaml; buf is .venv/bin/buf from scripts/setup.sh, or any buf on PATH); without buf,
# grpcio-tools' protoc (python -m grpc_tools.protoc) is used if the venv has it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN="$HERE/.bin"
OUT="$HERE/segsrvv1"

bash "$HERE/install_tools.sh" protoc-gen-go protoc-gen-go-grpc
export PATH="$BIN:$PATH"

BUF="${BUF:-}"
if [ -z "$BUF" ]; then
    if [ -x "$REPO/.venv/bin/buf" ]; then BUF="$REPO/.venv/bin/buf"
    elif command -v buf >/dev/null 2>&1; then BUF="$(command -v buf)"
    fi
fi

rm -rf "$OUT"
cd "$REPO"
if [ -n "$BUF" ]; then
    "$BUF" generate --template clients/go/buf.gen.yaml
elif "$REPO/.venv/bin/python" -c "import grpc_tools" 2>/dev/null; then
    "$REPO/.venv/bin/python" -m grpc_tools.protoc -Iproto \
        --plugin=protoc-gen-go="$BIN/protoc-gen-go" --plugin=protoc-gen-go-grpc="$BIN/protoc-gen-go-grpc" \
        --go_out=clients/go --go_opt=module=segsrv.dev/clients/go \
        --go-grpc_out=clients/go --go-grpc_opt=module=segsrv.dev/clients/go \
        proto/segsrv/v1/*.proto
else
    echo "generate: neither buf (run scripts/setup.sh) nor grpcio-tools found to compile proto/" >&2
    exit 1
fi
echo "generate: $(ls "$OUT" | tr '\n' ' ')-> clients/go/segsrvv1/"
