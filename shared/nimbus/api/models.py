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


class RolloutRequest(BaseModel):
    version: str = Field(pattern=r"^\d+$", examples=["4"], description="The candidate version.")
    canary: str = Field(default="10%", pattern=r"^\d{1,2}(\.\d+)?%?$", examples=["10%"],
                        description="The candidate's first share of the champion's traffic (1-99 %).")
    shadow: bool = Field(default=False, description="Shadow: the candidate scores its share, the champion answers.")
    steps: list[float] | None = Field(default=None, examples=[[10, 50, 100]], max_length=10,
                                      description="Shares to step through (default NIMBUS_ROLLOUT_STEPS).")
    reason: str | None = Field(default=None, max_length=500, examples=["AutoML job 7's winner"])


class CancelRequest(BaseModel):
    reason: str | None = Field(default=None, max_length=500)


class Guardrail(BaseModel):
    name: str = Field(examples=["error_rate"])
    status: str = Field(examples=["pass"], description="pass | fail | pending | skipped")
    value: float | None = None
    limit: float | None = None
    detail: str = Field(examples=["candidate 0/212 errors (0.00%), champion 1/1890 (0.05%); allowed +1.00%"])


class RolloutPublic(BaseModel):
    id: str = Field(examples=["ro-20261207T201500-a1b2c3"])
    model: str = Field(examples=["churn-automl"])
    candidate: str = Field(examples=["4"])
    champion: str = Field(examples=["3"])
    mode: str = Field(examples=["canary"], description="canary | shadow")
    steps: list[float] = Field(examples=[[10, 50, 100]])
    step: int
    share: float = Field(examples=[10], description="The candidate's share now (%): 100 once completed.")
    state: str = Field(examples=["running"], description="running | completed | rolled_back | cancelled")
    started_at: Any
    updated_at: Any
    step_started_at: Any
    ended_at: Any = None
    by: str
    reason: str | None = None
    guardrails: list[Guardrail] = []
    counts: dict[str, Any] | None = Field(default=None, description="This step's requests, errors and latency "
                                                                   "per role (canary, champion).")
    history: list[dict[str, Any]] = []


class Decision(BaseModel):
    model: str
    rollout: str
    action: str = Field(description="hold | step | complete | rollback | cancel")
    reason: str
    state: str
    share: float
    guardrails: list[Guardrail] = []


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

    @router.post("/{name}/rollouts", response_model=RolloutPublic, status_code=201,
                 responses={404: {"description": "No such model or version, or no champion."},
                            409: {"description": "A rollout is running, or the version is the champion."}})
    def start_rollout(name: str, body: RolloutRequest, settings: SettingsDep, caller: AdminKey) -> dict[str, Any]:
        """Roll a version out against the champion: its share of traffic steps up, or it is rolled back, by the
        guardrails' judgement (each step audited)."""
        from nimbus.serving import rollout

        return rollout.start(settings, name, body.version, body.canary, shadow=body.shadow, steps=body.steps,
                             reason=body.reason, who=caller.actor)

    @router.get("/{name}/rollout", response_model=RolloutPublic, responses={404: {"description": "No rollout yet."}})
    def rollout_status(name: str, settings: SettingsDep, _: ReadKey) -> dict[str, Any]:
        """The model's running (else latest) rollout: share, guardrails, this step's counts, its steps."""
        from nimbus.errors import NotFound
        from nimbus.serving import rollout

        doc = rollout.status(settings, name)
        if doc is None:
            raise NotFound(f"{name} has had no rollout")
        return doc

    @router.post("/{name}/rollout/cancel", response_model=RolloutPublic)
    def cancel_rollout(name: str, body: CancelRequest, settings: SettingsDep, caller: AdminKey) -> dict[str, Any]:
        """Stop the running rollout: all traffic back to the champion (audited)."""
        from nimbus.serving import rollout

        return rollout.cancel(settings, name, body.reason, who=caller.actor)

    @router.post("/rollouts/judge", response_model=list[Decision])
    def judge_rollouts(settings: SettingsDep, caller: AdminKey, model: str | None = None) -> list[dict[str, Any]]:
        """Judge running rollouts now (the monitor function does on its schedule)."""
        from nimbus.serving import rollout

        return rollout.judge(settings, model, who=caller.actor)

    @router.get("/rollouts", response_model=list[RolloutPublic])
    def rollouts(settings: SettingsDep, _: ReadKey, model: str | None = None,
                 limit: Annotated[int, Field(ge=1, le=200)] = 20) -> list[dict[str, Any]]:
        """Rollouts, newest first."""
        from nimbus.serving import rollout

        return rollout.history(settings, model, limit)

    @router.get("/audit", response_model=list[AuditPublic])
    def audit_trail(settings: SettingsDep, _: ReadKey, subject: str | None = None,
                    limit: Annotated[int, Field(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        """The audit trail, newest first."""
        return audit.history(settings, subject, limit=limit)

    app.include_router(router)
    return app
