"""ReleaseFunction: not built yet; answers 501 with a machine-readable code until its issue lands."""

from __future__ import annotations

from typing import Any

from escrow.errors import NotImplementedYet
from escrow.http import error_response, make_resolver, run
from escrow.observability import lambda_entry

app = make_resolver()


@app.route(".+", method=["GET", "POST"])
def not_yet() -> Any:
    return error_response(NotImplementedYet("this endpoint is not available yet", code="NOT_IMPLEMENTED"))


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run(app, event, context)


lambda_handler = lambda_entry(_handle, http=True)
