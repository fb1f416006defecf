"""health: GET /health -> which stores are up. Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.health import create_health_app

app = create_health_app()
handler = Mangum(app, lifespan="off")
