"""models: admin HTTP API over the registry (API key required). Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.models import create_models_app

app = create_models_app()
handler = Mangum(app, lifespan="off")
