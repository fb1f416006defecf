"""The time budget of one AutoML job, as one object with an injected clock.

A job has ``total_s`` seconds, wall clock, from the moment it starts. They are spent in order:
setup (reading and sampling the data, starting Ray), the search, the refit of the winner, then
evaluation, explanations and exports, then tracking and registration. Each phase ends early
enough that what follows it still fits, by keeping a named reserve:

* ``after_search_s`` — kept from the search for everything after it: the refit, the held-out
  evaluation, explanations, ONNX and registration. 30% of the budget, at least 6 s (a short
  job skips the extras that do not fit).
* ``after_refit_s`` — kept from the refit for what follows it: evaluation, explanations,
  exports and tracking. 20% of the budget, at least 6 s; smaller than ``after_search_s``
  because the refit itself is part of what the search leaves time for.
* ``AFTER_EXTRAS_S`` — kept from explanations and the ONNX export for logging, registering
  and publishing the winner, plus ``TRACK_S_PER_MB`` for each megabyte of the fitted model
  (serialised twice by skops, uploaded as the joblib export): a large forest takes seconds.

The first results (the quick defaults, fitted in the runner while Ray starts) come first, whatever
the time. The distributed search runs only when what is left for it is worth it: at least
``SEARCH_MIN_S``, plus ``RAY_START_S`` when Ray has yet to start (:meth:`JobBudget.worth_searching`).
Trial logging overlaps the search, and its stopper also leaves time for the logging backlog
(:meth:`JobBudget.can_finish`).

A runner that starts Ray for one job (``nimbus automl run``) also keeps ``teardown_s`` for shutting
it down, and counts from when its process started: the budget is the command's own wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

AFTER_SEARCH_SHARE, AFTER_SEARCH_MIN_S = 0.3, 6.0
AFTER_REFIT_SHARE, AFTER_REFIT_MIN_S = 0.2, 6.0
AFTER_EXTRAS_S = 3.0
TRACK_S_PER_MB = 0.07  # measured: a 57 MB extra-trees model took 6.8 s to log, register and publish here
SEARCH_MIN_S = 3.0  # less than this left for the distributed search: the first results are the search
RAY_START_S = 5.0  # a local Ray's start, its trial actors' start-up and Tune's set-up (measured ~5-8 s here)
RAY_TEARDOWN_S = 2.0  # ray.shutdown() of a local Ray (measured ~1.4 s here)
STEP_GROWTH = 1.5  # a trial's next step is expected at 1.5x its rate so far: fits grow faster than rows (n log n)
SEARCH_MAX_ROWS = 200_000  # the search works on a stratified sample this size at most; the winner refits on more
SEARCH_MIN_ROWS = 5_000
SEARCH_ROWS_PER_S = 250  # search sample rows per second of budget (a 60 s job: 15k rows)


@dataclass
class JobBudget:
    total_s: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)
    teardown_s: float = 0.0  # kept at the end for the runner's own clean-up (shutting its Ray down)

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    # ---- the plan ---------------------------------------------------------------------------
    @property
    def after_search_s(self) -> float:
        return max(AFTER_SEARCH_MIN_S, AFTER_SEARCH_SHARE * self.total_s)

    @property
    def after_refit_s(self) -> float:
        return max(AFTER_REFIT_MIN_S, AFTER_REFIT_SHARE * self.total_s)

    @property
    def deadline(self) -> float:
        """When the job must be done, on ``clock``."""
        return self.started + self.total_s - self.teardown_s

    @property
    def refit_deadline(self) -> float:
        return self.deadline - self.after_refit_s

    def search_rows(self) -> int:
        """Rows the search works on: enough to rank configurations, few enough that a first (cheapest)
        step is seconds and the budget sees many configurations; the winner refits on more."""
        return int(min(SEARCH_MAX_ROWS, max(SEARCH_MIN_ROWS, SEARCH_ROWS_PER_S * self.total_s)))

    # ---- where the job stands -------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def search_s(self) -> float:
        """Seconds the search may take, starting now: what is left after the reserve (0 when nothing is)."""
        return max(0.0, self.remaining() - self.after_search_s)

    def worth_searching(self, ray_up: bool) -> bool:
        """Whether the distributed search should run, starting now (after the first results, or, with
        ``ray_up`` False, before deciding to start Ray): enough time left for it to try configurations."""
        return self.search_s() >= SEARCH_MIN_S + (0.0 if ray_up else RAY_START_S)

    def refit_s(self) -> float:
        """Seconds left for the refit, starting now."""
        return self.refit_deadline - self.clock()

    def extras_s(self, model_mb: float = 0.0) -> float:
        """Seconds left for explanations and exports, starting now, for a model of ``model_mb`` megabytes."""
        return self.remaining() - AFTER_EXTRAS_S - TRACK_S_PER_MB * model_mb

    def can_finish(self, expected_s: float, by: float) -> bool:
        """Whether something expected to take ``expected_s``, started now, ends by ``by`` (on ``clock``)."""
        return self.clock() + expected_s < by

    def as_dict(self) -> dict[str, Any]:
        return {"total_s": self.total_s, "after_search_s": self.after_search_s, "after_refit_s": self.after_refit_s,
                "after_extras_s": AFTER_EXTRAS_S, "teardown_s": self.teardown_s, "search_rows": self.search_rows()}


def next_step_s(fit_s: float, rows_done: int, rows: int) -> float:
    """What a trial's next step, fitting on ``rows``, is expected to take after ``fit_s`` on ``rows_done``."""
    return STEP_GROWTH * fit_s / max(1, rows_done) * rows


def step_fits(now: float, fit_s: float, rows_done: int, rows: int, deadline: float) -> bool:
    """Whether a trial step can still finish by ``deadline`` (the trial's own clock: a trial runs in another
    process, maybe on another node, so it is given a wall-clock deadline)."""
    return now + next_step_s(fit_s, rows_done, rows) <= deadline
