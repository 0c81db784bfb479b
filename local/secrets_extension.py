"""A local stand-in for the AWS Parameters and Secrets Lambda Extension's HTTP interface, backed by moto's Secrets
Manager: what deployed functions ask for their secrets, for tests and for `python -m bench cold` (deployed mode).

The interface, as AWS documents it for the extension (Lambda developer guide, "Use Secrets Manager secrets in
Lambda functions"): `GET http://localhost:<PARAMETERS_SECRETS_EXTENSION_HTTP_PORT, default 2773>/secretsmanager/get
?secretId=<name or ARN>` (optionally `versionId` or `versionStage`), with the header `X-Aws-Parameters-Secrets-Token`
set to the function's session token, answers Secrets Manager's GetSecretValue JSON. Here: 401 without the right
token, 400 with Secrets Manager's error when it refuses, 404 for any other path.

    with mock_aws():
        client = boto3.client("secretsmanager", region_name="ap-northeast-2")
        arn = client.create_secret(Name="db", SecretString="...")["ARN"]
        with SecretsExtensionStandIn(client, token="session-token") as extension:
            ... PARAMETERS_SECRETS_EXTENSION_HTTP_PORT=extension.port, AWS_SESSION_TOKEN=session-token ...

`python -m local.secrets_extension --token T --secret db='{"username": ...}'` runs one in its own process (with
moto in that process), prints `{"port": ..., "arns": {name: ARN}}` on one line and serves until stopped.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN_HEADER = "X-Aws-Parameters-Secrets-Token"  # noqa: S105 - a header name, not a secret


class SecretsExtensionStandIn:
    """Serves GET /secretsmanager/get from a boto3 Secrets Manager client (moto's, in tests) on 127.0.0.1."""

    def __init__(
        self,
        client: Any,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        cache_seconds: float = 0.0,
    ) -> None:
        self.client = client
        self.token = token
        self.latency_s = latency_ms / 1000  # added to each answer not from the cache: Secrets Manager's round trip
        # The real extension keeps an answer for SECRETS_MANAGER_TTL (300 s by default) and cannot be told to skip
        # it; 0 here asks Secrets Manager (moto) every time.
        self.cache_seconds = cache_seconds
        self._cache: dict[tuple[str, ...], tuple[float, dict[str, Any]]] = {}
        self.requests: list[str] = []  # the secret ids asked for, in order
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="secrets-extension", daemon=True
        )

    def start(self) -> SecretsExtensionStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> SecretsExtensionStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        extension = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path.rstrip("/") != "/secretsmanager/get":
                    self._send(404, {"message": "not found"})
                    return
                if self.headers.get(TOKEN_HEADER) != extension.token:
                    self._send(401, {"message": f"missing or wrong {TOKEN_HEADER}"})
                    return
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                secret_id = query.get("secretId", "")
                extension.requests.append(secret_id)
                args: dict[str, str] = {"SecretId": secret_id}
                if "versionId" in query:
                    args["VersionId"] = query["versionId"]
                if "versionStage" in query:
                    args["VersionStage"] = query["versionStage"]
                key = tuple(sorted(f"{k}={v}" for k, v in args.items()))
                cached = extension._cache.get(key)
                if cached is not None and time.monotonic() - cached[0] < extension.cache_seconds:
                    self._send(200, cached[1])
                    return
                if extension.latency_s:
                    time.sleep(extension.latency_s)
                try:
                    answer = extension.client.get_secret_value(**args)
                except Exception as exc:  # noqa: BLE001 - Secrets Manager's refusal, passed on as the extension does
                    error = getattr(exc, "response", {}).get("Error", {})
                    self._send(400, {"__type": error.get("Code", type(exc).__name__), "message": str(exc)})
                    return
                answer.pop("ResponseMetadata", None)
                if extension.cache_seconds:
                    extension._cache[key] = (time.monotonic(), answer)
                self._send(200, answer)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload, default=str).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def main(argv: list[str] | None = None) -> int:
    import argparse

    import boto3
    from moto import mock_aws

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token", required=True, help="the session token callers must send")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--region", default="ap-northeast-2")
    parser.add_argument("--secret", action="append", default=[], metavar="NAME=VALUE", help="a secret to create")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer (default 0)")
    args = parser.parse_args(argv)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name=args.region)
        arns = {}
        for item in args.secret:
            name, _, value = item.partition("=")
            arns[name] = client.create_secret(Name=name, SecretString=value)["ARN"]
        with SecretsExtensionStandIn(client, token=args.token, port=args.port, latency_ms=args.latency_ms) as extension:
            print(json.dumps({"port": extension.port, "arns": arns}), flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
