# pgmigrator: `make demo` runs a live migration between throwaway clusters; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench clean

$(STAMP): pyproject.toml setup.py src/pgmigrator/protocol/_speedups.c src/pgmigrator/protocol/_speedups_pump.c src/pgmigrator/protocol/_speedups_runs.c src/pgmigrator/protocol/_speedups.h src/pgmigrator/pipeline/_copypump.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	@scripts/ensure-postgres
	$(BIN)/pgmigrator demo

test: $(STAMP)
	@scripts/ensure-postgres
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python bench/clone.py

clean:
	rm -rf $(VENV) .demo build *.egg-info
