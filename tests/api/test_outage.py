"""The database stopped, paused or restarted under load: 503 + Retry-After, never a 500.

A real `abplatform serve` (2 workers) talks to the real PostgreSQL through a TCP proxy the
test controls: "stop" refuses new connections and cuts live ones, "pause" holds every byte
(a blackholed or SIGSTOPped server). Clients on keep-alive connections assign, assign in
batches and send events throughout; every answer is 200 or 503 with Retry-After and a
JSON body, the same connection answers 200 afterwards, and every acknowledged write is
stored exactly once. One test restarts the real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.pool import NullPool

from abplatform.api.app import create_app
from abplatform.api.outage import DatabaseHealth
from abplatform.api.settings import Settings
from abplatform.errors import DatabaseUnavailable
from abplatform.storage import models as m
from abplatform.storage.db import make_engine, open_database, upgrade
from abplatform.storage.exposure_ids import ExposureIds
from simulator.runner import simulate
from tests.api.conftest import KEY, ROOT, small_config
from tests.api.test_shutdown import _assert_all_stored, _free_port, _stored, wait_ready
from tests.conftest import PG_ADMIN_URL, _pg_available

UPSTREAM = ("127.0.0.1", 5432)
RECOVERY_SECONDS = 5.0


class PgProxy:
    """A TCP proxy in front of PostgreSQL that can stop (cut and refuse) or pause (hold)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.stopped = False
        self.flowing = threading.Event()
        self.flowing.set()
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        """`database_url` (on 127.0.0.1:5432) through this proxy."""
        return database_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")

    def stop(self) -> None:
        """As a stopped server: live connections cut, new ones closed at once."""
        self.stopped = True
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            _close(sock)

    def pause(self) -> None:
        """As a paused server: connections accepted, no byte forwarded."""
        self.flowing.clear()

    def resume(self) -> None:
        """Back to forwarding (held bytes go through)."""
        self.stopped = False
        self.flowing.set()

    def close(self) -> None:
        """Stop listening and cut every connection."""
        self.resume()
        self.stop()
        _close(self.listener)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.stopped:
                _close(client)
                continue
            server = socket.create_connection(UPSTREAM)
            with self._lock:
                self._live |= {client, server}
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                target.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(target)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def running_url(pg_url: str) -> str:
    """A fresh PostgreSQL database holding the small experiment, running."""
    return _seeded_running(pg_url)


@pytest.fixture
def own_running_url() -> Iterator[str]:
    """As `running_url`, in a database of this test's own: the session's admin connection
    would not survive a cluster restart (NullPool: every statement connects afresh)."""
    problem = _pg_available()
    if problem is not None:
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {problem}")
    name = f"abp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield _seeded_running(url)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _seeded_running(url: str) -> str:
    engine = open_database(url)
    simulate(engine, small_config())
    with engine.begin() as conn:
        conn.execute(update(m.Experiment).values(status="running"))
    engine.dispose()
    return url


@pytest.fixture
def proxy() -> Iterator[PgProxy]:
    chosen = PgProxy()
    try:
        yield chosen
    finally:
        chosen.close()


