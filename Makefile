# Every target works on a fresh clone with only Python 3.11+, a C compiler and the package index.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h csrc/*.py)

.PHONY: run test bench lint clean install

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Editable install compiles csrc/ into callstream._mulaw; re-run whenever the C sources change.
$(STAMP): $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@

run: $(STAMP)
	$(BIN)/callstream serve

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,dev,bench]'
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks csrc

clean:
	rm -rf $(VENV) build dist src/*.egg-info src/callstream/_mulaw.* .pytest_cache .hypothesis .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
