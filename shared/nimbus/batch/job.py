"""A batch run: read -> validate -> score with N models -> write Parquet and MongoDB -> report -> audit.

This module orchestrates; what runs on executors is in ``scoring``, where results go in ``sinks``.

Identity: a run is keyed by its input (paths and ETags/checksums), so the same file
dropped twice is scored once; a run that did not finish is simply run again, and its
writes are idempotent (results are staged and committed as a whole; MongoDB documents
have a deterministic ``_id`` per run and record, so a retried task never duplicates).

The scoring pass is one Spark job whose tasks read their split with Arrow (from S3 or
disk), check every rule (``nimbus.validation.arrow``), score the valid records with
each model, and write a scored part and a quarantine part. Counts reconcile exactly:
records in = scored + quarantined. A run whose bad share passes the schema's threshold
is failed before anything is committed, with a report saying why.

Trust boundaries: a record id more than one record of the input has quarantines each of them
(the driver finds them first: a task sees its split only); a ``.csv.gz`` inflating past
``batch_max_decompressed_mb`` and an S3 key that could be staged outside the home are refused;
models load only from versions an audited promotion vouches for (``models.check_trusted``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from nimbus import audit, logs, tracing
from nimbus.batch.io import (
    FsConfig,
    InputFile,
    arrow_schema,
    check_decompressed,
    common_schema,
    duplicate_ids,
    etag_fingerprints,
    input_schema,
    list_inputs,
    plan_splits,
    read_split,
)
from nimbus.batch.models import describe, parse_refs, payloads, resolve
from nimbus.batch.scoring import merge, score_splits
from nimbus.batch.sinks import RERUN, ParquetSink, RunFolders, write_mongodb
from nimbus.config import Settings
from nimbus.errors import InvalidInput, NimbusError, StoreUnavailable
from nimbus.stores._base import redact
from nimbus.stores.documents import Collections, DocumentStore, mongo_reason
from nimbus.validation.schema import load_schema

if TYPE_CHECKING:
    from nimbus.batch.spark import OnProgress, TaskProgress

RUN_KEY_LENGTH = 20  # hex digits of the input checksum that name a run
PROGRESS_LOG_S = 5.0  # at most one progress log line this often while scoring (and one at the end)
Progress = Callable[[str], None]


class BatchFailed(NimbusError):
    """The run was refused (schema mismatch, too many bad records); nothing was written."""


@dataclass
class RunRequest:
    input_uri: str
    models: list[str] | str
    schema: str = "churn"
    sinks: tuple[str, ...] = ("parquet", "mongodb")
    max_bad_share: float | None = None  # None: the schema's own threshold
    actor: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, input_uri: str, *, models: str | None = None, schema: str | None = None,
                      sinks: str | None = None, max_bad_share: float | None = None,
                      actor: str | None = None) -> RunRequest:
        """A run of ``input_uri``; models, schema and sinks not given are the settings' batch defaults."""
        return cls(input_uri, models or settings.batch_models, schema or settings.batch_schema,
                   tuple((sinks or settings.batch_sinks).split(",")), max_bad_share, actor)


@dataclass
class RunResult:
    run_key: str
    status: str  # succeeded | skipped | failed
    records: int = 0
    scored: int = 0
    quarantined: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    results_uri: str | None = None
    quarantine_uri: str | None = None
    report_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def input_checksum(files: list[InputFile]) -> str:
    """SHA-256 of the input files' URIs and fingerprints: the same bytes at the same place, the same checksum."""
    return hashlib.sha256("|".join(f"{f.uri}@{f.fingerprint}" for f in files).encode()).hexdigest()


def run_key_for(files: list[InputFile]) -> str:
    """The run's key: the head of its input checksum."""
    return input_checksum(files)[:RUN_KEY_LENGTH]


@contextmanager
def mongo_lost(settings: Settings) -> Iterator[None]:
    """MongoDB gone while the driver talks to it (the run document, the audit trail): one line saying so."""
    from pymongo.errors import PyMongoError

    try:
        yield
    except PyMongoError as exc:
        raise StoreUnavailable("mongodb", redact(settings.mongo_url), mongo_reason(exc), RERUN) from exc


