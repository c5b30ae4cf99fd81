"""A real `abplatform serve` under load, SIGTERM or SIGKILL mid-load, restart: no lost writes.

Events are answered after their commit; assignments once their exposure is accepted
(journaled and queued). SIGTERM flushes the queue before exit; after a SIGKILL of every
server process the next start-up replays the journals.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from abplatform.storage import models as m
from abplatform.storage.db import open_database
from tests.api.conftest import KEY

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 6
BATCH = 50


def wait_ready(process: subprocess.Popen[bytes], port: int, seconds: float) -> bool:
    """Whether the server on `port` answers `/readyz` 200 within `seconds` while it runs."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(
    url: str, port: int, workers: int, journal: Path, flush_seconds: float = 0.005
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABPLATFORM_")}
    env["ABPLATFORM_API_JOURNAL_DIR"] = str(journal)
    env["ABPLATFORM_API_WRITER_FLUSH_SECONDS"] = str(flush_seconds)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "abplatform.cli",
            "serve",
            "--db",
            url,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-auth",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: SIGKILL reaches every worker
    )
    if wait_ready(process, port, 30):
        return process
    process.kill()
    _, err = process.communicate()
    pytest.fail(f"server did not start: {err.decode()[-2000:]}")


def _batch(client: int, number: int) -> list[dict[str, object]]:
    return [
        {
            "event_id": f"c{client}-b{number}-{i}",
            "unit_id": f"u{i}",
            "type": "click",
            "experiment": KEY,
        }
        for i in range(BATCH)
    ]


class _Client(threading.Thread):
    """Sends batches until told to stop; sorts them into acknowledged and unknown outcome."""

    def __init__(self, index: int, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.index, self.port, self.stop = index, port, stop
        self.acked: list[str] = []
        self.unknown: list[list[dict[str, object]]] = []

    def run(self) -> None:
        number = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as http:
            while not self.stop.is_set():
                batch = _batch(self.index, number)
                number += 1
                try:
                    response = http.post("/v1/events", json={"events": batch})
                except httpx.TransportError:  # the server is going away: outcome unknown
                    self.unknown.append(batch)
                    return
                if response.status_code == 200:
                    assert response.json()["new"] == BATCH
                    self.acked += [str(e["event_id"]) for e in batch]
                else:
                    self.unknown.append(batch)


class _Assigner(threading.Thread):
    """Asks for assignments until told to stop; keeps every answered (exposure id, unit)."""

    def __init__(self, index: int, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.index, self.port, self.stop = index, port, stop
        self.acked: list[tuple[int, str, str, int]] = []  # id, unit, variant, slate size

    def run(self) -> None:
        number = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30) as http:
            while not self.stop.is_set():
                unit = f"a{self.index}-{number}"
                number += 1
                try:
                    response = http.post("/v1/assign", json={"experiment": KEY, "unit_id": unit})
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    body = response.json()
                    if body["exposure_id"] is not None:
                        item = (body["exposure_id"], unit, body["variant"], len(body["items"]))
                        self.acked.append(item)


def _running(url: str) -> None:
    engine = open_database(url)
    with engine.begin() as conn:
        conn.execute(update(m.Experiment).values(status="running"))
    engine.dispose()


def _exposures(url: str, ids: list[int]) -> dict[int, tuple[str, str, int, int]]:
    """Stored exposures by id: (unit, variant, slate size, impressions)."""
    engine = open_database(url)
    found: dict[int, tuple[str, str, int, int]] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            impressions = dict(
                conn.execute(
                    select(m.Impression.exposure_id, func.count())
                    .where(m.Impression.exposure_id.in_(chunk))
                    .group_by(m.Impression.exposure_id)
                ).all()
            )
            for row in conn.execute(
                select(
                    m.Exposure.id, m.Exposure.unit_id, m.Exposure.variant, m.Exposure.slate_size
                ).where(m.Exposure.id.in_(chunk))
            ):
                found[row.id] = (
                    row.unit_id,
                    row.variant,
                    row.slate_size,
                    impressions.get(row.id, 0),
                )
    engine.dispose()
    return found


def _assert_all_stored(url: str, acked: list[tuple[int, str, str, int]]) -> None:
    stored = _exposures(url, [a[0] for a in acked])
    wrong = [a for a in acked if stored.get(a[0]) != (a[1], a[2], a[3], a[3])]
    assert wrong == [], f"{len(wrong)} of {len(acked)} answered exposures missing or wrong"


def _stored(url: str, ids: list[str]) -> dict[str, int]:
    engine = open_database(url)
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            rows = conn.execute(
                select(m.Event.event_id, func.count())
                .where(m.Event.event_id.in_(chunk))
                .group_by(m.Event.event_id)
            ).all()
            counts.update({r[0]: r[1] for r in rows})
    engine.dispose()
    return counts


@pytest.mark.slow
def test_sigterm_mid_load_loses_no_acknowledged_event(seeded_url: str, tmp_path: Path) -> None:
    _running(seeded_url)
    journal = tmp_path / "journal"
    port = _free_port()
    server = _serve(seeded_url, port, workers=2, journal=journal)  # two processes, one database
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as probe:  # a load balancer's HEAD
        for path in ("/healthz", "/readyz", "/healthz"):  # one kept-alive connection
            head = probe.head(path)
            assert (head.status_code, head.content) == (200, b""), path
    stop = threading.Event()
    clients = [_Client(i, port, stop) for i in range(CLIENTS)]
    assigners = [_Assigner(i, port, stop) for i in range(2)]
    for thread in [*clients, *assigners]:
        thread.start()
    time.sleep(1.0)
    print(f"before SIGTERM: {sum(len(c.acked) for c in clients)} events acknowledged")
    clock = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=40)
    finally:
        stop.set()
        for thread in [*clients, *assigners]:
            thread.join(timeout=40)
    print(f"shutdown took {time.monotonic() - clock:.1f} s")
    assert server.returncode == 0, server.stderr.read().decode() if server.stderr else ""
    acked = [i for c in clients for i in c.acked]
    assert len(acked) >= BATCH * CLIENTS  # the load really ran
    counts = _stored(seeded_url, acked)
    assert [i for i in acked if counts.get(i) != 1] == []
    exposures = [a for t in assigners for a in t.acked]
    assert len(exposures) >= 20
    _assert_all_stored(seeded_url, exposures)  # flushed at shutdown, no replay needed
    assert list(journal.glob("*.journal")) == []  # a clean exit leaves no journal

    # Restart and retry every batch whose outcome the client could not know.
    server = _serve(seeded_url, _port := port, workers=1, journal=journal)
    retried: list[str] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{_port}", timeout=30) as http:
            for batch in (b for c in clients for b in c.unknown):
                response = http.post("/v1/events", json={"events": batch})
                assert response.status_code == 200
                assert response.json()["new"] + response.json()["duplicates"] == BATCH
                retried += [str(e["event_id"]) for e in batch]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=40)
    assert server.stderr is not None
    assert b"warning: --no-auth" in server.stderr.read()
    everything = acked + retried
    counts = _stored(seeded_url, everything)
    assert [i for i in everything if counts.get(i) != 1] == []