def _serve(url: str, port: int, journal: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABPLATFORM_")}
    env |= {
        "ABPLATFORM_API_JOURNAL_DIR": str(journal),
        "ABPLATFORM_API_DB_CONNECT_TIMEOUT_SECONDS": "1",
    }
    command = [sys.executable, "-m", "abplatform.cli", "serve", "--db", url]
    command += ["--port", str(port), "--workers", "2", "--no-auth"]
    log = journal.with_name("server.log").open("ab")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    if wait_ready(process, port, 60):
        return process
    process.kill()
    process.wait()
    pytest.fail(f"server did not start: {_log(journal)[-2000:]}")


def _log(journal: Path) -> str:
    return journal.with_name("server.log").read_text(errors="replace")


def _stop(server: subprocess.Popen[bytes], journal: Path) -> str:
    """SIGTERM (the writer flushes), then the server's log."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    return _log(journal)


@dataclass
class Answer:
    """One answer a load client got: when, status, and whether it was a well-formed 503."""

    at: float
    status: int
    proper: bool


@dataclass(eq=False)
class _Load(threading.Thread):
    """A keep-alive client sending one kind of request until told to stop."""

    kind: str
    port: int
    stop: threading.Event
    answers: list[Answer] = field(default_factory=list)
    exposures: list[tuple[int, str, str, int]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        number = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as http:
            while not self.stop.is_set():
                number += 1
                name = f"{self.kind}-{number}"
                path, body, units = _request(self.kind, name)
                try:
                    response = http.post(path, json=body)
                except httpx.TransportError as exc:  # a reset: exactly what must not happen
                    self.failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    continue
                self.answers.append(
                    Answer(time.monotonic(), response.status_code, _proper(response))
                )
                if response.status_code == 200:
                    self._acknowledged(response.json(), units)
                time.sleep(0.005)  # bounded load

    def _acknowledged(self, payload: dict[str, object], units: list[str]) -> None:
        if self.kind == "events":
            self.events += units
            return
        results = payload["results"] if self.kind == "batch" else [payload]
        assert isinstance(results, list)
        for unit, result in zip(units, results, strict=True):
            if result["exposure_id"] is not None:
                item = (result["exposure_id"], unit, result["variant"], len(result["items"]))
                self.exposures.append(item)


def _request(kind: str, name: str) -> tuple[str, dict[str, object], list[str]]:
    """(path, body, unit ids or event ids) of one request of `kind`."""
    if kind == "assign":
        return "/v1/assign", {"experiment": KEY, "unit_id": name}, [name]
    if kind == "batch":
        units = [f"{name}-{i}" for i in range(20)]
        requests = [{"experiment": KEY, "unit_id": unit} for unit in units]
        return "/v1/assign/batch", {"requests": requests}, units
    ids = [f"{name}-{i}" for i in range(10)]
    events = [{"event_id": i, "unit_id": i, "type": "click", "experiment": KEY} for i in ids]
    return "/v1/events", {"events": events}, ids


def _proper(response: httpx.Response) -> bool:
    """200, or 503 with Retry-After and a JSON body."""
    if response.status_code == 200:
        return True
    if response.status_code != 503 or "retry-after" not in response.headers:
        return False
    try:
        return isinstance(response.json()["detail"], str)
    except ValueError:
        return False


def _recovered_within(port: int, since: float) -> float:
    """Seconds from `since` until assign, batch, events and /readyz all answer 200."""
    pending = {"assign", "batch", "events", "readyz"}
    number = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        while pending and time.monotonic() - since < 30:
            for kind in sorted(pending):
                number += 1
                try:
                    if kind == "readyz":
                        status = http.get("/readyz").status_code
                    else:
                        path, body, _ = _request(kind, f"probe-{kind}-{number}")
                        status = http.post(path, json=body).status_code
                except httpx.TimeoutException:
                    pytest.fail(f"{kind} got no answer within 10 s after the fault")
                if status == 200:
                    print(f"  {kind} recovered after {time.monotonic() - since:.2f} s")
                    pending.discard(kind)
            time.sleep(0.05)
    assert pending == set(), f"not recovered after 30 s: {pending}"
    return time.monotonic() - since


def _readiness_during_fault(port: int) -> dict[str, object]:
    """/readyz while the fault lasts (each worker answers for itself; either one)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for _ in range(20):
            ready = http.get("/readyz")
            if ready.status_code == 503:
                assert ready.headers["retry-after"] == "1"
                body: dict[str, object] = ready.json()
                return body
            time.sleep(0.2)
    pytest.fail("/readyz never answered 503 during the fault")


def _check_fault(loads: list[_Load], begin: float, end: float) -> tuple[int, int]:
    """Every answer well-formed, no reset; (503s during the fault, assigns served in it)."""
    assert [f for load in loads for f in load.failures] == []
    bad = [(a.status, load.kind) for load in loads for a in load.answers if not a.proper]
    assert bad == []  # no 500 anywhere, every 503 with Retry-After and JSON
    during = [(load.kind, a) for load in loads for a in load.answers if begin <= a.at <= end]
    refused = sum(1 for _, a in during if a.status == 503)
    served = sum(1 for kind, a in during if a.status == 200 and kind != "events")
    return refused, served


def _run_fault(port: int, fault: str, proxy: PgProxy, loads: list[_Load]) -> float:
    """Apply one fault (3 s stopped, 5 s paused) under the running load; the recovery time."""
    begin = time.monotonic()
    if fault == "stop":
        proxy.stop()
    else:
        proxy.pause()
    readiness = _readiness_during_fault(port)
    assert readiness["status"] == "database unreachable"
    assert readiness["unreachable_since"]
    assert readiness["serving_from_cache"] == [KEY]
    assert isinstance(readiness["accepted_not_written"], int)
    # A pause is noticed only when a bounded read (e.g. the status re-read, every second)
    # outlasts the database wait (connect timeout 1 s + 1 s): 5 s always leaves room for one.
    time.sleep(max(0.0, begin + (3.0 if fault == "stop" else 5.0) - time.monotonic()))
    end = time.monotonic()
    proxy.resume()
    recovery = _recovered_within(port, end)
    refused, served = _check_fault(loads, begin, end)
    print(f"{fault}: {refused} answers 503, {served} assigns served, recovered in {recovery:.2f} s")
    assert refused > 0  # the fault reached the clients
    if fault == "stop":
        assert served > 0  # assigned from the cached experiment and the reserved ids
    return recovery


def _ok_since(load: _Load, moment: float) -> bool:
    """Whether `load` got a 200 after `moment`."""
    return any(a.status == 200 and a.at > moment for a in list(load.answers))


@pytest.mark.slow
@pytest.mark.postgres
def test_stopped_and_paused_database_answers_503_and_loses_nothing(
    running_url: str, proxy: PgProxy, tmp_path: Path
) -> None:
    port = _free_port()
    server = _serve(proxy.url(running_url), port, tmp_path / "journal")
    stop = threading.Event()
    loads = [_Load(kind, port, stop) for kind in ("assign", "assign", "batch", "events")]
    try:
        for load in loads:
            load.start()
        time.sleep(1.0)
        for fault in ("stop", "pause"):
            assert _run_fault(port, fault, proxy, loads) < RECOVERY_SECONDS
            time.sleep(0.5)
        recovered = time.monotonic()
        # Every keep-alive client (each held by one worker) answers 200 again within the
        # recovery bound: a worker whose probe is still backing off may take longer than
        # the first one to see the database back.
        deadline = recovered + RECOVERY_SECONDS
        while time.monotonic() < deadline and not all(_ok_since(load, recovered) for load in loads):
            time.sleep(0.1)
        time.sleep(0.2)
        stop.set()
        for load in loads:
            load.join(timeout=40)
        for load in loads:  # the same keep-alive client answered 200 after the faults
            after = [a.status for a in load.answers if a.at > recovered]
            assert 200 in after, (load.kind, after[-20:])
            first_ok = min(a.at for a in load.answers if a.at > recovered and a.status == 200)
            print(f"  {load.kind}: 200 again {first_ok - recovered:.2f} s after the faults")
    finally:
        stop.set()
        log = _stop(server, tmp_path / "journal")
    assert "Exception in ASGI application" not in log  # nothing escaped to uvicorn
    assert "unexpected error answering a request" not in log  # no JSON 500 either
    exposures = [e for load in loads for e in load.exposures]
    events = [e for load in loads for e in load.events]
    assert len(exposures) > 100 and len(events) > 50  # the load really ran
    _assert_all_stored(running_url, exposures)  # by exposure id: stored exactly once
    counts = _stored(running_url, events)
    assert [e for e in events if counts.get(e) != 1] == []


def _cluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], timeout=10).returncode == 0


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None, reason="no pg_ctlcluster")
def test_real_cluster_restart_under_load(own_running_url: str, tmp_path: Path) -> None:
    running_url = own_running_url
    port = _free_port()
    server = _serve(running_url, port, tmp_path / "journal")
    stop = threading.Event()
    loads = [_Load(kind, port, stop) for kind in ("assign", "batch", "events")]
    try:
        for load in loads:
            load.start()
        time.sleep(1.0)
        begin = time.monotonic()
        try:
            _cluster("restart")
        finally:
            if not _pg_ready():
                _cluster("start")
        end = time.monotonic()
        recovery = _recovered_within(port, end)
        stop.set()
        for load in loads:
            load.join(timeout=40)
        refused, _ = _check_fault(loads, begin, end)
        print(
            f"restart took {end - begin:.1f} s: {refused} answers 503, recovered in "
            f"{recovery:.2f} s"
        )
        assert recovery < RECOVERY_SECONDS
        for load in loads:
            assert load.answers[-1].status == 200, load.kind
    finally:
        stop.set()
        if not _pg_ready():
            _cluster("start")
        _stop(server, tmp_path / "journal")
    exposures = [e for load in loads for e in load.exposures]
    events = [e for load in loads for e in load.events]
    _assert_all_stored(running_url, exposures)
    counts = _stored(running_url, events)
    assert [e for e in events if counts.get(e) != 1] == []


