.PHONY: setup demo test bench bench-soak
PY := .venv/bin/python
# every benchmark of bench/ but the soak (each writes its one current result to bench/results/NAME.json)
BENCHES := kernels build scale relate sparse_rows cooccurrence discover grpc_relate predict predict_real assign assign_propensity export client_retry contention thread_crossover
# bench/soak.py runs ~12 minutes (10 of soak); SOAK_ARGS="--duration 60" for a short run
SOAK_ARGS ?= --duration 600
setup:
	bash scripts/setup.sh --dev
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
bench:
	set -e; for b in $(BENCHES); do echo "[bench] $$b"; $(PY) bench/$$b.py; done
bench-soak:
	$(PY) bench/soak.py $(SOAK_ARGS)
