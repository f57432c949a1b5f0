#!/usr/bin/env bash
# Generate the gateway's code from proto/ and http_rules.yaml (both outputs gitignored):
#   clients/gateway/gen/segsrvv1/        Go stubs and the grpc-gateway handlers (*.pb.gw.go)
#   clients/gateway/assets/segsrv.swagger.json    the OpenAPI (v2) document /openapi.json serves
#   clients/gateway/assets/service_config.json    a copy of proto/segsrv/v1/segsrv_grpc_service_config.json
#                                                  (the retry policy every client uses; embedded)
#
#   bash clients/gateway/generate.sh
#
# The protoc plugins are installed at pinned versions into clients/go/.bin by
# clients/go/install_tools.sh; the .proto files are compiled by buf (template buf.gen.yaml;
# .venv/bin/buf from scripts/setup.sh, or any buf on PATH).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

bash "$REPO/clients/go/install_tools.sh" protoc-gen-go protoc-gen-go-grpc protoc-gen-grpc-gateway protoc-gen-openapiv2
export PATH="$REPO/clients/go/.bin:$PATH"

BUF="${BUF:-}"
if [ -z "$BUF" ]; then
    if [ -x "$REPO/.venv/bin/buf" ]; then BUF="$REPO/.venv/bin/buf"
    elif command -v buf >/dev/null 2>&1; then BUF="$(command -v buf)"
    else
        echo "generate: buf is needed to compile proto/ (run scripts/setup.sh, or put buf on PATH)" >&2
        exit 1
    fi
fi

rm -rf "$HERE/gen" "$HERE/assets/segsrv.swagger.json" "$HERE/assets/service_config.json"
cd "$REPO"
"$BUF" generate --template clients/gateway/buf.gen.yaml
cp proto/segsrv/v1/segsrv_grpc_service_config.json "$HERE/assets/service_config.json"
echo "generate: $(ls "$HERE/gen/segsrvv1" | tr '\n' ' ')-> clients/gateway/gen/segsrvv1/; $(ls "$HERE/assets" | grep json | tr '\n' ' ')-> clients/gateway/assets/"
