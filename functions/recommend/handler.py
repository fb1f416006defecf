"""recommend: GET /recommendations/{user_id} -> top-k items. Lambda via Mangum; any ASGI server via `app`."""

from mangum import Mangum

from nimbus.api.recommend import create_recommend_app

app = create_recommend_app()
handler = Mangum(app, lifespan="off")
