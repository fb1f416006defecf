"""A batch run: read -> validate -> score with N models -> write Parquet and MongoDB -> report -> audit.

Identity: a run is keyed by its input (paths and ETags/checksums), so the same file
dropped twice is scored once; a run that did not finish is simply run again, and its
writes are idempotent (results are staged and committed as a whole; MongoDB documents
have a deterministic ``_id`` per run and record, so a retried task never duplicates).

The scoring pass is one Spark job whose tasks read their split with Arrow (from S3 or
disk), check every rule (``nimbus.validation.arrow``), score the valid records with
each model, and write a scored part and a quarantine part. Counts reconcile exactly:
records in = scored + quarantined. A run whose bad share passes the schema's threshold
is failed before anything is committed, with a report saying why.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nimbus import audit
from nimbus.batch.io import FsConfig, InputFile, Split, etag_fingerprints, input_schema, list_inputs, plan_splits
from nimbus.batch.models import ResolvedModel, describe, parse_refs, payloads, resolve
from nimbus.config import Settings
from nimbus.errors import NimbusError
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore
from nimbus.validation.schema import RecordSchema, load_schema

BINS = 20
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


def run_key_for(files: list[InputFile]) -> str:
    basis = "|".join(f"{f.uri}@{f.fingerprint}" for f in files)
    return hashlib.sha256(basis.encode()).hexdigest()[:20]


# ---- executor side ---------------------------------------------------------------------------
def _score_split(split: Split, fs_config: FsConfig, schema: RecordSchema, models: list[ResolvedModel],
                 estimators: dict[str, Any], staging: str, run_key: str) -> dict[str, Any]:
    """Runs in a Spark task: read, check, score, write. Returns counts and score statistics."""
    import pyarrow as pa

    from nimbus.batch.io import read_split, write_parquet
    from nimbus.validation.arrow import check

    clock = time.perf_counter()
    table = read_split(fs_config, split)
    seconds = {"read": time.perf_counter() - clock}
    clock = time.perf_counter()
    rules = schema.compiled()
    verdict = check(table, schema, rules)
    seconds["validate"] = time.perf_counter() - clock
    clock = time.perf_counter()
    valid = verdict.valid
    n, n_valid = table.num_rows, int(valid.sum())
    out: dict[str, Any] = {"records": n, "scored": n_valid, "quarantined": n - n_valid,
                           "failures": {r.name: int(verdict.failures[r.name].sum()) for r in rules},
                           "stats": {}, "agree": {}, "seconds": seconds}
    scores: dict[str, np.ndarray] = {}
    if n_valid:
        idx = np.flatnonzero(valid)
        columns = {"run_key": pa.array([run_key] * n_valid),
                   schema.id: verdict.typed[schema.id].take(pa.array(idx))}
        for model in models:
            x = np.column_stack([verdict.typed[c].to_numpy(zero_copy_only=False)[idx] for c in model.inputs])
            import pandas as pd

            frame = pd.DataFrame(x, columns=list(model.inputs))
            est = estimators[model.name]
            s = est.predict_proba(frame)[:, -1] if model.kind == "classifier" else est.predict(frame)
            scores[model.name] = np.asarray(s, dtype=np.float64)
            columns[f"score__{model.name}"] = pa.array(scores[model.name])
            columns[f"version__{model.name}"] = pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n_valid, np.int32)), pa.array([model.version]))
            lo, hi = (0.0, 1.0) if model.kind == "classifier" else (float(s.min()), float(s.max()) or 1.0)
            out["stats"][model.name] = {
                "hist": np.histogram(np.clip(s, 0, 1) if model.kind == "classifier" else s, BINS,
                                     range=(0.0, 1.0) if model.kind == "classifier" else None)[0].tolist(),
                "sum": float(s.sum()), "sumsq": float((s * s).sum()), "min": float(s.min()), "max": float(s.max()),
                "range": [lo, hi],
            }
        names = [m.name for m in models]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                same = np.sum((scores[a] >= 0.5) == (scores[b] >= 0.5))
                out["agree"][f"{a}|{b}"] = {"same_side": int(same), "sum_ab": float((scores[a] * scores[b]).sum())}
        seconds["score"] = time.perf_counter() - clock
        clock = time.perf_counter()
        write_parquet(fs_config, pa.table(columns), f"{staging}/scored/part-{split.index:05d}.parquet")
    if n - n_valid:
        bad = np.flatnonzero(~valid)
        quarantine = table.take(pa.array(bad)).append_column(
            "reasons", pa.array(verdict.reasons(schema, rules), pa.list_(pa.string())))
        quarantine = quarantine.append_column("run_key", pa.array([run_key] * len(bad)))
        write_parquet(fs_config, quarantine, f"{staging}/quarantine/part-{split.index:05d}.parquet")
    seconds["write"] = time.perf_counter() - clock
    return out


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"records": 0, "scored": 0, "quarantined": 0, "failures": {}, "stats": {}, "agree": {},
                             "task_seconds": {}}
    for part in parts:
        for stage, sec in part.get("seconds", {}).items():
            total["task_seconds"][stage] = total["task_seconds"].get(stage, 0.0) + sec
        for key in ("records", "scored", "quarantined"):
            total[key] += part[key]
        for rule, count in part["failures"].items():
            total["failures"][rule] = total["failures"].get(rule, 0) + count
        for name, st in part["stats"].items():
            acc = total["stats"].setdefault(name, {"hist": [0] * BINS, "sum": 0.0, "sumsq": 0.0,
                                                   "min": np.inf, "max": -np.inf, "range": st["range"]})
            acc["hist"] = [a + b for a, b in zip(acc["hist"], st["hist"])]
            acc["sum"] += st["sum"]
            acc["sumsq"] += st["sumsq"]
            acc["min"], acc["max"] = min(acc["min"], st["min"]), max(acc["max"], st["max"])
        for pair, ag in part["agree"].items():
            acc = total["agree"].setdefault(pair, {"same_side": 0, "sum_ab": 0.0})
            acc["same_side"] += ag["same_side"]
            acc["sum_ab"] += ag["sum_ab"]
    return total


def _write_mongo_part(uri: str, fs_config: FsConfig, mongo_url: str, db: str, id_column: str,
                      models: dict[str, str], chunk: int = 5000) -> tuple[int, int]:
    """Runs in a Spark task: insert one scored part; duplicates (a retried task) are skipped."""
    import pymongo
    from pymongo.errors import BulkWriteError

    from nimbus.batch.io import Split, read_split

    table = read_split(fs_config, Split(uri, tuple(range(_row_groups(fs_config, uri))), 0))
    ids = table.column(id_column).to_pylist()
    run_key = table.column("run_key")[0].as_py() if table.num_rows else ""
    scores = {name: table.column(f"score__{name}").to_numpy() for name in models}
    collection = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=10_000)[db][Collections.BATCH_PREDICTIONS]
    inserted = duplicates = 0
    for start in range(0, len(ids), chunk):
        docs = [{"_id": f"{run_key}:{rid}", "run_key": run_key, "record_id": rid,
                 "scores": {name: float(scores[name][k]) for name in models}, "versions": models}
                for k, rid in enumerate(ids[start:start + chunk], start)]
        try:
            inserted += len(collection.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            dup = sum(1 for e in exc.details.get("writeErrors", []) if e.get("code") == 11000)
            if dup != len(exc.details.get("writeErrors", [])):
                raise
            duplicates += dup
            inserted += exc.details.get("nInserted", len(docs) - dup)
    return inserted, duplicates


def _row_groups(fs_config: FsConfig, uri: str) -> int:
    import pyarrow.parquet as pq

    fs, path = fs_config.filesystem(uri)
    with fs.open_input_file(path) as handle:
        return pq.ParquetFile(handle).metadata.num_row_groups


# ---- driver side -----------------------------------------------------------------------------
class BatchJob:
    """The steps of one run; ``run`` chains them, the Airflow DAG calls them one by one."""

    def __init__(self, settings: Settings, request: RunRequest, progress: Progress | None = None) -> None:
        self.settings = settings
        self.request = request
        self.say = progress or (lambda _m: None)
        self.fs = FsConfig.from_settings(settings)
        self.schema = load_schema(request.schema)
        self.runs = DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS)
        base = f"s3://{settings.artifacts_bucket}/batch"
        self.base = base

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
        key = run_key_for(files)
        existing = self.runs.find_one({"_id": key})
        if existing and existing.get("status") == "succeeded":
            return key, existing
        if existing and existing.get("models"):
            pinned = existing["models"]  # a rerun scores with the versions the first attempt pinned
        else:
            pinned = {m.name: m.version for m in resolve(self.settings, parse_refs(self.request.models))}
        checksum = hashlib.sha256("|".join(f"{f.uri}@{f.fingerprint}" for f in files).encode()).hexdigest()
        self.runs.update_one({"_id": key}, {
            "$set": {"status": "running", "input": {"uri": self.request.input_uri, "checksum": checksum,
                                                     "files": [f.__dict__ for f in files]},
                     "models": pinned, "schema": self.schema.name, "sinks": list(self.request.sinks),
                     "actor": self.request.actor or audit.actor(), "started_at": datetime.now(UTC)},
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
                self._fail(key, str(exc), {})
                raise BatchFailed(str(exc)) from exc

    # -- step 2 (Airflow's validate task): rule counts with Spark column expressions --
    def validate(self, key: str) -> dict[str, Any]:
        """Count failures by rule in one Spark aggregation, and fail fast past the threshold."""
        from nimbus.batch.spark import spark_session
        from nimbus.validation.spark import count_failures

        self.check_schema(key)
        doc = self._doc(key)
        spark = spark_session(self.settings)
        frames = []
        for f in doc["input"]["files"]:
            local = f["uri"]
            if local.startswith("s3://"):
                local = self._stage_locally(local)
            reader = spark.read.parquet if local.endswith((".parquet", ".pq")) else \
                spark.read.option("header", True).csv
            frames.append(reader(local))
        df = frames[0]
        for other in frames[1:]:
            df = df.unionByName(other, allowMissingColumns=True)
        records, bad, failures = count_failures(df, self.schema)
        self._threshold(key, records, bad, failures)
        return {"records": records, "bad": bad, "failures": failures}

    def _stage_locally(self, uri: str) -> str:
        """Spark's JVM reads local files here (no Hadoop S3 connector): download once per run."""
        from pathlib import Path

        bucket, _, s3_key = uri[5:].partition("/")
        local = self.settings.home / "batch" / "inputs" / bucket / s3_key
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            ObjectStore.for_settings(self.settings).client.download_file(bucket, s3_key, str(local))
        return str(Path(local))

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
        from nimbus.batch.spark import spark_session

        doc = self._doc(key)
        models = [describe(self.settings, name, version) for name, version in doc["models"].items()]
        files = [InputFile(**f) for f in doc["input"]["files"]]
        splits = plan_splits(self.fs, files)
        staging = f"{self.base}/staging/{key}"
        self._delete_prefix(staging)  # a previous attempt's parts must not mix with this one's
        spark = spark_session(self.settings)
        estimators = spark.sparkContext.broadcast(payloads(self.settings, models))
        fs, schema = self.fs, self.schema

        def task(items):  # noqa: ANN001, ANN202
            import cloudpickle

            loaded = {name: cloudpickle.loads(blob) for name, blob in estimators.value.items()}
            for split in items:
                yield _score_split(split, fs, schema, models, loaded, staging, key)

        self.say(f"scoring {len(splits)} splits with {', '.join(f'{m.name} v{m.version}' for m in models)}")
        parts = spark.sparkContext.parallelize(splits, max(1, len(splits))).mapPartitions(task).collect()
        estimators.unpersist()
        total = _merge(parts)
        if total["records"] != total["scored"] + total["quarantined"]:
            raise NimbusError(f"counts do not reconcile: {total['records']} != {total['scored']} + "
                              f"{total['quarantined']}")
        self.runs.update_one({"_id": key}, {"$set": {"counts": {k: total[k] for k in ("records", "scored",
                                                                                      "quarantined")},
                                                      "task_seconds": total["task_seconds"],
                                                      "failures": total["failures"],
                                                      "stats": {"scores": total["stats"], "agree": total["agree"]}}})
        try:
            self._threshold(key, total["records"], total["quarantined"], total["failures"])
        except BatchFailed:
            self._delete_prefix(staging)
            raise
        return total

    # -- step 4: commit Parquet, then MongoDB --
    def write(self, key: str) -> dict[str, Any]:
        from nimbus.batch.spark import spark_session

        doc = self._doc(key)
        staging = f"{self.base}/staging/{key}"
        results, quarantine = f"{self.base}/results/{key}", f"{self.base}/quarantine/{key}"
        clock = time.perf_counter()
        self._delete_prefix(results)
        self._delete_prefix(quarantine)
        moved = {"results": self._move_prefix(f"{staging}/scored", results),
                 "quarantine": self._move_prefix(f"{staging}/quarantine", quarantine)}
        written: dict[str, Any] = {"results_uri": results, "quarantine_uri": quarantine, "parts": moved,
                                   "seconds": {"commit": time.perf_counter() - clock}}
        if "mongodb" in doc.get("sinks", []):
            clock = time.perf_counter()
            spark = spark_session(self.settings)
            parts = [f"s3://{self.settings.artifacts_bucket}/{k}" for k in
                     ObjectStore.for_settings(self.settings).list_keys(self.settings.artifacts_bucket,
                                                                       results[len(f"s3://{self.settings.artifacts_bucket}/"):] + "/")]
            fs, url, db, id_col, models = self.fs, self.settings.mongo_url, self.settings.mongo_db, \
                self.schema.id, doc["models"]
            counts = spark.sparkContext.parallelize(parts, max(1, len(parts))).map(
                lambda uri: _write_mongo_part(uri, fs, url, db, id_col, models)).collect()
            written["mongodb"] = {"inserted": sum(c[0] for c in counts), "duplicates": sum(c[1] for c in counts)}
            written["seconds"]["mongodb"] = time.perf_counter() - clock
        self.runs.update_one({"_id": key}, {"$set": {"outputs": written}})
        return written

    def _delete_prefix(self, uri: str) -> None:
        bucket, _, prefix = uri[5:].partition("/")
        store = ObjectStore.for_settings(self.settings)
        keys = store.list_keys(bucket, prefix + "/")
        for start in range(0, len(keys), 1000):
            store.client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})

    def _move_prefix(self, source: str, target: str) -> int:
        bucket, _, src = source[5:].partition("/")
        _, _, dst = target[5:].partition("/")
        store = ObjectStore.for_settings(self.settings)
        keys = store.list_keys(bucket, src + "/")
        for k in keys:
            store.client.copy_object(Bucket=bucket, Key=dst + k[len(src):], CopySource={"Bucket": bucket, "Key": k})
        self._delete_prefix(source)
        return len(keys)

    # -- step 5: report --
    def report(self, key: str, timings: dict[str, float] | None = None) -> str:
        from nimbus.batch.report import build_report, publish_report

        doc = self._doc(key)
        report = build_report(self.settings, doc, timings or doc.get("timings", {}))
        uri = publish_report(self.settings, key, report)
        self.runs.update_one({"_id": key}, {"$set": {"report_uri": uri}})
        return uri

    # -- step 6: finish and audit --
    def finish(self, key: str, timings: dict[str, float]) -> RunResult:
        """Mark the run succeeded, publish its report, audit it."""
        self.runs.update_one({"_id": key}, {"$set": {"status": "succeeded", "finished_at": datetime.now(UTC),
                                                      "timings": timings}})
        self.report(key, timings)
        doc = self._doc(key)
        counts = doc.get("counts", {})
        audit.record(self.settings, "batch_run", f"batch:{key}", "succeeded", who=doc.get("actor"),
                     input=doc["input"] | {"files": len(doc["input"]["files"])}, models=doc["models"],
                     details={**counts, "report": doc.get("report_uri")})
        return RunResult(key, "succeeded", counts.get("records", 0), counts.get("scored", 0),
                         counts.get("quarantined", 0), doc.get("failures", {}), doc["models"],
                         doc.get("outputs", {}).get("results_uri"), doc.get("outputs", {}).get("quarantine_uri"),
                         doc.get("report_uri"), timings)

    def _fail(self, key: str, message: str, counts: dict[str, Any]) -> None:
        doc = self.runs.find_one({"_id": key}) or {}
        self.runs.update_one({"_id": key}, {"$set": {"status": "failed", "error": message,
                                                      "finished_at": datetime.now(UTC), **(
                                                          {"counts": {k: counts[k] for k in ("records", "quarantined")},
                                                           "failures": counts["failures"]} if counts else {})}})
        try:
            self.report(key)
        except Exception:  # the failure itself is what matters; the report is a courtesy
            pass
        audit.record(self.settings, "batch_run", f"batch:{key}", "failed", who=doc.get("actor"),
                     input={"uri": self.request.input_uri, "checksum": doc.get("input", {}).get("checksum")},
                     models=doc.get("models", {}), details={"error": message})

    # -- all steps --
    def run(self) -> RunResult:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        key, done = self.prepare()
        if done is not None:
            return RunResult(key, "skipped", message=f"input already scored by run {key}",
                             models=done.get("models", {}), report_uri=done.get("report_uri"))
        self.check_schema(key)
        t = time.perf_counter()
        self.score(key)
        timings["score_s"] = time.perf_counter() - t
        t = time.perf_counter()
        written = self.write(key)
        timings["write_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - start
        doc = self._doc(key)
        records = doc["counts"]["records"]
        timings["records_per_s"] = records / timings["total_s"] if timings["total_s"] else 0.0
        result = self.finish(key, timings)
        result.message = json.dumps(written.get("mongodb", {}))
        return result


def run_batch(settings: Settings, request: RunRequest, progress: Progress | None = None) -> RunResult:
    return BatchJob(settings, request, progress).run()
