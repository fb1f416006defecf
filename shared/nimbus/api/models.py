"""The ``models`` function's app (admin): list, promote and roll back registry models; read the audit trail.

Reading needs a key with the ``read`` scope, changing one with ``admin`` (see nimbus.api.auth)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field

from nimbus.api.auth import AUTH_ERRORS, AdminKey, ReadKey
from nimbus.api.common import SettingsDep, create_app
from nimbus.config import Settings


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
    from nimbus.serving import hooks as _serving  # noqa: F401 - registers its hook: predict processes hear moves

    app = create_app("Nimbus models", "The model registry: list, promote, roll back (admin, audited).",
                     function="models", settings=settings)
    router = APIRouter(prefix="/models", tags=["models"], responses=AUTH_ERRORS)

    @router.get("", response_model=list[ModelPublic])
    def list_models(settings: SettingsDep, _: ReadKey) -> list[dict[str, Any]]:
        """Registered models with their versions and aliases."""
        return governance.list_models(settings)

    @router.post("/{name}/promote", response_model=AuditPublic)
    def promote(name: str, body: PromoteRequest, settings: SettingsDep, caller: AdminKey) -> dict[str, Any]:
        """Point an alias at a version."""
        return governance.promote(settings, name, body.version, body.alias, body.reason, who=caller.actor)

    @router.post("/{name}/rollback", response_model=AuditPublic)
    def rollback(name: str, body: RollbackRequest, settings: SettingsDep, caller: AdminKey) -> dict[str, Any]:
        """Return an alias to the version before its last promotion."""
        return governance.rollback(settings, name, body.alias, who=caller.actor)

    @router.get("/audit", response_model=list[AuditPublic])
    def audit_trail(settings: SettingsDep, _: ReadKey, subject: str | None = None,
                    limit: Annotated[int, Field(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        """The audit trail, newest first."""
        return audit.history(settings, subject, limit=limit)

    app.include_router(router)
    return app
