# The README's two commands. `make reproduce`: set up and run the main job; `make test`: set up and test.
# A virtual environment in .venv with the core, the research extra (repro) and the dev tools,
# pinned by constraints.txt (CPU torch where the machine's index provides it; set PIP_ARGS to
# point pip at another torch index if needed).
PYTHON ?= python3
VENV ?= .venv
PIP_ARGS ?=
BIN := $(VENV)/bin

PROFILE ?= quick
OUT ?= results

.PHONY: setup test reproduce lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_ARGS) -c constraints.txt -e '.[repro,dev]'
	touch $@

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

reproduce: setup
	$(BIN)/muonflow reproduce --profile $(PROFILE) --out $(OUT)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
