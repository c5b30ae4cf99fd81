"""Failed API-key verifications are bounded: negative cache, 429 per key id and client,
one hashing thread, a bounded queue, and keys verified earlier survive a database outage."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from sqlalchemy import Engine, create_engine, event, text

from abplatform.api.app import create_app
from abplatform.api.settings import Settings
from abplatform.api.verifier import FailureWindow, KeyVerifier, VerifierLimits
from abplatform.errors import DatabaseUnavailable
from abplatform.keys import create_key
from abplatform.storage.db import open_database, transaction
from tests.api.conftest import KEY, Keys
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.anyio

BODY = {"experiment": KEY, "unit_id": "u1"}


def test_failure_window_allows_n_per_window_then_says_how_long_to_wait() -> None:
    window = FailureWindow(allowed=3, window=60.0)
    for t in (0.0, 10.0, 20.0):
        assert window.blocked("a", t) == 0.0
        window.failed("a", t)
    # Three failures at 0, 10, 20: the oldest leaves the window at 60.
    assert window.blocked("a", 30.0) == pytest.approx(30.0)
    assert window.blocked("b", 30.0) == 0.0  # another subject is not affected
    assert window.blocked("a", 60.0) == 0.0
    window.failed("a", 60.0)
    assert window.blocked("a", 61.0) == pytest.approx(9.0)  # now 10, 20, 60: 10 leaves at 70


class Lookups:
    """Counts the statements that read `api_keys` and the threads they ran on."""

    def __init__(self, engine: Engine) -> None:
        self.threads: list[str] = []
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys" in statement:
            self.threads.append(threading.current_thread().name)


def _app(seeded_url: str, tmp_path: Path, **settings: Any) -> FastAPI:
    chosen = Settings(
        database_url=seeded_url,
        api_status_ttl_seconds=0.05,
        api_journal_dir=str(tmp_path / "journal"),
        **settings,
    )
    return create_app(chosen)


@asynccontextmanager
async def _clients(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two clients of the running app from different addresses."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("10.0.0.1", 1000)),
            base_url="http://test",
        ) as one,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("10.0.0.2", 1000)),
            base_url="http://test",
        ) as two,
    ):
        yield one, two


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", ["/v1/assign", "/v1/experiments"])
async def test_failed_verifications_are_limited_per_key_id_and_client(
    seeded_url: str, keys: Keys, tmp_path: Path, path: str
) -> None:
    app = _app(seeded_url, tmp_path, api_key_failures_per_key=3)
    key_id_prefix = keys.every.rsplit("_", 1)[0]

    async def call(client: httpx.AsyncClient, key: str) -> httpx.Response:
        if path == "/v1/assign":  # the fast lane
            return await client.post(path, json=BODY, headers=_bearer(key))
        return await client.get(path, headers=_bearer(key))

    async with _clients(app) as (one, two):
        lookups = Lookups(app.state.services.engine)
        # The same wrong key again and again: 401 each time, verified once.
        for _ in range(10):
            assert (await call(one, f"{key_id_prefix}_same-wrong-secret")).status_code == 401
        assert len(lookups.threads) == 1
        # Different wrong secrets for one key id: 401 until the limit (3), then 429.
        for n in range(2):
            assert (await call(one, f"{key_id_prefix}_wrong-{n}")).status_code == 401
        looked_up = len(lookups.threads)
        limited = await call(one, f"{key_id_prefix}_wrong-9")
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "too many failed API-key verifications" in limited.json()["detail"]
        assert len(lookups.threads) == looked_up  # no look-up, no scrypt once limited
        # The right key, not yet cached, from the limited client waits out the window too;
        # from another client it works, and once cached it passes everywhere.
        assert (await call(one, keys.every)).status_code == 429
        assert (await call(two, keys.every)).status_code != 401
        assert (await call(one, keys.every)).status_code not in (401, 429)
        # Every look-up ran on the one key thread, never on the event loop's.
        assert set(lookups.threads) == {"abplatform-keys_0"}


async def test_failures_per_client_count_across_key_ids_and_the_window_frees(
    seeded_url: str, keys: Keys, tmp_path: Path
) -> None:
    app = _app(
        seeded_url,
        tmp_path,
        api_key_failures_per_client=4,
        api_key_failure_window_seconds=1.0,
    )
    async with _clients(app) as (one, two):
        for n in range(4):  # four unknown key ids
            response = await one.get("/v1/experiments", headers=_bearer(f"abp_{n:016x}_x"))
            assert response.status_code == 401
        assert (await one.get("/v1/experiments", headers=_bearer("abp_ff_x"))).status_code == 429
        assert (await two.get("/v1/experiments", headers=_bearer("abp_ff_x"))).status_code == 401
        await asyncio.sleep(1.05)  # the window (1 s) has passed
        assert (await one.get("/v1/experiments", headers=_bearer("abp_ee_x"))).status_code == 401


async def test_queued_verifications_are_bounded(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    verifier = KeyVerifier(engine, VerifierLimits(max_waiting=2, client_failures_allowed=100))
    try:
        outcomes = await asyncio.gather(
            *(verifier.identity(f"abp_{n:016x}_secret", "c") for n in range(5)),
            return_exceptions=True,
        )
    finally:
        verifier.close()
        engine.dispose()
    refused = [o for o in outcomes if isinstance(o, HTTPException)]
    assert outcomes[:2] == [None, None]  # verified (unknown keys)
    assert [r.status_code for r in refused] == [503, 503, 503]
    assert all(r.headers == {"Retry-After": "1"} for r in refused)


@contextmanager
def _database_refusing_connections(name: str) -> Iterator[None]:
    """A real outage of one PostgreSQL database: new connections refused, live ones cut."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        admin.dispose()


@pytest.mark.postgres
async def test_keys_verified_before_an_outage_keep_working_unknown_ones_get_503(
    pg_url: str,
) -> None:
    engine = open_database(pg_url)
    with transaction(engine) as session:
        plain = create_key(session, "web", ["assign"]).plain
    now = [0.0]
    verifier = KeyVerifier(engine, VerifierLimits(cache_seconds=60.0), clock=lambda: now[0])
    try:
        first = await verifier.identity(plain, "c")
        assert first is not None and first.scopes == {"assign"}
        now[0] = 120.0  # past the cache period: the next call verifies again
        assert engine.url.database is not None
        with _database_refusing_connections(engine.url.database):
            assert await verifier.identity(plain, "c") == first  # stale-if-error
            with pytest.raises(DatabaseUnavailable, match="cannot be verified"):
                await verifier.identity(plain.rsplit("_", 1)[0] + "_other", "c")
            now[0] = 4000.0  # past stale_seconds (3600): no longer trusted
            with pytest.raises(DatabaseUnavailable):
                await verifier.identity(plain, "c")
        assert await verifier.identity(plain, "c") == first  # recovered
    finally:
        verifier.close()
        engine.dispose()
