"""monitor: on a schedule, check the live recommender and every served registry model for drift, then evaluate and deliver every alert."""

from nimbus import alerts
from nimbus.buffers import flushed
from nimbus.config import get_settings
from nimbus.errors import InvalidInput
from nimbus.events import ScheduledTrigger, parse
from nimbus.monitoring.drift import run_checks
from nimbus.recommend.bundle import MODEL_NAME


@flushed  # anything buffered (traffic, samples) is written before the handler returns
def handler(event, context):
    trigger = parse(event)
    if not isinstance(trigger, ScheduledTrigger):
        raise InvalidInput(f"monitor runs on a schedule; got {type(trigger).__name__}")
    settings = get_settings()
    checks = run_checks(settings, [MODEL_NAME])  # the live recommender's versions and every sampled model's
    return {"rule": trigger.rule, "alerts": alerts.evaluate(settings, drift_checks=checks), "checks": [
        {"model": c["model"], "model_version": c["model_version"], "status": c["status"], "samples": c["samples"],
         "drifted": c["drifted"], "drifted_features": [f["name"] for f in c["features"] if f["drifted"]]}
        for c in checks]}
