"""events: POST /events -> real-time features in Redis. Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.events import create_events_app

app = create_events_app()
handler = Mangum(app, lifespan="off")
