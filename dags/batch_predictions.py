"""Batch predictions, orchestrated: wait for a file in the drop folder, then prepare,
validate, score, write, finish (mark succeeded), report and audit it — each task one call into nimbus.

Runs on any Airflow 3 with the nimbus package installed; the stores come from NIMBUS_*
settings like everywhere else. Transient failures (a store restarting) are retried.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import PokeReturnValue, dag, task

RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=20)}


@dag(schedule=timedelta(hours=1), start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
     default_args=RETRIES, tags=["nimbus", "batch"])
def batch_predictions():
    @task.sensor(poke_interval=30, timeout=3600, mode="reschedule")
    def wait_for_file() -> PokeReturnValue:
        """The oldest file in the drop folder that no run has scored yet."""
        from nimbus.batch.trigger import pending_files
        from nimbus.config import get_settings

        pending = pending_files(get_settings())
        return PokeReturnValue(is_done=bool(pending), xcom_value=pending[0] if pending else None)

    @task
    def prepare(uri: str) -> str:
        from nimbus.batch.job import BatchJob, RunRequest
        from nimbus.config import get_settings

        settings = get_settings()
        key, _ = BatchJob(settings, RunRequest.from_settings(settings, uri, actor="airflow")).prepare()
        return key

    def step(name: str):
        @task(task_id=name)
        def run_step(key: str) -> str:
            from nimbus.batch.job import BatchJob
            from nimbus.config import get_settings

            job = BatchJob.resume(get_settings(), key)
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
            return key

        return run_step

    key = prepare(wait_for_file())
    for name in ("validate", "score", "write", "finish", "report", "audit"):
        key = step(name)(key)


batch_predictions()
