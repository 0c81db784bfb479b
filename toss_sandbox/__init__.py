"""Toss Payments sandbox: a development-only local HTTP server that behaves like Toss for this project.

Start it in-process::

    from toss_sandbox import start_sandbox
    sb = start_sandbox(host="127.0.0.1", port=0, webhook_url="http://127.0.0.1:3000/api/v1/payment/webhook")
    sb.url      # "http://127.0.0.1:NNNN"
    sb.stop()

or from a shell: ``python -m toss_sandbox --host 127.0.0.1 --port 4010``.

Modules: ``server`` (HTTP + ``start_sandbox``), ``toss_api`` (Toss endpoints and the call pipeline),
``controls`` (``/sandbox/*`` test controls), ``core`` (wiring + ticker), ``store`` (state, one lock),
``idempotency``, ``faults``, ``payments``, ``payouts``, ``balances`` (pending/available and settlement),
``banks`` (Toss's and the standard bank codes), ``checkout`` (the payment window), ``webhooks``, ``jwe``,
``schema`` (Payment schema check), ``auth``, ``errors`` (codes and statuses), ``clock``, ``ids``, ``routing``,
``settings``. Sources and settings of every Toss behaviour: docs/toss-behaviours.md.
"""

from .auth import basic_auth_header
from .jwe import jwe_decrypt, jwe_encrypt, jwe_protected_header
from .server import Sandbox, start_sandbox
from .settings import DEFAULT_SECRET_KEYS, DEFAULT_SECURITY_KEY, SandboxSettings
from .webhooks import rotated_out_key, sign_webhook, signature_header

__all__ = [
    "DEFAULT_SECRET_KEYS",
    "DEFAULT_SECURITY_KEY",
    "Sandbox",
    "SandboxSettings",
    "basic_auth_header",
    "jwe_decrypt",
    "jwe_encrypt",
    "jwe_protected_header",
    "rotated_out_key",
    "sign_webhook",
    "signature_header",
    "start_sandbox",
]
