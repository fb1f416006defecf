# Two commands do everything on a fresh clone: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nimbus-installed

.PHONY: setup demo test test-fast up down status serve clean

$(STAMP): pyproject.toml package.json scripts/bootstrap.sh
	VENV=$(VENV) scripts/bootstrap.sh
	@touch $(STAMP)

setup: $(STAMP)  ## install everything (apt as root, .venv, npm)

demo: setup  ## the main job on the local stack
	$(VENV)/bin/nimbus demo

# WORKERS=0 (the default) runs the suite in one process. WORKERS=3 runs it on 3 pytest-xdist workers, one
# test file per worker at a time (--dist loadfile: a module's fixtures start once), the files with the most slow
# tests first (tests/conftest.py), each worker with its own stack on free ports: ~13 min instead of ~24 here, but
# on 2 cores the starved workers still fail an AutoML budget test or the demo's rollout now and then.
WORKERS ?= 0
test: setup  ## lint, then the whole suite (starts its own services)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: setup  ## unit tests only
	$(PY) -m pytest tests/unit

up: setup
	$(VENV)/bin/nimbus local up
down:
	$(VENV)/bin/nimbus local down
status:
	$(VENV)/bin/nimbus local status
serve: setup
	$(VENV)/bin/nimbus local serve

clean: down
	rm -rf .nimbus
