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

bench: setup
	$(PY) -m bench.endpoints
	$(PY) -m bench.bgp

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
