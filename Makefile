# Every target works on a fresh clone with only Python 3.11+, a C compiler and the package index.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h csrc/*.py)

.PHONY: run test bench lint clean install installed fleet

# The set-up runs under a lock (.venv.lock, beside the venv), and inside the lock a second make decides
# again whether anything is out of date: `make run` and `make test` started at once on a fresh clone
# build the venv once, the second waiting for the first. A plain Python lock (fcntl), not flock(1),
# so that it works wherever Python does.
LOCKED := $(PYTHON) -c 'import fcntl, subprocess, sys; lock = open(sys.argv[1], "a"); fcntl.flock(lock, fcntl.LOCK_EX); sys.exit(subprocess.call(sys.argv[2:]))' $(VENV).lock

install:
	@$(LOCKED) $(MAKE) --no-print-directory installed

installed: $(STAMP)

# Editable install compiles csrc/ into callstream._mulaw; re-run whenever the C sources change.
$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@

run: install
	$(BIN)/callstream serve

# Two pytest workers (pytest-xdist): most of the suite waits on real servers, real time and child
# processes, so two workers nearly halve the wall time even on 2 cores. --dist loadscope keeps each
# module's test functions in one worker, in order, as a plain run has it (test_hostile.py's module-wide
# server and its last test's checks of it); a test class goes whole to one worker. TEST_WORKERS=0 runs
# in one process.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope

# The fleet on loopback (Caddy, three nodes, S3 store, NATS, webhook), a few calls, where each went; then stops.
fleet: install
	$(BIN)/python -m callstream.fleet

bench: install
	$(BIN)/python -m pip install --quiet -e '.[test,dev,bench]'
	$(BIN)/python benchmarks/run_all.py

lint: install
	$(BIN)/ruff check src tests benchmarks csrc

clean:
	rm -rf $(VENV) $(VENV).lock build dist src/*.egg-info src/callstream/_mulaw.* .pytest_cache .hypothesis .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
