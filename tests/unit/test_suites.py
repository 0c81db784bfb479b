"""The suites of the Makefile (unit, integration, e2e, tooling, and the browser test) cover every test directory, each
once, so that `make test`, which runs them all, runs every test."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_directory_belongs_to_exactly_one_suite():
    makefile = (ROOT / "Makefile").read_text()
    suites = {
        name: re.search(rf"^{name} := (.+)$", makefile, re.MULTILINE).group(1).split()  # type: ignore[union-attr]
        for name in ("UNIT", "INTEGRATION", "E2E", "TOOLING", "BROWSER")
    }
    listed = [directory for directories in suites.values() for directory in directories]
    with_tests = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")}

    assert len(listed) == len(set(listed))
    assert with_tests == set(listed)
    recipe = makefile.split("\ntest:")[1].split("\n\n")[0]
    assert all(step in recipe for step in ("$(UNIT)", "$(INTEGRATION) $(E2E) $(TOOLING)", "$(BROWSER_TEST)"))
    assert "$(BROWSER)" in makefile.split("\nBROWSER_TEST =")[1].split("\n\n")[0]
