"""Handlers for the local gateway's concurrency tests (tests/e2e/test_gateway.py).

They run in the test's process (the gateway imports them as Lambda would, by dotted path), so
the test orders things with the events here instead of the clock: ``slow`` says it started,
then holds its worker until the test sets ``release``.
"""

from __future__ import annotations

import threading

started = threading.Event()  # slow began
release = threading.Event()  # slow may return
finished = threading.Event()  # slow returned (after its timeout: its result is discarded)
fast_events: list[dict] = []
fast_called = threading.Event()


def reset() -> None:
    for event in (started, release, finished, fast_called):
        event.clear()
    fast_events.clear()


def slow(event, context):
    started.set()
    release.wait(120)  # bounded: a broken test must not hold a worker for the rest of the session
    finished.set()
    return {"statusCode": 200, "body": "too late"}


def fast(event, context):
    fast_events.append(event)
    fast_called.set()
    return {"statusCode": 200, "body": "fast"}
