"""What an AutoML job submitted to a Ray cluster takes with it (``nimbus.automl.cluster``): the
runner's store settings, read back the same on the cluster; no secret of the submitter's."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nimbus.automl.cluster import RUNNER_SETTINGS, entrypoint, runner_env, submission_id
from nimbus.config import Settings


def test_the_runner_reads_back_the_submitters_store_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    submitter = Settings(mongo_url="mongodb://db.internal:27017/", mongo_db="prod", aws_endpoint_url="",
                         data_bucket="d", artifacts_bucket="a", mlflow_tracking_uri="https://mlflow.internal",
                         ray_jobs_url="http://head:8265", ray_jobs_token="s3cret", request_secret="sign-me")
    env = runner_env(submitter)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    on_the_cluster = Settings(_env_file=None)
    for name in RUNNER_SETTINGS:
        assert getattr(on_the_cluster, name) == getattr(submitter, name), name
    assert on_the_cluster.aws_endpoint_url is None  # real AWS there too, not the local emulator's default
    assert on_the_cluster.ray_address == "auto"  # the cluster the Ray job runs on
    assert not any(secret in value for value in env.values() for secret in ("s3cret", "sign-me"))
    assert not any(name.startswith(("NIMBUS_RAY_JOBS", "NIMBUS_API_KEYS", "NIMBUS_REQUEST_SECRET")) for name in env)


def test_one_ray_job_per_automl_job_running_exactly_that_job() -> None:
    assert submission_id("3f2a9c0d11be") == "nimbus-automl-3f2a9c0d11be"
    assert entrypoint("3f2a9c0d11be") == "python -m nimbus.cli automl worker --job 3f2a9c0d11be"
    assert entrypoint("a b;rm") == "python -m nimbus.cli automl worker --job 'a b;rm'"  # never a second command


@pytest.mark.parametrize("url", ["ray://head:10001", "head:8265", "http://head:8265/api/jobs", "http:// x"])
def test_the_jobs_url_is_an_http_address(url: str) -> None:
    with pytest.raises(ValidationError, match="ray_jobs_url"):
        Settings(_env_file=None, ray_jobs_url=url)


def test_an_empty_jobs_url_means_jobs_run_here() -> None:
    settings = Settings(_env_file=None, ray_jobs_url="", ray_jobs_token="", ray_jobs_token_source="")
    assert (settings.ray_jobs_url, settings.ray_jobs_token, settings.ray_jobs_token_source) == (None, None, None)
    assert Settings(_env_file=None, ray_jobs_url="https://head.internal:8265").ray_jobs_url == "https://head.internal:8265"
