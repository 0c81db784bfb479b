"""Cold start: import-and-init of each function's module in a fresh interpreter, next to a bare `import boto3`
measured the same way in the same run. Median of N runs each.

The layer comes from the SAM build (`.aws-sam/build/CommonLayer/python`, with precompiled bytecode) when it
exists, else from the source tree; `--no-bytecode` measures with PYTHONDONTWRITEBYTECODE and a fresh pycache
prefix, i.e. what an uncompiled layer costs on Lambda where /opt is read-only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ("request", "confirm", "cancel", "release", "webhook")

_PROBE = """
import importlib.util, sys, time
t0 = time.perf_counter()
{body}
print((time.perf_counter() - t0) * 1000)
"""
_LOAD_FUNCTION = """
sys.path.insert(0, {fn_dir!r})
spec = importlib.util.spec_from_file_location("app", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert callable(module.lambda_handler)
"""


def _run(body: str, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(body=body)], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure(runs: int = 7, *, layer: Path | None = None, bytecode: bool = True, tracing: bool = False) -> dict:
    layer_dir = layer or ROOT / "layers/common"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AWS_LAMBDA", "LAMBDA_"))}
    env.update(
        {
            "PYTHONPATH": str(layer_dir),
            "POWERTOOLS_SERVICE_NAME": "escrow",
            "AWS_DEFAULT_REGION": "ap-northeast-2",
            "POWERTOOLS_TRACE_DISABLED": "false" if tracing else "true",
            "PYDANTIC_DISABLE_PLUGINS": "__all__",
        }
    )  # as template.yaml sets them
    if tracing:
        env.update({"LAMBDA_TASK_ROOT": "/var/task", "AWS_LAMBDA_FUNCTION_NAME": "bench"})
    tmp = None
    if not bytecode:
        tmp = tempfile.TemporaryDirectory()
        env.update({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": tmp.name})
    else:
        for fn in FUNCTIONS:  # warm the bytecode caches once so every measured run reads .pyc
            _run(
                _LOAD_FUNCTION.format(
                    fn_dir=str(ROOT / "functions" / fn), path=str(ROOT / "functions" / fn / "app.py")
                ),
                env,
            )
        _run("import boto3", env)
    results: dict[str, float] = {
        "import boto3 (bare)": statistics.median(_run("import boto3", env) for _ in range(runs))
    }
    for fn in FUNCTIONS:
        body = _LOAD_FUNCTION.format(fn_dir=str(ROOT / "functions" / fn), path=str(ROOT / "functions" / fn / "app.py"))
        results[f"{fn} function init"] = statistics.median(_run(body, env) for _ in range(runs))
    if tmp:
        tmp.cleanup()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--layer", type=Path, help="a built layer's python/ folder (default: the SAM build or source)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    built = ROOT / ".aws-sam/build/CommonLayer/python"
    layer = args.layer or (built if built.exists() else None)
    print(
        f"cold start, median of {args.runs} fresh interpreters (Python {sys.version.split()[0]}), layer: "
        f"{layer or 'source tree (layers/common) + this venv'}"
    )
    table = {
        "bytecode": measure(args.runs, layer=layer, bytecode=True),
        "no bytecode": measure(args.runs, layer=layer, bytecode=False),
        "bytecode + X-Ray SDK": measure(args.runs, layer=layer, bytecode=True, tracing=True),
    }
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    names = list(table["bytecode"])
    print(f"{'':28}" + "".join(f"{col:>24}" for col in table))
    for name in names:
        print(f"{name:28}" + "".join(f"{table[col][name]:>21.1f} ms" for col in table))
    boto = table["bytecode"]["import boto3 (bare)"]
    slowest = max(v for k, v in table["bytecode"].items() if k.endswith("init"))
    verdict = "below" if slowest < boto else "NOT below"
    print(f"slowest function init {slowest:.1f} ms is {verdict} bare import boto3 {boto:.1f} ms (with bytecode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
