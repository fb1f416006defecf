"""One SparkSession per process, configured from Settings: local[*], a spark:// cluster, or a Spark Connect
client (``sc://``, no JVM in this process).

The driver JVM's own output (start-up banner, log4j, the JDK's and Hadoop's warnings) goes to
``<home>/logs/spark.log``, not to the user's terminal: the terminal shows Nimbus output only.

``map_items`` reports progress while its job runs (``on_progress``): on ``local[*]`` or a cluster, a
Spark accumulator that each task adds its units to (records scored) and the status tracker's tasks done,
read by a small thread every ``poll_s``; on Spark Connect (no accumulator, no status tracker), each
result as it streams back (partitions come in order) and the server's progress reports of tasks done.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from nimbus.config import Settings
from nimbus.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

_lock = threading.Lock()


def log_path(settings: Settings) -> Path:
    """Where the driver JVM's stdout and stderr go (its log4j console, start-up warnings)."""
    return settings.home / "logs" / "spark.log"


def spark_session(settings: Settings) -> SparkSession:
    if settings.spark_remote:  # Spark Connect: a gRPC client, no JVM in this process
        from pyspark.sql import SparkSession

        return SparkSession.builder.remote(settings.spark_remote).getOrCreate()
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        raise ConfigError("batch on Lambda needs NIMBUS_SPARK_REMOTE=sc://host:15002 (a Spark Connect server); "
                          "a Lambda cannot run the Spark driver")
    # Executors must run this interpreter (same Python, same packages); loopback only here.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    with _lock:
        context = SparkContext._active_spark_context
        if context is not None and context.master == settings.spark_master:
            return SparkSession(context)
        if context is not None:  # another master was asked for: one context per process
            context.stop()
        conf = SparkConf().setMaster(settings.spark_master).setAppName("nimbus-batch").setAll([
            ("spark.ui.enabled", "false"),
            ("spark.ui.showConsoleProgress", "false"),
            ("spark.driver.host", os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")),
            # One Python worker per core: scikit-learn's own threads would only oversubscribe it.
            ("spark.executorEnv.OMP_NUM_THREADS", "1"),
            ("spark.executorEnv.OPENBLAS_NUM_THREADS", "1"),
            ("spark.executorEnv.MKL_NUM_THREADS", "1"),
            ("spark.python.worker.reuse", "true"),
            ("spark.sql.execution.arrow.maxRecordsPerBatch", "100000"),
            ("spark.driver.memory", settings.spark_driver_memory),
        ])
        log = log_path(settings)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as stream:  # the JVM keeps its own copy of the descriptor
            gateway = launch_gateway(conf, popen_kwargs={"stdout": stream, "stderr": stream})
        context = SparkContext(conf=conf, gateway=gateway)
        context.setLogLevel("ERROR")
        return SparkSession.builder.config(conf=conf).getOrCreate()


class TaskProgress(NamedTuple):
    """How far a ``map_items`` job is: units (e.g. records) of the finished items, of ``total`` when known."""

    done: int
    total: int | None
    tasks_done: int
    tasks: int

    def describe(self, unit: str = "records", verb: str = "scored") -> str:
        of = f" of {self.total:,}" if self.total is not None else ""
        return f"{verb} {self.done:,}{of} {unit} ({self.tasks_done}/{self.tasks} tasks)"


OnProgress = Callable[[TaskProgress], None]


def is_connect(spark: SparkSession) -> bool:
    """A Spark Connect session (a gRPC client: no SparkContext, no accumulators)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def map_items(spark: SparkSession, items: Sequence[Any], work: Callable[[list[Any]], Iterable[Any]], *,
              size: Callable[[Any], int] | None = None, total: int | None = None,
              on_progress: OnProgress | None = None, poll_s: float = 0.5) -> list[Any]:
    """Run ``work`` over ``items``, one item per Spark task, with DataFrame operations only (Spark Connect has
    no RDD, no broadcast): a ``range`` of item indexes, one per partition, then ``mapInArrow``; ``items`` and
    whatever ``work`` closes over travel in the pickled function. Returns what ``work`` yielded, in order.

    ``on_progress`` is called while the job runs, whenever it moved, with the ``size`` (units, default 1)
    of the results of the tasks done so far, of ``total``; and a last time with everything done."""
    if not items:
        return []
    size = size or (lambda _r: 1)
    n = len(items)
    if on_progress is None:
        results = _collect(spark, items, work, None)
    elif is_connect(spark):
        results = _collect_streamed(spark, items, work, size, total, on_progress)
    else:
        results = _collect_tracked(spark, items, work, size, total, on_progress, poll_s)
    ordered = [r for _, r in sorted(results, key=lambda pair: pair[0])]
    if on_progress is not None:
        on_progress(TaskProgress(sum(size(r) for r in ordered), total, n, n))
    return ordered


def _frame(spark: SparkSession, items: Sequence[Any], work: Callable[[list[Any]], Iterable[Any]],
           counted: Callable[[list[Any]], None] | None) -> DataFrame:
    def task(batches):
        import pyarrow as pa

        indexes = [i for batch in batches for i in batch.column(0).to_pylist()]
        if indexes:
            results = list(work([items[i] for i in indexes]))
            if counted is not None:
                counted(results)
            pickled = [pickle.dumps((i, r)) for i, r in zip(indexes, results)]
            yield pa.RecordBatch.from_arrays([pa.array(pickled, pa.binary())], names=["result"])

    return spark.range(0, len(items), 1, len(items)).mapInArrow(task, "result binary")


def _collect(spark: SparkSession, items: Sequence[Any], work: Callable[[list[Any]], Iterable[Any]],
             counted: Callable[[list[Any]], None] | None) -> list[tuple[int, Any]]:
    return [pickle.loads(row["result"]) for row in _frame(spark, items, work, counted).collect()]


def _collect_tracked(spark: SparkSession, items: Sequence[Any], work: Callable[[list[Any]], Iterable[Any]],
                     size: Callable[[Any], int], total: int | None, on_progress: OnProgress,
                     poll_s: float) -> list[tuple[int, Any]]:
    """local[*] or a cluster: each task adds its results' size to an accumulator (merged on the driver as the
    task finishes); a thread reads it and the status tracker's completed tasks of this job group."""
    sc = spark.sparkContext
    done = sc.accumulator(0)
    group = f"nimbus-map-{uuid.uuid4().hex[:12]}"
    n = len(items)

    def counted(results: list[Any]) -> None:
        done.add(sum(size(r) for r in results))

    def tasks_done() -> int:
        tracker = sc.statusTracker()
        finished = 0
        for job in tracker.getJobIdsForGroup(group):
            info = tracker.getJobInfo(job)
            for stage in info.stageIds if info else ():
                stage_info = tracker.getStageInfo(stage)
                finished += stage_info.numCompletedTasks if stage_info else 0
        return min(finished, n)

    stop = threading.Event()

    def poll() -> None:
        last = None
        while not stop.wait(poll_s):
            now = TaskProgress(min(done.value, total) if total is not None else done.value, total, tasks_done(), n)
            if now != last:
                on_progress(now)
                last = now

    sc.setJobGroup(group, "nimbus map_items")  # thread-local: this thread's jobs only
    watcher = threading.Thread(target=poll, name=group, daemon=True)
    watcher.start()
    try:
        return _collect(spark, items, work, counted)
    finally:
        stop.set()
        watcher.join()
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]  # None removes it


