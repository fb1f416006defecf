"""health: GET /health -> which stores are up. Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.common import start
from nimbus.api.health import create_health_app

app = start(create_health_app)  # refuses, in one line, to serve off the local stack on local keys
handler = Mangum(app, lifespan="off")
