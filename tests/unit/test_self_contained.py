"""The repository stands on its own: nothing in it points at the team's notes beside it, which someone who clones
it does not have. The design is docs/DESIGN.md, the brief's contract docs/api-contract.md, the Toss facts
docs/toss-behaviours.md."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Spelt in pieces so that this file does not find itself.
OUTSIDE = ("../" + "shared", "REFERENCE" + " §", "REFERENCE" + ".md")


def test_nothing_in_the_repository_points_outside_it():
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout.split("\0")
    found = []
    for name in filter(None, files):
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        found += [
            f"{name}:{n}: {line.strip()[:100]}"
            for n, line in enumerate(text.splitlines(), 1)
            if any(marker in line for marker in OUTSIDE)
        ]

    assert found == [], "point at docs/ instead:\n" + "\n".join(found)
