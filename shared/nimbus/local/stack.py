"""Start, stop and inspect the local stack: real servers on 127.0.0.1, data under ``home``.

Each service is a process we start with its own session (so ``down`` ends it and every
child it made), a pid file under ``home/run`` and a log under ``home/logs``. ``up`` is
idempotent: a service that is already ours and healthy is left running. A port held by
someone else is a clear error, never a second server fighting for it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from nimbus.apikeys import is_loopback_url
from nimbus.config import Settings
from nimbus.errors import LocalStackError
from nimbus.stores import Health
from nimbus.stores.documents import DocumentStore
from nimbus.stores.objects import ObjectStore, QueueStore
from nimbus.stores.redis.base import RedisStore, cluster_url
from nimbus.stores.registry import Registry

RESOURCES_SCRIPT = Path("localstack") / "init" / "ready.d" / "nimbus_resources.py"


def _bin(name: str) -> str | None:
    """A program from this interpreter's environment first (the venv), then PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nobody listens on now (for tests and ephemeral stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port(url: str, default: int) -> int:
    return urlsplit(url).port or default


def mlflow_files(settings: Settings) -> tuple[Path, Path] | None:
    """MLflow's backend database file and artifact folder when they are on this machine: SQLite under
    ``home`` (no server), or the ``mlflow server`` this stack runs on loopback; None for a remote server."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")), settings.mlflow_artifact_root
    return _server_files(settings) if is_loopback_url(uri) else None


def _server_files(settings: Settings) -> tuple[Path, Path]:
    """Where the ``mlflow server`` of the local stack keeps its database and artifacts."""
    base = settings.home / "data" / "mlflow"
    return base / "mlflow.db", base / "artifacts"


@dataclass
class Service:
    """One server of the local stack."""

    name: str
    port: int | None  # None: no process (MLflow on SQLite)
    url: str
    env_var: str  # the setting that moves it elsewhere, for error messages
    command: Callable[[], list[str]] | None
    health: Callable[[], Health]
    after_start: Callable[[], None] | None = None
    ready: Callable[[], Health] | None = None  # "answers at all", before after_start; default: health
    binary: str = ""  # expected in /proc/PID/cmdline, so a recycled pid is never killed
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    up: bool
    url: str
    pid: int | None
    detail: str
    managed: bool  # started by this stack (has a live pid file)


class LocalStack:
    """The real local services for one ``Settings`` (ports and data folder come from it)."""

    def __init__(self, settings: Settings, *, ephemeral: bool = False, mlflow_server: bool = False) -> None:
        self.settings = settings
        self.home = settings.home
        self.ephemeral = ephemeral  # in-memory data, nothing written that outlives the processes
        self.run_dir = self.home / "run"
        # A server when asked for, configured, or already started by an earlier `up --mlflow-server`.
        self.mlflow_server = (mlflow_server or settings.tracking_uri.startswith("http")
                              or (self.run_dir / "mlflow.json").exists())
        self.log_dir = self.home / "logs"
        self.services = self._services()

    # ---- service definitions -------------------------------------------------------
    def _services(self) -> list[Service]:
        s = self.settings
        redis_port = _port(s.redis_url, 6379)
        mongo_port = _port(s.mongo_url, 27017)
        s3_port = _port(s.aws_endpoint_url or "", 4566) if s.aws_endpoint_url else 4566
        services = [
            Service(  # a Redis Cluster (redis+cluster://) is one the user runs: only waited for, never started
                "redis", redis_port, s.redis_url, "NIMBUS_REDIS_URL",
                None if cluster_url(s.redis_url) else lambda: self._redis_command(redis_port),
                RedisStore(s.redis_url, s.store_timeout_s).health,
                binary="redis-server",
            ),
            Service(
                "mongodb", mongo_port, s.mongo_url, "NIMBUS_MONGO_URL",
                lambda: self._mongo_command(mongo_port),
                DocumentStore(s.mongo_url, s.mongo_db, s.store_timeout_s).health,
                after_start=lambda: DocumentStore(s.mongo_url, s.mongo_db, s.store_timeout_s).ensure_indexes(),
                binary="mongod" if shutil.which("mongod") else "secantusd",
            ),
            Service(
                "s3", s3_port, s.aws_endpoint_url or "", "NIMBUS_AWS_ENDPOINT_URL",
                lambda: [self._need("moto_server", "pip install 'moto[server]' (make installs it)"),
                         "-H", "127.0.0.1", "-p", str(s3_port)],
                self._s3_sqs_health,
                after_start=self.apply_resources,
                ready=ObjectStore(s).ping,
                binary="moto_server",
            ),
        ]
        if self.mlflow_server:
            url = s.tracking_uri if s.tracking_uri.startswith("http") else "http://127.0.0.1:5000"
            mlflow_port = _port(url, 5000)
            services.append(
                Service(
                    "mlflow", mlflow_port, url, "NIMBUS_MLFLOW_TRACKING_URI",
                    lambda: self._mlflow_command(mlflow_port),
                    Registry(url, url, s.store_timeout_s).health,
                    binary="mlflow",
                    extra_env={"MLFLOW_DISABLE_TELEMETRY": "true"},
                )
            )
        else:
            sqlite = Registry(s.tracking_uri, s.registry_uri, max(s.store_timeout_s, 30))
            services.append(
                Service("mlflow", None, s.tracking_uri, "NIMBUS_MLFLOW_TRACKING_URI", None, sqlite.health,
                        after_start=self._init_mlflow_sqlite)
            )
        return services

    def _s3_sqs_health(self) -> Health:
        """S3 with its buckets, and the drop-folder queue: the emulator is up when both answer."""
        s3 = ObjectStore(self.settings).health()
        if not s3.up:
            return s3
        queue = QueueStore(self.settings).health()
        detail = f"buckets {s3.info['buckets']}; queue {queue.info.get('queue')}" if queue.up else f"sqs: {queue.detail}"
        return Health("s3", s3.url, queue.up, s3.latency_ms + queue.latency_ms, detail)

    def _need(self, name: str, hint: str) -> str:
        path = _bin(name)
        if path is None:
            raise LocalStackError(f"{name} not found on PATH: {hint}")
        return path

    def _data_dir(self, name: str) -> Path:
        path = self.home / "data" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _redis_command(self, port: int) -> list[str]:
        cmd = [self._need("redis-server", "apt-get install redis-server (make does this as root)"),
               "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no", "--appendonly", "no"]
        if self.ephemeral:
            return [*cmd, "--save", ""]
        return [*cmd, "--save", "60 1", "--dir", str(self._data_dir("redis"))]

    def _mongo_command(self, port: int) -> list[str]:
        if shutil.which("mongod"):
            dbpath = self._data_dir("mongod-tmp" if self.ephemeral else "mongod")
            return ["mongod", "--bind_ip", "127.0.0.1", "--port", str(port), "--dbpath", str(dbpath), "--quiet"]
        server = self._need("secantusd-py", "install mongod, or pip install 'nimbus[local]' for secantusdb")
        storage = ":memory:" if self.ephemeral else str(self._data_dir("mongodb"))
        return [server, "--host", "127.0.0.1", "--port", str(port), "--storage-path", storage, "--log-level", "WARNING"]

    def _mlflow_command(self, port: int) -> list[str]:
        self._data_dir("mlflow")
        db, artifacts = _server_files(self.settings)
        return [self._need("mlflow", "pip install mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(artifacts)]

    def _init_mlflow_sqlite(self) -> None:
        self.settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
        (self.home / "mlflow").mkdir(parents=True, exist_ok=True)

    def apply_resources(self) -> None:
        """Create buckets, queues and the drop-folder notification from localstack/resources.json."""
        script = self.settings.project_root / RESOURCES_SCRIPT
        if not script.exists():
            raise LocalStackError(f"{script} not found: run nimbus from the project folder or set NIMBUS_PROJECT_ROOT")
        env = {**os.environ, "AWS_ENDPOINT_URL": self.settings.aws_endpoint_url or "",
               "AWS_DEFAULT_REGION": self.settings.aws_region}
        env.setdefault("AWS_ACCESS_KEY_ID", "test")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LocalStackError(f"applying localstack/resources.json failed: {tail[0]}")

    # ---- pid files -------------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _live_pid(self, service: Service) -> int | None:
        """The pid of our running process for ``service``, or None (stale files are removed)."""
        path = self._pidfile(service.name)
        if not path.exists():
            return None
        try:
            pid = int(json.loads(path.read_text())["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
            return None
        if service.binary and service.binary not in cmdline:
            path.unlink(missing_ok=True)  # the pid was recycled by an unrelated process
            return None
        return pid

    def running(self, name: str) -> bool:
        """True while a process of service ``name`` that this stack started is alive."""
        return any(self._live_pid(s) is not None for s in self.services if s.name == name and s.command)

    # ---- lifecycle ---------------------------------------------------------------------
    def select(self, names: list[str] | None) -> list[Service]:
        if not names:
            return self.services
        known = {s.name for s in self.services}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise LocalStackError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return [s for s in self.services if s.name in names]

    def up(self, names: list[str] | None = None, timeout_s: float = 60.0) -> list[ServiceStatus]:
        """Start every selected service (in parallel) and wait until each is healthy."""
        services = self.select(names)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Check every port before starting anything: fail before half a stack is up.
        for service in services:
            if service.command and self._live_pid(service) is None and not port_is_free(service.port or 0):
                raise LocalStackError(
                    f"port {service.port} for {service.name} is taken by another process: "
                    f"stop it, or set {service.env_var} to another port"
                )
        with ThreadPoolExecutor(max_workers=len(services)) as pool:
            list(pool.map(lambda s: self._start(s, timeout_s), services))
        return self.status(names)

    def _start(self, service: Service, timeout_s: float) -> None:
        if service.command is None:
            if service.after_start:
                service.after_start()
            self._wait_healthy(service, None, timeout_s)
            return
        if self._live_pid(service) is not None:
            if service.health().up:
                return
            raise LocalStackError(f"{service.name} is running but unhealthy; run `nimbus local down` first")
        log = (self.log_dir / f"{service.name}.log").open("ab")
        env = {**os.environ, **service.extra_env}
        proc = subprocess.Popen(service.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=self.home)
        self._pidfile(service.name).write_text(json.dumps({"pid": proc.pid, "port": service.port, "url": service.url}))
        try:
            self._wait_healthy(service, proc, timeout_s)
            if service.after_start:
                service.after_start()
                if not (health := service.health()).up:
                    raise LocalStackError(f"{service.name} is up but not ready: {health.detail}")
        except BaseException:
            self._stop_pid(proc.pid)
            self._pidfile(service.name).unlink(missing_ok=True)
            raise

    def _wait_healthy(self, service: Service, proc: subprocess.Popen | None, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise LocalStackError(
                    f"{service.name} exited with code {proc.returncode} while starting; "
                    f"see {self.log_dir / (service.name + '.log')}: {self._log_tail(service.name)}"
                )
            health = (service.ready or service.health)()
            if health.up:
                return
            last = health.detail
            time.sleep(0.2)
        raise LocalStackError(f"{service.name} did not become healthy in {timeout_s:.0f} s: {last}")

    def _log_tail(self, name: str) -> str:
        try:
            lines = (self.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:200] if lines else ""

    @staticmethod
    def _stop_pid(pid: int, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL what is left."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    reaped, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
                    if reaped == pid:
                        break
                except ChildProcessError:
                    pass  # not our child (started by an earlier `nimbus local up`)
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)

    def down(self, names: list[str] | None = None) -> list[str]:
        """Stop every service this stack started; returns the names stopped."""
        stopped = []
        for service in self.select(names):
            pid = self._live_pid(service)
            if pid is not None:
                self._stop_pid(pid)
                stopped.append(service.name)
            self._pidfile(service.name).unlink(missing_ok=True)
        return stopped

    def status(self, names: list[str] | None = None) -> list[ServiceStatus]:
        services = self.select(names)
        with ThreadPoolExecutor(max_workers=len(services)) as pool:
            healths = list(pool.map(lambda s: s.health(), services))
        return [
            ServiceStatus(s.name, h.up, h.url, self._live_pid(s) if s.command else None, h.detail,
                          s.command is None or self._live_pid(s) is not None)
            for s, h in zip(services, healths)
        ]
