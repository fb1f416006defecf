"""The AutoML runner beside the local gateway: ``nimbus local serve`` runs ``nimbus automl worker`` as a
child process, so a job's Ray and its search never live in the gateway's process (one job there once
stopped the gateway answering and then killed it), and the queue the API fills is worked as on a server.

The child logs to ``home/logs/automl-worker.log``; it is stopped by its pid when the gateway ends
(SIGTERM, then SIGKILL), and on Linux it also gets SIGTERM from the kernel when the gateway dies
without a word (``PR_SET_PDEATHSIG``): a worker left behind would go on claiming jobs. A job it was
running then keeps its lease until the lease lapses, and the next runner to claim takes it again
(``automl_lease_s``, ``automl_max_attempts``).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from nimbus.config import Settings

log = logging.getLogger("nimbus.local.worker")
STOP_WAIT_S = 10.0


@contextmanager
def automl_worker(settings: Settings, enabled: bool = True) -> Iterator[subprocess.Popen | None]:
    """Run ``nimbus automl worker`` as a child for the duration of the block (not when the jobs go to a
    Ray cluster through ``ray_jobs_url``, nor when disabled); the child, or None."""
    if not enabled or settings.ray_jobs_url:
        yield None
        return
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "automl-worker.log", "ab") as sink:
        child = subprocess.Popen([sys.executable, "-m", "nimbus.cli", "automl", "worker"], stdin=subprocess.DEVNULL,
                                 stdout=sink, stderr=subprocess.STDOUT,
                                 preexec_fn=_dies_with_parent if sys.platform == "linux" else None)
    log.info("AutoML worker started (pid %s; log %s)", child.pid, logs / "automl-worker.log")
    try:
        yield child
    finally:
        stop(child)


def _dies_with_parent() -> None:
    """In the forked child, before exec: ask Linux for SIGTERM when the parent process dies."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop(child: subprocess.Popen) -> None:
    """End the child by its pid: SIGTERM, and SIGKILL if it has not gone after ``STOP_WAIT_S``."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    log.info("AutoML worker (pid %s) stopped", child.pid)
