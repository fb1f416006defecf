from __future__ import annotations

import ast
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


# ---- Lambda: every handler writes its buffered counts before it returns ------------------------------
def handler_of(path: Path) -> ast.AST:
    """The module-level ``handler`` of a handler.py: the assignment's value or the function definition."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == "handler":
            return node
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "handler" for t in node.targets):
            return node.value
    raise AssertionError(f"{path}: no module-level handler")


def test_every_function_handler_goes_through_the_flushing_wrapper() -> None:
    handlers = sorted((ROOT / "functions").glob("*/handler.py"))
    assert len(handlers) >= 8
    for path in handlers:
        node = handler_of(path)
        if isinstance(node, ast.FunctionDef):  # a plain handler: decorated with nimbus.buffers.flushed
            assert [ast.unparse(d) for d in node.decorator_list] == ["flushed"], path
        else:  # an HTTP function: lambda_handler(app), Mangum and the flush in one place
            assert ast.unparse(node) == "lambda_handler(app)", path
        imported = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        assert "mangum" not in imported and "import mangum" not in path.read_text(), f"{path}: Mangum without the flush"


def test_the_wrapper_flushes_after_each_invocation_also_when_the_handler_raised() -> None:
    from nimbus import buffers

    class Pending:  # a buffer as ExposureTracker is one: flush() drains it in batches
        def __init__(self) -> None:
            self.pending, self.written = 0, 0

        def flush(self) -> int:
            n = min(self.pending, 2)
            self.pending -= n
            self.written += n
            return n

    pending = Pending()
    buffers.register(pending)

    @buffers.flushed
    def handler(event, context):
        pending.pending += 5
        if event == "raise":
            raise ValueError("the app failed")
        return "ok"

    assert handler("ok", None) == "ok" and (pending.pending, pending.written) == (0, 5)
    with pytest.raises(ValueError, match="the app failed"):
        handler("raise", None)
    assert (pending.pending, pending.written) == (0, 10)


def test_no_flush_thread_starts_on_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from nimbus import buffers

    ran = threading.Event()
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "nimbus-recommend")
    assert buffers.on_lambda() and buffers.start_flusher(ran.set, "traffic-rollup") is None and not ran.is_set()
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    thread = buffers.start_flusher(ran.set, "traffic-rollup")  # on a server: the background flush stays
    assert thread is not None and thread.name == "traffic-rollup"
    thread.join(30)
    assert ran.is_set()


def test_the_predict_function_serves_any_model_on_its_routes() -> None:
    predict = load_project(ROOT).function("predict")
    assert predict.handler == "functions/predict/handler.handler"
    assert [(r.method, r.path) for r in predict.http] == [("POST", "/predict/{model}"), ("GET", "/predict/health"),
                                                           ("GET", "/predict/metrics")]
