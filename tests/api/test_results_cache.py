"""The results cache of /results and /report: fresh, stale, shared, cancelled, offline."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine, event, text

from abplatform.api.app import create_app
from abplatform.api.settings import Settings
from abplatform.storage.db import make_engine, open_database
from reports.analysis import analyze
from tests.api.conftest import KEY, Keys, _http
from tests.api.test_shutdown import _free_port, wait_ready

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
# The first statement of the ranking-quality part: exactly one per analysis.
MARKER = "slate_size > 0 GROUP BY variant"


def _make_app(url: str, tmp_path: Path, ttl: float) -> FastAPI:
    settings = Settings(
        database_url=url,
        api_journal_dir=str(tmp_path / "journal"),
        api_results_ttl_seconds=ttl,
    )
    return create_app(settings)


class _Statements:
    """Counts the statements run on an engine, and the analyses among them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.all = 0
        self.analyses = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.all += 1
        self.analyses += MARKER in statement

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


def _engine(app: FastAPI) -> Engine:
    engine: Engine = app.state.services.engine
    return engine


def _computed_at(answer: httpx.Response) -> datetime:
    return datetime.fromisoformat(answer.headers["computed-at"])


async def test_within_the_ttl_no_statement_runs_and_the_body_is_the_analysis(
    seeded_url: str, tmp_path: Path, keys: Keys
) -> None:
    app = _make_app(seeded_url, tmp_path, ttl=600)
    async with _http(app, keys) as client:
        first = await client.get(f"/v1/experiments/{KEY}/results")
        assert first.status_code == 200, first.text
        assert first.headers["analysis-cache"] == "computed"
        assert int(first.headers["age"]) == 0
        engine = _engine(app)
        assert first.json() == analyze(engine, KEY).to_dict()

        counted = _Statements(engine)
        try:
            again = await client.get(f"/v1/experiments/{KEY}/results")
            report = await client.get(f"/v1/experiments/{KEY}/report")
        finally:
            counted.close()
        assert counted.all == 0
        assert again.headers["analysis-cache"] == "fresh"
        assert again.content == first.content
        assert again.headers["computed-at"] == first.headers["computed-at"]
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert report.headers["analysis-cache"] == "fresh"

        # Asking for a fresh one, either way, recomputes.
        for kwargs in ({"params": {"fresh": "true"}}, {"headers": {"Cache-Control": "no-cache"}}):
            counted = _Statements(engine)
            try:
                answer = await client.get(f"/v1/experiments/{KEY}/results", **kwargs)  # type: ignore[arg-type]
            finally:
                counted.close()
            assert answer.headers["analysis-cache"] == "computed"
            assert counted.analyses == 1
            assert _computed_at(answer) > _computed_at(first)

        # Start/stop (and create) forget the experiment's cached analysis in this process.
        before = await client.get(f"/v1/experiments/{KEY}/results")
        assert before.headers["analysis-cache"] == "fresh"
        assert (await client.post(f"/v1/experiments/{KEY}/stop")).status_code == 200
        after = await client.get(f"/v1/experiments/{KEY}/results")
        assert after.headers["analysis-cache"] == "computed"
        assert _computed_at(after) > _computed_at(before)


