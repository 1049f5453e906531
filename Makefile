# The two commands: `make demo` runs smtpgate on an embedded control plane; `make test`
# passes the whole suite. Both set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-unit lint demo setup controlplane node node-deps crds bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

controlplane:
	@bash hack/controlplane/build.sh >/dev/null

# The node for the tests marked `node` (root): its binaries, and the Debian packages it runs.
node:
	@bash hack/node/build.sh >/dev/null

node-deps:
	apt-get install -y --no-install-recommends containerd runc containernetworking-plugins \
	  iptables conntrack iproute2 buildah debootstrap busybox-static

crds: $(STAMP)
	$(BIN)/python hack/gen_crds.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict connectors
	$(BIN)/python hack/gen_crds.py --check

test: $(STAMP) controlplane lint
	$(BIN)/pytest

test-unit: $(STAMP)
	$(BIN)/pytest -m "not controlplane"

demo: $(STAMP) controlplane
	$(BIN)/python hack/demo.py

bench: $(STAMP)
	$(BIN)/python bench/receiver_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
