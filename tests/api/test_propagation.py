"""Start and stop reach every API worker: at once, and over a real server within a bound.

Two apps in one process (two workers' caches on one database, a status TTL of a minute):
a start or stop through one is honoured by the other's next request after the signal.
Then a real `abplatform serve --workers 2`: one keep-alive connection is pinned to each
worker (told apart by `/readyz`'s `process`), and each has cached the experiment as a
draft. After `POST .../start` answers 200, every worker must answer `/v1/assign` with 200
within `BOUND_SECONDS` of that answer, and go on answering 200; after `POST .../stop`, 409
likewise. The status TTL (1 s) alone takes 1-2 s: the change counter (SQLite) or
LISTEN/NOTIFY (PostgreSQL) is what makes it.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from abplatform.api.app import create_app
from abplatform.api.settings import Settings
from abplatform.storage.changes import CounterFeed, bump
from tests.api.conftest import KEY
from tests.api.test_outage import PgProxy, proxy, running_url  # noqa: F401 (fixtures)
from tests.api.test_shutdown import _free_port, _serve

WORKERS = 2
# Issue #13 asks for 100 ms; bench/bench_propagation.py measures that (p99 45-69 ms). A
# start's lag includes refitting the strategies, which a loaded machine can stretch past
# 100 ms, so the test bounds it at half the 1 s status TTL: it fails on TTL-only propagation
# (1-2 s) without depending on the machine's load.
BOUND_SECONDS = 0.5
GIVE_UP_SECONDS = 3.0  # past the 1 s TTL: a lag measured, not a timeout
AFTER = 5  # answers checked after the first expected one: the change sticks


def pinned_clients(port: int, workers: int) -> dict[int, httpx.Client]:
    """One client per worker process, each holding a single keep-alive connection to it.

    New connections are opened until every worker has answered one (a worker still warming
    up answers none yet).
    """
    found: dict[int, httpx.Client] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=10,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        process = int(http.get("/readyz").json()["process"])
        if process in found:
            http.close()
            time.sleep(0.01)
            continue
        found[process] = http
        if len(found) == workers:
            return found
    for http in found.values():
        http.close()
    pytest.fail(f"new connections reached only the workers {sorted(found)}")


def assert_still_pinned(clients: dict[int, httpx.Client]) -> None:
    """Each client's connection is still the one to its worker (none was replaced)."""
    for process, http in clients.items():
        assert int(http.get("/readyz").json()["process"]) == process


class Prober(threading.Thread):
    """Assigns on one worker's connection until it answers `expected`, then `AFTER` more.

    `lag`: seconds from `answered_at` to the first `expected` answer (inf: none in time);
    `wrong`: later answers that were not `expected` (the change must stick).
    """

    def __init__(self, http: httpx.Client, answered_at: float, expected: int) -> None:
        super().__init__(daemon=True)
        self.http, self.answered_at, self.expected = http, answered_at, expected
        self.lag = float("inf")
        self.wrong: list[str] = []
        self.unexpected: list[str] = []

    def run(self) -> None:
        number = 0
        while time.monotonic() - self.answered_at < GIVE_UP_SECONDS:
            number += 1
            body = {"experiment": KEY, "unit_id": f"u{number}"}
            response = self.http.post("/v1/assign", json=body)
            if response.status_code == self.expected:
                self.lag = time.monotonic() - self.answered_at
                break
            if response.status_code not in (200, 409):
                self.unexpected.append(response.text)
        if self.lag == float("inf"):
            return
        for later in range(AFTER):
            body = {"experiment": KEY, "unit_id": f"v{later}"}
            again = self.http.post("/v1/assign", json=body)
            if again.status_code != self.expected:
                self.wrong.append(again.text)


def lags(clients: dict[int, httpx.Client], answered_at: float, expected: int) -> dict[int, float]:
    """Seconds from `answered_at` to each worker's first assign answering `expected`.

    The workers are asked at the same time, one thread each; once a worker answered
    `expected`, its next `AFTER` answers must too.
    """
    probers = {p: Prober(http, answered_at, expected) for p, http in clients.items()}
    for prober in probers.values():
        prober.start()
    for prober in probers.values():
        prober.join(timeout=GIVE_UP_SECONDS + 10)
    for process, prober in probers.items():
        assert prober.unexpected == [], (process, prober.unexpected)
        assert prober.wrong == [], (process, prober.wrong)
    return {process: prober.lag for process, prober in probers.items()}


