"""dashboard: GET /dashboard (the monitoring page), /dashboard/data (its JSON), /dashboard/static/* (Chart.js
and the page's script, shipped in the package). Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.common import start
from nimbus.api.dashboard import create_dashboard_app

app = start(create_dashboard_app)  # refuses, in one line, to serve off the local stack on local keys
handler = Mangum(app, lifespan="off")