@pytest.mark.postgres
def test_exposure_ids_keep_serving_until_the_block_runs_out(
    running_url: str, proxy: PgProxy
) -> None:
    engine = make_engine(proxy.url(running_url), connect_timeout=1)
    try:
        reserve = ExposureIds(engine, block=8)
        reserve.refill()
        first = reserve.take(5)
        proxy.stop()
        with pytest.raises(DatabaseUnavailable, match="reserving exposure ids failed"):
            reserve.refill()
        assert reserve.take(2) == [first[-1] + 1, first[-1] + 2]  # the block still serves
        with pytest.raises(DatabaseUnavailable, match="no exposure ids are left"):
            reserve.take(2)  # one left, two asked: none taken
        assert reserve.available == 1
        proxy.resume()
        reserve.refill()
        assert not reserve.unreachable
        assert len(set(reserve.take(9))) == 9
    finally:
        engine.dispose()


@pytest.mark.anyio
async def test_health_fails_fast_after_a_failure_and_recovers() -> None:
    health = DatabaseHealth(wait_seconds=0.2, retry_seconds=0.3)
    with pytest.raises(DatabaseUnavailable, match="no answer within the wait bound"):
        await health.call(lambda: time.sleep(1.0))
    assert health.unreachable_since is not None
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        await health.call(lambda: None)  # within the retry period: not even tried
    assert time.monotonic() - started < 0.1
    time.sleep(0.3)
    assert await health.call(lambda: 42) == 42
    assert not health.unreachable


