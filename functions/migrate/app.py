"""MigrateFunction: the schema migrations (and the account-number sealing step) inside the VPC.

Two ways in:

- **CloudFormation custom resource** (`Custom::DatabaseMigrations` in template.yaml). Create and Update run the
  migrations and answer SUCCESS with the versions in the response Data (``Applied``, ``Current``, ``Count``,
  ``AccountsEncrypted``); any failure answers FAILED, so the deploy rolls back. Delete answers SUCCESS and
  leaves the schema alone (deleting a stack never drops data; the cluster has its own deletion policy). The
  answer is a PUT of CloudFormation's response object to the pre-signed ``ResponseURL``.
- **By hand**: ``aws lambda invoke --function-name <MigrateFunction> --payload '{"action": "migrate"}' out.json``
  answers the result as JSON (``{"action": "status"}`` lists what is applied and what is pending, changing nothing).

A run that cannot finish before the function's timeout answers FAILED in time rather than leaving
CloudFormation waiting for an hour; the migration itself keeps the named lock until its connection ends.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

from escrow import db, migrate
from escrow.config import database_params
from escrow.errors import DatabaseUnavailable
from escrow.observability import count, lambda_entry, logger

ANSWER_MARGIN_S = 15.0  # time kept back to PUT the answer to CloudFormation
# On a stack's first deploy RDS Proxy may still be registering its target when the migrations start, and a resumed
# Aurora needs seconds: connection failures are retried until the budget runs out, other failures are not.
RETRY_INTERVAL_S = 10.0
MAX_DATA_CHARS = 3000  # CloudFormation refuses a response body over 4096 bytes
PUT_ATTEMPTS = 4


def describe_error(exc: BaseException) -> str:
    """``Type: message``, with the exception it happened while handling (yoyo's savepoint rollback after a failed
    DDL statement raises its own error and hides the statement's: both are reported)."""
    text = f"{type(exc).__name__}: {exc}"
    origin = exc.__cause__ or exc.__context__
    seen = {id(exc)}
    while origin is not None and id(origin) not in seen:
        seen.add(id(origin))
        text += f" (while handling {type(origin).__name__}: {origin})"
        origin = origin.__cause__ or origin.__context__
    return text


def _physical_id(event: dict[str, Any]) -> str:
    if event.get("PhysicalResourceId"):
        return str(event["PhysicalResourceId"])
    stack = str(event.get("StackId", "")).split("/")
    return f"{stack[1] if len(stack) > 1 else 'escrow'}-database-migrations"


def _ids(ids: list[str]) -> str:
    text = ",".join(ids) or "none"
    if len(text) <= MAX_DATA_CHARS:
        return text
    return text[: MAX_DATA_CHARS - 20].rsplit(",", 1)[0] + f",...(+{len(ids)})"


def _result_data(result: migrate.MigrationResult) -> dict[str, str]:
    return {
        "Database": result.database,
        "Applied": _ids(result.applied),
        "Current": result.current[-1] if result.current else "none",
        "Count": str(len(result.current)),
        "AccountsEncrypted": str(result.accounts_encrypted),
    }


def send_response(
    event: dict[str, Any], status: str, reason: str, data: dict[str, str] | None = None, *, timeout: float = 10.0
) -> int:
    """PUT CloudFormation's response object to the pre-signed ResponseURL (with an empty content type, as S3's
    signature expects). Retried a few times: an answer that never arrives keeps the stack waiting for an hour."""
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason[:1000],
            "PhysicalResourceId": _physical_id(event),
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "NoEcho": False,
            "Data": data or {},
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - CloudFormation's pre-signed https URL
        event["ResponseURL"], data=body, method="PUT", headers={"content-type": "", "content-length": str(len(body))}
    )
    for attempt in range(1, PUT_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
                logger.info("answered CloudFormation", extra={"status": status, "http_status": answer.status})
                return int(answer.status)
        except OSError as exc:
            logger.warning("could not answer CloudFormation", extra={"attempt": attempt, "error": repr(exc)})
            if attempt == PUT_ATTEMPTS:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseUnavailable) or db.is_connection_error(exc)


