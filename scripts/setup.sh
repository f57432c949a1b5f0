#!/usr/bin/env bash
# Create .venv (once) and install segsrv in editable mode; compiles the Cython kernels and generates the
# protobuf code. Idempotent; safe to run again after pulling.
#   bash scripts/setup.sh          what the demo needs: segsrv and its runtime dependencies only
#   bash scripts/setup.sh --dev    also the test, bench and ray extras (scripts/test.sh, make bench)
# pip is skipped when nothing that affects the install changed since the last run: .venv/.segsrv-setup holds
# a hash of pyproject.toml, setup.py, kernels/, proto/ and the Python version, and which profile was installed
# (--dev covers the runtime one). SEGSRV_SETUP_FORCE=1 installs anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PROFILE=runtime
case "${1:-}" in
    "") ;;
    --dev) PROFILE=dev ;;
    *) echo "setup.sh: unknown argument '$1' (expected nothing, or --dev for the test, bench and ray extras)" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
STAMP=.venv/.segsrv-setup
inputs_hash() {
    # file names are part of the hash: an added or removed kernel or proto file rebuilds too; the .c files
    # Cython writes into kernels/ are the build's output, not its input
    { .venv/bin/python --version; sha256sum pyproject.toml setup.py
      find kernels proto -type f ! -name '*.c' ! -name '*.so' ! -name '*.html' | LC_ALL=C sort | xargs sha256sum; } \
        | sha256sum | cut -d' ' -f1
}
HASH=$(inputs_hash)
installed_ok() {
    # the stamp says so, and the build's products are still there (a `git clean` removes them)
    [ -f "$STAMP" ] && [ "$(sed -n 1p "$STAMP")" = "$HASH" ] || return 1
    { [ "$PROFILE" = runtime ] || [ "$(sed -n 2p "$STAMP")" = dev ]; } || return 1
    .venv/bin/python -c "import segsrv._kernels, segsrv.v1.segsrv_pb2" 2>/dev/null
}
if [ "${SEGSRV_SETUP_FORCE:-0}" != "1" ] && installed_ok; then
    echo "[setup] up to date ($(sed -n 2p "$STAMP") install of this checkout's pyproject.toml, setup.py, kernels/, proto/): pip skipped"
    exit 0
fi
rm -f "$STAMP"
.venv/bin/python -m pip install -q --upgrade pip
if [ "$PROFILE" = runtime ]; then
    echo "[setup] installing segsrv (editable, runtime dependencies; compiles kernels)"
    .venv/bin/python -m pip install -q -e .
else
    echo "[setup] installing segsrv (editable, with the test, bench and ray extras; compiles kernels)"
    # ray: tests/ray runs the Ray build and the Ray Serve router on a local Ray instance
    .venv/bin/python -m pip install -q -e ".[test,bench,ray]"
    # pysubgroup (the anchor of supervised discover) pins numpy<2 in its metadata but runs on numpy 2; its
    # other dependencies come with the test extra. --no-deps keeps pip from downgrading numpy under mlxtend.
    .venv/bin/python -m pip install -q --no-deps "pysubgroup==0.9.0"
    # ISLP ships the Caravan, OJ and Default customer tables of bench/predict_real.py (CSV files read from the
    # package directory; the package is never imported). --no-deps: its dependencies pull torch with CUDA wheels
    # and downgrade pandas and scipy, none of which the benchmark needs.
    .venv/bin/python -m pip install -q --no-deps "ISLP==0.6.0"
fi
.venv/bin/python -c "import segsrv._kernels as k; print('[setup] kernels ok: cpu path', k.cpu_path(), '| openmp', k.has_openmp())"
printf '%s\n%s\n' "$HASH" "$PROFILE" > "$STAMP"
