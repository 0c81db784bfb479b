"""A payment window like Toss's test window: ``GET /sandbox/checkout`` serves it, ``POST /sandbox/checkout``
plays what the buyer chose and redirects the browser as Toss does.

Flow [DOC https://docs.tosspayments.com/en/api-guide; failUrl codes DOC https://docs.tosspayments.com/reference/error-codes
("failUrl로 전달되는 에러")]:

* the merchant page opens the window with ``orderId``, ``amount``, ``orderName``, ``customerName``,
  ``successUrl``, ``failUrl`` (and a ``method``);
* the buyer authenticates: the payment is ``IN_PROGRESS`` and the browser goes to
  ``successUrl?paymentKey=…&orderId=…&amount=…&paymentType=NORMAL`` (the widget adds ``paymentType``); the merchant
  must then confirm within 10 minutes [DOC https://docs.tosspayments.com/reference/using-api/webhook-events];
* the buyer closes the window: ``failUrl?code=PAY_PROCESS_CANCELED&message=…&orderId=…``; the card company
  declines: ``failUrl?code=<decline code>&message=…&orderId=…`` (e.g. ``REJECT_CARD_PAYMENT``). No payment the
  merchant could confirm exists then, and no webhook is sent (a buyer closing the window changes no status).

Parameters the SDK refuses before opening a window (an HTML error page with the code, no redirect):
missing or malformed ``successUrl``/``failUrl`` (INVALID_SUCCESS_URL, INCORRECT_SUCCESS_URL_FORMAT,
INCORRECT_FAIL_URL_FORMAT), ``orderId`` (INVALID_ORDER_ID), ``orderName`` (INVALID_ORDER_NAME), ``amount``
(INVALID_AMOUNT_VALUE [3P list of widget SDK errors]) and ``method`` (NOT_SUPPORTED_METHOD); codes from Toss's
error list [DOC https://docs.tosspayments.com/reference/error-codes]. What the window does with an orderId that
was already paid is UNCONFIRMED: the sandbox redirects to failUrl with DUPLICATED_ORDER_ID.

Plain HTML and a few lines of inline JavaScript (no build step, nothing fetched from elsewhere). Every value
from the query string is HTML-escaped; the POST re-validates every field rather than trusting the form.
"""

from __future__ import annotations

import html
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

from .errors import TossError, message_for
from .payments import CARD, METHOD_ALIASES, ORDER_ID_RE, VIRTUAL_ACCOUNT, as_whole_amount
from .routing import Request, Response

if TYPE_CHECKING:
    from .core import SandboxCore

# Decline codes offered in the window (REJECT_CARD_PAYMENT first: "한도초과 혹은 잔액부족").
DECLINE_CODES = (
    "REJECT_CARD_PAYMENT",
    "REJECT_CARD_COMPANY",
    "INVALID_CARD_EXPIRATION",
    "INVALID_STOPPED_CARD",
    "INVALID_CARD_LOST_OR_STOLEN",
    "EXCEED_MAX_DAILY_PAYMENT_COUNT",
    "EXCEED_MAX_AUTH_COUNT",
    "FDS_ERROR",
    "PAY_PROCESS_ABORTED",
)
_CODE_RE = re.compile(r"^[A-Z0-9_]{1,100}$")
_AMOUNT_RE = re.compile(r"^[0-9]{1,12}$")  # ASCII digits only (str.isdigit() accepts "０４")
_FIELDS = ("orderId", "amount", "orderName", "customerName", "successUrl", "failUrl", "method")
# Messages of the window's own refusals (not in errors.py: they never come from the server API).
WINDOW_ERRORS = {
    "INVALID_SUCCESS_URL": "successUrl 값은 필수 값입니다.",
    "INCORRECT_SUCCESS_URL_FORMAT": "잘못된 successUrl 입니다.",
    "INCORRECT_FAIL_URL_FORMAT": "잘못된 failUrl 입니다.",
    "INVALID_ORDER_NAME": "주문 이름은 100자 이하여야 합니다.",
    "INVALID_AMOUNT_VALUE": "결제금액이 올바르지 않습니다.",
    "NOT_SUPPORTED_METHOD": "지원되지 않는 결제수단입니다.",
    "INVALID_ORDER_ID": message_for("INVALID_ORDER_ID"),
}
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'"


