from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nimbus.errors import ConfigError
from nimbus.local.serverless import S3Trigger, load_project

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "serverless.yml").write_text(text)
    return tmp_path


def test_the_project_file_declares_the_health_route() -> None:
    project = load_project(ROOT)
    health = project.function("health")
    assert health.handler == "functions/health/handler.handler"
    assert health.module_path == "functions.health.handler"
    assert [(r.method, r.path) for r in health.http] == [("GET", "/health"), ("GET", "/health/metrics")]
    assert health.timeout_s == 10
    assert (ROOT / "functions" / "health" / "handler.py").exists()


def test_every_function_handler_file_exists() -> None:
    for fn in load_project(ROOT).functions.values():
        assert (ROOT / (fn.handler.rsplit(".", 1)[0] + ".py")).exists(), fn.name


def test_variables_resolve_from_self_env_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROP_BUCKET", "from-env")
    root = write(tmp_path, """
service: t
custom:
  bucket: ${env:DROP_BUCKET, 'fallback'}
  other: ${env:NOT_SET_ANYWHERE, 'fallback'}
provider: {name: aws, timeout: 7}
functions:
  batch:
    handler: functions/batch/handler.handler
    events:
      - s3: {bucket: "${self:custom.bucket}", event: "s3:ObjectCreated:*", rules: [{prefix: in/}, {suffix: .csv}]}
      - schedule: rate(5 minutes)
      - httpApi: "POST /batch/{proxy+}"
  other:
    handler: functions/other/handler.main
    events:
      - s3: ${self:custom.other}
""")
    project = load_project(root)
    batch = project.function("batch")
    assert batch.s3 == [S3Trigger("from-env", "s3:ObjectCreated:*", "in/", ".csv")]
    assert batch.schedules[0].expression == "rate(5 minutes)"
    assert (batch.http[0].method, batch.http[0].path) == ("POST", "/batch/{proxy+}")
    assert batch.timeout_s == 7  # provider default
    assert project.function("other").s3[0].bucket == "fallback"


def test_a_variable_without_value_or_default_is_a_clear_error(tmp_path: Path) -> None:
    root = write(tmp_path, "service: t\nfunctions:\n  f:\n    handler: ${env:NIMBUS_SURELY_UNSET}\n")
    with pytest.raises(ConfigError, match="NIMBUS_SURELY_UNSET"):
        load_project(root)


def test_invalid_yaml_and_missing_handlers_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_project(write(tmp_path, "service: [unclosed\n"))
    with pytest.raises(ConfigError, match="function f has no handler"):
        load_project(write(tmp_path, "service: t\nfunctions:\n  f:\n    events: []\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_project(tmp_path / "nowhere")


def test_an_unknown_function_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no function 'nope'.*health"):
        load_project(ROOT).function("nope")


@pytest.mark.parametrize(
    ("key", "event_name", "fires"),
    [
        ("incoming/a.csv", "ObjectCreated:Put", True),
        ("incoming/deep/a b.csv", "ObjectCreated:CompleteMultipartUpload", True),
        ("incoming/a.json", "ObjectCreated:Put", False),
        ("other/a.csv", "ObjectCreated:Put", False),
        ("incoming/a.csv", "ObjectRemoved:Delete", False),
    ],
)
def test_s3_triggers_match_bucket_prefix_suffix_and_event(key: str, event_name: str, fires: bool) -> None:
    trigger = S3Trigger("data", "s3:ObjectCreated:*", "incoming/", ".csv")
    assert trigger.matches("data", key, event_name) is fires
    assert not trigger.matches("elsewhere", "incoming/a.csv", "ObjectCreated:Put")


SERVERLESS = ROOT / "node_modules" / ".bin" / "serverless"


@pytest.mark.skipif(not SERVERLESS.exists(), reason="Serverless Framework not installed (npm ci; make does it)")
def test_the_serverless_framework_reads_the_file_as_we_do() -> None:
    env = {**os.environ, "SLS_TELEMETRY_DISABLED": "1", "SLS_NOTIFICATIONS_MODE": "off", "CI": "true"}
    done = subprocess.run([str(SERVERLESS), "print", "--format", "json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    ours = load_project(ROOT)
    assert set(printed["functions"]) == set(ours.functions)
    for name, fn in printed["functions"].items():
        assert fn["image"]["command"][0] == ours.functions[name].handler
        routes = [(e["httpApi"]["method"], e["httpApi"]["path"]) for e in fn.get("events", []) if "httpApi" in e]
        assert routes == [(r.method, r.path) for r in ours.functions[name].http]
    assert shutil.which("node") is not None


def test_every_function_has_its_own_least_privilege_role() -> None:
    import yaml

    raw = yaml.safe_load((ROOT / "serverless.yml").read_text())
    assert "iam" not in raw["provider"]  # no role shared by every function
    resources = raw["resources"]["Resources"]
    roles = {name: fn["role"] for name, fn in raw["functions"].items()}
    assert len(set(roles.values())) == len(roles)  # one each
    actions = {}
    for name, role in roles.items():
        statements = resources[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        actions[name] = {a for st in statements for a in st["Action"]}
        assert all(st["Effect"] == "Allow" and "*" not in str(st["Action"]) for st in statements), name
        assert all(r != "*" for st in statements for r in st["Resource"]), name
    # the functions that keep no data in AWS get no S3 at all; only batch may delete (it moves drop files)
    assert not any(a.startswith("s3:") for fn in ("events", "experiments", "dashboard") for a in actions[fn])
    assert [fn for fn, a in actions.items() if "s3:DeleteObject" in a] == ["batch"]
    # every function that serves HTTP reads the keys, and nothing else reads secrets
    http = {name for name, fn in raw["functions"].items() if any("httpApi" in e for e in fn.get("events", []))}
    assert {fn for fn, a in actions.items() if "ssm:GetParameter" in a} == http


def test_the_deployment_names_no_default_key_and_no_open_cors() -> None:
    import yaml

    raw = yaml.safe_load((ROOT / "serverless.yml").read_text())
    env = raw["provider"]["environment"]
    assert env["NIMBUS_API_KEYS"] == "" and env["NIMBUS_API_KEYS_SOURCE"] == "ssm:${self:custom.secretsPath}/api-keys"
    assert "nimbus-local-key" not in (ROOT / "serverless.yml").read_text()
    assert "cors" not in raw["provider"]["httpApi"]
