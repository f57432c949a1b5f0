#!/usr/bin/env bash
# The main job: set up, generate and build the demo shop (once), serve it over gRPC,
# show example calls through the CLI and the Python client, discover the shop's segments,
# publish them as a catalog and use them (Assign, Export).
#   DEMO_CUSTOMERS  shop size (default 100000)      DEMO_DIR   where data and snapshots go (default ./demo)
#   DEMO_PORT       server port (default 50051)     DEMO_EXIT=1  stop the server after the examples
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh   # runtime dependencies only; skips pip when this checkout is already installed
N=${DEMO_CUSTOMERS:-100000}
DIR=${DEMO_DIR:-demo}
PORT=${DEMO_PORT:-50051}
SEG=.venv/bin/segsrv
PY=.venv/bin/python
if [ ! -f "$DIR/data-$N/spec.toml" ]; then
    $SEG demo-data --customers "$N" --out "$DIR/data-$N"
fi
ROOT="$DIR/snapshots-$N"
if [ ! -f "$ROOT/demo/CURRENT" ]; then
    $SEG build "$DIR/data-$N/spec.toml" --out "$ROOT"
fi

echo
echo "== starting: segsrv serve --snapshots $ROOT --port $PORT"
$SEG serve --snapshots "$ROOT" --host 127.0.0.1 --port "$PORT" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
$PY - "$PORT" <<'PYEOF'
import sys, time
from segsrv.client import SegsrvClient, SegsrvRpcError
deadline = time.time() + 60
while True:
    try:
        with SegsrvClient(f"127.0.0.1:{sys.argv[1]}", timeout=2) as c:
            if c.health() == "SERVING":
                break
    except SegsrvRpcError:
        pass
    if time.time() > deadline:
        sys.exit("server did not become healthy within 60 s")
    time.sleep(0.3)
PYEOF
ADDR="127.0.0.1:$PORT"

echo
echo "== seed 000 query: where do grain-free dog dry-food order lines over-index?"
Q='{"from": "order_lines", "where": {"product.category": "dog-dryfood", "product.tag": "grain-free"}, "relate": ["customer.region", "customer.lifetime_value_band"], "select": ["$lift", "$p", "$support", "customer.region"], "limit": 10}'
echo "\$ segsrv query relate --addr $ADDR --json '$Q'"
$SEG query relate --addr "$ADDR" --json "$Q"

echo
echo "== what else do dog dry-food buyers buy? (customers universe, reverse links)"
Q='{"from": "customers", "where": {"orders.lines.product.category": "dog-dryfood"}, "relate": ["orders.lines.product.category"], "select": ["$value", "$lift", "$p", "$support", "$p_value"], "limit": 5}'
echo "\$ segsrv query relate --addr $ADDR --json '$Q'"
$SEG query relate --addr "$ADDR" --json "$Q"

echo
echo "== count: grain-free filterers who bought premium brands"
Q='{"from": "customers", "where": {"events.filter": "grain-free", "orders.lines.product.brand_tier": "premium"}}'
echo "\$ segsrv query count --addr $ADDR --json '$Q'"
$SEG query count --addr "$ADDR" --json "$Q"

echo
echo "== predict churn for a customer profile within the islands region, with its explanation"
Q='{"from": "customers", "segment": {"region": "islands"}, "target": "churned", "evidence": {"newsletter": "false", "lifetime_value_band": "low", "orders.subscription": "false"}}'
echo "# the default method (logistic) fits a model within the segment on its first call, its penalty"
echo "# cross-validated (seconds: docs/predict.md); a model declared in the build spec ([models], docs/spec.md)"
echo "# is fitted by the build instead. The second call reuses the fitted model."
echo "\$ segsrv query predict --addr $ADDR --timeout 300 --json '$Q'"
T0=$(date +%s.%N)
$SEG query predict --addr "$ADDR" --timeout 300 --json "$Q"
T1=$(date +%s.%N)
$SEG query predict --addr "$ADDR" --json "$Q" >/dev/null
T2=$(date +%s.%N)
python3 -c "import sys; a, b, c = map(float, sys.argv[1:]); print(f'first call {b - a:.2f} s (fits the model), second call {c - b:.2f} s (the CLI start included)')" "$T0" "$T1" "$T2"

