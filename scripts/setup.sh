#!/usr/bin/env bash
# Create .venv (once) and install segsrv in editable mode with test and bench extras.
# Compiles the Cython kernels. Idempotent; safe to run again after pulling.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "[setup] installing segsrv (editable; compiles kernels)"
.venv/bin/python -m pip install -q -e ".[test,bench]"
# pysubgroup (the anchor of supervised discover) pins numpy<2 in its metadata but runs on numpy 2; its
# other dependencies come with the test extra. --no-deps keeps pip from downgrading numpy under mlxtend.
.venv/bin/python -m pip install -q --no-deps "pysubgroup==0.9.0"
# ISLP ships the Caravan, OJ and Default customer tables of bench/predict_real.py (CSV files read from the
# package directory; the package is never imported). --no-deps: its dependencies pull torch with CUDA wheels
# and downgrade pandas and scipy, none of which the benchmark needs.
.venv/bin/python -m pip install -q --no-deps "ISLP==0.6.0"
.venv/bin/python -c "import segsrv._kernels as k; print('[setup] kernels ok: cpu path', k.cpu_path(), '| openmp', k.has_openmp())"
