# The two commands: `make demo` runs smtpgate on an embedded control plane; `make test`
# passes the whole suite. Both set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-unit lint demo setup controlplane crds lua strace haproxy bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

controlplane:
	@bash hack/controlplane/build.sh >/dev/null

# Lua 5.1 runs the Argo CD health checks' tests (deploy/argocd/health.lua); Debian's package.
lua:
	@command -v lua5.1 >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends lua5.1 >/dev/null)

# strace holds the spool's sync, rename, sync order before 250 to account
# (tests/receiver/test_durability.py, skipped with the reason where it is missing).
strace:
	@command -v strace >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends strace >/dev/null)

# HAProxy in front of a receiver with send-proxy and send-proxy-v2
# (tests/receiver/test_proxy_haproxy.py, skipped with the reason where it is missing).
haproxy:
	@command -v haproxy >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy >/dev/null)

crds: $(STAMP)
	$(BIN)/python hack/gen_crds.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict connectors
	$(BIN)/python hack/gen_crds.py --check
	$(BIN)/python hack/gen_argocd.py --check

test: $(STAMP) controlplane lua strace haproxy lint
	$(BIN)/pytest

test-unit: $(STAMP) lua strace haproxy
	$(BIN)/pytest -m "not controlplane"

demo: $(STAMP) controlplane
	$(BIN)/python hack/demo.py

bench: $(STAMP)
	$(BIN)/python bench/receiver_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
