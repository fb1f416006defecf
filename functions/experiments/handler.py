"""experiments: admin HTTP API for A/B tests (API key required); on its schedule, the
rollup of exposure/outcome logs and performance buckets into MongoDB."""

from nimbus.api.common import lambda_handler, start
from nimbus.api.experiments import create_experiments_app
from nimbus.buffers import flushed
from nimbus.config import get_settings
from nimbus.events import ScheduledTrigger, parse
from nimbus.experiments.service import persist

app = start(create_experiments_app)  # refuses, in one line, to serve off the local stack on local keys
http = lambda_handler(app)


@flushed  # the schedule path too (its own flush finds nothing after the HTTP path's)
def handler(event, context):
    if isinstance(parse(event), ScheduledTrigger):
        return persist(get_settings())
    return http(event, context)