@pytest.mark.postgres
@pytest.mark.anyio
async def test_every_route_answers_503_while_stopped_and_200_after(
    running_url: str, proxy: PgProxy, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=proxy.url(running_url),
        api_auth=False,
        api_journal_dir=str(tmp_path / "journal"),
        api_db_connect_timeout_seconds=1.0,
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        assign = {"experiment": KEY, "unit_id": "u1"}
        assert (await http.post("/v1/assign", json=assign)).status_code == 200
        proxy.stop()
        # The running hashed experiment is cached and ids are reserved: still assigned.
        assert (await http.post("/v1/assign", json=assign)).status_code == 200
        refused = [
            await http.get("/readyz"),
            await http.get("/v1/experiments"),
            await http.get(f"/v1/experiments/{KEY}/results"),
            await http.post("/v1/assign", json={"experiment": "other", "unit_id": "u1"}),
            await http.post(
                "/v1/events",
                json={"events": [{"event_id": "e1", "unit_id": "u1", "type": "click"}]},
            ),
        ]
        for response in refused:
            assert response.status_code == 503, (response.request.url, response.text)
            assert response.headers["retry-after"] == "1"
            assert isinstance(response.json().get("detail", response.json().get("status")), str)
        assert refused[0].json()["status"] == "database unreachable"
        assert refused[0].json()["serving_from_cache"] == [KEY]
        assert refused[0].json()["accepted_not_written"] >= 1
        proxy.resume()
        await asyncio.sleep(1.0)  # the retry period of the last failure
        for _ in range(50):
            if (await http.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await http.get("/v1/experiments")).status_code == 200
        assert (
            await http.post(
                "/v1/events",
                json={"events": [{"event_id": "e1", "unit_id": "u1", "type": "click"}]},
            )
        ).json()["new"] == 1


@pytest.mark.anyio
async def test_an_unexpected_error_is_a_json_500(sqlite_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=sqlite_url, api_auth=False, api_journal_dir=str(tmp_path / "journal")
    )
    app = create_app(settings)

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        response = await http.get("/broken")
        assert response.status_code == 500
        assert response.json()["detail"].startswith("internal server error")
        assert "a bug" not in response.text


@pytest.mark.postgres
@pytest.mark.anyio
async def test_cached_state_older_than_the_bound_is_not_served(
    running_url: str, proxy: PgProxy, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=proxy.url(running_url),
        api_auth=False,
        api_journal_dir=str(tmp_path / "journal"),
        api_db_connect_timeout_seconds=1.0,
        api_outage_serve_seconds=0.5,
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        assign = {"experiment": KEY, "unit_id": "u1"}
        assert (await http.post("/v1/assign", json=assign)).status_code == 200
        proxy.stop()
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.post("/v1/assign", json=assign)).status_code == 200  # read < 0.5 s ago
        await asyncio.sleep(0.6)
        late = await http.post("/v1/assign", json=assign)
        assert (late.status_code, late.headers["retry-after"]) == (503, "1")
        proxy.resume()
        await asyncio.sleep(1.0)
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.post("/v1/assign", json=assign)).status_code == 200
