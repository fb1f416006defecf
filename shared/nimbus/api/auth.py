"""Who may call what: every route names the scope it needs, or is on the short public list.

A caller shows a key in ``X-API-Key`` (or ``Authorization: Bearer KEY``, which Prometheus sends).
The key is identified by its hash (:mod:`nimbus.security`); the route gets a :class:`Caller`
naming the key, and the audit trail records that name (never the key). Both header schemes are
declared in every app's OpenAPI (``components.securitySchemes``), on every protected operation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from nimbus.api.common import SettingsDep
from nimbus.apikeys import Scope, grants
from nimbus.config import Settings
from nimbus.security import keyring

# Routes anyone may call (prefix match for the ones ending in "/"): health, recommendations, and the
# dashboard page with its static assets (the page asks for a read key before it loads any data).
PUBLIC = ("/health", "/recommend/health", "/recommendations/", "/dashboard", "/dashboard/static/",
          "/docs", "/openapi.json", "/docs/oauth2-redirect", "/dashboard/docs", "/dashboard/openapi.json")

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey",
                              description="A Nimbus API key (`nimbus keys new NAME --scope SCOPE`).")
bearer = HTTPBearer(auto_error=False, scheme_name="Bearer",
                    description="The same API key as a bearer token (for scrapers such as Prometheus).")


@dataclass(frozen=True)
class Caller:
    """The key a request came with: its name (for the audit trail) and scopes."""

    name: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        return f"api-key:{self.name}"

    def allows(self, scope: str) -> bool:
        return grants(self.scopes, scope)


def _identify(settings: Settings, key: str | None, token: HTTPAuthorizationCredentials | None) -> Caller | None:
    """The caller a request's X-API-Key (or bearer token) names, or None."""
    presented = key or (token.credentials if token else None)
    # Starlette decodes headers as latin-1; back to the bytes that were sent, so any byte compares cleanly.
    found = keyring(settings).identify(presented.encode("latin-1") if presented else None)
    return Caller(found.name, found.scopes) if found is not None else None


def require(scope: Scope) -> Callable[..., Caller]:
    """A dependency answering 401 without a known key and 403 when the key lacks ``scope``."""

    def caller(settings: SettingsDep, key: Annotated[str | None, Depends(api_key_header)] = None,
               token: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None) -> Caller:
        found = _identify(settings, key, token)
        if found is None:
            raise HTTPException(401, "a valid API key is required (header X-API-Key)",
                                headers={"WWW-Authenticate": 'Bearer realm="nimbus"'})
        if not found.allows(scope):
            raise HTTPException(403, f"API key {found.name!r} lacks the {scope!r} scope")
        return found

    caller.__name__ = f"require_{scope}"
    return caller


async def optional_caller(request: Request, settings: SettingsDep) -> Caller | None:
    """The caller of a public route, when it sent a known key (never a 401): public routes say more to a
    caller with the ``read`` scope. The schemes are called, not declared, so OpenAPI keeps the route public."""
    return _identify(settings, await api_key_header(request), await bearer(request))


OptionalCaller = Annotated[Caller | None, Depends(optional_caller)]
AdminKey = Annotated[Caller, Depends(require("admin"))]
ReadKey = Annotated[Caller, Depends(require("read"))]
AutomlKey = Annotated[Caller, Depends(require("automl"))]
EventsKey = Annotated[Caller, Depends(require("events"))]

AUTH_ERRORS = {401: {"description": "No API key, or an unknown one."},
               403: {"description": "The key lacks this route's scope."}}


def is_public(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC)
