"""Shared fixtures: real SQLite files and a real PostgreSQL database per test session."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

# The same floating-point kernels on every x86-64 machine, so simulated runs and the golden
# outputs do not depend on the CPU: NumPy's AVX-512 loops and OpenBLAS's AVX-512 kernels sum
# in another order than their AVX2 ones (a last-bit change that flipped a simulated click
# between two machines), and so do oneDNN's matrix kernels inside TensorFlow (a two-tower
# trained on an AVX-512 FP16 machine scored items differently from one trained elsewhere).
# Read when NumPy and TensorFlow load, so before anything imports them.
if "numpy" not in sys.modules:
    os.environ.setdefault("NPY_DISABLE_CPU_FEATURES", "X86_V4 AVX512_ICL AVX512_SPR")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and " avx2" in cpuinfo.read_text():
        os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import pytest
from sqlalchemy import Engine, create_engine, text

from abplatform.artifacts import ARTIFACTS_ENV
from abplatform.storage.db import make_engine, upgrade
from abplatform.storage.models import Base

PG_ADMIN_URL = os.environ.get(
    "ABPLATFORM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _pg_available() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session", autouse=True)
def _artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Artifacts of `simulate` and `train` go to a session temp dir, never into the repo."""
    previous = os.environ.get(ARTIFACTS_ENV)
    os.environ[ARTIFACTS_ENV] = str(tmp_path_factory.mktemp("artifacts"))
    yield
    if previous is None:
        os.environ.pop(ARTIFACTS_ENV, None)
    else:
        os.environ[ARTIFACTS_ENV] = previous


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[Engine]:
    """A fresh PostgreSQL database migrated to head, dropped at the end of the session."""
    problem = _pg_available()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"PostgreSQL is required in CI but unreachable at {PG_ADMIN_URL}: {problem}"
            )
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {problem}")
    name = f"abp_test_{uuid.uuid4().hex[:12]}"
    # Pre-ping: the connection must survive a cluster restart (tests/api/test_outage.py).
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _truncate(engine: Engine) -> None:
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def pg_url(pg_engine: Engine) -> str:
    """URL of the session's PostgreSQL database, emptied before the test."""
    _truncate(pg_engine)
    return pg_engine.url.render_as_string(hide_password=False)


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    """URL of a new SQLite file in the test's temporary folder."""
    return f"sqlite:///{tmp_path}/abplatform-test.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on a real SQLite file and on the real PostgreSQL server."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))
