"""Fixtures shared by the analysis and report tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from abplatform.storage.db import open_database


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the test's database (SQLite file or PostgreSQL), schema at head."""
    eng = open_database(db_url)
    yield eng
    eng.dispose()
