#!/usr/bin/env bash
# The main job: set up, generate the demo shop, build its snapshot, run example queries.
# DEMO_CUSTOMERS (default 100000) sets the shop size; DEMO_DIR (default ./demo) where it goes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
N=${DEMO_CUSTOMERS:-100000}
DIR=${DEMO_DIR:-demo}
SEG=.venv/bin/segsrv
if [ ! -f "$DIR/data-$N/spec.toml" ]; then
    $SEG demo-data --customers "$N" --out "$DIR/data-$N"
fi
if [ ! -f "$DIR/snapshots-$N/demo/CURRENT" ]; then
    $SEG build "$DIR/data-$N/spec.toml" --out "$DIR/snapshots-$N"
fi
ROOT="$DIR/snapshots-$N"
echo
echo "== snapshot"
$SEG info "$ROOT" | head -40
echo
echo "== seed 000 query: where do grain-free dog dry-food order lines over-index?"
Q='{"from": "order_lines", "where": {"product.category": "dog-dryfood", "product.tag": "grain-free"}, "relate": ["customer.region", "customer.lifetime_value_band"], "select": ["$lift", "$p", "$support", "customer.region"], "limit": 10}'
echo "segsrv query relate --local $ROOT --json '$Q'"
$SEG query relate --local "$ROOT" --json "$Q"
echo
echo "== what else do dog dry-food buyers buy? (customers universe, reverse links)"
Q='{"from": "customers", "where": {"orders.lines.product.category": "dog-dryfood"}, "relate": ["orders.lines.product.category"], "select": ["$value", "$lift", "$p", "$support", "$p_value"], "limit": 5}'
echo "segsrv query relate --local $ROOT --json '$Q'"
$SEG query relate --local "$ROOT" --json "$Q"
echo
echo "== which attributes over-index among churned customers?"
Q='{"from": "customers", "where": {"churned": true}, "select": ["$field", "$value", "$lift", "$support", "$q_value"], "limit": 8}'
echo "segsrv query relate --local $ROOT --json '$Q'"
$SEG query relate --local "$ROOT" --json "$Q"
echo
echo "== count: grain-free filterers who bought premium brands"
Q='{"from": "customers", "where": {"events.filter": "grain-free", "orders.lines.product.brand_tier": "premium"}}'
$SEG query count --local "$ROOT" --json "$Q"
