"""automl: submit / follow / compare AutoML jobs. Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.automl import create_automl_app
from nimbus.api.common import start

app = start(create_automl_app)  # refuses, in one line, to serve off the local stack on local keys
handler = Mangum(app, lifespan="off")
