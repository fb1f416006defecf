"""dashboard: GET /dashboard (the monitoring page), /dashboard/data (its JSON), /dashboard/static/* (Chart.js
and the page's script, shipped in the package). Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.dashboard import create_dashboard_app

app = create_dashboard_app()
handler = Mangum(app, lifespan="off")
