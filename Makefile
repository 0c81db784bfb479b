# The two commands of the README: `make run` (the whole stack locally) and `make test` (everything CI runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/layers/common:$(CURDIR)
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt layers/common/requirements.txt | sha1sum | cut -c1-12)

.PHONY: setup run test lint typecheck sam-check bench audit chaos migrate seed openapi clean

$(STAMP): requirements-dev.txt layers/common/requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)
	@bash scripts/ensure-mysql.sh

migrate: setup
	$(PY) -m escrow.migrate

seed: migrate
	$(PY) -m escrow.seed_demo

run: setup
	$(PY) -m local.run

lint: $(STAMP)
	$(VENV)/bin/ruff check layers functions local toss_sandbox tests bench
	$(VENV)/bin/ruff format --check layers functions local toss_sandbox tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy layers/common/escrow

test: setup lint typecheck
	bash scripts/sam-check.sh
	$(PY) -m pytest -n 2 tests

# openapi.json is generated from the functions' Powertools resolvers; a test fails when it is stale.
openapi: $(STAMP)
	$(PY) -m local.openapi > openapi.json

bench: setup
	$(PY) -m bench

audit: setup
	$(PY) -m escrow.audit $(ARGS)

chaos: setup
	$(PY) -m bench.chaos $(ARGS)

clean:
	rm -rf $(VENV) .aws-sam
