# The two commands: `make demo` runs smtpgate on an embedded control plane; `make test`
# passes the whole suite. Both set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-unit lint demo setup debs controlplane crds bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests use: strace (the spool's sync-rename-sync order before 250,
# tests/receiver/test_durability.py; skipped, with the reason, where it is missing).
DEBS := strace
debs:
	@missing=""; for pkg in $(DEBS); do command -v $$pkg >/dev/null || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  (apt-get update -qq && apt-get install -y -qq $$missing >/dev/null) \
	    || echo "could not install$$missing; the tests that need it are skipped" >&2; \
	fi

controlplane:
	@bash hack/controlplane/build.sh >/dev/null

crds: $(STAMP)
	$(BIN)/python hack/gen_crds.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict connectors
	$(BIN)/python hack/gen_crds.py --check

test: $(STAMP) debs controlplane lint
	$(BIN)/pytest

test-unit: $(STAMP) debs
	$(BIN)/pytest -m "not controlplane"

demo: $(STAMP) controlplane
	$(BIN)/python hack/demo.py

bench: $(STAMP)
	$(BIN)/python bench/receiver_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
