"""One SparkSession per process, configured from Settings: local[*] or a spark:// cluster."""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

from nimbus.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_lock = threading.Lock()


def spark_session(settings: Settings) -> SparkSession:
    # Executors must run this interpreter (same Python, same packages); loopback only here.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    from pyspark import SparkContext

    with _lock:
        context = SparkContext._active_spark_context
        if context is not None and context.master == settings.spark_master:
            return SparkSession(context)
        if context is not None:  # another master was asked for: one context per process
            context.stop()
        builder = (
            SparkSession.builder.master(settings.spark_master).appName("nimbus-batch")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.host", os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
            # One Python worker per core: scikit-learn's own threads would only oversubscribe it.
            .config("spark.executorEnv.OMP_NUM_THREADS", "1")
            .config("spark.executorEnv.OPENBLAS_NUM_THREADS", "1")
            .config("spark.python.worker.reuse", "true")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
            .config("spark.driver.memory", os.environ.get("NIMBUS_SPARK_DRIVER_MEMORY", "2g"))
        )
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        return session
