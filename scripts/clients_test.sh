#!/usr/bin/env bash
# Test the gRPC contract from outside Python: build the PetNord snapshot, apply the segment
# catalog clients/fixtures/segments.toml, serve it, and run
#   1. buf breaking against the previous commit (proto/ must stay wire-compatible),
#   2. the Go client (clients/go: generate the stubs, go vet, go test against the server),
#   2b. the HTTP/JSON gateway (clients/gateway: generate, build, start it in front of the server,
#      go test: plain HTTP calls whose answers must equal the gRPC ones),
#   3. the generic tools grpcurl and grpc_health_probe (server reflection and health),
#   4. clients/java/run_tests.sh, clients/node/run_tests.sh, clients/loadtest/ci_smoke.sh
#      when they exist.
# Needs .venv (bash scripts/setup.sh --dev) and Go; the Go tools are installed at pinned versions into
# clients/go/.bin by clients/go/install_tools.sh. The tests find the server at $SEGSRV_ADDR and
# the known answers (DuckDB over the source data) at $SEGSRV_FIXTURE.
#
#   bash scripts/clients_test.sh
#
# Environment: SEGSRV_BUF_AGAINST overrides the buf breaking baseline (default
# '.git#ref=HEAD~1'). Exit status: 0 when every step passed, 1 otherwise; the server is
# stopped on exit in every case.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
SHARED="$REPO/../shared"
PY="$REPO/.venv/bin/python"
GOBIN_DIR="$REPO/clients/go/.bin"
START=$SECONDS

log() { echo "[clients] $*"; }
die() { echo "[clients] error: $*" >&2; exit 1; }

[ -x "$PY" ] || die "$REPO/.venv is missing: run bash scripts/setup.sh --dev first"
[ -x "$REPO/.venv/bin/segsrv" ] || die ".venv/bin/segsrv is missing: run bash scripts/setup.sh --dev first"
[ -d "$SHARED/data/petnord" ] || die "the PetNord data is not at $SHARED/data/petnord"
command -v go >/dev/null 2>&1 || die "go is not on PATH (Go 1.26 is needed for clients/go)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/segsrv-clients.XXXXXX")"
SERVER_PID=""
CHILD_PID=""   # the step (or health wait) running in the background, ended too on exit
tree() {  # a process and its descendants, by pid
    local child
    echo "$1"
    for child in $(pgrep -P "$1" 2>/dev/null); do tree "$child"; done
}
kill_tree() { kill -TERM $(tree "$1") 2>/dev/null || true; }
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        local pids
        pids="$(tree "$SERVER_PID")"   # with any worker processes it started
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do   # --grace 2: it exits within a few seconds
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL $pids 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
cleanup() {
    local rc=$?
    if [ -n "$CHILD_PID" ] && kill -0 "$CHILD_PID" 2>/dev/null; then
        kill_tree "$CHILD_PID"
    fi
    stop_server
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- run steps: each in a subshell with errexit on; a failed step is reported and the
# --- others still run; the script exits 1 at the end if any failed.
FAILED=()
PASSED=()
step() {
    local name="$1"; shift
    local t0=$SECONDS rc=0
    echo
    log "=== $name"
    # In the background, not in an `if`, so that set -e holds inside the step.
    # (Also keeps the traps responsive: bash runs them during `wait`, not during a
    # foreground command.)
    ( set -euo pipefail; "$@" ) &
    CHILD_PID=$!
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    if [ "$rc" -eq 0 ]; then
        log "ok: $name ($((SECONDS - t0)) s)"
        PASSED+=("$name")
    else
        log "FAILED: $name (exit $rc, $((SECONDS - t0)) s)"
        FAILED+=("$name")
    fi
}

# --- the server -------------------------------------------------------------------------
log "building the PetNord snapshot into $WORK/snapshots"
# with the fixture's Predict model declared (docs/spec.md, [models]), as a deployment whose clients
# call Predict in their request path would: the build fits it, so no client call waits for a fit
sed 's#"\.\./\.\./shared/#"'"$REPO"'/../shared/#' specs/petnord.toml > "$WORK/petnord.toml"
cat >> "$WORK/petnord.toml" <<'TOML'

[models.churn]
from = "customers"
target = "churned"
TOML
"$REPO/.venv/bin/segsrv" build "$WORK/petnord.toml" --out "$WORK/snapshots" --quiet >/dev/null
# the segment catalog the Assign tests check (the fixture's "assign" section is computed for it)
log "applying the segment catalog clients/fixtures/segments.toml"
"$REPO/.venv/bin/segsrv" segments apply "$WORK/snapshots/petnord" clients/fixtures/segments.toml --quiet >/dev/null

# a free TCP port on 127.0.0.1
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
PORT="$(free_port)"
ADDR="127.0.0.1:$PORT"
log "starting segsrv serve on $ADDR (log: server.log)"
"$REPO/.venv/bin/segsrv" serve --snapshots "$WORK/snapshots" --host 127.0.0.1 --port "$PORT" --grace 2 \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

# Wait (60 s at most) for grpc.health.v1 to say SERVING, with the venv's grpcio (in the
# background so that a signal is handled at once).
"$PY" - "$ADDR" "$SERVER_PID" <<'EOF' &
import os, sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

addr, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
status = "no answer"
with grpc.insecure_channel(addr) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"[clients] the server exited before serving")
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            if status == "SERVING":
                sys.exit(0)
        except grpc.RpcError as exc:
            status = exc.code().name
        time.sleep(0.2)
