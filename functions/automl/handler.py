"""automl: submit / follow / compare AutoML jobs. Lambda via Mangum (lambda_handler); any ASGI server via `app`."""

from nimbus.api.automl import create_automl_app
from nimbus.api.common import lambda_handler, start

app = start(create_automl_app)  # refuses, in one line, to serve off the local stack on local keys
handler = lambda_handler(app)  # writes buffered counts before returning
