"""Fault injection for Toss calls (``/sandbox/faults``).

Order inside one Toss call (after auth and the idempotency check):

1. ``latency_ms`` (+ uniform ``0..jitter_ms``) is slept.
2. ``timeout_rate``: sleep ``timeout_seconds`` without processing, then 500 FAILED_INTERNAL_SYSTEM_PROCESSING.
3. ``server_error_rate``: 500 FAILED_INTERNAL_SYSTEM_PROCESSING without processing.
4. ``failure_code``: answer that code (status from the code table, or ``failure_status``) without processing,
   on the next ``count`` matching calls (``count`` null = on every matching call).
5. ``failure_rate`` (confirm calls only): a realistic decline; the payment becomes ABORTED with
   ``failure`` set (a PAYMENT_STATUS_CHANGED webhook is sent). Code = random pick of ``failure_codes``
   (default ["REJECT_CARD_PAYMENT"], 403).
6. The request is processed.
7. ``lose_answer_rate``: the processed answer is bound to the idempotency key, then the server hangs
   ``timeout_seconds`` and closes the connection without answering.

Faults apply to calls whose path starts with one of ``paths`` (default: every /v1/ and /v2/ call).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import DEFAULT_DECLINE_CODES
from .ids import IdFactory

DEFAULT_PATHS = ["/v1/", "/v2/"]


class FaultConfigError(ValueError):
    pass


@dataclass
class FaultConfig:
    failure_rate: float = 0.0
    failure_codes: list[str] = field(default_factory=lambda: list(DEFAULT_DECLINE_CODES))
    failure_code: str | None = None
    failure_status: int | None = None
    failure_message: str | None = None
    count: int | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    lose_answer_rate: float = 0.0
    server_error_rate: float = 0.0
    paths: list[str] = field(default_factory=lambda: list(DEFAULT_PATHS))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_RATES = ("failure_rate", "timeout_rate", "lose_answer_rate", "server_error_rate")
_NON_NEGATIVE = ("latency_ms", "jitter_ms", "timeout_seconds")


def merge_fault_config(current: FaultConfig, changes: dict[str, Any]) -> FaultConfig:
    """Return ``current`` updated with ``changes`` (validated); raises FaultConfigError."""
    names = {f.name for f in fields(FaultConfig)}
    unknown = set(changes) - names
    if unknown:
        raise FaultConfigError(f"unknown fault settings: {sorted(unknown)}")
    data = current.to_json()
    data.update(changes)
    for name in _RATES:
        value = data[name]
        if not _is_number(value) or not 0 <= value <= 1:
            raise FaultConfigError(f"{name} must be a number in 0..1")
    for name in _NON_NEGATIVE:
        if not _is_number(data[name]) or data[name] < 0:
            raise FaultConfigError(f"{name} must be a number >= 0")
    if data["failure_code"] is not None and not isinstance(data["failure_code"], str):
        raise FaultConfigError("failure_code must be a string or null")
    if data["count"] is not None and (not isinstance(data["count"], int) or data["count"] < 0):
        raise FaultConfigError("count must be a non-negative integer or null")
    if data["failure_status"] is not None and not isinstance(data["failure_status"], int):
        raise FaultConfigError("failure_status must be an integer or null")
    codes = data["failure_codes"]
    if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
        raise FaultConfigError("failure_codes must be a non-empty list of codes")
    paths = data["paths"]
    if paths is None:
        data["paths"] = list(DEFAULT_PATHS)
    elif not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise FaultConfigError("paths must be a list of path prefixes")
    return FaultConfig(**data)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class PreFault:
    kind: str  # "timeout" | "server_error" | "failure_code" | "decline"
    code: str
    status: int | None = None
    message: str | None = None


class FaultInjector:
    """Holds the fault configuration and draws faults for each call."""

    def __init__(self, lock: threading.RLock, ids: IdFactory) -> None:
        self._lock = lock
        self._ids = ids
        self.config = FaultConfig()

    def reset(self) -> None:
        with self._lock:
            self.config = FaultConfig()

    def update(self, changes: dict[str, Any]) -> FaultConfig:
        with self._lock:
            self.config = merge_fault_config(self.config, changes)
            return self.config

    def snapshot(self) -> FaultConfig:
        with self._lock:
            return FaultConfig(**self.config.to_json())

    def applies(self, path: str) -> bool:
        with self._lock:
            return any(path.startswith(prefix) for prefix in self.config.paths)

    def latency_seconds(self) -> float:
        with self._lock:
            latency, jitter = self.config.latency_ms, self.config.jitter_ms
        extra = self._ids.uniform(0, jitter) if jitter > 0 else 0.0
        return (latency + extra) / 1000.0

    def timeout_seconds(self) -> float:
        with self._lock:
            return self.config.timeout_seconds

    def draw_pre_fault(self, is_confirm: bool) -> PreFault | None:
        """Pick at most one fault to answer instead of processing (steps 2-5)."""
        with self._lock:
            cfg = self.config
            if self._ids.chance(cfg.timeout_rate):
                return PreFault("timeout", "FAILED_INTERNAL_SYSTEM_PROCESSING")
            if self._ids.chance(cfg.server_error_rate):
                return PreFault("server_error", "FAILED_INTERNAL_SYSTEM_PROCESSING")
            if cfg.failure_code and (cfg.count is None or cfg.count > 0):
                fault = PreFault("failure_code", cfg.failure_code, cfg.failure_status, cfg.failure_message)
                if cfg.count is not None:
                    cfg.count -= 1
                    if cfg.count == 0:
                        cfg.failure_code = None
                        cfg.count = None
                return fault
            if is_confirm and self._ids.chance(cfg.failure_rate):
                return PreFault("decline", self._ids.choice(cfg.failure_codes))
            return None

    def draw_lose_answer(self) -> bool:
        with self._lock:
            rate = self.config.lose_answer_rate
        return self._ids.chance(rate)
