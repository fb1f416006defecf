"""One function's handler run the way AWS Lambda's Python runtime runs it, for tests.

``python -m tests.lambda_runtime functions.recommend.handler recommend`` imports the handler
module once (the cold start), then takes one invocation per line on stdin (an event, JSON) and
answers each with one JSON line on stdout: the handler's return value and the names of every
thread the process ever started. Between invocations the test freezes this process (SIGSTOP),
as Lambda freezes the sandbox, so nothing the handler left behind can write meanwhile.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading

from nimbus.local.invoke import LambdaContext

started: list[str] = []
_start = threading.Thread.start


def _recording_start(self: threading.Thread) -> None:
    started.append(self.name)
    _start(self)


def main(module_path: str, function: str) -> None:
    threading.Thread.start = _recording_start  # type: ignore[method-assign] # before the import starts any
    handler = importlib.import_module(module_path).handler
    for line in sys.stdin:
        result = handler(json.loads(line), LambdaContext(function, 1024, 30))
        print(json.dumps({"result": result, "threads": started}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
