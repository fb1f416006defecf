"""A real Spark Connect server on loopback, started from the installed pyspark package.

pyspark ships the server (``pyspark/jars/spark-connect_*.jar``); ``spark-submit --class
org.apache.spark.sql.connect.service.SparkConnectServer`` runs it in the foreground, in a process
session of its own, which is ended by its pid (``killpg``) at the end. The server runs ``local[2]``;
its Python workers run this interpreter with this checkout's ``shared/`` first on their PYTHONPATH
(the batch tasks import ``nimbus``). Its UI's REST API (also loopback) tells a test which jobs the
server ran. ``connect_server`` is used by the ``spark_connect`` fixture (made available by
tests/conftest.py) and by benchmarks/batch_throughput.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from nimbus.local.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


@dataclass(frozen=True)
class ConnectServer:
    url: str  # sc://127.0.0.1:port, what NIMBUS_SPARK_REMOTE takes
    ui: str  # the server's UI (its REST API under /api/v1)
    log: Path

    def jobs(self) -> list[dict]:
        """The Spark jobs the server has run (newest first), from its REST API."""
        with urllib.request.urlopen(f"{self.ui}/api/v1/applications", timeout=10) as answer:
            app = json.load(answer)[0]["id"]
        with urllib.request.urlopen(f"{self.ui}/api/v1/applications/{app}/jobs", timeout=10) as answer:
            return json.load(answer)


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def connect_server(log_dir: Path, cores: int = 2, memory: str = "2g", timeout_s: float = 120) -> Iterator[ConnectServer]:
    """Start a Spark Connect server (``local[cores]``), wait until its gRPC port accepts, stop it by pid."""
    import pyspark

    home = Path(pyspark.__file__).parent
    port, ui = free_port(), free_port()
    python_path = os.pathsep.join(p for p in (str(ROOT / "shared"), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": python_path}
    confs = {
        "spark.connect.grpc.binding.address": "127.0.0.1", "spark.connect.grpc.binding.port": str(port),
        "spark.ui.port": str(ui), "spark.ui.showConsoleProgress": "false", "spark.driver.host": "127.0.0.1",
        "spark.driver.memory": memory, "spark.python.worker.reuse": "true",
        # the same settings the local[*] session has (nimbus.batch.spark): one Python worker per core
        "spark.executorEnv.OMP_NUM_THREADS": "1", "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "100000",
    }
    command = [str(home / "bin" / "spark-submit"), "--class", SERVER_CLASS, "--name", "nimbus-connect-test",
               "--master", f"local[{cores}]", *[part for k, v in confs.items() for part in ("--conf", f"{k}={v}")]]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "spark-connect.log"
    with log.open("ab") as stream:
        proc = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Spark Connect server did not start (exit {proc.poll()}):\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield ConnectServer(f"sc://127.0.0.1:{port}", f"http://127.0.0.1:{ui}", log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: spark-submit's JVM and the Python workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")  # stopped after the module that asked: an idle JVM must not load later tests
def spark_connect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    """A Spark Connect server of the test session's own on loopback (local[2])."""
    with connect_server(tmp_path_factory.mktemp("spark-connect")) as server:
        yield server
