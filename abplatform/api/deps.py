"""Dependencies: the services of the running app, database sessions, API-key scopes."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from abplatform.api.runtime import ExperimentCache
from abplatform.api.settings import Settings
from abplatform.keys import KeyIdentity, verify_key
from abplatform.storage.db import transaction
from abplatform.writer import BufferedWriter


@dataclass
class Services:
    """Everything the routers share inside one server process."""

    settings: Settings
    engine: Engine
    writer: BufferedWriter
    experiments: ExperimentCache
    # sha256(key) -> (identity, expiry): scrypt runs once per key per cache period.
    verified_keys: dict[bytes, tuple[KeyIdentity, float]] = field(default_factory=dict)
    verifying: dict[bytes, asyncio.Future[KeyIdentity | None]] = field(default_factory=dict)


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


def _verify(engine: Engine, plain: str) -> KeyIdentity | None:
    with transaction(engine) as session:
        return verify_key(session, plain)


async def _identity(services: Services, plain: str) -> KeyIdentity | None:
    """The key's identity: from the cache, else verified once (concurrent requests share it)."""
    digest = hashlib.sha256(plain.encode("utf-8", "surrogatepass")).digest()
    cached = services.verified_keys.get(digest)
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    task = services.verifying.get(digest)
    if task is None:
        task = asyncio.ensure_future(asyncio.to_thread(_verify, services.engine, plain))
        services.verifying[digest] = task
        task.add_done_callback(partial(_verified, services, digest))
    return await asyncio.shield(task)


def _verified(services: Services, digest: bytes, task: asyncio.Future[KeyIdentity | None]) -> None:
    services.verifying.pop(digest, None)
    if task.cancelled() or task.exception() is not None:
        return
    identity = task.result()
    if identity is not None:
        expiry = time.monotonic() + services.settings.api_key_cache_seconds
        services.verified_keys[digest] = (identity, expiry)


async def authorize(services: Services, key: str | None, scope: str) -> KeyIdentity | None:
    """The identity of `key` if it holds `scope`; 401 if missing/unknown, 403 if lacking it."""
    if not services.settings.api_auth:
        return None
    if not key:
        raise _unauthorized("missing API key; send `Authorization: Bearer <key>`")
    identity = await _identity(services, key)
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
) -> Callable[[ServicesDep, BearerDep], Coroutine[Any, Any, KeyIdentity | None]]:
    """A dependency that lets the request through only with a key holding `scope`."""

    async def check(services: ServicesDep, credentials: BearerDep) -> KeyIdentity | None:
        return await authorize(services, credentials.credentials if credentials else None, scope)

    return check


AssignScope = Depends(require_scope("assign"))
ReadScope = Depends(require_scope("read"))
AdminScope = Depends(require_scope("admin"))
