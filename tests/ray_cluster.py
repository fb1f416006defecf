"""A real two-node Ray cluster on loopback for the tests, with the Jobs API (the head's dashboard).

The cluster is the test session's own: its own ports, temp dirs and authentication token (Ray 2.x
turns token authentication on for `ray start --head`; the token goes to the head, the worker and
every driver through RAY_AUTH_TOKEN, so ~/.ray/auth_token and other Ray sessions on the machine are
left alone). It is stopped by killing its own process sessions by pid, never `ray stop`, which
stops every Ray on the machine. One cluster per test session (the ``ray_cluster`` fixture, made
available by tests/conftest.py): starting one costs tens of seconds.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.local.stack import free_port

RAY = str(Path(sys.executable).with_name("ray"))
NODES_SCRIPT = "import json, ray; ray.init(address={address!r}, log_to_driver=False); " \
               "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"


def session_pids(sid: int) -> list[int]:
    """Processes of one session (a `ray start` run with start_new_session: it and every daemon it left)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # after the command: state, ppid, pgrp, session
                pids.append(int(entry.name))
    return pids


def stop_sessions(sids: list[int], grace_s: float = 10) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for sid in sids:
            for pid in session_pids(sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(session_pids(sid) for sid in sids):
            time.sleep(0.2)


def node_ports() -> list[str]:
    """Every port a node opens, chosen free: two nodes on one machine must not meet on Ray's defaults."""
    options = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
               "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
    return [part for option in options for part in (option, str(free_port()))]


@pytest.fixture(scope="module")  # stopped after the module that asked: an idle cluster must not load later tests
def ray_cluster() -> Iterator[dict]:
    """Two Ray nodes of one CPU each on loopback: `ray start --head` with the dashboard (the Jobs API),
    then `ray start --address`. Yields the GCS address, the Jobs API URL, the env the cluster's clients
    need (its token) and the nodes' ids."""
    temp = Path(tempfile.mkdtemp(prefix="nimbus-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
               "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    # The nodes run this checkout's Nimbus with this interpreter (a Ray job's entrypoint says `python`).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, **ray_env, "PATH": path}
    port, dashboard = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    commands = [
        [RAY, "start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir", str(temp / "head"),
         "--node-ip-address", "127.0.0.1", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard),
         "--ray-client-server-port", str(free_port()), "--disable-usage-stats", *node_ports()],
        [RAY, "start", "--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
         "--temp-dir", str(temp / "worker"), "--disable-usage-stats", *node_ports()],
    ]
    sids: list[int] = []
    try:
        for command in commands:
            proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            sids.append(proc.pid)
            output, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"{' '.join(command)} failed:\n{output[-3000:]}"
        deadline = time.monotonic() + 60
        nodes: list[str] = []
        while len(nodes) < 2 and time.monotonic() < deadline:  # the worker node registers with the head
            done = subprocess.run([sys.executable, "-c", NODES_SCRIPT.format(address=address)], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-3000:]
            nodes = json.loads(done.stdout.strip().splitlines()[-1])
        assert len(nodes) == 2, nodes
        yield {"address": address, "jobs_url": f"http://127.0.0.1:{dashboard}", "env": ray_env,
               "token": ray_env["RAY_AUTH_TOKEN"], "nodes": set(nodes), "temp": temp}
    finally:
        stop_sessions(sids)
        shutil.rmtree(temp, ignore_errors=True)
