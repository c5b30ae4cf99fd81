"""Dependencies: the services of the running app, database sessions, API-key scopes."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from abplatform.api.metrics import Metrics
from abplatform.api.runtime import ExperimentCache
from abplatform.api.settings import Settings
from abplatform.api.verifier import KeyVerifier, VerifierLimits
from abplatform.keys import KeyIdentity
from abplatform.storage.db import transaction
from abplatform.writer import BufferedWriter


@dataclass
class Services:
    """Everything the routers share inside one server process."""

    settings: Settings
    engine: Engine
    writer: BufferedWriter
    experiments: ExperimentCache
    metrics: Metrics = field(default_factory=Metrics)
    keys: KeyVerifier = field(init=False)

    def __post_init__(self) -> None:
        chosen = self.settings
        limits = VerifierLimits(
            cache_seconds=chosen.api_key_cache_seconds,
            failures_allowed=chosen.api_key_failures_per_key,
            client_failures_allowed=chosen.api_key_failures_per_client,
            window_seconds=chosen.api_key_failure_window_seconds,
        )
        self.keys = KeyVerifier(self.engine, limits)


async def get_services(request: Request) -> Services:
    """The services of the app handling the request."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    """A session committed at the end of the request (rolled back on error)."""
    with transaction(services.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer abp_...`")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def authorize(
    services: Services, key: str | None, scope: str, client: str = ""
) -> KeyIdentity | None:
    """The identity of `key` if it holds `scope`; 401 if missing/unknown, 403 if lacking it.

    `client` (the peer's address) keys the failed-verification limit: 429 past it.
    """
    if not services.settings.api_auth:
        return None
    if not key:
        raise _unauthorized("missing API key; send `Authorization: Bearer <key>`")
    identity = await services.keys.identity(key, client)
    if identity is None:
        raise _unauthorized("unknown or revoked API key")
    if scope not in identity.scopes:
        raise HTTPException(403, f"the key {identity.name!r} lacks the {scope!r} scope")
    return identity


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header (None if absent or another scheme)."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


def require_scope(
    scope: str,
) -> Callable[[Request, ServicesDep, BearerDep], Coroutine[Any, Any, KeyIdentity | None]]:
    """A dependency that lets the request through only with a key holding `scope`."""

    async def check(
        request: Request, services: ServicesDep, credentials: BearerDep
    ) -> KeyIdentity | None:
        key = credentials.credentials if credentials else None
        client = request.client.host if request.client else ""
        return await authorize(services, key, scope, client)

    return check


AssignScope = Depends(require_scope("assign"))
ReadScope = Depends(require_scope("read"))
AdminScope = Depends(require_scope("admin"))
