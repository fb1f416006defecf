"""One SparkSession per process, configured from Settings: local[*], a spark:// cluster, or a Spark Connect
client (``sc://``, no JVM in this process).

The driver JVM's own output (start-up banner, log4j, the JDK's and Hadoop's warnings) goes to
``<home>/logs/spark.log``, not to the user's terminal: the terminal shows Nimbus output only.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def map_items(spark: SparkSession, items: Sequence[Any], work: Callable[[list[Any]], Iterable[Any]]) -> list[Any]:
    """Run ``work`` over ``items``, one item per Spark task, with DataFrame operations only (Spark Connect has
    no RDD, no broadcast): a ``range`` of item indexes, one per partition, then ``mapInArrow``; ``items`` and
    whatever ``work`` closes over travel in the pickled function. Returns what ``work`` yielded, in order."""
    import pickle

    def task(batches):
        import pyarrow as pa

        indexes = [i for batch in batches for i in batch.column(0).to_pylist()]
        if indexes:
            results = [pickle.dumps((i, r)) for i, r in zip(indexes, work([items[i] for i in indexes]))]
            yield pa.RecordBatch.from_arrays([pa.array(results, pa.binary())], names=["result"])

    if not items:
        return []
    rows = spark.range(0, len(items), 1, len(items)).mapInArrow(task, "result binary").collect()
    return [r for _, r in sorted((pickle.loads(row["result"]) for row in rows), key=lambda pair: pair[0])]


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
