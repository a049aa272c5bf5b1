# Live Support — the two commands a person needs: `make demo` and `make test`.
# Both set up what they need on a fresh machine: a virtual environment with the
# project installed, the few system libraries Qt needs and coturn (the relay tests
# start a real TURN server) and redis-server and PostgreSQL (the multi-node test starts
# its own), installed when we are root, otherwise the exact command to run is printed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= build/demo

.PHONY: all setup system-libs test lint typecheck imports pytest demo demo-headless bench bench-quick reliability load clean

all: test

setup: $(STAMP) system-libs

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

system-libs: $(STAMP)
	@bash scripts/ensure_system_libs.sh $(BIN)/python
	@bash scripts/ensure_coturn.sh
	@bash scripts/ensure_iproute2.sh
	@bash scripts/ensure_redis_postgres.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

imports: setup
	$(BIN)/lint-imports --no-cache

pytest: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck imports pytest

# With a display the windows open; without one the scripted session runs headless
# and writes a JSON report and screenshots of the device's windows.
demo: setup
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then \
		$(BIN)/livesupport demo --out $(DEMO_DIR); \
	else \
		$(BIN)/livesupport demo --headless --out $(DEMO_DIR) --report $(DEMO_DIR)/report.json; \
	fi

demo-headless: setup
	$(BIN)/livesupport demo --headless --out $(DEMO_DIR) --report $(DEMO_DIR)/report.json

# Benchmarks (not part of `make test`): encoder settings, then calls end to end, then
# the console's inventory with 5,000 devices (its window offscreen).
# Each prints a table beside its floor and writes JSON under build/bench/.
bench: setup
	$(BIN)/python -m bench.encoders
	$(BIN)/python -m bench.calls
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m bench.inventory

# Every fault and attack of bench/faults/ measured for real (a few minutes, as root for
# the path-loss fault); writes docs/reliability.md and build/bench/reliability.json.
reliability: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m bench.reliability

# Issue 7's load test: one server process, 18,000 simulated devices and 50 consoles in
# worker processes (several minutes), then three nodes over Redis and PostgreSQL with
# 3,000 devices (about 2 minutes more; `--nodes-devices 0` leaves them out);
# `LOAD_ARGS="--devices 2000"` for a smaller run.
# Prints each figure beside its target; JSON in build/bench/load.json.
load: setup
	$(BIN)/python -m bench.load $(LOAD_ARGS)

bench-quick: setup
	$(BIN)/python -m bench.encoders --quick
	$(BIN)/python -m bench.calls --quick
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m bench.inventory --live 200 --loads 1

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