@pytest.mark.slow
def test_start_and_stop_reach_every_worker_promptly(seeded_url: str, tmp_path: Path) -> None:
    port = _free_port()
    server = _serve(seeded_url, port, WORKERS, tmp_path / "journal")
    clients = pinned_clients(port, WORKERS)
    admin = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    measured: list[tuple[str, dict[int, float]]] = []
    try:
        for http in clients.values():  # every worker holds the draft in its cache
            draft = http.post("/v1/assign", json={"experiment": KEY, "unit_id": "u0"})
            assert draft.status_code == 409, draft.text
        for verb, expected in (("start", 200), ("stop", 409), ("start", 200)):
            changed = admin.post(f"/v1/experiments/{KEY}/{verb}")
            answered_at = time.monotonic()
            assert changed.status_code == 200, changed.text
            measured.append((verb, lags(clients, answered_at, expected)))
            assert_still_pinned(clients)
    finally:
        for http in [admin, *clients.values()]:
            http.close()
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    for verb, found in measured:
        print(verb, {process: f"{lag * 1000:.1f} ms" for process, lag in found.items()})
    late = [(v, p, lag) for v, found in measured for p, lag in found.items() if lag > BOUND_SECONDS]
    assert late == [], f"workers that honoured a change after {BOUND_SECONDS * 1000:.0f} ms"


@pytest.mark.anyio
async def test_a_change_through_one_worker_is_honoured_by_the_other(
    seeded_url: str, tmp_path: Path
) -> None:
    """The TTL is a minute: only the change signal can make the other worker see it."""
    apps = [
        create_app(
            Settings(
                database_url=seeded_url,
                api_auth=False,
                api_status_ttl_seconds=60.0,
                api_journal_dir=str(tmp_path / f"journal-{n}"),
            )
        )
        for n in range(2)
    ]
    first, second = apps
    async with (
        first.router.lifespan_context(first),
        second.router.lifespan_context(second),
        httpx.AsyncClient(transport=httpx.ASGITransport(first), base_url="http://a") as one,
        httpx.AsyncClient(transport=httpx.ASGITransport(second), base_url="http://b") as other,
    ):
        feed = second.state.services.experiments.changes
        assign = {"experiment": KEY, "unit_id": "u1"}
        assert (await other.post("/v1/assign", json=assign)).status_code == 409  # draft, cached
        for verb, expected in (("start", 200), ("stop", 409), ("start", 200)):
            seen = feed.changed_at(KEY)
            assert (await one.post(f"/v1/experiments/{KEY}/{verb}")).status_code == 200
            assert (await one.post("/v1/assign", json=assign)).status_code == expected
            for _ in range(500):  # PostgreSQL: the LISTEN thread gets it within milliseconds
                if feed.changed_at(KEY) > seen:
                    break
                await asyncio.sleep(0.01)
            answer = await other.post("/v1/assign", json=assign)
            assert answer.status_code == expected, (verb, answer.text)


@pytest.mark.postgres
@pytest.mark.anyio
async def test_a_change_signalled_while_the_database_is_away_keeps_the_entry_served(
    running_url: str,  # noqa: F811
    proxy: PgProxy,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The re-read a signal asks for fails for want of the database: served as in an outage.

    The cache's feed is swapped for a counter file the test bumps, so the signal arrives
    exactly while the database is away (a NOTIFY could not).
    """
    settings = Settings(
        database_url=proxy.url(running_url),
        api_auth=False,
        api_journal_dir=str(tmp_path / "journal"),
        api_db_connect_timeout_seconds=1.0,
    )
    app = create_app(settings)
    counter = tmp_path / "changes"
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as http,
    ):
        cache = app.state.services.experiments
        cache.changes.close()
        cache.changes = CounterFeed(counter)
        cache.invalidate(KEY)  # read anew, at the version of this feed
        assign = {"experiment": KEY, "unit_id": "u1"}
        assert (await http.post("/v1/assign", json=assign)).status_code == 200
        read_at = cache._entries[KEY].version
        proxy.stop()
        bump(counter)
        served = await http.post("/v1/assign", json=assign)
        assert served.status_code == 200, served.text  # from memory, as during an outage
        assert cache._entries[KEY].version == read_at  # not re-read: asked again next time
        proxy.resume()
        await asyncio.sleep(1.0)  # the retry period of the failure
        assert (await http.post("/v1/assign", json=assign)).status_code == 200
        assert cache._entries[KEY].version > read_at  # re-read now
