"""automl: submit / follow / list / cancel / compare AutoML jobs (HTTP), and on a schedule the sweep that
requeues jobs whose runner died (and resubmits them to the Ray cluster). Lambda via Mangum
(lambda_handler); any ASGI server via `app`."""

from nimbus.api.automl import create_automl_app
from nimbus.api.common import lambda_handler, start
from nimbus.automl.cluster import sweep
from nimbus.buffers import flushed
from nimbus.config import get_settings
from nimbus.errors import InvalidInput
from nimbus.events import ScheduledTrigger, infer_source, parse

app = start(create_automl_app)  # refuses, in one line, to serve off the local stack on local keys
http = lambda_handler(app)  # writes buffered counts before returning


@flushed  # the schedule path too (its own flush finds nothing after the HTTP path's)
def handler(event, context):
    if infer_source(event) in (None, "ApiGatewayV2"):
        return http(event, context)
    trigger = parse(event)
    if not isinstance(trigger, ScheduledTrigger):
        raise InvalidInput(f"automl takes HTTP requests and its schedule; got {type(trigger).__name__}")
    return {"rule": trigger.rule, **sweep(get_settings())}
