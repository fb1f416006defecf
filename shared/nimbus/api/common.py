"""What every Nimbus HTTP app shares: settings as a dependency and errors as clear answers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from nimbus import __version__
from nimbus.config import Settings, get_settings
from nimbus.errors import ConfigError, EventError, NimbusError, StoreUnavailable

SettingsDep = Annotated[Settings, Depends(get_settings)]


def create_app(title: str, description: str) -> FastAPI:
    """A FastAPI app whose Nimbus errors become JSON answers, never a stack trace."""
    app = FastAPI(title=title, description=description, version=__version__)

    @app.exception_handler(NimbusError)
    async def nimbus_error(request: Request, exc: NimbusError) -> JSONResponse:
        status = 503 if isinstance(exc, StoreUnavailable) else 400 if isinstance(exc, EventError) else 500
        if isinstance(exc, ConfigError):
            status = 500
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return app
