"""Powertools Logger, Metrics and (optionally) Tracer, shared by every function.

The X-Ray SDK behind Powertools' Tracer imports botocore when it starts (about 300 ms of cold start here), so
the Tracer is created only when POWERTOOLS_TRACE_DISABLED is false and we run on Lambda. Lambda's own active
tracing (template: Tracing: Active) records every invocation either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "escrow"))
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "EscrowService"))

_tracer: Any = None


def tracing_enabled() -> bool:
    disabled = os.environ.get("POWERTOOLS_TRACE_DISABLED", "true").lower() in ("1", "true", "yes")
    return not disabled and bool(os.environ.get("LAMBDA_TASK_ROOT"))


def tracer() -> Any:
    global _tracer
    if _tracer is None and tracing_enabled():
        from aws_lambda_powertools import Tracer

        _tracer = Tracer()
    return _tracer


@contextmanager
def subsegment(name: str) -> Iterator[None]:
    t = tracer()
    if t is None:
        yield
        return
    with t.provider.in_subsegment(name):
        yield


def count(metric: str, value: float = 1) -> None:
    metrics.add_metric(name=metric, unit=MetricUnit.Count, value=value)


def lambda_entry(handler: Callable[[dict[str, Any], Any], Any], *, http: bool = True) -> Callable[..., Any]:
    """The fixed decorator stack of every handler: logger context with correlation id, metrics, tracer."""
    path = correlation_paths.API_GATEWAY_HTTP if http else None
    wrapped = logger.inject_lambda_context(correlation_id_path=path, clear_state=True)(handler)
    wrapped = metrics.log_metrics(wrapped)
    t = tracer()
    if t is not None:
        wrapped = t.capture_lambda_handler(wrapped)
    return wrapped