class WindowError(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.message = WINDOW_ERRORS.get(code, message_for(code))
        self.detail = detail
        super().__init__(f"{code}: {self.message} {detail}".strip())


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` appended to its query string (an existing query is kept)."""
    parts = urlsplit(url)
    extra = urlencode(params, quote_via=quote)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def parse_window(values: dict[str, str]) -> dict[str, Any]:
    """Validate the window's parameters as the SDK does before it opens; raises WindowError."""
    success_url = values.get("successUrl", "")
    fail_url = values.get("failUrl", "")
    if not success_url:
        raise WindowError("INVALID_SUCCESS_URL")
    if not _is_http_url(success_url):
        raise WindowError("INCORRECT_SUCCESS_URL_FORMAT")
    if not _is_http_url(fail_url):
        raise WindowError("INCORRECT_FAIL_URL_FORMAT")
    order_id = values.get("orderId", "")
    if not ORDER_ID_RE.match(order_id):
        raise WindowError("INVALID_ORDER_ID")
    order_name = values.get("orderName", "")
    if not order_name.strip() or len(order_name) > 100:
        raise WindowError("INVALID_ORDER_NAME")
    raw_amount = values.get("amount", "")
    amount = as_whole_amount(int(raw_amount), minimum=1) if _AMOUNT_RE.match(raw_amount) else None
    if amount is None:
        raise WindowError("INVALID_AMOUNT_VALUE")
    method = METHOD_ALIASES.get(values.get("method") or CARD)
    if method not in (CARD, VIRTUAL_ACCOUNT):
        raise WindowError("NOT_SUPPORTED_METHOD", "the sandbox window offers 카드 and 가상계좌")
    customer_name = values.get("customerName", "")
    if len(customer_name) > 100:
        raise WindowError("INVALID_REQUEST", "customerName is at most 100 characters")
    return {
        "orderId": order_id,
        "amount": amount,
        "orderName": order_name,
        "customerName": customer_name,
        "successUrl": success_url,
        "failUrl": fail_url,
        "method": method,
    }


class CheckoutWindow:
    def __init__(self, core: SandboxCore) -> None:
        self.core = core

    def page(self, req: Request) -> Response:
        """``GET /sandbox/checkout``: the window, or an error page when the SDK would refuse to open it."""
        values = {name: (req.query.get(name) or [""])[0] for name in _FIELDS}
        try:
            window = parse_window(values)
        except WindowError as exc:
            return Response.html(400, _error_page(exc), {"Content-Security-Policy": CSP})
        return Response.html(200, _window_page(window), {"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    def submit(self, req: Request) -> Response:
        """``POST /sandbox/checkout`` (a form post): play the buyer's choice and redirect as Toss does."""
        fields = parse_qs(req.body.decode("utf-8", errors="replace"), keep_blank_values=True)
        form = {name: values[0] for name, values in fields.items()}
        try:
            window = parse_window(form)
        except WindowError as exc:
            return Response.html(400, _error_page(exc), {"Content-Security-Policy": CSP})
        action = form.get("action", "")
        if action == "cancel":
            return self._fail(window, "PAY_PROCESS_CANCELED")
        if action == "decline":
            code = (form.get("customCode") or form.get("code") or "REJECT_CARD_PAYMENT").strip()
            if not _CODE_RE.match(code):
                return Response.html(400, _error_page(WindowError("INVALID_REQUEST", "code: [A-Z0-9_]+")))
            return self._fail(window, code)
        if action not in ("card", "virtual_account"):
            return Response.html(400, _error_page(WindowError("INVALID_REQUEST", "unknown action")))
        method = VIRTUAL_ACCOUNT if action == "virtual_account" else CARD
        try:
            created = self.core.payments.create_authenticated(
                {
                    "orderId": window["orderId"],
                    "amount": window["amount"],
                    "orderName": window["orderName"],
                    "customerName": window["customerName"] or None,
                    "method": method,
                }
            )
        except TossError as exc:  # e.g. DUPLICATED_ORDER_ID, BELOW_MINIMUM_AMOUNT
            return self._fail(window, exc.code, exc.message)
        with self.core.store.lock:
            self.core.store.counters["checkout_successes"] += 1
        return Response.redirect(
            with_query(
                window["successUrl"],
                {
                    "paymentKey": created["paymentKey"],
                    "orderId": created["orderId"],
                    "amount": str(created["amount"]),
                    "paymentType": "NORMAL",
                },
            )
        )

    def _fail(self, window: dict[str, Any], code: str, message: str | None = None) -> Response:
        with self.core.store.lock:
            self.core.store.counters["checkout_failures"] += 1
        params = {"code": code, "message": message or message_for(code), "orderId": window["orderId"]}
        return Response.redirect(with_query(window["failUrl"], params))


# ---------------------------------------------------------------------- pages
_STYLE = """
body{font-family:system-ui,-apple-system,"Apple SD Gothic Neo","Noto Sans KR",sans-serif;background:#f2f4f6;
margin:0;color:#191f28}
main{max-width:420px;margin:32px auto;background:#fff;border-radius:16px;padding:24px;
box-shadow:0 2px 12px rgba(0,0,0,.08)}
h1{font-size:18px;margin:0 0 4px}.badge{display:inline-block;font-size:12px;background:#fff1e6;color:#e2640c;
border-radius:6px;padding:2px 6px;margin-bottom:16px}
dl{display:grid;grid-template-columns:auto 1fr;gap:6px 12px;margin:0 0 20px}dt{color:#6b7684}dd{margin:0}
.amount{font-size:24px;font-weight:700;margin:8px 0 20px}
button{width:100%;border:0;border-radius:10px;padding:14px;font-size:16px;margin:6px 0;cursor:pointer;
background:#e8f3ff;color:#1b64da}button.primary{background:#3182f6;color:#fff}
button.danger{background:#fff0f0;color:#d22030}button:disabled{opacity:.5}
fieldset{border:1px solid #e5e8eb;border-radius:10px;margin:12px 0;padding:8px 12px}
select,input[type=text]{width:100%;padding:8px;margin:4px 0;box-sizing:border-box;font-size:14px}
#declineMessage{font-size:13px;color:#6b7684;min-height:1em}
"""

_SCRIPT = """
(function () {
  var form = document.getElementById("window");
  var select = document.getElementById("code");
  var note = document.getElementById("declineMessage");
  var messages = JSON.parse(document.getElementById("messages").textContent);
  function show() { note.textContent = messages[select.value] || ""; }
  select.addEventListener("change", show);
  show();
  form.addEventListener("submit", function (event) {
    // One choice per window, as in Toss's window: no double submission.
    var chosen = event.submitter;
    if (chosen) {
      var hidden = document.createElement("input");
      hidden.type = "hidden"; hidden.name = "action"; hidden.value = chosen.value;
      form.appendChild(hidden);
      chosen.name = "";
    }
    Array.prototype.forEach.call(form.querySelectorAll("button"), function (b) { b.disabled = true; });
  });
})();
"""


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="ko"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request (a 404 in a browser test's console)
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body><main>{body}</main></body></html>\n"
    )


def _error_page(error: WindowError) -> str:
    detail = f"<p>{html.escape(error.detail)}</p>" if error.detail else ""
    return _page(
        "결제창을 열 수 없습니다",
        f'<h1>결제창을 열 수 없습니다</h1><span class="badge">테스트 결제창 (sandbox)</span>'
        f'<p id="error-code"><code>{html.escape(error.code)}</code></p>'
        f'<p id="error-message">{html.escape(error.message)}</p>{detail}',
    )


def _window_page(window: dict[str, Any]) -> str:
    esc = html.escape
    hidden = "".join(
        f'<input type="hidden" name="{name}" value="{esc(str(window[name]))}">'
        for name in ("orderId", "amount", "orderName", "customerName", "successUrl", "failUrl", "method")
    )
    card_first = window["method"] == CARD
    card = '<button type="submit" name="action" value="card" class="{}" id="pay-card">카드로 결제</button>'.format(
        "primary" if card_first else ""
    )
    va = (
        '<button type="submit" name="action" value="virtual_account" class="{}" id="pay-virtual-account">'
        "가상계좌 발급</button>"
    ).format("" if card_first else "primary")
    options = "".join(f'<option value="{c}">{c}</option>' for c in DECLINE_CODES)
    # JSON inside <script type="application/json">: escape "<" so no value can close the element.
    messages_json = json.dumps({c: message_for(c) for c in DECLINE_CODES}, ensure_ascii=False).replace("<", "\\u003c")
    customer = (
        f'<dt>구매자</dt><dd id="customer-name">{esc(window["customerName"])}</dd>' if window["customerName"] else ""
    )
    body = (
        '<h1>토스페이먼츠</h1><span class="badge">테스트 결제창 (sandbox): 실제로 결제되지 않습니다</span>'
        f'<dl><dt>주문</dt><dd id="order-name">{esc(window["orderName"])}</dd>'
        f'<dt>주문번호</dt><dd id="order-id">{esc(window["orderId"])}</dd>{customer}</dl>'
        f'<div class="amount" id="amount">{window["amount"]:,}원</div>'
        f'<form id="window" method="post" action="/sandbox/checkout">{hidden}'
        f"{card if card_first else va}{va if card_first else card}"
        "<fieldset><legend>카드사 거절</legend>"
        f'<label for="code">거절 코드</label><select name="code" id="code">{options}</select>'
        '<label for="customCode">또는 직접 입력</label>'
        '<input type="text" name="customCode" id="customCode" pattern="[A-Z0-9_]{1,100}" placeholder="SOME_CODE">'
        '<div id="declineMessage"></div>'
        '<button type="submit" name="action" value="decline" class="danger" id="decline">결제 거절</button>'
        "</fieldset>"
        '<button type="submit" name="action" value="cancel" id="cancel">결제 취소 (창 닫기)</button>'
        "</form>"
        f'<script type="application/json" id="messages">{messages_json}</script>'
        f"<script>{_SCRIPT}</script>"
    )
    return _page("토스페이먼츠 테스트 결제창", body)
