"""The ``experiments`` function's app (admin): create, start, stop, list A/B experiments,
read their results, and recommendation performance.

Reading needs a key with the ``read`` scope, changing an experiment ``admin`` (see nimbus.api.auth)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query
from pydantic import BaseModel, Field

from nimbus.api.auth import AUTH_ERRORS, AdminKey, ReadKey
from nimbus.api.common import SettingsDep, create_app
from nimbus.config import Settings
from nimbus.experiments.service import ExperimentSpec

EXPERIMENT_ID = Annotated[str, Field(examples=["exp-3f2a9c1b7d"])]


class VariantPublic(BaseModel):
    name: str = Field(examples=["treatment"])
    model: str = Field(examples=["challenger"])
    weight: float = Field(examples=[0.5])
    version: str | None = Field(examples=["4"], description="Registry version it resolved to at start.")


class ExperimentPublic(BaseModel):
    id: str = Field(examples=["exp-3f2a9c1b7d"])
    name: str = Field(examples=["ranker-v4-vs-v3"])
    surface: str = Field(examples=["recommendations"])
    status: Literal["draft", "running", "stopped"]
    variants: list[VariantPublic]
    seed: str
    metric: Literal["ctr", "conversion"]
    description: str | None = None
    created_at: str | None
    started_at: str | None
    stopped_at: str | None


class MetricPublic(BaseModel):
    rate: float = Field(examples=[0.112])
    ci95: list[float] = Field(examples=[[0.101, 0.124]], description="95% Wilson score interval.")
    lift: float | None = Field(examples=[0.18], description="Relative to control; None for control.")
    p_value: float | None = Field(examples=[0.0004], description="Two-proportion z-test against control.")
    chance_to_beat_control: float | None = Field(examples=[0.9998], description="Beta-posterior P(rate > control).")


class VariantResults(BaseModel):
    name: str
    exposures: int
    users: int
    clicks: int
    purchases: int
    metrics: dict[Literal["ctr", "conversion"], MetricPublic]


class SrmPublic(BaseModel):
    chi2: float
    p_value: float
    flagged: bool = Field(description="True when p < 0.001: the split differs from the weights.")
    observed: list[int]
    expected: list[float]


class VerdictPublic(BaseModel):
    status: Literal["insufficient_data", "winner", "no_difference"]
    winner: str | None
    metric: str
    reason: str


class ResultsPublic(BaseModel):
    experiment: ExperimentPublic
    variants: list[VariantResults]
    srm: SrmPublic
    verdict: VerdictPublic
    min_exposures: int
    source: Literal["live", "final"]


class VersionPerformance(BaseModel):
    model_version: str = Field(examples=["3"])
    variant: str = Field(examples=["control"], description='"-" outside experiments.')
    exposures: int
    clicks: int
    purchases: int
    ctr: float
    conversion: float


class SeriesPoint(BaseModel):
    t: int = Field(description="Bucket start, epoch seconds.")
    model_version: str
    variant: str
    exposures: int
    clicks: int
    ctr: float


class PerformancePublic(BaseModel):
    window_s: int
    bucket_s: int
    by_version: list[VersionPerformance]
    series: list[SeriesPoint]
    coverage: float = Field(description="Distinct items served / items in the catalogue.")
    distinct_items: int
    catalogue_items: int
    diversity: float = Field(description="Mean share of item pairs per answer from different categories.")
    lists: int


ERRORS = {**AUTH_ERRORS, 404: {"description": "No such experiment."},
          409: {"description": "The experiment's state forbids it, or another runs on the surface."}}


def create_experiments_app(settings: Settings | None = None) -> FastAPI:
    from nimbus.experiments import service
    from nimbus.monitoring import performance

    app = create_app("Nimbus experiments", "A/B tests of recommendation models (admin, audited), and "
                                           "recommendation performance.", function="experiments",
                     settings=settings)

    router = APIRouter(prefix="/experiments", tags=["experiments"], responses=ERRORS)

    @router.post("", response_model=ExperimentPublic, status_code=201,
                 responses={422: {"description": "Bad body, e.g. weights not summing to 1 (names the field)."},
                            400: {"description": "A variant's model is not in the registry."}})
    def create(body: ExperimentSpec, settings: SettingsDep, caller: AdminKey) -> dict[str, Any]:
        """Create a draft experiment."""
        return service.create(settings, body, who=caller.actor)

    @router.get("", response_model=list[ExperimentPublic])
    def list_all(settings: SettingsDep, _: ReadKey) -> list[dict[str, Any]]:
        """Every experiment, newest first."""
        return service.list_experiments(settings)

    @router.get("/{experiment_id}", response_model=ExperimentPublic)
    def read(experiment_id: str, settings: SettingsDep, _: ReadKey) -> dict[str, Any]:
        """One experiment."""
        return service.get(settings, experiment_id)

    @router.post("/{experiment_id}/start", response_model=ExperimentPublic)
    def start(experiment_id: str, settings: SettingsDep, caller: AdminKey) -> dict[str, Any]:
        """Start a draft: its variants' models go live and users are split between them."""
        return service.start(settings, experiment_id, who=caller.actor)

    @router.post("/{experiment_id}/stop", response_model=ExperimentPublic)
    def stop(experiment_id: str, settings: SettingsDep, caller: AdminKey) -> dict[str, Any]:
        """Stop a running experiment and freeze its results."""
        return service.stop(settings, experiment_id, who=caller.actor)

    @router.get("/{experiment_id}/results", response_model=ResultsPublic)
    def read_results(experiment_id: str, settings: SettingsDep, _: ReadKey) -> dict[str, Any]:
        """Per variant: exposures, CTR and conversion with 95% intervals, lift, p-value,
        chance to beat control; the sample-ratio check and the verdict."""
        return service.results(settings, experiment_id)

    perf = APIRouter(prefix="/performance", tags=["performance"], responses=AUTH_ERRORS)

    @perf.get("/recommendations", response_model=PerformancePublic)
    def recommendation_performance(
        settings: SettingsDep, _: ReadKey,
        window_s: Annotated[int, Query(ge=60, le=30 * 86400, description="How far back.")] = 3600,
        bucket_s: Annotated[int, Query(ge=1, le=86400, description="Series step; a multiple of NIMBUS_PERF_BUCKET_S.")] = 60,
    ) -> dict[str, Any]:
        """CTR and conversion per model version and variant, over time; coverage and diversity."""
        return performance.summary(settings, window_s, bucket_s)

    app.include_router(router)
    app.include_router(perf)
    return app
