"""recommend: GET /recommendations/{user_id} -> top-k items. Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.common import start
from nimbus.api.recommend import create_recommend_app

app = start(create_recommend_app)  # refuses, in one line, to serve off the local stack on local keys
handler = Mangum(app, lifespan="off")
