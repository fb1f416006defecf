"""One SparkSession per process, configured from Settings: local[*] or a spark:// cluster.

The JVM's own log (start-up banner, log4j, Hadoop's native-library warning) goes to
``<home>/logs/spark.log``, not to the user's terminal: the terminal shows Nimbus output only.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from nimbus.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_lock = threading.Lock()

# log4j2: everything at WARN and above to one file; nothing to the console.
_LOG4J2 = """\
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
"""


def log_config(settings: Settings) -> Path:
    """Write the JVM's log4j2 configuration under ``home`` (logging to ``home/logs/spark.log``); returns its path."""
    log = settings.home / "logs" / "spark.log"
    config = settings.home / "spark" / "log4j2.properties"
    log.parent.mkdir(parents=True, exist_ok=True)
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(_LOG4J2.format(log=log))
    return config


def spark_session(settings: Settings) -> SparkSession:
    # Executors must run this interpreter (same Python, same packages); loopback only here.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    with _lock:
        context = SparkContext._active_spark_context
        if context is not None and context.master == settings.spark_master:
            return SparkSession(context)
        if context is not None:  # another master was asked for: one context per process
            context.stop()
        java_log = f"-Dlog4j2.configurationFile=file:{log_config(settings)}"
        builder = (
            SparkSession.builder.master(settings.spark_master).appName("nimbus-batch")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.host", os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
            .config("spark.driver.extraJavaOptions", java_log)
            # One Python worker per core: scikit-learn's own threads would only oversubscribe it.
            .config("spark.executorEnv.OMP_NUM_THREADS", "1")
            .config("spark.executorEnv.OPENBLAS_NUM_THREADS", "1")
            .config("spark.python.worker.reuse", "true")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
            .config("spark.driver.memory", settings.spark_driver_memory)
        )
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        return session
