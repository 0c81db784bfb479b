"""The operator console: `python -m escrow.ops COMMAND` (or the `escrow-ops` console script).

Reads work locally from DATABASE_URL and the Toss keys in the environment (as the local runner does), or against a
deployed stack with `--stack NAME` (its CloudFormation parameters name the Secrets Manager secrets). Tables for
people, `--json` for scripts. Actions that move money (retry-payout, replay-webhook, run-job of a money job) show
what they will do and ask first (`--yes` skips the question); each is recorded in `operator_actions` and logged with
the operator's name (`--operator`, else ESCROW_OPERATOR, else the OS user) and reason.

Exit codes: 0 done; 1 the audit found something, or the question was answered no; 2 the command could not be done
(bad input, not found, a refused transition, the database or Toss unreachable).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from escrow import db
from escrow.errors import AppError
from escrow.ops.environment import StackError, configured, operator_name, stack_environment

app = typer.Typer(
    name="escrow.ops",
    help="Operator console of the group deposit escrow: look at a room, payouts and webhooks side by side with "
    "Toss; retry a payout, replay a webhook, run a scheduled job, audit the ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before acting.")]
OperatorOption = Annotated[
    str | None, typer.Option("--operator", help="Who is acting (default: ESCROW_OPERATOR, else the OS user).")
]


# --- plumbing -----------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-safe: times in ISO 8601 (UTC), Decimal sums as numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return (
            (value if value.tzinfo else value.replace(tzinfo=UTC))
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(_plain(data), ensure_ascii=False, indent=2))


def _fail(message: str, *, code: str, as_json: bool) -> NoReturn:
    if as_json:
        _emit_json({"error": {"code": code, "message": message}})
    err.print(f"[bold red]error[/] {code}: {message}", markup=True, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def _errors(as_json: bool) -> Iterator[None]:
    """Known failures become a message and exit code 2, never a traceback."""
    try:
        yield
    except AppError as exc:
        _fail(exc.message, code=exc.code, as_json=as_json)
    except StackError as exc:
        _fail(str(exc), code="STACK", as_json=as_json)


class _Stderr:
    """Whatever sys.stderr is at the time of writing (a test runner swaps it for each invocation)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _Stderr()


def _logs_to_stderr() -> None:
    """The layer's logger writes JSON lines to stdout (Lambda's log); here stdout is for tables and --json."""
    from escrow.observability import logger

    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is not _STDERR:
            with handler.lock or threading.Lock():
                handler.stream = _STDERR


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not typer.confirm(question, default=False, err=True):
        err.print("nothing was done")
        raise typer.Exit(1)


def _won(amount: Any) -> str:
    return "" if amount is None else f"{int(amount):,}"


def _when(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _short(value: Any) -> str:
    return value.strftime("%m-%d %H:%M:%S") if isinstance(value, datetime) else ""


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


def _since(text: str | None) -> tuple[datetime | None, int | None]:
    """`1h`, `30m`, `2d`, `90s` (by the database's clock), or an ISO 8601 time (UTC when it has no offset)."""
    if not text:
        return None, None
    match = _DURATION.match(text)
    if match:
        return None, int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter("use a duration (30m, 1h, 2d) or an ISO 8601 time") from exc
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).replace(tzinfo=None), None


@app.callback()
def _main(
    ctx: typer.Context,
    stack: Annotated[
        str | None,
        typer.Option(
            "--stack", help="A deployed stack: read its parameters and outputs (CloudFormation) to find its secrets."
        ),
    ] = None,
    region: Annotated[str | None, typer.Option("--region", help="AWS region of the stack.")] = None,
    db_host: Annotated[
        str | None, typer.Option("--db-host", help="Reach the database through this host (e.g. a tunnel).")
    ] = None,
) -> None:
    _logs_to_stderr()
    env: dict[str, str] = {}
    if stack:
        try:
            env.update(stack_environment(stack, region=region))
        except StackError as exc:
            _fail(str(exc), code="STACK", as_json=False)
    if db_host:
        env["DB_HOST"] = db_host
    ctx.with_resource(configured(env))
    ctx.call_on_close(db.close)


def _toss() -> Any:
    from escrow.ops.room import ReadOnlyToss
    from escrow.toss.client import get_toss_client

    return ReadOnlyToss(get_toss_client())


# --- room ---------------------------------------------------------------------------------------------------