echo
echo "== the same from Python (segsrv.client):"
cat <<PYEOF
from segsrv.client import SegsrvClient
with SegsrvClient("$ADDR") as client:
    answer = client.relate({"from": "customers", "where": {"churned": True}, "min_support": 100,
                            "select": ["\$field", "\$value", "\$lift", "\$support"], "limit": 5})
    for hit in answer["hits"]:
        print(hit)
PYEOF
$PY - "$ADDR" <<'PYEOF'
import sys
from segsrv.client import SegsrvClient
with SegsrvClient(sys.argv[1]) as client:
    answer = client.relate({"from": "customers", "where": {"churned": True}, "min_support": 100,
                            "select": ["$field", "$value", "$lift", "$support"], "limit": 5})
    for hit in answer["hits"]:
        print(hit)
PYEOF

echo
echo "== discover: which segments exist? (conjunctions beyond what their parts predict; 5 personas)"
CATALOG="$DIR/segments-$N.toml"
echo "\$ segsrv discover --addr $ADDR --from customers --k 5 --format table --save $CATALOG"
$SEG discover --addr "$ADDR" --from customers --k 5 --format table --save "$CATALOG" --timeout 120

echo
echo "== discover with a target: where is churn high, where is it low?"
echo "\$ segsrv discover --addr $ADDR --from customers --target churned=true --limit 10 --describe 1 --format table"
$SEG discover --addr "$ADDR" --from customers --target churned=true --limit 10 --describe 1 --format table --timeout 120

echo
echo "== publish the discovered catalog (a new version; the server swaps to it)"
echo "\$ segsrv segments apply $ROOT/demo $CATALOG"
$SEG segments apply "$ROOT/demo" "$CATALOG"   # progress: one line per segment propensity model fitted (docs/assign.md)
$PY - "$ADDR" "$CATALOG" <<'PYEOF'
import sys, time, tomllib
from segsrv.client import SegsrvClient
names = set(tomllib.load(open(sys.argv[2], "rb"))["segments"])
deadline = time.time() + 30


def everyone_has_it() -> bool:
    # each worker reloads on its own (one per CPU by default): ask over fresh connections, which the
    # kernel spreads over the workers
    for _ in range(8):
        with SegsrvClient(sys.argv[1]) as client:
            if not names <= {s["name"] for s in client.list_segments("customers")}:
                return False
    return True


while not everyone_has_it():
    if time.time() > deadline:
        sys.exit("the server did not pick up the new catalog within 30 s")
    time.sleep(0.3)
PYEOF
echo "\$ segsrv segments list --addr $ADDR --universe customers"
$SEG segments list --addr "$ADDR" --universe customers

echo
echo "== assign and export on the discovered segments"
FIRST="$($PY -c 'import sys, tomllib; c = tomllib.load(open(sys.argv[1], "rb"))["segments"]; print(max(c, key=lambda n: c[n]["priority"]))' "$CATALOG")"
Q="{\"from\": \"customers\", \"where\": {\"\$segment\": \"$FIRST\"}}"
echo "\$ segsrv export --addr $ADDR --json '$Q' --out $DIR/$FIRST.csv"
$SEG export --addr "$ADDR" --json "$Q" --out "$DIR/$FIRST.csv"
ID="$(sed -n 2p "$DIR/$FIRST.csv" | tr -d '\r')"
echo "\$ segsrv assign --addr $ADDR --id $ID"
$SEG assign --addr "$ADDR" --id "$ID"

if [ "${DEMO_EXIT:-0}" = "1" ]; then
    echo; echo "== DEMO_EXIT=1: stopping the server"
    exit 0
fi
echo
echo "== serving $ROOT on $ADDR; Ctrl-C to stop"
wait $SERVER
