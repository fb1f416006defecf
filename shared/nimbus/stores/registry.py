"""MLflow: the model registry (versions, champion/challenger aliases) and experiment tracking.

This is the one module of Nimbus that calls MLflow. :class:`Registry` is bound to the
configured tracking and registry URIs, so no call depends on which command ran before it
in the process:

* registry reads and writes go through one ``MlflowClient`` built with both URIs;
* artifacts and models are downloaded with both URIs passed explicitly
  (``mlflow.artifacts.download_artifacts``) and loaded from the local copy;
* the fluent API (``mlflow.start_run``, ``mlflow.sklearn.log_model``), which knows only
  MLflow's process-global URIs, is entered only through :meth:`Registry.tracked_run`,
  which sets those globals under a lock: the one place that does.

``MlflowException`` never leaves this module: a missing model, version, alias or artifact
is :class:`NotFound`; anything else is :class:`StoreUnavailable` naming the (redacted) URL.

``mlflow`` is imported lazily: it costs seconds, and a handler that never touches the
registry (health of an HTTP server, say) should not pay for it on a cold start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimbus.config import Settings
from nimbus.errors import InvalidInput, NotFound, StoreUnavailable
from nimbus.stores import Health
from nimbus.stores._base import PerProcess, redact, timed_health

if TYPE_CHECKING:
    from mlflow import MlflowClient

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")  # registered model names Nimbus accepts (safe in a filter)
KIND_TAG = "nimbus.kind"  # version tag: classifier | regressor, written when Nimbus logs a model
_fluent_lock = threading.RLock()  # the fluent API's URIs are process-global


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version."""

    name: str
    version: str
    run_id: str
    created_ms: int
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """What a version's MLmodel file says, read without loading the model."""

    name: str
    version: str
    inputs: tuple[str, ...] | None  # the signature's named input columns; None when it has none
    flavors: tuple[str, ...]
    predict_fn: str | None  # the pyfunc flavour's predict method (``predict_proba`` for classifiers so logged)
    kind: str | None  # classifier | regressor when the version says so (tag or predict_fn), else None
    # The signature's input columns as (name, MLflow type, required): what a request must carry.
    columns: tuple[tuple[str, str, bool], ...] = ()


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise InvalidInput(f"model name {name!r}: letters, digits, '_', '.', '-' only (at most 128)")
    return name


