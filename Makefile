# Each target sets itself up: `make demo` / `make test` work on a fresh clone.
# GPU users: `make setup TORCH=torch` (or install their own torch build first).
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup demo train analyze paper test test-fast bench lint clean-cache

# Installer: uv (pip-installed into $(VENV)/uv; resolves, downloads and unpacks in parallel), else
# pip. uv gets pip's find-links (pip.conf / PIP_FIND_LINKS: e.g. a local CPU torch
# wheel), so both install the same torch. Bytecode is compiled at install (uv --compile-bytecode; pip
# does it by default): where PYTHONDONTWRITEBYTECODE is set (containers, CI images) Python never
# writes .pyc, so without it every process recompiles torch/transformers/lightning on import
# (measured here: `import infalign.apps.train` 15.2 s without .pyc, 6.6 s with; +25 s once at set-up).
UV         := $(VENV)/uv/bin/uv
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell python3 -m pip config get global.find-links 2>/dev/null))
PIP_FLAGS  := -q --disable-pip-version-check
SETUP_PKGS  = "$(TORCH)" -e ".[dev,sweep]"
BENCH_PKGS  = "$(TORCH)" -e ".[dev,sweep,bench]"
# install PACKAGES...: into the venv, with uv if it can be had, else with pip
install = if test -x $(UV) || python3 -m pip install $(PIP_FLAGS) --target $(VENV)/uv uv; then \
	    $(UV) pip install -q --compile-bytecode --python $(PY) $(foreach l,$(FIND_LINKS),--find-links $(l)) pip $(1); \
	  else \
	    $(PY) -m ensurepip -q && $(PY) -m pip install $(PIP_FLAGS) $(1); \
	  fi

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv --without-pip $(VENV)
	$(call install,$(SETUP_PKGS))
	touch $(STAMP)

setup: $(STAMP)

demo: setup          ## the default job: infalign-train (toy world, best-of-4, exp transform)
	$(VENV)/bin/infalign-train $(ARGS)

analyze: setup       ## calibrated-space theory: win rate vs KL, best t, optimal frontier
	$(VENV)/bin/infalign-analyze $(ARGS)

paper: setup         ## every paper experiment + its report, timed (ARGS="--seeds 0" for one seed)
	$(VENV)/bin/infalign-paper $(ARGS)

# pytest-xdist: one worker per core (tests/conftest.py gives each worker its share of the threads);
# loadscope sends a module's tests to one worker, so a module-scoped fixture is built once, in the
# order conftest.py sorts them (longest first; xdist would sort by their number of tests).
# `make test PYTEST_ARGS=` runs in one process.
PYTEST_ARGS ?= -n auto --dist loadscope --no-loadscope-reorder

# Tests may write bytecode (empty = unset for Python): pytest then caches its assertion-rewritten test
# modules in tests/__pycache__ instead of rewriting all ~50 in every worker of every run (~3 CPU-s each).
test test-fast: export PYTHONDONTWRITEBYTECODE :=

test: setup          ## the whole suite (what CI runs)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup     ## skip the slow end-to-end runs
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

$(VENV)/.bench-stamp: $(STAMP)
	$(call install,$(BENCH_PKGS))
	touch $@

bench: $(VENV)/.bench-stamp   ## speed figures incl. ours vs TRL's RLOOTrainer (printed, not asserted)
	$(PY) -m infalign.bench $(ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests

clean-cache:         ## drop cached toy models / calibration tables
	rm -rf outputs/cache
