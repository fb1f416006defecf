"""health: GET /health -> which stores are up. Lambda via Mangum (lambda_handler); any ASGI server via `app`."""

from nimbus.api.common import lambda_handler, start
from nimbus.api.health import create_health_app

app = start(create_health_app)  # refuses, in one line, to serve off the local stack on local keys
handler = lambda_handler(app)  # writes buffered counts before returning
