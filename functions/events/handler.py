"""events: POST /events -> real-time features in Redis. Lambda via Mangum (lambda_handler); any ASGI server via `app`."""

from nimbus.api.common import lambda_handler, start
from nimbus.api.events import create_events_app

app = start(create_events_app)  # refuses, in one line, to serve off the local stack on local keys
handler = lambda_handler(app)  # writes buffered counts before returning
