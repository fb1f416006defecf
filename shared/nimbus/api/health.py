"""The ``health`` function's app: GET /health answers which stores are up."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Response, status

from nimbus.api.auth import OptionalCaller
from nimbus.api.common import SettingsDep, create_app
from nimbus.health import HealthReport, check_stores

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "At least one store is down."}},
)
def health(settings: SettingsDep, response: Response, caller: OptionalCaller) -> HealthReport:
    """Which stores are up (Redis, MongoDB, S3, MLflow), with latency. Public; a caller with a ``read``
    key also sees each store's address (passwords hidden), why it is down, and its version."""
    report = check_stores(settings)
    if report.status != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return report if caller is not None and caller.allows("read") else report.public()


def create_health_app() -> FastAPI:
    app = create_app("Nimbus health", "Which of Nimbus's stores are up.", function="health")
    app.include_router(router)
    return app
