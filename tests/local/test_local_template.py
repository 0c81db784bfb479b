"""Reading template.yaml: short-form tags, intrinsics, routes and the environment precedence."""

from __future__ import annotations

import pytest

from local.template import CloudFormationLoader, load_template

from .conftest import FakeProject


def test_short_form_tags_load_as_long_form_intrinsics() -> None:
    import yaml

    doc = yaml.load(
        "a: !Ref Stage\nb: !GetAtt Bus.Arn\nc: !Sub 'x-${Stage}'\nd: !If [C, 1, 2]\ne: !Join [',', [a, b]]\n"
        "f: !Select [0, !Split [',', 'a,b']]\ng: !Not [!Equals [!Ref X, '']]\n",
        Loader=CloudFormationLoader,
    )
    assert doc == {
        "a": {"Ref": "Stage"},
        "b": {"Fn::GetAtt": ["Bus", "Arn"]},
        "c": {"Fn::Sub": "x-${Stage}"},
        "d": {"Fn::If": ["C", 1, 2]},
        "e": {"Fn::Join": [",", ["a", "b"]]},
        "f": {"Fn::Select": [0, {"Fn::Split": [",", "a,b"]}]},
        "g": {"Fn::Not": [{"Fn::Equals": [{"Ref": "X"}, ""]}]},
    }


def test_functions_routes_and_properties_come_from_the_template_with_globals(fake_project: FakeProject) -> None:
    template = load_template(fake_project.template, env_file=None, environ={})

    assert set(template.functions) == {"EchoFunction", "ShapeFunction", "BoomFunction", "TickFunction"}
    echo = template.functions["EchoFunction"]
    assert (echo.name, echo.handler, echo.timeout, echo.memory_size) == ("echo", "app.lambda_handler", 7, 256)
    assert echo.module_file == fake_project.functions_dir / "echo" / "app.py"
    assert [r.route_key for r in echo.routes] == [
        "POST /items",
        "GET /items/{itemId}",
        "GET /items/special",
        "ANY /files/{proxy+}",
    ]
    assert template.functions["ShapeFunction"].timeout == 5  # from Globals
    tick = template.functions["TickFunction"]
    assert tick.routes == [] and tick.timeout == 900
    assert tick.schedules[0]["input"]["source"] == "escrow.schedule"


def test_functions_dir_parameter_replaces_the_code_uri_folder(fake_project: FakeProject, tmp_path) -> None:
    template = load_template(fake_project.template, env_file=None, functions_dir=tmp_path / "elsewhere", environ={})
    assert template.functions["EchoFunction"].code_dir == (tmp_path / "elsewhere" / "echo").resolve()


def test_functions_are_found_by_logical_id_or_short_name(fake_project: FakeProject) -> None:
    template = load_template(fake_project.template, env_file=None, environ={})
    assert template.function("EchoFunction").logical_id == "EchoFunction"
    assert template.function("echo").logical_id == "EchoFunction"
    assert template.function("ECHO").logical_id == "EchoFunction"
    with pytest.raises(KeyError, match="known: EchoFunction"):
        template.function("nope")


@pytest.mark.parametrize(
    ("method", "path", "route_key", "params"),
    [
        ("POST", "/items", "POST /items", {}),
        ("GET", "/items/42", "GET /items/{itemId}", {"itemId": "42"}),
        ("GET", "/items/special", "GET /items/special", {}),  # the exact route beats the templated one
        ("get", "/items/a%20b", "GET /items/{itemId}", {"itemId": "a b"}),
        ("DELETE", "/files/a/b/c.txt", "ANY /files/{proxy+}", {"proxy": "a/b/c.txt"}),
    ],
)
def test_route_matching_with_path_parameters(fake_project: FakeProject, method, path, route_key, params) -> None:
    template = load_template(fake_project.template, env_file=None, environ={})
    matched = template.match(method, path)
    assert matched is not None
    route, found = matched
    assert (route.route_key, found) == (route_key, params)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/items"), ("POST", "/items/42"), ("GET", "/items/42/more"), ("GET", "/nothing"), ("GET", "/files")],
)
def test_unknown_routes_do_not_match(fake_project: FakeProject, method, path) -> None:
    template = load_template(fake_project.template, env_file=None, environ={})
    assert template.match(method, path) is None


def test_intrinsics_resolve_from_parameter_defaults_and_pseudo_parameters(fake_project, monkeypatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    env = load_template(fake_project.template, env_file=None, environ={}).functions["EchoFunction"].environment
    assert env["APP_ENV"] == "dev"
    assert env["LEVEL"] == "INFO"
    assert env["SUB_VALUE"] == "ap-northeast-2-dev-EchoBus"
    assert env["IF_VALUE"] == "other-value"
    assert env["BUS"] == "EchoBus"
    assert env["BUS_ARN"] == "EchoBus.Arn"


def test_env_file_parameters_set_template_parameters_and_conditions(fake_project: FakeProject) -> None:
    fake_project.write_env({"Parameters": {"Stage": "prod"}})
    env = (
        load_template(fake_project.template, env_file=fake_project.env_file, environ={})
        .functions["EchoFunction"]
        .environment
    )
    assert env["APP_ENV"] == "prod"
    assert env["IF_VALUE"] == "prod-value"


def test_environment_precedence_template_then_env_file_then_process(fake_project: FakeProject) -> None:
    fake_project.write_env(
        {
            "Parameters": {"OVERRIDDEN": "file-all", "LEVEL": "DEBUG", "FROM_PROCESS": "file", "UNDECLARED": "x"},
            "EchoFunction": {"OVERRIDDEN": "file-echo", "ONLY_ECHO": 5},
        }
    )
    template = load_template(
        fake_project.template, env_file=fake_project.env_file, environ={"FROM_PROCESS": "process", "OTHER": "y"}
    )
    echo = template.functions["EchoFunction"].environment
    shape = template.functions["ShapeFunction"].environment

    assert echo["FROM_GLOBALS"] == "global"  # template Globals
    assert shape["OVERRIDDEN"] == "file-all"  # env.json Parameters over template (Globals)
    assert echo["OVERRIDDEN"] == "file-echo"  # env.json function section over Parameters and the function's own
    assert echo["ONLY_ECHO"] == "5"  # values become strings
    assert echo["LEVEL"] == "DEBUG"
    assert echo["FROM_PROCESS"] == shape["FROM_PROCESS"] == "process"  # the process environment wins
    assert "UNDECLARED" not in echo and "OTHER" not in echo  # like sam local: only declared variables
    assert "ONLY_ECHO" not in shape


def test_the_process_environment_is_used_by_default(fake_project: FakeProject, monkeypatch) -> None:
    monkeypatch.setenv("FROM_PROCESS", "from-os-environ")
    template = load_template(fake_project.template, env_file=fake_project.env_file)
    assert template.functions["EchoFunction"].environment["FROM_PROCESS"] == "from-os-environ"


def test_missing_env_file_is_fine(fake_project: FakeProject, tmp_path) -> None:
    template = load_template(fake_project.template, env_file=tmp_path / "absent.json", environ={})
    assert template.functions["EchoFunction"].environment["LEVEL"] == "INFO"
    assert template.env_file is None
