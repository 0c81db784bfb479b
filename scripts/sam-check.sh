#!/usr/bin/env bash
# Checks the SAM template and the layer build without Docker or an AWS account:
#   sam validate --lint, sam validate (region + dummy credentials), sam build into a temporary directory,
#   then the built layer must hold precompiled (unchecked-hash) bytecode for escrow and pydantic, the RDS CA bundle
#   and the SQL migrations, and MigrateFunction must carry yoyo. Last, the synthesized template's resources are
#   listed for CreateDatabase=true and false (scripts/template_check.py with the SAM CLI's samtranslator).
# The SAM CLI lives in its own virtual environment (it pins its own pydantic/boto3):
#   SAM_VENV (default ~/.cache/escrow-sam-venv) is created with `pip install aws-sam-cli` when missing.
# Usage: scripts/sam-check.sh            (KEEP_BUILD=1 keeps the build directory and prints it)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAM_VENV="${SAM_VENV:-$HOME/.cache/escrow-sam-venv}"
SAM="$SAM_VENV/bin/sam"
PYTHON="${PYTHON:-python3}"
export SAM_CLI_TELEMETRY=0

fail() { echo "sam-check: FAILED: $*" >&2; exit 1; }

if [[ ! -x "$SAM" ]]; then
  echo "sam-check: installing the AWS SAM CLI into $SAM_VENV (one time, ~1-2 min)" >&2
  "$PYTHON" -m venv "$SAM_VENV" || fail "cannot create a virtual environment at $SAM_VENV"
  "$SAM_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip \
    || fail "cannot upgrade pip in $SAM_VENV"
  "$SAM_VENV/bin/python" -m pip install --quiet --disable-pip-version-check aws-sam-cli \
    || fail "cannot install aws-sam-cli into $SAM_VENV"
fi
SAM_VERSION="$("$SAM" --version 2>/dev/null | awk '{print $NF}')" || fail "$SAM does not run"

cd "$ROOT"
[[ -f template.yaml ]] || fail "no template.yaml in $ROOT"
[[ -d layers/common/escrow ]] || fail "layers/common/escrow is missing"

echo "sam-check: sam validate --lint" >&2
"$SAM" validate --lint --template-file template.yaml >&2 || fail "sam validate --lint"

BUILD_DIR="$(mktemp -d "${TMPDIR:-/tmp}/escrow-sam-build.XXXXXX")"
if [[ "${KEEP_BUILD:-0}" == 1 ]]; then
  echo "sam-check: keeping the build in $BUILD_DIR" >&2
else
  trap 'rm -rf "$BUILD_DIR"' EXIT
fi

echo "sam-check: sam validate (ap-northeast-2, dummy credentials)" >&2
# An empty config file: samconfig.toml turns lint on for `sam validate`, and this step is the plain translation.
printf 'version = 0.1\n' > "$BUILD_DIR/plain-samconfig.toml"
env AWS_DEFAULT_REGION=ap-northeast-2 AWS_REGION=ap-northeast-2 \
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
    "$SAM" validate --template-file template.yaml --region ap-northeast-2 \
    --config-file "$BUILD_DIR/plain-samconfig.toml" >&2 || fail "sam validate"

echo "sam-check: sam build --build-dir $BUILD_DIR" >&2
started=$SECONDS
"$SAM" build --template-file template.yaml --build-dir "$BUILD_DIR" \
  --cache-dir "$BUILD_DIR/.cache" --no-cached >&2 || fail "sam build"
build_seconds=$((SECONDS - started))

LAYER="$BUILD_DIR/CommonLayer/python"
[[ -d "$LAYER" ]] || fail "the built layer has no python/ folder ($LAYER)"
[[ -f "$LAYER/escrow/__init__.py" ]] || fail "the built layer lacks escrow/__init__.py"
[[ -d "$LAYER/pydantic" ]] || fail "the built layer lacks pydantic"
ls "$LAYER"/pydantic_core/_pydantic_core*x86_64-linux-gnu.so >/dev/null 2>&1 \
  || fail "the built layer lacks pydantic_core's manylinux x86_64 binary"
escrow_pyc=$(find "$LAYER/escrow" -name '*.pyc' | wc -l)
pydantic_pyc=$(find "$LAYER/pydantic" -name '*.pyc' | wc -l)
(( escrow_pyc > 0 )) || fail "no .pyc files for escrow in the built layer"
(( pydantic_pyc > 0 )) || fail "no .pyc files for pydantic in the built layer"
[[ -f "$LAYER/escrow/certs/rds-ca-bundle.pem" ]] || fail "the built layer lacks escrow/certs/rds-ca-bundle.pem"
ls "$LAYER"/escrow/migrations/*.sql >/dev/null 2>&1 || fail "the built layer lacks the SQL migrations"
[[ -d "$BUILD_DIR/MigrateFunction/yoyo" ]] || fail "MigrateFunction was built without yoyo (functions/migrate/requirements.txt)"
if find "$LAYER/escrow" -type d -name tests | grep -q .; then
  fail "tests were copied into the layer"
fi
# Flags word of the .pyc header: 1 = hash-based, unchecked (no stat of the source on import).
"$PYTHON" - "$LAYER" <<'EOF' || fail "layer bytecode is not unchecked-hash"
import pathlib, struct, sys
bad = [p for p in pathlib.Path(sys.argv[1]).glob("escrow/**/*.pyc")
       if struct.unpack("<I", p.read_bytes()[4:8])[0] != 1]
if bad:
    sys.exit(f"{len(bad)} escrow .pyc files are not unchecked-hash, e.g. {bad[0]}")
EOF

# The manylinux wheels must load with a CPython 3.11 (the runtime's); boto3 is the runtime's, so not imported.
if "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -I - "$LAYER" <<'EOF' || fail "the built layer does not import"
import sys
sys.path.insert(0, sys.argv[1])
import cryptography.hazmat.primitives.ciphers.aead, jwt, pydantic, pymysql, requests  # noqa: E401
import escrow, escrow.config  # noqa: E401
EOF
fi

functions=0
for fn in MigrateFunction RequestFunction ConfirmFunction CancelFunction ReleaseFunction WebhookFunction; do
  [[ -f "$BUILD_DIR/$fn/app.py" ]] || fail "$fn was not built (no $BUILD_DIR/$fn/app.py)"
  functions=$((functions + 1))
done
layer_mb=$(du -sm "$BUILD_DIR/CommonLayer" | cut -f1)

# The synthesized template for both data tiers (the closing list of issue 9); kept in the build dir with KEEP_BUILD=1.
for create in true false; do
  "$SAM_VENV/bin/python" scripts/template_check.py resources "CreateDatabase=$create" \
    > "$BUILD_DIR/resources-CreateDatabase-$create.txt" || fail "the SAM transform failed for CreateDatabase=$create"
done
resources_true=$(head -1 "$BUILD_DIR/resources-CreateDatabase-true.txt" | awk '{print $2}')
resources_false=$(head -1 "$BUILD_DIR/resources-CreateDatabase-false.txt" | awk '{print $2}')
if [[ "${SHOW_RESOURCES:-0}" == 1 ]]; then cat "$BUILD_DIR"/resources-CreateDatabase-*.txt >&2; fi

echo "sam-check OK: SAM CLI $SAM_VERSION; validate --lint clean; validate OK; build OK in ${build_seconds}s" \
     "($functions functions, layer ${layer_mb} MB, .pyc: escrow $escrow_pyc, pydantic $pydantic_pyc, unchecked-hash);" \
     "synthesized: $resources_true resources with CreateDatabase=true, $resources_false with false"
