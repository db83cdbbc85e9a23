# The two commands a newcomer needs: `make run` and `make test`. Both build on `make setup`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: setup run test bench clean

# Creates .venv if missing, then installs or refreshes everything; safe to run again.
setup:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt "torch==2.13.0"
	$(PIP) install -q -c constraints.txt -e ".[models,test]"

# Watches ./inbox and writes transcripts to ./outbox, in the foreground (Ctrl-C stops it).
run: setup
	mkdir -p inbox outbox
	$(BIN)/whisper-daemon run --inbox inbox --outbox outbox

# ruff and import-linter first: a crossed layer (README, "What it does") fails the build in seconds.
test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
