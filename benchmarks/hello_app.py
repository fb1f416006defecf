"""The baseline for the load benchmark: a FastAPI hello-world, served the same way."""

from fastapi import FastAPI, Response

app = FastAPI()


@app.get("/hello")
async def hello() -> Response:
    return Response(b'{"hello":"world"}', media_type="application/json")
