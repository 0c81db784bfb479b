"""The README walkthrough against a deployed stack (or the local one): a room gets paid, and the money trace.

    make smoke API=https://<api-id>.execute-api.ap-northeast-2.amazonaws.com TOKEN_CMD='<command> ' [ARGS='...']
    python3 scripts/smoke.py --api URL --token-cmd CMD [--room 900001 --store smoke_store --amount 1000 ...]

TOKEN_CMD prints a JWT for a user: it is run with the user id as its last argument, or with ``{user}`` replaced
when the command contains it (e.g. ``python -m local.jwt {user}``; deployed, your identity provider's CLI).

Steps (each printed with the HTTP status and the answer, secrets never):
  1. with --admin: POST /api/v1/admin/stores registers the store (answered 202 at once with the seller pending; the
     scheduled run registers it with Toss, and on a stack without Toss payouts shows it refused; the store row is
     all a payment request needs);
  1b. with --admin and without --room-has-members: the room's membership, as the chat service sends it (PUT
     /api/v1/admin/rooms/{room}/members: the owner and --payer; a room we have no membership for is refused);
  2. the owner opens a request for --payer (POST /request; an open request of the room is reused);
  3. GET /status;  4. the payer prepares an order (POST /prepare): orderId and amount for Toss's payment window;
  5. the payer pays in Toss's test window (the widget with your test client key, orderId and amount) and the
     success redirect carries ``paymentKey``: give it with --payment-key, type it when asked, or, locally, pass
     --sandbox URL to pay in the Toss sandbox;
  6. POST /confirm;  7. GET /status, printed as the money trace.
Resume after paying: ``--order-id <from step 4> --payment-key <from the redirect>``.

Exit status 0 when the payment is completed (or in_progress for a virtual account awaiting deposit) and the trace
adds up; 1 otherwise. Only the standard library is used, so any python3 can run it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any


class SmokeFailed(Exception):
    pass


def token(command: str, user: str) -> str:
    args = shlex.split(command.replace("{user}", user)) if "{user}" in command else [*shlex.split(command), user]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)  # noqa: S603
    if result.returncode != 0 or not result.stdout.strip():
        raise SmokeFailed(f"the token command failed for {user}: {result.stderr.strip()[:300]}")
    value = result.stdout.strip().splitlines()[-1]
    return value.removeprefix("Authorization: ").removeprefix("Bearer ")


def call(method: str, url: str, bearer: str | None = None, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json", "accept": "application/json"}
    if bearer:
        headers["authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - the API given
    try:
        with urllib.request.urlopen(request, timeout=35) as answer:  # noqa: S310
            status, text = answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    except (urllib.error.URLError, TimeoutError) as error:
        raise SmokeFailed(f"{method} {url}: no answer ({error})") from error
    try:
        return status, json.loads(text) if text else None
    except json.JSONDecodeError:
        return status, text


def show(step: str, status: int, answer: Any) -> None:
    text = json.dumps(answer, ensure_ascii=False) if not isinstance(answer, str) else answer
    print(f"{step:<28} {status}  {text[:600]}")


def pay_in_sandbox(sandbox: str, order_id: str, amount: int) -> str:
    url = f"{sandbox.rstrip('/')}/sandbox/payments"
    status, answer = call("POST", url, body={"orderId": order_id, "amount": amount})
    if status != 200 or not isinstance(answer, dict) or "paymentKey" not in answer:
        raise SmokeFailed(f"the sandbox did not take the payment: {status} {answer}")
    return str(answer["paymentKey"])


def money_trace(status_answer: dict[str, Any], room: int) -> list[str]:
    request = status_answer.get("payment_request") or {}
    payments = status_answer.get("payments") or []
    lines = [
        f"money trace: room {room}, request {request.get('payment_request_id')} "
        f"({request.get('status')}), {request.get('amount')} KRW a share, store {request.get('store_id')}",
        f"  {'payer':<24} {'share':>8} {'status':<20} {'paid':>8} {'refunded':>9}  paid_at",
    ]
    charged = refunded = 0
    for p in payments:
        paid = int(p.get("payment_amount") or 0) if p.get("paid_at") else 0
        back = int(p.get("refunded_amount") or 0)
        charged += paid
        refunded += back
        lines.append(
            f"  {p.get('payer_id', '?'):<24} {p.get('payment_amount', 0):>8} {p.get('payment_status', '?'):<20} "
            f"{paid:>8} {back:>9}  {p.get('paid_at') or '-'}"
        )
    lines.append(
        f"  charged {charged} KRW - refunded {refunded} KRW = {charged - refunded} KRW with us "
        f"(paid_count {request.get('paid_count')}, total_amount {request.get('total_amount')})"
    )
    return lines


def run(args: argparse.Namespace) -> int:
    api = args.api.rstrip("/")
    owner = token(args.token_cmd, args.owner)
    payer = token(args.token_cmd, args.payer)
    room = args.room

    if args.admin:
        admin = token(args.admin_token_cmd or args.token_cmd, args.admin)
        status, answer = call(
            "POST",
            f"{api}/api/v1/admin/stores",
            admin,
            {
                "store_id": args.store,
                "owner_id": f"{args.store}_owner",
                "name": "smoke test store",
                "bank_code": "88",
                "account_number": args.store_account,
                "holder_name": "홍길동",
                "business_type": "INDIVIDUAL",
                "email": "owner@example.com",
                "phone": "01012345678",
            },
        )
        show("1. register store (admin)", status, answer)
        if not args.room_has_members:
            status, answer = call(
                "PUT",
                f"{api}/api/v1/admin/rooms/{room}/members",
                admin,
                {"owner_id": args.owner, "member_ids": [args.payer]},
            )
            show("1b. room membership (chat service)", status, answer)
            if status != 200:
                raise SmokeFailed("the room's membership was not accepted")

    if not args.order_id:
        body: dict[str, Any] = {
            "chat_room_id": room,
            "store_id": args.store,
            "amount": args.amount,
            "message": "smoke test deposit",
        }
        status, answer = call("POST", f"{api}/api/v1/payment/request", owner, body)
        show("2. open request (owner)", status, answer)
        if status not in (200, 201) and not (isinstance(answer, dict) and "OPEN_REQUEST_EXISTS" in json.dumps(answer)):
            raise SmokeFailed("the request was not opened")

    status, answer = call("GET", f"{api}/api/v1/payment/status/{room}", payer)
    show("3. status (payer)", status, answer)
    if status != 200:
        raise SmokeFailed("the payer cannot see the room's request")
    amount = int(answer["payment_request"]["amount"])

    order_id = args.order_id
    if not order_id:
        status, answer = call("POST", f"{api}/api/v1/payment/prepare", payer, {"chat_room_id": room})
        show("4. prepare (payer)", status, answer)
        if status != 200:
            raise SmokeFailed("prepare failed")
        order_id = str(answer["orderId"])
        print(
            f"\n   Toss payment window: orderId={order_id} amount={answer.get('amount')} "
            f"orderName={answer.get('orderName')!r} customerKey={answer.get('customerKey')}\n"
        )

    payment_key = args.payment_key
    if not payment_key and args.sandbox:
        payment_key = pay_in_sandbox(args.sandbox, order_id, amount)
        print(f"5. paid in the Toss sandbox       paymentKey={payment_key}")
    if not payment_key:
        if not sys.stdin.isatty():
            print(
                "5. pay in Toss's test window, then run again with "
                f"--order-id {order_id} --payment-key <paymentKey from the success redirect>"
            )
            return 1
        payment_key = input("5. paymentKey from Toss's success redirect: ").strip()

    body = {
        "chat_room_id": room,
        "amount": amount,
        "paymentKey": payment_key,
        "orderId": order_id,
        "payment_method": args.payment_method,
    }
    status, answer = call("POST", f"{api}/api/v1/payment/confirm", payer, body)
    show("6. confirm (payer)", status, answer)
    confirmed = isinstance(answer, dict) and answer.get("payment_status") in ("completed", "in_progress")
    if status != 200 or not confirmed:
        raise SmokeFailed("the payment was not confirmed")

    deadline = time.monotonic() + 10
    while True:
        status, answer = call("GET", f"{api}/api/v1/payment/status/{room}", payer)
        mine = [p for p in (answer or {}).get("payments", []) if p.get("payer_id") == args.payer]
        if (status == 200 and mine and mine[0].get("paid_at")) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    show("7. status (payer)", status, answer)
    print()
    for line in money_trace(answer, room):
        print(line)
    if not mine or not mine[0].get("paid_at"):
        raise SmokeFailed("the status does not show the payer's share as paid")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", required=True, help="the stack's ApiUrl output (or the local API)")
    parser.add_argument("--token-cmd", required=True, help="prints a JWT for the user id given last (or as {user})")
    parser.add_argument("--admin-token-cmd", help="the same for the admin (default: --token-cmd)")
    parser.add_argument("--room", type=int, default=int(time.time()) % 1_000_000_000, help="chat room id")
    parser.add_argument("--store", default="smoke_store", help="store id (registered with --admin)")
    parser.add_argument("--store-account", default="110123456789", help="the store's test account number")
    parser.add_argument("--amount", type=int, default=1000, help="deposit per participant, KRW")
    parser.add_argument("--owner", default="smoke_owner", help="the room owner's user id")
    parser.add_argument("--payer", default="smoke_payer", help="the participant who pays")
    parser.add_argument("--admin", help="an admin user id: register --store first")
    parser.add_argument("--room-has-members", action="store_true", help="the service knows the room's members")
    parser.add_argument("--payment-method", default="card")
    parser.add_argument("--sandbox", help="local only: pay in this Toss sandbox instead of Toss's window")
    parser.add_argument("--order-id", help="resume: the orderId prepared earlier")
    parser.add_argument("--payment-key", help="the paymentKey from Toss's success redirect")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SmokeFailed as failure:
        print(f"smoke: FAILED: {failure}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