# ---- driver side -----------------------------------------------------------------------------
class BatchJob:
    """The steps of one run; ``run`` chains them, the Airflow DAG calls them one by one."""

    def __init__(self, settings: Settings, request: RunRequest, progress: Progress | None = None,
                 on_progress: OnProgress | None = None) -> None:
        """``progress``: each step, in words; ``on_progress``: how far the scoring job is while it runs
        (records scored so far of the total, tasks done), for a caller to render."""
        self.settings = settings
        self.request = request
        self.say = progress or (lambda _m: None)
        self.on_progress = on_progress
        self.fs = FsConfig.from_settings(settings)
        self.schema = load_schema(request.schema)
        self.runs = DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS)
        self.parquet = ParquetSink(settings)

    @classmethod
    def resume(cls, settings: Settings, key: str, progress: Progress | None = None) -> BatchJob:
        """The job of an existing run, rebuilt from its document (each Airflow task is a new process)."""
        doc = DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS).find_one({"_id": key})
        if doc is None:
            raise NimbusError(f"no batch run {key}")
        request = RunRequest(doc["input"]["uri"], ",".join(f"{n}@{v}" for n, v in doc["models"].items()),
                             doc.get("schema", settings.batch_schema), tuple(doc.get("sinks", ("parquet",))))
        return cls(settings, request, progress)

    # -- step 1: identify the run, pin the models --
    def prepare(self) -> tuple[str, dict[str, Any] | None]:
        """(run key, existing succeeded run or None). Creates or resumes the run document."""
        files = etag_fingerprints(self.settings, list_inputs(self.fs, self.request.input_uri))
        checksum = input_checksum(files)
        key = checksum[:RUN_KEY_LENGTH]
        existing = self.runs.find_one({"_id": key})
        if existing and existing.get("status") == "succeeded":
            return key, existing
        if existing and existing.get("models"):
            pinned = existing["models"]  # a rerun scores with the versions the first attempt pinned
        else:
            pinned = {m.name: m.version for m in resolve(self.settings, parse_refs(self.request.models))}
        self.runs.update_one({"_id": key}, {
            "$set": {"status": "running", "input": {"uri": self.request.input_uri, "checksum": checksum,
                                                     "files": [f.__dict__ for f in files]},
                     "models": pinned, "schema": self.schema.name, "sinks": list(self.request.sinks),
                     "actor": self.request.actor or audit.actor(self.settings), "started_at": datetime.now(UTC)},
            "$inc": {"attempts": 1},
        }, upsert=True)
        return key, None

    def _doc(self, key: str) -> dict[str, Any]:
        doc = self.runs.find_one({"_id": key})
        if doc is None:
            raise NimbusError(f"no batch run {key}")
        return doc

    def check_schema(self, key: str) -> None:
        doc = self._doc(key)
        for f in doc["input"]["files"]:
            try:
                self.schema.check_columns(input_schema(self.fs, InputFile(**f)))
            except NimbusError as exc:
                self._refuse(key, exc)

    def _refuse(self, key: str, exc: NimbusError) -> NoReturn:
        """The input cannot be run (its columns, its size): the run fails, reported and audited, and the
        drop file stays where it is, with nothing written."""
        self._fail(key, str(exc), {})
        raise BatchFailed(str(exc)) from exc

    # -- step 2 (Airflow's validate task): rule counts with Spark column expressions --
    def validate(self, key: str) -> dict[str, Any]:
        """Count failures by rule in one Spark aggregation, and fail fast past the threshold.

        The records are read by the Spark tasks with Arrow (``arrow_frame``: S3 or disk, where the tasks
        run), not by Spark's JVM readers from a copy on this machine: a Spark Connect server or a cluster
        reads the input itself, nothing passes through this process, no Hadoop S3 connector is needed."""
        from nimbus.batch.spark import arrow_frame, spark_session
        from nimbus.validation.spark import count_failures

        self.check_schema(key)
        files = [InputFile(**f) for f in self._doc(key)["input"]["files"]]
        try:
            for f in files:  # refused here in one line, before a task meets the limit as a Spark error
                check_decompressed(self.fs, f.uri)
        except InvalidInput as exc:
            self._refuse(key, exc)
        fs = self.fs
        schema = common_schema(arrow_schema(fs, f) for f in files)
        df = arrow_frame(spark_session(self.settings), plan_splits(fs, files), lambda split: read_split(fs, split),
                         schema)
        records, bad, failures = count_failures(df, self.schema)
        self._threshold(key, records, bad, failures)
        return {"records": records, "bad": bad, "failures": failures}

    def _threshold(self, key: str, records: int, bad: int, failures: dict[str, int]) -> None:
        limit = self.request.max_bad_share if self.request.max_bad_share is not None else self.schema.max_bad_share
        if records and bad / records > limit:
            worst = sorted(((c, r) for r, c in failures.items() if c), reverse=True)[:3]
            message = (f"{bad:,} of {records:,} records ({bad / records:.1%}) fail validation, over the "
                       f"{limit:.0%} limit; most failed: " + ", ".join(f"{r} ({c:,})" for c, r in worst))
            self._fail(key, message, {"records": records, "quarantined": bad, "failures": failures})
            raise BatchFailed(message)

    # -- step 3: the scoring pass --
    def score(self, key: str) -> dict[str, Any]:
        from nimbus.batch.spark import map_items, spark_session

        doc = self._doc(key)
        models = [describe(self.settings, name, version) for name, version in doc["models"].items()]
        files = [InputFile(**f) for f in doc["input"]["files"]]
        splits = plan_splits(self.fs, files)
        folders = RunFolders.of(self.settings, key)
        self.parquet.clear_staging(folders)
        # While Spark starts here (its JVM, in this thread: it installs the Ctrl-C handler that cancels jobs),
        # threads read the ids (pyarrow, without the GIL) and load the models: ids two records share are
        # quarantined, every one of them (which one is right is not ours to guess), and the tasks need them,
        # and the models, before they start.
        with ThreadPoolExecutor(2, thread_name_prefix="nimbus-prepare") as pool:
            ids = pool.submit(duplicate_ids, self.fs, splits, self.schema.id)
            loaded = pool.submit(payloads, self.settings, models)  # in the tasks' closure: Connect has no broadcast
            spark = spark_session(self.settings)
            estimators = loaded.result()
            try:
                duplicates = ids.result()
            except InvalidInput as exc:  # a .csv.gz past the decompressed-size limit
                self._refuse(key, exc)
        fs, schema = self.fs, self.schema

        self.say(f"scoring {len(splits)} splits with {', '.join(f'{m.name} v{m.version}' for m in models)}")
        rows = [s.rows for s in splits]
        parts = map_items(spark, splits, lambda items: score_splits(items, estimators, fs, schema, models, folders,
                                                                       key, duplicates),
                          size=lambda part: part["records"], total=None if None in rows else sum(rows),
                          on_progress=self._scoring_progress(key))
        total = merge(parts)
        if total["records"] != total["scored"] + total["quarantined"]:
            raise NimbusError(f"counts do not reconcile: {total['records']} != {total['scored']} + "
                              f"{total['quarantined']}")
        counts = {k: total[k] for k in ("records", "scored", "quarantined")}
        counts["duplicates"] = total["failures"].get(self.schema.unique_rule().name, 0)
        self.runs.update_one({"_id": key}, {"$set": {"counts": counts, "parts": self.parquet.staged(folders),
                                                      "task_seconds": total["task_seconds"],
                                                      "failures": total["failures"],
                                                      "stats": {"scores": total["stats"], "agree": total["agree"]}}})
        try:
            self._threshold(key, total["records"], total["quarantined"], total["failures"])
        except BatchFailed:
            self.parquet.clear_staging(folders)
            raise
        return total

    def _scoring_progress(self, key: str) -> OnProgress:
        """The scoring job's progress to the caller's ``on_progress`` and, now and then, to a log line."""
        logged = {"at": time.monotonic()}

        def report(p: TaskProgress) -> None:
            if self.on_progress is not None:
                self.on_progress(p)
            finished = p.tasks_done == p.tasks
            if finished or time.monotonic() - logged["at"] >= PROGRESS_LOG_S:
                logged["at"] = time.monotonic()
                logs.step_progress("batch", key, "score", records=p.done, records_total=p.total,
                                   tasks_done=p.tasks_done, tasks=p.tasks)

        return report

    # -- step 4: MongoDB from the staged parts, then commit Parquet --
    def write(self, key: str) -> dict[str, Any]:
        """Idempotent, so a retried task or a rerun never duplicates nor loses: MongoDB skips the ``_id``s it
        has, and the commit makes results exactly the scoring pass's manifest of parts."""
        doc = self._doc(key)
        if "parts" not in doc:
            raise NimbusError(f"batch run {key} has nothing staged: its score step has not run")
        folders = RunFolders.of(self.settings, key)
        written: dict[str, Any] = {"results_uri": str(folders.results).rstrip("/"),
                                   "quarantine_uri": str(folders.quarantine).rstrip("/"), "seconds": {}}
        if "mongodb" in doc.get("sinks", []):  # first: MongoDB lost here leaves no Parquet committed
            from nimbus.batch.spark import spark_session

            clock = time.perf_counter()
            written["mongodb"] = write_mongodb(spark_session(self.settings), self.settings,
                                               self.parquet.scored_parts(folders, doc["parts"]), self.schema.id,
                                               doc["models"])
            written["seconds"]["mongodb"] = time.perf_counter() - clock
        clock = time.perf_counter()
        written["parts"] = self.parquet.commit(folders, doc["parts"])
        written["seconds"]["commit"] = time.perf_counter() - clock
        self.runs.update_one({"_id": key}, {"$set": {"outputs": written}})
        return written

    # -- step 5: the run succeeded --
    def finish(self, key: str, timings: dict[str, float]) -> None:
        """Mark the run succeeded, with its timings."""
        self.runs.update_one({"_id": key}, {"$set": {"status": "succeeded", "finished_at": datetime.now(UTC),
                                                      "timings": timings}})

    # -- step 6: report (also of a failed run) --
    def report(self, key: str) -> str:
        from nimbus.batch.report import build_report, publish_report

        doc = self._doc(key)
        uri = publish_report(self.settings, key, build_report(self.settings, doc, doc.get("timings", {})))
        self.runs.update_one({"_id": key}, {"$set": {"report_uri": uri}})
        return uri

    # -- step 7: audit --
    def audit_run(self, key: str) -> RunResult:
        """Record the finished run in the audit trail; returns its result."""
        doc = self._doc(key)
        counts = doc.get("counts", {})
        audit.record(self.settings, "batch_run", f"batch:{key}", "succeeded", who=doc.get("actor"),
                     input=doc["input"] | {"files": len(doc["input"]["files"])}, models=doc["models"],
                     details={**counts, "report": doc.get("report_uri")})
        return RunResult(key, "succeeded", counts.get("records", 0), counts.get("scored", 0),
                         counts.get("quarantined", 0), doc.get("failures", {}), doc["models"],
                         doc.get("outputs", {}).get("results_uri"), doc.get("outputs", {}).get("quarantine_uri"),
                         doc.get("report_uri"), doc.get("timings", {}))

    def _fail(self, key: str, message: str, counts: dict[str, Any]) -> None:
        doc = self.runs.find_one({"_id": key}) or {}
        self.runs.update_one({"_id": key}, {"$set": {"status": "failed", "error": message,
                                                      "finished_at": datetime.now(UTC), **(
                                                          {"counts": {k: counts[k] for k in ("records", "quarantined")},
                                                           "failures": counts["failures"]} if counts else {})}})
        try:
            self.report(key)
        except Exception:  # noqa: BLE001 - the failure itself is what matters; the report is a courtesy
            pass
        audit.record(self.settings, "batch_run", f"batch:{key}", "failed", who=doc.get("actor"),
                     input={"uri": self.request.input_uri, "checksum": doc.get("input", {}).get("checksum")},
                     models=doc.get("models", {}), details={"error": message})

    # -- all steps --
    def run(self) -> RunResult:
        with mongo_lost(self.settings):
            return self._run()

    def _run(self) -> RunResult:
        # One span for the run, one span and one log line per step (nimbus.logs.step).
        with tracing.span("batch.run", {"nimbus.input_uri": self.request.input_uri}):
            timings: dict[str, float] = {}
            start = time.perf_counter()
            key, done = self.prepare()
            tracing.set_attributes({"nimbus.run_key": key})
            if done is not None:
                return RunResult(key, "skipped", message=f"input already scored by run {key}",
                                 models=done.get("models", {}), report_uri=done.get("report_uri"))
            with logs.step("batch", key, "check_schema"):
                self.check_schema(key)
            t = time.perf_counter()
            with logs.step("batch", key, "score") as counts:
                total = self.score(key)
                counts.update({k: total[k] for k in ("records", "scored", "quarantined") if k in total})
            timings["score_s"] = time.perf_counter() - t
            t = time.perf_counter()
            with logs.step("batch", key, "write") as counts:
                written = self.write(key)
                counts.update(_counts(written))
            timings["write_s"] = time.perf_counter() - t
            timings["total_s"] = time.perf_counter() - start
            doc = self._doc(key)
            records = doc["counts"]["records"]
            timings["records_per_s"] = records / timings["total_s"] if timings["total_s"] else 0.0
            self.finish(key, timings)
            with logs.step("batch", key, "report"):
                self.report(key)
            with logs.step("batch", key, "audit", records=records):
                result = self.audit_run(key)
            result.message = json.dumps(written.get("mongodb", {}))
            return result


def _counts(step_result: Any) -> dict[str, int]:
    """The whole-number counts of a step's result, flattened (``mongodb_written``...), for its log line."""
    out: dict[str, int] = {}
    if isinstance(step_result, dict):
        for name, value in step_result.items():
            if isinstance(value, int) and not isinstance(value, bool):
                out[name] = value
            elif isinstance(value, dict):
                out.update({f"{name}_{k}": v for k, v in _counts(value).items()})
    return out


def run_batch(settings: Settings, request: RunRequest, progress: Progress | None = None,
              on_progress: OnProgress | None = None) -> RunResult:
    return BatchJob(settings, request, progress, on_progress).run()
