"""Read template.yaml the way the local runner needs it: functions, HTTP API routes and environment.

CloudFormation short-form tags (``!Ref``, ``!Sub``, ``!If`` ...) are loaded as their long form
(``{"Ref": ...}``, ``{"Fn::Sub": ...}``) and resolved locally: parameters from ``local/env.json``'s
``Parameters`` section or the template's defaults, pseudo parameters from fixed local values, conditions
evaluated, resources referenced by their logical id.

Environment precedence for one function, lowest first (``sam local invoke --env-vars`` semantics, plus the
process environment on top so tests and shells can point the runner elsewhere):

1. template ``Globals.Function.Environment``      2. the function's own ``Environment``
3. env.json ``Parameters`` (applies to every function)   4. env.json ``<LogicalId>`` section
5. variables already set in the process (``os.environ``)

As with ``sam local``, steps 3-5 only change variables the template declares for that function.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from local import REPO_ROOT

DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"
DEFAULT_ENV_FILE = REPO_ROOT / "local" / "env.json"

PSEUDO_PARAMETERS = {
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::Region": "ap-northeast-2",
    "AWS::StackName": "escrow-local",
    "AWS::StackId": "arn:aws:cloudformation:ap-northeast-2:123456789012:stack/escrow-local/local",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::NotificationARNs": [],
}
_FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
_ROUTE_EVENT_TYPES = ("HttpApi", "Api")
_SCHEDULE_EVENT_TYPES = ("Schedule", "ScheduleV2")


class _NoValue:
    """Marker for ``!Ref AWS::NoValue``: the property or list item disappears."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


# --------------------------------------------------------------------------------------------------- YAML


class CloudFormationLoader(yaml.SafeLoader):
    """A safe loader that reads ``!Tag value`` as the long form ``{"Fn::Tag": value}`` (``!Ref`` -> ``Ref``)."""


