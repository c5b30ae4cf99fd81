"""A real `abplatform serve`: an experiment that cannot be fitted is unservable, the rest served.

Two running experiments, one with its catalogue emptied before start-up: warm-up marks it
unservable (its assigns answer 409 with the reason, `/readyz` and the log name it) and the
other keeps serving. A server that cannot start at all exits non-zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text, update

from abplatform.storage import models as m
from abplatform.storage.catalog import delete_catalog
from abplatform.storage.db import open_database
from simulator.runner import simulate
from tests.api.conftest import KEY, ROOT, small_config
from tests.api.test_shutdown import _free_port, _serve
from tests.conftest import PG_ADMIN_URL

OTHER = "second_homepage"


def _two_running(url: str) -> None:
    """KEY and OTHER simulated and running; KEY's catalogue then emptied."""
    engine = open_database(url)
    simulate(engine, small_config())
    simulate(engine, small_config().model_copy(update={"key": OTHER}))
    with engine.begin() as conn:
        conn.execute(update(m.Experiment).values(status="running"))
        delete_catalog(conn, f"sim:{KEY}")
    engine.dispose()


@pytest.mark.parametrize("workers", [1, 2])
def test_one_unservable_experiment_leaves_the_others_served(
    sqlite_url: str, tmp_path: Path, workers: int
) -> None:
    _two_running(sqlite_url)
    port = _free_port()
    server = _serve(sqlite_url, port, workers, tmp_path / "journal")
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(2 * workers):  # each worker warmed up on its own
                ready = http.get("/readyz")
                assert ready.status_code == 200
                assert ready.json()["status"] == "ok"
                assert list(ready.json()["unservable"]) == [KEY]
                assert "cannot fit on an empty catalogue" in ready.json()["unservable"][KEY]
            for path, body in (
                ("/v1/assign", {"experiment": KEY, "unit_id": "u1"}),
                ("/v1/assign/batch", {"requests": [{"experiment": KEY, "unit_id": "u1"}]}),
            ):
                refused = http.post(path, json=body)
                assert refused.status_code == 409, refused.text
                detail = refused.json()["detail"]
                assert f"experiment {KEY!r} is running but cannot be served" in detail
                assert "cannot fit on an empty catalogue" in detail
                assert "stop" in refused.json()["hint"]
            for unit in ("u1", "u2", "u3"):
                served = http.post("/v1/assign", json={"experiment": OTHER, "unit_id": unit})
                assert served.status_code == 200, served.text
                assert served.json()["variant"] is not None and served.json()["items"]
            events = http.post(
                "/v1/events",
                json={
                    "events": [
                        {
                            "event_id": f"unservable-{workers}",
                            "unit_id": "u1",
                            "type": "click",
                            "experiment": KEY,
                            "item_id": "i1",
                            "timestamp": "2026-11-27T10:00:00Z",
                        }
                    ]
                },
            )
            assert events.status_code == 200, events.text  # feedback is still recorded
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    # One process: uvicorn re-raises the signal after its graceful shutdown.
    assert server.returncode in (0, -signal.SIGTERM), err.decode()[-2000:]
    log = err.decode()
    assert f"experiment {KEY!r} is unservable (others are served)" in log
    assert OTHER not in log
    assert "Application startup failed" not in log


def _start(url: str, tmp_path: Path, workers: int = 2) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABPLATFORM_")}
    env["ABPLATFORM_API_JOURNAL_DIR"] = str(tmp_path / "journal")
    command = [sys.executable, "-m", "abplatform.cli", "serve", "--db", url, "--no-auth"]
    port = ["--port", str(_free_port()), "--workers", str(workers)]
    return subprocess.run(
        [*command, *port], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_start_up_failure_exits_non_zero(
    sqlite_url: str, tmp_path: Path, workers: int
) -> None:
    """The app's own start-up fails (its journal directory cannot be made)."""
    (tmp_path / "journal").write_text("a file where the journal directory should be")
    open_database(sqlite_url).dispose()
    out = _start(sqlite_url, tmp_path, workers)
    assert out.returncode == 3, out.stderr[-2000:]
    assert f"{tmp_path / 'journal'}" in out.stderr  # the OSError naming the path
    assert "Application startup failed" in out.stderr
    assert "error: the server failed to start" in out.stderr


@pytest.mark.postgres
def test_an_unmigrated_or_missing_postgres_database_exits_2(
    pg_engine: Engine, tmp_path: Path
) -> None:
    name = f"abp_unmigrated_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        empty = _start(f"{base}/{name}", tmp_path)
        assert empty.returncode == 2, empty.stderr[-2000:]
        assert "the database is empty" in empty.stderr
        assert "abplatform db upgrade" in empty.stderr
        missing = _start(f"{base}/{name}_missing", tmp_path)
        assert missing.returncode == 2, missing.stderr[-2000:]
        assert f'database "{name}_missing" does not exist' in missing.stderr
        assert "Traceback" not in empty.stderr + missing.stderr
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
