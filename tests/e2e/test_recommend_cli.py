"""Recommendations from the command line and through the function runner, as a user drives them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nimbus.recommend.publish import write_dataset
from tests.conftest import ROOT
from tests.e2e.test_cli import assert_one_line_error, run

pytestmark = pytest.mark.e2e


def test_trainings_and_promotions_are_audited_and_a_rollback_returns_to_the_previous_training(
    clean_stack, recommender_models: dict, tmp_path: Path
) -> None:
    from nimbus import audit
    from nimbus.stores.redis.live import LiveModelStore
    from nimbus.stores.registry import Registry

    folder = write_dataset(recommender_models["dataset"], clean_stack, str(tmp_path / "logs"))
    logs = ["--logs", f"{folder}/interactions", "--catalogue", f"{folder}/catalogue.parquet"]
    versions = []
    for _ in range(2):  # each command its own process, as a user runs them
        trained = run(["recommend", "train", *logs], {})
        assert trained.returncode == 0, trained.stderr
        assert "(champion, live)" in trained.stdout and "recall@10" in trained.stdout
        versions.append(trained.stdout.split("registered nimbus-recommender version ")[1].split()[0])
    first, second = versions
    trail = audit.history(clean_stack, "model:nimbus-recommender", action="promote")
    assert [(t["details"]["to"], t["details"]["reason"]) for t in trail[:2]] == [(second, "trained"), (first, "trained")]

    back = run(["models", "rollback", "nimbus-recommender"], {})
    assert back.returncode == 0, back.stderr
    assert f"{second} -> {first} (rolled back)" in back.stdout
    assert Registry.for_settings(clean_stack).alias("nimbus-recommender", "champion").version == first
    assert LiveModelStore.for_settings(clean_stack).live("nimbus-recommender")["champion"] == first  # published

    promoted = run(["recommend", "promote", second], {})
    assert promoted.returncode == 0 and f"champion -> version {second}" in promoted.stdout
    latest = audit.history(clean_stack, "model:nimbus-recommender", limit=1)[0]
    assert (latest["action"], latest["details"]["from"], latest["details"]["to"]) == ("promote", first, second)
    assert LiveModelStore.for_settings(clean_stack).live("nimbus-recommender")["champion"] == second


def test_promoting_an_unknown_version_is_a_one_line_error(clean_stack, recommender_models: dict) -> None:
    assert_one_line_error(run(["recommend", "promote", "4242"]), "nimbus-recommender has no version '4242'")


def test_training_on_a_missing_file_is_a_one_line_error(clean_stack, tmp_path: Path) -> None:
    assert_one_line_error(run(["recommend", "train", "--logs", str(tmp_path / "nope.parquet")], {}),
                          "nope.parquet: no such file or folder")


def test_the_features_function_runs_on_its_schedule_event(clean_stack, recommender_models: dict) -> None:
    write_dataset(recommender_models["dataset"], clean_stack)
    done = run(["invoke", "features", "--event", "tests/data/events/eventbridge_scheduled.json", "--json"], {})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["users"] == recommender_models["dataset"].interactions["user_id"].nunique()
    assert answer["rule"] and answer["version"]


def test_the_features_function_refuses_an_http_event(clean_stack) -> None:
    assert_one_line_error(run(["invoke", "features", "--event", "tests/data/events/apigw_v2_health.json"], {}),
                          "features runs on a schedule; got HttpRequest")


def test_the_recommend_handler_answers_an_api_gateway_event(live_recommender: dict) -> None:
    event = json.loads((ROOT / "tests/data/events/apigw_v2_health.json").read_text())
    user = str(live_recommender["features"].user_ids[0])
    event.update(rawPath=f"/recommendations/{user}", rawQueryString="k=4", routeKey="GET /recommendations/{user_id}",
                 pathParameters={"user_id": user}, queryStringParameters={"k": "4"})
    event["requestContext"].update(http={**event["requestContext"]["http"], "path": f"/recommendations/{user}"})
    done = run(["invoke", "recommend", "--data", json.dumps(event), "--json"], {})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["statusCode"] == 200 and len(json.loads(answer["body"])["items"]) == 4


def test_the_recommend_handler_imports_nothing_heavy() -> None:
    probe = ("import sys; import functions.recommend.handler, functions.events.handler; "
             "print(sorted(m for m in ('sklearn', 'pandas', 'mlflow', 'pyspark', 'ray', 'airflow', 'scipy') "
             "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
