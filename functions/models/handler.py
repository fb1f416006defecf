"""models: admin HTTP API over the registry (API key required). Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.common import start
from nimbus.api.models import create_models_app

app = start(create_models_app)  # refuses, in one line, to serve off the local stack on local keys
handler = Mangum(app, lifespan="off")