sys.exit(f"[clients] the server at {addr} is not SERVING after 60 s (last: {status})")
EOF
CHILD_PID=$!
rc=0
wait "$CHILD_PID" || rc=$?
CHILD_PID=""
if [ "$rc" -ne 0 ]; then
    echo "[clients] server log:" >&2
    tail -n 40 "$WORK/server.log" >&2 || true
    exit 1
fi
log "server SERVING on $ADDR"

export SEGSRV_ADDR="$ADDR"
export SEGSRV_FIXTURE="$REPO/clients/fixtures/petnord_expected.json"
export PATH="$GOBIN_DIR:$PATH"
[ -f "$SEGSRV_FIXTURE" ] || die "$SEGSRV_FIXTURE is missing"

# fixture value by a Python expression over the parsed JSON `f`
fx() { "$PY" -c 'import json, sys; f = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$SEGSRV_FIXTURE" "$1"; }

# --- 1. buf breaking --------------------------------------------------------------------
buf_breaking() {
    local against="${SEGSRV_BUF_AGAINST:-}"
    if [ -z "$against" ]; then
        if [ ! -d .git ]; then
            log "skipping buf breaking: $REPO is not a git clone with a .git directory"
            return 0
        fi
        if ! git rev-parse --verify -q 'HEAD~1^{commit}' >/dev/null; then
            if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = "true" ]; then
                log "skipping buf breaking: shallow clone without HEAD~1 (git fetch --unshallow to check)"
            else
                log "skipping buf breaking: HEAD is the first commit, there is nothing to compare with"
            fi
            return 0
        fi
        against=".git#ref=HEAD~1"
        log "comparing proto/ with HEAD~1 ($(git log -1 --format='%h %s' HEAD~1 | cut -c1-72))"
    fi
    .venv/bin/buf breaking --against "$against"
    log "buf breaking: no breaking change against $against"
}
step "buf breaking (proto/ against the previous commit)" buf_breaking

# --- 2. Go client -----------------------------------------------------------------------
# generate a Go module's code with its generate.sh, cd into it, go vet it and check gofmt over the
# given source directories: go_module_checks DIR SOURCE_DIR...
go_module_checks() {
    local dir="$1"; shift
    bash "$dir/generate.sh"
    cd "$dir"
    go vet ./...
    local unformatted
    unformatted="$(gofmt -l "$@")"
    [ -z "$unformatted" ] || { echo "gofmt: not formatted: $unformatted" >&2; return 1; }
}
go_client() {
    go_module_checks clients/go segsrv cmd
    go test -count=1 -v ./... 2>&1 | tee "$WORK/go-test.log"
    grep -q -- '--- SKIP: TestHealth' "$WORK/go-test.log" && { echo "go test skipped the server tests" >&2; return 1; }
    go run -buildvcs=false ./cmd/segsrv-example -addr "$SEGSRV_ADDR" | tee "$WORK/example.out"
    grep -q "churned = true: $(fx 'f["counts"][0]["count"]') of $(fx 'f["n_customers"]')" "$WORK/example.out"
}
step "Go client (clients/go: generate, vet, go test ./..., example)" go_client

# --- 2b. HTTP/JSON gateway ---------------------------------------------------------------
http_gateway() {
    go_module_checks clients/gateway gateway cmd assets
    go build -o "$WORK/segsrv-gateway" ./cmd/segsrv-gateway
    local port url pid
    port="$(free_port)"
    url="http://127.0.0.1:$port"
    log "starting segsrv-gateway on $url in front of $SEGSRV_ADDR (log: gateway.log)"
    "$WORK/segsrv-gateway" -listen "127.0.0.1:$port" -backend "$SEGSRV_ADDR" >"$WORK/gateway.log" 2>&1 &
    pid=$!
    # this step runs in a subshell: its EXIT trap stops the gateway (cleanup ends the subshell's tree)
    trap 'kill -TERM '"$pid"' 2>/dev/null || true; wait '"$pid"' 2>/dev/null || true' EXIT
    "$PY" - "$url/healthz" "$pid" <<'PYEOF'
import os, sys, time, urllib.error, urllib.request

url, pid = sys.argv[1], int(sys.argv[2])
deadline, last = time.monotonic() + 30, "no answer"
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("[clients] segsrv-gateway exited before serving")
    try:
        urllib.request.urlopen(url, timeout=2).close()   # 200: the backend is SERVING
        sys.exit(0)
    except urllib.error.HTTPError as exc:
        last = f"HTTP {exc.code}: {exc.read().decode()}"
    except OSError as exc:
        last = str(exc)
    time.sleep(0.2)
sys.exit(f"[clients] {url} is not 200 after 30 s (last: {last})")
PYEOF
    SEGSRV_GATEWAY_URL="$url" go test -count=1 -timeout 120s -v ./... 2>&1 | tee "$WORK/gateway-test.log"
    if grep -q -- '--- SKIP' "$WORK/gateway-test.log"; then
        echo "go test skipped the live gateway tests" >&2; return 1
    fi
    kill -0 "$pid" 2>/dev/null || { echo "segsrv-gateway died; its log:" >&2; cat "$WORK/gateway.log" >&2; return 1; }
}
step "HTTP/JSON gateway (clients/gateway: generate, build, serve, go test ./... over HTTP)" http_gateway

