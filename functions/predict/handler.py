"""predict: POST /predict/{model} -> predictions of any registry model. Lambda via Mangum (lambda_handler); any ASGI server via `app`."""

from nimbus.api.common import lambda_handler, start
from nimbus.api.predict import create_predict_app

app = start(create_predict_app)  # refuses, in one line, to serve off the local stack on local keys
handler = lambda_handler(app)  # writes buffered counts before returning
