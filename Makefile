# Each target sets itself up: `make demo` / `make test` work on a fresh clone.
# GPU users: `make setup TORCH=torch` (or install their own torch build first).
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup demo train analyze test test-fast bench lint clean-cache

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,sweep]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup          ## the default job: infalign-train (toy world, best-of-4, exp transform)
	$(VENV)/bin/infalign-train $(ARGS)

analyze: setup       ## calibrated-space theory: win rate vs KL, best t, optimal frontier
	$(VENV)/bin/infalign-analyze $(ARGS)

test: setup          ## the whole suite (what CI runs)
	$(PY) -m pytest -q

test-fast: setup     ## skip the slow end-to-end runs
	$(PY) -m pytest -q -m "not slow"

$(VENV)/.bench-stamp: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)" -e ".[dev,sweep,bench]"
	touch $@

bench: $(VENV)/.bench-stamp   ## speed figures incl. ours vs TRL's RLOOTrainer (printed, not asserted)
	$(PY) -m infalign.bench $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests

clean-cache:         ## drop cached toy models / calibration tables
	rm -rf outputs/cache
