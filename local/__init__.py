"""Local runner: the SAM template's functions, routes and environment without Docker or an AWS account.

- ``python -m local.run``      migrations, demo data, Toss sandbox, local HTTP API, scheduler
- ``python -m local.invoke``   invoke one function with an event file (what ``sam local invoke -e`` does)
- ``python -m local.jwt``      mint a local HS256 token

Run from the repository root with ``PYTHONPATH=layers/common:.``.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
