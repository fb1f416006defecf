"""monitor: on a schedule, check the live recommender and every served registry model for drift, judge the
running canary rollouts, then evaluate and deliver every alert."""

from nimbus import alerts
from nimbus.buffers import flushed
from nimbus.config import get_settings
from nimbus.errors import InvalidInput
from nimbus.events import ScheduledTrigger, parse
from nimbus.monitoring.drift import run_checks
from nimbus.recommend.bundle import MODEL_NAME
from nimbus.serving import hooks as _hooks  # noqa: F401 - registers the hook: predict processes hear moves
from nimbus.serving.rollout import judge


@flushed  # anything buffered (traffic, samples) is written before the handler returns
def handler(event, context):
    trigger = parse(event)
    if not isinstance(trigger, ScheduledTrigger):
        raise InvalidInput(f"monitor runs on a schedule; got {type(trigger).__name__}")
    settings = get_settings()
    checks = run_checks(settings, [MODEL_NAME])  # the live recommender's versions and every sampled model's
    rollouts = [{k: d[k] for k in ("model", "rollout", "action", "share", "reason")}
                for d in judge(settings, who="monitor")]  # each running rollout stepped up, held or rolled back
    return {"rule": trigger.rule, "rollouts": rollouts, "alerts": alerts.evaluate(settings, drift_checks=checks),
            "checks": [
        {"model": c["model"], "model_version": c["model_version"], "status": c["status"], "samples": c["samples"],
         "drifted": c["drifted"], "drifted_features": [f["name"] for f in c["features"] if f["drifted"]]}
        for c in checks]}