def _collect_streamed(spark: SparkSession, items: Sequence[Any], work: Callable[[list[Any]], Iterable[Any]],
                      size: Callable[[Any], int], total: int | None,
                      on_progress: OnProgress) -> list[tuple[int, Any]]:
    """Spark Connect: results stream back partition by partition (``toLocalIterator``), and the server reports
    its tasks done to a progress handler while the job runs."""
    n = len(items)
    state = {"done": 0, "tasks": 0}

    def report() -> None:
        on_progress(TaskProgress(state["done"], total, state["tasks"], n))

    def handler(stages: Iterable[Any] | None, inflight_tasks: int, operation_id: str | None, done: bool) -> None:
        finished = min(sum(s.num_completed_tasks for s in stages or ()), n)
        if finished != state["tasks"]:
            state["tasks"] = finished
            report()

    spark.registerProgressHandler(handler)  # type: ignore[attr-defined]  # Connect sessions only
    try:
        results: list[tuple[int, Any]] = []
        for row in _frame(spark, items, work, None).toLocalIterator():
            index, result = pickle.loads(row["result"])
            results.append((index, result))
            state["done"] += size(result)
            report()
        return results
    finally:
        spark.removeProgressHandler(handler)  # type: ignore[attr-defined]


def arrow_frame(spark: SparkSession, items: Sequence[Any], read: Callable[[Any], pa.Table],
                schema: pa.Schema) -> DataFrame:
    """A DataFrame of the tables ``read(item)`` gives, one item per task, each conformed to ``schema``:
    read where the tasks run (executors, a Connect server's workers), so no data passes through this
    process and no Hadoop connector is needed (``read`` reads S3 with Arrow). DataFrame operations only,
    like ``map_items``: it runs on Spark Connect too."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    from nimbus.batch.io import conform

    spark_schema = from_arrow_schema(schema)
    target = to_arrow_schema(spark_schema, timezone="UTC")  # the Arrow types Spark takes back (us timestamps)

    def task(batches):
        for batch in batches:
            for i in batch.column(0).to_pylist():
                yield from conform(read(items[i]), target).to_batches()

    return spark.range(0, len(items), 1, max(len(items), 1)).mapInArrow(task, spark_schema)
