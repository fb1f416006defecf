"""Who may call what, through every real HTTP app: every route answers 401 without a key unless it is on
the named public list; keys are named, scoped, hashed, read from settings or SSM/Secrets Manager and
rotated; the audit records the key's name; the functions refuse to start off the local stack on the
local key; errors name no internal address."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from nimbus import audit
from nimbus.api.auth import PUBLIC, is_public
from nimbus.api.automl import create_automl_app
from nimbus.api.dashboard import create_dashboard_app
from nimbus.api.events import create_events_app
from nimbus.api.experiments import create_experiments_app
from nimbus.api.health import create_health_app
from nimbus.api.models import create_models_app
from nimbus.api.predict import create_predict_app
from nimbus.api.recommend import create_recommend_app
from nimbus.apikeys import LOCAL_KEY, ApiKey
from nimbus.config import Settings, get_settings
from nimbus.local.stack import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
APPS: dict[str, Callable[[Settings], FastAPI]] = {
    "health": lambda s: create_health_app(), "recommend": create_recommend_app, "events": create_events_app,
    "experiments": create_experiments_app, "models": create_models_app, "predict": create_predict_app,
    "automl": lambda s: create_automl_app(),
    "dashboard": lambda s: create_dashboard_app(),
}
# The routes anyone may call, by app (what PUBLIC means in practice; a new public route must be added here).
EXPECTED_PUBLIC = {"health": {"/health"}, "recommend": {"/health", "/recommend/health", "/recommendations/{user_id}"},
                   "dashboard": {"/dashboard"}}


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def api_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    for route in app.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            for method in sorted(route.methods):
                yield method, route.path


def with_settings(app: FastAPI, settings: Settings) -> FastAPI:
    app.dependency_overrides[get_settings] = lambda: settings
    return app


@pytest.fixture
def keys(clean_stack: Settings) -> dict[str, str]:
    """Four named keys, one per scope, and settings that accept only them (plus nothing else)."""
    made = {scope: ApiKey.create(f"{scope}-holder", [scope]) for scope in ("admin", "automl", "events", "read")}
    return {"settings": clean_stack.model_copy(update={"api_keys": [stored for _, stored in made.values()]}),
            **{scope: key for scope, (key, _) in made.items()}}


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_route_needs_a_key_unless_it_is_on_the_public_list(name: str, stack_settings: Settings) -> None:
    app = APPS[name](stack_settings)
    public, checked = set(), 0
    with TestClient(app, raise_server_exceptions=False) as client:
        for method, path in api_routes(app):
            answer = client.request(method, concrete(path))
            checked += 1
            if is_public(concrete(path)):
                public.add(path)
                assert answer.status_code != 401, (method, path)
            else:
                assert answer.status_code == 401, (method, path, answer.status_code, answer.text[:200])
                assert answer.headers["www-authenticate"].startswith("Bearer")
        for route in app.routes:  # mounted static assets are public by name
            if isinstance(route, Mount):
                assert is_public(route.path + "/"), route.path
    assert checked > 0
    assert public == EXPECTED_PUBLIC.get(name, set())


@pytest.mark.parametrize("name", sorted(APPS))
def test_openapi_declares_the_security_schemes_on_every_protected_operation(name: str,
                                                                           stack_settings: Settings) -> None:
    app = APPS[name](stack_settings)
    spec = app.openapi()
    protected = [(m, p) for m, p in api_routes(app) if not is_public(concrete(p))]
    if protected:
        assert set(spec["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
        assert spec["components"]["securitySchemes"]["ApiKey"] == {
            "type": "apiKey", "in": "header", "name": "X-API-Key",
            "description": spec["components"]["securitySchemes"]["ApiKey"]["description"]}
    for method, path in protected:
        operation = spec["paths"][path][method.lower()]
        assert {"ApiKey": []} in operation["security"] and {"Bearer": []} in operation["security"], (method, path)
        assert "401" in operation["responses"], (method, path)
    for method, path in api_routes(app):
        if is_public(concrete(path)):
            assert "security" not in spec["paths"][path][method.lower()], (method, path)


def test_a_key_is_known_by_its_hash_and_scopes_decide(keys: dict) -> None:
    settings = keys["settings"]
    assert all(keys[s] not in entry.entry for s in ("admin", "read") for entry in settings.api_keys)  # only hashes
    with TestClient(with_settings(create_models_app(settings), settings)) as client:
        for scope in ("admin", "read"):
            assert client.get("/models", headers={"X-API-Key": keys[scope]}).status_code == 200
        as_bearer = client.get("/models", headers={"Authorization": f"Bearer {keys['read']}"})
        assert as_bearer.status_code == 200
        for scope in ("automl", "events"):
            denied = client.get("/models", headers={"X-API-Key": keys[scope]})
            assert denied.status_code == 403 and f"{scope}-holder" in denied.json()["detail"]
        promote = client.post("/models/nimbus-recommender/rollback", json={}, headers={"X-API-Key": keys["read"]})
        assert promote.status_code == 403 and "'admin' scope" in promote.json()["detail"]
        # the local key is not one of these settings' keys; nor is a near miss or a non-ASCII header
        assert client.get("/models", headers={"X-API-Key": LOCAL_KEY}).status_code == 401
        assert client.get("/models", headers={"X-API-Key": keys["admin"][:-1]}).status_code == 401
        assert client.get("/models", headers={"X-API-Key": "clé-ünïcode".encode()}).status_code == 401
        assert client.get("/models", headers={"X-API-Key": "\xff\xfe".encode("latin-1")}).status_code == 401
    assert audit.history(settings, limit=5) == []  # nothing refused was recorded as done


def test_the_audit_trail_names_the_key_never_its_text(keys: dict, live_recommender: dict) -> None:
    settings = keys["settings"]
    second = live_recommender["versions"][1]
    with TestClient(with_settings(create_models_app(settings), settings)) as client:
        answer = client.post("/models/nimbus-recommender/promote", json={"version": second},
                             headers={"X-API-Key": keys["admin"]})
        assert answer.status_code == 200, answer.text
    [latest] = audit.history(settings, "model:nimbus-recommender", limit=1)
    assert latest["actor"] == "api-key:admin-holder" and latest["models"] == {"nimbus-recommender": second}
    assert keys["admin"][:8] not in str(latest)


def test_events_need_the_events_scope_and_nothing_is_applied_without_it(keys: dict, live_recommender: dict) -> None:
    settings = keys["settings"]
    body = {"events": [{"event_id": "auth-1", "user_id": "u-auth", "item_id": "i1", "type": "view"}]}
    with TestClient(with_settings(create_events_app(settings), settings)) as client:
        assert client.post("/events", json=body).status_code == 401
        assert client.post("/events", json=body, headers={"X-API-Key": keys["read"]}).status_code == 403
        from nimbus.stores.redis.features import FeatureStore

        assert FeatureStore.for_settings(settings).realtime("u-auth", 10) == ({}, [])  # nothing applied
        accepted = client.post("/events", json=body, headers={"X-API-Key": keys["events"]})
        assert accepted.status_code == 200 and accepted.json()["accepted"] == 1


@pytest.mark.parametrize("source_kind", ["ssm", "secretsmanager"])
def test_keys_come_from_ssm_or_secrets_manager_and_rotate(source_kind: str, clean_stack: Settings) -> None:
    old_key, old = ApiKey.create("clickstream", ["events"])
    new_key, new = ApiKey.create("clickstream-2", ["events"])
    client_kwargs = {"endpoint_url": clean_stack.aws_endpoint_url, "region_name": clean_stack.aws_region,
                     "aws_access_key_id": "test", "aws_secret_access_key": "test"}
    name = f"/nimbus/test/{source_kind}-keys-{free_port()}"
    if source_kind == "ssm":
        ssm = boto3.client("ssm", **client_kwargs)
        ssm.put_parameter(Name=name, Value=old.entry, Type="SecureString")
        rotate = lambda: ssm.put_parameter(Name=name, Value=new.entry, Type="SecureString",  # noqa: E731
                                           Overwrite=True)
        source = f"ssm:{name}"
    else:
        sm = boto3.client("secretsmanager", **client_kwargs)
        sm.create_secret(Name=name, SecretString=old.entry)
        rotate = lambda: sm.put_secret_value(SecretId=name, SecretString=new.entry)  # noqa: E731
        source = f"secretsmanager:{name}"
    settings = clean_stack.model_copy(update={"api_keys": [], "api_keys_source": source, "api_keys_cache_s": 0})
    with TestClient(with_settings(create_models_app(settings), settings)) as client:
        assert client.get("/models", headers={"X-API-Key": old_key}).status_code == 403  # known, events only
        rotate()  # cache 0 s: the next request reads the rotated secret
        assert client.get("/models", headers={"X-API-Key": old_key}).status_code == 401
        assert client.get("/models", headers={"X-API-Key": new_key}).status_code == 403


def run_function(env: dict[str, str], module: str = "functions.models.handler") -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    return subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


REAL_AWS = {"NIMBUS_AWS_ENDPOINT_URL": "", "NIMBUS_REDIS_URL": "redis://redis.internal:6379/0",
            "NIMBUS_MONGO_URL": "mongodb://mongo.internal:27017/", "NIMBUS_HOME": "/tmp/nimbus-auth-test"}


@pytest.mark.slow
def test_a_function_refuses_to_start_off_the_local_stack_on_the_local_key_in_one_line() -> None:
    for extra in ({}, {"NIMBUS_API_KEYS": ""}):
        refused = run_function({**REAL_AWS, **extra})
        assert refused.returncode == 2, refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith("nimbus: refusing to start off the local stack:"), line
        assert "local key" in line or "no API keys" in line
    _, real = ApiKey.create("ops", ["admin"])
    secrets = {"NIMBUS_REQUEST_SECRET": "a-real-secret-from-the-deployment"}
    started = run_function({**REAL_AWS, "NIMBUS_API_KEYS": real.entry, **secrets})
    assert started.returncode == 0, started.stderr
    assert started.stderr.strip() == ""


def test_cors_allows_only_the_configured_origins(clean_stack: Settings) -> None:
    settings = clean_stack.model_copy(update={"cors_origins": ["https://ops.example.com"]})
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "x-api-key"}
    with TestClient(create_models_app(settings)) as client:
        ok = client.options("/models", headers={"Origin": "https://ops.example.com", **preflight})
        assert ok.headers["access-control-allow-origin"] == "https://ops.example.com"
        assert "x-api-key" in ok.headers["access-control-allow-headers"].lower()
        other = client.options("/models", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in other.headers
    with TestClient(create_models_app(clean_stack)) as client:  # none configured: no CORS at all
        answer = client.get("/models", headers={"Origin": "https://ops.example.com"})
        assert "access-control-allow-origin" not in answer.headers


def test_an_unreachable_store_is_named_without_its_address(clean_stack: Settings) -> None:
    port = free_port()
    dead = clean_stack.model_copy(update={"mongo_url": f"mongodb://127.0.0.1:{port}/", "store_timeout_s": 0.3})
    with TestClient(with_settings(create_experiments_app(dead), dead)) as client:
        answer = client.get("/experiments", headers={"X-API-Key": LOCAL_KEY})
    assert answer.status_code == 503
    assert answer.json() == {"detail": "mongodb is unavailable; try again later"}
    assert str(port) not in answer.text


def test_the_public_list_is_short_and_named() -> None:
    assert len(PUBLIC) <= 12
    assert not is_public("/models") and not is_public("/dashboard/data") and not is_public("/metrics")
    assert is_public("/dashboard/static/dashboard.js") and is_public("/recommendations/u1")


def test_every_route_serverless_yml_exposes_is_checked_by_its_function(stack_settings: Settings) -> None:
    """No authorizer in front: each httpApi route of serverless.yml must land on an app that asks for a key,
    unless the path is public."""
    import importlib

    from nimbus.local.serverless import load_project

    checked = 0
    for fn in load_project(ROOT).functions.values():
        if not fn.http:
            continue
        app = importlib.import_module(fn.module_path).app
        with TestClient(app, raise_server_exceptions=False) as client:
            for route in fn.http:
                path = concrete(route.path.replace("{proxy+}", "x1"))
                for method in (["GET", "POST"] if route.method == "*" else [route.method]):
                    answer = client.request(method, path)
                    checked += 1
                    if is_public(path):
                        assert answer.status_code != 401, (fn.name, method, path)
                    else:  # 401, or 404/405 where the app has no such route (never served without a key)
                        assert answer.status_code in (401, 404, 405), (fn.name, method, path, answer.status_code)
                        if answer.status_code != 401:
                            assert not any(r.path == path or r.path.startswith(path + "/")
                                           for r in app.routes if isinstance(r, APIRoute)), (method, path)
    assert checked >= 15
