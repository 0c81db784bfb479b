"""What template.yaml becomes for given parameters: the CloudFormation Rules' verdict and the resource list.

    python3 scripts/template_check.py rules CreateDatabase=false JwtAlgorithm=HS256 ...
        evaluates the template's Rules as CloudFormation does before a deploy; exit 1 and the AssertDescriptions
        of the failed assertions when the parameters are inconsistent.
    python3 scripts/template_check.py resources [Name=Value ...]
        the synthesized template (the SAM transform, with the SAM CLI's samtranslator) and the logical id and type
        of every resource whose Condition holds for those parameters.

Parameters not given take their template defaults; the secrets default to example ARNs so the Rules pass.
Needs PyYAML (rules) and samtranslator (resources): scripts/sam-check.sh runs it with the SAM CLI's Python.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
EXAMPLE_SECRETS = {
    "TossSecretArn": "arn:aws:secretsmanager:ap-northeast-2:123456789012:secret:escrow/toss-AbCdEf",
    "JwtSecretArn": "arn:aws:secretsmanager:ap-northeast-2:123456789012:secret:escrow/jwt-AbCdEf",
}
EXISTING_DATA_TIER = {
    "CreateDatabase": "false",
    "DbSecretArn": "arn:aws:secretsmanager:ap-northeast-2:123456789012:secret:escrow/db-AbCdEf",
    "DbHost": "escrow.proxy-abcdefghijkl.ap-northeast-2.rds.amazonaws.com",
    "SubnetIds": "subnet-0a1b2c3d4e5f60001,subnet-0a1b2c3d4e5f60002",
    "SecurityGroupIds": "sg-0a1b2c3d4e5f60003",
}


class _Loader(yaml.SafeLoader):
    """CloudFormation short forms (``!Ref X``) as their long forms (``{"Ref": "X"}``)."""


def _short_form(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _short_form)


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parameter_values(template: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, Any]:
    """Every parameter's value as CloudFormation sees it: lists for list types, strings otherwise."""
    values: dict[str, Any] = {}
    for name, spec in (template.get("Parameters") or {}).items():
        raw = str(given.get(name, EXAMPLE_SECRETS.get(name, spec.get("Default", ""))))
        kind = str(spec.get("Type", "String"))
        values[name] = raw.split(",") if kind == "CommaDelimitedList" or kind.startswith("List<") else raw
    return values


class Evaluator:
    """Fn::Equals/Not/And/Or/Condition/Join/EachMemberEquals/EachMemberIn/Contains over parameter values."""

    def __init__(self, template: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        self.conditions: Mapping[str, Any] = template.get("Conditions") or {}
        self.values = values
        self._cache: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._cache:
            self._cache[name] = bool(self.eval(self.conditions[name]))
        return self._cache[name]

    def eval(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return node if not isinstance(node, list) else [self.eval(v) for v in node]
        ((key, arg),) = node.items()
        if key == "Ref":
            return self.values[arg]
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::Equals":
            left, right = (self.eval(v) for v in arg)
            return str(left) == str(right) if not isinstance(left, list) else left == right
        if key == "Fn::Not":
            return not self.eval(arg[0])
        if key == "Fn::And":
            return all(self.eval(v) for v in arg)
        if key == "Fn::Or":
            return any(self.eval(v) for v in arg)
        if key == "Fn::Join":
            return str(arg[0]).join(str(v) for v in self.eval(arg[1]))
        if key == "Fn::EachMemberEquals":
            members, value = self.eval(arg[0]), self.eval(arg[1])
            return all(str(m) == str(value) for m in members)
        if key == "Fn::EachMemberIn":
            members, allowed = self.eval(arg[0]), self.eval(arg[1])
            return all(m in allowed for m in members)
        if key == "Fn::Contains":
            members, value = self.eval(arg[0]), self.eval(arg[1])
            return value in members
        raise ValueError(f"{key} is not evaluated here")


def failed_rules(template: Mapping[str, Any], given: Mapping[str, str]) -> list[str]:
    """The AssertDescription of every assertion that fails for these parameters (CloudFormation's verdict)."""
    evaluator = Evaluator(template, parameter_values(template, given))
    failures: list[str] = []
    for name, rule in (template.get("Rules") or {}).items():
        if "RuleCondition" in rule and not evaluator.eval(rule["RuleCondition"]):
            continue
        for assertion in rule.get("Assertions", []):
            if not evaluator.eval(assertion["Assert"]):
                failures.append(f"{name}: {assertion.get('AssertDescription', '')}".strip())
    return failures


def synthesized_resources(template: Mapping[str, Any], given: Mapping[str, str]) -> list[tuple[str, str]]:
    """(logical id, type) of every resource of the SAM-transformed template that exists for these parameters."""
    import copy
    import os

    from samtranslator.translator.transform import transform

    os.environ.setdefault("AWS_DEFAULT_REGION", "ap-northeast-2")  # the translator wants a region, nothing else
    document = copy.deepcopy(dict(template))
    for resource in document["Resources"].values():  # as `sam validate` does: local code as placeholder S3 URIs
        props = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                props[key] = f"s3://placeholder-bucket/{props[key].strip('/')}"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}  # every function has its own role; no SAM policy names to resolve

    values = parameter_values(template, given)
    cfn_values = {k: ",".join(v) if isinstance(v, list) else v for k, v in values.items()}
    transformed = transform(document, cfn_values, NoManagedPolicies())
    evaluator = Evaluator(transformed, values)
    return [
        (logical_id, resource["Type"])
        for logical_id, resource in transformed["Resources"].items()
        if "Condition" not in resource or evaluator.condition(resource["Condition"])
    ]


def _given(args: list[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    for arg in args:
        name, _, value = arg.partition("=")
        given[name] = value
    return given


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("rules", "resources"):
        print(__doc__, file=sys.stderr)
        return 2
    template = load()
    given = _given(argv[1:])
    if given.get("CreateDatabase") == "false":
        given = {**EXISTING_DATA_TIER, **given}
    failures = failed_rules(template, given)
    if argv[0] == "rules":
        for failure in failures:
            print(f"refused: {failure}")
        print("rules: " + ("refused" if failures else "accepted"))
        return 1 if failures else 0
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    resources = synthesized_resources(template, given)
    shown = " ".join(f"{k}={v}" for k, v in sorted(given.items()) if k in ("CreateDatabase", "CreateVpcEndpoints"))
    print(f"# {len(resources)} resources ({shown or 'defaults: CreateDatabase=true'})")
    for logical_id, kind in resources:
        print(f"{logical_id:40} {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