@pytest.mark.slow
def test_sigkill_mid_load_loses_no_answered_assignment(seeded_url: str, tmp_path: Path) -> None:
    _running(seeded_url)
    journal = tmp_path / "journal"
    port = _free_port()
    # Commits every 2 s: at the kill, answered exposures are surely still uncommitted.
    server = _serve(seeded_url, port, workers=2, journal=journal, flush_seconds=2.0)
    stop = threading.Event()
    assigners = [_Assigner(i, port, stop) for i in range(4)]
    for thread in assigners:
        thread.start()
    time.sleep(1.5)
    os.killpg(server.pid, signal.SIGKILL)  # the supervisor and both workers, no clean-up
    server.wait(timeout=10)
    stop.set()
    for thread in assigners:
        thread.join(timeout=40)
    acked = [a for t in assigners for a in t.acked]
    assert len(acked) >= 50  # the load really ran
    assert list(journal.glob("*.journal"))  # the dead processes left their journals behind
    missing = len(acked) - len(_exposures(seeded_url, [a[0] for a in acked]))
    print(f"{len(acked)} exposures answered, {missing} not in the database before the restart")
    assert missing > 0  # so the restart's replay is what brings them in

    server = _serve(seeded_url, port, workers=1, journal=journal)  # replays before serving
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=40)
    # One process: uvicorn re-raises the signal after its graceful shutdown.
    assert server.returncode in (0, -signal.SIGTERM)
    _assert_all_stored(seeded_url, acked)  # exposure id is the key: stored exactly once
    assert list(journal.glob("*.journal")) == []
    assert list(journal.glob("*.rejected")) == []
