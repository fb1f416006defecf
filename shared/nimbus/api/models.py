"""The ``models`` function's app (admin): list, promote and roll back registry models; read the audit trail.

Every route needs an API key (header ``X-API-Key``, one of NIMBUS_API_KEYS)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

from nimbus.api.common import SettingsDep, create_app
from nimbus.config import Settings


def require_key(settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None) -> str:
    if not x_api_key or not any(hmac.compare_digest(x_api_key, k.get_secret_value()) for k in settings.api_keys):
        raise HTTPException(401, "a valid X-API-Key header is required")
    return f"api-key:{x_api_key[:4]}…"


ApiKeyDep = Annotated[str, Depends(require_key)]


class PromoteRequest(BaseModel):
    version: str = Field(pattern=r"^\d+$", examples=["3"])
    alias: str = Field(default="champion", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    reason: str | None = Field(default=None, max_length=500, examples=["better AUC on last week's labels"])


class RollbackRequest(BaseModel):
    alias: str = Field(default="champion", pattern=r"^[A-Za-z0-9_-]{1,64}$")


class ModelPublic(BaseModel):
    name: str
    aliases: dict[str, str]
    versions: list[int]


class AuditPublic(BaseModel):
    at: Any
    actor: str
    action: str
    subject: str
    outcome: str
    models: dict[str, str] = {}
    details: dict[str, Any] = {}


def create_models_app(settings: Settings | None = None) -> FastAPI:
    from nimbus import audit, governance
    from nimbus.recommend import models as _recommender  # noqa: F401 - registers its hook: promoted = published

    app = create_app("Nimbus models", "The model registry: list, promote, roll back (admin, audited).",
                     function="models", settings=settings)
    router = APIRouter(prefix="/models", tags=["models"])

    @router.get("", response_model=list[ModelPublic])
    def list_models(settings: SettingsDep, _: ApiKeyDep) -> list[dict[str, Any]]:
        """Registered models with their versions and aliases."""
        return governance.list_models(settings)

    @router.post("/{name}/promote", response_model=AuditPublic)
    def promote(name: str, body: PromoteRequest, settings: SettingsDep, who: ApiKeyDep) -> dict[str, Any]:
        """Point an alias at a version."""
        return governance.promote(settings, name, body.version, body.alias, body.reason, who=who)

    @router.post("/{name}/rollback", response_model=AuditPublic)
    def rollback(name: str, body: RollbackRequest, settings: SettingsDep, who: ApiKeyDep) -> dict[str, Any]:
        """Return an alias to the version before its last promotion."""
        return governance.rollback(settings, name, body.alias, who=who)

    @router.get("/audit", response_model=list[AuditPublic])
    def audit_trail(settings: SettingsDep, _: ApiKeyDep, subject: str | None = None,
                    limit: Annotated[int, Field(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        """The audit trail, newest first."""
        return audit.history(settings, subject, limit=limit)

    app.include_router(router)
    return app
