"""A throw-away Redis Cluster on loopback: ``masters`` redis-server processes (Debian's
``redis-server`` with ``--cluster-enabled yes``), joined by ``redis-cli --cluster create`` with no
replicas, in memory only (``--save '' --appendonly no``). The tests' cluster fixture and the
recommendation benchmark's ``--cluster`` run start one; nothing else does (a deployment points
``NIMBUS_REDIS_URL=redis+cluster://host:port`` at its own cluster).

    with LocalRedisCluster(folder) as url:   # redis+cluster://127.0.0.1:<port>
        ...

The servers are stopped by their own pids.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis

BUS_OFFSET = 10000  # a cluster node also listens on port + 10000 (the cluster bus)


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int) -> list[int]:
    """``n`` ports that are free now, each with its bus port (port + 10000) free too (from 20000-29999:
    below the kernel's ephemeral range, with the bus ports under 40000)."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randint(20000, 29999)
        if port not in ports and _free(port) and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


class LocalRedisCluster:
    """Start (``start`` or ``with``) and stop a ``masters``-node cluster; data and logs in ``folder``."""

    def __init__(self, folder: Path, masters: int = 3, timeout_s: float = 30.0) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.folder, self.masters, self.timeout_s = Path(folder), masters, timeout_s
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> str:
        """Start the servers, join them, wait for ``cluster_state:ok`` on every node; returns the URL."""
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if not (server and cli):
            raise RuntimeError("redis-server and redis-cli are needed: apt-get install redis-server")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ports = cluster_ports(self.masters)
        try:
            for port in self.ports:
                log = (self.folder / f"redis-{port}.log").open("w")
                self.procs.append(subprocess.Popen(
                    [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", str(self.folder / f"nodes-{port}.conf"), "--cluster-node-timeout", "5000",
                     "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
                log.close()
            deadline = time.monotonic() + self.timeout_s
            for port in self.ports:
                self._wait(port, deadline, lambda r: r.ping())
            subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True, text=True, timeout=self.timeout_s)
            for port in self.ports:
                self._wait(port, deadline, lambda r: r.execute_command("CLUSTER INFO").get("cluster_state") == "ok")
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait(self, port: int, deadline: float, ready: Callable[[redis.Redis], bool]) -> None:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0,
                             decode_responses=False)
        try:
            while True:
                try:
                    if ready(client):
                        return
                except (redis.RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Redis Cluster node 127.0.0.1:{port} not ready in {self.timeout_s:.0f} s; "
                                       f"log: {self.folder / f'redis-{port}.log'}")
                time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop every server this object started, by pid."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs = []

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main() -> None:
    """``python -m nimbus.local.redis_cluster [folder]``: start one, print its URL, stop it on Ctrl-C."""
    import signal
    import sys
    import tempfile

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a TERM stops the servers too
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="nimbus-redis-cluster-"))
    cluster = LocalRedisCluster(folder)
    try:
        print(cluster.start(), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
