"""Load the handlers the template deploys and invoke them with a Lambda-like context.

Each ``functions/<name>/app.py`` is loaded by file path as module ``escrow_fn_<name>`` (never ``import app``:
five functions share that module name). The function's folder is on ``sys.path`` only while its module is
imported, so a sibling helper module imports the way it would on Lambda. Loaded modules are cached: like a
warm container, module scope (configuration, connections, clients) is created once and reused.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from local.template import PSEUDO_PARAMETERS, FunctionSpec, LocalTemplate

log = logging.getLogger("local.functions")

Handler = Callable[[Any, Any], Any]

_modules: dict[Path, ModuleType] = {}
_import_lock = threading.RLock()


class FakeLambdaContext:
    """The attributes of ``awslambdaric``'s LambdaContext that handlers and Powertools read."""

    def __init__(
        self, function_name: str, timeout_s: float = 3, memory_limit_in_mb: int = 128, aws_request_id: str | None = None
    ) -> None:
        region = PSEUDO_PARAMETERS["AWS::Region"]
        account = PSEUDO_PARAMETERS["AWS::AccountId"]
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account}:function:{function_name}"
        self.memory_limit_in_mb = int(memory_limit_in_mb)
        self.aws_request_id = aws_request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self.timeout_s = float(timeout_s)
        self._deadline = time.monotonic() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def __repr__(self) -> str:
        return f"FakeLambdaContext({self.function_name!r}, request_id={self.aws_request_id!r})"


def module_name_for(spec: FunctionSpec) -> str:
    return f"escrow_fn_{spec.name}"


def load_module(name: str, file: str | Path) -> ModuleType:
    """Import ``file`` as module ``name`` once (thread-safe) with its folder on sys.path during the import."""
    path = Path(file).resolve()
    with _import_lock:
        cached = _modules.get(path)
        if cached is not None:
            return cached
        if not path.exists():
            raise FileNotFoundError(f"handler module {path} does not exist")
        existing = sys.modules.get(name)
        existing_file = getattr(existing, "__file__", None)
        if existing is not None and existing_file and Path(existing_file).resolve() == path:
            _modules[path] = existing  # already loaded the same way (e.g. by a test helper): one warm container
            return existing
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        folder = str(path.parent)
        sys.modules[name] = module
        sys.path.insert(0, folder)
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
        _modules[path] = module
        return module


def load_handler(spec: FunctionSpec) -> Handler:
    module = load_module(module_name_for(spec), spec.module_file)
    handler = getattr(module, spec.handler_attribute, None)
    if not callable(handler):
        raise AttributeError(f"{spec.module_file} has no callable {spec.handler_attribute!r} ({spec.handler})")
    return handler


def clear_cache() -> None:
    """Forget loaded modules (a cold start for every function on the next invocation)."""
    with _import_lock:
        for path, module in list(_modules.items()):
            if sys.modules.get(module.__name__) is module:
                del sys.modules[module.__name__]
            del _modules[path]


class FunctionRuntime:
    """Invokes the template's functions in this process; the caller's thread plays the container."""

    def __init__(self, template: LocalTemplate) -> None:
        self.template = template

    def spec(self, name: str) -> FunctionSpec:
        return self.template.function(name)

    def context_for(self, spec: FunctionSpec, request_id: str | None = None) -> FakeLambdaContext:
        return FakeLambdaContext(spec.logical_id, spec.timeout, spec.memory_size, request_id)

    def invoke(self, name: str, event: Any, request_id: str | None = None) -> Any:
        """Run one invocation; the handler's exception propagates (after a Lambda-style log line)."""
        spec = self.spec(name)
        handler = load_handler(spec)
        context = self.context_for(spec, request_id)
        started = time.perf_counter()
        try:
            return handler(event, context)
        except Exception:
            log.error(
                "%s RequestId: %s failed:\n%s", spec.logical_id, context.aws_request_id, traceback.format_exc().rstrip()
            )
            raise
        finally:
            elapsed = time.perf_counter() - started
            if elapsed > spec.timeout:
                log.warning(
                    "%s RequestId: %s ran %.1f s, longer than its Timeout of %s s (Lambda would have stopped it)",
                    spec.logical_id,
                    context.aws_request_id,
                    elapsed,
                    spec.timeout,
                )
            log.debug(
                "REPORT %s RequestId: %s Duration: %.2f ms", spec.logical_id, context.aws_request_id, elapsed * 1000
            )
