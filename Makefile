# The two commands of the README: `make run` (the whole stack locally) and `make test` (everything CI runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/layers/common:$(CURDIR)
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt layers/common/requirements.txt | sha1sum | cut -c1-12)

.PHONY: setup run test lint typecheck sam-check sam-local bench audit chaos migrate seed clean

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
	$(VENV)/bin/ruff check layers functions local toss_sandbox tests bench scripts
	$(VENV)/bin/ruff format --check layers functions local toss_sandbox tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy layers/common/escrow

# The real `sam local invoke` / `sam local start-api` on every event and the README walkthrough (needs Docker;
# scripts/sam-local-engine.sh installs and starts it as root). README: "Running locally with SAM".
sam-local: setup
	$(PY) scripts/sam_local.py

# `make sam-local` runs when Docker can run here; otherwise one line says why not (exit code 3 of `check`).
test: setup lint typecheck
	bash scripts/sam-check.sh
	$(PY) -m pytest -n 2 tests
	@bash scripts/sam-local-engine.sh check; status=$$?; \
	  if [ $$status -eq 0 ]; then $(PY) scripts/sam_local.py; elif [ $$status -ne 3 ]; then exit $$status; fi

bench: setup
	$(PY) -m bench

audit: setup
	$(PY) -m escrow.audit $(ARGS)

chaos: setup
	$(PY) -m bench.chaos $(ARGS)

clean:
	rm -rf $(VENV) .aws-sam
