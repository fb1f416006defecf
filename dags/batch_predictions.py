"""Batch predictions, orchestrated: list every file in the drop folder that no run has scored yet, then one
mapped run of the chain per file — prepare, validate, score, write, finish (mark succeeded), report, audit —
each task one call into nimbus.

When: on the hour (a sweep for stragglers), and, with ``NIMBUS_AIRFLOW_QUEUE_URL`` set, as soon as a file lands:
the drop folder notifies its own SQS queue (``nimbus-airflow-drops``, not the one the local gateway consumes) and
an asset watcher (``MessageQueueTrigger``, run by the triggerer) turns each message into an asset event that
starts a run. A run scores whatever is pending then, so a burst of files is one run with one mapped chain each.

Idempotent by run key (the input's paths and ETags): a file already scored is not listed, ``prepare`` skips the
chain of one that succeeded meanwhile, and a retried task rewrites the same Parquet and MongoDB ``_id``s.
Transient failures (a store restarting) are retried; an input nimbus refuses (its columns, its size) is not.

Runs on any Airflow 3 with the nimbus package and the amazon + common-messaging providers installed; the stores
come from NIMBUS_* settings like everywhere else, the queue's credentials and endpoint from Airflow's
``aws_default`` connection.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable, dag, task, task_group

from nimbus.config import get_settings

RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=20)}
STEPS = ("validate", "score", "write", "finish", "report", "audit")
HOURLY = CronTriggerTimetable("0 * * * *", timezone="UTC")


def drop_folder_asset(queue_url: str) -> Asset:
    """The drop folder as an asset, watched through its Airflow queue: each message is an asset event."""
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    trigger = MessageQueueTrigger(scheme="sqs", sqs_queue=queue_url, aws_conn_id="aws_default", max_messages=10,
                                  wait_time_seconds=10, waiter_delay=5)
    return Asset("nimbus-drop-folder", watchers=[AssetWatcher(name="nimbus_airflow_drops", trigger=trigger)])


QUEUE_URL = get_settings().airflow_queue_url
DROPS = drop_folder_asset(QUEUE_URL) if QUEUE_URL else None


@dag(schedule=AssetOrTimeSchedule(timetable=HOURLY, assets=DROPS) if DROPS else HOURLY,
     start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,  # one run lists and scores all pending
     default_args=RETRIES, tags=["nimbus", "batch"])
def batch_predictions():
    @task
    def pending() -> list[str]:
        """Every file in the drop folder that no run has scored yet, oldest key first."""
        from nimbus.batch.trigger import pending_files

        return pending_files(get_settings())

    @task
    def prepare(uri: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from nimbus.batch.io import UnsafeKey
        from nimbus.batch.job import BatchJob, RunRequest

        settings = get_settings()
        try:
            key, done = BatchJob(settings, RunRequest.from_settings(settings, uri, actor="airflow")).prepare()
        except UnsafeKey as exc:  # refused, not retried: the key is what it is
            raise AirflowFailException(str(exc)) from exc
        if done is not None:  # scored meanwhile (another run, the gateway): the chain of this file is skipped
            raise AirflowSkipException(f"{uri} already scored by run {key}")
        return key

    def step(name: str):
        @task(task_id=name)
        def run_step(key: str) -> str:
            from airflow.sdk.exceptions import AirflowFailException

            from nimbus.batch.job import BatchFailed, BatchJob

            job = BatchJob.resume(get_settings(), key)
            try:
                if name == "validate":
                    job.validate(key)
                elif name == "score":
                    job.score(key)
                elif name == "write":
                    job.write(key)
                elif name == "finish":
                    job.finish(key, {})  # each task's duration is in Airflow's own records
                elif name == "report":
                    job.report(key)
                else:
                    job.audit_run(key)
            except BatchFailed as exc:  # refused input (reported and audited): a retry would refuse it again
                raise AirflowFailException(str(exc)) from exc
            return key

        return run_step

    @task_group
    def score_file(uri: str) -> None:
        """One file's chain; mapped, so map index i of each step waits for index i of the step before only."""
        key = prepare(uri)
        for name in STEPS:
            key = step(name)(key)

    score_file.expand(uri=pending())


batch_predictions()