class Registry(PerProcess):
    """The MLflow registry and tracking server of one deployment."""

    name = "mlflow"

    def __init__(self, tracking_uri: str, registry_uri: str | None = None, timeout_s: float = 2.0,
                 artifact_root: Path | None = None) -> None:
        self.url = tracking_uri
        # Where experiments of a server-less (SQLite) MLflow keep artifacts; MLflow's own default
        # is ./mlruns of whichever directory the first command ran in.
        self.artifact_root = artifact_root
        self.registry_uri = registry_uri or tracking_uri
        self.timeout_s = timeout_s
        self._client: MlflowClient | None = None
        self._loaded: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._experiments: dict[str, str] = {}

    @classmethod
    def cache_key(cls, settings: Settings) -> tuple[str, str]:
        return (settings.tracking_uri, settings.registry_uri)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        return cls(settings.tracking_uri, settings.registry_uri, settings.store_timeout_s,
                   None if settings.mlflow_tracking_uri else settings.mlflow_artifact_root)

    @property
    def is_server(self) -> bool:
        return self.url.startswith(("http://", "https://"))

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            # Progress bars of artifact downloads are noise in a CLI and in a server's log alike.
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.url, registry_uri=self.registry_uri)
        return self._client

    # ---- errors ---------------------------------------------------------------------------
    @contextmanager
    def _calling(self, missing: str | None = None) -> Iterator[None]:
        """MlflowException -> NotFound(``missing``) when the thing does not exist, else StoreUnavailable."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            # A missing alias comes back as INVALID_PARAMETER_VALUE "... not found".
            absent = exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
                exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower())
            if missing is not None and absent:
                raise NotFound(missing) from None
            raise StoreUnavailable(self.name, redact(self.url), _first_line(exc)) from exc
        except OSError as exc:  # the artifact store (files, S3, HTTP) underneath
            if missing is not None and isinstance(exc, FileNotFoundError):
                raise NotFound(missing) from None
            raise StoreUnavailable(self.name, redact(self.url), _first_line(exc)) from exc

    # ---- health ---------------------------------------------------------------------------
    def ping(self) -> dict[str, str]:
        """Raise StoreUnavailable unless the tracking store answers."""
        if self.is_server:
            # The server's own liveness endpoint: no mlflow import, bounded by our timeout
            # (the MLflow client itself retries an unreachable server for minutes).
            try:
                with urllib.request.urlopen(f"{self.url.rstrip('/')}/health", timeout=self.timeout_s) as answer:
                    body = answer.read().decode()
            except OSError as exc:
                raise StoreUnavailable(self.name, redact(self.url), str(getattr(exc, "reason", exc))) from exc
            return {"server": body.strip()[:40]}
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # mlflow raises many types here (sqlalchemy, MlflowException)
            raise StoreUnavailable(self.name, redact(self.url), _first_line(exc)) from exc
        return {"backend": self.url.split(":", 1)[0]}

    def health(self) -> Health:
        return timed_health(self.name, self.url, self.ping)

    # ---- registry reads ---------------------------------------------------------------------
    def version(self, name: str, version: str) -> VersionInfo:
        with self._calling(f"{name} has no version {version!r}"):
            return _info(self.client.get_model_version(check_name(name), str(version)))

    def alias(self, name: str, alias: str) -> VersionInfo:
        with self._calling(f"{name} has no alias {alias!r}"):
            return _info(self.client.get_model_version_by_alias(check_name(name), alias))

    def resolve(self, name: str, at: str) -> VersionInfo:
        """``at`` is a version number or an alias."""
        return self.version(name, at) if str(at).isdigit() else self.alias(name, at)

    def aliases(self, name: str) -> dict[str, str]:
        """alias -> version of a registered model (NotFound when there is no such model)."""
        with self._calling(f"no registered model {name!r}"):
            return {a: str(v) for a, v in self.client.get_registered_model(check_name(name)).aliases.items()}

    def model_tag(self, name: str, key: str) -> str | None:
        with self._calling(f"no registered model {name!r}"):
            return self.client.get_registered_model(check_name(name)).tags.get(key)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, newest first (empty when the model does not exist)."""
        with self._calling():
            found = self.client.search_model_versions(f"name='{check_name(name)}'")
        return sorted((_info(v) for v in found), key=lambda v: int(v.version), reverse=True)

    def list_models(self) -> list[dict[str, Any]]:
        """name, aliases and version numbers of every registered model."""
        with self._calling():
            models = list(self.client.search_registered_models())
        return [{"name": m.name, "aliases": {a: str(v) for a, v in m.aliases.items()},
                 "versions": [int(v.version) for v in self.versions(m.name)]} for m in models]

    # ---- registry writes ---------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: str) -> None:
        with self._calling(f"{name} has no version {version!r}"):
            self.client.set_registered_model_alias(check_name(name), alias, str(version))

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        with self._calling(f"no registered model {name!r}"):
            self.client.set_registered_model_tag(check_name(name), key, value)

    def register(self, name: str, source: str, run_id: str, model_id: str | None = None,
                 tags: Mapping[str, str] | None = None) -> str:
        """A new version of ``name`` (created when new) from a logged model; returns the version.

        Through the client, not ``mlflow.register_model``: same result, without its prints."""
        with self._calling():
            try:
                self.client.create_registered_model(check_name(name))
            except Exception as exc:
                if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
            mv = self.client.create_model_version(name, source, run_id=run_id, tags=dict(tags or {}),
                                                  model_id=model_id)
        return str(mv.version)

    # ---- artifacts and models -----------------------------------------------------------------
    def run_artifact(self, run_id: str, path: str) -> bytes:
        """One artifact file of a run."""
        import mlflow.artifacts

        with self._calling(f"run {run_id} has no artifact {path}"), tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                        tracking_uri=self.url, registry_uri=self.registry_uri)
            return Path(local).read_bytes()

    def version_artifact(self, name: str, version: str, path: str) -> bytes:
        """An artifact file of the run that registered ``name`` version ``version``."""
        info = self.version(name, version)
        if not info.run_id:
            raise NotFound(f"{name} v{version} was not registered from a run: no {path}")
        return self.run_artifact(info.run_id, path)

    def version_json(self, name: str, version: str, path: str) -> dict[str, Any] | None:
        """A JSON artifact of the version's run; None when the version was logged without it."""
        try:
            return json.loads(self.version_artifact(name, version, path))
        except NotFound:
            return None

    @contextmanager
    def _model_files(self, name: str, version: str, sub: str = "") -> Iterator[Path]:
        """The version's model folder (or one file of it, ``sub``) downloaded to a temporary folder.

        The download location is asked of our own client: MLflow's ``models:/`` artifact
        repository resolves names with the process-global registry URI, whatever it is given."""
        import mlflow.artifacts

        with self._calling(f"{name} has no version {version!r}"), tempfile.TemporaryDirectory() as tmp:
            where = self.client.get_model_version_download_uri(check_name(name), str(version)).rstrip("/")
            yield Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{where}/{sub}" if sub else where,
                                                           dst_path=tmp, tracking_uri=self.url,
                                                           registry_uri=self.registry_uri))

    def model_info(self, name: str, version: str) -> ModelInfo:
        """The version's signature and flavours, from its MLmodel file alone."""
        import yaml

        tags = self.version(name, version).tags
        with self._model_files(name, version, "MLmodel") as path:
            meta = yaml.safe_load(path.read_text())
        inputs, specs = None, ()
        signature = (meta.get("signature") or {}).get("inputs")
        if signature:
            columns = json.loads(signature) if isinstance(signature, str) else signature
            named = [c for c in columns if isinstance(c, dict)]
            names = tuple(str(c.get("name") or "") for c in named)
            inputs = names if names and all(names) else None
            if inputs is not None:
                specs = tuple((str(c["name"]), str(c.get("type") or "any"), bool(c.get("required", True)))
                              for c in named)
        flavors = meta.get("flavors") or {}
        predict_fn = (flavors.get("python_function") or {}).get("predict_fn")
        kind = tags.get(KIND_TAG) or ("classifier" if predict_fn == "predict_proba" else None)
        return ModelInfo(name, str(version), inputs, tuple(flavors), predict_fn, kind, specs)

    def load_sklearn(self, name: str, version: str) -> Any:
        """The fitted scikit-learn estimator of a version (cached: a version never changes)."""
        return self.load_model(name, version, "sklearn")[0]

    def load_model(self, name: str, version: str, flavor: str = "sklearn") -> tuple[Any, Any]:
        """A version loaded through ``flavor`` (``sklearn``: the estimator; ``pyfunc``: MLflow's generic
        model) and the input example it was logged with (a DataFrame, or None). Cached per flavour.

        A pyfunc model may read its files after loading, so its download is kept for the process's life."""
        key = (name, str(version), flavor)
        if key not in self._loaded:
            from mlflow.models import Model

            missing = f"{name} v{version} has no {'scikit-learn' if flavor == 'sklearn' else flavor} flavour"
            if flavor == "pyfunc":
                import mlflow.pyfunc

                keep = Path(tempfile.mkdtemp(prefix="nimbus-pyfunc-"))
                with self._model_files(name, version) as folder, self._calling(missing):
                    local = keep / "model"
                    shutil.copytree(folder, local)
                    model = mlflow.pyfunc.load_model(str(local))
                    example = _example(Model, local)
            elif flavor == "sklearn":
                import mlflow.sklearn

                with self._model_files(name, version) as folder, self._calling(missing):
                    model = mlflow.sklearn.load_model(str(folder))
                    example = _example(Model, folder)
            else:
                raise InvalidInput(f"flavour {flavor!r}: sklearn or pyfunc")
            self._loaded[key] = (model, example)
        return self._loaded[key]

    # ---- tracking -------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        """The id of the experiment ``name``, created when it does not exist yet."""
        if name not in self._experiments:
            with self._calling():
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    where = (self.artifact_root / name).as_uri() if self.artifact_root and not self.is_server else None
                    found_id = self.client.create_experiment(name, artifact_location=where)
                else:
                    found_id = found.experiment_id
                self._experiments[name] = found_id
        return self._experiments[name]

    def log_run(self, experiment: str, run_name: str, *, tags: Mapping[str, str] | None = None,
                metrics: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None) -> str:
        """A finished run in three calls (create, one batch, end): what a search trial needs."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        with self._calling():
            run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=dict(tags or {}))
            self.client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                                  params=[Param(k, str(v)) for k, v in (params or {}).items()])
            self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    @contextmanager
    def tracked_run(self, experiment: str, run_name: str, tags: Mapping[str, str] | None = None) -> Iterator[TrackedRun]:
        """A run of ``experiment`` to log params, metrics, artifacts and models into (ended on exit)."""
        import mlflow

        # MLflow also exports the URIs it is given as MLFLOW_*_URI: restored afterwards, so a
        # subprocess started later (a user's own script, say) does not inherit ours.
        saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        with _fluent_lock, self._calling():
            try:
                mlflow.set_tracking_uri(self.url)  # the fluent API's process-global URIs: set here, nowhere else
                mlflow.set_registry_uri(self.registry_uri)
                with mlflow.start_run(experiment_id=self.experiment_id(experiment), run_name=run_name,
                                      tags=dict(tags or {})) as run:
                    yield TrackedRun(self, run.info.run_id)
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value


class TrackedRun:
    """The open run of :meth:`Registry.tracked_run`."""

    def __init__(self, registry: Registry, run_id: str) -> None:
        self.registry, self.run_id = registry, run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.log_params(dict(params))

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

    def log_json(self, data: Any, path: str) -> None:
        self.log_bytes(json.dumps(data, default=str).encode(), path)

    def log_bytes(self, data: bytes, path: str) -> None:
        """``data`` as the artifact file ``path`` (folder/name)."""
        import mlflow

        folder, _, name = path.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / name
            local.write_bytes(data)
            mlflow.log_artifact(str(local), artifact_path=folder or None)

    def log_sklearn(self, model: Any, example: Any, output: Any, registered_name: str, *, name: str = "model",
                    predict_fn: str = "predict", version_tags: Mapping[str, str] | None = None) -> str:
        """Log a fitted scikit-learn model with its signature, register it as a new version of
        ``registered_name`` and tag it with its kind (and ``version_tags``); returns the version."""
        import mlflow.sklearn
        from mlflow.models import infer_signature
        from sklearn.base import is_classifier

        # The requirements stated, not inferred: MLflow infers them by loading the model in a subprocess
        # that records its imports, which measured 4.7 s against 0.03 s for the same model here.
        trusted = trusted_types(model)
        requirements = mlflow.sklearn.get_default_pip_requirements(include_skops=True)
        info = mlflow.sklearn.log_model(model, name=name, input_example=example,
                                        signature=infer_signature(example, output), pyfunc_predict_fn=predict_fn,
                                        skops_trusted_types=trusted, pip_requirements=requirements)
        return self.registry.register(registered_name, info.model_uri, self.run_id, info.model_id,
                                      tags={KIND_TAG: "classifier" if is_classifier(model) else "regressor",
                                            **(version_tags or {})})


    def log_pyfunc(self, python_model: Any, example: Any, output: Any, registered_name: str, *, name: str = "model",
                   version_tags: Mapping[str, str] | None = None) -> str:
        """Log an ``mlflow.pyfunc.PythonModel`` with its signature and register it as a new version of
        ``registered_name`` (a model of no scikit-learn flavour: served and scored through pyfunc)."""
        import mlflow.pyfunc
        from mlflow.models import infer_signature

        info = mlflow.pyfunc.log_model(name=name, python_model=python_model, input_example=example,
                                       signature=infer_signature(example, output),
                                       pip_requirements=[f"mlflow=={mlflow.__version__}"])
        return self.registry.register(registered_name, info.model_uri, self.run_id, info.model_id,
                                      tags=dict(version_tags or {}))


def trusted_types(model: Any) -> list[str] | None:
    """The types skops asks us to vouch for when MLflow saves ``model`` (we built these models ourselves)."""
    try:
        import skops.io as sio

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.skops"
            sio.dump(model, path)
            return sio.get_untrusted_types(file=path) or None
    except Exception:  # noqa: BLE001 - no skops, or a model it cannot dump: MLflow then says why
        return None


def _example(model_class: Any, folder: Path) -> Any:
    """The input example saved beside a model, or None (none logged, or unreadable)."""
    try:
        return model_class.load(str(folder)).load_input_example(str(folder))
    except Exception:  # noqa: BLE001 - an example is a convenience (warming); its absence is no error
        return None


def _info(mv: Any) -> VersionInfo:
    return VersionInfo(mv.name, str(mv.version), mv.run_id or "", int(mv.creation_timestamp or 0), dict(mv.tags or {}))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
