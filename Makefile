# l3hostd: `make demo` (the namespace lab) and `make test` (the whole suite); both as root.
PY := .venv/bin/python

.PHONY: setup demo test unit lint bench clean

setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m l3hostd.cli demo

test: setup
	$(PY) -m pytest -q tests
	.venv/bin/ruff check l3hostd tests bench
	.venv/bin/mypy

unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	.venv/bin/ruff check l3hostd tests bench
	.venv/bin/mypy

# The side-by-side suite, l3hostd vs BIRD 2 (bench/README.md); e.g. make bench BENCH_ARGS=--quick
BENCH_ARGS ?=
bench: setup
	@$(PY) -c 'import matplotlib' 2>/dev/null || .venv/bin/pip install -q -e '.[bench]'
	$(PY) -m bench all $(BENCH_ARGS)

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
