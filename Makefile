# The two commands of the README: `make run` (the whole stack locally) and `make test` (everything CI runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/layers/common:$(CURDIR)
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt layers/common/requirements.txt pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup run test unit integration e2e tooling lint typecheck sam-check sam-local browser-test screenshots iac-lint template-resources smoke bench audit chaos migrate seed openapi model clean

$(STAMP): requirements-dev.txt layers/common/requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@# The project itself, editable and without dependencies: the `escrow-ops` console script.
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
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
	$(VENV)/bin/mypy --strict layers/common/escrow functions

# The test suites (README "Tests"). `unit` needs nothing running and no socket (pytest-socket): seconds. The others
# need MariaDB (`setup` starts it); e2e and tooling start the Toss sandbox and the local API themselves.
UNIT := tests/unit
INTEGRATION := tests/integration
E2E := tests/e2e
TOOLING := tests/sandbox tests/local tests/ops
BROWSER := tests/browser
# The unit run skips the property-testing plugins' import (about 2 s); no unit test uses them.
unit: $(STAMP)
	$(PY) -m pytest -q -p no:schemathesis -p no:hypothesispytest $(UNIT)

integration: setup
	$(PY) -m pytest -n 2 $(INTEGRATION)

e2e: setup
	$(PY) -m pytest -n 2 $(E2E)

# The sandbox's, the local runner's and the operator console's own tests.
tooling: setup
	$(PY) -m pytest -n 2 $(TOOLING)

# The real `sam local invoke` / `sam local start-api` on every event and the README walkthrough (needs Docker;
# scripts/sam-local-engine.sh installs and starts it as root). README: "Running locally with SAM".
sam-local: setup
	$(PY) scripts/sam_local.py

# The browser test (tests/browser): headless Chromium, Debian's package, drives the reference chat client at /demo/
# through a whole room. scripts/browser-check.sh installs Chromium (as root) when it is missing; when Chromium cannot
# run here it prints one line saying why (exit code 3) and the test is not run.
BROWSER_TEST = bash scripts/browser-check.sh; status=$$?; \
	  if [ $$status -eq 0 ]; then $(PY) -m pytest $(BROWSER); elif [ $$status -ne 3 ]; then exit $$status; fi
browser-test: setup
	@$(BROWSER_TEST)

# The README's screenshots (docs/screenshots/*.png): the browser test, saving what it sees there.
screenshots: setup
	@bash scripts/browser-check.sh && BROWSER_SCREENSHOTS=docs/screenshots $(PY) -m pytest $(BROWSER)

# `make sam-local` runs when Docker can run here; otherwise one line says why not (exit code 3 of `check`).
# The unit suite first (the first feedback, in seconds), then the other three suites in one run on two workers, then
# the browser test.
test: setup lint typecheck
	bash scripts/sam-check.sh
	bash scripts/iac-lint.sh
	$(PY) -m pytest -q -p no:schemathesis -p no:hypothesispytest $(UNIT)
	$(PY) -m pytest -n 2 $(INTEGRATION) $(E2E) $(TOOLING)
	@$(BROWSER_TEST)
	@bash scripts/sam-local-engine.sh check; status=$$?; \
	  if [ $$status -eq 0 ]; then $(PY) scripts/sam_local.py; elif [ $$status -ne 3 ]; then exit $$status; fi

sam-check:
	bash scripts/sam-check.sh

# cfn-lint (informational rules included) and checkov on template.yaml, plus the CloudFormation Rules' verdicts.
iac-lint:
	bash scripts/iac-lint.sh

# The synthesized template's logical ids and types for both data tiers (SAM CLI's samtranslator).
SAM_PY = $${SAM_VENV:-$$HOME/.cache/escrow-sam-venv}/bin/python
template-resources:
	@test -x "$(SAM_PY)" || bash scripts/sam-check.sh
	@for create in true false; do "$(SAM_PY)" scripts/template_check.py resources CreateDatabase=$$create; done

# The README walkthrough against a deployed stack: make smoke API=https://... TOKEN_CMD='...' [ARGS='--room 123 ...']
smoke: $(STAMP)
	@test -n "$(API)" || { echo "usage: make smoke API=https://<api-id>.execute-api.<region>.amazonaws.com TOKEN_CMD='<command that prints a JWT for the user id given as its last argument>' [ARGS=...]" >&2; exit 2; }
	@test -n "$(TOKEN_CMD)" || { echo "TOKEN_CMD is required (e.g. TOKEN_CMD='$(PY) -m local.jwt' locally)" >&2; exit 2; }
	$(PY) scripts/smoke.py --api "$(API)" --token-cmd "$(TOKEN_CMD)" $(ARGS)

# openapi.json is generated from the functions' Powertools resolvers; a test fails when it is stale.
openapi: $(STAMP)
	$(PY) -m local.openapi > openapi.json

# The model-based test with a longer budget: make model ARGS="--examples 2000 [--steps 40] [--seed N]"
model: setup
	$(PY) scripts/model.py $(ARGS)

bench: setup
	$(PY) -m bench

audit: setup
	$(PY) -m escrow.audit $(ARGS)

chaos: setup
	$(PY) -m bench.chaos $(ARGS)

clean:
	rm -rf $(VENV) .aws-sam