@app.command()
def room(
    chat_room_id: Annotated[int, typer.Argument(help="The chat room.")],
    as_json: JsonOption = False,
) -> None:
    """A room's requests, shares, ledger entries, refunds, settlement and payout, side by side with Toss (GET calls
    only); differences are highlighted."""
    from escrow.ops.room import room_view

    with _errors(as_json):
        view = room_view(chat_room_id, _toss())
    if as_json:
        _emit_json(view)
        return
    _render_room(view)


def _agree(differences: list[str]) -> Text:
    return Text("≠", style="bold red") if differences else Text("=", style="green")


def _print_differences(rows: list[tuple[str, list[str]]]) -> None:
    """The differences of a table's rows, one line each, under the table."""
    for label, differences in rows:
        for difference in differences:
            out.print(Text.assemble(("  ≠ ", "bold red"), (f"{label}: ", "bold"), (difference, "red")), soft_wrap=True)


def _action_summary(action: dict[str, Any]) -> str:
    detail = action.get("detail") or {}
    before, after = detail.get("before") or {}, detail.get("after") or {}
    if action["action"] == "retry_payout" and before:
        was = " ".join(x for x in (before.get("payout_id"), before.get("payout_status")) if x)
        why = f" ({before['payout_error_code']})" if before.get("payout_error_code") else ""
        return f"{was}{why} -> {after.get('payout_status')} as {after.get('ref_payout_id')}"
    return ""


def _render_room(view: dict[str, Any]) -> None:
    members = ", ".join(f"{m['user_id']}{' (owner)' if m['is_owner'] else ''}" for m in view["members"]) or "none"
    out.print(
        Text.assemble(
            (f"Room {view['chat_room_id']}", "bold"),
            f": {len(view['requests'])} request(s); members: {members}; Toss lookups: {view['toss_lookups']}",
        )
    )
    if not view["requests"]:
        out.print("No payment request in this room.")
    for item in view["requests"]:
        _render_request(item)
    total = view["difference_count"]
    out.print(
        Text(f"{total} difference(s) between our records and Toss", style="bold red")
        if total
        else Text("Our records and Toss agree.", style="bold green")
    )


