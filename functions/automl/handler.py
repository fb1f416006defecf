"""automl: submit / follow / compare AutoML jobs. Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.automl import create_automl_app

app = create_automl_app()
handler = Mangum(app, lifespan="off")
