"""An ensemble of the search's results: the average (soft voting) of the best configurations of up to
``MEMBERS`` different algorithms, scored on the same steps as every trial and kept as a leaderboard
entry of its own, so it becomes the winner only when it scores better than each of them.

Built in the runner after the search, when the time its members took to evaluate fits in what the
budget allows it (their fits are what it repeats).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from nimbus.automl.search import RUNNER_NODE, Evaluation, SearchData

MEMBERS = 3
COST_FACTOR = 1.3  # the members' own fit times, and the averaging's overhead


def members(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best complete trial of each algorithm, best first, at most ``MEMBERS``."""
    chosen: dict[str, dict[str, Any]] = {}
    for trial in sorted(trials, key=lambda t: t["score"], reverse=True):
        algorithm = trial["params"]["algorithm"]
        if trial["complete"] and algorithm != "ensemble" and algorithm not in chosen:
            chosen[algorithm] = trial
    return list(chosen.values())[:MEMBERS]


def expected_s(chosen: list[dict[str, Any]]) -> float:
    return COST_FACTOR * sum(t["fit_s"] for t in chosen)


def ensemble_trial(data: SearchData, trials: list[dict[str, Any]], seconds: float) -> dict[str, Any] | None:
    """The ensemble of the best trials of different algorithms, as a trial; None when fewer than two
    algorithms completed, or when its evaluation is not expected to end within ``seconds``."""
    chosen = members(trials)
    if len(chosen) < 2 or expected_s(chosen) > seconds:
        return None
    evaluation = Evaluation(replace(data, deadline=time.time() + seconds),
                            {"algorithm": "ensemble", "members": [t["params"] for t in chosen]})
    while not evaluation.done and evaluation.can_step(time.time()):
        evaluation.step()
    return evaluation.trial("ensemble", RUNNER_NODE) if evaluation.done else None
