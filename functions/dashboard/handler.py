"""dashboard: GET /dashboard (the monitoring page), /dashboard/data (its JSON), /dashboard/static/* (Chart.js
and the page's script, shipped in the package). Lambda via Mangum (lambda_handler); any ASGI server via `app`."""

from nimbus.api.common import lambda_handler, start
from nimbus.api.dashboard import create_dashboard_app

app = start(create_dashboard_app)  # refuses, in one line, to serve off the local stack on local keys
handler = lambda_handler(app)  # writes buffered counts before returning
