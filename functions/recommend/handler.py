"""recommend: GET /recommendations/{user_id} -> top-k items. Lambda via Mangum (lambda_handler); any ASGI server via `app`."""

from nimbus.api.common import lambda_handler, start
from nimbus.api.recommend import create_recommend_app

app = start(create_recommend_app)  # refuses, in one line, to serve off the local stack on local keys
handler = lambda_handler(app)  # writes buffered counts before returning
