"""Hourly refresh of the recommendation features: logs in S3 -> a new Redis version, swapped in."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task


@dag(schedule=timedelta(hours=1), start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
     default_args={"retries": 2, "retry_delay": timedelta(seconds=30)}, tags=["nimbus", "recommend"])
def feature_refresh():
    @task
    def refresh() -> dict:
        from nimbus.config import get_settings
        from nimbus.recommend.pipeline import refresh_features

        return refresh_features(get_settings())

    refresh()


feature_refresh()
