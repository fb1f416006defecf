"""One Settings object for every function, DAG and CLI command.

Every value comes from the environment (prefix ``NIMBUS_``) or a ``.env`` file; the
defaults point at the local stack that ``nimbus local up`` starts, so nothing needs
configuring on one machine. On AWS or a cluster only these URLs change, never code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nimbus.apikeys import LOCAL_ENTRY, ApiKey, is_loopback_url, parse_entries
from nimbus.errors import ConfigError

SECRET_SOURCE = r"^(ssm:/\S+|secretsmanager:\S+)$"  # where a secret lives in AWS (nimbus.stores.secrets)


class Settings(BaseSettings):
    """Where every backend lives and how Nimbus talks to it."""

    model_config = SettingsConfigDict(env_prefix="NIMBUS_", env_file=".env", extra="ignore")

    # Local state (logs, pid files, data of the local stack) and the project checkout.
    home: Path = Field(default=Path(".nimbus"), description="Folder for local-stack data, logs and pid files.")
    project_root: Path = Field(default=Path("."), description="Folder holding serverless.yml, functions/ and localstack/.")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="One Redis (redis://, rediss://, unix://), or a Redis Cluster: redis+cluster://host:port "
                    "(rediss+cluster:// for TLS) naming any node; the others are learned from it. A cluster has "
                    "database 0 only.",
        examples=["redis://127.0.0.1:6379/0", "redis+cluster://10.0.0.5:7000"])
    mongo_url: str = "mongodb://127.0.0.1:27017/"
    mongo_db: str = "nimbus"

    # S3/SQS. An endpoint means an emulator (LocalStack, moto); None means real AWS.
    aws_endpoint_url: str | None = "http://127.0.0.1:4566"
    aws_region: str = "us-east-1"
    data_bucket: str = "nimbus-data"
    artifacts_bucket: str = "nimbus-artifacts"
    drop_prefix: str = "incoming/"
    drop_queue: str = "nimbus-drop-events"
    # The drop folder's second queue, for Airflow alone (the local gateway consumes drop_queue).
    airflow_queue: str = "nimbus-airflow-drops"
    airflow_queue_url: str | None = Field(
        default=None, description="The SQS queue URL the batch DAG watches (an asset watcher): a file dropped starts "
                                  "a DAG run at once. Unset: the DAG runs on the hour only.")

    # MLflow: None means SQLite + artifact folder under ``home`` (no server needed).
    mlflow_tracking_uri: str | None = None
    mlflow_registry_uri: str | None = None

    spark_master: str = "local[*]"
    spark_remote: str | None = Field(
        default=None, pattern=r"^sc://[^\s/]+:\d+(/.*)?$",
        description="A Spark Connect server (sc://host:15002): the batch job runs there and this process is "
                    "only its client. None: spark_master (local[*] or spark://) with a driver JVM here.")
    spark_driver_memory: str = Field(default="2g", pattern=r"^\d+[kmgtKMGT]?$",
                                     description="Heap of the Spark driver JVM (spark.driver.memory), e.g. 2g.")
    ray_address: str | None = Field(
        default=None, pattern=r"^(auto|[^\s:/]+:\d+|ray://[^\s:/]+:\d+)$",
        description="None: a fresh local Ray; '127.0.0.1:6379' (a `ray start --head` GCS, host:port): join that "
                    "cluster; 'auto': the cluster `ray start` left on this machine; 'ray://host:10001': Ray Client.")
    ray_jobs_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s/]+(:\d+)?/?$",
        description="A Ray cluster's Jobs API (its dashboard address, e.g. http://127.0.0.1:8265): the API submits "
                    "each AutoML job there as a Ray job (the runner runs on the cluster; cancel stops it). None: "
                    "jobs run on this machine.")
    ray_jobs_token: SecretStr | None = Field(
        default=None, description="Bearer token of a Ray cluster with token authentication (the RAY_AUTH_TOKEN "
                                  "its nodes were started with), sent to its Jobs API; None: no token, or Ray's "
                                  "own when RAY_AUTH_MODE=token is set in this process.")
    ray_jobs_token_source: str | None = Field(
        default=None, pattern=SECRET_SOURCE,
        description="Where that token lives on AWS ('ssm:/nimbus/prod/ray-auth-token'); wins over ray_jobs_token.")

    api_keys: Annotated[list[ApiKey], NoDecode] = Field(
        default_factory=lambda: [ApiKey.parse(LOCAL_ENTRY)],
        description="Accepted API keys (header X-API-Key or Authorization: Bearer), stored hashed: "
                    "name:scope+scope:sha256hex, comma-separated (`nimbus keys new NAME --scope SCOPE` makes one). "
                    "The default is the local key, refused off the local stack.")
    api_keys_source: str | None = Field(
        default=None, pattern=SECRET_SOURCE,
        description="More keys, same format, from AWS: 'ssm:/nimbus/prod/api-keys' (a SecureString parameter) or "
                    "'secretsmanager:nimbus/prod/api-keys'; re-read every api_keys_cache_s seconds (rotation).")
    api_keys_cache_s: float = Field(default=300, ge=0, description="How long keys from api_keys_source are kept.")
    request_secret_source: str | None = Field(
        default=None, pattern=SECRET_SOURCE,
        description="Where the request secret lives on AWS ('ssm:/nimbus/prod/request-secret'); wins over "
                    "request_secret.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Browser origins allowed to call the APIs (CORS), comma-separated; "
                                          "none by default (same-origin only).")
    store_timeout_s: float = Field(default=2.0, gt=0, description="Connect/health timeout for every store.")
    request_timeout_s: float = Field(
        default=0.05, gt=0, description="Redis timeout on the recommendation request path; past it the answer degrades."
    )
    interactions_prefix: str = Field(default="logs/interactions/", description="Interaction logs in the data bucket.")
    catalogue_key: str = Field(default="logs/catalogue.parquet", description="Item catalogue in the data bucket.")
    batch_models: str = Field(default="churn-lr@champion,churn-hgb@champion",
                              description="Models a dropped file is scored with: name@alias or name@version, comma-separated.")
    predict_max_records: int = Field(default=1000, ge=1, description="Most records one POST /predict/{model} "
                                                                     "may carry (more: 422).")
    predict_poll_s: float = Field(default=5.0, gt=0, description="How often a predict process re-reads the "
                                  "registry aliases it serves (a missed announcement is seen within this).")
    predict_preload: str = Field(default="", description="Models a predict process loads at start, before its "
                                 "first request: name@alias or name@version, comma-separated.")
    rollout_steps: str = Field(default="10,50,100", pattern=r"^\d{1,3}(,\d{1,3})*$",
                               description="Traffic shares (%) a canary rollout steps through; the last is 100.")
    rollout_min_requests: int = Field(default=200, ge=1, description="A rollout step is judged once the candidate "
                                      "answered (or, in shadow, scored) this many requests in it.")
    rollout_min_step_s: float = Field(default=60.0, ge=0, description="And once the step has lasted this long.")
    rollout_max_error_rate: float = Field(default=0.01, ge=0, le=1, description="Rolled back when the candidate's "
                                          "error rate in a step passes the champion's by more than this.")
    rollout_fail_fast_errors: int = Field(default=10, ge=1, description="Errors of the candidate that are judged at "
                                          "once, before the step has its requests.")
    rollout_max_p99_ratio: float = Field(default=2.0, ge=1, description="Rolled back when the candidate's p99 "
                                         "latency passes the champion's times this (plus rollout_p99_slack_ms).")
    rollout_p99_slack_ms: float = Field(default=5.0, ge=0, description="Latency the p99 guardrail forgives "
                                        "(sub-millisecond models differ by noise).")
    rollout_max_psi: float = Field(default=0.25, ge=0, description="Rolled back when the PSI of the candidate's "
                                   "outputs, or of any input, against its training reference passes this.")
    rollout_sample_rate: float = Field(default=1.0, ge=0, le=1, description="Share of the candidate's requests "
                                       "whose inputs and outputs are sampled for the PSI guardrail.")
    predict_sample_rate: float = Field(default=0.01, ge=0, le=1, description="Share of the records POST "
                                       "/predict/{model} answers that are sampled for drift (with their score).")
    batch_schema: str = Field(default="churn", description="Record schema of dropped files (bundled name or YAML path).")
    batch_sinks: str = Field(default="parquet,mongodb", description="Where batch results go: parquet (S3), mongodb.")
    batch_max_decompressed_mb: float = Field(
        default=2048, gt=0, description="A compressed batch input (.csv.gz) is read as a stream and refused once it "
        "decompresses past this many MB (a small file can inflate to gigabytes).")
    automl_memory_mb: float = Field(
        default=1024, gt=0, description="Memory an AutoML job's samples may use; larger training data is refit "
        "incrementally from chunks instead of in memory.")
    # AutoML over HTTP: what one caller may ask of the server (the CLI, running as its user, is bound by
    # the column and row-width limits only).
    automl_upload_max_bytes: int = Field(default=20 * 2**20, gt=0, description="Largest AutoML upload (bytes).")
    automl_max_budget_s: float = Field(default=3600, ge=10, description="Largest budget of an AutoML job "
                                                                        "submitted over HTTP (seconds).")
    automl_max_running_jobs: int = Field(default=2, ge=1, description="AutoML jobs one owner (API key) may have "
                                                                      "queued or running at once.")
    # The job lifecycle: a runner holds a claimed job by a lease it renews (a heartbeat every third of it);
    # a lease that lapses (the runner died) requeues the job, at most automl_max_attempts claims in all.
    automl_lease_s: float = Field(default=30, ge=3, description="How long a runner's claim on an AutoML job lasts "
                                                                "without a heartbeat (seconds).")
    automl_max_attempts: int = Field(default=3, ge=1, description="Claims of one AutoML job before a lapsed lease "
                                                                  "fails it instead of requeueing it.")
    automl_max_columns: int = Field(default=500, ge=2, description="Most columns an AutoML dataset may have.")
    automl_max_row_bytes: int = Field(default=64 * 1024, gt=0, description="Widest AutoML row, bytes in memory "
                                                                           "(measured on the first rows).")

    # A/B experiments and recommendation performance tracking
    attribution_window_s: int = Field(
        default=1800, gt=0, description="A click/purchase without a request_id counts for the user's latest "
                                        "recommendation answer served within this many seconds.")
    request_secret: SecretStr = Field(
        default=SecretStr("nimbus-local-request-secret"),
        description="HMAC key signing the request_id of each recommendation answer (a click counts only for an id "
                    "signed with it); the default is for the local stack only.")
    event_max_age_s: int = Field(
        default=86400, gt=0, description="POST /events refuses an event timestamp older than this (422); kept below "
                                         "the event-id idempotency marks' life (7 days), so a replay is always seen.")
    event_max_skew_s: int = Field(default=300, ge=0,
                                  description="POST /events refuses an event timestamp further ahead of now than this.")
    experiment_min_exposures: int = Field(default=100, ge=1,
                                          description="Exposures every variant needs before any verdict.")
    exposure_flush_s: float = Field(default=1.0, gt=0,
                                    description="How often a serving process writes buffered exposures to Redis.")
    perf_bucket_s: int = Field(default=60, gt=0, description="Time-bucket size of performance counters in Redis.")
    perf_keep_s: int = Field(default=2 * 86400, gt=0, description="How long performance buckets stay in Redis "
                                                                  "(the rollup keeps them in MongoDB).")
    # Monitoring: drift checks and the traffic rollup.
    drift_psi_threshold: float = Field(default=0.1, gt=0, description="A feature drifts past this PSI (and a significant test).")
    drift_p_value: float = Field(default=0.05, gt=0, lt=1, description="Significance of the KS / chi-square drift tests.")
    drift_min_samples: int = Field(default=200, ge=10, description="No drift verdict on fewer live samples than this.")
    drift_sample_rate: float = Field(default=0.01, ge=0, le=1, description="Share of served answers sampled for drift.")
    traffic_bucket_s: int = Field(default=10, ge=1, description="Time bucket of the cross-process traffic rollup in Redis.")
    traffic_flush_s: float = Field(default=1.0, gt=0, description="How often each process adds its traffic to Redis.")
    traffic_ttl_s: int = Field(default=2 * 86400, ge=60, description="How long traffic buckets stay in Redis.")
    metrics_cache_s: float = Field(default=5.0, ge=0, description="How long /metrics reuses the values it read "
                                                                  "from Redis and MongoDB (live versions, drift, "
                                                                  "job queue, batch counts).")

    # Alerts (nimbus.alerts): thresholds the monitor evaluates, and where alerts are delivered.
    alert_webhook_url: str | None = Field(default=None, description="POST every alert change here as JSON.")
    alert_webhook_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one webhook delivery.")
    alert_sns_topic_arn: str | None = Field(default=None, description="Publish every alert change to this SNS topic.")
    alert_renotify_s: int = Field(default=3600, ge=0, description="A still-firing alert is delivered again "
                                                                  "after this long.")
    alert_window_s: int = Field(default=300, ge=10, le=86400, description="Traffic window of the error-rate and p99 checks.")
    alert_min_requests: int = Field(default=20, ge=1, description="No error-rate or p99 verdict on fewer requests.")
    alert_error_rate: float = Field(default=0.05, gt=0, le=1, description="A function's 5xx share that fires.")
    alert_latency_p99_ms: float = Field(default=1000.0, gt=0, description="A function's p99 latency (ms) that fires.")
    alert_bad_record_share: float = Field(default=0.05, gt=0, le=1,
                                          description="A batch run's quarantined share that fires.")
    alert_job_lookback_s: int = Field(default=86400, ge=60, description="Batch runs and AutoML jobs started this "
                                                                         "recently are checked.")

    actor: str | None = Field(default=None, description="Who the audit trail names as acting; None: the OS user. "
                                                        "Functions set it from their caller.")

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 3000

    # Logs (nimbus.logs). Traces are configured only by the standard OTEL_* variables (nimbus.tracing).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe log line written; INFO writes one line per request and job step.")
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object a line (for CloudWatch, Loki...); text: for a terminal.")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _log_case(cls, value: object, info: ValidationInfo) -> object:  # NIMBUS_LOG_LEVEL=info, ...=JSON
        if not isinstance(value, str):
            return value
        return value.strip().upper() if info.field_name == "log_level" else value.strip().lower()

    @field_validator("redis_url")
    @classmethod
    def _cluster_db(cls, value: str) -> str:
        if value.partition("://")[0].lower() in ("redis+cluster", "rediss+cluster"):
            parts = urlsplit(value)
            db = parts.path.strip("/") or parse_qs(parts.query).get("db", ["0"])[0]
            if db != "0":  # a ConfigError, not a ValueError: pydantic would echo the URL (and its password)
                raise ConfigError(f"NIMBUS_REDIS_URL: a Redis Cluster has database 0 only, not {db!r}")
        return value

    @field_validator("home", "project_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_entries(value)
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("aws_endpoint_url", "mlflow_tracking_uri", "mlflow_registry_uri", "ray_address", "spark_remote",
                     "actor", "api_keys_source", "request_secret_source", "ray_jobs_url", "ray_jobs_token",
                     "ray_jobs_token_source", "alert_webhook_url", "alert_sns_topic_arn",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def local_stack(self) -> bool:
        """True while every backend is on this machine (the only place the local key and secrets work)."""
        return all(is_loopback_url(url) for url in (self.aws_endpoint_url, self.redis_url, self.mongo_url))

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force: the configured one, else SQLite under ``home``."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        return self.mlflow_registry_uri or self.tracking_uri

    @property
    def mlflow_artifact_root(self) -> Path:
        """Where a local (SQLite) MLflow keeps artifacts."""
        return self.home / "mlflow" / "artifacts"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; cached because handlers reuse them across warm invocations."""
    return Settings()