async def test_past_the_ttl_the_stale_answer_comes_at_once_and_a_refresh_follows(
    seeded_url: str, tmp_path: Path, keys: Keys
) -> None:
    app = _make_app(seeded_url, tmp_path, ttl=0.2)
    async with _http(app, keys) as client:
        first = await client.get(f"/v1/experiments/{KEY}/results")
        assert first.headers["analysis-cache"] == "computed"
        await asyncio.sleep(0.3)
        counted = _Statements(_engine(app))
        try:
            stale = await client.get(f"/v1/experiments/{KEY}/results")
            # The stale answer did not wait for the analysis it started.
            assert counted.analyses == 0
            assert stale.headers["analysis-cache"] == "stale"
            assert stale.headers["computed-at"] == first.headers["computed-at"]
            assert int(stale.headers["age"]) >= 0
            assert stale.content == first.content
            cache = app.state.results_cache
            deadline = time.monotonic() + 20
            while (entry := cache.cached(KEY)) is None or entry.computed_at <= _computed_at(first):
                assert time.monotonic() < deadline, "no background refresh"
                await asyncio.sleep(0.05)
            assert counted.analyses == 1
        finally:
            counted.close()
        refreshed = await client.get(f"/v1/experiments/{KEY}/results")
        assert refreshed.headers["analysis-cache"] == "fresh"
        assert _computed_at(refreshed) > _computed_at(first)
        assert refreshed.content == first.content  # same data, same analysis


async def test_concurrent_cold_requests_share_one_computation(
    seeded_url: str, tmp_path: Path, keys: Keys
) -> None:
    app = _make_app(seeded_url, tmp_path, ttl=600)
    async with _http(app, keys) as client:
        counted = _Statements(_engine(app))
        try:
            answers = await asyncio.gather(
                *(client.get(f"/v1/experiments/{KEY}/results") for _ in range(4)),
                client.get(f"/v1/experiments/{KEY}/report"),
            )
        finally:
            counted.close()
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.headers["analysis-cache"] for a in answers} == {"computed"}
    assert len({a.headers["computed-at"] for a in answers}) == 1
    assert counted.analyses == 1


def _dead_url(url: str, tmp_path: Path) -> str:
    """A URL of the same kind whose database cannot be reached."""
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/no-such-folder/gone.db"
    return "postgresql+psycopg://postgres@127.0.0.1:1/test"


async def test_with_the_database_unavailable_the_cached_result_is_served(
    seeded_url: str, tmp_path: Path, keys: Keys
) -> None:
    app = _make_app(seeded_url, tmp_path, ttl=0.0)
    async with _http(app, keys) as client:
        first = await client.get(f"/v1/experiments/{KEY}/results")
        assert first.status_code == 200, first.text
        services = app.state.services
        alive = services.engine
        services.engine = make_engine(_dead_url(seeded_url, tmp_path))
        try:
            await asyncio.sleep(1.1)
            offline = await client.get(f"/v1/experiments/{KEY}/results", params={"fresh": "1"})
            assert offline.status_code == 200, offline.text
            assert offline.headers["analysis-cache"] == "offline"
            assert offline.headers["computed-at"] == first.headers["computed-at"]
            assert int(offline.headers["age"]) >= 1
            assert offline.content == first.content
            # Without a fresh request the stale one is served while the refresh fails.
            stale = await client.get(f"/v1/experiments/{KEY}/results")
            assert stale.status_code == 200 and stale.content == first.content
            # Nothing cached to fall back on: 503 + Retry-After.
            cold = await client.get("/v1/experiments/other/results")
            assert cold.status_code == 503, cold.text
            assert "retry-after" in cold.headers
            assert "unavailable" in cold.json()["detail"]
        finally:
            services.engine.dispose()
            services.engine = alive


# -- cancel on disconnect, with a real server process ---------------------------------------


