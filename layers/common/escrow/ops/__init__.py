"""The operator console: `python -m escrow.ops` (or the `escrow-ops` console script). See escrow/ops/cli.py.

Not part of the Lambda layer's runtime (the layer's build leaves this package out): it needs Typer and Rich, which
are development and operations dependencies (requirements-dev.txt)."""
