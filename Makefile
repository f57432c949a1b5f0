.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
bench:
	.venv/bin/python bench/kernels.py && .venv/bin/python bench/build.py && .venv/bin/python bench/relate.py
