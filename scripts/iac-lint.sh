#!/usr/bin/env bash
# Lints template.yaml with cfn-lint (every rule, informational ones included) and checkov, offline, and checks the
# CloudFormation Rules refuse inconsistent parameters. Both tools live in their own virtual environment, pinned by
# requirements-iac.txt (checkov pins its own boto3, pydantic and more): IAC_VENV (default ~/.cache/escrow-iac-venv)
# is created when missing or when requirements-iac.txt changed. Every skipped check is justified in the Metadata of
# the resource it concerns (cfn-lint: ignore_checks; checkov: skip with a comment).
# Usage: scripts/iac-lint.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IAC_VENV="${IAC_VENV:-$HOME/.cache/escrow-iac-venv}"
PYTHON="${PYTHON:-python3}"
fail() { echo "iac-lint: FAILED: $*" >&2; exit 1; }

cd "$ROOT"
stamp="$IAC_VENV/.installed-$(sha1sum requirements-iac.txt | cut -c1-12)"
if [[ ! -f "$stamp" ]]; then
  echo "iac-lint: installing cfn-lint and checkov into $IAC_VENV (one time, ~1 min)" >&2
  [[ -x "$IAC_VENV/bin/python" ]] || "$PYTHON" -m venv "$IAC_VENV" || fail "cannot create $IAC_VENV"
  "$IAC_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-iac.txt \
    || fail "cannot install requirements-iac.txt into $IAC_VENV"
  rm -f "$IAC_VENV"/.installed-* && touch "$stamp"
fi

cfn_version="$("$IAC_VENV/bin/cfn-lint" --version | awk '{print $NF}')"
echo "iac-lint: cfn-lint $cfn_version --include-checks I" >&2
"$IAC_VENV/bin/cfn-lint" --include-checks I --format parseable -- template.yaml >&2 || fail "cfn-lint reported findings"

checkov_version="$("$IAC_VENV/bin/checkov" --version 2>/dev/null | tail -1)"
echo "iac-lint: checkov $checkov_version (cloudformation framework, offline)" >&2
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false "$IAC_VENV/bin/checkov" -f template.yaml \
  --framework cloudformation --skip-download --compact -o json > "$report" 2>/dev/null || true
summary="$("$IAC_VENV/bin/python" - "$report" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
s = data["summary"]
failed = [f'{c["check_id"]} {c["resource"]}' for c in data["results"].get("failed_checks", [])]
skipped = sorted({c["check_id"] for c in data["results"].get("skipped_checks", [])})
print(f'passed {s["passed"]}, failed {s["failed"]}, skipped {s["skipped"]} ({", ".join(skipped)})')
for f in failed:
    print("  FAILED", f)
sys.exit(1 if s["failed"] or s.get("parsing_errors") else 0)
PY
)" || { echo "$summary" >&2; fail "checkov reported failed checks"; }

rules_ok=0
# The Rules must refuse what the issue names (HS256 without a secret, prod without iss/aud, subnets without groups)
# and accept the defaults plus the two secrets, and an existing data tier given whole.
for args in "JwtSecretArn=" "Stage=prod" "CreateDatabase=false SecurityGroupIds=" "CreateDatabase=false DbSecretArn=" \
            "SubnetIds=subnet-0a1b2c3d4e5f60001"; do
  # shellcheck disable=SC2086
  if "$IAC_VENV/bin/python" scripts/template_check.py rules $args > /dev/null; then fail "Rules accepted: $args"; fi
  rules_ok=$((rules_ok + 1))
done
for args in "" "CreateDatabase=false" "Stage=prod JwtIssuer=https://id.example JwtAudience=escrow" \
            "JwtAlgorithm=RS256 JwtSecretArn= JwtJwksUrl=https://id.example/jwks.json"; do
  # shellcheck disable=SC2086
  "$IAC_VENV/bin/python" scripts/template_check.py rules $args > /dev/null || fail "Rules refused: $args"
  rules_ok=$((rules_ok + 1))
done

echo "iac-lint OK: cfn-lint $cfn_version (informational rules included) clean; checkov $checkov_version: $summary;" \
     "Rules: $rules_ok parameter sets judged as expected"
