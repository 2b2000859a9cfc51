# vqacap: `make train` trains the captioner on the embedded Shapes dataset, `make test` runs the tests.
# Both create .venv on first use and (re)install the package with its dev extra when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: help train test test-all sweep bench pixels demo demo-models docs lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install vqacap with its dev extra

train: $(STAMP)  ## train + test an experiment: make train ARGS="experiment=vqa_shapes trainer.max_epochs=3"
	$(BIN)/python -m vqacap.train $(ARGS)

test: $(STAMP)  ## the fast test suite (what CI runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)  ## every test, the slow end-to-end runs included
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

sweep: $(STAMP)  ## small Hydra multirun on Shapes (lr x attention size), then its jobs by val/CIDEr
	$(BIN)/python -m vqacap.train experiment=sweep_shapes $(ARGS)
	$(BIN)/python -m vqacap.sweep $${VQACAP_ROOT:-.}/outputs/train/multiruns/sweep_shapes --sort val/CIDEr

pixels: $(STAMP)  ## pixels to words: detector -> extract -> caption/VQA per feature kind -> table (ARGS="--data shapes_cluttered")
	$(BIN)/python -m vqacap.pixels $(ARGS)

# `make demo`: models trained on a fifth of Shapes (vqacap.pixels --data shapes_demo), once; then the local page.
DEMO_RUNS  := $${VQACAP_ROOT:-.}/outputs/train/runs
DEMO_TRAIN := $(BIN)/python -m vqacap.pixels --data shapes_demo --features detected --stages detector extract caption vqa
DEMO_ARGS  ?=

demo-models: $(STAMP)  ## the demo's detector, captioner and VQA model on a fifth of Shapes (~3 min on 2 cores)
	$(DEMO_TRAIN)

demo: $(STAMP)  ## the local demo page on http://127.0.0.1:8000/ (trains its models first if there are none)
	@ls $(DEMO_RUNS)/vqa_shapes_detected-shapes_demo/*/test_metrics.json >/dev/null 2>&1 \
		&& ls $(DEMO_RUNS)/caption_shapes_detected-shapes_demo/*/test_metrics.json >/dev/null 2>&1 \
		|| $(DEMO_TRAIN)
	$(BIN)/vqacap demo --detector latest:detector-shapes_demo \
		--captioner latest:caption_shapes_detected-shapes_demo --vqa latest:vqa_shapes_detected-shapes_demo \
		--examples $${VQACAP_ROOT:-.}/data/shapes_demo/images/test $(DEMO_ARGS)

bench: $(STAMP)  ## benchmarks: tables on stdout, JSON under outputs/bench/
	$(BIN)/python -m vqacap.bench $(ARGS)

docs: $(STAMP)  ## build the docs site into site/ (offline; strict: a broken link or page fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check vqacap tests docs/hooks
	$(BIN)/ruff format --check vqacap tests docs/hooks

format: $(STAMP)  ## ruff format and autofix
	$(BIN)/ruff format vqacap tests
	$(BIN)/ruff check --fix vqacap tests

clean:  ## remove caches and generated data (keeps .venv and outputs/)
	rm -rf data site .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