def _render_request(item: dict[str, Any]) -> None:
    r, store, totals = item["request"], item["store"] or {}, item["totals"]
    lines = [
        f"status {r['status']}  amount {_won(r['amount'])} x {r['participant_count']}  store {r['store_id']} "
        f"(seller {store.get('toss_seller_id') or 'not registered'}, {store.get('seller_status') or '-'})",
        f"requested by {r['requester_id']} at {_when(r['created_at'])}; release at {_when(r['release_at']) or '-'}; "
        f"expires at {_when(r['expires_at']) or '-'}",
        f"ledger: charged {_won(totals['charged'])} "
        f"{'=' if totals['charged'] == totals['refunded'] + totals['released'] + totals['held'] else '≠'} "
        f"refunded {_won(totals['refunded'])} + released {_won(totals['released'])} + held {_won(totals['held'])}",
    ]
    if r["closed_at"]:
        lines.append(f"closed at {_when(r['closed_at'])} by {r['closed_by']}: {r['close_reason']}")
    for difference in item["differences"]:
        lines.append(f"[bold red]{difference}[/]")
    out.print(
        Panel("\n".join(lines), title=f"Request {r['id']}", title_align="left", box=box.ROUNDED, expand=False),
        markup=True,
    )

    shares = Table(title="Shares: ours | Toss", box=box.SIMPLE_HEAD, title_justify="left")
    for name, justify in (
        ("payer", "left"),
        ("ours", "left"),
        ("paid", "right"),
        ("refunded", "right"),
        ("held", "right"),
        ("paymentKey", "left"),
        ("Toss", "left"),
        ("total", "right"),
        ("balance", "right"),
        ("refunded", "right"),
        ("", "center"),
    ):
        shares.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in item["shares"]:
        s, t = row["ours"], row["toss"] or {}
        style = "red" if row["differences"] else ""
        shares.add_row(
            s["payer_id"],
            s["status"],
            _won(s["paid_amount"]),
            _won(s["refunded_amount"]),
            _won(s["paid_amount"] - s["refunded_amount"] if s["status"] in ("completed", "partially_refunded") else 0),
            s["payment_key"] or "",
            Text(t.get("status", "-" if s["payment_key"] else ""), style=style),
            Text(_won(t.get("totalAmount")), style=style),
            Text(_won(t.get("balanceAmount")), style=style),
            Text(_won(t.get("refunded")), style=style),
            _agree(row["differences"]),
        )
    out.print(shares)
    _print_differences([(r["ours"]["payer_id"], r["differences"]) for r in item["shares"]])

    if item["orders"]:
        orders = Table(title="Orders (every orderId issued or used)", box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("orderId", "payer", "amount", "ours", "Toss", "Toss balance", ""):
            orders.add_column(name)
        for row in item["orders"]:
            o, t = row["ours"], row["toss"] or {}
            orders.add_row(
                o["order_id"],
                o["payer_id"],
                _won(o["amount"]),
                o["status"] + (f" ({o['failure_code']})" if o["failure_code"] else ""),
                t.get("status", "not at Toss"),
                _won(t.get("balanceAmount")),
                _agree(row["differences"]),
            )
        out.print(orders)
        _print_differences([(f"order {r['ours']['order_id']}", r["differences"]) for r in item["orders"]])

    ledger = Table(title="Ledger entries", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("id", "type", "amount", "reference", "actor", "reason", "at"):
        ledger.add_column(name, justify="right" if name == "amount" else "left")
    for e in item["ledger"]:
        ledger.add_row(
            str(e["id"]),
            e["entry_type"],
            _won(e["amount"]),
            e["reference"],
            e["actor"],
            e["reason"] or "",
            _when(e["created_at"]),
        )
    out.print(ledger)

    if item["cancels"]:
        cancels = Table(title="Refunds: ours | Toss", box=box.SIMPLE_HEAD, title_justify="left")
        for name in (
            "id",
            "payment",
            "by",
            "reason",
            "ours",
            "amount",
            "transactionKey",
            "Toss",
            "Toss amount",
            "",
        ):
            cancels.add_column(name)
        for row in item["cancels"]:
            c, t = row["ours"], row["toss"] or {}
            cancels.add_row(
                str(c["id"]),
                str(c["payment_id"]),
                c["requested_by"],
                c["reason"],
                c["status"] + (f" ({c['toss_code']})" if c["toss_code"] else ""),
                _won(c["cancel_amount"] if c["cancel_amount"] is not None else c["requested_amount"]),
                c["transaction_key"] or "",
                t.get("cancelStatus", ""),
                _won(t.get("cancelAmount")),
                _agree(row["differences"]),
            )
        out.print(cancels)
        _print_differences([(f"refund {r['ours']['id']}", r["differences"]) for r in item["cancels"]])

    for row in item["settlements"]:
        s, t = row["ours"], row["toss"] or {}
        settlement = Table(
            title=f"Settlement {s['id']} and payout: ours | Toss", box=box.SIMPLE_HEAD, title_justify="left"
        )
        for name in ("", "ours", "Toss"):
            settlement.add_column(name)
        amount = (t.get("amount") or {}).get("value")
        settlement.add_row(
            "gross / fee / net",
            f"{_won(s['gross_amount'])} / {_won(s['platform_fee'])} / {_won(s['net_amount'])} ({s['fee_bps']} bps)",
            _won(amount),
        )
        settlement.add_row("refPayoutId", s["ref_payout_id"], t.get("refPayoutId", ""))
        settlement.add_row("payout id", s["payout_id"] or "", t.get("id", ""))
        settlement.add_row(
            "status",
            s["payout_status"] + (f" ({s['payout_error_code']})" if s["payout_error_code"] else ""),
            str(t.get("status", "")) + (f" ({(t.get('error') or {}).get('code')})" if t.get("error") else ""),
        )
        settlement.add_row("attempts / released by", f"{s['payout_attempts']} / {s['released_by']}", "")
        if s["payout_error_message"]:
            settlement.add_row("last message", s["payout_error_message"], "")
        out.print(settlement)
        _print_differences([(f"settlement {s['id']}", row["differences"])])
        if row["operator_actions"]:
            actions = Table(title="Operator actions", box=box.SIMPLE_HEAD, title_justify="left")
            for name in ("id", "action", "operator", "reason", "what", "status", "at"):
                actions.add_column(name)
            for a in row["operator_actions"]:
                actions.add_row(
                    str(a["id"]),
                    a["action"],
                    a["operator"],
                    a["reason"],
                    _action_summary(a),
                    a["status"],
                    _when(a["created_at"]),
                )
            out.print(actions)

    if item["events"]:
        events = Table(title="Events (outbox -> EventBridge)", box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("id", "type", "written", "published"):
            events.add_column(name)
        for e in item["events"]:
            events.add_row(str(e["id"]), e["event_type"], _when(e["created_at"]), _when(e["published_at"]) or "not yet")
        out.print(events)


# --- payouts ------------------------------------------------------------------------------------------------


def _next_step(s: dict[str, Any]) -> str:
    status = s["payout_status"]
    if status == "failed":
        return f"fix the cause, then: retry-payout {s['id']}"
    waiting = s.get("payout_waiting_for")
    again = f" from {_when(s['payout_next_attempt_at'])}" if s.get("payout_next_attempt_at") else ""
    if status == "scheduled" and waiting == "balance":
        return "waits for Toss's payout balance (GET /v2/balances); sent by the first run it covers"
    if status == "scheduled" and waiting == "seller":
        return f"waits for the store's seller at Toss (seller.changed ends the wait); asked again{again or ' each run'}"
    if status == "scheduled" and s["payout_error_code"]:
        return f"refused; the schedule asks again{again or ' each run'} (a back-off that grows)"
    if status == "scheduled":
        return "the next scheduled run sends it"
    if status == "requesting":
        return "being sent (or its answer was lost: the next run asks again with the same key)"
    return "Toss took it; waiting for payout.changed (polled as a fallback)"


@app.command()
def payouts(
    waiting: Annotated[bool, typer.Option("--waiting", help="Payouts not completed yet.")] = False,
    refused: Annotated[
        bool, typer.Option("--refused", help="Failed payouts and those Toss refused last time.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 200,
    as_json: JsonOption = False,
) -> None:
    """Payouts that wait (--waiting) or were refused (--refused); both when neither is given."""
    from escrow.repositories import ops as ops_repo

    if not waiting and not refused:
        waiting = refused = True
    with _errors(as_json), db.reader() as tx:
        rows = ops_repo.payouts(tx, waiting=waiting, refused=refused, limit=limit)
    for row in rows:
        row["next_step"] = _next_step(row)
    if as_json:
        _emit_json({"payouts": rows})
        return
    kind = "waiting and refused" if waiting and refused else "waiting" if waiting else "refused"
    table = Table(title=f"Payouts {kind}: {len(rows)}", box=box.SIMPLE_HEAD, title_justify="left")
    for name, justify in (
        ("settlement", "right"),
        ("request/room", "left"),
        ("store (seller)", "left"),
        ("net", "right"),
        ("status", "left"),
        ("tries", "right"),
        ("last error", "left"),
        ("updated", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=name in ("settlement", "net", "status", "updated"))  # type: ignore[arg-type]
    for s in rows:
        failed = s["payout_status"] == "failed"
        table.add_row(
            str(s["id"]),
            f"{s['payment_request_id']}/{s['chat_room_id']}",
            f"{s['store_id']} ({s['seller_status'] or 'not registered'})",
            _won(s["net_amount"]),
            Text(s["payout_status"], style="bold red" if failed else ""),
            str(s["payout_attempts"]),
            " ".join(x for x in (s["payout_error_code"], s["payout_error_message"]) if x),
            _short(s["updated_at"]),
        )
    out.print(table)
    for s in rows:
        out.print(Text.assemble((f"  settlement {s['id']}: ", "bold"), s["next_step"]), soft_wrap=True)


@app.command("retry-payout")
def retry_payout(
    settlement_id: Annotated[int, typer.Argument(help="The settlement whose payout failed.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded), e.g. 'store fixed its account'.")],
    operator: OperatorOption = None,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Put a failed payout back to scheduled (a checked transition, recorded with your name and reason). The next
    scheduled run (or `run-job payouts`) sends it as a new attempt with a new Idempotency-Key."""
    from escrow.repositories import ops as ops_repo
    from escrow.services import operator as service

    who = operator_name(operator)
    with _errors(as_json):
        with db.reader() as tx:
            s = ops_repo.settlement(tx, settlement_id)
        if s is None:
            _fail(f"no settlement {settlement_id}", code="SETTLEMENT_NOT_FOUND", as_json=as_json)
        if not yes:
            err.print(
                f"Settlement {s['id']} (request {s['payment_request_id']}, room {s['chat_room_id']}): net "
                f"{_won(s['net_amount'])} KRW to store {s['store_id']} (seller {s['toss_seller_id'] or '-'}, "
                f"{s['seller_status'] or 'not registered'}).\nPayout {s['payout_status']}: "
                f"{s['payout_error_code'] or ''} {s['payout_error_message'] or ''}\n"
                + (
                    f"Toss payout {s['payout_id']} must be FAILED at Toss (checked now); the retry gets a new "
                    "refPayoutId.\n"
                    if s["payout_id"]
                    else ""
                )
                + "It goes back to scheduled; the next scheduled run sends it as a new attempt.",
                soft_wrap=True,
            )
        _confirm(f"Retry the payout of settlement {settlement_id} as {who}?", yes)
        result = service.retry_payout(settlement_id, operator=who, reason=reason, toss=None)
    if as_json:
        _emit_json(result)
        return
    after = result["after"]
    out.print(
        f"Settlement {settlement_id}: payout {result['before']['payout_status']} -> {after['payout_status']} "
        f"(operator action {result['operator_action_id']} by {who}); refPayoutId {after['ref_payout_id']}, next "
        f"attempt {after['next_attempt']} (Idempotency-Key payout-{settlement_id}-{after['next_attempt']}). "
        "The next scheduled run sends it; to send it now: escrow.ops run-job payouts",
        soft_wrap=True,
    )
    if result["seller_status"] not in ("APPROVED", "PARTIALLY_APPROVED"):
        err.print(
            f"note: the store's seller is {result['seller_status'] or 'not registered'}: Toss will refuse the payout "
            "until it is approved",
            style="yellow",
        )


# --- webhooks -----------------------------------------------------------------------------------------------


def _replay_of(headers: str | None) -> str:
    try:
        agent = json.loads(headers or "{}").get("user-agent", "")
    except ValueError:
        return ""
    match = re.match(r"escrow-ops/replay-of-(\d+)/", agent)
    return f"replay of {match.group(1)}" if match else ""


@app.command()
def webhooks(
    outcome: Annotated[
        str | None,
        typer.Option("--outcome", help="processed, rejected, duplicate, ignored, error or received."),
    ] = None,
    event_type: Annotated[str | None, typer.Option("--event-type", help="e.g. PAYMENT_STATUS_CHANGED")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="30m, 1h, 2d (database clock) or an ISO 8601 time.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 100,
    as_json: JsonOption = False,
) -> None:
    """The webhook log, newest first (bodies are not shown: `replay-webhook` uses them)."""
    from escrow.repositories import ops as ops_repo

    absolute, within = _since(since)
    with _errors(as_json), db.reader() as tx:
        rows = ops_repo.webhooks(
            tx, outcome=outcome, event_type=event_type, since=absolute, within_seconds=within, limit=limit
        )
    for row in rows:
        row["note"] = _replay_of(row.pop("headers", None))
    if as_json:
        _emit_json({"webhooks": rows})
        return
    title = f"Webhook deliveries: {len(rows)}" + (f" ({outcome})" if outcome else "")
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("id", "received", "event", "verification", "outcome", "detail", "note"):
        table.add_column(name, no_wrap=name in ("id", "received", "event", "outcome"))
    for w in rows:
        table.add_row(
            str(w["id"]),
            _short(w["received_at"]),
            w["event_type"] or "",
            w["verification"],
            Text(w["outcome"], style="bold red" if w["outcome"] in ("rejected", "error") else ""),
            w["detail"] or "",
            w["note"],
        )
    out.print(table)


@app.command("replay-webhook")
def replay_webhook(
    webhook_id: Annotated[int, typer.Argument(help="The logged delivery (id from `webhooks`).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")],
    operator: OperatorOption = None,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Ask Toss again about what a logged delivery named (its payment, order, payout or seller) and apply what Toss
    says now. Nothing in the delivery is believed, so replaying a forged one changes nothing."""
    from escrow.repositories import ops as ops_repo
    from escrow.services import operator as service

    who = operator_name(operator)
    with _errors(as_json):
        with db.reader() as tx:
            w = ops_repo.webhook(tx, webhook_id)
        if w is None:
            _fail(f"no logged webhook delivery {webhook_id}", code="WEBHOOK_NOT_FOUND", as_json=as_json)
        if not yes:
            err.print(
                f"Delivery {webhook_id}: {w['event_type'] or 'unknown type'} received {_when(w['received_at'])}, "
                f"verification {w['verification']}, outcome {w['outcome']} ({w['detail'] or ''}).\n"
                f"Replaying it: {service.replay_meaning(w['event_type'])}",
                soft_wrap=True,
            )
        _confirm(f"Replay delivery {webhook_id} as {who}?", yes)
        result = service.replay_webhook(webhook_id, operator=who, reason=reason)
    applied = result["result"] == "applied"
    if as_json:
        _emit_json(result)
    else:
        out.print(
            Text(
                f"Delivery {webhook_id} ({result['subject'] or 'no subject'}) replayed (operator action "
                f"{result['operator_action_id']} by {who}): {result['result']}: {result['detail']}",
                style="green" if applied else "bold red",
            ),
            soft_wrap=True,
        )
    if not applied:
        raise typer.Exit(2)


# --- jobs ---------------------------------------------------------------------------------------------------


@app.command("run-job")
def run_job(
    name: Annotated[
        str,
        typer.Argument(help="reconcile_payments, reconcile_cancels, expire, release, payouts, publish, audit, or all."),
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "manual run",
    operator: OperatorOption = None,
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run one of the scheduled jobs now, through the schedule's own code (jobs.run_scheduled). Jobs that move
    money (all but publish and audit) ask first."""
    from escrow.services import operator as service

    who = operator_name(operator)
    with _errors(as_json):
        if name not in service.job_names():
            _fail(f"unknown job {name!r}; one of {', '.join(service.job_names())}", code="UNKNOWN_JOB", as_json=as_json)
        if name in service.MONEY_JOBS:
            _confirm(f"Run the scheduled job {name!r} now as {who}? It moves money.", yes)
        result = service.run_job(name, operator=who, reason=reason)
    if as_json:
        _emit_json(result)
        return
    table = Table(
        title=f"run-job {name} (operator action {result['operator_action_id']} by {who}): "
        f"{result['report']['passes']} pass(es), {result['report']['seconds']} s",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    table.add_column("job")
    table.add_column("counts")
    for job, counts in result["report"].items():
        if isinstance(counts, dict):
            table.add_row(job, ", ".join(f"{k} {v}" for k, v in counts.items()) or "nothing to do")
    out.print(table)


# --- audit --------------------------------------------------------------------------------------------------


@app.command()
def audit(
    chat_room_id: Annotated[int | None, typer.Option("--room", help="Only this chat room's requests.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Requests created at or after (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Requests created before (ISO 8601).")] = None,
    period: Annotated[
        int | None, typer.Option("--period", help="Reconciliation period in seconds (default 2 x RECONCILE_AFTER).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The ledger audit (escrow.audit: GET calls only) with a progress bar. Exit code 1 on any finding."""
    from escrow.audit import audit as run_audit

    def when(text: str | None) -> datetime | None:
        if not text:
            return None
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    with _errors(as_json):
        try:
            start, end = when(since), when(until)
        except ValueError:
            _fail("--since/--until take ISO 8601 times", code="BAD_TIME", as_json=as_json)
        with Progress(
            TextColumn("auditing requests"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        ) as bar:
            task = bar.add_task("audit", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            report = run_audit(
                chat_room_id=chat_room_id,
                since=start,
                until=end,
                reconciliation_period_seconds=period,
                progress=progress,
            )
    if as_json:
        _emit_json(report.to_json())
    else:
        if report.findings:
            table = Table(title=f"Findings: {len(report.findings)}", box=box.SIMPLE_HEAD, title_justify="left")
            for name in ("check", "request", "payment", "expected", "actual", "detail"):
                table.add_column(name)
            for f in report.findings:
                table.add_row(
                    Text(f.check, style="bold red"),
                    "" if f.payment_request_id is None else str(f.payment_request_id),
                    " ".join(
                        x for x in (f"#{f.payment_id}" if f.payment_id else "", f.order_id or f.payment_key or "") if x
                    ),
                    f.expected,
                    f.actual,
                    f.detail,
                )
            out.print(table)
            out.print("findings by check: " + ", ".join(f"{k} {v}" for k, v in report.by_check().items()))
        out.print(Text(report.summary(), style="bold red" if report.findings else "bold green"))
    if report.findings:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> int:
    """The console script's entry point."""
    try:
        app(args=argv, prog_name="escrow.ops", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    return 0