# --- 3. generic tools -------------------------------------------------------------------
generic_tools() {
    bash clients/go/install_tools.sh grpcurl grpc_health_probe
    local out

    out="$(grpcurl -plaintext "$SEGSRV_ADDR" list)"
    echo "$out"
    for service in segsrv.v1.SegmentationService grpc.health.v1.Health; do
        grep -qx "$service" <<<"$out" || { echo "grpcurl list: no $service" >&2; return 1; }
    done

    out="$(grpcurl -plaintext "$SEGSRV_ADDR" describe segsrv.v1.SegmentationService)"
    echo "$out" | head -n 4
    for rpc in "rpc Count ( .segsrv.v1.CountRequest ) returns ( .segsrv.v1.CountResponse );" \
               "rpc Relate ( .segsrv.v1.RelateRequest ) returns ( .segsrv.v1.RelateResponse );" \
               "rpc Predict ( .segsrv.v1.PredictRequest ) returns ( .segsrv.v1.PredictResponse );"; do
        grep -qF "$rpc" <<<"$out" || { echo "grpcurl describe: no '$rpc'" >&2; return 1; }
    done
    log "grpcurl describe: $(grep -c '^  rpc ' <<<"$out") rpcs"

    local body want
    body="$(fx 'json.dumps({"universe": f["universe"], "condition": f["counts"][0]["condition"]})')"
    want="$(fx 'f["counts"][0]["count"]')"
    out="$(grpcurl -plaintext -d "$body" "$SEGSRV_ADDR" segsrv.v1.SegmentationService/Count)"
    echo "$out"
    "$PY" -c 'import json, sys; r = json.loads(sys.argv[1]); n = int(r["count"])
sys.exit(0 if n == int(sys.argv[2]) else f"grpcurl Count: count {n}, want {sys.argv[2]}")' "$out" "$want"
    log "grpcurl Count $body -> $want (as the fixture)"

    # an unknown field is INVALID_ARGUMENT, with the field named
    if out="$(grpcurl -plaintext -d '{"condition": {"term": {"field": "regoin", "value": "x"}}}' \
            "$SEGSRV_ADDR" segsrv.v1.SegmentationService/Count 2>&1)"; then
        echo "grpcurl Count with an unknown field succeeded: $out" >&2; return 1
    fi
    grep -q "Code: InvalidArgument" <<<"$out" || { echo "grpcurl: unexpected error: $out" >&2; return 1; }
    log "grpcurl Count with an unknown field -> InvalidArgument"

    for service in "" segsrv.v1.SegmentationService; do
        out="$(grpc_health_probe -addr "$SEGSRV_ADDR" ${service:+-service "$service"} 2>&1)"
        echo "grpc_health_probe ${service:-(server)}: $out"
        grep -q "status: SERVING" <<<"$out"
    done
}
step "generic tools (grpcurl via reflection, grpc_health_probe)" generic_tools

# --- 4. other clients, when present -----------------------------------------------------
for script in clients/java/run_tests.sh clients/node/run_tests.sh clients/loadtest/ci_smoke.sh; do
    if [ -f "$script" ]; then
        step "$script" bash "$script"
    else
        echo
        log "=== $script: not present, skipped"
    fi
done

# --- summary ----------------------------------------------------------------------------
echo
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server died during the tests; its log:"
    tail -n 40 "$WORK/server.log" || true
    FAILED+=("server stayed up")
fi
log "summary: ${#PASSED[@]} steps passed, ${#FAILED[@]} failed, $((SECONDS - START)) s"
for name in "${FAILED[@]}"; do
    log "  FAILED: $name"
done
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "[clients] server log (tail):"
    tail -n 20 "$WORK/server.log" || true
    echo "clients: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
    exit 1
fi
log "all client checks passed"
echo "clients: ${#PASSED[@]} passed, 0 failed"
