# narset-jax: every target sets up .venv itself, so each works alone on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.stamp-run
STAMP_DEV := $(VENV)/.stamp-dev
OUT ?= out/run
NEURAL_OUT ?= out/neural

.PHONY: run test bench lint figures clean neural

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
	$(BIN)/python -m narset_jax.cli simulate --scenario crisis --regions 3000 --steps 150 \
	  --seed 0 --out $(OUT)
	@echo "outputs in $(OUT)/: decisions/ (Parquet decision log), manifest.json, summary.json, plots/"
	@echo "check the log bit for bit with: $(BIN)/narset replay $(OUT)"

# The neural ecology (docs/neural.md): Narset on 256 regions, each a small network in real
# training on MNIST-1D, for 100 windows of the crisis scenario (regions trained in blocks of
# 8, the one setting `narset simulate --ecology neural` cannot set).
neural: $(STAMP_RUN)
	$(BIN)/python examples/neural_demo.py --scenario crisis --regions 256 --windows 100 \
	  --seed 0 --out $(NEURAL_OUT)

test: $(STAMP_DEV)
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: $(STAMP_DEV)
	$(BIN)/python -m benchmarks.projection --out benchmarks/results/projection.json

lint: $(STAMP_DEV)
	$(BIN)/ruff check narset_jax sims tests benchmarks examples
	$(BIN)/lint-imports

figures: $(STAMP_RUN)
	$(BIN)/python -m narset_jax.plots.budget --out docs/figures/feasible_set.png
	# Phase diagrams (docs/phase.md): grids and summaries in $(OUT)/phase, images in docs/figures.
	$(BIN)/narset phase --x beta:0.02:1:16 --y gap:0:0.5:16 \
	  --scenario crisis --regions 256 --steps 150 --seeds 3 \
	  --compare k_enter=1,k_exit=1 --compare k_enter=2,k_exit=2 --compare k_enter=1,k_exit=3 \
	  --out $(OUT)/phase --figures docs/figures --name phase_beta_gap \
	  --json $(OUT)/phase/phase_beta_gap.summary.json
	$(BIN)/narset phase --x alpha:0.25:8:16 --y noise:0:0.5:16 \
	  --scenario crisis --regions 256 --steps 150 --seeds 3 \
	  --set k_enter=1 --set k_exit=1 --set beta=0.5 \
	  --compare beta=0.3 --compare beta=0.7 \
	  --compare theta_enter=0.45,theta_exit=0.1 --compare theta_enter=0.35,theta_exit=0.2 \
	  --compare k_enter=3,k_exit=5,beta=0.3 \
	  --out $(OUT)/phase --figures docs/figures --name phase_alpha_noise \
	  --json $(OUT)/phase/phase_alpha_noise.summary.json

clean:
	rm -rf $(VENV) out .pytest_cache
