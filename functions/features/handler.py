"""features: on a schedule, recompute batch features from the logs in S3 and swap them in."""

from nimbus.buffers import flushed
from nimbus.config import get_settings
from nimbus.errors import InvalidInput
from nimbus.events import ScheduledTrigger, parse
from nimbus.recommend.pipeline import refresh_features


@flushed  # anything buffered (traffic, samples) is written before the handler returns
def handler(event, context):
    trigger = parse(event)
    if not isinstance(trigger, ScheduledTrigger):
        raise InvalidInput(f"features runs on a schedule; got {type(trigger).__name__}")
    return {"rule": trigger.rule, **refresh_features(get_settings())}
