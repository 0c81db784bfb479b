"""``python -m toss_sandbox`` starts a server with the given settings."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import requests

from toss_sandbox import basic_auth_header

from .conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serves_toss_and_the_controls_with_its_flags() -> None:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toss_sandbox",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--secret-key",
            "test_sk_cli000000000000000000000",
            "--webhook-url",
            "http://127.0.0.1:9/hook",
            "--webhook-retry-delays",
            "0.5,1",
            "--available-balance",
            "5000",
            "--settlement-delay-seconds",
            "60",
            "--no-idempotency-bind-5xx",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return requests.get(f"{base}/sandbox/health", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, timeout=15)
        config = requests.get(f"{base}/sandbox/config", timeout=5).json()
        assert config["secret_keys"] == ["test_sk_cli000000000000000000000"]
        assert config["webhook_url"] == "http://127.0.0.1:9/hook"
        assert config["webhook_retry_delays"] == [0.5, 1.0]
        assert (config["available_balance"], config["settlement_delay_seconds"]) == (5000, 60.0)
        assert config["idempotency_bind_5xx"] is False
        headers = {"Authorization": basic_auth_header("test_sk_cli000000000000000000000")}
        response = requests.get(f"{base}/v1/payments/tgen_none", headers=headers, timeout=5)
        assert response.json()["code"] == "NOT_FOUND_PAYMENT"
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert f"listening on {base}" in out