def _construct_short_form(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        value = [resource, attribute]
    return {f"Fn::{tag_suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _construct_short_form)


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        document = yaml.load(handle, Loader=CloudFormationLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a CloudFormation template")
    return document


def load_env_file(path: str | Path | None) -> dict[str, dict[str, str]]:
    """The ``sam local invoke --env-vars`` file: ``{"Parameters": {...}, "<LogicalId>": {...}}``."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of sections")
    sections: dict[str, dict[str, str]] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: section {section!r} must be an object")
        sections[section] = {str(k): _env_string(v) for k, v in values.items()}
    return sections


def _env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# ------------------------------------------------------------------------------------------ intrinsics


class Resolver:
    """Resolves CloudFormation intrinsic functions with local values."""

    def __init__(self, template: Mapping[str, Any], parameter_values: Mapping[str, Any]) -> None:
        self.template = template
        self.resources: Mapping[str, Any] = template.get("Resources") or {}
        self.mappings: Mapping[str, Any] = template.get("Mappings") or {}
        self.conditions_src: Mapping[str, Any] = template.get("Conditions") or {}
        self.parameters: dict[str, Any] = {}
        for name, spec in (template.get("Parameters") or {}).items():
            spec = spec or {}
            raw = parameter_values.get(name, spec.get("Default", ""))
            if spec.get("Type") == "CommaDelimitedList" or str(spec.get("Type", "")).startswith("List<"):
                self.parameters[name] = [] if raw in ("", None) else [s.strip() for s in str(raw).split(",")]
            else:
                self.parameters[name] = _env_string(raw)
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            if name not in self.conditions_src:
                raise KeyError(f"unknown condition {name!r}")
            self._conditions[name] = bool(self.resolve(self.conditions_src[name]))
        return self._conditions[name]

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name == "AWS::Region":
            return os.environ.get("AWS_REGION") or PSEUDO_PARAMETERS["AWS::Region"]
        if name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources:
            return name
        raise KeyError(f"!Ref to unknown name {name!r}")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            out = {k: self.resolve(v) for k, v in value.items()}
            return {k: v for k, v in out.items() if v is not NO_VALUE}
        ((key, arg),) = value.items()
        if key == "Ref":
            return self.ref(arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if key == "Fn::Equals":
            left, right = (self.resolve(v) for v in arg)
            return _env_string(left) == _env_string(right) if not isinstance(left, list) else left == right
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(v) for v in arg)
        if key == "Fn::Or":
            return any(self.resolve(v) for v in arg)
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Fn::Join":
            delimiter, items = arg
            items = self.resolve(items)
            return str(delimiter).join(_env_string(i) for i in items)
        if key == "Fn::Split":
            delimiter, text = arg
            return _env_string(self.resolve(text)).split(delimiter)
        if key == "Fn::Select":
            index, items = arg
            return self.resolve(items)[int(self.resolve(index))]
        if key == "Fn::GetAtt":
            resource, attribute = arg if isinstance(arg, list) else str(arg).split(".", 1)
            return f"{resource}.{self.resolve(attribute)}"
        if key == "Fn::FindInMap":
            name, top, second = (self.resolve(v) for v in arg[:3])
            return self.mappings[name][top][second]
        if key == "Fn::Base64":
            return base64.b64encode(_env_string(self.resolve(arg)).encode()).decode()
        if key == "Fn::GetAZs":
            return []
        if key == "Fn::ImportValue":
            return ""
        if key.startswith("Fn::"):
            raise ValueError(f"intrinsic {key} is not supported by the local runner")
        resolved = self.resolve(arg)
        return {} if resolved is NO_VALUE else {key: resolved}

    _SUB_VAR = re.compile(r"\$\{([^}]+)\}")

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, variables = arg[0], {k: self.resolve(v) for k, v in (arg[1] or {}).items()}
        else:
            text, variables = arg, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return _env_string(variables[name])
            if "." in name and not name.startswith("AWS::"):
                return name
            value = self.ref(name)
            return ",".join(value) if isinstance(value, list) else _env_string(value)

        return self._SUB_VAR.sub(replace, text)


# ------------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class Route:
    method: str  # upper case, or "ANY"
    path: str  # "/api/v1/payment/status/{chatRoomId}" or "$default"
    function: str  # logical id

    @property
    def route_key(self) -> str:
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"


@dataclass
class FunctionSpec:
    logical_id: str
    name: str  # short name: the CodeUri folder ("request")
    code_uri: str
    code_dir: Path
    handler: str
    timeout: int
    memory_size: int
    environment: dict[str, str]
    routes: list[Route] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)

    @property
    def module_file(self) -> Path:
        module = self.handler.rsplit(".", 1)[0]
        return self.code_dir / (module.replace(".", "/") + ".py")

    @property
    def handler_attribute(self) -> str:
        return self.handler.rsplit(".", 1)[1]


@dataclass
class LocalTemplate:
    path: Path
    functions: dict[str, FunctionSpec]
    routes: list[Route]
    env_file: Path | None = None

    def function(self, name: str) -> FunctionSpec:
        """A function by logical id (``RequestFunction``) or short name (``request``), case-insensitive."""
        if name in self.functions:
            return self.functions[name]
        wanted = name.lower()
        for spec in self.functions.values():
            if wanted in (spec.logical_id.lower(), spec.name.lower(), spec.name.lower() + "function"):
                return spec
        known = ", ".join(f"{s.logical_id} ({s.name})" for s in self.functions.values())
        raise KeyError(f"no function {name!r} in {self.path.name}; known: {known}")

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
        """The route API Gateway would pick: exact paths before templated ones, greedy ``{proxy+}`` last."""
        method = method.upper()
        candidates: list[tuple[tuple[int, int, int], Route, dict[str, str]]] = []
        for route in self.routes:
            if route.path == "$default":
                continue
            if route.method not in ("ANY", method):
                continue
            params = _match_path(route.path, raw_path)
            if params is None:
                continue
            greedy = int(route.path.endswith("+}"))
            rank = (greedy, len(params), int(route.method == "ANY"))
            candidates.append((rank, route, params))
        if candidates:
            candidates.sort(key=lambda c: c[0])
            _, route, params = candidates[0]
            return route, params
        for route in self.routes:
            if route.path == "$default":
                return route, {}
        return None

    def merged_environment(self) -> tuple[dict[str, str], list[str]]:
        """The union of every function's environment (one process hosts them all) and any conflicts."""
        merged: dict[str, str] = {}
        conflicts: list[str] = []
        for spec in self.functions.values():
            for key, value in spec.environment.items():
                if key in merged and merged[key] != value:
                    conflicts.append(f"{key}: {merged[key]!r} vs {value!r} ({spec.logical_id})")
                merged[key] = value
        return merged, conflicts


def _match_path(template_path: str, raw_path: str) -> dict[str, str] | None:
    from urllib.parse import unquote

    t_parts = template_path.strip("/").split("/") if template_path != "/" else []
    p_parts = raw_path.strip("/").split("/") if raw_path not in ("", "/") else []
    if raw_path.endswith("/") and raw_path != "/" and not template_path.endswith("+}"):
        return None
    params: dict[str, str] = {}
    for index, part in enumerate(t_parts):
        if part.startswith("{") and part.endswith("+}"):
            rest = p_parts[index:]
            if not rest:
                return None
            params[part[1:-2]] = unquote("/".join(rest))
            return params
        if index >= len(p_parts):
            return None
        segment = p_parts[index]
        if part.startswith("{") and part.endswith("}"):
            if not segment:
                return None
            params[part[1:-1]] = unquote(segment)
        elif part != segment:
            return None
    return params if len(p_parts) == len(t_parts) else None


def _as_int(value: Any, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def load_template(
    template_path: str | Path | None = None,
    env_file: str | Path | None = DEFAULT_ENV_FILE,
    functions_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LocalTemplate:
    """Parse the template and compute each function's local environment.

    ``functions_dir`` replaces the folder of every CodeUri (tests point it at dummy handlers);
    ``environ`` is the process environment whose values win (``os.environ`` by default, ``{}`` to ignore it).
    """
    path = Path(template_path) if template_path else DEFAULT_TEMPLATE
    document = load_yaml(path)
    env_sections = load_env_file(env_file)
    global_env_file = env_sections.get("Parameters", {})
    resolver = Resolver(document, global_env_file)
    environ = os.environ if environ is None else environ

    globals_fn = (document.get("Globals") or {}).get("Function") or {}
    functions: dict[str, FunctionSpec] = {}
    routes: list[Route] = []
    for logical_id, resource in (document.get("Resources") or {}).items():
        if not isinstance(resource, dict) or resource.get("Type") not in _FUNCTION_TYPES:
            continue
        props = resource.get("Properties") or {}
        merged = {**globals_fn, **props}
        code_uri = str(resolver.resolve(merged.get("CodeUri") or merged.get("Code") or "."))
        short = Path(code_uri.rstrip("/")).name or logical_id
        code_dir = (Path(functions_dir) / short) if functions_dir else (path.parent / code_uri)

        env: dict[str, str] = {}
        for source in (
            (globals_fn.get("Environment") or {}).get("Variables") or {},
            (props.get("Environment") or {}).get("Variables") or {},
        ):
            resolved = resolver.resolve(source) if isinstance(source, dict) else {}
            env.update({k: _env_string(v) for k, v in (resolved or {}).items()})
        # Like `sam local --env-vars`: the file overrides only variables the template declares.
        for section in (global_env_file, env_sections.get(logical_id, {})):
            env.update({key: value for key, value in section.items() if key in env})
        for key in list(env):
            if key in environ:
                env[key] = environ[key]

        spec = FunctionSpec(
            logical_id=logical_id,
            name=short,
            code_uri=code_uri,
            code_dir=code_dir.resolve(),
            handler=str(resolver.resolve(merged.get("Handler", "app.lambda_handler"))),
            timeout=_as_int(resolver.resolve(merged.get("Timeout", 3)), 3),
            memory_size=_as_int(resolver.resolve(merged.get("MemorySize", 128)), 128),
            environment=env,
        )
        for event_name, event in (props.get("Events") or {}).items():
            event = event or {}
            event_props = event.get("Properties") or {}
            if event.get("Type") in _ROUTE_EVENT_TYPES:
                method = str(resolver.resolve(event_props.get("Method", "ANY"))).upper()
                route_path = str(resolver.resolve(event_props.get("Path", "$default")))
                route = Route(
                    method="ANY" if method in ("ANY", "X-AMAZON-APIGATEWAY-ANY-METHOD") else method,
                    path=route_path,
                    function=logical_id,
                )
                spec.routes.append(route)
                routes.append(route)
            elif event.get("Type") in _SCHEDULE_EVENT_TYPES:
                raw_input = resolver.resolve(event_props.get("Input", "{}"))
                try:
                    parsed = json.loads(raw_input) if isinstance(raw_input, str) else raw_input
                except json.JSONDecodeError:
                    parsed = raw_input
                spec.schedules.append(
                    {
                        "name": event_name,
                        "expression": resolver.resolve(event_props.get("ScheduleExpression", "")),
                        "input": parsed,
                    }
                )
        functions[logical_id] = spec
    env_path = Path(env_file) if env_file and Path(env_file).exists() else None
    return LocalTemplate(path=path.resolve(), functions=functions, routes=routes, env_file=env_path)


# ------------------------------------------------------------------------------------------ environment

LAMBDA_DEFAULTS = {
    "AWS_REGION": "ap-northeast-2",
    "AWS_DEFAULT_REGION": "ap-northeast-2",
}


def apply_environment(env: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Put ``env`` into ``os.environ`` without replacing what the process already has; ``overrides`` always win.

    Returns the previous values so :func:`restore_environment` can undo it.
    """
    previous: dict[str, str | None] = {}
    wanted: dict[str, str] = {k: v for k, v in LAMBDA_DEFAULTS.items() if k not in os.environ}
    wanted.update({k: v for k, v in env.items() if k not in os.environ})
    wanted.update(overrides or {})
    for key, value in wanted.items():
        previous.setdefault(key, os.environ.get(key))
        os.environ[key] = value
    _reset_layer_settings()
    return previous


def restore_environment(previous: Mapping[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _reset_layer_settings()


def _reset_layer_settings() -> None:
    """The layer caches its settings per container; forget them when the environment changes."""
    import sys

    config = sys.modules.get("escrow.config")
    reset = getattr(config, "reset_settings", None)
    if callable(reset):
        reset()
