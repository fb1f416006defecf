"""The job budget on a fake clock: the plan, the reserves, and when a step or the search must stop."""

from __future__ import annotations

import pytest

from nimbus.automl.budget import AFTER_EXTRAS_S, RAY_START_S, SEARCH_MIN_S, JobBudget, next_step_s, step_fits


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_reserves_are_shares_of_the_budget_with_a_floor() -> None:
    clock = FakeClock()
    long = JobBudget(100, clock)
    assert (long.after_search_s, long.after_refit_s) == (30, 20)
    short = JobBudget(15, clock)
    assert (short.after_search_s, short.after_refit_s) == (6, 6)  # 30% and 20% of 15 s are under the floor


def test_the_search_gets_what_is_left_after_its_reserve() -> None:
    clock = FakeClock()
    budget = JobBudget(60, clock)
    assert budget.search_s() == 60 - 18
    clock.advance(4)  # setup: reading and sampling the data, starting Ray
    assert budget.elapsed() == 4 and budget.remaining() == 56
    assert budget.search_s() == 56 - 18
    clock.advance(50)  # setup overran: nothing is left for a search (the first results are the job's)
    assert budget.search_s() == 0 and not budget.worth_searching(ray_up=True)


def test_a_distributed_search_runs_only_when_the_time_left_is_worth_it() -> None:
    clock = FakeClock()
    short = JobBudget(15, clock)
    assert short.search_s() == 9 and short.worth_searching(ray_up=False)
    clock.advance(2)  # a CLI's start-up: 7 s left before the reserve, not enough to start Ray and search
    assert short.search_s() == 7 < SEARCH_MIN_S + RAY_START_S
    assert not short.worth_searching(ray_up=False) and short.worth_searching(ray_up=True)
    assert JobBudget(30, clock).worth_searching(ray_up=False)
    late = JobBudget(30, clock, started=clock())
    clock.advance(30 - 9 - SEARCH_MIN_S + 0.1)  # Ray came up late: under the minimum left
    assert not late.worth_searching(ray_up=True)


def test_a_runner_that_shuts_its_ray_down_keeps_time_for_it_and_the_budget_counts_from_its_start() -> None:
    clock = FakeClock()
    budget = JobBudget(60, clock, started=997.0, teardown_s=2.0)  # the process started 3 s ago
    assert budget.deadline == 997 + 60 - 2 and budget.elapsed() == 3
    assert budget.search_s() == 60 - 2 - 3 - 18


def test_the_refit_ends_before_the_refit_reserve_and_the_extras_before_theirs() -> None:
    clock = FakeClock()
    budget = JobBudget(30, clock)
    assert budget.deadline == 1030 and budget.refit_deadline == 1030 - 6
    clock.advance(20)
    assert budget.refit_s() == 4 and budget.extras_s() == 10 - AFTER_EXTRAS_S
    clock.advance(8)
    assert budget.refit_s() < 0 and budget.extras_s() == pytest.approx(-1)  # late: refit and extras get nothing


def test_can_finish_tells_when_the_search_must_stop_for_the_logging_backlog() -> None:
    clock = FakeClock()
    budget = JobBudget(60, clock)
    search_deadline = clock() + budget.search_s()
    assert budget.can_finish(2.0, search_deadline)
    clock.advance(budget.search_s() - 2.5)
    assert budget.can_finish(2.0, search_deadline) and not budget.can_finish(3.0, search_deadline)
    clock.advance(0.5)
    assert not budget.can_finish(2.0, search_deadline)  # ending exactly at the deadline is too late


def test_a_trial_step_is_started_only_when_it_can_finish() -> None:
    # 1 s for 1000 rows so far: 2000 rows are expected to take 1.5 * 2 s (fits grow faster than rows)
    assert next_step_s(1.0, 1000, 2000) == pytest.approx(3.0)
    assert step_fits(now=100.0, fit_s=1.0, rows_done=1000, rows=2000, deadline=103.0)
    assert not step_fits(now=100.5, fit_s=1.0, rows_done=1000, rows=2000, deadline=103.0)


def test_the_search_sample_grows_with_the_budget_within_bounds() -> None:
    clock = FakeClock()
    assert JobBudget(10, clock).search_rows() == 5_000
    assert JobBudget(60, clock).search_rows() == 15_000
    assert JobBudget(6 * 3600, clock).search_rows() == 200_000


def test_the_plan_is_recorded_as_numbers() -> None:
    plan = JobBudget(30, FakeClock()).as_dict()
    assert plan == {"total_s": 30, "after_search_s": 9, "after_refit_s": 6, "after_extras_s": AFTER_EXTRAS_S,
                    "teardown_s": 0.0, "search_rows": 7_500}