def _run_with_deadline(seconds: float) -> migrate.MigrationResult:
    """run_migrations in a worker thread, retrying while the database cannot be reached; TimeoutError when it is
    still going after ``seconds``."""
    outcome: dict[str, Any] = {}
    give_up_at = time.monotonic() + seconds - RETRY_INTERVAL_S

    def work() -> None:
        attempts = 0
        while True:
            attempts += 1
            try:
                lock_wait = int(max(5.0, min(300.0, seconds - 30.0)))
                outcome["result"] = migrate.run_migrations(database_params(), lock_timeout_seconds=lock_wait)
                outcome["attempts"] = attempts
                return
            except BaseException as exc:  # noqa: BLE001 - handed over to the caller's thread
                if _unreachable(exc) and time.monotonic() + RETRY_INTERVAL_S < give_up_at:
                    logger.warning("database not reachable yet; retrying", extra={"attempt": attempts})
                    time.sleep(RETRY_INTERVAL_S)
                    continue
                outcome["error"] = exc
                outcome["attempts"] = attempts
                return

    worker = threading.Thread(target=work, name="migrations", daemon=True)
    worker.start()
    worker.join(timeout=max(1.0, seconds))
    if worker.is_alive():
        raise TimeoutError(
            f"the migrations were still running after {seconds:.0f}s; the run goes on holding its named lock "
            f"until it ends: deploy again (or invoke the function) once it has"
        )
    if "error" in outcome:
        if outcome["attempts"] > 1:
            raise ConnectionError(f"the database could not be reached in {outcome['attempts']} attempts") from outcome[
                "error"
            ]
        raise outcome["error"]
    return outcome["result"]  # type: ignore[no-any-return]


def _budget_seconds(context: Any) -> float:
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    remaining = remaining_ms() / 1000.0 if callable(remaining_ms) else 900.0
    return remaining - ANSWER_MARGIN_S


def handle_custom_resource(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request_type = event.get("RequestType")
    logger.info(
        "custom resource request",
        extra={"request_type": request_type, "logical_id": event.get("LogicalResourceId")},
    )
    if request_type == "Delete":
        send_response(event, "SUCCESS", "deleting the stack leaves the schema and its data as they are")
        return {"Status": "SUCCESS"}
    if request_type not in ("Create", "Update"):
        send_response(event, "FAILED", f"unknown RequestType {request_type!r}")
        return {"Status": "FAILED"}
    try:
        result = _run_with_deadline(_budget_seconds(context))
    except Exception as exc:  # noqa: BLE001 - any failure must become FAILED, or the deploy hangs
        logger.exception("migrations failed")
        reason = f"migrations failed: {describe_error(exc)}"
        send_response(event, "FAILED", reason)
        return {"Status": "FAILED", "Reason": reason}
    count("MigrationsApplied", len(result.applied))
    data = _result_data(result)
    logger.info("migrations done", extra={"result": data})
    send_response(event, "SUCCESS", result.summary(), data)
    return {"Status": "SUCCESS", "Data": data}


def handle_by_hand(event: dict[str, Any], context: Any) -> dict[str, Any]:
    action = event.get("action", "migrate")
    if action == "status":
        return {"action": "status", **migrate.status(database_params())}
    if action != "migrate":
        return {"action": action, "error": "unknown action; use migrate or status"}
    result = _run_with_deadline(_budget_seconds(context))
    count("MigrationsApplied", len(result.applied))
    logger.info("migrations done", extra={"summary": result.summary()})
    return {
        "action": "migrate",
        "database": result.database,
        "applied": result.applied,
        "current": result.current,
        "accounts_encrypted": result.accounts_encrypted,
        "seconds": round(result.seconds, 2),
    }


def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "RequestType" in event and "ResponseURL" in event:
        return handle_custom_resource(event, context)
    return handle_by_hand(event, context)


lambda_handler = lambda_entry(_handle, http=False)
