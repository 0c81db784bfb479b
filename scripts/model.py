"""Run the model-based test (tests/e2e/test_room_model.py) with a budget of your choice.

    make model ARGS="--examples 2000 [--steps 40] [--seed N]"

`make test` runs it with 15 examples of 30 steps for a fixed seed and for a random one (printed). A longer run
explores more sequences; a failure prints the shortest sequence of steps Hypothesis found, and `--seed N` replays a
seed that failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200, help="random sequences per seed (default 200)")
    parser.add_argument("--steps", type=int, default=40, help="at most this many steps each (default 40)")
    parser.add_argument("--seed", type=int, help="replay one seed (runs the fixed-seed test with it)")
    parser.add_argument("--no-audit", action="store_true", help="skip the ledger audit after each sequence")
    args = parser.parse_args(argv)
    env = {**os.environ, "MODEL_EXAMPLES": str(args.examples), "MODEL_STEPS": str(args.steps)}
    if args.seed is not None:
        env["MODEL_SEED"] = str(args.seed)
    if args.no_audit:
        env["MODEL_AUDIT"] = "0"
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:randomly", "tests/e2e/test_room_model.py"]
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode  # noqa: S603 - our own command


if __name__ == "__main__":
    sys.exit(main())
