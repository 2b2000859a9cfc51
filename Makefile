# vqacap: `make train` trains the captioner on the embedded Shapes dataset, `make test` runs the tests.
# Both create .venv on first use and (re)install the package with its dev extra when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: help train test test-all sweep bench pixels docs lint format clean

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