def _serve(url: str, port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABPLATFORM_")}
    env["ABPLATFORM_API_JOURNAL_DIR"] = str(tmp_path / "journal")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "abplatform.cli", "serve", "--db", url),
            *("--port", str(port), "--workers", "1", "--no-auth"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if wait_ready(process, port, 30):
        return process
    process.kill()
    _, err = process.communicate()
    pytest.fail(f"server did not start: {err.decode()[-2000:]}")


@pytest.fixture
def server(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real `abplatform serve` on a seeded PostgreSQL database: (base URL, database URL)."""
    from simulator.runner import simulate
    from tests.api.conftest import small_config

    engine = open_database(pg_url)
    simulate(engine, small_config())
    engine.dispose()
    port = _free_port()
    process = _serve(pg_url, port, tmp_path)
    try:
        yield f"http://127.0.0.1:{port}", pg_url
    finally:
        process.terminate()
        process.communicate(timeout=30)


def _waiting_on_lock(admin: Any, database: str) -> list[int]:
    rows = admin.execute(
        text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :d AND wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid()"
        ),
        {"d": database},
    ).all()
    return [int(r[0]) for r in rows]


@pytest.mark.postgres
@pytest.mark.slow
def test_a_client_that_disconnects_gets_its_analysis_cancelled(server: tuple[str, str]) -> None:
    base, url = server
    database = url.rsplit("/", 1)[1]
    locker = create_engine(url)
    watcher = create_engine(url, isolation_level="AUTOCOMMIT")
    with locker.connect() as lock, watcher.connect() as admin:
        lock.execute(text("LOCK TABLE exposures IN ACCESS EXCLUSIVE MODE"))
        try:
            # The analysis blocks behind the lock; the client gives up after 2 s and hangs up.
            with pytest.raises(httpx.ReadTimeout):
                httpx.get(f"{base}/v1/experiments/{KEY}/results", timeout=2.0)
            blocked = _waiting_on_lock(admin, database)
            start = time.monotonic()
            while blocked and time.monotonic() - start < 5:
                time.sleep(0.1)
                blocked = _waiting_on_lock(admin, database)
            assert blocked == [], "the analysis statement kept running after the client left"
        finally:
            lock.rollback()
    locker.dispose()
    watcher.dispose()
    # Nothing was left half-done: the next request computes the analysis.
    answer = httpx.get(f"{base}/v1/experiments/{KEY}/results", timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["analysis-cache"] == "computed"


@pytest.mark.postgres
@pytest.mark.slow
def test_the_blocked_analysis_is_there_while_a_client_waits(server: tuple[str, str]) -> None:
    """The check above can fail: with a client still waiting, the statement is seen blocked."""
    base, url = server
    database = url.rsplit("/", 1)[1]
    locker = create_engine(url)
    watcher = create_engine(url, isolation_level="AUTOCOMMIT")
    with (
        locker.connect() as lock,
        watcher.connect() as admin,
        httpx.Client(base_url=base, timeout=60) as http,
    ):
        lock.execute(text("LOCK TABLE exposures IN ACCESS EXCLUSIVE MODE"))
        answers: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: answers.append(http.get(f"/v1/experiments/{KEY}/results"))
        )
        waiting.start()
        try:
            deadline = time.monotonic() + 10
            while not _waiting_on_lock(admin, database):
                assert time.monotonic() < deadline, "the analysis never reached the lock"
                time.sleep(0.1)
            time.sleep(1.0)
            assert _waiting_on_lock(admin, database), "cancelled although a client waits"
        finally:
            lock.rollback()
        waiting.join(60)
    locker.dispose()
    watcher.dispose()
    assert answers and answers[0].status_code == 200, answers


def test_the_canceller_interrupts_a_running_sqlite_statement(sqlite_url: str) -> None:
    """SQLite: ``cancel`` interrupts the statement under way and refuses the next one."""
    from abplatform.api.results import AnalysisCancelled, StatementCanceller

    engine = open_database(sqlite_url)
    canceller = StatementCanceller()
    tracked = canceller.bind(engine)
    failure: list[BaseException] = []
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT MAX(i) FROM n"

    def run() -> None:
        try:
            with tracked.connect() as conn:
                conn.execute(text(endless))
        except BaseException as exc:  # the interrupted statement's error, checked below
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive(), "the endless statement ended by itself"
    start = time.monotonic()
    while worker.is_alive() and time.monotonic() - start < 5:
        canceller.cancel()
        worker.join(0.1)
    assert not worker.is_alive()
    assert "interrupted" in str(failure[0])
    with pytest.raises(AnalysisCancelled), tracked.connect() as conn:
        conn.execute(text("SELECT 1"))
    engine.dispose()
