"""events: POST /events -> real-time features in Redis. Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.common import start
from nimbus.api.events import create_events_app

app = start(create_events_app)  # refuses, in one line, to serve off the local stack on local keys
handler = Mangum(app, lifespan="off")
