# medsec: `make demo` and `make test` install everything into .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medsec-installed
# the suite runs in WORKERS processes (pytest-xdist) of one intra-op thread each
WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest

.PHONY: install demo test test-fast test-2threads lint doctest bench checkpoints clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medsec demo

# everything: lint, types, the docstring examples, then unit, contract, cross-check and effect
# tests, shuffled, in $(WORKERS) processes
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(PYTEST) -q -p no:randomly -p no:xdist --doctest-modules src/medsec
	$(PYTEST) -q -n $(WORKERS) --dist loadfile

# the edit-run loop: unit and contract tests only
test-fast: $(STAMP)
	$(PYTEST) -q -n $(WORKERS) --dist loadfile --tiers unit,contract

# the whole suite again in one process with two intra-op threads (CI runs it after `make test`)
test-2threads: $(STAMP)
	MEDSEC_TEST_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(PYTEST) -q -p no:xdist

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

doctest: $(STAMP)
	$(PYTEST) -q -p no:randomly -p no:xdist --doctest-modules src/medsec

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pgd.py

# retrain every recipe whose checkpoint ships in src/medsec/recipes/checkpoints (a few minutes)
checkpoints: $(STAMP)
	$(BIN)/python -m medsec.zoo

clean:
	rm -rf runs .pytest_cache .medsec-cache
