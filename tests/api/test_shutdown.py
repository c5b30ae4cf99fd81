"""A real `abplatform serve` under event load, SIGTERM mid-load, restart: no lost writes."""

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
from sqlalchemy import func, select

from abplatform.storage import models as m
from abplatform.storage.db import open_database
from tests.api.conftest import KEY

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 6
BATCH = 50


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(url: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABPLATFORM_")}
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
            "2",
            "--no-auth",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
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
def test_sigterm_mid_load_loses_no_acknowledged_event(seeded_url: str) -> None:
    port = _free_port()
    server = _serve(seeded_url, port, workers=2)  # two processes share the database
    stop = threading.Event()
    clients = [_Client(i, port, stop) for i in range(CLIENTS)]
    for client in clients:
        client.start()
    time.sleep(1.0)
    print(f"before SIGTERM: {sum(len(c.acked) for c in clients)} events acknowledged")
    clock = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=40)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=40)
    print(f"shutdown took {time.monotonic() - clock:.1f} s")
    assert server.returncode == 0, server.stderr.read().decode() if server.stderr else ""
    acked = [i for c in clients for i in c.acked]
    assert len(acked) >= BATCH * CLIENTS  # the load really ran
    counts = _stored(seeded_url, acked)
    assert [i for i in acked if counts.get(i) != 1] == []

    # Restart and retry every batch whose outcome the client could not know.
    server = _serve(seeded_url, _port := port, workers=1)
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
