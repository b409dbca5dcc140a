# Two commands on a fresh machine: `make dev` (install everything, start the stack) and
# `make test` (install everything, run every check). Both are idempotent and quick when re-run.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := redis-server slapd ldap-utils chromium
PYTEST_WORKERS ?= 4

.PHONY: help dev test check lint typecheck pytest system-deps node-deps install lock bench bench-all clean

help:
	@echo "make dev    install everything and start the stack (broker :8000, MCP server :8001)"
	@echo "make test   install everything and run ruff, mypy and the whole test suite"

system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	[ -x /usr/sbin/slapd ] || command -v slapd >/dev/null 2>&1 || missing="$$missing slapd ldap-utils"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing; run: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

VERIFIER := mcp_app/mcp-broker-verifier
$(STAMP): pyproject.toml constraints.txt $(VERIFIER)/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ./$(VERIFIER) -e '.[dev]'
	@touch $(STAMP)

# Test-only Node programs: a certified OpenID provider and the MCP TypeScript SDK client.
NODE_DIRS := tests/oidc-op tests/e2e/ts-client
node-deps:
	@for dir in $(NODE_DIRS); do \
	  if [ ! -d $$dir/node_modules ] || [ $$dir/package-lock.json -nt $$dir/node_modules ]; then \
	    npm ci --prefix $$dir --no-audit --no-fund --loglevel=error && touch $$dir/node_modules; \
	  fi; \
	done

# checkov pins packaging<24, which pytest 9 cannot share: it gets a virtual environment of its own.
CHECKOV_STAMP := $(VENV)/checkov/.installed
$(CHECKOV_STAMP): deploy/checkov-requirements.txt
	@test -x $(VENV)/checkov/bin/python || $(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install -q --disable-pip-version-check -r deploy/checkov-requirements.txt
	@touch $(CHECKOV_STAMP)

install: system-deps $(STAMP) $(CHECKOV_STAMP)

dev: install
	$(BIN)/mcp-broker dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: install node-deps
	$(BIN)/pytest -n $(PYTEST_WORKERS) -p no:cacheprovider

check: lint typecheck

test: install check pytest

# Refresh the constraints file after changing dependencies in pyproject.toml.
lock:
	rm -rf /tmp/mcp-broker-lock && $(PYTHON) -m venv /tmp/mcp-broker-lock
	/tmp/mcp-broker-lock/bin/pip install -q --upgrade pip && /tmp/mcp-broker-lock/bin/pip install -q ./$(VERIFIER) '.[dev]'
	/tmp/mcp-broker-lock/bin/pip freeze --exclude-editable | grep -v '^mcp-broker' > constraints.txt

# `make bench`: one table, ours beside a bare reference endpoint and node-oidc-provider (about 3
# minutes on an idle 2-core machine, the 50,000-refresh memory check included). `make bench-all`
# adds every other benchmark script.
bench: install node-deps
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq --no-install-recommends wrk >/dev/null; } || { echo "install wrk: sudo apt-get install wrk" >&2; exit 1; }
	$(BIN)/python bench/compare.py --memory

bench-all: bench
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/mcp_calls.py
	$(BIN)/python bench/refresh.py
	$(BIN)/python bench/login_timing.py
	$(BIN)/python bench/ldap_pool.py
	$(BIN)/python bench/outage_ldap.py
	$(BIN)/python bench/outage_upstream.py
	$(BIN)/python bench/revocation_resync.py

clean:
	rm -rf $(VENV) .state .mypy_cache .ruff_cache
