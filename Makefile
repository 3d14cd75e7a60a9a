# narset-jax: every target sets up .venv itself, so each works alone on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.stamp-run
STAMP_DEV := $(VENV)/.stamp-dev
OUT ?= out/run

.PHONY: run test bench lint figures clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@ $(STAMP_RUN)

run: $(STAMP_RUN)
	$(BIN)/python -m narset_jax.plots.budget --out $(OUT)/feasible_set.png
	@echo "outputs in $(OUT)/" 

test: $(STAMP_DEV)
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: $(STAMP_DEV)
	$(BIN)/python benchmarks/projection.py --out benchmarks/results/projection.json

lint: $(STAMP_DEV)
	$(BIN)/ruff check narset_jax sims tests benchmarks examples

figures: $(STAMP_RUN)
	$(BIN)/python -m narset_jax.plots.budget --out docs/figures/feasible_set.png

clean:
	rm -rf $(VENV) out .pytest_cache
