"""A Spark job's progress while it runs: ``map_items`` reports the units of the tasks done so far (an
accumulator and the status tracker on local Spark; streamed results and the server's progress reports on
Spark Connect), and a batch run passes its records scored so far to ``on_progress`` and to a log line.

No timing is asserted. To know that a report came *while* the job ran (not only at its end), every item
but the first waits until the driver's callback has seen the first one done: a barrier on a file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nimbus.batch.examples import make_records
from nimbus.batch.io import FsConfig, write_parquet
from nimbus.batch.job import RunRequest, run_batch
from nimbus.batch.spark import TaskProgress, map_items, spark_session
from nimbus.config import Settings
from tests.spark_connect import ConnectServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ITEMS = [5, 7, 11, 13, 17]  # units of each item: the job's total is their sum


def gated_work(marker: Path, wait_s: float = 120):
    """Item 0 is done at once; the others wait for ``marker`` (written by the driver's callback once it has
    seen item 0 done), so at least one report is made before the job ends. ``wait_s`` only keeps a broken
    callback from hanging the test: the items then go on, and the assertion on the reports fails."""
    def work(items: list[int]) -> list[dict[str, int]]:
        import time

        if items != [ITEMS[0]]:
            deadline = time.monotonic() + wait_s
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return [{"units": n} for n in items]

    return work


def run_gated(spark, tmp_path: Path) -> tuple[list[dict], list[TaskProgress]]:
    marker = tmp_path / "first-item-seen"
    seen: list[TaskProgress] = []

    def on_progress(p: TaskProgress) -> None:
        seen.append(p)
        if p.done >= ITEMS[0]:
            marker.touch()

    results = map_items(spark, ITEMS, gated_work(marker), size=lambda r: r["units"], total=sum(ITEMS),
                        on_progress=on_progress, poll_s=0.05)
    return results, seen


def assert_reported_while_running(seen: list[TaskProgress]) -> None:
    assert seen, "no progress reported"
    done = [p.done for p in seen]
    assert done == sorted(done), done  # never goes back
    assert seen[-1] == TaskProgress(sum(ITEMS), sum(ITEMS), len(ITEMS), len(ITEMS))
    during = [p for p in seen if p.done < sum(ITEMS)]
    assert during and all(p.tasks == len(ITEMS) and p.total == sum(ITEMS) for p in during), seen
    assert all(0 <= p.tasks_done <= p.tasks for p in seen)
    assert seen[-1].describe() == f"scored {sum(ITEMS)} of {sum(ITEMS)} records ({len(ITEMS)}/{len(ITEMS)} tasks)"


def test_map_items_reports_the_units_of_finished_tasks_while_a_local_job_runs(tmp_path: Path) -> None:
    spark = spark_session(Settings(_env_file=None, home=tmp_path / "home", spark_master="local[2]"))
    results, seen = run_gated(spark, tmp_path)
    assert results == [{"units": n} for n in ITEMS]  # in order, as without progress
    assert_reported_while_running(seen)


def test_map_items_reports_progress_through_spark_connect(tmp_path: Path, spark_connect: ConnectServer) -> None:
    from pyspark.sql.connect.session import SparkSession as ConnectSession  # beside this process's local one

    spark = ConnectSession.builder.remote(spark_connect.url).getOrCreate()
    try:
        results, seen = run_gated(spark, tmp_path)
    finally:
        spark.stop()
    assert results == [{"units": n} for n in ITEMS]
    assert_reported_while_running(seen)


def test_a_batch_run_reports_records_scored_so_far_ending_at_the_total(batch_stack: Settings,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    settings = batch_stack
    folder = f"s3://{settings.data_bucket}/{settings.drop_prefix}progress/"
    sizes = [700, 900, 1100, 1300]
    fs = FsConfig.from_settings(settings)
    for i, rows in enumerate(sizes):  # four files: four splits, four tasks; record ids unique across them
        write_parquet(fs, make_records(rows, seed=60 + i, start=sum(sizes[:i]))[0], f"{folder}part-{i}.parquet")
    seen: list[TaskProgress] = []
    caplog.set_level(logging.INFO, logger="nimbus.jobs")
    result = run_batch(settings, RunRequest(folder, "churn-lr"), on_progress=seen.append)
    assert result.status == "succeeded" and result.records == sum(sizes)
    done = [p.done for p in seen]
    assert done == sorted(done) and seen[-1] == TaskProgress(sum(sizes), sum(sizes), len(sizes), len(sizes))
    assert all(p.total == sum(sizes) and p.tasks == len(sizes) for p in seen)
    lines = [r for r in caplog.records if r.getMessage() == "job step progress"]
    assert lines and lines[-1].run_key == result.run_key and lines[-1].step == "score"
    assert (lines[-1].records, lines[-1].records_total, lines[-1].tasks_done) == (sum(sizes), sum(sizes), len(sizes))
